//! The node bridge: created once (under a lock, so concurrent ADDs of the
//! first pods do not race), up, with the gateway addresses on it.

use crate::config::NetConf;
use crate::error::{CniError, Result};
use crate::netlink::{is_errno, Link, Netlink};
use ipnet::IpNet;
use std::fs::{self, OpenOptions};
use std::os::unix::io::{AsRawFd, FromRawFd};

fn not_a_bridge(conf: &NetConf, l: &Link) -> CniError {
    CniError::config(format!(
        "bridge {:?}: an interface with this name exists and is a {} device, not a bridge; \
         set \"bridge\" to another name or remove that interface",
        conf.bridge,
        l.kind.as_deref().unwrap_or("plain")
    ))
}

/// Whether `l` is a bridge [`ensure`] made: it gives each bridge it creates
/// a MAC derived from the name (`naming::bridge_mac`).
pub fn is_weirs(l: &Link) -> bool {
    l.kind.as_deref() == Some("bridge")
        && l.mac == weir_common::netlink::mac_string(&crate::naming::bridge_mac(&l.name))
}

/// The run dir's directory of the locks that serialize bridge creation.
pub const LOCKS_SUBDIR: &str = "locks";

/// The bridge, ready for ports: exists, is a bridge, is up, holds `gateways`.
pub fn ensure(nl: &mut Netlink, conf: &NetConf, gateways: &[IpNet]) -> Result<Link> {
    let kerr = |what: &str| {
        let what = format!("bridge {:?}: {what}", conf.bridge);
        move |e: std::io::Error| CniError::kernel(what, e)
    };
    let mut link = nl.link_by_name(&conf.bridge).map_err(kerr("lookup"))?;
    if link.is_none() {
        let dir = conf.policy.run_dir.join(LOCKS_SUBDIR);
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

/// Makes the kernel apply `device`'s pending carrier change now, so that
/// the bridge forwards what the pod sends from its first packet.
///
/// When the pod end comes up, both veth ends gain carrier, but the host
/// end's operstate, and with it the bridge port's forwarding state, follow
/// only when the kernel's link-watch work runs, which may be later (it runs
/// at most once a second for events it does not count as urgent). Until
/// then the bridge drops the port's frames. A pod whose routes are already
/// in place sends its first ARP request for the gateway into that window
/// and waits a full second (the ARP retransmit time) for the next one.
/// The same holds for the bridge: with no port it has no carrier and its
/// queue discards; the first port to forward gives it carrier, which
/// link-watch applies (and the queue reopens) only afterwards, and until
/// then the node's ARP replies to the pod are lost.
/// ETHTOOL_GLINK runs the link-watch work for one device at once
/// (`ethtool_op_get_link` calls `linkwatch_sync_dev`), so ADD calls it on
/// the port and then on the bridge, between bringing the pod end up and
/// installing the pod's routes. Returns whether the device has carrier.
pub fn settle_carrier(device: &str) -> std::io::Result<bool> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GLINK: u32 = 0x0000000a;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let name = device.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{device:?}: name too long")));
    }
    // SAFETY: a plain socket; closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd: ETHTOOL_GLINK, data: 0 };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the command from and writes the answer to
    // `value`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_is_weirs_when_it_has_the_mac_weir_gives_its_name() {
        let link = |name: &str, kind: &str, mac: String| Link {
            index: 3,
            name: name.into(),
            mac,
            mtu: 1500,
            up: true,
            kind: Some(kind.into()),
            master: None,
            alias: None,
        };
        let weirs = weir_common::netlink::mac_string(&crate::naming::bridge_mac("cni0"));
        assert!(is_weirs(&link("cni0", "bridge", weirs.clone())));
        assert!(!is_weirs(&link("cni0", "bridge", "02:42:ac:11:00:01".into())), "another CNI's cni0");
        assert!(!is_weirs(&link("br0", "bridge", weirs.clone())), "the MAC of another name");
        assert!(!is_weirs(&link("cni0", "veth", weirs)), "not a bridge");
    }
}
