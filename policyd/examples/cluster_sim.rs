//! A whole cluster on one machine: generates Nodes, Namespaces, Pods,
//! Services and NetworkPolicies at the size asked, puts them in a `Store`
//! the way the sources do (`Object::trim`, then `Store::apply`), and drives
//! the real engine and sync against a real dataplane (pinned maps), as this
//! node's weir-policyd would: one full compile, then single changes of a
//! realistic mix, each compiled and written to the maps. Prints a JSON
//! summary on stdout (progress on stderr).
//!
//!     sudo cargo run --release -p weir-policyd --example cluster_sim -- \
//!         --pods 150000 --policies 10000 --nodes 5000 --namespaces 2000 --changes 300
//!
//! Needs root (BPF maps). Loads the dataplane under its own bpffs root
//! `/sys/fs/bpf/weir-clustersim-<pid>`, removed at the end, also on error
//! or panic; no program is attached.
//!
//! Placement: pod g (0-based) is in namespace g % namespaces and on node
//! g % nodes; node n has the pod range 10.<n/256>.<n%256>.0/24 (.1 its
//! gateway, so 253 pods) and the address 100.64.<n/256>.<n%256>. This node
//! is the first; its pods are the local endpoints. Policies are spread
//! over the namespaces in the engine benchmark's mix (policyd/examples/
//! common); every namespace has 3 Services.
//!
//! The change mix, in turn: a pod deleted, a pod created (in the deleted
//! one's place), a pod's labels changed (local and remote alternately), a
//! policy added, changed or removed, a namespace's labels changed, a pod's
//! labels changed again. Each change is timed from the Store holding it to
//! `Sync::apply` returning (compile + diff + map writes).
//!
//! `watch_bytes_per_s_estimate` is docs/scale.md's model, not a
//! measurement: what one node's weir-policyd receives from the API server
//! per second at `--pod-events-per-s` (default 100) Pod events of 5 KB
//! and every Node reporting its 10 KB status once in 5 minutes.

mod common;

use anyhow::{bail, Context, Result};
use common::{measure, ms, namespace, network_policy, pod, service, status_kib, APPS_PER_NS, ENVS};
use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use weir_bpf::{abi, Dataplane};
use weir_common::registry::EndpointRecord;
use weir_policyd::engine::Engine;
use weir_policyd::store::{Object, Store};
use weir_policyd::sync::Sync;

/// Pods a node's /24 holds: .1 is its gateway, .255 the broadcast.
const PODS_PER_NODE: usize = 253;
/// Node ranges of /24 in the cluster range 10.0.0.0/8.
const MAX_NODES: usize = 65_536;
/// Services in 172.20.0.0/16.
const MAX_SERVICES: usize = 65_534;
const SERVICES_PER_NS: usize = 3;
/// docs/scale.md: a Pod watch event (5 KB), a Node object (10 KB), and the
/// kubelet's Node status report period when nothing changes.
const POD_EVENT_BYTES: f64 = 5_000.0;
const NODE_EVENT_BYTES: f64 = 10_000.0;
const NODE_REPORT_S: f64 = 300.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    pods: usize,
    policies: usize,
    nodes: usize,
    namespaces: usize,
    changes: usize,
    pod_events_per_s: f64,
    /// ClusterNetworkPolicies beside the NetworkPolicies ([`common::cluster_policy`]'s mix).
    cluster_policies: usize,
}

impl Shape {
    /// Every impossible shape, named with its flag and the fix.
    fn check(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("--nodes 0: a cluster has at least one node (this one); give --nodes 1 or more".into());
        }
        if self.nodes > MAX_NODES {
            return Err(format!(
                "--nodes {}: the cluster range 10.0.0.0/8 holds {MAX_NODES} node ranges of /24; give at most {MAX_NODES}",
                self.nodes
            ));
        }
        if self.namespaces == 0 {
            return Err("--namespaces 0: pods and policies live in namespaces; give --namespaces 1 or more".into());
        }
        if self.namespaces * SERVICES_PER_NS > MAX_SERVICES {
            return Err(format!(
                "--namespaces {}: {SERVICES_PER_NS} Services each do not fit the Service range 172.20.0.0/16 \
                 ({MAX_SERVICES} addresses); give at most {}",
                self.namespaces,
                MAX_SERVICES / SERVICES_PER_NS
            ));
        }
        if self.pods == 0 {
            return Err("--pods 0: give --pods 1 or more".into());
        }
        let room = self.nodes * PODS_PER_NODE;
        if self.pods > room {
            return Err(format!(
                "--pods {}: more pods than addresses; {} nodes with a /24 pod range each hold {room} pods \
                 ({PODS_PER_NODE} per node); give --nodes {} or more, or fewer pods",
                self.pods,
                self.nodes,
                self.pods.div_ceil(PODS_PER_NODE)
            ));
        }
        if self.changes == 0 {
            return Err("--changes 0: give --changes 1 or more (100 or more for a p99 that means something)".into());
        }
        if !(self.pod_events_per_s.is_finite() && self.pod_events_per_s >= 0.0) {
            return Err(format!("--pod-events-per-s {}: give a rate of 0 or more", self.pod_events_per_s));
        }
        Ok(())
    }

    fn parse(args: &[String]) -> Result<Shape, String> {
        let mut shape = Shape {
            pods: 10_000,
            policies: 1_000,
            nodes: 100,
            namespaces: 100,
            changes: 300,
            pod_events_per_s: 100.0,
            cluster_policies: 0,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag}: needs a value"))?;
            let count = || value.parse::<usize>().map_err(|_| format!("{flag} {value:?}: expected a whole number"));
            match flag.as_str() {
                "--pods" => shape.pods = count()?,
                "--policies" => shape.policies = count()?,
                "--nodes" => shape.nodes = count()?,
                "--namespaces" => shape.namespaces = count()?,
                "--changes" => shape.changes = count()?,
                "--cluster-policies" => shape.cluster_policies = count()?,
                "--pod-events-per-s" => {
                    shape.pod_events_per_s =
                        value.parse().map_err(|_| format!("{flag} {value:?}: expected a number"))?
                }
                _ => {
                    return Err(format!(
                        "unknown option {flag}: use --pods, --policies, --nodes, --namespaces, --changes, \
                         --pod-events-per-s, --cluster-policies"
                    ))
                }
            }
        }
        shape.check()?;
        Ok(shape)
    }
}

fn node_name(n: usize) -> String {
    format!("node-{:05}", n + 1)
}

fn pod_ip(node: usize, slot: usize) -> String {
    format!("10.{}.{}.{}", node / 256, node % 256, slot + 2)
}

/// Where a pod is: its node and its slot in that node's range.
#[derive(Debug, Clone, Copy)]
struct Place {
    node: usize,
    slot: usize,
}

struct Cluster {
    store: Store,
    locals: Vec<EndpointRecord>,
    /// Pod key -> place, for deletions to free.
    places: BTreeMap<(String, String), Place>,
    next_ifindex: u32,
}

impl Cluster {
    fn generate(shape: &Shape) -> Cluster {
        let mut c =
            Cluster { store: Store::default(), locals: Vec::new(), places: BTreeMap::new(), next_ifindex: 1000 };
        for n in 0..shape.nodes {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": node_name(n), "uid": format!("node-{n}"), "resourceVersion": "1"},
                "spec": {"podCIDR": format!("10.{}.{}.0/24", n / 256, n % 256),
                         "podCIDRs": [format!("10.{}.{}.0/24", n / 256, n % 256)]},
                "status": {"addresses": [{"type": "InternalIP", "address": format!("100.64.{}.{}", n / 256, n % 256)},
                                         {"type": "Hostname", "address": node_name(n)}]}}))
            .unwrap();
            c.put(Object::Node(node));
        }
        for ns in 0..shape.namespaces {
            c.put(Object::Namespace(namespace(ns)));
            for app in 0..SERVICES_PER_NS {
                let k = ns * SERVICES_PER_NS + app + 1;
                c.put(Object::Service(service(ns, app, &format!("172.20.{}.{}", k / 256, k % 256))));
            }
            let here = shape.policies / shape.namespaces + usize::from(ns < shape.policies % shape.namespaces);
            for n in 0..here {
                c.put(Object::NetworkPolicy(network_policy(ns, n, n % 10)));
            }
        }
        for g in 0..shape.pods {
            let place = Place { node: g % shape.nodes, slot: g / shape.nodes };
            c.add_pod(g % shape.namespaces, g / shape.namespaces, place);
        }
        common::add_cluster_policies(&mut c.store, shape.cluster_policies);
        c
    }

    /// As a source does: trimmed, then applied.
    fn put(&mut self, mut obj: Object) {
        obj.trim();
        self.store.apply(obj);
    }

    fn add_pod(&mut self, ns: usize, i: usize, place: Place) {
        let ip = pod_ip(place.node, place.slot);
        let p = pod(ns, i, &ip, Some(&node_name(place.node)));
        let key = (p.metadata.namespace.clone().unwrap(), p.metadata.name.clone().unwrap());
        if place.node == 0 {
            let j = self.next_ifindex;
            self.next_ifindex += 1;
            self.locals.push(common::local_record(j, &key, ip.parse().unwrap(), "10.0.0.1".parse().unwrap()));
        }
        self.places.insert(key, place);
        self.put(Object::Pod(p));
    }

    fn delete_pod(&mut self, key: &(String, String)) -> Option<Place> {
        self.store.pods.remove(key)?;
        self.locals.retain(|r| (&r.pod_namespace, &r.pod_name) != (&key.0, &key.1));
        self.places.remove(key)
    }

    fn map_entries(d: &weir_policyd::engine::Desired) -> serde_json::Value {
        json!({"ipcache": d.ipcache.len(), "endpoints": d.endpoints.len(), "policy": d.policy.len(),
               "cidr": d.cidr.len(), "total": d.ipcache.len() + d.endpoints.len() + d.policy.len() + d.cidr.len()})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    PodDelete,
    PodCreate,
    PodLabels,
    Policy,
    NamespaceLabels,
}

impl Kind {
    const CYCLE: [Kind; 6] =
        [Kind::PodDelete, Kind::PodCreate, Kind::PodLabels, Kind::Policy, Kind::NamespaceLabels, Kind::PodLabels];

    fn name(self) -> &'static str {
        match self {
            Kind::PodDelete => "pod_delete",
            Kind::PodCreate => "pod_create",
            Kind::PodLabels => "pod_labels",
            Kind::Policy => "policy",
            Kind::NamespaceLabels => "namespace_labels",
        }
    }
}

/// The churn: deterministic in the change number.
struct Churn {
    shape: Shape,
    /// Places deletions freed, for creations to take.
    free: Vec<Place>,
    created: usize,
    added_policies: Vec<(String, String)>,
}

impl Churn {
    fn apply(&mut self, c: &mut Cluster, n: usize) -> Kind {
        let kind = Kind::CYCLE[n % Kind::CYCLE.len()];
        let round = n / Kind::CYCLE.len();
        let rv = Some(format!("{}", 1_000_000 + n));
        // A pod spread over the cluster, this node's every other time.
        let some_pod = |c: &Cluster, local: bool| -> (String, String) {
            if local && !c.locals.is_empty() {
                let r = &c.locals[round % c.locals.len()];
                (r.pod_namespace.clone(), r.pod_name.clone())
            } else {
                c.store.pods.keys().nth((n * 7919) % c.store.pods.len()).unwrap().clone()
            }
        };
        match kind {
            Kind::PodDelete => {
                if c.store.pods.len() > 1 {
                    let key = some_pod(c, round.is_multiple_of(2));
                    self.free.extend(c.delete_pod(&key));
                }
            }
            Kind::PodCreate => {
                if let Some(place) = self.free.pop() {
                    let i = self.shape.pods + self.created;
                    self.created += 1;
                    c.add_pod(i % self.shape.namespaces, i, place);
                }
            }
            Kind::PodLabels => {
                let key = some_pod(c, round.is_multiple_of(2));
                let p = c.store.pods.get_mut(&key).unwrap();
                let tier = ["web", "api", "db", "cache", "worker"][(n / 2) % 5];
                p.labels_mut().insert("tier".into(), tier.into());
                p.resource_version = rv.map(Into::into);
            }
            Kind::Policy => {
                // Added in a local pod's namespace, selecting its app; an
                // existing one given another rule; the oldest added removed.
                let (ns, app) = match c.locals.get(round % c.locals.len().max(1)) {
                    Some(r) => (r.pod_namespace.clone(), r.pod_name[3..r.pod_name.find('-').unwrap()].to_string()),
                    None => (common::namespace_name(round % self.shape.namespaces), format!("{}", round % APPS_PER_NS)),
                };
                match round % 3 {
                    0 => {
                        let name = format!("sim-{round}");
                        let np = serde_json::from_value(json!({
                            "metadata": {"name": name, "namespace": ns, "uid": format!("sim-{round}"), "resourceVersion": rv},
                            "spec": {"podSelector": {"matchLabels": {"app": format!("app{app}")}},
                                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 20000 + round % 10000}]}]}}))
                        .unwrap();
                        c.put(Object::NetworkPolicy(np));
                        self.added_policies.push((ns, name));
                    }
                    1 => {
                        let mut np = match c.store.policies.range((ns.clone(), String::new())..).next() {
                            Some(((pns, _), np)) if *pns == ns => np.clone(),
                            _ => c
                                .store
                                .policies
                                .values()
                                .nth(round % c.store.policies.len().max(1))
                                .cloned()
                                .unwrap_or_else(|| network_policy(0, 0, 0)),
                        };
                        let mut v = serde_json::to_value(&np).unwrap();
                        let rule = json!({"ports": [{"port": 10000 + round % 10000}], "from": [{"podSelector": {"matchLabels": {"app": "app0"}}}]});
                        match v["spec"].get_mut("ingress").and_then(|i| i.as_array_mut()) {
                            Some(rules) => rules.push(rule),
                            None => v["spec"]["ingress"] = json!([rule]),
                        }
                        np = serde_json::from_value(v).unwrap();
                        np.metadata.resource_version = rv;
                        c.put(Object::NetworkPolicy(np));
                    }
                    _ => {
                        if !self.added_policies.is_empty() {
                            let key = self.added_policies.remove(0);
                            c.store.policies.remove(&key);
                        }
                    }
                }
            }
            Kind::NamespaceLabels => {
                let name = common::namespace_name((round * 37) % self.shape.namespaces);
                let ns = c.store.namespaces.get_mut(&name).unwrap();
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
}

fn pct_ms(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    ms(v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1])
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[allow(clippy::result_large_err)] // weir_bpf::Error, returned as is by Sync::apply
fn run(root: &Path, shape: Shape) -> Result<serde_json::Value> {
    let t = Instant::now();
    let mut cluster = Cluster::generate(&shape);
    let generated_ms = ms(t.elapsed());
    let rss_store = status_kib("VmRSS:");
    eprintln!(
        "generated {} nodes, {} namespaces, {} pods ({} on this node), {} policies, {} services in {:.0} ms; RSS {:.0} MiB",
        cluster.store.nodes.len(),
        cluster.store.namespaces.len(),
        cluster.store.pods.len(),
        cluster.locals.len(),
        cluster.store.policies.len(),
        cluster.store.services.len(),
        generated_ms,
        mib(rss_store)
    );

    let dp =
        Dataplane::load_or_open(root).with_context(|| format!("loading the dataplane under {}", root.display()))?;
    // What CNI ADD writes before policyd has seen the pod: not ready.
    for r in &cluster.locals {
        dp.set_endpoint(r.host_ifindex, &abi::Endpoint::default())
            .with_context(|| format!("endpoint {}", r.host_ifindex))?;
    }
    let mut engine = Engine::new();
    let mut sync = Sync::from_maps(&dp).context("reading back the fresh maps")?;
    let (desired, full_w, full_c) = measure(|| engine.compile(&cluster.store, &cluster.locals));
    let (stats, sync_w, _) = measure(|| sync.apply(&dp, &desired));
    let stats = stats.context("initial Sync::apply")?;
    let initial_entries = Cluster::map_entries(&desired);
    eprintln!(
        "full compile {:.0} ms (cpu {:.0} ms), initial sync {:.0} ms ({} entries written)",
        ms(full_w),
        ms(full_c),
        ms(sync_w),
        stats.upserts
    );
    drop(desired);
    let not_ready = dp.endpoints()?.iter().filter(|(_, e)| e.flags & abi::EP_READY == 0).count();
    if not_ready != 0 {
        bail!("{not_ready} local endpoints still not READY after the initial sync");
    }

    let mut churn = Churn { shape, free: Vec::new(), created: 0, added_policies: Vec::new() };
    let mut all = Vec::with_capacity(shape.changes);
    let mut by_kind: BTreeMap<Kind, Vec<Duration>> = BTreeMap::new();
    let mut written = 0usize;
    // Of each change, the compile alone (the rest is Sync::apply: diff and writes).
    let mut compile_only = Vec::with_capacity(shape.changes);
    for n in 0..shape.changes {
        let known: Vec<u32> = cluster.locals.iter().map(|r| r.host_ifindex).collect();
        let kind = churn.apply(&mut cluster, n);
        // A new local pod: CNI ADD's not-READY entry comes first.
        for r in cluster.locals.iter().filter(|r| !known.contains(&r.host_ifindex)) {
            dp.set_endpoint(r.host_ifindex, &abi::Endpoint::default())?;
        }
        let t = Instant::now();
        let d = engine.compile(&cluster.store, &cluster.locals);
        let compiled = t.elapsed();
        let s = sync.apply(&dp, &d).with_context(|| format!("Sync::apply of change {n} ({})", kind.name()))?;
        let took = t.elapsed();
        drop(d);
        compile_only.push(compiled);
        written += s.upserts + s.removals + s.endpoints_programmed;
        all.push(took);
        by_kind.entry(kind).or_default().push(took);
        if (n + 1) % 50 == 0 {
            eprintln!("{} changes", n + 1);
        }
    }
    let final_desired = engine.compile(&cluster.store, &cluster.locals);
    let final_entries = Cluster::map_entries(&final_desired);
    drop(final_desired);

    let per_s = shape.pod_events_per_s * POD_EVENT_BYTES + shape.nodes as f64 / NODE_REPORT_S * NODE_EVENT_BYTES;
    let kinds: serde_json::Map<String, serde_json::Value> = by_kind
        .iter_mut()
        .map(|(k, v)| {
            (
                k.name().to_string(),
                json!({"n": v.len(), "p50_ms": round1(pct_ms(v, 0.5)), "p99_ms": round1(pct_ms(v, 0.99))}),
            )
        })
        .collect();
    let peak = mib(status_kib("VmHWM:"));
    let change_p99 = pct_ms(&mut all, 0.99);
    Ok(json!({
        "pods": shape.pods, "policies": shape.policies, "cluster_policies": shape.cluster_policies, "nodes": shape.nodes, "namespaces": shape.namespaces,
        "services": cluster.store.services.len(), "local_endpoints": cluster.locals.len(),
        "changes": shape.changes,
        "generate_ms": round1(generated_ms),
        "full_compile_ms": round1(ms(full_w)),
        "full_compile_cpu_ms": round1(ms(full_c)),
        "initial_sync_ms": round1(ms(sync_w)),
        "change_p50_ms": round1(pct_ms(&mut all, 0.5)),
        "change_p99_ms": round1(change_p99),
        "change_max_ms": round1(pct_ms(&mut all, 1.0)),
        "change_compile_p50_ms": round1(pct_ms(&mut compile_only, 0.5)),
        "change_compile_p99_ms": round1(pct_ms(&mut compile_only, 0.99)),
        "change_by_kind": kinds,
        "entries_written_by_changes": written,
        "rss_after_generate_mib": mib(rss_store),
        "peak_rss_mib": peak,
        "map_entries": initial_entries,
        "map_entries_after_changes": final_entries,
        "watch_bytes_per_s_estimate": per_s.round(),
        "watch_bytes_per_s_estimate_all_nodes": (per_s * shape.nodes as f64).round(),
        "watch_model": format!("docs/scale.md: {} Pod events/s x {POD_EVENT_BYTES} B + {} Nodes x {NODE_EVENT_BYTES} B / {NODE_REPORT_S} s, to each node", shape.pod_events_per_s, shape.nodes),
        "floors_at_150k_pods": {"full_compile_ms": 5000, "change_p99_ms": 50, "peak_rss_mib": 300, "peak_rss_mib_at_10k_pods": 100},
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = match Shape::parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cluster_sim: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("cluster_sim needs root (it loads BPF maps under /sys/fs/bpf); run it with sudo");
        std::process::exit(2);
    }
    let root = common::BpffsRoot::private("weir-clustersim");
    let result = run(&root.0, shape);
    drop(root);
    match result {
        Ok(summary) => println!("{}", serde_json::to_string_pretty(&summary).unwrap()),
        Err(e) => {
            eprintln!("cluster_sim: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Shape, String> {
        Shape::parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_issue_s_shape_is_possible() {
        let s = parse("--pods 150000 --policies 10000 --nodes 5000 --namespaces 2000 --changes 300").unwrap();
        assert_eq!((s.pods, s.policies, s.nodes, s.namespaces, s.changes), (150_000, 10_000, 5_000, 2_000, 300));
    }

    #[test]
    fn impossible_shapes_are_refused_by_flag_with_the_fix() {
        for (args, starts, fix) in [
            ("--nodes 0", "--nodes 0", "--nodes 1 or more"),
            ("--nodes 70000", "--nodes 70000", "at most 65536"),
            ("--namespaces 0", "--namespaces 0", "1 or more"),
            ("--namespaces 30000", "--namespaces 30000", "at most 21844"),
            ("--pods 0", "--pods 0", "1 or more"),
            ("--pods 150000 --nodes 100", "--pods 150000: more pods than addresses", "--nodes 593 or more"),
            ("--changes 0", "--changes 0", "1 or more"),
            ("--pod-events-per-s -1", "--pod-events-per-s -1", "0 or more"),
            ("--pods many", "--pods \"many\"", "whole number"),
            ("--pods", "--pods: needs a value", ""),
            ("--pod 5", "unknown option --pod", "--pods"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.starts_with(starts) && e.contains(fix), "{args}: {e}");
        }
        // exactly full is possible
        assert!(parse(&format!("--pods {} --nodes 2", 2 * PODS_PER_NODE)).is_ok());
        assert!(parse(&format!("--pods {} --nodes 2", 2 * PODS_PER_NODE + 1)).is_err());
    }

    /// Every pod has its own address inside its node's range, and this
    /// node's pods are the local endpoints.
    #[test]
    fn placement_gives_unique_addresses_in_each_node_s_range() {
        let shape = parse("--pods 1012 --nodes 4 --namespaces 7 --policies 20").unwrap();
        let c = Cluster::generate(&shape);
        assert_eq!(c.store.pods.len(), 1012);
        assert_eq!(c.store.policies.len(), 20);
        let mut seen = std::collections::BTreeSet::new();
        for (key, p) in &c.store.pods {
            let Some(std::net::IpAddr::V4(ip)) = p.pod_ips[0].addr() else { panic!("{key:?}: {:?}", p.pod_ips) };
            let n = c.places[key].node;
            assert_eq!(ip.octets()[..3], [10, (n / 256) as u8, (n % 256) as u8], "node {n} {ip}");
            assert!((2..=254).contains(&ip.octets()[3]), "{ip}");
            assert!(seen.insert(ip), "{ip} twice");
        }
        assert_eq!(c.locals.len(), 253);
        assert!(c.locals.iter().all(|r| c.places[&(r.pod_namespace.clone(), r.pod_name.clone())].node == 0));
    }
}
