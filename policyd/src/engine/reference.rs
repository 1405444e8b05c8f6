//! Reference judgments, for tests and fuzzing (never used by policyd
//! itself; built for the crate's tests and with the `reference` feature):
//!
//! - [`judge`] / [`maps_allow`]: how the dataplane reads a [`Desired`]
//!   (weir_abi.h: the peer's identity, then the peer wildcard, then the
//!   ipBlock class of the peer's address), so tests check behaviour rather
//!   than map layout.
//! - [`Spec`]: what the NetworkPolicy objects of a [`Store`] allow, read
//!   straight from the API objects: no identities, caches, peer sets,
//!   partitions or port blocks. Single fields are validated with the
//!   engine's own rules (CIDR syntax, protocol and port names), so both
//!   agree on what is invalid; everything else is written anew.
//! - [`mismatches`]: every question worth asking about one compile, asked
//!   of both, with the answers that differ.
//!
//! The choices the engine documents (module doc of `engine`) are the
//! reference's too: invalid parts allow nothing, an invalid podSelector
//! isolates the namespace, an unknown policyType isolates both
//! directions, egress named ports resolve over every pod of the peer's
//! identity and allow nothing towards ipBlock (non-pod) peers, and the
//! node's gateway addresses are always allowed.

use super::cidr::{self, parse_cidr};
use super::ports::{protocol_number, valid_port_name};
use super::{peer_wildcard, Desired, Direction, ID_HOST, NAMESPACE_NAME_LABEL};
use crate::cluster_network_policy::{ClusterNetworkPolicy, ClusterNetworkPolicyProtocol, NamespacedPod, Port};
use crate::store::{Key, StatusIp, Store, StoredPod};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weir_bpf::abi::{TIER_ACCEPT, TIER_DENY, TIER_NONE, TIER_PASS};
use weir_common::registry::EndpointRecord;

type Labels = BTreeMap<String, String>;
/// A container port's (name, protocol, number).
type NamedPort = (String, u8, u16);
/// A rule's peers and ports, whichever the direction.
type RuleParts<'a> = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>);

// ---- the maps, as the dataplane reads them ----------------------------------

/// The map entries that decide one (endpoint, direction, peer address).
#[derive(Debug, Clone)]
pub struct MapVerdict {
    /// Not isolated nor tiered in this direction, or the peer is the node.
    pub open: bool,
    /// NetworkPolicy isolates the endpoint in this direction.
    pub isolated: bool,
    /// Only audit-mode policies isolate it in this direction.
    pub audited: bool,
    /// The entries each lookup can land on: the peer's identity, the peer
    /// wildcard (`ANY_POD` for a pod, `ANY` otherwise), the ipBlock class of
    /// the peer's address.
    pub lookups: Vec<Vec<(super::PolicyMatch, super::PolicyValue)>>,
}

impl MapVerdict {
    /// As bpf/progs/policy.h decides: per lookup the longest match, folded
    /// to the best rank of each cluster tier and any NetworkPolicy allow;
    /// then Admin, NetworkPolicy (when isolated), Baseline, allow.
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        if self.open {
            return true;
        }
        let hits = self.hits(proto, port);
        let best = |tier: fn(&super::PolicyValue) -> u32| hits.iter().map(tier).min().unwrap_or(TIER_NONE);
        let decides = |rank: u32| rank != TIER_NONE && rank & 3 != TIER_PASS;
        let admin = best(|v| v.admin.rank);
        if decides(admin) {
            return admin & 3 == TIER_ACCEPT;
        }
        if self.isolated {
            return hits.iter().any(|v| v.rule != 0);
        }
        let baseline = best(|v| v.baseline.rank);
        !decides(baseline) || baseline & 3 == TIER_ACCEPT
    }

    /// Per lookup, the value of the longest match for (proto, port).
    fn hits(&self, proto: u8, port: u16) -> Vec<super::PolicyValue> {
        self.lookups
            .iter()
            .filter_map(|entries| {
                entries
                    .iter()
                    .filter(|(k, _)| k.protocol.is_none_or(|p| p == proto) && k.port.is_none_or(|b| b.contains(port)))
                    .max_by_key(|(k, _)| k.encode().prefix_len())
                    .map(|(_, v)| *v)
            })
            .collect()
    }

    /// Whether the dataplane reports the flow as an audit policy's
    /// would-be drop (WEIR_R_ALLOW_AUDIT): allowed, audited, no cluster
    /// tier decided before NetworkPolicy, and no audit rule allows it.
    pub fn audit_would_drop(&self, proto: u8, port: u16) -> bool {
        if self.open || !self.audited || !self.allows(proto, port) {
            return false;
        }
        let hits = self.hits(proto, port);
        let admin = hits.iter().map(|v| v.admin.rank).min().unwrap_or(TIER_NONE);
        let admin_decides = admin != TIER_NONE && admin & 3 != TIER_PASS;
        !admin_decides && !hits.iter().any(|v| v.rule != 0)
    }
}

/// What the maps allow endpoint `ep` in `dir` against `peer`, for every
/// protocol and port at once.
pub fn maps_allow(d: &Desired, ep: u32, dir: Direction, peer: IpAddr) -> MapVerdict {
    let closed = MapVerdict { open: false, isolated: true, audited: false, lookups: Vec::new() };
    let Some(st) = d.endpoints.get(&ep) else {
        return closed;
    };
    let (isolated, tiered, audited) = match dir {
        Direction::Ingress => (st.ingress_isolated, st.ingress_tiered, st.ingress_audited),
        Direction::Egress => (st.egress_isolated, st.egress_tiered, st.egress_audited),
    };
    let identity = cidr::lpm(d.ipcache.iter(), peer).map(|e| e.identity);
    if (!isolated && !tiered && !audited) || identity == Some(ID_HOST) {
        return MapVerdict { open: true, isolated, audited, lookups: Vec::new() };
    }
    let keys_of = |id: u32| {
        let from = super::PolicyMatch { endpoint: ep, identity: id, direction: dir, protocol: None, port: None };
        d.policy
            .range_from(from)
            .take_while(move |(k, _)| k.endpoint == ep && k.identity == id && k.direction == dir)
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>()
    };
    // An address the ipcache does not know is WORLD.
    let identity = identity.unwrap_or(super::ID_WORLD);
    let mut lookups = vec![keys_of(identity), keys_of(peer_wildcard(identity))];
    let class = cidr::lpm(
        d.cidr.iter().filter(|(k, _)| k.endpoint == ep && k.direction == dir).map(|(k, v)| (&k.net, *v)),
        peer,
    );
    lookups.extend(class.map(keys_of));
    MapVerdict { open: false, isolated, audited, lookups }
}

/// The dataplane's judgement of endpoint `ep` in `dir` against a peer.
pub fn judge(d: &Desired, ep: u32, dir: Direction, peer: IpAddr, proto: u8, port: u16) -> bool {
    maps_allow(d, ep, dir, peer).allows(proto, port)
}

// ---- the policy text -------------------------------------------------------

/// (protocol, inclusive port range); None = any.
type Atom = (Option<u8>, Option<(u16, u16)>);

/// The protocols and ports one peer may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    atoms: Vec<Atom>,
}

impl PortSet {
    pub fn everything() -> Self {
        PortSet { atoms: vec![(None, None)] }
    }
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        self.atoms.iter().any(|(p, r)| p.is_none_or(|p| p == proto) && r.is_none_or(|(a, b)| (a..=b).contains(&port)))
    }
}

/// A pod as policy sees it.
#[derive(Debug)]
struct PodView<'a> {
    key: &'a Key,
    labels: Labels,
    /// (name, protocol, number) of its named container ports.
    named_ports: Vec<NamedPort>,
}

/// The NetworkPolicy semantics over one store and this node's records.
pub struct Spec<'a> {
    store: &'a Store,
    /// Specs by the namespace of their store key (authoritative, as in the
    /// engine); an absent spec is the empty one.
    policies: HashMap<&'a str, Vec<Cow<'a, NetworkPolicySpec>>>,
    pods: BTreeMap<&'a Key, PodView<'a>>,
    /// The local pod behind each endpoint id (the first record of an
    /// ifindex, in the engine's order, whose pod exists and takes part).
    endpoints: HashMap<u32, &'a Key>,
    /// Pods at each address: a local pod at its records' addresses, any
    /// other at its status addresses.
    claims: HashMap<IpAddr, Vec<&'a Key>>,
    gateways: HashSet<IpAddr>,
    /// Named ports of every pod sharing a namespace and labels.
    identity_ports: HashMap<(&'a str, Labels), Vec<NamedPort>>,
    /// ClusterNetworkPolicies by name.
    cluster: Vec<&'a ClusterNetworkPolicy>,
}

impl<'a> Spec<'a> {
    pub fn new(store: &'a Store, locals: &'a [EndpointRecord]) -> Spec<'a> {
        let mut pods = BTreeMap::new();
        let mut identity_ports: HashMap<(&str, Labels), Vec<NamedPort>> = HashMap::new();
        for (key, pod) in &store.pods {
            if !takes_part(pod) {
                continue;
            }
            let labels = (*pod.labels).clone();
            let named_ports = named_ports(pod);
            identity_ports.entry((key.0.as_str(), labels.clone())).or_default().extend(named_ports.iter().cloned());
            pods.insert(key, PodView { key, labels, named_ports });
        }
        let mut records: Vec<&EndpointRecord> = locals.iter().collect();
        records.sort_by(|a, b| {
            (a.host_ifindex, &a.container_id, &a.ifname).cmp(&(b.host_ifindex, &b.container_id, &b.ifname))
        });
        let mut endpoints = HashMap::new();
        let mut seen = HashSet::new();
        let mut local_ips: BTreeMap<&Key, Vec<IpAddr>> = BTreeMap::new();
        for r in records {
            if !seen.insert(r.host_ifindex) {
                continue; // the engine ignores a second record of an ifindex
            }
            let Some((key, pod)) = store.pods.get_key_value(&(r.pod_namespace.clone(), r.pod_name.clone())) else {
                continue;
            };
            let uid_ok = r.pod_uid.is_empty() || pod.uid.as_deref().is_none_or(|u| u == r.pod_uid);
            if uid_ok && takes_part(pod) {
                endpoints.insert(r.host_ifindex, key);
                local_ips.entry(key).or_default().extend(r.ips.iter().copied());
            }
        }
        let mut claims: HashMap<IpAddr, Vec<&Key>> = HashMap::new();
        for key in pods.keys() {
            let ips = match local_ips.get(key) {
                Some(ips) => ips.clone(),
                None => status_ips(&store.pods[*key]),
            };
            for ip in ips.into_iter().collect::<BTreeSet<_>>() {
                claims.entry(ip).or_default().push(key);
            }
        }
        let gateways = locals.iter().flat_map(|r| r.gateways.iter().copied()).collect();
        let mut policies: HashMap<&str, Vec<Cow<NetworkPolicySpec>>> = HashMap::new();
        for ((ns, _), np) in &store.policies {
            // Audit mode decides nothing.
            if super::policy::mode_annotation(np) == Some("audit") {
                continue;
            }
            let spec = np.spec.as_ref().map_or_else(|| Cow::Owned(NetworkPolicySpec::default()), Cow::Borrowed);
            policies.entry(ns.as_str()).or_default().push(spec);
        }
        let cluster = store.cluster_policies.values().collect();
        Spec { store, policies, pods, endpoints, claims, gateways, identity_ports, cluster }
    }

    /// What the policies allow endpoint `ep` in `dir` against `peer`: one
    /// answer per pod claiming the address (one for "no pod" when none
    /// does). Answers differ only when pods share an address, which the
    /// spec leaves to the implementation.
    pub fn allowed(&self, ep: u32, dir: Direction, peer: IpAddr) -> Vec<PortSet> {
        let Some(key) = self.endpoints.get(&ep) else {
            return vec![PortSet::default()];
        };
        let me = &self.pods[key];
        let selecting: Vec<&NetworkPolicySpec> = self
            .policies
            .get(key.0.as_str())
            .into_iter()
            .flatten()
            .map(|s| s.as_ref())
            .filter(|spec| match &spec.pod_selector {
                None => true,
                // An invalid subject selects the whole namespace.
                Some(s) => selector_matches(s, &me.labels).unwrap_or(true),
            })
            .collect();
        let isolated = selecting.iter().any(|s| types(s).isolates(dir));
        if !isolated || self.gateways.contains(&peer) {
            return vec![PortSet::everything()];
        }
        let claimants: Vec<Option<&PodView>> = match self.claims.get(&peer) {
            Some(keys) => keys.iter().map(|k| Some(&self.pods[k])).collect(),
            None => vec![None],
        };
        claimants
            .into_iter()
            .map(|them| {
                let mut set = PortSet::default();
                for spec in &selecting {
                    self.policy_allows(&key.0, spec, dir, me, them, peer, &mut set);
                }
                set
            })
            .collect()
    }

    /// The whole verdict of endpoint `ep` in `dir` against `peer`, tiers
    /// included: one [`Decision`] per pod claiming the address (as
    /// [`Spec::allowed`]).
    pub fn decide(&self, ep: u32, dir: Direction, peer: IpAddr) -> Vec<Decision> {
        let Some(key) = self.endpoints.get(&ep) else {
            return vec![Decision { open: false, network_policy: Some(PortSet::default()), cluster: Vec::new() }];
        };
        if self.gateways.contains(&peer) {
            return vec![Decision { open: true, network_policy: None, cluster: Vec::new() }];
        }
        let me = &self.pods[key];
        let isolated = self
            .policies
            .get(key.0.as_str())
            .into_iter()
            .flatten()
            .filter(|spec| spec.pod_selector.as_ref().is_none_or(|s| selector_matches(s, &me.labels).unwrap_or(true)))
            .any(|spec| types(spec).isolates(dir));
        let claimants: Vec<Option<&PodView>> = match self.claims.get(&peer) {
            Some(keys) => keys.iter().map(|k| Some(&self.pods[k])).collect(),
            None => vec![None],
        };
        // One NetworkPolicy answer per claimant when isolated (in the same
        // order), none otherwise.
        let mut np = if isolated { self.allowed(ep, dir, peer).into_iter().map(Some).collect() } else { Vec::new() };
        np.resize(claimants.len(), None);
        claimants
            .into_iter()
            .zip(np)
            .map(|(them, set)| Decision {
                open: false,
                network_policy: set,
                cluster: self.cluster_rules(me, dir, them, peer),
            })
            .collect()
    }

    /// Every ClusterNetworkPolicy rule selecting `me` whose peers match the
    /// address `peer` (held by `them`), with its order and ports.
    fn cluster_rules(&self, me: &PodView, dir: Direction, them: Option<&PodView>, peer: IpAddr) -> Vec<ClusterRule> {
        let mut out = Vec::new();
        for (pos, cnp) in self.cluster.iter().enumerate() {
            let sp = &cnp.spec;
            let admin = match sp.tier.as_str() {
                "Admin" => true,
                "Baseline" => false,
                _ => continue,
            };
            if !(0..=1000).contains(&sp.priority) {
                continue;
            }
            let subject = match (&sp.subject.namespaces, &sp.subject.pods) {
                (Some(ns), None) => self.in_namespaces(ns, &me.key.0),
                (None, Some(p)) => self.namespaced_pod(p, me),
                _ => None,
            };
            // An invalid subject selects nothing.
            if subject != Some(true) {
                continue;
            }
            let rules: Vec<CnpRule> = match dir {
                Direction::Ingress => sp
                    .ingress
                    .iter()
                    .map(|r| {
                        let peers = r.from.iter().map(|p| CnpPeer {
                            namespaces: p.namespaces.as_ref(),
                            pods: p.pods.as_ref(),
                            ..Default::default()
                        });
                        (r.action.as_str(), peers.collect(), r.protocols.as_ref())
                    })
                    .collect(),
                Direction::Egress => sp
                    .egress
                    .iter()
                    .map(|r| {
                        let peers = r.to.iter().map(|p| CnpPeer {
                            namespaces: p.namespaces.as_ref(),
                            pods: p.pods.as_ref(),
                            networks: p.networks.as_ref(),
                            experimental: p.nodes.is_some() || p.domain_names.is_some(),
                        });
                        (r.action.as_str(), peers.collect(), r.protocols.as_ref())
                    })
                    .collect(),
            };
            for (index, (action, peers, protocols)) in rules.into_iter().enumerate() {
                let (mut action, mut broken) = match action {
                    "Accept" => (TIER_ACCEPT, false),
                    "Deny" => (TIER_DENY, false),
                    "Pass" => (TIER_PASS, false),
                    _ => (TIER_DENY, true),
                };
                broken |= peers.is_empty();
                let mut kinds = Vec::new();
                for p in &peers {
                    let set = p.namespaces.is_some() as u8 + p.pods.is_some() as u8 + p.networks.is_some() as u8;
                    if p.experimental || set != 1 {
                        broken = true;
                        continue;
                    }
                    let matched = if let Some(ns) = p.namespaces {
                        match them {
                            Some(t) => self.in_namespaces(ns, &t.key.0).map(|ok| ok.then_some(PeerKind::Pods)),
                            None => selector_matches(ns, &Labels::new()).map(|_| None),
                        }
                    } else if let Some(np) = p.pods {
                        match them {
                            Some(t) => self.namespaced_pod(np, t).map(|ok| ok.then_some(PeerKind::Pods)),
                            None => (selector_matches(&np.namespace_selector, &Labels::new()).is_some()
                                && selector_matches(&np.pod_selector, &Labels::new()).is_some())
                            .then_some(None),
                        }
                    } else {
                        let nets = p.networks.expect("one is set");
                        let parsed: Vec<Option<IpNet>> = nets.iter().map(|n| parse_cidr(n).ok()).collect();
                        if nets.is_empty() || parsed.iter().any(Option::is_none) {
                            broken = true;
                        }
                        Some(parsed.iter().flatten().any(|n| n.contains(&peer)).then_some(PeerKind::Block))
                    };
                    match matched {
                        None => broken = true,
                        Some(Some(k)) => kinds.push(k),
                        Some(None) => {}
                    }
                }
                let mut atoms = Vec::new();
                let mut named = Vec::new();
                match protocols {
                    None => atoms.push((None, None)),
                    Some(list) if list.is_empty() => broken = true,
                    Some(list) => {
                        for p in list {
                            match cnp_protocol(p) {
                                Some(CnpPort::Atom(a)) => atoms.push(a),
                                Some(CnpPort::Named(n)) => named.push(n),
                                None => broken = true,
                            }
                        }
                    }
                }
                if broken && action != TIER_ACCEPT {
                    // Fail closed: the rule denies everything.
                    action = TIER_DENY;
                    out.push(ClusterRule {
                        admin,
                        order: (sp.priority as u32, index.min(31) as u32, action, pos),
                        ports: PortSet::everything(),
                    });
                    continue;
                }
                for kind in kinds {
                    let mut ports = PortSet { atoms: atoms.clone() };
                    // Named ports belong to the destination: on ingress this
                    // pod, on egress the peer's identity (none for networks).
                    let table: &[NamedPort] = match (dir, kind, them) {
                        (Direction::Ingress, _, _) => &me.named_ports,
                        (Direction::Egress, PeerKind::Block, _) | (Direction::Egress, _, None) => &[],
                        (Direction::Egress, _, Some(t)) => self
                            .identity_ports
                            .get(&(t.key.0.as_str(), t.labels.clone()))
                            .map(Vec::as_slice)
                            .unwrap_or(&[]),
                    };
                    for n in &named {
                        ports.atoms.extend(
                            table
                                .iter()
                                .filter(|(name, _, _)| name == n)
                                .map(|(_, pr, num)| (Some(*pr), Some((*num, *num)))),
                        );
                    }
                    out.push(ClusterRule {
                        admin,
                        order: (sp.priority as u32, index.min(31) as u32, action, pos),
                        ports,
                    });
                }
            }
        }
        out
    }

    /// Whether namespace `ns` matches `sel`; None when `sel` is invalid.
    fn in_namespaces(&self, sel: &LabelSelector, ns: &str) -> Option<bool> {
        selector_matches(sel, &self.namespace_labels(ns))
    }

    /// Whether pod `p` is selected; None when a selector is invalid.
    fn namespaced_pod(&self, sel: &NamespacedPod, p: &PodView) -> Option<bool> {
        let ns = selector_matches(&sel.namespace_selector, &self.namespace_labels(&p.key.0))?;
        let pod = selector_matches(&sel.pod_selector, &p.labels)?;
        Some(ns && pod)
    }

    /// Add to `out` what one selecting policy allows `me` in `dir` against
    /// `peer` (the pod `them`, if any).
    #[allow(clippy::too_many_arguments)]
    fn policy_allows(
        &self,
        ns: &str,
        spec: &NetworkPolicySpec,
        dir: Direction,
        me: &PodView,
        them: Option<&PodView>,
        peer: IpAddr,
        out: &mut PortSet,
    ) {
        let subject_valid = spec.pod_selector.as_ref().is_none_or(|s| selector_matches(s, &Labels::new()).is_some());
        if !subject_valid || !types(spec).rules_apply(dir) {
            return;
        }
        let rules: Vec<RuleParts> = match dir {
            Direction::Ingress => spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect(),
            Direction::Egress => spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect(),
        };
        for (peers, ports) in rules {
            let matched: Vec<PeerKind> = match peers {
                None => vec![PeerKind::Anyone],
                Some(list) if list.is_empty() => vec![PeerKind::Anyone],
                Some(list) => list.iter().filter_map(|p| self.peer_matches(ns, p, them, peer)).collect(),
            };
            for kind in matched {
                // Named ports belong to the destination: on ingress this pod,
                // on egress the peer's identity (none for an ipBlock peer).
                let named: &[NamedPort] = match (dir, kind, them) {
                    (Direction::Ingress, _, _) => &me.named_ports,
                    (Direction::Egress, PeerKind::Block, _) | (Direction::Egress, _, None) => &[],
                    (Direction::Egress, _, Some(t)) => {
                        self.identity_ports.get(&(t.key.0.as_str(), t.labels.clone())).map(Vec::as_slice).unwrap_or(&[])
                    }
                };
                match ports {
                    None => out.atoms.push((None, None)),
                    Some(list) if list.is_empty() => out.atoms.push((None, None)),
                    Some(list) => {
                        for p in list {
                            port_atoms(p, named, &mut out.atoms);
                        }
                    }
                }
            }
        }
    }

    /// How `p` (a peer of a policy in `ns`) matches the address `peer`
    /// held by the pod `them`; None when it does not (or is invalid).
    fn peer_matches(&self, ns: &str, p: &NetworkPolicyPeer, them: Option<&PodView>, peer: IpAddr) -> Option<PeerKind> {
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return None;
            }
            let net = parse_cidr(&b.cidr).ok()?;
            let mut holes = Vec::new();
            for e in b.except.iter().flatten() {
                let hole = parse_cidr(e).ok()?;
                if !net.contains(&hole) || hole == net {
                    return None; // the whole peer is invalid
                }
                holes.push(hole);
            }
            let inside = net.contains(&peer) && !holes.iter().any(|h| h.contains(&peer));
            return inside.then_some(PeerKind::Block);
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            return None;
        }
        // An invalid selector (None) matches nothing; no pod, no match.
        let t = them?;
        let pods_ok = p.pod_selector.as_ref().is_none_or(|s| selector_matches(s, &t.labels) == Some(true));
        let ns_ok = match &p.namespace_selector {
            None => t.key.0 == ns,
            Some(s) => selector_matches(s, &self.namespace_labels(&t.key.0)) == Some(true),
        };
        (pods_ok && ns_ok).then_some(PeerKind::Pods)
    }

    fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.store.namespaces.get(ns).and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
        l.entry(NAMESPACE_NAME_LABEL.to_string()).or_insert_with(|| ns.to_string());
        l
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    /// `from`/`to` absent or empty.
    Anyone,
    Pods,
    Block,
}

/// One ClusterNetworkPolicy rule: action, peers, protocols.
type CnpRule<'a> = (&'a str, Vec<CnpPeer<'a>>, Option<&'a Vec<ClusterNetworkPolicyProtocol>>);

/// One ClusterNetworkPolicy peer, ingress or egress.
#[derive(Default)]
struct CnpPeer<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<&'a NamespacedPod>,
    networks: Option<&'a Vec<String>>,
    experimental: bool,
}

enum CnpPort {
    Atom(Atom),
    Named(String),
}

/// One `protocols` entry; None when invalid.
fn cnp_protocol(p: &ClusterNetworkPolicyProtocol) -> Option<CnpPort> {
    let named = !p.destination_named_port.is_empty();
    let given = [p.tcp.is_some(), p.udp.is_some(), p.sctp.is_some(), named].into_iter().filter(|x| *x).count();
    if given != 1 {
        return None;
    }
    if named {
        return valid_port_name(&p.destination_named_port).then(|| CnpPort::Named(p.destination_named_port.clone()));
    }
    let (proto, pp) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(t), _, _) => (super::PROTO_TCP, t),
        (_, Some(u), _) => (super::PROTO_UDP, u),
        (_, _, Some(s)) => (super::PROTO_SCTP, s),
        _ => return None,
    };
    let ok = |n: i32| (1..=65535).contains(&n);
    match &pp.destination_port {
        None => Some(CnpPort::Atom((Some(proto), None))),
        Some(Port { number: Some(n), range: None }) if ok(*n) => {
            Some(CnpPort::Atom((Some(proto), Some((*n as u16, *n as u16)))))
        }
        Some(Port { number: None, range: Some(r) }) if ok(r.start) && ok(r.end) && r.start < r.end => {
            Some(CnpPort::Atom((Some(proto), Some((r.start as u16, r.end as u16)))))
        }
        _ => None,
    }
}

/// A cluster rule that matched the peer: its tier, its order (priority,
/// rule index, action, policy position; the first wins) and its ports.
#[derive(Debug, Clone)]
pub struct ClusterRule {
    admin: bool,
    order: (u32, u32, u32, usize),
    ports: PortSet,
}

/// Everything that decides one (endpoint, direction, peer), tiers included.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The peer is the node: always allowed.
    open: bool,
    /// What NetworkPolicy allows, when it isolates the endpoint.
    network_policy: Option<PortSet>,
    cluster: Vec<ClusterRule>,
}

impl Decision {
    /// Admin by order, then NetworkPolicy, then Baseline by order, then allow.
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        if self.open {
            return true;
        }
        let first = |admin: bool| {
            self.cluster.iter().filter(|r| r.admin == admin && r.ports.allows(proto, port)).min_by_key(|r| r.order)
        };
        if let Some(r) = first(true).filter(|r| r.order.2 != TIER_PASS) {
            return r.order.2 == TIER_ACCEPT;
        }
        if let Some(np) = &self.network_policy {
            return np.allows(proto, port);
        }
        first(false).filter(|r| r.order.2 != TIER_PASS).is_none_or(|r| r.order.2 == TIER_ACCEPT)
    }
}

/// Directions a policy isolates and the directions whose rules count.
struct Types {
    isolates: [bool; 2],
    rules: [bool; 2],
}

impl Types {
    fn isolates(&self, d: Direction) -> bool {
        self.isolates[d as usize]
    }
    fn rules_apply(&self, d: Direction) -> bool {
        self.rules[d as usize]
    }
}

fn types(spec: &NetworkPolicySpec) -> Types {
    match spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        // As the API server defaults it: Ingress, and Egress iff egress rules exist.
        None => {
            let eg = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            Types { isolates: [true, eg], rules: [true, eg] }
        }
        Some(list) => {
            let ing = list.iter().any(|t| t == "Ingress");
            let eg = list.iter().any(|t| t == "Egress");
            let unknown = list.iter().any(|t| t != "Ingress" && t != "Egress");
            Types { isolates: [ing || unknown, eg || unknown], rules: [ing, eg] }
        }
    }
}

/// The atoms one `ports` entry allows; `named` resolves a port name.
fn port_atoms(p: &NetworkPolicyPort, named: &[NamedPort], out: &mut Vec<Atom>) {
    let Some(proto) = protocol_number(p.protocol.as_deref()) else {
        return;
    };
    match (&p.port, p.end_port) {
        (None, None) => out.push((Some(proto), None)),
        (None, Some(_)) => {}
        (Some(IntOrString::Int(first)), end) => {
            let last = end.unwrap_or(*first);
            if (1..=65535).contains(first) && (*first..=65535).contains(&last) {
                out.push((Some(proto), Some((*first as u16, last as u16))));
            }
        }
        (Some(IntOrString::String(name)), None) if valid_port_name(name) => out.extend(
            named
                .iter()
                .filter(|(n, pr, _)| n == name && *pr == proto)
                .map(|(_, pr, num)| (Some(*pr), Some((*num, *num)))),
        ),
        (Some(IntOrString::String(_)), _) => {}
    }
}

/// A label selector's verdict on `labels`; None when it is invalid (empty
/// key, unknown operator, values where none belong or none where needed).
fn selector_matches(s: &LabelSelector, labels: &Labels) -> Option<bool> {
    let mut ok = true;
    for (k, v) in s.match_labels.iter().flatten() {
        if k.is_empty() {
            return None;
        }
        ok &= labels.get(k) == Some(v);
    }
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        if e.key.is_empty() {
            return None;
        }
        let have = labels.get(&e.key);
        ok &= match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return None,
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" | "DoesNotExist" if !values.is_empty() => return None,
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => return None,
        };
    }
    Some(ok)
}

/// Not host-network (the node's address) and not finished (its address
/// may already be another pod's).
fn takes_part(pod: &StoredPod) -> bool {
    !pod.host_network && !matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// podIPs, else podIP; what is no address is no claim.
fn status_ips(pod: &StoredPod) -> Vec<IpAddr> {
    let raw = if pod.pod_ips.is_empty() { pod.pod_ip.as_slice() } else { &pod.pod_ips };
    raw.iter().filter_map(StatusIp::addr).collect()
}

/// Containers' and sidecars' (restartable init containers') named ports:
/// the store keeps only those with a name, a known protocol and a port
/// number, in order (its conversion is tested on its own).
fn named_ports(pod: &StoredPod) -> Vec<NamedPort> {
    pod.named_ports.iter().map(|p| (p.name.to_string(), p.protocol, p.port)).collect()
}

// ---- both, compared ---------------------------------------------------------

/// One question on which the maps and the policy text disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub endpoint: u32,
    pub direction: Direction,
    pub peer: IpAddr,
    pub protocol: u8,
    pub port: u16,
    /// What the compiled maps say; the policy text says the opposite.
    pub maps_allow: bool,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (maps, text) = if self.maps_allow { ("allow", "deny") } else { ("deny", "allow") };
        write!(
            f,
            "endpoint {} {:?} peer {} protocol {} port {}: the maps {maps}, the policy text says {text}",
            self.endpoint, self.direction, self.peer, self.protocol, self.port
        )
    }
}

/// Limits that keep one comparison within milliseconds.
const MAX_PEERS: usize = 64;
const MAX_PORTS: usize = 48;
const PROTOCOLS: [u8; 4] = [super::PROTO_TCP, super::PROTO_UDP, super::PROTO_SCTP, 1];

/// What every check asks about: each local endpoint, and the peers and
/// ports the input makes worth asking (see [`mismatches`]).
struct Questions {
    eps: Vec<u32>,
    peers: Vec<IpAddr>,
    ports: Vec<u16>,
}

impl Questions {
    fn of(store: &Store, locals: &[EndpointRecord]) -> Questions {
        let mut eps: Vec<u32> = locals.iter().map(|r| r.host_ifindex).collect();
        eps.sort_unstable();
        eps.dedup();
        Questions { eps, peers: probe_peers(store, locals), ports: probe_ports(store) }
    }
}

/// Ask the maps of `d` (compiled from `store` and `locals`) and the policy
/// text the same questions: every local endpoint, both directions, every
/// address the input names (pods, gateways, ipBlock edges and their
/// neighbours, one outsider per family), TCP/UDP/SCTP/ICMP, and the ports
/// at and around every port the input names. Questions whose answer the
/// spec leaves open (an address two pods claim, judged differently for
/// each) are skipped.
pub fn mismatches(store: &Store, locals: &[EndpointRecord], d: &Desired) -> Vec<Mismatch> {
    let spec = Spec::new(store, locals);
    let Questions { eps, peers, ports } = Questions::of(store, locals);
    let mut out = Vec::new();
    for &ep in &eps {
        for dir in [Direction::Ingress, Direction::Egress] {
            for &peer in &peers {
                let maps = maps_allow(d, ep, dir, peer);
                let text = spec.decide(ep, dir, peer);
                for proto in PROTOCOLS {
                    for &port in &ports {
                        let m = maps.allows(proto, port);
                        let mut t = text.iter().map(|s| s.allows(proto, port));
                        let first = t.next().unwrap_or(false);
                        if t.all(|x| x == first) && m != first {
                            out.push(Mismatch {
                                endpoint: ep,
                                direction: dir,
                                peer,
                                protocol: proto,
                                port,
                                maps_allow: m,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Audit mode, as the maps carry it: `d` is compiled from `store`, where
/// some NetworkPolicies are in audit mode; `d_without` from the store
/// without them; `d_enforced` with them enforced. On every question worth
/// asking, the maps of `d` must allow what `d_without`'s allow (audit
/// changes no verdict) and report a would-be drop exactly where
/// `d_without` allows and `d_enforced` does not. Returns each question
/// answered otherwise.
pub fn audit_mismatches(
    store: &Store,
    locals: &[EndpointRecord],
    d: &Desired,
    d_without: &Desired,
    d_enforced: &Desired,
) -> Vec<String> {
    let Questions { eps, peers, ports } = Questions::of(store, locals);
    let mut out = Vec::new();
    for &ep in &eps {
        for dir in [Direction::Ingress, Direction::Egress] {
            for &peer in &peers {
                let [audit, without, enforced] = [d, d_without, d_enforced].map(|d| maps_allow(d, ep, dir, peer));
                for proto in PROTOCOLS {
                    for &port in &ports {
                        let allowed = without.allows(proto, port);
                        let would_drop = allowed && !enforced.allows(proto, port);
                        let (a, w) = (audit.allows(proto, port), audit.audit_would_drop(proto, port));
                        if a != allowed || w != would_drop {
                            out.push(format!(
                                "endpoint {ep} {dir:?} peer {peer} {proto}/{port}: allowed {a} (want {allowed}), \
                                 would-be drop {w} (want {would_drop})"
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn probe_peers(store: &Store, locals: &[EndpointRecord]) -> Vec<IpAddr> {
    let mut set: BTreeSet<IpAddr> = BTreeSet::new();
    set.insert(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    set.insert(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)));
    for r in locals {
        set.extend(r.ips.iter().chain(&r.gateways).copied());
    }
    let mut edges: BTreeSet<IpAddr> = BTreeSet::new();
    for np in store.policies.values() {
        let Some(spec) = &np.spec else { continue };
        let peers = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.from.iter().flatten())
            .chain(spec.egress.iter().flatten().flat_map(|r| r.to.iter().flatten()));
        for b in peers.filter_map(|p| p.ip_block.as_ref()) {
            for s in std::iter::once(&b.cidr).chain(b.except.iter().flatten()) {
                if let Ok(net) = parse_cidr(s) {
                    edges.extend(edges_of(net));
                }
            }
        }
    }
    for cnp in store.cluster_policies.values() {
        for n in cnp.spec.egress.iter().flat_map(|r| &r.to).flat_map(|p| p.networks.iter().flatten()) {
            if let Ok(net) = parse_cidr(n) {
                edges.extend(edges_of(net));
            }
        }
    }
    // Pods first: they are what selectors speak about.
    let mut out: Vec<IpAddr> = store.pods.values().flat_map(status_ips).collect::<BTreeSet<_>>().into_iter().collect();
    out.extend(set);
    out.extend(edges);
    let mut seen = HashSet::new();
    out.retain(|a| seen.insert(*a));
    out.truncate(MAX_PEERS);
    out
}

/// The first and last address of `net` and their outside neighbours.
fn edges_of(net: IpNet) -> Vec<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
            [a, b, a.wrapping_sub(1), b.wrapping_add(1)].into_iter().map(|x| IpAddr::V4(x.into())).collect()
        }
        IpNet::V6(n) => {
            let (a, b) = (u128::from(n.network()), u128::from(n.broadcast()));
            [a, b, a.wrapping_sub(1), b.wrapping_add(1)].into_iter().map(|x| IpAddr::V6(x.into())).collect()
        }
    }
}

fn probe_ports(store: &Store) -> Vec<u16> {
    let mut set: BTreeSet<u16> = [0, 1, 65535].into_iter().collect();
    let mut near = |n: i64| {
        for x in [n - 1, n, n + 1] {
            if let Ok(p) = u16::try_from(x) {
                set.insert(p);
            }
        }
    };
    for np in store.policies.values() {
        let Some(spec) = &np.spec else { continue };
        let ports = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.ports.iter().flatten())
            .chain(spec.egress.iter().flatten().flat_map(|r| r.ports.iter().flatten()));
        for p in ports {
            if let Some(IntOrString::Int(n)) = p.port {
                near(n as i64);
            }
            if let Some(e) = p.end_port {
                near(e as i64);
            }
        }
    }
    for cnp in store.cluster_policies.values() {
        let rules = cnp.spec.ingress.iter().filter_map(|r| r.protocols.as_ref());
        for p in rules.chain(cnp.spec.egress.iter().filter_map(|r| r.protocols.as_ref())).flatten() {
            for pp in [&p.tcp, &p.udp, &p.sctp].into_iter().flatten() {
                if let Some(port) = &pp.destination_port {
                    for n in port.number.into_iter().chain(port.range.iter().flat_map(|r| [r.start, r.end])) {
                        near(n as i64);
                    }
                }
            }
        }
    }
    for pod in store.pods.values() {
        for (_, _, n) in named_ports(pod) {
            near(n as i64);
        }
    }
    let mut out: Vec<u16> = set.into_iter().collect();
    out.truncate(MAX_PORTS);
    out
}
