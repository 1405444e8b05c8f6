//! End to end in network namespaces: a node netns holding a bridge, three
//! pods on veths, real TCP/UDP traffic, a ClusterIP DNAT by iptables in the
//! node netns (br_netfilter on), and Weir's programs loaded, attached and
//! programmed by a separate process (the `fill` example) that has exited
//! before the first packet: the pins alone carry the state.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use weir_bpf::abi::*;
use weir_bpf::Dataplane;

/// The test's namespaces and bpffs root, removed on drop.
struct Topo {
    node: Netns,
    pods: Vec<Netns>,
    root: RemoveOnDrop,
}

fn node(t: &Topo, args: &[&str]) -> String {
    t.node.exec(args)
}

/// target/<profile>/examples/fill, built if absent.
fn fill_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf(); // .../target/debug
    let bin = profile_dir.join("examples").join("fill");
    let stale = |b: &PathBuf| {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        m(b) < m(&exe) // older than this test binary: built from older sources
    };
    if !bin.exists() || stale(&bin) {
        let st = Command::new(env!("CARGO"))
            .args(["build", "--example", "fill", "-p", "weir-bpf"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build --example fill");
    }
    bin
}

/// The MAC of pod `n` (1-based): the endpoint entries fill writes hold it.
fn pod_mac(n: usize) -> String {
    format!("02:77:00:00:00:{n:02x}")
}

/// TCP and UDP servers answering "pong" in `ns` (see `serve_tcp`).
fn serve(ns: &str, ip: &str, tcp: &[u16], udp: &[u16]) {
    let ip = ip.parse().unwrap();
    for &p in tcp {
        serve_tcp(ns, ip, p);
    }
    for &p in udp {
        serve_udp(ns, ip, p);
    }
}

#[test]
fn root_real_traffic_follows_the_maps_and_survives_its_creators() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let id = std::process::id();
    let t = Topo {
        node: Netns::named(&format!("wtn{id}")),
        pods: (1..=3).map(|i| Netns::named(&format!("wtp{id}-{i}"))).collect(),
        root: RemoveOnDrop::fresh(format!("/sys/fs/bpf/weir-te2e-{id}")),
    };
    node(&t, &["ip", "link", "set", "lo", "up"]);
    node(&t, &["ip", "link", "add", "br0", "type", "bridge"]);
    node(&t, &["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"]);
    node(&t, &["ip", "link", "set", "br0", "up"]);
    node(&t, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    node(&t, &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    for (i, p) in t.pods.iter().enumerate() {
        let h = format!("h{}", i + 1);
        let addr = format!("10.77.0.{}/24", 11 + i);
        let mac = pod_mac(i + 1);
        node(&t, &["ip", "link", "add", &h, "type", "veth", "peer", "name", "eth0", "address", &mac, "netns", &p.name]);
        node(&t, &["ip", "link", "set", &h, "master", "br0", "up"]);
        p.ip(&["link", "set", "lo", "up"]);
        p.ip(&["addr", "add", &addr, "dev", "eth0"]);
        p.ip(&["link", "set", "eth0", "up"]);
        p.ip(&["route", "add", "default", "via", "10.77.0.1"]);
    }
    // kube-proxy's part: ClusterIP 10.96.0.50:80 -> pod 2 :8080
    node(
        &t,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            "10.96.0.50/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            "10.77.0.12:8080",
        ],
    );

    let (p1, p2, p3) = (t.pods[0].path(), t.pods[1].path(), t.pods[2].path());
    serve(&p2, "10.77.0.12", &[8080, 8081], &[9090, 9091]);
    let srv = |port: u16| -> SocketAddr { format!("10.77.0.12:{port}").parse().unwrap() };
    let vip: SocketAddr = "10.96.0.50:80".parse().unwrap();

    // without Weir everything flows (and the DNAT works)
    assert!(tcp_ok(&p3, srv(8080)));
    assert!(tcp_ok(&p1, vip));

    // another process loads, attaches and programs, then exits: pod 1 may
    // reach pod 2 on TCP 8080 and UDP 9090, both pods isolated both ways
    let out = Command::new(fill_bin())
        .args(["--root", t.root.path().to_str().unwrap(), "--netns", &t.node.path()])
        .args([
            "--client",
            &format!("10.77.0.11=h1={}", pod_mac(1)),
            "--server",
            &format!("10.77.0.12=h2={}", pod_mac(2)),
        ])
        .args(["--ports", "8080", "--udp-ports", "9090"])
        .args(["--host", "10.77.0.1", "--service", "10.96.0.50"])
        .output()
        .unwrap();
    assert!(out.status.success(), "fill: {}", String::from_utf8_lossy(&out.stderr));

    assert!(tcp_ok(&p1, srv(8080)), "allowed TCP");
    assert!(!tcp_ok(&p1, srv(8081)), "TCP on a port no rule allows");
    assert!(udp_ok(&p1, srv(9090)), "allowed UDP");
    assert!(!udp_ok(&p1, srv(9091)), "UDP on a port no rule allows");
    assert!(!tcp_ok(&p3, srv(8080)), "a peer no rule allows");
    assert!(tcp_ok(&p1, vip), "ClusterIP judged against the backend");
    assert!(!tcp_ok(&p3, vip), "ClusterIP from a peer the backend does not allow");
    // pod 2 is egress-isolated with no egress rule: it cannot open to pod 1
    serve(&p1, "10.77.0.11", &[7070], &[]);
    assert!(!tcp_ok(&p2, "10.77.0.11:7070".parse().unwrap()));

    // the verdicts were Weir's
    let dp = Dataplane::open(t.root.path()).unwrap();
    let h2 = in_netns(&t.node.path(), || ifindex("h2")).join().unwrap();
    let h1 = in_netns(&t.node.path(), || ifindex("h1")).join().unwrap();
    assert!(in_netns(&t.node.path(), {
        let root = t.root.path().to_path_buf();
        move || Dataplane::open(&root).unwrap().is_attached(h2).unwrap()
    })
    .join()
    .unwrap());
    assert!(dp.counter(h2, DIR_INGRESS, R_ALLOW_POLICY).unwrap().packets >= 3);
    assert!(dp.counter(h2, DIR_INGRESS, R_DROP_POLICY).unwrap().packets >= 1, "p3 dropped at h2");
    assert!(dp.counter(h1, DIR_EGRESS, R_DROP_POLICY).unwrap().packets >= 1, "p1's egress judged at h2");
    assert!(dp.counter(h1, DIR_INGRESS, R_ALLOW_REPLY).unwrap().packets >= 1);
    assert!(dp.counter(h2, DIR_EGRESS, R_DROP_POLICY).unwrap().packets >= 1, "p2's egress judged at h1");
    let svc = dp.ct_entries().unwrap().into_iter().find(|c| c.value.flags & CT_SERVICE != 0).expect("service CT entry");
    assert_eq!(svc.value.egress_ep, h1);

    // detaching h2 (what CNI DEL does) opens pod 2 again
    in_netns(&t.node.path(), {
        let root = t.root.path().to_path_buf();
        move || Dataplane::open(&root).unwrap().detach(h2).unwrap()
    })
    .join()
    .unwrap();
    assert!(tcp_ok(&p3, srv(8080)));
}
