//! ClusterNetworkPolicy: the tiers' order, actions, priorities and bad
//! input, judged as the dataplane judges the compiled maps (the reference's
//! reading of bpf/progs/policy.h), and by `explain`, which must agree.

use super::super::explain::{End, Flow};
use super::super::reference;
use super::*;

const XA: u32 = 10;

fn base() -> Fixture {
    Fixture::two_teams(XA)
}

const XB: &str = "10.0.0.2";
const YA: &str = "10.0.1.1";
const YB: &str = "10.0.1.2";

fn pod_key(addr: &str) -> Option<(String, String)> {
    let (ns, n) = match addr {
        "10.0.0.1" => ("x", "a"),
        XB => ("x", "b"),
        YA => ("y", "a"),
        YB => ("y", "b"),
        _ => return None,
    };
    Some((ns.to_string(), n.to_string()))
}

/// x/a's verdict in `dir` against `peer`, by the maps; checked against
/// `explain` by rule and by map.
fn judge(f: &Fixture, dir: Direction, peer: &str, proto: u8, port: u16) -> bool {
    let mut engine = Engine::new();
    let d = engine.compile(&f.store, &f.locals);
    let by_maps = reference::judge(&d, XA, dir, peer.parse().unwrap(), proto, port);
    let me = End { addr: "10.0.0.1".parse().unwrap(), pod: pod_key("10.0.0.1") };
    let them = End { addr: peer.parse().unwrap(), pod: pod_key(peer) };
    let flow = match dir {
        Ingress => Flow { src: them, dst: me, protocol: proto, port },
        Egress => Flow { src: me, dst: them, protocol: proto, port },
    };
    let e = engine.explain(&f.store, &flow);
    let side = if dir == Ingress { &e.ingress } else { &e.egress };
    assert_eq!(side.allowed, by_maps, "explain by rule vs maps, {dir:?} {peer} {proto}/{port}: {}", side.reason);
    assert_eq!(side.maps.as_ref().unwrap().allowed, by_maps, "explain by map vs maps, {dir:?} {peer}");
    by_maps
}

fn admin(priority: i32, subject: Value, ingress: Value, egress: Value) -> Value {
    json!({"tier": "Admin", "priority": priority, "subject": subject, "ingress": ingress, "egress": egress})
}

fn baseline(priority: i32, subject: Value, ingress: Value, egress: Value) -> Value {
    json!({"tier": "Baseline", "priority": priority, "subject": subject, "ingress": ingress, "egress": egress})
}

fn x_a() -> Value {
    json!({"pods": {"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"app": "a"}}}})
}

fn from_ns(team: &str, action: &str) -> Value {
    json!({"action": action, "from": [{"namespaces": {"matchLabels": {"team": team}}}]})
}

#[test]
fn admin_deny_overrides_a_network_policy_allow() {
    let mut f = base();
    f.policy("x", "allow-all-in", json!({"podSelector": {}, "ingress": [{}]}));
    assert!(judge(&f, Ingress, YA, TCP, 80));
    f.cluster_policy("deny-y", admin(10, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    assert!(!judge(&f, Ingress, YA, TCP, 80), "Admin Deny beats the NetworkPolicy allow");
    assert!(judge(&f, Ingress, XB, TCP, 80), "others still allowed by the NetworkPolicy");
    let d = f.compile();
    assert!(d.endpoints[&XA].ingress_tiered && !d.endpoints[&XA].egress_tiered);
}

#[test]
fn admin_accept_overrides_network_policy_isolation() {
    let mut f = base();
    f.policy("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    assert!(!judge(&f, Ingress, YA, TCP, 80));
    f.cluster_policy("accept-y", admin(3, x_a(), json!([from_ns("y", "Accept")]), json!([])));
    assert!(judge(&f, Ingress, YA, TCP, 80));
    assert!(!judge(&f, Ingress, XB, TCP, 80), "x/b is not accepted: the NetworkPolicy decides");
}

#[test]
fn pass_hands_the_flow_to_network_policy_then_baseline() {
    let mut f = base();
    f.cluster_policy("pass-y", admin(1, x_a(), json!([from_ns("y", "Pass")]), json!([])));
    f.cluster_policy("deny-y-later", admin(2, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    f.cluster_policy("baseline-deny", baseline(1, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    // Pass skips the later Admin Deny; no NetworkPolicy; Baseline denies.
    assert!(!judge(&f, Ingress, YA, TCP, 80));
    // A NetworkPolicy selecting x/a decides for passed flows.
    f.policy(
        "x",
        "allow-ya",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"app": "a"}}}]}]}),
    );
    assert!(judge(&f, Ingress, YA, TCP, 80), "passed, then allowed by NetworkPolicy over the Baseline Deny");
    assert!(!judge(&f, Ingress, YB, TCP, 80), "passed, then isolated by NetworkPolicy");
    assert!(!judge(&f, Ingress, XB, TCP, 80), "no cluster rule: NetworkPolicy isolates");
}

#[test]
fn baseline_deny_is_overridden_by_a_network_policy_allow() {
    let mut f = base();
    f.cluster_policy("baseline", baseline(50, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    assert!(!judge(&f, Ingress, YA, TCP, 80));
    assert!(judge(&f, Ingress, XB, TCP, 80), "the Baseline rule does not match x/b");
    f.policy("x", "allow-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}));
    assert!(judge(&f, Ingress, YA, TCP, 80));
}

#[test]
fn lower_priority_first_and_updates_take_effect() {
    let mut f = base();
    f.cluster_policy("accept", admin(5, x_a(), json!([from_ns("y", "Accept")]), json!([])));
    f.cluster_policy("deny", admin(10, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    assert!(judge(&f, Ingress, YA, TCP, 80));
    f.cluster_policy("deny", admin(1, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    assert!(!judge(&f, Ingress, YA, TCP, 80), "the Deny moved ahead");
    // Equal priorities: the API leaves the choice open; Weir's is Deny.
    f.cluster_policy("deny", admin(5, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    assert!(!judge(&f, Ingress, YA, TCP, 80));
}

#[test]
fn rules_apply_in_order_and_a_wider_rule_reaches_narrower_keys() {
    let mut f = base();
    let rules = json!([
        {"action": "Accept", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
        {"action": "Deny", "from": [{"namespaces": {}}]},
    ]);
    f.cluster_policy("ordered", admin(7, x_a(), rules, json!([])));
    assert!(judge(&f, Ingress, YA, TCP, 80));
    assert!(!judge(&f, Ingress, YA, TCP, 81));
    assert!(!judge(&f, Ingress, YA, UDP, 80));
    // A Deny on every port of a pod peer, and a NetworkPolicy allow on one
    // port of the same peer: the narrower key must carry the Deny too.
    let mut f = base();
    f.policy(
        "x",
        "allow-80",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}]}),
    );
    f.cluster_policy("deny-y", admin(1, x_a(), json!([from_ns("y", "Deny")]), json!([])));
    assert!(!judge(&f, Ingress, YA, TCP, 80));
    assert!(judge(&f, Ingress, XB, TCP, 80));
    assert!(!judge(&f, Ingress, XB, TCP, 81));
    // Wider keys of every width reach a single port: a Deny on a block of
    // two ports (80-81), of sixteen (80-95), or on every TCP port, ahead of
    // an Accept on port 80 of the same peer.
    for deny in [json!({"range": {"start": 80, "end": 81}}), json!({"range": {"start": 80, "end": 95}}), json!(null)] {
        let mut f = base();
        let tcp = if deny.is_null() { json!({}) } else { json!({"destinationPort": deny}) };
        let rules = json!([
            {"action": "Deny", "from": [{"namespaces": {}}], "protocols": [{"tcp": tcp}]},
            {"action": "Accept", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
        ]);
        f.cluster_policy("block", admin(7, x_a(), rules, json!([])));
        assert!(!judge(&f, Ingress, YA, TCP, 80), "{tcp}");
        assert!(judge(&f, Ingress, YA, UDP, 80), "{tcp}");
    }
}

#[test]
fn port_ranges_and_named_ports() {
    let mut f = base();
    f.pod_ports(
        "y",
        "web",
        &[("app", "web")],
        "10.0.1.9",
        json!([{"name": "http", "containerPort": 8080, "protocol": "UDP"}]),
    );
    let egress = json!([
        {"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "http"}]},
        {"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8999}}}}]},
    ]);
    f.cluster_policy("out", admin(2, x_a(), json!([]), egress));
    assert!(judge(&f, Egress, "10.0.1.9", UDP, 8080), "the named port, with its own protocol");
    assert!(!judge(&f, Egress, "10.0.1.9", TCP, 8080), "TCP 8080 is in the denied range");
    assert!(!judge(&f, Egress, YA, TCP, 8999));
    assert!(judge(&f, Egress, YA, TCP, 9000));
    assert!(judge(&f, Egress, YA, UDP, 8080), "y/a has no port named http: no rule matches");
}

#[test]
fn networks_match_pod_addresses_and_the_outside() {
    let mut f = base();
    let egress = json!([
        {"action": "Deny", "to": [{"networks": [format!("{YA}/32"), "192.0.2.0/24"]}]},
        {"action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}]},
    ]);
    f.cluster_policy("nets", admin(0, x_a(), json!([]), egress));
    f.policy("x", "deny-out", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    assert!(!judge(&f, Egress, YA, TCP, 80), "a pod IP in networks");
    assert!(judge(&f, Egress, YB, TCP, 80), "accepted over the NetworkPolicy isolation");
    assert!(!judge(&f, Egress, "192.0.2.9", TCP, 80));
    assert!(!judge(&f, Egress, "198.51.100.1", TCP, 80), "no cluster rule: the NetworkPolicy denies");
}

#[test]
fn a_subject_by_namespace_selects_every_pod_there_and_follows_labels() {
    let mut f = base();
    f.cluster_policy(
        "ns-x",
        admin(1, json!({"namespaces": {"matchLabels": {"team": "x"}}}), json!([from_ns("y", "Deny")]), json!([])),
    );
    assert!(!judge(&f, Ingress, YA, TCP, 80));
    f.ns("x", &[("team", "other")]);
    assert!(judge(&f, Ingress, YA, TCP, 80), "x no longer matches the subject");
    let d = f.compile();
    assert!(!d.endpoints[&XA].ingress_tiered);
}

fn diagnostics_of(f: &Fixture) -> Vec<(String, String)> {
    f.compile().diagnostics.into_iter().map(|d| (d.field, d.message)).collect()
}

#[test]
fn a_policy_that_cannot_be_placed_is_reported_and_selects_nothing() {
    for (spec, field) in [
        (admin(1001, x_a(), json!([from_ns("y", "Deny")]), json!([])), "spec.priority"),
        (admin(-1, x_a(), json!([from_ns("y", "Deny")]), json!([])), "spec.priority"),
        (json!({"tier": "Middle", "priority": 1, "subject": x_a(), "ingress": [from_ns("y", "Deny")]}), "spec.tier"),
        (admin(1, json!({}), json!([from_ns("y", "Deny")]), json!([])), "spec.subject"),
        (
            admin(
                1,
                json!({"namespaces": {"matchLabels": {"team": "x"}}, "pods": {"podSelector": {}}}),
                json!([from_ns("y", "Deny")]),
                json!([]),
            ),
            "spec.subject",
        ),
        (
            admin(
                1,
                json!({"namespaces": {"matchExpressions": [{"key": "team", "operator": "Sometimes"}]}}),
                json!([from_ns("y", "Deny")]),
                json!([]),
            ),
            "spec.subject.namespaces.matchExpressions[0].operator",
        ),
    ] {
        let mut f = base();
        f.policy("x", "allow-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}));
        f.policy(
            "x",
            "only-y",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
        );
        f.cluster_policy("bad", spec.clone());
        let diags = diagnostics_of(&f);
        assert!(diags.iter().any(|(fl, _)| fl == field), "{spec}: {diags:?}");
        assert!(judge(&f, Ingress, YA, TCP, 80), "{spec}: the NetworkPolicy decides as before");
        assert!(!f.compile().endpoints[&XA].ingress_tiered);
    }
}

#[test]
fn bad_rule_parts_fail_closed_as_upstream_says() {
    // Deny or Pass with a bad part: the rule denies everything.
    for (rule, field) in [
        (json!({"action": "Deny", "to": [{"networks": ["10.0.1.1"]}]}), "spec.egress[0].to[0].networks[0]"),
        (json!({"action": "Pass", "to": [{"nodes": {}}]}), "spec.egress[0].to[0]"),
        (json!({"action": "Deny", "to": [{"domainNames": ["example.com"]}]}), "spec.egress[0].to[0]"),
        (
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}),
            "spec.egress[0].protocols[0].tcp.destinationPort.number",
        ),
        (
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]}),
            "spec.egress[0].protocols[0].tcp.destinationPort.range",
        ),
        (json!({"action": "Drop", "to": [{"namespaces": {}}]}), "spec.egress[0].action"),
        (json!({"action": "Deny", "to": []}), "spec.egress[0].to"),
    ] {
        let mut f = base();
        f.cluster_policy("bad", admin(1, x_a(), json!([]), json!([rule.clone()])));
        let diags = diagnostics_of(&f);
        assert!(diags.iter().any(|(fl, _)| fl == field), "{rule}: {diags:?}");
        for peer in [XB, YA, "198.51.100.1"] {
            assert!(!judge(&f, Egress, peer, TCP, 80), "{rule}: denies everything ({peer})");
        }
    }
    // Accept with a bad part: that part matches nothing, the rest works.
    let mut f = base();
    f.policy("x", "deny-out", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    let rule = json!({"action": "Accept", "to": [{"networks": ["not-a-cidr"]}, {"namespaces": {"matchLabels": {"team": "y"}}}]});
    f.cluster_policy("half", admin(1, x_a(), json!([]), json!([rule])));
    assert!(diagnostics_of(&f).iter().any(|(fl, _)| fl == "spec.egress[0].to[0].networks[0]"));
    assert!(judge(&f, Egress, YA, TCP, 80));
    assert!(!judge(&f, Egress, XB, TCP, 80), "the bad peer accepts nothing");
}

#[test]
fn rule_ids_name_the_cluster_policy_with_its_tier_and_action() {
    let mut f = base();
    let ingress = json!([{"name": "no-y", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}]);
    f.cluster_policy("guard", admin(4, x_a(), ingress, json!([])));
    let d = f.compile();
    let (k, v) = d.policy.iter().find(|(k, _)| k.endpoint == XA).unwrap();
    assert_eq!(k.direction, Ingress);
    assert_eq!(v.rule, 0, "no NetworkPolicy allows");
    assert_eq!(v.baseline, TierVerdict::NONE);
    let r = d.rule(v.admin.rule).unwrap();
    assert_eq!(
        (r.namespace.as_str(), r.name.as_str(), r.tier, r.action, r.rule_name.as_str()),
        ("", "guard", Tier::Admin, Action::Deny, "no-y")
    );
    assert_eq!(v.admin.rank, weir_bpf::abi::tier_rank(4, 0, weir_bpf::abi::TIER_DENY));
}

/// A pod label change under cluster rules that name every pod: the
/// endpoint is patched (only the moved identities' entries compiled), the
/// maps equal a full recompile's, and they decide the relabelled pod anew.
#[test]
fn a_pod_label_change_patches_the_endpoint_by_identity() {
    let mut f = base();
    let from_b = json!([{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}}}]}]);
    f.cluster_policy("deny-b", admin(1, json!({"namespaces": {}}), from_b, json!([])));
    let every_pod = json!([{"action": "Accept", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]);
    f.cluster_policy("every-pod", baseline(1, json!({"namespaces": {}}), every_pod, json!([])));
    let (mut patched, mut recompiled) = (Engine::new(), Engine::without_patching());
    let d = patched.compile(&f.store, &f.locals);
    assert_eq!(d, recompiled.compile(&f.store, &f.locals));
    assert!(!reference::judge(&d, XA, Ingress, YB.parse().unwrap(), TCP, 80));

    f.pod("y", "b", &[("app", "new")], YB);
    let d = patched.compile(&f.store, &f.locals);
    let stats = patched.last_stats();
    assert_eq!((stats.endpoints_patched, stats.endpoints_compiled), (1, 0), "{stats:?}");
    assert_eq!(d, recompiled.compile(&f.store, &f.locals));
    assert_eq!(recompiled.last_stats().endpoints_compiled, 1);
    // The every-pod Accept is one wildcard entry: the new identity has none.
    let id = patched.identity_of("y", &labels(&[("app", "new")])).unwrap();
    assert!(!d.policy.keys().any(|k| k.endpoint == XA && k.identity == id));
    assert!(d.policy.keys().any(|k| k.endpoint == XA && k.identity == ID_ANY_POD));
    assert!(reference::judge(&d, XA, Ingress, YB.parse().unwrap(), TCP, 80));
    assert!(!reference::judge(&d, XA, Ingress, XB.parse().unwrap(), TCP, 80), "x/b is still app=b");
}

/// A priority move of a cluster policy denying every pod patches the
/// every-pod wildcard's entries (with its other peers' identities) rather
/// than compiling the endpoint whole, and so does an edit of a rule of
/// every peer (both wildcards); the maps equal a whole compile's and
/// decide by the new order.
#[test]
fn an_edited_wildcard_rule_patches_the_wildcard_entries() {
    let mut f = base();
    let deny_all = json!([{"action": "Deny", "from": [{"namespaces": {}}, x_a()]}]);
    f.cluster_policy("deny-all", admin(5, json!({"namespaces": {}}), deny_all, json!([])));
    f.cluster_policy("accept-y", admin(3, json!({"namespaces": {}}), json!([from_ns("y", "Accept")]), json!([])));
    f.policy("x", "open", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}));
    let (mut patched, mut recompiled) = (Engine::new(), Engine::without_patching());
    let d = patched.compile(&f.store, &f.locals);
    assert!(reference::judge(&d, XA, Ingress, YB.parse().unwrap(), TCP, 80), "accept-y ranks first");

    type Edit = (&'static str, fn(&mut Fixture));
    let edits: [Edit; 2] = [
        ("priority move", |f| {
            let cnp = f.store.cluster_policies.get_mut("deny-all").unwrap();
            cnp.spec.priority = 1;
            cnp.metadata.resource_version = Some("2".into());
        }),
        ("every-peer rule", |f| {
            f.policy("x", "open", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]}));
        }),
    ];
    let mut d = d;
    for (what, edit) in edits {
        edit(&mut f);
        d = patched.compile(&f.store, &f.locals);
        let stats = patched.last_stats();
        assert_eq!((stats.endpoints_patched, stats.endpoints_compiled), (1, 0), "{what}: {stats:?}");
        assert_eq!(d, recompiled.compile(&f.store, &f.locals), "{what}");
    }
    assert!(!reference::judge(&d, XA, Ingress, YB.parse().unwrap(), TCP, 80), "deny-all now ranks first");
    let ports: Vec<_> = d.policy.keys().filter(|k| k.endpoint == XA && k.identity == ID_ANY).map(|k| k.port).collect();
    assert_eq!(ports, [Some(PortBlock::single(81))], "the every-peer rule's new port, under ANY");
}

/// Two Admin rules of equal rank, one naming every pod, one the peer's own
/// pods: the verdict is the same whichever decides (the action is part of
/// the rank), and explain names the rule the maps name, the one the
/// program's first lookup (the peer's identity) finds, by rule and by map.
#[test]
fn equal_ranks_name_the_rule_the_first_lookup_finds() {
    let mut f = base();
    let every_pod = json!([{"action": "Deny", "from": [{"namespaces": {}}]}]);
    f.cluster_policy("a-every-pod", admin(5, json!({"namespaces": {}}), every_pod, json!([])));
    let pods_b = json!([{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}}}]}]);
    f.cluster_policy("b-pods-b", admin(5, json!({"namespaces": {}}), pods_b, json!([])));
    assert!(!judge(&f, Ingress, YB, TCP, 80));
    let mut e = Engine::new();
    e.compile(&f.store, &f.locals);
    let me = End { addr: "10.0.0.1".parse().unwrap(), pod: pod_key("10.0.0.1") };
    let flow = Flow { src: End { addr: YB.parse().unwrap(), pod: pod_key(YB) }, dst: me, protocol: TCP, port: 80 };
    let x = e.explain(&f.store, &flow);
    assert_eq!(x.ingress.cluster.as_ref().map(|c| c.policy.as_str()), Some("b-pods-b"), "by rule");
    let by_map = x.ingress.maps.as_ref().and_then(|m| m.rule.as_ref()).map(|r| r.policy.clone());
    assert_eq!(by_map.as_deref(), Some("b-pods-b"), "by map");
    // From y/a, which only the every-pod rule names, that rule decides.
    let flow = Flow { src: End { addr: YA.parse().unwrap(), pod: pod_key(YA) }, ..flow };
    let x = e.explain(&f.store, &flow);
    assert_eq!(x.ingress.cluster.as_ref().map(|c| c.policy.as_str()), Some("a-every-pod"));
}
