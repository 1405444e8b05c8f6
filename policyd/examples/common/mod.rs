//! What the policyd benchmarks share: the generated cluster (10,000 pods
//! in 100 namespaces, 1,000 policies, 110 pods on this node) and the
//! timing helpers, so every benchmark measures the same workload.
#![allow(dead_code)] // each example uses a different part

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use std::time::{Duration, Instant};
use weir_common::registry::EndpointRecord;
use weir_policyd::store::Store;

pub const NAMESPACES: usize = 100;
pub const PODS_PER_NS: usize = 100;
pub const APPS_PER_NS: usize = 10;
pub const POLICIES_PER_NS: usize = 10;
pub const LOCALS: usize = 110;
pub const ENVS: [&str; 3] = ["prod", "staging", "dev"];

pub fn pod_ip(ns: usize, i: usize) -> String {
    let n = ns * PODS_PER_NS + i;
    format!("10.{}.{}.{}", 200 + n / 65536, (n / 256) % 256, n % 256)
}

pub fn build() -> (Store, Vec<EndpointRecord>) {
    build_with(PODS_PER_NS)
}

/// The same cluster with `pods_per_ns` pods in each namespace (at most
/// [`PODS_PER_NS`], so addresses stay unique; at least 2, so there are
/// [`LOCALS`] pods for this node).
pub fn build_with(pods_per_ns: usize) -> (Store, Vec<EndpointRecord>) {
    assert!((2..=PODS_PER_NS).contains(&pods_per_ns), "pods per namespace: 2 to {PODS_PER_NS}");
    let mut s = Store::default();
    for (key, p) in pods(pods_per_ns) {
        s.pods.insert(key, p);
    }
    for ns in 0..NAMESPACES {
        let name = namespace_name(ns);
        s.namespaces.insert(name.clone(), namespace(ns));
        for app in 0..3 {
            let svc = service(ns, app, &format!("10.96.{}.{}", ns, app + 1));
            s.services.insert((name.clone(), format!("svc{app}")), svc);
        }
        for k in 0..POLICIES_PER_NS {
            let np = network_policy(ns, k, k);
            s.policies.insert((name.clone(), np.metadata.name.clone().unwrap()), np);
        }
    }
    // Locals: spread over namespaces, like a node of a big cluster.
    let mut locals = Vec::new();
    let all: Vec<_> = s.pods.keys().cloned().collect();
    let step = all.len() / LOCALS;
    for (j, key) in all.iter().step_by(step).take(LOCALS).enumerate() {
        let p = &s.pods[key];
        let ip = p.pod_ips[0].addr().unwrap();
        locals.push(local_record(1000 + j as u32, key, ip, "10.200.0.254".parse().unwrap()));
    }
    (s, locals)
}

/// The pods of [`build_with`]'s cluster as the API server holds them, by key.
pub fn pods(pods_per_ns: usize) -> std::collections::BTreeMap<(String, String), Pod> {
    let mut out = std::collections::BTreeMap::new();
    for ns in 0..NAMESPACES {
        for i in 0..pods_per_ns {
            let p = pod(ns, i, &pod_ip(ns, i), None);
            out.insert((namespace_name(ns), p.metadata.name.clone().unwrap()), p);
        }
    }
    out
}

pub fn namespace_name(ns: usize) -> String {
    format!("ns-{ns:03}")
}

/// Namespace `ns`: a team (of 10) and an environment (of [`ENVS`]).
pub fn namespace(ns: usize) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": namespace_name(ns), "labels": {
        "team": format!("team-{}", ns % 10), "env": ENVS[ns % 3]}}}))
    .unwrap()
}

/// The i-th pod of namespace `ns` (`app<i % 10>-<i>`), at `ip`, on `node`
/// when given: labels and named container ports by its app.
pub fn pod(ns: usize, i: usize, ip: &str, node: Option<&str>) -> Pod {
    let tiers = ["web", "api", "db", "cache", "worker"];
    let app = i % APPS_PER_NS;
    let ports = match app % 3 {
        0 => json!([{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]),
        1 => json!([{"name": "grpc", "containerPort": 50051}, {"name": "metrics", "containerPort": 9100}]),
        _ => json!([{"name": "http", "containerPort": 80}]),
    };
    let mut spec = json!({"containers": [{"name": "main", "ports": ports}]});
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    serde_json::from_value(json!({
        "metadata": {"name": format!("app{app}-{i}"), "namespace": namespace_name(ns), "uid": format!("{ns}-{i}"),
            "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": format!("app{app}"), "tier": tiers[app % tiers.len()],
                       "pod-template-hash": format!("h{app}"), "version": if i.is_multiple_of(20) { "v2" } else { "v1" }}},
        "spec": spec,
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]}}))
    .unwrap()
}

/// Service `svc<app>` of namespace `ns`.
pub fn service(ns: usize, app: usize, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": format!("svc{app}"), "namespace": namespace_name(ns)},
        "spec": {"clusterIP": cluster_ip}}))
    .unwrap()
}

/// NetworkPolicy `np-<n>` of namespace `ns`, of kind `k` of [`policy`].
pub fn network_policy(ns: usize, n: usize, k: usize) -> NetworkPolicy {
    let (_, spec) = policy(ns, k);
    serde_json::from_value(json!({"metadata": {"name": format!("np-{n}"), "namespace": namespace_name(ns),
        "uid": format!("np-{ns}-{n}"), "resourceVersion": "1"}, "spec": spec}))
    .unwrap()
}

/// The k-th policy of namespace ns: a realistic mix.
pub fn policy(ns: usize, k: usize) -> (String, serde_json::Value) {
    let app = |a: usize| json!({"matchLabels": {"app": format!("app{}", a % APPS_PER_NS)}});
    let spec = match k {
        0 => json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        1 => {
            json!({"podSelector": app(1), "ingress": [{"from": [{"podSelector": app(0)}], "ports": [{"port": 8080}, {"port": "grpc"}]}]})
        }
        2 => {
            json!({"podSelector": app(2), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", (ns + 1) % 10)}}, "podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "http"}]}]})
        }
        3 => {
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "db"]}]},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-000"}}}], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
                               {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}], "ports": [{"port": 443}]}]})
        }
        4 => {
            json!({"podSelector": app(3), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}], "ports": [{"port": "metrics"}]}]})
        }
        5 => {
            json!({"podSelector": app(4), "ingress": [{"from": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", 100 + ns % 50), "except": [format!("10.{}.1.0/24", 100 + ns % 50)]}}], "ports": [{"port": 30000, "endPort": 32767}]}]})
        }
        6 => {
            json!({"podSelector": app(5), "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": app(6)}, {"podSelector": app(7)}], "ports": [{"port": "http"}]}]})
        }
        7 => {
            json!({"podSelector": {"matchLabels": {"version": "v2"}}, "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}}]}]})
        }
        8 => {
            json!({"podSelector": app(8), "ingress": [{}], "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 5432}]}]})
        }
        _ => {
            json!({"podSelector": app(9), "ingress": [{"from": [{"podSelector": app(8)}, {"ipBlock": {"cidr": "192.168.0.0/16"}}], "ports": [{"port": 6379}, {"port": 7000, "endPort": 7100}]}]})
        }
    };
    (format!("np-{k}"), spec)
}

/// The k-th ClusterNetworkPolicy: a mix of guardrails (Admin) and
/// defaults (Baseline), by namespace labels, pods, ports and networks,
/// with priorities that collide now and then.
pub fn cluster_policy(k: usize) -> (String, serde_json::Value) {
    let team = |t: usize| json!({"matchLabels": {"team": format!("team-{}", t % 10)}});
    let env = |e: usize| json!({"matchLabels": {"env": ENVS[e % 3]}});
    let priority = (k * 7) % 1000;
    let spec = match k % 6 {
        0 => json!({"tier": "Admin", "priority": priority, "subject": {"namespaces": team(k)},
            "ingress": [{"name": "no-dev", "action": "Deny", "from": [{"namespaces": env(2)}]}]}),
        1 => json!({"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
            "ingress": [{"name": "monitoring", "action": "Accept", "from": [{"pods": {"namespaceSelector": team(k), "podSelector": {"matchLabels": {"tier": "worker"}}}}],
                         "protocols": [{"destinationNamedPort": "metrics"}]}]}),
        2 => {
            json!({"tier": "Admin", "priority": priority, "subject": {"pods": {"namespaceSelector": env(k), "podSelector": {"matchLabels": {"tier": "db"}}}},
            "egress": [{"name": "dns", "action": "Pass", "to": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ns-000"}}}], "protocols": [{"udp": {"destinationPort": {"number": 53}}}]},
                       {"name": "no-internet", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]})
        }
        3 => json!({"tier": "Baseline", "priority": priority, "subject": {"namespaces": env(k)},
            "ingress": [{"name": "same-env", "action": "Accept", "from": [{"namespaces": env(k)}]},
                        {"name": "others", "action": "Deny", "from": [{"namespaces": {}}]}]}),
        4 => json!({"tier": "Baseline", "priority": priority, "subject": {"namespaces": team(k)},
            "egress": [{"name": "ports", "action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 30000, "end": 32767}}}}]}]}),
        _ => json!({"tier": "Admin", "priority": priority, "subject": {"namespaces": team(k + 3)},
            "egress": [{"name": "blocked-nets", "action": "Deny", "to": [{"networks": [format!("10.{}.0.0/16", 100 + k % 50), "192.168.0.0/16"]}]}]}),
    };
    (format!("cnp-{k:03}"), spec)
}

/// Add `n` ClusterNetworkPolicies ([`cluster_policy`]) to `store`.
pub fn add_cluster_policies(store: &mut Store, n: usize) {
    for k in 0..n {
        let (name, spec) = cluster_policy(k);
        let cnp: weir_policyd::cluster_network_policy::ClusterNetworkPolicy = serde_json::from_value(
            json!({"metadata": {"name": name, "uid": format!("cnp-{k}"), "resourceVersion": "1"}, "spec": spec}),
        )
        .unwrap();
        store.cluster_policies.insert(name, cnp);
    }
}

/// CPU time of this thread: unlike wall time it does not count the time
/// other processes held the (shared, busy) cores.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Run f, returning its result, wall time and thread CPU time.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (w, c) = (Instant::now(), thread_cpu());
    let out = f();
    (out, w.elapsed(), thread_cpu() - c)
}

pub struct Series {
    pub wall: Vec<Duration>,
    pub cpu: Vec<Duration>,
}

impl Series {
    pub fn new() -> Self {
        Series { wall: Vec::new(), cpu: Vec::new() }
    }
    pub fn push(&mut self, w: Duration, c: Duration) {
        self.wall.push(w);
        self.cpu.push(c);
    }
    pub fn report(&self, what: &str) -> String {
        let (mut w, mut c) = (self.wall.clone(), self.cpu.clone());
        format!(
            "{what}, n={}: wall median {:.2} ms, p99 {:.2} ms, max {:.2} ms | cpu median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            w.len(),
            ms(median(&mut w)),
            ms(pct(&mut w, 0.99)),
            ms(*w.iter().max().unwrap()),
            ms(median(&mut c)),
            ms(pct(&mut c, 0.99)),
            ms(*c.iter().max().unwrap())
        )
    }
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).min(v.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Reset the peak RSS (`VmHWM`) to the current RSS (Linux >= 4.0), so a
/// later `VmHWM:` reading is the peak of what ran in between.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A `/proc/self/status` figure in KiB (`VmHWM:`, `VmRSS:`), 0 if absent.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The generated cluster in one line.
pub fn describe(store: &Store, locals: &[EndpointRecord], built_in: Duration) -> String {
    format!(
        "cluster: {} namespaces, {} pods, {} policies, {} cluster policies, {} services, {} local endpoints (built in {:.0} ms)",
        store.namespaces.len(),
        store.pods.len(),
        store.policies.len(),
        store.cluster_policies.len(),
        store.services.len(),
        locals.len(),
        ms(built_in)
    )
}

/// The endpoint record CNI ADD would write for pod `key` on host veth
/// `ifindex` (no interface exists: the benchmarks program maps only).
pub fn local_record(
    ifindex: u32,
    key: &(String, String),
    ip: std::net::IpAddr,
    gateway: std::net::IpAddr,
) -> EndpointRecord {
    EndpointRecord {
        container_id: format!("cid{ifindex}"),
        ifname: "eth0".into(),
        netns: format!("/run/netns/p{ifindex}"),
        network: "weir".into(),
        pod_namespace: key.0.clone(),
        pod_name: key.1.clone(),
        pod_uid: String::new(),
        host_ifname: format!("veth{ifindex}"),
        host_ifindex: ifindex,
        ips: vec![ip],
        mac: String::new(),
        gateways: vec![gateway],
    }
}

/// A benchmark's private bpffs root `/sys/fs/bpf/<prefix>-<pid>`, removed
/// on drop (every return path) and by a panic hook (release builds abort
/// on panic, so no drop runs).
pub struct BpffsRoot(pub std::path::PathBuf);

impl BpffsRoot {
    pub fn private(prefix: &str) -> BpffsRoot {
        let root = BpffsRoot(std::path::PathBuf::from(format!("/sys/fs/bpf/{prefix}-{}", std::process::id())));
        let path = root.0.clone();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = std::fs::remove_dir_all(&path);
            default_hook(info);
        }));
        root
    }
}

impl Drop for BpffsRoot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("could not remove {}: {e}", self.0.display());
            }
        }
    }
}
