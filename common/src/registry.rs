//! The endpoint registry: one JSON file per pod interface.
//!
//! CNI ADD writes a record (atomically: write a temporary file, then rename)
//! after the veth exists and before it waits for the endpoint to become
//! READY; policyd watches the directory, matches the record to its Pod
//! (namespace/name, uid when given), programs the maps and flips READY.
//! CNI DEL removes the record. Records are keyed by container ID and
//! interface name, which is all DEL and GC are given; the name escapes
//! both, and every lookup checks the identity stored inside, so one
//! attachment's DEL can never find another's record. Records and their
//! directories are root's alone (`crate::trust`): they decide which pod an
//! interface is.

use crate::trust::{self, TrustError};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
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
    #[error("{0}")]
    Untrusted(#[from] TrustError),
}

/// The registry directory, e.g. `/run/weir/endpoints`.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

/// Escape everything but `[A-Za-z0-9._-]` as `%XX`, so that `@` can join
/// the two parts of a record name without ambiguity.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl EndpointRecord {
    /// Whether this record is the one of attachment (`container_id`, `ifname`).
    pub fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
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

    /// Create the registry directory (and the run dir above it) root-only,
    /// or check that what exists is root's (see [`crate::trust`]).
    pub fn ensure_dir(&self) -> Result<(), RegistryError> {
        match self.dir.parent() {
            Some(run_dir) => {
                trust::ensure_dir(run_dir)?;
                Ok(trust::ensure_subdir(&self.dir)?)
            }
            None => Ok(trust::ensure_dir(&self.dir)?),
        }
    }

    /// File name of a record: `<containerID>@<ifname>.json`, each part
    /// escaped, so no two attachments share a name.
    pub fn path_of(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{}@{}.json", escape(container_id), escape(ifname)))
    }

    /// Where releases before the escaped names wrote the record:
    /// `<containerID>_<ifname>.json`, which ("a_b", "c") and ("a", "b_c")
    /// share. Only ever trusted after checking the identity inside.
    fn legacy_path_of(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}_{ifname}.json"))
    }

    /// Write (or replace) a record atomically, readable by root only. A
    /// record of the same attachment in the old naming is removed.
    pub fn put(&self, record: &EndpointRecord) -> Result<(), RegistryError> {
        self.ensure_dir()?;
        let path = self.path_of(&record.container_id, &record.ifname);
        let body = serde_json::to_vec_pretty(record).expect("records always serialize");
        trust::write_private(&path, &body).map_err(|source| RegistryError::Io { path: path.clone(), source })?;
        self.remove_legacy(&record.container_id, &record.ifname)
    }

    /// Read the record of one attachment; `Ok(None)` when there is none.
    /// A record whose contents name another attachment is not this one's.
    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>, RegistryError> {
        for path in [self.path_of(container_id, ifname), self.legacy_path_of(container_id, ifname)] {
            if let Some(r) = read_record(&path)? {
                if r.is_for(container_id, ifname) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// Remove the record of one attachment; already gone is success. Never
    /// removes a file that names another attachment.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), RegistryError> {
        let path = self.path_of(container_id, ifname);
        match read_record(&path) {
            Ok(Some(r)) if !r.is_for(container_id, ifname) => {}
            // Ours, or unreadable under our unambiguous name: remove.
            _ => remove_file(&path)?,
        }
        self.remove_legacy(container_id, ifname)
    }

    fn remove_legacy(&self, container_id: &str, ifname: &str) -> Result<(), RegistryError> {
        let legacy = self.legacy_path_of(container_id, ifname);
        match read_record(&legacy) {
            Ok(Some(r)) if r.is_for(container_id, ifname) => remove_file(&legacy),
            _ => Ok(()),
        }
    }

    /// Every record, with the ones that cannot be read reported beside them
    /// rather than failing the whole listing. A record present in both
    /// namings is listed once.
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
        records.dedup_by(|a, b| a.is_for(&b.container_id, &b.ifname));
        (records, errors)
    }
}

fn remove_file(path: &Path) -> Result<(), RegistryError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RegistryError::Io { path: path.to_path_buf(), source: e }),
        _ => Ok(()),
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
        fs::write(reg.dir().join("bad@eth0.json"), b"{not json").unwrap();
        let (all, errs) = reg.list();
        assert_eq!(all.len(), 1);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("bad@eth0.json"), "{}", errs[0]);
    }

    fn attachment(id: &str, ifname: &str) -> EndpointRecord {
        EndpointRecord { ifname: ifname.into(), ..record(id) }
    }

    /// ("wpq_r", "eth0") and ("wpq", "r_eth0") once shared a file name, so
    /// a DEL of the second removed the first's record.
    #[test]
    fn attachments_that_once_shared_a_name_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::under(dir.path());
        assert_ne!(reg.path_of("wpq_r", "eth0"), reg.path_of("wpq", "r_eth0"));
        assert_ne!(reg.path_of("a", "b@c"), reg.path_of("a@b", "c"));
        reg.put(&attachment("wpq_r", "eth0")).unwrap();
        assert_eq!(reg.get("wpq", "r_eth0").unwrap(), None);
        reg.remove("wpq", "r_eth0").unwrap();
        assert_eq!(reg.get("wpq_r", "eth0").unwrap(), Some(attachment("wpq_r", "eth0")));
    }

    #[test]
    fn records_in_the_old_naming_are_read_checked_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::under(dir.path());
        reg.ensure_dir().unwrap();
        let old = reg.dir().join("wpq_r_eth0.json");
        fs::write(&old, serde_json::to_vec(&attachment("wpq_r", "eth0")).unwrap()).unwrap();
        // Found for its own identity, never for the one its name also fits.
        assert_eq!(reg.get("wpq", "r_eth0").unwrap(), None);
        reg.remove("wpq", "r_eth0").unwrap();
        assert!(old.exists());
        assert_eq!(reg.get("wpq_r", "eth0").unwrap(), Some(attachment("wpq_r", "eth0")));
        assert_eq!(reg.list().0.len(), 1);
        // Rewriting it moves it to the new name; listed once meanwhile.
        reg.put(&attachment("wpq_r", "eth0")).unwrap();
        assert!(!old.exists());
        assert_eq!(reg.list().0, vec![attachment("wpq_r", "eth0")]);
        fs::write(&old, serde_json::to_vec(&attachment("wpq_r", "eth0")).unwrap()).unwrap();
        assert_eq!(reg.list().0.len(), 1);
        reg.remove("wpq_r", "eth0").unwrap();
        assert!(!old.exists());
        assert_eq!(reg.list().0.len(), 0);
    }

    #[test]
    fn records_are_readable_by_root_only() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::under(dir.path());
        reg.put(&record("a")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&reg.path_of("a", "eth0")), 0o600);
        assert_eq!(mode(reg.dir()), 0o700);
    }
}
