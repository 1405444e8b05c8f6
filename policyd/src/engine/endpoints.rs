//! Stage 4 of a compile, the endpoints: per local endpoint, the policies
//! selecting it give its isolation and its (peer identity, protocol, port
//! block) entries; ipBlocks are split by [`cidr::partition`] into classes.
//! Each endpoint's result is memoized by a [`Fingerprint`] of everything it
//! read, and the endpoints whose inputs changed are compiled within the
//! [`Slice`]'s budget, its `first` endpoints first.
//!
//! Entries of one peer identity depend only on the rules whose peer sets
//! hold it and on its named ports. So an endpoint whose change is one of
//! identities is patched: the entries of those identities alone are
//! compiled again and spliced into the rest. That is when identities
//! appeared, vanished, or their namespace's labels or named ports changed,
//! and when a selecting policy changed whose peers are all pod selectors
//! (its old and new peer sets' identities). Anything else (another set of
//! selecting policies, a changed wildcard or ipBlock peer, isolation or
//! audit moving) compiles the endpoint whole.
//!
//! Takes an [`EndpointInput`] (the local endpoints from the identity stage,
//! the [`Policies`] and [`PeerSets`] from the rule stage, the
//! [`Universe`]); hands on [`Endpoints`]: the endpoint, policy and cidr
//! entries, and the endpoints left pending.

use super::by_endpoint::{ByEndpoint, Shard};
use super::policy::{CompiledPolicy, PeerSelector, PeerSpec, Peers, PortSpec};
use super::rules::{PeerSets, Policies};
use super::universe::Universe;
use super::{
    cidr, CidrKey, CompileStats, Direction, EndpointState, Labels, NamedPort, PolicyMatch, PolicyValue, PortBlock,
    Slice, Tier, TierVerdict, CIDR_NO_CLASS, ID_ANY,
};
use crate::store::Key;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Allowed (protocol, port block) pairs; None = any.
type PortEntry = (Option<u8>, Option<PortBlock>);
/// What an ipBlock class allows: (protocol, port block, rule), sorted.
type ClassKey = Vec<(Option<u8>, Option<PortBlock>, u32)>;

/// A local pod interface matched to its Pod (made by the identity stage).
pub(super) struct LocalEp<'s> {
    pub(super) ifindex: u32,
    pub(super) pod_key: Key,
    pub(super) pod: &'s Pod,
    pub(super) identity: u32,
    pub(super) own_ports: Vec<NamedPort>,
}

/// What the endpoint stage reads.
pub(super) struct EndpointInput<'a, 's> {
    /// Sorted by ifindex.
    pub(super) endpoints: &'a [LocalEp<'s>],
    pub(super) policies: &'a Policies<'s>,
    pub(super) universe: &'a Universe,
    /// Identities whose peer set membership or named ports may have
    /// changed since the previous compile (the identity stage's `changed`).
    pub(super) changed: &'a BTreeSet<u32>,
    pub(super) slice: &'a Slice,
}

/// The endpoint stage's result.
pub(super) struct Endpoints {
    pub(super) states: BTreeMap<u32, EndpointState>,
    pub(super) policy: ByEndpoint<PolicyMatch, PolicyValue>,
    pub(super) cidr: BTreeMap<CidrKey, u32>,
    /// Endpoints whose inputs changed but the slice's budget left out.
    pub(super) pending: BTreeSet<u32>,
}

/// What the endpoint stage keeps between compiles.
pub(super) struct EndpointStage {
    /// ipBlock class numbers, by what the class allows.
    classes: HashMap<ClassKey, u32>,
    next_class: u32,
    memo: HashMap<u32, EndpointMemo>,
    /// Compiles so far: a memo brought up to date by the previous one can
    /// be patched with this one's changed identities.
    epoch: u64,
    /// Patch endpoints whose change is one of peer identities (off only in
    /// tests, which compare the two ways).
    pub(super) patching: bool,
}

impl Default for EndpointStage {
    fn default() -> Self {
        EndpointStage {
            classes: HashMap::new(),
            next_class: CIDR_NO_CLASS + 1,
            memo: HashMap::new(),
            epoch: 0,
            patching: true,
        }
    }
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
    policy: Shard<PolicyMatch, PolicyValue>,
    cidr: Vec<(CidrKey, u32)>,
}

struct EndpointMemo {
    fp: Fingerprint,
    out: Arc<EndpointOut>,
    /// The compile that last brought it up to date.
    epoch: u64,
    /// The policies selecting it then, in order.
    selecting: Vec<Arc<CompiledPolicy>>,
}

/// How an endpoint whose inputs changed is brought up to date.
enum Redo {
    Compile,
    /// Only the entries of these identities, in the entries it had.
    Patch(Arc<EndpointOut>, BTreeSet<u32>),
}

/// The peer identities whose entries can differ between an endpoint
/// compiled with the policies `old` and one compiled with `new`, the
/// universe having moved only by `changed`; None when the difference is
/// not one of identities (another list of policies, or a changed policy
/// with wildcard or ipBlock peers, whose entries are not per identity).
/// A changed policy's rules name only the identities of its peer sets, old
/// and new; an old set is read in the current universe, where it differs
/// from what it was only by identities in `changed`.
fn moved_identities(
    old: &[Arc<CompiledPolicy>],
    new: &[&Arc<CompiledPolicy>],
    changed: &BTreeSet<u32>,
    universe: &Universe,
    peer_sets: &mut PeerSets,
    stats: &mut CompileStats,
) -> Option<BTreeSet<u32>> {
    if old.len() != new.len() {
        return None;
    }
    let mut moved = changed.clone();
    for (o, n) in old.iter().zip(new) {
        if Arc::ptr_eq(o, n) || o.version == n.version {
            continue;
        }
        if (&o.namespace, &o.name) != (&n.namespace, &n.name) {
            return None;
        }
        for (p, old) in [(&**o, true), (&***n, false)] {
            for r in &p.rules {
                let Peers::List(list) = &r.peers else { return None };
                for pe in list {
                    let PeerSpec::Pods(sel) = &pe.spec else { return None };
                    // An old selector no longer cached (the sets were
                    // cleared) is not evaluated again just for this.
                    match old {
                        true => moved.extend(peer_sets.cached(sel)?.iter()),
                        false => moved.extend(peer_sets.get(sel, universe, stats).0.iter()),
                    }
                }
            }
        }
    }
    Some(moved)
}

/// What the maps hold for one local endpoint, as its last compile made it.
pub(super) struct CompiledEndpoint<'a> {
    pub(super) state: EndpointState,
    /// Sorted by key.
    pub(super) policy: &'a [(PolicyMatch, PolicyValue)],
    /// Sorted by key.
    pub(super) cidr: &'a [(CidrKey, u32)],
}

impl EndpointStage {
    /// The entries the last compile of endpoint `ifindex` produced.
    pub(super) fn compiled(&self, ifindex: u32) -> Option<CompiledEndpoint<'_>> {
        self.memo.get(&ifindex).map(|m| CompiledEndpoint {
            state: m.out.state,
            policy: &m.out.policy,
            cidr: &m.out.cidr,
        })
    }

    pub(super) fn run(
        &mut self,
        input: EndpointInput<'_, '_>,
        peer_sets: &mut PeerSets,
        stats: &mut CompileStats,
    ) -> Endpoints {
        let EndpointInput { endpoints: locals_ep, policies, universe, changed, slice } = input;
        let previous_epoch = self.epoch;
        self.epoch += 1;
        let epoch = self.epoch;
        // Per endpoint (in locals_ep order): its output, None while pending.
        let mut outs: Vec<Option<Arc<EndpointOut>>> = Vec::with_capacity(locals_ep.len());
        let mut live_eps: HashSet<u32> = HashSet::new();
        // Endpoints whose inputs changed: (position, fingerprint, policies).
        let mut stale = Vec::new();
        for (i, ep) in locals_ep.iter().enumerate() {
            live_eps.insert(ep.ifindex);
            let pols = policies.in_namespace(&ep.pod_key.0);
            let empty = Labels::new();
            let labels = ep.pod.metadata.labels.as_ref().unwrap_or(&empty);
            let ns = ep.pod_key.0.as_str();
            let ns_labels = universe.ns_labels.get(ns);
            // NetworkPolicies of its namespace, then ClusterNetworkPolicies
            // by name: the order names the winner of equal ranks.
            let selecting: Vec<&Arc<CompiledPolicy>> =
                pols.iter().chain(&policies.cluster).filter(|p| p.subject.selects(ns, ns_labels, labels)).collect();
            let fp = fingerprint(ep, &selecting, universe, peer_sets, stats);
            if let Some(m) = self.memo.get_mut(&ep.ifindex).filter(|m| m.fp == fp) {
                stats.endpoints_reused += 1;
                outs.push(Some(m.out.clone()));
                m.epoch = epoch;
                continue;
            }
            // Up to date as of the previous compile, the same pod, and what
            // moved is a set of peer identities: patch theirs.
            let redo = match self.memo.get(&ep.ifindex) {
                Some(m)
                    if self.patching
                        && m.epoch == previous_epoch
                        && (m.fp.identity, &m.fp.own_ports) == (fp.identity, &fp.own_ports) =>
                {
                    match moved_identities(&m.selecting, &selecting, changed, universe, peer_sets, stats) {
                        // Most identities moved: a whole compile is cheaper.
                        Some(moved) if moved.len() <= universe.identities.len() / 2 => {
                            Redo::Patch(m.out.clone(), moved)
                        }
                        _ => Redo::Compile,
                    }
                }
                _ => Redo::Compile,
            };
            outs.push(None);
            stale.push((i, fp, selecting, redo));
        }
        stale.sort_by_key(|(i, _, _, _)| (!slice.first.contains(&locals_ep[*i].ifindex), locals_ep[*i].ifindex));
        let mut spent = 0usize;
        let mut pending = BTreeSet::new();
        for (n, (i, fp, selecting, redo)) in stale.into_iter().enumerate() {
            let ep = &locals_ep[i];
            if n > 0 && slice.budget.is_some_and(|b| spent >= b) {
                pending.insert(ep.ifindex);
                continue;
            }
            let patched = match redo {
                Redo::Patch(old, moved) => {
                    let new = self.compile_endpoint(ep, &selecting, universe, Some(&moved), peer_sets, stats);
                    // Isolation or audit moved: every identity's entries may.
                    (new.state == old.state).then(|| {
                        spent += new.policy.len();
                        stats.endpoints_patched += 1;
                        EndpointOut {
                            state: old.state,
                            policy: Arc::new(splice(&old.policy, &new.policy, &moved)),
                            cidr: old.cidr.clone(),
                        }
                    })
                }
                Redo::Compile => None,
            };
            let out = patched.unwrap_or_else(|| {
                let out = self.compile_endpoint(ep, &selecting, universe, None, peer_sets, stats);
                spent += out.policy.len() + out.cidr.len();
                stats.endpoints_compiled += 1;
                out
            });
            let out = Arc::new(out);
            let selecting = selecting.into_iter().cloned().collect();
            self.memo.insert(ep.ifindex, EndpointMemo { fp, out: out.clone(), epoch, selecting });
            outs[i] = Some(out);
        }
        self.memo.retain(|k, _| live_eps.contains(k));
        let outs: Vec<(&LocalEp, Arc<EndpointOut>)> =
            locals_ep.iter().zip(outs).filter_map(|(ep, out)| Some((ep, out?))).collect();

        let mut states = BTreeMap::new();
        let mut used_classes: HashSet<u32> = HashSet::new();
        for (ep, out) in &outs {
            states.insert(ep.ifindex, out.state);
            used_classes.extend(out.cidr.iter().map(|(_, c)| *c));
        }
        let mut policy = ByEndpoint::default();
        for (ep, out) in &outs {
            policy.set_shard(ep.ifindex, out.policy.clone());
        }
        let cidr: BTreeMap<CidrKey, u32> = outs.iter().flat_map(|(_, o)| o.cidr.iter().copied()).collect();
        // Classes of pending endpoints' entries in the maps are never handed
        // out again (numbers only grow), so forgetting them here is safe.
        if self.classes.len() > 2 * used_classes.len() + 1024 {
            self.classes.retain(|_, id| used_classes.contains(id));
        }
        Endpoints { states, policy, cidr, pending }
    }

    /// Compile one endpoint; with `only`, just the entries of those peer
    /// identities (no wildcard or ipBlock entries; the state and cidr
    /// entries are left empty): a patch for [`splice`].
    fn compile_endpoint(
        &mut self,
        ep: &LocalEp,
        selecting: &[&Arc<CompiledPolicy>],
        universe: &Universe,
        only: Option<&BTreeSet<u32>>,
        peer_sets: &mut PeerSets,
        stats: &mut CompileStats,
    ) -> EndpointOut {
        let e = ep.ifindex;
        let tiered = |dir: Direction| {
            selecting.iter().flat_map(|p| &p.rules).any(|r| r.tier != Tier::NetworkPolicy && r.direction == dir)
        };
        let isolates = |p: &CompiledPolicy, dir: Direction| match dir {
            Direction::Ingress => p.isolates_ingress,
            Direction::Egress => p.isolates_egress,
        };
        let isolated = |dir: Direction| selecting.iter().any(|p| !p.audit && isolates(p, dir));
        // Audit policies count only where no enforced policy isolates: there
        // they would decide, elsewhere the enforced ones do.
        let audited = |dir: Direction| !isolated(dir) && selecting.iter().any(|p| p.audit && isolates(p, dir));
        let state = EndpointState {
            identity: ep.identity,
            ingress_isolated: isolated(Direction::Ingress),
            egress_isolated: isolated(Direction::Egress),
            ingress_tiered: tiered(Direction::Ingress),
            egress_tiered: tiered(Direction::Egress),
            ingress_audited: audited(Direction::Ingress),
            egress_audited: audited(Direction::Egress),
            log_allow: false, // set by the compile, from the namespace
        };
        // An audit policy's rules go into the maps only in a direction it
        // would decide (the endpoint is audited there): next to an enforced
        // policy's, its allows would be real ones.
        let counts = |p: &CompiledPolicy, dir: Direction| match dir {
            Direction::Ingress => !p.audit || state.ingress_audited,
            Direction::Egress => !p.audit || state.egress_audited,
        };
        // Peer sets first (they may need evaluating), entries after.
        let mut resolved_sets: HashMap<*const PeerSelector, Arc<Vec<u32>>> = HashMap::new();
        for p in selecting {
            for r in &p.rules {
                if let Peers::List(list) = &r.peers {
                    for pe in list {
                        if let PeerSpec::Pods(sel) = &pe.spec {
                            let set = peer_sets.get(sel, universe, stats).0;
                            resolved_sets.insert(sel as *const _, set);
                        }
                    }
                }
            }
        }
        // What each rule says, ranked within its tier. When several
        // NetworkPolicy rules allow one key, the first by (policy namespace
        // and name, rule index, peer index) names it: decided by content,
        // not by rule id numbering, so restarts and histories agree. Cluster
        // rules rank by their tier rank first, then the same way.
        let mut says_of: HashMap<u32, Says> = HashMap::new();
        for (pi, p) in selecting.iter().enumerate() {
            for r in &p.rules {
                let says = |peer: u32| {
                    let order = (r.rank, pi as u32, r.index, peer);
                    match r.tier {
                        Tier::NetworkPolicy => Says::NetworkPolicy(order),
                        Tier::Admin => Says::Admin(order),
                        Tier::Baseline => Says::Baseline(order),
                    }
                };
                match &r.peers {
                    Peers::All { rule_id } => {
                        says_of.insert(*rule_id, says(0));
                    }
                    Peers::List(list) => {
                        for pe in list {
                            says_of.insert(pe.rule_id, says(pe.index + 1));
                        }
                    }
                }
            }
        }
        let says =
            |rule: u32| says_of.get(&rule).copied().unwrap_or(Says::NetworkPolicy((0, u32::MAX, u32::MAX, u32::MAX)));
        let mut entries: Vec<(PolicyMatch, Merged)> = Vec::new();
        let mut last: Option<(u32, Merged)> = None;
        let mut put = |identity: u32, dir: Direction, pp: (Option<u8>, Option<PortBlock>), rule: u32| {
            let k = PolicyMatch { endpoint: e, identity, direction: dir, protocol: pp.0, port: pp.1 };
            // Consecutive entries almost always come from the same rule.
            let m = match last {
                Some((r, m)) if r == rule => m,
                _ => {
                    let m = Merged::of(says(rule), rule);
                    last = Some((rule, m));
                    m
                }
            };
            entries.push((k, m));
        };
        // Rules naming one peer set with the same ports say the same of
        // each of its identities: what they say is merged once per set,
        // and the set's entries made once (cluster rules naming every pod
        // would otherwise repeat every identity once per rule).
        type SetPorts = (*const Vec<u32>, Direction, PortEntry);
        let mut per_set: HashMap<SetPorts, (Arc<Vec<u32>>, Merged)> = HashMap::new();
        // ipBlocks per direction: (block, port entries, rule).
        let mut blocks: [Vec<(cidr::Block, Vec<PortEntry>, u32)>; 2] = [Vec::new(), Vec::new()];
        let uni_named = &universe.named_ports;
        // Ports of a rule towards one peer identity (None: a non-pod peer).
        let resolve = |ports: &[PortSpec], dir: Direction, peer: Option<u32>| -> Vec<(Option<u8>, Option<PortBlock>)> {
            let mut out = Vec::new();
            for p in ports {
                match p {
                    PortSpec::Any => out.push((None, None)),
                    PortSpec::Proto(pr) => out.push((Some(*pr), None)),
                    PortSpec::Blocks(pr, bl) => out.extend(bl.iter().map(|b| (Some(*pr), Some(*b)))),
                    PortSpec::Named(..) | PortSpec::NamedAnyProtocol(_) => {
                        // Named ports belong to the destination pod: on
                        // ingress that is this endpoint; on egress the peer.
                        let table: &[NamedPort] = match (dir, peer) {
                            (Direction::Ingress, _) => &ep.own_ports,
                            (Direction::Egress, Some(id)) => uni_named.get(&id).map(|v| v.as_slice()).unwrap_or(&[]),
                            (Direction::Egress, None) => &[],
                        };
                        let (want_proto, name) = match p {
                            PortSpec::Named(pr, name) => (Some(*pr), name),
                            PortSpec::NamedAnyProtocol(name) => (None, name),
                            _ => unreachable!("matched above"),
                        };
                        out.extend(
                            table
                                .iter()
                                .filter(|(n, p, _)| **n == **name && want_proto.is_none_or(|w| w == *p))
                                .map(|(_, p, num)| (Some(*p), Some(PortBlock::single(*num)))),
                        );
                    }
                }
            }
            out
        };
        for p in selecting {
            for r in p.rules.iter().filter(|r| counts(p, r.direction)) {
                let dir = r.direction;
                match &r.peers {
                    Peers::All { rule_id } => {
                        let has_named = dir == Direction::Egress && r.uses_named_ports();
                        if only.is_none() {
                            for pp in resolve(&r.ports, dir, None) {
                                put(ID_ANY, dir, pp, *rule_id);
                            }
                        }
                        if has_named {
                            // Every pod whose container has the name: per identity.
                            let named_only: Vec<PortSpec> = r.ports.iter().filter(|p| p.is_named()).cloned().collect();
                            let ids: Box<dyn Iterator<Item = &u32>> = match only {
                                None => Box::new(uni_named.keys()),
                                Some(only) => Box::new(only.iter().filter(|id| uni_named.contains_key(id))),
                            };
                            for id in ids {
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
                                    let uniform = !(dir == Direction::Egress && r.uses_named_ports());
                                    if uniform {
                                        for pp in resolve(&r.ports, dir, None) {
                                            per_set
                                                .entry((Arc::as_ptr(set), dir, pp))
                                                .or_insert_with(|| (set.clone(), Merged::default()))
                                                .1
                                                .add(says(pe.rule_id), pe.rule_id);
                                        }
                                        continue;
                                    }
                                    for id in in_patch(set, only) {
                                        for pp in resolve(&r.ports, dir, Some(*id)) {
                                            put(*id, dir, pp, pe.rule_id);
                                        }
                                    }
                                }
                                PeerSpec::Block(_) if only.is_some() => {}
                                PeerSpec::Block(b) => {
                                    blocks[dir as usize].push((b.clone(), resolve(&r.ports, dir, None), pe.rule_id));
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
                let mut class_key: ClassKey =
                    covering.iter().flat_map(|&i| bl[i].1.iter().map(move |pp| (pp.0, pp.1, bl[i].2))).collect();
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
                            self.next_class = if c == u32::MAX { CIDR_NO_CLASS + 1 } else { c + 1 };
                            self.classes.insert(class_key.clone(), c);
                            c
                        }
                    };
                    for (proto, port, rule) in &class_key {
                        put(class, dir, (*proto, *port), *rule);
                    }
                    class
                };
                cidr_out.push((CidrKey { endpoint: e, direction: dir, net }, class));
            }
        }
        cidr_out.sort();
        for ((_, dir, pp), (set, m)) in per_set {
            entries.extend(
                in_patch(&set, only).map(|id| {
                    (PolicyMatch { endpoint: e, identity: *id, direction: dir, protocol: pp.0, port: pp.1 }, m)
                }),
            );
        }
        EndpointOut { state, policy: Arc::new(merge_entries(entries)), cidr: cidr_out }
    }
}

/// The identities of a sorted peer set an endpoint compile makes entries
/// for: all of them, or, for a patch, those also in `only`.
fn in_patch<'a>(set: &'a [u32], only: Option<&'a BTreeSet<u32>>) -> Box<dyn Iterator<Item = &'a u32> + 'a> {
    match only {
        None => Box::new(set.iter()),
        Some(only) => Box::new(only.iter().filter(|id| set.binary_search(id).is_ok())),
    }
}

/// `old` with the entries of the `changed` identities replaced by `new`'s
/// (which holds only theirs); both sorted, so is the result.
fn splice(
    old: &[(PolicyMatch, PolicyValue)],
    new: &[(PolicyMatch, PolicyValue)],
    changed: &BTreeSet<u32>,
) -> Vec<(PolicyMatch, PolicyValue)> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut kept = old.iter().filter(|(k, _)| !changed.contains(&k.identity)).peekable();
    let mut new = new.iter().peekable();
    loop {
        let take_kept = match (kept.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((a, _)), Some((b, _))) => a < b,
        };
        out.push(*if take_kept { kept.next() } else { new.next() }.expect("peeked"));
    }
    out
}

/// What one rule says about a key, with its order within its tier (rank,
/// policy position, peer position; lower first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Says {
    NetworkPolicy((u32, u32, u32, u32)),
    Admin((u32, u32, u32, u32)),
    Baseline((u32, u32, u32, u32)),
}

/// What the rules covering one key say, the best of each tier.
#[derive(Debug, Clone, Copy, Default)]
struct Merged {
    np: Option<((u32, u32, u32, u32), u32)>,
    admin: Option<((u32, u32, u32, u32), u32)>,
    baseline: Option<((u32, u32, u32, u32), u32)>,
}

impl Merged {
    fn of(says: Says, rule: u32) -> Merged {
        let mut m = Merged::default();
        m.add(says, rule);
        m
    }

    fn add(&mut self, says: Says, rule: u32) {
        let (slot, order) = match says {
            Says::NetworkPolicy(o) => (&mut self.np, o),
            Says::Admin(o) => (&mut self.admin, o),
            Says::Baseline(o) => (&mut self.baseline, o),
        };
        if slot.is_none_or(|(best, _)| order < best) {
            *slot = Some((order, rule));
        }
    }

    fn absorb(&mut self, other: &Merged) {
        for (slot, theirs) in
            [(&mut self.np, other.np), (&mut self.admin, other.admin), (&mut self.baseline, other.baseline)]
        {
            if let Some((order, rule)) = theirs {
                if slot.is_none_or(|(best, _)| order < best) {
                    *slot = Some((order, rule));
                }
            }
        }
    }

    fn value(&self) -> PolicyValue {
        let tier = |slot: Option<((u32, u32, u32, u32), u32)>| {
            slot.map(|((rank, _, _, _), rule)| TierVerdict { rank, rule }).unwrap_or(TierVerdict::NONE)
        };
        PolicyValue {
            rule: self.np.map(|(_, r)| r).unwrap_or(0),
            admin: tier(self.admin),
            baseline: tier(self.baseline),
        }
    }
}

/// [`PolicyMatch`]'s order as one integer: endpoint, identity, direction,
/// protocol (none first), port block (none first).
fn order_key(k: &PolicyMatch) -> u128 {
    let protocol = k.protocol.map_or(0, |p| 1 + u128::from(p));
    let port = k.port.map_or(0, |b| 1 + ((u128::from(b.start) << 8) | u128::from(b.bits)));
    (u128::from(k.endpoint) << 96)
        | (u128::from(k.identity) << 64)
        | ((k.direction as u128) << 48)
        | (protocol << 32)
        | port
}

/// Whether `wide` matches every packet `narrow` matches (same endpoint,
/// peer and direction assumed).
fn covers(wide: &PolicyMatch, narrow: &PolicyMatch) -> bool {
    match (wide.protocol, wide.port) {
        (None, _) => true,
        (Some(p), None) => narrow.protocol == Some(p),
        (Some(p), Some(b)) => {
            narrow.protocol == Some(p) && narrow.port.is_some_and(|n| b.start <= n.start && n.end() <= b.end())
        }
    }
}

/// One value per key: the best rule of each tier among those naming the
/// key. Where a cluster tier is involved, each key also takes what its
/// wider keys (same endpoint, peer, direction) say, since the trie answers
/// with the longest match alone; NetworkPolicy alone needs no such merge
/// (any allow is the verdict), so its entries stay as they were.
fn merge_entries(mut entries: Vec<(PolicyMatch, Merged)>) -> Vec<(PolicyMatch, PolicyValue)> {
    // By key alone (each tier keeps its best rule whatever the order),
    // as one integer: tens of thousands of raw entries per endpoint under
    // cluster rules that name every pod. Stable: the entries come as one
    // sorted run per rule, which a stable sort merges.
    entries.sort_by_key(|e| order_key(&e.0));
    let mut keys: Vec<(PolicyMatch, Merged)> = Vec::new();
    for (k, m) in entries {
        match keys.last_mut() {
            Some((last, merged)) if *last == k => merged.absorb(&m),
            _ => keys.push((k, m)),
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    let mut start = 0;
    while start < keys.len() {
        let group = |k: &PolicyMatch| (k.endpoint, k.identity, k.direction);
        let g = group(&keys[start].0);
        let end = start + keys[start..].iter().take_while(|(k, _)| group(k) == g).count();
        let slice = &keys[start..end];
        let tiered = slice.iter().any(|(_, m)| m.admin.is_some() || m.baseline.is_some());
        // Only a key wider than one port covers another key: a group of
        // many single ports (a rule per port) stays linear.
        let wide: Vec<&(PolicyMatch, Merged)> = if tiered {
            slice.iter().filter(|(k, _)| k.port.is_none_or(|b| b.bits < 16)).collect()
        } else {
            Vec::new()
        };
        for (k, m) in slice {
            let mut m = *m;
            for (w, wm) in &wide {
                if w != k && covers(w, k) {
                    m.absorb(wm);
                }
            }
            out.push((*k, m.value()));
        }
        start = end;
    }
    out
}

/// Everything an endpoint's entries depend on, as versions: equal means
/// the memoized entries are still right.
fn fingerprint(
    ep: &LocalEp,
    selecting: &[&Arc<CompiledPolicy>],
    universe: &Universe,
    peer_sets: &mut PeerSets,
    stats: &mut CompileStats,
) -> Fingerprint {
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
                fp.named_ports = universe.named_ports_version;
            }
            if let Peers::List(list) = &r.peers {
                for pe in list {
                    if let PeerSpec::Pods(sel) = &pe.spec {
                        fp.peer_sets.push(peer_sets.get(sel, universe, stats).1);
                    }
                }
            }
        }
    }
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer sorts exactly as the key does, and is equal only for equal keys.
    #[test]
    fn order_key_is_the_keys_order() {
        let mut keys = Vec::new();
        for endpoint in [0, 7, u32::MAX] {
            for identity in [0, 256, u32::MAX] {
                for direction in [Direction::Ingress, Direction::Egress] {
                    for protocol in [None, Some(0), Some(6), Some(255)] {
                        for port in [
                            None,
                            Some(PortBlock { start: 0, bits: 0 }),
                            Some(PortBlock::single(80)),
                            Some(PortBlock { start: 65535, bits: 16 }),
                        ] {
                            keys.push(PolicyMatch { endpoint, identity, direction, protocol, port });
                        }
                    }
                }
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(a.cmp(b), order_key(a).cmp(&order_key(b)), "{a:?} vs {b:?}");
            }
        }
    }
}
