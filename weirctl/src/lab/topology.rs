//! The lab's nodes: how many, their names, namespaces, addresses, pod
//! CIDRs and paths, the Node objects the lab (as API server) publishes, and
//! where pods go. All pure: `ops` creates what this describes.
//!
//! One node (the default) is exactly the original lab: node `lab`, netns
//! `weir-<lab>`, pods from 10.88.0.0/16 and fd00:88::/64, no underlay and no
//! Node object. With `--nodes N` (2..=16) node `node-k` is netns
//! `weir-<lab>-n<k>` with `eth0` on a shared underlay bridge (netns
//! `weir-<lab>-ul`), address 192.0.2.k/24 and 2001:db8:88::k/64
//! (documentation ranges, RFC 5737 / RFC 3849, only ever inside the lab's
//! own namespaces), pod CIDRs 10.88.k.0/24 and fd00:88:k::/64.

use anyhow::{bail, Result};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

pub const MAX_NODES: usize = 16;
/// The only node of a one-node lab (what `spec.nodeName` always said).
pub const SINGLE_NODE_NAME: &str = "lab";
/// Pod CIDRs of the one-node lab.
pub const SINGLE_POD_CIDRS: [&str; 2] = ["10.88.0.0/16", "fd00:88::/64"];
/// What every pod CIDR of a multi-node lab lies in.
pub const CLUSTER_CIDRS: [&str; 2] = ["10.88.0.0/16", "fd00:88::/32"];
/// The underlay bridge inside the underlay netns.
pub const UNDERLAY_BRIDGE: &str = "ul0";
/// Room for VXLAN's 50 bytes of headers above the pods' 1500.
pub const UNDERLAY_MTU: u32 = 1550;
/// The node's underlay interface (weir-policyd's default `--underlay-iface`
/// is the interface holding the node's InternalIP: this one).
pub const UNDERLAY_IFACE: &str = "eth0";
/// What a node's weir-policyd writes for the API server to publish on its
/// Node (`weir.io/backend-type`, `weir.io/backend-data`, `weir.io/public-ip`).
pub const ANNOTATIONS_FILE: &str = "node-annotations.json";

/// How a multi-node lab's weir-policyds connect the nodes' pod CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    HostGw,
    Vxlan,
}

impl Backend {
    pub const CHOICES: &'static str = "host-gw, vxlan";

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        }
    }

    pub fn parse(s: &str) -> Result<Backend> {
        match s {
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            other => bail!("--backend {other:?}: unknown backend; choose one of {}", Backend::CHOICES),
        }
    }
}

/// `--nodes` and `--backend` as given: the backend a lab of that size runs
/// (none for one node, VXLAN unless told otherwise), or what is wrong.
pub fn validate(nodes: usize, backend: Option<&str>) -> Result<Option<Backend>> {
    if !(1..=MAX_NODES).contains(&nodes) {
        bail!("--nodes {nodes}: a lab has 1 to {MAX_NODES} nodes");
    }
    let backend = backend.map(Backend::parse).transpose()?;
    match (nodes, backend) {
        (1, Some(b)) => bail!(
            "--backend {}: a one-node lab has no traffic between nodes; add --nodes 2 (or more) or drop --backend",
            b.as_str()
        ),
        (1, None) => Ok(None),
        (_, b) => Ok(Some(b.unwrap_or(Backend::Vxlan))),
    }
}

/// Everything about one node of a lab.
#[derive(Debug, Clone, PartialEq)]
pub struct LabNode {
    pub name: String,
    /// 1-based.
    pub index: usize,
    /// Part of a multi-node lab (has an underlay, a Node object, a backend).
    pub multi: bool,
    pub netns: String,
    pub bpffs_root: PathBuf,
    pub run_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub policyd_log: PathBuf,
    pub conflist_path: PathBuf,
    pub pod_cidrs: Vec<IpNet>,
    /// On the underlay (empty for the one-node lab), IPv4 first.
    pub internal_ips: Vec<IpAddr>,
}

/// The nodes of lab `lab` (directory `dir`) with `count` nodes.
pub fn nodes(lab: &str, dir: &Path, count: usize) -> Vec<LabNode> {
    if count <= 1 {
        return vec![LabNode {
            name: SINGLE_NODE_NAME.into(),
            index: 1,
            multi: false,
            netns: super::naming::node_netns(lab),
            bpffs_root: bpffs_root(lab),
            run_dir: dir.join("run"),
            ipam_dir: dir.join("ipam"),
            policyd_log: dir.join("logs/policyd.log"),
            conflist_path: dir.join("10-weir-lab.conflist"),
            pod_cidrs: SINGLE_POD_CIDRS.iter().map(|c| c.parse().expect("constant CIDR")).collect(),
            internal_ips: vec![],
        }];
    }
    (1..=count)
        .map(|k| {
            let name = format!("node-{k}");
            let node_dir = dir.join("nodes").join(&name);
            let k8 = k as u8;
            LabNode {
                netns: super::naming::multi_node_netns(lab, k),
                bpffs_root: bpffs_root(lab).join(&name),
                run_dir: node_dir.join("run"),
                ipam_dir: node_dir.join("ipam"),
                policyd_log: dir.join("logs").join(format!("policyd-{name}.log")),
                conflist_path: node_dir.join("10-weir-lab.conflist"),
                pod_cidrs: vec![
                    IpNet::new(Ipv4Addr::new(10, 88, k8, 0).into(), 24).expect("valid prefix"),
                    IpNet::new(Ipv6Addr::new(0xfd00, 0x88, k as u16, 0, 0, 0, 0, 0).into(), 64).expect("valid prefix"),
                ],
                internal_ips: vec![
                    Ipv4Addr::new(192, 0, 2, k8).into(),
                    Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, k as u16).into(),
                ],
                name,
                index: k,
                multi: true,
            }
        })
        .collect()
}

/// The lab's bpffs directory; a multi-node lab's nodes each have their own
/// root below it, so one removal takes every pin of the lab.
pub fn bpffs_root(lab: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/weir-lab-{lab}"))
}

impl LabNode {
    /// The address prefix of each internal IP on the underlay.
    pub fn underlay_addrs(&self) -> Vec<String> {
        self.internal_ips.iter().map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 24 } else { 64 })).collect()
    }

    /// The cluster CIDRs the pods' CNI config names.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        if self.multi {
            CLUSTER_CIDRS.iter().map(|c| c.parse().expect("constant CIDR")).collect()
        } else {
            self.pod_cidrs.clone()
        }
    }

    pub fn annotations_path(&self) -> PathBuf {
        self.run_dir.join(ANNOTATIONS_FILE)
    }

    /// The v1 Node the lab publishes for this node (no annotations: those
    /// come from its weir-policyd).
    pub fn node_object(&self) -> Node {
        let cidrs: Vec<String> = self.pod_cidrs.iter().map(|c| c.to_string()).collect();
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some([("kubernetes.io/hostname".to_string(), self.name.clone())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec { pod_cidr: cidrs.first().cloned(), pod_cidrs: Some(cidrs), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: Some(
                    self.internal_ips
                        .iter()
                        .map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.to_string() })
                        .chain(std::iter::once(NodeAddress { type_: "Hostname".into(), address: self.name.clone() }))
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    /// `status.hostIP` of its pods: its first InternalIP, if any.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.internal_ips.first().copied()
    }
}

/// Merge what a node's weir-policyd published into its Node; `None` when
/// nothing changes (so the manifest is not rewritten and watchers stay quiet).
pub fn merge_annotations(node: &Node, published: &BTreeMap<String, String>) -> Option<Node> {
    let current = node.metadata.annotations.clone().unwrap_or_default();
    if published.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return None;
    }
    let mut n = node.clone();
    n.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(published.clone());
    Some(n)
}

/// Decode a node annotations file: a JSON object of strings.
pub fn parse_annotations(text: &[u8], path: &Path) -> Result<BTreeMap<String, String>> {
    serde_json::from_slice(text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a JSON object of string annotations ({e}); it is weir-policyd's to write",
            path.display()
        )
    })
}

/// A pod to place: its `ns/name` and the `spec.nodeName` it asks for.
pub struct Placement<'a> {
    pub key: &'a str,
    pub node_name: Option<&'a str>,
}

/// Where each pod goes, in input order. A pod naming a node goes there (an
/// unknown node is an error naming both); the others, in sorted
/// `namespace/name` order, each to the node with the fewest pods so far
/// (ties: the lowest number), counting `existing` pods per node. With
/// nothing pinned and nothing existing this is round-robin in sorted
/// order, so the 3x3 model on 3 nodes puts x/a, x/b, x/c on node-1, -2, -3:
/// every namespace spans every node.
pub fn place(pods: &[Placement], nodes: &[LabNode], existing: &BTreeMap<String, usize>) -> Result<Vec<String>> {
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut load: Vec<usize> = names.iter().map(|n| existing.get(*n).copied().unwrap_or(0)).collect();
    let mut out: Vec<Option<String>> = vec![None; pods.len()];
    for (i, p) in pods.iter().enumerate() {
        if let Some(want) = p.node_name.filter(|n| !n.is_empty()) {
            let Some(j) = names.iter().position(|n| *n == want) else {
                bail!("Pod {}: spec.nodeName {want:?} is not a node of this lab (nodes: {}); name one of them or leave spec.nodeName out", p.key, names.join(", "));
            };
            load[j] += 1;
            out[i] = Some(want.to_string());
        }
    }
    let mut free: Vec<usize> = (0..pods.len()).filter(|i| out[*i].is_none()).collect();
    free.sort_by(|a, b| split_key(pods[*a].key).cmp(&split_key(pods[*b].key)));
    for i in free {
        let j = (0..load.len()).min_by_key(|j| (load[*j], *j)).expect("at least one node");
        load[j] += 1;
        out[i] = Some(names[j].to_string());
    }
    Ok(out.into_iter().map(|n| n.expect("every pod placed")).collect())
}

/// (namespace, name): the sort order of `ns/name` keys that does not depend
/// on '-' sorting before '/' ("x-1/a" vs "x/a").
fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/run/weir/lab/t")
    }

    #[test]
    fn one_node_is_the_original_lab() {
        let n = nodes("t", &dir(), 1);
        assert_eq!(n.len(), 1);
        let n = &n[0];
        assert_eq!((n.name.as_str(), n.netns.as_str(), n.multi), ("lab", "weir-t", false));
        assert_eq!(n.bpffs_root, PathBuf::from("/sys/fs/bpf/weir-lab-t"));
        assert_eq!(n.run_dir, dir().join("run"));
        assert_eq!(n.ipam_dir, dir().join("ipam"));
        assert_eq!(n.policyd_log, dir().join("logs/policyd.log"));
        assert_eq!(n.conflist_path, dir().join("10-weir-lab.conflist"));
        assert_eq!(n.pod_cidrs, vec!["10.88.0.0/16".parse::<IpNet>().unwrap(), "fd00:88::/64".parse().unwrap()]);
        assert_eq!(n.cluster_cidrs(), n.pod_cidrs);
        assert!(n.internal_ips.is_empty() && n.host_ip().is_none());
    }

    #[test]
    fn multi_node_addressing_and_paths() {
        let n = nodes("t", &dir(), 3);
        assert_eq!(n.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node-1", "node-2", "node-3"]);
        let two = &n[1];
        assert_eq!(two.netns, "weir-t-n2");
        assert_eq!(two.bpffs_root, PathBuf::from("/sys/fs/bpf/weir-lab-t/node-2"));
        assert_eq!(two.run_dir, dir().join("nodes/node-2/run"));
        assert_eq!(two.policyd_log, dir().join("logs/policyd-node-2.log"));
        assert_eq!(two.pod_cidrs, vec!["10.88.2.0/24".parse::<IpNet>().unwrap(), "fd00:88:2::/64".parse().unwrap()]);
        assert_eq!(two.underlay_addrs(), ["192.0.2.2/24", "2001:db8:88::2/64"]);
        assert_eq!(two.host_ip(), Some("192.0.2.2".parse().unwrap()));
        // every pod CIDR lies in the cluster CIDRs, and no two overlap
        let cluster = two.cluster_cidrs();
        let sixteen = nodes("t", &dir(), MAX_NODES);
        for a in &sixteen {
            for c in &a.pod_cidrs {
                assert!(cluster.iter().any(|k| k.contains(c)), "{c}");
                for b in sixteen.iter().filter(|b| b.index != a.index) {
                    assert!(
                        b.pod_cidrs.iter().all(|d| !d.contains(c) && !c.contains(d)),
                        "{c} overlaps node {}",
                        b.name
                    );
                }
            }
        }
    }

    #[test]
    fn node_object_is_a_v1_node() {
        let v = serde_json::to_value(nodes("t", &dir(), 2)[0].node_object()).unwrap();
        assert_eq!(v["metadata"]["name"], "node-1");
        assert_eq!(v["spec"]["podCIDR"], "10.88.1.0/24");
        assert_eq!(v["spec"]["podCIDRs"], serde_json::json!(["10.88.1.0/24", "fd00:88:1::/64"]));
        assert_eq!(v["status"]["addresses"][0], serde_json::json!({"type": "InternalIP", "address": "192.0.2.1"}));
        assert_eq!(v["status"]["addresses"][1], serde_json::json!({"type": "InternalIP", "address": "2001:db8:88::1"}));
        // policyd reads it with its own parser
        let text = serde_yaml_ng::to_string(&v).unwrap();
        let parsed = weir_policyd::source::manifest::parse("n.yaml", &text).unwrap();
        assert_eq!(parsed.objects.len(), 1);
    }

    #[test]
    fn flags_are_checked_with_the_flag_named() {
        assert_eq!(validate(1, None).unwrap(), None);
        assert_eq!(validate(3, None).unwrap(), Some(Backend::Vxlan));
        assert_eq!(validate(2, Some("host-gw")).unwrap(), Some(Backend::HostGw));
        for (n, b, want) in [
            (0, None, "--nodes 0"),
            (100, None, "--nodes 100"),
            (2, Some("gre"), "host-gw, vxlan"),
            (1, Some("vxlan"), "--nodes 2"),
        ] {
            let e = validate(n, b).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn placement_round_robin_in_sorted_order_and_pins() {
        let ns = nodes("t", &dir(), 3);
        let keys = ["z/c", "x/a", "y/a", "x/b", "x/c", "y/b", "y/c", "z/a", "z/b"];
        let pods: Vec<Placement> = keys.iter().map(|k| Placement { key: k, node_name: None }).collect();
        let got = place(&pods, &ns, &BTreeMap::new()).unwrap();
        let at: BTreeMap<&str, &str> = keys.iter().copied().zip(got.iter().map(|s| s.as_str())).collect();
        assert_eq!((at["x/a"], at["x/b"], at["x/c"]), ("node-1", "node-2", "node-3"));
        assert_eq!((at["y/a"], at["z/c"]), ("node-1", "node-3"));
        // every namespace spans every node
        for n in ["x", "y", "z"] {
            let mut on: Vec<&str> =
                at.iter().filter(|(k, _)| k.starts_with(&format!("{n}/"))).map(|(_, v)| *v).collect();
            on.sort();
            assert_eq!(on, ["node-1", "node-2", "node-3"]);
        }
        // a pinned pod counts; the rest fill the emptiest nodes
        let pods = [
            Placement { key: "x/a", node_name: Some("node-1") },
            Placement { key: "x/b", node_name: None },
            Placement { key: "x/c", node_name: Some("node-1") },
        ];
        assert_eq!(place(&pods, &ns, &BTreeMap::new()).unwrap(), ["node-1", "node-2", "node-1"]);
        // an applied pod joins the emptiest node
        let existing = [("node-1".to_string(), 2), ("node-2".to_string(), 1), ("node-3".to_string(), 2)].into();
        assert_eq!(place(&[Placement { key: "q/q", node_name: None }], &ns, &existing).unwrap(), ["node-2"]);
        let e = place(&[Placement { key: "x/a", node_name: Some("node-9") }], &ns, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Pod x/a") && e.contains("\"node-9\"") && e.contains("node-1, node-2, node-3"), "{e}");
        // one node: everything on `lab`, which may be named
        let one = nodes("t", &dir(), 1);
        assert_eq!(
            place(
                &[Placement { key: "x/a", node_name: Some("lab") }, Placement { key: "x/b", node_name: None }],
                &one,
                &BTreeMap::new()
            )
            .unwrap(),
            ["lab", "lab"]
        );
    }

    #[test]
    fn annotations_merge_only_when_they_change() {
        let node = nodes("t", &dir(), 2)[0].node_object();
        let published: BTreeMap<String, String> = [("weir.io/backend-type".to_string(), "vxlan".to_string())].into();
        let merged = merge_annotations(&node, &published).unwrap();
        assert_eq!(merged.metadata.annotations.as_ref().unwrap()["weir.io/backend-type"], "vxlan");
        assert_eq!(merged.spec, node.spec);
        assert!(merge_annotations(&merged, &published).is_none());
        let e = parse_annotations(b"[1]", Path::new("/r/node-annotations.json")).unwrap_err().to_string();
        assert!(e.contains("/r/node-annotations.json"), "{e}");
        assert_eq!(parse_annotations(br#"{"a":"b"}"#, Path::new("x")).unwrap()["a"], "b");
    }
}
