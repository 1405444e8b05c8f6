//! The ARP/ND hijack, end to end: pods B, C and D made by the real `weir`
//! CNI binary on one bridge, programmed the way weir-policyd does, no
//! policy at all. Pod B adds pod C's addresses to its own interface and
//! tells the link they are its own: a gratuitous ARP, an unsolicited and a
//! solicited neighbour advertisement, and a frame from C's MAC (which
//! would teach the bridge that C lives behind B's port). Neither the
//! node's nor pod D's neighbour entries for C may move to B, the bridge
//! must keep C's MAC on C's port, and D's TCP and UDP exchanges with C
//! must still reach C (B answers "evil" on C's addresses, C "pong").

mod common;
use common::pkt::{self, NA_OVERRIDE, NA_SOLICITED};
use common::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use weir_bpf::abi::*;
use weir_bpf::Dataplane;
use weir_common::registry::{EndpointRecord, Registry};

const PORT: u16 = 7070;

fn v4(r: &EndpointRecord) -> Ipv4Addr {
    r.ips.iter().find_map(|a| if let IpAddr::V4(a) = a { Some(*a) } else { None }).expect("an IPv4 address")
}

fn v6(r: &EndpointRecord) -> Ipv6Addr {
    r.ips.iter().find_map(|a| if let IpAddr::V6(a) = a { Some(*a) } else { None }).expect("an IPv6 address")
}

#[test]
fn root_a_pod_cannot_take_over_a_neighbours_addresses() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bin = weir_bin();
    let id = std::process::id();
    let node = format!("whn{id}");
    let pods: Vec<String> = ["b", "c", "d"].iter().map(|p| format!("whp{id}-{p}")).collect();
    let g = NetnsGuard::new(
        pods.iter().cloned().chain(std::iter::once(node.clone())).collect(),
        PathBuf::from(format!("/sys/fs/bpf/weir-thijack-{id}")),
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weirhijack", "type": "weir", "bridge": "cni0", "mtu": 1500,
        "isDefaultGateway": true, "ipMasq": false,
        "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.79.0.0/24" }], [{ "subnet": "fd79::/64" }]],
                  "dataDir": tmp.path().join("ipam") },
        "policy": { "enforce": true, "bpffsRoot": g.root, "runDir": tmp.path().join("run"),
                    "readyTimeoutMs": 0, "whileNotReady": "drop", "onReadyTimeout": "continue" }
    });
    for (name, ns) in ["b", "c", "d"].iter().zip(&pods) {
        cni(&bin, &node, "ADD", name, ns, &conf);
    }
    let reg = Registry::under(tmp.path().join("run"));
    let rec = |name: &str| reg.get(name, "eth0").unwrap().expect("endpoint record");
    let (b, c, d) = (rec("b"), rec("c"), rec("d"));
    let dp = Dataplane::open(&g.root).unwrap();
    for (r, identity) in [(&b, 300), (&c, 301), (&d, 302)] {
        program_like_policyd(&dp, r, identity, EP_READY);
    }
    let ns = |r: &EndpointRecord| r.netns.clone();
    let (bmac, cmac) = (parse_mac(&b.mac), parse_mac(&c.mac));
    let (c4, c6) = (v4(&c), v6(&c));
    let targets = [SocketAddr::new(c4.into(), PORT), SocketAddr::new(c6.into(), PORT)];
    for t in targets {
        serve_tcp(&ns(&c), t.ip(), PORT);
        serve_udp(&ns(&c), t.ip(), PORT);
    }

    // D and the node talk to C: both now hold neighbour entries for C.
    let node_ns = format!("/run/netns/{node}");
    for t in targets {
        assert!(tcp_ok(&ns(&d), t), "D -> C {t} before the attack");
        assert!(udp_ok(&ns(&d), t), "D -> C {t} (UDP) before the attack");
        assert!(tcp_ok(&node_ns, t), "node -> C {t} before the attack");
    }
    for ip in [IpAddr::V4(c4), IpAddr::V6(c6)] {
        assert_eq!(neighbour(&node, "cni0", ip), Some(cmac), "node's entry for {ip} before the attack");
        assert_eq!(neighbour(&pods[2], "eth0", ip), Some(cmac), "D's entry for {ip} before the attack");
    }

    // B takes C's addresses, serves on them, and claims them on the link.
    sh(&["ip", "-n", &pods[0], "addr", "add", &format!("{c4}/32"), "dev", "eth0"]);
    sh(&["ip", "-n", &pods[0], "addr", "add", &format!("{c6}/128"), "dev", "eth0", "nodad"]);
    for t in targets {
        serve_tcp_answering(&ns(&b), t.ip(), PORT, b"evil");
        serve_udp_answering(&ns(&b), t.ip(), PORT, b"evil");
    }
    let (d4, d6, dmac) = (v4(&d), v6(&d), parse_mac(&d.mac));
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let marker = format!("weir-hijack-marker-{id}").into_bytes();
    let waiter = FrameWaiter::listen(&ns(&d), "eth0", marker.clone());
    let before = egress_packets(&dp, b.host_ifindex);
    let attack = vec![
        // arping -U: a gratuitous request claiming C's IPv4
        pkt::garp(bmac, c4),
        // arping -A: a gratuitous reply
        pkt::arp(pkt::ARP_REPLY, bmac, c4, pkt::BROADCAST_MAC, c4),
        // a reply to D as if D had asked for C
        pkt::arp(pkt::ARP_REPLY, bmac, c4, dmac, d4),
        // unsolicited NA to all nodes, override, B's MAC for C's IPv6
        pkt::nd(bmac, c6, all_nodes, [0; 6], &pkt::na_body(c6, NA_OVERRIDE, Some(bmac))),
        // solicited NA to D, override
        pkt::nd(bmac, c6, d6, dmac, &pkt::na_body(c6, NA_SOLICITED | NA_OVERRIDE, Some(bmac))),
        // a frame from C's MAC: the bridge would learn C behind B's port
        test_frame(cmac, b"fdb poison"),
        // the marker: once D has it, D and the node have seen all of the above
        test_frame(bmac, &marker),
    ];
    let sent = attack.len() as u64;
    send_frames(&ns(&b), "eth0", attack);
    assert!(waiter.arrived(), "the marker frame B sent never reached D");
    assert!(egress_packets(&dp, b.host_ifindex) >= before + sent, "B's from_pod judged every frame B sent");

    let mut hijacked = Vec::new();
    for ip in [IpAddr::V4(c4), IpAddr::V6(c6)] {
        let n = neighbour(&node, "cni0", ip);
        if n != Some(cmac) {
            hijacked.push(format!("node's neighbour entry for C's {ip} is {n:02x?}, C's MAC is {cmac:02x?}"));
        }
        let n = neighbour(&pods[2], "eth0", ip);
        if n != Some(cmac) {
            hijacked.push(format!("D's neighbour entry for C's {ip} is {n:02x?}, C's MAC is {cmac:02x?}"));
        }
    }
    let port = fdb_port(&node, "cni0", cmac);
    if port.as_deref() != Some(c.host_ifname.as_str()) {
        hijacked.push(format!("the bridge has C's MAC on port {port:?}, not on C's {}", c.host_ifname));
    }
    for t in targets {
        if !tcp_ok(&ns(&d), t) {
            hijacked.push(format!("D -> C {t} (TCP) did not reach C"));
        }
        if !udp_ok(&ns(&d), t) {
            hijacked.push(format!("D -> C {t} (UDP) did not reach C"));
        }
    }
    assert!(hijacked.is_empty(), "pod B took over pod C:\n{}", hijacked.join("\n"));
    // and it was B's from_pod that stopped each claim
    let dropped = |reason| dp.counter(b.host_ifindex, DIR_EGRESS, reason).unwrap().packets;
    assert!(dropped(R_DROP_NEIGH_SPOOFED) >= 5, "3 ARP + 2 NA claims of C's addresses");
    assert!(dropped(R_DROP_SPOOFED_MAC) >= 1, "the frame from C's MAC");
}

/// The endpoint's link-local address is the one the pod's kernel made: ND
/// from it must pass (it is how the pod resolves its neighbours).
#[test]
fn root_the_endpoint_knows_the_pods_link_local_address() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bin = weir_bin();
    let id = std::process::id();
    let (node, pod) = (format!("whln{id}"), format!("whlp{id}"));
    let g = NetnsGuard::new(vec![pod.clone(), node.clone()], PathBuf::from(format!("/sys/fs/bpf/weir-thll-{id}")));
    let tmp = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weirll", "type": "weir", "bridge": "cni0",
        "ipam": { "type": "host-local", "ranges": [[{ "subnet": "fd7a::/64" }]], "dataDir": tmp.path().join("ipam") },
        "policy": { "enforce": true, "bpffsRoot": g.root, "runDir": tmp.path().join("run"),
                    "readyTimeoutMs": 0, "onReadyTimeout": "continue" }
    });
    cni(&bin, &node, "ADD", "ll", &pod, &conf);
    let rec = Registry::under(tmp.path().join("run")).get("ll", "eth0").unwrap().expect("endpoint record");
    let ep = Dataplane::open(&g.root).unwrap().endpoint(rec.host_ifindex).unwrap().expect("endpoint entry");
    let out = sh(&["ip", "-n", &pod, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
    let kernel: Ipv6Addr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on the pod's eth0: {out}"));
    assert_eq!(Ipv6Addr::from(ep.ipv6_ll), kernel);
    assert_eq!(ep.ips(), rec.ips, "an IPv6-only pod");
}

/// Every packet an endpoint's from_pod judged, whatever the verdict.
fn egress_packets(dp: &Dataplane, ifindex: u32) -> u64 {
    dp.counters()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.endpoint == ifindex && k.direction == DIR_EGRESS)
        .map(|(_, v)| v.packets)
        .sum()
}
