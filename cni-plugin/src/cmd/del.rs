//! DEL: idempotent and best effort. Host-side state is found from the
//! container ID and interface name alone (deterministic veth name, registry
//! record, IPAM files), so it works with the netns gone, CNI_NETNS empty, or
//! after a DEL or a failed ADD. Every step runs; all failures are reported.
//!
//! When DEL returns the pod is cut off (host veth down, map entries gone)
//! and its addresses are free; the veth itself and the program links are
//! deleted by a detached process moments later (background.rs).

use crate::background;
use crate::config::{Env, NetConf};
use crate::dataplane::Dataplane;
use crate::error::{CniError, Result};
use crate::ipam::{self, allocator::Store, disk::DiskStore};
use crate::naming::{self, Attachment, VethLabel};
use crate::netlink::{is_errno, Netlink};
use std::net::IpAddr;
use weir_common::registry::Registry;

pub fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let mut errs: Vec<CniError> = Vec::new();
    let mut nl = Netlink::new().map_err(|e| CniError::kernel("netlink socket", e))?;
    let me = Attachment { network: &conf.name, container_id: &env.container_id, ifname: &env.ifname };
    let host_name = naming::host_veth(&env.container_id, &env.ifname);
    let host = match nl.link_by_name(&host_name) {
        // The name is a hash: act only on a veth whose label is this
        // attachment's, or one from a release that wrote no labels.
        Ok(Some(l)) => match VethLabel::of(l.alias.as_deref()) {
            VethLabel::Unlabelled | VethLabel::RetiredUnlabelled => Some(l),
            label if label.names(&me) => Some(l),
            _ => {
                eprintln!(
                    "weir: DEL {} {}: host veth {host_name} is labelled {:?}, not this attachment's; leaving it alone",
                    env.container_id,
                    env.ifname,
                    l.alias.as_deref().unwrap_or_default()
                );
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            errs.push(CniError::kernel(format!("lookup {host_name}"), e));
            None
        }
    };
    // `get` checks the identity inside the record: never another's.
    let registry = Registry::under(&conf.policy.run_dir);
    let record = registry.get(&env.container_id, &env.ifname).unwrap_or_else(|e| {
        errs.push(CniError::new(crate::error::code::IO, e.to_string()));
        None
    });
    // The endpoint id: the live veth's ifindex, else the one ADD recorded.
    let ifindex = host.as_ref().map(|h| h.index).or(record.as_ref().map(|r| r.host_ifindex));
    if let Err(e) = registry.remove(&env.container_id, &env.ifname) {
        errs.push(CniError::new(crate::error::code::IO, e.to_string()));
    }
    // Cut the pod off first: down, and labelled as retired for ADD and GC.
    if let Some(h) = &host {
        match nl.retire_link(h.index, &me.retired_alias()) {
            Err(e) if !is_errno(&e, libc::ENODEV) => errs.push(CniError::kernel(format!("take {host_name} down"), e)),
            _ => {}
        }
    }
    let mut dp = None;
    if let Some(idx) = ifindex {
        if record.is_some() || conf.policy.enforce {
            match Dataplane::open_existing(&conf.policy) {
                Ok(Some(d)) => {
                    let ips: Vec<IpAddr> = match &record {
                        Some(r) => r.ips.clone(),
                        None => reserved_ips(conf, env),
                    };
                    errs.extend(d.forget(idx, &ips));
                    dp = Some((d, idx));
                }
                Ok(None) => {}
                Err(e) => errs.push(e),
            }
        }
    }
    if let Err(e) = ipam::release(conf, env) {
        errs.push(e);
    }
    // What is left only waits on the kernel: detaching the programs and
    // deleting the veth. See background.rs.
    if host.is_some() || dp.is_some() {
        let host_index = host.as_ref().map(|h| h.index);
        background::detached(move || {
            if let Some((dp, idx)) = &dp {
                let _ = dp.detach(*idx);
            }
            if let Some(index) = host_index {
                let _ = nl.delete_link(index);
            }
        });
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => {
            let code = errs[0].code;
            let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            Err(CniError::new(code, format!("DEL met {} errors: {}", errs.len(), all.join("; "))))
        }
    }
}

fn reserved_ips(conf: &NetConf, env: &Env) -> Vec<IpAddr> {
    let Some(dir) = conf.store_dir() else { return vec![] };
    if !dir.exists() {
        return vec![];
    }
    DiskStore::open(&dir)
        .and_then(|s| s.with_index(crate::ipam::index_dir(conf)).get_by_id(&env.container_id, &env.ifname))
        .unwrap_or_default()
}
