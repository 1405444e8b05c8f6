//! DEL: idempotent and best effort. Host-side state is found from the
//! container ID and interface name alone (deterministic veth name, registry
//! record, IPAM files), so it works with the netns gone, CNI_NETNS empty, or
//! after a DEL or a failed ADD. Every step runs; all failures are reported.

use crate::config::{Env, NetConf};
use crate::dataplane::Dataplane;
use crate::error::{CniError, Result};
use crate::ipam::{self, allocator::Store, disk::DiskStore};
use crate::netlink::{is_errno, Netlink};
use crate::naming;
use std::net::IpAddr;
use weir_common::registry::Registry;

pub fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let mut errs: Vec<CniError> = Vec::new();
    let mut nl = Netlink::new().map_err(|e| CniError::kernel("netlink socket", e))?;
    let host_name = naming::host_veth(&env.container_id, &env.ifname);
    let host = match nl.link_by_name(&host_name) {
        Ok(l) => l,
        Err(e) => {
            errs.push(CniError::kernel(format!("lookup {host_name}"), e));
            None
        }
    };
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
    if let Some(idx) = ifindex {
        if record.is_some() || conf.policy.enforce {
            match Dataplane::open_existing(&conf.policy) {
                Ok(Some(dp)) => {
                    let ips: Vec<IpAddr> = match &record {
                        Some(r) => r.ips.clone(),
                        None => reserved_ips(conf, env),
                    };
                    errs.extend(dp.remove(idx, &ips));
                }
                Ok(None) => {}
                Err(e) => errs.push(e),
            }
        }
    }
    if let Some(h) = &host {
        match nl.delete_link(h.index) {
            Err(e) if !is_errno(&e, libc::ENODEV) => errs.push(CniError::kernel(format!("delete {host_name}"), e)),
            _ => {}
        }
    }
    if let Err(e) = ipam::release(conf, env) {
        errs.push(e);
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
