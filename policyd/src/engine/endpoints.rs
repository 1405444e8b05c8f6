//! Stage 4 of a compile, the endpoints: per local endpoint, the policies
//! selecting it give its isolation and its (peer identity, protocol, port
//! block) entries; ipBlocks are split by [`cidr::partition`] into classes.
//! Each endpoint's result is memoized by a [`Fingerprint`] of everything it
//! read, and the endpoints whose inputs changed are compiled within the
//! [`Slice`]'s budget, its `first` endpoints first.
//!
//! Entries of one peer identity depend only on the rules whose peer sets
//! hold it and on its named ports; entries of a peer wildcard
//! ([`ID_ANY_POD`], [`ID_ANY`]) only on the rules of every pod or every
//! peer. So an endpoint whose change is one of identities is patched: the
//! entries of those identities alone are compiled again and spliced into
//! the rest. That is when identities appeared, vanished, or their
//! namespace's labels or named ports changed, and when a selecting policy
//! changed whose peers are pod selectors or wildcards (its old and new peer
//! sets' identities, and the wildcards). Anything else (another set of
//! selecting policies, a changed ipBlock peer, isolation or audit moving)
//! compiles the endpoint whole.
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
    cidr, CidrKey, CompileStats, Direction, EndpointState, NamedPort, PolicyMatch, PolicyValue, PortBlock, Slice, Tier,
    TierVerdict, CIDR_NO_CLASS, ID_ANY, ID_ANY_POD,
};
use crate::store::Key;
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
    pub(super) pod: &'s crate::store::StoredPod,
    pub(super) identity: u32,
    pub(super) own_ports: Vec<NamedPort>,
}

/// What the endpoint stage reads.
pub(super) struct EndpointInput<'a, 's> {
    /// Sorted by ifindex.
    pub(super) endpoints: &'a [LocalEp<'s>],
    pub(super) policies: &'a Policies,
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
    Patch(Arc<EndpointOut>, Moved),
}

/// Peer identities whose entries are compiled again, sorted.
type Moved = Arc<Vec<u32>>;

/// What one edit of a policy can move, by (old, new) policy version; None
/// when it is not patchable. Shared by the endpoints the policy selects,
/// so worked out once per compile.
type Edits = HashMap<(u64, u64), Option<Moved>>;

/// The peer identities whose entries can differ between an endpoint
/// compiled with the policies `old` and one compiled with `new`, the
/// universe having moved only by `changed` (sorted); None when the
/// difference is not one of identities (another list of policies, or a
/// changed policy with ipBlock peers, whose entries are per address
/// class).
fn moved_identities(
    old: &[Arc<CompiledPolicy>],
    new: &[&Arc<CompiledPolicy>],
    changed: &Moved,
    edits: &mut Edits,
    universe: &Universe,
    peer_sets: &mut PeerSets,
    stats: &mut CompileStats,
) -> Option<Moved> {
    if old.len() != new.len() {
        return None;
    }
    let mut parts: Vec<Moved> = Vec::new();
    for (o, n) in old.iter().zip(new) {
        if Arc::ptr_eq(o, n) || o.version == n.version {
            continue;
        }
        if (&o.namespace, &o.name) != (&n.namespace, &n.name) {
            return None;
        }
        let part = match edits.get(&(o.version, n.version)) {
            Some(part) => part.clone(),
            None => {
                let part = edit_moves(o, n, universe, peer_sets, stats).map(Arc::new);
                edits.insert((o.version, n.version), part.clone());
                part
            }
        };
        parts.push(part?);
    }
    if parts.is_empty() {
        return Some(changed.clone());
    }
    if parts.len() == 1 && changed.is_empty() {
        return parts.pop();
    }
    let mut moved: Vec<u32> = changed.iter().chain(parts.iter().flat_map(|p| p.iter())).copied().collect();
    moved.sort_unstable();
    moved.dedup();
    Some(Arc::new(moved))
}

/// The peer identities an edit of a policy can move entries of: its rules
/// name only the identities of its peer sets, old and new, and the peer
/// wildcards ([`ID_ANY`], [`ID_ANY_POD`]) for rules of every peer or every
/// pod. An old set is read in the current universe, where it differs from
/// what it was only by identities the caller adds (`changed`). None when
/// entries of the edit are not per identity (ipBlocks, named ports of
/// every peer).
fn edit_moves(
    old: &CompiledPolicy,
    new: &CompiledPolicy,
    universe: &Universe,
    peer_sets: &mut PeerSets,
    stats: &mut CompileStats,
) -> Option<Vec<u32>> {
    let mut moved = Vec::new();
    for (p, is_old) in [(old, true), (new, false)] {
        for r in &p.rules {
            let list = match &r.peers {
                // Named ports of every pod: entries per identity.
                Peers::All { .. } if r.ports_per_peer() => return None,
                Peers::All { .. } => {
                    moved.extend([ID_ANY, ID_ANY_POD]);
                    continue;
                }
                Peers::List(list) => list,
            };
            for pe in list {
                let PeerSpec::Pods(sel) = &pe.spec else { return None };
                if r.peer_is_wildcard(sel) {
                    moved.push(ID_ANY_POD);
                    continue;
                }
                // An old selector no longer cached (the sets were
                // cleared) is not evaluated again just for this.
                match is_old {
                    true => moved.extend(peer_sets.cached(sel)?.iter()),
                    false => moved.extend(peer_sets.get(sel, universe, stats).0.iter()),
                }
            }
        }
    }
    moved.sort_unstable();
    moved.dedup();
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
        let changed: Moved = Arc::new(changed.iter().copied().collect());
        let mut edits = Edits::new();
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
            let labels = &*ep.pod.labels;
            let ns = ep.pod_key.0.as_str();
            let ns_labels = universe.ns_labels.get(ns);
            // NetworkPolicies of its namespace, then ClusterNetworkPolicies
            // by name: the order names the winner of equal ranks.
            let selecting: Vec<&Arc<CompiledPolicy>> = pols
                .iter()
                .chain(policies.cluster.iter())
                .filter(|p| p.subject.selects(ns, ns_labels, labels))
                .collect();
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
                    match moved_identities(&m.selecting, &selecting, &changed, &mut edits, universe, peer_sets, stats) {
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
    /// identities, the wildcards among them (no ipBlock entries; the state
    /// and cidr entries are left empty): a patch for [`splice`].
    fn compile_endpoint(
        &mut self,
        ep: &LocalEp,
        selecting: &[&Arc<CompiledPolicy>],
        universe: &Universe,
        only: Option<&[u32]>,
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
                            if !r.peer_is_wildcard(sel) {
                                let set = peer_sets.get(sel, universe, stats).0;
                                resolved_sets.insert(sel as *const _, set);
                            }
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
        let mut raw = RawEntries::default();
        let mut last: Option<(u32, u32)> = None;
        let mut put = |identity: u32, dir: Direction, pp: (Option<u8>, Option<PortBlock>), rule: u32| {
            // Consecutive entries almost always come from the same rule.
            let m = match last {
                Some((r, m)) if r == rule => m,
                _ => {
                    let m = raw.says(Merged::of(says(rule), rule));
                    last = Some((rule, m));
                    m
                }
            };
            raw.keys.push((pack(identity, dir, pp), m));
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
        // Whether entries of a peer wildcard are made: always, or in a
        // patch that names it.
        let wanted = |wildcard: u32| only.is_none_or(|o| o.binary_search(&wildcard).is_ok());
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
                        let has_named = r.ports_per_peer();
                        for wildcard in [ID_ANY, ID_ANY_POD].into_iter().filter(|w| wanted(*w)) {
                            for pp in resolve(&r.ports, dir, None) {
                                put(wildcard, dir, pp, *rule_id);
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
                                PeerSpec::Pods(sel) if r.peer_is_wildcard(sel) => {
                                    if wanted(ID_ANY_POD) {
                                        for pp in resolve(&r.ports, dir, None) {
                                            put(ID_ANY_POD, dir, pp, pe.rule_id);
                                        }
                                    }
                                }
                                PeerSpec::Pods(sel) => {
                                    let set = &resolved_sets[&(sel as *const _)];
                                    if !r.ports_per_peer() {
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
            let m = raw.says(m);
            raw.keys.extend(in_patch(&set, only).map(|id| (pack(*id, dir, pp), m)));
        }
        EndpointOut { state, policy: Arc::new(raw.merge(e)), cidr: cidr_out }
    }
}

/// The identities of a sorted peer set an endpoint compile makes entries
/// for: all of them, or, for a patch, those also in `only`.
fn in_patch<'a>(set: &'a [u32], only: Option<&'a [u32]>) -> Box<dyn Iterator<Item = &'a u32> + 'a> {
    // The smaller side walked, the larger searched.
    match only {
        None => Box::new(set.iter()),
        Some(only) if only.len() <= set.len() => Box::new(only.iter().filter(|id| set.binary_search(id).is_ok())),
        Some(only) => Box::new(set.iter().filter(|id| only.binary_search(id).is_ok())),
    }
}

/// `old` with the entries of the `changed` identities replaced by `new`'s
/// (which holds only theirs); both sorted, so is the result.
fn splice(
    old: &[(PolicyMatch, PolicyValue)],
    new: &[(PolicyMatch, PolicyValue)],
    changed: &[u32],
) -> Vec<(PolicyMatch, PolicyValue)> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut kept = old.iter().filter(|(k, _)| changed.binary_search(&k.identity).is_err()).peekable();
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

/// One endpoint's [`PolicyMatch`] without the endpoint, as one integer
/// that sorts as the match does: identity (32 bits), direction (1),
/// protocol (9: none first), port block (22: none first, then start and
/// bits). Raw entries are sorted by it, small and with no comparison
/// function to call.
fn pack(identity: u32, direction: Direction, (protocol, port): PortEntry) -> u64 {
    let protocol = protocol.map_or(0, |p| 1 + u64::from(p));
    let port = port.map_or(0, |b| 1 + ((u64::from(b.start) << 5) | u64::from(b.bits)));
    (u64::from(identity) << 32) | ((direction as u64) << 31) | (protocol << 22) | port
}

/// The match [`pack`] made, for endpoint `endpoint`.
fn unpack(endpoint: u32, k: u64) -> PolicyMatch {
    let direction = if (k >> 31) & 1 == 0 { Direction::Ingress } else { Direction::Egress };
    let protocol = ((k >> 22) & 0x1ff) as u16;
    let port = (k & 0x3f_ffff) as u32;
    PolicyMatch {
        endpoint,
        identity: (k >> 32) as u32,
        direction,
        protocol: protocol.checked_sub(1).map(|p| p as u8),
        port: port.checked_sub(1).map(|b| PortBlock { start: (b >> 5) as u16, bits: (b & 0x1f) as u8 }),
    }
}

/// One endpoint's entries as its rules make them, before they are merged
/// into one value per key: packed keys, each with the index of what its
/// rule (or a peer set's rules) say.
#[derive(Default)]
struct RawEntries {
    keys: Vec<(u64, u32)>,
    said: Vec<Merged>,
}

impl RawEntries {
    /// Keep what some rules say; its index for [`RawEntries::keys`].
    fn says(&mut self, m: Merged) -> u32 {
        self.said.push(m);
        (self.said.len() - 1) as u32
    }

    /// One value per key: the best rule of each tier among those naming
    /// the key. Where a cluster tier is involved, each key also takes what
    /// its wider keys (same endpoint, peer, direction) say, since the trie
    /// answers with the longest match alone; NetworkPolicy alone needs no
    /// such merge (any allow is the verdict), so its entries stay as they
    /// were.
    fn merge(mut self, endpoint: u32) -> Vec<(PolicyMatch, PolicyValue)> {
        // Each tier keeps its best rule whatever the order, so any sort
        // by key will do: tens of thousands of raw entries per endpoint
        // when cluster rules name large peer sets.
        self.keys.sort_unstable_by_key(|(k, _)| *k);
        let mut keys: Vec<(PolicyMatch, Merged)> = Vec::new();
        let mut last = None;
        for (k, m) in self.keys {
            let m = &self.said[m as usize];
            match keys.last_mut() {
                Some((_, merged)) if last == Some(k) => merged.absorb(m),
                _ => keys.push((unpack(endpoint, k), *m)),
            }
            last = Some(k);
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
                    match &pe.spec {
                        PeerSpec::Pods(sel) if !r.peer_is_wildcard(sel) => {
                            fp.peer_sets.push(peer_sets.get(sel, universe, stats).1)
                        }
                        _ => {}
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

    /// The packed integer sorts exactly as the key does, is equal only for
    /// equal keys, and unpacks to the key.
    #[test]
    fn packed_keys_sort_as_the_keys_and_unpack_to_them() {
        let mut keys = Vec::new();
        for identity in [0, 3, 256, u32::MAX] {
            for direction in [Direction::Ingress, Direction::Egress] {
                for protocol in [None, Some(0), Some(6), Some(255)] {
                    for port in [
                        None,
                        Some(PortBlock { start: 0, bits: 0 }),
                        Some(PortBlock { start: 0, bits: 16 }),
                        Some(PortBlock::single(80)),
                        Some(PortBlock { start: 32768, bits: 1 }),
                        Some(PortBlock { start: 65535, bits: 16 }),
                    ] {
                        keys.push(PolicyMatch { endpoint: 7, identity, direction, protocol, port });
                    }
                }
            }
        }
        let packed = |k: &PolicyMatch| pack(k.identity, k.direction, (k.protocol, k.port));
        for a in &keys {
            assert_eq!(unpack(7, packed(a)), *a);
            for b in &keys {
                assert_eq!(a.cmp(b), packed(a).cmp(&packed(b)), "{a:?} vs {b:?}");
            }
        }
    }
}
