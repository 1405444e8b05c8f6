//! The kernel side of node networking: Weir's VXLAN device, its routes
//! (marked with [`RTPROT_WEIR`]), and the permanent neighbour and FDB
//! entries on that device. Built on the shared rtnetlink layer
//! (`weir_common::netlink`); nothing here shells out.

use super::desired::{Fdb, Neighbour, Route};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::io;
use std::net::IpAddr;
use weir_common::netlink::{family_of, is_errno, Netlink};

/// `rtm_protocol` of every route Weir installs (0x57, 'W'; unused by the
/// kernel and by routing daemons in /etc/iproute2/rt_protos). Weir lists
/// and deletes only routes carrying it, so nobody else's route is touched.
/// `ip route show proto 87` shows them.
pub const RTPROT_WEIR: u8 = 0x57;

/// What Weir reads back about a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub underlay: Option<u32>,
    pub local: Option<IpAddr>,
    pub learning: Option<bool>,
}

/// How the VXLAN device is asked for (flannel's settings: no learning, the
/// underlay device and address as source, a fixed destination port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub underlay: u32,
    pub local: IpAddr,
    pub mtu: u32,
}

impl VxlanLink {
    /// Whether an existing device is the one `spec` asks for (its MTU and
    /// state are adjusted in place; anything else means recreate).
    pub fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == Some(spec.vni)
            && self.port == Some(spec.port)
            && self.underlay == Some(spec.underlay)
            && self.local == Some(spec.local)
            && self.learning != Some(true)
    }
}

/// Either a VXLAN device by that name, or `Err` naming what the name holds.
pub fn vxlan_link(nl: &mut Netlink, name: &str) -> io::Result<Option<VxlanLink>> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    let replies = match nl.request(RouteNetlinkMessage::GetLink(m), netlink_packet_core::NLM_F_ACK) {
        Ok(r) => r,
        Err(e) if is_errno(&e, libc::ENODEV) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(msg) = replies.iter().find_map(|r| match r {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    }) else {
        return Ok(None);
    };
    let mut link = VxlanLink {
        index: msg.header.index,
        mac: [0; 6],
        mtu: 0,
        up: msg.header.flags.contains(netlink_packet_route::link::LinkFlags::Up),
        vni: None,
        port: None,
        underlay: None,
        local: None,
        learning: None,
    };
    let mut kind = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::Address(b) if b.len() == 6 => link.mac.copy_from_slice(b),
            LinkAttribute::Mtu(x) => link.mtu = *x,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for v in attrs {
                                match v {
                                    InfoVxlan::Id(x) => link.vni = Some(*x),
                                    InfoVxlan::Port(x) => link.port = Some(*x),
                                    InfoVxlan::Link(x) => link.underlay = Some(*x),
                                    InfoVxlan::Local(x) => link.local = Some(IpAddr::V4(*x)),
                                    InfoVxlan::Local6(x) => link.local = Some(IpAddr::V6(*x)),
                                    InfoVxlan::Learning(x) => link.learning = Some(*x),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match kind {
        Some(InfoKind::Vxlan) => Ok(Some(link)),
        other => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{name} exists and is not a VXLAN device (kind {other:?}); remove it or choose another --vxlan-vni"
            ),
        )),
    }
}

/// Create the VXLAN device (down).
pub fn create_vxlan(nl: &mut Netlink, spec: &VxlanSpec) -> io::Result<()> {
    let mut data = vec![
        InfoVxlan::Id(spec.vni),
        InfoVxlan::Link(spec.underlay),
        InfoVxlan::Port(spec.port),
        InfoVxlan::Learning(false),
    ];
    data.push(match spec.local {
        IpAddr::V4(a) => InfoVxlan::Local(a),
        IpAddr::V6(a) => InfoVxlan::Local6(a),
    });
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
    m.attributes.push(LinkAttribute::Mtu(spec.mtu));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(data))]));
    nl.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
}

fn route_message(r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(&r.dst.addr());
    m.header.destination_prefix_length = r.dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(RTPROT_WEIR);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes.push(RouteAttribute::Destination(RouteAddress::from(r.dst.network())));
    m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(r.gw)));
    m.attributes.push(RouteAttribute::Oif(r.oif));
    m
}

/// Install or replace the main table's route to `r.dst` (so a moved node's
/// route changes next hop in one step).
pub fn set_route(nl: &mut Netlink, r: &Route) -> io::Result<()> {
    nl.ack(RouteNetlinkMessage::NewRoute(route_message(r)), NLM_F_CREATE | NLM_F_REPLACE)
}

/// Delete exactly this Weir route; already gone is success.
pub fn del_route(nl: &mut Netlink, r: &Route) -> io::Result<()> {
    match nl.ack(RouteNetlinkMessage::DelRoute(route_message(r)), 0) {
        Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Every main-table route marked as Weir's, both families.
pub fn weir_routes(nl: &mut Netlink) -> io::Result<Vec<Route>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        for r in nl.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewRoute(m) = r else {
                continue;
            };
            if m.header.table != RouteHeader::RT_TABLE_MAIN || m.header.protocol != RouteProtocol::from(RTPROT_WEIR) {
                continue;
            }
            let (mut dst, mut gw, mut oif) = (None, None, None);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(x)) => dst = Some(IpAddr::V4(*x)),
                    RouteAttribute::Destination(RouteAddress::Inet6(x)) => dst = Some(IpAddr::V6(*x)),
                    RouteAttribute::Gateway(RouteAddress::Inet(x)) => gw = Some(IpAddr::V4(*x)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(x)) => gw = Some(IpAddr::V6(*x)),
                    RouteAttribute::Oif(x) => oif = Some(*x),
                    _ => {}
                }
            }
            let (Some(dst), Some(gw), Some(oif)) = (dst, gw, oif) else {
                continue;
            };
            if let Ok(dst) = IpNet::new(dst, m.header.destination_prefix_length) {
                out.push(Route { dst, gw, oif, onlink: m.header.flags.contains(RouteFlags::Onlink) });
            }
        }
    }
    Ok(out)
}

fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(&ip);
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    m
}

/// A permanent neighbour entry (VTEP address -> VTEP MAC) on `index`.
pub fn set_neighbour(nl: &mut Netlink, index: u32, n: &Neighbour) -> io::Result<()> {
    let mut m = neighbour_message(index, n.ip);
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    nl.ack(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE)
}

pub fn del_neighbour(nl: &mut Netlink, index: u32, ip: IpAddr) -> io::Result<()> {
    match nl.ack(RouteNetlinkMessage::DelNeighbour(neighbour_message(index, ip)), 0) {
        Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ESRCH) => Ok(()),
        other => other,
    }
}

fn dump_neighbours(nl: &mut Netlink, family: AddressFamily) -> io::Result<Vec<NeighbourMessage>> {
    let mut q = NeighbourMessage::default();
    q.header.family = family;
    Ok(nl
        .request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewNeighbour(m) => Some(m),
            _ => None,
        })
        .collect())
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => Some([b[0], b[1], b[2], b[3], b[4], b[5]]),
        _ => None,
    })
}

fn destination(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) => Some(IpAddr::V4(*x)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(x)) => Some(IpAddr::V6(*x)),
        // AF_BRIDGE (FDB) messages carry the remote's address unparsed.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(&b[..]).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(&b[..]).ok()?)),
            _ => None,
        },
        _ => None,
    })
}

/// Permanent IPv4/IPv6 neighbour entries on `index` (Weir's device only).
pub fn neighbours(nl: &mut Netlink, index: u32) -> io::Result<Vec<Neighbour>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for m in dump_neighbours(nl, family)? {
            if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (destination(&m), lladdr(&m)) {
                out.push(Neighbour { ip, mac });
            }
        }
    }
    Ok(out)
}

fn fdb_message(index: u32, f: &Fdb) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    // The VXLAN device's own table (`bridge fdb ... self`).
    m.header.flags = NeighbourFlags::Own;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
    m.attributes.push(NeighbourAttribute::Destination(match f.dst {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    m
}

/// A permanent FDB entry (VTEP MAC -> remote underlay address); replaces
/// the MAC's destination when the remote node moved.
pub fn set_fdb(nl: &mut Netlink, index: u32, f: &Fdb) -> io::Result<()> {
    nl.ack(RouteNetlinkMessage::NewNeighbour(fdb_message(index, f)), NLM_F_CREATE | NLM_F_REPLACE)
}

pub fn del_fdb(nl: &mut Netlink, index: u32, f: &Fdb) -> io::Result<()> {
    match nl.ack(RouteNetlinkMessage::DelNeighbour(fdb_message(index, f)), 0) {
        Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// FDB entries with a remote destination on `index`.
pub fn fdb(nl: &mut Netlink, index: u32) -> io::Result<Vec<Fdb>> {
    Ok(dump_neighbours(nl, AddressFamily::Bridge)?
        .iter()
        .filter(|m| m.header.ifindex == index)
        .filter_map(|m| Some(Fdb { mac: lladdr(m)?, dst: destination(m)? }))
        .collect())
}
