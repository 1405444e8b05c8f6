//! Ethernet frames for BPF_PROG_TEST_RUN ([`crate::Dataplane::run`]), shared
//! by this crate's packet tests and the verdict-level conformance runner.
//! IP, TCP and UDP checksums are left zero: the programs never verify them.
//! SCTP INIT / INIT ACK chunks carry a real CRC32c, so the frames are what
//! an SCTP stack would send.

use std::net::IpAddr;

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

fn eth(proto: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&proto.to_be_bytes());
    f
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

pub fn arp() -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0u8; 28]);
    f
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
