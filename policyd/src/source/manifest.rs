//! Manifest files as `kubectl apply -f` reads them: multi-document YAML (or
//! JSON, a YAML subset) of Namespace, Pod, Service, Node (v1),
//! NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2, cluster-scoped: no namespace
//! defaulting), and `kind: List` (or `PodList` etc.) wrapping them. Pure:
//! text in, objects and diagnostics out.

use super::{Object, ObjectKind, SourceError};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// What one file holds.
#[derive(Debug, Default)]
pub struct Parsed {
    /// In document order (a later document with the same identity wins).
    pub objects: Vec<Object>,
    /// Documents of a kind or apiVersion policyd does not read
    /// ([`SourceError::UnknownKind`]). The manifest directory source holds
    /// such a file at its last good version (a typo in `kind` must not drop
    /// a policy); other callers decide for themselves.
    pub skipped: Vec<SourceError>,
}

/// Parse a whole file. Any document that is not valid YAML, or an object
/// of a known kind that does not match its schema or has no name, fails
/// the whole file: the caller keeps what the file contributed before,
/// because dropping a half-written policy would open traffic.
pub fn parse(file: &str, text: &str) -> Result<Parsed, SourceError> {
    let mut out = Parsed::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = Value::deserialize(doc).map_err(|e| invalid(file, format!("document {n}: not valid YAML: {e}")))?;
        collect(file, n, value, &mut out)?;
    }
    Ok(out)
}

fn invalid(file: &str, message: String) -> SourceError {
    SourceError::ManifestInvalid { file: file.to_string(), message }
}

fn collect(file: &str, doc: usize, value: Value, out: &mut Parsed) -> Result<(), SourceError> {
    let map = match &value {
        Value::Null => return Ok(()), // empty document, e.g. a trailing `---`
        Value::Mapping(m) => m,
        _ => {
            return Err(invalid(
                file,
                format!("document {doc}: expected an object (a mapping with apiVersion and kind)"),
            ))
        }
    };
    let field = |name: &str| map.get(name).and_then(Value::as_str).unwrap_or("").to_string();
    let api_version = field("apiVersion");
    let kind = field("kind");
    if kind.is_empty() || api_version.is_empty() {
        return Err(invalid(
            file,
            format!(
                "document {doc}: missing apiVersion or kind (every object needs both, e.g. apiVersion: v1, kind: Pod)"
            ),
        ));
    }
    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        let items = match map.get("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Sequence(items)) => items.clone(),
            Some(_) => return Err(invalid(file, format!("document {doc}: {kind}.items must be a list"))),
        };
        for item in items {
            collect(file, doc, item, out)?;
        }
        return Ok(());
    }
    let name = map.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
    let typed = |e: serde_yaml_ng::Error| invalid(file, format!("document {doc}: {kind} {name:?}: {e}"));
    let known = ObjectKind::ALL.into_iter().find(|k| k.to_string() == kind && k.api_version() == api_version);
    let mut obj = match known {
        Some(ObjectKind::Namespace) => Object::Namespace(serde_yaml_ng::from_value(value).map_err(typed)?),
        Some(ObjectKind::Pod) => Object::Pod(serde_yaml_ng::from_value(value).map_err(typed)?),
        Some(ObjectKind::Service) => Object::Service(serde_yaml_ng::from_value(value).map_err(typed)?),
        Some(ObjectKind::Node) => Object::Node(serde_yaml_ng::from_value(value).map_err(typed)?),
        Some(ObjectKind::NetworkPolicy) => Object::NetworkPolicy(serde_yaml_ng::from_value(value).map_err(typed)?),
        Some(ObjectKind::ClusterNetworkPolicy) => {
            Object::ClusterNetworkPolicy(serde_yaml_ng::from_value(value).map_err(typed)?)
        }
        None => {
            out.skipped.push(SourceError::UnknownKind { file: file.to_string(), doc, api_version, kind });
            return Ok(());
        }
    };
    if name.is_empty() {
        return Err(invalid(
            file,
            format!("document {doc}: {kind} without metadata.name (generateName is not supported here)"),
        ));
    }
    if obj.kind().namespaced() {
        let meta = match &mut obj {
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            _ => unreachable!("only these kinds are namespaced"),
        };
        if meta.namespace.as_deref().unwrap_or("").is_empty() {
            meta.namespace = Some("default".to_string());
        }
    }
    obj.trim();
    out.objects.push(obj);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ObjectKind;

    #[test]
    fn json_manifest_is_accepted() {
        let p = parse("a.json", r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#).unwrap();
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.objects[0].kind(), ObjectKind::Namespace);
    }

    #[test]
    fn wrong_api_version_for_known_kind_is_reported_not_read() {
        let p = parse("a.yaml", "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n")
            .unwrap();
        assert!(p.objects.is_empty());
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].reason(), "unknown_kind");
        assert_eq!(p.skipped[0].field(), Some("apiVersion"));
        let msg = p.skipped[0].to_string();
        assert!(msg.starts_with("a.yaml: document 1: apiVersion \"networking.k8s.io/v1beta1\""), "{msg}");
        assert!(msg.contains("write apiVersion: networking.k8s.io/v1"), "{msg}");
    }

    #[test]
    fn kind_typo_names_the_field_and_the_kind_meant() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: networking.k8s.io/v1\nkind: Networkpolicy\nmetadata: {name: p}\n";
        let p = parse("a.yaml", text).unwrap();
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].field(), Some("kind"));
        let msg = p.skipped[0].to_string();
        assert!(msg.starts_with("a.yaml: document 2: kind \"Networkpolicy\""), "{msg}");
        assert!(msg.contains("write kind: NetworkPolicy"), "{msg}");
        // The fix lists what is accepted.
        for accepted in [
            "Namespace (v1)",
            "Pod (v1)",
            "Service (v1)",
            "Node (v1)",
            "NetworkPolicy (networking.k8s.io/v1)",
            "ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2)",
        ] {
            assert!(msg.contains(accepted), "{accepted} missing from: {msg}");
        }
    }

    #[test]
    fn schema_mismatch_names_document_kind_and_name() {
        let e = parse("f.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: 7}\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("f.yaml") && msg.contains("document 2") && msg.contains("\"b\""), "{msg}");
        assert_eq!(e.reason(), "manifest_invalid");
    }

    #[test]
    fn cluster_network_policy_is_cluster_scoped() {
        let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: p}\n\
                    spec: {tier: Baseline, priority: 3, subject: {namespaces: {}}}\n";
        let p = parse("c.yaml", text).unwrap();
        assert_eq!(p.objects.len(), 1);
        let r = p.objects[0].object_ref();
        assert_eq!((r.kind, r.namespace.as_str(), r.name.as_str()), (ObjectKind::ClusterNetworkPolicy, "", "p"));
        assert_eq!(p.objects[0].meta().namespace, None, "no \"default\" namespace for a cluster-scoped kind");
    }

    #[test]
    fn missing_name_fails_the_file() {
        let e = parse("f.yaml", "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n").unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }
}
