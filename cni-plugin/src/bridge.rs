//! The node bridge: created once (under a lock, so concurrent ADDs of the
//! first pods do not race), up, with the gateway addresses on it.

use crate::config::NetConf;
use crate::error::{CniError, Result};
use crate::netlink::{is_errno, Link, Netlink};
use ipnet::IpNet;
use std::fs::{self, OpenOptions};
use std::os::unix::io::AsRawFd;

fn not_a_bridge(conf: &NetConf, l: &Link) -> CniError {
    CniError::config(format!(
        "bridge {:?}: an interface with this name exists and is a {} device, not a bridge; \
         set \"bridge\" to another name or remove that interface",
        conf.bridge,
        l.kind.as_deref().unwrap_or("plain")
    ))
}

/// The bridge, ready for ports: exists, is a bridge, is up, holds `gateways`.
pub fn ensure(nl: &mut Netlink, conf: &NetConf, gateways: &[IpNet]) -> Result<Link> {
    let kerr = |what: &str| {
        let what = format!("bridge {:?}: {what}", conf.bridge);
        move |e: std::io::Error| CniError::kernel(what, e)
    };
    let mut link = nl.link_by_name(&conf.bridge).map_err(kerr("lookup"))?;
    if link.is_none() {
        let dir = conf.policy.run_dir.join("locks");
        fs::create_dir_all(&dir).map_err(|e| CniError::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(format!("bridge-{}.lock", conf.bridge));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format!("cannot open {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own; released when `f` drops.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CniError::io(format!("cannot lock {}", path.display()), std::io::Error::last_os_error()));
        }
        link = nl.link_by_name(&conf.bridge).map_err(kerr("lookup"))?;
        if link.is_none() {
            match nl.create_bridge(&conf.bridge, conf.mtu, crate::naming::bridge_mac(&conf.bridge)) {
                Err(e) if !is_errno(&e, libc::EEXIST) => return Err(kerr("create")(e)),
                _ => {}
            }
            link = nl.link_by_name(&conf.bridge).map_err(kerr("lookup"))?;
        }
    }
    let link =
        link.ok_or_else(|| CniError::kernel(format!("bridge {:?}", conf.bridge), "vanished right after creation"))?;
    if link.kind.as_deref() != Some("bridge") {
        return Err(not_a_bridge(conf, &link));
    }
    if !link.up {
        nl.set_up(link.index).map_err(kerr("set up"))?;
    }
    for gw in gateways {
        match nl.add_address(link.index, *gw, true) {
            Err(e) if !is_errno(&e, libc::EEXIST) => {
                return Err(CniError::kernel(format!("bridge {:?}: add gateway address {gw}", conf.bridge), e))
            }
            _ => {}
        }
    }
    Ok(link)
}
