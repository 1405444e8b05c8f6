//! GC: remove every attachment the runtime no longer knows: IP
//! reservations, endpoint records, host veths on the bridge and endpoint map
//! entries not in `cni.dev/valid-attachments` (or the legacy
//! `cni.dev/attachments`). Keeps going past errors and reports them all.
//!
//! Several networks may share a bridge (and the registry): GC of one
//! network touches only what that network made. A host veth is its
//! network's by its label (`naming::VethLabel`); an unlabelled one, from a
//! release before labels, only when this network's reservations or records
//! name it.

use crate::config::{Ipam, NetConf};
use crate::dataplane::Dataplane;
use crate::error::{code, CniError, Result};
use crate::ipam::{allocator::Store, disk::DiskStore};
use crate::naming::{self, VethLabel};
use crate::netlink::{is_errno, Netlink};
use serde_json::Value;
use std::collections::HashSet;
use weir_common::registry::Registry;

/// (containerID, ifname) pairs the runtime says are alive.
pub fn valid_attachments(raw: &Value) -> Result<Vec<(String, String)>> {
    let list = raw.get("cni.dev/valid-attachments").or_else(|| raw.get("cni.dev/attachments")).ok_or_else(|| {
        CniError::config(
            "cni.dev/valid-attachments is missing; GC needs the list of attachments to keep (may be empty)",
        )
    })?;
    let arr = list.as_array().ok_or_else(|| CniError::config("cni.dev/valid-attachments: expected a list"))?;
    let mut out = Vec::new();
    for (i, a) in arr.iter().enumerate() {
        let id = a.get("containerID").and_then(Value::as_str);
        let ifname = a.get("ifname").and_then(Value::as_str);
        match (id, ifname) {
            (Some(id), Some(ifn)) => out.push((id.to_string(), ifn.to_string())),
            _ => {
                return Err(CniError::config(format!(
                    "cni.dev/valid-attachments[{i}]: needs \"containerID\" and \"ifname\""
                )))
            }
        }
    }
    Ok(out)
}

pub fn gc(conf: &NetConf, env: &crate::config::Env) -> Result<()> {
    let valid = valid_attachments(&conf.raw)?;
    let valid_set: HashSet<(&str, &str)> = valid.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let valid_ids: HashSet<&str> = valid.iter().map(|(a, _)| a.as_str()).collect();
    let mut errs: Vec<CniError> = Vec::new();
    // Host veths this network's own state names (for unlabelled veths).
    let mut ours_by_state: HashSet<String> = HashSet::new();

    match &conf.ipam {
        Ipam::HostLocal(_) => {
            let dir = conf.store_dir().expect("host-local");
            if dir.exists() {
                match DiskStore::open(&dir) {
                    Ok(store) => {
                        let mut store = store.with_index(crate::ipam::index_dir(conf));
                        for (id, ifname) in store.indexed_attachments() {
                            ours_by_state.insert(naming::host_veth(&id, &ifname));
                            if !valid_set.contains(&(id.as_str(), ifname.as_str())) {
                                store.forget(&id, &ifname);
                            }
                        }
                        let (entries, e) = store.entries();
                        errs.extend(e);
                        for ent in entries {
                            // Old host-local files carry only the ID.
                            let keep = if ent.ifname.is_empty() {
                                valid_ids.contains(ent.container_id.as_str())
                            } else {
                                valid_set.contains(&(ent.container_id.as_str(), ent.ifname.as_str()))
                            };
                            if !keep {
                                if let Err(e) = store.release(ent.ip) {
                                    errs.push(e);
                                }
                            }
                        }
                    }
                    Err(e) => errs.push(e),
                }
            }
        }
        Ipam::Delegate { plugin } => {
            if let Err(e) = crate::ipam::exec_delegate(conf, env, plugin, "GC") {
                errs.push(e);
            }
        }
    }

    let dp = match Dataplane::open_existing(&conf.policy) {
        Ok(dp) => dp,
        Err(e) => {
            errs.push(e);
            None
        }
    };
    let registry = Registry::under(&conf.policy.run_dir);
    let (records, rerrs) = registry.list();
    errs.extend(rerrs.into_iter().map(|e| CniError::new(code::IO, e.to_string())));
    for r in records.iter().filter(|r| r.network == conf.name) {
        ours_by_state.insert(r.host_ifname.clone());
        if valid_set.contains(&(r.container_id.as_str(), r.ifname.as_str())) {
            continue;
        }
        if let Some(dp) = &dp {
            errs.extend(dp.remove(r.host_ifindex, &r.ips));
        }
        if let Err(e) = registry.remove(&r.container_id, &r.ifname) {
            errs.push(CniError::new(code::IO, e.to_string()));
        }
    }

    let mut nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            errs.push(CniError::kernel("netlink socket", e));
            return report(errs);
        }
    };
    let links = nl.links().unwrap_or_else(|e| {
        errs.push(CniError::kernel("link dump", e));
        vec![]
    });
    let bridge_idx = links.iter().find(|l| l.name == conf.bridge).map(|l| l.index);
    let mut live_ifindexes: HashSet<u32> = HashSet::new();
    for l in &links {
        let weir_veth = bridge_idx.is_some()
            && l.master == bridge_idx
            && l.name.starts_with(naming::HOST_VETH_PREFIX)
            && l.name.len() == 15
            && l.kind.as_deref() == Some("veth");
        let stale = weir_veth
            && match VethLabel::of(l.alias.as_deref()) {
                label @ (VethLabel::Live(_) | VethLabel::Retired(_)) => {
                    label.network_is(&conf.name)
                        && !valid_set.iter().any(|(id, ifname)| {
                            label.names(&naming::Attachment { network: &conf.name, container_id: id, ifname })
                        })
                }
                VethLabel::Unlabelled | VethLabel::RetiredUnlabelled => {
                    ours_by_state.contains(&l.name)
                        && !valid.iter().any(|(id, ifname)| naming::host_veth(id, ifname) == l.name)
                }
                VethLabel::Foreign => false,
            };
        if stale {
            match nl.delete_link(l.index) {
                Err(e) if !is_errno(&e, libc::ENODEV) => errs.push(CniError::kernel(format!("delete {}", l.name), e)),
                _ => {}
            }
            if let Some(dp) = &dp {
                errs.extend(dp.remove(l.index, &[]));
            }
        } else {
            live_ifindexes.insert(l.index);
        }
    }
    // Endpoint entries whose veth no longer exists on this node.
    if let Some(dp) = &dp {
        match dp.endpoint_ids() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !live_ifindexes.contains(id)) {
                    errs.extend(dp.remove(id, &[]));
                }
            }
            Err(e) => errs.push(e),
        }
    }
    report(errs)
}

fn report(mut errs: Vec<CniError>) -> Result<()> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        n => {
            let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            Err(CniError::new(errs[0].code, format!("GC met {n} errors: {}", all.join("; "))))
        }
    }
}
