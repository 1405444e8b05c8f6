//! The lab's stand-in for the API server's decoding: YAML/JSON manifests
//! (multi-document, `kind: List` too) into typed k8s-openapi objects, plus the
//! admission checks the API server would make before anything touches the
//! kernel.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One object the lab understands.
// A handful of objects at a time: boxing the Pod would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// Only ever written by the lab itself (multi-node labs).
    Node(Node),
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    NetworkPolicy(NetworkPolicy),
}

/// Kinds in the order the lab creates them (a pod needs its namespace; a
/// policy should exist before the pods it selects start, so they come up
/// already isolated, as they would on a busy cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    NetworkPolicy,
    Service,
    Pod,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
    /// File-name prefix in the manifests directory.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::NetworkPolicy => "networkpolicy",
        }
    }
}

/// (kind, namespace ("" for Namespaces and Nodes), name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Node(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    pub fn key(&self) -> ObjKey {
        let m = self.meta();
        ObjKey {
            kind: self.kind(),
            namespace: if matches!(self.kind(), Kind::Namespace | Kind::Node) {
                String::new()
            } else {
                m.namespace.clone().unwrap_or_default()
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Object::Node(o) => serde_json::to_value(o),
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::NetworkPolicy(o) => serde_json::to_value(o),
        }
        .expect("k8s-openapi objects always serialise")
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.to_json()).expect("JSON values always serialise to YAML")
    }
}

/// Parse a YAML (or JSON, a subset of YAML) text with one or more documents.
/// Decoding is policyd's own manifest parser, so the lab accepts exactly
/// what weir-policyd will read from the manifests directory; the lab is
/// stricter about the rest: a kind it cannot create is an error, not a
/// skipped document, and Nodes are the lab's own to make.
pub fn parse_text(text: &str, origin: &str) -> Result<Vec<Object>> {
    let objs = parse_api_text(text, origin)?;
    if let Some(n) = objs.iter().find(|o| o.kind() == Kind::Node) {
        bail!(
            "{origin}: Node {:?}: the lab makes its nodes itself (one node, or `--nodes N` at `up`) and does not take Node objects; remove it",
            n.key().name
        );
    }
    Ok(objs)
}

/// What the lab's API (its manifests directory) holds: what users may
/// write, plus the lab's own Nodes.
fn parse_api_text(text: &str, origin: &str) -> Result<Vec<Object>> {
    use weir_policyd::source::{manifest, Object as P, SourceError};
    let parsed = manifest::parse(origin, text).map_err(|e| match e {
        SourceError::ManifestInvalid { file, message } => anyhow::anyhow!("{file}: {message}"),
        other => anyhow::anyhow!("{other}"),
    })?;
    if let Some(SourceError::UnknownKind { file, doc, api_version, kind }) = parsed.skipped.first() {
        bail!(
            "{file}: document {doc}: unsupported object apiVersion {api_version:?} kind {kind:?}; the lab understands v1 Namespace, Pod, Service (and List) and networking.k8s.io/v1 NetworkPolicy"
        );
    }
    let mut out = Vec::new();
    for o in parsed.objects {
        let obj = match o {
            P::Namespace(x) => Object::Namespace(x),
            P::Pod(x) => Object::Pod(x),
            P::Service(x) => Object::Service(x),
            P::NetworkPolicy(x) => Object::NetworkPolicy(x),
            P::Node(n) => Object::Node(n),
        };
        let key = obj.key();
        if matches!(obj.kind(), Kind::Namespace | Kind::Service) && !is_dns_label(&key.name) {
            bail!("{origin}: {key}: the name is not a DNS label (lowercase letters, digits, '-', at most 63)");
        }
        out.push(obj);
    }
    // policyd's parser drops annotations (no policy decision reads them),
    // but a Node's annotations are what its agent published and the lab, as
    // API server, keeps: its one-Node files are decoded again whole.
    if let [Object::Node(_)] = out.as_slice() {
        out[0] = Object::Node(serde_yaml_ng::from_str(text).with_context(|| format!("{origin}: decoding the Node"))?);
    }
    Ok(out)
}

/// Objects from files and directories (`*.yaml`, `*.yml`, `*.json`, sorted
/// by name, not recursive, as `kubectl apply -f DIR` does).
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Object>> {
    load_with(paths, parse_text)
}

/// Every object of the lab's API (its manifests directory), Nodes included.
pub fn load_api_dir(dir: &Path) -> Result<Vec<Object>> {
    load_with(&[dir.to_path_buf()], parse_api_text)
}

fn load_with(paths: &[PathBuf], parse: fn(&str, &str) -> Result<Vec<Object>>) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for p in paths {
        for file in manifest_files(p)? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            out.extend(parse(&text, &file.display().to_string())?);
        }
    }
    Ok(out)
}

pub fn manifest_files(p: &Path) -> Result<Vec<PathBuf>> {
    let md = std::fs::metadata(p).with_context(|| format!("-f {}: no such file or directory", p.display()))?;
    if !md.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("listing {}", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Fill in what the API server defaults: the namespace of namespaced objects,
/// the automatic `kubernetes.io/metadata.name` label of Namespaces.
pub fn default_object(obj: &mut Object) {
    match obj {
        Object::Namespace(ns) => {
            let name = ns.metadata.name.clone().unwrap_or_default();
            ns.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert("kubernetes.io/metadata.name".into(), name);
        }
        other => {
            let m = other.meta_mut();
            if m.namespace.as_deref().unwrap_or("").is_empty() {
                m.namespace = Some("default".into());
            }
        }
    }
}

/// A Pod's declared container ports: (port, protocol, name).
pub fn pod_ports(pod: &Pod) -> Vec<(u16, String, Option<String>)> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            out.push((
                p.container_port as u16,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.name.clone(),
            ));
        }
    }
    out
}

/// Admission checks that need more than one object: every namespaced object's
/// namespace exists (in `existing` or in the batch) and pod ports are sane.
pub fn validate_batch(batch: &[Object], existing_namespaces: &[String]) -> Result<()> {
    let mut namespaces: Vec<&str> = existing_namespaces.iter().map(|s| s.as_str()).collect();
    for o in batch {
        if let Object::Namespace(ns) = o {
            namespaces.push(ns.metadata.name.as_deref().unwrap_or(""));
        }
    }
    for o in batch {
        let key = o.key();
        if key.kind != Kind::Namespace && !namespaces.contains(&key.namespace.as_str()) {
            bail!(
                "{key}: namespace {:?} does not exist; add a Namespace manifest named {:?} (the lab, like the API server, does not create namespaces implicitly)",
                key.namespace,
                key.namespace
            );
        }
        if let Object::Pod(p) = o {
            let Some(spec) = p.spec.as_ref() else {
                bail!("{key}: the Pod has no spec; add spec.containers");
            };
            if spec.host_network == Some(true) {
                bail!("{key}: hostNetwork pods share the node's netns and get no CNI call; the lab does not run them, drop hostNetwork");
            }
            for (port, proto, _) in pod_ports(p) {
                if port == 0 {
                    bail!("{key}: containerPort 0 is not a valid port (1-65535)");
                }
                if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
                    bail!("{key}: containerPort {port} protocol {proto:?} is not TCP, UDP or SCTP");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c
    image: none
    ports:
    - {containerPort: 80, name: serve-80-tcp, protocol: TCP}
    - {containerPort: 80, name: serve-80-udp, protocol: UDP}
    - {containerPort: 81, name: serve-81-sctp, protocol: SCTP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
"#;

    #[test]
    fn parses_multi_document_and_skips_empty() {
        let objs = parse_text(MODEL, "m.yaml").unwrap();
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[0].key().to_string(), "Namespace x");
        assert_eq!(objs[1].key().to_string(), "Pod x/a");
        assert_eq!(objs[2].key().to_string(), "NetworkPolicy x/deny");
        let Object::Pod(p) = &objs[1] else { panic!() };
        assert_eq!(
            pod_ports(p),
            vec![
                (80, "TCP".into(), Some("serve-80-tcp".into())),
                (80, "UDP".into(), Some("serve-80-udp".into())),
                (81, "SCTP".into(), Some("serve-81-sctp".into()))
            ]
        );
    }

    #[test]
    fn list_kind_and_json() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y"}}]}"#;
        let objs = parse_text(text, "l.json").unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].kind(), Kind::Namespace);
    }

    #[test]
    fn unknown_kind_is_named() {
        let err = parse_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", "d.yaml").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("d.yaml: document 1"), "{msg}");
        assert!(msg.contains("Deployment"), "{msg}");
    }

    #[test]
    fn broken_yaml_and_missing_name() {
        let err = parse_text("kind: [unclosed", "b.yaml").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("b.yaml") && msg.contains("document 1"), "{msg}");
        let err = parse_text("apiVersion: v1\nkind: Namespace\nmetadata: {}\n", "n.yaml").unwrap_err();
        assert!(format!("{err:#}").contains("metadata.name"));
        let err = parse_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n", "p.yaml").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("Pod \"p\""), "{msg}");
        let err = parse_text("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n", "n.yaml").unwrap_err();
        assert!(err.to_string().contains("one node") && err.to_string().contains("--nodes"), "{err}");
        // the lab's own API directory holds Nodes
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node_n.yaml"), "apiVersion: v1\nkind: Node\nmetadata: {name: n, annotations: {weir.io/backend-type: vxlan}}\n").unwrap();
        let api = load_api_dir(dir.path()).unwrap();
        assert_eq!(api[0].key().to_string(), "Node n");
        // what the node's agent published stays
        assert_eq!(api[0].meta().annotations.as_ref().unwrap()["weir.io/backend-type"], "vxlan");
        assert!(load_paths(&[dir.path().to_path_buf()]).is_err());
        let err = parse_text("apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\n", "s.yaml").unwrap_err();
        assert!(err.to_string().contains("DNS label"), "{err}");
    }

    #[test]
    fn defaults_namespace_label_and_pod_namespace() {
        let mut objs = parse_text(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n",
            "t",
        )
        .unwrap();
        for o in &mut objs {
            default_object(o);
        }
        assert_eq!(objs[0].meta().labels.as_ref().unwrap()["kubernetes.io/metadata.name"], "z");
        assert_eq!(objs[1].key().namespace, "default");
    }

    #[test]
    fn pod_in_missing_namespace_is_rejected() {
        let objs = parse_text(MODEL, "m.yaml").unwrap();
        // the batch carries namespace x itself
        validate_batch(&objs, &[]).unwrap();
        let err = validate_batch(&objs[1..2], &["y".into()]).unwrap_err().to_string();
        assert!(err.contains("Pod x/a") && err.contains("namespace \"x\" does not exist"), "{err}");
        validate_batch(&objs[1..2], &["x".into()]).unwrap();
        let host = parse_text("apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {hostNetwork: true, containers: [{name: c}]}\n", "h").unwrap();
        assert!(validate_batch(&host, &["x".into()]).unwrap_err().to_string().contains("hostNetwork"));
    }

    #[test]
    fn kinds_sort_in_creation_order() {
        let mut k = vec![Kind::Pod, Kind::Service, Kind::Namespace, Kind::NetworkPolicy, Kind::Node];
        k.sort();
        assert_eq!(k, vec![Kind::Node, Kind::Namespace, Kind::NetworkPolicy, Kind::Service, Kind::Pod]);
    }
}
