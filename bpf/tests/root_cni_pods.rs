//! Pods made by the real `weir` CNI binary (ADD with policy.enforce), then
//! programmed through this crate the way weir-policyd does, and real
//! traffic between them: the CNI's attachment and endpoint entries are the
//! ones the programs judge with, after the binary has exited.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use weir_bpf::abi::*;
use weir_bpf::{Dataplane, PolicyRule};

#[test]
fn root_pods_from_the_cni_binary_are_judged_by_the_maps() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bin = weir_bin();
    let id = std::process::id();
    let node = format!("wcn{id}");
    let pods: Vec<String> = (1..=3).map(|i| format!("wcp{id}-{i}")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let g = NetnsGuard::new(
        pods.iter().cloned().chain(std::iter::once(node.clone())).collect(),
        PathBuf::from(format!("/sys/fs/bpf/weir-tcni-{id}")),
    );
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weirtest", "type": "weir", "bridge": "cni0", "mtu": 1500,
        "hairpinMode": true, "isDefaultGateway": true, "ipMasq": false,
        "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.78.0.0/24" }]],
                  "dataDir": tmp.path().join("ipam") },
        "policy": { "enforce": true, "bpffsRoot": g.root, "runDir": tmp.path().join("run"),
                    "readyTimeoutMs": 0, "whileNotReady": "drop", "onReadyTimeout": "continue" }
    });
    for (i, p) in pods.iter().enumerate() {
        cni(&bin, &node, "ADD", &format!("c{i}"), p, &conf);
    }
    // every process that touched the dataplane has exited; read what ADD recorded
    let reg = weir_common::registry::Registry::under(tmp.path().join("run"));
    let rec = |i: usize| reg.get(&format!("c{i}"), "eth0").unwrap().expect("endpoint record");
    let (r0, r1, r2) = (rec(0), rec(1), rec(2));
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
    let (p0, p1, p2) =
        (format!("/run/netns/{}", pods[0]), format!("/run/netns/{}", pods[1]), format!("/run/netns/{}", pods[2]));
    serve_tcp(&p1, ip(&r1), 8080);
    let target = SocketAddr::new(ip(&r1), 8080);

    // not programmed yet: fail-closed
    assert!(!tcp_ok(&p0, target), "not READY pods are fail-closed");

    // what policyd does: identities, ipcache, policy, READY
    program_like_policyd(&dp, &r0, 300, EP_READY);
    program_like_policyd(&dp, &r2, 302, EP_READY);
    dp.allow(
        &PolicyRule {
            endpoint: r1.host_ifindex,
            identity: 300,
            direction: DIR_INGRESS,
            protocol: Some(6),
            ports: Some(8080..=8080),
        },
        1,
    )
    .unwrap();
    program_like_policyd(&dp, &r1, 301, EP_READY | EP_INGRESS_ISOLATED);

    assert!(tcp_ok(&p0, target), "allowed by policy");
    assert!(!tcp_ok(&p2, target), "isolated, no rule for this peer");
    assert!(dp.counter(r1.host_ifindex, DIR_INGRESS, R_DROP_POLICY).unwrap().packets >= 1);
    assert!(dp.counter(r1.host_ifindex, DIR_INGRESS, R_ALLOW_POLICY).unwrap().packets >= 1);

    // CNI DEL detaches and forgets the endpoint
    cni(&bin, &node, "DEL", "c1", &pods[1], &conf);
    assert_eq!(dp.endpoint(r1.host_ifindex).unwrap(), None);
}
