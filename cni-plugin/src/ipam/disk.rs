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
const LAST_PREFIX: &str = "last_reserved_ip.";

/// A locked store directory; the lock is released on drop.
pub struct DiskStore {
    dir: PathBuf,
    _lock: File,
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
        fs::create_dir_all(dir).map_err(|e| CniError::io(format!("ipam.dataDir: cannot create {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
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
        Ok(DiskStore { dir: dir.to_path_buf(), _lock: lock })
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
        if let Err(e) = write_mode(&last, ip.to_string().as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(CniError::io(format!("cannot write {}", last.display()), e));
        }
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_PREFIX}{set}"))).ok()?.trim().parse().ok()
    }

    fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let (entries, _) = self.entries();
        Ok(entries.into_iter().filter(|e| e.container_id == id && e.ifname == ifname).map(|e| e.ip).collect())
    }

    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mine = self.get_by_id(id, ifname)?;
        for ip in &mine {
            self.release(*ip)?;
        }
        Ok(mine)
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(CniError::io(format!("cannot remove {}", path.display()), e)),
            _ => Ok(()),
        }
    }
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

    #[test]
    fn legacy_id_only_files_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("10.0.0.9"), "old\n").unwrap();
        let (e, errs) = entries_in(tmp.path());
        assert!(errs.is_empty());
        assert_eq!(e, vec![Entry { ip: "10.0.0.9".parse().unwrap(), container_id: "old".into(), ifname: String::new() }]);
    }
}
