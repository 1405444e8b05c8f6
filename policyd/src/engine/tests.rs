//! The engine against the NetworkPolicy spec, one rule per test, judged
//! the way the dataplane judges (weir_abi.h: identity, then the peer
//! wildcard, then the ipBlock class), so the tests check behaviour rather than map layout.

use super::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use std::net::IpAddr;
use Direction::{Egress, Ingress};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

#[derive(Default, Clone)]
pub(super) struct Fixture {
    pub store: Store,
    pub locals: Vec<EndpointRecord>,
}

pub(super) fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Fixture {
    pub fn ns(&mut self, name: &str, kv: &[(&str, &str)]) -> &mut Self {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels(kv)}})).unwrap();
        self.store.namespaces.insert(name.into(), n);
        self
    }
    pub fn pod_json(&mut self, ns: &str, name: &str, v: Value) -> &mut Self {
        let mut p: Pod = serde_json::from_value(v).unwrap();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        self.store.pods.insert((ns.into(), name.into()), p);
        self
    }
    /// A Running pod with labels and one IP.
    pub fn pod(&mut self, ns: &str, name: &str, kv: &[(&str, &str)], ip: &str) -> &mut Self {
        self.pod_json(
            ns,
            name,
            json!({"metadata": {"labels": labels(kv)}, "spec": {"containers": [{"name": "c"}]},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        )
    }
    pub fn pod_ports(&mut self, ns: &str, name: &str, kv: &[(&str, &str)], ip: &str, ports: Value) -> &mut Self {
        self.pod_json(
            ns,
            name,
            json!({"metadata": {"labels": labels(kv)}, "spec": {"containers": [{"name": "c", "ports": ports}]},
                   "status": {"phase": "Running", "podIPs": [{"ip": ip}]}}),
        )
    }
    /// Make an existing pod local on ifindex, with its status IP.
    pub fn local(&mut self, ns: &str, name: &str, ifindex: u32) -> &mut Self {
        let p = &self.store.pods[&(ns.to_string(), name.to_string())];
        let ips = p.pod_ips.iter().map(|i| i.addr().unwrap()).collect();
        self.locals.push(record(ns, name, ifindex, ips));
        self
    }
    pub fn policy(&mut self, ns: &str, name: &str, spec: Value) -> &mut Self {
        let p: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})).unwrap();
        self.store.policies.insert((ns.into(), name.into()), p);
        self
    }
    /// Set (Some) or remove (None) a NetworkPolicy's mode annotation.
    pub fn mode(&mut self, ns: &str, name: &str, mode: Option<&str>) -> &mut Self {
        let np = self.store.policies.get_mut(&(ns.into(), name.into())).expect("no such policy");
        np.metadata.annotations = mode.map(|m| [(super::policy::MODE_ANNOTATION.to_string(), m.to_string())].into());
        self
    }
    pub fn cluster_policy(&mut self, name: &str, spec: Value) -> &mut Self {
        let p: crate::cluster_network_policy::ClusterNetworkPolicy =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        self.store.cluster_policies.insert(name.into(), p);
        self
    }
    pub fn service(&mut self, ns: &str, name: &str, spec: Value) -> &mut Self {
        let s: Service =
            serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})).unwrap();
        self.store.services.insert((ns.into(), name.into()), s);
        self
    }
    /// Namespaces x (team=x) and y (team=y), pods a (app=a) and b (app=b)
    /// in each (10.0.0.1, 10.0.0.2, 10.0.1.1, 10.0.1.2); x/a is this node's
    /// endpoint `ifindex`.
    pub fn two_teams(ifindex: u32) -> Fixture {
        let mut f = Fixture::default();
        f.ns("x", &[("team", "x")]).ns("y", &[("team", "y")]);
        f.pod("x", "a", &[("app", "a")], "10.0.0.1").pod("x", "b", &[("app", "b")], "10.0.0.2");
        f.pod("y", "a", &[("app", "a")], "10.0.1.1").pod("y", "b", &[("app", "b")], "10.0.1.2");
        f.local("x", "a", ifindex);
        f
    }
    pub fn compile(&self) -> Desired {
        Engine::new().compile(&self.store, &self.locals)
    }
}

pub(super) fn record(ns: &str, name: &str, ifindex: u32, ips: Vec<IpAddr>) -> EndpointRecord {
    EndpointRecord {
        container_id: format!("c{ifindex}"),
        ifname: "eth0".into(),
        netns: format!("/run/netns/{name}"),
        network: "weir".into(),
        pod_namespace: ns.into(),
        pod_name: name.into(),
        pod_uid: String::new(),
        host_ifname: format!("veth{ifindex}"),
        host_ifindex: ifindex,
        ips,
        mac: String::new(),
        gateways: vec![],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ipcache_lookup(d: &Desired, a: IpAddr) -> IpcacheEntry {
    *cidr::lpm(d.ipcache.iter(), a).expect("0.0.0.0/0 and ::/0 are always present")
}

/// [`reference::judge`] with the peer written as text.
pub(super) fn judge(d: &Desired, ep: u32, dir: Direction, peer: &str, proto: u8, port: u16) -> bool {
    reference::judge(d, ep, dir, ip(peer), proto, port)
}

fn ing(d: &Desired, ep: u32, from: &str, port: u16) -> bool {
    judge(d, ep, Ingress, from, TCP, port)
}
fn eg(d: &Desired, ep: u32, to: &str, port: u16) -> bool {
    judge(d, ep, Egress, to, TCP, port)
}

/// Namespaces x (labelled "team") and y, pods a (app=a) and b (app=b) in
/// each; x/a is local on ifindex 10, y/b on 20.
fn base() -> Fixture {
    let mut f = Fixture::default();
    f.ns("x", &[("team", "x")]).ns("y", &[("team", "y")]);
    f.pod("x", "a", &[("app", "a")], "10.0.0.1").pod("x", "b", &[("app", "b")], "10.0.0.2");
    f.pod("y", "a", &[("app", "a")], "10.0.1.1").pod("y", "b", &[("app", "b")], "10.0.1.2");
    f.local("x", "a", 10).local("y", "b", 20);
    f
}
const XA: u32 = 10;
const YB: u32 = 20;

// ---- the flow log's namespace choice ----------------------------------------

/// `weir.io/flow-log: allow` on a Namespace marks its local endpoints
/// (and only with that value); a compile after the annotation changes
/// follows it, though no policy input changed.
#[test]
fn a_namespace_annotated_for_allowed_flows_marks_its_endpoints() {
    let mut f = base();
    assert!(!f.compile().endpoints[&XA].log_allow);
    let mut e = Engine::new();
    let annotate = |f: &mut Fixture, v: &str| {
        f.store.namespaces.get_mut("y").unwrap().metadata.annotations =
            Some([(FLOW_LOG_ANNOTATION.to_string(), v.to_string())].into());
    };
    annotate(&mut f, "allow");
    let d = e.compile(&f.store, &f.locals);
    assert!(d.endpoints[&YB].log_allow && !d.endpoints[&XA].log_allow);
    annotate(&mut f, "drop");
    let d = e.compile(&f.store, &f.locals);
    assert!(!d.endpoints[&YB].log_allow, "only \"allow\" asks");
}

// ---- audit mode -------------------------------------------------------------

/// Whether the maps make the dataplane report this flow as an audit
/// policy's would-be drop.
fn would_drop(d: &Desired, ep: u32, dir: Direction, peer: &str, port: u16) -> bool {
    reference::maps_allow(d, ep, dir, ip(peer)).audit_would_drop(TCP, port)
}

/// An audit-mode policy isolates nothing: every flow stays allowed, and
/// the ones it allows no rule for are marked as its would-be drops.
#[test]
fn an_audit_policy_isolates_nothing_and_marks_what_it_would_drop() {
    let mut f = base();
    f.policy(
        "x",
        "only-b",
        json!({"podSelector": {"matchLabels": {"app": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}]}),
    )
    .mode("x", "only-b", Some("audit"));
    let d = f.compile();
    let st = d.endpoints[&XA];
    assert!(st.ingress_audited && !st.ingress_isolated && !st.egress_audited);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
    for (peer, port) in [("10.0.0.2", 80), ("10.0.0.2", 81), ("10.0.1.1", 80), ("203.0.113.9", 80)] {
        assert!(ing(&d, XA, peer, port), "{peer}:{port} is allowed");
    }
    assert!(!would_drop(&d, XA, Ingress, "10.0.0.2", 80), "the audit rule allows x/b on 80");
    assert!(would_drop(&d, XA, Ingress, "10.0.0.2", 81));
    assert!(would_drop(&d, XA, Ingress, "10.0.1.1", 80), "y/a is not in x");
    assert!(!would_drop(&d, XA, Egress, "10.0.1.1", 80), "no audit policy has egress");
}

/// Next to an enforced policy isolating the same direction, an audit
/// policy's allows stay out of the maps: they would be real allows.
#[test]
fn next_to_an_enforced_policy_an_audit_policy_widens_nothing() {
    let mut f = base();
    f.policy("x", "deny", json!({"podSelector": {}}));
    f.policy(
        "x",
        "open",
        json!({"podSelector": {}, "ingress": [{}], "egress": [{}], "policyTypes": ["Ingress", "Egress"]}),
    )
    .mode("x", "open", Some("audit"));
    let d = f.compile();
    let st = d.endpoints[&XA];
    assert!(st.ingress_isolated && !st.ingress_audited, "enforced isolation wins");
    assert!(st.egress_audited && !st.egress_isolated, "only the audit policy has egress");
    assert!(!ing(&d, XA, "10.0.0.2", 80), "the audit policy's allow-all is not an allow");
    assert!(!would_drop(&d, XA, Ingress, "10.0.0.2", 80), "a real drop is not an audit one");
    assert!(eg(&d, XA, "10.0.1.1", 80) && !would_drop(&d, XA, Egress, "10.0.1.1", 80), "allowed by the audit rule");
    assert!(
        d.policy.keys().all(|k| k.direction == Egress),
        "no ingress entry: {:?}",
        d.policy.keys().collect::<Vec<_>>()
    );
}

/// Removing the annotation enforces the policy on the next compile (the
/// manifest sources have no resourceVersion: the mode is part of what the
/// compiled policy is memoized by), and `enforce` is the same as none.
#[test]
fn removing_the_audit_annotation_enforces_the_policy() {
    let mut f = base();
    f.policy("x", "p", json!({"podSelector": {"matchLabels": {"app": "a"}}})).mode("x", "p", Some("audit"));
    let mut e = Engine::new();
    let d = e.compile(&f.store, &f.locals);
    assert!(ing(&d, XA, "10.0.0.2", 80) && would_drop(&d, XA, Ingress, "10.0.0.2", 80));
    for mode in [None, Some("enforce")] {
        f.mode("x", "p", mode);
        let d = e.compile(&f.store, &f.locals);
        assert!(d.endpoints[&XA].ingress_isolated && !d.endpoints[&XA].ingress_audited, "{mode:?}");
        assert!(!ing(&d, XA, "10.0.0.2", 80), "{mode:?}");
        f.mode("x", "p", Some("audit"));
        assert!(ing(&e.compile(&f.store, &f.locals), XA, "10.0.0.2", 80), "back to audit");
    }
}

/// An unknown mode is a diagnostic naming the annotation, and the policy
/// is enforced: a typo never turns a policy off.
#[test]
fn an_unknown_mode_is_reported_and_the_policy_enforced() {
    let mut f = base();
    f.policy("x", "p", json!({"podSelector": {}})).mode("x", "p", Some("Audit"));
    let d = f.compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(!ing(&d, XA, "10.0.0.2", 80));
    let diag = d.diagnostics.iter().find(|g| g.object == "NetworkPolicy x/p").expect("a diagnostic");
    assert_eq!(diag.field, "metadata.annotations[\"policy.weir.io/mode\"]");
    assert!(diag.message.contains("\"Audit\"") && diag.message.contains("\"audit\""), "{}", diag.message);
}

// ---- isolation and policyTypes ---------------------------------------------

#[test]
fn no_policy_leaves_pods_unisolated() {
    let d = base().compile();
    assert_eq!(
        d.endpoints[&XA],
        EndpointState {
            identity: d.endpoints[&XA].identity,
            ingress_isolated: false,
            egress_isolated: false,
            ingress_tiered: false,
            egress_tiered: false,
            ingress_audited: false,
            egress_audited: false,
            log_allow: false,
        }
    );
    assert!(ing(&d, XA, "10.0.1.2", 1234) && eg(&d, XA, "1.1.1.1", 53));
    assert!(d.policy.is_empty());
}

#[test]
fn policy_types_default_to_ingress_only_without_egress_rules() {
    let d = base().policy("x", "p", json!({"podSelector": {}})).compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(!d.endpoints[&XA].egress_isolated);
    assert!(!ing(&d, XA, "10.0.0.2", 80));
    assert!(eg(&d, XA, "10.0.0.2", 80));
}

#[test]
fn policy_types_default_includes_egress_when_egress_rules_exist() {
    let d = base().policy("x", "p", json!({"egress": [{"to": [{"podSelector": {}}]}]})).compile();
    assert!(d.endpoints[&XA].ingress_isolated && d.endpoints[&XA].egress_isolated);
    assert!(eg(&d, XA, "10.0.0.2", 80));
    assert!(!eg(&d, XA, "10.0.1.1", 80));
}

#[test]
fn empty_egress_list_without_policy_types_does_not_isolate_egress() {
    let d = base().policy("x", "p", json!({"egress": []})).compile();
    assert!(!d.endpoints[&XA].egress_isolated);
    assert!(d.endpoints[&XA].ingress_isolated);
}

#[test]
fn explicit_egress_only_type_leaves_ingress_open() {
    let d = base().policy("x", "p", json!({"policyTypes": ["Egress"], "ingress": [{}]})).compile();
    assert!(!d.endpoints[&XA].ingress_isolated);
    assert!(d.endpoints[&XA].egress_isolated);
    assert!(!eg(&d, XA, "10.0.0.2", 80));
    // The ingress rule is ignored: not part of the policy's types.
    assert!(!d.policy.keys().any(|k| k.direction == Ingress));
}

#[test]
fn empty_policy_types_list_is_defaulted_like_absent() {
    let d = base().policy("x", "p", json!({"policyTypes": []})).compile();
    assert!(d.endpoints[&XA].ingress_isolated && !d.endpoints[&XA].egress_isolated);
}

#[test]
fn ingress_type_without_rules_denies_all_ingress() {
    let d = base().policy("x", "p", json!({"policyTypes": ["Ingress"]})).compile();
    assert!(!ing(&d, XA, "10.0.0.2", 80));
    assert!(!judge(&d, XA, Ingress, "10.0.0.2", UDP, 53));
}

#[test]
fn empty_ingress_list_denies_all_ingress() {
    let d = base().policy("x", "p", json!({"ingress": []})).compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn egress_type_with_no_rules_denies_all_egress() {
    let d = base().policy("x", "p", json!({"policyTypes": ["Egress"], "egress": []})).compile();
    assert!(!eg(&d, XA, "10.0.0.2", 80) && !eg(&d, XA, "8.8.8.8", 53));
}

#[test]
fn empty_rule_object_allows_everything() {
    let d = base().policy("x", "p", json!({"ingress": [{}]})).compile();
    assert!(ing(&d, XA, "10.0.1.2", 1) && judge(&d, XA, Ingress, "203.0.113.9", UDP, 9));
    // One entry per peer wildcard: every pod, every other peer.
    let keys: Vec<_> = d.policy.keys().map(|k| (k.identity, k.protocol, k.port)).collect();
    assert_eq!(keys, [(ID_ANY, None, None), (ID_ANY_POD, None, None)]);
}

#[test]
fn absent_from_allows_every_peer_on_the_listed_ports() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 80}]}]})).compile();
    assert!(ing(&d, XA, "10.0.1.2", 80) && ing(&d, XA, "198.51.100.1", 80));
    assert!(!ing(&d, XA, "10.0.1.2", 81));
}

#[test]
fn empty_from_list_allows_every_peer() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [], "ports": [{"port": 80}]}]})).compile();
    assert!(ing(&d, XA, "10.0.1.2", 80));
}

#[test]
fn absent_ports_allow_every_port_and_protocol() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}]}]})).compile();
    assert!(
        ing(&d, XA, "10.0.0.2", 1)
            && judge(&d, XA, Ingress, "10.0.0.2", SCTP, 9)
            && judge(&d, XA, Ingress, "10.0.0.2", 1, 0)
    );
}

#[test]
fn empty_ports_list_allows_every_port() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}], "ports": []}]})).compile();
    assert!(judge(&d, XA, Ingress, "10.0.0.2", UDP, 5353));
}

// ---- peers -----------------------------------------------------------------

#[test]
fn pod_selector_peer_means_the_policys_namespace_only() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.0.2", 80));
    assert!(!ing(&d, XA, "10.0.1.2", 80), "y/b has the labels but lives in another namespace");
    assert!(!ing(&d, XA, "10.0.0.1", 80));
}

#[test]
fn empty_pod_selector_peer_is_every_pod_of_the_namespace() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}]}]})).compile();
    assert!(ing(&d, XA, "10.0.0.2", 80) && ing(&d, XA, "10.0.0.1", 80));
    assert!(!ing(&d, XA, "10.0.1.1", 80));
    assert!(!ing(&d, XA, "192.0.2.1", 80), "not a pod: no selector peer covers it");
}

#[test]
fn namespace_selector_peer_selects_all_pods_of_matching_namespaces() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.1.1", 80) && ing(&d, XA, "10.0.1.2", 80));
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn empty_namespace_selector_selects_every_namespace() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {}}]}]})).compile();
    assert!(ing(&d, XA, "10.0.1.1", 80) && ing(&d, XA, "10.0.0.2", 80));
    assert!(!ing(&d, XA, "192.0.2.1", 80));
}

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"app": "a"}}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.1.1", 80));
    assert!(!ing(&d, XA, "10.0.1.2", 80));
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn separate_peers_are_ored() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}, {"podSelector": {"matchLabels": {"app": "b"}}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.1.1", 80) && ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn rules_are_ored_each_with_its_own_ports() {
    let d = base()
        .policy(
            "x",
            "p",
            json!({"ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}], "ports": [{"port": 443}]}]}),
        )
        .compile();
    assert!(ing(&d, XA, "10.0.0.2", 80) && !ing(&d, XA, "10.0.0.2", 443));
    assert!(ing(&d, XA, "10.0.1.2", 443) && !ing(&d, XA, "10.0.1.2", 80));
}

#[test]
fn namespaces_get_the_metadata_name_label_when_missing() {
    let mut f = base();
    // A namespace object without any label, and a pod namespace without any object.
    f.ns("z", &[]).pod("z", "c", &[], "10.0.2.1").pod("w", "d", &[], "10.0.3.1");
    f.policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": ["z", "w"]}]}}]}]}));
    let d = f.compile();
    assert!(ing(&d, XA, "10.0.2.1", 80) && ing(&d, XA, "10.0.3.1", 80));
    assert!(!ing(&d, XA, "10.0.1.1", 80));
}

/// In one engine: a namespace known only by its pods gets its name label
/// when its first pod comes, and keeps it as its Namespace comes and goes.
#[test]
fn a_namespace_of_pods_alone_is_selected_by_name_in_one_engine() {
    let mut f = base();
    f.policy(
        "x",
        "p",
        json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "w"}}}]}]}),
    );
    let mut e = Engine::new();
    assert!(!ing(&e.compile(&f.store, &f.locals), XA, "10.0.3.1", 80));
    f.pod("w", "d", &[], "10.0.3.1");
    assert!(ing(&e.compile(&f.store, &f.locals), XA, "10.0.3.1", 80));
    f.ns("w", &[("team", "w")]);
    assert!(ing(&e.compile(&f.store, &f.locals), XA, "10.0.3.1", 80));
    f.store.namespaces.remove("w");
    let d = e.compile(&f.store, &f.locals);
    assert!(ing(&d, XA, "10.0.3.1", 80));
    assert_eq!(props::canonical(&d), props::canonical(&f.compile()));
}

#[test]
fn match_expressions_select_peers() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.1.2", 80) && ing(&d, XA, "10.0.0.2", 80));
    assert!(!ing(&d, XA, "10.0.1.1", 80));
}

#[test]
fn policy_selects_only_pods_of_its_own_namespace() {
    let d = base().policy("y", "p", json!({"podSelector": {}})).compile();
    assert!(!d.endpoints[&XA].ingress_isolated);
    assert!(d.endpoints[&YB].ingress_isolated);
}

#[test]
fn policy_pod_selector_picks_the_subjects() {
    let d = base().policy("y", "p", json!({"podSelector": {"matchLabels": {"app": "a"}}})).compile();
    assert!(!d.endpoints[&YB].ingress_isolated);
}

#[test]
fn policies_are_unioned() {
    let d = base()
        .policy("x", "p1", json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}))
        .policy("x", "p2", json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.0.2", 80) && ing(&d, XA, "10.0.1.1", 80));
}

#[test]
fn deny_all_plus_allow_policy_is_the_allow() {
    let d = base()
        .policy("x", "deny", json!({"policyTypes": ["Ingress", "Egress"]}))
        .policy("x", "allow", json!({"ingress": [{"from": [{"podSelector": {}}]}]}))
        .compile();
    assert!(ing(&d, XA, "10.0.0.2", 80) && !ing(&d, XA, "10.0.1.2", 80));
    assert!(!eg(&d, XA, "10.0.0.2", 80));
}

#[test]
fn removing_the_last_policy_deisolates() {
    let mut f = base();
    f.policy("x", "p", json!({"policyTypes": ["Ingress", "Egress"]}));
    let mut e = Engine::new();
    let d1 = e.compile(&f.store, &f.locals);
    assert!(d1.endpoints[&XA].ingress_isolated && d1.endpoints[&XA].egress_isolated);
    f.store.policies.clear();
    let d2 = e.compile(&f.store, &f.locals);
    assert!(!d2.endpoints[&XA].ingress_isolated && !d2.endpoints[&XA].egress_isolated);
    assert!(d2.policy.is_empty());
}

#[test]
fn egress_to_a_pod_selector_peer() {
    let d = base().policy("x", "p", json!({"policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}], "ports": [{"port": 53, "protocol": "UDP"}]}]})).compile();
    assert!(judge(&d, XA, Egress, "10.0.1.1", UDP, 53));
    assert!(!judge(&d, XA, Egress, "10.0.1.1", TCP, 53));
    assert!(!judge(&d, XA, Egress, "10.0.0.2", UDP, 53));
}

#[test]
fn host_is_always_allowed_through_gateway_identity() {
    let mut f = base();
    f.locals[0].gateways = vec![ip("10.0.0.254")];
    f.policy("x", "p", json!({"policyTypes": ["Ingress", "Egress"]}));
    let d = f.compile();
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.254")).identity, ID_HOST);
    assert!(ing(&d, XA, "10.0.0.254", 80));
}

// ---- ports -----------------------------------------------------------------

#[test]
fn port_protocol_defaults_to_tcp() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 80}]}]})).compile();
    assert!(judge(&d, XA, Ingress, "10.0.0.2", TCP, 80));
    assert!(!judge(&d, XA, Ingress, "10.0.0.2", UDP, 80));
}

#[test]
fn tcp_udp_and_sctp_are_distinct() {
    let d = base()
        .policy(
            "x",
            "p",
            json!({"ingress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 99, "protocol": "SCTP"}]}]}),
        )
        .compile();
    assert!(judge(&d, XA, Ingress, "10.0.0.2", UDP, 53) && !judge(&d, XA, Ingress, "10.0.0.2", TCP, 53));
    assert!(judge(&d, XA, Ingress, "10.0.0.2", SCTP, 99) && !judge(&d, XA, Ingress, "10.0.0.2", UDP, 99));
    assert!(d.policy.keys().all(|k| matches!(k.protocol, Some(17) | Some(132))));
}

#[test]
fn protocol_without_port_allows_every_port_of_it() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"protocol": "UDP"}]}]})).compile();
    assert!(judge(&d, XA, Ingress, "10.0.0.2", UDP, 1) && judge(&d, XA, Ingress, "10.0.0.2", UDP, 65535));
    assert!(!judge(&d, XA, Ingress, "10.0.0.2", TCP, 1));
    let k = d.policy.keys().next().unwrap();
    assert_eq!((k.protocol, k.port), (Some(UDP), None));
}

/// An endpoint record that arrives after its pod (CNI ADD after the Pod
/// reached the store) is matched by the next compile, though no pod was
/// written: the pods' walk is skipped, the records are not.
#[test]
fn an_endpoint_record_arriving_after_its_pod_is_matched() {
    let mut f = base();
    f.policy("x", "p", json!({"podSelector": {}, "ingress": []}));
    let mut e = Engine::new();
    let d = e.compile(&f.store, &f.locals);
    assert!(!d.endpoints.contains_key(&30));
    f.local("x", "b", 30);
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().pods_read, 0, "no pod read again");
    assert!(d.endpoints[&30].ingress_isolated);
    assert_eq!(d.ipcache[&"10.0.0.2/32".parse().unwrap()].endpoint, 30);
    assert_eq!(d, f.compile());
    // An address two pods claim goes to the one with a record here.
    f.pod("z", "dup", &[("app", "dup")], "10.0.1.1");
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(
        d.ipcache[&"10.0.1.1/32".parse().unwrap()].identity,
        e.identity_of("z", &labels(&[("app", "dup")])).unwrap()
    );
    f.local("y", "a", 40);
    let d = e.compile(&f.store, &f.locals);
    let y_a = e.identity_of("y", &labels(&[("app", "a")])).unwrap();
    assert_eq!(
        d.ipcache[&"10.0.1.1/32".parse().unwrap()],
        IpcacheEntry { identity: y_a, endpoint: 40, service: false }
    );
    assert_eq!(d, f.compile());
}

/// `namespaceSelector: {}` names every pod: one entry under the every-pod
/// wildcard, which matches pods only (the world is not a pod), and which a
/// new pod anywhere (its Namespace not seen yet) matches with no compile.
#[test]
fn a_peer_of_every_pod_is_one_wildcard_entry() {
    let mut f = base();
    f.policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}]}));
    let mut e = Engine::new();
    let d = e.compile(&f.store, &f.locals);
    let keys: Vec<_> = d.policy.keys().map(|k| (k.endpoint, k.identity, k.port)).collect();
    assert_eq!(keys, [(XA, ID_ANY_POD, Some(PortBlock::single(80)))]);
    assert!(ing(&d, XA, "10.0.1.2", 80) && ing(&d, XA, "10.0.0.2", 80) && !ing(&d, XA, "10.0.1.2", 81));
    assert!(!ing(&d, XA, "203.0.113.9", 80), "the world is no pod");
    f.pod("z", "new", &[("app", "n")], "10.0.2.9");
    let d = e.compile(&f.store, &f.locals);
    let stats = e.last_stats();
    assert_eq!((stats.endpoints_compiled, stats.endpoints_patched), (0, 0), "{stats:?}");
    assert!(ing(&d, XA, "10.0.2.9", 80));
    assert_eq!(d, f.compile());
}

#[test]
fn end_port_allows_the_inclusive_range() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 1000, "endPort": 1999}]}]})).compile();
    assert!(ing(&d, XA, "10.0.0.2", 1000) && ing(&d, XA, "10.0.0.2", 1999) && ing(&d, XA, "10.0.0.2", 1500));
    assert!(!ing(&d, XA, "10.0.0.2", 999) && !ing(&d, XA, "10.0.0.2", 2000));
    // Under both peer wildcards.
    assert_eq!(d.policy.len(), 2 * port_blocks(1000, 1999).len());
}

#[test]
fn end_port_below_port_is_invalid_and_allows_nothing() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 2000, "endPort": 1000}]}]})).compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(!ing(&d, XA, "10.0.0.2", 1500) && !ing(&d, XA, "10.0.0.2", 2000));
    assert!(d
        .diagnostics
        .iter()
        .any(|g| g.object == "NetworkPolicy x/p" && g.field == "spec.ingress[0].ports[0].endPort"));
}

#[test]
fn end_port_without_numeric_port_is_invalid() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}, {"endPort": 90}]}]}))
        .compile();
    assert!(d.policy.is_empty());
    assert_eq!(d.diagnostics.iter().filter(|g| g.field.ends_with("endPort")).count(), 2);
}

#[test]
fn port_out_of_range_or_bad_protocol_is_invalid() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 0}, {"port": 70000}, {"port": 80, "protocol": "ICMP"}, {"port": "80"}]}]})).compile();
    assert!(d.policy.is_empty());
    assert!(d.diagnostics.iter().any(|g| g.field == "spec.ingress[0].ports[2].protocol"));
    assert!(d.diagnostics.iter().any(|g| g.field == "spec.ingress[0].ports[3].port"));
}

#[test]
fn a_list_of_only_invalid_ports_never_means_any_port() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 0}]}]}))
        .compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn one_invalid_port_does_not_drop_the_valid_ones() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 0}, {"port": 80}]}]})).compile();
    assert!(ing(&d, XA, "10.0.0.2", 80) && !ing(&d, XA, "10.0.0.2", 81));
}

// ---- named ports -------------------------------------------------------------

fn named_fixture() -> Fixture {
    let mut f = Fixture::default();
    f.ns("x", &[]);
    f.pod_ports(
        "x",
        "srv",
        &[("app", "srv")],
        "10.0.0.1",
        json!([{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]),
    );
    f.pod_ports("x", "web1", &[("app", "web")], "10.0.0.2", json!([{"name": "http", "containerPort": 80}]));
    f.pod_ports("x", "web2", &[("app", "web")], "10.0.0.3", json!([{"name": "http", "containerPort": 81}]));
    f.pod_ports("x", "alt", &[("app", "alt")], "10.0.0.4", json!([{"name": "http", "containerPort": 9090}]));
    f.pod("x", "client", &[("app", "client")], "10.0.0.9");
    f.local("x", "srv", 1).local("x", "client", 9);
    f
}

#[test]
fn named_port_on_ingress_resolves_to_the_local_pods_container_port() {
    let d = named_fixture()
        .policy(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "srv"}}, "ingress": [{"ports": [{"port": "http"}]}]}),
        )
        .compile();
    assert!(ing(&d, 1, "10.0.0.9", 8080));
    assert!(!ing(&d, 1, "10.0.0.9", 80));
}

#[test]
fn named_port_needs_the_same_protocol() {
    let d = named_fixture()
        .policy("x", "p", json!({"podSelector": {"matchLabels": {"app": "srv"}}, "ingress": [{"ports": [{"port": "dns"}, {"port": "dns", "protocol": "UDP"}]}]}))
        .compile();
    assert!(judge(&d, 1, Ingress, "10.0.0.9", UDP, 5353));
    assert!(!judge(&d, 1, Ingress, "10.0.0.9", TCP, 5353));
}

#[test]
fn named_port_matching_nothing_adds_nothing_but_still_isolates() {
    let d = named_fixture()
        .policy(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "srv"}}, "ingress": [{"ports": [{"port": "nope"}]}]}),
        )
        .compile();
    assert!(d.endpoints[&1].ingress_isolated);
    assert!(d.policy.is_empty());
    assert!(d.diagnostics.is_empty(), "a valid name that matches nothing is not an error");
}

#[test]
fn named_port_on_egress_resolves_per_peer_identity() {
    let d = named_fixture()
        .policy("x", "p", json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "alt"]}]}}], "ports": [{"port": "http"}]}]}))
        .compile();
    // web1 and web2 share an identity: the union of their numbers.
    assert!(eg(&d, 9, "10.0.0.2", 80) && eg(&d, 9, "10.0.0.2", 81) && eg(&d, 9, "10.0.0.3", 80));
    assert!(eg(&d, 9, "10.0.0.4", 9090) && !eg(&d, 9, "10.0.0.4", 80));
    assert!(!eg(&d, 9, "10.0.0.1", 8080), "srv has the name but is not a peer");
}

#[test]
fn named_port_on_egress_to_all_peers_covers_every_pod_with_the_name() {
    let d = named_fixture()
        .policy("x", "p", json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}))
        .compile();
    assert!(eg(&d, 9, "10.0.0.1", 8080) && eg(&d, 9, "10.0.0.2", 80));
    assert!(!eg(&d, 9, "10.0.0.1", 80));
    assert!(!eg(&d, 9, "192.0.2.1", 80), "a non-pod has no named ports");
}

// ---- ipBlock -----------------------------------------------------------------

#[test]
fn ip_block_allows_the_cidr_except_its_holes() {
    let d = base()
        .policy(
            "x",
            "p",
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}),
        )
        .compile();
    assert!(ing(&d, XA, "192.168.2.1", 80));
    assert!(!ing(&d, XA, "192.168.1.1", 80));
    assert!(!ing(&d, XA, "10.9.9.9", 80));
    assert!(d.cidr.values().any(|c| *c == CIDR_NO_CLASS));
}

#[test]
fn ip_block_matches_pod_addresses_too() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.1.0/24"}}]}]})).compile();
    assert!(ing(&d, XA, "10.0.1.2", 80));
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn ip_block_non_canonical_cidr_is_masked() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{"ipBlock": {"cidr": "172.16.5.4/16"}}]}]})).compile();
    assert!(ing(&d, XA, "172.16.200.1", 80));
    assert!(d.cidr.keys().any(|k| k.net == "172.16.0.0/16".parse::<IpNet>().unwrap()));
    assert!(d.diagnostics.is_empty());
}

#[test]
fn ip_block_ipv6() {
    let d = base()
        .policy(
            "x",
            "p",
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/16", "except": ["fd00:1::/32"]}}]}]}),
        )
        .compile();
    assert!(ing(&d, XA, "fd00:2::1", 80));
    assert!(!ing(&d, XA, "fd00:1::1", 80));
    assert!(!ing(&d, XA, "fe80::1", 80));
}

#[test]
fn overlapping_ip_blocks_union_their_ports() {
    let d = base()
        .policy(
            "x",
            "p",
            json!({"policyTypes": ["Egress"], "egress": [
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]},
                {"to": [{"ipBlock": {"cidr": "10.200.0.0/16", "except": ["10.200.1.0/24"]}}], "ports": [{"port": 80}]}]}),
        )
        .compile();
    assert!(eg(&d, XA, "10.200.5.5", 80) && eg(&d, XA, "10.200.5.5", 443));
    assert!(!eg(&d, XA, "10.200.1.5", 80) && eg(&d, XA, "10.200.1.5", 443));
    assert!(eg(&d, XA, "8.8.8.8", 443) && !eg(&d, XA, "8.8.8.8", 80));
}

#[test]
fn invalid_ip_block_cidr_is_reported_and_allows_nothing() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "300.0.0.0/8"}}]}]}))
        .compile();
    assert!(d
        .diagnostics
        .iter()
        .any(|g| g.object == "NetworkPolicy x/p" && g.field == "spec.ingress[0].from[1].ipBlock.cidr"));
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(ing(&d, XA, "10.0.0.2", 80), "the valid peer still counts");
    assert!(!ing(&d, XA, "10.0.1.1", 80));
    assert!(d.cidr.is_empty());
}

#[test]
fn except_outside_the_cidr_is_invalid() {
    let d = base()
        .policy(
            "x",
            "p",
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
        )
        .compile();
    assert!(d.diagnostics.iter().any(|g| g.field == "spec.ingress[0].from[0].ipBlock.except[0]"));
    assert!(!ing(&d, XA, "10.5.5.5", 80), "dropping the except would widen: the peer allows nothing");
}

#[test]
fn ip_block_combined_with_a_selector_is_invalid() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}))
        .compile();
    assert!(d.diagnostics.iter().any(|g| g.field == "spec.ingress[0].from[0]"));
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

// ---- bad input never widens ----------------------------------------------------

#[test]
fn an_empty_peer_is_invalid() {
    let d = base().policy("x", "p", json!({"ingress": [{"from": [{}]}]})).compile();
    assert!(d.diagnostics.iter().any(|g| g.field == "spec.ingress[0].from[0]"));
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn peers_that_are_all_invalid_never_mean_all_peers() {
    let d = base()
        .policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Bogus"}]}}]}]}))
        .compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(d.policy.is_empty());
    assert!(d
        .diagnostics
        .iter()
        .any(|g| g.field == "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator"));
}

#[test]
fn invalid_namespace_selector_in_a_peer_contributes_nothing() {
    let d = base()
        .policy("x", "p", json!({"egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}}]}]}))
        .compile();
    assert!(d.endpoints[&XA].egress_isolated);
    assert!(!eg(&d, XA, "10.0.1.1", 80));
    assert!(d
        .diagnostics
        .iter()
        .any(|g| g.field == "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values"));
}

#[test]
fn invalid_policy_pod_selector_isolates_the_whole_namespace_and_allows_nothing() {
    let d = base()
        .policy("x", "open", json!({"ingress": [{}]}))
        .policy("x", "bad", json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}, "ingress": [{}]}))
        .compile();
    assert!(d.endpoints[&XA].ingress_isolated);
    assert!(d.diagnostics.iter().any(|g| g.object == "NetworkPolicy x/bad" && g.field.starts_with("spec.podSelector")));
    // Only the valid policy's allow-all remains.
    assert_eq!(d.rules.iter().filter(|r| r.name == "bad").count(), 0);
    assert!(ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn unknown_policy_type_isolates_both_directions() {
    let d = base()
        .policy("x", "p", json!({"policyTypes": ["Ingress", "Sideways"], "ingress": [{}], "egress": [{}]}))
        .compile();
    assert!(d.endpoints[&XA].ingress_isolated && d.endpoints[&XA].egress_isolated);
    assert!(ing(&d, XA, "10.0.0.2", 80), "the validly named direction keeps its rules");
    assert!(!eg(&d, XA, "10.0.0.2", 80), "egress was not named: its rules do not count");
    assert!(d.diagnostics.iter().any(|g| g.field == "spec.policyTypes[1]"));
}

// ---- pods, ipcache, endpoints ------------------------------------------------

#[test]
fn pods_sharing_namespace_and_labels_share_an_identity() {
    let mut f = base();
    f.pod("x", "a2", &[("app", "a")], "10.0.0.11");
    let d = f.compile();
    let id = |a: &str| ipcache_lookup(&d, ip(a)).identity;
    assert_eq!(id("10.0.0.1"), id("10.0.0.11"));
    assert_ne!(id("10.0.0.1"), id("10.0.1.1"), "same labels, other namespace");
    assert_ne!(id("10.0.0.1"), id("10.0.0.2"));
    assert!(id("10.0.0.1") >= ID_FIRST_LABEL && id("10.0.0.1") < ID_FIRST_CIDR);
    assert_eq!(
        d.identities[&id("10.0.0.1")],
        IdentityLabels { namespace: "x".into(), labels: labels(&[("app", "a")]).into() }
    );
}

#[test]
fn host_network_pods_are_neither_in_the_ipcache_nor_selected() {
    let mut f = base();
    f.pod_json("x", "hn", json!({"metadata": {"labels": {"app": "b"}}, "spec": {"hostNetwork": true, "containers": []}, "status": {"phase": "Running", "podIPs": [{"ip": "172.18.0.2"}]}}));
    f.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}));
    let d = f.compile();
    assert_eq!(ipcache_lookup(&d, ip("172.18.0.2")).identity, ID_WORLD);
    assert!(!ing(&d, XA, "172.18.0.2", 80));
}

#[test]
fn finished_pods_leave_the_ipcache_and_peer_sets() {
    let mut f = base();
    f.pod_json("x", "done", json!({"metadata": {"labels": {"app": "job"}}, "spec": {"containers": []}, "status": {"phase": "Succeeded", "podIPs": [{"ip": "10.0.0.50"}]}}));
    f.pod_json("x", "dead", json!({"metadata": {"labels": {"app": "job"}}, "spec": {"containers": []}, "status": {"phase": "Failed", "podIPs": [{"ip": "10.0.0.51"}]}}));
    f.policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "job"}}}]}]}));
    let d = f.compile();
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.50")).identity, ID_WORLD);
    assert!(!ing(&d, XA, "10.0.0.50", 80));
    assert!(!d.identities.values().any(|i| i.labels.get("app").map(String::as_str) == Some("job")));
}

#[test]
fn reused_ip_goes_to_the_running_pod() {
    let mut f = base();
    f.pod_json("x", "old", json!({"metadata": {"labels": {"v": "old"}, "creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": {"containers": []}, "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.77"}]}}));
    f.pod_json("x", "new", json!({"metadata": {"labels": {"v": "new"}, "creationTimestamp": "2026-01-03T00:00:00Z"}, "spec": {"containers": []}, "status": {"phase": "Pending", "podIPs": [{"ip": "10.0.0.77"}]}}));
    let d = f.compile();
    let id = ipcache_lookup(&d, ip("10.0.0.77")).identity;
    assert_eq!(d.identities[&id].labels["v"], "old");
}

#[test]
fn reused_ip_between_running_pods_goes_to_the_newest() {
    let mut f = base();
    f.pod_json("x", "zzz-old", json!({"metadata": {"labels": {"v": "old"}, "creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": {"containers": []}, "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.77"}]}}));
    f.pod_json("x", "aaa-new", json!({"metadata": {"labels": {"v": "new"}, "creationTimestamp": "2026-01-03T00:00:00Z"}, "spec": {"containers": []}, "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.77"}]}}));
    let d = f.compile();
    assert_eq!(d.identities[&ipcache_lookup(&d, ip("10.0.0.77")).identity].labels["v"], "new");
}

#[test]
fn local_record_addresses_override_pod_status() {
    let mut f = base();
    f.locals[0].ips = vec![ip("10.0.0.100"), ip("fd00::100")];
    let d = f.compile();
    let e = ipcache_lookup(&d, ip("10.0.0.100"));
    assert_eq!((e.identity, e.endpoint), (d.endpoints[&XA].identity, XA));
    assert_eq!(ipcache_lookup(&d, ip("fd00::100")).endpoint, XA);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.1")).identity, ID_WORLD, "the stale status address is not the pod's");
}

/// In one engine, a pod whose endpoint record changes or goes away claims
/// what it claims now: the record's new addresses, then its status again,
/// without its rank as this node's pod.
#[test]
fn a_pods_claims_follow_its_endpoint_record_in_one_engine() {
    let mut f = base();
    f.pod("z", "dup", &[("app", "dup")], "10.0.0.1");
    let mut e = Engine::new();
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.1")).endpoint, XA, "the record's pod wins the address");
    f.locals[0].ips = vec![ip("10.0.0.100")];
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.100")).endpoint, XA);
    let dup = e.identity_of("z", &labels(&[("app", "dup")])).unwrap();
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.1")).identity, dup);
    assert_eq!(d, f.compile());
    f.locals.remove(0);
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.100")).identity, ID_WORLD);
    assert_eq!(e.last_stats().pods_read, 0, "no pod read again");
    assert_eq!(d, f.compile());
}

#[test]
fn remote_pods_have_no_endpoint_in_the_ipcache() {
    let d = base().compile();
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.2")).endpoint, 0);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.1")).endpoint, XA);
}

#[test]
fn pod_ip_falls_back_to_the_singular_field() {
    let mut f = Fixture::default();
    f.pod_json("x", "p", json!({"spec": {"containers": []}, "status": {"phase": "Running", "podIP": "10.1.1.1"}}));
    let d = f.compile();
    assert!(ipcache_lookup(&d, ip("10.1.1.1")).identity >= ID_FIRST_LABEL);
}

#[test]
fn bad_pod_ip_is_a_diagnostic() {
    let mut f = Fixture::default();
    f.pod_json(
        "x",
        "p",
        json!({"spec": {"containers": []}, "status": {"phase": "Running", "podIPs": [{"ip": "nope"}]}}),
    );
    let d = f.compile();
    assert_eq!(d.diagnostics[0].object, "Pod x/p");
    assert_eq!(d.diagnostics[0].field, "status.podIPs[0].ip");
}

#[test]
fn world_prefixes_are_always_present() {
    let d = Fixture::default().compile();
    assert_eq!(d.ipcache.len(), 2);
    assert!(d.ipcache.values().all(|e| e.identity == ID_WORLD && !e.service));
}

#[test]
fn service_cluster_ips_are_marked_and_headless_ones_skipped() {
    let mut f = base();
    f.service("x", "s", json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"]}));
    f.service("x", "h", json!({"clusterIP": "None", "clusterIPs": ["None"]}));
    let d = f.compile();
    assert!(ipcache_lookup(&d, ip("10.96.0.10")).service);
    assert!(ipcache_lookup(&d, ip("fd00:96::10")).service);
    assert_eq!(d.ipcache.values().filter(|e| e.service).count(), 2);
}

#[test]
fn endpoints_only_for_records_whose_pod_exists() {
    let mut f = base();
    f.locals.push(record("x", "ghost", 99, vec![ip("10.0.0.99")]));
    let d = f.compile();
    assert!(d.endpoints.contains_key(&XA) && !d.endpoints.contains_key(&99));
}

#[test]
fn record_with_another_pods_uid_is_not_that_pod() {
    let mut f = base();
    f.store.pods.get_mut(&("x".to_string(), "a".to_string())).unwrap().uid = Some("u-new".into());
    f.locals[0].pod_uid = "u-old".into();
    let d = f.compile();
    assert!(!d.endpoints.contains_key(&XA));
}

/// Records no pod takes are handed on with the reason, so policyd can
/// count and report them; a record its pod takes is not among them.
#[test]
fn records_no_pod_takes_are_listed_with_why() {
    let mut f = base();
    f.locals[0].pod_uid = "u-old".into();
    f.store.pods.get_mut(&("x".to_string(), "a".to_string())).unwrap().uid = Some("u-new".into());
    f.locals.push(record("x", "ghost", 99, vec![ip("10.0.0.99")]));
    f.locals.push(record("", "", 98, vec![ip("10.0.0.98")]));
    f.pod_json("x", "hostnet", json!({"spec": {"hostNetwork": true, "containers": [{"name": "c"}]}}));
    f.locals.push(record("x", "hostnet", 97, vec![]));
    let d = f.compile();
    let got: Vec<(&str, &str, Unmatched)> =
        d.unmatched.iter().map(|u| (u.record.as_str(), u.pod.as_str(), u.reason)).collect();
    let first = format!("c{XA}/eth0");
    let mut want = vec![
        ("c97/eth0", "x/hostnet", Unmatched::NotTakingPart),
        ("c98/eth0", "/", Unmatched::NoPodIdentity),
        ("c99/eth0", "x/ghost", Unmatched::NoSuchPod),
        (first.as_str(), "x/a", Unmatched::OtherIncarnation),
    ];
    want.sort();
    assert_eq!(got, want);
    // the other local pods' records are taken
    assert!(base().compile().unmatched.is_empty());
}

#[test]
fn rule_ids_name_policy_rule_and_peer() {
    let d = base().policy("x", "p", json!({"ingress": [{"ports": [{"port": 1}]}, {"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "1.0.0.0/8"}}]}]})).compile();
    assert_eq!(d.rules.len(), 3);
    for (k, v) in &d.policy {
        let r = d.rule(v.rule).expect("every rule id is in the table");
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.direction, r.tier, r.action),
            ("x", "p", k.direction, Tier::NetworkPolicy, Action::Allow)
        );
    }
    let r1 = d.rules.iter().find(|r| r.rule_index == 1 && r.peer_index == Some(1)).unwrap();
    let class_keys: Vec<_> = d.policy.iter().filter(|(k, _)| k.identity >= ID_FIRST_CIDR).collect();
    assert!(!class_keys.is_empty() && class_keys.iter().all(|(_, v)| v.rule == r1.id));
}

// ---- identities, determinism, incrementality --------------------------------

#[test]
fn identities_are_stable_across_compiles_and_unrelated_changes() {
    let mut f = base();
    let mut e = Engine::new();
    let d1 = e.compile(&f.store, &f.locals);
    f.pod("x", "zz", &[("app", "new")], "10.0.0.200");
    f.store.pods.remove(&("y".to_string(), "a".to_string()));
    let d2 = e.compile(&f.store, &f.locals);
    for (a, ent) in d1.ipcache.iter() {
        if let Some(e2) = d2.ipcache.get(a) {
            assert_eq!(ent.identity, e2.identity, "{a}");
        }
    }
}

#[test]
fn seeded_engine_keeps_the_previous_numbers() {
    let mut f = base();
    // Shift allocation order in the first engine so numbers differ from a fresh one.
    f.pod("a-first", "p", &[("k", "v")], "10.9.0.1");
    let mut e1 = Engine::new();
    let d1 = e1.compile(&f.store, &f.locals);
    f.store.pods.remove(&("a-first".to_string(), "p".to_string()));
    let d_fresh = Engine::new().compile(&f.store, &f.locals);
    let mut e2 = Engine::new();
    assert_eq!(e2.seed_identities(&d1.identities), d1.identities.len());
    let d2 = e2.compile(&f.store, &f.locals);
    assert_ne!(d_fresh.ipcache, d2.ipcache, "the test must make seeding matter");
    for (n, ent) in d2.ipcache.iter() {
        assert_eq!(d1.ipcache[n].identity, ent.identity);
    }
    // A new label set after seeding gets a number no seed holds.
    f.pod("x", "n", &[("brand", "new")], "10.0.0.201");
    let d3 = e2.compile(&f.store, &f.locals);
    let id = ipcache_lookup(&d3, ip("10.0.0.201")).identity;
    assert!(!d1.identities.contains_key(&id));
}

#[test]
fn compile_is_deterministic() {
    let f = named_fixture()
        .policy("x", "p", json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/24"]}}, {"podSelector": {}}], "ports": [{"port": "http"}, {"port": 1, "endPort": 100}]}]}))
        .clone();
    assert_eq!(f.compile(), f.compile());
    let mut e = Engine::new();
    let a = e.compile(&f.store, &f.locals);
    assert_eq!(a, e.compile(&f.store, &f.locals));
}

#[test]
fn recompiling_unchanged_input_reuses_everything() {
    let f = base().policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {}}]}]})).clone();
    let mut e = Engine::new();
    e.compile(&f.store, &f.locals);
    e.compile(&f.store, &f.locals);
    let s = e.last_stats();
    assert_eq!((s.policies_compiled, s.peer_sets_evaluated, s.endpoints_compiled), (0, 0, 0));
    assert_eq!(s.endpoints_reused, 2);
}

#[test]
fn one_policy_change_recompiles_that_policy_and_its_endpoints_only() {
    let mut f = base();
    f.policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}]}]}));
    f.policy("y", "q", json!({"ingress": [{"from": [{"podSelector": {}}]}]}));
    let mut e = Engine::new();
    e.compile(&f.store, &f.locals);
    f.policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}));
    let d = e.compile(&f.store, &f.locals);
    let s = e.last_stats();
    // Its peers are pod selectors: x/a's entries are patched for their identities.
    assert_eq!((s.policies_compiled, s.endpoints_patched, s.endpoints_compiled, s.endpoints_reused), (1, 1, 0, 1));
    assert_eq!(d, f.compile(), "incremental result equals a fresh compile");
    // An ipBlock peer's entries are not per identity: compiled whole.
    f.policy("x", "p", json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}]}));
    let d = e.compile(&f.store, &f.locals);
    let s = e.last_stats();
    assert_eq!((s.endpoints_patched, s.endpoints_compiled), (0, 1));
    assert_eq!(d, f.compile());
}

#[test]
fn one_label_change_patches_peer_sets_and_matches_a_fresh_compile() {
    let mut f = base();
    f.policy(
        "x",
        "p",
        json!({"ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "db"}}}]}]}),
    );
    let mut e = Engine::new();
    let d1 = e.compile(&f.store, &f.locals);
    assert!(!ing(&d1, XA, "10.0.1.1", 80));
    f.store.pods.get_mut(&("y".to_string(), "a".to_string())).unwrap().labels_mut().insert("role".into(), "db".into());
    let d2 = e.compile(&f.store, &f.locals);
    assert!(ing(&d2, XA, "10.0.1.1", 80));
    let s = e.last_stats();
    assert_eq!((s.policies_compiled, s.peer_sets_evaluated, s.peer_sets_patched), (0, 0, 1));
    // The new label set got the next number here, another one in a fresh engine.
    assert_eq!(props::canonical(&d2), props::canonical(&f.compile()));
}

#[test]
fn only_new_or_changed_pods_are_read_again() {
    let mut f = base();
    let mut e = Engine::new();
    e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().pods_read, 4);
    e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().pods_read, 0);
    f.pod("x", "new", &[("app", "a")], "10.0.0.9");
    f.store.pods.get_mut(&("y".to_string(), "b".to_string())).unwrap().phase = Some("Failed".into());
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().pods_read, 2);
    assert_eq!(ipcache_lookup(&d, ip("10.0.1.2")).identity, ID_WORLD);
    f.store.pods.remove(&("x".to_string(), "new".to_string()));
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.9")).identity, ID_WORLD);
    assert_eq!(d, f.compile());
}

#[test]
fn ipcache_follows_services_records_and_pods_in_one_engine() {
    let mut f = base();
    let mut e = Engine::new();
    e.compile(&f.store, &f.locals);
    f.service("x", "s", json!({"clusterIP": "10.96.0.1"}));
    let d = e.compile(&f.store, &f.locals);
    assert!(ipcache_lookup(&d, ip("10.96.0.1")).service);
    f.locals[0].gateways = vec![ip("10.0.0.254")];
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.254")).identity, ID_HOST);
    f.store.pods.remove(&("x".to_string(), "b".to_string()));
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(ipcache_lookup(&d, ip("10.0.0.2")).identity, ID_WORLD);
    f.store.services.clear();
    let d = e.compile(&f.store, &f.locals);
    assert!(!ipcache_lookup(&d, ip("10.96.0.1")).service);
    // Numbers differ from a fresh engine's (x/b's identity was allocated here).
    assert_eq!(props::canonical(&d), props::canonical(&f.compile()));
}

#[test]
fn host_network_pods_with_a_version_are_not_read_again() {
    let mut f = base();
    f.pod_json("x", "hn", json!({"metadata": {"resourceVersion": "7"}, "spec": {"hostNetwork": true, "containers": []}, "status": {"phase": "Running", "podIPs": [{"ip": "172.18.0.2"}]}}));
    let mut e = Engine::new();
    e.compile(&f.store, &f.locals);
    e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().pods_read, 0);
}

#[test]
fn resource_version_changes_are_picked_up() {
    let mut f = base();
    for p in f.store.pods.values_mut() {
        p.resource_version = Some("1".into());
    }
    f.policy("x", "p", json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}]}));
    f.store.policies.values_mut().for_each(|p| p.metadata.resource_version = Some("1".into()));
    let mut e = Engine::new();
    assert!(!ing(&e.compile(&f.store, &f.locals), XA, "10.0.0.2", 80));
    // As the API server does: every write bumps resourceVersion.
    let b = f.store.pods.get_mut(&("x".to_string(), "b".to_string())).unwrap();
    b.labels_mut().insert("app".into(), "c".into());
    b.resource_version = Some("2".into());
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().pods_read, 1);
    assert!(ing(&d, XA, "10.0.0.2", 80));
    f.policy("x", "p", json!({"ingress": []}));
    f.store.policies.values_mut().for_each(|p| p.metadata.resource_version = Some("2".into()));
    let d = e.compile(&f.store, &f.locals);
    assert_eq!(e.last_stats().policies_compiled, 1);
    assert!(!ing(&d, XA, "10.0.0.2", 80));
}

#[test]
fn namespace_label_change_reevaluates_namespace_selectors() {
    let mut f = base();
    f.policy("x", "p", json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}]}));
    let mut e = Engine::new();
    assert!(!ing(&e.compile(&f.store, &f.locals), XA, "10.0.1.1", 80));
    f.ns("y", &[("team", "y"), ("env", "prod")]);
    let d = e.compile(&f.store, &f.locals);
    assert!(ing(&d, XA, "10.0.1.1", 80));
    assert_eq!(d, f.compile());
}

#[test]
fn named_port_change_on_a_peer_pod_recompiles_egress() {
    let mut f = named_fixture();
    f.policy("x", "p", json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "alt"}}}], "ports": [{"port": "http"}]}]}));
    let mut e = Engine::new();
    assert!(eg(&e.compile(&f.store, &f.locals), 9, "10.0.0.4", 9090));
    f.pod_ports("x", "alt", &[("app", "alt")], "10.0.0.4", json!([{"name": "http", "containerPort": 9191}]));
    let d = e.compile(&f.store, &f.locals);
    assert!(eg(&d, 9, "10.0.0.4", 9191) && !eg(&d, 9, "10.0.0.4", 9090));
    assert_eq!(d, f.compile());
}

#[test]
fn diff_lists_upserts_and_removals() {
    use crate::sync::DesiredDiff;
    let mut f = base();
    let mut e = Engine::new();
    let d1 = e.compile(&f.store, &f.locals);
    f.policy("x", "p", json!({"ingress": [{"ports": [{"port": 80}]}]}));
    let d2 = e.compile(&f.store, &f.locals);
    let diff = DesiredDiff::between(&d1, &d2);
    // The rule's entry under each peer wildcard.
    assert_eq!(diff.policy.upsert.len(), 2);
    assert_eq!(diff.endpoints.upsert.len(), 1);
    assert!(diff.ipcache.is_empty() && diff.policy.remove.is_empty());
    let back = DesiredDiff::between(&d2, &d1);
    assert_eq!(back.policy.remove.len(), 2);
    assert!(DesiredDiff::between(&d2, &d2).is_empty());
}

#[test]
fn constants_mirror_the_abi() {
    assert_eq!((ID_ANY, ID_HOST, ID_WORLD, ID_FIRST_LABEL, ID_FIRST_CIDR), (0, 1, 2, 256, 1 << 24));
    // The hole marker is a class number, below every class handed out.
    let f = base()
        .policy(
            "x",
            "p",
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}),
        )
        .clone();
    let d = f.compile();
    assert!(d.cidr.values().all(|c| *c >= ID_FIRST_CIDR));
    assert!(d.policy.keys().filter(|k| k.identity >= ID_FIRST_CIDR).all(|k| k.identity > CIDR_NO_CLASS));
}

// ---- compile slices --------------------------------------------------------

/// Four local pods of app=w in x, each selected by a policy with ipBlocks;
/// a fifth pod (app=n) not yet local.
fn sliced_fixture() -> Fixture {
    let mut f = Fixture::default();
    f.ns("x", &[]);
    for i in 1..=4u32 {
        f.pod("x", &format!("w{i}"), &[("app", "w")], &format!("10.0.0.{i}"));
        f.local("x", &format!("w{i}"), 100 + i);
    }
    f.pod("x", "n", &[("app", "n")], "10.0.0.9");
    let blocks: Vec<Value> = (0..50)
        .map(|k| json!({"ipBlock": {"cidr": format!("172.16.{k}.0/24"), "except": [format!("172.16.{k}.128/25")]}}))
        .collect();
    f.policy("x", "wide", json!({"podSelector": {}, "ingress": [{"from": blocks, "ports": [{"port": 443}]}]}));
    f
}

#[test]
fn a_sliced_compile_ends_equal_to_a_complete_one() {
    let f = sliced_fixture();
    let one_at_a_time = Slice { budget: Some(1), first: BTreeSet::new() };
    let mut e = Engine::new();
    let mut compiled = Vec::new();
    loop {
        let d = e.compile_slice(&f.store, &f.locals, &one_at_a_time);
        // A pending endpoint has nothing in the result; a compiled one all.
        for ep in &d.pending {
            assert!(!d.endpoints.contains_key(ep));
            assert!(!d.policy.keys().any(|k| k.endpoint == *ep) && !d.cidr.keys().any(|k| k.endpoint == *ep));
        }
        compiled.push(d.endpoints.len());
        if d.pending.is_empty() {
            assert_eq!(d, f.compile(), "the last slice equals a complete compile");
            break;
        }
    }
    assert_eq!(compiled, [1, 2, 3, 4], "one endpoint per slice (the first always goes), lowest ifindex first");

    // A change that touches every endpoint: slices again, and ends where an
    // engine with the same history compiling in one go ends (class numbers
    // depend on what was compiled before).
    let mut twin = Engine::new();
    twin.compile(&f.store, &f.locals);
    let mut g = f.clone();
    g.policy("x", "wide", json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]}));
    let d = e.compile_slice(&g.store, &g.locals, &one_at_a_time);
    assert_eq!(d.pending.len(), 3);
    let mut last = d;
    while !last.pending.is_empty() {
        last = e.compile_slice(&g.store, &g.locals, &one_at_a_time);
    }
    assert_eq!(last, twin.compile(&g.store, &g.locals));
}

#[test]
fn endpoints_waiting_for_ready_go_before_a_long_recompile() {
    let f = sliced_fixture();
    let mut e = Engine::new();
    assert!(e.compile(&f.store, &f.locals).pending.is_empty());
    // Same history, complete compiles: the reference (rule and class
    // numbers depend on history).
    let mut twin = Engine::new();
    twin.compile(&f.store, &f.locals);

    // Every running endpoint's policy changes (a long recompile), and pod n
    // starts on ifindex 999 meanwhile: it is compiled first, in the very
    // next slice, whatever its ifindex.
    let mut g = f.clone();
    g.policy("x", "wide", json!({"podSelector": {"matchLabels": {"app": "w"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]}));
    g.policy("x", "n-only", json!({"podSelector": {"matchLabels": {"app": "n"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "w"}}}]}]}));
    g.local("x", "n", 999);
    let slice = Slice { budget: Some(1), first: BTreeSet::from([999]) };
    let d = e.compile_slice(&g.store, &g.locals, &slice);
    assert_eq!(d.pending, BTreeSet::from([101, 102, 103, 104]), "the running ones wait");
    let n = d.endpoints[&999];
    assert!(n.ingress_isolated);
    assert!(ing(&d, 999, "10.0.0.1", 80), "its allows are in with it");
    assert!(!ing(&d, 999, "192.168.0.1", 80));
    assert_eq!(
        d.policy.iter().filter(|(k, _)| k.endpoint == 999).collect::<Vec<_>>(),
        twin.compile(&g.store, &g.locals).policy.iter().filter(|(k, _)| k.endpoint == 999).collect::<Vec<_>>(),
        "exactly what a complete compile gives it"
    );
}

mod cluster;
mod props;
