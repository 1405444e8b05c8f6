//! Everything the plugin asks of the policy dataplane (the `weir-bpf`
//! crate), in one place: endpoint entries, tc attachment on the host veth
//! (in the caller's, i.e. the node's, namespace), host entries in the
//! ipcache, and the READY handshake with weir-policyd.

use crate::config::Policy;
use crate::error::{code, CniError, Result};
use ipnet::IpNet;
use std::net::IpAddr;
use weir_bpf::abi::{self, Endpoint, IpcacheValue};

pub struct Dataplane {
    inner: weir_bpf::Dataplane,
}

fn dp_err(what: impl std::fmt::Display) -> impl FnOnce(weir_bpf::Error) -> CniError {
    move |e| CniError::new(code::DATAPLANE, format!("{what}: {e}"))
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix")
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
        r.join("weir_endpoints").exists() && r.join("weir_ipcache").exists() && r.join("progs").exists()
    }

    /// The entry the programs look up, written before they are attached so
    /// that no packet ever meets a program without its endpoint: the pod
    /// interface's MAC and addresses (what the pod may claim as its own and
    /// may receive, from its first packet), identity 0 and not READY:
    /// fail-closed (or open, if so configured) until policyd programs it.
    pub fn add_endpoint(&self, ifindex: u32, pod_mac: &str, addrs: &[IpNet], open_until_ready: bool) -> Result<()> {
        let mac = weir_bpf::addr::parse_mac(pod_mac).ok_or_else(|| {
            CniError::new(code::DATAPLANE, format!("pod interface MAC {pod_mac:?}: expected aa:bb:cc:dd:ee:ff"))
        })?;
        let flags = if open_until_ready { abi::EP_OPEN_UNTIL_READY } else { 0 };
        let ep = Endpoint::for_pod(mac, addrs, flags).map_err(|e| match e {
            weir_bpf::Error::Invalid { field: "pod addresses", .. } => CniError::config(format!(
                "policy.enforce: {e} (as Kubernetes podIPs); give ipam.ranges at most one range set per family"
            )),
            e => dp_err(format!("endpoint {ifindex}"))(e),
        })?;
        self.inner.set_endpoint(ifindex, &ep).map_err(dp_err(format!("endpoint {ifindex}")))
    }

    pub fn attach(&self, ifindex: u32) -> Result<()> {
        self.inner.attach(ifindex).map_err(dp_err(format!("attach tc programs to ifindex {ifindex}")))
    }

    pub fn is_attached(&self, ifindex: u32) -> Result<bool> {
        self.inner.is_attached(ifindex).map_err(dp_err(format!("attachment of ifindex {ifindex}")))
    }

    pub fn has_endpoint(&self, ifindex: u32) -> Result<bool> {
        self.inner.endpoint(ifindex).map(|e| e.is_some()).map_err(dp_err(format!("endpoint {ifindex}")))
    }

    /// Gateways are this node: HOST identity.
    pub fn set_host_addresses(&self, ips: &[IpAddr]) -> Result<()> {
        let v = IpcacheValue { identity: abi::ID_HOST, endpoint: 0, flags: 0, pad: 0 };
        for ip in ips {
            self.inner.set_ipcache(host_net(*ip), &v).map_err(dp_err(format!("ipcache {ip}")))?;
        }
        Ok(())
    }

    pub fn is_ready(&self, ifindex: u32) -> Result<bool> {
        let ep = self.inner.endpoint(ifindex).map_err(dp_err(format!("endpoint {ifindex}")))?;
        Ok(ep.is_some_and(|e| e.flags & abi::EP_READY != 0))
    }

    /// Undo everything for one endpoint: detach, then the map entries
    /// (`forget`). Every part tolerates "already gone"; all failures are
    /// returned.
    pub fn remove(&self, ifindex: u32, ips: &[IpAddr]) -> Vec<CniError> {
        let mut errs = Vec::new();
        if let Err(e) = self.detach(ifindex) {
            errs.push(e);
        }
        errs.extend(self.forget(ifindex, ips));
        errs
    }

    /// Detach the programs (waits for RCU grace periods in the kernel).
    pub fn detach(&self, ifindex: u32) -> Result<()> {
        self.inner.detach(ifindex).map_err(dp_err(format!("detach ifindex {ifindex}")))
    }

    /// The endpoint's map entries: endpoint, counters, and the ipcache
    /// entries of `ips` that still point at this endpoint (an address
    /// already reused by a newer pod is left alone). Programs still
    /// attached then fail closed for it.
    pub fn forget(&self, ifindex: u32, ips: &[IpAddr]) -> Vec<CniError> {
        let mut errs = Vec::new();
        if let Err(e) = self.inner.remove_endpoint(ifindex) {
            errs.push(dp_err(format!("remove endpoint {ifindex}"))(e));
        }
        if let Err(e) = self.inner.remove_counters(ifindex) {
            errs.push(dp_err(format!("remove counters of {ifindex}"))(e));
        }
        for ip in ips {
            match self.inner.ipcache_lookup(*ip) {
                Ok(Some(v)) if v.endpoint == ifindex => {
                    if let Err(e) = self.inner.remove_ipcache(host_net(*ip)) {
                        errs.push(dp_err(format!("remove ipcache {ip}"))(e));
                    }
                }
                Ok(_) => {}
                Err(e) => errs.push(dp_err(format!("ipcache {ip}"))(e)),
            }
        }
        errs
    }

    /// Endpoint ids present in the maps or with pinned links (for GC).
    pub fn endpoint_ids(&self) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> =
            self.inner.endpoints().map_err(dp_err("endpoints"))?.into_iter().map(|(k, _)| k).collect();
        ids.extend(self.inner.attached_ifindexes().map_err(dp_err("pinned links"))?);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
