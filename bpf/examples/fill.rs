//! Benchmark helper: load Weir's dataplane under a bpffs root, attach it to
//! two pods' host veths in a node netns, isolate both pods, allow the
//! benchmark flow by policy, and pad the ipcache and policy maps with
//! `--entries` entries that never match (so lookups walk a full trie).
//!
//!   fill --root /sys/fs/bpf/weir-bench --netns /run/netns/wb-node \
//!        --client 10.251.0.1=wb1h --server 10.251.0.2=wb2h \
//!        --ports 5201,11111,12865 --entries 100000
//!   fill --root ... --counters      (print the verdict counters)
//! Also: --udp-ports P,.. (UDP allowed too), --host IP (the node: ipcache
//! HOST), --service IP (a ClusterIP: ipcache SERVICE).

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
    let pod = |flag: &str| -> (IpAddr, u32) {
        let v = arg(&args, flag).unwrap_or_else(|| panic!("{flag} IP=IFNAME"));
        let (ip, ifname) = v.split_once('=').expect("IP=IFNAME");
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(idx != 0, "no interface {ifname}");
        (ip.parse().expect("IP"), idx)
    };
    let (cip, cidx) = pod("--client");
    let (sip, sidx) = pod("--server");
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
    for (ip, idx, id) in [(cip, cidx, cid), (sip, sidx, sid)] {
        dp.set_ipcache(weir_bpf::addr::host_net(ip), &IpcacheValue { identity: id, endpoint: idx, flags: 0, pad: 0 })
            .unwrap();
        dp.set_endpoint(idx, &Endpoint { identity: id, flags: EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED, revision: 1 })
            .unwrap();
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
    eprintln!(
        "weir: {} ipcache + {} policy entries, attached to {cidx},{sidx} in {} ms",
        dp.ipcache_entries().map(|v| v.len()).unwrap_or(0),
        pad + 2 * ports.len() as u32,
        t0.elapsed().as_millis()
    );
}
