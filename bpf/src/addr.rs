//! Addresses as the maps hold them: 16 bytes, IPv4 IPv4-mapped
//! (`::ffff:a.b.c.d`), so an IPv4 /n is a 16-byte prefix of length 96 + n.
//! Callers always pass `IpAddr`/`IpNet`; only this module knows the mapping.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`to_bytes`]: IPv4-mapped addresses come back as IPv4.
pub fn from_bytes(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// (prefix length over the 16 bytes, masked address bytes).
pub fn net_to_prefix(net: IpNet) -> (u32, [u8; 16]) {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (96 + n.prefix_len() as u32, to_bytes(IpAddr::V4(n.network()))),
        IpNet::V6(n) => (n.prefix_len() as u32, n.network().octets()),
    }
}

/// The inverse of [`net_to_prefix`]. Prefixes of length >= 96 inside
/// `::ffff:0:0/96` come back as IPv4 networks.
pub fn prefix_to_net(len: u32, b: [u8; 16]) -> IpNet {
    let v6 = Ipv6Addr::from(b);
    if len >= 96 {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpNet::V4(Ipv4Net::new(v4, (len - 96) as u8).expect("len <= 128"));
        }
    }
    IpNet::V6(Ipv6Net::new(v6, len.min(128) as u8).expect("len <= 128"))
}

pub fn host_net(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new(v4, 32).unwrap()),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new(v6, 128).unwrap()),
    }
}

/// The link-local address Linux derives from a MAC by default
/// (`addr_gen_mode` eui64): fe80::/64 with the modified EUI-64 interface
/// identifier of RFC 4291 appendix A (universal/local bit flipped, ff:fe in
/// the middle).
pub fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..11].copy_from_slice(&[mac[0] ^ 0x02, mac[1], mac[2]]);
    o[11] = 0xff;
    o[12] = 0xfe;
    o[13..16].copy_from_slice(&mac[3..6]);
    Ipv6Addr::from(o)
}

/// A MAC written `aa:bb:cc:dd:ee:ff` (as `ip link` and netlink layers print it).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An address one interface may own: not group (multicast, broadcast), not
/// all zero. The endpoint entry holds only these.
pub fn is_unicast_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[allow(dead_code)]
pub(crate) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_mapped() {
        let b = to_bytes("10.1.2.3".parse().unwrap());
        assert_eq!(&b[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&b[12..], &[10, 1, 2, 3]);
        assert_eq!(from_bytes(b), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn link_local_is_linux_eui64() {
        // what the kernel gives an interface with this MAC (addr_gen_mode 0)
        let mac = parse_mac("7a:fe:10:a1:be:33").unwrap();
        assert_eq!(eui64_link_local(mac), "fe80::78fe:10ff:fea1:be33".parse::<Ipv6Addr>().unwrap());
        assert_eq!(format_mac(mac), "7a:fe:10:a1:be:33");
        for bad in ["", "7a:fe:10:a1:be", "7a:fe:10:a1:be:33:00", "7a:fe:10:a1:be:3", "zz:fe:10:a1:be:33"] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_round_trip() {
        for s in ["10.0.0.0/8", "0.0.0.0/0", "192.168.1.7/32", "fd00::/64", "::/0", "2001:db8::1/128"] {
            let net: IpNet = s.parse().unwrap();
            let (len, b) = net_to_prefix(net);
            assert_eq!(prefix_to_net(len, b), net, "{s}");
        }
        assert_eq!(net_to_prefix("10.0.0.0/8".parse().unwrap()).0, 104);
        // host bits are cleared, never stored
        let (_, b) = net_to_prefix("10.1.2.3/8".parse().unwrap());
        assert_eq!(&b[12..], &[10, 0, 0, 0]);
    }
}
