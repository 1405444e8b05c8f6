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
    /// weir_policyd_sync_duration_seconds: from a change reaching policyd to
    /// the maps holding it.
    pub sync_duration: Histogram,
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
    /// weir_policyd_flow_events_rate_limited_total: events over the flow
    /// log's rate (`--flow-log-rate`), counted and not written.
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
                "Time from a change reaching policyd to the maps holding it.",
                SYNC_BUCKETS,
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
                "Dataplane events over the flow log's rate: counted, not written.",
                Counter,
                &[],
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
        ] {
            f.render(&mut out);
        }
        self.sync_duration.render(&mut out);
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
    fn dataplane_verdicts_replace_previous_rows() {
        let m = Metrics::new();
        m.set_dataplane_verdicts([("ingress", "drop_policy", 3, 180), ("egress", "allow_policy", 5, 500)]);
        m.set_dataplane_verdicts([("ingress", "drop_policy", 4, 240)]);
        assert_eq!(m.dataplane_packets.get(&["ingress", "drop_policy"]), 4.0);
        assert_eq!(m.dataplane_packets.get(&["egress", "allow_policy"]), 0.0);
        assert_eq!(m.dataplane_bytes.get(&["ingress", "drop_policy"]), 240.0);
    }
}
