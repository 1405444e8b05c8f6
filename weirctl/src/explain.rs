//! `weirctl explain` and `weirctl lab explain`: ask a node's weir-policyd
//! (its local API socket, `<run-dir>/api.sock`) why a flow is allowed or
//! blocked, and print the answer. The explanation and the dataplane check
//! are policyd's (`weir_policyd::api`); this is the client and the printer.

use crate::lab::state::Lab;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The flow asked about, as given on the command line.
#[derive(Debug, Clone)]
pub struct Ask {
    pub from: String,
    pub to: String,
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: String,
}

/// The API socket of a run dir.
pub fn socket(run_dir: &Path) -> PathBuf {
    weir_policyd::api::socket_path(run_dir)
}

/// Connect to a policyd API socket and send GET `path_and_query`; an
/// error says whether policyd runs and what to do.
pub fn request(socket: &Path, path_and_query: &str) -> Result<UnixStream> {
    let mut conn = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "weir-policyd is not running: no API socket at {} (start weir-policyd with --run-dir {}, or give the --run-dir it uses)",
            socket.display(),
            socket.parent().unwrap_or(Path::new("/")).display()
        ),
        std::io::ErrorKind::ConnectionRefused => anyhow!(
            "weir-policyd is not running: {} is left over from one that stopped (start weir-policyd again)",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("{}: permission denied (the API socket is root's: run weirctl as root)", socket.display())
        }
        _ => anyhow!("{}: {e}", socket.display()),
    })?;
    write!(conn, "GET {path_and_query} HTTP/1.1\r\nHost: weir-policyd\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("writing to {}", socket.display()))?;
    Ok(conn)
}

/// One GET on a policyd API socket: the JSON body of a 200, else the
/// API's error as an error.
pub fn get(socket: &Path, path_and_query: &str) -> Result<Value> {
    let mut conn = request(socket, path_and_query)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).with_context(|| format!("reading from {}", socket.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("{}: not an HTTP answer", socket.display()))?;
    let code: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json: Value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.trim().to_string()));
    if code != 200 {
        let msg = json.get("error").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| json.to_string());
        bail!("{msg}");
    }
    Ok(json)
}

/// Percent-encode a query value (everything but RFC 3986's unreserved).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn path_of(a: &Ask, from: &str, to: &str) -> String {
    format!("/v1/explain?from={}&to={}&port={}&protocol={}", enc(from), enc(to), a.port, enc(&a.protocol))
}

/// Explain on the node whose run dir is `run_dir`.
pub fn explain(run_dir: &Path, a: &Ask) -> Result<Value> {
    get(&socket(run_dir), &path_of(a, &a.from, &a.to))
}

/// Explain in lab `lab`: asked of the node hosting the source pod (its
/// egress and its programs); when the destination pod (a Service's
/// backend) lives on another node, that node is asked too and gives the
/// ingress side and its programs' check. Ends given as addresses are
/// placed by the first answer, which names their pods.
pub fn lab_explain(lab: &Lab, a: &Ask) -> Result<Value> {
    let st = lab.require_state()?;
    if !st.policy {
        bail!("lab {} runs without weir-policyd (--no-policy): nothing enforces or explains policy", lab.name);
    }
    let nodes = lab.nodes(st.nodes);
    let run_dir_of = |node: &str| {
        nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.run_dir.clone())
            .ok_or_else(|| anyhow!("lab {}: no node {node}", lab.name))
    };
    let node_of_pod = |pod: Option<&str>| pod.and_then(|p| st.pods.get(p)).map(|p| p.node.clone());
    let first = node_of_pod(Some(&a.from))
        .or_else(|| node_of_pod(Some(&a.to)))
        .or_else(|| nodes.first().map(|n| n.name.clone()))
        .ok_or_else(|| anyhow!("lab {} has no node", lab.name))?;
    let v = explain(&run_dir_of(&first)?, a)?;
    let src_node = node_of_pod(v["src"]["pod"].as_str()).unwrap_or_else(|| first.clone());
    let dst_node = node_of_pod(v["dst"]["pod"].as_str()).unwrap_or_else(|| src_node.clone());
    let answer_of = |node: &str, have: &Value| -> Result<Value> {
        if node == first {
            Ok(have.clone())
        } else {
            explain(&run_dir_of(node)?, a)
        }
    };
    let egress = answer_of(&src_node, &v)?;
    if dst_node == src_node {
        return Ok(egress);
    }
    let ingress = answer_of(&dst_node, &v)?;
    Ok(combine(egress, ingress))
}

/// The source node's answer `s` and the destination node's `d`: egress
/// from `s`, ingress from `d`, both nodes' program runs.
fn combine(mut s: Value, d: Value) -> Value {
    s["ingress"] = d["ingress"].clone();
    s["dst"] = d["dst"].clone();
    let allowed = s["egress"]["allowed"].as_bool() == Some(true) && s["ingress"]["allowed"].as_bool() == Some(true);
    s["allowed"] = Value::Bool(allowed);
    let (ps, pd) = (&s["dataplane"], &d["dataplane"]);
    let both = |k: &str| ps[k].as_bool() == Some(true) && pd[k].as_bool() == Some(true);
    let either = |k: &str| ps[k].as_bool() == Some(true) || pd[k].as_bool() == Some(true);
    let judged: Vec<Value> = ps["judged"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pd["judged"].as_array().into_iter().flatten())
        .cloned()
        .collect();
    let runs: Vec<Value> = [(&s["node"], ps), (&d["node"], pd)]
        .iter()
        .flat_map(|(node, p)| {
            p["runs"].as_array().cloned().unwrap_or_default().into_iter().map(move |mut r| {
                r["node"] = (*node).clone();
                r
            })
        })
        .collect();
    let errors: Vec<Value> = [ps, pd].iter().filter_map(|p| p.get("error").cloned()).collect();
    let mut dp = serde_json::json!({
        "allowed": both("allowed"),
        "expected": both("expected"),
        "agrees": both("agrees"),
        "auditWouldDrop": either("auditWouldDrop"),
        "auditExpected": either("auditExpected"),
        "judged": judged,
        "runs": runs,
    });
    if !errors.is_empty() {
        dp["error"] = Value::Array(errors);
    }
    s["dataplane"] = dp;
    s["node"] = Value::String(format!(
        "{} (egress), {} (ingress)",
        s["node"].as_str().unwrap_or("?"),
        d["node"].as_str().unwrap_or("?")
    ));
    s
}

/// A disagreement between the control plane and the kernel, or a check
/// that could not run: the command prints it and fails.
pub fn problem(v: &Value) -> Option<String> {
    let dp = &v["dataplane"];
    if let Some(e) = dp.get("error") {
        return Some(format!("the dataplane check could not run: {e}"));
    }
    if dp["agrees"].as_bool() != Some(true) && dp["allowed"] == dp["expected"] {
        return Some(
            "DISAGREEMENT: the control plane says audit-mode policies would drop this flow but the kernel's programs did not count it as a would-be drop. This is a bug in Weir: please report it with this output."
                .to_string(),
        );
    }
    if dp["agrees"].as_bool() != Some(true) {
        return Some(format!(
            "DISAGREEMENT: the control plane says {} but the kernel's programs {} this flow ({}). This is a bug in Weir: please report it with this output.",
            verdict(dp["expected"].as_bool() == Some(true)),
            if dp["allowed"].as_bool() == Some(true) { "pass" } else { "drop" },
            dp["judged"].as_array().map(|j| j.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" and ")).unwrap_or_default()
        ));
    }
    None
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "ALLOWED"
    } else {
        "BLOCKED"
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn endpoint(e: &Value) -> String {
    let mut out = match e["pod"].as_str() {
        Some(p) => format!("{p} ({})", s(&e["addr"])),
        None => s(&e["addr"]),
    };
    out.push_str(&format!("  identity {} ({})", s(&e["identity"]), s(&e["kind"])));
    if let Some(l) = e["labels"].as_object() {
        let labels: Vec<String> = l["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        out.push_str(&format!(" [{}: {}]", s(&l["namespace"]), labels.join(",")));
    }
    if let Some(i) = e["endpoint"].as_u64() {
        out.push_str(&format!("  endpoint {i} on its node"));
    }
    out
}

fn rule(dir: &str, r: &Value) -> String {
    let peer_list = if dir == "egress" { "to" } else { "from" };
    let mut out = format!("{} {dir}[{}]", s(&r["policy"]), s(&r["rule"]));
    if let Some(p) = r["peer"].as_u64() {
        out.push_str(&format!(".{peer_list}[{p}]"));
    }
    out.push_str(&format!(" ({})", s(&r["matched"])));
    out
}

/// kubectl-describe-like text.
pub fn render_text(v: &Value) -> String {
    let mut o = String::new();
    let f = &v["flow"];
    let mut flow = format!("{} -> {}", s(&f["from"]), s(&f["to"]));
    if f["service"].is_string() {
        flow.push_str(&format!(
            " ({}:{} -> backend {}:{})",
            s(&f["dialed"]["ip"]),
            s(&f["dialed"]["port"]),
            s(&f["backend"]["ip"]),
            s(&f["backend"]["port"])
        ));
    }
    o.push_str(&format!("Flow:         {flow} {}/{}\n", s(&f["protocol"]), s(&f["port"])));
    o.push_str(&format!("Verdict:      {}\n", verdict(v["allowed"].as_bool() == Some(true))));
    o.push_str(&format!("Node:         {}\n", s(&v["node"])));
    o.push_str(&format!("Source:       {}\n", endpoint(&v["src"])));
    o.push_str(&format!("Destination:  {}\n", endpoint(&v["dst"])));
    for dir in ["egress", "ingress"] {
        let side = &v[dir];
        let title = if dir == "egress" { "Egress" } else { "Ingress" };
        let who = side["pod"].as_str().map(|p| format!(" of {p}")).unwrap_or_default();
        o.push_str(&format!("{title}{who}: {}\n", verdict(side["allowed"].as_bool() == Some(true))));
        let isolating: Vec<String> = side["isolating"].as_array().into_iter().flatten().map(s).collect();
        o.push_str(&format!(
            "  Isolated:   {}\n",
            if isolating.is_empty() { "no".to_string() } else { format!("yes, by {}", isolating.join(", ")) }
        ));
        let rules: Vec<String> = side["policies"].as_array().into_iter().flatten().map(|r| rule(dir, r)).collect();
        if side["isolated"].as_bool() == Some(true) {
            if rules.is_empty() {
                o.push_str("  Allowed by: no rule allows\n");
            } else {
                o.push_str(&format!("  Allowed by: {}\n", rules.join("\n              ")));
            }
        }
        if let Some(c) = side["cluster"].as_object() {
            let name = c["rule_name"].as_str().filter(|n| !n.is_empty()).map(|n| format!(" ({n})")).unwrap_or_default();
            o.push_str(&format!(
                "  Cluster:    {} {} by ClusterNetworkPolicy {} (tier {}, priority {}), {dir}[{}]{name}\n",
                s(&c["action"]),
                if c["action"].as_str() == Some("Pass") { "passed on" } else { "decided" },
                s(&c["policy"]),
                s(&c["tier"]),
                s(&c["priority"]),
                s(&c["rule"]),
            ));
        }
        o.push_str(&format!("  Why:        {}\n", s(&side["reason"])));
        if let Some(a) = side["audit"].as_object() {
            let by: Vec<String> = a["isolating"].as_array().into_iter().flatten().map(s).collect();
            let rules: Vec<String> = a["policies"].as_array().into_iter().flatten().map(|r| rule(dir, r)).collect();
            let decision = match (a["wouldDrop"].as_bool() == Some(true), a["allowed"].as_bool() == Some(true)) {
                (true, _) => "would DROP it (counted and logged as allow_audit)".to_string(),
                (false, true) if !rules.is_empty() => format!("would allow it by {}", rules.join(", ")),
                (false, true) => "would allow it".to_string(),
                (false, false) => "would drop it too".to_string(),
            };
            o.push_str(&format!("  Audit:      {}: {decision}\n", by.join(", ")));
        }
        if let Some(m) = side["maps"].as_object() {
            let mut line = format!(
                "endpoint {}: {}",
                s(&m["endpoint"]),
                match (m["allowed"].as_bool() == Some(true), m["tier"].is_string()) {
                    (true, _) => "allowed",
                    (false, true) => "denied",
                    (false, false) => "no entry allows",
                }
            );
            if let Some(via) = m["via"].as_str() {
                line.push_str(&format!(" via {via}"));
            }
            if let Some(tier) = m["tier"].as_str() {
                line.push_str(&format!(" ({tier} tier)"));
            }
            if m["rule"].is_object() {
                line.push_str(&format!(", entry of {}", rule(dir, &m["rule"])));
            }
            if let (Some(p), Some(c)) = (m["ip_block_prefix"].as_str(), m["ip_block_class"].as_u64()) {
                line.push_str(&format!("; ipBlock class {c} for {p}"));
            }
            o.push_str(&format!("  Maps:       {line}\n"));
        }
    }
    let dp = &v["dataplane"];
    let runs: Vec<String> = dp["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let reasons: Vec<String> = r["drop_reasons"].as_array().into_iter().flatten().map(s).collect();
            format!(
                "{}{} on ifindex {}: {} {}{}",
                r["node"].as_str().map(|n| format!("{n}: ")).unwrap_or_default(),
                s(&r["program"]),
                s(&r["ifindex"]),
                s(&r["packet"]),
                s(&r["verdict"]),
                if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
            )
        })
        .collect();
    let summary = match problem(v) {
        Some(p) => p,
        None if runs.is_empty() => s(&dp["note"]),
        None => format!("agrees ({})", verdict(dp["allowed"].as_bool() == Some(true))),
    };
    o.push_str(&format!("Dataplane:    {summary}\n"));
    for r in runs {
        o.push_str(&format!("  {r}\n"));
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        o.push_str(&format!("Note:         {}\n", s(n)));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_values_are_percent_encoded() {
        let a = Ask { from: "x/a".into(), to: "svc/y/s b".into(), port: 80, protocol: "TCP".into() };
        assert_eq!(path_of(&a, &a.from, &a.to), "/v1/explain?from=x%2Fa&to=svc%2Fy%2Fs%20b&port=80&protocol=TCP");
    }

    #[test]
    fn an_absent_socket_says_policyd_is_not_running_and_how_to_start_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = get(&socket(dir.path()), "/v1/explain").unwrap_err().to_string();
        assert!(e.contains("weir-policyd is not running"), "{e}");
        assert!(e.contains("start weir-policyd"), "{e}");
    }

    fn side(allowed: bool) -> Value {
        json!({"allowed": allowed, "isolated": !allowed, "isolating": [], "policies": [], "reason": "r"})
    }

    #[test]
    fn a_disagreement_is_a_problem_and_printed_loudly() {
        let v = json!({"allowed": false, "flow": {}, "src": {}, "dst": {}, "egress": side(true), "ingress": side(false),
            "dataplane": {"allowed": true, "expected": false, "agrees": false, "judged": ["ingress"], "runs": []}});
        let p = problem(&v).unwrap();
        assert!(p.starts_with("DISAGREEMENT") && p.contains("BLOCKED") && p.contains("pass"), "{p}");
        assert!(render_text(&v).contains("DISAGREEMENT"));
        let mut ok = v.clone();
        ok["dataplane"]["agrees"] = json!(true);
        assert_eq!(problem(&ok), None);
    }

    #[test]
    fn an_audit_side_is_printed_and_an_audit_disagreement_is_a_problem() {
        let mut ingress = side(true);
        ingress["audit"] = json!({"isolating": ["x/trial"], "policies": [], "allowed": false, "wouldDrop": true});
        let mut v = json!({"allowed": true, "flow": {}, "src": {}, "dst": {}, "egress": side(true), "ingress": ingress,
            "dataplane": {"allowed": true, "expected": true, "agrees": true, "auditWouldDrop": true, "auditExpected": true,
                          "judged": ["ingress"], "runs": []}});
        assert!(render_text(&v).contains("Audit:      x/trial: would DROP it (counted and logged as allow_audit)"));
        assert_eq!(problem(&v), None);
        v["dataplane"]["agrees"] = json!(false);
        v["dataplane"]["auditWouldDrop"] = json!(false);
        // (an expected would-be drop the kernel did not count)
        let p = problem(&v).unwrap();
        assert!(p.starts_with("DISAGREEMENT") && p.contains("would drop") && p.contains("did not count"), "{p}");
    }

    #[test]
    fn the_deciding_cluster_rule_is_printed_with_its_tier_and_priority() {
        let mut ingress = side(false);
        ingress["cluster"] = json!({"tier": "Admin", "policy": "guard", "priority": 4, "rule": 0,
            "rule_name": "no-y", "action": "Deny", "peer": 0});
        ingress["maps"] = json!({"endpoint": 7, "allowed": false, "via": "identity", "tier": "Admin", "ip_block_prefix": null, "ip_block_class": null,
            "rule": {"policy": "guard", "rule": 0, "peer": 0, "matched": "pods"}});
        let v = json!({"allowed": false, "flow": {}, "src": {}, "dst": {}, "egress": side(true), "ingress": ingress,
            "dataplane": {"allowed": false, "expected": false, "agrees": true, "judged": ["ingress"], "runs": []}});
        let text = render_text(&v);
        assert!(
            text.contains(
                "Cluster:    Deny decided by ClusterNetworkPolicy guard (tier Admin, priority 4), ingress[0] (no-y)"
            ),
            "{text}"
        );
        assert!(
            text.contains("endpoint 7: denied via identity (Admin tier), entry of guard ingress[0].from[0]"),
            "{text}"
        );
    }

    #[test]
    fn two_nodes_combine_egress_from_the_source_and_ingress_from_the_destination() {
        let s = json!({"node": "n1", "allowed": true, "egress": side(true), "ingress": side(true), "dst": {"pod": "y/b"},
            "dataplane": {"allowed": true, "expected": true, "agrees": true, "judged": ["egress"], "runs": [{"program": "from_pod"}]}});
        let d = json!({"node": "n2", "allowed": false, "egress": side(true), "ingress": side(false), "dst": {"pod": "y/b", "endpoint": 7},
            "dataplane": {"allowed": false, "expected": false, "agrees": true, "judged": ["ingress"], "runs": [{"program": "to_pod"}]}});
        let c = combine(s, d);
        assert_eq!(c["allowed"], false);
        assert_eq!(c["ingress"]["allowed"], false);
        assert_eq!(c["dst"]["endpoint"], 7);
        assert_eq!(c["dataplane"]["allowed"], false);
        assert_eq!(c["dataplane"]["agrees"], true);
        assert_eq!(c["dataplane"]["judged"], json!(["egress", "ingress"]));
        assert_eq!(c["dataplane"]["runs"][1]["node"], "n2");
    }
}
