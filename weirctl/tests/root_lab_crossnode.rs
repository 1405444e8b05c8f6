//! Root tests: egress NetworkPolicy on a two-node lab, client on node-1,
//! backend on node-2. A Service is DNAT in the client's node, so the pod's
//! egress hook sees the ClusterIP, not the backend: these tests prove that
//! egress isolation still holds (and an allow rule still matches) when the
//! backend is remote and reached through a ClusterIP. The real `weirctl`,
//! `weir` and `weir-policyd` binaries; every lab has a name unique to the
//! test and process, and a guard takes it down on success and on failure.

use serde_json::Value;
use weir_testsupport::is_root;

mod common;
use common::{policyd_has_backends, require_binaries, LabGuard};

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports: [{{containerPort: 80, protocol: TCP}}]\n---\n"
    )
}

fn manifests() -> String {
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n".to_string(),
        pod("client", "node-1"),
        pod("server", "node-2"),
        // a pod the partial allow lets through: proves that policy is in force
        pod("other", "node-2"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: x}\nspec: {selector: {app: server}, ports: [{port: 80, protocol: TCP}]}\n---\n".to_string(),
    ]
    .concat()
}

/// The one egress policy on x/client (same name each time: apply replaces it).
fn client_egress(egress: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-egress, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n{egress}"
    )
}

fn allow_to(app: &str) -> String {
    format!("  egress:\n  - to: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}]\n    ports: [{{port: 80, protocol: TCP}}]\n")
}

/// Probe x/client -> x/<to> on TCP 80 until it is `want`, or ~40 attempts:
/// weir-policyd applies changes asynchronously, so one attempt is not the
/// answer. Returns whether `want` was reached, and the last probe's JSON.
fn probe_until(g: &LabGuard, via: &str, to: &str, want: bool) -> (bool, Value) {
    let dest = format!("x/{to}");
    let mut last = Value::Null;
    for _ in 0..40 {
        let out =
            g.ok(&["probe", "--via", via, "--from", "x/client", "--to", &dest, "--timeout-ms", "500", "-o", "json"]);
        last = serde_json::from_str(&out).expect("JSON output");
        if last["results"]["x/client"][&dest] == Value::Bool(want) {
            return (true, last);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    (false, last)
}

fn assert_reaches(g: &LabGuard, via: &str, to: &str, want: bool, when: &str) {
    let (ok, last) = probe_until(g, via, to, want);
    assert!(
        ok,
        "{when}: x/client -> x/{to} via {via} never became {}; last: {last}",
        if want { "connected" } else { "blocked" }
    );
}

fn egress_isolated_client_cannot_reach_remote_backend(backend: &str, tag: &str) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir", "weir-policyd"]);
    if !policyd_has_backends() {
        eprintln!("SKIPPED: weir-policyd has no --backend flag, traffic cannot cross nodes");
        return;
    }
    let g = LabGuard::new(tag);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("m.yaml");
    std::fs::write(&f, manifests()).unwrap();
    let out = g.ok(&["up", "--nodes", "2", "--backend", backend, "-f", f.to_str().unwrap()]);
    assert!(out.contains("policy enforced"), "{out}");

    // the placement the test is about: client and backends on different nodes
    let pods: Value = serde_json::from_str(&g.ok(&["get", "pods", "-o", "json"])).unwrap();
    for p in pods["items"].as_array().unwrap() {
        let want = if p["metadata"]["name"] == "client" { "node-1" } else { "node-2" };
        assert_eq!(p["spec"]["nodeName"], want, "{p}");
    }

    // no policy: across nodes, through the ClusterIP and directly
    assert_reaches(&g, "service", "server", true, "no policy");
    assert_reaches(&g, "pod", "server", true, "no policy");
    assert_reaches(&g, "pod", "other", true, "no policy");

    // deny all egress from the client
    g.apply(tmp.path(), "deny.yaml", &client_egress(""));
    assert_reaches(&g, "service", "server", false, "egress deny-all");
    assert_reaches(&g, "pod", "server", false, "egress deny-all");
    assert_reaches(&g, "pod", "other", false, "egress deny-all");

    // allow only app=other:80. x/other opening proves this policy replaced
    // deny-all; the backend behind the ClusterIP is not app=other.
    g.apply(tmp.path(), "other.yaml", &client_egress(&allow_to("other")));
    assert_reaches(&g, "pod", "other", true, "egress to app=other");
    assert_reaches(&g, "service", "server", false, "egress to app=other");
    assert_reaches(&g, "pod", "server", false, "egress to app=other");

    // allow only app=server:80: the remote backend, through its ClusterIP too
    g.apply(tmp.path(), "server.yaml", &client_egress(&allow_to("server")));
    assert_reaches(&g, "service", "server", true, "egress to app=server");
    assert_reaches(&g, "pod", "server", true, "egress to app=server");
    assert_reaches(&g, "pod", "other", false, "egress to app=server");

    g.ok(&["down"]);
}

#[test]
fn root_lab_crossnode_vxlan_egress_isolation_holds_through_cluster_ip() {
    egress_isolated_client_cannot_reach_remote_backend("vxlan", "xv");
}

#[test]
fn root_lab_crossnode_host_gw_egress_isolation_holds_through_cluster_ip() {
    egress_isolated_client_cannot_reach_remote_backend("host-gw", "xh");
}
