//! One reconcile of node networking: find the underlay, make sure the
//! backend's device is right, compute the wanted entries (`desired`), and
//! write the difference to the kernel, make-before-break. Then hand this
//! node's pod CIDRs and MTU to the CNI binary and say what to publish.

use super::annotations::{self, Published};
use super::cidr;
use super::desired::{self, DesiredEntries, Fdb, LocalBackend, Neighbour, NodeEntries, Problem, Reason, Route};
use super::netlink::{self as nl, VxlanSpec};
use super::{Backend, Config};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use weir_common::netlink::{is_errno, Netlink};
use weir_common::node_network::NodeNetwork;

/// VXLAN's overhead on the underlay: outer IP + UDP + VXLAN + inner
/// Ethernet (flannel's numbers).
const VXLAN_OVERHEAD_V4: u32 = 50;
const VXLAN_OVERHEAD_V6: u32 = 70;

/// What one reconcile found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Every current problem, each naming its node and field.
    pub problems: Vec<Problem>,
    /// Remote nodes whose entries are programmed.
    pub remote_nodes: usize,
    /// This node's `weir.io/*` annotations, once its backend is up.
    pub annotations: Option<BTreeMap<String, String>>,
    /// What was handed to the CNI binary (None: the last good file stays).
    pub node_network: Option<NodeNetwork>,
    /// Kernel entries written and removed.
    pub written: usize,
    pub removed: usize,
    /// The device traffic to other nodes leaves by (the VXLAN device, or
    /// the underlay with host-gw): where leave_node judges local pods'
    /// post-DNAT egress.
    pub leave_device: Option<u32>,
}

/// The node-networking agent: settings, and the entries it last applied
/// per remote node (what a held node keeps).
pub struct NodeNetworking {
    cfg: Config,
    node: String,
    run_dir: PathBuf,
    applied: BTreeMap<String, NodeEntries>,
}

/// This node's underlay, as the kernel has it.
struct Underlay {
    index: u32,
    name: String,
    mtu: u32,
    public_ip: IpAddr,
    connected: Vec<IpNet>,
}

impl NodeNetworking {
    pub fn new(cfg: Config, node: String, run_dir: PathBuf) -> NodeNetworking {
        NodeNetworking { cfg, node, run_dir, applied: BTreeMap::new() }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Bring the kernel in line with `nodes`. Opens its netlink socket in
    /// the calling thread's network namespace.
    pub fn reconcile(&mut self, nodes: &BTreeMap<String, Node>) -> Outcome {
        let mut out = Outcome::default();
        if self.cfg.backend == Backend::None {
            // Only this node's own CIDRs matter here: nothing is routed.
            let d = desired::desired(&self.node, nodes, &LocalBackend::HostGw { link: 0, connected: vec![] });
            let mine = format!("node {}'s", self.node);
            out.problems = d
                .problems
                .into_iter()
                .filter(|p| match p.reason {
                    Reason::NoPodCidr => p.node == self.node,
                    Reason::OverlappingPodCidrs => p.node == self.node || p.message.contains(&mine),
                    _ => false,
                })
                .collect();
            self.hand_off(d.self_pod_cidrs, None, &mut out);
            return out;
        }
        let me = self.node.clone();
        let problem = |reason, message: String| Problem { reason, node: me.clone(), message };
        let mut netlink = match Netlink::new() {
            Ok(n) => n,
            Err(e) => {
                out.problems.push(problem(Reason::Kernel, format!("netlink socket: {e}")));
                return out;
            }
        };
        let underlay = match self.underlay(&mut netlink, nodes.get(&self.node)) {
            Ok(u) => u,
            Err(p) => {
                out.problems.push(p);
                return out;
            }
        };
        let self_v6_pods = nodes
            .get(&self.node)
            .and_then(|n| cidr::pod_cidrs(n).ok())
            .is_some_and(|c| c.iter().any(|c| c.addr().is_ipv6()));
        let (pod_mtu, overhead) = match self.cfg.backend {
            Backend::Vxlan if underlay.public_ip.is_ipv4() => {
                (underlay.mtu.saturating_sub(VXLAN_OVERHEAD_V4), VXLAN_OVERHEAD_V4)
            }
            Backend::Vxlan => (underlay.mtu.saturating_sub(VXLAN_OVERHEAD_V6), VXLAN_OVERHEAD_V6),
            _ => (underlay.mtu, 0),
        };
        let min = if self_v6_pods { 1280 } else { 68 };
        if pod_mtu < min {
            out.problems.push(problem(
                Reason::MtuTooSmall,
                format!(
                    "underlay {} MTU {} leaves pods {pod_mtu} after the {} backend's {overhead} bytes; pods need at least {min}: \
                     raise the underlay's MTU or use --backend host-gw",
                    underlay.name,
                    underlay.mtu,
                    self.cfg.backend.name()
                ),
            ));
            return out;
        }
        let (backend, published) = match self.cfg.backend {
            Backend::Vxlan => match self.ensure_vxlan(&mut netlink, &underlay, pod_mtu, nodes.get(&self.node)) {
                Ok(link) => (
                    LocalBackend::Vxlan {
                        link: link.index,
                        vni: self.cfg.vxlan_vni,
                        port: self.cfg.vxlan_port,
                        underlay_v4: underlay.public_ip.is_ipv4(),
                    },
                    Published::Vxlan {
                        public_ip: underlay.public_ip,
                        vtep_mac: link.mac,
                        vni: self.cfg.vxlan_vni,
                        port: self.cfg.vxlan_port,
                    },
                ),
                Err(p) => {
                    out.problems.push(p);
                    return out;
                }
            },
            _ => (
                LocalBackend::HostGw { link: underlay.index, connected: underlay.connected.clone() },
                Published::HostGw { public_ip: underlay.public_ip },
            ),
        };
        let d = desired::desired(&self.node, nodes, &backend);
        let device = match backend {
            LocalBackend::Vxlan { link, .. } => Some(link),
            LocalBackend::HostGw { .. } => None,
        };
        out.leave_device = Some(device.unwrap_or(underlay.index));
        let errors = self.apply(&mut netlink, &d, nodes, device, &mut out);
        out.problems.extend(d.problems.iter().cloned());
        out.problems.extend(errors.into_iter().map(|e| problem(Reason::Kernel, e)));
        out.remote_nodes = d.nodes.len();
        out.annotations = Some(annotations::format(&published));
        self.hand_off(d.self_pod_cidrs, Some(pod_mtu), &mut out);
        out
    }

    /// Write the node network file when this node's pod CIDRs are sound;
    /// otherwise the last good file stays (the problem is reported).
    fn hand_off(&self, pod_cidrs: Option<Vec<IpNet>>, mtu: Option<u32>, out: &mut Outcome) {
        let Some(pod_cidrs) = pod_cidrs else { return };
        let n = NodeNetwork { node: self.node.clone(), pod_cidrs, mtu };
        match n.write(&self.run_dir) {
            Ok(()) => out.node_network = Some(n),
            Err(e) => {
                out.problems.push(Problem { reason: Reason::Kernel, node: self.node.clone(), message: e.to_string() })
            }
        }
    }

    /// `--underlay-iface`, or the interface holding this node's InternalIP;
    /// the public IP is the InternalIP on it (IPv4 first), else its first
    /// global address.
    fn underlay(&self, netlink: &mut Netlink, me: Option<&Node>) -> Result<Underlay, Problem> {
        let problem = |reason, message: String| Problem { reason, node: self.node.clone(), message };
        let kernel = |what: &str, e: std::io::Error| problem(Reason::Kernel, format!("{what}: {e}"));
        let mut internal = me.map(cidr::internal_ips).unwrap_or_default();
        internal.sort_by_key(|a| a.is_ipv6());
        let links = netlink.links().map_err(|e| kernel("listing links", e))?;
        let mut found = None;
        for l in &links {
            if self.cfg.underlay_iface.as_ref().is_some_and(|n| *n != l.name) {
                continue;
            }
            let addrs = netlink.addresses(l.index).map_err(|e| kernel("listing addresses", e))?;
            let ip = internal.iter().find(|ip| addrs.iter().any(|a| a.addr() == **ip)).copied();
            let ip = match (&self.cfg.underlay_iface, ip) {
                (_, Some(ip)) => Some(ip),
                (Some(_), None) => {
                    let mut a: Vec<IpAddr> = addrs.iter().map(|a| a.addr()).collect();
                    a.sort_by_key(|a| a.is_ipv6());
                    a.first().copied()
                }
                (None, None) => None,
            };
            if let Some(public_ip) = ip {
                found = Some(Underlay {
                    index: l.index,
                    name: l.name.clone(),
                    mtu: l.mtu,
                    public_ip,
                    connected: addrs.iter().map(|a| a.trunc()).collect(),
                });
                break;
            }
        }
        found.ok_or_else(|| match (&self.cfg.underlay_iface, me) {
            (Some(name), _) if links.iter().any(|l| l.name == *name) => {
                problem(Reason::Underlay, format!("--underlay-iface {name} has no global address to reach other nodes from"))
            }
            (Some(name), _) => problem(Reason::Underlay, format!("--underlay-iface {name}: no such interface")),
            (None, None) => problem(
                Reason::Underlay,
                "no Node object of this name in the store yet; its InternalIP picks the underlay (or pass --underlay-iface)".into(),
            ),
            (None, Some(_)) => problem(
                Reason::Underlay,
                format!(
                    "status.addresses: no InternalIP ({internal:?}) is on any interface of this node; pass --underlay-iface"
                ),
            ),
        })
    }

    /// The VXLAN device as asked (recreated when its VNI, port, underlay or
    /// source address changed), up, at `mtu`, holding this node's VTEP
    /// addresses (the network address of each pod CIDR, as /32 or /128).
    fn ensure_vxlan(
        &self,
        netlink: &mut Netlink,
        underlay: &Underlay,
        mtu: u32,
        me: Option<&Node>,
    ) -> Result<nl::VxlanLink, Problem> {
        let problem = |reason, message: String| Problem { reason, node: self.node.clone(), message };
        let spec = VxlanSpec {
            name: self.cfg.vxlan_device(),
            vni: self.cfg.vxlan_vni,
            port: self.cfg.vxlan_port,
            underlay: underlay.index,
            local: underlay.public_ip,
            mtu,
        };
        let kernel = |what: String, e: std::io::Error| problem(Reason::Kernel, format!("{what}: {e}"));
        let existing = nl::vxlan_link(netlink, &spec.name).map_err(|e| problem(Reason::Underlay, e.to_string()))?;
        let mut created = false;
        let link = match existing {
            Some(l) if l.matches(&spec) => l,
            other => {
                if let Some(old) = other {
                    log::info!("{}: VNI, port, underlay or address changed; recreating it", spec.name);
                    netlink.delete_link(old.index).map_err(|e| kernel(format!("deleting {}", spec.name), e))?;
                }
                nl::create_vxlan(netlink, &spec)
                    .map_err(|e| kernel(format!("creating VXLAN device {}", spec.name), e))?;
                created = true;
                nl::vxlan_link(netlink, &spec.name)
                    .map_err(|e| problem(Reason::Underlay, e.to_string()))?
                    .ok_or_else(|| problem(Reason::Kernel, format!("{} vanished after creation", spec.name)))?
            }
        };
        if link.mtu != mtu {
            netlink.set_mtu(link.index, mtu).map_err(|e| kernel(format!("setting {} MTU {mtu}", spec.name), e))?;
        }
        if !link.up {
            if let Err(e) = netlink.set_up(link.index) {
                if created {
                    // Leave nothing half-made behind.
                    let _ = netlink.delete_link(link.index);
                }
                return Err(if is_errno(&e, libc::EADDRINUSE) {
                    problem(
                        Reason::PortInUse,
                        format!(
                            "VXLAN UDP port {} is already in use on this node (another VXLAN device or program): choose \
                             another with --vxlan-port (every node must use the same)",
                            spec.port
                        ),
                    )
                } else {
                    kernel(format!("bringing {} up", spec.name), e)
                });
            }
        }
        if let Some(cidrs) = me.and_then(|n| cidr::pod_cidrs(n).ok()) {
            let want: BTreeSet<IpNet> = cidrs.iter().map(|c| IpNet::from(c.network())).collect();
            let have: BTreeSet<IpNet> = netlink
                .addresses(link.index)
                .map_err(|e| kernel(format!("listing {} addresses", spec.name), e))?
                .into_iter()
                .collect();
            for a in want.difference(&have) {
                netlink
                    .add_address(link.index, *a, true)
                    .map_err(|e| kernel(format!("adding {a} to {}", spec.name), e))?;
            }
            for a in have.difference(&want) {
                netlink
                    .del_address(link.index, *a)
                    .map_err(|e| kernel(format!("removing {a} from {}", spec.name), e))?;
            }
        }
        Ok(link)
    }

    /// Diff and apply: FDB, then neighbours, then routes (a route appears
    /// only once its encapsulation is ready); then removals in reverse.
    /// Entries of held nodes stay. Returns the errors met (it carries on).
    fn apply(
        &mut self,
        netlink: &mut Netlink,
        d: &DesiredEntries,
        nodes: &BTreeMap<String, Node>,
        device: Option<u32>,
        out: &mut Outcome,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let mut want = NodeEntries::default();
        for e in d.nodes.values() {
            want.routes.extend(&e.routes);
            want.neighbours.extend(&e.neighbours);
            want.fdb.extend(&e.fdb);
        }
        let routes = match nl::weir_routes(netlink) {
            Ok(r) => r,
            Err(e) => return vec![format!("listing Weir's routes: {e}")],
        };
        let (neighbours, fdb) = match device {
            Some(dev) => match (nl::neighbours(netlink, dev), nl::fdb(netlink, dev)) {
                (Ok(n), Ok(f)) => (n, f),
                (Err(e), _) | (_, Err(e)) => return vec![format!("listing the VXLAN device's entries: {e}")],
            },
            None => (vec![], vec![]),
        };
        let keep = self.held_entries(d, nodes, &routes, &neighbours, &fdb);

        if let Some(dev) = device {
            for f in want.fdb.iter().filter(|f| !fdb.contains(f)) {
                count(nl::set_fdb(netlink, dev, f), &mut out.written, &mut errors, || format!("FDB {f:?}"));
            }
            for n in want.neighbours.iter().filter(|n| !neighbours.contains(n)) {
                count(nl::set_neighbour(netlink, dev, n), &mut out.written, &mut errors, || {
                    format!("neighbour {}", n.ip)
                });
            }
        }
        for r in want.routes.iter().filter(|r| !routes.contains(r)) {
            count(nl::set_route(netlink, r), &mut out.written, &mut errors, || format!("route {} via {}", r.dst, r.gw));
        }
        for r in routes.iter().filter(|r| !want.routes.contains(r) && !keep.routes.contains(r)) {
            count(nl::del_route(netlink, r), &mut out.removed, &mut errors, || {
                format!("removing route {} via {}", r.dst, r.gw)
            });
        }
        if let Some(dev) = device {
            for n in neighbours
                .iter()
                .filter(|n| !want.neighbours.iter().any(|w| w.ip == n.ip) && !keep.neighbours.contains(n))
            {
                count(nl::del_neighbour(netlink, dev, n.ip), &mut out.removed, &mut errors, || {
                    format!("removing neighbour {}", n.ip)
                });
            }
            for f in fdb.iter().filter(|f| !want.fdb.contains(f) && !keep.fdb.contains(f)) {
                count(nl::del_fdb(netlink, dev, f), &mut out.removed, &mut errors, || format!("removing FDB {f:?}"));
            }
        }
        let mut applied = d.nodes.clone();
        for held in &d.held {
            if let Some(e) = self.applied.get(held) {
                applied.insert(held.clone(), e.clone());
            }
        }
        self.applied = applied;
        errors
    }

    /// Existing entries that belong to held nodes: what this agent applied
    /// for them, or (after a restart, when it has no memory) what matches
    /// the pod CIDRs they declare.
    fn held_entries(
        &self,
        d: &DesiredEntries,
        nodes: &BTreeMap<String, Node>,
        routes: &[Route],
        neighbours: &[Neighbour],
        fdb: &[Fdb],
    ) -> NodeEntries {
        let mut keep = NodeEntries::default();
        for held in &d.held {
            if let Some(e) = self.applied.get(held) {
                keep.routes.extend(&e.routes);
                keep.neighbours.extend(&e.neighbours);
                keep.fdb.extend(&e.fdb);
            }
            let declared = nodes.get(held).and_then(|n| cidr::pod_cidrs(n).ok()).unwrap_or_default();
            keep.routes
                .extend(routes.iter().filter(|r| declared.iter().any(|c| c.contains(&r.dst) || r.dst.contains(c))));
        }
        let gateways: BTreeSet<IpAddr> = keep.routes.iter().map(|r| r.gw).collect();
        keep.neighbours.extend(neighbours.iter().filter(|n| gateways.contains(&n.ip)));
        let macs: BTreeSet<[u8; 6]> = keep.neighbours.iter().map(|n| n.mac).collect();
        keep.fdb.extend(fdb.iter().filter(|f| macs.contains(&f.mac)));
        keep
    }
}

fn count(r: std::io::Result<()>, n: &mut usize, errors: &mut Vec<String>, what: impl FnOnce() -> String) {
    match r {
        Ok(()) => *n += 1,
        Err(e) => errors.push(format!("{}: {e}", what())),
    }
}
