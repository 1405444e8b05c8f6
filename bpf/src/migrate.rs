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
//!    conversion for it must be written here; then redo what the ABI
//!    between changed in meaning (see [`carry_meaning`]). The links to
//!    Service backends are not carried (they are forgotten whenever
//!    programs are replaced);
//! 3. write the ABI into the staged set (the commit point) and rename each
//!    staged pin over the old one, the ABI map last: the root is this
//!    ABI's, while the pods still run the old programs on the old maps,
//!    which this process holds open;
//! 4. switch every pinned link to the new programs;
//! 5. copy conntrack and endpoints from the old maps once more, adding the
//!    entries the old programs and old CNI binaries created meanwhile (not
//!    their changes to entries copied before), and switch the links again
//!    (a pod an old binary attached meanwhile).
//!
//! Before the commit nothing of the root changed: a failure or a crash
//! leaves the pods on their programs and maps, and the staging directory is
//! removed by the next start. After it, a start that finds the staged set
//! committed finishes the renames; the programs are then another build's
//! and are relinked as any upgrade's (the entries made between the crash
//! and then are lost).

use crate::abi::*;
use crate::dataplane::{read_abi, write_abi, Dataplane, Hook, LoadOptions, Upgrade};
use crate::error::Error;
use crate::policy::PolicyMatch;
use crate::sys;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The ABIs whose pins this build carries over.
pub const MIGRATES_FROM: [u32; 1] = [6];

/// Directories under a root named so are a migration's staged pins.
pub(crate) const STAGING_PREFIX: &str = "migrating-abi-";

fn staging_name() -> String {
    format!("{STAGING_PREFIX}{ABI_VERSION}")
}

fn io_err(root: &Path, from: u32, committed: bool, what: &str, path: &Path, e: std::io::Error) -> Error {
    failed(root, from, committed, format!("{what} {}: {e}", path.display()))
}

fn failed(root: &Path, from: u32, committed: bool, msg: String) -> Error {
    let state = if committed {
        "the new set is committed; the next start of weir-policyd finishes it"
    } else {
        "nothing under the root changed: the pods keep the programs and maps they had"
    };
    Error::Migrate { root: root.to_path_buf(), from, to: ABI_VERSION, msg, state: state.into() }
}

/// Carry the pins under `root`, written by ABI `from`, into this build's.
pub(crate) fn migrate(root: &Path, from: u32, opts: LoadOptions) -> Result<Upgrade, Error> {
    let staging = root.join(staging_name());
    let old = match stage(root, &staging, from, opts) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let committed = |e: Error| match e {
        Error::Migrate { msg, .. } => failed(root, from, true, msg),
        e => failed(root, from, true, e.to_string()),
    };
    write_abi(&staging, ABI_VERSION).map_err(committed)?;
    take_names(root, &staging, from).map_err(committed)?;
    let mut up = Dataplane::relink(root).map_err(committed)?;
    for (name, old_fd, shape) in &old {
        let new = root.join(name);
        let new_fd = sys::obj_get(&new).map_err(|e| io_err(root, from, true, "cannot open pinned map", &new, e))?;
        sys::map_copy(old_fd.as_fd(), new_fd.as_fd(), *shape, sys::BPF_NOEXIST)
            .map_err(|e| io_err(root, from, true, "cannot copy again into", &new, e))?;
    }
    let again = Dataplane::relink(root).map_err(committed)?;
    up.links_updated = up.links_updated.max(again.links_updated);
    up.migrated_from = Some(from);
    Ok(up)
}

/// Steps 1 and 2: the staged set, filled. Returns the old maps to copy
/// again after the switch, held open (their names are the new set's once
/// it takes them).
fn stage(
    root: &Path,
    staging: &Path,
    from: u32,
    opts: LoadOptions,
) -> Result<Vec<(&'static str, OwnedFd, sys::MapShape)>, Error> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(|e| io_err(root, from, false, "cannot remove", staging, e))?;
    }
    weir_common::trust::ensure_dir(staging)?;
    Dataplane::load_pins(staging, opts)?;
    let shared = shared_maps(root, staging, from)?;
    for (name, shape) in &shared {
        copy(root, staging, from, name, *shape)?;
    }
    carry_meaning(staging, from)?;
    let mut old = Vec::new();
    for (name, shape) in shared.iter().filter(|(n, _)| [MAP_CT, MAP_ENDPOINTS].contains(n)) {
        let path = root.join(name);
        let fd = sys::obj_get(&path).map_err(|e| io_err(root, from, false, "cannot open pinned map", &path, e))?;
        old.push((*name, fd, *shape));
    }
    Ok(old)
}

/// The maps both sets pin that carry state, with their shape; an error if
/// one changed shape and nothing here converts it.
fn shared_maps(root: &Path, staging: &Path, from: u32) -> Result<Vec<(&'static str, sys::MapShape)>, Error> {
    let mut out = Vec::new();
    for name in PINNED_MAPS {
        let (old, new) = (root.join(name), staging.join(name));
        if [MAP_ABI, MAP_SERVICE_OPENS, MAP_SERVICE_BACKENDS].contains(&name) || !old.exists() {
            continue;
        }
        let shape = |p: &Path| -> Result<sys::MapShape, Error> {
            let fd = sys::obj_get(p).map_err(|e| io_err(root, from, false, "cannot open pinned map", p, e))?;
            sys::map_shape(fd.as_fd()).map_err(|e| io_err(root, from, false, "cannot read the shape of", p, e))
        };
        let (a, b) = (shape(&old)?, shape(&new)?);
        if a.map_type == sys::BPF_MAP_TYPE_RINGBUF {
            continue; // events in flight are not state
        }
        if (a.map_type, a.key_size, a.value_size) != (b.map_type, b.key_size, b.value_size) {
            return Err(failed(
                root,
                from,
                false,
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

fn copy(root: &Path, staging: &Path, from: u32, name: &str, shape: sys::MapShape) -> Result<(), Error> {
    let (old, new) = (root.join(name), staging.join(name));
    let a = sys::obj_get(&old).map_err(|e| io_err(root, from, false, "cannot open pinned map", &old, e))?;
    let b = sys::obj_get(&new).map_err(|e| io_err(root, from, false, "cannot open pinned map", &new, e))?;
    sys::map_copy(a.as_fd(), b.as_fd(), shape, 0).map_err(|e| io_err(root, from, false, "cannot copy", &old, e))?;
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
            std::fs::rename(&a, &b).map_err(|e| io_err(root, from, true, "cannot rename", &a, e))?;
        }
    }
    std::fs::remove_dir_all(staging).map_err(|e| io_err(root, from, true, "cannot remove", staging, e))
}

/// A migration a crash interrupted: its renames finished when it was
/// committed, its staged set removed when not (the root's own pins were
/// not touched then). The caller then finds this ABI's pins with another
/// build's marker and relinks, or the old ABI's pins and migrates again.
pub(crate) fn finish_interrupted(root: &Path) -> Result<(), Error> {
    let staging = root.join(staging_name());
    if !staging.is_dir() {
        return Ok(());
    }
    let from = read_abi(root)?.unwrap_or(0);
    if read_abi(&staging)? == Some(ABI_VERSION) {
        return take_names(root, &staging, from);
    }
    std::fs::remove_dir_all(&staging).map_err(|e| io_err(root, from, false, "cannot remove", &staging, e))
}

/// A migration stopped by a crash, for tests: steps 1 and 2 done, and the
/// commit when `commit`; nothing runs on the staged set. The caller holds
/// the root's lock.
pub(crate) fn stage_only(root: &Path, commit: bool) -> Result<(), Error> {
    let from = read_abi(root)?.unwrap_or(0);
    let staging = root.join(staging_name());
    stage(root, &staging, from, LoadOptions::default())?;
    if commit {
        write_abi(&staging, ABI_VERSION)?;
    }
    Ok(())
}
