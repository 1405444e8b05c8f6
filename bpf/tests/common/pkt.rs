//! Ethernet frames for BPF_PROG_TEST_RUN. Checksums are left zero: the
//! programs never verify them.

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
