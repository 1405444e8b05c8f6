//! What CNI ADD and the Service allocator hand out, in creation order:
//! pod addresses and host ifindexes, ClusterIPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Result};

/// The node's gateway addresses on the pod bridge (HOST in the ipcache).
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// Host part of the first pod address; the ones below stay free as
/// host-local leaves them.
const FIRST_HOST: u32 = 10;
/// Pods a case may create (addresses up to .254 of the /24).
pub const MAX_PODS: u32 = 244;
/// Host ifindex of the first pod; pod n gets FIRST_IFINDEX + 2n, its veth
/// peer the odd number after it (explicit, so no automatic numbering can
/// take a number a later pod needs).
pub const FIRST_IFINDEX: u32 = 1000;

/// One pod's fake interface: what CNI ADD would have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddr {
    pub ifindex: u32,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl PodAddr {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// Hands out pod addresses, ifindexes and ClusterIPs in creation order.
#[derive(Debug, Default, Clone)]
pub struct Addresses {
    pods: u32,
    vips: u32,
}

impl Addresses {
    pub fn next_pod(&mut self) -> Result<PodAddr> {
        let n = self.pods;
        ensure!(n < MAX_PODS, "more than {MAX_PODS} pod creations in one case: the fake /24 is full");
        self.pods += 1;
        let host = FIRST_HOST + n;
        Ok(PodAddr {
            ifindex: FIRST_IFINDEX + 2 * n,
            v4: Ipv4Addr::new(10, 77, 0, host as u8),
            v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, host as u16),
        })
    }

    /// A Service's ClusterIPs (10.96.0.0/24 and fd96::/64, from .10 on).
    pub fn next_vip(&mut self) -> Result<(Ipv4Addr, Ipv6Addr)> {
        let n = self.vips;
        ensure!(n < MAX_PODS, "more than {MAX_PODS} Services in one case");
        self.vips += 1;
        let host = FIRST_HOST + n;
        Ok((Ipv4Addr::new(10, 96, 0, host as u8), Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, host as u16)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placeholder;

    #[test]
    fn addresses_are_distinct_share_one_subnet_and_never_repeat() {
        let mut a = Addresses::default();
        let first = a.next_pod().unwrap();
        assert_eq!(first.ifindex, FIRST_IFINDEX);
        assert_eq!(first.v4, Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(first.v6, "fd77::a".parse::<Ipv6Addr>().unwrap());
        let mut seen = vec![first];
        for _ in 1..MAX_PODS {
            seen.push(a.next_pod().unwrap());
        }
        assert!(a.next_pod().is_err(), "the /24 is full");
        let mut ifx: Vec<u32> = seen.iter().map(|p| p.ifindex).collect();
        ifx.sort();
        ifx.dedup();
        assert_eq!(ifx.len(), seen.len());
        // veth peers take the odd number after each pod's: never another pod's.
        assert!(ifx.iter().all(|i| (i - FIRST_IFINDEX).is_multiple_of(2)));
        for p in &seen {
            // one /24 and one /64, like a single node's pod subnet; never the gateway
            assert_eq!(placeholder::network(IpAddr::V4(p.v4), 24).unwrap(), "10.77.0.0/24");
            assert_eq!(placeholder::network(IpAddr::V6(p.v6), 64).unwrap(), "fd77::/64");
            assert_ne!(p.v4, GATEWAY4);
            assert_ne!(p.v6, GATEWAY6);
            assert_eq!(p.v4.octets()[3] as u16, p.v6.segments()[7], "the twins share a host part");
        }
        let (v4, v6) = a.next_vip().unwrap();
        assert_eq!((v4, v6), (Ipv4Addr::new(10, 96, 0, 10), "fd96::a".parse().unwrap()));
        assert_ne!(a.next_vip().unwrap().0, v4);
    }
}
