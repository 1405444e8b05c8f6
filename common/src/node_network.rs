//! This node's share of the cluster network, as weir-policyd learned it
//! (`Node.spec.podCIDRs` of its own Node, and the pod MTU its backend
//! allows), handed to the CNI binary the way flannel hands `subnet.env` to
//! its plugin: one file under the run dir, written atomically. With it one
//! conflist, without `ipam.ranges`, serves every node.

use crate::trust;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// File name under the run dir.
pub const FILE: &str = "node-network.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetwork {
    /// The Node this describes (`--node-name`).
    pub node: String,
    /// `spec.podCIDRs`: at most one per family, network addresses.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    /// The MTU pods get: the underlay's, less the backend's encapsulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeNetworkError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid node network file: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{0}")]
    Untrusted(#[from] trust::TrustError),
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(FILE)
}

impl NodeNetwork {
    /// What is wrong with it, if anything: CIDRs must be network
    /// addresses, one per family, with room for a gateway and a pod.
    pub fn problem(&self) -> Option<String> {
        if self.pod_cidrs.is_empty() {
            return Some(format!("node {}: no pod CIDR", self.node));
        }
        for c in &self.pod_cidrs {
            if c.trunc() != *c {
                return Some(format!("node {}: pod CIDR {c} has host bits set", self.node));
            }
            let bits = if c.addr().is_ipv4() { 32 } else { 128 };
            if c.prefix_len() + 2 > bits {
                return Some(format!("node {}: pod CIDR {c} is too small for a gateway and a pod", self.node));
            }
        }
        let v4 = self.pod_cidrs.iter().filter(|c| c.addr().is_ipv4()).count();
        if v4 > 1 || self.pod_cidrs.len() - v4 > 1 {
            return Some(format!("node {}: more than one pod CIDR of a family: {:?}", self.node, self.pod_cidrs));
        }
        match self.mtu {
            Some(m) if !(68..=65535).contains(&m) => Some(format!("node {}: pod MTU {m} is out of range", self.node)),
            _ => None,
        }
    }

    /// Read it; `Ok(None)` while policyd has not written it.
    pub fn read(run_dir: &Path) -> Result<Option<NodeNetwork>, NodeNetworkError> {
        let path = path(run_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NodeNetworkError::Io { path, source }),
        };
        let n: NodeNetwork =
            serde_json::from_slice(&bytes).map_err(|source| NodeNetworkError::Decode { path: path.clone(), source })?;
        match n.problem() {
            Some(msg) => Err(NodeNetworkError::Invalid { path, msg }),
            None => Ok(Some(n)),
        }
    }

    /// Write it atomically under a trusted run dir; unchanged content is
    /// not rewritten.
    pub fn write(&self, run_dir: &Path) -> Result<(), NodeNetworkError> {
        if let Some(msg) = self.problem() {
            return Err(NodeNetworkError::Invalid { path: path(run_dir), msg });
        }
        trust::ensure_dir(run_dir)?;
        let path = path(run_dir);
        let body = serde_json::to_vec_pretty(self).expect("always serializes");
        if std::fs::read(&path).is_ok_and(|old| old == body) {
            return Ok(());
        }
        // The CNI binary runs as root too: root-only is enough.
        trust::write_private(&path, &body).map_err(|source| NodeNetworkError::Io { path, source })
    }

    /// Remove it (this node lost its pod CIDR); already gone is success.
    pub fn remove(run_dir: &Path) -> Result<(), NodeNetworkError> {
        let path = path(run_dir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(NodeNetworkError::Io { path, source: e }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(node: &str, cidrs: &[&str]) -> NodeNetwork {
        NodeNetwork {
            node: node.into(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            mtu: Some(1450),
        }
    }

    #[test]
    fn round_trips_and_is_absent_until_written() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(NodeNetwork::read(t.path()).unwrap(), None);
        let n = net("node-1", &["10.88.1.0/24", "fd00:88:1::/64"]);
        n.write(t.path()).unwrap();
        assert_eq!(NodeNetwork::read(t.path()).unwrap(), Some(n.clone()));
        let text = std::fs::read_to_string(path(t.path())).unwrap();
        assert!(text.contains("\"podCIDRs\""), "{text}");
        NodeNetwork::remove(t.path()).unwrap();
        NodeNetwork::remove(t.path()).unwrap();
        assert_eq!(NodeNetwork::read(t.path()).unwrap(), None);
    }

    #[test]
    fn bad_contents_name_the_node_and_the_cidr() {
        for (cidrs, want) in [
            (&[][..], "no pod CIDR"),
            (&["10.88.1.1/24"][..], "host bits"),
            (&["10.88.1.0/31"][..], "too small"),
            (&["10.88.1.0/24", "10.88.2.0/24"][..], "more than one"),
        ] {
            let e = net("node-2", cidrs).problem().unwrap();
            assert!(e.starts_with("node node-2:") && e.contains(want), "{e}");
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::write(path(t.path()), br#"{"node":"n","podCIDRs":["10.0.0.0/8"],"mtu":20}"#).unwrap();
        assert!(NodeNetwork::read(t.path()).unwrap_err().to_string().contains("pod MTU 20"));
        std::fs::write(path(t.path()), b"{").unwrap();
        assert!(matches!(NodeNetwork::read(t.path()), Err(NodeNetworkError::Decode { .. })));
    }
}
