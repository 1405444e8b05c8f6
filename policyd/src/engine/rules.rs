//! Stage 3 of a compile, the rules: every NetworkPolicy compiled
//! ([`policy::compile_policy`]) into rules of peers and ports, memoized by
//! object version (or spec), with stable rule ids; and the peer sets those
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
#[derive(Default)]
pub(super) struct PolicyStage {
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

/// The rule stage's result.
#[derive(Clone)]
pub(super) struct Policies {
    /// Compiled policies by namespace, in store order.
    by_namespace: Arc<BTreeMap<String, Vec<Arc<CompiledPolicy>>>>,
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
    /// forget the ones that are gone (and their rule ids).
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
        let mut by_namespace: BTreeMap<String, Vec<Arc<CompiledPolicy>>> = BTreeMap::new();
        let mut removed_any = false;
        let mut compiled_any = false;
        for (key, np) in policies {
            let cached = self
                .memo
                .get(key)
                .filter(|m| match same_object_version(&m.version, &np.metadata) {
                    Some(same) => same,
                    None => m.spec == np.spec && m.mode.as_deref() == policy::mode_annotation(np),
                })
                .map(|m| m.compiled.clone());
            let compiled = match cached {
                Some(c) => c,
                None => {
                    let mut np = np.clone();
                    // The store key is authoritative for where the policy lives.
                    np.metadata.namespace = Some(key.0.clone());
                    np.metadata.name = Some(key.1.clone());
                    self.version += 1;
                    let c = Arc::new(policy::compile_policy(&np, &mut self.rule_ids, self.version));
                    stats.policies_compiled += 1;
                    compiled_any = true;
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
            };
            match by_namespace.get_mut(&key.0) {
                Some(v) => v.push(compiled),
                None => {
                    by_namespace.insert(key.0.clone(), vec![compiled]);
                }
            }
        }
        if self.memo.len() != policies.len() {
            self.memo.retain(|k, _| policies.contains_key(k));
            removed_any = true;
        }
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
                    compiled_any = true;
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
            removed_any = true;
        }
        if removed_any {
            self.rule_ids.ids.retain(|k, _| {
                if k.0 == super::cluster_policy::CLUSTER_SCOPE {
                    cluster_policies.contains_key(&k.1)
                } else {
                    policies.contains_key(&(k.0.clone(), k.1.clone()))
                }
            });
        }
        let (rules, diagnostics) = match self.table.take() {
            Some(table) if !removed_any && !compiled_any => table,
            _ => {
                let (rules, diagnostics) = rule_table(by_namespace.values().flatten().chain(&cluster));
                (Arc::new(rules), diagnostics)
            }
        };
        self.table = Some((rules.clone(), diagnostics.clone()));
        let result = Policies { by_namespace: Arc::new(by_namespace), cluster: Arc::new(cluster), rules, diagnostics };
        self.last = Some((stamps, result.clone()));
        result
    }
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
