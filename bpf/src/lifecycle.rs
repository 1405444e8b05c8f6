//! A pod endpoint's life in the maps, as CNI ADD and DEL live it: admitted
//! not READY before the programs are attached, then handed to weir-policyd
//! (which sets identity, isolation and READY), then forgotten. The CNI
//! binary and the tests that stand in for it go through here, so what a
//! pod's first packet meets is written in one place.

use crate::abi::{self, Endpoint, IpcacheValue};
use crate::addr;
use crate::dataplane::Dataplane;
use crate::error::Error;
use ipnet::IpNet;
use std::net::IpAddr;

impl Dataplane {
    /// The entry the programs look up, written before they are attached so
    /// that no packet ever meets a program without its endpoint: the pod
    /// interface's MAC and addresses (what the pod may claim as its own and
    /// may receive, from its first packet), identity 0 and not READY:
    /// fail-closed, or open if `open_until_ready`, until policyd programs it.
    pub fn admit_pod(&self, ifindex: u32, mac: [u8; 6], addrs: &[IpNet], open_until_ready: bool) -> Result<(), Error> {
        let flags = if open_until_ready { abi::EP_OPEN_UNTIL_READY } else { 0 };
        self.set_endpoint(ifindex, &Endpoint::for_pod(mac, addrs, flags)?)
    }

    /// Whether policyd has programmed the endpoint (CNI ADD waits for it).
    pub fn is_ready(&self, ifindex: u32) -> Result<bool, Error> {
        Ok(self.endpoint(ifindex)?.is_some_and(|e| e.is_ready()))
    }

    /// This node's own addresses on the pod network (the bridge's
    /// gateways): the HOST identity.
    pub fn set_host_addresses(&self, ips: &[IpAddr]) -> Result<(), Error> {
        let v = IpcacheValue { identity: abi::ID_HOST, endpoint: 0, flags: 0, pad: 0 };
        ips.iter().try_for_each(|ip| self.set_ipcache(addr::host_net(*ip), &v))
    }

    /// The endpoint's map entries: endpoint, counters, and the ipcache
    /// entries of `ips` that still point at this endpoint (an address
    /// already reused by a newer pod is left alone). Programs still
    /// attached then fail closed for it. Every part tolerates "already
    /// gone"; every failure is returned, and the other parts still done.
    pub fn forget_pod(&self, ifindex: u32, ips: &[IpAddr]) -> Vec<Error> {
        let mut errs = Vec::new();
        errs.extend(self.remove_endpoint(ifindex).err());
        errs.extend(self.remove_counters(ifindex).err());
        for ip in ips {
            match self.ipcache_lookup(*ip) {
                Ok(Some(v)) if v.endpoint == ifindex => errs.extend(self.remove_ipcache(addr::host_net(*ip)).err()),
                Ok(_) => {}
                Err(e) => errs.push(e),
            }
        }
        errs
    }

    /// Everything of one endpoint: the programs detached (waits for RCU
    /// grace periods in the kernel), then [`forget_pod`](Self::forget_pod).
    pub fn retire_pod(&self, ifindex: u32, ips: &[IpAddr]) -> Vec<Error> {
        let mut errs: Vec<Error> = self.detach(ifindex).err().into_iter().collect();
        errs.extend(self.forget_pod(ifindex, ips));
        errs
    }

    /// Endpoints present in the map or with pinned links, sorted (what a
    /// garbage collection must account for).
    pub fn endpoint_ids(&self) -> Result<Vec<u32>, Error> {
        let mut ids: Vec<u32> = self.endpoints()?.into_iter().map(|(k, _)| k).collect();
        ids.extend(self.attached_ifindexes()?);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
