//! Change-to-maps latency: how long after an object change lands in the
//! Store the pinned maps hold its consequences (compile + diff + map
//! writes, i.e. `Engine::compile` then `Sync::apply`), on the engine
//! benchmark's cluster (10,000 pods in 100 namespaces, 1,000 policies,
//! 110 pods on this node) with a real Dataplane.
//!
//!     sudo cargo run --release -p weir-policyd --example sync_bench
//!
//! Needs root (BPF maps). Loads the dataplane under its own bpffs root
//! `/sys/fs/bpf/weir-syncbench-<pid>`, removed at the end, also on error or
//! panic. The 110 local endpoints use fake ifindexes: their entries are
//! written not-ready as CNI ADD writes them, no program is attached.
//!
//! The same changes are replayed in the same run on a second store and
//! engine that only compile (no map writes): the baseline the map-writing
//! cost is read against. Options: `--changes N` (default 300, at least 200).

mod common;

use anyhow::{bail, Context, Result};
use common::{build, describe, measure, ms, status_kib, Series, ENVS};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use weir_bpf::{abi, Dataplane};
use weir_common::registry::EndpointRecord;
use weir_policyd::engine::Engine;
use weir_policyd::store::Store;
use weir_policyd::sync::Sync;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The kinds of change, taken in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policy,
    PodLabels,
    NamespaceLabels,
}

const KINDS: [Kind; 3] = [Kind::Policy, Kind::PodLabels, Kind::NamespaceLabels];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Policy => "policy added/changed/removed",
            Kind::PodLabels => "pod label change",
            Kind::NamespaceLabels => "namespace label change",
        }
    }
}

/// The app number of a generated pod name `app<N>-<i>`.
fn app_of(pod_name: &str) -> usize {
    pod_name[3..pod_name.find('-').unwrap()].parse().unwrap()
}

/// Change number `c` of the run, applied to `store`. Deterministic in `c`
/// and the store, so the baseline store gets exactly the same changes.
/// Policies cycle through add (a new policy selecting a local pod's app),
/// change (a port added to an existing one) and remove (the one added
/// last); every policy change reaches a local endpoint.
fn change(store: &mut Store, locals: &[EndpointRecord], c: usize) -> Kind {
    let kind = KINDS[c % KINDS.len()];
    let round = c / KINDS.len();
    let rv = Some(format!("{}", 1_000_000 + c));
    match kind {
        Kind::Policy => {
            let r = &locals[round % locals.len()];
            let ns = r.pod_namespace.clone();
            match round % 3 {
                0 => {
                    let np = serde_json::from_value(json!({
                        "metadata": {"name": format!("bench-{round}"), "namespace": ns, "uid": format!("bench-{round}"), "resourceVersion": rv},
                        "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", app_of(&r.pod_name))}},
                                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 20000 + round}]}]}}))
                    .unwrap();
                    store.policies.insert((ns, format!("bench-{round}")), np);
                }
                1 => {
                    let k = if round.is_multiple_of(2) { 0 } else { 8 };
                    let np = store.policies.get_mut(&(ns, format!("np-{k}"))).unwrap();
                    let mut v = serde_json::to_value(&*np).unwrap();
                    let spec = v.get_mut("spec").unwrap();
                    let rule = json!({"ports": [{"port": 10000 + round}], "from": [{"podSelector": {"matchLabels": {"app": "app0"}}}]});
                    match spec.get_mut("ingress").and_then(|i| i.as_array_mut()) {
                        Some(rules) => rules.push(rule),
                        None => spec["ingress"] = json!([rule]),
                    }
                    *np = serde_json::from_value(v).unwrap();
                    np.metadata.resource_version = rv;
                }
                _ => {
                    // The policy added two policy changes ago, in its namespace.
                    let added = round - 2;
                    let ns = locals[added % locals.len()].pod_namespace.clone();
                    store
                        .policies
                        .remove(&(ns, format!("bench-{added}")))
                        .expect("the policy added two policy changes ago");
                }
            }
        }
        Kind::PodLabels => {
            // Alternately a local pod and a remote one.
            let key = if round.is_multiple_of(2) {
                let r = &locals[round % locals.len()];
                (r.pod_namespace.clone(), r.pod_name.clone())
            } else {
                let n = store.pods.len();
                store.pods.keys().nth((round * 7919) % n).unwrap().clone()
            };
            let pod = store.pods.get_mut(&key).unwrap();
            let tier = ["web", "api", "db", "cache", "worker"][round % 5];
            pod.labels_mut().insert("tier".into(), tier.into());
            pod.resource_version = rv.map(Into::into);
        }
        Kind::NamespaceLabels => {
            // env moves a namespace in and out of the `env: prod` and
            // `env NotIn [dev]` namespace selectors of other namespaces' policies.
            let name = format!("ns-{:03}", (round * 37) % common::NAMESPACES);
            let ns = store.namespaces.get_mut(&name).unwrap();
            let labels = ns.metadata.labels.get_or_insert_with(Default::default);
            let next = match labels.get("env").map(String::as_str) {
                Some(e) => ENVS[(ENVS.iter().position(|x| *x == e).unwrap_or(0) + 1) % ENVS.len()],
                None => ENVS[0],
            };
            labels.insert("env".into(), next.into());
            ns.metadata.resource_version = rv;
        }
    }
    kind
}

#[derive(Default)]
struct PerKind {
    times: Option<Series>,
    entries: Vec<usize>,
}

impl PerKind {
    fn push(&mut self, w: std::time::Duration, c: std::time::Duration, entries: usize) {
        self.times.get_or_insert_with(Series::new).push(w, c);
        self.entries.push(entries);
    }
    fn entries(&self) -> String {
        let mut e = self.entries.clone();
        e.sort();
        let avg = e.iter().sum::<usize>() as f64 / e.len().max(1) as f64;
        format!("entries written per change: avg {avg:.1}, median {}, max {}", e[e.len() / 2], e[e.len() - 1])
    }
}

#[allow(clippy::result_large_err)] // weir_bpf::Error, returned as is by Sync::apply
fn run(root: &Path, changes: usize) -> Result<()> {
    let t = Instant::now();
    let (mut store, locals) = build();
    println!("{}", describe(&store, &locals, t.elapsed()));

    let dp =
        Dataplane::load_or_open(root).with_context(|| format!("loading the dataplane under {}", root.display()))?;
    // What CNI ADD writes before policyd has seen the pod: not ready.
    for r in &locals {
        dp.set_endpoint(r.host_ifindex, &abi::Endpoint::default())
            .with_context(|| format!("endpoint {}", r.host_ifindex))?;
    }

    let mut engine = Engine::new();
    let mut sync = Sync::from_maps(&dp).context("reading back the fresh maps")?;
    let ((desired, stats), w, c) = measure(|| {
        let d = engine.compile(&store, &locals);
        let s = sync.apply(&dp, &d);
        (d, s)
    });
    let stats = stats.context("initial Sync::apply")?;
    println!(
        "initial full sync (compile + write): wall {:.1} ms, cpu {:.1} ms; {} entries written, {} endpoints programmed \
         ({} ipcache, {} policy, {} cidr entries desired)",
        ms(w),
        ms(c),
        stats.upserts,
        stats.endpoints_programmed,
        desired.ipcache.len(),
        desired.policy.len(),
        desired.cidr.len()
    );
    let not_ready = dp.endpoints()?.iter().filter(|(_, e)| e.flags & abi::EP_READY == 0).count();
    if not_ready != 0 {
        bail!("{not_ready} local endpoints still not READY after the initial sync");
    }
    drop(desired);
    let hwm_after_initial = status_kib("VmHWM:");

    // The baseline: the same store and changes, compile only.
    let mut base_store = store.clone();
    let mut base_engine = Engine::new();
    let _ = base_engine.compile(&base_store, &locals);

    let mut full: [PerKind; 3] = Default::default();
    let mut base: [PerKind; 3] = Default::default();
    let mut all_full = Series::new();
    let mut all_base = Series::new();
    // Sync::apply alone (diff + map writes), the part the baseline lacks.
    let mut all_apply = Series::new();
    for c in 0..changes {
        let kind = change(&mut store, &locals, c);
        change(&mut base_store, &locals, c);
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        // Alternate which one runs first, so neither always gets the warmer cache.
        let mut run_full = || -> Result<()> {
            let (d, wc, cc) = measure(|| engine.compile(&store, &locals));
            let (stats, wa, ca) = measure(|| sync.apply(&dp, &d));
            let stats = stats.with_context(|| format!("Sync::apply of change {c}"))?;
            let n = stats.upserts + stats.removals + stats.endpoints_programmed;
            full[i].push(wc + wa, cc + ca, n);
            all_full.push(wc + wa, cc + ca);
            all_apply.push(wa, ca);
            Ok(())
        };
        let mut run_base = || {
            let (d, w, cpu) = measure(|| base_engine.compile(&base_store, &locals));
            drop(d);
            base[i].push(w, cpu, 0);
            all_base.push(w, cpu);
        };
        if c.is_multiple_of(2) {
            run_full()?;
            run_base();
        } else {
            run_base();
            run_full()?;
        }
    }

    println!();
    println!(
        "{changes} single changes, kinds in turn; time from the change being in the Store to Sync::apply returning:"
    );
    for (i, k) in KINDS.iter().enumerate() {
        let (f, b) = (&full[i], &base[i]);
        println!("  {}", f.times.as_ref().unwrap().report(&format!("{}: compile + diff + map writes", k.name())));
        println!("    {}", f.entries());
        println!("  {}", b.times.as_ref().unwrap().report(&format!("{}: baseline, compile only", k.name())));
    }
    println!("  {}", all_full.report("all kinds: compile + diff + map writes"));
    println!("  {}", all_base.report("all kinds: baseline, compile only"));
    println!("  {}", all_apply.report("all kinds: of which Sync::apply (diff + map writes)"));
    let ratio = |s: &Series| {
        let mut w = s.wall.clone();
        common::median(&mut w)
    };
    println!(
        "  median ratio (with map writes / compile only): {:.2}",
        ratio(&all_full).as_secs_f64() / ratio(&all_base).as_secs_f64()
    );
    let mut p = all_full.wall.clone();
    let p99 = common::pct(&mut p, 0.99);
    println!(
        "  p99 change-to-maps {:.2} ms: {} the 50 ms floor",
        ms(p99),
        if p99.as_millis() < 50 { "under" } else { "OVER" }
    );
    println!();
    println!(
        "peak RSS (VmHWM): {:.1} MiB after the initial sync (one store, engine and sync state); {:.1} MiB at the end \
         (plus the baseline's second store and engine)",
        mib(hwm_after_initial),
        mib(status_kib("VmHWM:"))
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, def: usize| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(def)
    };
    let changes = opt("--changes", 300);
    if changes < 200 {
        eprintln!("--changes {changes}: at least 200, for a p99 that means something");
        std::process::exit(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("sync_bench needs root (it loads BPF maps under /sys/fs/bpf); run it with sudo");
        std::process::exit(2);
    }
    let root = common::BpffsRoot::private("weir-syncbench");
    let result = run(&root.0, changes);
    drop(root);
    if let Err(e) = result {
        eprintln!("sync_bench: {e:#}");
        std::process::exit(1);
    }
}
