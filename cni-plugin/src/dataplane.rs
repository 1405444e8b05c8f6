//! Everything the plugin asks of the policy dataplane (the `weir-bpf`
//! crate), in one place: endpoint entries, tc attachment on the host veth
//! (in the caller's, i.e. the node's, namespace), host entries in the
//! ipcache, and the READY handshake with weir-policyd.

use crate::config::Policy;
use crate::error::{code, CniError, Result};
use ipnet::IpNet;
use std::net::IpAddr;
use weir_bpf::abi;

pub struct Dataplane {
    inner: weir_bpf::Dataplane,
}

fn dp_err(what: impl std::fmt::Display) -> impl FnOnce(weir_bpf::Error) -> CniError {
    move |e| CniError::new(code::DATAPLANE, format!("{what}: {e}"))
}

impl Dataplane {
    /// Open (loading and pinning first if needed) the dataplane under `policy.bpffsRoot`.
    pub fn load_or_open(policy: &Policy) -> Result<Dataplane> {
        let root = &policy.bpffs_root;
        weir_bpf::Dataplane::load_or_open(root)
            .map(|inner| Dataplane { inner })
            .map_err(dp_err(format!("policy.bpffsRoot {}: cannot load or open the dataplane", root.display())))
    }

    /// Open only if the pins exist (DEL, GC, CHECK must not create them).
    pub fn open_existing(policy: &Policy) -> Result<Option<Dataplane>> {
        if !Self::pins_present(policy) {
            return Ok(None);
        }
        weir_bpf::Dataplane::open(&policy.bpffs_root)
            .map(|inner| Some(Dataplane { inner }))
            .map_err(dp_err(format!("policy.bpffsRoot {}", policy.bpffs_root.display())))
    }

    /// Whether the pinned maps exist (STATUS: cheap, no bpf syscalls).
    pub fn pins_present(policy: &Policy) -> bool {
        let r = &policy.bpffs_root;
        r.join(abi::MAP_ENDPOINTS).exists() && r.join(abi::MAP_IPCACHE).exists() && r.join("progs").exists()
    }

    /// The not-READY entry a pod's first packet meets, written before the
    /// programs are attached ([`weir_bpf::Dataplane::admit_pod`]).
    pub fn add_endpoint(&self, ifindex: u32, pod_mac: &str, addrs: &[IpNet], open_until_ready: bool) -> Result<()> {
        let mac = weir_bpf::addr::parse_mac(pod_mac).ok_or_else(|| {
            CniError::new(code::DATAPLANE, format!("pod interface MAC {pod_mac:?}: expected aa:bb:cc:dd:ee:ff"))
        })?;
        self.inner.admit_pod(ifindex, mac, addrs, open_until_ready).map_err(|e| match e {
            weir_bpf::Error::Invalid { field: "pod addresses", .. } => CniError::config(format!(
                "policy.enforce: {e} (as Kubernetes podIPs); give ipam.ranges at most one range set per family"
            )),
            e => dp_err(format!("endpoint {ifindex}"))(e),
        })
    }

    /// Attach with `mode`: [`crate::config::Policy::attach_for`] the pod.
    pub fn attach(&self, ifindex: u32, mode: weir_bpf::AttachMode) -> Result<()> {
        self.inner
            .attach_as(ifindex, mode)
            .map_err(dp_err(format!("attach tc programs to ifindex {ifindex} ({mode:?})")))
    }

    pub fn is_attached(&self, ifindex: u32) -> Result<bool> {
        self.inner.is_attached(ifindex).map_err(dp_err(format!("attachment of ifindex {ifindex}")))
    }

    pub fn has_endpoint(&self, ifindex: u32) -> Result<bool> {
        self.inner.endpoint(ifindex).map(|e| e.is_some()).map_err(dp_err(format!("endpoint {ifindex}")))
    }

    /// Gateways are this node: HOST identity.
    pub fn set_host_addresses(&self, ips: &[IpAddr]) -> Result<()> {
        self.inner.set_host_addresses(ips).map_err(dp_err(format!("ipcache host addresses {ips:?}")))
    }

    pub fn is_ready(&self, ifindex: u32) -> Result<bool> {
        self.inner.is_ready(ifindex).map_err(dp_err(format!("endpoint {ifindex}")))
    }

    /// Undo everything for one endpoint ([`weir_bpf::Dataplane::retire_pod`]);
    /// all failures are returned.
    pub fn remove(&self, ifindex: u32, ips: &[IpAddr]) -> Vec<CniError> {
        self.inner
            .retire_pod(ifindex, ips)
            .into_iter()
            .map(|e| dp_err(format!("remove endpoint {ifindex}"))(e))
            .collect()
    }

    /// Detach the programs (waits for RCU grace periods in the kernel).
    pub fn detach(&self, ifindex: u32) -> Result<()> {
        self.inner.detach(ifindex).map_err(dp_err(format!("detach ifindex {ifindex}")))
    }

    /// The endpoint's map entries ([`weir_bpf::Dataplane::forget_pod`]).
    pub fn forget(&self, ifindex: u32, ips: &[IpAddr]) -> Vec<CniError> {
        self.inner
            .forget_pod(ifindex, ips)
            .into_iter()
            .map(|e| dp_err(format!("forget endpoint {ifindex}"))(e))
            .collect()
    }

    /// Endpoint ids present in the maps or with pinned links (for GC).
    pub fn endpoint_ids(&self) -> Result<Vec<u32>> {
        self.inner.endpoint_ids().map_err(dp_err("endpoints"))
    }
}
