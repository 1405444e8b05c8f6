//! The cluster as policyd sees it: the objects every source fills and the
//! policy engine reads. Sources differ (Kubernetes API, manifest directory);
//! what they produce is this, with identical semantics: [`Object`]s, sent
//! as [`SourceEvent`]s (the stream's contract is `crate::source`'s) and
//! folded into a [`Store`].

use crate::cluster_network_policy::ClusterNetworkPolicy;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The pods by key.
pub type Pods = Journaled<Key, Pod>;

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
    pub fn replace(&mut self, kind: ObjectKind, objects: Vec<Object>) {
        match kind {
            ObjectKind::Namespace => self.namespaces.clear(),
            ObjectKind::Pod => self.pods.clear(),
            ObjectKind::Service => self.services.clear(),
            ObjectKind::NetworkPolicy => self.policies.clear(),
            ObjectKind::Node => self.nodes.clear(),
            ObjectKind::ClusterNetworkPolicy => self.cluster_policies.clear(),
        }
        for o in objects {
            self.apply(o);
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
