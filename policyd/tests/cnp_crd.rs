//! conf/clusternetworkpolicies-crd.yaml is the CRD `kube` derives from our
//! ClusterNetworkPolicy types (with upstream's validations carried by their
//! `#[schemars]` attributes): this fails when the file and the types
//! differ. Regenerate with
//! `WEIR_WRITE_CRD=1 cargo test -p weir-policyd --test cnp_crd`.

use kube::CustomResourceExt;
use serde_json::Value;
use std::path::PathBuf;
use weir_policyd::cluster_network_policy::ClusterNetworkPolicy;

const HEADER: &str = "\
# The ClusterNetworkPolicy CRD (policy.networking.k8s.io/v1alpha2, standard
# channel of kubernetes-sigs/network-policy-api), generated from
# policyd/src/cluster_network_policy.rs. Do not edit: regenerate with
#   WEIR_WRITE_CRD=1 cargo test -p weir-policyd --test cnp_crd
# A cluster that runs upstream's CRD already does not need this one. With
# neither, weir-policyd enforces no ClusterNetworkPolicy and logs so.
";

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf/clusternetworkpolicies-crd.yaml")
}

fn generated() -> String {
    format!("{HEADER}{}", serde_yaml_ng::to_string(&ClusterNetworkPolicy::crd()).unwrap())
}

#[test]
fn crd_file_matches_the_types() {
    let want = generated();
    if std::env::var_os("WEIR_WRITE_CRD").is_some() {
        std::fs::write(path(), &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(path()).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from the CRD derived from policyd/src/cluster_network_policy.rs; \
         regenerate it with: WEIR_WRITE_CRD=1 cargo test -p weir-policyd --test cnp_crd",
        path().display()
    );
}

/// The schema says what upstream's does, for the fields people get wrong.
#[test]
fn crd_carries_upstreams_validations() {
    let crd = serde_json::to_value(ClusterNetworkPolicy::crd()).unwrap();
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["plural"], "clusternetworkpolicies");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha2");
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let prop = |v: &Value, path: &[&str]| path.iter().fold(v.clone(), |v, k| v[k].clone());
    // Bounds are written as floats (0.0): compare numbers as numbers.
    let num = |v: Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(prop(spec, &["properties", "tier", "enum"]), serde_json::json!(["Admin", "Baseline"]));
    assert_eq!(num(prop(spec, &["properties", "priority", "minimum"])), 0.0);
    assert_eq!(num(prop(spec, &["properties", "priority", "maximum"])), 1000.0);
    for gress in ["ingress", "egress"] {
        let rules = prop(spec, &["properties", gress]);
        assert_eq!(num(rules["maxItems"].clone()), 25.0, "{gress}");
        let rule = &rules["items"]["properties"];
        assert_eq!(rule["action"]["enum"], serde_json::json!(["Accept", "Deny", "Pass"]), "{gress}");
        assert_eq!(num(rule["name"]["maxLength"].clone()), 100.0, "{gress}");
        let proto = &rule["protocols"]["items"];
        assert_eq!(num(proto["maxProperties"].clone()), 1.0, "{gress}: one protocol per entry");
        let port = &proto["properties"]["tcp"]["properties"]["destinationPort"]["properties"];
        assert_eq!(num(port["number"]["minimum"].clone()), 1.0, "{gress}");
        assert_eq!(num(port["number"]["maximum"].clone()), 65535.0, "{gress}");
    }
    assert_eq!(num(prop(spec, &["properties", "subject", "maxProperties"])), 1.0);
    let networks =
        prop(spec, &["properties", "egress", "items", "properties", "to", "items", "properties", "networks"]);
    assert_eq!(num(networks["maxItems"].clone()), 25.0);
    assert_eq!(num(networks["items"]["maxLength"].clone()), 43.0);
}
