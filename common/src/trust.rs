//! Directories whose contents decide enforcement (the bpffs root with its
//! program and link pins, the run dir with the endpoint registry) must be
//! out of reach of every user but root. `/sys/fs/bpf` is mode 1777 on most
//! systems: a user who creates `/sys/fs/bpf/weir` before Weir does owns it,
//! and could later delete the link pins and so switch off enforcement.
//!
//! The rule, checked before any use:
//! - the directory itself (and each Weir directory under it) is owned by
//!   root with mode 0700 or 0755, and is not a symlink;
//! - every existing ancestor is owned by root and not writable by group or
//!   others, unless it is sticky (like `/tmp` and `/sys/fs/bpf`), where no
//!   other user can rename or remove root's entries.
//!
//! What Weir creates itself it creates root-owned with mode 0700.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Modes a Weir directory may have.
pub const TRUSTED_DIR_MODES: [u32; 2] = [0o700, 0o755];

/// Mode of directories Weir creates.
pub const DIR_MODE: u32 = 0o700;

/// Mode of files Weir writes under its run dir: only root (policyd) reads them.
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{path} is {why}: another user could change or remove what Weir keeps there (and so switch off \
         enforcement). {fix}"
    )]
    Untrusted { path: PathBuf, why: String, fix: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TrustError + '_ {
    move |source| TrustError::Io { path: path.to_path_buf(), source }
}

/// Check that `dir` (which must exist) is a directory Weir may trust:
/// owned by root, mode 0700 or 0755, not a symlink, and every ancestor
/// safe as well.
pub fn check_dir(dir: &Path) -> Result<(), TrustError> {
    check_subdir(dir)?;
    check_ancestors(dir)
}

/// [`check_dir`] for a directory whose parent [`check_dir`] accepted: its
/// own owner and mode only, since its ancestors are that parent's (a
/// trusted directory is not writable by anyone but root). Spares a walk up
/// to `/` per directory on paths every CNI ADD takes.
pub fn check_subdir(dir: &Path) -> Result<(), TrustError> {
    let md = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    let untrusted = |why: String| {
        TrustError::Untrusted {
        path: dir.to_path_buf(),
        why,
        fix: format!(
            "Remove it (`rm -r {0}`) and let Weir create it, or make it root's: `chown root:root {0} && chmod 0700 {0}`",
            dir.display()
        ),
    }
    };
    if md.file_type().is_symlink() {
        return Err(untrusted("a symbolic link".into()));
    }
    if !md.is_dir() {
        return Err(untrusted("not a directory".into()));
    }
    let mode = md.mode() & 0o7777;
    if md.uid() != 0 || !TRUSTED_DIR_MODES.contains(&mode) {
        return Err(untrusted(format!(
            "owned by uid {} with mode {mode:04o} (Weir needs uid 0 and mode 0700 or 0755)",
            md.uid()
        )));
    }
    Ok(())
}

/// Every existing ancestor of `path`: owned by root, and either not
/// writable by group and others, or sticky.
fn check_ancestors(path: &Path) -> Result<(), TrustError> {
    let abs =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map_err(io_err(path))?.join(path) };
    for anc in abs.ancestors().skip(1) {
        let md = match fs::metadata(anc) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(anc)(e)),
        };
        let mode = md.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        if md.uid() != 0 || (mode & 0o022 != 0 && !sticky) {
            return Err(TrustError::Untrusted {
                path: anc.to_path_buf(),
                why: format!(
                    "a parent of {} owned by uid {} with mode {mode:04o}",
                    path.display(),
                    md.uid()
                ),
                fix: format!(
                    "Put Weir's directory under a parent only root can write, or fix it: `chown root {0} && chmod go-w {0}`",
                    anc.display()
                ),
            });
        }
    }
    Ok(())
}

/// Create `dir` and any missing parents (root-owned, mode 0700), then check
/// it with [`check_dir`]. A directory someone else created first is refused,
/// never adopted.
pub fn ensure_dir(dir: &Path) -> Result<(), TrustError> {
    match fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    check_dir(dir)
}

/// [`ensure_dir`] for a directory directly under one [`ensure_dir`] or
/// [`check_dir`] accepted ([`check_subdir`]).
pub fn ensure_subdir(dir: &Path) -> Result<(), TrustError> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    check_subdir(dir)
}

/// Write `body` to `path` atomically (a temporary file beside it, then
/// rename) with mode 0600, so a reader never sees half a file and no other
/// user reads it.
pub fn write_private(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
    // An older file of the same name may have been created with looser bits.
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    f.write_all(body)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Ownership checks need root (chown); the CI runs them as root.
    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn root_creates_private_dirs_and_accepts_them() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, DIR_MODE);
        ensure_dir(&d).unwrap(); // idempotent
        chmod(&d, 0o755);
        check_dir(&d).unwrap();
    }

    #[test]
    fn root_refuses_loose_modes_symlinks_and_files() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        ensure_dir(&d).unwrap();
        for bad in [0o777, 0o775, 0o1777, 0o750, 0o711] {
            chmod(&d, bad);
            let e = check_dir(&d).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:04o}")), "{e}");
            assert!(e.contains("chmod 0700"), "{e}");
        }
        chmod(&d, 0o700);
        let link = t.path().join("l");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(check_dir(&link).unwrap_err().to_string().contains("symbolic link"));
        let file = t.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(check_dir(&file).unwrap_err().to_string().contains("not a directory"));
    }

    #[test]
    fn root_refuses_a_dir_another_user_owns() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("squatted");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o755);
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = ensure_dir(&d).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
        // A Weir dir below a parent another user can write is refused too.
        let p = t.path().join("open");
        fs::create_dir(&p).unwrap();
        chmod(&p, 0o777);
        let e = ensure_dir(&p.join("weir")).unwrap_err().to_string();
        assert!(e.contains("a parent of"), "{e}");
        // A subdirectory is checked for itself as check_dir would be.
        let parent = t.path().join("trusted");
        ensure_dir(&parent).unwrap();
        let sub = parent.join("sub");
        ensure_subdir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o7777, DIR_MODE);
        std::os::unix::fs::chown(&sub, Some(65534), None).unwrap();
        let e = ensure_subdir(&sub).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
        std::os::unix::fs::chown(&sub, Some(0), None).unwrap();
        chmod(&sub, 0o777);
        assert!(check_subdir(&sub).unwrap_err().to_string().contains("0777"));
    }

    #[test]
    fn private_files_are_0600_even_over_a_looser_one() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("r.json");
        fs::write(&f, b"old").unwrap();
        chmod(&f, 0o644);
        write_private(&f, b"new").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"new");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, FILE_MODE);
    }
}
