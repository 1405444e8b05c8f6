//! Packet-level tests of from_pod/to_pod through BPF_PROG_TEST_RUN: maps
//! filled through the Rust API in a private bpffs root, frames built by
//! hand, verdicts and counters checked. Each test runs in its own network
//! namespace (the kernel resolves the test packet's ifindex there).

mod common;
use common::pkt::{self, Ip, ACK, FIN, ICMP, RST, SCTP, SYN, TCP, UDP};
use common::pkt::{ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, NA_OVERRIDE, NA_SOLICITED};
use common::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weir_bpf::abi::*;
use weir_bpf::policy::PortBlock;
use weir_bpf::{Dataplane, Direction, Hook, PolicyMatch, TC_DROP, TC_PASS};

const ID_A: u32 = 300;
const ID_B: u32 = 301;
const ID_R: u32 = 400;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two local pods A and B (real veth devices in a private netns) with the
/// MACs `pkt::test_mac` gives their ifindexes and addresses in 10.0.0.0/24
/// and fd00::/64, a remote pod R (10.1.0.5, identity 400), the node
/// (10.0.0.1 = HOST), a Service VIP 10.96.0.10, and their IPv6 twins.
struct Env {
    _root: TestRoot,
    dp: Dataplane,
    a: u32,
    b: u32,
}

const A4: &str = "10.0.0.10";
const B4: &str = "10.0.0.20";
const R4: &str = "10.1.0.5";
const HOST4: &str = "10.0.0.1";
const VIP4: &str = "10.96.0.10";
const A6: &str = "fd00::10";
const B6: &str = "fd00::20";
const R6: &str = "fd01::5";

impl Env {
    fn new(tag: &str) -> Option<Env> {
        if !is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        private_netns();
        let root = TestRoot::new(tag);
        let dp = root.load();
        let a = dummy("wa");
        let b = dummy("wb");
        let cache = |net: &str, identity, endpoint, flags| {
            let v = IpcacheValue { identity, endpoint, flags, pad: 0 };
            dp.set_ipcache(net.parse().unwrap(), &v).unwrap();
        };
        cache("10.0.0.10/32", ID_A, a, 0);
        cache("fd00::10/128", ID_A, a, 0);
        cache("10.0.0.20/32", ID_B, b, 0);
        cache("fd00::20/128", ID_B, b, 0);
        cache("10.1.0.0/24", ID_R, 0, 0);
        cache("fd01::/64", ID_R, 0, 0);
        cache("10.0.0.1/32", ID_HOST, 0, 0);
        cache("fd00::1/128", ID_HOST, 0, 0);
        cache("10.96.0.0/12", ID_WORLD, 0, IPCACHE_SERVICE);
        let env = Env { _root: root, dp, a, b };
        env.ep(a, ID_A, EP_READY);
        env.ep(b, ID_B, EP_READY);
        Some(env)
    }
    /// Program a pod's entry as policyd does: over what CNI ADD wrote.
    fn ep(&self, ifindex: u32, identity: u32, flags: u32) {
        let (v4, v6) = if ifindex == self.a { (A4, A6) } else { (B4, B6) };
        let addrs = [format!("{v4}/24").parse().unwrap(), format!("{v6}/64").parse().unwrap()];
        let pod = Endpoint::for_pod(pkt::test_mac(ifindex), &addrs, 0).unwrap();
        self.dp.set_endpoint(ifindex, &Endpoint { identity, flags, revision: 1, ..pod }).unwrap();
    }
    fn mac(&self, ifindex: u32) -> [u8; 6] {
        pkt::test_mac(ifindex)
    }
    /// The pod's kernel-made link-local address.
    fn ll(&self, ifindex: u32) -> Ipv6Addr {
        weir_bpf::addr::eui64_link_local(self.mac(ifindex))
    }
    fn allow(&self, endpoint: u32, identity: u32, direction: u8, protocol: Option<u8>, ports: Option<(u16, u16)>) {
        let direction = Direction::from_u8(direction).unwrap();
        self.dp
            .allow(&PolicyMatch::cover(endpoint, identity, direction, protocol, ports.map(|(a, b)| a..=b)), 7)
            .unwrap();
    }
    fn run(&self, hook: Hook, ifindex: u32, frame: &[u8]) -> i32 {
        self.dp.run(hook, frame, ifindex).unwrap()
    }
    /// to_pod of `to`, the frame addressed to the pod's MAC (unless
    /// broadcast or multicast), as the bridge hands it over.
    fn to(&self, to: u32, frame: &[u8]) -> bool {
        verdict(self.run(Hook::ToPod, to, &pkt::as_seen_at(Hook::ToPod, self.mac(to), frame)))
    }
    /// from_pod of `from`, the frame sent from the pod's MAC.
    fn from(&self, from: u32, frame: &[u8]) -> bool {
        verdict(self.run(Hook::FromPod, from, &pkt::as_seen_at(Hook::FromPod, self.mac(from), frame)))
    }
    /// Run `frame` exactly as given (its Ethernet addresses too): whether it
    /// passes must be `pass`, and the verdict counted under `reason`.
    fn expect(&self, hook: Hook, ifindex: u32, frame: &[u8], pass: bool, reason: u8, what: &str) {
        let dir = if hook == Hook::FromPod { DIR_EGRESS } else { DIR_INGRESS };
        let before = self.count(ifindex, dir, reason);
        assert_eq!(verdict(self.run(hook, ifindex, frame)), pass, "{what}");
        assert_eq!(self.count(ifindex, dir, reason), before + 1, "{what}: counted as {}", reason_name(reason));
    }
    fn count(&self, ep: u32, dir: u8, reason: u8) -> u64 {
        self.dp.counter(ep, dir, reason).unwrap().packets
    }
}

fn verdict(r: i32) -> bool {
    match r {
        TC_PASS => true,
        TC_DROP => false,
        other => panic!("unexpected tc action {other}"),
    }
}

#[test]
fn root_unisolated_allows_every_protocol_and_family() {
    let Some(e) = Env::new("unisol") else { return };
    for (s, d) in [(A4, B4), (A6, B6)] {
        assert!(e.to(e.b, &pkt::tcp(ip(s), 1234, ip(d), 80, SYN)));
        assert!(e.to(e.b, &pkt::udp(ip(s), 1234, ip(d), 53)));
        assert!(e.to(e.b, &pkt::sctp(ip(s), 1234, ip(d), 9)));
        assert!(e.to(e.b, &pkt::echo(ip(s), ip(d), false, 1)));
    }
    assert_eq!(e.count(e.b, DIR_INGRESS, R_ALLOW_UNISOLATED), 8);
    assert_eq!(e.count(e.a, DIR_EGRESS, R_ALLOW_UNISOLATED), 8);
}

#[test]
fn root_ingress_rule_admits_only_its_port_and_protocol() {
    let Some(e) = Env::new("ingress") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(TCP), Some((80, 80)));
    for (s, d) in [(A4, B4), (A6, B6)] {
        assert!(e.to(e.b, &pkt::tcp(ip(s), 1000, ip(d), 80, SYN)), "{s} tcp/80");
        assert!(!e.to(e.b, &pkt::tcp(ip(s), 1000, ip(d), 81, SYN)), "{s} tcp/81");
        assert!(!e.to(e.b, &pkt::udp(ip(s), 1000, ip(d), 80)), "{s} udp/80");
        assert!(!e.to(e.b, &pkt::sctp(ip(s), 1000, ip(d), 80)), "{s} sctp/80");
        assert!(!e.to(e.b, &pkt::echo(ip(s), ip(d), false, 9)), "{s} echo");
        // another peer identity gets nothing
        let r = if s == A4 { R4 } else { R6 };
        assert!(!e.to(e.b, &pkt::tcp(ip(r), 1000, ip(d), 80, SYN)), "{r} tcp/80");
    }
    assert_eq!(e.count(e.b, DIR_INGRESS, R_ALLOW_POLICY), 2);
    assert_eq!(e.count(e.b, DIR_INGRESS, R_DROP_POLICY), 10);
}

#[test]
fn root_port_ranges_match_exactly() {
    let Some(e) = Env::new("range") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(UDP), Some((1000, 2001)));
    for (port, ok) in [
        (999, false),
        (1000, true),
        (1023, true),
        (1024, true),
        (1500, true),
        (2000, true),
        (2001, true),
        (2002, false),
        (65535, false),
    ] {
        assert_eq!(e.to(e.b, &pkt::udp(ip(A4), 5555, ip(B4), port)), ok, "udp/{port}");
    }
}

#[test]
fn root_wildcard_peer_port_and_protocol() {
    let Some(e) = Env::new("wild") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    // every pod, TCP 443; every other peer, TCP 8443
    e.allow(e.b, ID_ANY_POD, DIR_INGRESS, Some(TCP), Some((443, 443)));
    e.allow(e.b, ID_ANY, DIR_INGRESS, Some(TCP), Some((8443, 8443)));
    // remote pods: TCP any port
    e.allow(e.b, ID_R, DIR_INGRESS, Some(TCP), None);
    let world = ip("192.0.2.1");
    assert!(e.to(e.b, &pkt::tcp(ip(A4), 1, ip(B4), 443, SYN)), "a pod on the every-pod rule");
    assert!(!e.to(e.b, &pkt::tcp(world, 1, ip(B4), 443, SYN)), "the world is no pod");
    assert!(e.to(e.b, &pkt::tcp(world, 1, ip(B4), 8443, SYN)), "the world on the ANY rule");
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 1, ip(B4), 8443, SYN)), "a pod looks up ANY_POD, not ANY");
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 1, ip(B4), 444, SYN)));
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1, ip(B4), 1, SYN)));
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1, ip(B4), 65535, SYN)));
    assert!(!e.to(e.b, &pkt::udp(ip(R4), 1, ip(B4), 53)), "TCP wildcard never admits UDP");
    // any protocol from A: everything, even ports-less protocols
    e.allow(e.b, ID_A, DIR_INGRESS, None, None);
    assert!(e.to(e.b, &pkt::udp(ip(A4), 1, ip(B4), 53)));
    assert!(e.to(e.b, &pkt::echo(ip(A4), ip(B4), false, 3)));
    assert!(e.to(e.b, &pkt::frame(ip(A4), ip(B4), 253, &[0; 8], &Ip::default())));
}

#[test]
fn root_protocol_is_never_confused() {
    let Some(e) = Env::new("proto") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(SCTP), Some((80, 80)));
    e.allow(e.b, ID_A, DIR_INGRESS, Some(UDP), Some((53, 53)));
    for (s, d) in [(A4, B4), (A6, B6)] {
        assert!(e.to(e.b, &pkt::sctp(ip(s), 7, ip(d), 80)));
        assert!(!e.to(e.b, &pkt::tcp(ip(s), 7, ip(d), 80, SYN)), "SCTP rule admits TCP");
        assert!(!e.to(e.b, &pkt::udp(ip(s), 7, ip(d), 80)), "SCTP rule admits UDP");
        assert!(e.to(e.b, &pkt::udp(ip(s), 7, ip(d), 53)));
        assert!(!e.to(e.b, &pkt::tcp(ip(s), 7, ip(d), 53, SYN)), "UDP rule admits TCP");
        assert!(!e.to(e.b, &pkt::sctp(ip(s), 7, ip(d), 53)), "UDP rule admits SCTP");
    }
}

#[test]
fn root_egress_to_remote_and_its_replies() {
    let Some(e) = Env::new("egress") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    e.allow(e.a, ID_R, DIR_EGRESS, Some(UDP), Some((53, 53)));
    for (a, r) in [(A4, R4), (A6, R6)] {
        assert!(e.from(e.a, &pkt::tcp(ip(a), 40000, ip(r), 80, SYN)));
        assert!(!e.from(e.a, &pkt::tcp(ip(a), 40000, ip(r), 81, SYN)));
        // the reply passes A's isolated ingress through conntrack
        assert!(e.to(e.a, &pkt::tcp(ip(r), 80, ip(a), 40000, SYN | ACK)));
        // forged replies: wrong port, wrong peer, wrong protocol
        assert!(!e.to(e.a, &pkt::tcp(ip(r), 81, ip(a), 40000, SYN | ACK)));
        assert!(!e.to(e.a, &pkt::tcp(ip(r), 80, ip(a), 40001, ACK)));
        assert!(!e.to(e.a, &pkt::udp(ip(r), 80, ip(a), 40000)));
        // established: later packets of the flow
        assert!(e.from(e.a, &pkt::tcp(ip(a), 40000, ip(r), 80, ACK)));
        // UDP
        assert!(e.from(e.a, &pkt::udp(ip(a), 5353, ip(r), 53)));
        assert!(e.to(e.a, &pkt::udp(ip(r), 53, ip(a), 5353)));
        assert!(!e.to(e.a, &pkt::udp(ip(r), 53, ip(a), 5354)));
    }
    assert!(e.count(e.a, DIR_INGRESS, R_ALLOW_REPLY) >= 4);
    assert!(e.count(e.a, DIR_EGRESS, R_ALLOW_ESTABLISHED) >= 2);
    let ct = e.dp.ct_entries().unwrap();
    let flow = ct.iter().find(|c| c.dst() == ip(R4) && c.key.protocol == TCP).expect("CT entry A->R tcp/80");
    assert_eq!(flow.value.egress_ep, e.a);
    assert_ne!(flow.value.flags & CT_SEEN_REPLY, 0);
    // answered TCP: long timeout
    assert!(flow.expires_in_ns > (CT_SYN_TIMEOUT_DEFAULT_S as u64 + 5) * 1_000_000_000);
}

#[test]
fn root_local_flow_judged_at_destination_and_reply_via_conntrack() {
    let Some(e) = Env::new("local") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    // from_pod(A) defers even though A's egress allows nothing yet
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 40000, ip(B4), 80, SYN)));
    assert_eq!(e.count(e.a, DIR_EGRESS, R_ALLOW_DEFERRED), 1);
    // ... and to_pod(B) applies A's egress: dropped, counted on A's egress
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 80, SYN)));
    assert_eq!(e.count(e.a, DIR_EGRESS, R_DROP_POLICY), 1);
    // egress allowed, ingress not yet
    e.allow(e.a, ID_B, DIR_EGRESS, Some(TCP), Some((80, 80)));
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 80, SYN)));
    assert_eq!(e.count(e.b, DIR_INGRESS, R_DROP_POLICY), 1);
    // both
    e.allow(e.b, ID_A, DIR_INGRESS, Some(TCP), Some((80, 80)));
    assert!(e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 80, SYN)));
    // the reply B->A: deferred at from_pod(B), a reply at to_pod(A) although
    // B's egress and A's ingress allow nothing
    assert!(e.from(e.b, &pkt::tcp(ip(B4), 80, ip(A4), 40000, SYN | ACK)));
    assert!(e.to(e.a, &pkt::tcp(ip(B4), 80, ip(A4), 40000, SYN | ACK)));
    // B cannot open its own flow to A, nor reply on another port
    assert!(!e.to(e.a, &pkt::tcp(ip(B4), 80, ip(A4), 40001, SYN | ACK)));
    assert!(!e.to(e.a, &pkt::tcp(ip(B4), 5000, ip(A4), 22, SYN)));
    // established A->B
    assert!(e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 80, ACK)));
    assert_eq!(e.count(e.b, DIR_INGRESS, R_ALLOW_ESTABLISHED), 1);
}

#[test]
fn root_service_vip_is_deferred_and_its_reply_passes() {
    let Some(e) = Env::new("vip") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 40000, ip(VIP4), 80, SYN)));
    let ct = e.dp.ct_entries().unwrap();
    let svc = ct.iter().find(|c| c.dst() == ip(VIP4)).expect("service CT entry");
    assert_eq!(svc.value.egress_ep, e.a);
    assert_ne!(svc.value.flags & CT_SERVICE, 0);
    // after DNAT the backend (B) judges A's egress: nothing allows it
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 8080, SYN)));
    e.allow(e.a, ID_B, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    assert!(e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 8080, SYN)));
    // the un-DNATed reply comes from the VIP
    assert!(e.to(e.a, &pkt::tcp(ip(VIP4), 80, ip(A4), 40000, SYN | ACK)));
    assert!(!e.to(e.a, &pkt::tcp(ip(VIP4), 443, ip(A4), 40000, SYN | ACK)));
}

#[test]
fn root_not_ready_fails_closed_except_host() {
    let Some(e) = Env::new("notready") else { return };
    e.ep(e.a, ID_A, 0);
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 1, ip(R4), 80, SYN)));
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 1, ip(B4), 80, SYN)), "even deferred destinations");
    assert!(!e.to(e.a, &pkt::tcp(ip(B4), 1, ip(A4), 80, SYN)));
    assert!(!e.to(e.a, &pkt::tcp(ip(R4), 1, ip(A4), 80, SYN)));
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 1, ip(B4), 80, SYN)), "its traffic to a ready pod");
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 1, ip(HOST4), 80, SYN)), "to the node");
    assert!(e.to(e.a, &pkt::tcp(ip(HOST4), 1, ip(A4), 80, SYN)), "from the node (probes)");
    assert!(e.count(e.a, DIR_EGRESS, R_DROP_NOT_READY) >= 2);
    assert!(e.count(e.a, DIR_INGRESS, R_DROP_NOT_READY) >= 2);
    // configured fail-open until policyd programs it
    e.ep(e.a, ID_A, EP_OPEN_UNTIL_READY | EP_INGRESS_ISOLATED);
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 1, ip(R4), 80, SYN)));
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 1, ip(A4), 80, SYN)));
    // no endpoint entry at all
    e.dp.remove_endpoint(e.a).unwrap();
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 1, ip(R4), 80, SYN)));
    assert!(!e.to(e.a, &pkt::tcp(ip(R4), 1, ip(A4), 80, SYN)));
    assert!(e.count(e.a, DIR_INGRESS, R_DROP_NO_ENDPOINT) >= 1);
}

#[test]
fn root_icmp_echo_and_related_errors() {
    let Some(e) = Env::new("icmp") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, None, None);
    for (a, r) in [(A4, R4), (A6, R6)] {
        assert!(e.from(e.a, &pkt::echo(ip(a), ip(r), false, 77)));
        assert!(e.to(e.a, &pkt::echo(ip(r), ip(a), true, 77)), "{a} echo reply");
        assert!(!e.to(e.a, &pkt::echo(ip(r), ip(a), true, 78)), "{a} reply to another id");
        assert!(!e.to(e.a, &pkt::echo(ip(r), ip(a), false, 77)), "{a} a request is no reply");
    }
    // destination unreachable quoting A's TCP packet to R: related
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 41000, ip(R4), 80, SYN)));
    let quoted = &pkt::tcp(ip(A4), 41000, ip(R4), 80, SYN)[14..];
    let mut err = pkt::icmp_hdr(3, 0);
    err.extend_from_slice(&quoted[..28]);
    assert!(e.to(e.a, &pkt::frame(ip("10.1.0.1"), ip(A4), ICMP, &err, &Ip::default())));
    // quoting a flow A never had: judged as plain ICMP, dropped
    let other = &pkt::tcp(ip(A4), 41001, ip(R4), 80, SYN)[14..];
    let mut err2 = pkt::icmp_hdr(3, 0);
    err2.extend_from_slice(&other[..28]);
    assert!(!e.to(e.a, &pkt::frame(ip("10.1.0.1"), ip(A4), ICMP, &err2, &Ip::default())));
    assert_eq!(e.count(e.a, DIR_INGRESS, R_ALLOW_RELATED), 1);
    // IPv6 packet too big quoting A's flow
    assert!(e.from(e.a, &pkt::tcp(ip(A6), 41000, ip(R6), 80, SYN)));
    let q6 = &pkt::tcp(ip(A6), 41000, ip(R6), 80, SYN)[14..];
    let mut ptb = pkt::icmp_hdr(2, 0);
    ptb.extend_from_slice(&q6[..48]);
    assert!(e.to(e.a, &pkt::frame(ip("fd01::1"), ip(A6), pkt::ICMPV6, &ptb, &Ip::default())));
}

#[test]
fn root_cidr_classes() {
    let Some(e) = Env::new("cidr") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    let class = ID_FIRST_CIDR + 1;
    e.dp.set_cidr(e.b, Direction::Ingress, "10.1.0.0/16".parse().unwrap(), class).unwrap();
    e.dp.set_cidr(e.b, Direction::Ingress, "fd01::/48".parse().unwrap(), class).unwrap();
    e.allow(e.b, class, DIR_INGRESS, Some(TCP), Some((80, 80)));
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1, ip(B4), 80, SYN)));
    assert!(e.to(e.b, &pkt::tcp(ip("10.1.200.3"), 1, ip(B4), 80, SYN)));
    assert!(!e.to(e.b, &pkt::tcp(ip("10.2.0.5"), 1, ip(B4), 80, SYN)));
    assert!(!e.to(e.b, &pkt::tcp(ip(R4), 1, ip(B4), 81, SYN)));
    assert!(e.to(e.b, &pkt::tcp(ip(R6), 1, ip(B6), 80, SYN)));
    let entries = e.dp.cidr_entries().unwrap();
    assert!(entries.contains(&(e.b, Direction::Ingress, "10.1.0.0/16".parse().unwrap(), class)));
}

#[test]
fn root_conntrack_is_per_endpoint_no_spoofed_rides() {
    let Some(e) = Env::new("spoof") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.ep(e.b, ID_B, EP_READY | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 40000, ip(R4), 80, SYN)));
    // B sends the very same tuple (A's address): A's entry is not B's
    assert!(!e.from(e.b, &pkt::tcp(ip(A4), 40000, ip(R4), 80, ACK)));
    // and B receiving a "reply" of A's flow gets nothing through it
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    assert!(!e.to(e.b, &pkt::tcp(ip(R4), 80, ip(A4), 40000, SYN | ACK)));
}

#[test]
fn root_a_pod_cannot_send_from_another_pods_address() {
    let Some(e) = Env::new("srcaddr") else { return };
    // A may send nothing; B is open
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    for (b, r) in [(B4, R4), (B6, R6)] {
        // A claims B's address towards a remote peer and towards a local pod
        assert!(!e.from(e.a, &pkt::udp(ip(b), 5000, ip(r), 53)));
        assert!(!e.from(e.a, &pkt::tcp(ip(b), 40000, ip(if b == B4 { A4 } else { A6 }), 80, SYN)));
        // or an address no pod owns
        assert!(!e.from(e.a, &pkt::udp(ip(r), 5000, ip(b), 53)));
    }
    assert_eq!(e.count(e.a, DIR_EGRESS, R_DROP_SPOOFED), 6);
    // B sending from its own address is fine, and A may still reach the node
    assert!(e.from(e.b, &pkt::udp(ip(B4), 5000, ip(R4), 53)));
    assert!(e.from(e.a, &pkt::udp(ip(A4), 5000, ip(HOST4), 53)));
}

#[test]
fn root_tcp_state_shortens_timeouts() {
    let Some(e) = Env::new("tcpstate") else { return };
    e.dp.set_config(&Config {
        ct_tcp_timeout_s: 3600,
        ct_udp_timeout_s: 30,
        ct_syn_timeout_s: 20,
        ..Default::default()
    })
    .unwrap();
    let find = |sport: u16| {
        e.dp.ct_entries().unwrap().into_iter().find(|c| u16::from_be(c.key.sport) == sport).expect("entry")
    };
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 1000, ip(R4), 80, SYN)));
    let c = find(1000);
    assert!(c.expires_in_ns <= 20_000_000_000, "unanswered: syn timeout");
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 1000, SYN | ACK)));
    let c = find(1000);
    assert!(c.expires_in_ns > 3_000_000_000_000, "answered: tcp timeout");
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 1000, ip(R4), 80, FIN | ACK)));
    assert!(find(1000).expires_in_ns > 3_000_000_000_000, "half closed stays");
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 1000, FIN | ACK)));
    let c = find(1000);
    assert!(c.expires_in_ns <= 20_000_000_000, "closed both ways: short");
    assert_eq!(c.value.flags & (CT_FIN_FWD | CT_FIN_REV), CT_FIN_FWD | CT_FIN_REV);
    // RST
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 2000, ip(R4), 80, SYN)));
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 2000, SYN | ACK)));
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 2000, RST)));
    let c = find(2000);
    assert_ne!(c.value.flags & CT_RST, 0);
    assert!(c.expires_in_ns <= 20_000_000_000);
    // UDP answered: udp timeout
    assert!(e.from(e.a, &pkt::udp(ip(A4), 3000, ip(R4), 53)));
    assert!(e.to(e.a, &pkt::udp(ip(R4), 53, ip(A4), 3000)));
    assert!(find(3000).expires_in_ns <= 30_000_000_000);
    // flush by endpoint
    assert!(e.dp.ct_flush_endpoint(e.a).unwrap() >= 3);
    assert!(e.dp.ct_entries().unwrap().iter().all(|c| c.value.egress_ep != e.a));
}

#[test]
fn root_drops_emit_events_and_counters_sum() {
    let Some(e) = Env::new("events") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    for _ in 0..3 {
        assert!(!e.to(e.b, &pkt::udp(ip(A4), 999, ip(B4), 53)));
    }
    let got = events.drain();
    assert_eq!(got.len(), 3, "{got:?}");
    let ev = got[0];
    assert_eq!(ev.endpoint, e.b);
    assert_eq!(ev.reason, R_DROP_POLICY);
    assert_eq!(ev.direction, DIR_INGRESS);
    assert_eq!(ev.peer_identity, ID_A);
    assert_eq!(ev.protocol, UDP);
    assert_eq!(u16::from_be(ev.dport), 53);
    assert_eq!(weir_bpf::addr::from_bytes(ev.saddr), ip(A4));
    let c = e.dp.counter(e.b, DIR_INGRESS, R_DROP_POLICY).unwrap();
    assert_eq!(c.packets, 3);
    assert!(c.bytes >= 3 * 42);
    assert!(e.dp.counters().unwrap().iter().any(|(k, v)| k.endpoint == e.b && v.packets == 3));
    // allowed new flows are evented only on request
    e.allow(e.b, ID_A, DIR_INGRESS, Some(UDP), None);
    assert!(e.to(e.b, &pkt::udp(ip(A4), 1, ip(B4), 53)));
    assert!(events.drain().is_empty());
    e.dp.set_config(&Config { flags: CFG_EVENTS_ALLOW, ..Default::default() }).unwrap();
    assert!(e.to(e.b, &pkt::udp(ip(A4), 2, ip(B4), 53)));
    let got = events.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reason, R_ALLOW_POLICY);
    assert_eq!(got[0].rule, 7);
    e.dp.remove_counters(e.b).unwrap();
    assert_eq!(e.dp.counter(e.b, DIR_INGRESS, R_DROP_POLICY).unwrap().packets, 0);
}

/// Each rule's counter holds the packets it decided: the first packet of
/// every flow it allowed (not the established ones), every packet a
/// cluster Deny rule dropped, and at to_pod a local source's egress rule
/// as well as the destination's ingress one.
#[test]
fn root_rules_count_the_packets_they_decide() {
    let Some(e) = Env::new("rulecount") else { return };
    let count =
        |rule: u32| e.dp.rule_counters().unwrap().iter().find(|(r, _)| *r == rule).map(|(_, v)| v.packets).unwrap_or(0);
    assert_eq!(count(7), 0);
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_R, DIR_INGRESS, Some(UDP), None); // rule 7
    for sport in [1, 2, 3] {
        assert!(e.to(e.b, &pkt::udp(ip(R4), sport, ip(B4), 53)));
        assert!(e.to(e.b, &pkt::udp(ip(R4), sport, ip(B4), 53)), "established");
    }
    assert_eq!(count(7), 3, "three flows, one judged packet each");

    // A local flow: A's egress rule and B's ingress rule, both at to_pod.
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.dp.allow(&PolicyMatch::cover(e.a, ID_B, Direction::Egress, Some(UDP), None), 8).unwrap();
    e.dp.allow(&PolicyMatch::cover(e.b, ID_A, Direction::Ingress, Some(UDP), None), 9).unwrap();
    assert!(e.to(e.b, &pkt::udp(ip(A4), 4, ip(B4), 53)));
    assert_eq!((count(8), count(9)), (1, 1));

    // A cluster Deny counts every packet it drops.
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_TIERED);
    for deny in PolicyMatch::cover(e.b, ID_R, Direction::Ingress, Some(TCP), None) {
        e.dp.set_policy(&deny, &tiered(0, Some((tier_rank(1, 0, TIER_DENY), 21)), None)).unwrap();
    }
    for _ in 0..4 {
        assert!(!e.to(e.b, &pkt::tcp(ip(R4), 5, ip(B4), 80, SYN)));
    }
    assert_eq!(count(21), 4);
    assert_eq!(count(7), 3, "untouched");

    e.dp.retain_rule_counters(|r| r != 21).unwrap();
    assert_eq!(count(21), 0, "a rule that is gone loses its counter");
    assert_eq!(count(7), 3);
}

/// With the flow log off no verdict emits an event, drops, audit
/// would-be drops and asked-for allows alike; each is still counted.
#[test]
fn root_events_off_emits_nothing_and_still_counts() {
    let Some(e) = Env::new("evoff") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.dp.set_config(&Config { flags: CFG_EVENTS_OFF | CFG_EVENTS_ALLOW, ..Default::default() }).unwrap();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED | EP_LOG_ALLOW);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(UDP), None);
    e.ep(e.a, ID_A, EP_READY | EP_INGRESS_AUDITED);
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::udp(ip(R4), 1, ip(B4), 53)),
        false,
        R_DROP_POLICY,
        "drop",
    );
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::udp(ip(A4), 2, ip(B4), 53)),
        true,
        R_ALLOW_POLICY,
        "allow",
    );
    e.expect(
        Hook::ToPod,
        e.a,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.a), &pkt::udp(ip(R4), 3, ip(A4), 53)),
        true,
        R_ALLOW_AUDIT,
        "audit",
    );
    assert!(events.drain().is_empty());
    assert_eq!(e.count(e.b, DIR_INGRESS, COUNT_EVENT_LOST), 0, "not lost: never sent");
    e.dp.set_config(&Config::default()).unwrap();
    assert!(!e.to(e.b, &pkt::udp(ip(R4), 4, ip(B4), 53)));
    assert_eq!(events.drain().len(), 1, "on again");
}

/// A flood of drops emits at most the budget's events per CPU and
/// window; the rest are counted as over the budget, never silently gone,
/// and the next window emits again. Every drop is still counted.
#[test]
fn root_events_over_the_budget_are_counted_not_emitted() {
    let Some(e) = Env::new("budget") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.dp.set_config(&Config { events_per_s: 10, ..Default::default() }).unwrap();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    let flood = |n: u64| {
        for _ in 0..n {
            assert!(!e.to(e.b, &pkt::udp(ip(R4), 999, ip(B4), 53)));
        }
    };
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    flood(50);
    let read = events.drain().len() as u64;
    // Each CPU's budget, and the flood may straddle two windows.
    assert!((10..=2 * 10 * cpus).contains(&read), "{read} events for a budget of 10 on {cpus} CPUs");
    assert_eq!(read + e.dp.events_limited().unwrap(), 50, "every event read or counted over the budget");
    assert_eq!(e.count(e.b, DIR_INGRESS, R_DROP_POLICY), 50, "every drop counted");
    // Windows are 2^30 ns of the coarse clock: two of them later, a new one.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    flood(5);
    assert_eq!(events.drain().len(), 5, "a new window");
}

/// An endpoint with EP_LOG_ALLOW (its namespace asks for the flow log's
/// allow lines) emits its allowed new flows without the global flag; its
/// established packets and other endpoints' allows emit nothing.
#[test]
fn root_an_endpoint_asking_for_allow_events_gets_them_alone() {
    let Some(e) = Env::new("logallow") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(UDP), None);
    assert!(e.to(e.b, &pkt::udp(ip(A4), 1, ip(B4), 53)));
    assert!(events.drain().is_empty(), "not asked");
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED | EP_LOG_ALLOW);
    assert!(e.to(e.b, &pkt::udp(ip(A4), 2, ip(B4), 53)));
    let got = events.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].endpoint, got[0].reason, got[0].rule), (e.b, R_ALLOW_POLICY, 7));
    assert!(e.to(e.b, &pkt::udp(ip(A4), 2, ip(B4), 53)), "established");
    assert!(events.drain().is_empty(), "only new flows");
    // Another endpoint, not asking: nothing.
    assert!(e.from(e.a, &pkt::udp(ip(A4), 3, ip(R4), 53)));
    assert!(events.drain().is_empty());
}

/// When the ring is full the event is lost, not the verdict: drops still
/// drop and count, and each lost event is counted in its own slot, so
/// events read plus events lost is every drop.
#[test]
fn root_events_the_ring_cannot_hold_are_counted_as_lost() {
    let Some(e) = Env::new("lost") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    let lost = || e.dp.counter(e.b, DIR_INGRESS, COUNT_EVENT_LOST).unwrap().packets;
    // 1 MiB of 72-byte records is about 14,500: the ring is full well before.
    let mut sent = 0u64;
    while lost() == 0 {
        for _ in 0..500 {
            assert!(!e.to(e.b, &pkt::udp(ip(A4), 999, ip(B4), 53)));
        }
        sent += 500;
        assert!(sent <= 40_000, "no event was ever lost");
    }
    let read = events.drain().len() as u64;
    assert!(read > 0);
    assert_eq!(read + lost(), sent, "read {read} + lost {} != {sent}", lost());
    assert_eq!(e.dp.counter(e.b, DIR_INGRESS, R_DROP_POLICY).unwrap().packets, sent, "every drop counted");
}

/// Malformed and unusual packets: every one gets a defined verdict, and
/// nothing is allowed to an isolated endpoint because it could not be parsed.
#[test]
fn root_malformed_and_unusual_packets() {
    let Some(e) = Env::new("malformed") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(TCP), Some((80, 80)));
    let (a4, b4, a6, b6) = (ip(A4), ip(B4), ip(A6), ip(B6));
    let good4 = pkt::tcp(a4, 1, b4, 80, SYN);
    let good6 = pkt::tcp(a6, 1, b6, 80, SYN);
    let tcp80 = pkt::tcp_hdr(1, 80, SYN);
    let with_ip = |s, d, proto, l4: &[u8], ipo: Ip| pkt::frame(s, d, proto, l4, &ipo);
    let mut trunc_len = good4.clone();
    trunc_len.truncate(good4.len() - 4); // tot_len claims 4 bytes more
    let mut bad_ihl = good4.clone();
    bad_ihl[14] = 0x44;
    let mut bad_ver = good4.clone();
    bad_ver[14] = 0x65;
    let mut bad_doff = good4.clone();
    bad_doff[14 + 20 + 12] = 4 << 4;
    let mut v6_trunc = good6.clone();
    v6_trunc.truncate(good6.len() - 1);
    let mut vlan = pkt::tcp(a4, 1, b4, 80, SYN);
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x05]);

    let cases: Vec<(&str, Vec<u8>, bool, u8)> = vec![
        ("well-formed v4", good4.clone(), true, R_ALLOW_POLICY),
        ("well-formed v6", good6.clone(), true, R_ALLOW_POLICY),
        (
            "ipv4 header claims options it lacks",
            {
                let mut f = good4[..14 + 20].to_vec();
                f[14] = 0x46;
                f[16..18].copy_from_slice(&24u16.to_be_bytes());
                f
            },
            false,
            R_DROP_MALFORMED,
        ),
        ("tcp header cut short", good4[..14 + 20 + 10].to_vec(), false, R_DROP_MALFORMED),
        ("tot_len beyond the packet", trunc_len, false, R_DROP_MALFORMED),
        ("ihl below 5", bad_ihl, false, R_DROP_MALFORMED),
        ("ethertype IPv4, version 6", bad_ver, false, R_DROP_MALFORMED),
        ("tcp data offset below 5", bad_doff, false, R_DROP_MALFORMED),
        ("ipv6 payload_len beyond the packet", v6_trunc, false, R_DROP_MALFORMED),
        (
            "ipv6 version 4 in an IPv6 ethertype",
            {
                let mut f = good6.clone();
                f[14] = 0x40;
                f
            },
            false,
            R_DROP_MALFORMED,
        ),
        ("udp too short for its header", with_ip(a4, b4, UDP, &[0, 1, 0], Ip::default()), false, R_DROP_MALFORMED),
        ("sctp too short", with_ip(a4, b4, SCTP, &[0, 1, 0, 80, 0, 0, 0, 0], Ip::default()), false, R_DROP_MALFORMED),
        ("icmp too short", with_ip(a4, b4, ICMP, &[8, 0, 0], Ip::default()), false, R_DROP_MALFORMED),
        ("802.1Q tagged", vlan, false, R_DROP_VLAN),
        (
            "ipv4 options, allowed port",
            with_ip(a4, b4, TCP, &tcp80, Ip { v4_options: vec![1, 1, 1, 0], ..Default::default() }),
            true,
            R_ALLOW_POLICY,
        ),
        (
            "ipv4 40 bytes of options, other port",
            with_ip(a4, b4, TCP, &pkt::tcp_hdr(1, 81, SYN), Ip { v4_options: vec![1; 40], ..Default::default() }),
            false,
            R_DROP_POLICY,
        ),
        (
            "ipv4 first fragment with ports",
            with_ip(a4, b4, TCP, &tcp80, Ip { frag: Some((0, true)), ..Default::default() }),
            true,
            R_ALLOW_POLICY,
        ),
        (
            "ipv4 first fragment too short for ports",
            with_ip(a4, b4, TCP, &tcp80[..8], Ip { frag: Some((0, true)), ..Default::default() }),
            false,
            R_DROP_MALFORMED,
        ),
        (
            "ipv4 later fragment",
            with_ip(a4, b4, TCP, &[0; 16], Ip { frag: Some((185, false)), ..Default::default() }),
            false,
            R_DROP_FRAGMENT,
        ),
        (
            "ipv6 hop-by-hop + dstopts",
            with_ip(a6, b6, TCP, &tcp80, Ip { v6_ext: vec![(0, 8), (60, 16)], ..Default::default() }),
            true,
            R_ALLOW_POLICY,
        ),
        (
            "ipv6 routing header, other port",
            with_ip(a6, b6, TCP, &pkt::tcp_hdr(1, 81, SYN), Ip { v6_ext: vec![(43, 24)], ..Default::default() }),
            false,
            R_DROP_POLICY,
        ),
        (
            "ipv6 AH",
            with_ip(a6, b6, TCP, &tcp80, Ip { v6_ext: vec![(51, 16)], ..Default::default() }),
            true,
            R_ALLOW_POLICY,
        ),
        (
            "ipv6 first fragment",
            with_ip(a6, b6, TCP, &tcp80, Ip { frag: Some((0, true)), ..Default::default() }),
            true,
            R_ALLOW_POLICY,
        ),
        (
            "ipv6 later fragment",
            with_ip(a6, b6, TCP, &[0; 16], Ip { frag: Some((100, true)), ..Default::default() }),
            false,
            R_DROP_FRAGMENT,
        ),
        (
            "ipv6 seven extension headers",
            with_ip(a6, b6, TCP, &tcp80, Ip { v6_ext: vec![(60, 8); 7], ..Default::default() }),
            false,
            R_DROP_MALFORMED,
        ),
        (
            "ipv6 extension header cut short",
            {
                let mut f = with_ip(a6, b6, TCP, &[], Ip { v6_ext: vec![(60, 8)], ..Default::default() });
                f.truncate(f.len() - 4);
                let pl = (f.len() - 54) as u16;
                f[18..20].copy_from_slice(&pl.to_be_bytes());
                f
            },
            false,
            R_DROP_MALFORMED,
        ),
        ("unknown protocol", with_ip(a4, b4, 253, &[0; 8], Ip::default()), false, R_DROP_POLICY),
        ("ipv6 no next header", with_ip(a6, b6, 59, &[], Ip::default()), false, R_DROP_POLICY),
    ];
    for (name, frame, pass, reason) in cases {
        eprintln!("case: {name}");
        e.dp.ct_flush().unwrap(); // each case is a new flow
        let before = e.count(e.b, DIR_INGRESS, reason);
        assert_eq!(e.to(e.b, &frame), pass, "{name}");
        assert_eq!(e.count(e.b, DIR_INGRESS, reason), before + 1, "{name}: reason {}", reason_name(reason));
    }
    // with a port wildcard, later fragments and unknown protocols pass
    e.allow(e.b, ID_A, DIR_INGRESS, None, None);
    assert!(e.to(e.b, &with_ip(a4, b4, TCP, &[0; 16], Ip { frag: Some((185, false)), ..Default::default() })));
    assert!(e.to(e.b, &with_ip(a4, b4, 253, &[0; 8], Ip::default())));
    // malformed stays dropped even for an unisolated pod, on both hooks
    e.ep(e.a, ID_A, EP_READY);
    assert!(!e.from(e.a, &good4[..14 + 20 + 10]));
    assert!(!e.to(e.a, &good4[..14 + 20 + 10]));
    // Frames shorter than their IP header: this kernel's BPF_PROG_TEST_RUN
    // refuses to inject some of them (EINVAL); when it does inject, the
    // program must drop them.
    for cut in [15, 20, 14 + 12, 14 + 19] {
        for (hook, ifx) in [(Hook::ToPod, e.b), (Hook::FromPod, e.a), (Hook::ToPod, e.a)] {
            match e.dp.run(hook, &good4[..cut], ifx) {
                Ok(r) => assert_eq!(r, TC_DROP, "{cut} bytes of IPv4 frame at {hook:?}"),
                Err(err) => assert!(format!("{err:?}").contains("InvalidInput"), "{err:?}"),
            }
            match e.dp.run(hook, &good6[..cut.max(15) + 10], ifx) {
                Ok(r) => assert_eq!(r, TC_DROP, "{} bytes of IPv6 frame at {hook:?}", cut + 10),
                Err(err) => assert!(format!("{err:?}").contains("InvalidInput"), "{err:?}"),
            }
        }
    }
}

/// A Service whose chosen backend is on another node: from_pod sees the VIP
/// and defers; kube-proxy DNATs to the remote pod and the packet leaves by
/// the node's device, where no pod hook sees it. leave_node judges the
/// source pod's egress there, against the backend.
#[test]
fn root_leave_node_judges_a_local_pods_egress_to_a_remote_backend_after_dnat() {
    let Some(e) = Env::new("leave") else { return };
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    let vips = IpcacheValue { identity: ID_WORLD, endpoint: 0, flags: IPCACHE_SERVICE, pad: 0 };
    e.dp.set_ipcache("fd00:96::/112".parse().unwrap(), &vips).unwrap();
    for (a, vip, r) in [(A4, VIP4, R4), (A6, "fd00:96::10", R6)] {
        // The VIP is deferred at the source, whatever the port.
        assert!(e.from(e.a, &pkt::tcp(ip(a), 3000, ip(vip), 81, SYN)));
        // After DNAT: the backend's port decides.
        assert!(!leave(&pkt::tcp(ip(a), 3000, ip(r), 81, SYN)), "{a}: denied egress leaves the node");
        assert!(leave(&pkt::tcp(ip(a), 3001, ip(r), 80, SYN)), "{a}: allowed egress");
        assert!(leave(&pkt::tcp(ip(a), 3001, ip(r), 80, ACK)), "{a}: established");
        assert!(!leave(&pkt::udp(ip(a), 3002, ip(r), 80)), "{a}: udp/80 is not allowed");
    }
    assert_eq!(e.count(e.a, DIR_EGRESS, R_DROP_POLICY), 4);
    // The allowed flow is tracked for the source pod alone.
    let ct = e.dp.ct_entries().unwrap();
    let entry = ct.iter().find(|c| c.src() == ip(A4) && c.dst() == ip(R4)).expect("entry for the allowed flow");
    assert_eq!((entry.value.egress_ep, entry.value.ingress_ep), (e.a, 0));
}

/// leave_node is no firewall for the node: what is not a local pod's
/// (the node's own packets, VXLAN's outer packets, ARP) passes untouched,
/// and flows judged already at from_pod pass on their entry.
#[test]
fn root_leave_node_passes_what_is_not_a_local_pods_and_what_was_judged() {
    let Some(e) = Env::new("leave2") else { return };
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    assert!(leave(&pkt::tcp(ip(HOST4), 4000, ip(R4), 22, SYN)), "the node's own traffic");
    assert!(leave(&pkt::udp(ip("192.0.2.1"), 4789, ip("192.0.2.2"), 8472)), "an outer VXLAN packet");
    assert!(leave(&pkt::garp([2, 0, 0, 0, 0, 9], v4(HOST4))), "ARP");
    // Judged at from_pod (a remote pod, directly): passes on its entry,
    // counted once, at from_pod.
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4001, ip(R4), 80, SYN)));
    assert!(leave(&pkt::tcp(ip(A4), 4001, ip(R4), 80, SYN)));
    assert_eq!(e.count(e.a, DIR_EGRESS, R_ALLOW_POLICY), 1);
    // A pod that is not READY sends nothing past leave_node either.
    e.ep(e.b, ID_B, 0);
    assert!(!leave(&pkt::tcp(ip(B4), 4002, ip(R4), 80, SYN)));
}

/// from_pod defers a packet to a VIP and records S→VIP only so that the
/// un-DNATed reply finds S. A packet that leaves the node still addressed
/// to the VIP (no DNAT happened) was never judged: leave_node judges it
/// against S's egress like any other, the entry does not carry it.
#[test]
fn root_leave_node_judges_a_pods_packet_to_a_vip_that_was_not_dnated() {
    let Some(e) = Env::new("leavevip") else { return };
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    let to_vip = pkt::tcp(ip(A4), 5000, ip(VIP4), 81, SYN);
    assert!(e.from(e.a, &to_vip), "deferred at the source");
    let entry = e.dp.ct_entries().unwrap().into_iter().find(|c| c.dst() == ip(VIP4));
    assert!(entry.is_some_and(|c| c.value.flags & CT_SERVICE != 0), "S→VIP recorded for the reply");
    let before = e.count(e.a, DIR_EGRESS, R_DROP_POLICY);
    assert!(!leave(&to_vip), "S's egress allows no packet to the VIP itself");
    assert_eq!(e.count(e.a, DIR_EGRESS, R_DROP_POLICY), before + 1);
    // The reply path the entry exists for still works.
    assert!(e.to(e.a, &pkt::tcp(ip(VIP4), 81, ip(A4), 5000, SYN | ACK)));
}

/// Keep this test's thread on the CPU it runs on: from_pod hands a packet
/// it passed to leave_node through a per-CPU slot, which two test runs see
/// only on one CPU.
fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on a cpu_set_t this function owns; pid 0 is the calling thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

/// A packet from_pod has just passed on its entry (to a remote pod, or a
/// reply to one) reaches leave_node next, on the same CPU: leave_node
/// passes it without looking the flow up again. Seen here by removing the
/// entry in between: the packet passes and no entry is made for it.
#[test]
fn root_leave_node_takes_what_from_pod_just_passed_without_a_lookup() {
    let Some(e) = Env::new("handoff") else { return };
    stay_on_this_cpu();
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    e.allow(e.a, ID_R, DIR_INGRESS, Some(TCP), Some((22, 22)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    // (the flow's first packet, the next one of it from A): A opens one to
    // R, and A replies on one R opened (its first packet judged at to_pod).
    let opened = (pkt::tcp(ip(A4), 6000, ip(R4), 80, SYN), pkt::tcp(ip(A4), 6000, ip(R4), 80, ACK));
    let answered = (pkt::tcp(ip(R4), 6001, ip(A4), 22, SYN), pkt::tcp(ip(A4), 22, ip(R4), 6001, SYN | ACK));
    for (what, (first, next)) in [("opened by A", opened), ("opened by R", answered)] {
        // A clock tick between the two runs sends the packet the full way:
        // one of a few tries sees the handoff.
        let handed = (0..20).any(|_| {
            e.dp.ct_flush().unwrap();
            let first_passed = if what == "opened by A" { e.from(e.a, &first) } else { e.to(e.a, &first) };
            assert!(first_passed, "{what}: the first packet");
            assert!(e.from(e.a, &next), "{what}: established at from_pod");
            e.dp.ct_flush().unwrap();
            // Looked up, the flow has no entry: A's egress would be judged
            // afresh, and a new entry made (or the reply, to port 6001, dropped).
            leave(&next) && e.dp.ct_entries().unwrap().is_empty()
        });
        assert!(handed, "{what}: leave_node looked the flow up every time");
    }
}

/// The handoff holds only the packet exactly as from_pod passed it, under
/// the policy it was passed by: a packet rewritten in between (DNAT), one
/// after a policy change, and one to a VIP on its SERVICE entry are all
/// judged at leave_node, right after from_pod passed theirs.
#[test]
fn root_leave_node_judges_what_changed_since_from_pod_passed_it() {
    let Some(e) = Env::new("handoff2") else { return };
    stay_on_this_cpu();
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    let next = pkt::tcp(ip(A4), 7000, ip(R4), 80, ACK);
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 7000, ip(R4), 80, SYN)));
    for _ in 0..20 {
        // Rewritten on the way, to a port or an address A may not reach.
        assert!(e.from(e.a, &next));
        assert!(!leave(&pkt::tcp(ip(A4), 7000, ip(R4), 81, ACK)), "another port");
        assert!(e.from(e.a, &next));
        assert!(!leave(&pkt::tcp(ip(A4), 7000, ip("10.2.0.9"), 80, ACK)), "another address");
        // A VIP's SERVICE entry is no judgement: a packet that leaves still
        // addressed to the VIP is judged, however recently from_pod passed it.
        assert!(e.from(e.a, &pkt::tcp(ip(A4), 7002, ip(VIP4), 80, ACK)));
        assert!(!leave(&pkt::tcp(ip(A4), 7002, ip(VIP4), 80, ACK)), "to the VIP");
    }
    // The policy changed between the two hooks: the flow is judged again
    // at leave_node and cut.
    assert!(e.from(e.a, &next));
    e.revoke(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    assert!(!leave(&next), "revoked in between");
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 1);
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// ARP from a pod claims only its own IPv4 address and MAC, READY or not,
/// isolated or not (the checks come before readiness and policy).
#[test]
fn root_arp_from_a_pod_claims_only_its_own_address_and_mac() {
    let Some(e) = Env::new("arpfrom") else { return };
    let (a, ma, mb) = (e.a, e.mac(e.a), e.mac(e.b));
    let host_mac = [0x02, 0x99, 0, 0, 0, 1];
    let mut foreign_sha = pkt::arp(ARP_REQUEST, mb, v4(A4), [0; 6], v4(HOST4));
    foreign_sha[6..12].copy_from_slice(&ma); // Ethernet source A's, sender MAC B's
    let mut rarp = pkt::arp(ARP_REQUEST, ma, v4(A4), [0; 6], v4(HOST4));
    rarp[20..22].copy_from_slice(&3u16.to_be_bytes());
    let mut not_ipv4 = pkt::arp(ARP_REQUEST, ma, v4(A4), [0; 6], v4(HOST4));
    not_ipv4[16..18].copy_from_slice(&0x86ddu16.to_be_bytes());
    #[rustfmt::skip] // a table: one case per line
    let cases: Vec<(&str, Vec<u8>, bool, u8)> = vec![
        ("request for the node", pkt::arp(ARP_REQUEST, ma, v4(A4), [0; 6], v4(HOST4)), true, R_ALLOW_NOT_IP),
        ("request for a pod", pkt::arp(ARP_REQUEST, ma, v4(A4), [0; 6], v4(B4)), true, R_ALLOW_NOT_IP),
        ("reply to the node", pkt::arp(ARP_REPLY, ma, v4(A4), host_mac, v4(HOST4)), true, R_ALLOW_NOT_IP),
        ("gratuitous, own address", pkt::garp(ma, v4(A4)), true, R_ALLOW_NOT_IP),
        ("probe from 0.0.0.0 (RFC 5227)", pkt::arp(ARP_REQUEST, ma, v4("0.0.0.0"), [0; 6], v4(A4)), true, R_ALLOW_NOT_IP),
        ("gratuitous, B's address", pkt::garp(ma, v4(B4)), false, R_DROP_NEIGH_SPOOFED),
        ("gratuitous reply, B's address", pkt::arp(ARP_REPLY, ma, v4(B4), BROADCAST_MAC, v4(B4)), false, R_DROP_NEIGH_SPOOFED),
        ("reply as B to the node", pkt::arp(ARP_REPLY, ma, v4(B4), host_mac, v4(HOST4)), false, R_DROP_NEIGH_SPOOFED),
        ("request from the node's address", pkt::arp(ARP_REQUEST, ma, v4(HOST4), [0; 6], v4(B4)), false, R_DROP_NEIGH_SPOOFED),
        ("sender MAC B's", foreign_sha, false, R_DROP_SPOOFED_MAC),
        ("Ethernet and sender MAC B's", pkt::garp(mb, v4(A4)), false, R_DROP_SPOOFED_MAC),
        ("RARP opcode", rarp, false, R_DROP_MALFORMED),
        ("protocol type not IPv4", not_ipv4, false, R_DROP_MALFORMED),
        ("cut short", pkt::garp(ma, v4(A4))[..14 + 20].to_vec(), false, R_DROP_MALFORMED),
    ];
    for flags in [EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED, EP_READY, 0, EP_OPEN_UNTIL_READY] {
        e.ep(a, ID_A, flags);
        for (what, frame, pass, reason) in &cases {
            e.expect(Hook::FromPod, a, frame, *pass, *reason, &format!("{what} (flags {flags:#x})"));
        }
    }
}

/// Neighbour discovery from a pod claims only its own addresses (global
/// and link-local) and MAC; a pod sends no router advertisement or redirect.
#[test]
fn root_nd_from_a_pod_claims_only_its_own_addresses_and_mac() {
    let Some(e) = Env::new("ndfrom") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    let (a, ma, mb) = (e.a, e.mac(e.a), e.mac(e.b));
    let (a6, b6, ll, host6) = (v6(A6), v6(B6), e.ll(a), v6("fd00::1"));
    let unspec = Ipv6Addr::UNSPECIFIED;
    let all_nodes = v6("ff02::1");
    let host_mac = [0x02, 0x99, 0, 0, 0, 1];
    let nd = |src: Ipv6Addr, dst: Ipv6Addr, body: Vec<u8>| pkt::nd(ma, src, dst, host_mac, &body);
    // DAD as Linux sends it: from ::, no link-layer option, a nonce option
    let dad = |target: Ipv6Addr| {
        let mut b = pkt::ns_body(target, None);
        b.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        nd(unspec, pkt::solicited_node(target), b)
    };
    let mut zero_len_opt = pkt::ns_body(host6, Some(ma));
    zero_len_opt[24 + 1] = 0;
    let mut long_lla = pkt::ns_body(host6, None);
    long_lla.extend_from_slice(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut frag_ns = pkt::frame(
        IpAddr::V6(a6),
        IpAddr::V6(pkt::solicited_node(host6)),
        pkt::ICMPV6,
        &pkt::ns_body(host6, Some(ma)),
        &Ip { frag: Some((0, true)), ..Default::default() },
    );
    frag_ns[6..12].copy_from_slice(&ma);
    let mut redirect = pkt::ns_body(host6, None);
    redirect[0] = pkt::ND_REDIRECT;
    redirect.extend_from_slice(&b6.octets());
    #[rustfmt::skip] // a table: one case per line
    let cases: Vec<(&str, Vec<u8>, bool, u8)> = vec![
        ("NS from its address for the node", nd(a6, pkt::solicited_node(host6), pkt::ns_body(host6, Some(ma))), true, R_ALLOW_ND),
        ("NS from its link-local for a pod", nd(ll, pkt::solicited_node(b6), pkt::ns_body(b6, Some(ma))), true, R_ALLOW_ND),
        ("NS without link-layer option", nd(a6, host6, pkt::ns_body(host6, None)), true, R_ALLOW_ND),
        ("DAD NS for its link-local", dad(ll), true, R_ALLOW_ND),
        ("DAD NS for its address", dad(a6), true, R_ALLOW_ND),
        ("solicited NA for its address", nd(a6, host6, pkt::na_body(a6, NA_SOLICITED | NA_OVERRIDE, Some(ma))), true, R_ALLOW_ND),
        ("NA for its link-local from it", nd(ll, host6, pkt::na_body(ll, NA_SOLICITED, Some(ma))), true, R_ALLOW_ND),
        ("unsolicited NA for its address", nd(a6, all_nodes, pkt::na_body(a6, NA_OVERRIDE, Some(ma))), true, R_ALLOW_ND),
        ("NA without target option", nd(a6, host6, pkt::na_body(a6, NA_SOLICITED, None)), true, R_ALLOW_ND),
        ("RS from its link-local", nd(ll, v6("ff02::2"), pkt::rs_body(Some(ma))), true, R_ALLOW_ND),
        ("RS from ::", nd(unspec, v6("ff02::2"), pkt::rs_body(None)), true, R_ALLOW_ND),
        ("unsolicited NA for B's address", nd(a6, all_nodes, pkt::na_body(b6, NA_OVERRIDE, Some(ma))), false, R_DROP_NEIGH_SPOOFED),
        ("solicited NA for B's address", nd(a6, host6, pkt::na_body(b6, NA_SOLICITED | NA_OVERRIDE, Some(ma))), false, R_DROP_NEIGH_SPOOFED),
        ("NA for B's address from B's address", nd(b6, all_nodes, pkt::na_body(b6, NA_OVERRIDE, Some(ma))), false, R_DROP_NEIGH_SPOOFED),
        ("NA for B's link-local", nd(ll, all_nodes, pkt::na_body(e.ll(e.b), NA_OVERRIDE, Some(ma))), false, R_DROP_NEIGH_SPOOFED),
        ("NA from ::", nd(unspec, all_nodes, pkt::na_body(a6, NA_OVERRIDE, Some(ma))), false, R_DROP_NEIGH_SPOOFED),
        ("NA for its address, B's MAC as target", nd(a6, all_nodes, pkt::na_body(a6, NA_OVERRIDE, Some(mb))), false, R_DROP_SPOOFED_MAC),
        ("NS from B's address", nd(b6, pkt::solicited_node(host6), pkt::ns_body(host6, Some(ma))), false, R_DROP_NEIGH_SPOOFED),
        ("NS from the node's link-local", nd(v6("fe80::1"), pkt::solicited_node(host6), pkt::ns_body(host6, None)), false, R_DROP_NEIGH_SPOOFED),
        ("NS with B's MAC as source", nd(a6, pkt::solicited_node(host6), pkt::ns_body(host6, Some(mb))), false, R_DROP_SPOOFED_MAC),
        ("DAD NS for B's address", dad(b6), false, R_DROP_NEIGH_SPOOFED),
        ("RS with B's MAC", nd(ll, v6("ff02::2"), pkt::rs_body(Some(mb))), false, R_DROP_SPOOFED_MAC),
        ("RA", nd(ll, all_nodes, pkt::ra_body(ma)), false, R_DROP_ROUTER_MSG),
        ("redirect", nd(ll, host6, redirect), false, R_DROP_ROUTER_MSG),
        ("option of length 0", nd(a6, host6, zero_len_opt), false, R_DROP_MALFORMED),
        ("link-layer option not 6 bytes", nd(a6, host6, long_lla), false, R_DROP_MALFORMED),
        ("NS cut before its target", nd(a6, host6, pkt::ns_body(host6, None)[..16].to_vec()), false, R_DROP_MALFORMED),
        ("fragmented NS (RFC 6980)", frag_ns, false, R_DROP_MALFORMED),
        ("NS from B's MAC", pkt::nd(mb, a6, host6, host_mac, &pkt::ns_body(host6, None)), false, R_DROP_SPOOFED_MAC),
    ];
    for (what, frame, pass, reason) in &cases {
        e.expect(Hook::FromPod, a, frame, *pass, *reason, what);
    }
    // the same before policyd has programmed the pod
    e.ep(a, ID_A, 0);
    for (what, frame, pass, reason) in &cases {
        e.expect(Hook::FromPod, a, frame, *pass, *reason, &format!("{what}, not READY"));
    }
}

/// Multicast listener discovery to a link-scope group is link control, like
/// ND: a pod's reports (from :: before it has a link-local address too)
/// pass without policy, and so does the link's query into a pod; other
/// pods' reports are not handed to a pod. None of it is logged. A pod may
/// not query (a multicast router's part) nor report from another's address;
/// MLD beyond the link is judged like any packet.
#[test]
fn root_mld_is_link_control_neither_judged_nor_logged() {
    let Some(e) = Env::new("mld") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.ep(e.b, ID_B, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    let (ma, ll, ll_b) = (e.mac(e.a), e.ll(e.a), e.ll(e.b));
    // As Linux sends them: a hop-by-hop header (router alert) first.
    let mld = |src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, ty: u8| {
        let mut body = pkt::icmp_hdr(ty, 0);
        body.extend_from_slice(&[0; 20]);
        let ip = Ip { v6_ext: vec![(0, 8)], ..Default::default() };
        let mut f = pkt::frame(IpAddr::V6(src), IpAddr::V6(dst), pkt::ICMPV6, &body, &ip);
        pkt::set_eth(&mut f, src_mac, pkt::ipv6_multicast_mac(dst));
        f
    };
    let (unspec, reports, all_nodes) = (Ipv6Addr::UNSPECIFIED, v6("ff02::16"), v6("ff02::1"));
    #[rustfmt::skip] // a table: one case per line
    let from_a: Vec<(&str, Vec<u8>, bool, u8)> = vec![
        ("MLDv2 report from :: at start", mld(ma, unspec, reports, 143), true, R_ALLOW_MLD),
        ("MLDv2 report from its link-local", mld(ma, ll, reports, 143), true, R_ALLOW_MLD),
        ("MLDv1 report to the group", mld(ma, ll, v6("ff02::fb"), 131), true, R_ALLOW_MLD),
        ("MLDv1 done", mld(ma, ll, v6("ff02::2"), 132), true, R_ALLOW_MLD),
        ("report from B's link-local", mld(ma, ll_b, reports, 143), false, R_DROP_NEIGH_SPOOFED),
        ("a query", mld(ma, ll, all_nodes, 130), false, R_DROP_ROUTER_MSG),
        // beyond the link: policy judges it (A is egress-isolated, no rule)
        ("MLDv1 report to a site-scope group", mld(ma, v6(A6), v6("ff05::fb"), 131), false, R_DROP_POLICY),
    ];
    for (what, frame, pass, reason) in &from_a {
        e.expect(Hook::FromPod, e.a, frame, *pass, *reason, what);
    }
    let host_mac = [0x02, 0x99, 0, 0, 0, 1];
    // Another pod's report is for multicast routers, not for a pod: not
    // handed over (it would be a channel past B's policy), not logged.
    e.expect(Hook::ToPod, e.b, &mld(ma, unspec, reports, 143), false, R_DROP_NOT_FOR_POD, "A's report to B");
    e.expect(Hook::ToPod, e.b, &mld(ma, ll, v6("ff02::fb"), 132), false, R_DROP_NOT_FOR_POD, "A's done to B");
    e.expect(Hook::ToPod, e.b, &mld(host_mac, v6("fe80::1"), all_nodes, 130), true, R_ALLOW_MLD, "the link's query");
    let got = events.drain();
    assert_eq!(got.len(), 3, "only A's three refused messages are events: {got:?}");
    assert!(got.iter().all(|ev| ev.endpoint == e.a && ev.direction == DIR_EGRESS));
}

/// Every frame from a pod carries its MAC and one of its addresses, on the
/// first packet (not READY, fail-open) and on an established flow alike.
#[test]
fn root_a_pod_sends_only_from_its_own_mac_and_addresses() {
    let Some(e) = Env::new("srcmac") else { return };
    let (a, ma, mb) = (e.a, e.mac(e.a), e.mac(e.b));
    let from_b_mac = |f: &[u8]| {
        let mut f = f.to_vec();
        pkt::set_eth(&mut f, mb, pkt::DEFAULT_DST_MAC);
        f
    };
    let syn = pkt::tcp(ip(A4), 40000, ip(R4), 80, SYN);
    let ack = pkt::tcp(ip(A4), 40000, ip(R4), 80, ACK);
    assert!(e.from(a, &syn));
    assert!(e.from(a, &ack), "established");
    // the same flow with B's MAC: the bridge would learn B behind A's port
    e.expect(Hook::FromPod, a, &from_b_mac(&ack), false, R_DROP_SPOOFED_MAC, "established, B's MAC");
    e.expect(
        Hook::FromPod,
        a,
        &from_b_mac(&pkt::tcp(ip(A6), 1, ip(R6), 80, SYN)),
        false,
        R_DROP_SPOOFED_MAC,
        "IPv6, B's MAC",
    );
    let mut other = pkt::frame(ip(A4), ip(R4), UDP, &pkt::udp_hdr(1, 2), &Ip::default());
    other[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    e.expect(Hook::FromPod, a, &from_b_mac(&other), false, R_DROP_SPOOFED_MAC, "non-IP, B's MAC");
    let mut own_other = other.clone();
    pkt::set_eth(&mut own_other, ma, BROADCAST_MAC);
    e.expect(Hook::FromPod, a, &own_other, true, R_ALLOW_NOT_IP, "non-IP, its own MAC");
    // a pod whose entry says it may talk before READY still sends only as itself
    e.ep(a, ID_A, EP_OPEN_UNTIL_READY);
    let spoof = pkt::as_seen_at(Hook::FromPod, ma, &pkt::udp(ip(B4), 5000, ip(R4), 53));
    e.expect(Hook::FromPod, a, &spoof, false, R_DROP_SPOOFED, "open until ready, B's address");
    let own = pkt::as_seen_at(Hook::FromPod, ma, &pkt::udp(ip(A4), 5000, ip(R4), 53));
    e.expect(Hook::FromPod, a, &own, true, R_ALLOW_OPEN_UNTIL_READY, "open until ready, own address");
    // and nobody may send from the node's address, not even to the node
    e.ep(a, ID_A, EP_READY);
    let as_node = pkt::as_seen_at(Hook::FromPod, ma, &pkt::udp(ip(HOST4), 5000, ip(HOST4), 53));
    e.expect(Hook::FromPod, a, &as_node, false, R_DROP_SPOOFED, "the node's address");
    // its link-local is for the link (ND), not a source the ipcache knows
    let ll = pkt::as_seen_at(Hook::FromPod, ma, &pkt::udp(IpAddr::V6(e.ll(a)), 5000, ip(B6), 53));
    e.expect(Hook::FromPod, a, &ll, false, R_DROP_SPOOFED, "from its link-local");
}

/// to_pod hands a pod only what is addressed to it: its MAC, its
/// addresses, and the broadcast and multicast groups a pod takes.
#[test]
fn root_to_pod_delivers_only_what_is_addressed_to_the_pod() {
    let Some(e) = Env::new("topod") else { return };
    let (a, ma, mb) = (e.a, e.mac(e.a), e.mac(e.b));
    let host_mac = [0x02, 0x99, 0, 0, 0, 1];
    let to = |f: Vec<u8>, dst: [u8; 6]| {
        let mut f = f;
        pkt::set_eth(&mut f, host_mac, dst);
        f
    };
    let mcast4 = [0x01, 0x00, 0x5e, 0, 0, 0xfb];
    let udp = |s: &str, d: &str| pkt::udp(ip(s), 5353, ip(d), 5353);
    let ns = |src: Ipv6Addr, target: Ipv6Addr| {
        pkt::nd(host_mac, src, pkt::solicited_node(target), [0; 6], &pkt::ns_body(target, Some(host_mac)))
    };
    let (a6, ll) = (v6(A6), e.ll(a));
    #[rustfmt::skip] // a table: one case per line
    let cases: Vec<(&str, Vec<u8>, bool, u8)> = vec![
        ("IPv4 to it", to(udp(R4, A4), ma), true, R_ALLOW_UNISOLATED),
        ("IPv6 to it", to(udp(R6, A6), ma), true, R_ALLOW_UNISOLATED),
        ("limited broadcast", to(udp(HOST4, "255.255.255.255"), BROADCAST_MAC), true, R_ALLOW_HOST),
        ("its subnet's broadcast", to(udp(R4, "10.0.0.255"), BROADCAST_MAC), true, R_ALLOW_UNISOLATED),
        ("IPv4 multicast", to(udp(B4, "224.0.0.251"), mcast4), true, R_ALLOW_UNISOLATED),
        ("all-nodes", to(udp(R6, "ff02::1"), pkt::ipv6_multicast_mac(v6("ff02::1"))), true, R_ALLOW_UNISOLATED),
        ("IPv6 multicast group", to(udp(B6, "ff02::fb"), pkt::ipv6_multicast_mac(v6("ff02::fb"))), true, R_ALLOW_UNISOLATED),
        ("NS for its address", ns(v6("fd00::1"), a6), true, R_ALLOW_ND),
        ("NS for its link-local", ns(v6("fe80::1"), ll), true, R_ALLOW_ND),
        ("NA to it", pkt::nd(host_mac, v6("fd00::1"), a6, ma, &pkt::na_body(v6("fd00::1"), NA_SOLICITED, Some(host_mac))), true, R_ALLOW_ND),
        ("unsolicited NA to all nodes", pkt::nd(mb, v6(B6), v6("ff02::1"), [0; 6], &pkt::na_body(v6(B6), NA_OVERRIDE, Some(mb))), true, R_ALLOW_ND),
        ("ARP request for it", pkt::arp(ARP_REQUEST, host_mac, v4(HOST4), [0; 6], v4(A4)), true, R_ALLOW_NOT_IP),
        ("ARP reply to it", pkt::arp(ARP_REPLY, host_mac, v4(HOST4), ma, v4(A4)), true, R_ALLOW_NOT_IP),
        ("ARP probe for it", pkt::arp(ARP_REQUEST, mb, v4("0.0.0.0"), [0; 6], v4(A4)), true, R_ALLOW_NOT_IP),
        ("gratuitous ARP of B", pkt::garp(mb, v4(B4)), true, R_ALLOW_NOT_IP),
        ("IPv4 to B", to(udp(R4, B4), ma), false, R_DROP_NOT_FOR_POD),
        ("IPv6 to B", to(udp(R6, B6), ma), false, R_DROP_NOT_FOR_POD),
        ("IPv4 to B, broadcast frame", to(udp(R4, B4), BROADCAST_MAC), false, R_DROP_NOT_FOR_POD),
        ("IPv4 to it, B's MAC (flooded)", to(udp(R4, A4), mb), false, R_DROP_NOT_FOR_POD),
        ("IPv6 to it, B's MAC", to(udp(R6, A6), mb), false, R_DROP_NOT_FOR_POD),
        ("another /24's broadcast", to(udp(R4, "10.0.1.255"), BROADCAST_MAC), false, R_DROP_NOT_FOR_POD),
        ("NS for B's address", ns(v6("fd00::1"), v6(B6)), false, R_DROP_NOT_FOR_POD),
        ("NA to B", pkt::nd(host_mac, v6("fd00::1"), v6(B6), ma, &pkt::na_body(v6("fd00::1"), NA_SOLICITED, None)), false, R_DROP_NOT_FOR_POD),
        ("ARP request for B", pkt::arp(ARP_REQUEST, host_mac, v4(HOST4), [0; 6], v4(B4)), false, R_DROP_NOT_FOR_POD),
        ("ARP reply to B", pkt::arp(ARP_REPLY, host_mac, v4(HOST4), mb, v4(B4)), false, R_DROP_NOT_FOR_POD),
        ("ARP reply to B, A's MAC", pkt::arp(ARP_REPLY, host_mac, v4(HOST4), ma, v4(B4)), false, R_DROP_NOT_FOR_POD),
        ("unicast gratuitous ARP", pkt::arp(ARP_REQUEST, host_mac, v4(B4), ma, v4(B4)), false, R_DROP_NOT_FOR_POD),
    ];
    let mut events = e.dp.events().unwrap();
    events.drain();
    for flags in [EP_READY, 0] {
        e.ep(a, ID_A, flags);
        e.dp.ct_flush().unwrap(); // every case a new flow
        for (what, frame, pass, reason) in &cases {
            // not READY: what passes the screen is judged fail-closed
            let (pass, reason) = match (flags, *pass, *reason) {
                (0, true, R_ALLOW_UNISOLATED) => (false, R_DROP_NOT_READY),
                other => (other.1, other.2),
            };
            e.expect(Hook::ToPod, a, frame, pass, reason, &format!("{what} (flags {flags:#x})"));
        }
    }
    // What the bridge floods that is not for the pod is counted, not logged.
    let got = events.drain();
    assert!(got.iter().all(|ev| ev.reason != R_DROP_NOT_FOR_POD), "{got:?}");
    assert!(got.iter().any(|ev| ev.reason == R_DROP_NOT_READY), "other drops are logged: {got:?}");
    // an established flow carries nothing past the screen
    e.ep(a, ID_A, EP_READY);
    assert!(e.from(a, &pkt::tcp(ip(A4), 40000, ip(R4), 80, SYN)));
    let reply = pkt::tcp(ip(R4), 80, ip(A4), 40000, SYN | ACK);
    e.expect(Hook::ToPod, a, &to(reply.clone(), ma), true, R_ALLOW_REPLY, "reply");
    e.expect(Hook::ToPod, a, &to(reply, mb), false, R_DROP_NOT_FOR_POD, "reply to B's MAC");
}

/// A ClusterNetworkPolicy verdict in a policy value: tier slots as policyd
/// writes them.
fn tiered(np_rule: u32, admin: Option<(u32, u32)>, baseline: Option<(u32, u32)>) -> PolicyValue {
    let slot = |t: Option<(u32, u32)>| t.map(|(rank, rule)| TierVerdict { rank, rule }).unwrap_or(TierVerdict::NONE);
    PolicyValue {
        rule: np_rule,
        verdict: if np_rule != 0 { VERDICT_ALLOW } else { 0 },
        pad: 0,
        admin: slot(admin),
        baseline: slot(baseline),
    }
}

#[test]
fn root_cluster_tiers_decide_admin_then_network_policy_then_baseline() {
    let Some(e) = Env::new("tiers") else { return };
    let set = |identity: u32, protocol: Option<u8>, port: Option<u16>, v: PolicyValue| {
        let m = PolicyMatch {
            endpoint: e.b,
            identity,
            direction: Direction::Ingress,
            protocol,
            port: port.map(PortBlock::single),
        };
        e.dp.set_policy(&m, &v).unwrap();
    };
    // B is tiered on ingress, not isolated by NetworkPolicy.
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_TIERED);
    // Admin: deny TCP from A (priority 5), accept anyone's TCP/443 (priority 1).
    set(ID_A, Some(TCP), None, tiered(0, Some((tier_rank(5, 0, TIER_DENY), 21)), None));
    set(ID_ANY_POD, Some(TCP), Some(443), tiered(0, Some((tier_rank(1, 0, TIER_ACCEPT), 22)), None));
    for (s, d) in [(A4, B4), (A6, B6)] {
        e.expect(
            Hook::ToPod,
            e.b,
            &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(s), 1, ip(d), 80, SYN)),
            false,
            R_DROP_CLUSTER_POLICY,
            "Admin Deny",
        );
        e.expect(
            Hook::ToPod,
            e.b,
            &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(s), 1, ip(d), 443, SYN)),
            true,
            R_ALLOW_CLUSTER_POLICY,
            "the better-ranked Accept of the every-pod lookup",
        );
        e.expect(
            Hook::ToPod,
            e.b,
            &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::udp(ip(s), 1, ip(d), 53)),
            true,
            R_ALLOW_UNISOLATED,
            "no rule: default allow",
        );
    }
    // Pass from R, then a Baseline Deny: the Baseline decides while no
    // NetworkPolicy isolates B.
    set(ID_R, None, None, tiered(0, Some((tier_rank(0, 0, TIER_PASS), 23)), Some((tier_rank(9, 0, TIER_DENY), 24))));
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(R4), 1, ip(B4), 80, SYN)),
        false,
        R_DROP_CLUSTER_POLICY,
        "passed to Baseline Deny",
    );
    // The Pass outranks the Admin Accept of TCP/443 from anyone.
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(R4), 2, ip(B4), 443, SYN)),
        false,
        R_DROP_CLUSTER_POLICY,
        "Pass at priority 0 beats Accept at 1",
    );
    // A NetworkPolicy that isolates B and allows R decides passed flows.
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_TIERED | EP_INGRESS_ISOLATED);
    set(
        ID_R,
        Some(TCP),
        Some(80),
        tiered(31, Some((tier_rank(0, 0, TIER_PASS), 23)), Some((tier_rank(9, 0, TIER_DENY), 24))),
    );
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(R4), 3, ip(B4), 80, SYN)),
        true,
        R_ALLOW_POLICY,
        "passed, NetworkPolicy allows",
    );
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(R4), 4, ip(B4), 81, SYN)),
        false,
        R_DROP_POLICY,
        "passed, NetworkPolicy isolates",
    );
    // An ipBlock class lookup folds in too: an Admin Deny of the class
    // beats the Pass of R's identity.
    let class = ID_FIRST_CIDR + 3;
    e.dp.set_cidr(e.b, Direction::Ingress, "10.1.0.0/28".parse().unwrap(), class).unwrap();
    set(class, None, None, tiered(0, Some((tier_rank(0, 0, TIER_DENY), 25)), None));
    e.expect(
        Hook::ToPod,
        e.b,
        &pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(R4), 5, ip(B4), 80, SYN)),
        false,
        R_DROP_CLUSTER_POLICY,
        "the class's Deny ties the Pass's priority and index and wins on action",
    );
}

/// An endpoint only audit-mode policies isolate: every flow passes as if
/// nothing isolated it; one the audit policies' allows do not cover is
/// counted as ALLOW_AUDIT and always evented (no log flag needed), once per
/// flow; a cluster tier still decides before them.
#[test]
fn root_audit_isolation_decides_nothing_and_reports_would_be_drops() {
    let Some(e) = Env::new("audit") else { return };
    let mut events = e.dp.events().unwrap();
    events.drain();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_AUDITED);
    e.allow(e.b, ID_A, DIR_INGRESS, Some(TCP), Some((80, 80)));
    let syn = |src: &str, sport: u16, dst: &str, port: u16| {
        pkt::as_seen_at(Hook::ToPod, e.mac(e.b), &pkt::tcp(ip(src), sport, ip(dst), port, SYN))
    };
    for (a, r, b) in [(A4, R4, B4), (A6, R6, B6)] {
        e.expect(Hook::ToPod, e.b, &syn(a, 1, b, 80), true, R_ALLOW_UNISOLATED, "an audit rule allows it");
        e.expect(Hook::ToPod, e.b, &syn(a, 2, b, 81), true, R_ALLOW_AUDIT, "no audit rule allows it");
        e.expect(Hook::ToPod, e.b, &syn(r, 3, b, 80), true, R_ALLOW_AUDIT, "another peer");
    }
    let got = events.drain();
    assert_eq!(got.len(), 4, "one event per would-be drop: {got:?}");
    assert!(got.iter().all(|ev| ev.reason == R_ALLOW_AUDIT && ev.endpoint == e.b && ev.direction == DIR_INGRESS));
    assert_eq!(u16::from_be(got[0].dport), 81);
    // Established: no more events for the flow.
    e.expect(Hook::ToPod, e.b, &syn(A4, 2, B4, 81), true, R_ALLOW_ESTABLISHED, "the same flow again");
    assert!(events.drain().is_empty());

    // A local source's egress, audited: counted on the source, and the
    // flow's one event (the ingress side's, at the destination) says so.
    e.ep(e.b, ID_B, EP_READY);
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_AUDITED);
    assert!(e.to(e.b, &pkt::udp(ip(A4), 9, ip(B4), 53)));
    let got = events.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].endpoint, got[0].direction, got[0].reason), (e.b, DIR_INGRESS, R_ALLOW_UNISOLATED));
    assert_eq!(got[0].flags, EVENT_SOURCE_AUDIT);
    assert_eq!(e.count(e.a, DIR_EGRESS, R_ALLOW_AUDIT), 1);

    // Cluster tiers decide before audit policies would: a Baseline Deny
    // drops, an Admin Accept allows without a would-be drop.
    e.ep(e.a, ID_A, EP_READY);
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_AUDITED | EP_INGRESS_TIERED);
    let m = |port| PolicyMatch {
        endpoint: e.b,
        identity: ID_R,
        direction: Direction::Ingress,
        protocol: Some(TCP),
        port: Some(PortBlock::single(port)),
    };
    e.dp.set_policy(&m(90), &tiered(0, None, Some((tier_rank(1, 0, TIER_DENY), 41)))).unwrap();
    e.dp.set_policy(&m(91), &tiered(0, Some((tier_rank(1, 0, TIER_ACCEPT), 42)), None)).unwrap();
    e.dp.set_policy(&m(92), &tiered(0, None, Some((tier_rank(1, 0, TIER_ACCEPT), 43)))).unwrap();
    e.expect(Hook::ToPod, e.b, &syn(R4, 4, B4, 90), false, R_DROP_CLUSTER_POLICY, "Baseline Deny");
    e.expect(Hook::ToPod, e.b, &syn(R4, 5, B4, 91), true, R_ALLOW_CLUSTER_POLICY, "Admin Accept");
    e.expect(Hook::ToPod, e.b, &syn(R4, 6, B4, 92), true, R_ALLOW_AUDIT, "audit would decide before Baseline");
    e.expect(Hook::ToPod, e.b, &syn(A4, 7, B4, 80), true, R_ALLOW_UNISOLATED, "tiered, an audit rule allows");
}

// ---- established flows after a policy change (rejudge.h) ----------------------

impl Env {
    /// Remove what `allow` added and start a new policy generation, as
    /// weir-policyd's sync does after its removals.
    fn revoke(&self, endpoint: u32, identity: u32, direction: u8, protocol: Option<u8>, ports: Option<(u16, u16)>) {
        let direction = Direction::from_u8(direction).unwrap();
        self.dp
            .unallow(&PolicyMatch::cover(endpoint, identity, direction, protocol, ports.map(|(a, b)| a..=b)))
            .unwrap();
        self.dp.bump_policy_gen().unwrap();
    }
    /// The conntrack entry of the flow opened from (src, sport).
    fn flow(&self, src: &str, sport: u16) -> CtValue {
        self.dp
            .ct_entries()
            .unwrap()
            .into_iter()
            .find(|c| c.src() == ip(src) && u16::from_be(c.key.sport) == sport)
            .unwrap_or_else(|| panic!("no conntrack entry for {src}:{sport}"))
            .value
    }
    fn revoked(&self, ep: u32, dir: u8) -> u64 {
        self.count(ep, dir, R_DROP_POLICY_REVOKED)
    }
    /// The backends SERVICE entries are linked to: (source port, VIP,
    /// backend, backend port).
    fn links(&self) -> Vec<(u16, IpAddr, IpAddr, u16)> {
        let mut v: Vec<_> = self
            .dp
            .service_backends()
            .unwrap()
            .into_iter()
            .map(|(k, b)| (u16::from_be(k.sport), k.dst(), b.addr(), u16::from_be(b.bport)))
            .collect();
        v.sort();
        v
    }
}

/// B accepts R on tcp/80 and udp/53; the policy then drops that. The next
/// packet of each flow, whichever direction it goes, is dropped as revoked
/// (counted on B's ingress, the side that refused), so are the ones after
/// it; allowing the flow again revives it.
#[test]
fn root_rejudge_a_revoked_ingress_cuts_the_flow_in_both_directions() {
    let Some(e) = Env::new("rjin") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((80, 80)));
    e.allow(e.b, ID_R, DIR_INGRESS, Some(UDP), Some((53, 53)));
    for (r, b) in [(R4, B4), (R6, B6)] {
        for sport in [1000, 1001] {
            assert!(e.to(e.b, &pkt::tcp(ip(r), sport, ip(b), 80, SYN)), "{r}:{sport} opens");
            assert!(e.from(e.b, &pkt::tcp(ip(b), 80, ip(r), sport, SYN | ACK)), "{r}:{sport} reply");
        }
        assert!(e.to(e.b, &pkt::udp(ip(r), 2000, ip(b), 53)));
        assert!(e.from(e.b, &pkt::udp(ip(b), 53, ip(r), 2000)));
    }
    e.revoke(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((80, 80)));
    e.revoke(e.b, ID_R, DIR_INGRESS, Some(UDP), Some((53, 53)));
    let mut drops = 0;
    for (r, b) in [(R4, B4), (R6, B6)] {
        // next packet forward, then the reply
        assert!(!e.to(e.b, &pkt::tcp(ip(r), 1000, ip(b), 80, ACK)), "{r}: forward after the revocation");
        assert_ne!(e.flow(r, 1000).flags & CT_REVOKED, 0, "{r}: the entry is marked");
        assert!(!e.from(e.b, &pkt::tcp(ip(b), 80, ip(r), 1000, ACK)), "{r}: its reply after it");
        // next packet the reply, then forward
        assert!(!e.from(e.b, &pkt::tcp(ip(b), 80, ip(r), 1001, ACK)), "{r}: reply after the revocation");
        assert!(!e.to(e.b, &pkt::tcp(ip(r), 1001, ip(b), 80, ACK)), "{r}: forward after it");
        assert!(!e.from(e.b, &pkt::udp(ip(b), 53, ip(r), 2000)), "{r}: UDP reply");
        assert!(!e.to(e.b, &pkt::udp(ip(r), 2000, ip(b), 53)), "{r}: UDP forward");
        drops += 6;
    }
    assert_eq!(e.revoked(e.b, DIR_INGRESS), drops);
    assert_eq!(e.count(e.b, DIR_INGRESS, R_ALLOW_ESTABLISHED), 0);
    // allowed again: the same flow carries on
    e.allow(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((80, 80)));
    e.dp.bump_policy_gen().unwrap();
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1000, ip(B4), 80, ACK)), "allowed again");
    assert_eq!(e.flow(R4, 1000).flags & CT_REVOKED, 0);
    assert!(e.from(e.b, &pkt::tcp(ip(B4), 80, ip(R4), 1000, ACK)));
}

/// A new generation that still allows the flow: its next packet in each
/// direction passes as established / reply, the first one restamps the
/// entry, and nothing is counted as revoked.
#[test]
fn root_rejudge_a_flow_still_allowed_passes_and_is_restamped() {
    let Some(e) = Env::new("rjok") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((80, 80)));
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1000, ip(B4), 80, SYN)));
    assert!(e.from(e.b, &pkt::tcp(ip(B4), 80, ip(R4), 1000, SYN | ACK)));
    let before = e.flow(R4, 1000).policy_gen;
    // an unrelated change, then another change of this very rule's neighbours
    e.allow(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((81, 81)));
    let gen = e.dp.bump_policy_gen().unwrap();
    assert_ne!(gen, before);
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1000, ip(B4), 80, ACK)));
    assert_eq!(e.flow(R4, 1000).policy_gen, gen, "restamped by its first packet");
    assert!(e.from(e.b, &pkt::tcp(ip(B4), 80, ip(R4), 1000, ACK)));
    e.revoke(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((81, 81)));
    assert!(e.from(e.b, &pkt::tcp(ip(B4), 80, ip(R4), 1000, ACK)), "the reply first");
    assert_eq!(e.flow(R4, 1000).policy_gen, gen + 1);
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1000, ip(B4), 80, ACK)));
    assert_eq!(e.revoked(e.b, DIR_INGRESS), 0);
    assert_eq!(e.count(e.b, DIR_INGRESS, R_ALLOW_ESTABLISHED), 2);
    assert_eq!(e.count(e.b, DIR_EGRESS, R_ALLOW_REPLY), 3);
}

/// CFG_REJUDGE_OFF: established flows keep their verdict as before the
/// change, in both directions; switched back on, the next packet is judged.
#[test]
fn root_rejudge_off_keeps_established_flows() {
    let Some(e) = Env::new("rjoff") else { return };
    e.dp.set_config(&Config { flags: CFG_REJUDGE_OFF, ..Default::default() }).unwrap();
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_R, DIR_INGRESS, Some(UDP), Some((53, 53)));
    assert!(e.to(e.b, &pkt::udp(ip(R4), 2000, ip(B4), 53)));
    e.revoke(e.b, ID_R, DIR_INGRESS, Some(UDP), Some((53, 53)));
    assert!(!e.to(e.b, &pkt::udp(ip(R4), 2001, ip(B4), 53)), "a new flow is judged by the new policy");
    for _ in 0..3 {
        assert!(e.to(e.b, &pkt::udp(ip(R4), 2000, ip(B4), 53)), "the old flow keeps its verdict");
        assert!(e.from(e.b, &pkt::udp(ip(B4), 53, ip(R4), 2000)), "and its replies");
    }
    assert_eq!(e.revoked(e.b, DIR_INGRESS), 0);
    e.dp.set_config(&Config::default()).unwrap();
    assert!(!e.from(e.b, &pkt::udp(ip(B4), 53, ip(R4), 2000)), "switched on: judged again");
    assert_eq!(e.revoked(e.b, DIR_INGRESS), 1);
}

/// A local flow A -> B is judged once, at to_pod(B), into one entry holding
/// both sides. Revoking A's egress alone cuts it on its next packet
/// wherever that is seen: from_pod(A) or, for B's reply, from_pod(B);
/// counted on A's egress.
#[test]
fn root_rejudge_a_local_flow_checks_the_sources_egress() {
    let Some(e) = Env::new("rjloc") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_B, DIR_EGRESS, Some(TCP), Some((80, 80)));
    e.allow(e.b, ID_A, DIR_INGRESS, Some(TCP), Some((80, 80)));
    for sport in [40000, 40001] {
        assert!(e.from(e.a, &pkt::tcp(ip(A4), sport, ip(B4), 80, SYN)));
        assert!(e.to(e.b, &pkt::tcp(ip(A4), sport, ip(B4), 80, SYN)));
        assert!(e.from(e.b, &pkt::tcp(ip(B4), 80, ip(A4), sport, SYN | ACK)));
        assert!(e.to(e.a, &pkt::tcp(ip(B4), 80, ip(A4), sport, SYN | ACK)));
        let v = e.flow(A4, sport);
        assert_eq!((v.egress_ep, v.ingress_ep), (e.a, e.b));
    }
    e.revoke(e.a, ID_B, DIR_EGRESS, Some(TCP), Some((80, 80)));
    // 40000: A sends first
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 40000, ip(B4), 80, ACK)), "A's next packet");
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 80, ACK)), "at B's hook too");
    assert!(!e.from(e.b, &pkt::tcp(ip(B4), 80, ip(A4), 40000, ACK)), "B's reply");
    assert!(!e.to(e.a, &pkt::tcp(ip(B4), 80, ip(A4), 40000, ACK)), "B's reply at A's hook");
    // 40001: B answers first
    assert!(!e.from(e.b, &pkt::tcp(ip(B4), 80, ip(A4), 40001, ACK)), "B's next reply");
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 40001, ip(B4), 80, ACK)), "A's next packet");
    // every hook of either pod refuses it on A's egress, whichever saw it first
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 6);
    assert_eq!(e.revoked(e.b, DIR_INGRESS), 0, "B's ingress still allows it");
}

/// A Service flow to a local backend: from_pod(A) keeps A -> VIP (not a
/// judgement), to_pod(B) judged A -> B after DNAT. Revoking A's egress to
/// B cuts it at to_pod(B), and B's replies at from_pod(B), which would
/// otherwise be deferred and reach A on the VIP entry.
#[test]
fn root_rejudge_a_service_flow_to_a_local_backend() {
    let Some(e) = Env::new("rjsvc") else { return };
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.allow(e.a, ID_B, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 40000, ip(VIP4), 80, SYN)));
    assert!(e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 8080, SYN)));
    assert!(e.from(e.b, &pkt::tcp(ip(B4), 8080, ip(A4), 40000, SYN | ACK)));
    assert!(e.to(e.a, &pkt::tcp(ip(VIP4), 80, ip(A4), 40000, SYN | ACK)));
    e.revoke(e.a, ID_B, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    // to the VIP: deferred as before (the entry is no verdict)
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 40000, ip(VIP4), 80, ACK)));
    assert!(!e.to(e.b, &pkt::tcp(ip(A4), 40000, ip(B4), 8080, ACK)), "after DNAT: revoked");
    assert!(!e.from(e.b, &pkt::tcp(ip(B4), 8080, ip(A4), 40000, ACK)), "the backend's reply");
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 2);
}

/// Remote peers: A's egress to R judged at from_pod(A) (directly) and at
/// leave_node (a Service backend on another node). Revoked, the direct
/// flow's reply is cut at to_pod(A), and the Service flow at from_pod(A),
/// on its VIP entry, which leave_node linked to R (and at leave_node, had
/// the packet got there).
#[test]
fn root_rejudge_flows_to_remote_peers() {
    let Some(e) = Env::new("rjrem") else { return };
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    e.allow(e.a, ID_R, DIR_EGRESS, None, None);
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    // direct, and ICMP echo
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 3000, ip(R4), 80, SYN)));
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 3000, SYN | ACK)));
    assert!(e.from(e.a, &pkt::echo(ip(A4), ip(R4), false, 7)));
    assert!(e.to(e.a, &pkt::echo(ip(R4), ip(A4), true, 7)));
    // through a VIP, DNATed to R
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 3001, ip(VIP4), 80, SYN)));
    assert!(leave(&pkt::tcp(ip(A4), 3001, ip(R4), 80, SYN)));
    e.revoke(e.a, ID_R, DIR_EGRESS, None, None);
    assert!(e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 3000, ACK)), "tcp/80 is still allowed");
    assert!(!e.to(e.a, &pkt::echo(ip(R4), ip(A4), true, 7)), "the echo reply is not");
    e.revoke(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((80, 80)));
    assert!(!e.to(e.a, &pkt::tcp(ip(R4), 80, ip(A4), 3000, ACK)), "the reply");
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 3000, ip(R4), 80, ACK)), "A's next packet");
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 3001, ip(VIP4), 80, ACK)), "to the VIP, judged against R");
    assert!(!leave(&pkt::tcp(ip(A4), 3001, ip(R4), 80, ACK)), "after DNAT, leaving the node");
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 5);
}

/// A Service flow whose backend R is on another node: from_pod(A) keeps
/// A -> VIP, leave_node judges A -> R after DNAT and links the VIP entry to
/// R. R's replies come back from the VIP (kube-proxy un-DNATs them), so
/// only that link lets a re-judgement see R. A change that still allows the
/// flow passes every packet; once A's egress to R is revoked, the flow is
/// cut on its next packet in either direction: R's reply at to_pod(A), A's
/// packet at from_pod(A). TCP and UDP, both families.
#[test]
fn root_rejudge_a_service_flow_to_a_remote_backend_cuts_its_replies() {
    let Some(e) = Env::new("rjrsv") else { return };
    let uplink = dummy("wu");
    let vips = IpcacheValue { identity: ID_WORLD, endpoint: 0, flags: IPCACHE_SERVICE, pad: 0 };
    e.dp.set_ipcache("fd00:96::/112".parse().unwrap(), &vips).unwrap();
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED | EP_INGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    e.allow(e.a, ID_R, DIR_EGRESS, Some(UDP), Some((5353, 5353)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    let flows = [(A4, VIP4, R4), (A6, "fd00:96::10", R6)];
    for (a, vip, r) in flows {
        assert!(e.from(e.a, &pkt::tcp(ip(a), 3000, ip(vip), 80, SYN)));
        assert!(leave(&pkt::tcp(ip(a), 3000, ip(r), 8080, SYN)));
        assert!(e.to(e.a, &pkt::tcp(ip(vip), 80, ip(a), 3000, SYN | ACK)), "{a}: R's reply, from the VIP");
        assert!(e.from(e.a, &pkt::udp(ip(a), 3001, ip(vip), 53)));
        assert!(leave(&pkt::udp(ip(a), 3001, ip(r), 5353)));
        assert!(e.to(e.a, &pkt::udp(ip(vip), 53, ip(a), 3001)), "{a}: R's datagram");
    }
    let mut want = Vec::new();
    for (_, vip, r) in flows {
        want.push((3000, ip(vip), ip(r), 8080));
        want.push((3001, ip(vip), ip(r), 5353));
    }
    want.sort();
    assert_eq!(e.links(), want, "each VIP entry linked to the backend leave_node saw");

    // still allowed: every packet passes, nothing is counted as revoked
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((9090, 9090)));
    e.dp.bump_policy_gen().unwrap();
    for (a, vip, _) in flows {
        assert!(e.to(e.a, &pkt::udp(ip(vip), 53, ip(a), 3001)), "{a}: R's datagram, still allowed");
        assert!(e.to(e.a, &pkt::tcp(ip(vip), 80, ip(a), 3000, ACK)), "{a}: R's segment, still allowed");
        assert!(e.from(e.a, &pkt::tcp(ip(a), 3000, ip(vip), 80, ACK)), "{a}: A's segment, still allowed");
    }
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 0);

    e.revoke(e.a, ID_R, DIR_EGRESS, Some(UDP), Some((5353, 5353)));
    e.revoke(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    for (a, vip, _) in flows {
        // UDP: the backend's datagram first; TCP: A's segment first
        assert!(!e.to(e.a, &pkt::udp(ip(vip), 53, ip(a), 3001)), "{a}: R's datagram after the revocation");
        assert!(!e.from(e.a, &pkt::udp(ip(a), 3001, ip(vip), 53)), "{a}: A's datagram after it");
        assert!(!e.from(e.a, &pkt::tcp(ip(a), 3000, ip(vip), 80, ACK)), "{a}: A's segment after the revocation");
        assert!(!e.to(e.a, &pkt::tcp(ip(vip), 80, ip(a), 3000, ACK)), "{a}: R's reply after it");
        let entry = e.dp.ct_entries().unwrap().into_iter().find(|c| c.src() == ip(a) && c.dst() == ip(vip));
        assert!(entry.is_some_and(|c| c.value.flags & (CT_SERVICE | CT_REVOKED) == CT_SERVICE | CT_REVOKED));
    }
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 8, "counted on A's egress, the side that refused");
    assert_eq!(e.count(e.a, DIR_INGRESS, R_ALLOW_REPLY), 8, "the replies before the revocation only");

    // allowed again: the flow carries on
    e.allow(e.a, ID_R, DIR_EGRESS, Some(UDP), Some((5353, 5353)));
    e.dp.bump_policy_gen().unwrap();
    assert!(e.to(e.a, &pkt::udp(ip(VIP4), 53, ip(A4), 3001)), "revived");
}

/// A link is made only from a flow's first packet, and only when that
/// packet is told apart. A source port that opens two VIPs before either
/// reaches leave_node links neither (the same sequence on another port,
/// just after, links: the window was open); a packet leaving the node with
/// no open just recorded (a retransmission whose backend entry went) moves
/// no link; a new TCP connection on a closed VIP tuple drops the old
/// backend's link and takes the new one's, to another backend or the same.
#[test]
fn root_service_links_only_what_it_can_tell_apart() {
    let Some(e) = Env::new("svlink") else { return };
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY);
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    let (vip2, r2, r3) = ("10.96.0.11", "10.1.0.6", "10.1.0.7");
    // one source port, two VIPs, both opened before leave_node saw either
    assert!(e.from(e.a, &pkt::udp(ip(A4), 4000, ip(VIP4), 53)));
    assert!(e.from(e.a, &pkt::udp(ip(A4), 4000, ip(vip2), 53)));
    assert!(leave(&pkt::udp(ip(A4), 4000, ip(R4), 5353)));
    assert!(leave(&pkt::udp(ip(A4), 4000, ip(r2), 5353)));
    assert!(e.from(e.a, &pkt::udp(ip(A4), 4001, ip(VIP4), 53)));
    assert!(leave(&pkt::udp(ip(A4), 4001, ip(R4), 5353)));
    assert_eq!(e.links(), vec![(4001, ip(VIP4), ip(R4), 5353)], "ambiguous: port 4000 is linked to neither");
    // a connection, then a retransmission after its backend entry went
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4002, ip(VIP4), 80, SYN)));
    assert!(leave(&pkt::tcp(ip(A4), 4002, ip(R4), 8080, SYN)));
    let removed = e.dp.ct_flush_where(|k, v| v.flags & CT_SERVICE == 0 && k.sport == 4002u16.to_be()).unwrap();
    assert_eq!(removed, 1, "the backend's entry");
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4002, ip(VIP4), 80, SYN)), "retransmitted");
    assert!(leave(&pkt::tcp(ip(A4), 4002, ip(r2), 8080, SYN)), "no open recorded for it");
    assert!(leave(&pkt::tcp(ip(A4), 4002, ip(R4), 8080, SYN)));
    let first = (4002, ip(VIP4), ip(R4), 8080);
    assert_eq!(e.links(), vec![(4001, ip(VIP4), ip(R4), 5353), first], "a packet with no open moves no link");
    // the connection closes; a new one on the tuple goes to another backend
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4002, ip(VIP4), 80, RST)));
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4002, ip(VIP4), 80, SYN)), "a new connection on the tuple");
    assert!(!e.links().contains(&first), "the old backend's link is gone");
    assert!(leave(&pkt::tcp(ip(A4), 4002, ip(r3), 8081, SYN)));
    assert!(e.links().contains(&(4002, ip(VIP4), ip(r3), 8081)), "the new backend's");
    // and closes again; the next one goes to that same backend, whose
    // closed entry leave_node reopens
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4002, ip(VIP4), 80, FIN | ACK)));
    assert!(leave(&pkt::tcp(ip(A4), 4002, ip(r3), 8081, FIN | ACK)));
    assert!(e.to(e.a, &pkt::tcp(ip(VIP4), 80, ip(A4), 4002, FIN | ACK)));
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 4002, ip(VIP4), 80, SYN)));
    assert!(leave(&pkt::tcp(ip(A4), 4002, ip(r3), 8081, SYN)));
    assert!(e.links().contains(&(4002, ip(VIP4), ip(r3), 8081)), "linked again to the same backend");
}

/// A link judges only while its backend is a pod. When the backend pod is
/// gone (its address no pod's) and a UDP flow moved on to another backend
/// that its egress allows, re-judging the VIP entry against the old
/// address would cut an allowed flow: it passes. A new TCP connection on a
/// closed VIP tuple whose old backend was revoked is a new flow, judged
/// after DNAT, not dropped on the old verdict.
#[test]
fn root_service_link_judges_a_pod_backend_and_a_new_connection_afresh() {
    let Some(e) = Env::new("svgone") else { return };
    let uplink = dummy("wu");
    e.ep(e.a, ID_A, EP_READY | EP_EGRESS_ISOLATED);
    e.allow(e.a, ID_R, DIR_EGRESS, Some(UDP), Some((5353, 5353)));
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    let leave = |frame: &[u8]| verdict(e.run(Hook::LeaveNode, uplink, frame));
    let gone = "10.2.0.9";
    let pod = IpcacheValue { identity: ID_R, endpoint: 0, flags: 0, pad: 0 };
    e.dp.set_ipcache(format!("{gone}/32").parse().unwrap(), &pod).unwrap();
    assert!(e.from(e.a, &pkt::udp(ip(A4), 5000, ip(VIP4), 53)));
    assert!(leave(&pkt::udp(ip(A4), 5000, ip(gone), 5353)));
    assert_eq!(e.links(), vec![(5000, ip(VIP4), ip(gone), 5353)]);
    // the backend pod goes: its address is the world's
    e.dp.remove_ipcache(format!("{gone}/32").parse().unwrap()).unwrap();
    e.dp.bump_policy_gen().unwrap();
    assert!(e.from(e.a, &pkt::udp(ip(A4), 5000, ip(VIP4), 53)), "A's datagram, now DNATed elsewhere");
    assert!(leave(&pkt::udp(ip(A4), 5000, ip(R4), 5353)), "to a backend A may reach");
    assert!(e.to(e.a, &pkt::udp(ip(VIP4), 53, ip(A4), 5000)), "its reply");
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 0);

    // TCP: linked to R:8080, closed; then A may no longer reach R:8080
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 5001, ip(VIP4), 80, SYN)));
    assert!(leave(&pkt::tcp(ip(A4), 5001, ip(R4), 8080, SYN)));
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 5001, ip(VIP4), 80, RST)), "closed");
    e.allow(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((9090, 9090)));
    e.revoke(e.a, ID_R, DIR_EGRESS, Some(TCP), Some((8080, 8080)));
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 5001, ip(VIP4), 80, SYN)), "a new connection: not the old one's verdict");
    assert!(leave(&pkt::tcp(ip(A4), 5001, ip("10.1.0.8"), 9090, SYN)), "DNATed to a backend A may reach");
    assert!(e.links().contains(&(5001, ip(VIP4), ip("10.1.0.8"), 9090)));
    assert!(e.to(e.a, &pkt::tcp(ip(VIP4), 80, ip(A4), 5001, SYN | ACK)));
    assert_eq!(e.revoked(e.a, DIR_EGRESS), 0);
}

/// Every input of a verdict, changed under an established flow, is seen on
/// its next packet: the peer's identity (ipcache), the endpoint's isolation
/// flag, an ipBlock class.
#[test]
fn root_rejudge_sees_identity_isolation_and_ipblock_changes() {
    let Some(e) = Env::new("rjall") else { return };
    e.ep(e.b, ID_B, EP_READY | EP_INGRESS_ISOLATED);
    e.allow(e.b, ID_R, DIR_INGRESS, Some(TCP), Some((80, 80)));
    let class = ID_FIRST_CIDR + 1;
    e.dp.set_cidr(e.b, Direction::Ingress, "192.0.2.0/24".parse().unwrap(), class).unwrap();
    e.allow(e.b, class, DIR_INGRESS, Some(UDP), Some((53, 53)));
    // R: allowed by identity; 192.0.2.7: by its ipBlock class; B -> A:
    // A is not isolated yet (B's egress is not isolated either)
    assert!(e.to(e.b, &pkt::tcp(ip(R4), 1000, ip(B4), 80, SYN)));
    assert!(e.to(e.b, &pkt::udp(ip("192.0.2.7"), 2000, ip(B4), 53)));
    e.ep(e.a, ID_A, EP_READY);
    assert!(e.to(e.a, &pkt::tcp(ip(B4), 3000, ip(A4), 22, SYN)), "A unisolated");
    assert!(e.from(e.a, &pkt::tcp(ip(A4), 22, ip(B4), 3000, SYN | ACK)));

    // R's /24 now belongs to another identity
    let other = IpcacheValue { identity: ID_R + 1, endpoint: 0, flags: 0, pad: 0 };
    e.dp.set_ipcache("10.1.0.0/24".parse().unwrap(), &other).unwrap();
    // the ipBlock shrinks away from 192.0.2.7
    e.dp.remove_cidr(e.b, Direction::Ingress, "192.0.2.0/24".parse().unwrap()).unwrap();
    e.dp.set_cidr(e.b, Direction::Ingress, "192.0.2.128/25".parse().unwrap(), class).unwrap();
    // A becomes isolated for ingress, with nothing allowed
    e.ep(e.a, ID_A, EP_READY | EP_INGRESS_ISOLATED);
    e.dp.bump_policy_gen().unwrap();

    assert!(!e.to(e.b, &pkt::tcp(ip(R4), 1000, ip(B4), 80, ACK)), "a peer that changed identity");
    assert!(!e.to(e.b, &pkt::udp(ip("192.0.2.7"), 2000, ip(B4), 53)), "a peer out of the ipBlock");
    assert_eq!(e.revoked(e.b, DIR_INGRESS), 2);
    assert!(!e.from(e.a, &pkt::tcp(ip(A4), 22, ip(B4), 3000, ACK)), "an endpoint isolated since");
    assert_eq!(e.revoked(e.a, DIR_INGRESS), 1);
}
