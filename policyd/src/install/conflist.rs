//! The conflist this node gets: the shipped `conf/10-weir.conflist` with
//! this node's values put in. Pure, so `install-cni` and install.sh (which
//! calls `install-cni`) render it one way.

use ipnet::IpNet;
use serde_json::{json, Value};
use weir_common::node_network::NodeNetwork;

/// The shipped conflist, built into the binary so an install needs nothing
/// but the binaries.
pub const TEMPLATE: &str = include_str!("../../../conf/10-weir.conflist");

/// Its file name under the CNI conf dir (runtimes read them in name order).
pub const FILE_NAME: &str = "10-weir.conflist";

/// What every runtime accepts (libcni 1.1 rejects a 1.1.0 result; see
/// docs/runtimes.md).
pub const DEFAULT_CNI_VERSION: &str = "1.0.0";

/// Plugins every runtime execs besides the conflist's: the sandbox's `lo`.
pub const ALWAYS_NEEDED: &[&str] = &["loopback"];

/// This node's values.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cni_version: String,
    /// This node's pod ranges (`ipam.ranges`, one range set per family).
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's pod ranges (`clusterCIDRs`, not masqueraded); empty
    /// keeps the template's.
    pub cluster_cidrs: Vec<IpNet>,
}

/// The conflist's text, checked by the CNI binary's own parser: what is
/// written here is what the runtime hands to `weir`.
pub fn render(s: &Settings) -> Result<String, String> {
    if !weir_cni::config::SUPPORTED_VERSIONS.contains(&s.cni_version.as_str()) {
        return Err(format!(
            "--cni-version {}: weir speaks {}; use {DEFAULT_CNI_VERSION} (every runtime) or 1.1.0 \
             (only where every runtime links libcni >= 1.2, see docs/runtimes.md)",
            s.cni_version,
            weir_cni::config::SUPPORTED_VERSIONS.join(", ")
        ));
    }
    // The same rules the CNI binary applies to policyd's node network file.
    let node = NodeNetwork { node: String::new(), pod_cidrs: s.pod_cidrs.clone(), mtu: None };
    if let Some(problem) = node.problem() {
        let why = problem.strip_prefix("node : ").unwrap_or(&problem);
        return Err(format!("--pod-cidr: {why}"));
    }
    let mut v: Value = serde_json::from_str(TEMPLATE).expect("the shipped conflist is JSON");
    v["cniVersion"] = json!(s.cni_version);
    let weir = v["plugins"]
        .as_array_mut()
        .and_then(|p| p.iter_mut().find(|p| p["type"] == weir_cni::config::PLUGIN_TYPE))
        .expect("the shipped conflist has a weir entry");
    weir["ipam"]["ranges"] = s.pod_cidrs.iter().map(|c| json!([{ "subnet": c.to_string() }])).collect();
    // No fixed MTU: the CNI binary takes the backend's (the underlay's less
    // VXLAN's 50 bytes, or the underlay's) from weir-policyd's node network
    // file, so one conflist fits host-gw and VXLAN nodes alike.
    if let Some(w) = weir.as_object_mut() {
        w.remove("mtu");
    }
    if !s.cluster_cidrs.is_empty() {
        weir["clusterCIDRs"] = s.cluster_cidrs.iter().map(|c| json!(c.to_string())).collect();
    }
    weir_cni::config::parse_netconf(v.clone()).map_err(|e| format!("the conflist would not be valid: {e}"))?;
    let mut text = serde_json::to_string_pretty(&v).expect("always serializes");
    text.push('\n');
    Ok(text)
}

/// The plugins a conflist chains besides `weir` (portmap, bandwidth), and
/// those every runtime needs: what must be in the CNI bin dir.
pub fn plugins_needed(conflist: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(conflist).unwrap_or_default();
    let chained = v["plugins"].as_array().into_iter().flatten().filter_map(|p| p["type"].as_str());
    let mut out: Vec<String> = Vec::new();
    for p in chained.chain(ALWAYS_NEEDED.iter().copied()) {
        if p != weir_cni::config::PLUGIN_TYPE && !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    out
}

/// Whether the conflist chains `plugin` (the runtime execs it after
/// `weir` with the conflist's cniVersion).
pub fn chains(conflist: &str, plugin: &str) -> bool {
    let v: Value = serde_json::from_str(conflist).unwrap_or_default();
    v["plugins"].as_array().into_iter().flatten().any(|p| p["type"] == plugin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pods: &[&str], cluster: &[&str]) -> Settings {
        Settings {
            cni_version: DEFAULT_CNI_VERSION.into(),
            pod_cidrs: pods.iter().map(|c| c.parse().unwrap()).collect(),
            cluster_cidrs: cluster.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn weir_entry(text: &str) -> Value {
        let v: Value = serde_json::from_str(text).unwrap();
        v["plugins"][0].clone()
    }

    #[test]
    fn one_range_set_per_family_and_the_cluster_ranges() {
        let text = render(&settings(&["10.244.3.0/24", "fd00:10:244:3::/64"], &["10.244.0.0/16", "fd00:10:244::/56"]))
            .unwrap();
        let w = weir_entry(&text);
        assert_eq!(w["ipam"]["ranges"], json!([[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]));
        assert_eq!(w["clusterCIDRs"], json!(["10.244.0.0/16", "fd00:10:244::/56"]));
        let conf = weir_cni::config::parse_netconf(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(conf.cni_version, DEFAULT_CNI_VERSION);

        let v6 = weir_entry(&render(&settings(&["fd00:1::/64"], &["fd00::/48"])).unwrap());
        assert_eq!(v6["ipam"]["ranges"], json!([[{"subnet": "fd00:1::/64"}]]));
        assert_eq!(v6["clusterCIDRs"], json!(["fd00::/48"]));
    }

    #[test]
    fn everything_else_is_the_shipped_conflist() {
        let template: Value = serde_json::from_str(TEMPLATE).unwrap();
        let subnet = template["plugins"][0]["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap().to_string();
        let cluster = template["plugins"][0]["clusterCIDRs"][0].as_str().unwrap().to_string();
        let text = render(&settings(&[&subnet], &[])).unwrap();
        let mut expected = template.clone();
        expected["plugins"][0].as_object_mut().unwrap().remove("mtu");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected, "all but the MTU");
        assert!(weir_entry(&text).get("mtu").is_none(), "the backend's MTU comes from the node network file");
        assert_eq!(weir_entry(&text)["clusterCIDRs"], json!([cluster]), "no --cluster-cidr keeps the template's");
    }

    #[test]
    fn every_version_weir_speaks_and_no_other() {
        for v in weir_cni::config::SUPPORTED_VERSIONS {
            let s = Settings { cni_version: v.to_string(), ..settings(&["10.1.0.0/24"], &[]) };
            let text = render(&s).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["cniVersion"], *v);
        }
        let e = render(&Settings { cni_version: "2.0.0".into(), ..settings(&["10.1.0.0/24"], &[]) }).unwrap_err();
        assert!(e.starts_with("--cni-version 2.0.0: weir speaks 0.3.0") && e.contains("use 1.0.0"), "{e}");
    }

    #[test]
    fn bad_pod_cidrs_are_refused_before_anything_is_written() {
        for (pods, want) in [
            (&[][..], "no pod CIDR"),
            (&["10.1.0.1/24"][..], "host bits"),
            (&["10.1.0.0/24", "10.2.0.0/24"][..], "more than one"),
        ] {
            let e = render(&settings(pods, &[])).unwrap_err();
            assert!(e.starts_with("--pod-cidr: ") && e.contains(want), "{pods:?}: {e}");
        }
    }

    #[test]
    fn needs_the_chained_plugins_and_loopback() {
        assert_eq!(plugins_needed(TEMPLATE), ["portmap", "bandwidth", "loopback"]);
        assert!(chains(TEMPLATE, "portmap") && chains(TEMPLATE, "bandwidth") && !chains(TEMPLATE, "loopback"));
    }
}
