//! `weirctl flows` and `weirctl lab flows`: read a node's flow log from
//! its weir-policyd (`/v1/flows` on `<run-dir>/api.sock`), or every lab
//! node's merged, and print it like `hubble observe`.

use crate::explain::{enc, get, request, socket};
use crate::lab::state::Lab;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// NAMESPACE/POD, at either end.
    pub pod: Option<String>,
    /// `allow`, `drop` or `audit`.
    pub verdict: Option<String>,
}

impl Query {
    fn path(&self, follow: bool) -> String {
        let mut q = vec![];
        if let Some(p) = &self.pod {
            q.push(format!("pod={}", enc(p)));
        }
        if let Some(v) = &self.verdict {
            q.push(format!("verdict={}", enc(v)));
        }
        if follow {
            q.push("follow=true".into());
        }
        format!("/v1/flows?{}", q.join("&"))
    }
}

/// The recent records of the node whose run dir is `run_dir`, oldest first.
pub fn recent(run_dir: &Path, q: &Query) -> Result<Vec<Value>> {
    let v = get(&socket(run_dir), &q.path(false))?;
    Ok(v["flows"].as_array().cloned().unwrap_or_default())
}

/// Every lab node's recent records, merged by time.
pub fn lab_recent(lab: &Lab, q: &Query) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    for run_dir in lab_run_dirs(lab)? {
        all.extend(recent(&run_dir, q)?);
    }
    all.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    Ok(all)
}

/// Call `each` with every new record of the nodes whose run dirs are
/// given, as they come, until `each` returns false or a node's policyd
/// closes the stream.
pub fn follow(run_dirs: &[PathBuf], q: &Query, each: impl FnMut(Value) -> bool) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<Value>>();
    let mut conns = Vec::new();
    for run_dir in run_dirs {
        let sock = socket(run_dir);
        let conn = request(&sock, &q.path(true))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut status = String::new();
        reader.read_line(&mut status).with_context(|| format!("reading from {}", sock.display()))?;
        if !status.starts_with("HTTP/1.1 200") {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
            let body = rest.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            let msg = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| status.trim().to_string());
            bail!("{msg}");
        }
        // The rest of the head, then one record per line.
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && line != "\r\n" {
            line.clear();
        }
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let sent = match line {
                    Ok(l) if l.trim().is_empty() => continue,
                    Ok(l) => tx.send(serde_json::from_str(&l).map_err(|e| anyhow!("not a flow record ({e}): {l}"))),
                    Err(e) => tx.send(Err(e.into())),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        conns.push(conn);
    }
    drop(tx);
    let mut each = each;
    for v in rx {
        if !each(v?) {
            break;
        }
    }
    for c in conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

/// Every lab node's run dir (the lab must run weir-policyd).
pub fn lab_run_dirs(lab: &Lab) -> Result<Vec<PathBuf>> {
    let st = lab.require_state()?;
    if !st.policy {
        bail!("lab {} runs without weir-policyd (--no-policy): no flow log", lab.name);
    }
    Ok(lab.nodes(st.nodes).into_iter().map(|n| n.run_dir).collect())
}

/// One record as a line: time, node, source -> destination, protocol and
/// port, verdict, reason, and the policy and rule.
pub fn render_line(v: &Value) -> String {
    if let Some(n) = v.get("skipped") {
        return format!("... {n} records skipped (this reader was too slow)");
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let end = |e: &Value| {
        let who = match (e["namespace"].as_str(), e["pod"].as_str()) {
            (Some(ns), Some(p)) => format!("{ns}/{p} "),
            _ => String::new(),
        };
        let port = e["port"].as_u64().unwrap_or(0);
        if port == 0 {
            format!("{who}{}", s(&e["ip"]))
        } else if s(&e["ip"]).contains(':') {
            format!("{who}[{}]:{port}", s(&e["ip"]))
        } else {
            format!("{who}{}:{port}", s(&e["ip"]))
        }
    };
    let dport = v["destination"]["port"].as_u64().unwrap_or(0);
    let proto = if dport == 0 { s(&v["protocol"]) } else { format!("{}/{dport}", s(&v["protocol"])) };
    let verdict = if v["verdict"] == "drop" { "DROPPED" } else { "ALLOWED" };
    let names =
        |key: &str| v[key].as_array().filter(|l| !l.is_empty()).map(|l| l.iter().map(s).collect::<Vec<_>>().join(", "));
    let why = match (&v["policy"], names("isolatedBy"), names("auditedBy")) {
        (_, _, Some(audit)) => format!("audit: {audit} would drop it"),
        (p, _, _) if p.is_object() => describe_policy(p),
        (_, Some(list), _) => format!("isolated by {list}"),
        _ => String::new(),
    };
    format!(
        "{} {} {} -> {} {proto} {verdict} {} ({}) {why}",
        s(&v["time"]),
        s(&v["node"]),
        end(&v["source"]),
        end(&v["destination"]),
        s(&v["reason"]),
        s(&v["direction"]),
    )
    .trim_end()
    .to_string()
}

fn describe_policy(p: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(x) => x.clone(),
        other => other.to_string(),
    };
    if p["kind"] == "ClusterNetworkPolicy" {
        let name = p["ruleName"].as_str().filter(|n| !n.is_empty()).map(|n| format!(" {n:?}")).unwrap_or_default();
        format!(
            "{} ClusterNetworkPolicy {} (priority {}) {}[{}]{name} {}",
            s(&p["tier"]),
            s(&p["name"]),
            s(&p["priority"]),
            s(&p["direction"]),
            s(&p["rule"]),
            s(&p["action"])
        )
    } else {
        format!("NetworkPolicy {}/{} {}[{}]", s(&p["namespace"]), s(&p["name"]), s(&p["direction"]), s(&p["rule"]))
    }
}

/// Print `v` as `json` (one line each) or text; false once stdout is gone.
pub fn print(v: &Value, json: bool) -> bool {
    let line = if json { v.to_string() } else { render_line(v) };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_drop_prints_like_hubble_with_the_isolating_policies() {
        let v = json!({
            "time": "2026-11-29T20:00:00.000000001Z", "node": "n1", "direction": "ingress", "verdict": "drop",
            "reason": "drop_policy", "protocol": "TCP",
            "source": {"namespace": "y", "pod": "b", "ip": "10.0.0.2", "port": 40000},
            "destination": {"namespace": "x", "pod": "a", "ip": "10.0.0.3", "port": 8080},
            "isolatedBy": ["x/deny"],
        });
        assert_eq!(
            render_line(&v),
            "2026-11-29T20:00:00.000000001Z n1 y/b 10.0.0.2:40000 -> x/a 10.0.0.3:8080 TCP/8080 DROPPED drop_policy (ingress) isolated by x/deny"
        );
    }

    #[test]
    fn an_audit_would_be_drop_names_the_audit_policies() {
        let v = json!({
            "time": "t", "node": "n1", "direction": "ingress", "verdict": "allow", "reason": "allow_audit",
            "protocol": "TCP",
            "source": {"namespace": "y", "pod": "b", "ip": "10.0.0.2", "port": 40000},
            "destination": {"namespace": "x", "pod": "a", "ip": "10.0.0.3", "port": 80},
            "auditedBy": ["x/trial"],
        });
        assert_eq!(
            render_line(&v),
            "t n1 y/b 10.0.0.2:40000 -> x/a 10.0.0.3:80 TCP/80 ALLOWED allow_audit (ingress) audit: x/trial would drop it"
        );
    }

    #[test]
    fn the_deciding_rule_is_named_with_its_kind() {
        let mut v = json!({
            "time": "t", "node": "n1", "direction": "egress", "verdict": "drop", "reason": "drop_cluster_policy",
            "protocol": "UDP",
            "source": {"namespace": "x", "pod": "a", "ip": "fd00::3", "port": 5000},
            "destination": {"ip": "fd00::9", "port": 53},
            "policy": {"kind": "ClusterNetworkPolicy", "name": "no-dns", "tier": "Admin", "priority": 10,
                       "direction": "egress", "rule": 0, "ruleName": "deny-dns", "action": "Deny"},
        });
        assert_eq!(
            render_line(&v),
            "t n1 x/a [fd00::3]:5000 -> [fd00::9]:53 UDP/53 DROPPED drop_cluster_policy (egress) Admin ClusterNetworkPolicy no-dns (priority 10) egress[0] \"deny-dns\" Deny"
        );
        v["policy"] =
            json!({"kind": "NetworkPolicy", "namespace": "x", "name": "web", "direction": "ingress", "rule": 1});
        v["verdict"] = json!("allow");
        assert!(render_line(&v).ends_with("ALLOWED drop_cluster_policy (egress) NetworkPolicy x/web ingress[1]"));
    }

    #[test]
    fn queries_are_encoded() {
        let q = Query { pod: Some("x/a b".into()), verdict: Some("drop".into()) };
        assert_eq!(q.path(true), "/v1/flows?pod=x%2Fa%20b&verdict=drop&follow=true");
        assert_eq!(Query::default().path(false), "/v1/flows?");
    }
}
