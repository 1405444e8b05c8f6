//! Benchmark helper: load Weir's dataplane under a bpffs root, attach it to
//! the benchmark pods' host veths in a node netns, isolate those pods,
//! allow the benchmark flow by policy, and pad the ipcache and policy maps
//! with `--entries` entries that never match (so lookups walk a full trie).
//!
//!   fill --root /sys/fs/bpf/weir-bench --netns /run/netns/wb-node \
//!        --client 10.251.0.1=wb1h=02:77:00:00:00:01 \
//!        --server 10.251.0.2=wb2h=02:77:00:00:00:02 \
//!        --ports 5201,11111,12865 --entries 100000
//! (a pod is IP=HOST_VETH=POD_MAC: the endpoint entry holds the pod's MAC
//! and address, as CNI ADD writes it)
//!   fill --root ... --counters      (print the verdict counters)
//! A pod given as a bare IP (no `=IFNAME`) lives on another node: its
//! ipcache entry has endpoint 0 and only the local pod's half of the flow
//! is allowed (client egress, or server ingress). One node's run of a
//! cross-node pair, with leave_node on the device to the other node:
//!   fill --root R1 --netns /run/netns/n1 --client 10.240.1.2=p1h=02:77:00:00:01:02 \
//!        --server 10.240.2.2 --leave-node vx0 --entries 100000
//! Also: --udp-ports P,.. (UDP allowed too), --host IP (the node: ipcache
//! HOST), --service IP (a ClusterIP: ipcache SERVICE), --leave-node DEV
//! (attach leave_node to DEV's tc egress), --tiered (endpoints selected by a
//! ClusterNetworkPolicy too: every entry also carries Admin and Baseline
//! verdicts, and a new flow folds all three lookups), --cost (after filling, print the
//! programs' in-kernel cost per packet measured with BPF_PROG_TEST_RUN on
//! the paths this node's pods take: conntrack hits, and a new flow's full
//! judgement).
//!   fill --root ... --netns ... --pass-all OBJ --devs wb1h,wb2h
//!        (instead of Weir: attach OBJ's program `pass` on both hooks of each
//!        device through TCX, links pinned under --root: the hooks' own cost)

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use weir_bpf::abi::*;
use weir_bpf::policy::PortBlock;
use weir_bpf::{Dataplane, Direction, PolicyMatch};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(arg(&args, "--root").expect("--root DIR"));
    if args.iter().any(|a| a == "--counters") {
        let dp = Dataplane::open(&root).expect("open");
        for (k, v) in dp.counters().unwrap() {
            println!(
                "ep={} dir={} {}={} pkts",
                k.endpoint,
                if k.direction == DIR_INGRESS { "in" } else { "out" },
                reason_name(k.reason),
                v.packets
            );
        }
        return;
    }
    if let Some(ns) = arg(&args, "--netns") {
        // single-threaded here: setns moves the whole process
        let f = std::fs::File::open(&ns).expect("netns path");
        // SAFETY: setns on an fd we own, before any other thread exists.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    }
    if let Some(obj) = arg(&args, "--pass-all") {
        pass_all(&root, &obj, &arg(&args, "--devs").expect("--devs DEV,DEV"));
        return;
    }
    let client = Pod::parse(&args, "--client", ID_FIRST_LABEL + 1000);
    let server = Pod::parse(&args, "--server", ID_FIRST_LABEL + 1001);
    assert!(
        client.ifindex.is_some() || server.ifindex.is_some(),
        "--client or --server must name this node's host veth (IP=IFNAME=MAC)"
    );
    let ports: Vec<u16> = arg(&args, "--ports")
        .unwrap_or_else(|| "5201,11111,12865".into())
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    let udp_ports: Vec<u16> =
        arg(&args, "--udp-ports").map(|s| s.split(',').map(|p| p.parse().expect("port")).collect()).unwrap_or_default();
    let entries: u32 = arg(&args, "--entries").map(|n| n.parse().expect("entries")).unwrap_or(1);
    let leave_node = arg(&args, "--leave-node").map(|dev| ifindex(&dev));
    // ClusterNetworkPolicy in the picture: endpoints tiered, so a new flow
    // folds all three lookups, and every entry carries Admin (Pass) and
    // Baseline (Accept) verdicts beside the NetworkPolicy allow.
    let tiered = args.iter().any(|a| a == "--tiered");
    let value = |rule: u32| {
        let mut v = PolicyValue::allow(rule);
        if tiered {
            v.admin = TierVerdict { rank: tier_rank(5, 0, TIER_PASS), rule: 90 };
            v.baseline = TierVerdict { rank: tier_rank(7, 1, TIER_ACCEPT), rule: 91 };
        }
        v
    };

    let t0 = std::time::Instant::now();
    let dp = Dataplane::load_or_open(&root).expect("load_or_open");
    for p in [&client, &server] {
        let endpoint = p.ifindex.unwrap_or(0);
        dp.set_ipcache(
            weir_bpf::addr::host_net(p.ip),
            &IpcacheValue { identity: p.identity, endpoint, flags: 0, pad: 0 },
        )
        .unwrap();
        if let (Some(idx), Some(mac)) = (p.ifindex, p.mac) {
            let pod = Endpoint::for_pod(mac, &[weir_bpf::addr::host_net(p.ip)], 0).expect("pod endpoint");
            let mut flags = EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED;
            if tiered {
                flags |= EP_INGRESS_TIERED | EP_EGRESS_TIERED;
            }
            dp.set_endpoint(idx, &Endpoint { identity: p.identity, flags, revision: 1, ..pod }).unwrap();
        }
    }
    // the local halves of the flow: the client's egress to the server, the
    // server's ingress from the client (a remote pod's half is its node's)
    let mut local = vec![];
    if let Some(s) = server.ifindex {
        local.push((s, client.identity, Direction::Ingress));
    }
    if let Some(c) = client.ifindex {
        local.push((c, server.identity, Direction::Egress));
    }
    let flows = ports.iter().map(|&p| (6u8, p)).chain(udp_ports.iter().map(|&p| (17u8, p)));
    let mut rules = 0;
    for (proto, p) in flows {
        for (i, &(endpoint, identity, direction)) in local.iter().enumerate() {
            for m in PolicyMatch::cover(endpoint, identity, direction, Some(proto), Some(p..=p)) {
                dp.set_policy(&m, &value(1 + i as u32)).unwrap();
            }
            rules += 1;
        }
    }
    if let Some(h) = arg(&args, "--host") {
        let ip: IpAddr = h.parse().expect("--host IP");
        dp.set_ipcache(
            weir_bpf::addr::host_net(ip),
            &IpcacheValue { identity: ID_HOST, endpoint: 0, flags: 0, pad: 0 },
        )
        .unwrap();
    }
    if let Some(v) = arg(&args, "--service") {
        let ip: IpAddr = v.parse().expect("--service IP");
        dp.set_ipcache(
            weir_bpf::addr::host_net(ip),
            &IpcacheValue { identity: ID_WORLD, endpoint: 0, flags: IPCACHE_SERVICE, pad: 0 },
        )
        .unwrap();
    }
    // padding: never-matching addresses and peers, in the same tries the
    // flow's lookups walk
    let pad = entries.saturating_sub(1);
    for i in 0..pad {
        let a = IpAddr::V4(Ipv4Addr::new(10, 252 + (i >> 16) as u8, (i >> 8) as u8, i as u8));
        dp.set_ipcache(
            weir_bpf::addr::host_net(a),
            &IpcacheValue { identity: 10_000 + i, endpoint: 0, flags: 0, pad: 0 },
        )
        .unwrap();
        let (ep, _, dir) = local[i as usize % local.len()];
        let port = Some(PortBlock::single(1000 + (i % 50_000) as u16));
        let m = PolicyMatch { endpoint: ep, identity: 10_000 + i, direction: dir, protocol: Some(6), port };
        dp.set_policy(&m, &value(3)).unwrap();
    }
    for idx in [client.ifindex, server.ifindex].into_iter().flatten() {
        dp.attach(idx).unwrap();
    }
    if let Some(idx) = leave_node {
        dp.attach_leave_node(idx).unwrap();
    }
    if args.iter().any(|a| a == "--cost") {
        cost(&dp, &client, &server, ports[0], leave_node);
    }
    eprintln!(
        "weir: {} ipcache + {} policy entries, attached to {:?}{} in {} ms",
        dp.ipcache_entries().map(|v| v.len()).unwrap_or(0),
        pad + rules,
        local.iter().map(|l| l.0).collect::<Vec<_>>(),
        leave_node.map(|i| format!(", leave_node on {i}")).unwrap_or_default(),
        t0.elapsed().as_millis()
    );
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(idx != 0, "no interface {name} in this network namespace");
    idx
}

/// A benchmark pod: its address, its cluster-wide identity, and when it
/// lives on this node its host veth and MAC (the endpoint entry holds the
/// MAC: the programs check frames against it).
struct Pod {
    ip: IpAddr,
    identity: u32,
    ifindex: Option<u32>,
    mac: Option<[u8; 6]>,
}

impl Pod {
    /// `FLAG IP=IFNAME=MAC` (a pod of this node) or `FLAG IP` (another node's).
    fn parse(args: &[String], flag: &str, identity: u32) -> Pod {
        let v = arg(args, flag)
            .unwrap_or_else(|| panic!("{flag} IP=IFNAME=MAC (this node's pod) or {flag} IP (another node's)"));
        let mut parts = v.splitn(3, '=');
        let ip = parts.next().unwrap_or_default();
        let ip = ip.parse().unwrap_or_else(|_| panic!("{flag}: {ip:?} is not an IP address"));
        match (parts.next(), parts.next()) {
            (None, _) => Pod { ip, identity, ifindex: None, mac: None },
            (Some(ifname), Some(mac)) => {
                let mac = weir_bpf::addr::parse_mac(mac).unwrap_or_else(|| panic!("{flag}: {mac} is not a MAC"));
                Pod { ip, identity, ifindex: Some(ifindex(ifname)), mac: Some(mac) }
            }
            (Some(_), None) => panic!("{flag} {v}: a pod of this node is IP=IFNAME=MAC (its address, host veth, MAC)"),
        }
    }

    /// The MAC its frames carry on the bridge: its own, or for a pod of
    /// another node the gateway's (routed traffic).
    fn wire_mac(&self) -> [u8; 6] {
        self.mac.unwrap_or([2, 0, 0, 0, 0, 1])
    }
}

/// Mean in-kernel ns per packet on the paths this node's pods take, printed
/// as `cost NAME NS` lines. Conntrack entries and counters it makes are
/// removed afterwards.
fn cost(dp: &Dataplane, client: &Pod, server: &Pod, port: u16, leave_node: Option<u32>) {
    use weir_bpf::{pkt, Hook};
    const N: u32 = 200_000;
    let (cip, sip) = (client.ip, server.ip);
    // frames as each hook sees them: sent from the sender's MAC, handed to
    // the receiver's
    let frame = |src, sport, dst, dport, flags, from: &Pod, to: &Pod| {
        let mut f = pkt::tcp(src, sport, dst, dport, flags);
        pkt::set_eth(&mut f, from.wire_mac(), to.wire_mac());
        f
    };
    let syn = frame(cip, 40999, sip, port, 0x02, client, server);
    let ack = frame(cip, 40999, sip, port, 0x10, client, server);
    let reply = frame(sip, port, cip, 40999, 0x10, server, client);
    // a port no rule allows walks every lookup of a new flow's judgement and
    // never creates an entry, so each repeat pays it again; it includes the
    // drop's counter and event
    let denied = frame(cip, 40998, sip, port.wrapping_add(1), 0x02, client, server);
    let show = |name: &str, hook: Hook, f: &[u8], idx: u32| {
        let (r, d) = dp.run_repeat(hook, f, idx, N).expect("test run");
        println!("cost {name} {} ret={r}", d.as_nanos());
    };
    match (client.ifindex, server.ifindex) {
        (Some(cidx), Some(sidx)) => {
            // first packet: from_pod defers (conntrack miss, ipcache, endpoint)
            show("from_pod_new_flow_ns", Hook::FromPod, &syn, cidx);
            // a new flow's full judgement at to_pod: egress and ingress
            show("to_pod_denied_new_flow_ns", Hook::ToPod, &denied, sidx);
            show("to_pod_established_ns", Hook::ToPod, &ack, sidx);
            show("from_pod_established_ns", Hook::FromPod, &ack, cidx);
            show("to_pod_reply_ns", Hook::ToPod, &reply, cidx);
        }
        (Some(cidx), None) => {
            // the server is on another node: from_pod judges the egress
            show("from_pod_denied_new_flow_ns", Hook::FromPod, &denied, cidx);
            dp.run(Hook::FromPod, &syn, cidx).expect("test run");
            show("from_pod_established_ns", Hook::FromPod, &ack, cidx);
            show("to_pod_reply_ns", Hook::ToPod, &reply, cidx);
            if let Some(dev) = leave_node {
                // judged at from_pod already: one conntrack lookup
                show("leave_node_established_ns", Hook::LeaveNode, &ack, dev);
                // a Service flow to a remote backend is judged here
                show("leave_node_denied_new_flow_ns", Hook::LeaveNode, &denied, dev);
            }
        }
        (None, Some(sidx)) => {
            // the client is on another node: to_pod judges the ingress alone
            show("to_pod_denied_new_flow_ns", Hook::ToPod, &denied, sidx);
            dp.run(Hook::ToPod, &syn, sidx).expect("test run");
            show("to_pod_established_ns", Hook::ToPod, &ack, sidx);
            show("from_pod_reply_ns", Hook::FromPod, &reply, sidx);
            if let Some(dev) = leave_node {
                show("leave_node_reply_ns", Hook::LeaveNode, &reply, dev);
            }
        }
        (None, None) => unreachable!("checked in main"),
    }
    if let Some(dev) = leave_node {
        // the node's own packets and VXLAN's outer ones: not a local pod's
        let node = pkt::tcp("192.0.2.1".parse().unwrap(), 40999, "192.0.2.2".parse().unwrap(), port, 0x10);
        show("leave_node_not_pod_ns", Hook::LeaveNode, &node, dev);
    }
    let _ = dp.ct_flush_where(|k, _| u16::from_be(k.sport) == 40999);
    for idx in [client.ifindex, server.ifindex].into_iter().flatten() {
        let _ = dp.remove_counters(idx);
    }
}

/// Attach a do-nothing program on both TCX hooks of each device, links
/// pinned under `root` so they stay after this process exits.
fn pass_all(root: &std::path::Path, obj: &str, devs: &str) {
    use aya::programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
    let mut ebpf = aya::Ebpf::load_file(obj).expect("load object");
    let prog: &mut SchedClassifier = ebpf.program_mut("pass").expect("program pass").try_into().expect("classifier");
    prog.load().expect("load pass");
    std::fs::create_dir_all(root).expect("root");
    for dev in devs.split(',') {
        for (hook, name) in [(TcAttachType::Ingress, "in"), (TcAttachType::Egress, "out")] {
            let id =
                prog.attach_with_options(dev, hook, TcAttachOptions::TcxOrder(LinkOrder::default())).expect("attach");
            let link: aya::programs::links::FdLink = prog.take_link(id).expect("link").try_into().expect("fd link");
            link.pin(root.join(format!("pass_{dev}_{name}"))).expect("pin");
        }
    }
}
