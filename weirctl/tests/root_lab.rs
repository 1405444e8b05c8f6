//! Root tests: the real `weirctl` and `weir` binaries build labs in network
//! namespaces. Every lab has a name unique to the test and process, and a
//! guard takes it down on success and on failure.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use weir_testsupport::{is_root, netns};

mod common;
use common::{policyd_has_backends, require_binaries, weirctl, LabGuard};

fn ns(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n---\n")
}

fn pod(ns: &str, name: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {label}}}}}\nspec:\n  containers:\n  - name: c\n    image: none\n    ports:\n    - {{containerPort: 80, name: serve-80-tcp, protocol: TCP}}\n    - {{containerPort: 81, name: serve-81-udp, protocol: UDP}}\n    - {{containerPort: 82, name: serve-82-sctp, protocol: SCTP}}\n---\n"
    )
}

fn svc(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s-{ns}-{name}, namespace: {ns}}}\nspec:\n  ipFamilyPolicy: PreferDualStack\n  selector: {{pod: {name}}}\n  ports:\n  - {{name: t80, port: 80, protocol: TCP, targetPort: serve-80-tcp}}\n  - {{name: u81, port: 81, protocol: UDP, targetPort: 81}}\n  - {{name: s82, port: 82, protocol: SCTP}}\n---\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

fn all_cells(m: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (f, row) in m["results"].as_object().unwrap() {
        for (t, v) in row.as_object().unwrap() {
            out.push((f.clone(), t.clone(), v.clone()));
        }
    }
    out
}

fn pod_items(g: &LabGuard) -> Vec<Value> {
    g.json(&["get", "pods", "-o", "json"])["items"].as_array().unwrap().clone()
}

#[test]
fn root_lab_lifecycle_probe_apply_delete_down() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wl");
    let tmp = tempfile::tempdir().unwrap();
    let base = write(
        tmp.path(),
        "base.yaml",
        &[
            ns("x"),
            ns("y"),
            pod("x", "a", "a"),
            pod("x", "b", "b"),
            pod("y", "a", "a"),
            svc("x", "a"),
            svc("x", "b"),
            svc("y", "a"),
        ]
        .concat(),
    );
    let base = base.to_str().unwrap();
    let up = g.ok(&["up", "--no-policy", "-f", base]);
    assert!(up.contains("OFF (--no-policy)"), "{up}");
    assert!(up.contains("ready: lab"), "{up}");

    // get: both families, ready, a ClusterIP per Service
    let items = pod_items(&g);
    assert_eq!(items.len(), 3);
    for p in &items {
        let ips = p["status"]["podIPs"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{p}");
        assert!(ips[0]["ip"].as_str().unwrap().starts_with("10.88."), "{p}");
        assert!(ips[1]["ip"].as_str().unwrap().starts_with("fd00:88::"), "{p}");
        assert_eq!(p["status"]["podIP"], ips[0]["ip"]);
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
        assert_eq!(p["spec"]["nodeName"], "lab");
    }
    let svcs = g.json(&["get", "services", "-o", "json"]);
    assert_eq!(svcs["kind"], "List");
    for s in svcs["items"].as_array().unwrap() {
        assert!(s["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."), "{s}");
        assert_eq!(s["spec"]["clusterIPs"].as_array().unwrap().len(), 2, "{s}");
    }

    // probes: everything connects without policy, through DNAT and directly
    for (port, proto, via, v6) in [
        ("80", "TCP", "service", false),
        ("81", "UDP", "service", false),
        ("80", "TCP", "pod", false),
        ("81", "UDP", "service", true),
        ("80", "TCP", "service", true),
    ] {
        let mut args = vec!["probe", "--port", port, "--protocol", proto, "--via", via, "-o", "json"];
        if v6 {
            args.push("--ipv6");
        }
        let m = g.json(&args);
        assert_eq!(m["protocol"], proto);
        assert_eq!(m["via"], via);
        let cells = all_cells(&m);
        assert_eq!(cells.len(), 9);
        for (f, t, v) in cells {
            assert_eq!(v, Value::Bool(true), "{proto}/{port} via {via} (ipv6 {v6}) {f} -> {t}");
        }
    }
    let table = g.ok(&["probe"]);
    assert!(table.starts_with("-\tx/a\tx/b\ty/a\n"), "{table}");
    assert_eq!(table.lines().nth(1), Some("x/a\t.\t.\t."));
    let sctp = g.json(&["probe", "--port", "82", "--protocol", "SCTP", "-o", "json"]);
    assert!(all_cells(&sctp).iter().all(|(_, _, v)| v == "unsupported"), "{sctp}");
    // a port nothing listens on is not connected (the probe can say no)
    let closed = g.json(&["probe", "--port", "9", "--via", "pod", "--timeout-ms", "300", "-o", "json"]);
    assert!(all_cells(&closed).iter().all(|(_, _, v)| v == false), "{closed}");

    // label change: manifest only, no new CNI ADD (same container, same IPs)
    let state_before: Value = serde_json::from_slice(&std::fs::read(g.dir().join("state.json")).unwrap()).unwrap();
    let relabel = write(tmp.path(), "relabel.yaml", &pod("x", "b", "bb"));
    let out = g.ok(&["apply", "-f", relabel.to_str().unwrap()]);
    assert!(out.contains("pod/x/b configured"), "{out}");
    let state_after: Value = serde_json::from_slice(&std::fs::read(g.dir().join("state.json")).unwrap()).unwrap();
    assert_eq!(state_before["pods"]["x/b"]["container_id"], state_after["pods"]["x/b"]["container_id"]);
    assert_eq!(state_before["pods"]["x/b"]["ips"], state_after["pods"]["x/b"]["ips"]);
    let manifest = std::fs::read_to_string(g.dir().join("manifests/pod_x_b.yaml")).unwrap();
    assert!(manifest.contains("pod: bb"), "{manifest}");
    // s-x-b selects pod=b: nothing any more, so probing it via Service is refused clearly
    let err = g.fails(&["probe", "--to", "x/b"]);
    assert!(err.contains("x/b") && err.contains("no Service selecting only that pod"), "{err}");
    let direct = g.json(&["probe", "--to", "x/b", "--via", "pod", "-o", "json"]);
    assert!(all_cells(&direct).iter().all(|(_, _, v)| v == true));

    // a pod applied after up goes through CNI ADD; a deleted one through DEL
    let newpod = write(tmp.path(), "new.yaml", &[pod("y", "c", "c"), svc("y", "c")].concat());
    let out = g.ok(&["apply", "-f", newpod.to_str().unwrap()]);
    assert!(out.contains("pod/y/c created"), "{out}");
    let m = g.json(&["probe", "--to", "y/c", "-o", "json"]);
    assert!(all_cells(&m).iter().all(|(_, _, v)| v == true), "{m}");
    let gone = write(tmp.path(), "gone.yaml", &pod("y", "a", "a"));
    g.ok(&["delete", "-f", gone.to_str().unwrap()]);
    assert_eq!(pod_items(&g).len(), 3);
    assert!(!Path::new(&format!("/run/netns/weir-{}-y-a", g.name)).exists());
    let err = g.fails(&["delete", "-f", gone.to_str().unwrap()]);
    assert!(err.contains("not found") && err.contains("Pod y/a"), "{err}");

    // bad input leaves the lab as it was
    let err = g.fails(&["up", "--no-policy", "-f", base]);
    assert!(err.contains("already up"), "{err}");
    let orphan = write(tmp.path(), "orphan.yaml", &pod("nope", "p", "p"));
    let err = g.fails(&["apply", "-f", orphan.to_str().unwrap()]);
    assert!(err.contains("Pod nope/p") && err.contains("namespace \"nope\" does not exist"), "{err}");
    let unknown = write(tmp.path(), "dep.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
    let err = g.fails(&["apply", "-f", unknown.to_str().unwrap()]);
    assert!(err.contains("Deployment"), "{err}");
    let broken = write(tmp.path(), "broken.yaml", "kind: [\n");
    let err = g.fails(&["apply", "-f", broken.to_str().unwrap()]);
    assert!(err.contains("broken.yaml"), "{err}");
    assert_eq!(pod_items(&g).len(), 3);
    let lonely = write(tmp.path(), "lonely.yaml", &svc("x", "nobody"));
    let out = g.ok(&["apply", "-f", lonely.to_str().unwrap()]);
    assert!(out.contains("warning: Service x/s-x-nobody selects no running pod"), "{out}");

    // a ClusterNetworkPolicy: cluster-scoped, so no namespace to exist,
    // none written, and one object per name however often it is re-applied
    let cnp = |priority: u32| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: admin-deny}}\n\
             spec:\n  tier: Admin\n  priority: {priority}\n  subject: {{namespaces: {{}}}}\n  ingress:\n  \
             - {{action: Deny, from: [{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}]}}\n"
        )
    };
    let cnp_file = write(tmp.path(), "cnp.yaml", &cnp(10));
    let out = g.ok(&["apply", "-f", cnp_file.to_str().unwrap()]);
    assert!(out.contains("clusternetworkpolicy/admin-deny created"), "{out}");
    let stored = g.dir().join("manifests/clusternetworkpolicy_admin-deny.yaml");
    let manifest = std::fs::read_to_string(&stored).unwrap();
    assert!(manifest.contains("priority: 10") && !manifest.contains("namespace:"), "{manifest}");
    let out = g.ok(&["apply", "-f", cnp_file.to_str().unwrap()]);
    assert!(out.contains("clusternetworkpolicy/admin-deny unchanged"), "{out}");
    let cnp_file = write(tmp.path(), "cnp.yaml", &cnp(20));
    let out = g.ok(&["apply", "-f", cnp_file.to_str().unwrap()]);
    assert!(out.contains("clusternetworkpolicy/admin-deny configured"), "{out}");
    assert!(std::fs::read_to_string(&stored).unwrap().contains("priority: 20"));

    // deleting a namespace takes its pods (CNI DEL) and Services with it
    let nsy = write(tmp.path(), "nsy.yaml", &ns("y"));
    let out = g.ok(&["delete", "-f", nsy.to_str().unwrap()]);
    assert!(
        out.contains("pod/y/c deleted")
            && out.contains("service/y/s-y-c deleted")
            && out.contains("namespace/y deleted"),
        "{out}"
    );
    let left: Vec<String> = pod_items(&g)
        .iter()
        .map(|p| {
            format!("{}/{}", p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap())
        })
        .collect();
    assert_eq!(left, vec!["x/a", "x/b"]);
    assert!(!Path::new(&format!("/run/netns/weir-{}-y-c", g.name)).exists());
    let svcs = g.json(&["get", "services", "-o", "json"]);
    assert!(svcs["items"].as_array().unwrap().iter().all(|s| s["metadata"]["namespace"] == "x"), "{svcs}");
    // ... but not the cluster-scoped policy, which goes by its own delete
    assert!(stored.exists(), "a namespace's deletion leaves cluster-scoped objects");
    let out = g.ok(&["delete", "-f", cnp_file.to_str().unwrap()]);
    assert!(out.contains("clusternetworkpolicy/admin-deny deleted"), "{out}");
    assert!(!stored.exists());
    let err = g.fails(&["delete", "-f", cnp_file.to_str().unwrap()]);
    assert!(err.contains("not found") && err.contains("ClusterNetworkPolicy admin-deny"), "{err}");

    // down removes everything; a second down says there is nothing
    g.ok(&["down"]);
    assert_eq!(g.leftovers(), Vec::<String>::new());
    let err = g.fails(&["down"]);
    assert!(err.contains("no lab named"), "{err}");
}

#[test]
fn root_lab_up_recovers_after_a_crash() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wc");
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "m.yaml", &[ns("x"), pod("x", "a", "a"), svc("x", "a")].concat());
    let f = f.to_str().unwrap();
    g.ok(&["up", "--no-policy", "-f", f]);
    // A crash mid-way: the state says "starting", processes were killed.
    let sp = g.dir().join("state.json");
    let mut st: Value = serde_json::from_slice(&std::fs::read(&sp).unwrap()).unwrap();
    let pid = st["pods"]["x/a"]["serve"]["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    st["phase"] = "starting".into();
    std::fs::write(&sp, serde_json::to_vec(&st).unwrap()).unwrap();
    let out = g.ok(&["up", "--no-policy", "-f", f]);
    assert!(out.contains("recovering"), "{out}");
    let m = g.json(&["probe", "-o", "json"]);
    assert_eq!(m["results"]["x/a"]["x/a"], true);
    g.ok(&["down"]);
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

#[test]
fn root_lab_rejects_bad_up_without_touching_anything() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wb");
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "m.yaml", &pod("missing", "a", "a"));
    let err = g.fails(&["up", "--no-policy", "-f", f.to_str().unwrap()]);
    assert!(err.contains("Pod missing/a") && err.contains("does not exist"), "{err}");
    assert_eq!(g.leftovers(), Vec::<String>::new());
    let err = g.fails(&["probe"]);
    assert!(err.contains("no lab named"), "{err}");
    // the same command as an unprivileged user is refused up front
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            weirctl(),
            "lab",
            "up",
            "--name",
            &g.name,
            "--no-policy",
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

/// Probe until `expect(from, to)` holds for every compared cell (loopback
/// cells are not compared, as upstream), or ~10 s pass: policyd applies
/// changes asynchronously, like the upstream suite's retrying probes.
fn probe_until(g: &LabGuard, expect: impl Fn(&str, &str) -> bool) -> Value {
    probe_until_via(g, "service", expect)
}

fn probe_until_via(g: &LabGuard, via: &str, expect: impl Fn(&str, &str) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..40 {
        last = g.json(&["probe", "--via", via, "--timeout-ms", "500", "-o", "json"]);
        if all_cells(&last).iter().filter(|(f, t, _)| f != t).all(|(f, t, v)| *v == Value::Bool(expect(f, t))) {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the matrix never matched the expectation; last: {last}");
}

#[test]
fn root_lab_policy_deny_all_turns_the_column_to_x() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let dir = Path::new(weirctl()).parent().unwrap();
    assert!(
        dir.join("weir-policyd").is_file(),
        "{}/weir-policyd is missing: run `cargo build --workspace --bins` first",
        dir.display()
    );
    let g = LabGuard::new("wp");
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "m.yaml",
        &[
            ns("x"),
            ns("y"),
            pod("x", "a", "a"),
            pod("x", "b", "b"),
            pod("y", "a", "a"),
            svc("x", "a"),
            svc("x", "b"),
            svc("y", "a"),
        ]
        .concat(),
    );
    let out = g.ok(&["up", "-f", f.to_str().unwrap()]);
    assert!(out.contains("weir-policyd pid") && out.contains("policy enforced"), "{out}");
    probe_until(&g, |_, _| true);

    // The CNI binary got the runtime's identity of each pod: its endpoint
    // records (written by ADD) carry exactly what the lab holds.
    let st: Value = serde_json::from_slice(&std::fs::read(g.dir().join("state.json")).unwrap()).unwrap();
    let mut records = 0;
    for e in std::fs::read_dir(g.dir().join("run/endpoints")).unwrap().flatten() {
        if e.path().extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let r: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let key = format!("{}/{}", r["podNamespace"].as_str().unwrap(), r["podName"].as_str().unwrap());
        let pod = &st["pods"][&key];
        assert_eq!(r["containerId"], pod["container_id"], "{key}");
        assert_eq!(r["podUid"], pod["uid"], "{key}");
        assert_eq!(r["ifname"], "eth0");
        assert_eq!(r["netns"].as_str().unwrap(), format!("/run/netns/{}", pod["netns"].as_str().unwrap()));
        assert_eq!(r["ips"], pod["ips"], "{key}");
        records += 1;
    }
    assert_eq!(records, 3);

    let deny = write(
        tmp.path(),
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}\n",
    );
    g.ok(&["apply", "-f", deny.to_str().unwrap()]);
    let m = probe_until(&g, |_, to| to != "x/a");
    assert_eq!(m["results"]["y/a"]["x/a"], false);
    assert_eq!(m["results"]["y/a"]["x/b"], true);

    // relabel x/b to pod=a: the same policy now selects it too (no re-ADD)
    let relabel = write(tmp.path(), "relabel.yaml", &pod("x", "b", "a"));
    g.ok(&["apply", "-f", relabel.to_str().unwrap()]);
    // (probing via Service: s-x-b selects pod=b, now nothing; probe pods directly)
    let mut last = Value::Null;
    let mut ok = false;
    for _ in 0..40 {
        last = g.json(&["probe", "--via", "pod", "--timeout-ms", "500", "-o", "json"]);
        if last["results"]["y/a"]["x/b"] == false
            && last["results"]["y/a"]["x/a"] == false
            && last["results"]["x/a"]["y/a"] == true
        {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(ok, "relabelled x/b never became isolated: {last}");

    g.ok(&["delete", "-f", deny.to_str().unwrap()]);
    let back = write(tmp.path(), "back.yaml", &pod("x", "b", "b"));
    g.ok(&["apply", "-f", back.to_str().unwrap()]);
    probe_until(&g, |_, _| true);
    g.ok(&["down"]);
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

#[test]
fn root_lab_service_balances_across_backends_by_named_port() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wn");
    let tmp = tempfile::tempdir().unwrap();
    let web = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: web}}}}\nspec:\n  containers:\n  - name: c\n    ports: [{{containerPort: 8080, name: http}}]\n---\n"
        )
    };
    let f = write(
        tmp.path(),
        "m.yaml",
        &[
            ns("x"),
            web("w1"),
            web("w2"),
            pod("x", "client", "client"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n".to_string(),
        ]
        .concat(),
    );
    g.ok(&["up", "--no-policy", "-f", f.to_str().unwrap()]);
    let svcs = g.json(&["get", "services", "-o", "json"]);
    let vip: std::net::IpAddr = svcs["items"][0]["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let st: Value = serde_json::from_slice(&std::fs::read(g.dir().join("state.json")).unwrap()).unwrap();
    let client_ns = st["pods"]["x/client"]["netns"].as_str().unwrap().to_string();
    // 40 connections from the client pod to ClusterIP:80 (-> 8080 by name)
    let connected = std::thread::spawn(move || {
        netns::enter(&netns::path(&client_ns)).unwrap();
        (0..40)
            .filter(|_| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::new(vip, 80),
                    std::time::Duration::from_secs(2),
                )
                .is_ok()
            })
            .count()
    })
    .join()
    .unwrap();
    assert_eq!(connected, 40);
    // Both endpoints took a share (all 40 on one: probability 2^-39).
    let out = netns::command(&netns::path(&format!("weir-{}", g.name)), "nft")
        .args(["list", "table", "inet", "weir_lab_services"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hits: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("dnat ip to"))
        .map(|l| {
            let after = l.split("counter packets ").nth(1).expect("counter on every endpoint rule");
            after.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(hits.len(), 2, "{text}");
    assert!(hits.iter().all(|h| *h > 0), "one backend got nothing: {hits:?}\n{text}");
    assert_eq!(hits.iter().sum::<u64>(), 40, "{text}");
    assert!(text.contains("8080"), "named targetPort resolved to 8080: {text}");
    g.ok(&["down"]);
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

fn pinned_pod(ns: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports: [{{containerPort: 80, protocol: TCP}}]\n---\n"
    )
}

/// `ns/name` -> (spec.nodeName, status.hostIP)
fn placement(g: &LabGuard) -> std::collections::BTreeMap<String, (String, String)> {
    pod_items(g)
        .iter()
        .map(|p| {
            let key =
                format!("{}/{}", p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap());
            (
                key,
                (
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    p["status"]["hostIP"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn root_lab_two_nodes_host_gw_up_get_exec_down() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wm");
    let tmp = tempfile::tempdir().unwrap();
    // x/c is pinned to node-1; the others spread over the emptiest node in
    // sorted order: x/a node-2, x/b node-1, y/a node-2.
    let f = write(
        tmp.path(),
        "m.yaml",
        &[
            ns("x"),
            ns("y"),
            pod("x", "a", "a"),
            pod("x", "b", "b"),
            pinned_pod("x", "c", "node-1"),
            pod("y", "a", "a"),
            svc("x", "a"),
            svc("y", "a"),
        ]
        .concat(),
    );
    let out = g.ok(&["up", "--nodes", "2", "--backend", "host-gw", "-f", f.to_str().unwrap()]);
    assert!(out.contains("ready: lab"), "{out}");

    // the nodes, as the API has them
    let nodes = g.json(&["get", "nodes", "-o", "json"]);
    assert_eq!(nodes["kind"], "List");
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{nodes}");
    for (i, n) in items.iter().enumerate() {
        let k = i + 1;
        assert_eq!(n["kind"], "Node");
        assert_eq!(n["metadata"]["name"], format!("node-{k}"));
        assert_eq!(n["spec"]["podCIDRs"], serde_json::json!([format!("10.88.{k}.0/24"), format!("fd00:88:{k}::/64")]));
        assert_eq!(
            n["status"]["addresses"][0],
            serde_json::json!({"type": "InternalIP", "address": format!("192.0.2.{k}")})
        );
    }
    let table = g.ok(&["get", "nodes"]);
    assert!(table.starts_with("NAME") && table.contains("node-2") && table.contains("192.0.2.2"), "{table}");
    // and weir-policyd reads them: each node's manifest is in its API directory
    assert!(g.dir().join("manifests/node_node-1.yaml").is_file());

    // pods: where they run, their node's address, addresses from their node's CIDR
    let placed = placement(&g);
    let want = [("x/a", "node-2"), ("x/b", "node-1"), ("x/c", "node-1"), ("y/a", "node-2")];
    for (key, node) in want {
        let k = &node[5..];
        assert_eq!(placed[key], (node.to_string(), format!("192.0.2.{k}")), "{key}: {placed:?}");
    }
    for p in pod_items(&g) {
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let k = &node[5..];
        let ips = p["status"]["podIPs"].as_array().unwrap();
        assert!(ips[0]["ip"].as_str().unwrap().starts_with(&format!("10.88.{k}.")), "{p}");
        assert!(ips[1]["ip"].as_str().unwrap().starts_with(&format!("fd00:88:{k}::")), "{p}");
    }
    // every node runs its own weir-policyd with its own pins and run dir
    let st: Value = serde_json::from_slice(&std::fs::read(g.dir().join("state.json")).unwrap()).unwrap();
    assert_eq!(st["policyds"].as_object().unwrap().len(), 2, "{st}");
    for k in 1..=2 {
        assert!(
            Path::new(&format!("/sys/fs/bpf/weir-lab-{}/node-{k}/weir_endpoints", g.name)).exists(),
            "node-{k} pins"
        );
        assert!(Path::new(&format!("/run/netns/weir-{}-n{k}", g.name)).exists());
    }

    // exec: the pod's network namespace, its exit code
    let x_a_ip =
        pod_items(&g).iter().find(|p| p["metadata"]["name"] == "a" && p["metadata"]["namespace"] == "x").unwrap()
            ["status"]["podIP"]
            .as_str()
            .unwrap()
            .to_string();
    let out = g.ok(&["exec", "x/a", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(out.contains(&format!("{x_a_ip}/24")), "{out}");
    let code = g.run(&["exec", "x/a", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));
    let err = g.fails(&["exec", "x/nope", "--", "true"]);
    assert!(err.contains("x/nope") && err.contains("x/a"), "{err}");

    // pods on the same node reach each other (and Services, on every node)
    let m = g.json(&["probe", "--via", "pod", "--from", "x/b", "--to", "x/c", "-o", "json"]);
    assert_eq!(m["results"]["x/b"]["x/c"], true, "{m}");
    let m = g.json(&["probe", "--from", "y/a", "--to", "x/a", "-o", "json"]);
    assert_eq!(m["results"]["y/a"]["x/a"], true, "{m}");
    // between nodes only once weir-policyd runs the backend
    if policyd_has_backends() {
        // every pod to every pod, across the two nodes (not every pod has a Service)
        probe_until_via(&g, "pod", |_, _| true);
        // and through the Services, whose backends are on either node
        let m = g.json(&["probe", "--from", "x/b", "--to", "y/a", "-o", "json"]);
        assert_eq!(m["results"]["x/b"]["y/a"], true, "node-1 to a Service backed on node-2: {m}");
    } else {
        eprintln!("SKIPPED (traffic between nodes): weir-policyd has no --backend flag yet");
    }

    // apply: a pod pinned to a node that does not exist is refused whole
    let bad = write(tmp.path(), "bad.yaml", &pinned_pod("x", "d", "node-3"));
    let err = g.fails(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("Pod x/d") && err.contains("\"node-3\""), "{err}");
    assert_eq!(pod_items(&g).len(), 4);
    // a new unpinned pod joins the emptiest node (node-1 has x/b, x/c; node-2 x/a, y/a: a tie, so node-1)
    let more = write(tmp.path(), "more.yaml", &pod("y", "b", "b"));
    g.ok(&["apply", "-f", more.to_str().unwrap()]);
    assert_eq!(placement(&g)["y/b"].0, "node-1");

    g.ok(&["down"]);
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

#[test]
fn root_lab_rejects_bad_topology_before_touching_anything() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wt");
    let tmp = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["up", "--nodes", "0"], "--nodes 0"),
        (vec!["up", "--nodes", "100"], "--nodes 100"),
        (vec!["up", "--nodes", "2", "--backend", "gre"], "host-gw, vxlan"),
        (vec!["up", "--backend", "vxlan"], "--nodes 2"),
    ] {
        let err = g.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(g.leftovers(), Vec::<String>::new());
    }
    let f = write(tmp.path(), "m.yaml", &[ns("x"), pod("x", "a", "a"), pinned_pod("x", "b", "node-4")].concat());
    let err = g.fails(&["up", "--nodes", "3", "-f", f.to_str().unwrap()]);
    assert!(err.contains("Pod x/b") && err.contains("\"node-4\"") && err.contains("node-1, node-2, node-3"), "{err}");
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

/// A stand-in weir-policyd with backends: says `--backend` in its help,
/// publishes its node annotations (backend and node name, from its
/// arguments) in its run dir the way weir-policyd does, then waits; or,
/// with `exits`, quits at once. Only the lab's side of the contract is
/// under test here; pods are left out (nothing would set them READY).
fn fake_policyd(dir: &Path, exits: bool) -> PathBuf {
    let body = if exits {
        "echo 'cannot set up the backend' >&2; exit 1"
    } else {
        "printf '{\"weir.io/backend-type\":\"%s\",\"weir.io/public-ip\":\"%s\"}' \"$backend\" \"$node\" > \"$run/.a.tmp\" && mv \"$run/.a.tmp\" \"$run/node-annotations.json\"\n\
         while :; do sleep 0.2; done"
    };
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = --help ] && {{ echo '      --backend <BACKEND>'; exit 0; }}\n\
         while [ $# -gt 0 ]; do case \"$1\" in --run-dir) run=$2; shift;; --backend) backend=$2; shift;; --node-name) node=$2; shift;; esac; shift; done\n{body}\n"
    );
    let p = dir.join(if exits { "policyd-exits" } else { "policyd-publishes" });
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn root_lab_copies_each_policyds_node_annotations_into_its_node() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir"]);
    let g = LabGuard::new("wa");
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_policyd(tmp.path(), false);
    g.ok(&["up", "--nodes", "3", "--backend", "host-gw", "--policyd-bin", fake.to_str().unwrap()]);
    let annotations = |g: &LabGuard| -> Vec<Value> {
        g.json(&["get", "nodes", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["annotations"].clone())
            .collect()
    };
    for (i, a) in annotations(&g).iter().enumerate() {
        assert_eq!(
            *a,
            serde_json::json!({"weir.io/backend-type": "host-gw", "weir.io/public-ip": format!("node-{}", i + 1)})
        );
    }
    // the Node's manifest (what every weir-policyd reads) has them, its spec unchanged
    let manifest = std::fs::read_to_string(g.dir().join("manifests/node_node-2.yaml")).unwrap();
    assert!(manifest.contains("weir.io/backend-type: host-gw") && manifest.contains("10.88.2.0/24"), "{manifest}");
    // a change is picked up at the next apply
    std::fs::write(
        g.dir().join("nodes/node-2/run/node-annotations.json"),
        r#"{"weir.io/backend-type":"host-gw","weir.io/public-ip":"192.0.2.2"}"#,
    )
    .unwrap();
    let nsq = write(tmp.path(), "q.yaml", &ns("q"));
    g.ok(&["apply", "-f", nsq.to_str().unwrap()]);
    assert_eq!(annotations(&g)[1]["weir.io/public-ip"], "192.0.2.2");
    g.ok(&["down"]);
    assert_eq!(g.leftovers(), Vec::<String>::new());

    // a weir-policyd that dies before publishing fails `up`, which rolls back
    let dies = fake_policyd(tmp.path(), true);
    let err = g.fails(&["up", "--nodes", "2", "--policyd-bin", dies.to_str().unwrap()]);
    assert!(
        err.contains("node-1") && err.contains("did not publish") && err.contains("cannot set up the backend"),
        "{err}"
    );
    assert_eq!(g.leftovers(), Vec::<String>::new());
}

fn is_bpffs(path: &str) -> bool {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: statfs fills the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe4a11 }
}

/// Give the calling thread (and what it spawns) a private mount namespace
/// in which nothing is mounted at /sys/fs/bpf: a fresh machine.
fn enter_fresh_mount_namespace() {
    // SAFETY: plain syscalls on constant strings; they affect only this thread.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        assert_eq!(
            libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()),
            0,
            "making / private"
        );
        while is_bpffs("/sys/fs/bpf") {
            assert_eq!(
                libc::umount2(c"/sys/fs/bpf".as_ptr(), libc::MNT_DETACH),
                0,
                "umount /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// `./install.sh && weirctl lab demo` on a fresh machine: bpffs is not
/// mounted. `lab up` (and the weir-policyd it starts) mount it, in the
/// mount namespace they run in only, and the lab enforces and probes.
#[test]
fn root_lab_up_mounts_bpffs_where_none_is_mounted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    require_binaries(&["weir", "weir-policyd"]);
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "m.yaml",
        &[ns("x"), pod("x", "a", "a"), pod("x", "b", "b"), svc("x", "a"), svc("x", "b")].concat(),
    );
    let name = format!("wf{}", std::process::id());
    let pins = format!("/sys/fs/bpf/weir-lab-{name}");
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
    let inner_pins = pins.clone();
    // Everything of the lab happens on this thread, in its namespace; the
    // guard takes the lab down there too, on success and on panic.
    let inside = std::thread::spawn(move || {
        enter_fresh_mount_namespace();
        assert!(!is_bpffs("/sys/fs/bpf"), "bpffs still mounted in the test namespace");
        let g = LabGuard { name };
        let out = g.ok(&["up", "-f", f.to_str().unwrap()]);
        assert!(out.contains("mounted bpffs at /sys/fs/bpf"), "{out}");
        assert!(out.contains("policy enforced"), "{out}");
        assert!(is_bpffs("/sys/fs/bpf"), "bpffs mounted in the lab's namespace");
        assert!(Path::new(&inner_pins).is_dir(), "the lab's pins are on the new bpffs");
        up_tx.send(()).unwrap();
        let _ = seen_rx.recv();
        probe_until_via(&g, "pod", |_, _| true);
        g.ok(&["down"]);
        let left = g.leftovers();
        assert!(left.is_empty(), "left behind: {left:?}");
    });
    // The host's own bpffs is untouched and never saw the lab's pins.
    let host_view = up_rx.recv().map(|()| (is_bpffs("/sys/fs/bpf"), Path::new(&pins).exists()));
    drop(seen_tx);
    let inner = inside.join();
    assert!(Path::new("/sys/fs/bpf").exists() && is_bpffs("/sys/fs/bpf"), "the host's bpffs is still mounted");
    if let Err(e) = inner {
        std::panic::resume_unwind(e);
    }
    assert_eq!(host_view, Ok((true, false)), "(host /sys/fs/bpf still bpffs, lab pins visible on the host)");
    assert!(!Path::new(&pins).exists());
}
