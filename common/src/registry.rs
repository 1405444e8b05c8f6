//! The endpoint registry: one JSON file per pod interface.
//!
//! CNI ADD writes a record (atomically: write a temporary file, then rename)
//! after the veth exists and before it waits for the endpoint to become
//! READY; policyd watches the directory, matches the record to its Pod
//! (namespace/name, uid when given), programs the maps and flips READY.
//! CNI DEL removes the record. Records are keyed by container ID and
//! interface name, which is all DEL and GC are given.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What policyd needs to know about a pod interface that only CNI ADD knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    pub container_id: String,
    pub ifname: String,
    /// Network namespace path as the runtime gave it (`CNI_NETNS`).
    pub netns: String,
    /// The CNI network name (`name` in the config).
    pub network: String,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID` from `CNI_ARGS`;
    /// empty when the runtime did not pass them.
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: String,
    /// Host-side veth: its name and ifindex (the endpoint id in the maps).
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// Addresses assigned to the pod interface, one per family at most.
    pub ips: Vec<IpAddr>,
    /// The pod interface's MAC address, `aa:bb:...`.
    #[serde(default)]
    pub mac: String,
    /// Gateway addresses on the bridge: this node, always reachable, so
    /// policyd gives them the host identity in the ipcache.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("endpoint registry {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("endpoint record {path} is not valid JSON: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
}

/// The registry directory, e.g. `/run/weir/endpoints`.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Registry { dir: dir.into() }
    }

    /// The registry under a run directory (`<run_dir>/endpoints`).
    pub fn under(run_dir: impl AsRef<Path>) -> Self {
        Registry::new(run_dir.as_ref().join(crate::paths::ENDPOINTS_SUBDIR))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File name of a record: container IDs are `[A-Za-z0-9_.-]` by the CNI
    /// spec and interface names cannot hold `/`, so the pair is a safe name.
    pub fn path_of(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}_{ifname}.json"))
    }

    /// Write (or replace) a record atomically.
    pub fn put(&self, record: &EndpointRecord) -> Result<(), RegistryError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path_of(&record.container_id, &record.ifname);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(record).expect("records always serialize");
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Read one record; `Ok(None)` when there is none.
    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>, RegistryError> {
        read_record(&self.path_of(container_id, ifname))
    }

    /// Remove a record; already gone is success.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), RegistryError> {
        let path = self.path_of(container_id, ifname);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RegistryError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Every record, with the ones that cannot be read reported beside them
    /// rather than failing the whole listing.
    pub fn list(&self) -> (Vec<EndpointRecord>, Vec<RegistryError>) {
        let mut records = Vec::new();
        let mut errors = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (records, errors),
            Err(source) => {
                errors.push(RegistryError::Io { path: self.dir.clone(), source });
                return (records, errors);
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_record(&path) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        records.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        (records, errors)
    }
}

fn read_record(path: &Path) -> Result<Option<EndpointRecord>, RegistryError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RegistryError::Decode { path: path.to_path_buf(), source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::Io { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            network: "weir".into(),
            pod_namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            host_ifname: "weir1234".into(),
            host_ifindex: 7,
            ips: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            mac: "02:00:00:00:00:01".into(),
            gateways: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn put_get_list_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::under(dir.path());
        assert_eq!(reg.get("a", "eth0").unwrap(), None);
        reg.put(&record("b")).unwrap();
        reg.put(&record("a")).unwrap();
        assert_eq!(reg.get("a", "eth0").unwrap(), Some(record("a")));
        let (all, errs) = reg.list();
        assert!(errs.is_empty());
        assert_eq!(all.iter().map(|r| r.container_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        reg.remove("a", "eth0").unwrap();
        reg.remove("a", "eth0").unwrap(); // idempotent
        assert_eq!(reg.list().0.len(), 1);
    }

    #[test]
    fn a_broken_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::under(dir.path());
        reg.put(&record("good")).unwrap();
        fs::write(reg.dir().join("bad_eth0.json"), b"{not json").unwrap();
        let (all, errs) = reg.list();
        assert_eq!(all.len(), 1);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("bad_eth0.json"), "{}", errs[0]);
    }
}
