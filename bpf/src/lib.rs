//! Weir's dataplane: the tc eBPF programs (C in `bpf/progs/`, built by
//! build.rs), the Rust mirror of their map ABI ([`abi`]), and loading,
//! pinning, attaching and typed map access with aya.
//!
//! Everything lives under one bpffs root (default `/sys/fs/bpf/weir`):
//! the maps pinned by name, the programs under `progs/`, the TCX links under
//! `links/` (beside them, with tc attachment, a record of each cls_bpf
//! filter: see [`AttachMode`]). Pins make the dataplane outlive every process: the CNI binary
//! attaches and exits, policyd restarts, and packets keep being judged by
//! the same programs against the same maps.

pub mod abi;
pub mod addr;
pub mod bpffs;
pub mod flow;
pub mod pkt;
pub mod policy;
mod sys;
pub mod tc;

mod dataplane;
mod error;
mod events;
mod lifecycle;
mod lpm;
mod migrate;

pub use dataplane::{
    build_id, detach_all, is_weirs_root_entry, pinned_endpoint_ifindexes, AttachMode, CtEntry, Dataplane, Hook,
    LoadOptions, RootLock, Upgrade, TC_DROP, TC_PASS,
};
pub use error::Error;
pub use events::EventReader;
pub use policy::{Direction, PolicyMatch};
pub use sys::monotonic_ns;

/// Default bpffs root, the same as `weir_common::paths::DEFAULT_BPFFS_ROOT`.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/weir";

/// The compiled programs and map definitions (bpf/progs/weir.c).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir.o"));

// policyd shares one handle across tasks: keep it Send + Sync.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dataplane>();
};
