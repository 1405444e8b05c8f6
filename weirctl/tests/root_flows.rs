//! Root tests of the flow log on a real lab: a probe the policy refuses
//! becomes a drop line naming both pods, the port, the reason and the
//! policy (`weirctl lab flows`), `--follow` gets lines produced after it
//! started, and allowed flows are logged only where a namespace asks.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weir_testsupport::is_root;

mod common;
use common::{require_binaries, weirctl, LabGuard};

const MODEL: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, annotations: {weir.io/flow-log: allow}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
";

/// A `weirctl lab flows --follow` running in the background, killed on drop.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(g: &LabGuard, args: &[&str]) -> Follower {
        let mut full = vec!["lab", "flows", "--name", &g.name, "--follow", "-o", "json"];
        full.extend_from_slice(args);
        let mut child = Command::new(weirctl()).args(&full).stdout(Stdio::piped()).spawn().expect("weirctl");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe(g: &LabGuard, from: &str, to: &str) -> bool {
    let m = g.json(&[
        "probe",
        "--port",
        "80",
        "--protocol",
        "TCP",
        "--via",
        "pod",
        "--from",
        from,
        "--to",
        to,
        "-o",
        "json",
    ]);
    m["results"][from][to].as_bool().unwrap_or_else(|| panic!("no probe result {from} -> {to}: {m}"))
}

fn flows(g: &LabGuard, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["flows"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    g.ok(&full).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn is_flow(v: &Value, src: (&str, &str), dst: (&str, &str)) -> bool {
    v["source"]["namespace"] == src.0
        && v["source"]["pod"] == src.1
        && v["destination"]["namespace"] == dst.0
        && v["destination"]["pod"] == dst.1
}

#[test]
fn root_a_refused_probe_is_a_drop_line_naming_pods_port_reason_and_policy() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir", "weir-policyd"]);
    let g = LabGuard::new("wfl");
    let tmp = tempfile::tempdir().unwrap();
    g.up_with(tmp.path(), MODEL);

    // A follower started before the probes sees a drop they cause: probe
    // until it does (each probe is a new flow, so a new drop), the bound
    // only stopping a broken run.
    let follower = Follower::start(&g, &["--verdict", "drop", "--pod", "x/a"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let followed = loop {
        assert!(!probe(&g, "x/b", "x/a"), "deny-a isolates x/a: the probe must fail");
        if let Ok(l) = follower.lines.recv_timeout(Duration::from_millis(500)) {
            break serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
        assert!(Instant::now() < deadline, "--follow printed no drop line");
    };
    assert!(is_flow(&followed, ("x", "b"), ("x", "a")), "{followed}");
    drop(follower);

    let drops = flows(&g, &["--verdict", "drop"]);
    let d = drops
        .iter()
        .find(|v| is_flow(v, ("x", "b"), ("x", "a")))
        .unwrap_or_else(|| panic!("no drop x/b -> x/a in {drops:?}"));
    assert_eq!(d["verdict"], "drop");
    assert_eq!(d["reason"], "drop_policy");
    assert_eq!(d["direction"], "ingress");
    assert_eq!(d["protocol"], "TCP");
    assert_eq!(d["destination"]["port"], 80);
    assert_eq!(d["isolatedBy"], serde_json::json!(["x/deny-a"]), "the policy isolating x/a");
    assert!(d["time"].as_str().unwrap().ends_with('Z'));
    assert!(!d.to_string().contains("labels"), "no labels in a line: {d}");
    // The file holds the same line.
    let file = std::fs::read_to_string(g.dir().join("run").join("flows.log")).unwrap();
    assert!(file.lines().any(|l| l.contains("\"drop_policy\"") && l.contains("\"isolatedBy\":[\"x/deny-a\"]")));

    // The text form names the same.
    let text = g.ok(&["flows", "--verdict", "drop", "--pod", "x/b"]);
    assert!(
        text.lines().any(|l| l.contains("x/b ")
            && l.contains("-> x/a ")
            && l.contains("TCP/80 DROPPED drop_policy")
            && l.ends_with("isolated by x/deny-a")),
        "{text}"
    );

    // Allowed new flows: logged for y (annotated), not for x.
    assert!(probe(&g, "x/a", "x/b"), "x/b is not isolated");
    assert!(probe(&g, "x/b", "y/c"), "y/c is not isolated");
    let allows = flows(&g, &["--verdict", "allow"]);
    assert!(allows.iter().any(|v| is_flow(v, ("x", "b"), ("y", "c")) && v["direction"] == "ingress"), "{allows:?}");
    assert!(!allows.iter().any(|v| is_flow(v, ("x", "a"), ("x", "b"))), "x is not annotated: {allows:?}");
    assert!(allows.iter().all(|v| v["destination"]["namespace"] == "y" || v["source"]["namespace"] == "y"));

    // Bad input: a clear error, non-zero exit.
    let e = g.fails(&["flows", "--pod", "nope"]);
    assert!(e.contains("NAMESPACE/POD"), "{e}");
}

const AUDIT_MODEL: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]}]}
";

/// The one-node lab's weir-policyd `/metrics` (it listens on 127.0.0.1
/// of the node's netns), read with bash's /dev/tcp from inside it.
fn node_metrics(g: &LabGuard) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/weir-{}", g.name))
        .args([
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9913 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3",
        ])
        .output()
        .expect("nsenter");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Wait (the counters are exported every few seconds) until every series
/// is at least 1; returns the last scrape.
fn metrics_reach_one(g: &LabGuard, series: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = node_metrics(g);
        let missing: Vec<&&str> = series.iter().filter(|s| sample(&m, s) < 1.0).collect();
        if missing.is_empty() {
            return m;
        }
        assert!(Instant::now() < deadline, "never counted: {missing:?}\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// x/a's ingress from x/b only, on port 80, in the mode given.
fn trial_policy(mode: Option<&str>) -> String {
    let annotations = mode.map(|m| format!(", annotations: {{policy.weir.io/mode: {m}}}")).unwrap_or_default();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: trial, namespace: x{annotations}}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80}}]}}]
"
    )
}

/// An audit-mode policy changes no probe cell; what it would drop is
/// logged (`--verdict audit`, naming it), counted and explained, the kernel
/// agreeing; an unknown mode is refused; removing the annotation enforces,
/// and the metrics then count its drops and its rule's allows by name.
#[test]
fn root_an_audit_policy_blocks_nothing_and_logs_what_it_would_drop() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir", "weir-policyd"]);
    let g = LabGuard::new("wau");
    let tmp = tempfile::tempdir().unwrap();
    g.up_with(tmp.path(), &format!("{AUDIT_MODEL}---\n{}", trial_policy(Some("audit"))));
    let pods = ["x/a", "x/b", "y/c"];
    for from in pods {
        for to in pods.iter().filter(|t| **t != from) {
            assert!(probe(&g, from, to), "{from} -> {to}: an audit policy blocks nothing");
        }
    }

    let audits = flows(&g, &["--verdict", "audit"]);
    let a = audits
        .iter()
        .find(|v| is_flow(v, ("y", "c"), ("x", "a")))
        .unwrap_or_else(|| panic!("no audit record y/c -> x/a in {audits:?}"));
    assert_eq!((a["verdict"].as_str(), a["reason"].as_str()), (Some("allow"), Some("allow_audit")), "{a}");
    assert_eq!(a["direction"], "ingress");
    assert_eq!(a["auditedBy"], serde_json::json!(["x/trial"]));
    assert!(!audits.iter().any(|v| is_flow(v, ("x", "b"), ("x", "a"))), "the audit rule allows x/b: {audits:?}");
    assert!(audits.iter().all(|v| v["destination"]["pod"] == "a"), "only x/a is audited: {audits:?}");

    let explain = |from: &str| {
        g.json(&["explain", "--from", from, "--to", "x/a", "--port", "80", "--protocol", "TCP", "-o", "json"])
    };
    let e = explain("y/c");
    assert_eq!(e["allowed"], true, "{e}");
    assert_eq!(e["ingress"]["audit"]["wouldDrop"], true, "{e}");
    assert_eq!(e["ingress"]["audit"]["isolating"], serde_json::json!(["x/trial"]));
    assert_eq!(e["dataplane"]["agrees"], true, "{e}");
    assert_eq!(e["dataplane"]["auditWouldDrop"], true, "the kernel counted the would-be drop: {e}");
    let e = explain("x/b");
    assert_eq!(e["ingress"]["audit"]["allowed"], true, "{e}");
    assert_eq!(e["ingress"]["audit"]["wouldDrop"], false, "{e}");
    assert_eq!(
        (e["dataplane"]["agrees"].as_bool(), e["dataplane"]["auditWouldDrop"].as_bool()),
        (Some(true), Some(false))
    );
    metrics_reach_one(&g, &[r#"weir_dataplane_packets_total{direction="ingress",reason="allow_audit"}"#]);
    let table = g.ok(&["get", "policies"]);
    assert!(
        table.lines().any(|l| l.starts_with("x ") && l.contains("trial") && l.trim_end().ends_with("audit")),
        "{table}"
    );

    // An unknown mode: refused by name, nothing changes.
    let p = tmp.path().join("bad.yaml");
    std::fs::write(&p, trial_policy(Some("dry-run"))).unwrap();
    let err = g.fails(&["apply", "-f", p.to_str().unwrap()]);
    assert!(err.contains("policy.weir.io/mode") && err.contains("dry-run"), "{err}");
    assert!(probe(&g, "y/c", "x/a"), "still audit mode");

    // Enforced: the would-be drop is a drop, the audit rule's allow an allow.
    // `lab apply` returns once the manifest is written; policyd follows.
    g.apply(tmp.path(), "trial.yaml", &trial_policy(None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe(&g, "y/c", "x/a") {
        assert!(Instant::now() < deadline, "never enforced after the annotation went");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(probe(&g, "x/b", "x/a"), "the rule's allow is an allow");
    // The metrics name the policy, its rule and the namespace.
    metrics_reach_one(
        &g,
        &[
            r#"weir_policy_drops_total{policy="x/trial",direction="ingress"}"#,
            r#"weir_policy_rule_packets_total{kind="NetworkPolicy",policy="x/trial",direction="ingress",rule="0",verdict="allow"}"#,
            r#"weir_dataplane_namespace_drops_total{namespace="x",direction="ingress"}"#,
            "weir_policyd_change_to_maps_seconds_count",
        ],
    );
    g.ok(&["down"]);
    assert!(g.leftovers().is_empty(), "{:?}", g.leftovers());
}
