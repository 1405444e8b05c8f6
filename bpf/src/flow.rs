//! The packets of one flow as the programs on its path see them, for
//! BPF_PROG_TEST_RUN ([`crate::Dataplane::run`]): the verdict-level
//! conformance runner judges probe cells with them, and weir-policyd proves
//! `weirctl explain`'s answer with them against the live maps.
//!
//! A flow from a pod to a destination it dials (a pod, or a Service VIP that
//! kube-proxy DNATs to a backend) crosses, on one node:
//!
//! 1. `from_pod` on the source's host veth: the request as the pod sends it
//!    (to the VIP and Service port, or to the pod address);
//! 2. `to_pod` on the destination's host veth: the same request after
//!    kube-proxy's DNAT (backend address, targetPort);
//! 3. `from_pod` on the destination: its answer (TCP SYN-ACK, UDP
//!    datagram, SCTP INIT ACK) before the un-DNAT;
//! 4. `to_pod` on the source: that answer from the VIP after the un-DNAT.
//!
//! Requests are a TCP SYN, a UDP datagram or an SCTP INIT (CRC32c set).

use std::net::IpAddr;

use crate::{pkt, Hook};

/// One program run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub what: &'static str,
    pub hook: Hook,
    pub ifindex: u32,
    pub frame: Vec<u8>,
}

/// Where a flow's packets go: the address and port the client dials, and
/// where kube-proxy sends them (equal when dialing the pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub dialed: (IpAddr, u16),
    pub backend: (IpAddr, u16),
}

/// The first packet of a flow: TCP SYN, UDP datagram or SCTP INIT
/// (`protocol` is [`pkt::TCP`], [`pkt::UDP`] or [`pkt::SCTP`]; anything
/// else is a caller's bug and panics).
pub fn request(protocol: u8, src: (IpAddr, u16), dst: (IpAddr, u16)) -> Vec<u8> {
    let tag = 0x5eed_0000 | src.1 as u32;
    match protocol {
        pkt::TCP => pkt::tcp(src.0, src.1, dst.0, dst.1, pkt::SYN),
        pkt::UDP => pkt::udp(src.0, src.1, dst.0, dst.1),
        pkt::SCTP => pkt::sctp_init(src.0, src.1, dst.0, dst.1, tag),
        p => panic!("flow::request: protocol {p} is not TCP, UDP or SCTP"),
    }
}

/// The answer to [`request`] from `from`: TCP SYN-ACK, UDP datagram or
/// SCTP INIT ACK (tagged with the request's initiate tag).
pub fn answer(protocol: u8, from: (IpAddr, u16), to: (IpAddr, u16)) -> Vec<u8> {
    let tag = 0x5eed_0000 | to.1 as u32;
    match protocol {
        pkt::TCP => pkt::tcp(from.0, from.1, to.0, to.1, pkt::SYN | pkt::ACK),
        pkt::UDP => pkt::udp(from.0, from.1, to.0, to.1),
        pkt::SCTP => pkt::sctp_init_ack(from.0, from.1, to.0, to.1, tag, !tag),
        p => panic!("flow::answer: protocol {p} is not TCP, UDP or SCTP"),
    }
}

/// One run of `hook` on `ifindex` with `frame` as the pod with MAC `mac`
/// sends it (from_pod) or is handed it (to_pod).
pub fn stage(what: &'static str, hook: Hook, ifindex: u32, mac: [u8; 6], frame: &[u8]) -> Stage {
    Stage { what, hook, ifindex, frame: pkt::as_seen_at(hook, mac, frame) }
}

/// The four runs of a flow between two pods of one node (see the module
/// documentation); `mac` gives each pod's MAC by its host ifindex.
pub fn plan_cell(
    protocol: u8,
    src: (u32, IpAddr),
    dst_ifindex: u32,
    target: Target,
    sport: u16,
    mac: impl Fn(u32) -> [u8; 6],
) -> Vec<Stage> {
    let (sif, sip) = src;
    vec![
        stage(
            "request at from_pod(src)",
            Hook::FromPod,
            sif,
            mac(sif),
            &request(protocol, (sip, sport), target.dialed),
        ),
        stage(
            "request at to_pod(dst)",
            Hook::ToPod,
            dst_ifindex,
            mac(dst_ifindex),
            &request(protocol, (sip, sport), target.backend),
        ),
        stage(
            "answer at from_pod(dst)",
            Hook::FromPod,
            dst_ifindex,
            mac(dst_ifindex),
            &answer(protocol, target.backend, (sip, sport)),
        ),
        stage("answer at to_pod(src)", Hook::ToPod, sif, mac(sif), &answer(protocol, target.dialed, (sip, sport))),
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
        let st = plan_cell(pkt::TCP, (1000, ip("10.77.0.10")), 1002, t, 40000, pkt::test_mac);
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
        let st = plan_cell(pkt::UDP, (1000, ip("fd77::a")), 1002, t, 40001, pkt::test_mac);
        let (a, b, proto, l4) = parse_l4(&st[0].frame);
        assert_eq!((a, b, proto, ports(l4)), (ip("fd77::a"), ip("fd77::b"), pkt::UDP, (40001, 80)));
        assert_eq!(u16::from_be_bytes([l4[4], l4[5]]) as usize, l4.len());

        let st = plan_cell(pkt::SCTP, (1000, ip("fd77::a")), 1002, t, 40002, pkt::test_mac);
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
