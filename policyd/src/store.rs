//! The cluster as policyd sees it: the objects every source fills and the
//! policy engine reads. Sources differ (Kubernetes API, manifest directory);
//! what they produce is this, with identical semantics: [`Object`]s, sent
//! as [`SourceEvent`]s (the stream's contract is `crate::source`'s) and
//! folded into a [`Store`].

use crate::cluster_network_policy::ClusterNetworkPolicy;
use crate::engine::Labels;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// (namespace, name) of a namespaced object.
pub type Key = (String, String);

#[derive(Debug, Clone, Default)]
pub struct Store {
    pub namespaces: Journaled<String, Namespace>,
    pub pods: Pods,
    pub services: Journaled<Key, Service>,
    pub policies: Journaled<Key, NetworkPolicy>,
    pub nodes: BTreeMap<String, Node>,
    pub cluster_policies: Journaled<String, ClusterNetworkPolicy>,
}

/// A Pod as the store keeps it: what policy, flow names and explanations
/// read of it, and nothing more. A typed k8s-openapi Pod is about 7 KB
/// even trimmed (mostly empty optional fields, 2 KB per container); at
/// 150,000 pods that was a gigabyte. This is a few hundred bytes, most of
/// them the uid and resourceVersion: label sets, named port lists and
/// phases are shared by the pods of one [`Pods`] holding equal ones.
///
/// Made from a k8s Pod by `From` (one conversion, used by
/// [`Store::apply`] and [`Pods::insert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPod {
    /// metadata.uid: tells two incarnations of one name apart.
    pub uid: Option<Box<str>>,
    /// metadata.resourceVersion.
    pub resource_version: Option<Box<str>>,
    /// metadata.creationTimestamp: of pods claiming one address, the
    /// older wins.
    pub created: Option<Time>,
    /// metadata.labels (none: empty). Change them in place with
    /// [`StoredPod::labels_mut`]; the map shares them again at its next
    /// write.
    pub labels: Arc<Labels>,
    /// spec.hostNetwork (absent: false).
    pub host_network: bool,
    /// status.phase.
    pub phase: Option<Arc<str>>,
    /// status.podIP.
    pub pod_ip: Option<StatusIp>,
    /// status.podIPs, in order.
    pub pod_ips: Box<[StatusIp]>,
    /// The named container ports, in declaration order: containers', then
    /// sidecars' (init containers with restartPolicy Always), as named
    /// ports in policies resolve against them. Only ports a policy can
    /// name: with a name, a protocol policy knows (TCP when absent) and a
    /// number of 1 to 65535.
    pub named_ports: Arc<[NamedContainerPort]>,
}

/// One named container port, as [`StoredPod::named_ports`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedContainerPort {
    pub name: Box<str>,
    /// IP protocol number (6, 17 or 132).
    pub protocol: u8,
    pub port: u16,
}

/// One address of a pod's status, read once when the pod is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatusIp {
    Addr(IpAddr),
    /// Text that is no address (or empty), as the status had it: the
    /// engine names it in a diagnostic.
    Malformed(Box<str>),
}

impl StatusIp {
    fn read(s: String) -> StatusIp {
        match s.parse() {
            Ok(a) => StatusIp::Addr(a),
            Err(_) => StatusIp::Malformed(s.into()),
        }
    }

    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            StatusIp::Addr(a) => Some(*a),
            StatusIp::Malformed(_) => None,
        }
    }
}

/// Which status field a pod's addresses are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpsField {
    /// status.podIPs (the list is not empty).
    PodIps,
    /// status.podIP, for a status with no podIPs.
    PodIp,
}

impl StoredPod {
    /// The addresses a pod's status gives, and the field they are read
    /// from: podIPs, or podIP when that list is empty or absent (the API
    /// server sets both; other sources may set either): the engine's rule.
    pub fn status_ips(&self) -> (IpsField, &[StatusIp]) {
        if self.pod_ips.is_empty() {
            (IpsField::PodIp, self.pod_ip.as_slice())
        } else {
            (IpsField::PodIps, &self.pod_ips)
        }
    }

    /// The labels to change in place: this pod's own copy from then on.
    pub fn labels_mut(&mut self) -> &mut Labels {
        Arc::make_mut(&mut self.labels)
    }
}

impl From<Pod> for StoredPod {
    fn from(pod: Pod) -> StoredPod {
        let Pod { metadata, spec, status } = pod;
        let (host_network, named_ports) = match spec {
            Some(spec) => {
                let sidecars = spec
                    .init_containers
                    .into_iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"));
                let ports: Vec<NamedContainerPort> = spec
                    .containers
                    .into_iter()
                    .chain(sidecars)
                    .flat_map(|c| c.ports.into_iter().flatten())
                    .filter_map(|p| {
                        let protocol = crate::engine::ports::protocol_number(p.protocol.as_deref())?;
                        let port = u16::try_from(p.container_port).ok().filter(|n| *n != 0)?;
                        Some(NamedContainerPort { name: p.name?.into(), protocol, port })
                    })
                    .collect();
                (spec.host_network.unwrap_or(false), ports)
            }
            None => (false, Vec::new()),
        };
        let status = status.unwrap_or_default();
        StoredPod {
            uid: metadata.uid.map(Into::into),
            resource_version: metadata.resource_version.map(Into::into),
            created: metadata.creation_timestamp,
            labels: Arc::new(metadata.labels.unwrap_or_default()),
            host_network,
            phase: status.phase.map(Into::into),
            pod_ip: status.pod_ip.map(StatusIp::read),
            pod_ips: status.pod_ips.into_iter().flatten().map(|p| StatusIp::read(p.ip)).collect(),
            named_ports: named_ports.into(),
        }
    }
}

/// Values handed out as one allocation per distinct value. An entry no pod
/// holds any more (the set's own reference is the only one) is dropped at
/// the next pruning ([`Shared::wrote`]).
#[derive(Debug)]
struct Interned<T: ?Sized + Eq + Hash>(HashSet<Arc<T>>);

impl<T: ?Sized + Eq + Hash> Default for Interned<T> {
    fn default() -> Self {
        Interned(HashSet::new())
    }
}

impl<T: ?Sized + Eq + Hash + ToOwned> Interned<T>
where
    T::Owned: Into<Arc<T>>,
{
    /// Make `a` the shared allocation of its value. A value not seen
    /// before is taken as it is when nothing else holds it, else copied:
    /// an entry must not be kept alive by another map's pods or entries,
    /// or it could never be pruned here. (The engine's identities hold the
    /// label sets of their pods, so a label set outlives its last pod as
    /// long as its identity number is kept.)
    fn share(&mut self, a: &mut Arc<T>) {
        if let Some(s) = self.0.get(&**a) {
            if !Arc::ptr_eq(s, a) {
                *a = s.clone();
            }
            return;
        }
        if Arc::strong_count(a) > 1 {
            *a = (**a).to_owned().into();
        }
        self.0.insert(a.clone());
    }

    fn prune(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// What the pods of one map share: equal label sets, named port lists and
/// phases are one allocation each. Most pods are replicas: at 150,000 pods
/// there are a few thousand distinct label sets and a handful of port lists.
#[derive(Debug, Default)]
struct Shared {
    labels: Interned<Labels>,
    ports: Interned<[NamedContainerPort]>,
    phases: Interned<str>,
    /// Writes since the last pruning, and the entries left by it. Pruning
    /// once the writes outnumber those (plus a few) costs each write O(1)
    /// on average, and keeps what no pod holds within a small multiple of
    /// what was live: a churn of ever new label sets does not grow it.
    writes: usize,
    live: usize,
}

impl Shared {
    fn share(&mut self, pod: &mut StoredPod) {
        self.labels.share(&mut pod.labels);
        self.ports.share(&mut pod.named_ports);
        if let Some(p) = pod.phase.as_mut() {
            self.phases.share(p);
        }
    }

    /// Count a write; prune when enough came since the last pruning.
    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes > self.live + 64 {
            self.prune();
        }
    }

    fn prune(&mut self) {
        self.labels.prune();
        self.ports.prune();
        self.phases.prune();
        self.writes = 0;
        self.live = self.labels.0.len() + self.ports.0.len() + self.phases.0.len();
    }

    fn clear(&mut self) {
        *self = Shared::default();
    }
}

/// The pods by key: a [`Journaled`] map that also keeps equal label sets
/// (and port lists, phases) of its pods one allocation. Reads go through
/// `Deref`; every write goes through a method here.
#[derive(Debug, Default)]
pub struct Pods {
    map: Journaled<Key, StoredPod>,
    shared: Shared,
    /// Pods handed out to be changed in place ([`Pods::get_mut`] and
    /// co.): their values are shared again at the next write.
    loose: Loose,
}

/// Which pods may hold values of their own since the last write.
#[derive(Debug, Default)]
enum Loose {
    #[default]
    None,
    One(Key),
    All,
}

/// A map that stamps and journals its writes, so that a reader can tell
/// that nothing changed since it last looked, or which keys did, without
/// walking a cluster's objects. Reads go through `Deref`; every write goes
/// through a method here, which is what makes the stamp trustworthy.
#[derive(Debug)]
pub struct Journaled<K, V> {
    map: BTreeMap<K, V>,
    stamp: Stamp,
    journal: Journal<K>,
}

/// The keys of the latest writes, one per write in order, so that a reader
/// holding an older [`Stamp`] of the map can visit only the keys written
/// since ([`Journaled::written_since`]). Writes to every key at once (clear,
/// retain, `values_mut`) and the oldest half, once it is full, are
/// forgotten: a reader that far behind reads every object.
#[derive(Debug)]
struct Journal<K> {
    /// The write count `keys[0]` was written at.
    first: u64,
    keys: std::collections::VecDeque<K>,
}

/// Keys a journal holds at most: a reader that falls this far behind
/// (thousands of events between two compiles) walks every object anyway.
const JOURNAL_MAX: usize = 8192;

/// Which map and how many writes it has had: two equal stamps, read at
/// two moments, mean the same contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    map: u64,
    writes: u64,
}

impl Default for Stamp {
    /// A map never seen before: a fresh number, so a new or cloned map
    /// never shares a stamp with another one.
    fn default() -> Self {
        static MAPS: AtomicU64 = AtomicU64::new(1);
        Stamp { map: MAPS.fetch_add(1, Ordering::Relaxed), writes: 0 }
    }
}

impl<K> Default for Journal<K> {
    fn default() -> Self {
        Journal { first: 0, keys: Default::default() }
    }
}

impl<K, V> Default for Journaled<K, V> {
    fn default() -> Self {
        Journaled { map: BTreeMap::new(), stamp: Stamp::default(), journal: Journal::default() }
    }
}

impl<K: Clone, V: Clone> Clone for Journaled<K, V> {
    /// The clone's writes are its own: it gets a stamp of its own.
    fn clone(&self) -> Self {
        Journaled { map: self.map.clone(), ..Default::default() }
    }
}

impl<K, V> Deref for Journaled<K, V> {
    type Target = BTreeMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Ord + Clone, V> Journaled<K, V> {
    /// What the map is now; a write after this makes a different one.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The keys written since `stamp` was read from this map, in write
    /// order and possibly repeated; None when that is not known (another
    /// map, or writes the journal no longer holds): read every object then.
    pub fn written_since(&self, stamp: Stamp) -> Option<impl Iterator<Item = &K>> {
        let skip = stamp.writes.checked_sub(self.journal.first)?;
        (stamp.map == self.stamp.map && stamp.writes <= self.stamp.writes)
            .then(|| self.journal.keys.iter().skip(skip as usize))
    }

    /// One key written.
    fn wrote(&mut self, key: K) {
        if self.journal.keys.len() == JOURNAL_MAX {
            self.journal.keys.drain(..JOURNAL_MAX / 2);
            self.journal.first += (JOURNAL_MAX / 2) as u64;
        }
        self.journal.keys.push_back(key);
        self.stamp.writes += 1;
    }

    /// Every key written: no reader can tell which from the journal.
    fn wrote_all(&mut self) {
        self.stamp.writes += 1;
        self.journal = Journal { first: self.stamp.writes, keys: Default::default() };
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.wrote(key.clone());
        self.map.insert(key, value)
    }

    pub fn remove<Q: Ord + ToOwned<Owned = K> + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.wrote(key.to_owned());
        self.map.remove(key)
    }

    /// A value to change in place (counted as a write whether or not it is).
    pub fn get_mut<Q: Ord + ToOwned<Owned = K> + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.wrote(key.to_owned());
        self.map.get_mut(key)
    }

    /// Every value, to change in place (counted as a write to each).
    pub fn values_mut(&mut self) -> std::collections::btree_map::ValuesMut<'_, K, V> {
        self.wrote_all();
        self.map.values_mut()
    }

    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.wrote_all();
        self.map.retain(keep)
    }

    pub fn clear(&mut self) {
        self.wrote_all();
        self.map.clear()
    }
}

impl<'a, K, V> IntoIterator for &'a Journaled<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for Journaled<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Journaled { map: iter.into_iter().collect(), ..Default::default() }
    }
}

impl Clone for Pods {
    /// The clone's writes are its own: it gets a stamp of its own, and
    /// allocations of its own for what its pods share (another map's
    /// would never be pruned while either holds them).
    fn clone(&self) -> Self {
        let mut shared = Shared::default();
        let map = self
            .map
            .iter()
            .map(|(k, p)| {
                let mut p = p.clone();
                shared.share(&mut p);
                (k.clone(), p)
            })
            .collect();
        shared.prune();
        Pods { map, shared, loose: Loose::None }
    }
}

impl Deref for Pods {
    type Target = BTreeMap<Key, StoredPod>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Pods {
    /// What the map is now; a write after this makes a different one.
    pub fn stamp(&self) -> Stamp {
        self.map.stamp()
    }

    /// The pods written since `stamp` ([`Journaled::written_since`]).
    pub fn written_since(&self, stamp: Stamp) -> Option<impl Iterator<Item = &Key>> {
        self.map.written_since(stamp)
    }

    /// Before every write: pods changed in place since the last one share
    /// their values again (the same values: not a write); now and then,
    /// entries no pod holds any more are dropped.
    fn writing(&mut self) {
        match std::mem::take(&mut self.loose) {
            Loose::None => {}
            Loose::One(key) => {
                if let Some(p) = self.map.map.get_mut(&key) {
                    self.shared.share(p);
                }
            }
            Loose::All => self.share_all(),
        }
        self.shared.wrote();
    }

    fn share_all(&mut self) {
        for p in self.map.map.values_mut() {
            self.shared.share(p);
        }
        self.shared.prune();
    }

    /// Insert or replace a pod (a k8s Pod is converted), sharing its label
    /// set, port list and phase with the pods that have equal ones.
    pub fn insert(&mut self, key: Key, pod: impl Into<StoredPod>) -> Option<StoredPod> {
        self.writing();
        let mut pod = pod.into();
        self.shared.share(&mut pod);
        self.map.insert(key, pod)
    }

    pub fn remove(&mut self, key: &Key) -> Option<StoredPod> {
        self.writing();
        self.map.remove(key)
    }

    /// A pod to change in place (counted as a write whether or not it is).
    pub fn get_mut(&mut self, key: &Key) -> Option<&mut StoredPod> {
        self.writing();
        self.loose = Loose::One(key.clone());
        self.map.get_mut(key)
    }

    /// Every pod, to change in place (counted as a write to each).
    pub fn values_mut(&mut self) -> std::collections::btree_map::ValuesMut<'_, Key, StoredPod> {
        self.writing();
        self.loose = Loose::All;
        self.map.values_mut()
    }

    pub fn retain(&mut self, keep: impl FnMut(&Key, &mut StoredPod) -> bool) {
        self.writing();
        self.map.retain(keep);
        self.share_all();
    }

    pub fn clear(&mut self) {
        self.writing();
        self.map.clear();
        self.shared.clear();
    }
}

impl<'a> IntoIterator for &'a Pods {
    type Item = (&'a Key, &'a StoredPod);
    type IntoIter = std::collections::btree_map::Iter<'a, Key, StoredPod>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<P: Into<StoredPod>> FromIterator<(Key, P)> for Pods {
    fn from_iter<I: IntoIterator<Item = (Key, P)>>(iter: I) -> Self {
        let mut pods = Pods::default();
        for (k, p) in iter {
            pods.insert(k, p);
        }
        pods
    }
}

fn key(r: &ObjectRef) -> Key {
    (r.namespace.clone(), r.name.clone())
}

impl Store {
    /// Insert or replace one object.
    pub fn apply(&mut self, obj: Object) {
        let r = obj.object_ref();
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(r.name, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key(&r), o);
            }
            Object::Service(o) => {
                self.services.insert(key(&r), o);
            }
            Object::NetworkPolicy(o) => {
                self.policies.insert(key(&r), o);
            }
            Object::Node(o) => {
                self.nodes.insert(r.name, o);
            }
            Object::ClusterNetworkPolicy(o) => {
                self.cluster_policies.insert(r.name, o);
            }
        }
    }

    /// Remove one object; false if it was not there.
    pub fn delete(&mut self, r: &ObjectRef) -> bool {
        match r.kind {
            ObjectKind::Namespace => self.namespaces.remove(&r.name).is_some(),
            ObjectKind::Pod => self.pods.remove(&key(r)).is_some(),
            ObjectKind::Service => self.services.remove(&key(r)).is_some(),
            ObjectKind::NetworkPolicy => self.policies.remove(&key(r)).is_some(),
            ObjectKind::Node => self.nodes.remove(&r.name).is_some(),
            ObjectKind::ClusterNetworkPolicy => self.cluster_policies.remove(&r.name).is_some(),
        }
    }

    /// Make `objects` the complete set of `kind` (objects of another kind in
    /// the list are applied too, though sources never send them).
    /// Only what differs is written: a relist that finds what the store
    /// holds writes nothing, and the engine reads only what it changed.
    pub fn replace(&mut self, kind: ObjectKind, objects: Vec<Object>) {
        let listed: std::collections::HashSet<ObjectRef> = objects.iter().map(Object::object_ref).collect();
        let held: Vec<ObjectRef> = match kind {
            ObjectKind::Namespace => self.namespaces.keys().map(|n| ObjectRef::cluster(kind, n)).collect(),
            ObjectKind::Pod => self.pods.keys().map(|k| ObjectRef::namespaced(kind, k)).collect(),
            ObjectKind::Service => self.services.keys().map(|k| ObjectRef::namespaced(kind, k)).collect(),
            ObjectKind::NetworkPolicy => self.policies.keys().map(|k| ObjectRef::namespaced(kind, k)).collect(),
            ObjectKind::Node => self.nodes.keys().map(|n| ObjectRef::cluster(kind, n)).collect(),
            ObjectKind::ClusterNetworkPolicy => {
                self.cluster_policies.keys().map(|n| ObjectRef::cluster(kind, n)).collect()
            }
        };
        for r in held.iter().filter(|r| !listed.contains(*r)) {
            self.delete(r);
        }
        for o in objects {
            let r = o.object_ref();
            match o {
                // Compared as stored: converted once, and only if it differs.
                Object::Pod(p) => {
                    let (k, p) = (key(&r), StoredPod::from(p));
                    if self.pods.get(&k) != Some(&p) {
                        self.pods.insert(k, p);
                    }
                }
                o if !self.holds(&r, &o) => self.apply(o),
                _ => {}
            }
        }
    }

    /// Whether the store holds `obj` (named `r`) as it is; pods are
    /// compared as stored, in [`Store::replace`].
    fn holds(&self, r: &ObjectRef, obj: &Object) -> bool {
        match obj {
            Object::Namespace(o) => self.namespaces.get(&r.name) == Some(o),
            Object::Pod(_) => false,
            Object::Service(o) => self.services.get(&key(r)) == Some(o),
            Object::NetworkPolicy(o) => self.policies.get(&key(r)) == Some(o),
            Object::Node(o) => self.nodes.get(&r.name) == Some(o),
            Object::ClusterNetworkPolicy(o) => self.cluster_policies.get(&r.name) == Some(o),
        }
    }

    /// Fold one source event in.
    pub fn handle(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Apply(o) => self.apply(o),
            SourceEvent::Delete(r) => {
                self.delete(&r);
            }
            SourceEvent::Replace(k, objs) => self.replace(k, objs),
            SourceEvent::Synced => {}
        }
    }

    /// Number of objects of `kind`.
    pub fn len_of(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Namespace => self.namespaces.len(),
            ObjectKind::Pod => self.pods.len(),
            ObjectKind::Service => self.services.len(),
            ObjectKind::NetworkPolicy => self.policies.len(),
            ObjectKind::Node => self.nodes.len(),
            ObjectKind::ClusterNetworkPolicy => self.cluster_policies.len(),
        }
    }
}

/// The kinds policyd reads. Doubles as the `kind` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    Node,
    ClusterNetworkPolicy,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Namespace,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::NetworkPolicy,
        ObjectKind::Node,
        ObjectKind::ClusterNetworkPolicy,
    ];

    /// Lower-case label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Namespace => "namespace",
            ObjectKind::Pod => "pod",
            ObjectKind::Service => "service",
            ObjectKind::NetworkPolicy => "networkpolicy",
            ObjectKind::Node => "node",
            ObjectKind::ClusterNetworkPolicy => "clusternetworkpolicy",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, ObjectKind::Pod | ObjectKind::Service | ObjectKind::NetworkPolicy)
    }

    /// The apiVersion policyd reads the kind in (manifests and the API).
    pub fn api_version(self) -> &'static str {
        match self {
            ObjectKind::NetworkPolicy => "networking.k8s.io/v1",
            ObjectKind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            _ => "v1",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Pod => "Pod",
            ObjectKind::Service => "Service",
            ObjectKind::NetworkPolicy => "NetworkPolicy",
            ObjectKind::Node => "Node",
            ObjectKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        })
    }
}

/// Identity of an object: kind, namespace ("" for cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    fn cluster(kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef { kind, namespace: String::new(), name: name.to_string() }
    }

    fn namespaced(kind: ObjectKind, (namespace, name): &Key) -> ObjectRef {
        ObjectRef { kind, namespace: namespace.clone(), name: name.clone() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of a kind policyd reads (k8s-openapi types, trimmed by
/// [`Object::trim`] to what policy needs).
// Unboxed: objects are moved a handful of times per event, and matching on
// plain k8s-openapi values keeps the engine's code simple.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    NetworkPolicy(NetworkPolicy),
    Node(Node),
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Namespace(_) => ObjectKind::Namespace,
            Object::Pod(_) => ObjectKind::Pod,
            Object::Service(_) => ObjectKind::Service,
            Object::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
            Object::Node(_) => ObjectKind::Node,
            Object::ClusterNetworkPolicy(_) => ObjectKind::ClusterNetworkPolicy,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::ClusterNetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// The object's identity. Cluster-scoped kinds get namespace "" even if
    /// the manifest carried one (the API server ignores it too).
    pub fn object_ref(&self) -> ObjectRef {
        let kind = self.kind();
        let meta = self.meta();
        ObjectRef {
            kind,
            namespace: if kind.namespaced() { meta.namespace.clone().unwrap_or_default() } else { String::new() },
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object as the API would serve it (the lab writes its manifests
    /// from this).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::NetworkPolicy(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::ClusterNetworkPolicy(o) => serde_json::to_value(o),
        }
        .expect("k8s-openapi objects always serialise")
    }

    /// Drop what no policy decision reads, so a large cluster's caches stay
    /// small: managedFields, annotations (kubectl's last-applied copy doubles
    /// every object; a Node keeps its `weir.io/` ones, a Namespace its flow
    /// log choice, a NetworkPolicy its mode), and for Pods/Nodes
    /// the bulky status and spec parts.
    /// Kept on Pods: labels, nodeName, hostNetwork, container ports (named
    /// ports in policies resolve against them), phase and IPs.
    pub fn trim(&mut self) {
        let is_node = matches!(self, Object::Node(_));
        let is_namespace = matches!(self, Object::Namespace(_));
        let is_policy = matches!(self, Object::NetworkPolicy(_));
        let meta = self.meta_mut();
        meta.managed_fields = None;
        // Except a Node's `weir.io/` annotations (its backend data,
        // crate::node), a Namespace's flow log choice and a policy's mode.
        let kept = |k: &str| {
            (is_node && k.starts_with(crate::node::annotations::PREFIX))
                || (is_namespace && k == crate::engine::FLOW_LOG_ANNOTATION)
                || (is_policy && k == crate::engine::policy::MODE_ANNOTATION)
        };
        meta.annotations = meta
            .annotations
            .take()
            .map(|a| a.into_iter().filter(|(k, _)| kept(k)).collect())
            .filter(|a: &std::collections::BTreeMap<String, String>| !a.is_empty());
        match self {
            Object::Pod(p) => {
                if let Some(spec) = p.spec.as_mut() {
                    spec.volumes = None;
                    spec.affinity = None;
                    spec.tolerations = None;
                    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                        let ports = c.ports.take();
                        let name = std::mem::take(&mut c.name);
                        let restart_policy = c.restart_policy.take();
                        *c = Default::default();
                        c.name = name;
                        c.ports = ports;
                        c.restart_policy = restart_policy;
                    }
                    spec.ephemeral_containers = None;
                }
                if let Some(st) = p.status.as_mut() {
                    st.container_statuses = None;
                    st.init_container_statuses = None;
                    st.ephemeral_container_statuses = None;
                    st.conditions = None;
                    st.message = None;
                }
            }
            Object::Node(n) => {
                if let Some(st) = n.status.as_mut() {
                    st.images = None;
                    st.conditions = None;
                    st.node_info = None;
                    st.capacity = None;
                    st.allocatable = None;
                    st.volumes_attached = None;
                    st.volumes_in_use = None;
                }
            }
            _ => {}
        }
    }
}

/// What a source reports.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// The object was added or changed.
    Apply(Object),
    /// The object is gone.
    Delete(ObjectRef),
    /// The complete current set of a kind: every object of that kind not in
    /// the list is gone. Sent for the initial list and after every relist.
    Replace(ObjectKind, Vec<Object>),
    /// Every kind's initial list has been sent. Sent exactly once, after
    /// the initial `Replace` of every kind.
    Synced,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str) -> Key {
        ("ns".to_string(), name.to_string())
    }

    /// A reader is told the keys written since its stamp, and that it
    /// cannot be told once the journal lost them or the map is another.
    #[test]
    fn journal_names_the_keys_written_since_a_stamp() {
        let mut pods = Pods::default();
        pods.insert(k("a"), Pod::default());
        let s1 = pods.stamp();
        assert_eq!(pods.written_since(s1).unwrap().count(), 0);
        pods.insert(k("b"), Pod::default());
        pods.get_mut(&k("a"));
        pods.remove(&k("c"));
        let since: Vec<&Key> = pods.written_since(s1).unwrap().collect();
        assert_eq!(since, [&k("b"), &k("a"), &k("c")]);
        let s2 = pods.stamp();
        assert!(pods.clone().written_since(s2).is_none(), "a clone is another map");
        let _ = pods.values_mut();
        assert!(pods.written_since(s2).is_none(), "a write to every pod");
        let s3 = pods.stamp();
        for i in 0..JOURNAL_MAX {
            pods.insert(k(&i.to_string()), Pod::default());
        }
        assert_eq!(pods.written_since(s3).unwrap().count(), JOURNAL_MAX);
        pods.remove(&k("a"));
        assert!(pods.written_since(s3).is_none(), "the oldest writes are forgotten");
        let tail: Vec<&Key> = pods.written_since(pods.stamp()).unwrap().collect();
        assert!(tail.is_empty());
        let s4 = pods.stamp();
        pods.clear();
        assert!(pods.written_since(s4).is_none());
        assert!(Pods::default().written_since(s4).is_none());
    }

    /// A relist writes only what differs: the engine reads only that.
    #[test]
    fn replace_writes_only_what_differs() {
        let pod = |name: &str, app: &str| -> Object {
            Object::Pod(
                serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "ns",
                    "labels": {"app": app}}}))
                .unwrap(),
            )
        };
        let mut store = Store::default();
        store.replace(ObjectKind::Pod, vec![pod("a", "x"), pod("b", "x"), pod("c", "x")]);
        let before = store.pods.stamp();
        store.replace(ObjectKind::Pod, vec![pod("a", "x"), pod("b", "x"), pod("c", "x")]);
        assert_eq!(store.pods.stamp(), before, "the same list writes nothing");
        store.replace(ObjectKind::Pod, vec![pod("a", "x"), pod("b", "y"), pod("d", "x")]);
        let mut written: Vec<&Key> = store.pods.written_since(before).unwrap().collect();
        written.sort();
        assert_eq!(written, [&k("b"), &k("c"), &k("d")]);
        assert_eq!(store.pods.keys().collect::<Vec<_>>(), [&k("a"), &k("b"), &k("d")]);
        assert_eq!(store.pods[&k("b")].labels["app"], "y");
    }

    /// Trimming keeps the annotations the engine reads (a Namespace's flow
    /// log choice, a NetworkPolicy's mode) on their kinds, and no other.
    #[test]
    fn trim_keeps_only_the_annotations_the_engine_reads() {
        let annotated = |kind: &str| -> Object {
            let v = serde_json::json!({"metadata": {"name": "x", "namespace": "x", "annotations": {
                crate::engine::FLOW_LOG_ANNOTATION: "allow",
                crate::engine::policy::MODE_ANNOTATION: "audit",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            }}});
            match kind {
                "ns" => Object::Namespace(serde_json::from_value(v).unwrap()),
                "np" => Object::NetworkPolicy(serde_json::from_value(v).unwrap()),
                _ => Object::Pod(serde_json::from_value(v).unwrap()),
            }
        };
        let kept = |kind: &str| {
            let mut o = annotated(kind);
            o.trim();
            o.meta().annotations.clone().unwrap_or_default().into_iter().collect::<Vec<_>>()
        };
        assert_eq!(kept("ns"), [(crate::engine::FLOW_LOG_ANNOTATION.to_string(), "allow".to_string())]);
        assert_eq!(kept("np"), [(crate::engine::policy::MODE_ANNOTATION.to_string(), "audit".to_string())]);
        assert_eq!(kept("pod"), []);
    }
}

#[cfg(test)]
mod pod_tests {
    use super::*;
    use serde_json::json;

    fn k8s_pod(name: &str, v: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(v).unwrap();
        p.metadata.namespace = Some("x".into());
        p.metadata.name = Some(name.into());
        p
    }

    fn key(name: &str) -> Key {
        ("x".into(), name.into())
    }

    /// A pod labelled `app: <app>`, Running.
    fn app_pod(name: &str, app: &str) -> Pod {
        k8s_pod(
            name,
            json!({"metadata": {"labels": {"app": app}},
                   "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
                   "status": {"phase": "Running"}}),
        )
    }

    #[test]
    fn a_stored_pod_keeps_what_readers_read() {
        let p = StoredPod::from(k8s_pod(
            "a",
            json!({"metadata": {"uid": "u1", "resourceVersion": "7", "creationTimestamp": "2026-01-02T03:04:05Z",
                                "labels": {"app": "a", "tier": "web"}},
                   "spec": {"hostNetwork": true, "nodeName": "n1", "containers": [{"name": "c"}]},
                   "status": {"phase": "Pending", "podIP": "10.0.0.1",
                              "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}, {"ip": "nope"}, {"ip": ""}]}}),
        ));
        assert_eq!(p.uid.as_deref(), Some("u1"));
        assert_eq!(p.resource_version.as_deref(), Some("7"));
        assert_eq!(p.created.as_ref().map(|t| t.0.to_string()).as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(*p.labels, Labels::from([("app".into(), "a".into()), ("tier".into(), "web".into())]));
        assert!(p.host_network);
        assert_eq!(p.phase.as_deref(), Some("Pending"));
        assert_eq!(p.pod_ip, Some(StatusIp::Addr("10.0.0.1".parse().unwrap())));
        assert_eq!(
            *p.pod_ips,
            [
                StatusIp::Addr("10.0.0.1".parse().unwrap()),
                StatusIp::Addr("fd00::1".parse().unwrap()),
                StatusIp::Malformed("nope".into()),
                StatusIp::Malformed("".into()),
            ]
        );
        assert_eq!(p.status_ips(), (IpsField::PodIps, &p.pod_ips[..]));

        // Absent fields: the defaults readers assumed of the k8s Pod.
        let bare = StoredPod::from(k8s_pod("b", json!({})));
        assert_eq!((bare.uid, bare.resource_version, bare.created), (None, None, None));
        assert!(bare.labels.is_empty() && !bare.host_network && bare.phase.is_none());
        assert!(bare.pod_ip.is_none() && bare.pod_ips.is_empty() && bare.named_ports.is_empty());

        // No podIPs: podIP is what the status gives.
        let one = StoredPod::from(k8s_pod("c", json!({"status": {"podIP": "10.0.0.3"}})));
        assert_eq!(one.status_ips(), (IpsField::PodIp, &[StatusIp::Addr("10.0.0.3".parse().unwrap())][..]));
    }

    /// Only ports a policy can name are kept, parsed, in declaration
    /// order: containers, then sidecars (restartPolicy Always).
    #[test]
    fn named_ports_are_filtered_and_parsed_once() {
        let p = StoredPod::from(k8s_pod(
            "a",
            json!({"spec": {
                "initContainers": [
                    {"name": "init", "ports": [{"name": "init-port", "containerPort": 1}]},
                    {"name": "side", "restartPolicy": "Always", "ports": [{"name": "side", "containerPort": 9000, "protocol": "SCTP"}]},
                    {"name": "never", "restartPolicy": "Never", "ports": [{"name": "never", "containerPort": 2}]}],
                "containers": [
                    {"name": "c1", "ports": [
                        {"containerPort": 8080},
                        {"name": "http", "containerPort": 80},
                        {"name": "icmp", "containerPort": 7, "protocol": "ICMP"},
                        {"name": "zero", "containerPort": 0},
                        {"name": "big", "containerPort": 65536},
                        {"name": "neg", "containerPort": -1},
                        {"name": "max", "containerPort": 65535}]},
                    {"name": "c2", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                             {"name": "http", "containerPort": 81, "protocol": "TCP"}]}]}}),
        ));
        let got: Vec<(&str, u8, u16)> = p.named_ports.iter().map(|n| (&*n.name, n.protocol, n.port)).collect();
        assert_eq!(got, [("http", 6, 80), ("max", 6, 65535), ("dns", 17, 53), ("http", 6, 81), ("side", 132, 9000)]);
        assert!(crate::engine::pod_container_ports(&p).eq(got.iter().copied()));
    }

    /// Pods with equal labels (port lists, phases) hold one allocation;
    /// readers see the values they would without sharing.
    #[test]
    fn equal_values_are_one_allocation() {
        let mut s = Store::default();
        for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
            s.apply(Object::Pod(app_pod(name, app)));
        }
        let [a, b, c] = ["a", "b", "c"].map(|n| &s.pods[&key(n)]);
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(!Arc::ptr_eq(&a.labels, &c.labels));
        assert_eq!(c.labels["app"], "db");
        assert!(Arc::ptr_eq(&a.named_ports, &c.named_ports));
        assert!(Arc::ptr_eq(a.phase.as_ref().unwrap(), c.phase.as_ref().unwrap()));
        assert_eq!(*a, StoredPod::from(app_pod("a", "web")), "sharing changes no value");
    }

    /// A pod changed in place holds its own copy until the next write,
    /// which shares it again.
    #[test]
    fn labels_changed_in_place_are_shared_again_at_the_next_write() {
        let mut pods = Pods::default();
        pods.insert(key("a"), app_pod("a", "web"));
        pods.insert(key("b"), app_pod("b", "db"));
        pods.get_mut(&key("b")).unwrap().labels_mut().insert("app".into(), "web".into());
        assert_eq!(pods[&key("a")].labels, pods[&key("b")].labels);
        pods.remove(&key("nothing"));
        assert!(Arc::ptr_eq(&pods[&key("a")].labels, &pods[&key("b")].labels));

        for p in pods.values_mut() {
            p.labels_mut().insert("v".into(), "2".into());
        }
        pods.insert(key("c"), app_pod("c", "db"));
        assert!(Arc::ptr_eq(&pods[&key("a")].labels, &pods[&key("b")].labels));
        assert_eq!(pods[&key("a")].labels["v"], "2");
    }

    /// What no pod holds any more is released: a churn of label sets
    /// never seen again leaves a bounded set behind.
    #[test]
    fn shared_values_no_pod_holds_are_released() {
        let mut pods = Pods::default();
        pods.insert(key("stays"), app_pod("stays", "web"));
        let gone = {
            pods.insert(key("a"), app_pod("a", "once"));
            Arc::downgrade(&pods[&key("a")].labels)
        };
        for i in 0..10_000 {
            let name = format!("p{i}");
            pods.insert(key(&name), app_pod(&name, &format!("app{i}")));
            pods.remove(&key(&name));
        }
        pods.remove(&key("a"));
        for _ in 0..200 {
            pods.remove(&key("nothing"));
        }
        assert!(gone.upgrade().is_none(), "a label set no pod holds is dropped");
        assert!(pods.shared.labels.0.len() <= 2, "{} label sets kept", pods.shared.labels.0.len());
        assert_eq!(pods[&key("stays")].labels["app"], "web");

        pods.retain(|_, _| false);
        assert!(pods.shared.labels.0.is_empty() && pods.shared.ports.0.is_empty());
        pods.insert(key("a"), app_pod("a", "web"));
        pods.clear();
        assert!(pods.shared.labels.0.is_empty());
    }

    /// A clone shares values among its own pods, not with the original:
    /// either can then release what its pods no longer hold.
    #[test]
    fn a_clone_has_allocations_of_its_own() {
        let mut pods = Pods::default();
        pods.insert(key("a"), app_pod("a", "web"));
        pods.insert(key("b"), app_pod("b", "web"));
        let copy = pods.clone();
        assert_eq!(*copy, *pods);
        assert_ne!(copy.stamp(), pods.stamp());
        assert!(Arc::ptr_eq(&copy[&key("a")].labels, &copy[&key("b")].labels));
        assert!(!Arc::ptr_eq(&copy[&key("a")].labels, &pods[&key("a")].labels));
        // A pod of another map joins this one's shared values.
        let mut other = Pods::default();
        other.insert(key("c"), copy[&key("a")].clone());
        other.insert(key("d"), app_pod("d", "web"));
        assert!(Arc::ptr_eq(&other[&key("c")].labels, &other[&key("d")].labels));
        assert!(!Arc::ptr_eq(&other[&key("c")].labels, &copy[&key("a")].labels));
    }
}
