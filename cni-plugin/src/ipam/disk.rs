//! The reference host-local store on disk, byte for byte:
//! `<dataDir>/<network>/<ip>` holding `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.<rangeSetIndex>` holding the last address handed out,
//! and `flock(2)` on `<dir>/lock` around every transaction. Operators can
//! therefore switch between this plugin and `host-local` without losing a
//! reservation.

use super::allocator::Store;
use crate::error::{CniError, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const LINE_BREAK: &str = "\r\n";
/// The prefix of the files holding the last address handed out per range set.
pub const LAST_PREFIX: &str = "last_reserved_ip.";
/// The file every transaction flocks.
pub const LOCK_FILE: &str = "lock";

/// A locked store directory; the lock is released on drop.
///
/// With an index (`with_index`), lookups by container skip the directory
/// scan: ADD records the addresses it reserved in a small file per
/// attachment under the run directory (tmpfs, outside the shared store so
/// the reference plugin never sees it), and DEL reads that, checking each
/// address file still names the attachment before removing it. Without an
/// index entry, DEL falls back to the scan, so reservations made by the
/// reference plugin are still released. The duplicate-allocation check of
/// ADD consults only the index.
pub struct DiskStore {
    dir: PathBuf,
    _lock: File,
    index: Option<PathBuf>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    ips: Vec<IpAddr>,
}

/// One reservation as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

impl DiskStore {
    /// Create the directory if needed and take its lock (blocking).
    pub fn open(dir: &Path) -> Result<DiskStore> {
        fs::create_dir_all(dir)
            .map_err(|e| CniError::io(format!("ipam.dataDir: cannot create {}", dir.display()), e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("cannot open {}", lock_path.display()), e))?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(CniError::io(format!("cannot lock {}", lock_path.display()), e));
            }
        }
        Ok(DiskStore { dir: dir.to_path_buf(), _lock: lock, index: None })
    }

    /// Keep a per-attachment index of reservations in `index_dir`.
    pub fn with_index(mut self, index_dir: PathBuf) -> Self {
        self.index = Some(index_dir);
        self
    }

    fn index_file(&self, id: &str, ifname: &str) -> Option<PathBuf> {
        self.index.as_ref().map(|d| d.join(format!("{id}_{ifname}")))
    }

    /// Record what ADD reserved for (id, ifname).
    pub fn write_index(&self, id: &str, ifname: &str, ips: &[IpAddr]) -> Result<()> {
        let (Some(dir), Some(path)) = (&self.index, self.index_file(id, ifname)) else { return Ok(()) };
        fs::create_dir_all(dir).map_err(|e| CniError::io(format!("cannot create {}", dir.display()), e))?;
        let body =
            serde_json::to_vec(&IndexEntry { container_id: id.into(), ifname: ifname.into(), ips: ips.to_vec() })
                .expect("json");
        write_mode(&path, &body).map_err(|e| CniError::io(format!("cannot write {}", path.display()), e))
    }

    fn read_index(&self, id: &str, ifname: &str) -> Option<Vec<IpAddr>> {
        let body = fs::read(self.index_file(id, ifname)?).ok()?;
        let e: IndexEntry = serde_json::from_slice(&body).ok()?;
        (e.container_id == id && e.ifname == ifname).then_some(e.ips)
    }

    fn remove_index(&self, id: &str, ifname: &str) {
        if let Some(p) = self.index_file(id, ifname) {
            let _ = fs::remove_file(p);
        }
    }

    /// Index entries (containerID, ifname) present, for GC.
    pub fn indexed_attachments(&self) -> Vec<(String, String)> {
        let Some(dir) = &self.index else { return vec![] };
        let Ok(rd) = fs::read_dir(dir) else { return vec![] };
        rd.flatten()
            .filter_map(|e| serde_json::from_slice::<IndexEntry>(&fs::read(e.path()).ok()?).ok())
            .map(|e| (e.container_id, e.ifname))
            .collect()
    }

    pub fn forget(&self, id: &str, ifname: &str) {
        self.remove_index(id, ifname)
    }

    /// Whether the reservation file of `ip` names (id, ifname).
    fn holds(&self, ip: IpAddr, id: &str, ifname: &str) -> bool {
        fs::read_to_string(self.dir.join(ip.to_string()))
            .map(|b| b.trim() == format!("{id}{LINE_BREAK}{ifname}"))
            .unwrap_or(false)
    }

    fn scan_by_id(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        let (entries, _) = self.entries();
        entries.into_iter().filter(|e| e.container_id == id && e.ifname == ifname).map(|e| e.ip).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every reservation; files that are not addresses (lock, last_reserved_ip.*)
    /// are skipped, unreadable ones reported.
    pub fn entries(&self) -> (Vec<Entry>, Vec<CniError>) {
        entries_in(&self.dir)
    }
}

/// Reservations in a store directory without locking it (STATUS only counts).
pub fn entries_in(dir: &Path) -> (Vec<Entry>, Vec<CniError>) {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return (out, errs),
        Err(e) => return (out, vec![CniError::io(format!("cannot list {}", dir.display()), e)]),
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
        match fs::read_to_string(ent.path()) {
            Ok(body) => {
                let body = body.trim();
                let (id, ifname) = match body.split_once(LINE_BREAK) {
                    Some((a, b)) => (a.to_string(), b.to_string()),
                    // Stores written by old host-local versions hold only the ID.
                    None => (body.to_string(), String::new()),
                };
                out.push(Entry { ip, container_id: id, ifname });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => errs.push(CniError::io(format!("cannot read {}", ent.path().display()), e)),
        }
    }
    (out, errs)
}

impl Store for DiskStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, set: usize) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(CniError::io(format!("cannot create {}", path.display()), e)),
        };
        if let Err(e) = f.write_all(format!("{id}{LINE_BREAK}{ifname}").as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(CniError::io(format!("cannot write {}", path.display()), e));
        }
        let last = self.dir.join(format!("{LAST_PREFIX}{set}"));
        if let Err(e) = overwrite(&last, ip.to_string().as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(CniError::io(format!("cannot write {}", last.display()), e));
        }
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_PREFIX}{set}"))).ok()?.trim().parse().ok()
    }

    fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        if self.index.is_some() {
            let listed = self.read_index(id, ifname).unwrap_or_default();
            return Ok(listed.into_iter().filter(|ip| self.holds(*ip, id, ifname)).collect());
        }
        Ok(self.scan_by_id(id, ifname))
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mine = match self.read_index(id, ifname) {
            Some(listed) if !listed.is_empty() && listed.iter().all(|ip| self.holds(*ip, id, ifname)) => listed,
            // No index entry, or the store changed under it (another plugin
            // released or reallocated): scan.
            _ => self.scan_by_id(id, ifname),
        };
        for ip in &mine {
            self.release(*ip)?;
        }
        self.remove_index(id, ifname);
        Ok(mine)
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(CniError::io(format!("cannot remove {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }
}

/// Replace the contents of `path` (created if absent) with `body`, in
/// place: the bytes are written over the old ones and only a longer
/// remainder is cut. The file is rewritten by every ADD, and truncating it to
/// zero first is what made it slow on disk: ext4 frees the old block and,
/// for a file truncated to zero, writes the new one out when it is closed
/// (`auto_da_alloc`). A crash between the write and the cut can leave one
/// stray digit; the file is only a hint of where the next search starts,
/// and an unparsable one starts it at the beginning of the range.
fn overwrite(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    f.write_all_at(body, 0)?;
    if f.metadata()?.len() > body.len() as u64 {
        f.set_len(body.len() as u64)?;
    }
    Ok(())
}

fn write_mode(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::{Range, RangeSet};
    use crate::ipam::allocator::allocate;

    #[test]
    fn files_have_the_reference_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let set = RangeSet {
            ranges: vec![Range {
                subnet: "fd00::/64".parse().unwrap(),
                start: "fd00::1".parse().unwrap(),
                end: "fd00::ff".parse().unwrap(),
                gateway: "fd00::1".parse().unwrap(),
            }],
        };
        let mut s = DiskStore::open(&dir).unwrap();
        let a = allocate(&mut s, &set, 1, "ctr1", "eth0").unwrap();
        assert_eq!(a.to_string(), "fd00::2");
        assert_eq!(fs::read(dir.join("fd00::2")).unwrap(), b"ctr1\r\neth0");
        assert_eq!(fs::read(dir.join("last_reserved_ip.1")).unwrap(), b"fd00::2");
        assert!(dir.join("lock").exists());
        assert_eq!(s.get_by_id("ctr1", "eth0").unwrap(), vec![a]);
        assert_eq!(s.release_by_id("ctr1", "eth0").unwrap(), vec![a]);
        assert!(!dir.join("fd00::2").exists());
        assert!(s.release_by_id("ctr1", "eth0").unwrap().is_empty());
    }

    /// The last reserved address is rewritten in place: a shorter one
    /// leaves no digit of the longer one behind (the reference plugin
    /// parses the file whole), and the file keeps its mode.
    #[test]
    fn the_last_reserved_address_is_rewritten_exactly() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("last_reserved_ip.0");
        for (ip, want) in [("10.0.0.100", "10.0.0.100"), ("10.0.0.99", "10.0.0.99"), ("10.0.0.101", "10.0.0.101")] {
            overwrite(&path, ip.as_bytes()).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), want);
        }
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_index_finds_reservations_without_a_scan_and_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let idx = tmp.path().join("index");
        let set = RangeSet {
            ranges: vec![Range {
                subnet: "10.0.0.0/24".parse().unwrap(),
                start: "10.0.0.1".parse().unwrap(),
                end: "10.0.0.254".parse().unwrap(),
                gateway: "10.0.0.1".parse().unwrap(),
            }],
        };
        let mut s = DiskStore::open(&dir).unwrap().with_index(idx.clone());
        let a = allocate(&mut s, &set, 0, "c1", "eth0").unwrap();
        s.write_index("c1", "eth0", &[a]).unwrap();
        assert_eq!(s.get_by_id("c1", "eth0").unwrap(), vec![a]);
        // A reservation made by another plugin (no index entry) is released by the scan.
        fs::write(dir.join("10.0.0.77"), "other\r\neth0").unwrap();
        assert_eq!(s.release_by_id("other", "eth0").unwrap(), vec!["10.0.0.77".parse::<IpAddr>().unwrap()]);
        // A stale index entry (file reallocated to someone else) is not trusted.
        fs::write(dir.join(a.to_string()), "c2\r\neth0").unwrap();
        assert!(s.release_by_id("c1", "eth0").unwrap().is_empty());
        assert!(dir.join(a.to_string()).exists());
        assert!(!idx.join("c1_eth0").exists());
    }

    #[test]
    fn legacy_id_only_files_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("10.0.0.9"), "old\n").unwrap();
        let (e, errs) = entries_in(tmp.path());
        assert!(errs.is_empty());
        assert_eq!(
            e,
            vec![Entry { ip: "10.0.0.9".parse().unwrap(), container_id: "old".into(), ifname: String::new() }]
        );
    }
}
