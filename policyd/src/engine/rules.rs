//! Stage 3 of a compile, the rules: every NetworkPolicy compiled
//! ([`policy::compile_policy`]) into rules of peers and ports, memoized by
//! object version (or spec), with stable rule ids (only the policies the
//! store's journal names as written are read again); and the peer sets those
//! rules' pod selectors resolve to in the [`Universe`], cached per selector
//! and patched for the identities that changed.
//!
//! Hands on [`Policies`]: the compiled policies per namespace (read by the
//! endpoint stage), the rule table and the policies' diagnostics (for
//! [`super::Desired`]). [`PeerSets`] is shared with the endpoint stage,
//! which resolves a selector the first time an endpoint needs it.

use super::cluster_policy::compile_cluster_policy;
use super::policy::{self, CompiledPolicy, PeerSelector, Peers};
use super::universe::Universe;
use super::{
    object_version, same_object_version, CompileStats, Diagnostic, Direction, IdentityLabels, Labels, RuleInfo, Tier,
};
use crate::cluster_network_policy::{ClusterNetworkPolicy, ClusterNetworkPolicySpec};
use crate::store::{Journaled, Key, Stamp};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What the rule stage keeps between compiles.
pub(super) struct PolicyStage {
    /// Read only the policies the journal names as written (false: walk
    /// every policy each time, what patched runs are checked against).
    pub(super) patching: bool,
    rule_ids: RuleIdTable,
    memo: HashMap<Key, PolicyMemo>,
    cluster_memo: HashMap<String, ClusterMemo>,
    /// Last version handed to a compiled policy: a new number for every
    /// compile of a policy, so endpoints can tell a policy changed.
    version: u64,
    /// The rule table and diagnostics of the last run, which stand while
    /// no policy is compiled or removed.
    table: Option<(Arc<Vec<RuleInfo>>, Vec<Diagnostic>)>,
    /// The last result and the stamps of the policies it was made from:
    /// it stands while neither kind of policy is written.
    last: Option<((Stamp, Stamp), Policies)>,
}

impl Default for PolicyStage {
    fn default() -> Self {
        PolicyStage {
            patching: true,
            rule_ids: RuleIdTable::default(),
            memo: HashMap::new(),
            cluster_memo: HashMap::new(),
            version: 0,
            table: None,
            last: None,
        }
    }
}

/// Compiled policies by namespace, in store order.
type ByNamespace = Arc<BTreeMap<String, Vec<Arc<CompiledPolicy>>>>;

/// The rule stage's result.
#[derive(Clone)]
pub(super) struct Policies {
    by_namespace: ByNamespace,
    /// Compiled ClusterNetworkPolicies, by name.
    pub(super) cluster: Arc<Vec<Arc<CompiledPolicy>>>,
    /// What every rule id stands for, sorted by id.
    pub(super) rules: Arc<Vec<RuleInfo>>,
    pub(super) diagnostics: Vec<Diagnostic>,
}

impl Policies {
    /// The compiled policies of a namespace.
    pub(super) fn in_namespace(&self, namespace: &str) -> &[Arc<CompiledPolicy>] {
        self.by_namespace.get(namespace).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

struct ClusterMemo {
    version: Option<(Option<String>, String)>,
    spec: Option<ClusterNetworkPolicySpec>,
    compiled: Arc<CompiledPolicy>,
}

struct PolicyMemo {
    /// (uid, resourceVersion) when the source sets them: the API server
    /// changes resourceVersion on every write, so equal means unchanged
    /// without comparing the spec.
    version: Option<(Option<String>, String)>,
    spec: Option<NetworkPolicySpec>,
    /// The mode annotation, compared with the spec.
    mode: Option<String>,
    compiled: Arc<CompiledPolicy>,
}

type RuleKey = (String, String, Direction, u32, Option<u32>);

#[derive(Default)]
struct RuleIdTable {
    ids: HashMap<RuleKey, u32>,
    next: u32,
}

impl policy::RuleIds for RuleIdTable {
    fn rule_id(&mut self, ns: &str, name: &str, dir: Direction, rule: u32, peer: Option<u32>) -> u32 {
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

impl PolicyStage {
    /// The compiled policy of a store key, as the last compile left it.
    pub(super) fn compiled(&self, key: &Key) -> Option<&Arc<CompiledPolicy>> {
        if key.0 == super::cluster_policy::CLUSTER_SCOPE {
            return self.cluster_memo.get(&key.1).map(|m| &m.compiled);
        }
        self.memo.get(key).map(|m| &m.compiled)
    }

    /// The compiled ClusterNetworkPolicies of the last compile, by name.
    pub(super) fn compiled_cluster(&self) -> Vec<Arc<CompiledPolicy>> {
        let mut v: Vec<_> = self.cluster_memo.values().map(|m| m.compiled.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// What rule id `id` stands for: (namespace, name, direction, rule
    /// index, peer index). A scan: for explanations, not compiles.
    pub(super) fn rule_of(&self, id: u32) -> Option<RuleKey> {
        self.rule_ids.ids.iter().find(|(_, v)| **v == id).map(|(k, _)| k.clone())
    }

    /// Compile the policies that changed since the previous compile and
    /// forget the ones that are gone (and their rule ids). When the
    /// policies' journal names what was written since the last result,
    /// only those policies are read, and only their namespaces' lists
    /// rebuilt; otherwise every policy is walked.
    pub(super) fn run(
        &mut self,
        policies: &Journaled<Key, NetworkPolicy>,
        cluster_policies: &Journaled<String, ClusterNetworkPolicy>,
        stats: &mut CompileStats,
    ) -> Policies {
        let stamps = (policies.stamp(), cluster_policies.stamp());
        if let Some((_, last)) = self.last.as_ref().filter(|(s, _)| *s == stamps) {
            return last.clone();
        }
        let mut changes = Changes::default();
        let patchable = if self.patching { self.patchable(policies) } else { None };
        let by_namespace = match patchable {
            Some((last, written)) => self.patch_namespaces(policies, last, written, stats, &mut changes),
            None => self.walk_namespaces(policies, stats, &mut changes),
        };
        let mut cluster = Vec::with_capacity(cluster_policies.len());
        for (name, cnp) in cluster_policies {
            let cached = self
                .cluster_memo
                .get(name)
                .filter(|m| match same_object_version(&m.version, &cnp.metadata) {
                    Some(same) => same,
                    None => m.spec.as_ref() == Some(&cnp.spec),
                })
                .map(|m| m.compiled.clone());
            let compiled = match cached {
                Some(c) => c,
                None => {
                    let mut cnp = cnp.clone();
                    cnp.metadata.name = Some(name.clone());
                    self.version += 1;
                    let c = Arc::new(compile_cluster_policy(&cnp, &mut self.rule_ids, self.version));
                    stats.policies_compiled += 1;
                    changes.compiled = true;
                    let version = object_version(&cnp.metadata);
                    let spec = if version.is_some() { None } else { Some(cnp.spec) };
                    self.cluster_memo.insert(name.clone(), ClusterMemo { version, spec, compiled: c.clone() });
                    c
                }
            };
            cluster.push(compiled);
        }
        if self.cluster_memo.len() != cluster_policies.len() {
            self.cluster_memo.retain(|k, _| cluster_policies.contains_key(k));
            changes.removed = true;
        }
        if changes.removed {
            self.rule_ids.ids.retain(|k, _| {
                if k.0 == super::cluster_policy::CLUSTER_SCOPE {
                    cluster_policies.contains_key(&k.1)
                } else {
                    policies.contains_key(&(k.0.clone(), k.1.clone()))
                }
            });
        }
        let (rules, diagnostics) = match self.table.take() {
            Some(table) if !changes.removed && !changes.compiled => table,
            _ => {
                let (rules, diagnostics) = rule_table(by_namespace.values().flatten().chain(&cluster));
                (Arc::new(rules), diagnostics)
            }
        };
        self.table = Some((rules.clone(), diagnostics.clone()));
        let result = Policies { by_namespace, cluster: Arc::new(cluster), rules, diagnostics };
        self.last = Some((stamps, result.clone()));
        result
    }

    /// The last result's lists and the NetworkPolicies written since it
    /// was made, when the journal can tell.
    fn patchable(&self, policies: &Journaled<Key, NetworkPolicy>) -> Option<(ByNamespace, BTreeSet<Key>)> {
        let ((stamp, _), last) = self.last.as_ref()?;
        let written = policies.written_since(*stamp)?.cloned().collect();
        Some((last.by_namespace.clone(), written))
    }

    /// Every NetworkPolicy compiled (or taken from the memo), by namespace.
    fn walk_namespaces(
        &mut self,
        policies: &Journaled<Key, NetworkPolicy>,
        stats: &mut CompileStats,
        changes: &mut Changes,
    ) -> ByNamespace {
        let mut by_namespace: BTreeMap<String, Vec<Arc<CompiledPolicy>>> = BTreeMap::new();
        for (key, np) in policies {
            let compiled = self.compiled_for(key, np, stats, changes);
            match by_namespace.get_mut(&key.0) {
                Some(v) => v.push(compiled),
                None => {
                    by_namespace.insert(key.0.clone(), vec![compiled]);
                }
            }
        }
        if self.memo.len() != policies.len() {
            self.memo.retain(|k, _| policies.contains_key(k));
            changes.removed = true;
        }
        Arc::new(by_namespace)
    }

    /// `last` with the namespaces of the `written` policies listed again,
    /// in store order, those policies compiled or forgotten.
    fn patch_namespaces(
        &mut self,
        policies: &Journaled<Key, NetworkPolicy>,
        mut by_namespace: ByNamespace,
        written: BTreeSet<Key>,
        stats: &mut CompileStats,
        changes: &mut Changes,
    ) -> ByNamespace {
        let mut namespaces = BTreeSet::new();
        for key in written {
            match policies.get(&key) {
                Some(np) => {
                    self.compiled_for(&key, np, stats, changes);
                }
                None => changes.removed |= self.memo.remove(&key).is_some(),
            }
            namespaces.insert(key.0);
        }
        if namespaces.is_empty() {
            return by_namespace;
        }
        let lists = Arc::make_mut(&mut by_namespace);
        for ns in namespaces {
            let from = (ns.clone(), String::new());
            let list: Vec<Arc<CompiledPolicy>> = policies
                .range(from..)
                .take_while(|(k, _)| k.0 == ns)
                .map(|(k, _)| self.memo.get(k).expect("every stored policy is compiled").compiled.clone())
                .collect();
            if list.is_empty() {
                lists.remove(&ns);
            } else {
                lists.insert(ns, list);
            }
        }
        by_namespace
    }

    /// The compiled form of one NetworkPolicy: the memo's while its version
    /// (or spec) is the one compiled, else compiled now.
    fn compiled_for(
        &mut self,
        key: &Key,
        np: &NetworkPolicy,
        stats: &mut CompileStats,
        changes: &mut Changes,
    ) -> Arc<CompiledPolicy> {
        let cached = self
            .memo
            .get(key)
            .filter(|m| match same_object_version(&m.version, &np.metadata) {
                Some(same) => same,
                None => m.spec == np.spec && m.mode.as_deref() == policy::mode_annotation(np),
            })
            .map(|m| m.compiled.clone());
        if let Some(c) = cached {
            return c;
        }
        let mut np = np.clone();
        // The store key is authoritative for where the policy lives.
        np.metadata.namespace = Some(key.0.clone());
        np.metadata.name = Some(key.1.clone());
        self.version += 1;
        let c = Arc::new(policy::compile_policy(&np, &mut self.rule_ids, self.version));
        stats.policies_compiled += 1;
        changes.compiled = true;
        self.memo.insert(
            key.clone(),
            PolicyMemo {
                version: object_version(&np.metadata),
                // With a resourceVersion the spec is never compared: do not keep it.
                spec: if np.metadata.resource_version.as_ref().is_some_and(|v| !v.is_empty()) {
                    None
                } else {
                    np.spec.clone()
                },
                mode: policy::mode_annotation(&np).map(str::to_string),
                compiled: c.clone(),
            },
        );
        c
    }
}

/// What a run of the rule stage did to the policies it had compiled.
#[derive(Default)]
struct Changes {
    compiled: bool,
    removed: bool,
}

/// What every rule id of the compiled policies stands for (sorted by id),
/// and the policies' diagnostics.
fn rule_table<'a>(policies: impl Iterator<Item = &'a Arc<CompiledPolicy>>) -> (Vec<RuleInfo>, Vec<Diagnostic>) {
    let mut rules = Vec::new();
    let mut diagnostics = Vec::new();
    {
        for p in policies {
            diagnostics.extend(p.diagnostics.iter().cloned());
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
                    rule_name: r.name.clone(),
                    priority: if r.tier == Tier::NetworkPolicy { 0 } else { r.rank >> 7 },
                };
                match &r.peers {
                    Peers::All { rule_id } => rules.push(info(*rule_id, None)),
                    Peers::List(list) => rules.extend(list.iter().map(|pe| info(pe.rule_id, Some(pe.index)))),
                }
            }
        }
    }
    rules.sort();
    (rules, diagnostics)
}

/// Peer sets: the sorted identities a [`PeerSelector`] selects, each with
/// a version that changes whenever the set does.
#[derive(Default)]
pub(super) struct PeerSets {
    sets: HashMap<PeerSelector, PeerSet>,
    /// Last version handed to a set.
    version: u64,
}

struct PeerSet {
    ids: Arc<Vec<u32>>,
    version: u64,
}

impl PeerSets {
    /// Bring every cached peer set up to date with `universe`,
    /// re-evaluating only the identities that appeared, vanished or whose
    /// namespace labels changed (`changed`); drop the cache when most of
    /// the universe changed.
    pub(super) fn patch(&mut self, universe: &Universe, changed: &BTreeSet<u32>, stats: &mut CompileStats) {
        if changed.is_empty() {
            return;
        }
        if changed.len() > universe.identities.len() / 4 + 64 {
            self.sets.clear();
            return;
        }
        for (sel, set) in self.sets.iter_mut() {
            let mut ids: Vec<u32> = set.ids.iter().copied().filter(|id| !changed.contains(id)).collect();
            for id in changed {
                if let Some(info) = universe.identities.get(id) {
                    if selector_matches(sel, info, &universe.ns_labels) {
                        ids.push(*id);
                    }
                }
            }
            ids.sort_unstable();
            if ids != *set.ids {
                self.version += 1;
                set.ids = Arc::new(ids);
                set.version = self.version;
                stats.peer_sets_patched += 1;
            }
        }
    }

    /// The identities `sel` selects, if its set is cached (brought up to
    /// date by every [`PeerSets::patch`]).
    pub(super) fn cached(&self, sel: &PeerSelector) -> Option<&Arc<Vec<u32>>> {
        self.sets.get(sel).map(|s| &s.ids)
    }

    /// The identities `sel` selects in `universe`, and the set's version;
    /// evaluated and cached on first use.
    pub(super) fn get(
        &mut self,
        sel: &PeerSelector,
        universe: &Universe,
        stats: &mut CompileStats,
    ) -> (Arc<Vec<u32>>, u64) {
        if let Some(s) = self.sets.get(sel) {
            return (s.ids.clone(), s.version);
        }
        let mut ids = Vec::new();
        let mut scan = |ns: &str| {
            for id in universe.by_ns.get(ns).into_iter().flatten() {
                if sel.pods.matches(&universe.identities[id].labels) {
                    ids.push(*id);
                }
            }
        };
        match &sel.namespaces {
            policy::NsScope::Same(ns) => scan(ns),
            policy::NsScope::Matching(nsel) => {
                for (ns, l) in &universe.ns_labels {
                    if nsel.matches(l) {
                        scan(ns);
                    }
                }
            }
        }
        ids.sort_unstable();
        let ids = Arc::new(ids);
        self.version += 1;
        let version = self.version;
        stats.peer_sets_evaluated += 1;
        self.sets.insert(sel.clone(), PeerSet { ids: ids.clone(), version });
        (ids, version)
    }
}

fn selector_matches(sel: &PeerSelector, id: &IdentityLabels, ns_labels: &BTreeMap<String, Labels>) -> bool {
    let ns_ok = match &sel.namespaces {
        policy::NsScope::Same(ns) => *ns == id.namespace,
        policy::NsScope::Matching(nsel) => ns_labels.get(&id.namespace).is_some_and(|l| nsel.matches(l)),
    };
    ns_ok && sel.pods.matches(&id.labels)
}
