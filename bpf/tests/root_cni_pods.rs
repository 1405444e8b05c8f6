//! Pods made by the real `weir` CNI binary (ADD with policy.enforce), then
//! programmed through this crate the way weir-policyd does, and real
//! traffic between them: the CNI's attachment and endpoint entries are the
//! ones the programs judge with, after the binary has exited.

mod common;
use common::*;
use std::net::SocketAddr;
use weir_bpf::abi::*;
use weir_bpf::{Dataplane, Direction, PolicyMatch};

#[test]
fn root_pods_from_the_cni_binary_are_judged_by_the_maps_tcx() {
    pods_from_the_cni_binary_are_judged_by_the_maps("cnx", "tcx");
}

#[test]
fn root_pods_from_the_cni_binary_are_judged_by_the_maps_tc() {
    pods_from_the_cni_binary_are_judged_by_the_maps("cnt", "tc");
}

fn pods_from_the_cni_binary_are_judged_by_the_maps(tag: &str, attach: &str) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bin = weir_bin();
    let c = CniPods::add_attached(tag, 3, if attach == "tc" { "10.78.1.0/24" } else { "10.78.0.0/24" }, attach);
    let (g, node, pods, conf) = (&c.guard, &c.node, &c.pods, &c.conf);
    let (r0, r1, r2) = (c.record(0), c.record(1), c.record(2));
    let ip = |r: &weir_common::registry::EndpointRecord| *r.ips.iter().find(|a| a.is_ipv4()).unwrap();
    let dp = Dataplane::open(&g.root).unwrap();
    for r in [&r0, &r1, &r2] {
        assert!(in_netns(&format!("/run/netns/{node}"), {
            let (root, idx) = (g.root.clone(), r.host_ifindex);
            move || Dataplane::open(&root).unwrap().is_attached(idx).unwrap()
        })
        .join()
        .unwrap());
    }
    let (p0, p1, p2) = (c.netns(0), c.netns(1), c.netns(2));
    serve_tcp(&p1, ip(&r1), 8080);
    let target = SocketAddr::new(ip(&r1), 8080);

    // not programmed yet: fail-closed
    assert!(!tcp_ok(&p0, target), "not READY pods are fail-closed");

    // what policyd does: identities, ipcache, policy, READY
    program_like_policyd(&dp, &r0, 300, EP_READY);
    program_like_policyd(&dp, &r2, 302, EP_READY);
    dp.allow(&PolicyMatch::cover(r1.host_ifindex, 300, Direction::Ingress, Some(6), Some(8080..=8080)), 1).unwrap();
    program_like_policyd(&dp, &r1, 301, EP_READY | EP_INGRESS_ISOLATED);

    assert!(tcp_ok(&p0, target), "allowed by policy");
    assert!(!tcp_ok(&p2, target), "isolated, no rule for this peer");
    assert!(dp.counter(r1.host_ifindex, DIR_INGRESS, R_DROP_POLICY).unwrap().packets >= 1);
    assert!(dp.counter(r1.host_ifindex, DIR_INGRESS, R_ALLOW_POLICY).unwrap().packets >= 1);

    // CNI DEL detaches and forgets the endpoint
    cni(&bin, node, "DEL", "c1", &pods[1], conf);
    assert_eq!(dp.endpoint(r1.host_ifindex).unwrap(), None);
}
