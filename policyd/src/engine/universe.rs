//! Stage 1 of a compile, the identities: pods sharing namespace and labels
//! share one number (>= 256); this node's endpoint records are matched to
//! their pods; every pod's addresses are claims for the ipcache.
//!
//! Takes the [`Store`] and the endpoint records; hands on [`Identities`]:
//! the [`Universe`] selectors are evaluated in, the identities whose peer
//! set membership may have changed since the previous compile (for the
//! rule stage's peer sets), the local endpoints (for the endpoint stage)
//! and the [`Addresses`] whose best claim may have moved (for the ipcache
//! stage). The stage keeps what each pod read as ([`PodDigest`]) and what
//! the pods add up to (members and named ports per identity, claimants per
//! address), and reads only the pods the store's journal names since the
//! last compile ([`Pods::written_since`]), patching the sums by them: a
//! pod change costs the same in a cluster of 150,000 pods as in one of
//! ten, and a policy, namespace or Service change reads no pod. When the
//! journal cannot tell (the first compile, thousands of writes between
//! two compiles, another store), every pod is read.
//!
//! [`Pods::written_since`]: crate::store::Pods::written_since

use super::endpoints::LocalEp;
use super::identity::IdentityAllocator;
use super::ipcache::Addresses;
use super::{
    CompileStats, Diagnostic, IdentityLabels, IdentityTable, Labels, NamedPort, PodNameChanges, Unmatched,
    UnmatchedRecord, NAMESPACE_NAME_LABEL,
};
use crate::store::{IpsField, Key, Stamp, StatusIp, Store, StoredPod};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use weir_common::registry::EndpointRecord;

/// The identities of one compile and what selectors need to know of them.
#[derive(Default)]
pub(super) struct Universe {
    /// Every namespace's labels, with [`NAMESPACE_NAME_LABEL`] set.
    pub(super) ns_labels: BTreeMap<String, Labels>,
    pub(super) identities: IdentityTable,
    /// Identities per namespace.
    pub(super) by_ns: BTreeMap<String, Vec<u32>>,
    /// Named container ports per identity, sorted (the union over its pods).
    pub(super) named_ports: BTreeMap<u32, Vec<NamedPort>>,
    /// Changes whenever `named_ports` does: egress named ports resolve
    /// against them, so endpoints with such rules depend on it.
    pub(super) named_ports_version: u64,
}

/// The identity stage's result.
pub(super) struct Identities<'s> {
    pub(super) universe: Universe,
    /// Identities that appeared, vanished, or whose namespace's labels or
    /// named ports changed since the previous compile: everything an
    /// unchanged policy's entries for an identity depend on, besides the
    /// endpoint itself.
    pub(super) changed: BTreeSet<u32>,
    /// This node's pod interfaces matched to their pods, by ifindex.
    pub(super) endpoints: Vec<LocalEp<'s>>,
    pub(super) addresses: Addresses,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// This node's endpoint records no pod takes (sorted).
    pub(super) unmatched: Vec<UnmatchedRecord>,
}

/// What the identity stage keeps between compiles: what every pod read as
/// ([`PodDigest`]) and what the pods add up to (members and named ports per
/// identity, claimants per address), so that a compile reads only the pods
/// written since the last one and patches the sums by them.
pub(super) struct IdentityStage {
    pub(super) ids: IdentityAllocator,
    /// Compiles so far: identities unused for a while are forgotten.
    generation: u64,
    /// Every pod by key; the key is shared with the address claims.
    pods: BTreeMap<Arc<Key>, PodDigest>,
    /// Port names and sorted port lists, one allocation per distinct one:
    /// pods of one workload share theirs, and comparing them is mostly
    /// comparing pointers.
    port_names: HashSet<Arc<str>>,
    port_lists: HashSet<Arc<[NamedPort]>>,
    /// The previous compile's universe, given back with [`IdentityStage::keep`].
    previous: Universe,
    /// Pods and named ports per identity in use.
    members: HashMap<u32, Members>,
    /// The pods claiming each address.
    claims: HashMap<IpAddr, SmallVec<[Arc<Key>; 1]>>,
    /// Pods with diagnostics, and theirs.
    pod_diags: BTreeMap<Arc<Key>, Vec<Diagnostic>>,
    /// What the digests and sums were brought up to: the pods' stamp and
    /// this node's endpoint records; and the pods those records matched.
    walked: Option<(Stamp, Vec<EndpointRecord>)>,
    local_pods: Vec<Key>,
    /// The namespaces' stamp the universe's namespace labels were read at.
    namespaces_read: Option<Stamp>,
    /// The universe's identities as handed on, while none came or went.
    table: Option<Arc<IdentityTable>>,
    /// Addresses whose best claim may have moved since the pod names were
    /// last taken ([`IdentityStage::take_pod_names`]).
    unnamed: Unnamed,
}

/// Addresses not named since they moved, or all of them.
#[derive(Default)]
struct Unnamed {
    all: bool,
    addresses: HashSet<IpAddr>,
}

/// Addresses beyond which nobody is taking the names: all, then.
const UNNAMED_MAX: usize = 65_536;

/// The pods of one identity.
#[derive(Default)]
struct Members {
    pods: usize,
    /// Named ports of its pods, with how many pods name each.
    ports: BTreeMap<NamedPort, usize>,
}

impl Default for IdentityStage {
    fn default() -> Self {
        IdentityStage {
            ids: IdentityAllocator::new(),
            generation: 0,
            pods: BTreeMap::new(),
            port_names: HashSet::new(),
            port_lists: HashSet::new(),
            previous: Universe::default(),
            members: HashMap::new(),
            claims: HashMap::new(),
            pod_diags: BTreeMap::new(),
            walked: None,
            local_pods: Vec::new(),
            namespaces_read: None,
            table: None,
            unnamed: Unnamed::default(),
        }
    }
}

/// What one compile's pod updates moved: identities with their member
/// count before, and addresses whose best claim may differ (not kept
/// when every pod is read: then every address is handed on).
#[derive(Default)]
struct Moved {
    identities: HashMap<u32, usize>,
    addresses: HashSet<IpAddr>,
    all: bool,
}

impl Moved {
    fn address(&mut self, ip: IpAddr) {
        if !self.all {
            self.addresses.insert(ip);
        }
    }
}

impl IdentityStage {
    pub(super) fn run<'s>(
        &mut self,
        store: &'s Store,
        locals: &'s [EndpointRecord],
        stats: &mut CompileStats,
    ) -> Identities<'s> {
        self.generation += 1;
        let mut diags: Vec<Diagnostic> = Vec::new();
        let (local_of_pod, local_ifindex, unmatched) = match_local_records(store, locals, &mut diags);
        let mut uni = std::mem::take(&mut self.previous);
        let mut moved = Moved::default();

        // The pods to read: those the store's journal names since the last
        // compile, and this node's pods when its records changed; every pod
        // when the journal cannot tell.
        let stamp = store.pods.stamp();
        let since = self.walked.as_ref().and_then(|(s, _)| store.pods.written_since(*s));
        let records_same = self.walked.as_ref().is_some_and(|(_, l)| l.as_slice() == locals);
        let all = since.is_none();
        moved.all = all;
        match since {
            Some(written) => {
                // Each key once: written, or only this node's records moved.
                let mut keys: BTreeMap<&Key, bool> = BTreeMap::new();
                let old_locals = std::mem::take(&mut self.local_pods);
                if !records_same {
                    keys.extend(local_of_pod.keys().map(|k| (*k, false)));
                    keys.extend(old_locals.iter().map(|k| (k, false)));
                }
                keys.extend(written.map(|k| (k, true)));
                for (key, written) in keys {
                    self.update(store, key, written, &local_of_pod, &mut uni, &mut moved, stats);
                }
            }
            None => {
                // Pods gone from the store first (a merge walk over the
                // sorted keys), then every pod of the store.
                let mut present = store.pods.keys().peekable();
                let mut gone: Vec<Key> = Vec::new();
                for k in self.pods.keys() {
                    while present.next_if(|p| *p < &**k).is_some() {}
                    if present.peek() != Some(&&**k) {
                        gone.push((**k).clone());
                    }
                }
                for key in gone.iter().chain(store.pods.keys()) {
                    self.update(store, key, true, &local_of_pod, &mut uni, &mut moved, stats);
                }
            }
        }
        self.walked = Some((stamp, locals.to_vec()));
        self.local_pods = local_of_pod.keys().map(|k| (*k).clone()).collect();

        let (mut changed, came_or_went, ports_changed) = self.settle(moved.identities, &mut uni);
        uni.named_ports_version += u64::from(ports_changed);
        // Namespace labels move when a Namespace is written, or when the
        // namespaces with pods (`by_ns`) do, as identities come and go.
        if came_or_went || self.namespaces_read != Some(store.namespaces.stamp()) {
            for ns in refresh_namespace_labels(&mut uni.ns_labels, store, &uni.by_ns) {
                changed.extend(uni.by_ns.get(&ns).into_iter().flatten().copied());
            }
            self.namespaces_read = Some(store.namespaces.stamp());
        }
        self.ids.collect_garbage(uni.identities.values(), self.generation, 4096);
        if self.port_names.len() > 4096 {
            self.port_names.retain(|n| Arc::strong_count(n) > 1);
        }
        if self.port_lists.len() > 4096 {
            self.port_lists.retain(|n| Arc::strong_count(n) > 1);
        }

        // This node's endpoints, and the best claim on each address moved.
        let mut endpoints = Vec::new();
        for (key, records) in &local_of_pod {
            let Some(dg) = self.pods.get(*key).filter(|dg| dg.identity != 0) else { continue };
            for r in records {
                endpoints.push(LocalEp {
                    ifindex: r.host_ifindex,
                    pod_key: (*key).clone(),
                    pod: &store.pods[*key],
                    identity: dg.identity,
                    own_ports: dg.ports.to_vec(),
                });
            }
        }
        endpoints.sort_by_key(|e| e.ifindex);
        if all || self.unnamed.all || self.unnamed.addresses.len() + moved.addresses.len() > UNNAMED_MAX {
            self.unnamed = Unnamed { all: true, addresses: HashSet::new() };
        } else {
            self.unnamed.addresses.extend(moved.addresses.iter().copied());
        }
        let claims = match all {
            true => self.claims.keys().map(|ip| (*ip, self.best_claim(ip))).collect(),
            false => moved.addresses.into_iter().map(|ip| (ip, self.best_claim(&ip))).collect(),
        };
        diags.extend(self.pod_diags.values().flatten().cloned());

        Identities {
            universe: uni,
            changed,
            endpoints,
            addresses: Addresses { claims, all, local_ifindex },
            diagnostics: diags,
            unmatched,
        }
    }

    /// Bring the universe's identities up to date with the member counts
    /// the pod updates moved (`moved`: each identity's count before them):
    /// identities that came or went, and named ports. Returns the
    /// identities changed, whether any came or went, and whether any
    /// identity's named ports changed.
    fn settle(&mut self, moved: HashMap<u32, usize>, uni: &mut Universe) -> (BTreeSet<u32>, bool, bool) {
        let mut changed: BTreeSet<u32> = BTreeSet::new();
        let (mut came_or_went, mut ports_changed) = (false, false);
        for (id, before) in moved {
            let now = self.members.get(&id).map_or(0, |m| m.pods);
            if now == 0 {
                self.members.remove(&id);
                if let Some(info) = uni.identities.remove(&id) {
                    // Last used now: kept a while for a pod coming back.
                    self.ids.touch(&info, self.generation);
                    if let Some(ids) = uni.by_ns.get_mut(&info.namespace) {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            uni.by_ns.remove(&info.namespace);
                        }
                    }
                }
            } else if before == 0 {
                let ns = &uni.identities[&id].namespace;
                let ids = uni.by_ns.entry(ns.clone()).or_default();
                if let Err(at) = ids.binary_search(&id) {
                    ids.insert(at, id);
                }
            }
            if (now == 0) != (before == 0) {
                came_or_went = true;
                changed.insert(id);
            }
            let ports: Vec<NamedPort> =
                self.members.get(&id).map(|m| m.ports.keys().cloned().collect()).unwrap_or_default();
            let old = match ports.is_empty() {
                true => uni.named_ports.remove(&id),
                false => uni.named_ports.insert(id, ports.clone()),
            };
            if old.unwrap_or_default() != ports {
                ports_changed = true;
                changed.insert(id);
            }
        }
        if came_or_went {
            self.table = None;
        }
        (changed, came_or_went, ports_changed)
    }

    /// Bring what the stage keeps up to date with the pod at `key`: gone,
    /// new or `written` (read again), or only its endpoint records changed.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        store: &Store,
        key: &Key,
        written: bool,
        local_of_pod: &HashMap<&Key, Vec<&EndpointRecord>>,
        uni: &mut Universe,
        moved: &mut Moved,
        stats: &mut CompileStats,
    ) {
        let old = self.pods.remove_entry(key);
        let Some(pod) = store.pods.get(key) else {
            if let Some((k, dg)) = old {
                self.retract(&k, &dg, moved);
                self.pod_diags.remove(key);
            }
            return;
        };
        let local_ips: Option<Box<[IpAddr]>> = local_of_pod.get(key).map(|rs| {
            let mut ips: Vec<IpAddr> = rs.iter().flat_map(|r| r.ips.iter().copied()).collect();
            ips.sort();
            ips.dedup();
            ips.into()
        });
        let (k, mut dg) = match old {
            Some((k, dg)) if !written => {
                if dg.local_ips == local_ips {
                    self.pods.insert(k, dg);
                    return;
                }
                self.retract(&k, &dg, moved);
                (k, dg)
            }
            old => {
                let k = match old {
                    Some((k, dg)) => {
                        self.retract(&k, &dg, moved);
                        k
                    }
                    None => Arc::new(key.clone()),
                };
                stats.pods_read += 1;
                let mut diags = Vec::new();
                let dg = PodDigest::new(key, pod, self, &mut diags);
                self.pod_diags.remove(key);
                if !diags.is_empty() {
                    self.pod_diags.insert(k.clone(), diags);
                }
                (k, dg)
            }
        };
        dg.local_ips = local_ips;
        if dg.identity != 0 {
            let id = dg.identity;
            let m = self.members.entry(id).or_default();
            moved.identities.entry(id).or_insert(m.pods);
            m.pods += 1;
            for p in dg.ports.iter() {
                *m.ports.entry(p.clone()).or_default() += 1;
            }
            uni.identities
                .entry(id)
                .or_insert_with(|| IdentityLabels { namespace: key.0.clone(), labels: pod.labels.clone() });
            for ip in dg.claimed() {
                self.claims.entry(*ip).or_default().push(k.clone());
                moved.address(*ip);
            }
        }
        self.pods.insert(k, dg);
    }

    /// Take back what a pod's digest added to the sums.
    fn retract(&mut self, key: &Arc<Key>, dg: &PodDigest, moved: &mut Moved) {
        if dg.identity == 0 {
            return;
        }
        if let Some(m) = self.members.get_mut(&dg.identity) {
            moved.identities.entry(dg.identity).or_insert(m.pods);
            m.pods -= 1;
            for p in dg.ports.iter() {
                if let Some(n) = m.ports.get_mut(p) {
                    *n -= 1;
                    if *n == 0 {
                        m.ports.remove(p);
                    }
                }
            }
        }
        for ip in dg.claimed() {
            if let Some(ks) = self.claims.get_mut(ip) {
                ks.retain(|k| !Arc::ptr_eq(k, key));
                if ks.is_empty() {
                    self.claims.remove(ip);
                }
            }
            moved.address(*ip);
        }
    }

    /// The best claim on `ip`, if any pod claims it: the pod and its
    /// digest. Of two pods claiming one address the greater [`Rank`] wins.
    fn best(&self, ip: &IpAddr) -> Option<(&Arc<Key>, &PodDigest)> {
        let claimants = self.claims.get(ip)?.iter();
        claimants.filter_map(|k| self.pods.get(&**k).map(|dg| (k, dg))).max_by(|a, b| a.1.rank(a.0).cmp(&b.1.rank(b.0)))
    }

    fn best_claim(&self, ip: &IpAddr) -> Option<u32> {
        self.best(ip).map(|(_, dg)| dg.identity)
    }

    /// The pod each address names now (its best claim, as the ipcache
    /// has it), for the addresses moved since the last call: every named
    /// address when `all` (the first call, or after a full read).
    pub(super) fn take_pod_names(&mut self) -> PodNameChanges {
        let Unnamed { all, addresses } = std::mem::take(&mut self.unnamed);
        let name = |ip: &IpAddr| self.best(ip).map(|(k, _)| (**k).clone());
        let names = match all {
            true => self.claims.keys().filter_map(|ip| Some((*ip, Some(name(ip)?)))).collect(),
            false => addresses.iter().map(|ip| (*ip, name(ip))).collect(),
        };
        PodNameChanges { all, names }
    }

    /// The identities of `universe` (this compile's) to hand on: the
    /// previous table itself while no identity came or went.
    pub(super) fn table(&mut self, universe: &Universe) -> Arc<IdentityTable> {
        self.table.get_or_insert_with(|| Arc::new(universe.identities.clone())).clone()
    }

    /// Keep this compile's universe: the next compile's previous one.
    pub(super) fn keep(&mut self, universe: Universe) {
        self.previous = universe;
    }

    /// The last compile's universe (for explanations).
    pub(super) fn last(&self) -> &Universe {
        &self.previous
    }
}

/// Rank of a pod's claim on an address two pods claim, greater wins: on
/// this node (its endpoint record is authoritative), then Running, then
/// the newest creationTimestamp, then the greater namespace/name.
type Rank<'a> = (bool, bool, Option<(i64, i32)>, &'a Key);

/// Bring every namespace's labels up to date, with the name label the API
/// server sets; a namespace of pods (`by_ns`) whose Namespace is not seen
/// (yet, or any more) has that label alone. Returns the namespaces whose
/// labels changed. Compares before it copies: most compiles change none.
fn refresh_namespace_labels(
    ns_labels: &mut BTreeMap<String, Labels>,
    store: &Store,
    by_ns: &BTreeMap<String, Vec<u32>>,
) -> Vec<String> {
    // A namespace forgotten here has no identities: nothing to report.
    ns_labels.retain(|name, _| store.namespaces.contains_key(name) || by_ns.contains_key(name));
    let mut changed = Vec::new();
    let empty = Labels::new();
    let seen = store.namespaces.iter().map(|(name, ns)| (name, ns.metadata.labels.as_ref().unwrap_or(&empty)));
    let unseen = by_ns.keys().filter(|name| !store.namespaces.contains_key(*name)).map(|name| (name, &empty));
    for (name, labels) in seen.chain(unseen) {
        // Set by the API server; as the name when a manifest leaves it out.
        let name_label = labels.get(NAMESPACE_NAME_LABEL).unwrap_or(name);
        let extra = usize::from(!labels.contains_key(NAMESPACE_NAME_LABEL));
        let same = ns_labels.get(name).is_some_and(|now| {
            now.len() == labels.len() + extra
                && now.get(NAMESPACE_NAME_LABEL) == Some(name_label)
                && labels.iter().all(|(k, v)| now.get(k) == Some(v))
        });
        if !same {
            let mut l = labels.clone();
            l.entry(NAMESPACE_NAME_LABEL.to_string()).or_insert_with(|| name.clone());
            ns_labels.insert(name.clone(), l);
            changed.push(name.clone());
        }
    }
    changed
}

/// This node's endpoint records by the pod they belong to, the records'
/// addresses to their ifindex, and the records no pod takes (the pod is
/// missing, another incarnation, or not taking part), sorted. A record
/// claiming an ifindex an earlier one (by ifindex, container, interface)
/// holds is a [`Diagnostic`] and ignored.
#[allow(clippy::type_complexity)]
fn match_local_records<'s>(
    store: &'s Store,
    locals: &'s [EndpointRecord],
    diags: &mut Vec<Diagnostic>,
) -> (HashMap<&'s Key, Vec<&'s EndpointRecord>>, HashMap<IpAddr, u32>, Vec<UnmatchedRecord>) {
    let mut unmatched = Vec::new();
    let mut local_of_pod: HashMap<&Key, Vec<&EndpointRecord>> = HashMap::new();
    let mut ip_to_ifindex: HashMap<IpAddr, u32> = HashMap::new();
    let mut seen_ifindex: HashSet<u32> = HashSet::new();
    let mut sorted_locals: Vec<&EndpointRecord> = locals.iter().collect();
    sorted_locals.sort_by(|a, b| {
        (a.host_ifindex, &a.container_id, &a.ifname).cmp(&(b.host_ifindex, &b.container_id, &b.ifname))
    });
    for r in sorted_locals {
        if !seen_ifindex.insert(r.host_ifindex) {
            diags.push(Diagnostic {
                object: format!("EndpointRecord {}/{}", r.container_id, r.ifname),
                field: "hostIfindex".into(),
                message: format!("ifindex {} is claimed by another record too; this one is ignored", r.host_ifindex),
            });
            continue;
        }
        for ip in &r.ips {
            ip_to_ifindex.insert(*ip, r.host_ifindex);
        }
        let key = (r.pod_namespace.clone(), r.pod_name.clone());
        let reason = match store.pods.get_key_value(&key) {
            _ if r.pod_namespace.is_empty() || r.pod_name.is_empty() => Some(Unmatched::NoPodIdentity),
            None => Some(Unmatched::NoSuchPod),
            Some((_, pod)) if !(r.pod_uid.is_empty() || pod.uid.as_deref().is_none_or(|u| u == r.pod_uid)) => {
                Some(Unmatched::OtherIncarnation)
            }
            Some((_, pod)) if !pod_is_eligible(pod) => Some(Unmatched::NotTakingPart),
            Some((k, _)) => {
                local_of_pod.entry(k).or_default().push(r);
                None
            }
        };
        if let Some(reason) = reason {
            unmatched.push(UnmatchedRecord {
                record: format!("{}/{}", r.container_id, r.ifname),
                pod: format!("{}/{}", r.pod_namespace, r.pod_name),
                reason,
            });
        }
    }
    unmatched.sort();
    (local_of_pod, ip_to_ifindex, unmatched)
}

/// What the engine made of one pod. Nothing here tells whether the pod
/// changed: the store's journal does.
struct PodDigest {
    /// 0 when the pod takes no part in policy (host network, finished).
    identity: u32,
    running: bool,
    /// creationTimestamp as (seconds, nanoseconds), ordered as the instant.
    created: Option<(i64, i32)>,
    /// Named ports, sorted and deduplicated (for resolution).
    ports: Arc<[NamedPort]>,
    status_ips: Box<[IpAddr]>,
    /// The addresses of its endpoint records when it is this node's pod:
    /// they, not its status, are what it claims then.
    local_ips: Option<Box<[IpAddr]>>,
}

impl PodDigest {
    /// Read `pod`: its identity (assigned in `stage`'s allocator), ports
    /// (shared through `stage`'s sets) and addresses; what cannot be read
    /// goes to `diags`.
    fn new(key: &Key, pod: &StoredPod, stage: &mut IdentityStage, diags: &mut Vec<Diagnostic>) -> PodDigest {
        let names = &mut stage.port_names;
        let mut ports: Vec<NamedPort> = pod_named_ports(pod).map(|(n, p, x)| (shared(names, n), p, x)).collect();
        ports.sort();
        ports.dedup();
        let ports = shared(&mut stage.port_lists, ports.as_slice());
        let eligible = pod_is_eligible(pod);
        PodDigest {
            identity: if eligible { stage.ids.assign(&key.0, &pod.labels, stage.generation) } else { 0 },
            running: pod.phase.as_deref() == Some("Running"),
            created: pod.created.as_ref().map(|t| (t.0.as_second(), t.0.subsec_nanosecond())),
            ports,
            status_ips: if eligible { pod_status_ips(pod, key, diags).into() } else { Box::default() },
            local_ips: None,
        }
    }

    /// The addresses the pod claims (none when it takes no part).
    fn claimed(&self) -> &[IpAddr] {
        match (self.identity, &self.local_ips) {
            (0, _) => &[],
            (_, Some(ips)) => ips,
            (_, None) => &self.status_ips,
        }
    }

    /// Its claims' rank; `key` is its own.
    fn rank<'a>(&self, key: &'a Key) -> Rank<'a> {
        (self.local_ips.is_some(), self.running, self.created, key)
    }
}

/// The one allocation of `value` in `set`, made on first sight.
fn shared<T: ?Sized + Eq + std::hash::Hash>(set: &mut HashSet<Arc<T>>, value: &T) -> Arc<T>
where
    for<'a> &'a T: Into<Arc<T>>,
{
    if let Some(a) = set.get(value) {
        return a.clone();
    }
    let a: Arc<T> = value.into();
    set.insert(a.clone());
    a
}

/// Pods that take part in policy: not host-network (their address is the
/// node's), not finished (their address may already belong to another pod).
pub(super) fn pod_is_eligible(pod: &StoredPod) -> bool {
    !pod.host_network && !matches!(pod.phase.as_deref(), Some("Succeeded") | Some("Failed"))
}

/// A pod's addresses by its status ([`StoredPod::status_ips`]), sorted;
/// text that is no address is a [`Diagnostic`] naming its field.
fn pod_status_ips(pod: &StoredPod, key: &Key, diags: &mut Vec<Diagnostic>) -> Vec<IpAddr> {
    let (field, ips) = pod.status_ips();
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        match ip {
            StatusIp::Addr(a) => out.push(*a),
            StatusIp::Malformed(s) if s.is_empty() => {}
            StatusIp::Malformed(s) => diags.push(Diagnostic {
                object: format!("Pod {}/{}", key.0, key.1),
                field: match field {
                    IpsField::PodIps => format!("status.podIPs[{i}].ip"),
                    IpsField::PodIp => "status.podIP".to_string(),
                },
                message: format!("{s:?} is not an IP address; the pod is not reachable by identity at it"),
            }),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Named container ports of a pod (containers and restartable init
/// containers, i.e. sidecars), in declaration order: the store keeps only
/// those a policy can name ([`StoredPod::named_ports`]).
pub(super) fn pod_named_ports(pod: &StoredPod) -> impl Iterator<Item = (&str, u8, u16)> {
    pod.named_ports.iter().map(|p| (&*p.name, p.protocol, p.port))
}
