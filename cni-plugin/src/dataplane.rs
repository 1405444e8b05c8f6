//! Everything the plugin asks of the policy dataplane (the `weir-bpf`
//! crate), in one place: endpoint entries, tc attachment on the host veth
//! (in the caller's, i.e. the node's, namespace), host entries in the
//! ipcache, and the READY handshake with weir-policyd.

use crate::config::Policy;
use crate::error::{code, CniError, Result};
use std::net::IpAddr;

pub struct Dataplane {
    _priv: (),
}

fn unavailable() -> CniError {
    CniError::new(
        code::DATAPLANE,
        "policy.enforce is true but this weir build has no policy dataplane (weir-bpf); set policy.enforce to false",
    )
}

impl Dataplane {
    /// Open (loading and pinning first if needed) the dataplane under `policy.bpffsRoot`.
    pub fn load_or_open(_policy: &Policy) -> Result<Dataplane> {
        Err(unavailable())
    }
    /// Open only if the pins exist (DEL, GC, CHECK must not create them).
    pub fn open_existing(_policy: &Policy) -> Result<Option<Dataplane>> {
        Ok(None)
    }
    /// The entry the programs look up, written before they are attached so
    /// that no packet ever meets a program without its endpoint.
    pub fn add_endpoint(&self, _ifindex: u32, _open_until_ready: bool) -> Result<()> {
        Err(unavailable())
    }
    pub fn attach(&self, _ifindex: u32) -> Result<()> {
        Err(unavailable())
    }
    pub fn is_attached(&self, _ifindex: u32) -> Result<bool> {
        Err(unavailable())
    }
    pub fn has_endpoint(&self, _ifindex: u32) -> Result<bool> {
        Err(unavailable())
    }
    /// Gateways are this node: HOST identity.
    pub fn set_host_addresses(&self, _ips: &[IpAddr]) -> Result<()> {
        Err(unavailable())
    }
    pub fn is_ready(&self, _ifindex: u32) -> Result<bool> {
        Err(unavailable())
    }
    /// Undo everything for one endpoint; every part tolerant of "already gone".
    pub fn remove(&self, _ifindex: u32, _ips: &[IpAddr]) -> Vec<CniError> {
        vec![]
    }
    /// Endpoint ids present in the maps (for GC).
    pub fn endpoint_ids(&self) -> Result<Vec<u32>> {
        Ok(vec![])
    }
    /// Whether the pinned maps exist (STATUS).
    pub fn pins_present(policy: &Policy) -> bool {
        policy.bpffs_root.join("weir_endpoints").exists()
    }
}
