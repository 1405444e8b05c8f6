//! `weirctl get endpoints|policies`: this node's view, as weir-policyd's
//! local API gives it (`/v1/endpoints`, `/v1/policies`), as a table or JSON.

use crate::explain::{get, socket};
use crate::table::columns;
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeWhat {
    Endpoints,
    Policies,
}

impl NodeWhat {
    fn path(self) -> &'static str {
        match self {
            NodeWhat::Endpoints => "/v1/endpoints",
            NodeWhat::Policies => "/v1/policies",
        }
    }
}

/// The API's answer for `what` on the node whose run dir is `run_dir`.
pub fn fetch(run_dir: &Path, what: NodeWhat) -> Result<Value> {
    get(&socket(run_dir), what.path())
}

/// An answer of [`fetch`] as a table.
pub fn render_table(what: NodeWhat, v: &Value) -> String {
    match what {
        NodeWhat::Endpoints => endpoints_table(v),
        NodeWhat::Policies => policies_table(v),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn endpoints_table(v: &Value) -> String {
    let mut rows =
        vec![["POD", "INTERFACE", "IPS", "IDENTITY", "INGRESS-ISOLATED", "EGRESS-ISOLATED", "READY", "POLICIES"]
            .map(String::from)
            .to_vec()];
    for e in v["endpoints"].as_array().into_iter().flatten() {
        // An endpoint no compile has covered yet is not programmed: its
        // isolation is unknown, and its traffic is dropped until it is.
        let compiled = e["compiled"].as_bool().unwrap_or(false);
        // Isolated only by audit-mode policies: nothing is enforced.
        let iso = |k: &str, audited: &str| match (compiled, e[audited].as_bool() == Some(true)) {
            (false, _) => "not yet programmed".into(),
            (true, true) => "audit".into(),
            (true, false) => text(&e[k]),
        };
        rows.push(vec![
            text(&e["pod"]),
            text(&e["interface"]),
            text(&e["ips"]),
            text(&e["identity"]),
            iso("ingressIsolated", "ingressAudited"),
            iso("egressIsolated", "egressAudited"),
            // READY in the maps; pending: its entries are being recompiled.
            match (text(&e["ready"]).as_str(), e["pending"].as_bool() == Some(true)) {
                ("yes", true) => "yes (updating)".into(),
                (r, _) => r.to_string(),
            },
            match e["policies"].as_array() {
                Some(p) if !p.is_empty() => text(&e["policies"]),
                _ => "-".into(),
            },
        ]);
    }
    columns(&rows)
}

fn policies_table(v: &Value) -> String {
    let mut rows =
        vec![["KIND", "POLICY", "MODE", "ISOLATES", "TIER", "PRIORITY", "RULES", "SELECTS", "REALIZED", "PROBLEMS"]
            .map(String::from)
            .to_vec()];
    for p in v["policies"].as_array().into_iter().flatten() {
        let isolates: Vec<&str> = [("isolatesIngress", "ingress"), ("isolatesEgress", "egress")]
            .iter()
            .filter(|(k, _)| p[*k].as_bool() == Some(true))
            .map(|(_, name)| *name)
            .collect();
        let problems = p["diagnostics"].as_array().map(|d| d.len()).unwrap_or(0);
        rows.push(vec![
            text(&p["kind"]),
            text(&p["policy"]),
            text(&p["mode"]),
            if isolates.is_empty() { "-".into() } else { isolates.join(",") },
            text(&p["tier"]),
            text(&p["priority"]),
            text(&p["rules"]),
            // This node's pods it selects.
            match p["selects"].as_array() {
                Some(pods) if !pods.is_empty() => text(&p["selects"]),
                _ => "-".into(),
            },
            match (p["realized"].as_bool() == Some(true), p["revision"].as_u64()) {
                (true, Some(rev)) => format!("yes (revision {rev})"),
                _ => "no".into(),
            },
            problems.to_string(),
        ]);
    }
    let mut out = columns(&rows);
    // The problems themselves, after the table: each names its field.
    for p in v["policies"].as_array().into_iter().flatten() {
        for d in p["diagnostics"].as_array().into_iter().flatten() {
            out.push_str(&format!("{}: {}\n", text(&p["policy"]), text(d)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_show_isolation_only_once_programmed() {
        let v = json!({"endpoints": [
            {"pod": "x/a", "interface": "wa", "ips": ["10.0.0.2", "fd00::2"], "identity": 7,
             "ingressIsolated": true, "egressIsolated": false, "egressAudited": false, "compiled": true,
             "ready": true, "pending": false, "policies": ["x/deny", "guard"]},
            {"pod": "x/b", "interface": "wb", "ips": ["10.0.0.3"], "identity": null,
             "ingressIsolated": null, "egressIsolated": null, "compiled": false},
            {"pod": "x/c", "interface": "wc", "ips": ["10.0.0.4"], "identity": 8,
             "ingressIsolated": false, "egressIsolated": false, "ingressAudited": true, "compiled": true,
             "ready": true, "pending": true, "policies": []},
        ]});
        let t = render_table(NodeWhat::Endpoints, &v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[3].contains(" audit ") && lines[3].contains(" no "), "only ingress is audited: {t}");
        assert!(lines[3].contains("yes (updating)") && lines[3].trim_end().ends_with('-'), "{t}");
        assert!(lines[1].starts_with("x/a") && lines[1].contains("10.0.0.2,fd00::2") && lines[1].contains("yes"));
        assert!(lines[1].contains(" no ") && lines[1].trim_end().ends_with("x/deny,guard"), "{t}");
        assert!(lines[2].contains("not yet programmed"), "{t}");
    }

    #[test]
    fn policies_list_both_kinds_and_their_problems_by_field() {
        let v = json!({"policies": [
            {"kind": "NetworkPolicy", "policy": "x/deny", "isolatesIngress": true, "isolatesEgress": false,
             "mode": "audit", "rules": 0, "diagnostics": [], "selects": ["x/a"], "realized": true, "revision": 4},
            {"kind": "ClusterNetworkPolicy", "policy": "guard", "tier": "Admin", "priority": 10,
             "rules": 2, "diagnostics": ["spec.egress[0].to[0].networks[0]: not a CIDR"]},
        ]});
        let t = render_table(NodeWhat::Policies, &v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("NetworkPolicy") && lines[1].contains("x/deny") && lines[1].contains("ingress"));
        assert!(
            lines[1].contains(" audit ") && lines[1].contains("x/a") && lines[1].contains("yes (revision 4)"),
            "{t}"
        );
        assert!(lines[2].contains(" no "), "not realized: {t}");
        assert!(lines[2].contains("guard") && lines[2].contains("Admin") && lines[2].contains("10"), "{t}");
        assert_eq!(lines[3], "guard: spec.egress[0].to[0].networks[0]: not a CIDR");
    }
}
