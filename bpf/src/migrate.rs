//! A map-layout change, make-before-break (`weir_abi.h`'s version). Pins
//! of an older ABI are carried into a complete new set beside them, every
//! pinned link is switched to the new programs in one step each, and the
//! new set takes the old one's names. No pod is detached and no packet
//! meets empty maps: the new programs start with the old ones' endpoints,
//! ipcache, policy, conntrack and configuration.
//!
//! Steps, under the root's lock:
//! 1. load this build's object with its maps and programs pinned under
//!    `<root>/migrating-abi-<N>` (the staging set), its ABI left at 0;
//! 2. copy every map the two sets share, entry by entry, as bytes: each
//!    must have the same shape in both (type, key and value sizes), or a
//!    conversion for it must be written here; then what the ABI between
//!    changed in meaning (see [`carry_meaning`]);
//! 3. switch every pinned link to the staged programs;
//! 4. copy conntrack again, adding what the old programs created in
//!    between (the old programs run no more);
//! 5. write the ABI into the staged set (the commit point), then rename
//!    each staged pin over the old one, the ABI map last, and remove the
//!    staging directory.
//!
//! A start that finds a staging directory finishes a committed one (step 5
//! again) and discards one that was not: the old pins were never touched
//! before the commit, so the migration runs again from them.

use crate::abi::*;
use crate::dataplane::{read_abi, write_abi, Dataplane, Hook, LoadOptions, Upgrade};
use crate::error::Error;
use crate::policy::PolicyMatch;
use crate::sys;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The ABIs whose pins this build carries over.
pub const MIGRATES_FROM: [u32; 1] = [6];

/// Directories under a root named so are a migration's staged pins.
pub(crate) const STAGING_PREFIX: &str = "migrating-abi-";

fn staging_name() -> String {
    format!("{STAGING_PREFIX}{ABI_VERSION}")
}

fn io_err(root: &Path, from: u32, what: &str, path: &Path, e: std::io::Error) -> Error {
    failed(root, from, format!("{what} {}: {e}", path.display()))
}

fn failed(root: &Path, from: u32, msg: String) -> Error {
    Error::Migrate { root: root.to_path_buf(), from, to: ABI_VERSION, staging: staging_name(), msg }
}

/// Carry the pins under `root`, written by ABI `from`, into this build's.
pub(crate) fn migrate(root: &Path, from: u32, opts: LoadOptions) -> Result<Upgrade, Error> {
    let staging = root.join(staging_name());
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io_err(root, from, "cannot remove", &staging, e))?;
    }
    weir_common::trust::ensure_dir(&staging)?;
    Dataplane::load_pins(&staging, opts)?;
    let shared = shared_maps(root, &staging, from)?;
    for (name, shape) in &shared {
        copy(root, &staging, from, name, *shape, 0)?;
    }
    carry_meaning(&staging, from)?;
    let mut up = Dataplane::relink_to(root, &staging.join("progs"))?;
    if let Some((name, shape)) = shared.iter().find(|(n, _)| *n == MAP_CT) {
        copy(root, &staging, from, name, *shape, sys::BPF_NOEXIST)?;
    }
    write_abi(&staging, ABI_VERSION)?;
    take_names(root, &staging, from)?;
    up.migrated_from = Some(from);
    Ok(up)
}

/// The maps both sets pin that carry state, with their shape; an error if
/// one changed shape and nothing here converts it.
fn shared_maps(root: &Path, staging: &Path, from: u32) -> Result<Vec<(&'static str, sys::MapShape)>, Error> {
    let mut out = Vec::new();
    for name in PINNED_MAPS {
        let (old, new) = (root.join(name), staging.join(name));
        if name == MAP_ABI || !old.exists() {
            continue;
        }
        let shape = |p: &Path| -> Result<sys::MapShape, Error> {
            let fd = sys::obj_get(p).map_err(|e| io_err(root, from, "cannot open pinned map", p, e))?;
            sys::map_shape(fd.as_fd()).map_err(|e| io_err(root, from, "cannot read the shape of", p, e))
        };
        let (a, b) = (shape(&old)?, shape(&new)?);
        if a.map_type == sys::BPF_MAP_TYPE_RINGBUF {
            continue; // events in flight are not state
        }
        if (a.map_type, a.key_size, a.value_size) != (b.map_type, b.key_size, b.value_size) {
            return Err(failed(
                root,
                from,
                format!(
                    "map {name} changed shape (type {} -> {}, key {} -> {} bytes, value {} -> {} bytes) \
                     and this build has no conversion for it",
                    a.map_type, b.map_type, a.key_size, b.key_size, a.value_size, b.value_size
                ),
            ));
        }
        out.push((name, a));
    }
    Ok(out)
}

fn copy(root: &Path, staging: &Path, from: u32, name: &str, shape: sys::MapShape, flags: u64) -> Result<(), Error> {
    let (old, new) = (root.join(name), staging.join(name));
    let a = sys::obj_get(&old).map_err(|e| io_err(root, from, "cannot open pinned map", &old, e))?;
    let b = sys::obj_get(&new).map_err(|e| io_err(root, from, "cannot open pinned map", &new, e))?;
    sys::map_copy(a.as_fd(), b.as_fd(), shape, flags).map_err(|e| io_err(root, from, "cannot copy", &old, e))?;
    Ok(())
}

/// What an ABI between `from` and this one changed in meaning rather than
/// shape, redone on the copied entries.
/// 7: the program's second policy lookup asks `ID_ANY_POD` for a pod peer,
/// where 6 asked `ID_ANY` for every peer; so a rule under `ID_ANY` (every
/// peer) is written under both, as this build's compile writes it.
fn carry_meaning(staging: &Path, from: u32) -> Result<(), Error> {
    if from < 7 {
        let dp = Dataplane::open_pins(staging)?;
        for (m, v) in dp.policy_entries()? {
            if m.identity == ID_ANY {
                dp.set_policy(&PolicyMatch { identity: ID_ANY_POD, ..m }, &v)?;
            }
        }
    }
    Ok(())
}

/// Rename every staged pin over the root's, the ABI map last, then remove
/// the staging directory.
fn take_names(root: &Path, staging: &Path, from: u32) -> Result<(), Error> {
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    for hook in Hook::ALL {
        moves.push((staging.join("progs").join(hook.name()), root.join("progs").join(hook.name())));
    }
    for name in PINNED_MAPS.iter().filter(|n| **n != MAP_ABI) {
        moves.push((staging.join(name), root.join(name)));
    }
    moves.push((staging.join(MAP_ABI), root.join(MAP_ABI)));
    for (a, b) in moves {
        if a.exists() {
            std::fs::rename(&a, &b).map_err(|e| io_err(root, from, "cannot rename", &a, e))?;
        }
    }
    std::fs::remove_dir_all(staging).map_err(|e| io_err(root, from, "cannot remove", staging, e))
}

/// A migration a crash interrupted: finished when it was committed,
/// discarded when not (the root's own pins were not touched then).
pub(crate) fn finish_interrupted(root: &Path) -> Result<(), Error> {
    let staging = root.join(staging_name());
    if !staging.is_dir() {
        return Ok(());
    }
    let from = read_abi(root)?.unwrap_or(0);
    if read_abi(&staging)? == Some(ABI_VERSION) {
        return take_names(root, &staging, from);
    }
    std::fs::remove_dir_all(&staging).map_err(|e| io_err(root, from, "cannot remove", &staging, e))
}
