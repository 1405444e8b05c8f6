//! Stage 2 of a compile, the ipcache: every address the dataplane should
//! know to its identity. Pods' addresses (the best claim per address, see
//! [`Claim`]), Service VIPs (marked, judged after DNAT), this node's pod
//! gateways (the host), and the world for everything else.
//!
//! Takes the [`Addresses`] the identity stage found and the Services and
//! endpoint records; hands on an [`Ipcache`]. Reuses the previous result
//! when nothing it reads changed.

use super::{Diagnostic, IpcacheEntry, ID_HOST, ID_WORLD};
use crate::store::Key;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use weir_common::registry::EndpointRecord;

/// Rank of a pod's claim on an address two pods claim, greater wins: on
/// this node (its endpoint record is authoritative), then Running, then
/// the newest creationTimestamp, then the greater namespace/name.
pub(super) type Rank<'s> = (bool, bool, Option<i128>, &'s Key);

/// One pod's claim on an address: (address, rank, identity).
pub(super) type Claim<'s> = (IpAddr, Rank<'s>, u32);

/// What the identity stage found about addresses.
pub(super) struct Addresses<'s> {
    /// Every pod's claims; None when the pods and this node's endpoint
    /// records are the previous compile's, whose claims stand.
    pub(super) claims: Option<Vec<Claim<'s>>>,
    /// Addresses of this node's pod interfaces, to their host ifindex.
    pub(super) local_ifindex: HashMap<IpAddr, u32>,
    /// Whether any pod was read afresh or removed since the previous compile.
    pub(super) pods_changed: bool,
}

/// The ipcache stage's result.
pub(super) struct Ipcache {
    pub(super) entries: Arc<BTreeMap<IpNet, IpcacheEntry>>,
    /// Service cluster IPs that are not addresses.
    pub(super) diagnostics: Vec<Diagnostic>,
}

/// What the ipcache stage keeps between compiles: its last result and
/// what it was built from besides pods.
#[derive(Default)]
pub(super) struct IpcacheStage {
    last: Option<LastIpcache>,
}

struct LastIpcache {
    locals: Vec<EndpointRecord>,
    vips: Vec<IpAddr>,
    /// The best claim's identity per pod address, sorted.
    pods: Vec<(IpAddr, u32)>,
    ipcache: Arc<BTreeMap<IpNet, IpcacheEntry>>,
}

impl IpcacheStage {
    /// The last compile's ipcache (empty before the first).
    pub(super) fn last(&self) -> Option<&BTreeMap<IpNet, IpcacheEntry>> {
        self.last.as_ref().map(|l| &*l.ipcache)
    }

    pub(super) fn run(
        &mut self,
        addresses: Addresses<'_>,
        services: &BTreeMap<Key, Service>,
        locals: &[EndpointRecord],
    ) -> Ipcache {
        let Addresses { claims, local_ifindex, pods_changed } = addresses;
        let mut diagnostics = Vec::new();
        let vips = service_vips(services, &mut diagnostics);
        // Nothing the ipcache reads changed: reuse it rather than sort a
        // cluster's addresses again.
        let reuse = !pods_changed
            && self.last.as_ref().is_some_and(|last| last.locals.as_slice() == locals && last.vips == vips);
        if reuse {
            let entries = self.last.as_ref().map(|last| last.ipcache.clone()).unwrap_or_default();
            return Ipcache { entries, diagnostics };
        }
        let last = self.last.take();
        let pods = match claims {
            Some(mut claims) => {
                // Best claim first per address.
                claims.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
                claims.dedup_by_key(|c| c.0);
                claims.into_iter().map(|(ip, _, id)| (ip, id)).collect()
            }
            // The previous compile's pods and records: its best claims.
            None => last.map(|l| l.pods).unwrap_or_default(),
        };
        // (prefix, precedence, entry): gateways over pods over Service VIPs over world.
        let mut ipc: Vec<(IpNet, u8, IpcacheEntry)> = Vec::with_capacity(pods.len() + vips.len() + 8);
        let world = IpcacheEntry { identity: ID_WORLD, endpoint: 0, service: false };
        ipc.push(("0.0.0.0/0".parse().unwrap(), 0, world));
        ipc.push(("::/0".parse().unwrap(), 0, world));
        for (ip, id) in &pods {
            let endpoint = local_ifindex.get(ip).copied().unwrap_or(0);
            ipc.push((IpNet::from(*ip), 2, IpcacheEntry { identity: *id, endpoint, service: false }));
        }
        for ip in &vips {
            ipc.push((IpNet::from(*ip), 1, IpcacheEntry { identity: ID_WORLD, endpoint: 0, service: true }));
        }
        for r in locals {
            for gw in &r.gateways {
                ipc.push((IpNet::from(*gw), 3, IpcacheEntry { identity: ID_HOST, endpoint: 0, service: false }));
            }
        }
        ipc.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
        ipc.dedup_by_key(|e| e.0);
        let entries: Arc<BTreeMap<IpNet, IpcacheEntry>> = Arc::new(ipc.into_iter().map(|(n, _, e)| (n, e)).collect());
        self.last = Some(LastIpcache { locals: locals.to_vec(), vips, pods, ipcache: entries.clone() });
        Ipcache { entries, diagnostics }
    }
}

/// The Services' cluster IPs, in store order; a value that is not an
/// address is a [`Diagnostic`].
fn service_vips(services: &BTreeMap<Key, Service>, diagnostics: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
    let mut vips: Vec<IpAddr> = Vec::new();
    for ((ns, name), svc) in services {
        let Some(spec) = &svc.spec else { continue };
        let mut raw: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
        if raw.is_empty() {
            raw.extend(spec.cluster_ip.iter());
        }
        for (i, v) in raw.into_iter().enumerate() {
            if v.is_empty() || v == "None" {
                continue;
            }
            match v.parse::<IpAddr>() {
                Ok(ip) => vips.push(ip),
                Err(_) => diagnostics.push(Diagnostic {
                    object: format!("Service {ns}/{name}"),
                    field: format!("spec.clusterIPs[{i}]"),
                    message: format!("{v:?} is not an IP address; the VIP is not marked as a Service"),
                }),
            }
        }
    }
    vips
}
