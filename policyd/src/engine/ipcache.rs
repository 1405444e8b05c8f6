//! Stage 2 of a compile, the ipcache: every address the dataplane should
//! know to its identity. Pods' addresses (the best claim per address, as
//! the identity stage ranks them), Service VIPs (marked, judged after
//! DNAT), this node's pod gateways (the host), and the world for
//! everything else.
//!
//! Takes the [`Addresses`] the identity stage found and the Services and
//! endpoint records; hands on an [`Ipcache`]. Patches the previous result
//! at the addresses that moved (shared, unchanged, when none did); builds
//! it whole only the first time, when every pod was read, or when the
//! Services' addresses changed.

use super::{Diagnostic, IpcacheEntry, ID_HOST, ID_WORLD};
use crate::store::{Journaled, Key, Stamp};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use weir_common::registry::EndpointRecord;

/// What the identity stage found about addresses.
pub(super) struct Addresses {
    /// The identity of the best claim on each address whose claims may
    /// have changed since the previous compile, None when no pod claims it
    /// any more; every claimed address when `all`.
    pub(super) claims: Vec<(IpAddr, Option<u32>)>,
    pub(super) all: bool,
    /// Addresses of this node's pod interfaces, to their host ifindex.
    pub(super) local_ifindex: HashMap<IpAddr, u32>,
}

/// The ipcache stage's result.
pub(super) struct Ipcache {
    pub(super) entries: Arc<BTreeMap<IpNet, IpcacheEntry>>,
    /// Service cluster IPs that are not addresses.
    pub(super) diagnostics: Vec<Diagnostic>,
}

/// What the ipcache stage keeps between compiles: its last result and
/// what it was built from.
#[derive(Default)]
pub(super) struct IpcacheStage {
    last: Option<LastIpcache>,
    /// The Services' VIPs and diagnostics, and the stamp of the Services
    /// they were read from: they stand while no Service is written.
    vips: Option<(Stamp, Arc<Vec<IpAddr>>, Vec<Diagnostic>)>,
}

struct LastIpcache {
    locals: Vec<EndpointRecord>,
    vips: Arc<Vec<IpAddr>>,
    /// The best claim's identity per pod address.
    pods: HashMap<IpAddr, u32>,
    ipcache: Arc<BTreeMap<IpNet, IpcacheEntry>>,
}

impl IpcacheStage {
    /// The last compile's ipcache (empty before the first).
    pub(super) fn last(&self) -> Option<&BTreeMap<IpNet, IpcacheEntry>> {
        self.last.as_ref().map(|l| &*l.ipcache)
    }

    pub(super) fn run(
        &mut self,
        addresses: Addresses,
        services: &Journaled<Key, Service>,
        locals: &[EndpointRecord],
    ) -> Ipcache {
        let Addresses { claims, all, local_ifindex } = addresses;
        let (vips, diagnostics) = match self.vips.take().filter(|(s, _, _)| *s == services.stamp()) {
            Some((_, vips, diagnostics)) => (vips, diagnostics),
            None => {
                let mut diagnostics = Vec::new();
                (Arc::new(service_vips(services, &mut diagnostics)), diagnostics)
            }
        };
        self.vips = Some((services.stamp(), vips.clone(), diagnostics.clone()));
        let mut last = match self.last.take() {
            Some(last) if !all && (Arc::ptr_eq(&last.vips, &vips) || last.vips == vips) => last,
            // The first compile, every pod read again, or other VIPs: build
            // it whole.
            last => {
                debug_assert!(all || last.is_some(), "the first compile hands on every claim");
                let mut pods = last.map(|l| l.pods).unwrap_or_default();
                if all {
                    pods.clear();
                }
                patch_pods(&mut pods, claims);
                let ipcache = Arc::new(build(&pods, &vips, locals, &local_ifindex));
                let entries = ipcache.clone();
                self.last = Some(LastIpcache { locals: locals.to_vec(), vips, pods, ipcache });
                return Ipcache { entries, diagnostics };
            }
        };
        // Patch the entries of the addresses that moved: those with other
        // claims, and those of this node's records when they changed.
        let mut moved: Vec<IpAddr> = claims.iter().map(|(ip, _)| *ip).collect();
        patch_pods(&mut last.pods, claims);
        if last.locals.as_slice() != locals {
            for r in last.locals.iter().chain(locals) {
                moved.extend(r.ips.iter().chain(&r.gateways));
            }
            last.locals = locals.to_vec();
        }
        moved.sort_unstable();
        moved.dedup();
        let gateways: HashSet<IpAddr> = locals.iter().flat_map(|r| r.gateways.iter().copied()).collect();
        let vip_set: HashSet<&IpAddr> = if moved.is_empty() { HashSet::new() } else { vips.iter().collect() };
        for ip in moved {
            let entry = match (gateways.contains(&ip), last.pods.get(&ip)) {
                (true, _) => Some(IpcacheEntry { identity: ID_HOST, endpoint: 0, service: false }),
                (false, Some(id)) => Some(IpcacheEntry {
                    identity: *id,
                    endpoint: local_ifindex.get(&ip).copied().unwrap_or(0),
                    service: false,
                }),
                (false, None) if vip_set.contains(&ip) => {
                    Some(IpcacheEntry { identity: ID_WORLD, endpoint: 0, service: true })
                }
                (false, None) => None,
            };
            let net = IpNet::from(ip);
            if last.ipcache.get(&net) != entry.as_ref() {
                // Copied when the previous compile's result still holds it.
                let entries = Arc::make_mut(&mut last.ipcache);
                match entry {
                    Some(e) => entries.insert(net, e),
                    None => entries.remove(&net),
                };
            }
        }
        let entries = last.ipcache.clone();
        self.last = Some(last);
        Ipcache { entries, diagnostics }
    }
}

/// Bring the best claims per address up to date.
fn patch_pods(pods: &mut HashMap<IpAddr, u32>, claims: Vec<(IpAddr, Option<u32>)>) {
    for (ip, best) in claims {
        match best {
            Some(id) => pods.insert(ip, id),
            None => pods.remove(&ip),
        };
    }
}

/// The whole ipcache: the world, pods' addresses, Service VIPs and this
/// node's pod gateways.
fn build(
    pods: &HashMap<IpAddr, u32>,
    vips: &[IpAddr],
    locals: &[EndpointRecord],
    local_ifindex: &HashMap<IpAddr, u32>,
) -> BTreeMap<IpNet, IpcacheEntry> {
    // (prefix, precedence, entry): gateways over pods over Service VIPs over world.
    let mut ipc: Vec<(IpNet, u8, IpcacheEntry)> = Vec::with_capacity(pods.len() + vips.len() + 8);
    let world = IpcacheEntry { identity: ID_WORLD, endpoint: 0, service: false };
    ipc.push(("0.0.0.0/0".parse().unwrap(), 0, world));
    ipc.push(("::/0".parse().unwrap(), 0, world));
    for (ip, id) in pods {
        let endpoint = local_ifindex.get(ip).copied().unwrap_or(0);
        ipc.push((IpNet::from(*ip), 2, IpcacheEntry { identity: *id, endpoint, service: false }));
    }
    for ip in vips {
        ipc.push((IpNet::from(*ip), 1, IpcacheEntry { identity: ID_WORLD, endpoint: 0, service: true }));
    }
    for r in locals {
        for gw in &r.gateways {
            ipc.push((IpNet::from(*gw), 3, IpcacheEntry { identity: ID_HOST, endpoint: 0, service: false }));
        }
    }
    ipc.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
    ipc.dedup_by_key(|e| e.0);
    ipc.into_iter().map(|(n, _, e)| (n, e)).collect()
}

/// The Services' cluster IPs, in store order; a value that is not an
/// address is a [`Diagnostic`].
fn service_vips(services: &Journaled<Key, Service>, diagnostics: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
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
