//! The policy engine: the cluster (a [`Store`]) plus this node's pod
//! interfaces ([`EndpointRecord`]s) in, the contents of every policy map
//! out ([`Desired`]). Pure: no I/O, no clock, deterministic for equal
//! input, so `sync` can diff two results and tests can check it
//! exhaustively against the NetworkPolicy spec.
//!
//! Pipeline: one module per stage, each taking and handing on named
//! structs, each keeping caches so one change recompiles only what it
//! touches. [`Engine::compile_slice`] is the pipeline.
//!
//! 1. **Identities** (`universe.rs`, numbers from `identity.rs`): pods
//!    sharing namespace and labels share one number (>= 256); this node's
//!    endpoint records are matched to their pods. Namespace labels are a
//!    property of the namespace, so a namespace label change keeps the
//!    numbers and only re-evaluates selectors. Hands on the universe
//!    selectors read, what changed in it, the local endpoints and the
//!    address claims.
//! 2. **ipcache** (`ipcache.rs`): every address to its identity.
//! 3. **Rules** (`rules.rs`): each NetworkPolicy is validated once
//!    (`policy.rs`) into rules of peers and ports, memoized by its version
//!    or spec. Invalid parts are dropped with a [`Diagnostic`]; what is left
//!    only narrows access. A peer's selectors (namespace scope + pod
//!    selector) resolve to a sorted set of identities, cached per selector
//!    and patched incrementally when identities appear, vanish or their
//!    namespace's labels change.
//! 4. **Endpoints** (`endpoints.rs`): per local endpoint, the policies
//!    selecting it give its isolation and its (peer identity, protocol,
//!    port block) entries, ipBlocks split by [`cidr::partition`] into
//!    classes. The result is memoized by a fingerprint of everything it
//!    read, and patched by identity when what moved is a set of peer
//!    identities (pods, namespace labels, a policy's pod peers); a
//!    [`Slice`] bounds how many are compiled per call. The entries stay
//!    per endpoint ([`ByEndpoint`]) on their way to `sync`, which skips
//!    the endpoints a compile did not touch.
//!
//! Between compiles, [`Engine::explain`] (`explain.rs`) reads what the
//! stages kept to say why a flow is allowed or blocked: by rule (every
//! allowing policy, rule and peer) and, for this node's endpoints, by map
//! entry.
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
//! Tiers: every rule carries a [`Tier`] and an [`Action`].
//! ClusterNetworkPolicy (`cluster_policy.rs`) compiles to the same
//! `CompiledRule`s as NetworkPolicy, with its tier (Admin before
//! NetworkPolicy, Baseline after), action (Accept/Deny/Pass) and rank
//! (priority, rule index); peer sets are shared. An entry's value holds,
//! per tier, the best rule covering its key, including the rules of wider
//! keys of the same endpoint, peer and direction (the trie returns only the
//! longest match), so the dataplane still decides in three lookups.
//! Of equal ranks (equal priority and rule index in two policies, which the
//! API leaves to the implementation) Deny wins, since the action is part of
//! the rank. Which of the equal rules a verdict names follows the program's
//! lookups: the first that finds one (the peer's identity, then the peer
//! wildcard, then the ipBlock class), and within one entry the policy first
//! by name.

pub mod by_endpoint;
pub mod cidr;
pub mod cluster_policy;
mod endpoints;
pub mod explain;
pub mod identity;
mod ipcache;
pub mod policy;
pub mod ports;
#[cfg(any(test, feature = "reference"))]
#[doc(hidden)]
pub mod reference;
mod rules;
pub mod selector;
#[cfg(test)]
mod tests;
mod universe;

pub use ports::{port_blocks, PortBlock, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
pub use selector::{Labels, Selector};

use crate::store::Store;
pub use by_endpoint::ByEndpoint;
use endpoints::{EndpointInput, EndpointStage};
use ipcache::IpcacheStage;
use ipnet::IpNet;
use rules::{PeerSets, PolicyStage};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use universe::IdentityStage;
use weir_common::registry::EndpointRecord;

/// Reserved identities, from the map ABI: the policy entry wildcards
/// [`ID_ANY_POD`] (every pod) and [`ID_ANY`] (every other peer), never
/// assigned, which [`peer_wildcard`] picks for a peer; [`ID_HOST`] (this
/// node); [`ID_WORLD`] (anything without a more specific ipcache entry);
/// and where label and ipBlock-class identities start.
pub use weir_bpf::abi::{peer_wildcard, ID_ANY, ID_ANY_POD, ID_FIRST_CIDR, ID_FIRST_LABEL, ID_HOST, ID_WORLD};
/// A policy map entry's match and the direction it judges: the dataplane
/// crate owns their encoding.
pub use weir_bpf::{Direction, PolicyMatch};
/// The class of an except hole no other ipBlock covers: it is in the cidr
/// map so the LPM lookup lands on it, and it never has policy entries.
pub const CIDR_NO_CLASS: u32 = ID_FIRST_CIDR;

/// Label Kubernetes puts on every namespace; set here when missing, as the
/// API server would, so manifest sources select namespaces the same way.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

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
    /// Some NetworkPolicy selects it for ingress: that tier decides.
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Some ClusterNetworkPolicy selects it with ingress rules: the
    /// dataplane reads the Admin and Baseline tiers.
    pub ingress_tiered: bool,
    pub egress_tiered: bool,
    /// Only NetworkPolicies in audit mode ([`policy::MODE_ANNOTATION`])
    /// isolate it for ingress: nothing is enforced, and the dataplane
    /// reports the flows they would drop. Never set with `ingress_isolated`.
    pub ingress_audited: bool,
    pub egress_audited: bool,
    /// Its namespace asks for allowed new flows in the flow log
    /// ([`FLOW_LOG_ANNOTATION`]).
    pub log_allow: bool,
}

/// A Namespace annotation: `allow` logs its pods' allowed new flows in the
/// flow log too (drops always are), as Antrea's `enable-logging`.
pub const FLOW_LOG_ANNOTATION: &str = "weir.io/flow-log";

/// Whether namespace `ns` asks for its allowed flows in the flow log.
pub fn namespace_logs_allows(store: &Store, ns: &str) -> bool {
    store
        .namespaces
        .get(ns)
        .and_then(|n| n.metadata.annotations.as_ref())
        .and_then(|a| a.get(FLOW_LOG_ANNOTATION))
        .is_some_and(|v| v == "allow")
}

/// The best rule of an Admin or Baseline tier for a policy entry: its
/// rank ([`weir_bpf::abi::tier_rank`], lower first; the action is in the
/// low bits) and rule id.
pub use weir_bpf::abi::TierVerdict;

/// What every rule covering a policy entry's key says, per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// The NetworkPolicy rule that allows the key ([`RuleInfo::id`]), 0
    /// when none does. When several do, the first in (policy
    /// namespace/name, rule index, peer index) order.
    pub rule: u32,
    pub admin: TierVerdict,
    pub baseline: TierVerdict,
}

impl PolicyValue {
    /// A NetworkPolicy allow alone.
    pub fn allow(rule: u32) -> Self {
        PolicyValue { rule, admin: TierVerdict::NONE, baseline: TierVerdict::NONE }
    }

    /// The map's encoding.
    pub fn to_abi(&self) -> weir_bpf::abi::PolicyValue {
        weir_bpf::abi::PolicyValue {
            rule: self.rule,
            verdict: if self.rule != 0 { weir_bpf::abi::VERDICT_ALLOW } else { 0 },
            pad: 0,
            admin: self.admin,
            baseline: self.baseline,
        }
    }

    pub fn from_abi(v: &weir_bpf::abi::PolicyValue) -> Self {
        PolicyValue {
            rule: if v.verdict == weir_bpf::abi::VERDICT_ALLOW { v.rule } else { 0 },
            admin: v.admin,
            baseline: v.baseline,
        }
    }
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
    /// A ClusterNetworkPolicy rule's `name` (may be empty).
    pub rule_name: String,
    /// A ClusterNetworkPolicy's priority (0 for a NetworkPolicy rule).
    pub priority: u32,
}

/// An endpoint record (CNI ADD's, under the run dir) that no pod takes.
/// Normal for a moment while a new Pod is on its way from the API server;
/// lasting, it is a container without a Kubernetes pod, or a record its
/// pod outlived.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnmatchedRecord {
    /// `<container id>/<ifname>`
    pub record: String,
    /// `<namespace>/<name>` the record names.
    pub pod: String,
    pub reason: Unmatched,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unmatched {
    /// CNI_ARGS gave no K8S_POD_NAMESPACE/K8S_POD_NAME.
    NoPodIdentity,
    /// No such Pod in the store (not yet, or no more).
    NoSuchPod,
    /// The Pod of that name has another uid: a later incarnation.
    OtherIncarnation,
    /// The Pod uses the host network or has finished.
    NotTakingPart,
}

impl Unmatched {
    pub fn describe(self) -> &'static str {
        match self {
            Unmatched::NoPodIdentity => "the record names no pod (CNI_ARGS had no K8S_POD_NAMESPACE/K8S_POD_NAME)",
            Unmatched::NoSuchPod => "no such Pod",
            Unmatched::OtherIncarnation => "the Pod of that name has another uid (a later incarnation)",
            Unmatched::NotTakingPart => "the Pod uses the host network or has finished",
        }
    }
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

/// What an identity stands for. The labels are shared with every copy, so
/// a table of a large cluster's identities is cheap to copy and drop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityLabels {
    pub namespace: String,
    pub labels: Arc<Labels>,
}

/// Label identities by number: what a compile uses ([`Desired::identities`])
/// and what a restart seeds the engine with ([`Engine::seed_identities`]).
pub type IdentityTable = BTreeMap<u32, IdentityLabels>;

/// Everything the maps should hold. Sorted containers, so equal input
/// gives equal output and a diff is a merge walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Shared with the compile before when nothing it reads changed, so a
    /// diff or a sync can tell without a walk.
    pub ipcache: Arc<BTreeMap<IpNet, IpcacheEntry>>,
    pub endpoints: BTreeMap<u32, EndpointState>,
    /// Per endpoint: an unchanged endpoint's entries are shared between
    /// compiles, so syncing skips them without a walk.
    pub policy: ByEndpoint<PolicyMatch, PolicyValue>,
    /// Value: the class identity (>= [`ID_FIRST_CIDR`]), [`CIDR_NO_CLASS`] for holes.
    pub cidr: BTreeMap<CidrKey, u32>,
    /// Sorted by id; shared with the compile before when no policy moved.
    pub rules: Arc<Vec<RuleInfo>>,
    /// Label identities in use; persist them and pass them to
    /// [`Engine::seed_identities`] after a restart to keep the numbers.
    /// Shared with the compile before while no identity came or went.
    pub identities: Arc<IdentityTable>,
    /// Sorted.
    pub diagnostics: Vec<Diagnostic>,
    /// This node's endpoint records no pod takes, sorted: their endpoints
    /// stay not READY (fail-closed) until one does.
    pub unmatched: Vec<UnmatchedRecord>,
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
        self.rules.binary_search_by_key(&id, |r| r.id).ok().map(|i| &self.rules[i])
    }
}

/// The pods addresses name, as the compiles since the last
/// [`Engine::take_pod_names`] moved them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNameChanges {
    /// `names` is every named address: start afresh from it.
    pub all: bool,
    /// An address and the pod it names now (its best claim, as in the
    /// ipcache), None when it names none any more.
    pub names: Vec<(std::net::IpAddr, Option<crate::store::Key>)>,
}

/// How much the last compile had to redo; for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Pods read afresh: written since the previous compile (every pod
    /// when the store cannot tell which).
    pub pods_read: usize,
    pub policies_compiled: usize,
    pub peer_sets_evaluated: usize,
    pub peer_sets_patched: usize,
    pub endpoints_compiled: usize,
    pub endpoints_reused: usize,
    /// Endpoints whose change was one of peer identities: only those
    /// identities' entries were compiled.
    pub endpoints_patched: usize,
}

/// A container port name with its protocol and number.
type NamedPort = (Arc<str>, u8, u16);

/// The engine: each stage of a compile with what it keeps between
/// compiles (caches, and the allocators that keep numbers stable).
pub struct Engine {
    identities: IdentityStage,
    ipcache: IpcacheStage,
    policies: PolicyStage,
    peer_sets: PeerSets,
    endpoints: EndpointStage,
    stats: CompileStats,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Engine {
            identities: IdentityStage::default(),
            ipcache: IpcacheStage::default(),
            policies: PolicyStage::default(),
            peer_sets: PeerSets::default(),
            endpoints: EndpointStage::default(),
            stats: CompileStats::default(),
        }
    }

    /// Take the identity numbers of a previous run (its
    /// [`Desired::identities`], as persisted), so a restart programs the
    /// same numbers and the maps do not churn. Call before the first
    /// compile; returns how many were taken (numbers already in use are
    /// skipped).
    pub fn seed_identities(&mut self, previous: &IdentityTable) -> usize {
        previous.iter().filter(|(id, l)| self.identities.ids.seed(&l.namespace, &l.labels, **id)).count()
    }

    /// The identity (ns, labels) has or would be given now, if assigned.
    pub fn identity_of(&self, namespace: &str, labels: &Labels) -> Option<u32> {
        self.identities.ids.get(namespace, labels)
    }

    /// An engine that recompiles every endpoint whose inputs changed,
    /// never patching: what patched compiles are checked against.
    #[cfg(test)]
    pub(crate) fn without_patching() -> Self {
        let mut e = Engine::new();
        e.endpoints.patching = false;
        e.policies.patching = false;
        e
    }

    pub fn last_stats(&self) -> CompileStats {
        self.stats
    }

    /// Which pod each address names, for the addresses whose pod may have
    /// changed since the last call (every address on the first): what
    /// the flow log names addresses by, patched rather than rebuilt from
    /// every pod after each compile.
    pub fn take_pod_names(&mut self) -> PodNameChanges {
        self.identities.take_pod_names()
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
    pub fn compile_slice(&mut self, store: &Store, locals: &[EndpointRecord], slice: &Slice) -> Desired {
        let stats = &mut self.stats;
        *stats = CompileStats::default();

        // 1. Identities: who is who, which pods are this node's endpoints,
        //    who claims which address.
        let found = self.identities.run(store, locals, stats);

        // 2. The ipcache: address -> identity.
        let ipcache = self.ipcache.run(found.addresses, &store.services, locals);

        // 3. Rules: the policies compiled, the peer sets brought up to
        //    date with the identities that changed.
        let policies = self.policies.run(&store.policies, &store.cluster_policies, stats);
        self.peer_sets.patch(&found.universe, &found.changed, stats);

        // 4. Endpoints: each local endpoint's isolation and entries, within
        //    the slice's budget.
        let input = EndpointInput {
            endpoints: &found.endpoints,
            policies: &policies,
            universe: &found.universe,
            changed: &found.changed,
            slice,
        };
        let mut endpoints = self.endpoints.run(input, &mut self.peer_sets, stats);
        // Not policy: read fresh each compile, never memoized with it.
        for ep in &found.endpoints {
            if let Some(st) = endpoints.states.get_mut(&ep.ifindex) {
                st.log_allow = namespace_logs_allows(store, &ep.pod_key.0);
            }
        }

        let mut diagnostics = found.diagnostics;
        diagnostics.extend(ipcache.diagnostics);
        diagnostics.extend(policies.diagnostics);
        diagnostics.sort();
        diagnostics.dedup();
        let desired = Desired {
            ipcache: ipcache.entries,
            endpoints: endpoints.states,
            policy: endpoints.policy,
            cidr: endpoints.cidr,
            rules: policies.rules,
            identities: self.identities.table(&found.universe),
            diagnostics,
            unmatched: found.unmatched,
            pending: endpoints.pending,
        };
        self.identities.keep(found.universe);
        desired
    }
}

/// Whether a pod takes part in policy: not host-network (its address is
/// the node's), not finished (its address may already be another pod's).
pub fn pod_takes_part(pod: &crate::store::StoredPod) -> bool {
    universe::pod_is_eligible(pod)
}

/// A pod's named container ports (name, protocol, number): containers and
/// sidecars, as named ports resolve in policies.
pub fn pod_container_ports(pod: &crate::store::StoredPod) -> impl Iterator<Item = (&str, u8, u16)> {
    universe::pod_named_ports(pod)
}

/// (uid, resourceVersion) of an object, when its source sets them.
fn object_version(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<(Option<String>, String)> {
    m.resource_version.as_ref().filter(|v| !v.is_empty()).map(|v| (m.uid.clone(), v.clone()))
}

/// Whether an object is still the version `kept` ([`object_version`]) was
/// read from, without copying its own; None when either has no version.
fn same_object_version(
    kept: &Option<(Option<String>, String)>,
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<bool> {
    let (uid, version) = kept.as_ref()?;
    let now = m.resource_version.as_deref().filter(|v| !v.is_empty())?;
    Some(now == version && m.uid == *uid)
}
