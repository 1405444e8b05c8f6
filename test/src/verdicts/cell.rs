//! The four program runs of one probe cell (see the module documentation
//! of `verdicts`).

use std::net::IpAddr;

use weir_bpf::{pkt, Hook};

use crate::case::Protocol;

/// One program run of a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub what: &'static str,
    pub hook: Hook,
    pub ifindex: u32,
    pub frame: Vec<u8>,
}

/// Where a probe's packets go: the address and port the client dials, and
/// where kube-proxy sends them (equal when dialing the pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub dialed: (IpAddr, u16),
    pub backend: (IpAddr, u16),
}

/// The four runs of a cell (see the module documentation).
pub fn plan_cell(protocol: Protocol, src: (u32, IpAddr), dst_ifindex: u32, target: Target, sport: u16) -> Vec<Stage> {
    let (sif, sip) = src;
    let (vip, vport) = target.dialed;
    let (bip, bport) = target.backend;
    let tag = 0x5eed_0000 | sport as u32;
    let request = |dst: IpAddr, dport: u16| match protocol {
        Protocol::TCP => pkt::tcp(sip, sport, dst, dport, pkt::SYN),
        Protocol::UDP => pkt::udp(sip, sport, dst, dport),
        Protocol::SCTP => pkt::sctp_init(sip, sport, dst, dport, tag),
    };
    let answer = |from: IpAddr, fport: u16| match protocol {
        Protocol::TCP => pkt::tcp(from, fport, sip, sport, pkt::SYN | pkt::ACK),
        Protocol::UDP => pkt::udp(from, fport, sip, sport),
        Protocol::SCTP => pkt::sctp_init_ack(from, fport, sip, sport, tag, !tag),
    };
    // Each pod has the MAC pkt::test_mac gives its ifindex (cni_add): it
    // sends from it at from_pod and the bridge hands it frames for it.
    let stage = |what, hook, ifindex, frame: Vec<u8>| Stage {
        what,
        hook,
        ifindex,
        frame: pkt::as_seen_at(hook, pkt::test_mac(ifindex), &frame),
    };
    vec![
        stage("request at from_pod(src)", Hook::FromPod, sif, request(vip, vport)),
        stage("request at to_pod(dst)", Hook::ToPod, dst_ifindex, request(bip, bport)),
        stage("answer at from_pod(dst)", Hook::FromPod, dst_ifindex, answer(bip, bport)),
        stage("answer at to_pod(src)", Hook::ToPod, sif, answer(vip, vport)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn parse_l4(frame: &[u8]) -> (IpAddr, IpAddr, u8, &[u8]) {
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => {
                let ihl = (frame[14] & 0xf) as usize * 4;
                let a: [u8; 4] = frame[26..30].try_into().unwrap();
                let b: [u8; 4] = frame[30..34].try_into().unwrap();
                (IpAddr::from(a), IpAddr::from(b), frame[23], &frame[14 + ihl..])
            }
            0x86dd => {
                let a: [u8; 16] = frame[22..38].try_into().unwrap();
                let b: [u8; 16] = frame[38..54].try_into().unwrap();
                (IpAddr::from(a), IpAddr::from(b), frame[20], &frame[54..])
            }
            t => panic!("ethertype {t:#x}"),
        }
    }

    fn ports(l4: &[u8]) -> (u16, u16) {
        (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
    }

    #[test]
    fn a_service_cell_is_dnat_then_un_dnat() {
        let t = Target { dialed: (ip("10.96.0.10"), 80), backend: (ip("10.77.0.11"), 81) };
        let st = plan_cell(Protocol::TCP, (1000, ip("10.77.0.10")), 1002, t, 40000);
        let hooks: Vec<(Hook, u32)> = st.iter().map(|s| (s.hook, s.ifindex)).collect();
        assert_eq!(hooks, [(Hook::FromPod, 1000), (Hook::ToPod, 1002), (Hook::FromPod, 1002), (Hook::ToPod, 1000)]);
        let want = [
            ("10.77.0.10", 40000, "10.96.0.10", 80, pkt::SYN),
            ("10.77.0.10", 40000, "10.77.0.11", 81, pkt::SYN),
            ("10.77.0.11", 81, "10.77.0.10", 40000, pkt::SYN | pkt::ACK),
            ("10.96.0.10", 80, "10.77.0.10", 40000, pkt::SYN | pkt::ACK),
        ];
        for (s, (src, sp, dst, dp, flags)) in st.iter().zip(want) {
            let mac = pkt::test_mac(s.ifindex);
            let own = if s.hook == Hook::FromPod { &s.frame[6..12] } else { &s.frame[0..6] };
            assert_eq!(own, &mac, "{}: the pod's MAC", s.what);
            let (a, b, proto, l4) = parse_l4(&s.frame);
            assert_eq!((a, b, proto), (ip(src), ip(dst), pkt::TCP), "{}", s.what);
            assert_eq!(ports(l4), (sp, dp), "{}", s.what);
            assert_eq!(l4[13], flags, "{}", s.what);
        }
    }

    #[test]
    fn udp_and_sctp_cells_over_ipv6() {
        let t = Target { dialed: (ip("fd77::b"), 80), backend: (ip("fd77::b"), 80) };
        let st = plan_cell(Protocol::UDP, (1000, ip("fd77::a")), 1002, t, 40001);
        let (a, b, proto, l4) = parse_l4(&st[0].frame);
        assert_eq!((a, b, proto, ports(l4)), (ip("fd77::a"), ip("fd77::b"), pkt::UDP, (40001, 80)));
        assert_eq!(u16::from_be_bytes([l4[4], l4[5]]) as usize, l4.len());

        let st = plan_cell(Protocol::SCTP, (1000, ip("fd77::a")), 1002, t, 40002);
        let (_, _, proto, init) = parse_l4(&st[1].frame);
        assert_eq!(proto, pkt::SCTP);
        assert_eq!(init[12], pkt::SCTP_INIT);
        assert_eq!(&init[4..8], &[0, 0, 0, 0]);
        let tag = &init[16..20];
        let (_, _, _, ack) = parse_l4(&st[2].frame);
        assert_eq!(ack[12], pkt::SCTP_INIT_ACK);
        assert_eq!(&ack[4..8], tag, "the INIT ACK is tagged with the INIT's initiate tag");
        assert_eq!(ports(ack), (80, 40002));
        for l4 in [init, ack] {
            let mut z = l4.to_vec();
            z[8..12].fill(0);
            assert_eq!(u32::from_le_bytes(l4[8..12].try_into().unwrap()), pkt::crc32c(&z));
        }
    }
}
