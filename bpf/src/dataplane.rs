use crate::abi::*;
use crate::addr;
use crate::error::Error;
use crate::events::EventReader;
use crate::lpm::LpmPair;
use crate::policy::{Direction, PolicyMatch};
use crate::sys;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuHashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use ipnet::IpNet;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use weir_common::trust;

/// The programs and where they attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress of the host veth: what the pod sends.
    FromPod,
    /// tc egress of the host veth: what the pod receives.
    ToPod,
    /// tc egress of the device traffic to other nodes leaves by (the VXLAN
    /// device, or the underlay with host-gw): local pods' post-DNAT
    /// packets bound for another node, judged against their egress.
    LeaveNode,
}

impl Hook {
    /// Every program the object holds (loaded and pinned together).
    pub const ALL: [Hook; 3] = [Hook::FromPod, Hook::ToPod, Hook::LeaveNode];
    /// The programs on a pod's host veth.
    pub const POD: [Hook; 2] = [Hook::FromPod, Hook::ToPod];
    pub fn name(self) -> &'static str {
        match self {
            Hook::FromPod => PROG_FROM_POD,
            Hook::ToPod => PROG_TO_POD,
            Hook::LeaveNode => PROG_LEAVE_NODE,
        }
    }
    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod => TcAttachType::Ingress,
            Hook::ToPod | Hook::LeaveNode => TcAttachType::Egress,
        }
    }
    /// BPF_TCX_INGRESS / BPF_TCX_EGRESS
    fn tcx_attach_type(self) -> u32 {
        match self {
            Hook::FromPod => 46,
            Hook::ToPod | Hook::LeaveNode => 47,
        }
    }
    fn tc_side(self) -> crate::tc::Side {
        match self.attach_type() {
            TcAttachType::Ingress => crate::tc::Side::Ingress,
            _ => crate::tc::Side::Egress,
        }
    }
    /// Where its links are pinned: pods' under `links/`, the node devices'
    /// under `node-links/` (so nothing that lists endpoints sees them).
    fn links_dir(self) -> &'static str {
        match self {
            Hook::FromPod | Hook::ToPod => "links",
            Hook::LeaveNode => "node-links",
        }
    }
}

/// How the programs attach to a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX where the kernel has it (>= 6.6), tc otherwise.
    #[default]
    Auto,
    /// A TCX link (BPF_LINK_CREATE), pinned under `links/`.
    Tcx,
    /// The clsact qdisc and a direct-action cls_bpf filter, through rtnetlink.
    Tc,
}

impl AttachMode {
    /// The names configuration uses: "auto", "tcx", "tc".
    pub const NAMES: [&'static str; 3] = ["auto", "tcx", "tc"];

    pub fn parse(s: &str) -> Option<AttachMode> {
        match s {
            "auto" => Some(AttachMode::Auto),
            "tcx" => Some(AttachMode::Tcx),
            "tc" => Some(AttachMode::Tc),
            _ => None,
        }
    }

    /// Auto made concrete for this kernel.
    pub fn resolve(self) -> AttachMode {
        match self {
            AttachMode::Auto => {
                let tcx = aya::util::KernelVersion::current()
                    .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                    .unwrap_or(true);
                if tcx {
                    AttachMode::Tcx
                } else {
                    AttachMode::Tc
                }
            }
            m => m,
        }
    }
}

/// The directories of pins under a root: programs, pods' links, node
/// devices' links.
pub const PIN_DIRS: [&str; 3] = ["progs", "links", "node-links"];

/// The prefix of a build marker's name under a root.
const BUILD_MARKER_PREFIX: &str = "build-";

/// Whether `name`, an entry directly under a bpffs root, is one Weir puts
/// there (a map pin, a directory of pins, a build marker, a migration's
/// staged set): what an uninstall may remove, leaving anything else to its
/// owner.
pub fn is_weirs_root_entry(name: &str) -> bool {
    PINNED_MAPS.contains(&name)
        || PIN_DIRS.contains(&name)
        || name.starts_with(BUILD_MARKER_PREFIX)
        || name.starts_with(crate::migrate::STAGING_PREFIX)
}

fn link_path(root: &Path, ifindex: u32, hook: Hook) -> PathBuf {
    root.join(hook.links_dir()).join(format!("{ifindex}_{}", hook.name()))
}

fn tc_marker_path(root: &Path, ifindex: u32, hook: Hook) -> PathBuf {
    root.join(hook.links_dir()).join(format!("{ifindex}_{}{TC_MARKER_SUFFIX}", hook.name()))
}

fn detach_tcx(root: &Path, ifindex: u32, hook: Hook) -> Result<(), Error> {
    let path = link_path(root, ifindex, hook);
    match PinnedLink::from_pin(&path) {
        Ok(link) => {
            // dropping the last reference detaches it
            drop(link.unpin().map_err(|e| Error::io("cannot unpin link", &path, e))?);
        }
        Err(_) if !path.exists() => {}
        Err(e) => return Err(Error::io("cannot open pinned link", &path, io::Error::other(e))),
    }
    Ok(())
}

/// Remove the filter (if the device is still in this namespace), then its
/// record.
fn detach_tc(root: &Path, ifindex: u32, hook: Hook) -> Result<(), Error> {
    let marker = tc_marker_path(root, ifindex, hook);
    let ours = crate::tc::weir_filter(ifindex, hook.tc_side())
        .map_err(|e| Error::io("cannot list the tc filters", &marker, e))?
        .is_some_and(|f| f.name == hook.name());
    if ours {
        crate::tc::remove_filter(ifindex, hook.tc_side())
            .map_err(|e| Error::io("cannot remove the cls_bpf filter", &marker, e))?;
    }
    match std::fs::remove_dir(&marker) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("cannot remove the tc record", &marker, e)),
        _ => Ok(()),
    }
}

/// ifindexes that have pinned TCX links or recorded tc filters in
/// `links_dir` under `root`.
fn linked_ifindexes(root: &Path, links_dir: &str) -> Result<Vec<u32>, Error> {
    let dir = root.join(links_dir);
    let mut v: Vec<u32> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.split('_').next()?.parse().ok()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    v.sort();
    v.dedup();
    Ok(v)
}

/// Every program attached through the pins under `root` taken off, by
/// its link pin or tc record alone: no map is opened, so a root another
/// build's ABI made, or one half removed, is still detached (uninstall).
/// Returns each (ifindex, hook) taken off, and each that could not be,
/// with why; the rest go on regardless.
#[allow(clippy::type_complexity)]
pub fn detach_all(root: &Path) -> Result<(Vec<(u32, Hook)>, Vec<(u32, Hook, Error)>), Error> {
    let _lock = RootLock::take(root)?;
    let (mut detached, mut left) = (Vec::new(), Vec::new());
    for hook in Hook::ALL {
        for ifindex in linked_ifindexes(root, hook.links_dir())? {
            let (link, marker) = (link_path(root, ifindex, hook), tc_marker_path(root, ifindex, hook));
            if !fs_entry_exists(&link) && !fs_entry_exists(&marker) {
                continue;
            }
            match detach_tcx(root, ifindex, hook).and_then(|()| detach_tc(root, ifindex, hook)) {
                Ok(()) => detached.push((ifindex, hook)),
                Err(e) => left.push((ifindex, hook, e)),
            }
        }
    }
    Ok((detached, left))
}

/// The ifindexes in the pinned endpoints map under `root`, opening that
/// map alone, by its keys alone: a root another build's ABI made, or one
/// half removed, still tells whether pods use it (uninstall).
pub fn pinned_endpoint_ifindexes(root: &Path) -> Result<Vec<u32>, Error> {
    let path = root.join(MAP_ENDPOINTS);
    let fd = sys::obj_get(&path).map_err(|e| Error::io("cannot open pinned map", &path, e))?;
    sys::map_u32_keys(fd.as_fd()).map_err(|e| Error::io("cannot list the keys of", &path, e))
}

/// The suffix of a tc filter's record beside the TCX pins.
const TC_MARKER_SUFFIX: &str = "-tc";

/// A conntrack entry with its expiry relative to now.
#[derive(Clone, Debug)]
pub struct CtEntry {
    /// The flow's tuple as its opener sent it (not the stored order).
    pub key: CtKey,
    pub value: CtValue,
    /// Nanoseconds until expiry; 0 when already expired (awaiting reuse).
    pub expires_in_ns: u64,
}

impl CtEntry {
    pub fn src(&self) -> std::net::IpAddr {
        self.key.src()
    }
    pub fn dst(&self) -> std::net::IpAddr {
        self.key.dst()
    }
}

/// Empty the maps that link SERVICE entries to remote backends, when a
/// build replaces another's programs. An older build's programs neither
/// write nor remove links, so a link kept across a downgrade and back
/// could name an earlier flow's backend; without links, flows opened
/// before the upgrade are cut where their backend entry is seen, as
/// unlinked ones are (docs/architecture-dataplane.md).
fn forget_service_links(root: &Path) -> Result<(), Error> {
    fn clear<K: aya::Pod, V: aya::Pod>(root: &Path, name: &str) -> Result<(), Error> {
        let path = root.join(name);
        let mut m: HashMap<MapData, K, V> =
            HashMap::try_from(open_map(root, name)?).map_err(map_err(&path, "check key/value sizes"))?;
        let keys: Vec<K> = m.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            match m.remove(&k) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(&path, "delete")(e)),
            }
        }
        Ok(())
    }
    clear::<ServiceOpenKey, ServiceOpen>(root, MAP_SERVICE_OPENS)?;
    clear::<CtKey, ServiceBackend>(root, MAP_SERVICE_BACKENDS)
}

/// A handle on the pinned dataplane under one bpffs root. Cheap to open;
/// every method is a map or link operation on the pins, so any number of
/// processes may hold one at the same time.
pub struct Dataplane {
    root: PathBuf,
    ipcache: LpmPair<IpcacheKey, IpcacheValue>,
    endpoints: Mutex<HashMap<MapData, u32, Endpoint>>,
    policy: LpmPair<PolicyKey, PolicyValue>,
    cidr: Mutex<LpmTrie<MapData, CidrKey, CidrValue>>,
    ct: Mutex<HashMap<MapData, CtKey, CtValue>>,
    counters: Mutex<PerCpuHashMap<MapData, CounterKey, CounterValue>>,
    config: Mutex<Array<MapData, Config>>,
}

/// flock on the root directory (bpffs holds no regular files, but a
/// directory fd can carry a lock). Released on drop. Loading (the CNI
/// binary's ADD) and attaching take it; so does uninstall, to see an ADD
/// through before it looks for users a last time.
pub struct RootLock(#[allow(dead_code)] File);

impl RootLock {
    /// Block until no one else holds it.
    pub fn take(root: &Path) -> Result<Self, Error> {
        let f = File::open(root).map_err(|e| Error::io("cannot open bpffs root", root, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io("cannot lock bpffs root", root, io::Error::last_os_error()));
        }
        Ok(RootLock(f))
    }
}

pub(crate) fn map_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(MapError) -> Error + 'a {
    move |source| Error::Map { path: path.to_path_buf(), op, source: Box::new(source) }
}

pub(crate) fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn ipcache_key(net: IpNet) -> Key<IpcacheKey> {
    let (len, addr) = addr::net_to_prefix(net);
    Key::new(len, IpcacheKey { addr })
}

fn cidr_key(endpoint: u32, direction: Direction, net: IpNet) -> Key<CidrKey> {
    let (len, addr) = addr::net_to_prefix(net);
    Key::new(CIDR_FIXED_BITS + len, CidrKey { endpoint, direction: direction.as_u8(), pad: [0; 3], addr })
}

pub(crate) fn open_map(root: &Path, name: &str) -> Result<Map, Error> {
    let path = root.join(name);
    if !path.exists() {
        return Err(Error::NotLoaded { root: root.to_path_buf(), path });
    }
    let data = MapData::from_pin(&path).map_err(map_err(&path, "open pinned map"))?;
    Map::from_map_data(data).map_err(map_err(&path, "open pinned map"))
}

macro_rules! typed {
    ($root:expr, $name:expr, $ty:ty) => {{
        let m = open_map($root, $name)?;
        let path = $root.join($name);
        Mutex::new(<$ty>::try_from(m).map_err(map_err(&path, "check key/value sizes"))?)
    }};
}

/// The nearest existing ancestor of `root` must be on bpffs. Mounting is
/// advised only for the standard mount point: a root elsewhere (say under
/// /tmp) is a wrong setting, not a missing mount.
fn check_bpffs(root: &Path) -> Result<(), Error> {
    let std_mount = Path::new("/sys/fs/bpf");
    let mut p = root;
    loop {
        if p.exists() {
            let t = sys::fs_type(p).map_err(|e| Error::io("cannot statfs", p, e))?;
            if t == sys::BPF_FS_MAGIC {
                return Ok(());
            }
            if root.starts_with(std_mount) {
                return Err(Error::BpffsNotMounted { path: std_mount.to_path_buf() });
            }
            return Err(Error::NotOnBpffs { root: root.to_path_buf(), found: p.to_path_buf() });
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return Err(Error::BpffsNotMounted { path: root.to_path_buf() }),
        }
    }
}

/// The root and the directories of pins below it, each root's own (see
/// `weir_common::trust`): whoever can remove a link pin can switch off
/// enforcement for that pod.
fn check_trusted(root: &Path) -> Result<(), Error> {
    trust::check_dir(root)?;
    for sub in PIN_DIRS {
        let dir = root.join(sub);
        if fs_entry_exists(&dir) {
            trust::check_subdir(&dir)?;
        }
    }
    Ok(())
}

/// Unlike `exists()`, a symlink (even a dangling one) counts as there, so
/// it is checked, and refused.
fn fs_entry_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// The verifier gives up with EAGAIN when a signal reaches the loading
/// thread mid-verification (a busy machine makes that likelier: the
/// verification takes longer). Nothing was loaded then, so try again.
fn load_program(prog: &mut SchedClassifier) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

pub(crate) fn read_abi(root: &Path) -> Result<Option<u32>, Error> {
    let path = root.join(MAP_ABI);
    if !path.exists() {
        return Ok(None);
    }
    let m = open_map(root, MAP_ABI)?;
    let a: Array<MapData, u32> = Array::try_from(m).map_err(map_err(&path, "open"))?;
    Ok(Some(a.get(&0, 0).map_err(map_err(&path, "read"))?))
}

/// Write `version` as the ABI of the pins under `dir`: last, once they are
/// complete.
pub(crate) fn write_abi(dir: &Path, version: u32) -> Result<(), Error> {
    let path = dir.join(MAP_ABI);
    let mut a: Array<MapData, u32> = Array::try_from(open_map(dir, MAP_ABI)?).map_err(map_err(&path, "open"))?;
    a.set(0, version, 0).map_err(map_err(&path, "write ABI version"))
}

fn check_abi(root: &Path) -> Result<(), Error> {
    match read_abi(root)? {
        Some(v) if v == ABI_VERSION => Ok(()),
        Some(0) | None => Err(Error::NotLoaded { root: root.to_path_buf(), path: root.join(MAP_ABI) }),
        Some(found) => Err(Error::AbiMismatch { root: root.to_path_buf(), found, expected: ABI_VERSION }),
    }
}

/// What [`Dataplane::load_or_upgrade`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Another build's programs were pinned and this build's replaced them.
    pub replaced: bool,
    /// Pinned links switched to the new programs.
    pub links_updated: usize,
    /// Pinned links whose device is gone, left as they were.
    pub links_defunct: usize,
    /// The event ring was recreated at this loader's size: (old, new) bytes.
    pub events_resized: Option<(u32, u32)>,
    /// Pins of this older map ABI were carried into this build's.
    pub migrated_from: Option<u32>,
}

/// What a loader asks of the maps it creates. Pinned maps keep what they
/// were created with, except the event ring, which
/// [`Dataplane::load_or_upgrade_with`] recreates at this size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// `weir_events`' size in bytes: a power of two, at least a page.
    pub events_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { events_bytes: EVENTS_BYTES }
    }
}

impl LoadOptions {
    /// A ring size the kernel takes: a power of two from 4 KiB to 1 GiB.
    pub fn with_events_bytes(bytes: u64) -> Result<LoadOptions, Error> {
        if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
            return Err(Error::Invalid {
                field: "event ring size",
                msg: format!("{bytes} bytes: give a power of two from 4096 to 1073741824 (e.g. 1048576)"),
            });
        }
        Ok(LoadOptions { events_bytes: bytes as u32 })
    }
}

/// This build's identity in a bpffs root: a 64-bit FNV-1a of the embedded
/// object, so two builds with the same programs are one build. Hashed by
/// the build script, not per process.
pub fn build_id() -> &'static str {
    env!("WEIR_BUILD_ID")
}

/// `<root>/build-<id>`: an empty directory naming the build whose programs
/// are pinned (bpffs holds only pins and directories).
fn build_marker(root: &Path, build: &str) -> PathBuf {
    root.join(format!("{BUILD_MARKER_PREFIX}{build}"))
}

/// Written after the programs are pinned (and, on an upgrade, after the
/// links are switched), so an upgrade that dies half way is redone.
fn set_build_marker(root: &Path, build: &str) -> Result<(), Error> {
    let keep = build_marker(root, build);
    for e in std::fs::read_dir(root).map_err(|e| Error::io("cannot list", root, e))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(BUILD_MARKER_PREFIX) && e.path() != keep {
            std::fs::remove_dir(e.path())
                .map_err(|err| Error::io("cannot remove the old build marker", e.path(), err))?;
        }
    }
    Ok(trust::ensure_dir(&keep)?)
}

impl Dataplane {
    /// Open the pinned dataplane under `root`, loading the embedded object
    /// and pinning its maps and programs first if they are absent.
    /// Idempotent and safe under concurrent callers (flock on the root).
    /// Programs another build pinned (same ABI) are kept: the CNI binary of
    /// an older or newer build must not swap them back and forth; weir-policyd
    /// replaces them ([`Dataplane::load_or_upgrade`]).
    pub fn load_or_open(root: &Path) -> Result<Dataplane, Error> {
        Self::prepare(root, build_id(), false, LoadOptions::default())?;
        Self::open_pins(root)
    }

    /// As [`Dataplane::load_or_open`], and when the pinned programs are
    /// another build's (same map ABI), this build's replace them: they are
    /// loaded and pinned, then every pinned link (pods' and node devices')
    /// is switched to them with one `BPF_LINK_UPDATE` each, so every packet
    /// is judged by the old program or the new one, and the maps (and so
    /// conntrack) carry on. weir-policyd calls this at start, which is how
    /// a DaemonSet rollout upgrades the programs of running pods.
    pub fn load_or_upgrade(root: &Path) -> Result<(Dataplane, Upgrade), Error> {
        Self::load_or_upgrade_with(root, LoadOptions::default())
    }

    /// [`Dataplane::load_or_upgrade`] asking for `opts`. An event ring of
    /// another size is replaced make-before-break: its pin is removed, the
    /// programs are loaded with a new ring of this size and every link is
    /// switched to them; events the old programs emit in between go to the
    /// old ring, which nobody reads any more.
    pub fn load_or_upgrade_with(root: &Path, opts: LoadOptions) -> Result<(Dataplane, Upgrade), Error> {
        let upgrade = Self::prepare(root, build_id(), true, opts)?;
        Ok((Self::open_pins(root)?, upgrade))
    }

    /// The pinned event ring's size in bytes (None: not pinned).
    pub fn events_bytes(root: &Path) -> Result<Option<u32>, Error> {
        let path = root.join(MAP_EVENTS);
        if !path.exists() {
            return Ok(None);
        }
        let m = MapData::from_pin(&path).map_err(map_err(&path, "open pinned map"))?;
        Ok(Some(m.info().map_err(map_err(&path, "read map info"))?.max_entries()))
    }

    /// A migration from the ABI the pins under `root` say, stopped as a
    /// crash would stop it: before its commit, or just after (`commit`).
    #[doc(hidden)]
    pub fn stage_migration_as_if_interrupted(root: &Path, commit: bool) -> Result<(), Error> {
        let _lock = RootLock::take(root)?;
        crate::migrate::stage_only(root, commit)
    }

    /// [`Dataplane::load_or_upgrade`] as if this build's identity were
    /// `build`: lets a test play the next build with the same object.
    #[doc(hidden)]
    pub fn load_or_upgrade_as(root: &Path, build: &str) -> Result<(Dataplane, Upgrade), Error> {
        let upgrade = Self::prepare(root, build, true, LoadOptions::default())?;
        Ok((Self::open_pins(root)?, upgrade))
    }

    fn prepare(root: &Path, build: &str, upgrade: bool, opts: LoadOptions) -> Result<Upgrade, Error> {
        check_bpffs(root)?;
        trust::ensure_dir(root)?;
        check_trusted(root)?;
        let _lock = RootLock::take(root)?;
        if upgrade {
            crate::migrate::finish_interrupted(root)?;
        }
        let progs_pinned = Hook::ALL.iter().all(|h| root.join("progs").join(h.name()).exists());
        match read_abi(root)? {
            Some(v) if v == ABI_VERSION && progs_pinned => {
                let ring = if upgrade { Self::events_bytes(root)?.filter(|b| *b != opts.events_bytes) } else { None };
                if (!upgrade || build_marker(root, build).exists()) && ring.is_none() {
                    return Ok(Upgrade::default());
                }
                if ring.is_some() {
                    let pin = root.join(MAP_EVENTS);
                    std::fs::remove_file(&pin).map_err(|e| Error::io("cannot replace pin", &pin, e))?;
                }
                Self::load(root, opts)?;
                forget_service_links(root)?;
                let mut up = Self::relink(root)?;
                up.events_resized = ring.map(|old| (old, opts.events_bytes));
                set_build_marker(root, build)?;
                Ok(up)
            }
            // Carried over by weir-policyd (upgrade); a CNI binary waits for it.
            Some(v) if v != 0 && v != ABI_VERSION && upgrade && crate::migrate::MIGRATES_FROM.contains(&v) => {
                let up = crate::migrate::migrate(root, v, opts)?;
                set_build_marker(root, build)?;
                Ok(up)
            }
            Some(v) if v != 0 && v != ABI_VERSION => {
                Err(Error::AbiMismatch { root: root.to_path_buf(), found: v, expected: ABI_VERSION })
            }
            // absent, or a load that died before it finished (version is
            // written last): (re)load; existing map pins are reused.
            _ => {
                Self::load(root, opts)?;
                set_build_marker(root, build)?;
                Ok(Upgrade::default())
            }
        }
    }

    fn load(root: &Path, opts: LoadOptions) -> Result<(), Error> {
        for dir in [&root.join("links"), &root.join("node-links")] {
            trust::ensure_dir(dir)?;
        }
        Self::load_pins(root, opts)?;
        write_abi(root, ABI_VERSION)
    }

    /// Load the object with its maps pinned under `dir` (pins there
    /// reused) and its programs pinned under `dir/progs`. The ABI version
    /// is left for the caller to write: it says the pins are complete.
    pub(crate) fn load_pins(dir: &Path, opts: LoadOptions) -> Result<(), Error> {
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(dir)
            // Taken only where the ring is created; a pinned one is reused.
            .map_max_entries(MAP_EVENTS, opts.events_bytes)
            .load(crate::OBJECT)
            .map_err(|source| Error::Load { root: dir.to_path_buf(), source: Box::new(source) })?;
        let progs = dir.join("progs");
        trust::ensure_dir(&progs)?;
        for hook in Hook::ALL {
            let name = hook.name();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Invalid { field: "eBPF object", msg: format!("no program {name}") })?
                .try_into()
                .map_err(|source| Error::Program { name: name.into(), source: Box::new(source) })?;
            load_program(prog).map_err(|source| Error::Program { name: name.into(), source: Box::new(source) })?;
            let pin = progs.join(name);
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(|e| Error::io("cannot replace pin", &pin, e))?;
            }
            prog.pin(&pin).map_err(|e| Error::io("cannot pin program", &pin, io::Error::other(e)))?;
        }
        Ok(())
    }

    /// Switch every pinned link under `root` to the program now pinned for
    /// its hook. A link whose device is gone (defunct) is left for GC.
    pub(crate) fn relink(root: &Path) -> Result<Upgrade, Error> {
        let mut up = Upgrade { replaced: true, ..Upgrade::default() };
        for hook in Hook::ALL {
            let prog_pin = root.join("progs").join(hook.name());
            let prog = sys::obj_get(&prog_pin).map_err(|e| Error::io("cannot open pinned program", &prog_pin, e))?;
            let dir = root.join(hook.links_dir());
            let entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot list", dir, e)),
            };
            let suffix = format!("_{}", hook.name());
            let tc_suffix = format!("{suffix}{TC_MARKER_SUFFIX}");
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(ifindex) = name.strip_suffix(&tc_suffix).and_then(|i| i.parse::<u32>().ok()) {
                    if Self::retarget_tc(ifindex, hook, prog.as_fd())
                        .map_err(|e| Error::io("cannot switch the tc filter to the new program", dir.join(&name), e))?
                    {
                        up.links_updated += 1;
                    } else {
                        up.links_defunct += 1;
                    }
                    continue;
                }
                if !name.ends_with(&suffix) {
                    continue;
                }
                let path = e.path();
                let link = sys::obj_get(&path).map_err(|e| Error::io("cannot open pinned link", &path, e))?;
                match sys::link_update(link.as_fd(), prog.as_fd()) {
                    Ok(()) => up.links_updated += 1,
                    // ENOLINK: the device went away; its pin is GC's.
                    Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => up.links_defunct += 1,
                    Err(e) => return Err(Error::io("cannot switch the link to the new program", &path, e)),
                }
            }
        }
        Ok(up)
    }

    /// Replace the program of Weir's filter on the hook of `ifindex`, in the
    /// caller's network namespace (cls_bpf swaps it in one RCU update: no
    /// packet goes unjudged). False when the filter is not there (device
    /// gone, or in another namespace): left for GC, like a defunct link.
    fn retarget_tc(ifindex: u32, hook: Hook, prog: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
        if crate::tc::weir_filter(ifindex, hook.tc_side())?.is_none_or(|f| f.name != hook.name()) {
            return Ok(false);
        }
        match crate::tc::set_filter(ifindex, hook.tc_side(), prog, hook.name(), false) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Open the pinned dataplane under `root`; the pins must exist.
    pub fn open(root: &Path) -> Result<Dataplane, Error> {
        check_bpffs(root)?;
        check_trusted(root)?;
        check_abi(root)?;
        Self::open_pins(root)
    }

    /// The pins of a root already checked (by [`Dataplane::open`], or by
    /// `prepare`, which also made sure the ABI is ours).
    ///
    /// Every map is opened here, none on first use, though a pod start
    /// uses two of them: a handle must keep the maps of the ABI it checked.
    /// An ABI migration renames a new set's pins over these while a CNI
    /// binary of the old build may be in the middle of an ADD; that binary
    /// must go on writing the old maps, which the migration copies again
    /// after its commit (`migrate.rs`, step 5), never the new ones in the
    /// old layout.
    pub(crate) fn open_pins(root: &Path) -> Result<Dataplane, Error> {
        for hook in Hook::POD {
            let p = root.join("progs").join(hook.name());
            if !p.exists() {
                return Err(Error::NotLoaded { root: root.to_path_buf(), path: p });
            }
        }
        Ok(Dataplane {
            root: root.to_path_buf(),
            ipcache: LpmPair::open(root, MAP_IPCACHE, MAP_IPCACHE_EXACT, IPCACHE_FULL_BITS)?,
            endpoints: typed!(root, MAP_ENDPOINTS, HashMap<MapData, u32, Endpoint>),
            policy: LpmPair::open(root, MAP_POLICY, MAP_POLICY_EXACT, POLICY_FULL_BITS)?,
            cidr: typed!(root, MAP_CIDR, LpmTrie<MapData, CidrKey, CidrValue>),
            ct: typed!(root, MAP_CT, HashMap<MapData, CtKey, CtValue>),
            counters: typed!(root, MAP_COUNTERS, PerCpuHashMap<MapData, CounterKey, CounterValue>),
            config: typed!(root, MAP_CONFIG, Array<MapData, Config>),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn prog_path(&self, hook: Hook) -> PathBuf {
        self.root.join("progs").join(hook.name())
    }

    fn link_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        link_path(&self.root, ifindex, hook)
    }

    fn tc_marker_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        tc_marker_path(&self.root, ifindex, hook)
    }

    fn program(&self, hook: Hook) -> Result<SchedClassifier, Error> {
        SchedClassifier::from_pin(self.prog_path(hook))
            .map_err(|source| Error::Program { name: hook.name().into(), source: Box::new(source) })
    }

    /// The kernel id of the program pinned for `hook`: the one new
    /// attachments get.
    pub fn program_id(&self, hook: Hook) -> Result<u32, Error> {
        self.prog_id(hook)
    }

    /// The kernel id of the program `hook` runs on `ifindex` through our
    /// pinned link or our tc filter; None without either.
    pub fn attached_program_id(&self, ifindex: u32, hook: Hook) -> Result<Option<u32>, Error> {
        if let Some(i) = self.link_state(&self.link_path(ifindex, hook))? {
            return Ok(Some(i.prog_id));
        }
        if !fs_entry_exists(&self.tc_marker_path(ifindex, hook)) {
            return Ok(None);
        }
        self.tc_program_id(ifindex, hook)
    }

    fn prog_id(&self, hook: Hook) -> Result<u32, Error> {
        let p = self.prog_path(hook);
        let fd = sys::obj_get(&p).map_err(|e| Error::io("cannot open pinned program", &p, e))?;
        sys::obj_id(fd.as_fd()).map_err(|e| Error::io("cannot read program info", &p, e))
    }

    /// The live state of a pinned link: Some(info) when the pin exists.
    fn link_state(&self, path: &Path) -> Result<Option<sys::LinkInfo>, Error> {
        match sys::obj_get(path) {
            Ok(fd) => Ok(Some(sys::link_info(fd.as_fd()).map_err(|e| Error::io("cannot read link info", path, e))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot open pinned link", path, e)),
        }
    }

    fn hook_attached(&self, ifindex: u32, hook: Hook, prog_id: Option<u32>) -> Result<bool, Error> {
        Ok(self.tcx_attached(ifindex, hook, prog_id)? || self.tc_attached(ifindex, hook, prog_id)?)
    }

    fn tcx_attached(&self, ifindex: u32, hook: Hook, prog_id: Option<u32>) -> Result<bool, Error> {
        Ok(match self.link_state(&self.link_path(ifindex, hook))? {
            Some(i) => {
                i.link_type == sys::BPF_LINK_TYPE_TCX
                    && i.ifindex == ifindex
                    && i.attach_type == hook.tcx_attach_type()
                    && prog_id.is_none_or(|p| p == i.prog_id)
            }
            None => false,
        })
    }

    /// Our record of a filter is there and the kernel runs the hook's
    /// program (`prog_id`, or any build's when None) in Weir's filter.
    fn tc_attached(&self, ifindex: u32, hook: Hook, prog_id: Option<u32>) -> Result<bool, Error> {
        let marker = self.tc_marker_path(ifindex, hook);
        if !fs_entry_exists(&marker) {
            return Ok(false);
        }
        Ok(self.tc_program_id(ifindex, hook)?.is_some_and(|id| prog_id.is_none_or(|p| p == id)))
    }

    /// The program in Weir's filter on the hook of `ifindex` (in this
    /// network namespace), if there is one running the hook's program.
    fn tc_program_id(&self, ifindex: u32, hook: Hook) -> Result<Option<u32>, Error> {
        let f = crate::tc::weir_filter(ifindex, hook.tc_side())
            .map_err(|e| Error::io("cannot list the tc filters", self.tc_marker_path(ifindex, hook), e))?;
        Ok(f.filter(|f| f.name == hook.name()).map(|f| f.prog_id))
    }

    /// Attach from_pod (tc ingress) and to_pod (tc egress) to the host veth
    /// `ifindex` in the caller's current network namespace with
    /// [`AttachMode::Auto`]: TCX links pinned under `<root>/links/` so they
    /// outlive the process, or tc filters on kernels without TCX.
    /// Idempotent: a link or filter already running the current program is
    /// kept; a stale one (device gone, older program) is replaced after the
    /// new one is in.
    pub fn attach(&self, ifindex: u32) -> Result<(), Error> {
        self.attach_as(ifindex, AttachMode::Auto)
    }

    /// [`Dataplane::attach`] with a chosen mechanism. Whatever another
    /// mode attached on these hooks is removed once the new one is in.
    pub fn attach_as(&self, ifindex: u32, mode: AttachMode) -> Result<(), Error> {
        self.attach_hooks(ifindex, &Hook::POD, mode)
    }

    /// Attach leave_node to the tc egress of `ifindex`, the device traffic
    /// to other nodes leaves by (VXLAN device, or the underlay with
    /// host-gw), pinned (or, for a tc filter, recorded) under
    /// `<root>/node-links/`. Idempotent, like [`Dataplane::attach`].
    pub fn attach_leave_node(&self, ifindex: u32) -> Result<(), Error> {
        self.attach_leave_node_as(ifindex, AttachMode::Auto)
    }

    pub fn attach_leave_node_as(&self, ifindex: u32, mode: AttachMode) -> Result<(), Error> {
        self.attach_hooks(ifindex, &[Hook::LeaveNode], mode)
    }

    pub fn is_leave_node_attached(&self, ifindex: u32) -> Result<bool, Error> {
        self.hook_attached(ifindex, Hook::LeaveNode, None)
    }

    /// Detach leave_node from `ifindex`; already gone is success.
    pub fn detach_leave_node(&self, ifindex: u32) -> Result<(), Error> {
        self.detach_hooks(ifindex, &[Hook::LeaveNode])
    }

    /// ifindexes leave_node is attached to through our pins.
    pub fn leave_node_ifindexes(&self) -> Result<Vec<u32>, Error> {
        self.linked_ifindexes(Hook::LeaveNode.links_dir())
    }

    fn attach_hooks(&self, ifindex: u32, hooks: &[Hook], mode: AttachMode) -> Result<(), Error> {
        let _lock = RootLock::take(&self.root)?;
        if mode.resolve() == AttachMode::Tcx {
            let ifname = sys::if_name(ifindex).ok_or(Error::NoSuchInterface { ifindex })?;
            for &hook in hooks {
                self.attach_tcx(ifindex, &ifname, hook)?;
                // the hook's tc filter, if an earlier attach put one, goes once TCX is in
                self.detach_tc(ifindex, hook)?;
            }
        } else {
            for &hook in hooks {
                self.attach_tc(ifindex, hook)?;
                self.detach_tcx(ifindex, hook)?;
            }
        }
        Ok(())
    }

    fn attach_tcx(&self, ifindex: u32, ifname: &str, hook: Hook) -> Result<(), Error> {
        let link_path = self.link_path(ifindex, hook);
        let prog_id = self.prog_id(hook)?;
        if self.tcx_attached(ifindex, hook, Some(prog_id))? {
            return Ok(());
        }
        let mut prog = self.program(hook)?;
        let id = prog
            .attach_with_options(ifname, hook.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|source| Error::Program { name: hook.name().into(), source: Box::new(source) })?;
        let link = prog
            .take_link(id)
            .map_err(|source| Error::Program { name: hook.name().into(), source: Box::new(source) })?;
        let fd_link: FdLink =
            link.try_into().map_err(|e| Error::io("cannot take TCX link", &link_path, io::Error::other(e)))?;
        if link_path.exists() {
            // the stale link detaches when its pin goes (the new one is already in)
            std::fs::remove_file(&link_path).map_err(|e| Error::io("cannot remove stale link pin", &link_path, e))?;
        }
        fd_link.pin(&link_path).map_err(|e| Error::io("cannot pin TCX link", &link_path, io::Error::other(e)))?;
        Ok(())
    }

    /// clsact + Weir's cls_bpf filter (see [`crate::tc`]): the filter lives
    /// with the device, so nothing pins it; an empty directory
    /// `<ifindex>_<prog>-tc` (bpffs refuses names with a dot) beside the TCX pins records it for listing and GC.
    /// A filter recorded before and running the pinned program is kept; a
    /// pod's fresh veth has no record, so its attach asks the kernel nothing
    /// before adding the filter.
    fn attach_tc(&self, ifindex: u32, hook: Hook) -> Result<(), Error> {
        let marker = self.tc_marker_path(ifindex, hook);
        let p = self.prog_path(hook);
        let prog = sys::obj_get(&p).map_err(|e| Error::io("cannot open pinned program", &p, e))?;
        let current = fs_entry_exists(&marker) && {
            let id = sys::obj_id(prog.as_fd()).map_err(|e| Error::io("cannot read program info", &p, e))?;
            self.tc_program_id(ifindex, hook)? == Some(id)
        };
        if !current {
            crate::tc::add_clsact(ifindex).map_err(|e| match e.raw_os_error() {
                Some(libc::ENODEV) => Error::NoSuchInterface { ifindex },
                _ => Error::io("cannot add the clsact qdisc", &marker, e),
            })?;
            crate::tc::set_filter(ifindex, hook.tc_side(), prog.as_fd(), hook.name(), true)
                .map_err(|e| Error::io("cannot add the cls_bpf filter", &marker, e))?;
        }
        match std::fs::create_dir(&marker) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                Err(Error::io("cannot record the tc filter", &marker, e))
            }
            _ => Ok(()),
        }
    }

    /// Both programs attached to `ifindex`, through our pinned TCX links or
    /// our tc filters (the kernel's program id compared with the pinned
    /// program's for a filter; a pinned link is ours by construction).
    pub fn is_attached(&self, ifindex: u32) -> Result<bool, Error> {
        for hook in Hook::POD {
            if !self.hook_attached(ifindex, hook, None)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Detach both programs from `ifindex` (unpinning the TCX links,
    /// removing the tc filters). Already gone is success.
    pub fn detach(&self, ifindex: u32) -> Result<(), Error> {
        self.detach_hooks(ifindex, &Hook::POD)
    }

    fn detach_hooks(&self, ifindex: u32, hooks: &[Hook]) -> Result<(), Error> {
        let _lock = RootLock::take(&self.root)?;
        for &hook in hooks {
            self.detach_tcx(ifindex, hook)?;
            self.detach_tc(ifindex, hook)?;
        }
        Ok(())
    }

    fn detach_tcx(&self, ifindex: u32, hook: Hook) -> Result<(), Error> {
        detach_tcx(&self.root, ifindex, hook)
    }

    fn detach_tc(&self, ifindex: u32, hook: Hook) -> Result<(), Error> {
        detach_tc(&self.root, ifindex, hook)
    }

    /// ifindexes that have pinned TCX links or recorded tc filters under
    /// this root.
    pub fn attached_ifindexes(&self) -> Result<Vec<u32>, Error> {
        self.linked_ifindexes(Hook::FromPod.links_dir())
    }

    fn linked_ifindexes(&self, links_dir: &str) -> Result<Vec<u32>, Error> {
        linked_ifindexes(&self.root, links_dir)
    }

    // ---- endpoints ------------------------------------------------------------

    pub fn set_endpoint(&self, ifindex: u32, ep: &Endpoint) -> Result<(), Error> {
        let p = self.root.join(MAP_ENDPOINTS);
        self.endpoints.lock().unwrap().insert(ifindex, ep, 0).map_err(map_err(&p, "update"))
    }

    pub fn endpoint(&self, ifindex: u32) -> Result<Option<Endpoint>, Error> {
        let p = self.root.join(MAP_ENDPOINTS);
        match self.endpoints.lock().unwrap().get(&ifindex, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err(&p, "lookup")(e)),
        }
    }

    pub fn remove_endpoint(&self, ifindex: u32) -> Result<(), Error> {
        let p = self.root.join(MAP_ENDPOINTS);
        match self.endpoints.lock().unwrap().remove(&ifindex) {
            Err(e) if !not_found(&e) => Err(map_err(&p, "delete")(e)),
            _ => Ok(()),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>, Error> {
        let p = self.root.join(MAP_ENDPOINTS);
        let m = self.endpoints.lock().unwrap();
        let mut v = m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(&p, "iterate"))?;
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    // ---- ipcache -------------------------------------------------------------

    pub fn set_ipcache(&self, net: IpNet, value: &IpcacheValue) -> Result<(), Error> {
        self.ipcache.insert(&ipcache_key(net), value)
    }

    /// Longest-prefix match for one address, as the programs see it.
    pub fn ipcache_lookup(&self, ip: std::net::IpAddr) -> Result<Option<IpcacheValue>, Error> {
        self.ipcache.lookup(IpcacheKey { addr: addr::to_bytes(ip) })
    }

    pub fn remove_ipcache(&self, net: IpNet) -> Result<(), Error> {
        self.ipcache.remove(&ipcache_key(net))
    }

    /// Every entry, trie and hash alike, sorted by prefix.
    pub fn ipcache_entries(&self) -> Result<Vec<(IpNet, IpcacheValue)>, Error> {
        let mut v: Vec<_> = self
            .ipcache
            .entries()?
            .into_iter()
            .map(|(k, v)| (addr::prefix_to_net(k.prefix_len(), k.data().addr), v))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        Ok(v)
    }

    // ---- policy --------------------------------------------------------------

    pub fn set_policy(&self, m: &PolicyMatch, value: &PolicyValue) -> Result<(), Error> {
        self.policy.insert(&m.encode(), value)
    }

    pub fn remove_policy(&self, m: &PolicyMatch) -> Result<(), Error> {
        self.policy.remove(&m.encode())
    }

    /// Allow every entry of `matches` with rule id `rule_id`.
    pub fn allow(&self, matches: &[PolicyMatch], rule_id: u32) -> Result<(), Error> {
        matches.iter().try_for_each(|m| self.set_policy(m, &PolicyValue::allow(rule_id)))
    }

    pub fn unallow(&self, matches: &[PolicyMatch]) -> Result<(), Error> {
        matches.iter().try_for_each(|m| self.remove_policy(m))
    }

    /// Every policy entry, trie and hash alike, sorted. A key no
    /// [`PolicyMatch`] encodes to is left out: only a different build's
    /// programs could have written it, and the ABI check refuses those.
    pub fn policy_entries(&self) -> Result<Vec<(PolicyMatch, PolicyValue)>, Error> {
        let mut v: Vec<_> =
            self.policy.entries()?.into_iter().filter_map(|(k, v)| Some((PolicyMatch::decode(&k)?, v))).collect();
        v.sort_by_key(|(m, _)| *m);
        Ok(v)
    }

    // ---- ipBlock classes ---------------------------------------------------------

    pub fn set_cidr(&self, endpoint: u32, direction: Direction, net: IpNet, class: u32) -> Result<(), Error> {
        let p = self.root.join(MAP_CIDR);
        self.cidr
            .lock()
            .unwrap()
            .insert(&cidr_key(endpoint, direction, net), CidrValue { identity: class }, 0)
            .map_err(map_err(&p, "update"))
    }

    pub fn remove_cidr(&self, endpoint: u32, direction: Direction, net: IpNet) -> Result<(), Error> {
        let p = self.root.join(MAP_CIDR);
        match self.cidr.lock().unwrap().remove(&cidr_key(endpoint, direction, net)) {
            Err(e) if !not_found(&e) => Err(map_err(&p, "delete")(e)),
            _ => Ok(()),
        }
    }

    /// (endpoint, direction, prefix, class) of every ipBlock entry (one
    /// with a direction byte no direction has is left out).
    pub fn cidr_entries(&self) -> Result<Vec<(u32, Direction, IpNet, u32)>, Error> {
        let p = self.root.join(MAP_CIDR);
        let m = self.cidr.lock().unwrap();
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, v) = r.map_err(map_err(&p, "iterate"))?;
            let d = k.data();
            let Some(direction) = Direction::from_u8(d.direction) else { continue };
            out.push((
                d.endpoint,
                direction,
                addr::prefix_to_net(k.prefix_len() - CIDR_FIXED_BITS, d.addr),
                v.identity,
            ));
        }
        Ok(out)
    }

    // ---- conntrack -------------------------------------------------------------

    pub fn ct_entries(&self) -> Result<Vec<CtEntry>, Error> {
        let p = self.root.join(MAP_CT);
        let now = sys::monotonic_ns();
        let m = self.ct.lock().unwrap();
        let mut out = Vec::new();
        for r in m.iter() {
            let (key, value) = r.map_err(map_err(&p, "iterate"))?;
            let key = key.as_opened(&value);
            out.push(CtEntry { key, value, expires_in_ns: value.expires_ns.saturating_sub(now) });
        }
        Ok(out)
    }

    /// The SERVICE conntrack entries linked to a backend on another node
    /// (`weir_service_backends`), each key as its flow was opened. Empty
    /// where the map is not pinned (pins an older build of this ABI made).
    pub fn service_backends(&self) -> Result<Vec<(CtKey, ServiceBackend)>, Error> {
        let p = self.root.join(MAP_SERVICE_BACKENDS);
        if !p.exists() {
            return Ok(Vec::new());
        }
        let links: HashMap<MapData, CtKey, ServiceBackend> =
            HashMap::try_from(open_map(&self.root, MAP_SERVICE_BACKENDS)?)
                .map_err(map_err(&p, "check key/value sizes"))?;
        let ct = self.ct.lock().unwrap();
        let mut out = Vec::new();
        for r in links.iter() {
            let (key, backend) = r.map_err(map_err(&p, "iterate"))?;
            // the SERVICE entry says which end opened the flow
            let key = match ct.get(&key, 0) {
                Ok(v) => key.as_opened(&v),
                Err(_) => key,
            };
            out.push((key, backend));
        }
        Ok(out)
    }

    /// Remove every entry `pred` selects (given the tuple as opened);
    /// returns how many.
    pub fn ct_flush_where(&self, pred: impl Fn(&CtKey, &CtValue) -> bool) -> Result<usize, Error> {
        let p = self.root.join(MAP_CT);
        let mut m = self.ct.lock().unwrap();
        let keys: Vec<CtKey> =
            m.iter().filter_map(|r| r.ok()).filter(|(k, v)| pred(&k.as_opened(v), v)).map(|(k, _)| k).collect();
        let mut n = 0;
        for k in keys {
            match m.remove(&k) {
                Ok(()) => n += 1,
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(&p, "delete")(e)),
            }
        }
        Ok(n)
    }

    pub fn ct_flush(&self) -> Result<usize, Error> {
        self.ct_flush_where(|_, _| true)
    }

    /// Forget the flows an endpoint allowed (when it goes away, before its
    /// ifindex can be reused).
    pub fn ct_flush_endpoint(&self, ifindex: u32) -> Result<usize, Error> {
        self.ct_flush_where(|_, v| v.egress_ep == ifindex || v.ingress_ep == ifindex)
    }

    // ---- counters -------------------------------------------------------------

    /// Every counter, summed over CPUs, sorted by key.
    pub fn counters(&self) -> Result<Vec<(CounterKey, CounterValue)>, Error> {
        let p = self.root.join(MAP_COUNTERS);
        let m = self.counters.lock().unwrap();
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, per_cpu) = r.map_err(map_err(&p, "iterate"))?;
            let mut sum = CounterValue::default();
            for v in per_cpu.iter() {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
            out.push((k, sum));
        }
        out.sort_by_key(|(k, _)| (k.endpoint, k.direction, k.reason));
        Ok(out)
    }

    /// One counter summed over CPUs (zero when never hit).
    pub fn counter(&self, endpoint: u32, direction: u8, reason: u8) -> Result<CounterValue, Error> {
        let p = self.root.join(MAP_COUNTERS);
        let key = CounterKey { endpoint, direction, reason, pad: 0 };
        match self.counters.lock().unwrap().get(&key, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().fold(CounterValue::default(), |a, v| CounterValue {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            })),
            Err(e) if not_found(&e) => Ok(CounterValue::default()),
            Err(e) => Err(map_err(&p, "lookup")(e)),
        }
    }

    /// The packets each rule decided (`weir_rule_counters`), summed over
    /// CPUs, sorted by rule id. Empty under a root whose programs predate
    /// the map (it is created when this build's programs are loaded).
    pub fn rule_counters(&self) -> Result<Vec<(u32, CounterValue)>, Error> {
        let p = self.root.join(MAP_RULE_COUNTERS);
        if !p.exists() {
            return Ok(Vec::new());
        }
        let m: PerCpuHashMap<MapData, u32, CounterValue> =
            PerCpuHashMap::try_from(open_map(&self.root, MAP_RULE_COUNTERS)?).map_err(map_err(&p, "open"))?;
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, per_cpu) = r.map_err(map_err(&p, "iterate"))?;
            let sum = per_cpu.iter().fold(CounterValue::default(), |a, v| CounterValue {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            });
            out.push((k, sum));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Events the programs did not emit because their CPU's budget for
    /// the window was spent (`Config::events_per_s`), summed over CPUs. 0
    /// under a root whose programs predate the budget.
    pub fn events_limited(&self) -> Result<u64, Error> {
        let p = self.root.join(MAP_EVENT_BUDGET);
        if !p.exists() {
            return Ok(0);
        }
        let m: aya::maps::PerCpuArray<MapData, EventBudget> =
            aya::maps::PerCpuArray::try_from(open_map(&self.root, MAP_EVENT_BUDGET)?).map_err(map_err(&p, "open"))?;
        let per_cpu = m.get(&0, 0).map_err(map_err(&p, "lookup"))?;
        Ok(per_cpu.iter().map(|b| b.limited).sum())
    }

    /// Drop the counters of rule ids `keep` does not want (rules that are
    /// gone, whose ids may be handed out again).
    pub fn retain_rule_counters(&self, keep: impl Fn(u32) -> bool) -> Result<(), Error> {
        let p = self.root.join(MAP_RULE_COUNTERS);
        if !p.exists() {
            return Ok(());
        }
        let mut m: PerCpuHashMap<MapData, u32, CounterValue> =
            PerCpuHashMap::try_from(open_map(&self.root, MAP_RULE_COUNTERS)?).map_err(map_err(&p, "open"))?;
        let gone: Vec<u32> = m.keys().filter_map(|k| k.ok()).filter(|k| !keep(*k)).collect();
        for k in gone {
            match m.remove(&k) {
                Err(e) if !not_found(&e) => return Err(map_err(&p, "delete")(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Drop an endpoint's counters (when it goes away).
    pub fn remove_counters(&self, endpoint: u32) -> Result<(), Error> {
        let p = self.root.join(MAP_COUNTERS);
        let mut m = self.counters.lock().unwrap();
        let keys: Vec<CounterKey> = m.keys().filter_map(|k| k.ok()).filter(|k| k.endpoint == endpoint).collect();
        for k in keys {
            match m.remove(&k) {
                Err(e) if !not_found(&e) => return Err(map_err(&p, "delete")(e)),
                _ => {}
            }
        }
        Ok(())
    }

    // ---- events, config ----------------------------------------------------------

    /// A reader of the event ring. Events are consumed: with several readers
    /// each event reaches one of them.
    pub fn events(&self) -> Result<EventReader, Error> {
        EventReader::open(self.root.join(MAP_EVENTS))
    }

    pub fn config(&self) -> Result<Config, Error> {
        let p = self.root.join(MAP_CONFIG);
        self.config.lock().unwrap().get(&0, 0).map_err(map_err(&p, "read"))
    }

    /// Write the configuration fields of `cfg`. `policy_gen` is not
    /// configuration: the one in the map is kept ([`Dataplane::bump_policy_gen`]).
    pub fn set_config(&self, cfg: &Config) -> Result<(), Error> {
        let p = self.root.join(MAP_CONFIG);
        let mut map = self.config.lock().unwrap();
        let policy_gen = map.get(&0, 0).map_err(map_err(&p, "read"))?.policy_gen;
        map.set(0, Config { policy_gen, ..*cfg }, 0).map_err(map_err(&p, "write"))
    }

    /// Start a new policy generation: every conntrack entry judged under an
    /// older one is judged again on its next packet (unless
    /// `CFG_REJUDGE_OFF`). Call it once a change's removals are written,
    /// never before (see weir_abi.h). Returns the new generation.
    pub fn bump_policy_gen(&self) -> Result<u32, Error> {
        let p = self.root.join(MAP_CONFIG);
        let mut map = self.config.lock().unwrap();
        let mut cfg = map.get(&0, 0).map_err(map_err(&p, "read"))?;
        cfg.policy_gen = cfg.policy_gen.wrapping_add(1);
        map.set(0, cfg, 0).map_err(map_err(&p, "write"))?;
        Ok(cfg.policy_gen)
    }

    // ---- running the programs on a packet ----------------------------------------------

    /// Run `hook`'s program on an Ethernet `frame` through BPF_PROG_TEST_RUN,
    /// as if it had arrived on `ifindex` (a device that must exist in the
    /// caller's network namespace, as the kernel resolves it). Returns the
    /// tc action: -1 (TC_ACT_UNSPEC / TCX_NEXT) passes, 2 (TC_ACT_SHOT) drops.
    /// Maps and counters are the live ones.
    pub fn run(&self, hook: Hook, frame: &[u8], ifindex: u32) -> Result<i32, Error> {
        self.run_repeat(hook, frame, ifindex, 1).map(|(r, _)| r)
    }

    /// [`Self::run`] `repeat` times in the kernel; also returns the kernel's
    /// mean run time per packet (the program's cost, no stack around it).
    pub fn run_repeat(
        &self,
        hook: Hook,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(i32, std::time::Duration), Error> {
        if frame.len() < 14 {
            return Err(Error::Invalid {
                field: "frame",
                msg: "BPF_PROG_TEST_RUN needs at least an Ethernet header".into(),
            });
        }
        let prog = self.program(hook)?;
        // struct __sk_buff: ifindex at 40; ingress_ifindex at 36 (the
        // kernel accepts only a few fields, the rest must be zero).
        let mut ctx = [0u8; 192];
        ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat.max(1);
        let r = prog
            .test_run(opts)
            .map_err(|source| Error::Program { name: hook.name().into(), source: Box::new(source) })?;
        Ok((r.return_value as i32, r.duration))
    }
}

/// tc verdicts as [`Dataplane::run`] returns them.
pub const TC_PASS: i32 = -1;
pub const TC_DROP: i32 = 2;

#[cfg(test)]
mod tests {
    /// The build script's id is the hash of the object this crate embeds.
    #[test]
    fn build_id_is_the_fnv1a_of_the_embedded_object() {
        let hash =
            crate::OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
        assert_eq!(super::build_id(), format!("{hash:016x}"));
    }
}
