//! Ethernet frames for BPF_PROG_TEST_RUN ([`crate::Dataplane::run`]), shared
//! by this crate's packet tests and the verdict-level conformance runner.
//! IP, TCP and UDP checksums are left zero: the programs never verify them.
//! SCTP INIT / INIT ACK chunks carry a real CRC32c, and ARP and neighbour
//! discovery frames are complete (ICMPv6 checksum, hop limit 255), so those
//! frames are what a stack would send and can go on a real wire.

use crate::Hook;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// How the IP layer should look.
#[derive(Clone, Debug, Default)]
pub struct Ip {
    /// IPv4 options bytes (multiple of 4).
    pub v4_options: Vec<u8>,
    /// IPv6 extension headers: (type, body length in bytes incl. the 2-byte
    /// header; multiple of 8).
    pub v6_ext: Vec<(u8, usize)>,
    /// Fragment: None, or Some((offset in 8-byte units, more fragments)).
    pub frag: Option<(u16, bool)>,
}

/// Ethernet addresses of the frames built here until [`set_eth`] or
/// [`as_seen_at`] says otherwise.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

fn eth(proto: u16) -> Vec<u8> {
    let mut f = DEFAULT_DST_MAC.to_vec();
    f.extend_from_slice(&DEFAULT_SRC_MAC);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// Rewrite a frame's Ethernet source and destination.
pub fn set_eth(frame: &mut [u8], src: [u8; 6], dst: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

/// `frame` as the hook of the pod with MAC `mac` sees it on a bridge: at
/// from_pod the pod sent it (Ethernet source), at to_pod the bridge hands
/// it to the pod (Ethernet destination, unless the frame is broadcast or
/// multicast).
pub fn as_seen_at(hook: Hook, mac: [u8; 6], frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    match hook {
        Hook::FromPod => f[6..12].copy_from_slice(&mac),
        Hook::ToPod if f[0] & 1 == 0 => f[0..6].copy_from_slice(&mac),
        // leave_node reads no Ethernet addresses: the node's device
        Hook::ToPod | Hook::LeaveNode => {}
    }
    f
}

/// A locally administered MAC for a test pod, derived from its ifindex.
pub fn test_mac(ifindex: u32) -> [u8; 6] {
    let i = ifindex.to_be_bytes();
    [0x02, 0x77, i[0], i[1], i[2], i[3]]
}

/// A complete frame: Ethernet + IP (v4 or v6 by the addresses) + `l4`.
/// Panics when `src` and `dst` differ in family (a caller's bug).
pub fn frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], ip: &Ip) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f = eth(0x0800);
            let ihl = 20 + ip.v4_options.len();
            let tot = ihl + l4.len();
            f.push(0x40 | (ihl / 4) as u8);
            f.push(0);
            f.extend_from_slice(&(tot as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34]);
            let fo = match ip.frag {
                None => 0u16,
                Some((off, mf)) => off | if mf { 0x2000 } else { 0 },
            };
            f.extend_from_slice(&fo.to_be_bytes());
            f.push(64);
            f.push(proto);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            f.extend_from_slice(&ip.v4_options);
            f.extend_from_slice(l4);
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut f = eth(0x86dd);
            let mut ext = Vec::new();
            let mut hdrs: Vec<(u8, usize)> = ip.v6_ext.clone();
            if let Some((off, mf)) = ip.frag {
                hdrs.push((44, 8));
                let _ = (off, mf);
            }
            // chain: each header's next-header is the following one's type
            let types: Vec<u8> = hdrs.iter().map(|h| h.0).chain(std::iter::once(proto)).collect();
            for (i, (t, len)) in hdrs.iter().enumerate() {
                let next = types[i + 1];
                let mut h = vec![0u8; *len];
                h[0] = next;
                if *t == 44 {
                    let (off, mf) = ip.frag.unwrap();
                    let fo = (off << 3) | mf as u16;
                    h[2..4].copy_from_slice(&fo.to_be_bytes());
                } else if *t == 51 {
                    h[1] = (*len / 4 - 2) as u8;
                } else {
                    h[1] = (*len / 8 - 1) as u8;
                }
                ext.extend_from_slice(&h);
            }
            let payload = ext.len() + l4.len();
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(payload as u16).to_be_bytes());
            f.push(types[0]);
            f.push(64);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            f.extend_from_slice(&ext);
            f.extend_from_slice(l4);
            f
        }
        _ => panic!("mixed families"),
    }
}

pub fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

pub fn udp_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

pub fn sctp_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

/// SCTP chunk types the builders below use (RFC 9260 section 3.2).
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), SCTP's checksum.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An SCTP packet: the common header (ports, verification tag, CRC32c over
/// the whole packet, stored little-endian as RFC 9260 appendix A says) and
/// one chunk.
pub fn sctp_packet(sport: u16, dport: u16, vtag: u32, chunk: &[u8]) -> Vec<u8> {
    let mut h = sctp_hdr(sport, dport);
    h[4..8].copy_from_slice(&vtag.to_be_bytes());
    h.extend_from_slice(chunk);
    let sum = crc32c(&h);
    h[8..12].copy_from_slice(&sum.to_le_bytes());
    h
}

/// INIT (verification tag 0, as the first packet of an association must
/// carry) or INIT ACK (tagged with the INIT's initiate tag, carrying a
/// state cookie): type, flags, length, initiate tag, a_rwnd, outbound and
/// inbound streams, initial TSN.
fn sctp_init_chunk(ty: u8, initiate_tag: u32, cookie: &[u8]) -> Vec<u8> {
    let mut c = vec![ty, 0, 0, 0];
    c.extend_from_slice(&initiate_tag.to_be_bytes());
    c.extend_from_slice(&65535u32.to_be_bytes());
    c.extend_from_slice(&10u16.to_be_bytes());
    c.extend_from_slice(&10u16.to_be_bytes());
    c.extend_from_slice(&initiate_tag.to_be_bytes());
    if !cookie.is_empty() {
        // State Cookie parameter (type 7), padded to 4 bytes.
        c.extend_from_slice(&7u16.to_be_bytes());
        c.extend_from_slice(&((4 + cookie.len()) as u16).to_be_bytes());
        c.extend_from_slice(cookie);
        while c.len() % 4 != 0 {
            c.push(0);
        }
    }
    let len = c.len() as u16;
    c[2..4].copy_from_slice(&len.to_be_bytes());
    c
}

/// The first packet of an SCTP association: INIT with initiate tag `tag`.
pub fn sctp_init_l4(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    sctp_packet(sport, dport, 0, &sctp_init_chunk(SCTP_INIT, tag, &[]))
}

/// The server's answer to [`sctp_init_l4`]: INIT ACK, verification tag =
/// the INIT's initiate tag, its own initiate tag `own_tag`.
pub fn sctp_init_ack_l4(sport: u16, dport: u16, peer_tag: u32, own_tag: u32) -> Vec<u8> {
    sctp_packet(sport, dport, peer_tag, &sctp_init_chunk(SCTP_INIT_ACK, own_tag, b"weir-cookie"))
}

/// ICMP / ICMPv6 header: type, code, id, seq.
pub fn icmp_hdr(ty: u8, id: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = ty;
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h
}

pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
    frame(src, dst, TCP, &tcp_hdr(sport, dport, flags), &Ip::default())
}

pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    frame(src, dst, UDP, &udp_hdr(sport, dport), &Ip::default())
}

pub fn sctp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    frame(src, dst, SCTP, &sctp_hdr(sport, dport), &Ip::default())
}

pub fn sctp_init(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, tag: u32) -> Vec<u8> {
    frame(src, dst, SCTP, &sctp_init_l4(sport, dport, tag), &Ip::default())
}

pub fn sctp_init_ack(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, peer_tag: u32, own_tag: u32) -> Vec<u8> {
    frame(src, dst, SCTP, &sctp_init_ack_l4(sport, dport, peer_tag, own_tag), &Ip::default())
}

pub fn echo(src: IpAddr, dst: IpAddr, reply: bool, id: u16) -> Vec<u8> {
    let (proto, ty) = match (src, reply) {
        (IpAddr::V4(_), false) => (ICMP, 8),
        (IpAddr::V4(_), true) => (ICMP, 0),
        (IpAddr::V6(_), false) => (ICMPV6, 128),
        (IpAddr::V6(_), true) => (ICMPV6, 129),
    };
    frame(src, dst, proto, &icmp_hdr(ty, id), &Ip::default())
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP frame from `sha`: sent to `tha` when that is a
/// unicast address (a reply), else broadcast (requests, probes and
/// gratuitous announcements, whose `tha` is zero).
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = eth(0x0806);
    let dst = if tha == [0; 6] || tha[0] & 1 != 0 { BROADCAST_MAC } else { tha };
    set_eth(&mut f, sha, dst);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// A gratuitous ARP announcement (`arping -U`): `mac` claims `ip`.
pub fn garp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_REQUEST, mac, ip, [0; 6], ip)
}

/// ICMPv6 neighbour discovery types (RFC 4861).
pub const ND_RS: u8 = 133;
pub const ND_RA: u8 = 134;
pub const ND_NS: u8 = 135;
pub const ND_NA: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
/// NA flags (first byte after the checksum).
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;
/// ND option types: source and target link-layer address.
pub const ND_OPT_SLLA: u8 = 1;
pub const ND_OPT_TLLA: u8 = 2;

/// An ND option carrying a link-layer address (8 bytes).
pub fn nd_lla_option(ty: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![ty, 1];
    o.extend_from_slice(&mac);
    o
}

/// ICMPv6 body of an ND message: type, code 0, checksum (filled by
/// [`nd`]), then `fixed` (flags/reserved word and any target address),
/// then `options`.
pub fn nd_body(ty: u8, fixed: &[u8], options: &[u8]) -> Vec<u8> {
    let mut b = vec![ty, 0, 0, 0];
    b.extend_from_slice(fixed);
    b.extend_from_slice(options);
    b
}

/// Neighbour solicitation for `target`, with a source link-layer option when given.
pub fn ns_body(target: Ipv6Addr, slla: Option<[u8; 6]>) -> Vec<u8> {
    let mut fixed = vec![0; 4];
    fixed.extend_from_slice(&target.octets());
    nd_body(ND_NS, &fixed, &slla.map(|m| nd_lla_option(ND_OPT_SLLA, m)).unwrap_or_default())
}

/// Neighbour advertisement for `target` with `flags` (`NA_*`), with a
/// target link-layer option when given.
pub fn na_body(target: Ipv6Addr, flags: u8, tlla: Option<[u8; 6]>) -> Vec<u8> {
    let mut fixed = vec![flags, 0, 0, 0];
    fixed.extend_from_slice(&target.octets());
    nd_body(ND_NA, &fixed, &tlla.map(|m| nd_lla_option(ND_OPT_TLLA, m)).unwrap_or_default())
}

/// Router solicitation, with a source link-layer option when given.
pub fn rs_body(slla: Option<[u8; 6]>) -> Vec<u8> {
    nd_body(ND_RS, &[0; 4], &slla.map(|m| nd_lla_option(ND_OPT_SLLA, m)).unwrap_or_default())
}

/// Router advertisement: hop limit 64, lifetime 1800 s, from `slla`.
pub fn ra_body(slla: [u8; 6]) -> Vec<u8> {
    nd_body(ND_RA, &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0], &nd_lla_option(ND_OPT_SLLA, slla))
}

/// The solicited-node multicast group of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | o[13] as u16, (o[14] as u16) << 8 | o[15] as u16)
}

/// The Ethernet address an IPv6 multicast group maps to (33:33 + low 32 bits).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// A complete ND frame from `src_mac`: hop limit 255 (receivers drop ND
/// with any other) and a valid ICMPv6 checksum; Ethernet destination the
/// group's MAC for multicast `dst`, else `dst_mac`.
pub fn nd(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6], body: &[u8]) -> Vec<u8> {
    let mut f = frame(IpAddr::V6(src), IpAddr::V6(dst), ICMPV6, body, &Ip::default());
    let dmac = if dst.is_multicast() { ipv6_multicast_mac(dst) } else { dst_mac };
    set_eth(&mut f, src_mac, dmac);
    f[14 + 7] = 255;
    let sum = icmpv6_checksum(src, dst, body);
    f[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum of `body` (its checksum field zero) between `src`
/// and `dst` (RFC 4443 section 2.3, over the RFC 8200 pseudo-header).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + body.len() + 1);
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(body.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, ICMPV6]);
    data.extend_from_slice(body);
    data[40 + 2..40 + 4].fill(0);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = data.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 B.4 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn sctp_init_is_well_formed() {
        let l4 = sctp_init_l4(40000, 80, 0xdead_beef);
        assert_eq!(l4.len(), 12 + 20);
        assert_eq!(&l4[0..2], &40000u16.to_be_bytes());
        assert_eq!(&l4[2..4], &80u16.to_be_bytes());
        assert_eq!(&l4[4..8], &[0, 0, 0, 0], "INIT carries verification tag 0");
        assert_eq!(l4[12], SCTP_INIT);
        assert_eq!(u16::from_be_bytes([l4[14], l4[15]]), 20);
        let mut zeroed = l4.clone();
        zeroed[8..12].fill(0);
        assert_eq!(u32::from_le_bytes(l4[8..12].try_into().unwrap()), crc32c(&zeroed));

        let ack = sctp_init_ack_l4(80, 40000, 0xdead_beef, 7);
        assert_eq!(&ack[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(ack[12], SCTP_INIT_ACK);
        assert_eq!(u16::from_be_bytes([ack[14], ack[15]]) as usize, ack.len() - 12);
        assert_eq!(ack.len() % 4, 0);
        let mut zeroed = ack.clone();
        zeroed[8..12].fill(0);
        assert_eq!(u32::from_le_bytes(ack[8..12].try_into().unwrap()), crc32c(&zeroed));
    }

    #[test]
    fn nd_frames_are_what_a_stack_sends() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let src: Ipv6Addr = "fe80::11:22ff:fe33:4455".parse().unwrap();
        let target: Ipv6Addr = "fd00::7".parse().unwrap();
        let f = nd(mac, src, "ff02::1".parse().unwrap(), [0; 6], &na_body(target, NA_OVERRIDE, Some(mac)));
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(f[14 + 6], ICMPV6);
        assert_eq!(f[14 + 7], 255, "hop limit");
        let body = &f[54..];
        assert_eq!(body.len(), 32);
        assert_eq!((body[0], body[4]), (ND_NA, NA_OVERRIDE));
        assert_eq!(&body[8..24], &target.octets());
        assert_eq!(&body[24..32], &[ND_OPT_TLLA, 1, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
        // a checksum over data that includes it folds to zero
        let mut with_sum = body.to_vec();
        let stored = u16::from_be_bytes([body[2], body[3]]);
        with_sum[2..4].fill(0);
        assert_eq!(icmpv6_checksum(src, "ff02::1".parse().unwrap(), &with_sum), stored);
        assert_ne!(stored, 0);
        assert_eq!(solicited_node("fd00::12:3456".parse().unwrap()), "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn arp_frames() {
        let mac = [0x02, 1, 2, 3, 4, 5];
        let g = garp(mac, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(g.len(), 42);
        assert_eq!(&g[0..6], &BROADCAST_MAC);
        assert_eq!(&g[6..12], &mac);
        assert_eq!(&g[12..14], &[0x08, 0x06]);
        assert_eq!(&g[20..22], &ARP_REQUEST.to_be_bytes());
        assert_eq!(&g[28..32], &[10, 0, 0, 9]);
        assert_eq!(&g[38..42], &[10, 0, 0, 9]);
        let peer = [0x02, 9, 9, 9, 9, 9];
        let r = arp(ARP_REPLY, mac, Ipv4Addr::new(10, 0, 0, 9), peer, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(&r[0..6], &peer);
    }

    #[test]
    fn frames_carry_consistent_lengths() {
        let v4 = sctp_init("10.0.0.1".parse().unwrap(), 1, "10.0.0.2".parse().unwrap(), 2, 3);
        assert_eq!(&v4[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([v4[16], v4[17]]) as usize, v4.len() - 14);
        assert_eq!(v4[23], SCTP);
        let v6 = tcp("fd00::1".parse().unwrap(), 1, "fd00::2".parse().unwrap(), 2, SYN);
        assert_eq!(&v6[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([v6[18], v6[19]]) as usize, v6.len() - 14 - 40);
        assert_eq!(v6[20], TCP);
        assert_eq!(v6[14 + 40 + 13], SYN);
    }
}
