//! Root tests of `weirctl explain` / `weirctl lab explain` on a real lab:
//! the answer names the deciding policy and rule and the kernel agrees; a
//! kernel that disagrees fails the command loudly; every bad input gets a
//! clear error and a non-zero exit and changes nothing.

use serde_json::Value;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};
use weir_testsupport::is_root;

mod common;
use common::{require_binaries, table_rows, weirctl, LabGuard};

const MODEL: &str = "
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
spec:
  containers:
  - name: c
    image: none
    ports: [{containerPort: 8080, name: web, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {containers: [{name: c, image: none}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {pod: a}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: web}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 8080}]
";

fn explain(g: &LabGuard, args: &[&str]) -> Output {
    let mut full = vec!["lab", "explain", "--name", &g.name];
    full.extend_from_slice(args);
    Command::new(weirctl()).args(&full).output().expect("running weirctl")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a state change would show: the lab's pods and policyd's endpoints
/// (identity, isolation) and policies.
fn snapshot(g: &LabGuard, run_dir: &Path) -> (Value, Value, Value) {
    let sock = weirctl::explain::socket(run_dir);
    (
        g.json(&["get", "pods", "-o", "json"]),
        weirctl::explain::get(&sock, "/v1/endpoints").unwrap(),
        weirctl::explain::get(&sock, "/v1/policies").unwrap(),
    )
}

#[test]
fn root_explain_names_the_rule_the_kernel_agrees_and_bad_input_changes_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir", "weir-policyd"]);
    let g = LabGuard::new("wx");
    let tmp = tempfile::tempdir().unwrap();
    g.up_with(tmp.path(), MODEL);
    let run_dir = g.dir().join("run");
    let sock = weirctl::explain::socket(&run_dir);
    let md = std::fs::symlink_metadata(&sock).expect("policyd's API socket");
    assert!(md.file_type().is_socket());
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o600), "root's, mode 0600");

    // Allowed through the Service: judged at the backend x/a port 8080.
    let ok = explain(&g, &["--from", "x/b", "--to", "svc/x/web", "--port", "80", "--protocol", "TCP", "-o", "json"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let v = json_of(&ok);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["flow"]["backend"]["port"], 8080);
    assert_eq!(v["ingress"]["isolated"], true);
    assert_eq!(v["ingress"]["policies"][0]["policy"], "x/from-b");
    assert_eq!(v["ingress"]["policies"][0]["rule"], 0);
    assert_eq!(v["egress"]["isolated"], false);
    assert_eq!(v["dataplane"]["allowed"], true);
    assert_eq!(v["dataplane"]["agrees"], true);
    assert_eq!(v["dataplane"]["runs"].as_array().unwrap().len(), 2, "from_pod of x/b, to_pod of x/a");

    // Blocked: y/b is not selected; text output says so, kubectl-like.
    let no = explain(&g, &["--from", "y/b", "--to", "x/a", "--port", "8080", "--protocol", "tcp"]);
    assert!(no.status.success(), "{}", stderr(&no));
    let text = String::from_utf8_lossy(&no.stdout);
    assert!(text.contains("Verdict:      BLOCKED"), "{text}");
    assert!(text.contains("Allowed by: no rule allows"), "{text}");
    assert!(text.contains("Dataplane:    agrees (BLOCKED)"), "{text}");
    assert!(text.contains("drop_policy"), "{text}");

    let before = snapshot(&g, &run_dir);

    // Unknown pod: an error naming it, non-zero.
    let out = explain(&g, &["--from", "x/nope", "--to", "x/a", "--port", "8080", "--protocol", "TCP"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown pod") && stderr(&out).contains("x/nope"), "{}", stderr(&out));
    let out = explain(&g, &["--from", "x/b", "--to", "svc/x/nope", "--port", "80", "--protocol", "TCP"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no Service x/nope"), "{}", stderr(&out));

    // An address outside every range: judged as world, and said so.
    let out = explain(&g, &["--from", "x/b", "--to", "192.0.2.7", "--port", "443", "--protocol", "TCP", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w = json_of(&out);
    assert_eq!(w["dst"]["kind"], "world");
    let notes = w["notes"].to_string();
    assert!(notes.contains("192.0.2.7") && notes.contains("judged as world"), "{notes}");

    // Ports out of range: refused by the command line and by the API.
    for port in ["0", "70000"] {
        let out = explain(&g, &["--from", "x/b", "--to", "x/a", "--port", port, "--protocol", "TCP"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(port) && stderr(&out).contains("--port"), "{}", stderr(&out));
        let e = weirctl::explain::get(&sock, &format!("/v1/explain?from=x/b&to=x/a&port={port}&protocol=TCP"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range") && e.contains("1 to 65535"), "{e}");
    }
    let e = weirctl::explain::get(&sock, "/v1/explain?from=x/b&to=x/a&port=80&protocol=ICMP").unwrap_err().to_string();
    assert!(e.contains("TCP, UDP, SCTP"), "{e}");

    assert_eq!(snapshot(&g, &run_dir), before, "bad input changed nothing");

    // `weirctl get` on the node: what policyd holds, from its API.
    let get = |what: &str| {
        let out = Command::new(weirctl()).args(["get", what, "--run-dir", run_dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "get {what}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let endpoints = get("endpoints");
    let rows = table_rows(&endpoints);
    let row_a = rows.iter().find(|r| r["POD"] == "x/a").unwrap_or_else(|| panic!("{endpoints}"));
    assert_eq!(row_a["IDENTITY"], v["dst"]["identity"].to_string(), "{endpoints}");
    assert_eq!((row_a["INGRESS-ISOLATED"].as_str(), row_a["EGRESS-ISOLATED"].as_str()), ("yes", "no"), "{endpoints}");
    assert_eq!((row_a["READY"].as_str(), row_a["POLICIES"].as_str()), ("yes", "x/from-b"), "{endpoints}");
    let policies = get("policies");
    let rows = table_rows(&policies);
    let row = rows.iter().find(|r| r["POLICY"] == "x/from-b").unwrap_or_else(|| panic!("{policies}"));
    assert_eq!(
        [&row["KIND"], &row["MODE"], &row["ISOLATES"], &row["SELECTS"]],
        ["NetworkPolicy", "enforce", "ingress", "x/a"],
        "{policies}"
    );
    assert!(row["REALIZED"].starts_with("yes (revision "), "in the maps: {policies}");

    // A ClusterNetworkPolicy (for y's egress to a documentation range, so
    // the flows above keep their verdicts), with a part it cannot use: both
    // `get`s list it, and the node's says what is wrong, by field.
    let cnp = tmp.path().join("cnp.yaml");
    std::fs::write(
        &cnp,
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: y-guard}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}
  egress:
  - {name: no-docs, action: Deny, to: [{networks: [192.0.2.0/24, not-a-cidr]}]}
",
    )
    .unwrap();
    g.ok(&["apply", "-f", cnp.to_str().unwrap()]);
    let lab_policies = g.ok(&["get", "policies"]);
    assert!(
        lab_policies.lines().any(|l| l.split_whitespace().collect::<Vec<_>>().starts_with(&["y-guard", "Admin", "7"])),
        "{lab_policies}"
    );
    // Listed once the node has it, compiled (RULES) after its next compile.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let policies = loop {
        let p = get("policies");
        let compiled = table_rows(&p).iter().any(|r| r["POLICY"] == "y-guard" && r["RULES"] != "-");
        if compiled || std::time::Instant::now() > until {
            break p;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let rows = table_rows(&policies);
    let row = rows.iter().find(|r| r["POLICY"] == "y-guard").unwrap_or_else(|| panic!("never listed: {policies}"));
    assert_eq!(
        ["KIND", "MODE", "ISOLATES", "TIER", "PRIORITY", "RULES", "PROBLEMS"].map(|c| row[c].as_str()),
        ["ClusterNetworkPolicy", "enforce", "-", "Admin", "7", "1", "1"],
        "{policies}"
    );
    assert!(policies.contains("y-guard: spec.egress[0].to[0].networks[1]"), "{policies}");

    // The kernel disagrees: remove x/a's policy entries behind policyd's
    // back; explain must say so loudly and fail.
    let st = weirctl::lab::state::Lab::new(&g.name).unwrap().require_state().unwrap();
    let node = &weirctl::lab::state::Lab::new(&g.name).unwrap().nodes(st.nodes)[0];
    let dp = weir_bpf::Dataplane::open(&node.bpffs_root).unwrap();
    let a_ifindex = v["dst"]["endpoint"].as_u64().unwrap() as u32;
    for (m, _) in dp.policy_entries().unwrap().into_iter().filter(|(m, _)| m.endpoint == a_ifindex) {
        dp.remove_policy(&m).unwrap();
    }
    let out = explain(&g, &["--from", "x/b", "--to", "x/a", "--port", "8080", "--protocol", "TCP"]);
    assert!(!out.status.success(), "a disagreement fails the command");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verdict:      ALLOWED"), "{text}");
    assert!(stderr(&out).contains("DISAGREEMENT") && stderr(&out).contains("bug in Weir"), "{}", stderr(&out));

    // policyd not running: it removes its socket on the way out, and
    // explain says how to start it.
    let pid = st.policyds.values().next().unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let gone = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sock.exists() {
        assert!(std::time::Instant::now() < gone, "policyd left its socket behind");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = explain(&g, &["--from", "x/b", "--to", "x/a", "--port", "8080", "--protocol", "TCP"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("weir-policyd is not running") && stderr(&out).contains("start"), "{}", stderr(&out));
    let out = Command::new(weirctl())
        .args([
            "explain",
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--from",
            "x/b",
            "--to",
            "x/a",
            "--port",
            "80",
            "--protocol",
            "TCP",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no API socket at"), "{}", stderr(&out));
}
