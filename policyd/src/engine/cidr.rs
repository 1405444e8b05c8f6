//! CIDR algebra for ipBlock peers.
//!
//! The dataplane looks an address up in a per-endpoint LPM trie and takes
//! the value of the longest matching prefix. Given ipBlocks (each a cidr
//! minus its except holes) we emit prefixes such that the longest match for
//! any address carries exactly the set of blocks containing it.
//!
//! Why it suffices to emit the blocks' own prefixes: all prefixes nest or
//! are disjoint, so for an address whose longest match among the cidrs and
//! excepts is `p`, every cidr/except containing the address also contains
//! `p`. The covering set is therefore a function of `p` alone:
//! `{ b : b.cidr ⊇ p and no except of b ⊇ p }`. Holes that no other block
//! covers come out with an empty set and stay in the trie, so a lookup lands
//! on them rather than on the enclosing block.

use ipnet::IpNet;

/// Parse an ipBlock CIDR. Host bits are cleared (`10.0.0.1/24` is
/// `10.0.0.0/24`), as Kubernetes accepts such CIDRs.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR: add a prefix length, e.g. {s}/32"));
    }
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|e| format!("{s:?} is not a valid CIDR: {e}"))
}

/// One ipBlock: the cidr minus the excepts (all already validated to lie
/// inside the cidr and in its family).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Block {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl Block {
    pub fn contains_addr(&self, a: std::net::IpAddr) -> bool {
        self.cidr.contains(&a) && !self.except.iter().any(|e| e.contains(&a))
    }
    #[cfg(test)]
    fn covers_prefix(&self, p: &IpNet) -> bool {
        self.cidr.contains(p) && !self.except.iter().any(|e| e.contains(p))
    }
}

/// Disjoint-by-LPM prefixes with, for each, the indices (into `blocks`) of
/// the blocks covering it; an empty list is a hole. Prefixes whose set
/// equals that of their nearest emitted ancestor are left out: the ancestor
/// already answers for them. Sorted by prefix.
///
/// One sweep over the cidrs and excepts sorted by (address, length): that
/// order visits the containment forest depth first, ancestors before
/// descendants, so a stack of at most 129 open ancestors gives each prefix
/// its nearest ancestor. A prefix's covering set is its nearest ancestor's
/// set plus the blocks whose cidr is this prefix, minus the blocks with
/// this prefix as an except (any cidr or except between the two would be a
/// nearer ancestor). O(m log m) for m cidrs and excepts, plus the size of
/// the output (the covering sets themselves).
pub fn partition(blocks: &[Block]) -> Vec<(IpNet, Vec<usize>)> {
    // (prefix, is_except, block): sorted, every prefix's events are adjacent
    // and, within them, the blocks it opens come before those it closes.
    let mut events: Vec<(IpNet, bool, usize)> = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        // Truncated, so sorting by address puts ancestors first.
        events.push((b.cidr.trunc(), false, i));
        events.extend(b.except.iter().map(|e| (e.trunc(), true, i)));
    }
    events.sort_unstable();

    struct Open {
        net: IpNet,
        set: Vec<usize>,
        /// Index into `out` of the nearest emitted prefix at or above this
        /// one (None: nothing above answers, i.e. no class).
        answered_by: Option<usize>,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut out: Vec<(IpNet, Vec<usize>)> = Vec::new();
    let mut rest = &events[..];
    while let Some(&(net, _, _)) = rest.first() {
        let n = rest.iter().take_while(|e| e.0 == net).count();
        let (here, tail) = rest.split_at(n);
        rest = tail;
        while stack.last().is_some_and(|top| !top.net.contains(&net)) {
            stack.pop();
        }
        let parent = stack.last();
        let opened = here.iter().filter(|e| !e.1).map(|e| e.2);
        let closed: Vec<usize> = here.iter().filter(|e| e.1).map(|e| e.2).collect();
        let inherited = parent.map(|p| p.set.as_slice()).unwrap_or(&[]);
        let set = merge_sorted(inherited, opened, &closed);
        let answered_by = parent.and_then(|p| p.answered_by);
        let answer: &[usize] = answered_by.map(|i| out[i].1.as_slice()).unwrap_or(&[]);
        let answered_by = if set == answer {
            answered_by
        } else {
            out.push((net, set.clone()));
            Some(out.len() - 1)
        };
        stack.push(Open { net, set, answered_by });
    }
    out
}

/// `base ∪ added` minus `removed`, sorted and without duplicates; `base`
/// and `removed` are sorted, `added` is sorted (events of one prefix are).
fn merge_sorted(base: &[usize], added: impl Iterator<Item = usize>, removed: &[usize]) -> Vec<usize> {
    let added: Vec<usize> = added.collect();
    let mut set = Vec::with_capacity(base.len() + added.len());
    let (mut i, mut j) = (0, 0);
    while i < base.len() || j < added.len() {
        let next = match (base.get(i), added.get(j)) {
            (Some(&a), Some(&b)) if a == b => {
                i += 1;
                j += 1;
                a
            }
            (Some(&a), Some(&b)) if a < b => {
                i += 1;
                a
            }
            (Some(&a), None) => {
                i += 1;
                a
            }
            (_, Some(&b)) => {
                j += 1;
                b
            }
            (None, None) => unreachable!("loop condition"),
        };
        if set.last() != Some(&next) && removed.binary_search(&next).is_err() {
            set.push(next);
        }
    }
    set
}

/// Longest-prefix match in a partition (what the trie does), for tests and
/// explain.
pub fn lpm<'a, V>(entries: impl IntoIterator<Item = (&'a IpNet, V)>, a: std::net::IpAddr) -> Option<V> {
    entries.into_iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn n(s: &str) -> IpNet {
        parse_cidr(s).unwrap()
    }
    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn covering(parts: &[(IpNet, Vec<usize>)], addr: &str) -> Vec<usize> {
        lpm(parts.iter().map(|(n, v)| (n, v.clone())), a(addr)).unwrap_or_default()
    }

    #[test]
    fn non_canonical_cidr_is_masked() {
        assert_eq!(n("10.0.0.1/24"), "10.0.0.0/24".parse::<IpNet>().unwrap());
        assert_eq!(n("fd00::1/64"), "fd00::/64".parse::<IpNet>().unwrap());
    }

    #[test]
    fn bare_address_or_garbage_is_rejected() {
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
    }

    #[test]
    fn except_is_a_hole_the_lookup_lands_on() {
        let parts = partition(&[Block { cidr: n("10.0.0.0/8"), except: vec![n("10.1.0.0/16")] }]);
        assert_eq!(parts, vec![(n("10.0.0.0/8"), vec![0]), (n("10.1.0.0/16"), vec![])]);
        assert_eq!(covering(&parts, "10.2.3.4"), vec![0]);
        assert!(covering(&parts, "10.1.3.4").is_empty());
    }

    #[test]
    fn hole_covered_by_another_block_carries_that_block() {
        let parts = partition(&[
            Block { cidr: n("10.0.0.0/8"), except: vec![n("10.1.0.0/16")] },
            Block { cidr: n("10.1.0.0/24"), except: vec![] },
        ]);
        assert_eq!(covering(&parts, "10.1.0.9"), vec![1]);
        assert!(covering(&parts, "10.1.1.9").is_empty());
        assert_eq!(covering(&parts, "10.9.0.1"), vec![0]);
    }

    #[test]
    fn overlapping_blocks_share_the_inner_prefix() {
        let parts = partition(&[
            Block { cidr: n("0.0.0.0/0"), except: vec![] },
            Block { cidr: n("192.168.0.0/16"), except: vec![] },
        ]);
        assert_eq!(covering(&parts, "192.168.1.1"), vec![0, 1]);
        assert_eq!(covering(&parts, "8.8.8.8"), vec![0]);
    }

    #[test]
    fn identical_blocks_are_one_prefix() {
        let b = Block { cidr: n("10.0.0.0/8"), except: vec![] };
        let parts = partition(&[b.clone(), b]);
        assert_eq!(parts, vec![(n("10.0.0.0/8"), vec![0, 1])]);
    }

    #[test]
    fn ipv6_blocks_and_holes() {
        let parts = partition(&[Block { cidr: n("fd00::/8"), except: vec![n("fd00:1::/32")] }]);
        assert_eq!(covering(&parts, "fd00:2::1"), vec![0]);
        assert!(covering(&parts, "fd00:1::1").is_empty());
        assert!(covering(&parts, "10.0.0.1").is_empty());
    }

    fn arb_v4_net() -> impl Strategy<Value = IpNet> {
        // A small address space so blocks and excepts overlap often.
        (0u32..16, 24u8..=32).prop_map(|(x, len)| {
            let addr = Ipv4Addr::from(0x0a00_0000u32 | (x << 4) | (x & 3));
            IpNet::new(IpAddr::V4(addr), len - 4).unwrap().trunc()
        })
    }

    fn arb_blocks() -> impl Strategy<Value = Vec<Block>> {
        prop::collection::vec((arb_v4_net(), prop::collection::vec(arb_v4_net(), 0..4)), 0..6).prop_map(|raw| {
            raw.into_iter()
                .map(|(cidr, ex)| Block {
                    cidr,
                    // Keep only excepts strictly inside the cidr, as validation does.
                    except: ex.into_iter().filter(|e| cidr.contains(e) && *e != cidr).collect(),
                })
                .collect()
        })
    }

    /// The definition, quadratic: every cidr/except is a candidate; its set
    /// is every block covering it; it is left out when its nearest emitted
    /// ancestor has the same set. The sweep in `partition` must agree.
    fn partition_reference(blocks: &[Block]) -> Vec<(IpNet, Vec<usize>)> {
        let mut prefixes: Vec<IpNet> =
            blocks.iter().flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied())).collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes.sort_by_key(|p| p.prefix_len());
        let mut out: Vec<(IpNet, Vec<usize>)> = Vec::new();
        for p in prefixes {
            let set: Vec<usize> = (0..blocks.len()).filter(|&i| blocks[i].covers_prefix(&p)).collect();
            let parent = out
                .iter()
                .filter(|(q, _)| q.prefix_len() < p.prefix_len() && q.contains(&p))
                .max_by_key(|(q, _)| q.prefix_len());
            let redundant = match parent {
                Some((_, pset)) => *pset == set,
                None => set.is_empty(),
            };
            if !redundant {
                out.push((p, set));
            }
        }
        out.sort_by_key(|a| a.0);
        out
    }

    /// A small IPv6 space (fd00::/120 and its neighbours) so blocks overlap.
    fn arb_v6_net() -> impl Strategy<Value = IpNet> {
        (0u128..16, 116u8..=128).prop_map(|(x, len)| {
            let addr = std::net::Ipv6Addr::from((0xfd00u128 << 112) | (x << 4) | (x & 3));
            IpNet::new(IpAddr::V6(addr), len - 4).unwrap().trunc()
        })
    }

    /// Blocks of one family, excepts strictly inside their cidr (as
    /// validation leaves them), duplicates and nesting frequent.
    fn arb_family_blocks<S: Strategy<Value = IpNet>>(net: fn() -> S) -> impl Strategy<Value = Vec<Block>> {
        prop::collection::vec((net(), prop::collection::vec(net(), 0..5)), 0..12).prop_map(|raw| {
            raw.into_iter()
                .map(|(cidr, ex)| {
                    let mut except: Vec<IpNet> = ex.into_iter().filter(|e| cidr.contains(e) && *e != cidr).collect();
                    except.sort();
                    except.dedup();
                    Block { cidr, except }
                })
                .collect()
        })
    }

    proptest! {
        /// The sweep emits exactly what the quadratic definition emits, for
        /// IPv4, IPv6 and both mixed in one list.
        #[test]
        fn sweep_equals_the_reference(
            v4 in arb_family_blocks(arb_v4_net),
            v6 in arb_family_blocks(arb_v6_net),
            interleave in any::<u64>(),
        ) {
            prop_assert_eq!(partition(&v4), partition_reference(&v4));
            prop_assert_eq!(partition(&v6), partition_reference(&v6));
            // Mixed, in an order decided by `interleave`.
            let mut mixed = Vec::new();
            let (mut a, mut b) = (v4.into_iter(), v6.into_iter());
            for bit in 0.. {
                let take_v4 = (interleave >> (bit % 64)) & 1 == 0;
                match (take_v4, a.len(), b.len()) {
                    (_, 0, 0) => break,
                    (true, n, _) | (false, n, 0) if n > 0 => mixed.push(a.next().unwrap()),
                    _ => mixed.push(b.next().unwrap()),
                }
            }
            prop_assert_eq!(partition(&mixed), partition_reference(&mixed));
        }

        /// Every address of the tested space is classified by LPM over the
        /// partition exactly as the brute-force definition says.
        #[test]
        fn lpm_over_partition_equals_brute_force(blocks in arb_blocks()) {
            let parts = partition(&blocks);
            for x in 0u32..=0x1ff {
                let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 | x));
                let expect: Vec<usize> = (0..blocks.len()).filter(|&i| blocks[i].contains_addr(addr)).collect();
                let got = lpm(parts.iter().map(|(n, v)| (n, v.clone())), addr).unwrap_or_default();
                prop_assert_eq!(got, expect, "address {}", addr);
            }
        }

        #[test]
        fn partition_has_no_duplicate_prefixes(blocks in arb_blocks()) {
            let parts = partition(&blocks);
            let mut nets: Vec<_> = parts.iter().map(|p| p.0).collect();
            nets.dedup();
            prop_assert_eq!(nets.len(), parts.len());
        }
    }
}
