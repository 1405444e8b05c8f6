//! Ports and protocols: range splitting into the aligned blocks the policy
//! LPM trie stores, and protocol names.

/// Ports sharing their top `prefix_bits` bits with `value` (16 = one port).
/// `value` has its low `16 - prefix_bits` bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortBlock {
    pub value: u16,
    pub prefix_bits: u8,
}

impl PortBlock {
    pub fn single(port: u16) -> Self {
        PortBlock {
            value: port,
            prefix_bits: 16,
        }
    }
    pub fn first(&self) -> u16 {
        self.value
    }
    pub fn last(&self) -> u16 {
        (self.value as u32 + (1u32 << (16 - self.prefix_bits as u32)) - 1) as u16
    }
    pub fn contains(&self, port: u16) -> bool {
        self.first() <= port && port <= self.last()
    }
}

/// Split `first..=last` into the fewest aligned blocks covering exactly it
/// (at most 30 for any range). An empty range (`first > last`) gives none.
pub fn port_blocks(first: u16, last: u16) -> Vec<PortBlock> {
    let mut out = Vec::new();
    let (mut lo, hi) = (first as u32, last as u32);
    while lo <= hi {
        // Largest block aligned at lo: limited by lo's trailing zeros and
        // by what still fits below hi.
        let mut size_bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1u32 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out.push(PortBlock {
            value: lo as u16,
            prefix_bits: (16 - size_bits) as u8,
        });
        lo += 1u32 << size_bits;
    }
    out
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// The protocol number of a NetworkPolicy / container port protocol name;
/// absent means TCP, as the API server defaults it. Names are
/// case-sensitive, as the API validates them.
pub fn protocol_number(name: Option<&str>) -> Option<u8> {
    match name {
        None | Some("TCP") => Some(PROTO_TCP),
        Some("UDP") => Some(PROTO_UDP),
        Some("SCTP") => Some(PROTO_SCTP),
        _ => None,
    }
}

/// IANA service name rules the API server applies to named ports: 1-15
/// characters of [a-z0-9-], at least one letter, no leading/trailing or
/// doubled hyphen.
pub fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_port_is_one_full_block() {
        assert_eq!(port_blocks(80, 80), vec![PortBlock::single(80)]);
    }

    #[test]
    fn aligned_range_is_one_block() {
        assert_eq!(
            port_blocks(8000, 8007),
            vec![PortBlock {
                value: 8000,
                prefix_bits: 13
            }]
        );
    }

    #[test]
    fn whole_port_space_is_sixteen_blocks_from_one() {
        let b = port_blocks(1, 65535);
        assert_eq!(b.len(), 16);
        assert_eq!(b.first().unwrap(), &PortBlock::single(1));
        assert_eq!(
            b.last().unwrap(),
            &PortBlock {
                value: 32768,
                prefix_bits: 1
            }
        );
    }

    #[test]
    fn worst_case_range_needs_thirty_blocks() {
        assert_eq!(port_blocks(1, 65534).len(), 30);
    }

    #[test]
    fn empty_range_gives_nothing() {
        assert!(port_blocks(10, 9).is_empty());
    }

    #[test]
    fn protocols_default_to_tcp_and_are_case_sensitive() {
        assert_eq!(protocol_number(None), Some(6));
        assert_eq!(protocol_number(Some("UDP")), Some(17));
        assert_eq!(protocol_number(Some("SCTP")), Some(132));
        assert_eq!(protocol_number(Some("udp")), None);
        assert_eq!(protocol_number(Some("ICMP")), None);
    }

    #[test]
    fn port_names_follow_iana_rules() {
        assert!(valid_port_name("http"));
        assert!(valid_port_name("h2c-1"));
        assert!(!valid_port_name("80"));
        assert!(!valid_port_name("Http"));
        assert!(!valid_port_name("a--b"));
        assert!(!valid_port_name("averyveryverylongname"));
    }

    /// Minimal count: a reference greedy over all block sizes from the
    /// top is optimal for prefix covers; compare counts with it.
    fn reference_count(first: u32, last: u32) -> usize {
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
        rec(first, last, 0, 16)
    }

    proptest! {
        #[test]
        fn blocks_cover_exactly_the_range_minimally(a in 0u16.., b in 0u16..) {
            let (first, last) = if a <= b { (a, b) } else { (b, a) };
            let blocks = port_blocks(first, last);
            prop_assert!(blocks.len() <= 30);
            prop_assert_eq!(blocks.len(), reference_count(first as u32, last as u32));
            // Disjoint, ordered, contiguous, aligned: the union is exactly the range.
            let mut next = first as u32;
            for b in &blocks {
                prop_assert!(b.prefix_bits <= 16);
                let size = 1u32 << (16 - b.prefix_bits as u32);
                prop_assert_eq!(b.value as u32 % size, 0);
                prop_assert_eq!(b.value as u32, next);
                next = b.last() as u32 + 1;
            }
            prop_assert_eq!(next, last as u32 + 1);
        }

        #[test]
        fn membership_matches_range(a in 0u16.., b in 0u16.., p in 0u16..) {
            let (first, last) = if a <= b { (a, b) } else { (b, a) };
            let hit = port_blocks(first, last).iter().any(|bl| bl.contains(p));
            prop_assert_eq!(hit, first <= p && p <= last);
        }
    }
}
