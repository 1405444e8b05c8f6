//! The last version of each manifest file that parsed, kept on disk.
//!
//! A broken manifest file keeps contributing the objects of its last good
//! version; in memory alone that lasts only until policyd restarts, and a
//! restart that reads only the broken file would drop its policies and
//! open traffic. So every good version is copied here (one file per
//! manifest file, same name) and read back at start.
//!
//! Written atomically (a `.NAME.tmp` fsynced, then renamed), root-only
//! (directory 0700, files 0600: policies say what the node lets through).
//! A copy is removed with its manifest file: a deleted file is a decision,
//! not breakage. The directory remembers which manifest directory it
//! mirrors (`.source`); started on another one, it starts empty.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Names the manifest directory the copies belong to.
const SOURCE_MARKER: &str = ".source";

#[derive(Debug)]
pub struct LastGood {
    dir: PathBuf,
}

impl LastGood {
    /// Open (creating it, mode 0700) the copies kept under `dir` for the
    /// manifest directory `manifests`; copies kept for another directory
    /// are discarded.
    pub fn open(dir: &Path, manifests: &Path) -> std::io::Result<LastGood> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let store = LastGood { dir: dir.to_path_buf() };
        let source = std::path::absolute(manifests)?.display().to_string();
        let marker = dir.join(SOURCE_MARKER);
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(source.as_str()) {
            for (name, _) in store.list()? {
                store.remove(&name)?;
            }
            store.write_atomic(SOURCE_MARKER, source.as_bytes())?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every copy: (manifest file name, content), by name.
    pub fn list(&self) -> std::io::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Dot names are the marker and interrupted writes.
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            match std::fs::read(entry.path()) {
                Ok(content) => out.push((name, content)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Keep `content` as the last good version of manifest file `name`.
    pub fn save(&self, name: &str, content: &[u8]) -> std::io::Result<()> {
        self.write_atomic(name, content)
    }

    /// Forget manifest file `name` (removed from the manifest directory).
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn write_atomic(&self, name: &str, content: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp); // a leftover may have other permissions
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let written = f.write_all(content).and_then(|()| f.sync_all());
        drop(f);
        match written.and_then(|()| std::fs::rename(&tmp, self.dir.join(name))) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn copies_survive_reopening_and_are_root_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/manifests-last-good");
        let manifests = tmp.path().join("manifests");
        let store = LastGood::open(&dir, &manifests).unwrap();
        store.save("p.yaml", b"v1").unwrap();
        store.save("q.yaml", b"q").unwrap();
        store.save("p.yaml", b"v2").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("p.yaml")), 0o600);

        let again = LastGood::open(&dir, &manifests).unwrap();
        assert_eq!(again.list().unwrap(), vec![("p.yaml".into(), b"v2".to_vec()), ("q.yaml".into(), b"q".to_vec())]);
        again.remove("q.yaml").unwrap();
        again.remove("q.yaml").unwrap(); // already gone is fine
        assert_eq!(again.list().unwrap(), vec![("p.yaml".into(), b"v2".to_vec())]);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!left.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "no temporary file left: {left:?}");
    }

    #[test]
    fn an_existing_directory_is_made_root_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lg");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        LastGood::open(&dir, tmp.path()).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn copies_of_another_manifest_directory_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lg");
        LastGood::open(&dir, &tmp.path().join("a")).unwrap().save("p.yaml", b"from a").unwrap();
        let b = LastGood::open(&dir, &tmp.path().join("b")).unwrap();
        assert!(b.list().unwrap().is_empty(), "a's p.yaml must not stand in for b's");
    }

    #[test]
    fn an_interrupted_write_is_not_a_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LastGood::open(tmp.path(), tmp.path()).unwrap();
        std::fs::write(tmp.path().join(".p.yaml.tmp"), b"half").unwrap();
        assert!(store.list().unwrap().is_empty());
        store.save("p.yaml", b"whole").unwrap();
        assert_eq!(store.list().unwrap(), vec![("p.yaml".into(), b"whole".to_vec())]);
    }
}
