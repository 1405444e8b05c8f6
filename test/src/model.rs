//! The standard model every case starts from, and the completion of the
//! short objects cases write.
//!
//! Namespaces x, y, z (with the `kubernetes.io/metadata.name` label the API
//! server adds), pods a, b, c in each, labelled `pod: <name>`, serving ports
//! 80 and 81 on TCP, UDP and SCTP through container ports named
//! `serve-<port>-<proto>`, and one Service `s-<ns>-<pod>` per pod selecting
//! it (dual-stack where the cluster is). The same facts as upstream's
//! netpol model; the manifests are ours.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_yaml_ng::{Mapping, Value};

use crate::expect::PodRef;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
pub const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Image and commands only matter if the model is applied to a real
/// cluster; the lab serves every declared container port itself.
const SERVER_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

pub fn model_pods() -> Vec<PodRef> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| PodRef::new(ns, p))).collect()
}

pub fn service_name(ns: &str, pod: &str) -> String {
    format!("s-{ns}-{pod}")
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn labels_value(labels: &BTreeMap<String, String>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in labels {
        m.insert(s(k), s(v));
    }
    Value::Mapping(m)
}

pub fn namespace(name: &str, extra_labels: &BTreeMap<String, String>) -> Value {
    let mut labels = extra_labels.clone();
    labels.insert(NS_NAME_LABEL.to_string(), name.to_string());
    map(vec![
        ("apiVersion", s("v1")),
        ("kind", s("Namespace")),
        ("metadata", map(vec![("name", s(name)), ("labels", labels_value(&labels))])),
    ])
}

/// The container list every model pod carries: one container per
/// (port, protocol), each declaring exactly one named port.
pub fn server_containers() -> Value {
    let mut cs = Vec::new();
    for port in PORTS {
        for proto in PROTOCOLS {
            let lp = proto.to_lowercase();
            let cmd: Vec<Value> = match proto {
                "SCTP" => vec![s("/agnhost"), s("netexec"), s("--sctp-port"), s(&port.to_string())],
                _ => vec![
                    s("/agnhost"),
                    s("serve-hostname"),
                    s(&format!("--{lp}")),
                    s("--http=false"),
                    s("--port"),
                    s(&port.to_string()),
                ],
            };
            cs.push(map(vec![
                ("name", s(&format!("cont-{port}-{lp}"))),
                ("image", s(SERVER_IMAGE)),
                ("command", Value::Sequence(cmd)),
                (
                    "ports",
                    Value::Sequence(vec![map(vec![
                        ("name", s(&format!("serve-{port}-{lp}"))),
                        ("containerPort", Value::Number(port.into())),
                        ("protocol", s(proto)),
                    ])]),
                ),
            ]));
        }
    }
    Value::Sequence(cs)
}

pub fn pod(ns: &str, name: &str, labels: &BTreeMap<String, String>) -> Value {
    map(vec![
        ("apiVersion", s("v1")),
        ("kind", s("Pod")),
        ("metadata", map(vec![("name", s(name)), ("namespace", s(ns)), ("labels", labels_value(labels))])),
        ("spec", map(vec![("containers", server_containers())])),
    ])
}

pub fn service_spec(pod: &str) -> Value {
    let mut ports = Vec::new();
    for proto in PROTOCOLS {
        for port in PORTS {
            ports.push(map(vec![
                ("name", s(&format!("service-port-{}-{port}", proto.to_lowercase()))),
                ("protocol", s(proto)),
                ("port", Value::Number(port.into())),
                ("targetPort", Value::Number(port.into())),
            ]));
        }
    }
    // Dual-stack where the cluster is (the lab is): IPv6 probes go through
    // Services too. IPv4 probes see the same Service as single-stack.
    map(vec![
        ("selector", map(vec![("pod", s(pod))])),
        ("ipFamilyPolicy", s("PreferDualStack")),
        ("ports", Value::Sequence(ports)),
    ])
}

pub fn service(ns: &str, pod: &str) -> Value {
    map(vec![
        ("apiVersion", s("v1")),
        ("kind", s("Service")),
        ("metadata", map(vec![("name", s(&service_name(ns, pod))), ("namespace", s(ns))])),
        ("spec", service_spec(pod)),
    ])
}

/// Every object of the model with the file name it is written under
/// (one object per file, so any manifest reader takes them).
pub fn model_objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        out.push((format!("00-namespace-{ns}.yaml"), namespace(ns, &BTreeMap::new())));
    }
    for ns in NAMESPACES {
        for p in PODS {
            let labels = BTreeMap::from([("pod".to_string(), p.to_string())]);
            out.push((format!("10-pod-{ns}-{p}.yaml"), pod(ns, p, &labels)));
        }
    }
    for ns in NAMESPACES {
        for p in PODS {
            out.push((format!("20-service-{ns}-{p}.yaml"), service(ns, p)));
        }
    }
    out
}

const MODEL_HEADER: &str = "# Generated by weir-e2e (test/src/model.rs): the standard conformance model.\n\
# Regenerate with WEIR_WRITE_MODEL=1 cargo test -p weir-e2e model_files_match_the_generator\n";

pub fn render(v: &Value) -> Result<String> {
    Ok(serde_yaml_ng::to_string(v)?)
}

pub fn model_file_contents() -> Result<Vec<(String, String)>> {
    model_objects().into_iter().map(|(f, v)| Ok((f, format!("{MODEL_HEADER}{}", render(&v)?)))).collect()
}

pub fn write_model(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (f, text) in model_file_contents()? {
        std::fs::write(dir.join(&f), text).with_context(|| format!("writing {}", dir.join(&f).display()))?;
    }
    Ok(())
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// What a case object refers to: kind, namespace (None for Namespace), name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

pub const KINDS: [&str; 5] = ["NetworkPolicy", "ClusterNetworkPolicy", "Namespace", "Pod", "Service"];

/// Namespace and ClusterNetworkPolicy: named without a namespace, in the
/// case files and in deletes.
pub fn is_cluster_scoped(kind: &str) -> bool {
    matches!(kind, "Namespace" | "ClusterNetworkPolicy")
}

/// The apiVersion a case object of `kind` gets when it leaves it out.
pub fn api_version(kind: &str) -> &'static str {
    match kind {
        "NetworkPolicy" => "networking.k8s.io/v1",
        "ClusterNetworkPolicy" => "policy.networking.k8s.io/v1alpha2",
        _ => "v1",
    }
}

pub fn object_id(v: &Value) -> Result<ObjectId> {
    let kind = get_str(v, &["kind"])
        .context("object without `kind` (NetworkPolicy, ClusterNetworkPolicy, Namespace, Pod or Service)")?;
    if !KINDS.contains(&kind) {
        bail!("kind {kind:?} is not one a case may use (NetworkPolicy, ClusterNetworkPolicy, Namespace, Pod, Service)");
    }
    let name = get_str(v, &["metadata", "name"]).with_context(|| format!("{kind} without metadata.name"))?;
    let namespace = get_str(v, &["metadata", "namespace"]).map(str::to_string);
    if is_cluster_scoped(kind) && namespace.is_some() {
        bail!("{kind} {name}: a {kind} is cluster-scoped and has no metadata.namespace");
    }
    if !is_cluster_scoped(kind) && namespace.is_none() {
        bail!("{kind} {name}: metadata.namespace is required (cases never rely on a default namespace)");
    }
    Ok(ObjectId { kind: kind.to_string(), namespace, name: name.to_string() })
}

/// An object that names `kind` `namespace/name` and nothing else that
/// matters, for `weirctl lab delete -f` (which, like `kubectl delete -f`,
/// reads whole objects): a ClusterNetworkPolicy gets the least spec its
/// type requires.
pub fn identity_object(kind: &str, namespace: Option<&str>, name: &str) -> Value {
    let mut meta = vec![("name", s(name))];
    if let Some(ns) = namespace {
        meta.push(("namespace", s(ns)));
    }
    let mut obj = vec![("apiVersion", s(api_version(kind))), ("kind", s(kind)), ("metadata", map(meta))];
    if kind == "ClusterNetworkPolicy" {
        let subject = map(vec![("namespaces", Value::Mapping(Mapping::new()))]);
        obj.push((
            "spec",
            map(vec![("tier", s("Admin")), ("priority", Value::Number(0.into())), ("subject", subject)]),
        ));
    }
    map(obj)
}

/// Fill in what a case may leave out, so cases stay about policy:
/// - `apiVersion` from the kind;
/// - a Namespace always carries `kubernetes.io/metadata.name` (the API
///   server sets it and it cannot be removed);
/// - a Pod without `spec` gets the model's server containers (so named
///   ports resolve as on the model pods);
/// - a Service `s-<ns>-<pod>` without `spec` selects `pod: <pod>` on the
///   model's ports.
pub fn complete(mut v: Value) -> Result<Value> {
    let id = object_id(&v)?;
    let m = v.as_mapping_mut().context("an object must be a map")?;
    if !m.contains_key("apiVersion") {
        m.insert(s("apiVersion"), s(api_version(&id.kind)));
    }
    match id.kind.as_str() {
        "Namespace" => {
            let meta = m.get_mut("metadata").and_then(Value::as_mapping_mut).context("metadata")?;
            if !meta.get("labels").is_some_and(Value::is_mapping) {
                meta.insert(s("labels"), Value::Mapping(Mapping::new()));
            }
            let labels = meta.get_mut("labels").and_then(Value::as_mapping_mut).expect("labels map");
            labels.insert(s(NS_NAME_LABEL), s(&id.name));
        }
        "Pod" if !m.contains_key("spec") => {
            m.insert(s("spec"), map(vec![("containers", server_containers())]));
        }
        "Service" if !m.contains_key("spec") => {
            let ns = id.namespace.as_deref().unwrap_or_default();
            let pod = id.name.strip_prefix(&format!("s-{ns}-")).with_context(|| {
                format!(
                    "Service {}: without a spec the name must be s-{ns}-<pod> so the selector can be derived",
                    id.name
                )
            })?;
            m.insert(s("spec"), service_spec(pod));
        }
        _ => {}
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_has_nine_pods_nine_services_three_namespaces() {
        let objs = model_objects();
        let count = |k: &str| objs.iter().filter(|(_, v)| get_str(v, &["kind"]) == Some(k)).count();
        assert_eq!((count("Namespace"), count("Pod"), count("Service")), (3, 9, 9));
        assert_eq!(model_pods().len(), 9);
    }

    #[test]
    fn model_pod_declares_every_named_port_once() {
        let p = pod("x", "a", &BTreeMap::from([("pod".into(), "a".into())]));
        let names: Vec<String> = p["spec"]["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["ports"][0]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 6);
        for port in PORTS {
            for proto in ["tcp", "udp", "sctp"] {
                assert!(names.contains(&format!("serve-{port}-{proto}")), "{names:?}");
            }
        }
        assert_eq!(get_str(&p, &["metadata", "labels", "pod"]), Some("a"));
    }

    #[test]
    fn namespace_always_carries_its_name_label() {
        let v = complete(
            serde_yaml_ng::from_str("{kind: Namespace, metadata: {name: y, labels: {ns2: updated}}}").unwrap(),
        )
        .unwrap();
        assert_eq!(get_str(&v, &["metadata", "labels", NS_NAME_LABEL]), Some("y"));
        assert_eq!(get_str(&v, &["metadata", "labels", "ns2"]), Some("updated"));
        assert_eq!(get_str(&v, &["apiVersion"]), Some("v1"));
        let v = complete(serde_yaml_ng::from_str("{kind: Namespace, metadata: {name: y}}").unwrap()).unwrap();
        assert_eq!(get_str(&v, &["metadata", "labels", NS_NAME_LABEL]), Some("y"));
    }

    #[test]
    fn short_pod_and_service_are_completed() {
        let p = complete(
            serde_yaml_ng::from_str("{kind: Pod, metadata: {name: d, namespace: x, labels: {pod: d}}}").unwrap(),
        )
        .unwrap();
        assert_eq!(p["spec"]["containers"].as_sequence().unwrap().len(), 6);
        let sv = complete(serde_yaml_ng::from_str("{kind: Service, metadata: {name: s-x-d, namespace: x}}").unwrap())
            .unwrap();
        assert_eq!(get_str(&sv, &["spec", "selector", "pod"]), Some("d"));
        assert!(
            complete(serde_yaml_ng::from_str("{kind: Service, metadata: {name: web, namespace: x}}").unwrap()).is_err()
        );
        let np = complete(
            serde_yaml_ng::from_str(
                "{kind: NetworkPolicy, metadata: {name: n, namespace: x}, spec: {podSelector: {}}}",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(get_str(&np, &["apiVersion"]), Some("networking.k8s.io/v1"));
        let cnp = complete(
            serde_yaml_ng::from_str(
                "{kind: ClusterNetworkPolicy, metadata: {name: c}, spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}}",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(get_str(&cnp, &["apiVersion"]), Some("policy.networking.k8s.io/v1alpha2"));
    }

    /// What `weirctl lab delete -f` gets must be readable by policyd's
    /// manifest parser (which the lab uses), for every kind a case may use.
    #[test]
    fn identity_objects_parse_as_their_kind() {
        for kind in KINDS {
            let ns = if is_cluster_scoped(kind) { None } else { Some("x") };
            let text = render(&identity_object(kind, ns, "n")).unwrap();
            let parsed = weir_policyd::source::manifest::parse("d.yaml", &text).unwrap();
            assert_eq!(parsed.objects.len(), 1, "{kind}: {:?}", parsed.skipped);
            let r = parsed.objects[0].object_ref();
            assert_eq!(
                (r.kind.to_string(), r.namespace.as_str(), r.name.as_str()),
                (kind.into(), ns.unwrap_or(""), "n")
            );
        }
    }

    #[test]
    fn object_ids_are_checked() {
        for (y, needle) in [
            ("{kind: Deployment, metadata: {name: d, namespace: x}}", "Deployment"),
            ("{kind: Pod, metadata: {name: d}}", "metadata.namespace"),
            ("{kind: Namespace, metadata: {name: q, namespace: x}}", "no metadata.namespace"),
            ("{kind: ClusterNetworkPolicy, metadata: {name: c, namespace: x}}", "cluster-scoped"),
            ("{kind: Pod, metadata: {namespace: x}}", "metadata.name"),
        ] {
            let e = format!("{:#}", object_id(&serde_yaml_ng::from_str(y).unwrap()).unwrap_err());
            assert!(e.contains(needle), "{y}: {e}");
        }
    }

    /// The checked-in model (test/conformance/model) is what the runner
    /// hands to `weirctl lab up`; it must not drift from this generator.
    #[test]
    fn model_files_match_the_generator() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/model");
        if std::env::var_os("WEIR_WRITE_MODEL").is_some() {
            write_model(&dir).unwrap();
        }
        let want = model_file_contents().unwrap();
        let mut have: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        have.sort();
        let mut want_names: Vec<String> = want.iter().map(|(f, _)| f.clone()).collect();
        want_names.sort();
        assert_eq!(have, want_names, "files in {}", dir.display());
        for (f, text) in want {
            let on_disk = std::fs::read_to_string(dir.join(&f)).unwrap();
            assert_eq!(on_disk, text, "{f} differs from the generator: rerun with WEIR_WRITE_MODEL=1");
        }
    }
}
