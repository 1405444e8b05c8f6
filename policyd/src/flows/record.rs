//! A dataplane event turned into a flow record: who talked to whom, the
//! verdict and the policy and rule that decided it, by name.
//!
//! Pure: the names come from a [`Names`] snapshot the daemon loop builds
//! after each compile, so the reader thread never touches the store or the
//! engine. A record carries only names the pod's owner may see: namespaces,
//! pods, addresses, policy and rule names; never an identity's labels.

use crate::engine::{Action, Direction, Engine, PodNameChanges, RuleInfo, Tier};
use crate::store::{Key, Store};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use weir_bpf::abi;
use weir_common::registry::EndpointRecord;

/// What the reader needs to name an event's parts, as of the last compile.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub node: String,
    /// Rule id in the maps -> the policy rule it stands for.
    rules: HashMap<u32, PolicyRef>,
    /// This node's endpoints (host veth ifindex): the pod, and per
    /// direction the policies isolating it.
    endpoints: HashMap<u32, EndpointNames>,
    /// Every known pod address -> its pod.
    pods: PodNames,
}

/// Addresses to the pods they name, as the engine's claims have them
/// ([`Engine::take_pod_names`]), kept up to date by patching: a base
/// shared between snapshots and the changes since, folded into a new base
/// once they grow. A snapshot after a compile costs what the compile
/// moved, not a walk over a cluster's pods.
#[derive(Debug, Clone, Default)]
pub struct PodNames {
    base: Arc<HashMap<IpAddr, Key>>,
    /// None: the address names no pod any more.
    recent: HashMap<IpAddr, Option<Key>>,
}

impl PodNames {
    pub fn get(&self, ip: &IpAddr) -> Option<&Key> {
        match self.recent.get(ip) {
            Some(name) => name.as_ref(),
            None => self.base.get(ip),
        }
    }

    /// Take in what compiles moved.
    pub fn patch(&mut self, changes: PodNameChanges) {
        if changes.all {
            self.base = Arc::new(changes.names.into_iter().filter_map(|(ip, k)| Some((ip, k?))).collect());
            self.recent.clear();
            return;
        }
        self.recent.extend(changes.names);
        // Each snapshot copies `recent`: keep it small against the base.
        if self.recent.len() > 1024.max(self.base.len() / 64) {
            let mut base = (*self.base).clone();
            for (ip, name) in self.recent.drain() {
                match name {
                    Some(k) => base.insert(ip, k),
                    None => base.remove(&ip),
                };
            }
            self.base = Arc::new(base);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct EndpointNames {
    pod: Key,
    isolating_ingress: Vec<String>,
    isolating_egress: Vec<String>,
    /// The audit-mode policies that would isolate it, where no enforced
    /// one does.
    auditing_ingress: Vec<String>,
    auditing_egress: Vec<String>,
}

impl Names {
    /// Before the first compile: only the node is known.
    pub fn for_node(node: &str) -> Names {
        Names { node: node.to_string(), ..Default::default() }
    }

    /// From the loop's state after a compile: the store, the engine, this
    /// node's endpoint records, the compile's rules
    /// ([`crate::engine::Desired::rules`]) and the pod names brought up to
    /// date with it ([`PodNames::patch`]).
    pub fn build(
        node: &str,
        store: &Store,
        engine: &Engine,
        records: &[EndpointRecord],
        rules: &[RuleInfo],
        pods: PodNames,
    ) -> Names {
        let endpoints = records
            .iter()
            .map(|r| {
                let pod = (r.pod_namespace.clone(), r.pod_name.clone());
                let names = EndpointNames {
                    isolating_ingress: engine.isolating_policies(store, &pod, Direction::Ingress),
                    isolating_egress: engine.isolating_policies(store, &pod, Direction::Egress),
                    auditing_ingress: engine.auditing_policies(store, &pod, Direction::Ingress),
                    auditing_egress: engine.auditing_policies(store, &pod, Direction::Egress),
                    pod,
                };
                (r.host_ifindex, names)
            })
            .collect();
        Names {
            node: node.to_string(),
            rules: rules.iter().map(|r| (r.id, PolicyRef::of(r))).collect(),
            endpoints,
            pods,
        }
    }
}

/// The policy rule that decided, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum PolicyRef {
    /// `spec.ingress[rule]` or `spec.egress[rule]` of NetworkPolicy
    /// namespace/name.
    NetworkPolicy { namespace: String, name: String, direction: &'static str, rule: u32 },
    /// Rule `rule` (its index; `ruleName` its name) of a ClusterNetworkPolicy.
    ClusterNetworkPolicy {
        name: String,
        tier: &'static str,
        priority: u32,
        direction: &'static str,
        rule: u32,
        #[serde(rename = "ruleName")]
        rule_name: String,
        action: &'static str,
    },
}

impl PolicyRef {
    fn of(r: &RuleInfo) -> PolicyRef {
        let direction = direction_name(r.direction);
        match r.tier {
            Tier::NetworkPolicy => PolicyRef::NetworkPolicy {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                direction,
                rule: r.rule_index,
            },
            Tier::Admin | Tier::Baseline => PolicyRef::ClusterNetworkPolicy {
                name: r.name.clone(),
                tier: if r.tier == Tier::Admin { "Admin" } else { "Baseline" },
                priority: r.priority,
                direction,
                rule: r.rule_index,
                rule_name: r.rule_name.clone(),
                action: match r.action {
                    Action::Allow => "Accept",
                    Action::Deny => "Deny",
                    Action::Pass => "Pass",
                },
            },
        }
    }
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct End {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub ip: IpAddr,
    /// 0 for protocols without ports (ICMP: its identifier is not a port).
    pub port: u16,
}

/// One flow log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub node: String,
    /// The side judged: `egress` (the source's) or `ingress` (the destination's).
    pub direction: &'static str,
    /// `allow` or `drop`.
    pub verdict: &'static str,
    /// The dataplane's reason, as `weir_dataplane_packets_total{reason}` names it.
    pub reason: &'static str,
    pub protocol: String,
    pub source: End,
    pub destination: End,
    /// The rule that decided, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// An isolation drop no rule allowed: the policies isolating the
    /// judged pod on that side.
    #[serde(rename = "isolatedBy", skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// An audit policy's would-be drop (`allow_audit`): the audit-mode
    /// policies that would isolate the judged pod on that side.
    #[serde(rename = "auditedBy", skip_serializing_if = "Vec::is_empty")]
    pub audited_by: Vec<String>,
}

impl FlowRecord {
    /// Whether the record is about pod `namespace/name`, at either end.
    pub fn involves(&self, pod: &Key) -> bool {
        [&self.source, &self.destination]
            .iter()
            .any(|e| e.namespace.as_deref() == Some(pod.0.as_str()) && e.pod.as_deref() == Some(pod.1.as_str()))
    }
}

/// The records of event `e`: its own, and when it also says that the local
/// source's egress is an audit would-be drop (`EVENT_SOURCE_AUDIT`, at
/// to_pod, whose one event stands for both sides), that side's too.
pub fn build_all(names: &Names, e: &abi::Event, time: String) -> Vec<FlowRecord> {
    let mut out = vec![build(names, e, time.clone())];
    if e.flags & abi::EVENT_SOURCE_AUDIT != 0 {
        let src = weir_bpf::addr::from_bytes(e.saddr);
        let source_ep = names.pods.get(&src).and_then(|pod| names.endpoints.iter().find(|(_, n)| n.pod == *pod));
        if let Some((ifindex, _)) = source_ep {
            let side = abi::Event {
                endpoint: *ifindex,
                direction: abi::DIR_EGRESS,
                reason: abi::R_ALLOW_AUDIT,
                rule: 0,
                flags: 0,
                ..*e
            };
            out.push(build(names, &side, time));
        }
    }
    out
}

/// Build the record of event `e`, which happened at `time` (RFC 3339).
pub fn build(names: &Names, e: &abi::Event, time: String) -> FlowRecord {
    let saddr = weir_bpf::addr::from_bytes(e.saddr);
    let daddr = weir_bpf::addr::from_bytes(e.daddr);
    let egress = e.direction == abi::DIR_EGRESS;
    let judged = names.endpoints.get(&e.endpoint);
    // The judged endpoint is one end; its record is authoritative for that
    // end even before the pod's address reaches the store.
    let end = |ip: IpAddr, port: u16, is_judged: bool| {
        let pod = if is_judged { judged.map(|j| &j.pod) } else { None }.or_else(|| names.pods.get(&ip));
        End { namespace: pod.map(|k| k.0.clone()), pod: pod.map(|k| k.1.clone()), ip, port }
    };
    let ports = has_ports(e.protocol);
    let source = end(saddr, if ports { u16::from_be(e.sport) } else { 0 }, egress);
    let destination = end(daddr, if ports { u16::from_be(e.dport) } else { 0 }, !egress);
    let drop = abi::reason_is_drop(e.reason);
    let policy = names.rules.get(&e.rule).filter(|_| e.rule != 0).cloned();
    let (isolated_by, audited_by) = match (e.reason, judged) {
        (abi::R_DROP_POLICY, Some(j)) => {
            (if egress { j.isolating_egress.clone() } else { j.isolating_ingress.clone() }, Vec::new())
        }
        (abi::R_ALLOW_AUDIT, Some(j)) => {
            (Vec::new(), if egress { j.auditing_egress.clone() } else { j.auditing_ingress.clone() })
        }
        _ => (Vec::new(), Vec::new()),
    };
    FlowRecord {
        time,
        node: names.node.clone(),
        direction: if egress { "egress" } else { "ingress" },
        verdict: if drop { "drop" } else { "allow" },
        reason: abi::reason_name(e.reason),
        protocol: protocol_name(e.protocol),
        source,
        destination,
        policy,
        isolated_by,
        audited_by,
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        6 | 17 | 132 => crate::api::resolve::proto_name(p).into(),
        n => n.to_string(),
    }
}

/// RFC 3339 (UTC, nanoseconds) of `nanos` since the Unix epoch.
pub fn rfc3339(nanos: u128) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let sub = (nanos % 1_000_000_000) as u32;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{sub:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> Names {
        let np = RuleInfo {
            id: 7,
            namespace: "x".into(),
            name: "from-b".into(),
            direction: Direction::Ingress,
            rule_index: 1,
            peer_index: Some(0),
            tier: Tier::NetworkPolicy,
            action: Action::Allow,
            rule_name: String::new(),
            priority: 0,
        };
        let cnp = RuleInfo {
            id: 9,
            namespace: String::new(),
            name: "block-db".into(),
            direction: Direction::Egress,
            rule_index: 2,
            peer_index: None,
            tier: Tier::Admin,
            action: Action::Deny,
            rule_name: "no-db".into(),
            priority: 10,
        };
        let a = ("x".to_string(), "a".to_string());
        Names {
            node: "n1".into(),
            rules: [np, cnp].iter().map(|r| (r.id, PolicyRef::of(r))).collect(),
            endpoints: HashMap::from([(
                31,
                EndpointNames {
                    pod: a.clone(),
                    isolating_ingress: vec!["x/deny".into(), "x/from-b".into()],
                    isolating_egress: vec![],
                    auditing_ingress: vec![],
                    auditing_egress: vec!["x/egress-trial".into()],
                },
            )]),
            pods: PodNames {
                base: Arc::new(HashMap::from([
                    ("10.0.0.3".parse().unwrap(), a),
                    ("10.0.0.2".parse().unwrap(), ("y".to_string(), "b".to_string())),
                ])),
                recent: HashMap::new(),
            },
        }
    }

    /// Patched names read as the changes say, across a fold of the
    /// changes into a new base; a full set starts afresh.
    #[test]
    fn pod_names_follow_their_patches() {
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let key = |i: u32| ("x".to_string(), format!("p{i}"));
        let mut names = PodNames::default();
        names.patch(PodNameChanges { all: true, names: (0..10).map(|i| (ip(i), Some(key(i)))).collect() });
        assert_eq!(names.get(&ip(3)), Some(&key(3)));
        names.patch(PodNameChanges { all: false, names: vec![(ip(3), None), (ip(4), Some(key(40)))] });
        let before = names.clone();
        assert_eq!((names.get(&ip(3)), names.get(&ip(4))), (None, Some(&key(40))));
        // Enough changes to fold them into the base.
        names.patch(PodNameChanges { all: false, names: (100..1200).map(|i| (ip(i), Some(key(i)))).collect() });
        assert!(names.recent.is_empty());
        assert_eq!(
            (names.get(&ip(3)), names.get(&ip(4)), names.get(&ip(1100))),
            (None, Some(&key(40)), Some(&key(1100)))
        );
        assert_eq!(before.get(&ip(1100)), None, "an earlier snapshot keeps what it was");
        names.patch(PodNameChanges { all: true, names: vec![(ip(7), Some(key(7)))] });
        assert_eq!((names.get(&ip(4)), names.get(&ip(7))), (None, Some(&key(7))));
    }

    fn event(direction: u8, reason: u8, rule: u32, src: &str, dst: &str) -> abi::Event {
        abi::Event {
            ts_ns: 0,
            endpoint: 31,
            peer_identity: 300,
            rule,
            saddr: weir_bpf::addr::to_bytes(src.parse().unwrap()),
            daddr: weir_bpf::addr::to_bytes(dst.parse().unwrap()),
            sport: 40000u16.to_be(),
            dport: 8080u16.to_be(),
            protocol: 6,
            direction,
            reason,
            flags: 0,
            pad: [0; 4],
        }
    }

    #[test]
    fn an_isolation_drop_names_both_pods_and_the_policies_isolating_that_side() {
        let e = event(abi::DIR_INGRESS, abi::R_DROP_POLICY, 0, "10.0.0.2", "10.0.0.3");
        let r = build(&names(), &e, "t".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({
                "time": "t", "node": "n1", "direction": "ingress", "verdict": "drop", "reason": "drop_policy",
                "protocol": "TCP",
                "source": {"namespace": "y", "pod": "b", "ip": "10.0.0.2", "port": 40000},
                "destination": {"namespace": "x", "pod": "a", "ip": "10.0.0.3", "port": 8080},
                "isolatedBy": ["x/deny", "x/from-b"],
            })
        );
        assert!(r.involves(&("y".into(), "b".into())) && r.involves(&("x".into(), "a".into())));
        assert!(!r.involves(&("x".into(), "b".into())));
        // The egress side of the same endpoint is isolated by nothing.
        let e = event(abi::DIR_EGRESS, abi::R_DROP_POLICY, 0, "10.0.0.3", "192.0.2.1");
        let r = build(&names(), &e, "t".into());
        assert!(r.isolated_by.is_empty());
        assert_eq!(r.source.pod.as_deref(), Some("a"));
        assert_eq!((r.destination.namespace.as_ref(), r.destination.pod.as_ref()), (None, None), "the world");
    }

    #[test]
    fn an_allow_names_the_network_policy_rule_and_a_cluster_deny_its_tier_priority_and_rule() {
        let r = build(&names(), &event(abi::DIR_INGRESS, abi::R_ALLOW_POLICY, 7, "10.0.0.2", "10.0.0.3"), "t".into());
        assert_eq!(r.verdict, "allow");
        assert_eq!(
            serde_json::to_value(&r.policy).unwrap(),
            json!({"kind": "NetworkPolicy", "namespace": "x", "name": "from-b", "direction": "ingress", "rule": 1})
        );
        assert!(r.isolated_by.is_empty(), "an allow names its rule only");

        let e = event(abi::DIR_EGRESS, abi::R_DROP_CLUSTER_POLICY, 9, "10.0.0.3", "10.0.0.2");
        let r = build(&names(), &e, "t".into());
        assert_eq!(r.reason, "drop_cluster_policy");
        assert_eq!(
            serde_json::to_value(&r.policy).unwrap(),
            json!({"kind": "ClusterNetworkPolicy", "name": "block-db", "tier": "Admin", "priority": 10,
                   "direction": "egress", "rule": 2, "ruleName": "no-db", "action": "Deny"})
        );
    }

    /// An audit policy's would-be drop is an allow naming the audit
    /// policies that would isolate that side.
    #[test]
    fn an_audit_would_be_drop_names_the_audit_policies() {
        let r = build(&names(), &event(abi::DIR_EGRESS, abi::R_ALLOW_AUDIT, 0, "10.0.0.3", "10.0.0.2"), "t".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!((v["verdict"].as_str(), v["reason"].as_str()), (Some("allow"), Some("allow_audit")));
        assert_eq!(v["auditedBy"], json!(["x/egress-trial"]));
        assert!(v.get("isolatedBy").is_none() && v.get("policy").is_none(), "{v}");
        let f = super::super::Filter::parse(None, Some("audit")).unwrap();
        assert!(f.matches(&r));
        let allow =
            build(&names(), &event(abi::DIR_INGRESS, abi::R_ALLOW_POLICY, 7, "10.0.0.2", "10.0.0.3"), "t".into());
        assert!(!f.matches(&allow), "a plain allow is not an audit record");
        assert!(allow.audited_by.is_empty());
    }

    /// At to_pod one event stands for a local flow's two sides: when it
    /// says the source's egress is an audit would-be drop, that side gets
    /// its own record, naming the source's audit policies.
    #[test]
    fn a_local_sources_audit_would_be_drop_is_a_record_of_its_own() {
        let mut n = names();
        n.endpoints.insert(
            32,
            EndpointNames {
                pod: ("y".to_string(), "b".to_string()),
                auditing_egress: vec!["y/trial".into()],
                ..Default::default()
            },
        );
        let mut e = event(abi::DIR_INGRESS, abi::R_ALLOW_POLICY, 7, "10.0.0.2", "10.0.0.3");
        assert_eq!(build_all(&n, &e, "t".into()).len(), 1);
        e.flags = abi::EVENT_SOURCE_AUDIT;
        let rs = build_all(&n, &e, "t".into());
        assert_eq!(rs.len(), 2, "{rs:?}");
        assert_eq!((rs[0].direction, rs[0].reason), ("ingress", "allow_policy"));
        assert_eq!((rs[1].direction, rs[1].reason, rs[1].verdict), ("egress", "allow_audit", "allow"));
        assert_eq!(rs[1].audited_by, ["y/trial"]);
        assert_eq!((rs[1].source.pod.as_deref(), rs[1].destination.pod.as_deref()), (Some("b"), Some("a")));
        assert_eq!(rs[1].policy, None);
    }

    /// Only names: the peer's identity and its labels never reach a line.
    #[test]
    fn a_record_carries_no_identity_or_labels() {
        let e = event(abi::DIR_INGRESS, abi::R_DROP_POLICY, 0, "10.0.0.2", "10.0.0.3");
        let line = serde_json::to_string(&build(&names(), &e, "t".into())).unwrap();
        assert!(!line.contains("300") && !line.contains("identity") && !line.contains("labels"), "{line}");
    }

    #[test]
    fn icmp_has_no_ports_and_unknown_rules_are_left_out() {
        let mut e = event(abi::DIR_INGRESS, abi::R_DROP_POLICY, 12345, "10.0.0.2", "10.0.0.3");
        e.protocol = 1;
        let r = build(&names(), &e, "t".into());
        assert_eq!((r.protocol.as_str(), r.source.port, r.destination.port), ("ICMP", 0, 0));
        assert_eq!(r.policy, None, "a rule id the last compile does not know");
    }

    #[test]
    fn rfc3339_formats_utc_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T23:59:59.5Z (a leap day)
        assert_eq!(rfc3339(1_709_251_199_500_000_000), "2024-02-29T23:59:59.500000000Z");
        assert_eq!(rfc3339(1_798_761_600_000_000_001), "2027-01-01T00:00:00.000000001Z");
    }
}
