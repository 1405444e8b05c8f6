//! Property tests: arbitrary-ish input never panics, results are
//! deterministic and equal to a fresh compile after any change, identities
//! are stable, and ipBlocks classify addresses exactly.

use super::*;
use crate::store::{Journaled, Key};
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn arb_label() -> impl Strategy<Value = (String, String)> {
    (prop::sample::select(vec!["app", "tier", "role", ""]), prop::sample::select(vec!["a", "b", "c", ""]))
        .prop_map(|(k, v)| (k.to_string(), v.to_string()))
}

fn arb_selector() -> impl Strategy<Value = Value> {
    let expr = (
        prop::sample::select(vec!["app", "tier", "kubernetes.io/metadata.name", ""]),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Bogus"]),
        prop::option::of(prop::collection::vec(prop::sample::select(vec!["a", "b", "x", "ns1"]), 0..3)),
    )
        .prop_map(|(k, op, vals)| match vals {
            Some(v) => json!({"key": k, "operator": op, "values": v}),
            None => json!({"key": k, "operator": op}),
        });
    (
        prop::collection::btree_map(
            prop::sample::select(vec!["app", "tier"]),
            prop::sample::select(vec!["a", "b"]),
            0..2,
        ),
        prop::collection::vec(expr, 0..2),
    )
        .prop_map(|(ml, me)| json!({"matchLabels": ml, "matchExpressions": me}))
}

fn arb_cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4, 0u8..=255, 16u8..=34).prop_map(|(a, b, l)| format!("10.{a}.{b}.0/{l}")),
        (0u16..4, 0u8..=130).prop_map(|(a, l)| format!("fd00:{a}::/{l}")),
        Just("garbage".to_string()),
        Just("10.0.0.1".to_string()),
        Just("0.0.0.0/0".to_string()),
    ]
}

fn arb_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_selector().prop_map(|s| json!({"podSelector": s})),
        arb_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (arb_selector(), arb_selector()).prop_map(|(a, b)| json!({"podSelector": a, "namespaceSelector": b})),
        (arb_cidr(), prop::collection::vec(arb_cidr(), 0..3))
            .prop_map(|(c, e)| json!({"ipBlock": {"cidr": c, "except": e}})),
        Just(json!({})),
        (arb_cidr(), arb_selector()).prop_map(|(c, s)| json!({"ipBlock": {"cidr": c}, "podSelector": s})),
    ]
}

fn arb_port() -> impl Strategy<Value = Value> {
    let proto = prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP", "tcp", "ICMP"]));
    let port = prop_oneof![
        Just(Value::Null),
        (-5i64..70000).prop_map(|p| json!(p)),
        prop::sample::select(vec!["http", "dns", "80", "Bad", ""]).prop_map(|s| json!(s)),
    ];
    let end = prop::option::of(-5i64..70000);
    (proto, port, end).prop_map(|(pr, p, e)| {
        let mut m = serde_json::Map::new();
        if let Some(pr) = pr {
            m.insert("protocol".into(), json!(pr));
        }
        if !p.is_null() {
            m.insert("port".into(), p);
        }
        if let Some(e) = e {
            m.insert("endPort".into(), json!(e));
        }
        Value::Object(m)
    })
}

fn arb_rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(arb_peer(), 0..3)),
        prop::option::of(prop::collection::vec(arb_port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut m = serde_json::Map::new();
            if let Some(p) = peers {
                m.insert(peer_key.into(), json!(p));
            }
            if let Some(p) = ports {
                m.insert("ports".into(), json!(p));
            }
            Value::Object(m)
        })
}

fn arb_policy() -> impl Strategy<Value = Value> {
    (
        prop::option::of(arb_selector()),
        prop::option::of(prop::collection::vec(prop::sample::select(vec!["Ingress", "Egress", "Other"]), 0..3)),
        prop::option::of(prop::collection::vec(arb_rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(arb_rule("to"), 0..3)),
    )
        .prop_map(|(sel, types, ing, eg)| {
            let mut m = serde_json::Map::new();
            if let Some(s) = sel {
                m.insert("podSelector".into(), s);
            }
            if let Some(t) = types {
                m.insert("policyTypes".into(), json!(t));
            }
            if let Some(i) = ing {
                m.insert("ingress".into(), json!(i));
            }
            if let Some(e) = eg {
                m.insert("egress".into(), json!(e));
            }
            Value::Object(m)
        })
}

#[derive(Debug, Clone)]
struct PodSpec {
    ns: usize,
    labels: Vec<(String, String)>,
    phase: &'static str,
    host_network: bool,
    ip_last: u8,
    local: bool,
    port: Option<(String, &'static str, i32)>,
    /// Deleted (a name keeps its place, so deleting renames no other pod).
    gone: bool,
}

fn arb_pod() -> impl Strategy<Value = PodSpec> {
    (
        0usize..3,
        prop::collection::vec(arb_label(), 0..3),
        prop::sample::select(vec!["Running", "Pending", "Succeeded", "Failed"]),
        prop::bool::weighted(0.1),
        0u8..40,
        any::<bool>(),
        prop::option::of((
            prop::sample::select(vec!["http", "dns"]).prop_map(String::from),
            prop::sample::select(vec!["TCP", "UDP"]),
            1i32..100,
        )),
    )
        .prop_map(|(ns, labels, phase, host_network, ip_last, local, port)| PodSpec {
            ns,
            labels,
            phase,
            host_network,
            ip_last,
            local,
            port,
            gone: false,
        })
}

/// Bring `f` to `to` as a watch would: only the objects that differ are
/// written, so the engine reads only those (the stores' journals) and
/// reuses what depends on kinds nothing was written to (their stamps).
fn update(f: &mut Fixture, to: Fixture) {
    let Fixture { store, locals } = to;
    let Store { namespaces, pods, services, policies, nodes, cluster_policies } = store;
    let gone: Vec<Key> = f.store.pods.keys().filter(|k| !pods.contains_key(*k)).cloned().collect();
    for k in &gone {
        f.store.pods.remove(k);
    }
    for (k, p) in pods.iter() {
        if f.store.pods.get(k) != Some(p) {
            f.store.pods.insert(k.clone(), p.clone());
        }
    }
    write_differences(&mut f.store.namespaces, namespaces);
    write_differences(&mut f.store.services, services);
    write_differences(&mut f.store.policies, policies);
    write_differences(&mut f.store.cluster_policies, cluster_policies);
    f.store.nodes = nodes;
    f.locals = locals;
}

fn write_differences<K: Ord + Clone, V: PartialEq + Clone>(into: &mut Journaled<K, V>, from: Journaled<K, V>) {
    let gone: Vec<K> = into.keys().filter(|k| !from.contains_key(*k)).cloned().collect();
    for k in &gone {
        into.remove(k);
    }
    for (k, v) in from.iter() {
        if into.get(k) != Some(v) {
            into.insert(k.clone(), v.clone());
        }
    }
}

fn build(pods: &[PodSpec], policies: &[(usize, Value)]) -> Fixture {
    let mut f = Fixture::default();
    for i in 0..3 {
        f.ns(&format!("ns{i}"), &[("tier", if i == 0 { "a" } else { "b" })]);
    }
    for (i, p) in pods.iter().enumerate().filter(|(_, p)| !p.gone) {
        let ns = format!("ns{}", p.ns);
        let name = format!("p{i}");
        let ports: Vec<Value> =
            p.port.iter().map(|(n, pr, num)| json!({"name": n, "protocol": pr, "containerPort": num})).collect();
        let ip = format!("10.0.0.{}", p.ip_last);
        f.pod_json(
            &ns,
            &name,
            json!({"metadata": {"labels": p.labels.iter().cloned().collect::<Labels>(), "uid": name},
                   "spec": {"hostNetwork": p.host_network, "containers": [{"name": "c", "ports": ports}]},
                   "status": {"phase": p.phase, "podIPs": [{"ip": ip}]}}),
        );
        if p.local {
            // Some records hold an address the status does not (yet): the
            // record's is the pod's here.
            let at = if i % 2 == 1 { format!("10.0.1.{}", p.ip_last) } else { ip };
            f.locals.push(record(&ns, &name, 100 + i as u32, vec![at.parse().unwrap()]));
        }
    }
    for (i, (ns, spec)) in policies.iter().enumerate() {
        // A deleted policy keeps its place, so the others keep their names.
        if spec.is_null() {
            continue;
        }
        if *ns == CLUSTER {
            f.cluster_policy(&format!("cnp{i}"), spec.clone());
            continue;
        }
        // Specs that do not deserialize are rejected by the API server before
        // they reach any store; skip them here too.
        let Ok(p) = serde_json::from_value::<NetworkPolicy>(
            json!({"metadata": {"namespace": format!("ns{ns}"), "name": format!("np{i}")}, "spec": spec}),
        ) else {
            continue;
        };
        f.store.policies.insert((format!("ns{ns}"), format!("np{i}")), p);
    }
    f
}

fn arb_cnp_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_selector().prop_map(|s| json!({"namespaces": s})),
        (arb_selector(), arb_selector()).prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
        Just(json!({})),
    ]
}

fn arb_cnp_peer(egress: bool) -> impl Strategy<Value = Value> {
    let nets = prop::collection::vec(
        prop_oneof![
            4 => (0u8..40, prop::sample::select(vec![24u8, 28, 30, 32])).prop_map(|(x, l)| format!("10.0.0.{x}/{l}")),
            1 => arb_cidr(),
        ],
        0..3,
    );
    prop_oneof![
        3 => arb_cnp_selector(),
        (if egress { 2 } else { 0 }) => nets.prop_map(|n| json!({"networks": n})),
        1 => Just(json!({"nodes": {}})),
    ]
}

fn arb_cnp_protocol() -> impl Strategy<Value = Value> {
    let port = prop_oneof![
        Just(json!({})),
        (0i32..100).prop_map(|n| json!({"destinationPort": {"number": n}})),
        (0i32..100, 0i32..100).prop_map(|(a, b)| json!({"destinationPort": {"range": {"start": a, "end": b}}})),
    ];
    (prop::sample::select(vec!["tcp", "udp", "sctp", "destinationNamedPort"]), port).prop_map(|(k, p)| {
        if k == "destinationNamedPort" {
            json!({k: if p.get("destinationPort").is_some() { "dns" } else { "http" }})
        } else {
            json!({k: p})
        }
    })
}

fn arb_cnp_rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Accept", "Accept", "Deny", "Pass", "Drop"]),
        prop::collection::vec(arb_cnp_peer(peer_key == "to"), 0..3),
        prop::option::of(prop::collection::vec(arb_cnp_protocol(), 0..3)),
    )
        .prop_map(move |(action, peers, protocols)| {
            let mut m = serde_json::Map::new();
            m.insert("action".into(), json!(action));
            m.insert(peer_key.into(), json!(peers));
            if let Some(p) = protocols {
                m.insert("protocols".into(), json!(p));
            }
            Value::Object(m)
        })
}

/// A ClusterNetworkPolicy spec; priorities from a small set so that equal
/// priorities happen.
fn arb_cluster_policy() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Admin", "Admin", "Baseline", "Other"]),
        prop::sample::select(vec![0, 1, 1, 2, 1000, 1001]),
        arb_cnp_selector(),
        prop::collection::vec(arb_cnp_rule("from"), 0..3),
        prop::collection::vec(arb_cnp_rule("to"), 0..3),
    )
        .prop_map(|(tier, priority, subject, ingress, egress)| {
            json!({"tier": tier, "priority": priority, "subject": subject, "ingress": ingress, "egress": egress})
        })
}

/// Pods, and policies by namespace index: 0-2 a NetworkPolicy of `ns<i>`,
/// [`CLUSTER`] a ClusterNetworkPolicy.
fn arb_world() -> impl Strategy<Value = (Vec<PodSpec>, Vec<(usize, Value)>)> {
    let policy = prop_oneof![3 => (0usize..3, arb_policy()), 1 => arb_cluster_policy().prop_map(|c| (CLUSTER, c))];
    (prop::collection::vec(arb_pod(), 0..12), prop::collection::vec(policy, 0..5))
}

const CLUSTER: usize = 3;

/// Valid selectors only, most of them matching something.
fn arb_simple_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(json!({})),
        1 => prop::sample::select(vec!["a", "b", "c"]).prop_map(|v| json!({"matchLabels": {"app": v}})),
        1 => prop::sample::select(vec!["a", "b"]).prop_map(|v| json!({"matchLabels": {"tier": v}})),
    ]
}

fn arb_dense_ports() -> impl Strategy<Value = Option<Vec<Value>>> {
    let one = prop_oneof![
        prop::sample::select(vec!["tcp", "udp"]).prop_map(|k| json!({k: {}})),
        (prop::sample::select(vec!["tcp", "udp"]), prop::sample::select(vec![53, 80, 81]))
            .prop_map(|(k, n)| json!({k: {"destinationPort": {"number": n}}})),
        (prop::sample::select(vec!["tcp", "udp"]), 50i32..80, 1i32..40)
            .prop_map(|(k, a, w)| json!({k: {"destinationPort": {"range": {"start": a, "end": a + w}}}})),
        Just(json!({"destinationNamedPort": "http"})),
    ];
    prop::option::of(prop::collection::vec(one, 1..3))
}

/// A ClusterNetworkPolicy whose parts are nearly always valid, so that
/// tiers, priorities, Pass and wide-over-narrow keys meet often.
fn arb_dense_cnp() -> impl Strategy<Value = Value> {
    let peer = |egress: bool| {
        prop_oneof![
            3 => arb_simple_selector().prop_map(|s| json!({"namespaces": s})),
            3 => (arb_simple_selector(), arb_simple_selector()).prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
            (if egress { 2 } else { 0 }) => (0u8..40, prop::sample::select(vec![26u8, 30, 32])).prop_map(|(x, l)| json!({"networks": [format!("10.0.0.{x}/{l}")]})),
        ]
    };
    let rule = move |key: &'static str| {
        (
            prop::sample::select(vec!["Accept", "Deny", "Pass"]),
            prop::collection::vec(peer(key == "to"), 1..3),
            arb_dense_ports(),
        )
            .prop_map(move |(a, peers, protocols)| {
                let mut r = json!({"action": a, key: peers});
                if let Some(p) = protocols {
                    r["protocols"] = json!(p);
                }
                r
            })
    };
    (
        prop::sample::select(vec!["Admin", "Baseline"]),
        prop::sample::select(vec![1, 2, 3]),
        prop_oneof![arb_simple_selector().prop_map(|s| json!({"namespaces": s})), arb_simple_selector().prop_map(|s| json!({"pods": {"podSelector": s}}))],
        prop::collection::vec(rule("from"), 0..3),
        prop::collection::vec(rule("to"), 0..3),
    )
        .prop_map(|(tier, priority, subject, ingress, egress)| json!({"tier": tier, "priority": priority, "subject": subject, "ingress": ingress, "egress": egress}))
}

/// A NetworkPolicy of valid parts with ports that overlap the cluster ones.
fn arb_dense_np() -> impl Strategy<Value = Value> {
    let ports = prop::option::of(prop::collection::vec(
        (prop::sample::select(vec!["TCP", "UDP"]), prop::sample::select(vec![53, 80, 81]))
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
        1..3,
    ));
    let rule = move |key: &'static str| {
        (
            prop::collection::vec(
                arb_simple_selector().prop_map(|s| json!({"namespaceSelector": {}, "podSelector": s})),
                1..3,
            ),
            ports.clone(),
        )
            .prop_map(move |(peers, ports)| {
                let mut r = json!({key: peers});
                if let Some(p) = ports {
                    r["ports"] = json!(p);
                }
                r
            })
    };
    (arb_simple_selector(), prop::collection::vec(rule("from"), 0..2), prop::collection::vec(rule("to"), 0..2))
        .prop_map(|(sel, ing, eg)| json!({"podSelector": sel, "policyTypes": ["Ingress", "Egress"], "ingress": ing, "egress": eg}))
}

/// A running pod labelled app=a|b|c with a named UDP port.
fn arb_dense_pod() -> impl Strategy<Value = PodSpec> {
    (0usize..3, prop::sample::select(vec!["a", "b", "c"]), 0u8..40, any::<bool>()).prop_map(
        |(ns, app, ip_last, local)| PodSpec {
            ns,
            labels: vec![("app".to_string(), app.to_string())],
            phase: "Running",
            host_network: false,
            ip_last,
            local,
            port: Some(("http".to_string(), "UDP", 80)),
            gone: false,
        },
    )
}

fn arb_tiered_world() -> impl Strategy<Value = (Vec<PodSpec>, Vec<(usize, Value)>)> {
    let policy = prop_oneof![2 => arb_dense_cnp().prop_map(|c| (CLUSTER, c)), 1 => (0usize..3, arb_dense_np())];
    (prop::collection::vec(arb_dense_pod(), 1..8), prop::collection::vec(policy, 1..5))
}

/// A change of pods, namespace labels or one policy's spec: what the
/// endpoint stage patches by identity where it can.
#[derive(Debug, Clone)]
enum PodChange {
    /// Policy `.0`'s spec becomes `.1` if it is a cluster policy, else `.2`.
    EditPolicy(usize, Value, Value),
    /// Policy `.0` is deleted, or created again with such a spec.
    TogglePolicy(usize, Value, Value),
    Relabel(usize, &'static str),
    /// Its phase becomes Failed: it leaves the identities and the ipcache.
    Finish(usize),
    Add(PodSpec),
    FlipNamespaceTier(usize),
    /// Its named port changes: its identity's named ports may too.
    Port(usize, Option<(String, &'static str, i32)>),
    /// Deleted, or created again under its name.
    Remove(usize),
    /// Its endpoint record comes or goes: nothing of the Pod is written.
    Local(usize),
    HostNetwork(usize),
    /// It moves to another address (which another pod may claim).
    Address(usize, u8),
}

fn arb_pod_change() -> impl Strategy<Value = PodChange> {
    prop_oneof![
        3 => (0usize..8, prop::sample::select(vec!["a", "b", "c", "d"])).prop_map(|(i, app)| PodChange::Relabel(i, app)),
        1 => (0usize..8).prop_map(PodChange::Finish),
        2 => arb_dense_pod().prop_map(PodChange::Add),
        1 => (0usize..3).prop_map(PodChange::FlipNamespaceTier),
        3 => (0usize..5, arb_dense_cnp(), arb_dense_np()).prop_map(|(i, c, n)| PodChange::EditPolicy(i, c, n)),
        1 => (0usize..5, arb_dense_cnp(), arb_dense_np()).prop_map(|(i, c, n)| PodChange::TogglePolicy(i, c, n)),
        2 => (0usize..8, prop::option::of((prop::sample::select(vec!["http", "dns"]).prop_map(String::from), prop::sample::select(vec!["TCP", "UDP"]), 79i32..82)))
            .prop_map(|(i, port)| PodChange::Port(i, port)),
        1 => (0usize..8).prop_map(PodChange::Remove),
        1 => (0usize..8).prop_map(PodChange::Local),
        1 => (0usize..8).prop_map(PodChange::HostNetwork),
        1 => (0usize..8, 0u8..12).prop_map(|(i, ip)| PodChange::Address(i, ip)),
    ]
}

/// NetworkPolicies crowded into two namespaces (so that audit and enforced
/// ones select the same pods), and some cluster policies.
fn arb_audit_world() -> impl Strategy<Value = (Vec<PodSpec>, Vec<(usize, Value)>)> {
    let policy = prop_oneof![1 => arb_dense_cnp().prop_map(|c| (CLUSTER, c)), 3 => (0usize..2, arb_dense_np())];
    (prop::collection::vec(arb_dense_pod(), 1..8), prop::collection::vec(policy, 2..6))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn compile_never_panics_and_is_deterministic((pods, pols) in arb_world()) {
        let f = build(&pods, &pols);
        let a = f.compile();
        let b = f.compile();
        prop_assert_eq!(&a, &b);
        // Every policy value names a known rule; every class has entries or is the hole marker.
        for v in a.policy.values() {
            prop_assert!(v.rule != 0 || v.admin.rank != u32::MAX || v.baseline.rank != u32::MAX, "an entry that says nothing");
            for rule in [v.rule, v.admin.rule, v.baseline.rule].into_iter().filter(|r| *r != 0) {
                prop_assert!(a.rule(rule).is_some());
            }
        }
        for k in a.policy.keys() {
            prop_assert!(a.endpoints.contains_key(&k.endpoint));
            prop_assert!(k.port.is_none() || k.protocol.is_some());
        }
        for c in a.cidr.values() {
            prop_assert!(*c == CIDR_NO_CLASS || a.policy.keys().any(|k| k.identity == *c));
        }
    }

    #[test]
    fn incremental_compile_equals_fresh_compile(
        (pods, pols) in arb_world(),
        (pods2, pols2) in arb_world(),
        keep in prop::collection::vec(any::<bool>(), 12),
    ) {
        // Second world: a mix of the first (kept items) and new items, so
        // caches see both survivors and changes.
        let mut p2: Vec<PodSpec> = pods.iter().zip(keep.iter().cycle()).filter(|(_, k)| **k).map(|(p, _)| p.clone()).collect();
        p2.extend(pods2);
        let mut q2: Vec<(usize, Value)> = pols.iter().zip(keep.iter().cycle()).filter(|(_, k)| **k).map(|(p, _)| p.clone()).collect();
        q2.extend(pols2);
        let f1 = build(&pods, &pols);
        let f2 = build(&p2, &q2);
        let mut e = Engine::new();
        let d1 = e.compile(&f1.store, &f1.locals);
        let d2 = e.compile(&f2.store, &f2.locals);
        let d1_again = e.compile(&f1.store, &f1.locals);
        // Identity numbers depend on allocation history; compare the
        // results modulo renumbering by comparing them as judged.
        let fresh2 = Engine::new().compile(&f2.store, &f2.locals);
        prop_assert_eq!(canonical(&d2), canonical(&fresh2));
        prop_assert_eq!(canonical(&d1), canonical(&d1_again));
        // And with the same history, the numbers themselves agree.
        let mut e2 = Engine::new();
        e2.compile(&f1.store, &f1.locals);
        prop_assert_eq!(&d2, &e2.compile(&f2.store, &f2.locals));
    }

    #[test]
    fn patched_endpoints_equal_recompiled_ones_after_any_changes(
        (pods, pols) in arb_tiered_world(),
        changes in prop::collection::vec((arb_pod_change(), prop::bool::weighted(0.3)), 1..8),
    ) {
        let world = |pods: &[PodSpec], pols: &[(usize, Value)], tiers: &[&str; 3]| {
            let mut f = build(pods, pols);
            for (i, t) in tiers.iter().enumerate() {
                f.ns(&format!("ns{i}"), &[("tier", t)]);
            }
            f
        };
        let (mut pods, mut pols, mut tiers) = (pods, pols, ["a", "b", "b"]);
        let (mut patched, mut recompiled) = (Engine::new(), Engine::without_patching());
        // One store, written as a watch writes it (see `update`).
        let mut f = world(&pods, &pols, &tiers);
        prop_assert_eq!(patched.compile(&f.store, &f.locals), recompiled.compile(&f.store, &f.locals));
        // A sliced step compiles one endpoint and leaves the rest pending
        // into the next change; after one, compare as judged only (the
        // numbering follows the order endpoints were compiled in).
        let one_at_a_time = Slice { budget: Some(1), first: BTreeSet::new() };
        let mut sliced_before = false;
        // The flow log's names, patched by what each compile moved.
        let mut names = crate::flows::record::PodNames::default();
        let mut named: BTreeSet<std::net::IpAddr> = BTreeSet::new();
        for (change, sliced) in changes {
            match change {
                PodChange::Relabel(i, app) => {
                    let n = pods.len();
                    pods[i % n].labels = vec![("app".to_string(), app.to_string())];
                }
                PodChange::Finish(i) => {
                    let n = pods.len();
                    pods[i % n].phase = "Failed";
                }
                PodChange::Add(p) => pods.push(p),
                PodChange::FlipNamespaceTier(i) => tiers[i] = if tiers[i] == "a" { "b" } else { "a" },
                PodChange::Port(i, port) => {
                    let n = pods.len();
                    pods[i % n].port = port;
                }
                PodChange::Remove(i) => {
                    let n = pods.len();
                    pods[i % n].gone = !pods[i % n].gone;
                }
                PodChange::Local(i) => {
                    let n = pods.len();
                    pods[i % n].local = !pods[i % n].local;
                }
                PodChange::HostNetwork(i) => {
                    let n = pods.len();
                    pods[i % n].host_network = !pods[i % n].host_network;
                }
                PodChange::Address(i, ip) => {
                    let n = pods.len();
                    pods[i % n].ip_last = ip;
                }
                PodChange::EditPolicy(i, cnp, np) => {
                    let n = pols.len();
                    let p = &mut pols[i % n];
                    if !p.1.is_null() {
                        p.1 = if p.0 == CLUSTER { cnp } else { np };
                    }
                }
                PodChange::TogglePolicy(i, cnp, np) => {
                    let n = pols.len();
                    let p = &mut pols[i % n];
                    p.1 = match (p.1.is_null(), p.0 == CLUSTER) {
                        (false, _) => Value::Null,
                        (true, true) => cnp,
                        (true, false) => np,
                    };
                }
            }
            update(&mut f, world(&pods, &pols, &tiers));
            let d = if sliced {
                patched.compile_slice(&f.store, &f.locals, &one_at_a_time)
            } else {
                patched.compile(&f.store, &f.locals)
            };
            let whole = recompiled.compile(&f.store, &f.locals);
            sliced_before |= sliced;
            if d.pending.is_empty() {
                if !sliced_before {
                    // Same history, same numbers: equal to the entry.
                    prop_assert_eq!(&d, &whole);
                }
                let fresh = Engine::new().compile(&f.store, &f.locals);
                prop_assert_eq!(canonical(&d), canonical(&fresh));
                // Rule ids are engine-local: the table compared by what each rule is.
                let table = |d: &Desired| {
                    let mut v: Vec<String> = d.rules.iter().map(described).collect();
                    v.sort();
                    v
                };
                prop_assert_eq!(table(&d), table(&fresh));
            }
            let moved = patched.take_pod_names();
            named.extend(moved.names.iter().map(|(ip, _)| *ip));
            names.patch(moved);
            let mut fresh = Engine::new();
            fresh.compile(&f.store, &f.locals);
            let all: BTreeMap<_, _> = fresh.take_pod_names().names.into_iter().collect();
            for ip in named.iter().chain(all.keys()) {
                prop_assert_eq!(names.get(ip), all.get(ip).and_then(|k| k.as_ref()), "address {}", ip);
            }
        }
        // Whatever was left pending, the slices finish equal to a fresh compile.
        let mut d = patched.compile_slice(&f.store, &f.locals, &one_at_a_time);
        for _ in 0..64 {
            if d.pending.is_empty() {
                break;
            }
            d = patched.compile_slice(&f.store, &f.locals, &one_at_a_time);
        }
        prop_assert!(d.pending.is_empty());
        prop_assert_eq!(canonical(&d), canonical(&Engine::new().compile(&f.store, &f.locals)));
    }

    #[test]
    fn identities_stay_put_while_their_labels_exist((pods, _pols) in arb_world(), extra in prop::collection::vec(arb_pod(), 0..6)) {
        let f1 = build(&pods, &[]);
        let mut all = pods.clone();
        all.extend(extra);
        let f2 = build(&all, &[]);
        let mut e = Engine::new();
        let d1 = e.compile(&f1.store, &f1.locals);
        let d2 = e.compile(&f2.store, &f2.locals);
        for (id, l) in d1.identities.iter() {
            if let Some((id2, _)) = d2.identities.iter().find(|(_, l2)| *l2 == l) {
                prop_assert_eq!(id, id2);
            }
        }
        // Distinct label sets, distinct numbers.
        let mut seen = std::collections::HashSet::new();
        for l in d2.identities.values() {
            prop_assert!(seen.insert(l.clone()));
        }
    }

    /// The compiled maps, read the dataplane's way, allow exactly what the
    /// policy text allows, on every question the input makes worth asking.
    #[test]
    fn maps_allow_exactly_what_the_policy_text_says((pods, pols) in arb_world()) {
        let f = build(&pods, &pols);
        let d = f.compile();
        let wrong = reference::mismatches(&f.store, &f.locals, &d);
        let shown: Vec<String> = wrong.iter().take(5).map(ToString::to_string).collect();
        prop_assert!(wrong.is_empty(), "{} questions answered differently, e.g.\n{}", wrong.len(), shown.join("\n"));
    }

    /// The same with cluster policies of valid parts dense enough that
    /// tiers, priorities, Pass and wide keys over narrow ones meet.
    #[test]
    fn tiered_maps_decide_exactly_what_the_policy_text_says((pods, pols) in arb_tiered_world()) {
        let f = build(&pods, &pols);
        let d = f.compile();
        let wrong = reference::mismatches(&f.store, &f.locals, &d);
        let shown: Vec<String> = wrong.iter().take(5).map(ToString::to_string).collect();
        prop_assert!(wrong.is_empty(), "{} questions answered differently, e.g.\n{}", wrong.len(), shown.join("\n"));
    }

    /// Audit mode changes no verdict and reports exactly the flows that
    /// enforcing its policies would drop, whatever mix of enforced, audit
    /// and cluster policies selects the endpoints.
    #[test]
    fn audit_policies_change_no_verdict_and_report_what_enforcing_them_drops(
        (pods, pols) in arb_audit_world(),
        (pods2, pols2) in arb_world(),
        audit in prop::collection::vec(any::<bool>(), 12),
    ) {
        for (pods, pols) in [(pods, pols), (pods2, pols2)] {
            let mut f = build(&pods, &pols);
            let audited: Vec<crate::store::Key> = f.store.policies.keys().zip(audit.iter().cycle()).filter(|(_, a)| **a).map(|(k, _)| k.clone()).collect();
            for (ns, name) in &audited {
                f.mode(ns, name, Some("audit"));
            }
            let d = f.compile();
            let mut without = f.clone();
            let mut enforced = f.clone();
            for k in &audited {
                without.store.policies.remove(k);
                enforced.mode(&k.0, &k.1, None);
            }
            let wrong = reference::audit_mismatches(&f.store, &f.locals, &d, &without.compile(), &enforced.compile());
            prop_assert!(wrong.is_empty(), "{} questions answered wrongly, e.g.\n{}", wrong.len(), wrong[..wrong.len().min(5)].join("\n"));
            // And the policy text (which leaves audit policies out) agrees.
            let wrong = reference::mismatches(&f.store, &f.locals, &d);
            prop_assert!(wrong.is_empty(), "{} questions answered differently", wrong.len());
        }
    }

    /// ipBlocks through the whole engine: an address is allowed iff some
    /// block contains it and none of that block's excepts do, judged by LPM
    /// on the produced cidr map.
    #[test]
    fn ip_blocks_classify_addresses_like_brute_force(
        blocks in prop::collection::vec(((0u32..4, 22u8..=30), prop::collection::vec((0u32..64, 24u8..=32), 0..4)), 1..5),
    ) {
        let mut peers = Vec::new();
        let mut reference: Vec<(IpNet, Vec<IpNet>)> = Vec::new();
        for ((hi, len), excepts) in &blocks {
            let cidr = IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (hi << 8))), *len).unwrap().trunc();
            let ex: Vec<IpNet> = excepts
                .iter()
                .map(|(lo, l)| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (lo << 4))), *l).unwrap().trunc())
                .filter(|e| cidr.contains(e) && *e != cidr)
                .collect();
            peers.push(json!({"ipBlock": {"cidr": cidr.to_string(), "except": ex.iter().map(|e| e.to_string()).collect::<Vec<_>>()}}));
            reference.push((cidr, ex));
        }
        let mut f = Fixture::default();
        f.pod("x", "a", &[], "192.168.0.1").local("x", "a", 1);
        f.policy("x", "p", json!({"ingress": [{"from": peers}]}));
        let d = f.compile();
        prop_assert!(d.diagnostics.is_empty());
        for x in 0u32..0x400 {
            let addr = Ipv4Addr::from(0x0a00_0000 | x).to_string();
            let a: IpAddr = addr.parse().unwrap();
            let expect = reference.iter().any(|(c, ex)| c.contains(&a) && !ex.iter().any(|e| e.contains(&a)));
            prop_assert_eq!(judge(&d, 1, Ingress, &addr, TCP, 80), expect, "address {}", addr);
        }
    }
}

/// What a rule is, without its engine-local id.
fn described(r: &RuleInfo) -> String {
    format!("{}/{} {:?} {} {:?}", r.namespace, r.name, r.direction, r.rule_index, r.peer_index)
}

/// A Desired with identity numbers replaced by their labels, to compare
/// results of engines with different allocation histories.
pub(super) fn canonical(d: &Desired) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let name = |id: u32| match d.identities.get(&id) {
        Some(l) => format!("{}:{:?}", l.namespace, l.labels),
        None => id.to_string(),
    };
    let mut ipc: Vec<String> =
        d.ipcache.iter().map(|(n, e)| format!("{n} {} {} {}", name(e.identity), e.endpoint, e.service)).collect();
    let mut eps: Vec<String> = d
        .endpoints
        .iter()
        .map(|(i, s)| format!("{i} {} {} {}", name(s.identity), s.ingress_isolated, s.egress_isolated))
        .collect();
    // Classes and rule ids are engine-local numbers too: describe by content.
    let class_of = |c: u32| -> String {
        let mut v: Vec<String> = d
            .policy
            .iter()
            .filter(|(k, _)| k.identity == c)
            .map(|(k, _)| format!("{} {:?} {:?} {:?}", k.endpoint, k.direction, k.protocol, k.port))
            .collect();
        v.sort();
        v.join(",")
    };
    let rule = |r: u32| d.rule(r).map(described).unwrap_or_default();
    let mut pol: Vec<String> = d
        .policy
        .iter()
        .map(|(k, v)| {
            let peer =
                if k.identity >= ID_FIRST_CIDR { format!("class[{}]", class_of(k.identity)) } else { name(k.identity) };
            format!("{} {peer} {:?} {:?} {:?} {}", k.endpoint, k.direction, k.protocol, k.port, rule(v.rule))
        })
        .collect();
    let mut cidr: Vec<String> = d
        .cidr
        .iter()
        .map(|(k, c)| {
            format!(
                "{} {:?} {} {}",
                k.endpoint,
                k.direction,
                k.net,
                if *c == CIDR_NO_CLASS { "hole".into() } else { class_of(*c) }
            )
        })
        .collect();
    ipc.sort();
    eps.sort();
    pol.sort();
    cidr.sort();
    (ipc, eps, pol, cidr)
}
