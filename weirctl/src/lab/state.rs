//! A lab on disk: `/run/weir/lab/<name>/` holds the state file (what exists
//! and which processes run), the manifests directory (the lab's API: what
//! weir-policyd watches), the CNI run/IPAM dirs and logs.

use super::cni::NetConf;
use super::objects::{self, Object, ObjectRef};
use super::serve::PortStatus;
use super::sys::{self, ProcRec};
use super::topology::{self, LabNode};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const LAB_ROOT: &str = "/run/weir/lab";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container_id: String,
    pub netns: String,
    /// The node it runs on (`spec.nodeName`).
    #[serde(default = "single_node_name")]
    pub node: String,
    /// Set once CNI ADD returned (the pod is READY as far as the network goes).
    pub added: bool,
    pub ips: Vec<IpAddr>,
    pub serve: Option<ProcRec>,
    pub ports: Vec<PortStatus>,
}

impl PodRec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    pub fn ready(&self) -> bool {
        self.added && self.serve.as_ref().map(|p| p.alive()).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// "starting" until `up` finished, then "ready".
    pub phase: String,
    pub policy: bool,
    pub plugin: PathBuf,
    pub cni_path: String,
    pub plugin_type: String,
    /// How many nodes (`--nodes`).
    #[serde(default = "one")]
    pub nodes: usize,
    /// The backend between nodes (multi-node labs).
    #[serde(default)]
    pub backend: Option<String>,
    /// Whether the weir-policyds run that backend (`--backend`); a
    /// weir-policyd without the flag leaves the nodes unconnected.
    #[serde(default)]
    pub backend_running: bool,
    /// node name -> its weir-policyd
    #[serde(default)]
    pub policyds: BTreeMap<String, ProcRec>,
    pub policyd_bin: Option<PathBuf>,
    /// `ns/name` -> pod
    pub pods: BTreeMap<String, PodRec>,
    /// `ns/name` -> ClusterIPs
    pub services: BTreeMap<String, Vec<IpAddr>>,
}

fn one() -> usize {
    1
}

fn single_node_name() -> String {
    super::topology::SINGLE_NODE_NAME.into()
}

impl State {
    /// Every weir-policyd that should run is running (or policy is off).
    pub fn policyds_alive(&self) -> bool {
        !self.policy || (!self.policyds.is_empty() && self.policyds.values().all(|p| p.alive()))
    }
}

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
}

/// Held for the duration of one lab command: commands on the same lab are
/// serialised, different labs run side by side.
pub struct LabLock {
    _f: File,
}

impl Lab {
    pub fn new(name: &str) -> Result<Lab> {
        super::naming::validate_lab_name(name).map_err(anyhow::Error::msg)?;
        Ok(Lab { name: name.to_string(), dir: Path::new(LAB_ROOT).join(name) })
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }
    /// Every pin of the lab is below this directory.
    pub fn bpffs_root(&self) -> PathBuf {
        topology::bpffs_root(&self.name)
    }
    pub fn nodes(&self, count: usize) -> Vec<LabNode> {
        topology::nodes(&self.name, &self.dir, count)
    }
    /// The network config a runtime on `node` hands the CNI plugin.
    pub fn netconf(&self, node: &LabNode, plugin_type: &str, enforce: bool, node_network_written: bool) -> NetConf {
        NetConf {
            lab: self.name.clone(),
            plugin_type: plugin_type.to_string(),
            enforce,
            bpffs_root: node.bpffs_root.clone(),
            run_dir: node.run_dir.clone(),
            ipam_dir: node.ipam_dir.clone(),
            ranges: super::cni::ipam_ranges(node, node_network_written),
            cluster_cidrs: node.cluster_cidrs(),
        }
    }
    /// Every node and underlay netns of this lab on the machine: the
    /// one-node lab's, and a multi-node lab's found by name, so a crashed
    /// lab is removable without its state file.
    pub fn node_netns_present(&self) -> Vec<String> {
        let mut v: Vec<String> =
            sys::netns_names().into_iter().filter(|n| super::naming::is_multi_node_netns(&self.name, n)).collect();
        let single = super::naming::node_netns(&self.name);
        if sys::netns_exists(&single) {
            v.insert(0, single);
        }
        v
    }

    pub fn lock(&self) -> Result<LabLock> {
        std::fs::create_dir_all(LAB_ROOT).with_context(|| format!("creating {LAB_ROOT}"))?;
        let path = Path::new(LAB_ROOT).join(format!(".{}.lock", self.name));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            anyhow::bail!("locking {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(LabLock { _f: f })
    }

    pub fn remove_lock_file(&self) {
        let _ = std::fs::remove_file(Path::new(LAB_ROOT).join(format!(".{}.lock", self.name)));
    }

    pub fn load_state(&self) -> Result<Option<State>> {
        match std::fs::read(self.state_path()) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is corrupt; run `weirctl lab down --name {}`", self.state_path().display(), self.name)
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state_path().display())),
        }
    }

    /// The state of a lab that must exist.
    pub fn require_state(&self) -> Result<State> {
        self.load_state()?.ok_or_else(|| {
            anyhow::anyhow!("no lab named {:?}; start one with `weirctl lab up --name {}`", self.name, self.name)
        })
    }

    pub fn save_state(&self, st: &State) -> Result<()> {
        sys::write_atomic(&self.state_path(), &serde_json::to_vec_pretty(st)?)
    }

    /// Anything of this lab left on the machine?
    pub fn traces(&self) -> Vec<String> {
        let mut t = Vec::new();
        if self.dir.exists() {
            t.push(self.dir.display().to_string());
        }
        for n in self.node_netns_present() {
            t.push(format!("netns {n}"));
        }
        if self.bpffs_root().exists() {
            t.push(self.bpffs_root().display().to_string());
        }
        for pid in sys::procs_mentioning(&self.dir) {
            t.push(format!("process {pid}"));
        }
        t
    }

    pub fn object_path(&self, key: &ObjectRef) -> PathBuf {
        let file = if key.namespace.is_empty() {
            format!("{}_{}.yaml", key.kind.label(), key.name)
        } else {
            format!("{}_{}_{}.yaml", key.kind.label(), key.namespace, key.name)
        };
        self.manifests_dir().join(file)
    }

    pub fn write_object(&self, obj: &Object) -> Result<()> {
        sys::write_atomic(&self.object_path(&obj.object_ref()), objects::to_yaml(obj).as_bytes())
    }

    pub fn remove_object(&self, key: &ObjectRef) -> Result<()> {
        match std::fs::remove_file(self.object_path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {key}")),
            _ => Ok(()),
        }
    }

    /// Every object in the manifests directory.
    pub fn objects(&self) -> Result<BTreeMap<ObjectRef, Object>> {
        let mut out = BTreeMap::new();
        if !self.manifests_dir().exists() {
            return Ok(out);
        }
        for o in objects::load_api_dir(&self.manifests_dir())? {
            out.insert(o.object_ref(), o);
        }
        Ok(out)
    }

    pub fn serve_status_path(&self, netns: &str) -> PathBuf {
        self.pods_dir().join(format!("{netns}.ports.json"))
    }
}
