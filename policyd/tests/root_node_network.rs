//! Node networking on the real kernel (needs root): two "node" network
//! namespaces joined by an underlay bridge (in a third namespace), each
//! with a pod bridge and a "pod" namespace. Each node's backend reconcile
//! runs as a library call on a thread inside its node namespace; pods then
//! talk TCP across nodes, and the entries follow node changes.

mod apiserver_fixture;

use apiserver_fixture::node;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;
use weir_common::node_network::NodeNetwork;
use weir_policyd::node::desired::Reason;
use weir_policyd::node::{Backend, Config, NodeNetworking, Outcome};
use weir_testsupport::netns::{self, Netns};
use weir_testsupport::require_root;

/// A network namespace named uniquely for this test, removed on drop.
fn test_netns(tag: &str) -> Netns {
    Netns::new(&format!("wnn{tag}"))
}

/// One node: its namespace (uplink `eth0` on the underlay), a pod bridge,
/// one pod, and its agent.
struct TestNode {
    name: String,
    ns: Netns,
    pod: Netns,
    pod_ip: String,
    run_dir: tempfile::TempDir,
    agent: Option<NodeNetworking>,
}

/// The lab: an underlay namespace with a bridge, and nodes on it.
struct Lab {
    underlay: Netns,
    nodes: Vec<TestNode>,
}

impl Lab {
    fn new(n: usize) -> Lab {
        let underlay = test_netns("u");
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let mut lab = Lab { underlay, nodes: vec![] };
        for i in 1..=n {
            lab.add_node(i);
        }
        lab
    }

    fn add_node(&mut self, i: usize) {
        let ns = test_netns("n");
        let pod = test_netns("p");
        let up = format!("up{i}");
        self.underlay.ip(&["link", "add", &up, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        self.underlay.ip(&["link", "set", &up, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("192.168.77.{i}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.ip(&["link", "add", "cni0", "type", "bridge"]);
        ns.ip(&["addr", "add", &format!("10.244.{i}.1/24"), "dev", "cni0"]);
        ns.ip(&["link", "set", "cni0", "up"]);
        ns.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name]);
        ns.ip(&["link", "set", "veth0", "master", "cni0", "up"]);
        let pod_ip = format!("10.244.{i}.2");
        pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", &format!("10.244.{i}.1")]);
        self.nodes.push(TestNode {
            name: format!("node-{i}"),
            ns,
            pod,
            pod_ip,
            run_dir: tempfile::tempdir().unwrap(),
            agent: None,
        });
    }

    fn start(&mut self, backend: Backend, port: u16) {
        for n in &mut self.nodes {
            let cfg = Config { backend, vxlan_vni: 1, vxlan_port: port, underlay_iface: None };
            n.agent = Some(NodeNetworking::new(cfg, n.name.clone(), n.run_dir.path().to_path_buf()));
        }
    }

    /// Run node `i`'s reconcile inside its namespace.
    fn reconcile(&mut self, i: usize, objects: &BTreeMap<String, Node>) -> Outcome {
        let n = &mut self.nodes[i];
        let mut agent = n.agent.take().expect("started");
        let objects = objects.clone();
        let (agent, out) = n.ns.run(move || {
            let out = agent.reconcile(&objects);
            (agent, out)
        });
        n.agent = Some(agent);
        out
    }

    /// Reconcile every node, feeding each node's published annotations
    /// back into its object (what the API server, or the lab, does); twice,
    /// so every node has seen every other's.
    fn converge(&mut self, objects: &mut BTreeMap<String, Node>) -> Vec<Outcome> {
        let mut outs = vec![];
        for _ in 0..2 {
            outs.clear();
            for i in 0..self.nodes.len() {
                let out = self.reconcile(i, objects);
                if let (Some(a), Some(o)) = (&out.annotations, objects.get_mut(&self.nodes[i].name)) {
                    o.metadata.annotations = Some(a.clone());
                }
                outs.push(out);
            }
        }
        outs
    }

    fn objects(&self) -> BTreeMap<String, Node> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (n.name.clone(), node(&n.name, &format!("10.244.{}.0/24", i + 1), &format!("192.168.77.{}", i + 1)))
            })
            .collect()
    }
}

/// A TCP exchange from pod `from` to pod `to`; returns the source address
/// the server saw.
fn tcp(from: &TestNode, to: &TestNode, port: u16) -> Result<SocketAddr, String> {
    let addr: SocketAddr = format!("{}:{port}", to.pod_ip).parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = to.pod.path();
    let server = netns::spawn_in(&path, move || -> Result<SocketAddr, String> {
        let l = TcpListener::bind(addr).map_err(|e| e.to_string())?;
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        // Failure guard only: a successful exchange ends at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
                    s.write_all(&buf).map_err(|e| e.to_string())?;
                    return Ok(peer);
                }
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("no connection: {e}")),
            }
        }
    });
    ready_rx.recv().unwrap();
    let client = from.pod.run(move || -> Result<(), String> {
        let mut c =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"hello").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).map_err(|e| e.to_string())?;
        (&buf == b"hello").then_some(()).ok_or("wrong echo".into())
    });
    let seen = server.join().unwrap();
    client?;
    seen
}

/// Weir's entries on a node, as `ip`/`bridge` print them (sorted lines;
/// routes are listed by `proto 87`, which `ip` then leaves out).
fn entries(n: &TestNode) -> Vec<String> {
    let mut lines: Vec<String> =
        n.ns.ip(&["route", "show", "proto", "87"]).lines().map(|l| format!("route {}", l.trim())).collect();
    if n.ns.ip(&["-o", "link", "show"]).contains("weir.1") {
        lines.extend(
            n.ns.ip(&["neigh", "show", "dev", "weir.1", "nud", "permanent"])
                .lines()
                .map(|l| format!("neigh {}", l.trim())),
        );
        lines.extend(
            n.ns.exec(&["bridge", "fdb", "show", "dev", "weir.1"]).lines().map(|l| format!("fdb {}", l.trim())),
        );
    }
    lines.sort();
    lines
}

fn problems(out: &Outcome, reason: Reason) -> Vec<String> {
    out.problems.iter().filter(|p| p.reason == reason).map(|p| p.to_string()).collect()
}

#[test]
fn root_host_gw_carries_pod_traffic_and_follows_nodes() {
    require_root!();
    let mut lab = Lab::new(2);
    lab.start(Backend::HostGw, 8472);
    let mut objects = lab.objects();
    let outs = lab.converge(&mut objects);
    for o in &outs {
        assert!(o.problems.is_empty(), "{:?}", o.problems);
        assert_eq!(o.remote_nodes, 1);
    }
    assert_eq!(entries(&lab.nodes[0]), ["route 10.244.2.0/24 via 192.168.77.2 dev eth0"]);
    let nn = NodeNetwork::read(lab.nodes[0].run_dir.path()).unwrap().unwrap();
    assert_eq!((nn.pod_cidrs, nn.mtu), (vec!["10.244.1.0/24".parse().unwrap()], Some(1500)));
    let again = lab.reconcile(0, &objects);
    assert_eq!((again.written, again.removed), (0, 0), "{again:?}");
    // Pod to pod across nodes, and the server sees the client pod's address.
    let seen = tcp(&lab.nodes[0], &lab.nodes[1], 7001).expect("pod-1 -> pod-2");
    assert_eq!(seen.ip().to_string(), lab.nodes[0].pod_ip);
    let seen = tcp(&lab.nodes[1], &lab.nodes[0], 7002).expect("pod-2 -> pod-1");
    assert_eq!(seen.ip().to_string(), lab.nodes[1].pod_ip);

    // Node 2 moves to another address: node 1's route follows.
    lab.nodes[1].ns.ip(&["addr", "add", "192.168.77.12/24", "dev", "eth0"]);
    objects.get_mut("node-2").unwrap().status = node("x", "10.0.0.0/8", "192.168.77.12").status;
    let out = lab.reconcile(0, &objects);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(entries(&lab.nodes[0]), ["route 10.244.2.0/24 via 192.168.77.12 dev eth0"]);
    tcp(&lab.nodes[0], &lab.nodes[1], 7003).expect("after the move");

    // Not on-link: reported, and no route (none to blackhole into).
    let mut off = objects.clone();
    off.get_mut("node-2").unwrap().status = node("x", "10.0.0.0/8", "198.51.100.2").status;
    let out = lab.reconcile(0, &off);
    assert_eq!(problems(&out, Reason::NotOnLink).len(), 1, "{:?}", out.problems);
    assert!(problems(&out, Reason::NotOnLink)[0].starts_with("node node-2: InternalIP 198.51.100.2 is not on-link"));
    assert!(entries(&lab.nodes[0]).is_empty());
    lab.reconcile(0, &objects);

    // Bad input leaves what is there: node-2 without a pod CIDR, and a
    // new node overlapping node-2.
    let before = entries(&lab.nodes[0]);
    assert_eq!(before.len(), 1);
    let mut bad = objects.clone();
    bad.get_mut("node-2").unwrap().spec = Some(NodeSpec::default());
    let out = lab.reconcile(0, &bad);
    assert!(problems(&out, Reason::NoPodCidr)[0].starts_with("node node-2: spec.podCIDRs"), "{:?}", out.problems);
    assert_eq!(entries(&lab.nodes[0]), before);
    let mut bad = objects.clone();
    bad.insert("node-9".into(), node("node-9", "10.244.2.128/25", "192.168.77.9"));
    let out = lab.reconcile(0, &bad);
    let over = problems(&out, Reason::OverlappingPodCidrs);
    assert!(over.len() == 1 && over[0].contains("node-2") && over[0].contains("node-9"), "{over:?}");
    assert_eq!(entries(&lab.nodes[0]), before);
    // A foreign route (another protocol) is never touched.
    lab.nodes[0].ns.ip(&["route", "add", "10.99.0.0/16", "via", "192.168.77.2"]);

    // Node 2 leaves: its route goes; the foreign one stays.
    objects.remove("node-2");
    let out = lab.reconcile(0, &objects);
    assert_eq!((out.removed, out.remote_nodes), (1, 0));
    assert!(entries(&lab.nodes[0]).is_empty());
    assert!(lab.nodes[0].ns.ip(&["route", "show", "10.99.0.0/16"]).contains("via 192.168.77.2"));
}

#[test]
fn root_vxlan_carries_pod_traffic_and_follows_nodes() {
    require_root!();
    let mut lab = Lab::new(2);
    lab.start(Backend::Vxlan, 8472);
    let mut objects = lab.objects();
    let outs = lab.converge(&mut objects);
    for o in &outs {
        assert!(o.problems.is_empty(), "{:?}", o.problems);
        assert_eq!(o.remote_nodes, 1);
    }
    let ann = |objects: &BTreeMap<String, Node>, i: usize| {
        objects[&format!("node-{i}")].metadata.annotations.clone().unwrap()
    };
    assert_eq!(ann(&objects, 2)["weir.io/backend-type"], "vxlan");
    assert_eq!(ann(&objects, 2)["weir.io/public-ip"], "192.168.77.2");
    let mac2 = ann(&objects, 2)["weir.io/backend-data"].split('"').nth(3).unwrap().to_string();
    assert!(
        ann(&objects, 2)["weir.io/backend-data"].ends_with(r#","vni":1,"port":8472}"#),
        "{}",
        ann(&objects, 2)["weir.io/backend-data"]
    );

    // The device: flannel's settings, VTEP address, MTU 1500 - 50.
    let dev = lab.nodes[0].ns.ip(&["-d", "link", "show", "weir.1"]);
    assert!(
        dev.contains("mtu 1450")
            && dev.contains("vxlan id 1")
            && dev.contains("dstport 8472")
            && dev.contains("nolearning"),
        "{dev}"
    );
    assert!(dev.contains("local 192.168.77.1") && dev.contains("dev eth0"), "{dev}");
    assert!(lab.nodes[0].ns.ip(&["addr", "show", "dev", "weir.1"]).contains("inet 10.244.1.0/32"));
    let nn = NodeNetwork::read(lab.nodes[0].run_dir.path()).unwrap().unwrap();
    assert_eq!(nn.mtu, Some(1450));
    let e = entries(&lab.nodes[0]);
    assert_eq!(
        e,
        [
            format!("fdb {mac2} dst 192.168.77.2 self permanent"),
            format!("neigh 10.244.2.0 lladdr {mac2} PERMANENT"),
            "route 10.244.2.0/24 via 10.244.2.0 dev weir.1 onlink".to_string(),
        ]
    );
    for n in &lab.nodes {
        n.pod.ip(&["link", "set", "eth0", "mtu", "1450"]);
    }
    // Steady state: a reconcile with nothing changed writes nothing (what
    // it reads back matches what it wrote).
    let again = lab.reconcile(0, &objects);
    assert_eq!((again.written, again.removed), (0, 0), "{again:?}");
    let seen = tcp(&lab.nodes[0], &lab.nodes[1], 7101).expect("pod-1 -> pod-2 over vxlan");
    assert_eq!(seen.ip().to_string(), lab.nodes[0].pod_ip);
    let seen = tcp(&lab.nodes[1], &lab.nodes[0], 7102).expect("pod-2 -> pod-1 over vxlan");
    assert_eq!(seen.ip().to_string(), lab.nodes[1].pod_ip);

    // Node 2's underlay address changes: node 1's FDB entry follows.
    // (Deleting a primary address takes its secondaries along: swap.)
    lab.nodes[1].ns.ip(&["addr", "del", "192.168.77.2/24", "dev", "eth0"]);
    lab.nodes[1].ns.ip(&["addr", "add", "192.168.77.12/24", "dev", "eth0"]);
    objects.get_mut("node-2").unwrap().status = node("x", "10.0.0.0/8", "192.168.77.12").status;
    let outs = lab.converge(&mut objects);
    assert!(outs.iter().all(|o| o.problems.is_empty()), "{outs:?}");
    assert_eq!(ann(&objects, 2)["weir.io/public-ip"], "192.168.77.12");
    let mac2 = ann(&objects, 2)["weir.io/backend-data"].split('"').nth(3).unwrap().to_string();
    assert!(
        entries(&lab.nodes[0]).contains(&format!("fdb {mac2} dst 192.168.77.12 self permanent")),
        "{:?}",
        entries(&lab.nodes[0])
    );
    assert_eq!(entries(&lab.nodes[0]).len(), 3, "{:?}", entries(&lab.nodes[0]));
    tcp(&lab.nodes[0], &lab.nodes[1], 7103).expect("after the move");

    // Malformed annotation on node 2: named, and node 1's entries stay.
    let before = entries(&lab.nodes[0]);
    let mut bad = objects.clone();
    bad.get_mut("node-2")
        .unwrap()
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("weir.io/backend-data".into(), "{\"vni\":1}".into());
    let out = lab.reconcile(0, &bad);
    let b = problems(&out, Reason::BadAnnotation);
    assert!(b.len() == 1 && b[0].starts_with("node node-2: annotation weir.io/backend-data"), "{:?}", out.problems);
    assert_eq!(entries(&lab.nodes[0]), before);
    // ...also across an agent restart (no memory of what it applied).
    lab.start(Backend::Vxlan, 8472);
    lab.reconcile(0, &bad);
    assert_eq!(entries(&lab.nodes[0]), before);

    // Node 2 leaves: route, neighbour and FDB entry go.
    objects.remove("node-2");
    let out = lab.reconcile(0, &objects);
    assert_eq!((out.removed, out.remote_nodes), (3, 0), "{out:?}");
    assert!(entries(&lab.nodes[0]).is_empty(), "{:?}", entries(&lab.nodes[0]));
}

#[test]
fn root_vxlan_port_in_use_and_small_mtu_are_reported_and_leave_nothing() {
    require_root!();
    let mut lab = Lab::new(1);
    let objects = lab.objects();
    // Something else holds the UDP port in the node's namespace.
    let port = 18472;
    let holder = lab.nodes[0].ns.run(move || std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap());
    lab.start(Backend::Vxlan, port);
    let out = lab.reconcile(0, &objects);
    let p = problems(&out, Reason::PortInUse);
    assert!(p.len() == 1 && p[0].contains("port 18472") && p[0].contains("--vxlan-port"), "{:?}", out.problems);
    assert!(!lab.nodes[0].ns.ip(&["-o", "link", "show"]).contains("weir.1"), "no half-made device");
    assert!(NodeNetwork::read(lab.nodes[0].run_dir.path()).unwrap().is_none());
    drop(holder);

    lab.nodes[0].ns.ip(&["link", "set", "eth0", "mtu", "100"]);
    let out = lab.reconcile(0, &objects);
    let p = problems(&out, Reason::MtuTooSmall);
    assert!(p.len() == 1 && p[0].contains("MTU 100") && p[0].contains("eth0"), "{:?}", out.problems);
    assert!(!lab.nodes[0].ns.ip(&["-o", "link", "show"]).contains("weir.1"));
}

#[test]
fn unknown_backend_is_a_usage_error_listing_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-policyd"))
        .args(["--node-name", "n", "--manifests", "/nonexistent", "--backend", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'bogus'") && err.contains("--backend") && err.contains("none, host-gw, vxlan"), "{err}");
}

/// The process and the bpffs root of one weir-policyd, removed on drop.
struct Policyd {
    child: std::process::Child,
    bpffs: std::path::PathBuf,
}

impl Drop for Policyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

#[test]
fn root_policyd_binary_programs_vxlan_from_a_manifest_directory() {
    require_root!();
    let lab = Lab::new(1);
    let n = &lab.nodes[0];
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("nodes.yaml"),
        r#"apiVersion: v1
kind: Node
metadata:
  name: node-1
spec:
  podCIDRs: ["10.244.1.0/24"]
status:
  addresses: [{type: InternalIP, address: 192.168.77.1}]
---
apiVersion: v1
kind: Node
metadata:
  name: node-2
  annotations:
    weir.io/backend-type: vxlan
    weir.io/backend-data: '{"vtepMAC":"02:00:00:00:00:02","vni":1,"port":8472}'
    weir.io/public-ip: 192.168.77.2
spec:
  podCIDRs: ["10.244.2.0/24"]
status:
  addresses: [{type: InternalIP, address: 192.168.77.2}]
"#,
    )
    .unwrap();
    let run = n.run_dir.path().join("run");
    let bpffs = std::path::PathBuf::from(format!("/sys/fs/bpf/weir-nn-{}", std::process::id()));
    let child =
        n.ns.command(env!("CARGO_BIN_EXE_weir-policyd"))
            .args(["--node-name", "node-1", "--backend", "vxlan", "--manifests"])
            .arg(manifests.path())
            .arg("--bpffs-root")
            .arg(&bpffs)
            .arg("--run-dir")
            .arg(&run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
    let mut policyd = Policyd { child, bpffs };
    // Failure guard only: the loop ends as soon as everything is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let annotations_file = run.join("node-annotations.json");
    while !(annotations_file.exists() && entries(n).len() == 3) {
        assert!(policyd.child.try_wait().unwrap().is_none(), "weir-policyd exited");
        assert!(std::time::Instant::now() < deadline, "weir-policyd did not program node-2: {:?}", entries(n));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        entries(n),
        [
            "fdb 02:00:00:00:00:02 dst 192.168.77.2 self permanent",
            "neigh 10.244.2.0 lladdr 02:00:00:00:00:02 PERMANENT",
            "route 10.244.2.0/24 via 10.244.2.0 dev weir.1 onlink",
        ]
    );
    let nn = NodeNetwork::read(&run).unwrap().unwrap();
    assert_eq!(
        (nn.node.as_str(), nn.pod_cidrs, nn.mtu),
        ("node-1", vec!["10.244.1.0/24".parse().unwrap()], Some(1450))
    );
    let a: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(&annotations_file).unwrap()).unwrap();
    assert_eq!(a["weir.io/backend-type"], "vxlan");
    assert_eq!(a["weir.io/public-ip"], "192.168.77.1");
    let link = n.ns.ip(&["-o", "link", "show", "weir.1"]);
    let mac = link.split("link/ether ").nth(1).unwrap().split(' ').next().unwrap();
    assert_eq!(a["weir.io/backend-data"], format!(r#"{{"vtepMAC":"{mac}","vni":1,"port":8472}}"#));
}
