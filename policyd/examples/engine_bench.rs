//! Policy engine benchmark: a 10,000-pod cluster with 1,000 policies and
//! 110 pods on this node. Reports full compile time, peak RSS and the
//! latency of one policy change / one pod label change (recompile + diff).
//!
//!     cargo run --release -p weir-policyd --example engine_bench
//!
//! Options: `--runs N` full compiles (default 7), `--changes N` per kind
//! (default 200), `--cluster-policies N` ClusterNetworkPolicies added to
//! the cluster (default 0; with some, one cluster policy change is
//! measured too).

mod common;

use common::{add_cluster_policies, build, describe, measure, status_kib, Series};
use serde_json::json;
use std::time::Instant;
use weir_policyd::engine::Engine;
use weir_policyd::sync::DesiredDiff;

fn vm_hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, def: usize| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(def)
    };
    let runs = opt("--runs", 7);
    let changes = opt("--changes", 200);

    let t = Instant::now();
    let (mut store, locals) = build();
    let cluster_policies = opt("--cluster-policies", 0);
    add_cluster_policies(&mut store, cluster_policies);
    let build_time = t.elapsed();
    let rss_after_build = vm_hwm_kib();
    let live_after_build = status_kib("VmRSS:");

    let mut full = Series::new();
    let mut desired = None;
    for _ in 0..runs {
        drop(desired.take());
        let mut e = Engine::new();
        let (d, w, c) = measure(|| e.compile(&store, &locals));
        full.push(w, c);
        desired = Some(d);
    }
    let d0 = desired.unwrap();
    println!("{}", describe(&store, &locals, build_time));
    println!(
        "desired: {} identities, {} ipcache, {} endpoints ({} ingress-isolated, {} egress-isolated, {} tiered), {} policy, {} cidr entries, {} rules, {} diagnostics",
        d0.identities.len(),
        d0.ipcache.len(),
        d0.endpoints.len(),
        d0.endpoints.values().filter(|e| e.ingress_isolated).count(),
        d0.endpoints.values().filter(|e| e.egress_isolated).count(),
        d0.endpoints.values().filter(|e| e.ingress_tiered || e.egress_tiered).count(),
        d0.policy.len(),
        d0.cidr.len(),
        d0.rules.len(),
        d0.diagnostics.len()
    );
    println!("{}", full.report("full compile (fresh engine)"));

    // Steady state: one engine, changes applied one at a time.
    let mut e = Engine::new();
    let mut prev = e.compile(&store, &locals);
    let mut noop = Series::new();
    for _ in 0..opt("--noops", 20) {
        let (diff, w, c) = measure(|| DesiredDiff::between(&prev, &e.compile(&store, &locals)));
        assert!(diff.is_empty());
        noop.push(w, c);
    }
    println!("{}", noop.report("no-change recompile + diff"));

    // One policy change: flip a port in policies of namespaces with local pods.
    let mut pol_times = Series::new();
    let mut pol_diff = 0usize;
    for c in 0..changes {
        // Alternate the namespace-wide policy and the one selecting the
        // local pod's app, so every change reaches a local endpoint.
        let r = &locals[c % locals.len()];
        let ns = &r.pod_namespace;
        let app: usize = r.pod_name[3..r.pod_name.find('-').unwrap()].parse().unwrap();
        let k = match app {
            1 | 2 | 8 | 9 => app,
            3 => 4,
            4 => 5,
            5 => 6,
            _ => 0,
        };
        let key = (ns.clone(), format!("np-{}", if c % 2 == 0 { 0 } else { k }));
        let np = store.policies.get_mut(&key).unwrap();
        let mut v = serde_json::to_value(&*np).unwrap();
        let spec = v.get_mut("spec").unwrap();
        let rules = spec.get("ingress").cloned();
        let port = 10000 + c as i64;
        match rules {
            Some(_) => spec["ingress"]
                .as_array_mut()
                .unwrap()
                .push(json!({"ports": [{"port": port}], "from": [{"podSelector": {"matchLabels": {"app": "app0"}}}]})),
            None => spec["ingress"] = json!([{"ports": [{"port": port}]}]),
        }
        *np = serde_json::from_value(v).unwrap();
        np.metadata.resource_version = Some(format!("{}", 1000 + c));
        let ((d, diff), w, cpu) = measure(|| {
            let d = e.compile(&store, &locals);
            let diff = DesiredDiff::between(&prev, &d);
            (d, diff)
        });
        pol_times.push(w, cpu);
        pol_diff += diff.len();
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("policy change {c} {key:?}: {} updates, {:?}", diff.len(), e.last_stats());
        }
        prev = d;
    }
    let s_pol = e.last_stats();

    // One pod label change: alternate local and remote pods, new and old label sets.
    let keys: Vec<_> = store.pods.keys().cloned().collect();
    let mut lab_times = Series::new();
    let mut lab_diff = 0usize;
    for c in 0..changes {
        let key = if c % 2 == 0 {
            let r = &locals[c % locals.len()];
            (r.pod_namespace.clone(), r.pod_name.clone())
        } else {
            keys[(c * 7919) % keys.len()].clone()
        };
        let pod = store.pods.get_mut(&key).unwrap();
        let tier = ["web", "api", "db", "cache", "worker"][c % 5];
        pod.labels_mut().insert("tier".into(), tier.into());
        pod.resource_version = Some(format!("{}", 100000 + c).into());
        let ((d, diff), w, cpu) = measure(|| {
            let d = e.compile(&store, &locals);
            let diff = DesiredDiff::between(&prev, &d);
            (d, diff)
        });
        lab_times.push(w, cpu);
        lab_diff += diff.len();
        prev = d;
    }
    let s_lab = e.last_stats();

    // One cluster policy change: move a policy's priority (it reorders
    // against the others of its tier) or, every other time, add a rule.
    let mut cnp_times = Series::new();
    let mut cnp_diff = 0usize;
    let cnp_names: Vec<String> = store.cluster_policies.keys().cloned().collect();
    for c in 0..if cnp_names.is_empty() { 0 } else { changes } {
        let cnp = store.cluster_policies.get_mut(&cnp_names[(c * 37) % cnp_names.len()]).unwrap();
        if c % 2 == 0 {
            cnp.spec.priority = ((cnp.spec.priority as usize + 500 + c) % 1001) as i32;
        } else {
            let rule: weir_policyd::cluster_network_policy::ClusterNetworkPolicyIngressRule = serde_json::from_value(
                json!({"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": format!("team-{}", c % 10)}}}],
                       "protocols": [{"tcp": {"destinationPort": {"number": 20000 + c}}}]}),
            )
            .unwrap();
            cnp.spec.ingress.push(rule);
        }
        cnp.metadata.resource_version = Some(format!("{}", 200000 + c));
        let ((d, diff), w, cpu) = measure(|| {
            let d = e.compile(&store, &locals);
            let diff = DesiredDiff::between(&prev, &d);
            (d, diff)
        });
        cnp_times.push(w, cpu);
        cnp_diff += diff.len();
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!(
                "cluster policy change {c} {}: {:?}, {} updates, {:?}",
                cnp_names[(c * 37) % cnp_names.len()],
                w,
                diff.len(),
                e.last_stats()
            );
        }
        prev = d;
    }
    println!(
        "{} (avg {:.1} map updates; last {:?})",
        pol_times.report("one policy change, recompile + diff"),
        pol_diff as f64 / changes as f64,
        s_pol
    );
    println!(
        "{} (avg {:.1} map updates; last {:?})",
        lab_times.report("one pod label change, recompile + diff"),
        lab_diff as f64 / changes as f64,
        s_lab
    );
    if !cnp_names.is_empty() {
        println!(
            "{} (avg {:.1} map updates; last {:?})",
            cnp_times.report("one cluster policy change, recompile + diff"),
            cnp_diff as f64 / changes as f64,
            e.last_stats()
        );
    }
    let hwm = vm_hwm_kib();
    println!(
        "peak RSS (VmHWM): {:.1} MiB (after building the store: peak {:.1} MiB, live {:.1} MiB; now live {:.1} MiB)",
        hwm as f64 / 1024.0,
        rss_after_build as f64 / 1024.0,
        live_after_build as f64 / 1024.0,
        status_kib("VmRSS:") as f64 / 1024.0
    );
}
