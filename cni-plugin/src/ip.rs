//! Address arithmetic over both families (as u128) and host-local ranges.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// `a + n`, wrapping inside the family.
pub fn add(a: IpAddr, n: i128) -> IpAddr {
    let v4 = a.is_ipv4();
    let x = to_u128(a).wrapping_add(n as u128);
    from_u128(if v4 { x & 0xffff_ffff } else { x }, v4)
}

/// One host-local range: `start..=end` inside `subnet`; `gateway` is never allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.start.is_ipv4() && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(a))
    }
    pub fn overlaps(&self, o: &Range) -> bool {
        self.start.is_ipv4() == o.start.is_ipv4()
            && to_u128(self.start) <= to_u128(o.end)
            && to_u128(o.start) <= to_u128(self.end)
    }
    /// Addresses this range can hand out.
    pub fn capacity(&self) -> u128 {
        let n = to_u128(self.end) - to_u128(self.start) + 1;
        n.saturating_sub(self.contains(self.gateway) as u128)
    }
    /// The address with the range's prefix length, as results carry it.
    pub fn with_prefix(&self, a: IpAddr) -> IpNet {
        IpNet::new(a, self.subnet.prefix_len()).expect("prefix of a parsed subnet")
    }
}

/// Ranges that together give one address of one family (`ipam.ranges[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn contains(&self, a: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(a))
    }
    pub fn range_of(&self, a: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(a))
    }
    pub fn capacity(&self) -> u128 {
        self.ranges.iter().map(Range::capacity).fold(0u128, u128::saturating_add)
    }
    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].start.is_ipv4()
    }
}
