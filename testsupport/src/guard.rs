//! Cleanup guards: what a test made goes away when the guard drops, also
//! when the test panics.

use std::path::{Path, PathBuf};

/// A directory tree (a bpffs root with its pins, a scratch directory)
/// removed on drop.
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl RemoveOnDrop {
    /// Guards `path`, removing what an earlier run may have left there.
    pub fn fresh(path: impl Into<PathBuf>) -> RemoveOnDrop {
        let path = path.into();
        let _ = std::fs::remove_dir_all(&path);
        RemoveOnDrop(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}
