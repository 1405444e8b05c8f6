//! Port ranges as LPM blocks: the policy key ends with (protocol, port), so
//! a block of 2^k ports aligned on 2^k is one entry of prefix length
//! `POLICY_FIXED_BITS + 8 + (16 - k)`. Any range splits into at most 30
//! such blocks, whatever its size.

use crate::abi::POLICY_FIXED_BITS;

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
    /// Prefix length of the policy key for this block.
    pub fn prefix_len(&self) -> u32 {
        POLICY_FIXED_BITS + 8 + self.bits as u32
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
        assert_eq!(PortBlock { start: 80, bits: 16 }.prefix_len(), 96);
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
