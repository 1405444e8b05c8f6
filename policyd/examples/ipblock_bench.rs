//! ipBlock scaling: how the split of many ipBlocks into disjoint prefixes
//! (`engine::cidr::partition`) and a full compile holding them grow with
//! the number of ipBlocks.
//!
//!     cargo run --release -p weir-policyd --example ipblock_bench
//!
//! Options: `--sizes 1000,10000,100000` (default), `--runs N` per size
//! (default 3; medians are reported), `--cluster`: also compile the largest
//! size inside the engine benchmark's cluster (10,000 pods, 1,000 policies,
//! 110 local endpoints), against that cluster alone as the baseline.
//!
//! The table's store holds just what the ipBlocks need (one namespace, one
//! local pod, one policy selecting it), so its compile time is the
//! ipBlocks' cost. Times are the thread's CPU time.
//!
//! The blocks: one wide `0.0.0.0/0 except 10.0.0.0/8` (so every other
//! block nests in it), then N-1 blocks in 64.0.0.0/6: every fourth a /24
//! with a /28 except, the others single addresses (/32).

mod common;

use common::{build, measure, median, ms, reset_peak_rss, status_kib};
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer};
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::Duration;
use weir_common::registry::EndpointRecord;
use weir_policyd::engine::cidr::{parse_cidr, partition, Block};
use weir_policyd::engine::Engine;
use weir_policyd::store::Store;

/// (cidr, except) of the k-th block.
fn block(k: usize) -> (String, Vec<String>) {
    if k == 0 {
        return ("0.0.0.0/0".into(), vec!["10.0.0.0/8".into()]);
    }
    let base = Ipv4Addr::from(0x4000_0000u32 + (k as u32) * 256);
    if k.is_multiple_of(4) {
        let hole = Ipv4Addr::from(u32::from(base) + 16);
        (format!("{base}/24"), vec![format!("{hole}/28")])
    } else {
        (format!("{}/32", Ipv4Addr::from(u32::from(base) + 1)), vec![])
    }
}

/// Ingress on TCP 443 from N ipBlocks, for pods labelled ipblocks=yes.
fn ipblock_policy(namespace: &str, n: usize) -> NetworkPolicy {
    let mut np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "np-ipblocks", "namespace": namespace, "uid": "ipb", "resourceVersion": "1"},
        "spec": {"podSelector": {"matchLabels": {"ipblocks": "yes"}}, "ingress": [{"ports": [{"port": 443}]}]}
    }))
    .unwrap();
    let peers = (0..n)
        .map(block)
        .map(|(cidr, except)| NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr, except: Some(except) }),
            ..Default::default()
        })
        .collect();
    np.spec.as_mut().unwrap().ingress.as_mut().unwrap()[0].from = Some(peers);
    np
}

/// One namespace, one local pod the policy selects.
fn small_store() -> (Store, Vec<EndpointRecord>) {
    let mut s = Store::default();
    s.namespaces.insert("ipb".into(), serde_json::from_value(json!({"metadata": {"name": "ipb"}})).unwrap());
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "target", "namespace": "ipb", "labels": {"ipblocks": "yes"}},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.200.0.1"}]}
    }))
    .unwrap();
    s.pods.insert(("ipb".into(), "target".into()), pod);
    let local = EndpointRecord {
        container_id: "target".into(),
        ifname: "eth0".into(),
        netns: "/run/netns/target".into(),
        network: "weir".into(),
        pod_namespace: "ipb".into(),
        pod_name: "target".into(),
        pod_uid: String::new(),
        host_ifname: "veth0".into(),
        host_ifindex: 1000,
        ips: vec!["10.200.0.1".parse().unwrap()],
        mac: String::new(),
        gateways: vec![],
    };
    (s, vec![local])
}

/// Median CPU time of `runs` compiles by fresh engines, and the cidr entries.
fn compile_cpu(store: &Store, locals: &[EndpointRecord], runs: usize) -> (Duration, usize) {
    let mut cpu = Vec::new();
    let mut cidr = 0;
    for _ in 0..runs {
        let (d, _, c) = measure(|| Engine::new().compile(store, locals));
        cidr = d.cidr.len();
        cpu.push(c);
    }
    (median(&mut cpu), cidr)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned());
    let sizes: Vec<usize> = arg("--sizes")
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("--sizes: numbers, comma-separated")).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let runs: usize = arg("--runs").map(|n| n.parse().expect("--runs: a number")).unwrap_or(3);

    println!(
        "| ipBlocks | partition ms | growth | full compile ms | growth | cidr entries | compile peak above live MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let (mut store, locals) = small_store();
    let mut prev: Option<(usize, Duration, Duration)> = None;
    for &n in &sizes {
        let blocks: Vec<Block> = (0..n)
            .map(block)
            .map(|(c, ex)| Block {
                cidr: parse_cidr(&c).unwrap(),
                except: ex.iter().map(|e| parse_cidr(e).unwrap()).collect(),
            })
            .collect();
        let mut split = Vec::new();
        let mut parts = 0;
        for _ in 0..runs {
            let (p, _, cpu) = measure(|| partition(&blocks));
            parts = p.len();
            split.push(cpu);
        }
        drop(blocks);
        let split = median(&mut split);

        store.policies.insert(("ipb".into(), "np-ipblocks".into()), ipblock_policy("ipb", n));
        let live = status_kib("VmRSS:");
        reset_peak_rss();
        let (full, cidr_entries) = compile_cpu(&store, &locals, runs);
        let peak = status_kib("VmHWM:").saturating_sub(live);
        assert!(cidr_entries >= parts, "the selected endpoint holds every prefix of the split");

        let growth = |now: Duration, before: Duration, prev_n: usize| {
            format!("x{:.1} for x{:.0} blocks", now.as_secs_f64() / before.as_secs_f64(), n as f64 / prev_n as f64)
        };
        let (g_split, g_full) = match prev {
            Some((pn, ps, pf)) => (growth(split, ps, pn), growth(full, pf, pn)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {n} | {:.1} | {g_split} | {:.1} | {g_full} | {cidr_entries} | {:.1} |",
            ms(split),
            ms(full),
            peak as f64 / 1024.0
        );
        prev = Some((n, split, full));
    }

    if args.iter().any(|a| a == "--cluster") {
        let n = *sizes.iter().max().expect("at least one size");
        let (mut store, locals) = build();
        let (alone, _) = compile_cpu(&store, &locals, runs);
        // The policy selects one local pod of the cluster.
        let target = (locals[0].pod_namespace.clone(), locals[0].pod_name.clone());
        store.pods.get_mut(&target).unwrap().labels_mut().insert("ipblocks".into(), "yes".into());
        store.policies.insert((target.0.clone(), "np-ipblocks".into()), ipblock_policy(&target.0, n));
        let (with, _) = compile_cpu(&store, &locals, runs);
        println!();
        println!(
            "in the engine benchmark's cluster (10,000 pods, 1,000 policies, 110 local endpoints): full compile {:.0} ms, with the {n}-ipBlock policy selecting one local pod {:.0} ms",
            ms(alone),
            ms(with)
        );
    }
}
