//! Stage 1 of a compile, the identities: pods sharing namespace and labels
//! share one number (>= 256); this node's endpoint records are matched to
//! their pods; every pod's addresses are claims for the ipcache.
//!
//! Takes the [`Store`] and the endpoint records; hands on [`Identities`]:
//! the [`Universe`] selectors are evaluated in, the identities whose peer
//! set membership may have changed since the previous compile (for the
//! rule stage's peer sets), the local endpoints (for the endpoint stage)
//! and the [`Addresses`] (for the ipcache stage). Unchanged pods reuse
//! their [`PodDigest`]: a merge walk over sorted keys, no hashing of
//! labels, no allocation. When no pod was written since the last walk
//! (the store's [`Stamp`]) and this node's endpoint records are the same,
//! there is no walk at all: a policy, namespace or Service change costs
//! nothing here however many pods the cluster has.

use super::endpoints::LocalEp;
use super::identity::IdentityAllocator;
use super::ipcache::{Addresses, Claim, Rank};
use super::{
    CompileStats, Diagnostic, IdentityLabels, IdentityTable, Labels, NamedPort, Unmatched, UnmatchedRecord,
    NAMESPACE_NAME_LABEL,
};
use crate::store::{IpsField, Key, NamedContainerPort, Stamp, StatusIp, Store, StoredPod};
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
    pub(super) addresses: Addresses<'s>,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// This node's endpoint records no pod takes (sorted).
    pub(super) unmatched: Vec<UnmatchedRecord>,
}

/// What the identity stage keeps between compiles.
pub(super) struct IdentityStage {
    pub(super) ids: IdentityAllocator,
    /// Compiles so far: identities unused for a while are forgotten.
    generation: u64,
    /// Sorted by key, like the store.
    pods: Vec<(Key, Box<PodDigest>)>,
    port_names: HashSet<Arc<str>>,
    /// The previous compile's universe, given back with [`IdentityStage::keep`].
    previous: Universe,
    /// What the last walk over the pods read: the pods' stamp and this
    /// node's endpoint records. While both are the same, no pod needs
    /// reading again.
    walked: Option<(Stamp, Vec<EndpointRecord>)>,
    /// The pods' diagnostics, as the last walk found them.
    pod_diags: Vec<Diagnostic>,
    /// The universe's identities as handed on, while none came or went.
    table: Option<Arc<IdentityTable>>,
}

impl Default for IdentityStage {
    fn default() -> Self {
        IdentityStage {
            ids: IdentityAllocator::new(),
            generation: 0,
            pods: Vec::new(),
            port_names: HashSet::new(),
            previous: Universe::default(),
            walked: None,
            pod_diags: Vec::new(),
            table: None,
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
        let stamp = store.pods.stamp();
        if self.walked.as_ref().is_some_and(|(s, l)| *s == stamp && l.as_slice() == locals) {
            return self.same_pods(store, locals);
        }
        let found = self.walk(store, locals, stats);
        self.walked = Some((stamp, locals.to_vec()));
        found
    }

    /// The pods and endpoint records are what the last walk read: its
    /// identities, named ports and addresses stand. Only namespace labels
    /// can have moved.
    fn same_pods<'s>(&mut self, store: &'s Store, locals: &'s [EndpointRecord]) -> Identities<'s> {
        let mut diags: Vec<Diagnostic> = Vec::new();
        let (local_of_pod, ip_to_ifindex, unmatched) = match_local_records(store, locals, &mut diags);
        diags.extend(self.pod_diags.iter().cloned());
        let mut uni = std::mem::take(&mut self.previous);
        let before = std::mem::replace(&mut uni.ns_labels, namespace_labels(store, &uni.by_ns));
        let changed = relabelled(&before, &uni).collect();
        let mut locals_ep = Vec::new();
        for (key, records) in local_of_pod {
            let Ok(at) = self.pods.binary_search_by(|(k, _)| k.cmp(key)) else { continue };
            let dg = &self.pods[at].1;
            if dg.identity == 0 {
                continue;
            }
            let pod = &store.pods[key];
            for r in records {
                locals_ep.push(LocalEp {
                    ifindex: r.host_ifindex,
                    pod_key: key.clone(),
                    pod,
                    identity: dg.identity,
                    own_ports: dg.ports.clone(),
                });
            }
        }
        locals_ep.sort_by_key(|e| e.ifindex);
        Identities {
            universe: uni,
            changed,
            endpoints: locals_ep,
            addresses: Addresses { claims: None, local_ifindex: ip_to_ifindex, pods_changed: false },
            diagnostics: diags,
            unmatched,
        }
    }

    /// Walk every pod: those whose digest is unchanged reuse it, the others
    /// are read again.
    fn walk<'s>(&mut self, store: &'s Store, locals: &'s [EndpointRecord], stats: &mut CompileStats) -> Identities<'s> {
        self.generation += 1;
        let generation = self.generation;
        let mut diags: Vec<Diagnostic> = Vec::new();
        let (local_of_pod, ip_to_ifindex, unmatched) = match_local_records(store, locals, &mut diags);

        let mut old_uni = std::mem::take(&mut self.previous);
        let mut uni = Universe::default();
        let mut added: Vec<u32> = Vec::new();
        let mut claims: Vec<Claim> = Vec::with_capacity(store.pods.len());
        let mut locals_ep: Vec<LocalEp> = Vec::new();
        // Merge walks over sorted keys (store, previous digests, local
        // records): no hashing per pod.
        let mut local_sorted: Vec<(&Key, Vec<&EndpointRecord>)> = local_of_pod.into_iter().collect();
        local_sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut local_iter = local_sorted.into_iter().peekable();
        let mut old_pods = std::mem::take(&mut self.pods).into_iter().peekable();
        let mut new_pods: Vec<(Key, Box<PodDigest>)> = Vec::with_capacity(store.pods.len());
        let mut pods_read = 0usize;
        let mut pods_removed = false;
        let mut pod_diags: Vec<Diagnostic> = Vec::new();
        for (key, pod) in &store.pods {
            let labels = &*pod.labels;
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
                        uni.identities.get(&id).or_else(|| old_uni.identities.get(&id))
                    }) =>
                {
                    (k, dg)
                }
                _ => (key.clone(), {
                    pods_read += 1;
                    Box::new(PodDigest::new(key, pod, labels, &mut self.ids, &mut self.port_names, generation))
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
            pod_diags.extend(dg.diags.iter().cloned());
            let id = dg.identity;
            if let std::collections::btree_map::Entry::Vacant(v) = uni.identities.entry(id) {
                let info = match old_uni.identities.remove(&id) {
                    Some(info) => info,
                    None => {
                        added.push(id);
                        IdentityLabels { namespace: key.0.clone(), labels: labels.clone() }
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
        stats.pods_read += pods_read;
        if self.port_names.len() > 4096 {
            self.port_names.retain(|n| Arc::strong_count(n) > 1);
        }
        uni.ns_labels = namespace_labels(store, &uni.by_ns);
        locals_ep.sort_by_key(|e| e.ifindex);

        // What peer sets must re-evaluate: identities that vanished (left
        // in old_uni), appeared, or whose namespace's labels changed.
        if !(old_uni.identities.is_empty() && added.is_empty()) {
            self.table = None;
        }
        let mut changed: BTreeSet<u32> = old_uni.identities.keys().copied().collect();
        changed.extend(added);
        changed.extend(relabelled(&old_uni.ns_labels, &uni));
        let ports_changed = differing_keys(&old_uni.named_ports, &uni.named_ports);
        uni.named_ports_version = old_uni.named_ports_version + u64::from(!ports_changed.is_empty());
        changed.extend(ports_changed);
        for info in uni.identities.values() {
            self.ids.touch(info, generation);
        }
        self.ids.collect_garbage(uni.identities.len(), generation, 4096);
        diags.extend(pod_diags.iter().cloned());
        self.pod_diags = pod_diags;

        Identities {
            universe: uni,
            changed,
            endpoints: locals_ep,
            addresses: Addresses {
                claims: Some(claims),
                local_ifindex: ip_to_ifindex,
                pods_changed: pods_read > 0 || pods_removed,
            },
            diagnostics: diags,
            unmatched,
        }
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

/// Keys present in one map only, or with different values.
fn differing_keys<V: PartialEq>(a: &BTreeMap<u32, V>, b: &BTreeMap<u32, V>) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().filter(|(k, v)| b.get(k) != Some(*v)).map(|(k, _)| *k).collect();
    out.extend(b.keys().filter(|k| !a.contains_key(k)));
    out
}

/// Every namespace's labels, with the name label the API server sets; a
/// namespace of pods (`by_ns`) whose Namespace is not seen yet has that
/// label alone.
fn namespace_labels(store: &Store, by_ns: &BTreeMap<String, Vec<u32>>) -> BTreeMap<String, Labels> {
    let mut ns_labels: BTreeMap<String, Labels> = BTreeMap::new();
    for (name, ns) in &store.namespaces {
        let mut l = ns.metadata.labels.clone().unwrap_or_default();
        l.entry(NAMESPACE_NAME_LABEL.to_string()).or_insert_with(|| name.clone());
        ns_labels.insert(name.clone(), l);
    }
    for ns in by_ns.keys() {
        if !ns_labels.contains_key(ns) {
            ns_labels.insert(ns.clone(), Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())]));
        }
    }
    ns_labels
}

/// The identities of `uni` in namespaces whose labels differ from `before`.
fn relabelled<'a>(before: &'a BTreeMap<String, Labels>, uni: &'a Universe) -> impl Iterator<Item = u32> + 'a {
    uni.ns_labels
        .iter()
        .filter(move |(ns, l)| before.get(*ns) != Some(*l))
        .flat_map(move |(ns, _)| uni.by_ns.get(ns).into_iter().flatten().copied())
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

/// What the engine read from one pod, and what it made of it.
struct PodDigest {
    version: Option<(Option<Box<str>>, Box<str>)>,
    uid: Option<Box<str>>,
    host_network: bool,
    phase: Option<Arc<str>>,
    created: Option<i128>,
    pod_ip: Option<StatusIp>,
    pod_ips: Box<[StatusIp]>,
    /// Named ports in container order (for change detection; the store's
    /// list, shared)...
    ports_seq: Option<Arc<[NamedContainerPort]>>,
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
        pod: &StoredPod,
        labels: &Labels,
        ids: &mut IdentityAllocator,
        names: &mut HashSet<Arc<str>>,
        generation: u64,
    ) -> PodDigest {
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
        let mut ports: Vec<NamedPort> = pod_named_ports(pod).map(|(n, p, x)| (intern(n), p, x)).collect();
        ports.sort();
        ports.dedup();
        let mut diags = Vec::new();
        let eligible = pod_is_eligible(pod);
        let version = pod_version(pod);
        // With a resourceVersion, change detection needs nothing else:
        // keep the copies only for sources that set none.
        let keep = version.is_none();
        PodDigest {
            version,
            uid: pod.uid.clone().filter(|_| keep),
            host_network: pod.host_network,
            phase: pod.phase.clone().filter(|_| keep),
            created: pod.created.as_ref().map(|t| t.0.as_nanosecond()),
            pod_ip: pod.pod_ip.clone().filter(|_| keep),
            pod_ips: if keep { pod.pod_ips.clone() } else { Box::default() },
            ports_seq: keep.then(|| pod.named_ports.clone()),
            ports,
            identity: if eligible { ids.assign(&key.0, labels, generation) } else { 0 },
            running: pod.phase.as_deref() == Some("Running"),
            status_ips: if eligible { pod_status_ips(pod, key, &mut diags) } else { Vec::new() },
            diags,
        }
    }

    /// Whether `pod` still reads as this digest. `labels_of` gives the
    /// labels of an identity (identities map to one label set for life).
    fn unchanged<'a>(
        &self,
        pod: &StoredPod,
        labels: &Labels,
        labels_of: impl Fn(u32) -> Option<&'a IdentityLabels>,
    ) -> bool {
        if let Some((u, sv)) = &self.version {
            // Fields were not kept for versioned pods: a new version is a change.
            return pod.resource_version.as_ref() == Some(sv) && *u == pod.uid;
        }
        // Labels matter only to pods that take part (identity != 0); a pod
        // that starts taking part changes phase or hostNetwork, caught below.
        (self.identity == 0 || labels_of(self.identity).is_some_and(|l| l.labels == *labels))
            && self.uid == pod.uid
            && self.host_network == pod.host_network
            && self.phase == pod.phase
            && self.created == pod.created.as_ref().map(|t| t.0.as_nanosecond())
            && self.pod_ip == pod.pod_ip
            && self.pod_ips == pod.pod_ips
            && self.ports_seq.as_ref() == Some(&pod.named_ports)
    }
}

/// (uid, resourceVersion) of a pod, when its source sets them.
fn pod_version(pod: &StoredPod) -> Option<(Option<Box<str>>, Box<str>)> {
    pod.resource_version.as_ref().filter(|v| !v.is_empty()).map(|v| (pod.uid.clone(), v.clone()))
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
