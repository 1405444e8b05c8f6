//! The tc programs on arbitrary frames, through BPF_PROG_TEST_RUN against
//! real maps: a small node (endpoints, ipcache, a policy written as rules)
//! set up once per process under its own bpffs root, in a private network
//! namespace that holds the endpoints' veths and the node's uplink.
//!
//! An input is one control byte and one frame. The frame runs through
//! `to_pod` and `from_pod` of every endpoint and through `leave_node` on
//! the uplink, then its reverse (addresses and ports swapped, an echo
//! request turned into its reply) does the same, so replies and
//! established flows are reached too. Conntrack is emptied and a new
//! policy generation begun before each input, so inputs are independent.
//! The control byte (see [`Control`]) says whether each pod hook sees the
//! frame as the bridge would give it (from_pod: sent from the pod's MAC;
//! to_pod: a unicast frame addressed to the pod's MAC), which most inputs
//! do so that fuzzing goes past the MAC screen, or with the Ethernet
//! addresses as they are, which fuzzes the screen itself; and whether
//! leave_node runs before the pod hooks (it then judges flows no from_pod
//! approved) or after them.
//!
//! The oracle (docs/architecture-dataplane.md) judges a frame a program
//! passed. At both pod hooks the screen of the pod's own addresses comes
//! first ("A pod's own addresses"): an interface without an endpoint entry
//! passes nothing; VLAN-tagged and malformed frames must drop; from_pod
//! passes only what the pod may claim (its MAC, its ARP, its neighbour
//! discovery, its IP source addresses), to_pod only what is addressed to
//! the pod (its MAC or a group one, ARP for its address or a broadcast
//! announcement, its IP destinations, broadcast and multicast). Past the
//! screen, ARP, neighbour discovery and other non-IP frames are not
//! policy's concern; an IP packet must be part of a flow an endpoint
//! approved earlier in this input (the exact tuple at the approving
//! endpoint, or its reverse), or an ICMP error quoting one, or to/from the
//! node, or deferred (from_pod towards a local pod or a Service VIP), or
//! allowed by the rules: from_pod by the sender's egress; to_pod by the
//! destination's ingress and, for a local sender, the sender's egress.
//! Endpoints that are not READY allow nothing but the node. leave_node
//! ("Traffic between nodes") judges only IP packets from a local pod's
//! address: those must belong to a flow approved for that pod (from_pod's
//! record of a packet to a VIP approves nothing), or be allowed by its
//! egress; anything else passes untouched.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use weir_bpf::abi::{
    Endpoint, IpcacheValue, DIR_EGRESS, DIR_INGRESS, EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EP_READY, ID_ANY,
    ID_ANY_POD, ID_FIRST_CIDR, ID_FIRST_LABEL, ID_HOST, ID_WORLD, IPCACHE_SERVICE,
};
use weir_bpf::{pkt, Dataplane, Direction, Hook, PolicyMatch, TC_DROP, TC_PASS};

/// BPF_PROG_TEST_RUN takes at most about a page of packet data.
pub const MAX_FRAME: usize = 1500;

/// The input's first byte: how the frame is presented to the programs.
pub struct Control(pub u8);

impl Control {
    /// Both bits set (a quarter of random inputs): the pod hooks see the
    /// frame's Ethernet addresses as they are.
    pub const RAW_ETHERNET: u8 = 0b11;
    /// leave_node runs before the pod hooks, not after.
    pub const LEAVE_FIRST: u8 = 0b100;

    fn raw_ethernet(&self) -> bool {
        self.0 & Self::RAW_ETHERNET == Self::RAW_ETHERNET
    }
    fn leave_first(&self) -> bool {
        self.0 & Self::LEAVE_FIRST != 0
    }
}

// ---- the node ---------------------------------------------------------------

/// A local pod: its veth, identity, flags, MAC and addresses (IPv4 with
/// its subnet's prefix length, IPv6).
pub struct Pod {
    pub name: &'static str,
    pub identity: u32,
    pub flags: u32,
    pub mac: [u8; 6],
    pub v4: &'static str,
    pub v6: &'static str,
}

pub const PODS: &[Pod] = &[
    Pod {
        name: "wfz-e",
        identity: 300,
        flags: EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
        mac: [0x02, 0xfe, 0, 0, 0, 0x10],
        v4: "10.0.0.10/24",
        v6: "fd00::10/64",
    },
    Pod {
        name: "wfz-a",
        identity: 301,
        flags: EP_READY | EP_EGRESS_ISOLATED,
        mac: [0x02, 0xfe, 0, 0, 0, 0x20],
        v4: "10.0.0.20/24",
        v6: "fd00::20/64",
    },
    // Deny-all both ways.
    Pod {
        name: "wfz-d",
        identity: 302,
        flags: EP_READY | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
        mac: [0x02, 0xfe, 0, 0, 0, 0x30],
        v4: "10.0.0.30/24",
        v6: "fd00::30/64",
    },
    // Not READY: fail-closed but for the node.
    Pod {
        name: "wfz-n",
        identity: 303,
        flags: 0,
        mac: [0x02, 0xfe, 0, 0, 0, 0x40],
        v4: "10.0.0.40/24",
        v6: "fd00::40/64",
    },
];
/// A veth with no endpoint entry at all, and the MAC its frames are
/// addressed with.
const UNKNOWN: &str = "wfz-u";
const UNKNOWN_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x50];
/// The node's device to other nodes, where leave_node is attached.
const UPLINK: &str = "wfz-node";
const ID_REMOTE: u32 = 400;
/// Other entries of the ipcache: (prefix, identity, flags).
const IPCACHE: &[(&str, u32, u32)] = &[
    ("10.0.0.1/32", ID_HOST, 0),
    ("fd00::1/128", ID_HOST, 0),
    ("10.1.0.0/24", ID_REMOTE, 0),
    ("fd01::/64", ID_REMOTE, 0),
    ("10.96.0.0/12", ID_WORLD, IPCACHE_SERVICE),
    ("fd96::/108", ID_WORLD, IPCACHE_SERVICE),
];

/// What the doc says a pod owns, as the oracle reads it.
struct Owned {
    mac: [u8; 6],
    v4: Ipv4Addr,
    v4_prefix: u8,
    v6: Ipv6Addr,
    /// The link-local address the pod's kernel derives from its MAC.
    ll: Ipv6Addr,
}

impl Pod {
    fn owned(&self) -> Owned {
        let (IpNet::V4(v4), IpNet::V6(v6)) = (net(self.v4), net(self.v6)) else {
            panic!("PODS: {} and {} are not IPv4 and IPv6", self.v4, self.v6)
        };
        Owned {
            mac: self.mac,
            v4: v4.addr(),
            v4_prefix: v4.prefix_len(),
            v6: v6.addr(),
            ll: weir_bpf::addr::eui64_link_local(self.mac),
        }
    }
}

#[derive(Debug, Clone)]
enum Peer {
    Identity(u32),
    Block(IpNet, Vec<IpNet>),
}

/// One allow of the policy "text": endpoint (index into PODS), direction,
/// peer, protocol (None: any) and port range (None: any).
struct Rule {
    pod: usize,
    dir: u8,
    peer: Peer,
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn rules() -> Vec<Rule> {
    let (tcp, udp, sctp) = (Some(6), Some(17), Some(132));
    let id = Peer::Identity;
    let block = |c: &str, ex: &[&str]| Peer::Block(net(c), ex.iter().map(|e| net(e)).collect());
    let r = |pod, dir, peer, proto, ports| Rule { pod, dir, peer, proto, ports };
    vec![
        // e's ingress
        r(0, DIR_INGRESS, id(301), tcp, Some((80, 80))),
        r(0, DIR_INGRESS, id(ID_ANY), udp, Some((53, 53))),
        r(0, DIR_INGRESS, id(ID_ANY_POD), udp, Some((5353, 5353))),
        r(0, DIR_INGRESS, block("192.168.0.0/16", &["192.168.1.0/24"]), sctp, Some((1000, 2000))),
        r(0, DIR_INGRESS, block("2001:db8::/32", &["2001:db8:1::/48"]), tcp, None),
        r(0, DIR_INGRESS, id(ID_REMOTE), None, None),
        // e's egress
        r(0, DIR_EGRESS, id(ID_REMOTE), tcp, Some((443, 443))),
        r(0, DIR_EGRESS, id(301), tcp, Some((8080, 8090))),
        r(0, DIR_EGRESS, block("172.16.0.0/12", &["172.16.5.0/24"]), udp, None),
        // a's egress (its ingress is open)
        r(1, DIR_EGRESS, id(300), tcp, Some((80, 90))),
        r(1, DIR_EGRESS, block("0.0.0.0/0", &["10.0.0.0/8"]), tcp, None),
    ]
}

struct Node {
    dp: Dataplane,
    /// ifindex of each of PODS, then of UNKNOWN.
    ifindex: Vec<u32>,
    /// What each of PODS owns.
    owned: Vec<Owned>,
    uplink: u32,
    rules: Vec<Rule>,
    /// (prefix, identity, endpoint ifindex, flags), as written to the ipcache.
    ipcache: Vec<(IpNet, u32, u32, u32)>,
}

static ROOT: OnceLock<PathBuf> = OnceLock::new();

thread_local! {
    static NODE: Node = Node::new();
}

impl Node {
    fn new() -> Node {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "packet_verdict needs root (BPF programs, a network namespace)");
        sweep_stale_roots();
        // SAFETY: moves only this thread into a new, empty network namespace;
        // its veths vanish with the process.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        let root = ROOT.get_or_init(|| PathBuf::from(format!("/sys/fs/bpf/weir-fuzz-{}", std::process::id())));
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(remove_root) };
        let dp = Dataplane::load_or_open(root).unwrap_or_else(|e| {
            panic!(
                "cannot load the dataplane under {} ({e}); is bpffs mounted? mount -t bpf bpf /sys/fs/bpf",
                root.display()
            )
        });
        let names: Vec<&str> = PODS.iter().map(|p| p.name).chain([UNKNOWN]).collect();
        let ifindex: Vec<u32> = names.iter().map(|n| veth(n)).collect();
        let uplink = veth(UPLINK);
        let mut ipcache: Vec<(IpNet, u32, u32, u32)> = Vec::new();
        for (i, pod) in PODS.iter().enumerate() {
            // As CNI ADD writes it, then policyd's identity and flags.
            let ep = Endpoint::for_pod(pod.mac, &[net(pod.v4), net(pod.v6)], 0)
                .unwrap_or_else(|e| panic!("PODS: {}: {e}", pod.name));
            let ep = Endpoint { identity: pod.identity, flags: pod.flags, revision: 1, ..ep };
            dp.set_endpoint(ifindex[i], &ep).unwrap();
            for a in [pod.v4, pod.v6] {
                ipcache.push((IpNet::from(net(a).addr()), pod.identity, ifindex[i], 0));
            }
        }
        for (p, identity, flags) in IPCACHE {
            ipcache.push((net(p), *identity, 0, *flags));
        }
        for (n, identity, endpoint, flags) in &ipcache {
            let v = IpcacheValue { identity: *identity, endpoint: *endpoint, flags: *flags, ..Default::default() };
            dp.set_ipcache(*n, &v).unwrap();
        }
        let rules = rules();
        for (i, r) in rules.iter().enumerate() {
            let ep = ifindex[r.pod];
            let dir = Direction::from_u8(r.dir).expect("a direction");
            let identity = match &r.peer {
                Peer::Identity(id) => *id,
                Peer::Block(cidr, holes) => {
                    // Disjoint blocks: the block is its class, a hole no class.
                    let class = ID_FIRST_CIDR + 1 + i as u32;
                    dp.set_cidr(ep, dir, *cidr, class).unwrap();
                    for h in holes {
                        dp.set_cidr(ep, dir, *h, ID_FIRST_CIDR).unwrap();
                    }
                    class
                }
            };
            let matches = PolicyMatch::cover(ep, identity, dir, r.proto, r.ports.map(|(a, b)| a..=b));
            dp.allow(&matches, 1 + i as u32).unwrap();
        }
        Node { dp, ifindex, owned: PODS.iter().map(Pod::owned).collect(), uplink, rules, ipcache }
    }

    /// The MAC the pod hooks of `ifindex` see frames addressed with.
    fn mac(&self, ifindex: u32) -> [u8; 6] {
        self.pod_of(ifindex).map_or(UNKNOWN_MAC, |pod| self.owned[pod].mac)
    }

    /// Longest-prefix match in the ipcache as written.
    fn lookup(&self, a: IpAddr) -> Option<(u32, u32, u32)> {
        let a = as_keyed(a);
        self.ipcache
            .iter()
            .filter(|(n, ..)| n.contains(&a))
            .max_by_key(|(n, ..)| n.prefix_len())
            .map(|(_, id, ep, fl)| (*id, *ep, *fl))
    }

    fn pod_of(&self, ifindex: u32) -> Option<usize> {
        self.ifindex.iter().position(|i| *i == ifindex).filter(|i| *i < PODS.len())
    }

    /// Whether the rules let endpoint `ep` talk in `dir` with the peer
    /// (identity, address) on protocol/port.
    fn allows(&self, ep: u32, dir: u8, identity: u32, addr: IpAddr, proto: u8, port: u16) -> bool {
        let addr = as_keyed(addr);
        let Some(pod) = self.pod_of(ep) else {
            return false;
        };
        let flags = PODS[pod].flags;
        if flags & EP_READY == 0 {
            return false;
        }
        let iso = if dir == DIR_INGRESS { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
        if flags & iso == 0 {
            return true;
        }
        self.rules.iter().any(|r| {
            r.pod == pod
                && r.dir == dir
                && match &r.peer {
                    // The wildcards: every pod (label identity), every other peer.
                    Peer::Identity(ID_ANY_POD) => (ID_FIRST_LABEL..ID_FIRST_CIDR).contains(&identity),
                    Peer::Identity(ID_ANY) => !(ID_FIRST_LABEL..ID_FIRST_CIDR).contains(&identity),
                    Peer::Identity(id) => *id == identity,
                    Peer::Block(c, holes) => c.contains(&addr) && !holes.iter().any(|h| h.contains(&addr)),
                }
                && r.proto.is_none_or(|p| p == proto)
                && r.ports.is_none_or(|(a, b)| (a..=b).contains(&port))
        })
    }
}

/// KNOWN ISSUE, accepted here so fuzzing goes on past it: the maps key an
/// IPv4 address as IPv4-mapped IPv6 (weir-bpf `addr`), so the programs
/// judge an IPv6 packet from or to `::ffff:a.b.c.d` as `a.b.c.d` (its
/// identity, its ipBlocks, the node's address being always allowed),
/// which no policy says; the endpoint entry holds the pod's IPv4 address
/// the same way, so the screens take `::ffff:a.b.c.d` in an IPv6 header
/// for the pod's IPv4 address too. Drop this and judge the address as it is once the
/// dataplane keeps the two families apart.
fn as_keyed(a: IpAddr) -> IpAddr {
    a.to_canonical()
}

fn veth(name: &str) -> u32 {
    let peer = format!("{name}p");
    let out = std::process::Command::new("ip")
        .args(["link", "add", name, "type", "veth", "peer", "name", &peer])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip link add {name}: {}", String::from_utf8_lossy(&out.stderr));
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string; the lookup runs in this thread's netns.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no ifindex for {name}");
    i
}

extern "C" fn remove_root() {
    if let Some(root) = ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Roots of fuzz processes that died without cleaning up (a crash exits
/// without running exit handlers).
fn sweep_stale_roots() {
    let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("weir-fuzz-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

// ---- frames as the programs read them ---------------------------------------

const ETH_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// Ethertype.
    NotIp(u16),
    Vlan,
    Malformed,
    Ip(Pkt),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Icmp {
    None,
    EchoRequest,
    EchoReply,
    Error,
    /// ICMPv6 router/neighbour solicitation and advertisement, redirect.
    NeighbourDiscovery,
    /// ICMPv6 multicast listener query, reports, done.
    ListenerDiscovery,
    Other,
}

/// A link-scope IPv6 multicast address (ff02::/16, ff12::/16, ...): where
/// multicast listener discovery is link control.
fn link_scope_multicast(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(a) if a.octets()[0] == 0xff && a.octets()[1] & 0x0f == 2)
}

const MLD_QUERY: u8 = 130;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    /// A fragment of a larger packet, first or later.
    fragment: bool,
    later_fragment: bool,
    icmp: Icmp,
    icmp_type: u8,
    /// Offset of the L4 header; end of the IP packet as its header says.
    l4: usize,
    end: usize,
}

impl Pkt {
    fn new(src: IpAddr, dst: IpAddr, l4: usize, end: usize) -> Pkt {
        Pkt {
            src,
            dst,
            proto: 0,
            sport: 0,
            dport: 0,
            fragment: false,
            later_fragment: false,
            icmp: Icmp::None,
            icmp_type: 0,
            l4,
            end,
        }
    }
    /// The port policy sees: none for ICMP, later fragments and protocols
    /// without ports.
    fn policy_port(&self) -> u16 {
        if self.later_fragment || !matches!(self.proto, 6 | 17 | 132) {
            0
        } else {
            self.dport
        }
    }
    fn tuple(&self) -> Tuple {
        (as_keyed(self.src), as_keyed(self.dst), self.proto, self.sport, self.dport)
    }
}

type Tuple = (IpAddr, IpAddr, u8, u16, u16);

fn reversed(t: &Tuple) -> Tuple {
    (t.1, t.0, t.2, t.4, t.3)
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn v6_at(f: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = f.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

fn mac_at(f: &[u8], at: usize) -> [u8; 6] {
    f[at..at + 6].try_into().unwrap()
}

/// The documented parse (docs/architecture-dataplane.md, "Bad input"):
/// lengths checked against the IP header's own, IPv4 options skipped,
/// IPv6 extension headers walked up to 6 deep, later fragments without
/// ports, a first fragment or whole packet too short for its L4 header
/// malformed.
fn parse(f: &[u8]) -> Parsed {
    match be16(f, 12) {
        Some(0x0800) => parse_v4(f).unwrap_or(Parsed::Malformed),
        Some(0x86dd) => parse_v6(f).unwrap_or(Parsed::Malformed),
        Some(0x8100 | 0x88a8) => Parsed::Vlan,
        Some(t) => Parsed::NotIp(t),
        None => Parsed::Malformed,
    }
}

fn parse_v4(f: &[u8]) -> Option<Parsed> {
    let h = f.get(14..34)?;
    let ihl = (h[0] & 0xf) as usize * 4;
    let tot = be16(h, 2)? as usize;
    if h[0] >> 4 != 4 || ihl < 20 || tot < ihl || 14 + tot > f.len() {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    let fo = be16(h, 6)?;
    let mut p = Pkt::new(src, dst, 14 + ihl, 14 + tot);
    p.proto = h[9];
    p.later_fragment = fo & 0x1fff != 0;
    p.fragment = fo & 0x3fff != 0;
    if p.later_fragment {
        return Some(Parsed::Ip(p));
    }
    parse_l4(f, p, false)
}

fn parse_v6(f: &[u8]) -> Option<Parsed> {
    let h = f.get(14..54)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let end = 54 + be16(h, 4)? as usize;
    if end > f.len() {
        return None;
    }
    let mut p = Pkt::new(IpAddr::V6(v6_at(h, 8)?), IpAddr::V6(v6_at(h, 24)?), 54, end);
    let is_ext = |nh: u8| matches!(nh, 0 | 43 | 44 | 51 | 60);
    let mut nh = h[6];
    for _ in 0..6 {
        if !is_ext(nh) {
            break;
        }
        if p.l4 + 8 > end {
            return None;
        }
        let b = &f[p.l4..p.l4 + 4];
        if nh == 44 {
            let fo = u16::from_be_bytes([b[2], b[3]]);
            nh = b[0];
            p.l4 += 8;
            // An atomic fragment (offset 0, no more) is the whole packet.
            p.fragment |= fo & 0xfff9 != 0;
            if fo & 0xfff8 != 0 {
                p.later_fragment = true;
                p.proto = nh;
                return Some(Parsed::Ip(p));
            }
            continue;
        }
        p.l4 += if nh == 51 { (b[1] as usize + 2) * 4 } else { (b[1] as usize + 1) * 8 };
        nh = b[0];
    }
    if is_ext(nh) || p.l4 > end {
        return None;
    }
    p.proto = nh;
    parse_l4(f, p, true)
}

fn parse_l4(f: &[u8], mut p: Pkt, v6: bool) -> Option<Parsed> {
    let need = match p.proto {
        6 => 20,
        17 => 8,
        132 => 12,
        1 if !v6 => 8,
        58 if v6 => 8,
        _ => return Some(Parsed::Ip(p)),
    };
    if p.l4 + need > p.end {
        return None;
    }
    let l4 = &f[p.l4..p.end];
    match p.proto {
        6 | 17 | 132 => {
            if p.proto == 6 && ((l4[12] >> 4) < 5 || (l4[12] >> 4) as usize * 4 > l4.len()) {
                return None;
            }
            p.sport = be16(l4, 0)?;
            p.dport = be16(l4, 2)?;
        }
        _ => {
            let id = be16(l4, 4)?;
            p.icmp_type = l4[0];
            p.icmp = match (v6, l4[0]) {
                (false, 8) | (true, 128) => Icmp::EchoRequest,
                (false, 0) | (true, 129) => Icmp::EchoReply,
                (false, 3 | 11 | 12) | (true, 1..=4) => Icmp::Error,
                (true, 133..=137) => Icmp::NeighbourDiscovery,
                (true, 130..=132 | 143) => Icmp::ListenerDiscovery,
                _ => Icmp::Other,
            };
            match p.icmp {
                Icmp::EchoRequest => p.sport = id,
                Icmp::EchoReply => p.dport = id,
                _ => {}
            }
        }
    }
    Some(Parsed::Ip(p))
}

/// An Ethernet/IPv4 ARP request or reply: (sender MAC, sender IP, target IP).
fn arp(f: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr)> {
    let a = f.get(14..14 + 28)?;
    let ok = be16(a, 0)? == 1 && be16(a, 2)? == 0x0800 && a[4] == 6 && a[5] == 4 && matches!(be16(a, 6)?, 1 | 2);
    let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
    ok.then(|| (mac_at(a, 8), ip(14), ip(24)))
}

/// Addresses and protocol of the packet an ICMP error quotes.
fn quoted(f: &[u8], p: &Pkt) -> Option<(IpAddr, IpAddr, u8)> {
    let q = f.get(p.l4 + 8..)?;
    if q.first()? >> 4 == 4 {
        let h = q.get(..20)?;
        Some((
            IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
            h[9],
        ))
    } else {
        let h = q.get(..40)?;
        Some((IpAddr::V6(v6_at(h, 8)?), IpAddr::V6(v6_at(h, 24)?), h[6]))
    }
}

/// The frame's reply: addresses and ports swapped, an echo request
/// answered. None when there is nothing to reverse.
fn reverse(f: &[u8]) -> Option<Vec<u8>> {
    let Parsed::Ip(p) = parse(f) else { return None };
    let mut r = f.to_vec();
    let (a, n) = if p.src.is_ipv4() { (26, 4) } else { (22, 16) };
    let (src, dst) = (f[a..a + n].to_vec(), f[a + n..a + 2 * n].to_vec());
    r[a..a + n].copy_from_slice(&dst);
    r[a + n..a + 2 * n].copy_from_slice(&src);
    if !p.later_fragment {
        match p.proto {
            6 | 17 | 132 => {
                let (s, d) = (f[p.l4..p.l4 + 2].to_vec(), f[p.l4 + 2..p.l4 + 4].to_vec());
                r[p.l4..p.l4 + 2].copy_from_slice(&d);
                r[p.l4 + 2..p.l4 + 4].copy_from_slice(&s);
            }
            // An echo request was parsed whole: its type byte is there.
            _ if p.icmp == Icmp::EchoRequest => r[p.l4] = if p.proto == 1 { 0 } else { 129 },
            _ => {}
        }
    }
    Some(r)
}

// ---- the screens: a pod's own addresses ------------------------------------------

/// What the screen leaves of a frame a pod hook passed: nothing for policy
/// (ARP, neighbour discovery, other non-IP), or the IP packet to judge.
/// Err: the screen must have dropped it, and why.
type Screened = Result<Option<Pkt>, String>;

impl Owned {
    /// The pod's IPv4 or IPv6 address.
    fn owns(&self, a: IpAddr) -> bool {
        match as_keyed(a) {
            IpAddr::V4(a) => a == self.v4,
            IpAddr::V6(a) => a == self.v6,
        }
    }
    /// Its address or its link-local one: what it may use on the link.
    fn owns_on_link(&self, a: IpAddr) -> bool {
        self.owns(a) || a == IpAddr::V6(self.ll)
    }

    /// "from_pod: a pod speaks only for itself."
    fn screen_from_pod(&self, f: &[u8], parsed: Parsed) -> Screened {
        let p = match parsed {
            Parsed::Vlan => return Err("VLAN-tagged".into()),
            Parsed::Malformed => return Err("malformed".into()),
            _ if mac_at(f, 6) != self.mac => return Err("Ethernet source is not the pod's MAC".into()),
            Parsed::NotIp(ETH_ARP) => {
                let Some((sha, spa, _)) = arp(f) else {
                    return Err("ARP that is no Ethernet/IPv4 request or reply".into());
                };
                if sha != self.mac {
                    return Err("ARP sender MAC is not the pod's".into());
                }
                if !spa.is_unspecified() && spa != self.v4 {
                    return Err(format!("ARP sender IP {spa} is not the pod's"));
                }
                return Ok(None);
            }
            Parsed::NotIp(_) => return Ok(None),
            Parsed::Ip(p) => p,
        };
        if p.icmp == Icmp::NeighbourDiscovery {
            return self.nd_from_pod(f, &p).map(|()| None);
        }
        // Link control: a pod reports (from :: before it has a link-local
        // address) but never queries.
        if p.icmp == Icmp::ListenerDiscovery && link_scope_multicast(p.dst) {
            if p.icmp_type == MLD_QUERY {
                return Err("MLD query from a pod".into());
            }
            if !p.src.is_unspecified() && !self.owns_on_link(p.src) {
                return Err(format!("MLD from {}, not the pod's", p.src));
            }
            return Ok(None);
        }
        if !self.owns(p.src) {
            return Err(format!("IP source {} is not the pod's", p.src));
        }
        Ok(Some(p))
    }

    /// Neighbour discovery sent by the pod.
    fn nd_from_pod(&self, f: &[u8], p: &Pkt) -> Result<(), String> {
        let (rs, ns, na) = (133, 135, 136);
        let ty = p.icmp_type;
        if !matches!(ty, 133 | 135 | 136) {
            return Err(format!("ICMPv6 type {ty}: a pod sends no RA or redirect"));
        }
        if p.fragment {
            return Err("fragmented neighbour discovery".into());
        }
        let unspecified = p.src == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        if unspecified && ty == na {
            return Err("NA from ::".into());
        }
        if !unspecified && !self.owns_on_link(p.src) {
            return Err(format!("ND from {}, not the pod's", p.src));
        }
        let mut off = p.l4 + 8;
        if ty != rs {
            let target =
                (off + 16 <= p.end).then(|| v6_at(f, off)).flatten().ok_or("ND message too short for its target")?;
            off += 16;
            let claims = ty == na || (ty == ns && unspecified);
            if claims && !self.owns_on_link(IpAddr::V6(target)) {
                return Err(format!("ND claims {target}, not the pod's"));
            }
        }
        for _ in 0..8 {
            if off >= p.end {
                break;
            }
            if off + 8 > p.end || f[off + 1] == 0 {
                return Err("ND option truncated or of length 0".into());
            }
            let (ty, len) = (f[off], f[off + 1] as usize);
            if matches!(ty, 1 | 2) {
                if len != 1 {
                    return Err("ND link-layer option that is no Ethernet address".into());
                }
                if mac_at(f, off + 2) != self.mac {
                    return Err("ND link-layer option is not the pod's MAC".into());
                }
            }
            off += len * 8;
        }
        if off != p.end {
            return Err("ND options past 8 or past the packet".into());
        }
        Ok(())
    }

    /// "to_pod: a pod is handed only what is addressed to it."
    fn screen_to_pod(&self, f: &[u8], parsed: Parsed) -> Screened {
        let dst_mac = mac_at(f, 0);
        let p = match parsed {
            Parsed::Vlan => return Err("VLAN-tagged".into()),
            Parsed::Malformed => return Err("malformed".into()),
            _ if dst_mac[0] & 1 == 0 && dst_mac != self.mac => return Err("unicast to another MAC".into()),
            Parsed::NotIp(ETH_ARP) => {
                let Some((_, spa, tpa)) = arp(f) else {
                    return Err("ARP that is no Ethernet/IPv4 request or reply".into());
                };
                let announcement = spa == tpa && dst_mac == BROADCAST;
                if tpa != self.v4 && !announcement {
                    return Err(format!("ARP for {tpa}, not for the pod"));
                }
                return Ok(None);
            }
            Parsed::NotIp(_) => return Ok(None),
            Parsed::Ip(p) => p,
        };
        if !self.takes(p.dst) {
            return Err(format!("IP destination {} is not the pod's", p.dst));
        }
        if p.icmp == Icmp::NeighbourDiscovery {
            return Ok(None);
        }
        // The link's query is the pod's to answer; other pods' reports are
        // for multicast routers, and a channel past policy if handed over.
        if p.icmp == Icmp::ListenerDiscovery && link_scope_multicast(p.dst) {
            return if p.icmp_type == MLD_QUERY { Ok(None) } else { Err("an MLD report is not for a pod".into()) };
        }
        Ok(Some(p))
    }

    /// The IP destinations a pod is handed.
    fn takes(&self, d: IpAddr) -> bool {
        if self.owns_on_link(d) {
            return true;
        }
        match as_keyed(d) {
            IpAddr::V4(d) => {
                let host_bits = 32 - u32::from(self.v4_prefix);
                let subnet_broadcast =
                    self.v4_prefix < 31 && u32::from(d) == u32::from(self.v4) | (u32::MAX >> (32 - host_bits));
                d.is_broadcast() || d.is_multicast() || subnet_broadcast
            }
            IpAddr::V6(d) => {
                let o = d.octets();
                // ff02::1:ffXX:XXXX
                let solicited_node_group = o[..13] == [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
                let solicits = |a: Ipv6Addr| o[13..] == a.octets()[13..];
                if solicited_node_group {
                    solicits(self.v6) || solicits(self.ll)
                } else {
                    d.is_multicast()
                }
            }
        }
    }
}

// ---- the oracle ---------------------------------------------------------------

/// A flow some endpoint approved in this input: the tuple as approved and
/// the endpoints whose verdict it carries.
struct Flow {
    tuple: Tuple,
    egress_ep: u32,
    ingress_ep: u32,
    /// from_pod's record of a packet to a VIP, kept for the un-DNATed reply:
    /// no verdict, so no packet in its direction leaves the node on it.
    service: bool,
}

#[derive(Default)]
struct Flows(Vec<Flow>);

impl Flows {
    /// A packet of an approved flow at the endpoint that approved it: its
    /// own direction where that endpoint sent it or received it, the
    /// reverse where it is the reply. At leave_node `ep` is the sender.
    fn established(&self, hook: Hook, ep: u32, p: &Pkt) -> bool {
        let t = p.tuple();
        self.0.iter().any(|fl| {
            let same = fl.tuple == t;
            let reply = fl.tuple == reversed(&t);
            match hook {
                Hook::FromPod => (same && fl.egress_ep == ep) || (reply && fl.ingress_ep == ep),
                Hook::LeaveNode => (same && fl.egress_ep == ep && !fl.service) || (reply && fl.ingress_ep == ep),
                Hook::ToPod => (same && fl.ingress_ep == ep) || (reply && fl.egress_ep == ep),
            }
        })
    }
    /// An ICMP error quoting a packet of a flow this endpoint approved.
    fn related(&self, ep: u32, q: (IpAddr, IpAddr, u8)) -> bool {
        self.0.iter().any(|fl| {
            let (s, d, pr, ..) = fl.tuple;
            let q = (as_keyed(q.0), as_keyed(q.1), q.2);
            pr == q.2 && ((s, d) == (q.0, q.1) || (s, d) == (q.1, q.0)) && (fl.egress_ep == ep || fl.ingress_ep == ep)
        })
    }
}

impl Flows {
    /// Keep the flow a pass opened; a pass the oracle forbids is a finding.
    fn record(&mut self, hook: Hook, ifindex: u32, f: &[u8], judgement: Judgement) {
        match judgement {
            Judgement::May(flow) => self.0.extend(flow),
            Judgement::MustDrop(why) => {
                panic!("{hook:?} on ifindex {ifindex} passed a frame it must drop ({why})\nframe: {f:02x?}")
            }
        }
    }
}

/// Why the oracle lets a passed packet through, or why it should have dropped.
enum Judgement {
    /// Passing is fine; Some(flow) when the pass opens a flow.
    May(Option<Flow>),
    MustDrop(String),
}

impl Node {
    /// At a pod hook of `ep`: the screen, then policy.
    fn judge_pod(&self, hook: Hook, ep: u32, f: &[u8], flows: &Flows) -> Judgement {
        use Judgement::*;
        let Some(pod) = self.pod_of(ep) else {
            return MustDrop("an interface without an endpoint entry".into());
        };
        let owned = &self.owned[pod];
        let screened = match hook {
            Hook::FromPod => owned.screen_from_pod(f, parse(f)),
            _ => owned.screen_to_pod(f, parse(f)),
        };
        let p = match screened {
            Err(why) => return MustDrop(format!("the screen of the pod's addresses: {why}")),
            Ok(None) => return May(None),
            Ok(Some(p)) => p,
        };
        if flows.established(hook, ep, &p) {
            return May(None);
        }
        let peer = if hook == Hook::ToPod { p.src } else { p.dst };
        let (peer_id, peer_ep, peer_flags) = self.lookup(peer).unwrap_or((ID_WORLD, 0, 0));
        if peer_id == ID_HOST {
            return May(None);
        }
        if p.icmp == Icmp::Error && quoted(f, &p).is_some_and(|q| flows.related(ep, q)) {
            return May(None);
        }
        let port = p.policy_port();
        let why = |what: &str| MustDrop(format!("{what}: {:?} {} -> {} port {port}", hook, p.src, p.dst));
        if PODS[pod].flags & EP_READY == 0 {
            return why("endpoint not READY");
        }
        match hook {
            Hook::FromPod => {
                if peer_ep != 0 || peer_flags & IPCACHE_SERVICE != 0 {
                    // Deferred to the destination's to_pod; a VIP flow is
                    // remembered for its un-DNATed reply.
                    let flow =
                        (peer_ep == 0).then(|| Flow { tuple: p.tuple(), egress_ep: ep, ingress_ep: 0, service: true });
                    return May(flow);
                }
                if !self.allows(ep, DIR_EGRESS, peer_id, p.dst, p.proto, port) {
                    return why("egress denied");
                }
                May(Some(Flow { tuple: p.tuple(), egress_ep: ep, ingress_ep: 0, service: false }))
            }
            _ => {
                let me = PODS[pod].identity;
                if peer_ep != 0 && !self.allows(peer_ep, DIR_EGRESS, me, p.dst, p.proto, port) {
                    return why("the local sender's egress denied");
                }
                if !self.allows(ep, DIR_INGRESS, peer_id, p.src, p.proto, port) {
                    return why("ingress denied");
                }
                May(Some(Flow { tuple: p.tuple(), egress_ep: peer_ep, ingress_ep: ep, service: false }))
            }
        }
    }

    /// At leave_node: an IP packet of a local pod, judged by its egress.
    fn judge_leave(&self, f: &[u8], flows: &Flows) -> Judgement {
        use Judgement::*;
        let Parsed::Ip(p) = parse(f) else {
            return May(None);
        };
        let sender = self.lookup(p.src).map_or(0, |(_, ep, _)| ep);
        if sender == 0
            || p.icmp == Icmp::NeighbourDiscovery
            || (p.icmp == Icmp::ListenerDiscovery && link_scope_multicast(p.dst))
        {
            return May(None);
        }
        if flows.established(Hook::LeaveNode, sender, &p) {
            return May(None);
        }
        if p.icmp == Icmp::Error && quoted(f, &p).is_some_and(|q| flows.related(sender, q)) {
            return May(None);
        }
        let (peer_id, ..) = self.lookup(p.dst).unwrap_or((ID_WORLD, 0, 0));
        if peer_id == ID_HOST {
            return May(None);
        }
        let port = p.policy_port();
        if !self.allows(sender, DIR_EGRESS, peer_id, p.dst, p.proto, port) {
            return MustDrop(format!(
                "the sender's egress denied: endpoint {sender} {} -> {} proto {} port {port}",
                p.src, p.dst, p.proto
            ));
        }
        May(Some(Flow { tuple: p.tuple(), egress_ep: sender, ingress_ep: 0, service: false }))
    }

    fn leave_node(&self, f: &[u8], flows: &mut Flows) {
        if self.run_hook(Hook::LeaveNode, self.uplink, f) {
            let j = self.judge_leave(f, flows);
            flows.record(Hook::LeaveNode, self.uplink, f, j);
        }
    }

    /// Run `hook` on `ifindex` with `f`; whether it passed.
    fn run_hook(&self, hook: Hook, ifindex: u32, f: &[u8]) -> bool {
        let action =
            self.dp.run(hook, f, ifindex).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {hook:?} failed: {e:?}"));
        match action {
            TC_PASS => true,
            TC_DROP => false,
            other => panic!("{hook:?} returned tc action {other}"),
        }
    }
}

/// Run one input; panics (a finding) when a program passes what the
/// oracle says it must drop, or returns something but PASS or DROP.
pub fn run(data: &[u8]) {
    let Some((&control, frame)) = data.split_first() else {
        return;
    };
    let control = Control(control);
    // BPF_PROG_TEST_RUN refuses (EINVAL) frames shorter than an Ethernet
    // header, and IPv4/IPv6 frames shorter than their IP header: how the
    // programs treat those cannot be tried this way.
    let shortest = match be16(frame, 12) {
        Some(0x0800) => 14 + 20,
        Some(0x86dd) => 14 + 40,
        _ => 14,
    };
    if frame.len() < shortest || frame.len() > MAX_FRAME {
        return;
    }
    NODE.with(|node| {
        node.dp.ct_flush().expect("flush conntrack");
        // And a new policy generation: from_pod's handoff to leave_node
        // (bpf/progs/handoff.h) of the last input stands for nothing either.
        node.dp.bump_policy_gen().expect("bump the policy generation");
        let mut flows = Flows::default();
        let frames: Vec<Vec<u8>> = std::iter::once(frame.to_vec()).chain(reverse(frame)).collect();
        for f in &frames {
            if control.leave_first() {
                node.leave_node(f, &mut flows);
            }
            for &ep in &node.ifindex {
                for hook in [Hook::ToPod, Hook::FromPod] {
                    let seen = if control.raw_ethernet() { f.clone() } else { pkt::as_seen_at(hook, node.mac(ep), f) };
                    if node.run_hook(hook, ep, &seen) {
                        let j = node.judge_pod(hook, ep, &seen, &flows);
                        flows.record(hook, ep, &seen, j);
                    }
                }
            }
            if !control.leave_first() {
                node.leave_node(f, &mut flows);
            }
        }
    });
}
