//! The policy engine: the cluster (a [`Store`]) plus this node's pod
//! interfaces ([`EndpointRecord`]s) in, the contents of every policy map
//! out ([`Desired`]). Pure: no I/O, no clock, deterministic for equal
//! input, so `sync` can diff two results and tests can check it
//! exhaustively against the NetworkPolicy spec.
//!
//! Pipeline, each stage cached so one change recompiles only what it
//! touches:
//!
//! 1. **Identities**: pods sharing namespace and labels share one number
//!    (>= 256). Namespace labels are a property of the namespace, so a
//!    namespace label change keeps the numbers and only re-evaluates
//!    selectors.
//! 2. **Policies** (`policy`): each NetworkPolicy is validated once into
//!    rules of peers and ports, memoized by its spec. Invalid parts are
//!    dropped with a [`Diagnostic`]; what is left only narrows access.
//! 3. **Peer sets**: a peer's selectors (namespace scope + pod selector)
//!    resolve to a sorted set of identities, cached per selector and
//!    patched incrementally when identities appear, vanish or their
//!    namespace's labels change.
//! 4. **Endpoints**: per local endpoint, the policies selecting it give its
//!    isolation and its (peer identity, protocol, port block) entries,
//!    ipBlocks split by [`cidr::partition`] into classes. The result is
//!    memoized by a fingerprint of everything it read.
//!
//! Choices the spec leaves open, made here:
//!
//! - An address two pods claim (a reused IP before the old pod is gone):
//!   a pod on this node (its endpoint record is authoritative) wins, then a
//!   Running pod over others, then the newest creationTimestamp, then the
//!   greater namespace/name. hostNetwork pods (the node's address) and
//!   Succeeded/Failed pods (their address may be reused) never enter the
//!   ipcache, peer sets or endpoints.
//! - Named ports resolve against the destination pod's container ports
//!   with the same protocol: on ingress the local pod's own, on egress the
//!   union over the peer identity's pods. Towards ipBlock peers (no pod)
//!   an egress named port allows nothing.
//! - Invalid input never widens access: an invalid peer or port is dropped
//!   (a list of only invalid ones allows nothing, never "all"); an invalid
//!   spec.podSelector isolates the whole namespace in the policy's
//!   directions with no allows; an unknown policyTypes entry isolates both
//!   directions and keeps only the rules of the directions named validly.
//!   Each case is a [`Diagnostic`] naming the object and field path.
//! - ipBlock except holes that no other block covers map to
//!   [`CIDR_NO_CLASS`], a class that never has policy entries, so an LPM
//!   lookup lands on the hole instead of the enclosing block.
//!
//! Tiers: every rule carries a [`Tier`] and an [`Action`]. Today only
//! NetworkPolicy/Allow exists and the maps have one verdict. Cluster-wide
//! tiers (Admin before NetworkPolicy, Baseline after; Accept/Deny/Pass)
//! slot into the same selector -> peer set -> entries pipeline: a new
//! policy kind compiles to `CompiledRule`s with its tier and action, peer
//! sets are shared as they are, and entry generation orders by tier when
//! it merges keys instead of taking the lowest rule id.

pub mod cidr;
pub mod identity;
pub mod policy;
pub mod ports;
#[cfg(any(test, feature = "reference"))]
#[doc(hidden)]
pub mod reference;
pub mod selector;
#[cfg(test)]
mod tests;

pub use ports::{port_blocks, PortBlock, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
pub use selector::{Labels, Selector};

use crate::store::{Key, Store};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use policy::{CompiledPolicy, PeerSelector, PeerSpec, Peers, PortSpec, Subject};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use weir_common::registry::EndpointRecord;

// Mirrors of weir_abi.h; checked against the header elsewhere.
/// WEIR_ID_ANY: a policy key matching every peer. Never assigned.
pub const ID_ANY: u32 = 0;
/// WEIR_ID_HOST: this node.
pub const ID_HOST: u32 = 1;
/// WEIR_ID_WORLD: anything without a more specific ipcache entry.
pub const ID_WORLD: u32 = 2;
/// WEIR_ID_FIRST_LABEL.
pub const ID_FIRST_LABEL: u32 = 256;
/// WEIR_ID_FIRST_CIDR.
pub const ID_FIRST_CIDR: u32 = 1 << 24;
/// The class of an except hole no other ipBlock covers: it is in the cidr
/// map so the LPM lookup lands on it, and it never has policy entries.
pub const CIDR_NO_CLASS: u32 = ID_FIRST_CIDR;
/// WEIR_DIR_INGRESS / WEIR_DIR_EGRESS.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Label Kubernetes puts on every namespace; set here when missing, as the
/// API server would, so manifest sources select namespaces the same way.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Direction {
    Ingress = DIR_INGRESS,
    Egress = DIR_EGRESS,
}

impl Direction {
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Policy tiers, evaluated Admin, then NetworkPolicy, then Baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    NetworkPolicy,
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheEntry {
    pub identity: u32,
    /// Host veth ifindex when the address is a pod interface on this node.
    pub endpoint: u32,
    /// A Service VIP: judged after DNAT, at the backend.
    pub service: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointState {
    pub identity: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint: u32,
    /// Peer identity; [`ID_ANY`] for every peer.
    pub identity: u32,
    pub direction: Direction,
    /// None: any protocol and port.
    pub protocol: Option<u8>,
    /// None: any port of `protocol`.
    pub port: Option<PortBlock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyValue {
    /// Rule id ([`RuleInfo::id`]). When several rules allow the key, the
    /// first in (policy namespace/name, rule index, peer index) order.
    pub rule: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    pub endpoint: u32,
    pub direction: Direction,
    pub net: IpNet,
}

/// What a rule id in the maps stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleInfo {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub direction: Direction,
    /// Index in spec.ingress / spec.egress.
    pub rule_index: u32,
    /// Index in from / to; None when the rule allows every peer.
    pub peer_index: Option<u32>,
    pub tier: Tier,
    pub action: Action,
}

/// Input that could not be understood, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Diagnostic {
    /// e.g. `NetworkPolicy ns/name`, `Pod ns/name`.
    pub object: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityLabels {
    pub namespace: String,
    pub labels: Labels,
}

/// Label identities by number: what a compile uses ([`Desired::identities`])
/// and what a restart seeds the engine with ([`Engine::seed_identities`]).
pub type IdentityTable = BTreeMap<u32, IdentityLabels>;

/// Everything the maps should hold. Sorted containers, so equal input
/// gives equal output and a diff is a merge walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub ipcache: BTreeMap<IpNet, IpcacheEntry>,
    pub endpoints: BTreeMap<u32, EndpointState>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Value: the class identity (>= [`ID_FIRST_CIDR`]), [`CIDR_NO_CLASS`] for holes.
    pub cidr: BTreeMap<CidrKey, u32>,
    /// Sorted by id.
    pub rules: Vec<RuleInfo>,
    /// Label identities in use; persist them and pass them to
    /// [`Engine::seed_identities`] after a restart to keep the numbers.
    pub identities: IdentityTable,
    /// Sorted.
    pub diagnostics: Vec<Diagnostic>,
    /// Local endpoints (ifindex) this result leaves out because its
    /// [`Slice`] ran out: no `endpoints`, `policy` or `cidr` entries of
    /// theirs are in it, and the maps must keep what they hold for them
    /// until a later compile brings them up to date. Empty when complete.
    pub pending: BTreeSet<u32>,
}

/// How much of a compile to do in one call ([`Engine::compile_slice`]):
/// the global stages always run in full (identities, ipcache, policies,
/// peer sets: bounded by the cluster's size), the per-endpoint stage, whose
/// cost grows with the ipBlocks and peers of the policies selecting each
/// endpoint, stops at a budget. Endpoints left out are listed in
/// [`Desired::pending`]; each call compiles at least one, so repeated calls
/// finish.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    /// Stop starting endpoint compiles once those of this call produced
    /// this many map entries (policy entries plus ipBlock prefixes). None:
    /// no limit, the compile is complete.
    pub budget: Option<usize>,
    /// Endpoints to compile before any other (the ones waiting for READY,
    /// whose pods cannot start before their policy is in the maps).
    pub first: BTreeSet<u32>,
}

impl Desired {
    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &self.rules[i])
    }
}

/// How much the last compile had to redo; for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Pods read afresh (new or changed since the previous compile).
    pub pods_read: usize,
    pub policies_compiled: usize,
    pub peer_sets_evaluated: usize,
    pub peer_sets_patched: usize,
    pub endpoints_compiled: usize,
    pub endpoints_reused: usize,
}

/// Allowed (protocol, port block) pairs; None = any.
type PortEntry = (Option<u8>, Option<PortBlock>);
/// What an ipBlock class allows: (protocol, port block, rule), sorted.
type ClassKey = Vec<(Option<u8>, Option<PortBlock>, u32)>;

/// A container port name with its protocol and number.
type NamedPort = (Arc<str>, u8, u16);

struct PolicyMemo {
    /// (uid, resourceVersion) when the source sets them: the API server
    /// changes resourceVersion on every write, so equal means unchanged
    /// without comparing the spec.
    version: Option<(Option<String>, String)>,
    spec: Option<NetworkPolicySpec>,
    compiled: Arc<CompiledPolicy>,
}

struct PeerSet {
    ids: Arc<Vec<u32>>,
    version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    identity: u32,
    own_ports: Vec<NamedPort>,
    policies: Vec<u64>,
    peer_sets: Vec<u64>,
    named_ports: u64,
}

#[derive(Debug)]
struct EndpointOut {
    state: EndpointState,
    policy: Vec<(PolicyKey, PolicyValue)>,
    cidr: Vec<(CidrKey, u32)>,
}

struct EndpointMemo {
    fp: Fingerprint,
    out: Arc<EndpointOut>,
}

/// The identities of one compile and what selectors need to know of them.
#[derive(Default)]
struct Universe {
    ns_labels: BTreeMap<String, Labels>,
    identities: BTreeMap<u32, IdentityLabels>,
    by_ns: BTreeMap<String, Vec<u32>>,
    named_ports: BTreeMap<u32, Vec<NamedPort>>,
}

type RuleKey = (String, String, Direction, u32, Option<u32>);

#[derive(Default)]
struct RuleIdTable {
    ids: HashMap<RuleKey, u32>,
    next: u32,
}

impl policy::RuleIds for RuleIdTable {
    fn rule_id(
        &mut self,
        ns: &str,
        name: &str,
        dir: Direction,
        rule: u32,
        peer: Option<u32>,
    ) -> u32 {
        let key = (ns.to_string(), name.to_string(), dir, rule, peer);
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        // 0 is never a rule: it reads as "no rule" in events.
        self.next = self.next.wrapping_add(1).max(1);
        self.ids.insert(key, self.next);
        self.next
    }
}

/// The engine: caches and allocators that make repeated compiles cheap and
/// their numbers stable.
pub struct Engine {
    ids: identity::IdentityAllocator,
    generation: u64,
    rule_ids: RuleIdTable,
    policies: HashMap<Key, PolicyMemo>,
    next_version: u64,
    universe: Universe,
    peer_sets: HashMap<PeerSelector, PeerSet>,
    named_ports_version: u64,
    classes: HashMap<ClassKey, u32>,
    next_class: u32,
    endpoints: HashMap<u32, EndpointMemo>,
    /// Sorted by key, like the store.
    pods: Vec<(Key, Box<PodDigest>)>,
    port_names: HashSet<Arc<str>>,
    /// Last ipcache with what it was built from besides pods.
    last_ipcache: Option<LastIpcache>,
    stats: CompileStats,
}

/// The ipcache of the last compile and its inputs other than pods.
struct LastIpcache {
    locals: Vec<EndpointRecord>,
    vips: Vec<IpAddr>,
    ipcache: BTreeMap<IpNet, IpcacheEntry>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

/// A local pod interface matched to its Pod.
struct LocalEp<'a> {
    ifindex: u32,
    pod_key: Key,
    pod: &'a Pod,
    identity: u32,
    own_ports: Vec<NamedPort>,
}

impl Engine {
    pub fn new() -> Self {
        Engine {
            ids: identity::IdentityAllocator::new(),
            generation: 0,
            rule_ids: RuleIdTable::default(),
            policies: HashMap::new(),
            next_version: 0,
            universe: Universe::default(),
            peer_sets: HashMap::new(),
            named_ports_version: 0,
            classes: HashMap::new(),
            next_class: CIDR_NO_CLASS + 1,
            endpoints: HashMap::new(),
            pods: Vec::new(),
            port_names: HashSet::new(),
            last_ipcache: None,
            stats: CompileStats::default(),
        }
    }

    /// Take the identity numbers of a previous run (its
    /// [`Desired::identities`], as persisted), so a restart programs the
    /// same numbers and the maps do not churn. Call before the first
    /// compile; returns how many were taken (numbers already in use are
    /// skipped).
    pub fn seed_identities(&mut self, previous: &IdentityTable) -> usize {
        previous
            .iter()
            .filter(|(id, l)| self.ids.seed(&l.namespace, &l.labels, **id))
            .count()
    }

    /// The identity (ns, labels) has or would be given now, if assigned.
    pub fn identity_of(&self, namespace: &str, labels: &Labels) -> Option<u32> {
        self.ids.get(namespace, labels)
    }

    pub fn last_stats(&self) -> CompileStats {
        self.stats
    }

    fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Compile everything: a complete [`Desired`].
    pub fn compile(&mut self, store: &Store, locals: &[EndpointRecord]) -> Desired {
        self.compile_slice(store, locals, &Slice::default())
    }

    /// Compile with the per-endpoint stage bounded by `slice`: endpoints
    /// whose inputs changed are compiled `slice.first` first, then by
    /// ifindex, until the budget is spent; the rest are
    /// [`Desired::pending`]. Calling again (with the same or newer input)
    /// continues where this one stopped, since compiled endpoints are
    /// memoized; once nothing is pending the result equals [`Engine::compile`]'s.
    pub fn compile_slice(
        &mut self,
        store: &Store,
        locals: &[EndpointRecord],
        slice: &Slice,
    ) -> Desired {
        self.generation += 1;
        self.stats = CompileStats::default();
        let generation = self.generation;
        let mut diags: Vec<Diagnostic> = Vec::new();

        // --- namespaces -------------------------------------------------
        let mut ns_labels: BTreeMap<String, Labels> = BTreeMap::new();
        for (name, ns) in &store.namespaces {
            let mut l = ns.metadata.labels.clone().unwrap_or_default();
            l.entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| name.clone());
            ns_labels.insert(name.clone(), l);
        }

        // --- local records -> pods ---------------------------------------
        let mut local_of_pod: HashMap<&Key, Vec<&EndpointRecord>> = HashMap::new();
        let mut ip_to_ifindex: HashMap<IpAddr, u32> = HashMap::new();
        let mut seen_ifindex: HashSet<u32> = HashSet::new();
        let mut sorted_locals: Vec<&EndpointRecord> = locals.iter().collect();
        sorted_locals.sort_by(|a, b| {
            (a.host_ifindex, &a.container_id, &a.ifname).cmp(&(
                b.host_ifindex,
                &b.container_id,
                &b.ifname,
            ))
        });
        for r in sorted_locals {
            if !seen_ifindex.insert(r.host_ifindex) {
                diags.push(Diagnostic {
                    object: format!("EndpointRecord {}/{}", r.container_id, r.ifname),
                    field: "hostIfindex".into(),
                    message: format!(
                        "ifindex {} is claimed by another record too; this one is ignored",
                        r.host_ifindex
                    ),
                });
                continue;
            }
            for ip in &r.ips {
                ip_to_ifindex.insert(*ip, r.host_ifindex);
            }
            let key = (r.pod_namespace.clone(), r.pod_name.clone());
            if let Some((k, pod)) = store.pods.get_key_value(&key) {
                let uid_ok = r.pod_uid.is_empty()
                    || pod.metadata.uid.as_deref().is_none_or(|u| u == r.pod_uid);
                if uid_ok && pod_is_eligible(pod) {
                    local_of_pod.entry(k).or_default().push(r);
                }
            }
        }

        // --- pods -> identities, ipcache candidates ----------------------
        // Unchanged pods (same labels, phase, addresses, ports) reuse their
        // digest: no hashing of labels, no allocation.
        let mut old_uni = std::mem::take(&mut self.universe);
        let mut uni = Universe::default();
        let mut added: Vec<u32> = Vec::new();
        // Rank for an address two pods claim: local, then Running, then newest, then name.
        type Rank<'a> = (bool, bool, Option<i128>, &'a Key);
        let mut claims: Vec<(IpAddr, Rank, u32)> = Vec::with_capacity(store.pods.len());
        let mut locals_ep: Vec<LocalEp> = Vec::new();
        // Merge walks over sorted keys (store, previous digests, local
        // records): no hashing per pod.
        let mut local_sorted: Vec<(&Key, Vec<&EndpointRecord>)> =
            local_of_pod.into_iter().collect();
        local_sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut local_iter = local_sorted.into_iter().peekable();
        let mut old_pods = std::mem::take(&mut self.pods).into_iter().peekable();
        let mut new_pods: Vec<(Key, Box<PodDigest>)> = Vec::with_capacity(store.pods.len());
        let mut pods_removed = false;
        for (key, pod) in &store.pods {
            let empty = Labels::new();
            let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
            let mut prev = None;
            while let Some((k, _)) = old_pods.peek() {
                match k.cmp(key) {
                    std::cmp::Ordering::Less => {
                        old_pods.next();
                        pods_removed = true;
                    }
                    std::cmp::Ordering::Equal => {
                        prev = old_pods.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            let entry = match prev {
                Some((k, dg))
                    if dg.unchanged(pod, labels, |id| {
                        uni.identities
                            .get(&id)
                            .or_else(|| old_uni.identities.get(&id))
                    }) =>
                {
                    (k, dg)
                }
                _ => (key.clone(), {
                    self.stats.pods_read += 1;
                    Box::new(PodDigest::new(
                        key,
                        pod,
                        labels,
                        &mut self.ids,
                        &mut self.port_names,
                        generation,
                    ))
                }),
            };
            new_pods.push(entry);
            let dg = &new_pods[new_pods.len() - 1].1;
            while local_iter.peek().is_some_and(|(k, _)| *k < key) {
                local_iter.next();
            }
            let records = if local_iter.peek().is_some_and(|(k, _)| *k == key) {
                local_iter.next().map(|(_, v)| v)
            } else {
                None
            };
            if dg.identity == 0 {
                continue;
            }
            diags.extend(dg.diags.iter().cloned());
            let id = dg.identity;
            if let std::collections::btree_map::Entry::Vacant(v) = uni.identities.entry(id) {
                let info = match old_uni.identities.remove(&id) {
                    Some(info) => info,
                    None => {
                        added.push(id);
                        IdentityLabels {
                            namespace: key.0.clone(),
                            labels: labels.clone(),
                        }
                    }
                };
                v.insert(info);
                match uni.by_ns.get_mut(&key.0) {
                    Some(ids) => ids.push(id),
                    None => {
                        uni.by_ns.insert(key.0.clone(), vec![id]);
                    }
                }
            }
            if !dg.ports.is_empty() {
                // Pods of one identity mostly share their ports: skip
                // the copies, merge only when they differ.
                let e = uni.named_ports.entry(id).or_default();
                if e.is_empty() {
                    e.extend(dg.ports.iter().cloned());
                } else if *e != dg.ports {
                    e.extend(dg.ports.iter().cloned());
                    e.sort();
                    e.dedup();
                }
            }
            let rank: Rank = (records.is_some(), dg.running, dg.created, key);
            match &records {
                Some(rs) => {
                    for r in rs {
                        claims.extend(r.ips.iter().map(|ip| (*ip, rank, id)));
                        locals_ep.push(LocalEp {
                            ifindex: r.host_ifindex,
                            pod_key: key.clone(),
                            pod,
                            identity: id,
                            own_ports: dg.ports.clone(),
                        });
                    }
                }
                None => claims.extend(dg.status_ips.iter().map(|ip| (*ip, rank, id))),
            }
        }
        pods_removed |= old_pods.next().is_some();
        drop(old_pods);
        self.pods = new_pods;
        if self.port_names.len() > 4096 {
            self.port_names.retain(|n| Arc::strong_count(n) > 1);
        }
        for ns in uni.by_ns.keys() {
            if !ns_labels.contains_key(ns) {
                ns_labels.insert(
                    ns.clone(),
                    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())]),
                );
            }
        }
        uni.ns_labels = ns_labels;
        locals_ep.sort_by_key(|e| e.ifindex);

        // --- ipcache -----------------------------------------------------
        let mut vips: Vec<IpAddr> = Vec::new();
        for ((ns, name), svc) in &store.services {
            let Some(spec) = &svc.spec else { continue };
            let mut raw: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
            if raw.is_empty() {
                raw.extend(spec.cluster_ip.iter());
            }
            for (i, v) in raw.into_iter().enumerate() {
                if v.is_empty() || v == "None" {
                    continue;
                }
                match v.parse::<IpAddr>() {
                    Ok(ip) => vips.push(ip),
                    Err(_) => diags.push(Diagnostic {
                        object: format!("Service {ns}/{name}"),
                        field: format!("spec.clusterIPs[{i}]"),
                        message: format!(
                            "{v:?} is not an IP address; the VIP is not marked as a Service"
                        ),
                    }),
                }
            }
        }
        // Nothing the ipcache reads changed: reuse it rather than re-sort
        // ten thousand addresses.
        let reuse = self.stats.pods_read == 0
            && !pods_removed
            && self
                .last_ipcache
                .as_ref()
                .is_some_and(|last| last.locals.as_slice() == locals && last.vips == vips);
        let ipcache = if reuse {
            self.last_ipcache
                .as_ref()
                .map(|last| last.ipcache.clone())
                .unwrap_or_default()
        } else {
            // Best claim first per address.
            claims.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
            claims.dedup_by_key(|c| c.0);
            // (prefix, precedence, entry): gateways over pods over Service VIPs over world.
            let mut ipc: Vec<(IpNet, u8, IpcacheEntry)> =
                Vec::with_capacity(claims.len() + vips.len() + 8);
            ipc.push((
                "0.0.0.0/0".parse().unwrap(),
                0,
                IpcacheEntry {
                    identity: ID_WORLD,
                    endpoint: 0,
                    service: false,
                },
            ));
            ipc.push((
                "::/0".parse().unwrap(),
                0,
                IpcacheEntry {
                    identity: ID_WORLD,
                    endpoint: 0,
                    service: false,
                },
            ));
            for (ip, _, id) in &claims {
                let endpoint = ip_to_ifindex.get(ip).copied().unwrap_or(0);
                ipc.push((
                    IpNet::from(*ip),
                    2,
                    IpcacheEntry {
                        identity: *id,
                        endpoint,
                        service: false,
                    },
                ));
            }
            for ip in &vips {
                ipc.push((
                    IpNet::from(*ip),
                    1,
                    IpcacheEntry {
                        identity: ID_WORLD,
                        endpoint: 0,
                        service: true,
                    },
                ));
            }
            for r in locals {
                for gw in &r.gateways {
                    ipc.push((
                        IpNet::from(*gw),
                        3,
                        IpcacheEntry {
                            identity: ID_HOST,
                            endpoint: 0,
                            service: false,
                        },
                    ));
                }
            }
            ipc.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
            ipc.dedup_by_key(|e| e.0);
            let ipcache: BTreeMap<IpNet, IpcacheEntry> =
                ipc.into_iter().map(|(n, _, e)| (n, e)).collect();
            self.last_ipcache = Some(LastIpcache {
                locals: locals.to_vec(),
                vips,
                ipcache: ipcache.clone(),
            });
            ipcache
        };

        // --- policies (memoized by spec) ---------------------------------
        let mut by_ns: BTreeMap<&str, Vec<Arc<CompiledPolicy>>> = BTreeMap::new();
        let mut removed_any = false;
        for (key, np) in &store.policies {
            let cached = self
                .policies
                .get(key)
                .filter(|m| match (&m.version, object_version(&np.metadata)) {
                    (Some(a), Some(b)) => *a == b,
                    _ => m.spec == np.spec,
                })
                .map(|m| m.compiled.clone());
            let compiled = match cached {
                Some(c) => c,
                None => {
                    let mut np = np.clone();
                    // The store key is authoritative for where the policy lives.
                    np.metadata.namespace = Some(key.0.clone());
                    np.metadata.name = Some(key.1.clone());
                    let v = self.version();
                    let c = Arc::new(policy::compile_policy(&np, &mut self.rule_ids, v));
                    self.stats.policies_compiled += 1;
                    self.policies.insert(
                        key.clone(),
                        PolicyMemo {
                            version: object_version(&np.metadata),
                            // With a resourceVersion the spec is never compared: do not keep it.
                            spec: if np
                                .metadata
                                .resource_version
                                .as_ref()
                                .is_some_and(|v| !v.is_empty())
                            {
                                None
                            } else {
                                np.spec.clone()
                            },
                            compiled: c.clone(),
                        },
                    );
                    c
                }
            };
            by_ns.entry(key.0.as_str()).or_default().push(compiled);
        }
        if self.policies.len() != store.policies.len() {
            self.policies.retain(|k, _| store.policies.contains_key(k));
            removed_any = true;
        }
        if removed_any {
            self.rule_ids
                .ids
                .retain(|k, _| store.policies.contains_key(&(k.0.clone(), k.1.clone())));
        }

        // --- peer sets: patch the cache for what changed ------------------
        let mut changed: BTreeSet<u32> = old_uni.identities.keys().copied().collect();
        changed.extend(added);
        for (ns, l) in &uni.ns_labels {
            if old_uni.ns_labels.get(ns) != Some(l) {
                changed.extend(uni.by_ns.get(ns).into_iter().flatten().copied());
            }
        }
        self.patch_peer_sets(&uni, &changed);
        for info in uni.identities.values() {
            self.ids.touch(info, generation);
        }
        if uni.named_ports != old_uni.named_ports {
            self.named_ports_version = self.version();
        }
        self.universe = uni;

        // --- endpoints ---------------------------------------------------
        let no_policies: Vec<Arc<CompiledPolicy>> = Vec::new();
        // Per endpoint (in locals_ep order): its output, None while pending.
        let mut outs: Vec<Option<Arc<EndpointOut>>> = Vec::with_capacity(locals_ep.len());
        let mut live_eps: HashSet<u32> = HashSet::new();
        // Endpoints whose inputs changed: (position, fingerprint, policies).
        let mut stale = Vec::new();
        for (i, ep) in locals_ep.iter().enumerate() {
            live_eps.insert(ep.ifindex);
            let pols = by_ns.get(ep.pod_key.0.as_str()).unwrap_or(&no_policies);
            let empty = Labels::new();
            let labels = ep.pod.metadata.labels.as_ref().unwrap_or(&empty);
            let selecting: Vec<&Arc<CompiledPolicy>> = pols
                .iter()
                .filter(|p| match &p.subject {
                    Subject::Selector(s) => s.matches(labels),
                    Subject::WholeNamespaceDenied => true,
                })
                .collect();
            let fp = self.fingerprint(ep, &selecting);
            if let Some(m) = self.endpoints.get(&ep.ifindex).filter(|m| m.fp == fp) {
                self.stats.endpoints_reused += 1;
                outs.push(Some(m.out.clone()));
                continue;
            }
            outs.push(None);
            stale.push((i, fp, selecting));
        }
        stale.sort_by_key(|(i, _, _)| {
            (
                !slice.first.contains(&locals_ep[*i].ifindex),
                locals_ep[*i].ifindex,
            )
        });
        let mut spent = 0usize;
        let mut pending = BTreeSet::new();
        for (n, (i, fp, selecting)) in stale.into_iter().enumerate() {
            let ep = &locals_ep[i];
            if n > 0 && slice.budget.is_some_and(|b| spent >= b) {
                pending.insert(ep.ifindex);
                continue;
            }
            let out = Arc::new(self.compile_endpoint(ep, &selecting));
            spent += out.policy.len() + out.cidr.len();
            self.stats.endpoints_compiled += 1;
            self.endpoints.insert(
                ep.ifindex,
                EndpointMemo {
                    fp,
                    out: out.clone(),
                },
            );
            outs[i] = Some(out);
        }
        self.endpoints.retain(|k, _| live_eps.contains(k));
        let outs: Vec<(&LocalEp, Arc<EndpointOut>)> = locals_ep
            .iter()
            .zip(outs)
            .filter_map(|(ep, out)| Some((ep, out?)))
            .collect();

        // --- assemble ------------------------------------------------------
        let mut endpoints = BTreeMap::new();
        let mut used_classes: HashSet<u32> = HashSet::new();
        for (ep, out) in &outs {
            endpoints.insert(ep.ifindex, out.state);
            used_classes.extend(out.cidr.iter().map(|(_, c)| *c));
        }
        let policy: BTreeMap<PolicyKey, PolicyValue> = outs
            .iter()
            .flat_map(|(_, o)| o.policy.iter().copied())
            .collect();
        let cidr: BTreeMap<CidrKey, u32> = outs
            .iter()
            .flat_map(|(_, o)| o.cidr.iter().copied())
            .collect();
        // Classes of pending endpoints' entries in the maps are never handed
        // out again (numbers only grow), so forgetting them here is safe.
        if self.classes.len() > 2 * used_classes.len() + 1024 {
            self.classes.retain(|_, id| used_classes.contains(id));
        }

        let mut rules = Vec::new();
        for pols in by_ns.values() {
            for p in pols {
                diags.extend(p.diagnostics.iter().cloned());
                for r in &p.rules {
                    let info = |id: u32, peer: Option<u32>| RuleInfo {
                        id,
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        direction: r.direction,
                        rule_index: r.index,
                        peer_index: peer,
                        tier: r.tier,
                        action: r.action,
                    };
                    match &r.peers {
                        Peers::All { rule_id } => rules.push(info(*rule_id, None)),
                        Peers::List(list) => {
                            rules.extend(list.iter().map(|pe| info(pe.rule_id, Some(pe.index))))
                        }
                    }
                }
            }
        }
        rules.sort();
        diags.sort();
        diags.dedup();

        let in_use = self.universe.identities.len();
        self.ids.collect_garbage(in_use, generation, 4096);

        Desired {
            ipcache,
            endpoints,
            policy,
            cidr,
            rules,
            identities: self.universe.identities.clone(),
            diagnostics: diags,
            pending,
        }
    }

    /// Bring every cached peer set up to date with `new`, re-evaluating only
    /// the identities that appeared, vanished or whose namespace labels
    /// changed; drop the cache when most of the universe changed.
    fn patch_peer_sets(&mut self, new: &Universe, changed: &BTreeSet<u32>) {
        if changed.is_empty() {
            return;
        }
        if changed.len() > new.identities.len() / 4 + 64 {
            self.peer_sets.clear();
            return;
        }
        let mut next_version = self.next_version;
        for (sel, set) in self.peer_sets.iter_mut() {
            let mut ids: Vec<u32> = set
                .ids
                .iter()
                .copied()
                .filter(|id| !changed.contains(id))
                .collect();
            for id in changed {
                if let Some(info) = new.identities.get(id) {
                    if selector_matches(sel, info, &new.ns_labels) {
                        ids.push(*id);
                    }
                }
            }
            ids.sort_unstable();
            if ids != *set.ids {
                next_version += 1;
                set.ids = Arc::new(ids);
                set.version = next_version;
                self.stats.peer_sets_patched += 1;
            }
        }
        self.next_version = next_version;
    }

    fn peer_set(&mut self, sel: &PeerSelector) -> (Arc<Vec<u32>>, u64) {
        if let Some(s) = self.peer_sets.get(sel) {
            return (s.ids.clone(), s.version);
        }
        let uni = &self.universe;
        let mut ids = Vec::new();
        let mut scan = |ns: &str| {
            for id in uni.by_ns.get(ns).into_iter().flatten() {
                if sel.pods.matches(&uni.identities[id].labels) {
                    ids.push(*id);
                }
            }
        };
        match &sel.namespaces {
            policy::NsScope::Same(ns) => scan(ns),
            policy::NsScope::Matching(nsel) => {
                for (ns, l) in &uni.ns_labels {
                    if nsel.matches(l) {
                        scan(ns);
                    }
                }
            }
        }
        ids.sort_unstable();
        let ids = Arc::new(ids);
        let version = self.version();
        self.stats.peer_sets_evaluated += 1;
        self.peer_sets.insert(
            sel.clone(),
            PeerSet {
                ids: ids.clone(),
                version,
            },
        );
        (ids, version)
    }

    fn fingerprint(&mut self, ep: &LocalEp, selecting: &[&Arc<CompiledPolicy>]) -> Fingerprint {
        let mut fp = Fingerprint {
            identity: ep.identity,
            own_ports: ep.own_ports.clone(),
            policies: selecting.iter().map(|p| p.version).collect(),
            peer_sets: Vec::new(),
            named_ports: 0,
        };
        for p in selecting {
            for r in &p.rules {
                if r.direction == Direction::Egress && r.uses_named_ports() {
                    fp.named_ports = self.named_ports_version;
                }
                if let Peers::List(list) = &r.peers {
                    for pe in list {
                        if let PeerSpec::Pods(sel) = &pe.spec {
                            fp.peer_sets.push(self.peer_set(sel).1);
                        }
                    }
                }
            }
        }
        fp
    }

    fn compile_endpoint(
        &mut self,
        ep: &LocalEp,
        selecting: &[&Arc<CompiledPolicy>],
    ) -> EndpointOut {
        let e = ep.ifindex;
        let state = EndpointState {
            identity: ep.identity,
            ingress_isolated: selecting.iter().any(|p| p.isolates_ingress),
            egress_isolated: selecting.iter().any(|p| p.isolates_egress),
        };
        // Peer sets first (needs &mut self), entries after.
        let mut resolved_sets: HashMap<*const PeerSelector, Arc<Vec<u32>>> = HashMap::new();
        for p in selecting {
            for r in &p.rules {
                if let Peers::List(list) = &r.peers {
                    for pe in list {
                        if let PeerSpec::Pods(sel) = &pe.spec {
                            let set = self.peer_set(sel).0;
                            resolved_sets.insert(sel as *const _, set);
                        }
                    }
                }
            }
        }
        // When several rules allow one key, the first by (policy namespace
        // and name, rule index, peer index) names it: decided by content,
        // not by rule id numbering, so restarts and histories agree.
        type Rank = (u32, u32, u32);
        let mut entries: Vec<(PolicyKey, Rank, u32)> = Vec::new();
        let mut rank_of: HashMap<u32, Rank> = HashMap::new();
        for (pi, p) in selecting.iter().enumerate() {
            for r in &p.rules {
                match &r.peers {
                    Peers::All { rule_id } => {
                        rank_of.insert(*rule_id, (pi as u32, r.index, 0));
                    }
                    Peers::List(list) => {
                        for pe in list {
                            rank_of.insert(pe.rule_id, (pi as u32, r.index, pe.index + 1));
                        }
                    }
                }
            }
        }
        let mut last: Option<(u32, Rank)> = None;
        let mut put =
            |identity: u32, dir: Direction, pp: (Option<u8>, Option<PortBlock>), rule: u32| {
                let k = PolicyKey {
                    endpoint: e,
                    identity,
                    direction: dir,
                    protocol: pp.0,
                    port: pp.1,
                };
                // Consecutive entries almost always come from the same rule.
                let rank = match last {
                    Some((r, rank)) if r == rule => rank,
                    _ => {
                        let rank =
                            rank_of
                                .get(&rule)
                                .copied()
                                .unwrap_or((u32::MAX, u32::MAX, u32::MAX));
                        last = Some((rule, rank));
                        rank
                    }
                };
                entries.push((k, rank, rule));
            };
        // ipBlocks per direction: (block, port entries, rule).
        let mut blocks: [Vec<(cidr::Block, Vec<PortEntry>, u32)>; 2] = [Vec::new(), Vec::new()];
        let uni_named = &self.universe.named_ports;
        // Ports of a rule towards one peer identity (None: a non-pod peer).
        let resolve = |ports: &[PortSpec],
                       dir: Direction,
                       peer: Option<u32>|
         -> Vec<(Option<u8>, Option<PortBlock>)> {
            let mut out = Vec::new();
            for p in ports {
                match p {
                    PortSpec::Any => out.push((None, None)),
                    PortSpec::Proto(pr) => out.push((Some(*pr), None)),
                    PortSpec::Blocks(pr, bl) => {
                        out.extend(bl.iter().map(|b| (Some(*pr), Some(*b))))
                    }
                    PortSpec::Named(pr, name) => {
                        // Named ports belong to the destination pod: on
                        // ingress that is this endpoint; on egress the peer.
                        let table: &[NamedPort] = match (dir, peer) {
                            (Direction::Ingress, _) => &ep.own_ports,
                            (Direction::Egress, Some(id)) => {
                                uni_named.get(&id).map(|v| v.as_slice()).unwrap_or(&[])
                            }
                            (Direction::Egress, None) => &[],
                        };
                        out.extend(
                            table
                                .iter()
                                .filter(|(n, p, _)| **n == **name && p == pr)
                                .map(|(_, p, num)| (Some(*p), Some(PortBlock::single(*num)))),
                        );
                    }
                }
            }
            out
        };
        for p in selecting {
            for r in &p.rules {
                let dir = r.direction;
                match &r.peers {
                    Peers::All { rule_id } => {
                        let has_named = dir == Direction::Egress && r.uses_named_ports();
                        for pp in resolve(&r.ports, dir, None) {
                            put(ID_ANY, dir, pp, *rule_id);
                        }
                        if has_named {
                            // Every pod whose container has the name: per identity.
                            let named_only: Vec<PortSpec> = r
                                .ports
                                .iter()
                                .filter(|p| matches!(p, PortSpec::Named(..)))
                                .cloned()
                                .collect();
                            for id in uni_named.keys() {
                                for pp in resolve(&named_only, dir, Some(*id)) {
                                    put(*id, dir, pp, *rule_id);
                                }
                            }
                        }
                    }
                    Peers::List(list) => {
                        for pe in list {
                            match &pe.spec {
                                PeerSpec::Pods(sel) => {
                                    let set = &resolved_sets[&(sel as *const _)];
                                    let uniform =
                                        !(dir == Direction::Egress && r.uses_named_ports());
                                    let shared = if uniform {
                                        resolve(&r.ports, dir, None)
                                    } else {
                                        Vec::new()
                                    };
                                    for id in set.iter() {
                                        if uniform {
                                            for pp in &shared {
                                                put(*id, dir, *pp, pe.rule_id);
                                            }
                                        } else {
                                            for pp in resolve(&r.ports, dir, Some(*id)) {
                                                put(*id, dir, pp, pe.rule_id);
                                            }
                                        }
                                    }
                                }
                                PeerSpec::Block(b) => {
                                    blocks[dir as usize].push((
                                        b.clone(),
                                        resolve(&r.ports, dir, None),
                                        pe.rule_id,
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut cidr_out = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let bl = &blocks[dir as usize];
            if bl.is_empty() {
                continue;
            }
            let plain: Vec<cidr::Block> = bl.iter().map(|(b, _, _)| b.clone()).collect();
            for (net, covering) in cidr::partition(&plain) {
                let mut class_key: ClassKey = covering
                    .iter()
                    .flat_map(|&i| bl[i].1.iter().map(move |pp| (pp.0, pp.1, bl[i].2)))
                    .collect();
                class_key.sort();
                class_key.dedup();
                let class = if class_key.is_empty() {
                    CIDR_NO_CLASS
                } else {
                    let class = match self.classes.get(&class_key) {
                        Some(c) => *c,
                        None => {
                            let c = self.next_class;
                            // Wrap within the class range, skipping the no-class marker.
                            self.next_class = if c == u32::MAX {
                                CIDR_NO_CLASS + 1
                            } else {
                                c + 1
                            };
                            self.classes.insert(class_key.clone(), c);
                            c
                        }
                    };
                    for (proto, port, rule) in &class_key {
                        put(class, dir, (*proto, *port), *rule);
                    }
                    class
                };
                cidr_out.push((
                    CidrKey {
                        endpoint: e,
                        direction: dir,
                        net,
                    },
                    class,
                ));
            }
        }
        cidr_out.sort();
        // Sorted by key then rank: the first of each key is its winner.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        entries.dedup_by_key(|x| x.0);
        EndpointOut {
            state,
            policy: entries
                .into_iter()
                .map(|(k, _, rule)| (k, PolicyValue { rule }))
                .collect(),
            cidr: cidr_out,
        }
    }
}

/// (uid, resourceVersion) of an object, when its source sets them.
fn object_version(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(Option<String>, String)> {
    m.resource_version
        .as_ref()
        .filter(|v| !v.is_empty())
        .map(|v| (m.uid.clone(), v.clone()))
}

/// What the engine read from one pod, and what it made of it.
struct PodDigest {
    version: Option<(Option<String>, String)>,
    uid: Option<String>,
    host_network: Option<bool>,
    phase: Option<String>,
    created: Option<i128>,
    pod_ip: Option<String>,
    pod_ips: Option<Vec<k8s_openapi::api::core::v1::PodIP>>,
    /// Named ports in container order (for change detection)...
    ports_seq: Vec<NamedPort>,
    /// ...and sorted, deduplicated (for resolution).
    ports: Vec<NamedPort>,
    /// 0 when the pod takes no part in policy (host network, finished).
    identity: u32,
    running: bool,
    status_ips: Vec<IpAddr>,
    diags: Vec<Diagnostic>,
}

impl PodDigest {
    fn new(
        key: &Key,
        pod: &Pod,
        labels: &Labels,
        ids: &mut identity::IdentityAllocator,
        names: &mut HashSet<Arc<str>>,
        generation: u64,
    ) -> PodDigest {
        let st = pod.status.as_ref();
        // One Arc per distinct port name, so comparing port lists is
        // mostly pointer comparisons.
        let mut intern = |n: &str| -> Arc<str> {
            if let Some(a) = names.get(n) {
                return a.clone();
            }
            let a: Arc<str> = Arc::from(n);
            names.insert(a.clone());
            a
        };
        let ports_seq: Vec<NamedPort> = pod_named_ports(pod)
            .map(|(n, p, x)| (intern(n), p, x))
            .collect();
        let mut ports = ports_seq.clone();
        ports.sort();
        ports.dedup();
        let mut diags = Vec::new();
        let eligible = pod_is_eligible(pod);
        let version = object_version(&pod.metadata);
        // With a resourceVersion, change detection needs nothing else:
        // keep the copies only for sources that set none.
        let keep = version.is_none();
        PodDigest {
            version,
            uid: pod.metadata.uid.clone().filter(|_| keep),
            host_network: pod.spec.as_ref().and_then(|s| s.host_network),
            phase: st.and_then(|s| s.phase.clone()).filter(|_| keep),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_nanosecond()),
            pod_ip: st.and_then(|s| s.pod_ip.clone()).filter(|_| keep),
            pod_ips: st.and_then(|s| s.pod_ips.clone()).filter(|_| keep),
            ports_seq: if keep { ports_seq } else { Vec::new() },
            ports,
            identity: if eligible {
                ids.assign(&key.0, labels, generation)
            } else {
                0
            },
            running: st.and_then(|s| s.phase.as_deref()) == Some("Running"),
            status_ips: if eligible {
                pod_status_ips(pod, key, &mut diags)
            } else {
                Vec::new()
            },
            diags,
        }
    }

    /// Whether `pod` still reads as this digest. `labels_of` gives the
    /// labels of an identity (identities map to one label set for life).
    fn unchanged<'a>(
        &self,
        pod: &Pod,
        labels: &Labels,
        labels_of: impl Fn(u32) -> Option<&'a IdentityLabels>,
    ) -> bool {
        let st = pod.status.as_ref();
        if let Some((u, sv)) = &self.version {
            // Fields were not kept for versioned pods: a new version is a change.
            return pod.metadata.resource_version.as_ref() == Some(sv) && *u == pod.metadata.uid;
        }
        // Labels matter only to pods that take part (identity != 0); a pod
        // that starts taking part changes phase or hostNetwork, caught below.
        (self.identity == 0 || labels_of(self.identity).is_some_and(|l| l.labels == *labels))
            && self.uid == pod.metadata.uid
            && self.host_network == pod.spec.as_ref().and_then(|s| s.host_network)
            && self.phase.as_deref() == st.and_then(|s| s.phase.as_deref())
            && self.created
                == pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_nanosecond())
            && self.pod_ip.as_deref() == st.and_then(|s| s.pod_ip.as_deref())
            && self.pod_ips.as_ref() == st.and_then(|s| s.pod_ips.as_ref())
            && pod_named_ports(pod).eq(self.ports_seq.iter().map(|(n, p, x)| (&**n, *p, *x)))
    }
}

fn selector_matches(
    sel: &PeerSelector,
    id: &IdentityLabels,
    ns_labels: &BTreeMap<String, Labels>,
) -> bool {
    let ns_ok = match &sel.namespaces {
        policy::NsScope::Same(ns) => *ns == id.namespace,
        policy::NsScope::Matching(nsel) => ns_labels
            .get(&id.namespace)
            .is_some_and(|l| nsel.matches(l)),
    };
    ns_ok && sel.pods.matches(&id.labels)
}

/// Pods that take part in policy: not host-network (their address is the
/// node's), not finished (their address may already belong to another pod).
fn pod_is_eligible(pod: &Pod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host_network && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn pod_status_ips(pod: &Pod, key: &Key, diags: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
    let Some(st) = &pod.status else {
        return Vec::new();
    };
    let mut raw: Vec<(String, &str)> = st
        .pod_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
        .collect();
    if raw.is_empty() {
        raw.extend(
            st.pod_ip
                .as_deref()
                .map(|ip| ("status.podIP".to_string(), ip)),
        );
    }
    let mut out = Vec::new();
    for (field, s) in raw {
        if s.is_empty() {
            continue;
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => out.push(ip),
            Err(_) => diags.push(Diagnostic {
                object: format!("Pod {}/{}", key.0, key.1),
                field,
                message: format!(
                    "{s:?} is not an IP address; the pod is not reachable by identity at it"
                ),
            }),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Named container ports of a pod (containers and restartable init
/// containers, i.e. sidecars), in declaration order.
fn pod_named_ports(pod: &Pod) -> impl Iterator<Item = (&str, u8, u16)> {
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| s.containers.iter());
    let sidecars = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    containers
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.as_deref()?;
            let proto = ports::protocol_number(p.protocol.as_deref())?;
            let num = u16::try_from(p.container_port).ok().filter(|n| *n != 0)?;
            Some((name, proto, num))
        })
}
