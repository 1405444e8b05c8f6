//! What install-cni put on the host, so that `uninstall` removes exactly
//! that: the binaries it wrote (each with the SHA-256 of what it wrote) and
//! where the installed network keeps its state. A chained plugin the host
//! already had is not in it, so it is never Weir's to remove; one that
//! another package later replaced no longer has the recorded digest, so it
//! is not removed either.
//!
//! The record is a hidden file in the CNI bin dir: runtimes only exec the
//! names a conflist asks for there, while a file in the conf dir with a
//! `.json` name would be read as a network. It outlives the conflist (which
//! uninstall removes first), so a re-run knows what is left to do.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weir_cni::config::NetConf;

/// Its file name in the CNI bin dir.
pub const FILE_NAME: &str = weir_common::paths::INSTALL_RECORD;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored: a record a newer Weir wrote is still read.
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Binary name in the CNI bin dir -> SHA-256 (hex) of what Weir wrote.
    pub binaries: BTreeMap<String, String>,
    /// Where the installed network keeps its state.
    pub network: Network,
}

/// What of the conflist uninstall needs once the conflist is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// The network's name (its IPAM store's directory name).
    pub name: String,
    /// The host-local store's parent (`ipam.dataDir`); None with a
    /// delegated IPAM plugin (its state is that plugin's).
    pub ipam_data_dir: Option<PathBuf>,
    pub bpffs_root: PathBuf,
    pub run_dir: PathBuf,
    /// The bridge pods hang on (`bridge`).
    #[serde(default)]
    pub bridge: Option<String>,
}

impl Network {
    pub fn of(conf: &NetConf) -> Network {
        Network {
            name: conf.name.clone(),
            ipam_data_dir: conf.host_local().map(|h| h.data_dir.clone()),
            bpffs_root: conf.policy.bpffs_root.clone(),
            run_dir: conf.policy.run_dir.clone(),
            bridge: Some(conf.bridge.clone()),
        }
    }

    /// The shipped conflist's: what a node installed without a record
    /// (an install before records existed) most likely uses.
    pub fn shipped() -> Network {
        let v = serde_json::from_str(super::conflist::TEMPLATE).expect("the shipped conflist is JSON");
        Network::of(&weir_cni::config::parse_netconf(v).expect("the shipped conflist is valid"))
    }

    /// The host-local store of this network.
    pub fn ipam_store(&self) -> Option<PathBuf> {
        self.ipam_data_dir.as_ref().map(|d| weir_cni::config::store_dir(d, &self.name))
    }
}

impl Record {
    pub fn path(bin_dir: &Path) -> PathBuf {
        bin_dir.join(FILE_NAME)
    }

    /// The record in `bin_dir`; None when there is none.
    pub fn read(bin_dir: &Path) -> anyhow::Result<Option<Record>> {
        let path = Record::path(bin_dir);
        match std::fs::read(&path) {
            Ok(b) => {
                let not_a_record = |e: String| {
                    anyhow::anyhow!(
                        "{}: not an install record ({e}); remove it if Weir is not installed here",
                        path.display()
                    )
                };
                let record: Record = serde_json::from_slice(&b).map_err(|e| not_a_record(e.to_string()))?;
                // Uninstall removes bin_dir/<name>: a name must not reach
                // out of the bin dir.
                if let Some(bad) = record.binaries.keys().find(|n| !is_plain_file_name(n)) {
                    return Err(not_a_record(format!("binaries: {bad:?} is not a plain file name")));
                }
                Ok(Some(record))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).expect("always serializes");
        b.push(b'\n');
        b
    }

    /// Whether the file now called `name` is still the one Weir wrote.
    pub fn wrote(&self, name: &str, body: &[u8]) -> bool {
        self.binaries.get(name).is_some_and(|d| *d == digest(body))
    }
}

/// A name of a file directly in a directory: not empty, no `/`, not `.`
/// or `..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".." && !name.contains('\0')
}

/// SHA-256 of `body`, lower-case hex.
pub fn digest(body: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, body).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_weirs_only_while_it_holds_what_weir_wrote() {
        let mut r = Record { binaries: BTreeMap::new(), network: Network::shipped() };
        r.binaries.insert("portmap".into(), digest(b"weir's portmap"));
        assert!(r.wrote("portmap", b"weir's portmap"));
        assert!(!r.wrote("portmap", b"the host's newer portmap"), "replaced since: someone else's");
        assert!(!r.wrote("bandwidth", b"anything"), "never written by Weir");
        assert_eq!(digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_shipped_network_is_the_default_paths() {
        let n = Network::shipped();
        assert_eq!(n.name, "weir");
        assert_eq!(n.ipam_store(), Some(PathBuf::from("/var/lib/cni/networks/weir")));
        assert_eq!(n.bpffs_root, PathBuf::from(weir_common::paths::DEFAULT_BPFFS_ROOT));
        assert_eq!(n.run_dir, PathBuf::from(weir_common::paths::DEFAULT_RUN_DIR));
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(Record::read(t.path()).unwrap(), None);
        let mut r = Record { binaries: BTreeMap::new(), network: Network::shipped() };
        r.binaries.insert("weir".into(), digest(b"w"));
        std::fs::write(Record::path(t.path()), r.to_bytes()).unwrap();
        assert_eq!(Record::read(t.path()).unwrap(), Some(r));
        std::fs::write(Record::path(t.path()), b"{").unwrap();
        let e = Record::read(t.path()).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("not an install record"), "{e}");
    }

    #[test]
    fn a_record_with_fields_of_a_newer_weir_is_read() {
        let t = tempfile::tempdir().unwrap();
        let r = Record { binaries: BTreeMap::new(), network: Network::shipped() };
        let mut v: serde_json::Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        v["addedLater"] = 1.into();
        v["network"]["addedLater"] = "x".into();
        std::fs::write(Record::path(t.path()), v.to_string()).unwrap();
        assert_eq!(Record::read(t.path()).unwrap(), Some(r));
    }

    #[test]
    fn a_record_naming_a_file_outside_the_bin_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "sub/x", "..", "."] {
            let mut r = Record { binaries: BTreeMap::new(), network: Network::shipped() };
            r.binaries.insert(bad.into(), digest(b"w"));
            std::fs::write(Record::path(t.path()), r.to_bytes()).unwrap();
            let e = Record::read(t.path()).unwrap_err().to_string();
            assert!(e.contains("not a plain file name") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
