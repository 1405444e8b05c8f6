//! Benchmark helper: load Weir's dataplane under a bpffs root, attach it to
//! two pods' host veths in a node netns, isolate both pods, allow the
//! benchmark flow by policy, and pad the ipcache and policy maps with
//! `--entries` entries that never match (so lookups walk a full trie).
//!
//!   fill --root /sys/fs/bpf/weir-bench --netns /run/netns/wb-node \
//!        --client 10.251.0.1=wb1h=02:77:00:00:00:01 \
//!        --server 10.251.0.2=wb2h=02:77:00:00:00:02 \
//!        --ports 5201,11111,12865 --entries 100000
//! (a pod is IP=HOST_VETH=POD_MAC: the endpoint entry holds the pod's MAC
//! and address, as CNI ADD writes it)
//!   fill --root ... --counters      (print the verdict counters)
//! Also: --udp-ports P,.. (UDP allowed too), --host IP (the node: ipcache
//! HOST), --service IP (a ClusterIP: ipcache SERVICE), --cost (after
//! filling, print the programs' in-kernel cost per packet measured with
//! BPF_PROG_TEST_RUN: a conntrack hit, and a new flow's full judgement).
//!   fill --root ... --netns ... --pass-all OBJ --devs wb1h,wb2h
//!        (instead of Weir: attach OBJ's program `pass` on both hooks of each
//!        device through TCX, links pinned under --root: the hooks' own cost)

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use weir_bpf::abi::*;
use weir_bpf::{Dataplane, PolicyRule};

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
    let pod = |flag: &str| -> (IpAddr, u32, [u8; 6]) {
        let v = arg(&args, flag).unwrap_or_else(|| panic!("{flag} IP=IFNAME=MAC"));
        let mut parts = v.splitn(3, '=');
        let (Some(ip), Some(ifname), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("{flag} {v}: expected IP=IFNAME=MAC (the pod's address, its host veth, the pod's MAC)")
        };
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(idx != 0, "no interface {ifname}");
        let mac = weir_bpf::addr::parse_mac(mac).unwrap_or_else(|| panic!("{flag}: {mac} is not a MAC"));
        (ip.parse().expect("IP"), idx, mac)
    };
    let (cip, cidx, cmac) = pod("--client");
    let (sip, sidx, smac) = pod("--server");
    let ports: Vec<u16> = arg(&args, "--ports")
        .unwrap_or_else(|| "5201,11111,12865".into())
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    let udp_ports: Vec<u16> = arg(&args, "--udp-ports")
        .map(|s| s.split(',').map(|p| p.parse().expect("port")).collect())
        .unwrap_or_default();
    let entries: u32 = arg(&args, "--entries").map(|n| n.parse().expect("entries")).unwrap_or(1);

    let t0 = std::time::Instant::now();
    let dp = Dataplane::load_or_open(&root).expect("load_or_open");
    let (cid, sid) = (ID_FIRST_LABEL + 1000, ID_FIRST_LABEL + 1001);
    for (ip, idx, mac, id) in [(cip, cidx, cmac, cid), (sip, sidx, smac, sid)] {
        dp.set_ipcache(weir_bpf::addr::host_net(ip), &IpcacheValue { identity: id, endpoint: idx, flags: 0, pad: 0 })
            .unwrap();
        let pod = Endpoint::for_pod(mac, &[weir_bpf::addr::host_net(ip)], 0).expect("pod endpoint");
        let flags = EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED;
        dp.set_endpoint(idx, &Endpoint { identity: id, flags, revision: 1, ..pod }).unwrap();
    }
    let flows = ports.iter().map(|&p| (6u8, p)).chain(udp_ports.iter().map(|&p| (17u8, p)));
    for (proto, p) in flows {
        let r = |endpoint, identity, direction| PolicyRule { endpoint, identity, direction, protocol: Some(proto), ports: Some(p..=p) };
        dp.allow(&r(cidx, sid, DIR_EGRESS), 1).unwrap();
        dp.allow(&r(sidx, cid, DIR_INGRESS), 2).unwrap();
    }
    if let Some(h) = arg(&args, "--host") {
        let ip: IpAddr = h.parse().expect("--host IP");
        dp.set_ipcache(weir_bpf::addr::host_net(ip), &IpcacheValue { identity: ID_HOST, endpoint: 0, flags: 0, pad: 0 }).unwrap();
    }
    if let Some(v) = arg(&args, "--service") {
        let ip: IpAddr = v.parse().expect("--service IP");
        dp.set_ipcache(weir_bpf::addr::host_net(ip), &IpcacheValue { identity: ID_WORLD, endpoint: 0, flags: IPCACHE_SERVICE, pad: 0 })
            .unwrap();
    }
    // padding: never-matching addresses and peers, in the same tries the
    // flow's lookups walk
    let pad = entries.saturating_sub(1);
    for i in 0..pad {
        let a = IpAddr::V4(Ipv4Addr::new(10, 252 + (i >> 16) as u8, (i >> 8) as u8, i as u8));
        dp.set_ipcache(weir_bpf::addr::host_net(a), &IpcacheValue { identity: 10_000 + i, endpoint: 0, flags: 0, pad: 0 })
            .unwrap();
        let (ep, dir) = if i % 2 == 0 { (sidx, DIR_INGRESS) } else { (cidx, DIR_EGRESS) };
        let key = PolicyKey::new(ep, 10_000 + i, dir, 6, 1000 + (i % 50_000) as u16);
        dp.set_policy(POLICY_FULL_BITS, &key, &PolicyValue::allow(3)).unwrap();
    }
    dp.attach(cidx).unwrap();
    dp.attach(sidx).unwrap();
    if args.iter().any(|a| a == "--cost") {
        cost(&dp, (cip, cidx, cmac), (sip, sidx, smac), ports[0]);
    }
    eprintln!(
        "weir: {} ipcache + {} policy entries, attached to {cidx},{sidx} in {} ms",
        dp.ipcache_entries().map(|v| v.len()).unwrap_or(0),
        pad + 2 * ports.len() as u32,
        t0.elapsed().as_millis()
    );
}

/// Mean in-kernel ns per packet for the paths that matter, printed as
/// `cost NAME NS` lines. A pod is (address, host ifindex, MAC).
fn cost(dp: &Dataplane, client: (IpAddr, u32, [u8; 6]), server: (IpAddr, u32, [u8; 6]), port: u16) {
    use weir_bpf::{pkt, Hook};
    const N: u32 = 200_000;
    let ((cip, cidx, cmac), (sip, sidx, smac)) = (client, server);
    // frames as each hook sees them on the bridge: sent from the sender's
    // MAC, handed to the receiver's
    let frame = |src, sport, dst, dport, flags, (smac, dmac)| {
        let mut f = pkt::tcp(src, sport, dst, dport, flags);
        pkt::set_eth(&mut f, smac, dmac);
        f
    };
    let c_to_s = (cmac, smac);
    let syn = frame(cip, 40999, sip, port, 0x02, c_to_s);
    let ack = frame(cip, 40999, sip, port, 0x10, c_to_s);
    let reply = frame(sip, port, cip, 40999, 0x10, (smac, cmac));
    let show = |name: &str, hook: Hook, f: &[u8], idx: u32| {
        let (r, d) = dp.run_repeat(hook, f, idx, N).expect("test run");
        println!("cost {name} {} ret={r}", d.as_nanos());
    };
    // first packet: from_pod defers (conntrack miss, ipcache, endpoint)
    show("from_pod_new_flow_ns", Hook::FromPod, &syn, cidx);
    // a new flow's full judgement at to_pod: a port no rule allows walks
    // every lookup (conntrack, ipcache, both endpoints, egress and ingress
    // policy, the cidr class) and never creates an entry, so each repeat
    // pays it again; it includes the drop's counter and event
    let denied = frame(cip, 40998, sip, port.wrapping_add(1), 0x02, c_to_s);
    show("to_pod_denied_new_flow_ns", Hook::ToPod, &denied, sidx);
    show("to_pod_established_ns", Hook::ToPod, &ack, sidx);
    show("from_pod_established_ns", Hook::FromPod, &ack, cidx);
    show("to_pod_reply_ns", Hook::ToPod, &reply, cidx);
    let _ = dp.ct_flush_where(|k, _| u16::from_be(k.sport) == 40999);
    let _ = dp.remove_counters(cidx);
    let _ = dp.remove_counters(sidx);
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
            let id = prog.attach_with_options(dev, hook, TcAttachOptions::TcxOrder(LinkOrder::default())).expect("attach");
            let link: aya::programs::links::FdLink = prog.take_link(id).expect("link").try_into().expect("fd link");
            link.pin(root.join(format!("pass_{dev}_{name}"))).expect("pin");
        }
    }
}
