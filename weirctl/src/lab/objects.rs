//! The lab's stand-in for the API server's decoding: YAML/JSON manifests
//! (multi-document, `kind: List` too) into typed k8s-openapi objects, plus the
//! admission checks the API server would make before anything touches the
//! kernel.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lab's objects are policyd's: the lab is the API server policyd
/// reads, so both hold one model of the cluster.
pub use weir_policyd::source::{Object, ObjectKind, ObjectRef};

/// The kinds the lab holds, in the order it creates them (a pod needs its
/// namespace; policies should exist before the pods they select start, so
/// they come up already isolated, as they would on a busy cluster). Nodes
/// are the lab's own (multi-node labs), never a user's.
pub const LAB_KINDS: [ObjectKind; 6] = [
    ObjectKind::Node,
    ObjectKind::Namespace,
    ObjectKind::ClusterNetworkPolicy,
    ObjectKind::NetworkPolicy,
    ObjectKind::Service,
    ObjectKind::Pod,
];

/// Where `kind` comes in the creation order; None for a kind the lab does
/// not hold.
pub fn creation_rank(kind: ObjectKind) -> Option<usize> {
    LAB_KINDS.iter().position(|k| *k == kind)
}

/// A kind's place in the creation order (kinds the lab does not hold never
/// get past parsing).
pub fn creation_order(kind: ObjectKind) -> usize {
    creation_rank(kind).unwrap_or(LAB_KINDS.len())
}

/// The object as YAML, as the lab writes it into its manifests directory.
pub fn to_yaml(obj: &Object) -> String {
    serde_yaml_ng::to_string(&obj.to_json()).expect("JSON values always serialise to YAML")
}

/// The ref of a namespaced object, or of a cluster-scoped one with namespace "".
pub fn object_ref(kind: ObjectKind, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef { kind, namespace: namespace.to_string(), name: name.to_string() }
}

/// What users may write, as an error message tells it.
fn user_kinds() -> String {
    let kinds: Vec<String> =
        LAB_KINDS.iter().filter(|k| **k != ObjectKind::Node).map(|k| format!("{} {k}", k.api_version())).collect();
    format!("{} (and v1 List)", kinds.join(", "))
}

/// Parse a YAML (or JSON, a subset of YAML) text with one or more documents.
/// Decoding is policyd's own manifest parser, so the lab accepts exactly
/// what weir-policyd will read from the manifests directory; the lab is
/// stricter about the rest: a kind it cannot create is an error, not a
/// skipped document, and Nodes are the lab's own to make.
pub fn parse_text(text: &str, origin: &str) -> Result<Vec<Object>> {
    let objs = parse_api_text(text, origin)?;
    if let Some(n) = objs.iter().find(|o| o.kind() == ObjectKind::Node) {
        bail!(
            "{origin}: Node {:?}: the lab makes its nodes itself (one node, or `--nodes N` at `up`) and does not take Node objects; remove it",
            n.object_ref().name
        );
    }
    Ok(objs)
}

/// What the lab's API (its manifests directory) holds: what users may
/// write, plus the lab's own Nodes.
fn parse_api_text(text: &str, origin: &str) -> Result<Vec<Object>> {
    use weir_policyd::source::{manifest, SourceError};
    let parsed = manifest::parse(origin, text).map_err(|e| match e {
        SourceError::ManifestInvalid { file, message } => anyhow::anyhow!("{file}: {message}"),
        other => anyhow::anyhow!("{other}"),
    })?;
    if let Some(SourceError::UnknownKind { file, doc, api_version, kind }) = parsed.skipped.first() {
        bail!("{file}: document {doc}: unsupported object apiVersion {api_version:?} kind {kind:?}; the lab understands {}", user_kinds());
    }
    let mut out = Vec::new();
    for obj in parsed.objects {
        let key = obj.object_ref();
        // policyd may read more kinds than the lab can create and serve.
        if creation_rank(key.kind).is_none() {
            bail!("{origin}: {key}: the lab does not hold {} objects; it holds {}", key.kind, user_kinds());
        }
        if matches!(key.kind, ObjectKind::Namespace | ObjectKind::Service) && !is_dns_label(&key.name) {
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

/// Fill in what the API server defaults: the namespace of namespaced objects
/// (a cluster-scoped one's is dropped, as the API server ignores it), the
/// automatic `kubernetes.io/metadata.name` label of Namespaces.
pub fn default_object(obj: &mut Object) {
    if let Object::Namespace(ns) = obj {
        let name = ns.metadata.name.clone().unwrap_or_default();
        ns.metadata.labels.get_or_insert_with(BTreeMap::new).insert("kubernetes.io/metadata.name".into(), name);
    }
    let namespaced = obj.kind().namespaced();
    let m = obj.meta_mut();
    if !namespaced {
        m.namespace = None;
    } else if m.namespace.as_deref().unwrap_or("").is_empty() {
        m.namespace = Some("default".into());
    }
}

/// A Pod's declared container ports: (port, protocol, name).
pub fn pod_ports(pod: &Pod) -> Vec<(u16, String, Option<String>)> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            out.push((p.container_port as u16, p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.name.clone()));
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
        let key = o.object_ref();
        if key.kind.namespaced() && !namespaces.contains(&key.namespace.as_str()) {
            bail!(
                "{key}: namespace {:?} does not exist; add a Namespace manifest named {:?} (the lab, like the API server, does not create namespaces implicitly)",
                key.namespace,
                key.namespace
            );
        }
        if let Object::NetworkPolicy(np) = o {
            use weir_policyd::engine::policy::{is_audit_mode, mode_annotation, MODE_ANNOTATION};
            if let Err(e) = is_audit_mode(mode_annotation(np)) {
                bail!("{key}: metadata.annotations[\"{MODE_ANNOTATION}\"]: {e}");
            }
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
        assert_eq!(objs[0].object_ref().to_string(), "Namespace x");
        assert_eq!(objs[1].object_ref().to_string(), "Pod x/a");
        assert_eq!(objs[2].object_ref().to_string(), "NetworkPolicy x/deny");
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
        assert_eq!(objs[0].kind(), ObjectKind::Namespace);
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
        let err = parse_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n", "p.yaml")
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("Pod \"p\""), "{msg}");
        let err = parse_text("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n", "n.yaml").unwrap_err();
        assert!(err.to_string().contains("one node") && err.to_string().contains("--nodes"), "{err}");
        // the lab's own API directory holds Nodes
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node_n.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n, annotations: {weir.io/backend-type: vxlan}}\n",
        )
        .unwrap();
        let api = load_api_dir(dir.path()).unwrap();
        assert_eq!(api[0].object_ref().to_string(), "Node n");
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
        assert_eq!(objs[1].object_ref().namespace, "default");
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
    fn every_kind_policyd_reads_is_held_or_refused_when_parsed() {
        for kind in ObjectKind::ALL {
            let mut text =
                format!("apiVersion: {}\nkind: {kind}\nmetadata: {{name: n, namespace: x}}\n", kind.api_version());
            if kind == ObjectKind::ClusterNetworkPolicy {
                // Its spec is required (the API types' own kinds default theirs).
                text.push_str("spec: {tier: Admin, priority: 0, subject: {namespaces: {}}}\n");
            }
            match (creation_rank(kind), parse_api_text(&text, "k.yaml")) {
                (Some(_), Ok(objs)) => assert_eq!(objs[0].kind(), kind),
                (Some(_), Err(e)) => panic!("{kind}: the lab holds it, yet: {e:#}"),
                (None, Ok(_)) => panic!("{kind}: the lab does not hold it, yet parsed it"),
                (None, Err(e)) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains(&kind.to_string()) && msg.contains("it holds v1 Namespace"), "{msg}");
                }
            }
        }
        // What users may write, named in the message for unknown kinds.
        assert_eq!(
            user_kinds(),
            "v1 Namespace, policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy, networking.k8s.io/v1 NetworkPolicy, \
             v1 Service, v1 Pod (and v1 List)"
        );
    }

    #[test]
    fn kinds_sort_in_creation_order() {
        use ObjectKind as Kind;
        let mut k = vec![
            Kind::Pod,
            Kind::Service,
            Kind::ClusterNetworkPolicy,
            Kind::Namespace,
            Kind::NetworkPolicy,
            Kind::Node,
        ];
        k.sort_by_key(|k| creation_order(*k));
        assert_eq!(
            k,
            vec![
                Kind::Node,
                Kind::Namespace,
                Kind::ClusterNetworkPolicy,
                Kind::NetworkPolicy,
                Kind::Service,
                Kind::Pod
            ]
        );
    }

    #[test]
    fn cluster_network_policy_needs_no_namespace() {
        let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                    metadata: {name: deny, namespace: ignored}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n";
        let mut objs = parse_text(text, "c.yaml").unwrap();
        default_object(&mut objs[0]);
        assert_eq!(objs[0].object_ref().to_string(), "ClusterNetworkPolicy deny");
        assert_eq!(objs[0].meta().namespace, None, "cluster-scoped: no namespace, defaulted or given");
        validate_batch(&objs, &[]).expect("no namespace needs to exist");
    }

    #[test]
    fn an_unknown_policy_mode_is_refused_naming_the_annotation_and_the_values() {
        let text = |mode: &str| {
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x, annotations: {{policy.weir.io/mode: {mode}}}}}\nspec: {{podSelector: {{}}}}\n")
        };
        let ns = ["x".to_string()];
        for ok in ["audit", "enforce"] {
            validate_batch(&parse_text(&text(ok), "p.yaml").unwrap(), &ns).unwrap();
        }
        let e = validate_batch(&parse_text(&text("dry-run"), "p.yaml").unwrap(), &ns).unwrap_err().to_string();
        assert!(e.contains("metadata.annotations[\"policy.weir.io/mode\"]") && e.contains("\"dry-run\""), "{e}");
        assert!(e.contains("\"audit\" or \"enforce\""), "{e}");
    }
}
