//! conf/rbac.yaml and conf/policyd-daemonset.yaml, decoded document by
//! document into k8s-openapi types: no field the API would silently drop
//! (typos), read-only RBAC covering what the sources watch, and a
//! DaemonSet that can actually run policyd (bpffs, run dir, CNI dirs,
//! NODE_NAME, probes on the port it listens on).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn conf(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every key of `input` must survive a round trip through the typed object:
/// k8s-openapi ignores unknown fields, so a misspelt one would vanish.
fn assert_no_unknown_fields(path: &str, input: &Value, typed: &Value) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let tv = t.get(k).unwrap_or_else(|| panic!("{path}.{k}: not a field of this kind (typo?)"));
                assert_no_unknown_fields(&format!("{path}.{k}"), v, tv);
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            assert_eq!(i.len(), t.len(), "{path}");
            for (n, (a, b)) in i.iter().zip(t).enumerate() {
                assert_no_unknown_fields(&format!("{path}[{n}]"), a, b);
            }
        }
        _ => {}
    }
}

#[allow(clippy::large_enum_variant)]
enum Doc {
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    DaemonSet(DaemonSet),
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, n: usize, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file} document {n}: {e}"));
    assert_no_unknown_fields(&format!("{file}#{n}"), v, &serde_json::to_value(&t).unwrap());
    t
}

fn docs(file: &str) -> Vec<Doc> {
    let text = conf(file);
    let mut out = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let n = i + 1;
        let v: Value = Value::deserialize(d).unwrap_or_else(|e| panic!("{file} document {n}: {e}"));
        if v.is_null() {
            continue;
        }
        let kind = (v["apiVersion"].as_str().unwrap_or(""), v["kind"].as_str().unwrap_or(""));
        out.push(match kind {
            ("v1", "ServiceAccount") => Doc::ServiceAccount(typed(file, n, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => Doc::ClusterRole(typed(file, n, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Doc::ClusterRoleBinding(typed(file, n, &v)),
            ("apps/v1", "DaemonSet") => Doc::DaemonSet(typed(file, n, &v)),
            other => panic!("{file} document {n}: unexpected {other:?}"),
        });
    }
    out
}

#[test]
fn rbac_reads_every_watched_resource_and_writes_only_node_annotations() {
    let docs = docs("rbac.yaml");
    let sa = docs
        .iter()
        .find_map(|d| if let Doc::ServiceAccount(s) = d { Some(s) } else { None })
        .expect("a ServiceAccount");
    let role =
        docs.iter().find_map(|d| if let Doc::ClusterRole(r) = d { Some(r) } else { None }).expect("a ClusterRole");
    let binding = docs
        .iter()
        .find_map(|d| if let Doc::ClusterRoleBinding(b) = d { Some(b) } else { None })
        .expect("a ClusterRoleBinding");

    let read_only: BTreeSet<&str> = ["get", "list", "watch"].into();
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for verb in &rule.verbs {
            // The one write: a patch of its own Node's backend annotations.
            let node_patch = verb == "patch"
                && rule.api_groups.as_deref() == Some(&["".to_string()][..])
                && rule.resources.as_deref() == Some(&["nodes".to_string()][..]);
            assert!(
                read_only.contains(verb.as_str()) || node_patch,
                "ClusterRole grants {verb:?}: policyd only reads, and patches Nodes"
            );
        }
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        assert!(rule.resource_names.is_none(), "cluster-wide: every object of each kind");
        for group in rule.api_groups.iter().flatten() {
            assert_ne!(group, "*", "no wildcard API groups");
            for res in rule.resources.iter().flatten() {
                assert_ne!(res, "*", "no wildcard resources");
                if rule.verbs.iter().any(|v| v == "list") && rule.verbs.iter().any(|v| v == "watch") {
                    granted.insert((group.clone(), res.clone()));
                }
            }
        }
    }
    for (g, r) in [
        ("", "pods"),
        ("", "namespaces"),
        ("", "services"),
        ("", "nodes"),
        ("networking.k8s.io", "networkpolicies"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        assert!(granted.contains(&(g.to_string(), r.to_string())), "list+watch on {g}/{r} missing");
    }

    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn daemonset_runs_policyd_with_bpffs_and_probes() {
    let rbac = docs("rbac.yaml");
    let sa = rbac.iter().find_map(|d| if let Doc::ServiceAccount(s) = d { Some(s.clone()) } else { None }).unwrap();
    let docs = docs("policyd-daemonset.yaml");
    assert_eq!(docs.len(), 1);
    let Doc::DaemonSet(ds) = &docs[0] else { panic!("expected the DaemonSet") };
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = ds.spec.as_ref().unwrap();
    let tmpl_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().expect("matchLabels") {
        assert_eq!(tmpl_labels.get(k), Some(v), "selector must match the template's labels");
    }
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name, "runs as the RBAC's ServiceAccount");
    assert_eq!(sa.metadata.namespace, ds.metadata.namespace);
    assert_eq!(pod.host_network, Some(true));
    assert!(
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "runs on every node"
    );

    let volumes = pod.volumes.as_ref().unwrap();
    let host_path_of = |volume: &str| {
        volumes
            .iter()
            .find(|v| v.name == volume)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
            .unwrap_or_else(|| panic!("volume {volume} is not a hostPath"))
    };
    let c = pod.containers.iter().find(|c| c.name == "weir-policyd").expect("the weir-policyd container");
    assert_eq!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let mounts = c.volume_mounts.as_ref().unwrap();
    let mounted = |host: &str, at: &str| mounts.iter().find(|m| m.mount_path == at && host_path_of(&m.name) == host);
    let bpf = mounted("/sys/fs/bpf", "/sys/fs/bpf").expect("bpffs mounted at /sys/fs/bpf");
    assert_eq!(bpf.mount_propagation.as_deref(), Some("Bidirectional"), "pins must reach the host");
    assert!(mounted("/run/weir", "/run/weir").is_some_and(|m| m.read_only != Some(true)), "/run/weir writable");
    assert!(mounted("/opt/cni/bin", "/opt/cni/bin").is_some());
    assert!(mounted("/etc/cni/net.d", "/etc/cni/net.d").is_some());

    let node_name_from_field = |c: &k8s_openapi::api::core::v1::Container| {
        c.env.iter().flatten().any(|e| {
            e.name == "NODE_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "spec.nodeName")
        })
    };
    assert!(node_name_from_field(c), "NODE_NAME from spec.nodeName");

    let args = c.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--in-cluster"));
    assert!(args.iter().any(|a| a == "--node-name=$(NODE_NAME)"));
    let listen = args.iter().find_map(|a| a.strip_prefix("--listen=")).expect("--listen");
    let addr: std::net::SocketAddr = listen.parse().expect("--listen is host:port");
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(addr.port() as i32));
        if addr.ip().is_loopback() {
            assert_eq!(
                get.host.as_deref(),
                Some(addr.ip().to_string().as_str()),
                "probe the loopback address policyd listens on"
            );
        }
    }

    // The CNI binary and conflist reach the host through an init container.
    let init =
        pod.init_containers.as_ref().and_then(|i| i.iter().find(|c| c.name == "install-cni")).expect("install-cni");
    let imounts = init.volume_mounts.as_ref().unwrap();
    for host in ["/opt/cni/bin", "/etc/cni/net.d"] {
        assert!(
            imounts.iter().any(|m| host_path_of(&m.name) == host && m.read_only != Some(true)),
            "install-cni writes {host}"
        );
    }
    assert!(node_name_from_field(init));
    let script = init.args.as_ref().unwrap().join(" ");
    assert!(script.contains("install.sh") && script.contains("--cni-conf-dir /host/etc/cni/net.d"), "{script}");
}
