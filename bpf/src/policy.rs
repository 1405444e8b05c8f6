//! The policy map's encoding, once. A [`PolicyMatch`] is what one entry of
//! `weir_policy` (or `weir_policy_exact`) matches: endpoint, peer identity
//! and direction in full, then a protocol and an aligned block of ports,
//! or wildcards. [`PolicyMatch::encode`] turns it into the LPM key the
//! programs look up and [`PolicyMatch::decode`] reads one back; policyd's
//! sync, the packet tests and the fuzzer all write through them.
//!
//! Wildcards are prefix lengths (`weir_abi.h`): the key ends with
//! (protocol, port), so a block of 2^k ports aligned on 2^k is one entry of
//! prefix length `POLICY_FIXED_BITS + 8 + (16 - k)`. Any range splits into
//! at most 30 such blocks, whatever its size.

use crate::abi::{PolicyKey, DIR_EGRESS, DIR_INGRESS, POLICY_FIXED_BITS};
use aya::maps::lpm_trie::Key;
use std::ops::RangeInclusive;

/// Which side of the endpoint a policy entry judges (`WEIR_DIR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Direction {
    /// What the endpoint receives.
    Ingress = DIR_INGRESS,
    /// What the endpoint sends.
    Egress = DIR_EGRESS,
}

impl Direction {
    pub fn as_u8(self) -> u8 {
        self as u8
    }
    /// The direction a map byte stands for; None for a byte no direction has.
    pub fn from_u8(d: u8) -> Option<Direction> {
        match d {
            DIR_INGRESS => Some(Direction::Ingress),
            DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// One aligned block: ports `start ..= start + 2^(16-bits) - 1`, matching
/// the top `bits` bits of the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortBlock {
    pub start: u16,
    /// Port bits fixed by the block, 0..=16.
    pub bits: u8,
}

impl PortBlock {
    /// Exactly one port.
    pub fn single(port: u16) -> Self {
        PortBlock { start: port, bits: 16 }
    }
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end()
    }
    pub fn end(&self) -> u16 {
        (self.start as u32 + (1u32 << (16 - self.bits as u32)) - 1) as u16
    }
}

/// The minimal cover of `lo..=hi` by aligned blocks, in increasing order.
/// Empty when `lo > hi`.
pub fn port_range_blocks(lo: u16, hi: u16) -> Vec<PortBlock> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // largest aligned block starting at lo that stays within hi
        let mut k = if lo == 0 { 16 } else { lo.trailing_zeros().min(16) };
        while lo + (1u32 << k) - 1 > hi {
            k -= 1;
        }
        out.push(PortBlock { start: lo as u16, bits: (16 - k) as u8 });
        lo += 1u32 << k;
    }
    out
}

/// What one policy entry matches. `port` is only meaningful with a
/// `protocol`: without one the entry matches every protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyMatch {
    /// Host veth ifindex of the endpoint judged.
    pub endpoint: u32,
    /// Peer identity; `ID_ANY_POD` for every pod, `ID_ANY` for every other peer.
    pub identity: u32,
    pub direction: Direction,
    /// None: any protocol and port.
    pub protocol: Option<u8>,
    /// None: any port of `protocol`.
    pub port: Option<PortBlock>,
}

impl PolicyMatch {
    /// The entries of one allow: a peer, a direction, a protocol (None:
    /// any, and then `ports` is ignored) and a port range (None: any port):
    /// one entry for a wildcard, else one per aligned block of the range.
    pub fn cover(
        endpoint: u32,
        identity: u32,
        direction: Direction,
        protocol: Option<u8>,
        ports: Option<RangeInclusive<u16>>,
    ) -> Vec<PolicyMatch> {
        let m = PolicyMatch { endpoint, identity, direction, protocol, port: None };
        match (protocol, ports) {
            (Some(_), Some(r)) => port_range_blocks(*r.start(), *r.end())
                .into_iter()
                .map(|b| PolicyMatch { port: Some(b), ..m })
                .collect(),
            _ => vec![m],
        }
    }

    /// The LPM key: its prefix length says which wildcards apply.
    pub fn encode(&self) -> Key<PolicyKey> {
        let (len, protocol, port) = match (self.protocol, self.port) {
            (None, _) => (POLICY_FIXED_BITS, 0, 0),
            (Some(p), None) => (POLICY_FIXED_BITS + 8, p, 0),
            (Some(p), Some(b)) => (POLICY_FIXED_BITS + 8 + b.bits as u32, p, b.start),
        };
        Key::new(len, PolicyKey::new(self.endpoint, self.identity, self.direction.as_u8(), protocol, port))
    }

    /// What an LPM key matches; None for a key [`encode`](Self::encode)
    /// never writes (a prefix length inside the fixed part, or a direction
    /// that does not exist).
    pub fn decode(key: &Key<PolicyKey>) -> Option<PolicyMatch> {
        let k = key.data();
        let direction = Direction::from_u8(k.direction)?;
        let (protocol, port) = match key.prefix_len().checked_sub(POLICY_FIXED_BITS)? {
            0 => (None, None),
            8 => (Some(k.protocol), None),
            n @ 9..=24 => (Some(k.protocol), Some(PortBlock { start: k.port_host(), bits: (n - 8) as u8 })),
            _ => return None,
        };
        Some(PolicyMatch { endpoint: k.endpoint, identity: k.identity, direction, protocol, port })
    }

    /// Whether a packet of `protocol` to `port` from (or to) `identity`
    /// falls under this entry: what the trie's longest-prefix lookup finds
    /// an entry for, without the choice between overlapping ones.
    pub fn matches(&self, endpoint: u32, identity: u32, direction: Direction, protocol: u8, port: u16) -> bool {
        self.endpoint == endpoint
            && self.identity == identity
            && self.direction == direction
            && self.protocol.is_none_or(|p| p == protocol)
            && self.port.is_none_or(|b| b.contains(port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covered(blocks: &[PortBlock]) -> Vec<u16> {
        let mut v = Vec::new();
        for b in blocks {
            // aligned: start is a multiple of the block size
            let size = 1u32 << (16 - b.bits as u32);
            assert_eq!(b.start as u32 % size, 0, "{b:?} not aligned");
            for p in b.start as u32..=b.end() as u32 {
                v.push(p as u16);
            }
        }
        v
    }

    #[test]
    fn known_ranges() {
        assert_eq!(port_range_blocks(80, 80), vec![PortBlock { start: 80, bits: 16 }]);
        assert_eq!(port_range_blocks(0, 65535), vec![PortBlock { start: 0, bits: 0 }]);
        assert_eq!(port_range_blocks(1, 65535).len(), 16);
        assert_eq!(port_range_blocks(1, 65534).len(), 30);
        assert!(port_range_blocks(10, 9).is_empty());
    }

    #[test]
    fn matches_round_trip_through_the_key() {
        for protocol in [None, Some(6u8), Some(132)] {
            for port in [None, Some(PortBlock::single(80)), Some(PortBlock { start: 1024, bits: 6 })] {
                if protocol.is_none() && port.is_some() {
                    continue;
                }
                for direction in [Direction::Ingress, Direction::Egress] {
                    let m = PolicyMatch { endpoint: 7, identity: 300, direction, protocol, port };
                    assert_eq!(PolicyMatch::decode(&m.encode()), Some(m), "{m:?}");
                }
            }
        }
        // an exact port is the full key: it lives in the exact-match hash
        let exact = PolicyMatch::cover(7, 300, Direction::Ingress, Some(6), Some(80..=80));
        assert_eq!(exact[0].encode().prefix_len(), crate::abi::POLICY_FULL_BITS);
        // the port is in network order, as the programs compare its bits
        assert_eq!(exact[0].encode().data().port, 80u16.to_be());
    }

    #[test]
    fn keys_encode_never_writes_decode_to_nothing() {
        let k = PolicyKey::new(7, 300, 0, 6, 80);
        for len in [0, POLICY_FIXED_BITS - 1, POLICY_FIXED_BITS + 4, POLICY_FIXED_BITS + 25] {
            assert_eq!(PolicyMatch::decode(&Key::new(len, k)), None, "prefix length {len}");
        }
        assert_eq!(PolicyMatch::decode(&Key::new(POLICY_FIXED_BITS, PolicyKey::new(7, 300, 2, 0, 0))), None);
    }

    #[test]
    fn a_wildcard_protocol_is_one_entry_whatever_the_ports() {
        let all = PolicyMatch::cover(7, 0, Direction::Egress, None, Some(80..=90));
        assert_eq!(
            all,
            vec![PolicyMatch { endpoint: 7, identity: 0, direction: Direction::Egress, protocol: None, port: None }]
        );
        assert_eq!(PolicyMatch::cover(7, 0, Direction::Egress, Some(17), None).len(), 1);
    }

    /// The fewest blocks any prefix cover of the range can have: split the
    /// port space top-down, keep every block wholly inside the range.
    fn minimal_count(lo: u32, hi: u32) -> usize {
        fn rec(lo: u32, hi: u32, blo: u32, bits: u32) -> usize {
            let bhi = blo + (1 << bits) - 1;
            if hi < blo || lo > bhi {
                0
            } else if lo <= blo && bhi <= hi {
                1
            } else {
                let half = 1 << (bits - 1);
                rec(lo, hi, blo, bits - 1) + rec(lo, hi, blo + half, bits - 1)
            }
        }
        rec(lo, hi, 0, 16)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn blocks_are_minimal(a in any::<u16>(), b in any::<u16>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert_eq!(port_range_blocks(lo, hi).len(), minimal_count(lo as u32, hi as u32));
        }

        #[test]
        fn membership_matches_range(a in any::<u16>(), b in any::<u16>(), p in any::<u16>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let hit = port_range_blocks(lo, hi).iter().any(|bl| bl.contains(p));
            prop_assert_eq!(hit, lo <= p && p <= hi);
        }

        /// The entries of a range match exactly its ports, and the keys
        /// they encode to are distinct (no entry overwrites another).
        #[test]
        fn a_cover_matches_exactly_its_range(a in any::<u16>(), b in any::<u16>(), p in any::<u16>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let cover = PolicyMatch::cover(9, 400, Direction::Ingress, Some(6), Some(lo..=hi));
            let hit = cover.iter().any(|m| m.matches(9, 400, Direction::Ingress, 6, p));
            prop_assert_eq!(hit, lo <= p && p <= hi);
            prop_assert!(!cover.iter().any(|m| m.matches(9, 400, Direction::Ingress, 17, p)));
            let keys: std::collections::HashSet<_> = cover.iter().map(|m| {
                let k = m.encode();
                (k.prefix_len(), k.data())
            }).collect();
            prop_assert_eq!(keys.len(), cover.len());
        }

        #[test]
        fn blocks_are_exactly_the_range(a in any::<u16>(), b in any::<u16>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let blocks = port_range_blocks(lo, hi);
            prop_assert!(blocks.len() <= 30, "{} blocks", blocks.len());
            let ports = covered(&blocks);
            // exactly the range, each port once, in order
            let expect: Vec<u16> = (lo as u32..=hi as u32).map(|p| p as u16).collect();
            prop_assert_eq!(ports, expect);
        }
    }
}
