//! CHECK: the attachment still looks the way ADD left it (`prevResult`):
//! host veth on the bridge, the pod interface with its addresses and
//! routes, the reservations, and with policy the attachment and records.

use crate::config::{Env, Ipam, NetConf};
use crate::dataplane::Dataplane;
use crate::error::{code, CniError, Result};
use crate::ipam::disk;
use crate::netlink::Netlink;
use crate::result::CniResult;
use crate::{naming, netns};
use weir_common::registry::Registry;

fn mismatch(msg: String) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

pub fn check(conf: &NetConf, env: &Env) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::config(
            "prevResult is missing; CHECK compares against the result of ADD, which the runtime passes as prevResult",
        )
    })?;
    let prev = CniResult::parse(prev, "prevResult")?;
    let kerr = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| CniError::kernel(what, e)
    };
    let ns = netns::open(&env.netns)?;
    let mut pod =
        netns::run_in(&ns, || Netlink::new().map_err(|e| CniError::kernel("netlink socket inside CNI_NETNS", e)))?;
    let mut nl = Netlink::new().map_err(kerr("netlink socket"))?;

    let host_name = naming::host_veth(&env.container_id, &env.ifname);
    let host = nl
        .link_by_name(&host_name)
        .map_err(kerr("link lookup"))?
        .ok_or_else(|| mismatch(format!("host veth {host_name} of this attachment is missing")))?;
    let br = nl
        .link_by_name(&conf.bridge)
        .map_err(kerr("link lookup"))?
        .ok_or_else(|| mismatch(format!("bridge {:?} is missing", conf.bridge)))?;
    if host.master != Some(br.index) {
        return Err(mismatch(format!("host veth {host_name} is not a port of bridge {:?}", conf.bridge)));
    }
    if !host.up {
        return Err(mismatch(format!("host veth {host_name} is down")));
    }
    let podlink = pod
        .link_by_name(&env.ifname)
        .map_err(kerr("link lookup in CNI_NETNS"))?
        .ok_or_else(|| mismatch(format!("CNI_IFNAME={:?} is missing from CNI_NETNS={:?}", env.ifname, env.netns)))?;
    if !podlink.up {
        return Err(mismatch(format!("{} in CNI_NETNS is down", env.ifname)));
    }
    let our_idx =
        prev.interfaces.iter().position(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(env.netns.as_str()));
    if let Some(i) = our_idx {
        let want_mac = &prev.interfaces[i].mac;
        if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&podlink.mac) {
            return Err(mismatch(format!("{} has MAC {} but prevResult says {want_mac}", env.ifname, podlink.mac)));
        }
    }
    let ours: Vec<_> = prev.ips.iter().filter(|ip| ip.interface.is_none() || ip.interface == our_idx).collect();
    let have = pod.addresses(podlink.index).map_err(kerr("address dump in CNI_NETNS"))?;
    for ip in &ours {
        if !have.contains(&ip.address) {
            return Err(mismatch(format!(
                "address {} from prevResult is not on {} in CNI_NETNS",
                ip.address, env.ifname
            )));
        }
    }
    for v4 in [true, false] {
        let want: Vec<_> = prev.routes.iter().filter(|r| r.dst.addr().is_ipv4() == v4).collect();
        if want.is_empty() {
            continue;
        }
        let routes = pod.routes(v4).map_err(kerr("route dump in CNI_NETNS"))?;
        for r in want {
            let found = routes.iter().any(|x| x.dst == r.dst && (r.gw.is_none() || x.gw == r.gw));
            if !found {
                return Err(mismatch(format!(
                    "route {} via {:?} from prevResult is missing in CNI_NETNS",
                    r.dst, r.gw
                )));
            }
        }
    }
    if let Ipam::HostLocal(_) = conf.ipam {
        let dir = conf.store_dir().expect("host-local");
        let (entries, _) = disk::entries_in(&dir);
        for ip in &ours {
            let held = entries.iter().any(|e| e.ip == ip.address.addr() && e.container_id == env.container_id);
            if !held {
                return Err(mismatch(format!(
                    "address {} is not reserved for this container in {}",
                    ip.address.addr(),
                    dir.display()
                )));
            }
        }
    }
    if conf.policy.enforce {
        let dp = Dataplane::open_existing(&conf.policy)?.ok_or_else(|| {
            mismatch(format!(
                "policy.enforce is true but no pinned dataplane under {}",
                conf.policy.bpffs_root.display()
            ))
        })?;
        if !dp.is_attached(host.index)? {
            return Err(mismatch(format!("policy programs are not attached to {host_name}")));
        }
        if !dp.has_endpoint(host.index)? {
            return Err(mismatch(format!("no endpoint entry for {host_name} (ifindex {})", host.index)));
        }
        let rec = Registry::under(&conf.policy.run_dir)
            .get(&env.container_id, &env.ifname)
            .map_err(|e| CniError::new(code::IO, e.to_string()))?;
        if rec.is_none_or(|r| r.host_ifindex != host.index) {
            return Err(mismatch(format!(
                "endpoint record for this attachment is missing or stale in {}",
                conf.policy.run_dir.display()
            )));
        }
    }
    Ok(())
}
