//! Why a flow is allowed or blocked, read from the last compile's state:
//! the identities (universe), the ipcache, the compiled policies with their
//! peer sets, and for this node's endpoints the entries the maps hold.
//!
//! Not a stage: it runs between compiles, on what the stages kept. Each
//! side of a flow (the source's egress, the destination's ingress) is
//! judged twice:
//!
//! - **by rule**: every policy selecting the side's pod, and every rule and
//!   peer of theirs that admits the other end on this protocol and port.
//!   This names *every* allowing rule, on any node, from the same compiled
//!   policies and peer sets the endpoint stage turns into entries;
//! - **by map** (endpoints of this node only): the dataplane's lookups
//!   (peer identity, then the peer wildcard, `ANY_POD` for a pod and `ANY`
//!   for anything else, then the ipBlock class of the peer's address) over
//!   the endpoint's compiled entries, which name the one rule the maps
//!   carry for the key.
//!
//! Both must agree; a difference is an engine bug and is reported as such.

use super::cidr;
use super::endpoints::CompiledEndpoint;
use super::policy::{CompiledPolicy, CompiledRule, PeerSpec, Peers, PortSpec};
use super::universe::pod_named_ports;
use super::{
    peer_wildcard, Action, CompileStats, Direction, Engine, IdentityLabels, IpcacheEntry, Labels, PolicyValue, Tier,
    TierVerdict, CIDR_NO_CLASS, ID_ANY_POD, ID_FIRST_CIDR, ID_HOST, ID_WORLD,
};
use crate::store::{Key, Store};
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use weir_bpf::abi::{TIER_ACCEPT, TIER_NONE, TIER_PASS};

/// One end of a flow: an address, and the pod it is when known.
#[derive(Debug, Clone)]
pub struct End {
    pub addr: IpAddr,
    pub pod: Option<Key>,
}

/// A flow as the dataplane judges it: after DNAT (the destination is the
/// backend pod's address and port).
#[derive(Debug, Clone)]
pub struct Flow {
    pub src: End,
    pub dst: End,
    pub protocol: u8,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    pub src: EndInfo,
    pub dst: EndInfo,
    pub egress: Side,
    pub ingress: Side,
}

/// Who an end of the flow is to the dataplane.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndInfo {
    pub addr: IpAddr,
    /// `namespace/name` when the end is a pod.
    pub pod: Option<String>,
    /// The ipcache's identity for the address (what the peer's programs see).
    pub identity: u32,
    /// `pod`, `host` (this node) or `world` (no more specific ipcache entry).
    pub kind: &'static str,
    /// The identity's namespace and labels, for pod identities.
    pub labels: Option<IdentityView>,
    /// The host veth ifindex when the pod is an endpoint of this node.
    pub endpoint: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdentityView {
    pub namespace: String,
    pub labels: Labels,
}

/// One direction of the flow, judged at the pod whose side it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Side {
    /// `egress` (the source's) or `ingress` (the destination's).
    pub direction: &'static str,
    /// The pod whose policies judge this side; None when that end is not a
    /// pod (world, the node), so no NetworkPolicy applies.
    pub pod: Option<String>,
    pub allowed: bool,
    pub isolated: bool,
    /// Every policy selecting the pod that isolates it in this direction.
    pub isolating: Vec<String>,
    /// Every (policy, rule, peer) that allows the flow; empty: "no rule
    /// allows" (when isolated).
    pub policies: Vec<RuleMatch>,
    /// Some ClusterNetworkPolicy selects the pod with rules in this direction.
    pub tiered: bool,
    /// The ClusterNetworkPolicy rule that decided (Accept or Deny), or that
    /// passed the flow on to NetworkPolicy (Pass); None when no cluster rule
    /// matched.
    pub cluster: Option<ClusterRuleMatch>,
    /// Why, in words: `not isolated`, `allowed by N rule(s)`, `no rule
    /// allows`, `from the node: always allowed`, ...
    pub reason: String,
    /// When only audit-mode policies isolate the pod in this direction:
    /// what enforcing them would decide. The verdict above ignores them.
    pub audit: Option<AuditSide>,
    /// For an endpoint of this node: what its compiled map entries say.
    pub maps: Option<MapLookup>,
}

/// What the audit-mode policies isolating a side would decide if enforced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditSide {
    /// The audit-mode policies that would isolate the pod.
    pub isolating: Vec<String>,
    /// Every (policy, rule, peer) of theirs that allows the flow.
    pub policies: Vec<RuleMatch>,
    /// Enforced, they would allow the flow (an Admin rule decides first).
    pub allowed: bool,
    /// Allowed now, dropped if they were enforced: the dataplane reports
    /// it (`allow_audit`).
    #[serde(rename = "wouldDrop")]
    pub would_drop: bool,
}

/// The first matching rule of an Admin or Baseline tier.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterRuleMatch {
    /// `Admin` or `Baseline`.
    pub tier: &'static str,
    /// The ClusterNetworkPolicy's name.
    pub policy: String,
    pub priority: u32,
    /// Index in spec.ingress / spec.egress, and the rule's name.
    pub rule: u32,
    pub rule_name: String,
    /// `Accept`, `Deny` or `Pass`.
    pub action: &'static str,
    /// Index in from / to; None for a rule that matches every peer (one
    /// failed closed).
    pub peer: Option<u32>,
}

/// One allowing rule.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleMatch {
    /// `namespace/name`.
    pub policy: String,
    /// Index in spec.ingress / spec.egress.
    pub rule: u32,
    /// Index in from / to; None when the rule admits every peer.
    pub peer: Option<u32>,
    /// What the peer is: `any peer`, `pods`, `ipBlock CIDR`.
    pub matched: String,
    /// The ipBlock (CIDR) the other end's address matched, if that peer is one.
    pub ip_block: Option<IpNet>,
}

/// The dataplane's lookups for one local endpoint, over its compiled entries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MapLookup {
    pub endpoint: u32,
    pub isolated: bool,
    pub allowed: bool,
    /// How the deciding entry was found: `identity`, `any peer` (the peer
    /// wildcard: every pod for a pod, every other peer otherwise), `ipBlock
    /// class`; None when no entry decided (not isolated, or nothing allows).
    pub via: Option<&'static str>,
    /// The cluster tier whose entry decided (`Admin`, `Baseline`), if one did.
    pub tier: Option<&'static str>,
    /// The rule the entry the lookup lands on carries (longest prefix:
    /// a port beats a protocol beats any; among equal keys, the first by
    /// policy, rule, peer).
    pub rule: Option<RuleMatch>,
    /// The peer address's ipBlock partition prefix and class, when the
    /// endpoint has ipBlock entries in this direction covering it.
    pub ip_block_prefix: Option<IpNet>,
    pub ip_block_class: Option<u32>,
    /// The endpoint is audited here and no audit entry allows the flow:
    /// the dataplane counts and logs it as an audit policy's would-be drop.
    pub audit_would_drop: bool,
}

impl Engine {
    /// Endpoint `ifindex`'s identity and isolation as the last compile of
    /// it made them (None: not an endpoint of this node, or not compiled).
    pub fn endpoint_state(&self, ifindex: u32) -> Option<super::EndpointState> {
        self.endpoints.compiled(ifindex).map(|c| c.state)
    }

    /// The compiled form of the policy at `key`, as the last compile left it.
    pub fn compiled_policy(&self, key: &Key) -> Option<Arc<CompiledPolicy>> {
        self.policies.compiled(key).cloned()
    }

    /// Every policy (NetworkPolicy and ClusterNetworkPolicy) selecting
    /// pod `key`, as the last compile left them.
    fn selecting(&self, store: &Store, key: &Key, pod: &crate::store::StoredPod) -> Vec<Arc<CompiledPolicy>> {
        let labels = &*pod.labels;
        let ns_labels = self.identities.last().ns_labels.get(&key.0).cloned();
        let mut selecting: Vec<Arc<CompiledPolicy>> = store
            .policies
            .range((key.0.clone(), String::new())..)
            .take_while(|(k, _)| k.0 == key.0)
            .filter_map(|(k, _)| self.policies.compiled(k).cloned())
            .collect();
        selecting.extend(self.policies.compiled_cluster());
        selecting.retain(|p| p.subject.selects(&key.0, ns_labels.as_ref(), labels));
        selecting
    }

    /// Every policy selecting pod `key` (NetworkPolicies of its namespace,
    /// ClusterNetworkPolicies by name), as the last compile left them.
    pub fn selecting_policies(&self, store: &Store, key: &Key) -> Vec<Arc<CompiledPolicy>> {
        store.pods.get(key).map(|pod| self.selecting(store, key, pod)).unwrap_or_default()
    }

    /// The policies (`namespace/name`) that isolate pod `key` in `dir`, as
    /// the last compile left them: what an isolation drop with no allowing
    /// rule names. Empty for a pod the store does not hold.
    pub fn isolating_policies(&self, store: &Store, key: &Key, dir: Direction) -> Vec<String> {
        store.pods.get(key).map(|pod| isolating(&self.selecting(store, key, pod), dir, false)).unwrap_or_default()
    }

    /// The audit-mode policies that would isolate pod `key` in `dir`,
    /// while no enforced one does: what an audit would-be drop names.
    pub fn auditing_policies(&self, store: &Store, key: &Key, dir: Direction) -> Vec<String> {
        store.pods.get(key).map(|pod| auditing(&self.selecting(store, key, pod), dir)).unwrap_or_default()
    }

    /// Explain `flow` against the last compile (call after one). Pure
    /// reading, but peer sets not evaluated yet are evaluated and cached.
    pub fn explain(&mut self, store: &Store, flow: &Flow) -> Explanation {
        let src = self.end_info(&flow.src);
        let dst = self.end_info(&flow.dst);
        let egress = self.side(store, Direction::Egress, flow, &flow.src, &src, &dst);
        let ingress = self.side(store, Direction::Ingress, flow, &flow.dst, &dst, &src);
        Explanation { allowed: egress.allowed && ingress.allowed, src, dst, egress, ingress }
    }

    fn ipcache_entry(&self, addr: IpAddr) -> IpcacheEntry {
        let world = IpcacheEntry { identity: ID_WORLD, endpoint: 0, service: false };
        self.ipcache.last().and_then(|m| cidr::lpm(m.iter(), addr).copied()).unwrap_or(world)
    }

    fn end_info(&self, end: &End) -> EndInfo {
        let e = self.ipcache_entry(end.addr);
        let uni = self.identities.last();
        let kind = match e.identity {
            ID_HOST => "host",
            ID_WORLD => "world",
            _ => "pod",
        };
        EndInfo {
            addr: end.addr,
            pod: end.pod.as_ref().map(|(ns, n)| format!("{ns}/{n}")),
            identity: e.identity,
            kind,
            labels: uni.identities.get(&e.identity).map(|IdentityLabels { namespace, labels }| IdentityView {
                namespace: namespace.clone(),
                labels: (**labels).clone(),
            }),
            endpoint: (e.endpoint != 0).then_some(e.endpoint),
        }
    }

    /// One side: `me` is the end whose policies judge, `peer` the other.
    fn side(
        &mut self,
        store: &Store,
        dir: Direction,
        flow: &Flow,
        me: &End,
        me_info: &EndInfo,
        peer: &EndInfo,
    ) -> Side {
        let direction = if dir == Direction::Egress { "egress" } else { "ingress" };
        let mut side = Side {
            direction,
            pod: me_info.pod.clone(),
            allowed: true,
            isolated: false,
            isolating: Vec::new(),
            policies: Vec::new(),
            tiered: false,
            cluster: None,
            reason: String::new(),
            audit: None,
            maps: None,
        };
        let Some(pod) = me.pod.as_ref().and_then(|k| store.pods.get(k).map(|p| (k, p))) else {
            side.reason = format!(
                "the {} is not a pod: no NetworkPolicy applies",
                if dir == Direction::Egress { "source" } else { "destination" }
            );
            return side;
        };
        let (key, pod) = pod;
        let selecting = self.selecting(store, key, pod);
        side.isolating = isolating(&selecting, dir, false);
        side.isolated = !side.isolating.is_empty();
        let auditing = auditing(&selecting, dir);
        let mut audit_rules = Vec::new();
        side.tiered =
            selecting.iter().flat_map(|p| &p.rules).any(|r| r.tier != Tier::NetworkPolicy && r.direction == dir);
        // Named ports belong to the destination pod: on ingress this pod's
        // own, on egress the union over the peer identity's pods.
        let own_ports: Vec<(String, u8, u16)> = pod_named_ports(pod).map(|(n, p, x)| (n.to_string(), p, x)).collect();
        let uni = self.identities.last();
        let dest_ports: Vec<(String, u8, u16)> = match dir {
            Direction::Ingress => own_ports,
            Direction::Egress => uni
                .named_ports
                .get(&peer.identity)
                .into_iter()
                .flatten()
                .map(|(n, p, x)| (n.to_string(), *p, *x))
                .collect(),
        };
        let mut stats = CompileStats::default();
        // The first matching rule of each cluster tier: (order, match).
        type Ordered = ((u32, u8, u32, u32), ClusterRuleMatch);
        let mut first: [Option<Ordered>; 2] = [None, None];
        for (pi, p) in selecting.iter().enumerate() {
            for r in p.rules.iter().filter(|r| r.direction == dir) {
                let port_ok = r.ports.iter().any(|ps| port_admits(ps, flow.protocol, flow.port, &dest_ports));
                if !port_ok {
                    continue;
                }
                let found = self.rule_peers_matching(r, peer, &mut stats);
                if r.tier != Tier::NetworkPolicy {
                    // Of equal ranks, the rule the program's first lookup
                    // finds: an identity's entry, then a wildcard's, then
                    // an ipBlock class's; then by policy and peer.
                    let Some((peer_index, _, _)) = found.into_iter().min_by_key(|(i, _, _)| lookup_of(r, *i)) else {
                        continue;
                    };
                    let slot = &mut first[(r.tier == Tier::Baseline) as usize];
                    let order = (r.rank, lookup_of(r, peer_index), pi as u32, peer_index.map_or(0, |i| i + 1));
                    if slot.as_ref().is_none_or(|(best, _)| order < *best) {
                        *slot = Some((order, cluster_match(p, r, peer_index)));
                    }
                    continue;
                }
                let matches = found.into_iter().map(|(peer_index, matched, ip_block)| RuleMatch {
                    policy: format!("{}/{}", p.namespace, p.name),
                    rule: r.index,
                    peer: peer_index,
                    matched,
                    ip_block,
                });
                match (p.audit, auditing.is_empty()) {
                    (false, _) => side.policies.extend(matches),
                    (true, false) => audit_rules.extend(matches),
                    (true, true) => {} // an enforced policy isolates: not in the maps
                }
            }
        }
        side.policies.sort();
        let [admin, baseline] = first.map(|f| f.map(|(_, m)| m));
        let from_node = peer.identity == ID_HOST;
        let towards = if dir == Direction::Egress { "to" } else { "from" };
        let decided = |m: &Option<ClusterRuleMatch>| m.as_ref().filter(|m| m.action != "Pass").cloned();
        (side.allowed, side.reason) = if from_node {
            (true, format!("{towards} the node: always allowed"))
        } else if let Some(m) = decided(&admin) {
            let verdict = (m.action == "Accept", format!("{} by {}", m.verdict_word(), m.describe()));
            side.cluster = Some(m);
            verdict
        } else {
            if admin.is_some() {
                side.cluster = admin.clone();
            }
            let passed = if admin.is_some() { "passed on by Admin; " } else { "" };
            if side.isolated {
                if side.policies.is_empty() {
                    (false, format!("{passed}no rule allows"))
                } else {
                    (true, format!("{passed}allowed by {} rule(s)", side.policies.len()))
                }
            } else if let Some(m) = decided(&baseline) {
                let verdict = (m.action == "Accept", format!("{passed}{} by {}", m.verdict_word(), m.describe()));
                side.cluster = Some(m);
                verdict
            } else {
                if baseline.is_some() && side.cluster.is_none() {
                    side.cluster = baseline.clone();
                }
                (true, format!("{passed}not isolated: no policy selecting the pod has this direction"))
            }
        };
        if !auditing.is_empty() {
            audit_rules.sort();
            // Enforced, they would decide where NetworkPolicy does: after an
            // Admin rule that decided, before Baseline.
            let admin_decided = !from_node && decided(&admin).is_some();
            let allowed = from_node || (if admin_decided { side.allowed } else { !audit_rules.is_empty() });
            let would_drop = side.allowed && !allowed;
            if would_drop {
                side.reason.push_str(&format!("; audit: {} would drop it", auditing.join(", ")));
            }
            side.audit = Some(AuditSide { isolating: auditing, policies: audit_rules, allowed, would_drop });
        }
        if let Some(ep) = me_info.endpoint.and_then(|e| self.endpoints.compiled(e).map(|c| (e, c))) {
            side.maps = Some(self.map_lookup(ep.0, &ep.1, dir, flow, peer));
        }
        side
    }

    /// The dataplane's lookups (weir_abi.h, bpf/progs/policy.h) over one
    /// endpoint's entries.
    fn map_lookup(&self, e: u32, c: &CompiledEndpoint, dir: Direction, flow: &Flow, peer: &EndInfo) -> MapLookup {
        let (isolated, tiered, audited) = match dir {
            Direction::Ingress => (c.state.ingress_isolated, c.state.ingress_tiered, c.state.ingress_audited),
            Direction::Egress => (c.state.egress_isolated, c.state.egress_tiered, c.state.egress_audited),
        };
        let cover = c
            .cidr
            .iter()
            .filter(|(k, _)| k.endpoint == e && k.direction == dir && k.net.contains(&peer.addr))
            .max_by_key(|(k, _)| k.net.prefix_len());
        let mut out = MapLookup {
            endpoint: e,
            isolated,
            allowed: true,
            via: None,
            tier: None,
            rule: None,
            ip_block_prefix: cover.map(|(k, _)| k.net),
            ip_block_class: cover.map(|(_, class)| *class),
            audit_would_drop: false,
        };
        if (!isolated && !tiered && !audited) || peer.identity == ID_HOST {
            return out;
        }
        let lookup = |identity: u32| -> Option<PolicyValue> {
            c.policy
                .iter()
                .filter(|(k, _)| k.matches(e, identity, dir, flow.protocol, flow.port))
                // the trie's choice: the longest prefix
                .max_by_key(|(k, _)| k.encode().prefix_len())
                .map(|(_, v)| *v)
        };
        let class = cover.map(|(_, c)| *c).filter(|c| *c != CIDR_NO_CLASS && *c >= ID_FIRST_CIDR);
        let found = [
            ("identity", Some(peer.identity)),
            ("any peer", Some(peer_wildcard(peer.identity))),
            ("ipBlock class", class),
        ]
        .map(|(via, id)| (via, id.and_then(lookup)));
        // Fold as the program does: per tier the best rank, the first
        // NetworkPolicy allow.
        let best = |tier: fn(&PolicyValue) -> TierVerdict| {
            found
                .iter()
                .filter_map(|(via, v)| v.map(|v| (*via, tier(&v))))
                .filter(|(_, t)| t.rank != TIER_NONE)
                .min_by_key(|(_, t)| t.rank)
        };
        let np = found.iter().find_map(|(via, v)| v.filter(|v| v.rule != 0).map(|v| (*via, v.rule)));
        let decided = |t: Option<(&'static str, TierVerdict)>| t.filter(|(_, t)| t.rank & 3 != TIER_PASS);
        let admin_decided = decided(best(|v| v.admin)).is_some();
        if let Some((via, t)) = decided(best(|v| v.admin)) {
            out.allowed = t.rank & 3 == TIER_ACCEPT;
            (out.via, out.tier) = (Some(via), Some("Admin"));
            out.rule = self.rule_match(t.rule, dir, peer);
        } else if isolated {
            out.allowed = np.is_some();
            if let Some((via, rule)) = np {
                out.via = Some(via);
                out.rule = self.rule_match(rule, dir, peer);
            }
        } else if let Some((via, t)) = decided(best(|v| v.baseline)) {
            out.allowed = t.rank & 3 == TIER_ACCEPT;
            (out.via, out.tier) = (Some(via), Some("Baseline"));
            out.rule = self.rule_match(t.rule, dir, peer);
        }
        out.audit_would_drop = audited && out.allowed && !admin_decided && np.is_none();
        out
    }

    /// The peers of rule `r` that match `peer`: (peer index, what it is,
    /// the ipBlock it matched).
    fn rule_peers_matching(
        &mut self,
        r: &CompiledRule,
        peer: &EndInfo,
        stats: &mut CompileStats,
    ) -> Vec<(Option<u32>, String, Option<IpNet>)> {
        match &r.peers {
            Peers::All { .. } => vec![(None, "any peer".to_string(), None)],
            Peers::List(list) => list
                .iter()
                .filter_map(|pe| match &pe.spec {
                    PeerSpec::Pods(sel) => {
                        // Every pod: no set to evaluate (and none to keep
                        // patching after this explanation).
                        let matches = match sel.is_every_pod() {
                            true => peer_wildcard(peer.identity) == ID_ANY_POD,
                            false => {
                                let ids = self.peer_sets.get(sel, self.identities.last(), stats).0;
                                ids.binary_search(&peer.identity).is_ok()
                            }
                        };
                        matches.then(|| (Some(pe.index), "pods".to_string(), None))
                    }
                    PeerSpec::Block(b) => b
                        .contains_addr(peer.addr)
                        .then(|| (Some(pe.index), format!("ipBlock {}", b.cidr), Some(b.cidr))),
                })
                .collect(),
        }
    }

    /// What rule id `id` stands for.
    fn rule_match(&self, id: u32, dir: Direction, peer: &EndInfo) -> Option<RuleMatch> {
        let (ns, name, rule_dir, rule, peer_index) = self.policies.rule_of(id)?;
        let p = self.policies.compiled(&(ns.clone(), name.clone()))?;
        let compiled = p.rules.iter().find(|r| r.direction == rule_dir && r.direction == dir && r.index == rule)?;
        let (matched, ip_block) = match (&compiled.peers, peer_index) {
            (Peers::List(list), Some(i)) => match list.iter().find(|pe| pe.index == i).map(|pe| &pe.spec) {
                Some(PeerSpec::Block(b)) => {
                    (format!("ipBlock {}", b.cidr), Some(b.cidr).filter(|c| c.contains(&peer.addr)))
                }
                _ => ("pods".to_string(), None),
            },
            _ => ("any peer".to_string(), None),
        };
        // A cluster-scoped policy is named alone, as `kubectl get cnp` does.
        let policy = if ns == super::cluster_policy::CLUSTER_SCOPE { name } else { format!("{ns}/{name}") };
        Some(RuleMatch { policy, rule, peer: peer_index, matched, ip_block })
    }
}

/// Which of the program's lookups finds the entry of rule `r`'s peer
/// `peer_index` (None: the rule's every-peer `from`/`to`): 0 the peer's
/// identity, 1 the peer wildcard, 2 the ipBlock class.
fn lookup_of(r: &CompiledRule, peer_index: Option<u32>) -> u8 {
    let Peers::List(list) = &r.peers else { return if r.ports_per_peer() { 0 } else { 1 } };
    match list.iter().find(|pe| Some(pe.index) == peer_index).map(|pe| &pe.spec) {
        Some(PeerSpec::Pods(sel)) if r.peer_is_wildcard(sel) => 1,
        Some(PeerSpec::Block(_)) => 2,
        _ => 0,
    }
}

impl ClusterRuleMatch {
    fn verdict_word(&self) -> &'static str {
        if self.action == "Accept" {
            "accepted"
        } else {
            "denied"
        }
    }

    /// `Admin ClusterNetworkPolicy NAME (priority P) rule I`
    fn describe(&self) -> String {
        format!("{} ClusterNetworkPolicy {} (priority {}) rule {}", self.tier, self.policy, self.priority, self.rule)
    }
}

/// The policies of one mode (audit or enforced) isolating in `dir`.
fn isolating(selecting: &[Arc<CompiledPolicy>], dir: Direction, audit: bool) -> Vec<String> {
    selecting
        .iter()
        .filter(|p| p.audit == audit && if dir == Direction::Egress { p.isolates_egress } else { p.isolates_ingress })
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

/// The audit-mode policies that would isolate in `dir`, where no enforced
/// one does: elsewhere they decide nothing and, as the endpoint stage
/// compiles them, are not in the maps.
fn auditing(selecting: &[Arc<CompiledPolicy>], dir: Direction) -> Vec<String> {
    if isolating(selecting, dir, false).is_empty() {
        isolating(selecting, dir, true)
    } else {
        Vec::new()
    }
}

fn cluster_match(p: &CompiledPolicy, r: &CompiledRule, peer: Option<u32>) -> ClusterRuleMatch {
    ClusterRuleMatch {
        tier: if r.tier == Tier::Admin { "Admin" } else { "Baseline" },
        policy: p.name.clone(),
        priority: r.rank >> 7,
        rule: r.index,
        rule_name: r.name.clone(),
        action: match r.action {
            Action::Allow => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        },
        peer,
    }
}

/// Whether one port entry of a rule admits (protocol, port) towards the
/// destination whose named ports are `dest_ports` (none for non-pod peers).
fn port_admits(ps: &PortSpec, protocol: u8, port: u16, dest_ports: &[(String, u8, u16)]) -> bool {
    match ps {
        PortSpec::Any => true,
        PortSpec::Proto(p) => *p == protocol,
        PortSpec::Blocks(p, blocks) => *p == protocol && blocks.iter().any(|b| b.contains(port)),
        PortSpec::Named(p, name) => {
            *p == protocol && dest_ports.iter().any(|(n, pp, num)| n == name && *pp == protocol && *num == port)
        }
        PortSpec::NamedAnyProtocol(name) => {
            dest_ports.iter().any(|(n, pp, num)| n == name && *pp == protocol && *num == port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixture;
    use super::super::{reference, Engine, PROTO_TCP, PROTO_UDP};
    use super::*;
    use serde_json::json;

    const XA: u32 = 10;

    fn base() -> Fixture {
        Fixture::two_teams(XA)
    }

    fn end(pod: Option<(&str, &str)>, addr: &str) -> End {
        End { addr: addr.parse().unwrap(), pod: pod.map(|(ns, n)| (ns.to_string(), n.to_string())) }
    }

    /// Compile `f`, then explain src -> dst.
    fn explain(f: &Fixture, src: End, dst: End, protocol: u8, port: u16) -> Explanation {
        let mut engine = Engine::new();
        engine.compile(&f.store, &f.locals);
        engine.explain(&f.store, &Flow { src, dst, protocol, port })
    }

    fn rules(side: &Side) -> Vec<(String, u32, Option<u32>)> {
        side.policies.iter().map(|r| (r.policy.clone(), r.rule, r.peer)).collect()
    }

    #[test]
    fn without_policies_both_sides_are_open() {
        let e = explain(&base(), end(Some(("x", "b")), "10.0.0.2"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        assert!(e.allowed);
        assert!(!e.egress.isolated && !e.ingress.isolated);
        assert!(e.ingress.reason.starts_with("not isolated"), "{}", e.ingress.reason);
        assert_eq!(e.dst.endpoint, Some(XA));
        assert_eq!(e.src.endpoint, None, "x/b lives on another node");
        assert_eq!(e.src.kind, "pod");
        assert_eq!(e.src.labels.as_ref().unwrap().labels.get("app").map(String::as_str), Some("b"));
        assert!(e.ingress.maps.as_ref().unwrap().allowed);
        assert!(e.egress.maps.is_none(), "no map entries of a remote pod here");
    }

    #[test]
    fn every_allowing_rule_is_named_and_the_maps_name_the_longest_prefix() {
        let mut f = base();
        f.policy("x", "p2", json!({"podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"ports": [{"port": 443}]}, {"from": [{"ipBlock": {"cidr": "10.9.0.0/16"}}, {"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}]}));
        f.policy(
            "x",
            "p1",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}]}),
        );
        let e = explain(&f, end(Some(("x", "b")), "10.0.0.2"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        assert!(e.allowed && e.ingress.isolated);
        assert_eq!(e.ingress.isolating, ["x/p1", "x/p2"]);
        assert_eq!(rules(&e.ingress), [("x/p1".into(), 0, Some(0)), ("x/p2".into(), 1, Some(1))]);
        let maps = e.ingress.maps.unwrap();
        assert!(maps.allowed);
        assert_eq!(maps.via, Some("identity"));
        let r = maps.rule.unwrap();
        // The lookup is longest-prefix: p2's TCP/80 entry beats p1's any-protocol one.
        assert_eq!((r.policy.as_str(), r.rule, r.peer), ("x/p2", 1, Some(1)));

        // Port 443: only p2's rule 0 (every peer).
        let e = explain(&f, end(Some(("y", "b")), "10.0.1.2"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 443);
        assert!(e.allowed);
        assert_eq!(rules(&e.ingress), [("x/p2".into(), 0, None)]);
        assert_eq!(e.ingress.policies[0].matched, "any peer");
        assert_eq!(e.ingress.maps.unwrap().via, Some("any peer"));
    }

    #[test]
    fn an_isolated_side_without_a_rule_says_so_and_the_maps_agree() {
        let mut f = base();
        f.policy(
            "x",
            "deny",
            json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress", "Egress"],
            "egress": [{"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP", "port": 53}]}]}),
        );
        let e = explain(&f, end(Some(("x", "a")), "10.0.0.1"), end(Some(("x", "b")), "10.0.0.2"), PROTO_TCP, 53);
        assert!(!e.allowed && !e.egress.allowed && e.egress.isolated);
        assert_eq!(e.egress.reason, "no rule allows");
        assert!(e.egress.policies.is_empty());
        assert!(e.ingress.allowed, "x/b is not selected");
        let maps = e.egress.maps.unwrap();
        assert!(!maps.allowed && maps.rule.is_none());

        let e = explain(&f, end(Some(("x", "a")), "10.0.0.1"), end(Some(("x", "b")), "10.0.0.2"), PROTO_UDP, 53);
        assert!(e.allowed);
        assert_eq!(rules(&e.egress), [("x/deny".into(), 0, Some(0))]);
    }

    #[test]
    fn ip_blocks_name_the_block_and_the_class_and_respect_except() {
        let mut f = base();
        f.policy(
            "x",
            "cidr",
            json!({"podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}),
        );
        let e = explain(&f, end(None, "192.168.2.7"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        assert!(e.allowed);
        assert_eq!(e.src.kind, "world");
        assert!(e.egress.pod.is_none() && e.egress.allowed, "no policy judges the world's egress");
        assert_eq!(e.ingress.policies[0].ip_block, Some("192.168.0.0/16".parse().unwrap()));
        let maps = e.ingress.maps.unwrap();
        assert_eq!(maps.via, Some("ipBlock class"));
        assert!(maps.ip_block_class.unwrap() > CIDR_NO_CLASS);
        assert!(maps.ip_block_prefix.unwrap().contains(&"192.168.2.7".parse::<IpAddr>().unwrap()));

        let e = explain(&f, end(None, "192.168.1.7"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        assert!(!e.allowed);
        assert_eq!(e.ingress.reason, "no rule allows");
        let maps = e.ingress.maps.unwrap();
        assert_eq!(maps.ip_block_class, Some(CIDR_NO_CLASS), "the except hole");
        assert!(!maps.allowed);
    }

    #[test]
    fn named_ports_resolve_on_the_destination() {
        let mut f = base();
        f.pod_ports("y", "web", &[("app", "web")], "10.0.1.9", json!([{"name": "http", "containerPort": 8080}]));
        f.policy(
            "x",
            "out",
            json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "http"}]}]}),
        );
        let to_web =
            |port| explain(&f, end(Some(("x", "a")), "10.0.0.1"), end(Some(("y", "web")), "10.0.1.9"), PROTO_TCP, port);
        assert!(to_web(8080).allowed);
        assert_eq!(to_web(8080).egress.maps.unwrap().via, Some("identity"));
        assert!(!to_web(80).allowed);
        let to_b = explain(&f, end(Some(("x", "a")), "10.0.0.1"), end(Some(("y", "b")), "10.0.1.2"), PROTO_TCP, 8080);
        assert!(!to_b.allowed, "y/b has no port named http");
    }

    /// An audit-mode policy is explained apart from the verdict, which it
    /// does not change, and the maps agree on its would-be drops.
    #[test]
    fn an_audit_policy_is_explained_apart_and_the_maps_agree() {
        let mut f = base();
        f.policy(
            "x",
            "audit-in",
            json!({"podSelector": {"matchLabels": {"app": "a"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
        )
        .mode("x", "audit-in", Some("audit"));
        let e = explain(&f, end(Some(("y", "b")), "10.0.1.2"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        assert!(e.allowed && !e.ingress.isolated && e.ingress.isolating.is_empty());
        let a = e.ingress.audit.clone().expect("the audit side");
        assert_eq!(a.isolating, ["x/audit-in"]);
        assert!(a.would_drop && !a.allowed && a.policies.is_empty());
        assert!(e.ingress.reason.ends_with("audit: x/audit-in would drop it"), "{}", e.ingress.reason);
        assert!(e.ingress.maps.as_ref().unwrap().audit_would_drop);
        assert!(e.egress.audit.is_none());

        let e = explain(&f, end(Some(("x", "b")), "10.0.0.2"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        let a = e.ingress.audit.clone().unwrap();
        assert!(a.allowed && !a.would_drop);
        assert_eq!(
            a.policies.iter().map(|r| (r.policy.as_str(), r.rule, r.peer)).collect::<Vec<_>>(),
            [("x/audit-in", 0, Some(0))]
        );
        assert!(e.ingress.policies.is_empty(), "audit rules are not allowing rules");
        assert!(!e.ingress.maps.unwrap().audit_would_drop);

        // Enforced next to it: the audit policy is moot, and explained as such.
        f.policy("x", "deny", json!({"podSelector": {}}));
        let e = explain(&f, end(Some(("x", "b")), "10.0.0.2"), end(Some(("x", "a")), "10.0.0.1"), PROTO_TCP, 80);
        assert!(!e.allowed && e.ingress.audit.is_none());
        assert_eq!(e.ingress.isolating, ["x/deny"]);
    }

    /// By rule and by map agree, and both agree with the reference
    /// judgment, on every pair of pods, protocol and port of a mixed set of
    /// policies.
    #[test]
    fn by_rule_by_map_and_the_reference_agree() {
        let mut f = base();
        f.policy("x", "in", json!({"podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000}]},
                        {"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.2/32"]}}]}]}));
        f.policy("x", "out", json!({"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}]}, {"to": [{"ipBlock": {"cidr": "10.0.1.0/30"}}], "ports": [{"port": 81}]}]}));
        let mut engine = Engine::new();
        let d = engine.compile(&f.store, &f.locals);
        let pods = [("x", "a", "10.0.0.1"), ("x", "b", "10.0.0.2"), ("y", "a", "10.0.1.1"), ("y", "b", "10.0.1.2")];
        let mut checked = 0;
        for (sns, sn, sip) in pods {
            for (dns, dn, dip) in pods {
                for (proto, port) in [(PROTO_TCP, 80), (PROTO_TCP, 81), (PROTO_UDP, 1500), (PROTO_UDP, 80)] {
                    let flow =
                        Flow { src: end(Some((sns, sn)), sip), dst: end(Some((dns, dn)), dip), protocol: proto, port };
                    let e = engine.explain(&f.store, &flow);
                    for (side, ep_of, peer) in [(&e.egress, &e.src, dip), (&e.ingress, &e.dst, sip)] {
                        let Some(maps) = &side.maps else { continue };
                        let dir = if side.direction == "egress" { Direction::Egress } else { Direction::Ingress };
                        let want =
                            reference::judge(&d, ep_of.endpoint.unwrap(), dir, peer.parse().unwrap(), proto, port);
                        assert_eq!(
                            side.allowed, want,
                            "{sns}/{sn} -> {dns}/{dn} {proto}/{port} {}: by rule",
                            side.direction
                        );
                        assert_eq!(
                            maps.allowed, want,
                            "{sns}/{sn} -> {dns}/{dn} {proto}/{port} {}: by map",
                            side.direction
                        );
                        if let Some(r) = &maps.rule {
                            assert!(side.policies.contains(r), "the map's rule is among the allowing ones: {r:?}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 4 * 2, "x/a's egress and ingress, for every pair and port");
    }
}
