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
        return Err(format!(
            "{s:?} is not a CIDR: add a prefix length, e.g. {s}/32"
        ));
    }
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| format!("{s:?} is not a valid CIDR: {e}"))
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
    fn covers_prefix(&self, p: &IpNet) -> bool {
        self.cidr.contains(p) && !self.except.iter().any(|e| e.contains(p))
    }
}

/// Disjoint-by-LPM prefixes with, for each, the indices (into `blocks`) of
/// the blocks covering it; an empty list is a hole. Prefixes whose set
/// equals that of their nearest emitted ancestor are left out: the ancestor
/// already answers for them. Sorted by prefix.
pub fn partition(blocks: &[Block]) -> Vec<(IpNet, Vec<usize>)> {
    let mut prefixes: Vec<IpNet> = blocks
        .iter()
        .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied()))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    // Shorter first, so every ancestor is decided before its descendants.
    prefixes.sort_by_key(|p| p.prefix_len());
    let mut out: Vec<(IpNet, Vec<usize>)> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let set: Vec<usize> = (0..blocks.len())
            .filter(|&i| blocks[i].covers_prefix(&p))
            .collect();
        let parent = out
            .iter()
            .filter(|(q, _)| q.prefix_len() < p.prefix_len() && q.contains(&p))
            .max_by_key(|(q, _)| q.prefix_len());
        let redundant = match parent {
            Some((_, pset)) => *pset == set,
            // Nothing above: an empty set needs no entry (no match = no class).
            None => set.is_empty(),
        };
        if !redundant {
            out.push((p, set));
        }
    }
    out.sort_by_key(|a| a.0);
    out
}

/// Longest-prefix match in a partition (what the trie does), for tests and
/// explain.
pub fn lpm<'a, V>(
    entries: impl IntoIterator<Item = (&'a IpNet, V)>,
    a: std::net::IpAddr,
) -> Option<V> {
    entries
        .into_iter()
        .filter(|(n, _)| n.contains(&a))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, v)| v)
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
        let parts = partition(&[Block {
            cidr: n("10.0.0.0/8"),
            except: vec![n("10.1.0.0/16")],
        }]);
        assert_eq!(
            parts,
            vec![(n("10.0.0.0/8"), vec![0]), (n("10.1.0.0/16"), vec![])]
        );
        assert_eq!(covering(&parts, "10.2.3.4"), vec![0]);
        assert!(covering(&parts, "10.1.3.4").is_empty());
    }

    #[test]
    fn hole_covered_by_another_block_carries_that_block() {
        let parts = partition(&[
            Block {
                cidr: n("10.0.0.0/8"),
                except: vec![n("10.1.0.0/16")],
            },
            Block {
                cidr: n("10.1.0.0/24"),
                except: vec![],
            },
        ]);
        assert_eq!(covering(&parts, "10.1.0.9"), vec![1]);
        assert!(covering(&parts, "10.1.1.9").is_empty());
        assert_eq!(covering(&parts, "10.9.0.1"), vec![0]);
    }

    #[test]
    fn overlapping_blocks_share_the_inner_prefix() {
        let parts = partition(&[
            Block {
                cidr: n("0.0.0.0/0"),
                except: vec![],
            },
            Block {
                cidr: n("192.168.0.0/16"),
                except: vec![],
            },
        ]);
        assert_eq!(covering(&parts, "192.168.1.1"), vec![0, 1]);
        assert_eq!(covering(&parts, "8.8.8.8"), vec![0]);
    }

    #[test]
    fn identical_blocks_are_one_prefix() {
        let b = Block {
            cidr: n("10.0.0.0/8"),
            except: vec![],
        };
        let parts = partition(&[b.clone(), b]);
        assert_eq!(parts, vec![(n("10.0.0.0/8"), vec![0, 1])]);
    }

    #[test]
    fn ipv6_blocks_and_holes() {
        let parts = partition(&[Block {
            cidr: n("fd00::/8"),
            except: vec![n("fd00:1::/32")],
        }]);
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
        prop::collection::vec(
            (arb_v4_net(), prop::collection::vec(arb_v4_net(), 0..4)),
            0..6,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .map(|(cidr, ex)| Block {
                    cidr,
                    // Keep only excepts strictly inside the cidr, as validation does.
                    except: ex
                        .into_iter()
                        .filter(|e| cidr.contains(e) && *e != cidr)
                        .collect(),
                })
                .collect()
        })
    }

    proptest! {
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
