//! From the Nodes in the store to the kernel entries this node should hold:
//! pure, so every rule below is unit-tested without a kernel. The apply step
//! (`apply.rs`) diffs the result against what the kernel holds.
//!
//! A remote node whose input is wrong (no pod CIDR, a pod CIDR overlapping
//! another node's, unreadable annotations, a backend that does not match
//! ours) is *held*: reported, and whatever entries it had stay as they are,
//! so a typo never cuts a working node off. A host-gw peer that is not
//! on-link gets no route at all (a route via an unreachable next hop would
//! blackhole its pods silently).

use super::annotations::{self, Published};
use super::cidr;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Why a node (or this node's backend) is not programmed as asked: the
/// label of `weir_node_network_errors{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    NoPodCidr,
    OverlappingPodCidrs,
    BadAnnotation,
    NoBackendData,
    BackendMismatch,
    NoAddress,
    NotOnLink,
    PortInUse,
    MtuTooSmall,
    Underlay,
    Kernel,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::NoPodCidr,
        Reason::OverlappingPodCidrs,
        Reason::BadAnnotation,
        Reason::NoBackendData,
        Reason::BackendMismatch,
        Reason::NoAddress,
        Reason::NotOnLink,
        Reason::PortInUse,
        Reason::MtuTooSmall,
        Reason::Underlay,
        Reason::Kernel,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoPodCidr => "no_pod_cidr",
            Reason::OverlappingPodCidrs => "overlapping_pod_cidrs",
            Reason::BadAnnotation => "bad_annotation",
            Reason::NoBackendData => "no_backend_data",
            Reason::BackendMismatch => "backend_mismatch",
            Reason::NoAddress => "no_address",
            Reason::NotOnLink => "not_on_link",
            Reason::PortInUse => "port_in_use",
            Reason::MtuTooSmall => "mtu_too_small",
            Reason::Underlay => "underlay",
            Reason::Kernel => "kernel",
        }
    }
}

/// One problem, naming the node and the field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub reason: Reason,
    pub node: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}: {}", self.node, self.message)
    }
}

/// The backend this node runs, with what the desired entries depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalBackend {
    /// Routes leave through the underlay (`link`); a peer is on-link when
    /// its address lies in one of `connected`.
    HostGw { link: u32, connected: Vec<IpNet> },
    /// Routes go through the VXLAN device `link`; peers must publish the
    /// same VNI and port and an underlay address of `underlay_v4`'s family.
    Vxlan { link: u32, vni: u32, port: u16, underlay_v4: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub gw: IpAddr,
    pub oif: u32,
    /// The gateway is reachable through `oif` without a connected route
    /// (the VXLAN VTEP addresses).
    pub onlink: bool,
}

/// A permanent neighbour entry on the VXLAN device: VTEP address -> MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// A permanent FDB entry on the VXLAN device: VTEP MAC -> underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// What one remote node needs on this one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeEntries {
    pub routes: BTreeSet<Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<Fdb>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredEntries {
    /// Remote nodes programmed as their objects say.
    pub nodes: BTreeMap<String, NodeEntries>,
    /// Remote nodes whose entries must stay as they are (bad input).
    pub held: BTreeSet<String>,
    /// Whether this node's own objects are sound enough to publish and to
    /// hand its pod CIDRs to the CNI binary.
    pub self_pod_cidrs: Option<Vec<IpNet>>,
    pub problems: Vec<Problem>,
}

/// The entries `self_name` should hold for every other node in `nodes`.
pub fn desired(self_name: &str, nodes: &BTreeMap<String, Node>, backend: &LocalBackend) -> DesiredEntries {
    let mut out = DesiredEntries::default();
    let mut cidrs: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
    for (name, node) in nodes {
        match cidr::pod_cidrs(node) {
            Ok(c) => {
                cidrs.insert(name.clone(), c);
            }
            Err(e) => out.problems.push(Problem { reason: Reason::NoPodCidr, node: name.clone(), message: e }),
        }
    }
    let mut overlapping = BTreeSet::new();
    for (a, b) in cidr::overlaps(&cidrs) {
        out.problems.push(Problem {
            reason: Reason::OverlappingPodCidrs,
            node: a.clone(),
            message: format!(
                "spec.podCIDRs {:?} overlap node {b}'s {:?}: neither node's routes change until one is fixed",
                cidrs[&a], cidrs[&b]
            ),
        });
        overlapping.insert(a);
        overlapping.insert(b);
    }
    if !overlapping.contains(self_name) {
        out.self_pod_cidrs = cidrs.get(self_name).cloned();
    }
    for name in nodes.keys().filter(|n| *n != self_name) {
        let Some(pod_cidrs) = cidrs.get(name).filter(|_| !overlapping.contains(name)) else {
            out.held.insert(name.clone());
            continue;
        };
        match remote_entries(name, &nodes[name], pod_cidrs, backend) {
            Ok(e) => {
                out.nodes.insert(name.clone(), e);
            }
            Err(p) => {
                if p.reason != Reason::NotOnLink {
                    out.held.insert(name.clone());
                }
                out.problems.push(p);
            }
        }
    }
    out.problems.sort();
    out
}

fn remote_entries(
    name: &str,
    node: &Node,
    pod_cidrs: &[IpNet],
    backend: &LocalBackend,
) -> Result<NodeEntries, Problem> {
    let problem = |reason, message: String| Problem { reason, node: name.to_string(), message };
    let published = annotations::parse(node.metadata.annotations.as_ref())
        .map_err(|e| problem(Reason::BadAnnotation, e.to_string()))?;
    let mut entries = NodeEntries::default();
    match backend {
        LocalBackend::HostGw { link, connected } => {
            if let Some(Published::Vxlan { .. }) = published {
                return Err(problem(
                    Reason::BackendMismatch,
                    format!(
                        "annotation {}: it runs vxlan, this node host-gw; every node needs the same --backend",
                        annotations::BACKEND_TYPE
                    ),
                ));
            }
            for c in pod_cidrs {
                let v4 = c.addr().is_ipv4();
                let Some(gw) = cidr::internal_ip(node, v4) else {
                    return Err(problem(
                        Reason::NoAddress,
                        format!("status.addresses: no {} InternalIP to route its pod CIDR {c} via", family(v4)),
                    ));
                };
                if !connected.iter().any(|n| n.contains(&gw)) {
                    return Err(problem(
                        Reason::NotOnLink,
                        format!(
                            "InternalIP {gw} is not on-link (not in the underlay's connected subnets {connected:?}): host-gw needs \
                             every node in one L2 segment; no route to its pod CIDR {c} (use --backend vxlan across subnets)"
                        ),
                    ));
                }
                entries.routes.insert(Route { dst: *c, gw, oif: *link, onlink: false });
            }
        }
        LocalBackend::Vxlan { link, vni, port, underlay_v4 } => {
            let (public_ip, mac) = match published {
                None => {
                    return Err(problem(
                        Reason::NoBackendData,
                        format!(
                            "annotations {}: not published yet (its weir-policyd has not run)",
                            annotations::BACKEND_DATA
                        ),
                    ))
                }
                Some(Published::HostGw { .. }) => {
                    return Err(problem(
                        Reason::BackendMismatch,
                        format!(
                            "annotation {}: it runs host-gw, this node vxlan; every node needs the same --backend",
                            annotations::BACKEND_TYPE
                        ),
                    ))
                }
                Some(Published::Vxlan { public_ip, vtep_mac, vni: their_vni, port: their_port }) => {
                    if (their_vni, their_port) != (*vni, *port) {
                        return Err(problem(
                            Reason::BackendMismatch,
                            format!(
                                "annotation {}: vni {their_vni} port {their_port}, this node vni {vni} port {port}; every node \
                                 needs the same --vxlan-vni and --vxlan-port",
                                annotations::BACKEND_DATA
                            ),
                        ));
                    }
                    (public_ip, vtep_mac)
                }
            };
            if public_ip.is_ipv4() != *underlay_v4 {
                return Err(problem(
                    Reason::NoAddress,
                    format!(
                        "annotation {}: {public_ip} is {}, this node's underlay {}",
                        annotations::PUBLIC_IP,
                        family(public_ip.is_ipv4()),
                        family(*underlay_v4)
                    ),
                ));
            }
            entries.fdb.insert(Fdb { mac, dst: public_ip });
            for c in pod_cidrs {
                let vtep = c.network();
                entries.routes.insert(Route { dst: *c, gw: vtep, oif: *link, onlink: true });
                entries.neighbours.insert(Neighbour { ip: vtep, mac });
            }
        }
    }
    Ok(entries)
}

fn family(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    fn node(name: &str, cidrs: &[&str], ips: &[&str], published: Option<Published>) -> (String, Node) {
        let mut n = crate::node::cidr::tests::node(name, cidrs, ips);
        n.metadata.annotations = published.as_ref().map(annotations::format);
        (name.to_string(), n)
    }

    fn vx(ip: &str, last: u8) -> Option<Published> {
        Some(Published::Vxlan { public_ip: ip.parse().unwrap(), vtep_mac: [2, 0, 0, 0, 0, last], vni: 1, port: 8472 })
    }

    const VXLAN: LocalBackend = LocalBackend::Vxlan { link: 9, vni: 1, port: 8472, underlay_v4: true };

    fn hostgw() -> LocalBackend {
        LocalBackend::HostGw {
            link: 3,
            connected: vec!["192.0.2.0/24".parse().unwrap(), "2001:db8::/64".parse().unwrap()],
        }
    }

    fn routes(d: &DesiredEntries) -> Vec<String> {
        d.nodes
            .values()
            .flat_map(|e| &e.routes)
            .map(|r| format!("{} via {} dev {}{}", r.dst, r.gw, r.oif, if r.onlink { " onlink" } else { "" }))
            .collect()
    }

    #[test]
    fn vxlan_is_a_route_a_neighbour_and_an_fdb_entry_per_remote_node() {
        let nodes = BTreeMap::from([
            node("a", &["10.1.0.0/24"], &["192.0.2.1"], vx("192.0.2.1", 1)),
            node("b", &["10.1.1.0/24", "fd00:1:1::/64"], &["192.0.2.2"], vx("192.0.2.2", 2)),
        ]);
        let d = desired("a", &nodes, &VXLAN);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.self_pod_cidrs, Some(vec!["10.1.0.0/24".parse().unwrap()]));
        assert_eq!(routes(&d), ["10.1.1.0/24 via 10.1.1.0 dev 9 onlink", "fd00:1:1::/64 via fd00:1:1:: dev 9 onlink"]);
        let b = &d.nodes["b"];
        let mac = [2, 0, 0, 0, 0, 2];
        assert_eq!(
            b.neighbours,
            BTreeSet::from([
                Neighbour { ip: "10.1.1.0".parse().unwrap(), mac },
                Neighbour { ip: "fd00:1:1::".parse().unwrap(), mac }
            ])
        );
        assert_eq!(b.fdb, BTreeSet::from([Fdb { mac, dst: "192.0.2.2".parse().unwrap() }]));
    }

    #[test]
    fn host_gw_is_a_route_per_family_via_the_internal_ip() {
        let nodes = BTreeMap::from([
            node("a", &["10.1.0.0/24"], &["192.0.2.1"], None),
            node("b", &["10.1.1.0/24", "fd00:1:1::/64"], &["192.0.2.2", "2001:db8::2"], None),
        ]);
        let d = desired("a", &nodes, &hostgw());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(routes(&d), ["10.1.1.0/24 via 192.0.2.2 dev 3", "fd00:1:1::/64 via 2001:db8::2 dev 3"]);
    }

    #[test]
    fn a_host_gw_peer_off_link_gets_no_route_and_is_reported() {
        let nodes = BTreeMap::from([
            node("a", &["10.1.0.0/24"], &["192.0.2.1"], None),
            node("b", &["10.1.1.0/24"], &["198.51.100.2"], None),
        ]);
        let d = desired("a", &nodes, &hostgw());
        assert!(d.nodes.is_empty() && d.held.is_empty());
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].reason, Reason::NotOnLink);
        assert!(
            d.problems[0].to_string().starts_with("node b: InternalIP 198.51.100.2 is not on-link"),
            "{}",
            d.problems[0]
        );
    }

    #[test]
    fn bad_input_holds_the_node_and_names_it() {
        let nodes = BTreeMap::from([
            node("a", &["10.1.0.0/24"], &["192.0.2.1"], vx("192.0.2.1", 1)),
            node("nocidr", &[], &["192.0.2.3"], vx("192.0.2.3", 3)),
            node("over1", &["10.1.8.0/24"], &["192.0.2.4"], vx("192.0.2.4", 4)),
            node("over2", &["10.1.8.128/25"], &["192.0.2.5"], vx("192.0.2.5", 5)),
            node("unpublished", &["10.1.9.0/24"], &["192.0.2.6"], None),
            node(
                "hostgw",
                &["10.1.10.0/24"],
                &["192.0.2.7"],
                Some(Published::HostGw { public_ip: "192.0.2.7".parse().unwrap() }),
            ),
            node("otherport", &["10.1.11.0/24"], &["192.0.2.8"], {
                Some(Published::Vxlan {
                    public_ip: "192.0.2.8".parse().unwrap(),
                    vtep_mac: [2, 0, 0, 0, 0, 8],
                    vni: 1,
                    port: 4789,
                })
            }),
            node("v6underlay", &["10.1.12.0/24"], &["2001:db8::9"], vx("2001:db8::9", 9)),
            node("good", &["10.1.13.0/24"], &["192.0.2.10"], vx("192.0.2.10", 10)),
        ]);
        let mut nodes = nodes;
        let mut broken = node("badmac", &["10.1.14.0/24"], &["192.0.2.11"], None).1;
        broken.metadata.annotations = Some(BTreeMap::from([
            (annotations::BACKEND_TYPE.into(), "vxlan".into()),
            (annotations::BACKEND_DATA.into(), r#"{"vtepMAC":"nope","vni":1,"port":8472}"#.into()),
            (annotations::PUBLIC_IP.into(), "192.0.2.11".into()),
        ]));
        nodes.insert("badmac".into(), broken);
        let d = desired("a", &nodes, &VXLAN);
        assert_eq!(d.nodes.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(
            d.held.iter().map(String::as_str).collect::<Vec<_>>(),
            ["badmac", "hostgw", "nocidr", "otherport", "over1", "over2", "unpublished", "v6underlay"]
        );
        let by_reason =
            |r: Reason| d.problems.iter().filter(|p| p.reason == r).map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(by_reason(Reason::NoPodCidr).len(), 1);
        assert!(by_reason(Reason::NoPodCidr)[0].starts_with("node nocidr: spec.podCIDRs"));
        let over = by_reason(Reason::OverlappingPodCidrs);
        assert!(over.len() == 1 && over[0].starts_with("node over1:") && over[0].contains("node over2's"), "{over:?}");
        assert!(by_reason(Reason::BadAnnotation)[0]
            .starts_with("node badmac: annotation weir.io/backend-data: vtepMAC \"nope\""));
        assert!(by_reason(Reason::NoBackendData)[0].starts_with("node unpublished:"));
        let mismatch = by_reason(Reason::BackendMismatch);
        assert!(mismatch.iter().any(|m| m.starts_with("node hostgw:") && m.contains("runs host-gw")), "{mismatch:?}");
        assert!(
            mismatch.iter().any(|m| m.starts_with("node otherport:") && m.contains("--vxlan-port")),
            "{mismatch:?}"
        );
        assert!(by_reason(Reason::NoAddress)[0].starts_with("node v6underlay: annotation weir.io/public-ip"));
    }

    #[test]
    fn this_node_overlapping_or_without_cidr_is_not_handed_on() {
        let nodes = BTreeMap::from([
            node("a", &["10.1.0.0/24"], &["192.0.2.1"], None),
            node("b", &["10.1.0.0/25"], &["192.0.2.2"], None),
        ]);
        let d = desired("a", &nodes, &hostgw());
        assert_eq!(d.self_pod_cidrs, None);
        assert_eq!(d.held, BTreeSet::from(["b".to_string()]));
        let d = desired("a", &BTreeMap::from([node("a", &[], &["192.0.2.1"], None)]), &hostgw());
        assert_eq!(d.self_pod_cidrs, None);
        assert_eq!(d.problems[0].reason, Reason::NoPodCidr);
        // A node absent from the store is simply not desired.
        assert!(desired("a", &BTreeMap::new(), &hostgw()).nodes.is_empty());
    }
}
