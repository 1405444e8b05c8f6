//! Files put on the host all or nothing: each is first written in full
//! beside its destination (same directory, so the rename cannot cross
//! filesystems) and synced; only when every one is staged are they renamed
//! into place, in the order they were added. A runtime therefore never
//! execs half a binary nor reads half a conflist, and a failure part way
//! (a read-only directory, a missing source) leaves the node as it was.
//!
//! Staging beside the destination is also what makes containerd 1.6 see a
//! new conflist: its CRI plugin reloads the CNI configuration on a write,
//! a rename away or a removal in its conf_dir, never on a create, and a
//! file renamed in from another directory is only a create (it then
//! reports NetworkReady false until something else there changes or it
//! restarts). Renaming the staged name away is its cue
//! (test/tests/root_runtimes.rs starts containerd before install-cni runs).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError { path: path.to_path_buf(), source }
}

struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
}

/// Files staged so far; dropping it uncommitted removes them, and the
/// directories it created.
#[derive(Default)]
pub struct Staged {
    pending: Vec<Pending>,
    created_dirs: Vec<PathBuf>,
    /// Destinations left alone: they already hold these bytes.
    pub unchanged: Vec<PathBuf>,
}

impl Staged {
    /// Create `dir` (and missing parents, mode 0755) unless it exists.
    pub fn ensure_dir(&mut self, dir: &Path) -> Result<(), FileError> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.as_os_str().is_empty() && fs::symlink_metadata(d).is_err() {
            missing.push(d.to_path_buf());
            d = d.parent().unwrap_or(Path::new(""));
        }
        for m in missing.into_iter().rev() {
            fs::DirBuilder::new().mode(0o755).create(&m).map_err(at(&m))?;
            self.created_dirs.push(m);
        }
        if !fs::metadata(dir).map_err(at(dir))?.is_dir() {
            return Err(FileError { path: dir.into(), source: io::Error::from(io::ErrorKind::NotADirectory) });
        }
        Ok(())
    }

    /// Stage `body` for `dest` with `mode`; nothing is staged when `dest`
    /// already holds exactly `body` (reinstalling changes nothing, and the
    /// runtime sees no event).
    pub fn add(&mut self, dest: &Path, body: &[u8], mode: u32) -> Result<(), FileError> {
        if fs::read(dest).is_ok_and(|old| old == body)
            && fs::metadata(dest).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
        {
            self.unchanged.push(dest.to_path_buf());
            return Ok(());
        }
        let name = dest.file_name().expect("a file path").to_string_lossy();
        let tmp = dest.with_file_name(format!(".{name}.weir-install.{}", std::process::id()));
        // Recorded before it exists, so a failure below still removes it.
        self.pending.push(Pending { tmp: tmp.clone(), dest: dest.to_path_buf() });
        let mut f =
            fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(at(&tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(at(&tmp))?;
        f.write_all(body).map_err(at(&tmp))?;
        f.sync_all().map_err(at(&tmp))
    }

    /// Rename every staged file into place, in order, then sync each
    /// directory so the renames survive a crash. Returns what was written.
    pub fn commit(mut self) -> Result<Vec<PathBuf>, FileError> {
        let mut written = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut queue = std::mem::take(&mut self.pending).into_iter();
        while let Some(p) = queue.next() {
            if let Err(e) = fs::rename(&p.tmp, &p.dest) {
                let err = at(&p.dest)(e);
                // Not renamed: their temporary files go on drop.
                self.pending.push(p);
                self.pending.extend(queue);
                return Err(err);
            }
            let dir = p.dest.parent().unwrap_or(Path::new(".")).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            written.push(p.dest);
        }
        self.created_dirs.clear();
        for d in dirs {
            fs::File::open(&d).and_then(|f| f.sync_all()).map_err(at(&d))?;
        }
        Ok(written)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for p in &self.pending {
            let _ = fs::remove_file(&p.tmp);
        }
        for d in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_appears_until_commit_and_then_everything_in_order() {
        let t = tempfile::tempdir().unwrap();
        let mut s = Staged::default();
        s.ensure_dir(&t.path().join("bin")).unwrap();
        s.add(&t.path().join("bin/a"), b"aa", 0o755).unwrap();
        s.add(&t.path().join("conf"), b"c", 0o644).unwrap();
        assert!(!t.path().join("bin/a").exists() && !t.path().join("conf").exists());
        let written = s.commit().unwrap();
        assert_eq!(written, [t.path().join("bin/a"), t.path().join("conf")]);
        assert_eq!(fs::metadata(t.path().join("bin/a")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read(t.path().join("conf")).unwrap(), b"c");
        assert_eq!(names(t.path()), ["bin", "conf"], "no temporary file left");
        assert_eq!(names(&t.path().join("bin")), ["a"]);

        let mut again = Staged::default();
        again.add(&t.path().join("conf"), b"c", 0o644).unwrap();
        assert_eq!(again.unchanged, [t.path().join("conf")]);
        assert!(again.commit().unwrap().is_empty());
    }

    #[test]
    fn a_failure_part_way_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("old"), b"old").unwrap();
        let blocker = t.path().join("a-file");
        fs::write(&blocker, b"").unwrap();
        {
            let mut s = Staged::default();
            s.ensure_dir(&t.path().join("new/bin")).unwrap();
            s.add(&t.path().join("new/bin/x"), b"x", 0o755).unwrap();
            s.add(&t.path().join("old"), b"new", 0o644).unwrap();
            // A directory path through a regular file fails even for root.
            assert!(s.ensure_dir(&blocker.join("net.d")).is_err());
            assert!(s.add(&blocker.join("conf"), b"c", 0o644).is_err());
        }
        assert_eq!(names(t.path()), ["a-file", "old"], "created dirs and temporary files removed");
        assert_eq!(fs::read(t.path().join("old")).unwrap(), b"old");
    }
}
