//! `#[repr(C)]` mirrors of every key, value and constant in
//! `bpf/include/weir_abi.h`, the single source of truth. `tests/abi_layout.rs`
//! compiles size/offset assertions generated from these types against the
//! header, so a disagreement fails the build of the test, not a pod.
//!
//! LPM trie keys: the C structs start with `prefixlen`; aya's
//! [`aya::maps::lpm_trie::Key`] supplies it, so the Rust key types here hold
//! only the data that follows it (every offset is 4 less than in C).

use crate::addr;
use crate::error::Error;
use ipnet::IpNet;
use std::net::IpAddr;

/// Bumped on any incompatible layout change (`WEIR_ABI_VERSION`).
/// 4: the endpoint carries the pod's MAC and addresses.
/// 5: conntrack entries carry the policy generation they were judged under.
/// 6: policy values carry the Admin and Baseline tiers' verdicts.
/// 7: a peer wildcard is [`ID_ANY_POD`] for pods, [`ID_ANY`] for others.
pub const ABI_VERSION: u32 = 7;

// ---- identities -----------------------------------------------------------
/// Policy key wildcard: every peer that is not a pod.
pub const ID_ANY: u32 = 0;
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;
/// Policy key wildcard: every pod (every label identity).
pub const ID_ANY_POD: u32 = 3;
pub const ID_FIRST_LABEL: u32 = 256;
pub const ID_FIRST_CIDR: u32 = 1 << 24;

/// The wildcard identity whose policy entries a peer of `identity` matches
/// (`WEIR_PEER_WILDCARD`): [`ID_ANY_POD`] for a pod, [`ID_ANY`] otherwise.
/// A rule for every peer is written under both.
pub const fn peer_wildcard(identity: u32) -> u32 {
    if identity >= ID_FIRST_LABEL && identity < ID_FIRST_CIDR {
        ID_ANY_POD
    } else {
        ID_ANY
    }
}

// ---- ipcache ----------------------------------------------------------------
pub const IPCACHE_SERVICE: u32 = 1 << 0;

/// `struct weir_ipcache_key` without `prefixlen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    /// IPv6 or IPv4-mapped address, network order.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
    /// Host veth ifindex when the address is a pod of this node, else 0.
    pub endpoint: u32,
    /// `IPCACHE_*`
    pub flags: u32,
    pub pad: u32,
}

// ---- endpoints --------------------------------------------------------------
pub const EP_READY: u32 = 1 << 0;
pub const EP_INGRESS_ISOLATED: u32 = 1 << 1;
pub const EP_EGRESS_ISOLATED: u32 = 1 << 2;
pub const EP_OPEN_UNTIL_READY: u32 = 1 << 3;
pub const EP_INGRESS_TIERED: u32 = 1 << 4;
pub const EP_EGRESS_TIERED: u32 = 1 << 5;
/// Its namespace asks for allowed new flows in the flow log.
pub const EP_LOG_ALLOW: u32 = 1 << 6;
/// Only audit-mode NetworkPolicies isolate it in this direction: they
/// isolate nothing, and a new flow none of them allows is reported as
/// [`R_ALLOW_AUDIT`]. Never set with the direction's ISOLATED flag.
pub const EP_INGRESS_AUDITED: u32 = 1 << 7;
pub const EP_EGRESS_AUDITED: u32 = 1 << 8;

/// `struct weir_endpoint`, keyed by host veth ifindex. CNI ADD writes it
/// whole ([`Endpoint::for_pod`]); weir-policyd rewrites only `identity`,
/// `flags` and `revision`, keeping the pod's MAC and addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub identity: u32,
    /// `EP_*`
    pub flags: u32,
    pub revision: u64,
    /// The pod interface's MAC.
    pub mac: [u8; 6],
    /// Prefix length of the pod's IPv4 subnet (its broadcast is delivered).
    pub ipv4_prefixlen: u8,
    pub pad: u8,
    /// IPv4-mapped; all zero when the pod has no IPv4 address.
    pub ipv4: [u8; 16],
    /// All zero when the pod has no IPv6 address.
    pub ipv6: [u8; 16],
    /// The link-local address the pod's kernel derives from `mac`.
    pub ipv6_ll: [u8; 16],
}

impl Endpoint {
    /// The entry CNI ADD writes for a pod interface with `mac` and `addrs`
    /// (at most one per family, as a Kubernetes Pod's podIPs): identity 0,
    /// `flags` (not READY). Refuses what the programs could not hold.
    pub fn for_pod(mac: [u8; 6], addrs: &[IpNet], flags: u32) -> Result<Endpoint, Error> {
        if !addr::is_unicast_mac(mac) {
            return Err(Error::Invalid {
                field: "pod MAC",
                msg: format!("{} is not a unicast address", addr::format_mac(mac)),
            });
        }
        let mut ep = Endpoint { flags, mac, ipv6_ll: addr::eui64_link_local(mac).octets(), ..Default::default() };
        for v4 in [true, false] {
            let family: Vec<&IpNet> = addrs.iter().filter(|a| a.addr().is_ipv4() == v4).collect();
            match family[..] {
                [] => {}
                [a] if v4 => {
                    ep.ipv4 = addr::to_bytes(a.addr());
                    ep.ipv4_prefixlen = a.prefix_len();
                }
                [a] => ep.ipv6 = addr::to_bytes(a.addr()),
                _ => {
                    let list: Vec<String> = family.iter().map(|a| a.addr().to_string()).collect();
                    return Err(Error::Invalid {
                        field: "pod addresses",
                        msg: format!(
                            "{} {} addresses ({}): an endpoint holds at most one per family",
                            family.len(),
                            if v4 { "IPv4" } else { "IPv6" },
                            list.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(ep)
    }

    pub fn is_ready(&self) -> bool {
        self.flags & EP_READY != 0
    }

    /// The pod's IPv4 and IPv6 addresses (not its link-local one).
    pub fn ips(&self) -> Vec<IpAddr> {
        [self.ipv4, self.ipv6].into_iter().filter(|a| *a != [0; 16]).map(addr::from_bytes).collect()
    }
}

// ---- policy -----------------------------------------------------------------
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;
pub const POLICY_FIXED_BITS: u32 = 72;
/// Full length of a policy key's data (endpoint, identity, direction,
/// protocol, port): the prefix length of an exact port.
pub const POLICY_FULL_BITS: u32 = 96;
/// Prefix length of a single address in the ipcache (IPv4 is v4-mapped).
pub const IPCACHE_FULL_BITS: u32 = 128;

/// `struct weir_policy_key` without `prefixlen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub endpoint: u32,
    pub identity: u32,
    /// `DIR_*`
    pub direction: u8,
    /// IPPROTO_* (6 TCP, 17 UDP, 132 SCTP, ...)
    pub protocol: u8,
    /// Network byte order, as the program compares bits of it.
    pub port: u16,
}

impl PolicyKey {
    /// `port` in host order; stored in network order.
    pub fn new(endpoint: u32, identity: u32, direction: u8, protocol: u8, port: u16) -> Self {
        PolicyKey { endpoint, identity, direction, protocol, port: port.to_be() }
    }
    pub fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

pub const VERDICT_ALLOW: u16 = 1;

pub const TIER_DENY: u32 = 0;
pub const TIER_PASS: u32 = 1;
pub const TIER_ACCEPT: u32 = 2;
pub const TIER_NONE: u32 = u32::MAX;

/// `WEIR_TIER_RANK`: a cluster rule's precedence within its tier, lower
/// first (priority 0-1000, rule index 0-24, then Deny before Pass before
/// Accept), with its action in the low bits.
pub const fn tier_rank(priority: u32, index: u32, action: u32) -> u32 {
    (priority << 7) | (index << 2) | action
}

/// `struct weir_tier_verdict`: the best rule of one tier for a key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TierVerdict {
    /// [`tier_rank`], or [`TIER_NONE`].
    pub rank: u32,
    pub rule: u32,
}

impl TierVerdict {
    pub const NONE: TierVerdict = TierVerdict { rank: TIER_NONE, rule: 0 };
}

impl Default for TierVerdict {
    fn default() -> Self {
        TierVerdict::NONE
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// The NetworkPolicy rule that allows, when `verdict` is [`VERDICT_ALLOW`].
    pub rule: u32,
    pub verdict: u16,
    pub pad: u16,
    pub admin: TierVerdict,
    pub baseline: TierVerdict,
}

impl PolicyValue {
    /// A NetworkPolicy allow and no cluster rule.
    pub fn allow(rule: u32) -> Self {
        PolicyValue { rule, verdict: VERDICT_ALLOW, ..Default::default() }
    }
}

// ---- ipBlock classes ----------------------------------------------------------
pub const CIDR_FIXED_BITS: u32 = 64;

/// `struct weir_cidr_key` without `prefixlen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrKey {
    pub endpoint: u32,
    pub direction: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrValue {
    pub identity: u32,
}

// ---- conntrack ----------------------------------------------------------------
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network order. ICMP echo request: the identifier (reply: 0).
    pub sport: u16,
    /// Network order. ICMP echo reply: the identifier (request: 0).
    pub dport: u16,
    pub protocol: u8,
    pub pad: [u8; 3],
}

impl CtKey {
    /// The key as the flow's opener sent it. Stored keys put the lower end
    /// first (one entry serves both directions); `CT_ORIG_SWAPPED` in the
    /// value says whether that reversed the opener's tuple.
    pub fn as_opened(&self, value: &CtValue) -> CtKey {
        if value.flags & CT_ORIG_SWAPPED == 0 {
            return *self;
        }
        CtKey { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, ..*self }
    }
    pub fn src(&self) -> IpAddr {
        addr::from_bytes(self.saddr)
    }
    pub fn dst(&self) -> IpAddr {
        addr::from_bytes(self.daddr)
    }
}

pub const CT_SEEN_REPLY: u32 = 1 << 0;
pub const CT_FIN_FWD: u32 = 1 << 1;
pub const CT_FIN_REV: u32 = 1 << 2;
pub const CT_RST: u32 = 1 << 3;
pub const CT_SERVICE: u32 = 1 << 4;
/// The flow was opened from the key's `daddr` end (keys store the lower end first).
pub const CT_ORIG_SWAPPED: u32 = 1 << 5;
/// Judged again after a policy change and refused: it carries nothing, and
/// every hit judges it again (see `weir_abi.h`).
pub const CT_REVOKED: u32 = 1 << 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// CLOCK_MONOTONIC deadline in ns (the kernel's coarse clock).
    pub expires_ns: u64,
    pub egress_ep: u32,
    pub ingress_ep: u32,
    pub rule: u32,
    /// `CT_*`
    pub flags: u32,
    /// `Config::policy_gen` when the flow was last judged.
    pub policy_gen: u32,
    pub pad: u32,
}

// ---- Service flows to a backend on another node --------------------------------
/// `struct weir_service_open_key`: a pod's source (address, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceOpenKey {
    pub saddr: [u8; 16],
    /// Network order.
    pub sport: u16,
    pub protocol: u8,
    pub pad: u8,
}

/// Neither VIP opened from the source port within the window is linked.
pub const SERVICE_OPEN_AMBIGUOUS: u8 = 1 << 0;
/// How long after from_pod records an open leave_node may take it.
pub const SERVICE_OPEN_WINDOW_NS: u64 = 200_000_000;

/// `struct weir_service_open`: the VIP a source port just opened.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceOpen {
    pub opened_ns: u64,
    pub vaddr: [u8; 16],
    /// Network order.
    pub vport: u16,
    /// `SERVICE_OPEN_*`
    pub flags: u8,
    pub pad: [u8; 5],
}

/// `struct weir_service_backend`, the value of `weir_service_backends`
/// (keyed by a SERVICE conntrack entry's key): the backend leave_node saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceBackend {
    pub baddr: [u8; 16],
    /// Network order.
    pub bport: u16,
    pub pad: [u8; 2],
}

impl ServiceBackend {
    pub fn addr(&self) -> IpAddr {
        addr::from_bytes(self.baddr)
    }
}

// ---- verdicts, events, counters ------------------------------------------------
pub const R_ALLOW_UNISOLATED: u8 = 1;
pub const R_ALLOW_POLICY: u8 = 2;
pub const R_ALLOW_ESTABLISHED: u8 = 3;
pub const R_ALLOW_REPLY: u8 = 4;
pub const R_ALLOW_HOST: u8 = 5;
pub const R_ALLOW_DEFERRED: u8 = 6;
pub const R_ALLOW_NOT_IP: u8 = 7;
pub const R_ALLOW_ND: u8 = 8;
pub const R_ALLOW_RELATED: u8 = 9;
pub const R_ALLOW_OPEN_UNTIL_READY: u8 = 10;
pub const R_ALLOW_CLUSTER_POLICY: u8 = 11;
/// Allowed, but the audit-mode policies isolating the endpoint would drop it.
pub const R_ALLOW_AUDIT: u8 = 12;
/// IPv6 multicast listener discovery to a group: link control, not a flow.
pub const R_ALLOW_MLD: u8 = 13;
pub const R_DROP_POLICY: u8 = 64;
pub const R_DROP_NOT_READY: u8 = 65;
pub const R_DROP_MALFORMED: u8 = 66;
pub const R_DROP_FRAGMENT: u8 = 67;
pub const R_DROP_NO_ENDPOINT: u8 = 68;
pub const R_DROP_CT_FULL: u8 = 69;
pub const R_DROP_VLAN: u8 = 70;
pub const R_DROP_SPOOFED: u8 = 71;
pub const R_DROP_SPOOFED_MAC: u8 = 72;
pub const R_DROP_NEIGH_SPOOFED: u8 = 73;
pub const R_DROP_ROUTER_MSG: u8 = 74;
pub const R_DROP_NOT_FOR_POD: u8 = 75;
pub const R_DROP_POLICY_REVOKED: u8 = 76;
pub const R_DROP_CLUSTER_POLICY: u8 = 77;
pub const REASON_MAX: u8 = 128;
/// Not a verdict: the counter slot of events the ring had no room for.
pub const COUNT_EVENT_LOST: u8 = 127;

/// Every reason code with its metric label.
pub const REASONS: &[(u8, &str)] = &[
    (R_ALLOW_UNISOLATED, "allow_unisolated"),
    (R_ALLOW_POLICY, "allow_policy"),
    (R_ALLOW_ESTABLISHED, "allow_established"),
    (R_ALLOW_REPLY, "allow_reply"),
    (R_ALLOW_HOST, "allow_host"),
    (R_ALLOW_DEFERRED, "allow_deferred"),
    (R_ALLOW_NOT_IP, "allow_not_ip"),
    (R_ALLOW_ND, "allow_nd"),
    (R_ALLOW_RELATED, "allow_related"),
    (R_ALLOW_OPEN_UNTIL_READY, "allow_open_until_ready"),
    (R_ALLOW_CLUSTER_POLICY, "allow_cluster_policy"),
    (R_ALLOW_AUDIT, "allow_audit"),
    (R_ALLOW_MLD, "allow_mld"),
    (R_DROP_POLICY, "drop_policy"),
    (R_DROP_NOT_READY, "drop_not_ready"),
    (R_DROP_MALFORMED, "drop_malformed"),
    (R_DROP_FRAGMENT, "drop_fragment"),
    (R_DROP_NO_ENDPOINT, "drop_no_endpoint"),
    (R_DROP_CT_FULL, "drop_ct_full"),
    (R_DROP_VLAN, "drop_vlan"),
    (R_DROP_SPOOFED, "drop_spoofed"),
    (R_DROP_SPOOFED_MAC, "drop_spoofed_mac"),
    (R_DROP_NEIGH_SPOOFED, "drop_neigh_spoofed"),
    (R_DROP_ROUTER_MSG, "drop_router_msg"),
    (R_DROP_NOT_FOR_POD, "drop_not_for_pod"),
    (R_DROP_POLICY_REVOKED, "drop_policy_revoked"),
    (R_DROP_CLUSTER_POLICY, "drop_cluster_policy"),
];

/// Whether a counter slot counts dropped packets; the lost-events slot
/// ([`COUNT_EVENT_LOST`]) is not a verdict.
pub fn reason_is_drop(r: u8) -> bool {
    r >= 64 && r != COUNT_EVENT_LOST
}

/// Metric label of a reason code ("unknown" for codes this build does not know).
pub fn reason_name(r: u8) -> &'static str {
    REASONS.iter().find(|(c, _)| *c == r).map(|(_, n)| *n).unwrap_or("unknown")
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    pub ts_ns: u64,
    pub endpoint: u32,
    pub peer_identity: u32,
    pub rule: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub reason: u8,
    /// `EVENT_*`
    pub flags: u8,
    pub pad: [u8; 4],
}

/// At to_pod, one event stands for both sides of a local flow: the
/// source's egress (the endpoint of its source address) is an audit
/// would-be drop too.
pub const EVENT_SOURCE_AUDIT: u8 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub endpoint: u32,
    pub direction: u8,
    pub reason: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

// ---- config -------------------------------------------------------------------
pub const CFG_EVENTS_ALLOW: u32 = 1 << 0;
/// Established flows keep their verdict until they expire (all-zero: re-judged).
pub const CFG_REJUDGE_OFF: u32 = 1 << 1;
/// No events at all (the flow log is off); verdicts are still counted.
pub const CFG_EVENTS_OFF: u32 = 1 << 2;
pub const CT_TCP_TIMEOUT_DEFAULT_S: u32 = 21600;
pub const CT_UDP_TIMEOUT_DEFAULT_S: u32 = 60;
pub const CT_SYN_TIMEOUT_DEFAULT_S: u32 = 60;
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    pub flags: u32,
    pub ct_tcp_timeout_s: u32,
    pub ct_udp_timeout_s: u32,
    pub ct_syn_timeout_s: u32,
    /// The policy generation now programmed (weir-policyd's, not configuration).
    pub policy_gen: u32,
    /// Events each CPU emits per window of about a second; the rest are
    /// counted in `weir_event_budget`, not emitted. 0: no limit.
    pub events_per_s: u32,
}

/// `struct weir_event_budget`, the per-CPU value of `weir_event_budget`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventBudget {
    pub window: u64,
    pub used: u64,
    /// Events over the budget: counted, not emitted.
    pub limited: u64,
}

// ---- capacities ----------------------------------------------------------------
pub const IPCACHE_MAX: u32 = 262144;
pub const ENDPOINTS_MAX: u32 = 65536;
pub const POLICY_MAX: u32 = 1048576;
pub const CIDR_MAX: u32 = 262144;
pub const CT_MAX: u32 = 262144;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const COUNTERS_MAX: u32 = 65536;
pub const RULE_COUNTERS_MAX: u32 = 65536;
pub const SERVICE_OPENS_MAX: u32 = 16384;
pub const SERVICE_BACKENDS_MAX: u32 = 65536;

// ---- pinned names ----------------------------------------------------------------
pub const MAP_IPCACHE: &str = "weir_ipcache";
/// Full-length ipcache entries, as a hash (see `weir_abi.h`).
pub const MAP_IPCACHE_EXACT: &str = "weir_ipcache_exact";
pub const MAP_ENDPOINTS: &str = "weir_endpoints";
pub const MAP_POLICY: &str = "weir_policy";
/// Full-length policy keys, as a hash (see `weir_abi.h`).
pub const MAP_POLICY_EXACT: &str = "weir_policy_exact";
pub const MAP_CIDR: &str = "weir_cidr";
pub const MAP_CT: &str = "weir_ct";
pub const MAP_EVENTS: &str = "weir_events";
pub const MAP_COUNTERS: &str = "weir_counters";
/// Per CPU: the events emitted in this window and those over the budget.
pub const MAP_EVENT_BUDGET: &str = "weir_event_budget";
/// Per rule id: the packets the rule decided (see `weir_abi.h`).
pub const MAP_RULE_COUNTERS: &str = "weir_rule_counters";
pub const MAP_CONFIG: &str = "weir_config";
pub const MAP_ABI: &str = "weir_abi";
/// Source port -> the VIP it just opened (see `weir_abi.h`).
pub const MAP_SERVICE_OPENS: &str = "weir_service_opens";
/// SERVICE conntrack entry -> the backend on another node it stands for.
pub const MAP_SERVICE_BACKENDS: &str = "weir_service_backends";
/// Every map the object pins by name under the bpffs root.
pub const PINNED_MAPS: [&str; 15] = [
    MAP_IPCACHE,
    MAP_IPCACHE_EXACT,
    MAP_ENDPOINTS,
    MAP_POLICY,
    MAP_POLICY_EXACT,
    MAP_CIDR,
    MAP_CT,
    MAP_EVENTS,
    MAP_COUNTERS,
    MAP_EVENT_BUDGET,
    MAP_RULE_COUNTERS,
    MAP_CONFIG,
    MAP_ABI,
    MAP_SERVICE_OPENS,
    MAP_SERVICE_BACKENDS,
];
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_TO_POD: &str = "to_pod";
pub const PROG_LEAVE_NODE: &str = "leave_node";

macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        // SAFETY: #[repr(C)], only integer fields and arrays of them, no
        // implicit padding (the header's layout rule; checked by the layout
        // test, which compares every size with the sum of its fields).
        $(unsafe impl aya::Pod for $t {})+
    };
}
pod!(
    IpcacheKey,
    IpcacheValue,
    Endpoint,
    PolicyKey,
    PolicyValue,
    CidrKey,
    CidrValue,
    CtKey,
    CtValue,
    Event,
    CounterKey,
    CounterValue,
    Config,
    EventBudget,
    ServiceOpenKey,
    ServiceOpen,
    ServiceBackend
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_a_drop_and_the_lost_events_slot_is_not() {
        for (r, name) in REASONS {
            assert_eq!(reason_is_drop(*r), name.starts_with("drop_"), "{name}");
        }
        assert!(!reason_is_drop(COUNT_EVENT_LOST), "a full event ring drops no packet");
    }

    #[test]
    fn a_pod_endpoint_holds_its_mac_its_addresses_and_its_link_local() {
        let mac = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x07];
        let addrs: Vec<IpNet> = vec!["10.1.2.7/24".parse().unwrap(), "fd00::7/64".parse().unwrap()];
        let ep = Endpoint::for_pod(mac, &addrs, EP_OPEN_UNTIL_READY).unwrap();
        assert_eq!((ep.identity, ep.flags, ep.revision), (0, EP_OPEN_UNTIL_READY, 0));
        assert_eq!(ep.mac, mac);
        assert_eq!(ep.ipv4_prefixlen, 24);
        assert_eq!(ep.ips(), vec!["10.1.2.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
        assert_eq!(ep.ipv6_ll, addr::eui64_link_local(mac).octets());
        // one family only: the other slot stays empty
        let v6only = Endpoint::for_pod(mac, &addrs[1..], 0).unwrap();
        assert_eq!((v6only.ipv4, v6only.ipv4_prefixlen), ([0; 16], 0));
        assert_eq!(v6only.ips(), vec!["fd00::7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_pod_endpoint_refuses_what_the_programs_cannot_hold() {
        let two_v4: Vec<IpNet> = vec!["10.1.2.7/24".parse().unwrap(), "10.9.0.3/24".parse().unwrap()];
        let e = Endpoint::for_pod([2, 0, 0, 0, 0, 1], &two_v4, 0).unwrap_err().to_string();
        assert!(e.contains("pod addresses") && e.contains("10.1.2.7, 10.9.0.3") && e.contains("one per family"), "{e}");
        for mac in [[0; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
            let e = Endpoint::for_pod(mac, &[], 0).unwrap_err().to_string();
            assert!(e.contains("pod MAC") && e.contains("not a unicast address"), "{e}");
        }
    }
}
