//! ADD: address, bridge, veth, (policy), pod addresses and routes. Every
//! step that leaves state behind registers its undo first; any failure runs
//! the undos in reverse, so a failed ADD leaves nothing.

use crate::config::{Env, NetConf, OnReadyTimeout, WhileNotReady};
use crate::dataplane::Dataplane;
use crate::error::{code, CniError, Result};
use crate::ipam::{self, Lease};
use crate::naming::{Attachment, VethLabel};
use crate::netlink::{is_errno, Netlink};
use crate::request::{self, Requested};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::{bridge, masq, naming, netns, sysctl};
use ipnet::IpNet;
use serde_json::Value;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use weir_common::registry::{EndpointRecord, Registry};

#[derive(Default)]
struct Undo {
    ipam: bool,
    veth: Option<u32>,
    endpoint: Option<(u32, Vec<IpAddr>)>,
    registry: bool,
}

impl Undo {
    fn run(self, conf: &NetConf, env: &Env, nl: &mut Netlink, dp: Option<&Dataplane>) {
        let log = |what: &str, e: &dyn std::fmt::Display| {
            eprintln!("weir: rollback of ADD {}: {what}: {e}", env.container_id)
        };
        if self.registry {
            if let Err(e) = Registry::under(&conf.policy.run_dir).remove(&env.container_id, &env.ifname) {
                log("registry record", &e);
            }
        }
        if let (Some((idx, ips)), Some(dp)) = (&self.endpoint, dp) {
            for e in dp.remove(*idx, ips) {
                log("dataplane", &e);
            }
        }
        if let Some(idx) = self.veth {
            match nl.delete_link(idx) {
                Err(e) if !is_errno(&e, libc::ENODEV) => log("veth", &e),
                _ => {}
            }
        }
        if self.ipam {
            if let Err(e) = ipam::release(conf, env) {
                log("addresses", &e);
            }
        }
    }
}

pub fn add(conf: &NetConf, env: &Env) -> Result<Value> {
    require_pod_identity(conf, env)?;
    // A malformed static address or MAC is refused before anything is made.
    let requested = request::parse(&conf.raw, env)?;
    let ns = netns::open(&env.netns)?;
    let mut nl = Netlink::new().map_err(|e| CniError::kernel("netlink socket", e))?;
    let host_name = naming::host_veth(&env.container_id, &env.ifname);
    let me = Attachment { network: &conf.name, container_id: &env.container_id, ifname: &env.ifname };
    if let Some(old) = nl.link_by_name(&host_name).map_err(|e| CniError::kernel("link lookup", e))? {
        let label = VethLabel::of(old.alias.as_deref());
        let retired_ours = match &label {
            VethLabel::Retired(_) => label.names(&me),
            VethLabel::RetiredUnlabelled => true,
            _ => false,
        };
        if !retired_ours {
            return Err(CniError::new(
                code::IFNAME_EXISTS,
                format!(
                    "host veth {host_name} for CNI_CONTAINERID={} CNI_IFNAME={} already exists: this attachment was \
                     added before; run DEL for it first",
                    env.container_id, env.ifname
                ),
            ));
        }
        // A DEL of this attachment is still deleting it in the background
        // (background.rs): finish that here, which also removes its pod end.
        match nl.delete_link(old.index) {
            Err(e) if !is_errno(&e, libc::ENODEV) => {
                return Err(CniError::kernel(format!("delete retired {host_name}"), e))
            }
            _ => {}
        }
    }
    let mut pod =
        netns::run_in(&ns, || Netlink::new().map_err(|e| CniError::kernel("netlink socket inside CNI_NETNS", e)))?;
    let taken = pod.link_by_name(&env.ifname).map_err(|e| CniError::kernel("CNI_NETNS: link lookup", e))?;
    if taken.is_some() {
        return Err(CniError::new(
            code::IFNAME_EXISTS,
            format!(
                "CNI_IFNAME={:?} already exists in CNI_NETNS={:?}; choose another interface name or remove it",
                env.ifname, env.netns
            ),
        ));
    }
    let dp = if conf.policy.enforce { Some(Dataplane::load_or_open(&conf.policy)?) } else { None };
    let mut undo = Undo::default();
    match add_steps(conf, env, &requested, &ns, &mut pod, &mut nl, &host_name, dp.as_ref(), &mut undo) {
        Ok(r) => Ok(r),
        Err(e) => {
            undo.run(conf, env, &mut nl, dp.as_ref());
            Err(e)
        }
    }
}

/// Policy is about Pods: weir-policyd programs an endpoint only once it
/// finds the Pod that `K8S_POD_NAMESPACE`/`K8S_POD_NAME` name. Runtimes
/// outside Kubernetes (podman, `ctr run --cni`) pass neither; rather than
/// wait `readyTimeoutMs` and then blame policyd, say so at once.
fn require_pod_identity(conf: &NetConf, env: &Env) -> Result<()> {
    if !conf.policy.enforce {
        return Ok(());
    }
    let missing: Vec<&str> =
        ["K8S_POD_NAMESPACE", "K8S_POD_NAME"].into_iter().filter(|k| env.arg(k).is_none_or(str::is_empty)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        code::INVALID_ENV,
        format!(
            "policy.enforce is true but CNI_ARGS has no {}: NetworkPolicy is enforced for Kubernetes pods, and this \
             container has no pod identity (runtimes outside Kubernetes, such as podman or ctr, pass none); use a \
             network with \"policy\": {{\"enforce\": false}} for such containers",
            missing.join(" or ")
        ),
    ))
}

fn gateways_on_bridge(lease: &Lease) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for ip in &lease.ips {
        if let Some(gw) = ip.gateway {
            if let Ok(n) = IpNet::new(gw, ip.address.prefix_len()) {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// Routes the pod gets: a default route per family via its gateway (when
/// `isDefaultGateway`), then `ipam.routes`, a missing `gw` meaning the
/// gateway of the route's family. Duplicates of a destination are dropped.
/// Returns (what is installed, what the result reports): like the reference
/// bridge plugin, the result shows `ipam.routes` as configured.
pub fn pod_routes(conf: &NetConf, lease: &Lease) -> (Vec<Route>, Vec<Route>) {
    let gw_of = |v4: bool| lease.ips.iter().find(|i| i.address.addr().is_ipv4() == v4).and_then(|i| i.gateway);
    let mut install: Vec<Route> = Vec::new();
    let mut report: Vec<Route> = Vec::new();
    let mut push = |i: Route, r: Route| {
        if !install.iter().any(|o| o.dst == i.dst) {
            install.push(i);
            report.push(r);
        }
    };
    if conf.is_default_gateway {
        for v4 in [true, false] {
            if let Some(gw) = gw_of(v4) {
                let dst: IpNet = if v4 { "0.0.0.0/0".parse().unwrap() } else { "::/0".parse().unwrap() };
                push(Route { dst, gw: Some(gw) }, Route { dst, gw: Some(gw) });
            }
        }
    }
    for r in &lease.routes {
        let v4 = r.dst.addr().is_ipv4();
        if lease.ips.iter().any(|i| i.address.addr().is_ipv4() == v4) {
            push(Route { dst: r.dst, gw: r.gw.or_else(|| gw_of(v4)) }, r.clone());
        }
    }
    (install, report)
}

#[allow(clippy::too_many_arguments)]
fn add_steps(
    conf: &NetConf,
    env: &Env,
    requested: &Requested,
    ns: &File,
    pod: &mut Netlink,
    nl: &mut Netlink,
    host_name: &str,
    dp: Option<&Dataplane>,
    undo: &mut Undo,
) -> Result<Value> {
    let lease = ipam::allocate(conf, env, &requested.ips)?;
    undo.ipam = true;
    let has_v4 = lease.ips.iter().any(|i| i.address.addr().is_ipv4());
    let has_v6 = lease.ips.iter().any(|i| i.address.addr().is_ipv6());
    sysctl::enable_forwarding(has_v4, has_v6)?;
    let gws = if conf.is_gateway { gateways_on_bridge(&lease) } else { vec![] };
    let br = bridge::ensure(nl, conf, &gws)?;

    let kerr = |what: String| move |e: std::io::Error| CniError::kernel(what, e);
    nl.create_veth(host_name, &env.ifname, requested.mac, conf.mtu, br.index, ns.as_fd()).map_err(|e| {
        if is_errno(&e, libc::EEXIST) {
            CniError::new(
                code::IFNAME_EXISTS,
                format!("veth {host_name} / CNI_IFNAME={:?}: already exists", env.ifname),
            )
        } else {
            CniError::kernel(format!("create veth {host_name} with peer {} in CNI_NETNS", env.ifname), e)
        }
    })?;
    let host = nl
        .link_by_name(host_name)
        .map_err(kerr(format!("lookup {host_name}")))?
        .ok_or_else(|| CniError::kernel(host_name, "veth vanished after creation"))?;
    undo.veth = Some(host.index);
    let me = Attachment { network: &conf.name, container_id: &env.container_id, ifname: &env.ifname };
    nl.set_alias(host.index, &me.live_alias()).map_err(kerr(format!("label {host_name}")))?;
    if conf.hairpin {
        nl.set_hairpin(host.index, true).map_err(kerr(format!("hairpin mode on {host_name}")))?;
    }
    let podlink = pod
        .link_by_name(&env.ifname)
        .map_err(kerr(format!("lookup {} in CNI_NETNS", env.ifname)))?
        .ok_or_else(|| CniError::kernel(&env.ifname, "pod interface vanished after creation"))?;
    let ips: Vec<IpAddr> = lease.ips.iter().map(|i| i.address.addr()).collect();
    let gateway_ips: Vec<IpAddr> = gws.iter().map(|g| g.addr()).collect();

    if let Some(dp) = dp {
        // Endpoint entry before the programs: they must never run without it.
        undo.endpoint = Some((host.index, ips.clone()));
        let addrs: Vec<IpNet> = lease.ips.iter().map(|i| i.address).collect();
        dp.add_endpoint(host.index, &podlink.mac, &addrs, conf.policy.while_not_ready == WhileNotReady::Allow)?;
        dp.attach(host.index, conf.policy.attach_for(requested.egress_shaped))?;
        let record = EndpointRecord {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env.netns.clone(),
            network: conf.name.clone(),
            pod_namespace: env.arg("K8S_POD_NAMESPACE").unwrap_or_default().to_string(),
            pod_name: env.arg("K8S_POD_NAME").unwrap_or_default().to_string(),
            pod_uid: env.arg("K8S_POD_UID").unwrap_or_default().to_string(),
            host_ifname: host_name.to_string(),
            host_ifindex: host.index,
            ips: ips.clone(),
            mac: podlink.mac.clone(),
            gateways: gateway_ips.clone(),
        };
        undo.registry = true;
        Registry::under(&conf.policy.run_dir)
            .put(&record)
            .map_err(|e| CniError::new(code::IO, format!("endpoint registry: {e}")))?;
        dp.set_host_addresses(&gateway_ips)?;
    }

    // Host end up first: the pod end then has carrier when its routes go in.
    nl.set_up(host.index).map_err(kerr(format!("set {host_name} up")))?;
    // Pod side: addresses (no DAD, usable at once), up, then routes (a
    // gateway route needs the connected route an up link brings).
    for ip in &lease.ips {
        pod.add_address(podlink.index, ip.address, true)
            .map_err(kerr(format!("add {} to {} in CNI_NETNS", ip.address, env.ifname)))?;
    }
    pod.set_up_arp_notify(podlink.index).map_err(kerr(format!("set {} up (arp_notify) in CNI_NETNS", env.ifname)))?;
    // The bridge port forwards, and the bridge itself has carrier (it has
    // none while it has no port: this may be the first), before the pod
    // has a route to send by.
    // Best effort: where a device does not answer ETHTOOL_GLINK the pod
    // still works, as before, only its first packet may wait.
    let _ = bridge::settle_carrier(host_name);
    let _ = bridge::settle_carrier(&conf.bridge);
    let (routes, reported_routes) = pod_routes(conf, &lease);
    for r in &routes {
        match pod.add_route(podlink.index, r.dst, r.gw) {
            Ok(()) => {}
            // Already there is fine only if it is this very route: the
            // result must never report a route that is not installed.
            Err(e) if is_errno(&e, libc::EEXIST) => {
                let existing = pod
                    .routes(r.dst.addr().is_ipv4())
                    .map_err(kerr("route dump in CNI_NETNS".to_string()))?
                    .into_iter()
                    .find(|x| x.dst == r.dst);
                if !existing.as_ref().is_some_and(|x| x.gw == r.gw && x.oif == Some(podlink.index)) {
                    return Err(CniError::new(
                        code::INVALID_ENV,
                        format!(
                            "route {} already exists in CNI_NETNS={:?} ({}), not via {:?} on {}: remove it, or leave \
                             this route out (isDefaultGateway: false / ipam.routes)",
                            r.dst,
                            env.netns,
                            existing
                                .map_or("another table entry".into(), |x| format!("via {:?}, oif {:?}", x.gw, x.oif)),
                            r.gw,
                            env.ifname
                        ),
                    ));
                }
            }
            Err(e) => return Err(CniError::kernel(format!("add route {} via {:?} in CNI_NETNS", r.dst, r.gw), e)),
        }
    }
    if conf.ip_masq {
        let sources: Vec<IpNet> = lease.ips.iter().map(|i| i.address.trunc()).collect();
        masq::ensure(&conf.name, &sources, &conf.cluster_cidrs, &conf.policy.run_dir)?;
    }

    if let Some(dp) = dp {
        wait_ready(conf, dp, host.index)?;
    }

    let mtu = Some(if host.mtu > 0 { host.mtu } else { 1500 });
    let mut ours = CniResult {
        interfaces: vec![
            Interface { name: br.name.clone(), mac: br.mac.clone(), sandbox: None, mtu: Some(br.mtu) },
            Interface { name: host_name.to_string(), mac: host.mac.clone(), sandbox: None, mtu },
            Interface { name: env.ifname.clone(), mac: podlink.mac.clone(), sandbox: Some(env.netns.clone()), mtu },
        ],
        ips: lease.ips.iter().map(|i| IpConfig { interface: Some(2), ..i.clone() }).collect(),
        routes: reported_routes,
        dns: conf.raw.get("dns").cloned().unwrap_or(Value::Null),
    };
    if let Some(prev) = &conf.prev_result {
        let mut merged = CniResult::parse(prev, "prevResult")?;
        let off = merged.interfaces.len();
        for ip in &mut ours.ips {
            ip.interface = ip.interface.map(|i| i + off);
        }
        merged.interfaces.extend(ours.interfaces);
        merged.ips.extend(ours.ips);
        merged.routes.extend(ours.routes);
        if merged.dns.is_null() {
            merged.dns = ours.dns;
        }
        ours = merged;
    }
    Ok(ours.to_json(&conf.cni_version))
}

fn wait_ready(conf: &NetConf, dp: &Dataplane, ifindex: u32) -> Result<()> {
    let timeout = Duration::from_millis(conf.policy.ready_timeout_ms);
    if timeout.is_zero() {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        if dp.is_ready(ifindex)? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    match conf.policy.on_ready_timeout {
        OnReadyTimeout::Continue => {
            eprintln!(
                "weir: endpoint {ifindex} not READY after {} ms; continuing (policy.onReadyTimeout=continue): \
                 the pod stays fail-closed until weir-policyd programs it",
                conf.policy.ready_timeout_ms
            );
            Ok(())
        }
        OnReadyTimeout::Fail => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "endpoint not READY after policy.readyTimeoutMs={} ms: weir-policyd is not running or not programming \
                 this node (bpffsRoot {}, runDir {}); start weir-policyd, or raise policy.readyTimeoutMs",
                conf.policy.ready_timeout_ms,
                conf.policy.bpffs_root.display(),
                conf.policy.run_dir.display()
            ),
        )),
    }
}
