//! Writes the seed inputs every target's corpus started from (fuzz/corpus/),
//! so the fuzzers begin past the parsers: valid configs, manifests and
//! frames, one named file each. packet_verdict's corpus is these seeds
//! plus the reproducers of what fuzzing found; rerunning this rewrites
//! the seeds and leaves the reproducers alone.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use weir_bpf::pkt::{self, Ip, ACK, FIN, RST, SYN};
use weir_bpf::pkt::{ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, NA_OVERRIDE, NA_SOLICITED};
use weir_fuzz::packet::{Control, PODS};

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().unwrap().to_path_buf();
    let out = fuzz.join("corpus");
    cni_config(&repo, &out.join("cni_config"));
    policy_compile(&repo, &out.join("policy_compile"));
    packet_verdict(&out.join("packet_verdict"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn cni_config(repo: &Path, dir: &Path) {
    write(dir, "conflist", &std::fs::read(repo.join("conf/10-weir.conflist")).unwrap());
    let configs = [
        ("legacy-subnet", r#"{"cniVersion":"0.4.0","name":"n","type":"weir","ipam":{"subnet":"10.9.0.0/16","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.20","gateway":"10.9.0.1","routes":[{"dst":"0.0.0.0/0"}]}}"#),
        ("dual-stack", r#"{"cniVersion":"1.0.0","name":"n","type":"weir","bridge":"br-weir","mtu":9000,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.2.0.0/24"}],[{"subnet":"fd00::/120"}]],"routes":[{"dst":"::/0","gw":"fd00::1"}],"dataDir":"/tmp/x"}}"#),
        ("delegated", r#"{"cniVersion":"0.3.1","name":"n","type":"weir","ipam":{"type":"static"},"policy":{"enforce":true,"whileNotReady":"allow","onReadyTimeout":"continue","readyTimeoutMs":5}}"#),
        ("prev-result", r#"{"cniVersion":"1.1.0","name":"n","type":"weir","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]},"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"cni0","mac":"02:00:00:00:00:01","mtu":1500},{"name":"eth0","mac":"02:00:00:00:00:03","sandbox":"/run/netns/p"}],"ips":[{"address":"10.1.0.2/24","gateway":"10.1.0.1","interface":1},{"address":"fd00::2/64","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}],"dns":{"nameservers":["10.96.0.10"]}}}"#),
        ("old-result", r#"{"cniVersion":"0.3.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.0.0.5/16","interface":0}]}"#),
        ("cni-args", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=1234;K8S_POD_INFRA_CONTAINER_ID=abc"),
        ("env", "CNI_CONTAINERID=abc123\nCNI_NETNS=/run/netns/p\nCNI_IFNAME=eth0\nCNI_ARGS=K8S_POD_NAME=p\nCNI_PATH=/opt/cni/bin:/usr/lib/cni\n"),
    ];
    for (name, text) in configs {
        write(dir, name, text.as_bytes());
    }
}

fn policy_compile(repo: &Path, dir: &Path) {
    // Manifest mode (first byte 0): the example cluster and its policies.
    let mut all = std::fs::read_to_string(repo.join("conf/examples/netpol-model.yaml")).unwrap();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(repo.join("conf/examples/policies")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in &names {
        all.push_str("\n---\n");
        all.push_str(&std::fs::read_to_string(p).unwrap());
    }
    write(dir, "manifest-model", &[&[0u8][..], all.as_bytes()].concat());
    // Structured mode: a few fixed pseudo-random byte strings.
    let mut x: u64 = 0x5eed;
    for n in [64usize, 256, 1024] {
        let bytes: Vec<u8> = std::iter::once(1u8)
            .chain((0..n).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }))
            .collect();
        write(dir, &format!("cluster-{n}"), &bytes);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A packet_verdict input: the control byte, then the frame.
fn input(control: u8, frame: &[u8]) -> Vec<u8> {
    [&[control][..], frame].concat()
}

fn packet_verdict(dir: &Path) {
    // The node of src/packet.rs: e 10.0.0.10, a .20, d .30, n .40, the
    // node .1, a remote pod 10.1.0.5, a VIP 10.96.0.10, ipBlock members.
    // Control 0: each pod hook sees the frame from or to its own MAC, and
    // leave_node runs last.
    let w = |name: &str, frame: &[u8]| write(dir, name, &input(0, frame));
    let pairs4 = [
        ("a-e", "10.0.0.20", "10.0.0.10"),
        ("r-e", "10.1.0.5", "10.0.0.10"),
        ("w-e", "8.8.8.8", "10.0.0.10"),
        ("b-e", "192.168.0.5", "10.0.0.10"),
        ("hole-e", "192.168.1.5", "10.0.0.10"),
        ("host-e", "10.0.0.1", "10.0.0.10"),
        ("e-r", "10.0.0.10", "10.1.0.5"),
        ("e-a", "10.0.0.10", "10.0.0.20"),
        ("e-vip", "10.0.0.10", "10.96.0.10"),
        ("e-b", "10.0.0.10", "172.16.0.5"),
        ("a-w", "10.0.0.20", "8.8.8.8"),
        ("d-e", "10.0.0.30", "10.0.0.10"),
    ];
    let pairs6 = [
        ("a-e6", "fd00::20", "fd00::10"),
        ("r-e6", "fd01::5", "fd00::10"),
        ("b-e6", "2001:db8::5", "fd00::10"),
        ("hole-e6", "2001:db8:1::5", "fd00::10"),
        ("e-r6", "fd00::10", "fd01::5"),
        ("e-vip6", "fd00::10", "fd96::10"),
        // IPv4-mapped: the maps key IPv4 this way.
        ("mapped-a-e6", "::ffff:10.0.0.20", "fd00::10"),
    ];
    for (name, s, d) in pairs4.iter().chain(pairs6.iter()) {
        let (s, d) = (ip(s), ip(d));
        w(&format!("{name}-tcp80"), &pkt::tcp(s, 40000, d, 80, SYN));
        w(&format!("{name}-tcp443"), &pkt::tcp(s, 40001, d, 443, SYN | ACK));
        w(&format!("{name}-udp53"), &pkt::udp(s, 5353, d, 53));
        w(&format!("{name}-sctp"), &pkt::sctp_init(s, 1500, d, 1500, 7));
        w(&format!("{name}-echo"), &pkt::echo(s, d, false, 9));
    }
    let (a, e) = (ip("10.0.0.20"), ip("10.0.0.10"));
    let (a6, e6) = (ip("fd00::20"), ip("fd00::10"));
    w("fin", &pkt::tcp(a, 1, e, 80, FIN | ACK));
    w("rst", &pkt::tcp(a, 1, e, 80, RST));
    let opts = Ip { v4_options: vec![1, 1, 1, 0], ..Ip::default() };
    w("v4-options", &pkt::frame(a, e, 6, &pkt::tcp_hdr(1, 80, SYN), &opts));
    w("v4-first-fragment", &fragment(a, e, 17, &pkt::udp_hdr(1, 53), (0, true)));
    w("v4-later-fragment", &fragment(a, e, 17, &[0; 16], (8, false)));
    let ext = Ip { v6_ext: vec![(0, 8), (60, 16), (51, 16)], ..Ip::default() };
    w("v6-ext", &pkt::frame(a6, e6, 6, &pkt::tcp_hdr(1, 80, SYN), &ext));
    w("v6-later-fragment", &fragment(a6, e6, 17, &[0; 16], (3, false)));
    w("v6-first-fragment", &fragment(a6, e6, 6, &pkt::tcp_hdr(1, 80, SYN), (0, true)));
    w("proto-253", &pkt::frame(ip("10.1.0.5"), e, 253, &[0; 8], &Ip::default()));
    // An ICMP error from the world quoting e's packet to it.
    let quoted = pkt::udp(e, 5353, ip("8.8.8.8"), 53);
    let mut err = pkt::icmp_hdr(3, 0);
    err.extend_from_slice(&quoted[14..]);
    w("icmp-unreachable", &pkt::frame(ip("8.8.8.8"), e, 1, &err, &Ip::default()));
    let mut vlan = pkt::tcp(a, 1, e, 80, SYN);
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x01]);
    w("vlan", &vlan);

    // What to_pod hands a pod beside its own address: broadcast, its
    // subnet's broadcast, multicast (and what it must not: another pod's).
    w("to-broadcast", &eth_to(BROADCAST_MAC, &pkt::udp(a, 68, ip("255.255.255.255"), 67)));
    w("to-subnet-broadcast", &eth_to(BROADCAST_MAC, &pkt::udp(a, 137, ip("10.0.0.255"), 137)));
    w("to-mdns", &eth_to([0x01, 0, 0x5e, 0, 0, 0xfb], &pkt::udp(a, 5353, ip("224.0.0.251"), 5353)));
    w("to-mdns6", &eth_to(pkt::ipv6_multicast_mac(v6("ff02::fb")), &pkt::udp(a6, 5353, ip("ff02::fb"), 5353)));

    // ARP, as the pod with MAC `mac` sends it.
    let [me, ma] = [PODS[0].mac, PODS[1].mac];
    let arp = |op, sha, spa: &str, tha, tpa: &str| pkt::arp(op, sha, v4(spa), tha, v4(tpa));
    w("arp-e-asks-node", &arp(ARP_REQUEST, me, "10.0.0.10", [0; 6], "10.0.0.1"));
    w("arp-e-answers-node", &arp(ARP_REPLY, me, "10.0.0.10", [2, 0x99, 0, 0, 0, 1], "10.0.0.1"));
    w("arp-e-probe", &arp(ARP_REQUEST, me, "0.0.0.0", [0; 6], "10.0.0.10"));
    w("arp-e-announces", &pkt::garp(me, v4("10.0.0.10")));
    w("arp-e-announces-a", &pkt::garp(me, v4("10.0.0.20")));
    w("arp-e-as-a", &arp(ARP_REPLY, ma, "10.0.0.20", BROADCAST_MAC, "10.0.0.1"));
    w("arp-node-asks-a", &arp(ARP_REQUEST, [2, 0x99, 0, 0, 0, 1], "10.0.0.1", [0; 6], "10.0.0.20"));
    w("rarp", &{
        let mut f = arp(ARP_REQUEST, me, "10.0.0.10", [0; 6], "10.0.0.1");
        f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
        f
    });

    // Neighbour discovery from e (its global and link-local address), and
    // what it may not say.
    let (e6, a6, node6) = (v6("fd00::10"), v6("fd00::20"), v6("fd00::1"));
    let ll = weir_bpf::addr::eui64_link_local(me);
    let (all_nodes, all_routers, any) = (v6("ff02::1"), v6("ff02::2"), Ipv6Addr::UNSPECIFIED);
    let node_mac = [2, 0x99, 0, 0, 0, 1];
    let nd = |src, dst, body: &[u8]| pkt::nd(me, src, dst, node_mac, body);
    let sol = pkt::solicited_node;
    w("nd-e-solicits-node", &nd(e6, sol(node6), &pkt::ns_body(node6, Some(me))));
    w("nd-e-ll-solicits-node", &nd(ll, sol(node6), &pkt::ns_body(node6, Some(me))));
    w("nd-e-dad", &nd(any, sol(e6), &pkt::ns_body(e6, None)));
    w("nd-e-dad-for-a", &nd(any, sol(a6), &pkt::ns_body(a6, None)));
    w("nd-e-advertises", &nd(e6, all_nodes, &pkt::na_body(e6, NA_OVERRIDE, Some(me))));
    w("nd-e-answers-node", &nd(e6, node6, &pkt::na_body(e6, NA_SOLICITED, Some(me))));
    w("nd-e-advertises-a", &nd(e6, all_nodes, &pkt::na_body(a6, NA_OVERRIDE, Some(me))));
    w("nd-e-advertises-a-mac", &nd(e6, all_nodes, &pkt::na_body(e6, NA_OVERRIDE, Some(ma))));
    w("nd-e-router-solicitation", &nd(ll, all_routers, &pkt::rs_body(Some(me))));
    w("nd-e-router-advertisement", &nd(ll, all_nodes, &pkt::ra_body(me)));
    w("nd-node-solicits-a", &pkt::nd(node_mac, node6, sol(a6), me, &pkt::ns_body(a6, Some(node_mac))));
    w("nd-node-solicits-e-ll", &pkt::nd(node_mac, node6, sol(ll), me, &pkt::ns_body(ll, Some(node_mac))));

    // The Ethernet addresses as they are (control RAW_ETHERNET): every
    // frame from pkt's default MACs, no pod's, and e's frames as e sends them.
    let raw = |name: &str, frame: &[u8]| write(dir, name, &input(Control::RAW_ETHERNET, frame));
    raw("raw-a-e-tcp80", &pkt::tcp(a, 40000, e, 80, SYN));
    raw("raw-e-r-tcp443", &{
        let mut f = pkt::tcp(e, 40000, ip("10.1.0.5"), 443, SYN);
        pkt::set_eth(&mut f, me, node_mac);
        f
    });
    raw("raw-nd-e-solicits-node", &nd(e6, sol(node6), &pkt::ns_body(node6, Some(me))));
    raw("raw-arp-e-asks-node", &arp(ARP_REQUEST, me, "10.0.0.10", [0; 6], "10.0.0.1"));

    // leave_node before the pod hooks (control LEAVE_FIRST): it judges the
    // pod's egress itself, as for a Service backend on another node after
    // DNAT, which no from_pod saw.
    let leave = |name: &str, frame: &[u8]| write(dir, name, &input(Control::LEAVE_FIRST, frame));
    leave("leave-e-r-tcp443", &pkt::tcp(e, 40000, ip("10.1.0.5"), 443, SYN));
    leave("leave-e-r-tcp80", &pkt::tcp(e, 40000, ip("10.1.0.5"), 80, SYN));
    leave("leave-e-r6-tcp443", &pkt::tcp(ip("fd00::10"), 40000, ip("fd01::5"), 443, SYN));
    leave("leave-a-w-tcp80", &pkt::tcp(a, 40000, ip("8.8.8.8"), 80, SYN));
    leave("leave-n-r-tcp443", &pkt::tcp(ip("10.0.0.40"), 40000, ip("10.1.0.5"), 443, SYN));
    leave("leave-node-r-tcp22", &pkt::tcp(ip("10.0.0.1"), 40000, ip("10.1.0.5"), 22, SYN));
    leave("leave-vxlan-outer", &pkt::udp(ip("192.0.2.1"), 4789, ip("192.0.2.2"), 8472));
}

/// A fragment (offset in 8-byte units, more fragments) carrying `l4`.
fn fragment(s: IpAddr, d: IpAddr, proto: u8, l4: &[u8], frag: (u16, bool)) -> Vec<u8> {
    pkt::frame(s, d, proto, l4, &Ip { frag: Some(frag), ..Ip::default() })
}

/// `frame` sent to the Ethernet group address `mac`.
fn eth_to(mac: [u8; 6], frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&mac);
    f
}
