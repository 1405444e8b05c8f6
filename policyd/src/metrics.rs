//! A small Prometheus registry: counters, gauges and one histogram family,
//! with labels, rendered in the text exposition format (version 0.0.4).
//!
//! Fixed families, one struct: the daemon and the sources update fields
//! directly, `/metrics` renders them. No global registry, so tests each own
//! one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamilyType {
    Counter,
    Gauge,
}

/// A counter or gauge family: one value per label-value tuple.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    ty: FamilyType,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, ty: FamilyType, labels: &'static [&'static str]) -> Family {
        Family { name, help, ty, labels, values: Mutex::new(BTreeMap::new()) }
    }

    fn key(&self, label_values: &[&str]) -> Vec<String> {
        // A wrong arity is a programming error; keep the series readable
        // rather than panicking in the daemon.
        debug_assert_eq!(label_values.len(), self.labels.len(), "metric {} label arity", self.name);
        label_values.iter().map(|s| s.to_string()).collect()
    }

    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1.0);
    }

    pub fn add(&self, label_values: &[&str], v: f64) {
        let k = self.key(label_values);
        *self.values.lock().unwrap().entry(k).or_insert(0.0) += v;
    }

    /// Set a value outright. For counters this mirrors a count kept
    /// elsewhere (the dataplane's per-CPU counters), which only grows.
    pub fn set(&self, label_values: &[&str], v: f64) {
        let k = self.key(label_values);
        self.values.lock().unwrap().insert(k, v);
    }

    /// Forget every series (e.g. before re-setting all map sizes).
    pub fn clear(&self) {
        self.values.lock().unwrap().clear();
    }

    pub fn get(&self, label_values: &[&str]) -> f64 {
        let k = self.key(label_values);
        self.values.lock().unwrap().get(&k).copied().unwrap_or(0.0)
    }

    fn render(&self, out: &mut String) {
        let ty = match self.ty {
            FamilyType::Counter => "counter",
            FamilyType::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, ty);
        let values = self.values.lock().unwrap();
        if self.labels.is_empty() && values.is_empty() {
            let _ = writeln!(out, "{} 0", self.name);
        }
        for (lv, v) in values.iter() {
            let _ = writeln!(out, "{}{} {}", self.name, label_set(self.labels, lv, None), fmt_value(*v));
        }
    }
}

/// A histogram without labels (cumulative buckets, sum, count).
#[derive(Debug)]
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    state: Mutex<HistState>,
}

#[derive(Debug, Default)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Histogram {
        Histogram {
            name,
            help,
            bounds,
            state: Mutex::new(HistState { counts: vec![0; bounds.len()], sum: 0.0, count: 0 }),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap();
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                s.counts[i] += 1;
            }
        }
        s.sum += v;
        s.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.state.lock().unwrap().count
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let s = self.state.lock().unwrap();
        for (i, b) in self.bounds.iter().enumerate() {
            let _ = writeln!(out, "{}_bucket{{le=\"{}\"}} {}", self.name, fmt_value(*b), s.counts[i]);
        }
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {}", self.name, s.count);
        let _ = writeln!(out, "{}_sum {}", self.name, fmt_value(s.sum));
        let _ = writeln!(out, "{}_count {}", self.name, s.count);
    }
}

/// Every metric policyd exports.
#[derive(Debug)]
pub struct Metrics {
    /// weir_policyd_source_events_total{source,kind,op}: objects received
    /// (op: apply, delete, replace).
    pub source_events: Family,
    /// weir_policyd_source_errors_total{source,reason}: reason is the
    /// source error's stable label (`SourceError::reason`, counted by
    /// `Metrics::source_error`, which the sources define).
    pub source_errors: Family,
    /// weir_policyd_source_synced{source}: 1 once every kind's initial list is in.
    pub source_synced: Family,
    /// weir_policyd_manifest_files_broken{reason}: manifest files held at
    /// their last good version, by reason (manifest_invalid: not YAML or
    /// not the kind's schema; unknown_kind: a kind or apiVersion policyd
    /// does not read; manifest_read: unreadable).
    pub manifest_files_broken: Family,
    /// weir_policyd_store_objects{kind}: objects held, by kind.
    pub store_objects: Family,
    /// weir_policyd_map_entries{map}: entries policyd keeps in each pinned map.
    pub map_entries: Family,
    /// weir_policyd_policies_invalid: policies the engine could not compile
    /// (diagnostics).
    pub policies_invalid: Family,
    /// weir_policyd_endpoint_records_unmatched: this node's endpoint
    /// records no pod takes (for a moment at each pod start, while its Pod
    /// is on its way; lasting ones are logged).
    pub endpoint_records_unmatched: Family,
    /// weir_policyd_syncs_total{result}: map syncs (result: ok, error).
    pub syncs: Family,
    /// weir_policyd_sync_duration_seconds: one compile slice and its sync.
    pub sync_duration: Histogram,
    /// weir_policyd_compile_slices_total{result}: compile slices, by
    /// whether they finished the compile (`complete`) or stopped at the
    /// per-slice entry budget (`over_budget`, `--compile-slice-entries`),
    /// leaving endpoints for the next slices.
    pub compile_slices: Family,
    /// weir_policyd_endpoints_pending: endpoints the last slice left to
    /// later ones; their maps keep the previous revision meanwhile.
    pub endpoints_pending: Family,
    /// weir_policyd_change_to_maps_seconds: from a change (a policy, pod,
    /// namespace... event) reaching policyd to a complete sync holding it,
    /// batching and every compile slice included.
    pub change_to_maps: Histogram,
    /// weir_policy_rule_packets_total{kind,policy,direction,rule,verdict}:
    /// the packets each rule decided (the judged first packet of each flow
    /// it allowed; every packet a cluster Deny dropped). One series per
    /// rule: bounded by the rules of the policies that exist.
    pub rule_packets: Family,
    /// weir_policy_drops_total{policy,direction}: packets dropped because a
    /// NetworkPolicy isolates the pod and no rule allows them, counted for
    /// each policy isolating that pod when they were dropped (a drop
    /// isolated by two counts for both). One series per policy and
    /// direction.
    pub policy_drops: Family,
    /// weir_dataplane_namespace_drops_total{namespace,direction}: every
    /// drop of this node's pods (not frames flooded past them), by their
    /// namespace: at most the namespaces with a pod here.
    pub namespace_drops: Family,
    /// weir_policyd_ready: 1 once /readyz answers 200.
    pub ready: Family,
    /// weir_dataplane_packets_total{direction,reason}: mirrored from the
    /// dataplane's counters map (summed over endpoints and CPUs).
    pub dataplane_packets: Family,
    /// weir_dataplane_bytes_total{direction,reason}
    pub dataplane_bytes: Family,
    /// weir_node_network_errors{reason}: current node-networking problems
    /// (reason: `node::desired::Reason::label`), each naming a node in the log.
    pub node_network_errors: Family,
    /// weir_remote_nodes{backend}: remote nodes whose routes are programmed.
    pub remote_nodes: Family,
    /// weir_policyd_flow_events_lost_total: events the dataplane could not
    /// queue (its ring was full), mirrored from its counters.
    pub flow_events_lost: Family,
    /// weir_policyd_flow_events_rate_limited_total{where}: events over the
    /// flow log's rate, counted and not written: `kernel`, not emitted by
    /// the programs (each CPU's budget per window, `--flow-log-rate` plus
    /// `--flow-log-burst`), or `policyd`, read and not written (the exact
    /// rate and burst over all CPUs).
    pub flow_events_rate_limited: Family,
}

const SYNC_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        use FamilyType::*;
        Metrics {
            source_events: Family::new(
                "weir_policyd_source_events_total",
                "Objects received from the source, by kind and operation.",
                Counter,
                &["source", "kind", "op"],
            ),
            source_errors: Family::new(
                "weir_policyd_source_errors_total",
                "Source errors (watch failures, relists, broken manifests), by reason.",
                Counter,
                &["source", "reason"],
            ),
            source_synced: Family::new(
                "weir_policyd_source_synced",
                "1 once every kind's initial list has been received.",
                Gauge,
                &["source"],
            ),
            manifest_files_broken: Family::new(
                "weir_policyd_manifest_files_broken",
                "Manifest files held at their last good version (broken, unknown kind or apiVersion, unreadable), by reason.",
                Gauge,
                &["reason"],
            ),
            store_objects: Family::new(
                "weir_policyd_store_objects",
                "Objects held in the store, by kind.",
                Gauge,
                &["kind"],
            ),
            map_entries: Family::new(
                "weir_policyd_map_entries",
                "Entries policyd keeps in each pinned map.",
                Gauge,
                &["map"],
            ),
            policies_invalid: Family::new(
                "weir_policyd_policies_invalid",
                "NetworkPolicies (or rules) the engine could not compile.",
                Gauge,
                &[],
            ),
            endpoint_records_unmatched: Family::new(
                "weir_policyd_endpoint_records_unmatched",
                "Endpoint records on this node that no pod takes: their endpoints stay not READY.",
                Gauge,
                &[],
            ),
            syncs: Family::new("weir_policyd_syncs_total", "Map syncs, by result.", Counter, &["result"]),
            sync_duration: Histogram::new(
                "weir_policyd_sync_duration_seconds",
                "Time to compile one slice and sync it to the maps.",
                SYNC_BUCKETS,
            ),
            compile_slices: Family::new(
                "weir_policyd_compile_slices_total",
                "Compile slices: complete, or stopped at the per-slice entry budget with endpoints left for later.",
                Counter,
                &["result"],
            ),
            endpoints_pending: Family::new(
                "weir_policyd_endpoints_pending",
                "Endpoints the last compile slice left for later slices (their maps keep the previous revision).",
                Gauge,
                &[],
            ),
            change_to_maps: Histogram::new(
                "weir_policyd_change_to_maps_seconds",
                "Time from a change reaching policyd to a complete sync holding it.",
                SYNC_BUCKETS,
            ),
            rule_packets: Family::new(
                "weir_policy_rule_packets_total",
                "Packets each policy rule decided: the first packet of each flow it allowed, every packet a Deny dropped.",
                Counter,
                &["kind", "policy", "direction", "rule", "verdict"],
            ),
            policy_drops: Family::new(
                "weir_policy_drops_total",
                "Packets dropped at pods a NetworkPolicy isolates with no rule allowing them, counted for each isolating policy.",
                Counter,
                &["policy", "direction"],
            ),
            namespace_drops: Family::new(
                "weir_dataplane_namespace_drops_total",
                "Packets dropped at this node's pods, by the pods' namespace.",
                Counter,
                &["namespace", "direction"],
            ),
            ready: Family::new("weir_policyd_ready", "1 once the maps hold the first complete sync.", Gauge, &[]),
            dataplane_packets: Family::new(
                "weir_dataplane_packets_total",
                "Packets judged by the dataplane, by direction and verdict reason.",
                Counter,
                &["direction", "reason"],
            ),
            dataplane_bytes: Family::new(
                "weir_dataplane_bytes_total",
                "Bytes judged by the dataplane, by direction and verdict reason.",
                Counter,
                &["direction", "reason"],
            ),
            node_network_errors: Family::new(
                "weir_node_network_errors",
                "Current node-networking problems (nodes held or skipped, backend not set up), by reason.",
                Gauge,
                &["reason"],
            ),
            remote_nodes: Family::new(
                "weir_remote_nodes",
                "Remote nodes whose pod CIDRs this node routes, by backend.",
                Gauge,
                &["backend"],
            ),
            flow_events_lost: Family::new(
                "weir_policyd_flow_events_lost_total",
                "Dataplane events lost because the event ring was full (the verdict counters still count them).",
                Counter,
                &[],
            ),
            flow_events_rate_limited: Family::new(
                "weir_policyd_flow_events_rate_limited_total",
                "Dataplane events over the flow log's rate: counted, not written (where: kernel, policyd).",
                Counter,
                &["where"],
            ),
        }
    }

    /// Record how many objects of each kind the store holds.
    pub fn observe_store(&self, store: &crate::store::Store) {
        for k in crate::store::ObjectKind::ALL {
            self.store_objects.set(&[k.label()], store.len_of(k) as f64);
        }
    }

    /// Replace the dataplane verdict counters: (direction, reason,
    /// packets, bytes) per row, e.g. "ingress", "drop_policy".
    pub fn set_dataplane_verdicts<'a>(&self, rows: impl IntoIterator<Item = (&'a str, &'a str, u64, u64)>) {
        self.dataplane_packets.clear();
        self.dataplane_bytes.clear();
        for (dir, reason, packets, bytes) in rows {
            self.dataplane_packets.add(&[dir, reason], packets as f64);
            self.dataplane_bytes.add(&[dir, reason], bytes as f64);
        }
    }

    /// Replace the per-rule, per-policy and per-namespace views of the
    /// dataplane's counters: (rule, packets) rows from the rule counters,
    /// and isolation drops by (policy, direction) and all drops by
    /// (namespace, direction) from the verdict counters.
    pub fn set_policy_views<'a>(
        &self,
        rules: impl IntoIterator<Item = (&'a crate::engine::RuleInfo, u64)>,
        by_policy: &BTreeMap<(String, &'static str), u64>,
        by_namespace: &BTreeMap<(String, &'static str), u64>,
    ) {
        use crate::engine::{Action, Direction, Tier};
        self.rule_packets.clear();
        for (r, packets) in rules {
            let (kind, policy) = match r.tier {
                Tier::NetworkPolicy => ("NetworkPolicy", format!("{}/{}", r.namespace, r.name)),
                Tier::Admin | Tier::Baseline => ("ClusterNetworkPolicy", r.name.clone()),
            };
            let dir = if r.direction == Direction::Egress { "egress" } else { "ingress" };
            let verdict = match r.action {
                Action::Allow => "allow",
                Action::Deny => "drop",
                Action::Pass => "pass",
            };
            // Peers of one rule have ids of their own: one series per rule.
            self.rule_packets.add(&[kind, &policy, dir, &r.rule_index.to_string(), verdict], packets as f64);
        }
        self.policy_drops.clear();
        for ((p, dir), n) in by_policy {
            self.policy_drops.set(&[p, dir], *n as f64);
        }
        self.namespace_drops.clear();
        for ((ns, dir), n) in by_namespace {
            self.namespace_drops.set(&[ns, dir], *n as f64);
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in [
            &self.source_events,
            &self.source_errors,
            &self.source_synced,
            &self.manifest_files_broken,
            &self.store_objects,
            &self.map_entries,
            &self.policies_invalid,
            &self.endpoint_records_unmatched,
            &self.syncs,
            &self.ready,
            &self.dataplane_packets,
            &self.dataplane_bytes,
            &self.node_network_errors,
            &self.remote_nodes,
            &self.flow_events_lost,
            &self.flow_events_rate_limited,
            &self.rule_packets,
            &self.policy_drops,
            &self.namespace_drops,
        ] {
            f.render(&mut out);
        }
        self.sync_duration.render(&mut out);
        self.change_to_maps.render(&mut out);
        out
    }
}

fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    if names.is_empty() && extra.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (n, v) in names.iter().zip(values).map(|(n, v)| (*n, v.as_str())).chain(extra) {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(n);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.source_errors.inc(&["dir", "a\"b\\c\nd"]);
        let text = m.render();
        assert!(text.contains(r#"weir_policyd_source_errors_total{source="dir",reason="a\"b\\c\nd"} 1"#), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        m.sync_duration.observe(0.003);
        m.sync_duration.observe(0.2);
        let text = m.render();
        assert!(text.contains("weir_policyd_sync_duration_seconds_bucket{le=\"0.0025\"} 0"), "{text}");
        assert!(text.contains("weir_policyd_sync_duration_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("weir_policyd_sync_duration_seconds_bucket{le=\"0.25\"} 2"), "{text}");
        assert!(text.contains("weir_policyd_sync_duration_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("weir_policyd_sync_duration_seconds_count 2"), "{text}");
    }

    #[test]
    fn policy_views_name_rules_by_policy_and_index_and_replace_previous_rows() {
        use crate::engine::{Action, Direction, RuleInfo, Tier};
        let rule = |id, ns: &str, name: &str, tier, action, index, peer| RuleInfo {
            id,
            namespace: ns.into(),
            name: name.into(),
            direction: Direction::Ingress,
            rule_index: index,
            peer_index: peer,
            tier,
            action,
            rule_name: String::new(),
            priority: 0,
        };
        let np0 = rule(1, "x", "web", Tier::NetworkPolicy, Action::Allow, 0, Some(0));
        let np0b = rule(2, "x", "web", Tier::NetworkPolicy, Action::Allow, 0, Some(1));
        let deny = rule(3, "", "guard", Tier::Admin, Action::Deny, 2, None);
        let by_policy = BTreeMap::from([(("x/web".to_string(), "ingress"), 7)]);
        let by_ns = BTreeMap::from([(("x".to_string(), "ingress"), 9)]);
        let m = Metrics::new();
        m.set_policy_views([(&np0, 3), (&np0b, 4), (&deny, 5)], &by_policy, &by_ns);
        assert_eq!(
            m.rule_packets.get(&["NetworkPolicy", "x/web", "ingress", "0", "allow"]),
            7.0,
            "both peers of rule 0"
        );
        assert_eq!(m.rule_packets.get(&["ClusterNetworkPolicy", "guard", "ingress", "2", "drop"]), 5.0);
        assert_eq!(m.policy_drops.get(&["x/web", "ingress"]), 7.0);
        assert_eq!(m.namespace_drops.get(&["x", "ingress"]), 9.0);
        m.set_policy_views([(&np0, 4)], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(m.rule_packets.get(&["NetworkPolicy", "x/web", "ingress", "0", "allow"]), 4.0);
        assert_eq!(m.rule_packets.get(&["ClusterNetworkPolicy", "guard", "ingress", "2", "drop"]), 0.0);
        assert!(m.render().contains("weir_policy_drops_total"), "rendered");
    }

    #[test]
    fn dataplane_verdicts_replace_previous_rows() {
        let m = Metrics::new();
        m.set_dataplane_verdicts([("ingress", "drop_policy", 3, 180), ("egress", "allow_policy", 5, 500)]);
        m.set_dataplane_verdicts([("ingress", "drop_policy", 4, 240)]);
        assert_eq!(m.dataplane_packets.get(&["ingress", "drop_policy"]), 4.0);
        assert_eq!(m.dataplane_packets.get(&["egress", "allow_policy"]), 0.0);
        assert_eq!(m.dataplane_bytes.get(&["ingress", "drop_policy"]), 240.0);
    }
}
