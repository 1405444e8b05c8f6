//! One pinned map of a [`crate::Dataplane`], opened the first time it is
//! used. A handle's caller touches few of its maps (the CNI binary's ADD:
//! the endpoints and the ipcache), and opening one costs three syscalls
//! (`statx`, `BPF_OBJ_GET`, `BPF_OBJ_GET_INFO_BY_FD`) paid on every pod
//! start. The pins are complete whenever the handle exists: the ABI
//! version, which opening checks, is written only after every map is
//! pinned.

use crate::dataplane::{map_err, open_map};
use crate::error::Error;
use aya::maps::{Map, MapError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub(crate) struct Pinned<T> {
    root: PathBuf,
    name: &'static str,
    path: PathBuf,
    map: OnceLock<Mutex<T>>,
}

impl<T: TryFrom<Map, Error = MapError>> Pinned<T> {
    pub(crate) fn at(root: &Path, name: &'static str) -> Self {
        Pinned { root: root.to_path_buf(), name, path: root.join(name), map: OnceLock::new() }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The map, opened (and its key and value sizes checked) on first use.
    pub(crate) fn get(&self) -> Result<MutexGuard<'_, T>, Error> {
        if let Some(m) = self.map.get() {
            return Ok(m.lock().unwrap());
        }
        let typed =
            T::try_from(open_map(&self.root, self.name)?).map_err(map_err(&self.path, "check key/value sizes"))?;
        // Two threads may open it at once: one handle is kept, the other dropped.
        let _ = self.map.set(Mutex::new(typed));
        Ok(self.map.get().expect("set above").lock().unwrap())
    }
}
