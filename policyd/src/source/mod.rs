//! Where the cluster's objects come from. Two sources, one contract:
//!
//! - [`kube`]: the Kubernetes API (list + watch of Pods, Namespaces,
//!   Services, NetworkPolicies, Nodes), for real clusters.
//! - [`dir`]: a directory of manifests (`kubectl apply` YAML), for the lab
//!   and bare nodes.
//!
//! Each source runs as a tokio task and sends [`SourceEvent`]s over an mpsc
//! channel held by a [`Source`]. Whatever the source, the stream is:
//!
//! 1. one [`SourceEvent::Replace`] per kind (the initial list), then exactly
//!    one [`SourceEvent::Synced`] once EVERY kind's list is in: nothing
//!    before it may be compiled into maps, since a partial view (e.g. pods
//!    listed, policies not yet) would open traffic a policy denies;
//! 2. then [`SourceEvent::Apply`] / [`SourceEvent::Delete`] for changes, and
//!    a [`SourceEvent::Replace`] of a kind whenever the source had to relist
//!    it (after a watch error, 410 Gone or a dropped connection): objects
//!    deleted while disconnected vanish atomically at that point.
//!
//! The consumer folds events into a [`Store`] ([`Store::handle`]) with
//! [`Source::wait_synced`] then [`Source::next_batch`] (which coalesces a
//! burst so one compile covers many changes).

pub mod dir;
pub mod kube;
pub mod last_good;
pub mod manifest;

use crate::metrics::Metrics;
use crate::store::{Key, Store};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The kinds policyd reads. Doubles as the `kind` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    Node,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Namespace,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::NetworkPolicy,
        ObjectKind::Node,
    ];

    /// Lower-case label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Namespace => "namespace",
            ObjectKind::Pod => "pod",
            ObjectKind::Service => "service",
            ObjectKind::NetworkPolicy => "networkpolicy",
            ObjectKind::Node => "node",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(
            self,
            ObjectKind::Pod | ObjectKind::Service | ObjectKind::NetworkPolicy
        )
    }

    /// The apiVersion policyd reads the kind in (manifests and the API).
    pub fn api_version(self) -> &'static str {
        match self {
            ObjectKind::NetworkPolicy => "networking.k8s.io/v1",
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
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Namespace(_) => ObjectKind::Namespace,
            Object::Pod(_) => ObjectKind::Pod,
            Object::Service(_) => ObjectKind::Service,
            Object::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
            Object::Node(_) => ObjectKind::Node,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
        }
    }

    /// The object's identity. Cluster-scoped kinds get namespace "" even if
    /// the manifest carried one (the API server ignores it too).
    pub fn object_ref(&self) -> ObjectRef {
        let kind = self.kind();
        let meta = self.meta();
        ObjectRef {
            kind,
            namespace: if kind.namespaced() {
                meta.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
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
        }
        .expect("k8s-openapi objects always serialise")
    }

    /// Drop what no policy decision reads, so a large cluster's caches stay
    /// small: managedFields, annotations (kubectl's last-applied copy doubles
    /// every object; a Node keeps its `weir.io/` ones), and for Pods/Nodes
    /// the bulky status and spec parts.
    /// Kept on Pods: labels, nodeName, hostNetwork, container ports (named
    /// ports in policies resolve against them), phase and IPs.
    pub fn trim(&mut self) {
        let is_node = matches!(self, Object::Node(_));
        let meta = self.meta_mut();
        meta.managed_fields = None;
        // Except a Node's `weir.io/` annotations: its backend data (crate::node).
        meta.annotations = meta
            .annotations
            .take()
            .map(|a| a.into_iter().filter(|(k, _)| is_node && k.starts_with(crate::node::annotations::PREFIX)).collect())
            .filter(|a: &std::collections::BTreeMap<String, String>| !a.is_empty());
        match self {
            Object::Pod(p) => {
                if let Some(spec) = p.spec.as_mut() {
                    spec.volumes = None;
                    spec.affinity = None;
                    spec.tolerations = None;
                    for c in spec
                        .containers
                        .iter_mut()
                        .chain(spec.init_containers.iter_mut().flatten())
                    {
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

/// Summary of what one batch of events changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events folded into the store.
    pub events: usize,
    /// Kinds touched by the batch.
    pub kinds: std::collections::BTreeSet<ObjectKind>,
    /// `Synced` was part of the batch.
    pub synced: bool,
}

/// A running source: the receiving end of its events, and its `synced`
/// flag. Dropping it stops the source's task.
pub struct Source {
    events: mpsc::Receiver<SourceEvent>,
    synced: watch::Receiver<bool>,
    task: JoinHandle<()>,
    /// Folded into the caller's store, not yet reported in a Batch.
    carry: Batch,
}

/// The source's task ended (it only ends when its consumer is gone or on a
/// fatal start-up error, which it logs).
#[derive(Debug, thiserror::Error)]
#[error("the object source stopped")]
pub struct SourceClosed;

impl Source {
    /// Spawn `run` with a fresh channel. `run` sends events through the
    /// [`Sender`]; `Sender::synced` flips the flag after sending `Synced`.
    pub(crate) fn spawn<F, Fut>(run: F) -> Source
    where
        F: FnOnce(Sender) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Bounded: a slow consumer back-pressures the watches instead of
        // letting a burst grow memory without limit.
        let (tx, rx) = mpsc::channel(1024);
        let (synced_tx, synced_rx) = watch::channel(false);
        let task = tokio::spawn(run(Sender {
            tx,
            synced: Arc::new(synced_tx),
        }));
        Source {
            events: rx,
            synced: synced_rx,
            task,
            carry: Batch::default(),
        }
    }

    /// A flag that turns true once `Synced` has been sent (it may still be
    /// queued: to compile, consume events up to `Synced` first, e.g. with
    /// [`Source::wait_synced`]). For readiness reporting.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// The next event, or None when the source stopped.
    pub async fn recv(&mut self) -> Option<SourceEvent> {
        self.events.recv().await
    }

    /// Fold events into `store` until `Synced` has been applied: the store
    /// then holds every kind's complete initial list.
    pub async fn wait_synced(&mut self, store: &mut Store) -> Result<Batch, SourceClosed> {
        while !self.carry.synced {
            let ev = self.events.recv().await.ok_or(SourceClosed)?;
            self.fold(store, ev);
        }
        Ok(std::mem::take(&mut self.carry))
    }

    /// Wait for at least one event, then keep folding events that arrive
    /// within `settle` of the previous one (a burst: a `kubectl apply -f`
    /// of many objects, a relist), up to `max_wait` in total, so one compile
    /// covers the whole burst. `settle` zero takes only what is already
    /// queued. None when the source stopped.
    ///
    /// Cancel-safe (for `select!`): events a cancelled call already folded
    /// into the store are reported by the next call, which then returns
    /// without waiting for a new event.
    pub async fn next_batch(
        &mut self,
        store: &mut Store,
        settle: Duration,
        max_wait: Duration,
    ) -> Option<Batch> {
        if self.carry.events == 0 {
            let first = self.events.recv().await?;
            self.fold(store, first);
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            while let Ok(ev) = self.events.try_recv() {
                self.fold(store, ev);
            }
            let now = tokio::time::Instant::now();
            if settle.is_zero() || now >= deadline {
                break;
            }
            match tokio::time::timeout_at(std::cmp::min(now + settle, deadline), self.events.recv())
                .await
            {
                Ok(Some(ev)) => self.fold(store, ev),
                // Stopped (the next call sees None) or quiet for `settle`.
                Ok(None) | Err(_) => break,
            }
        }
        Some(std::mem::take(&mut self.carry))
    }

    fn fold(&mut self, store: &mut Store, ev: SourceEvent) {
        self.carry.add(&ev);
        store.handle(ev);
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Batch {
    fn add(&mut self, ev: &SourceEvent) {
        self.events += 1;
        match ev {
            SourceEvent::Apply(o) => {
                self.kinds.insert(o.kind());
            }
            SourceEvent::Delete(r) => {
                self.kinds.insert(r.kind);
            }
            SourceEvent::Replace(k, _) => {
                self.kinds.insert(*k);
            }
            SourceEvent::Synced => self.synced = true,
        }
    }
}

/// The sending half a source task uses.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: mpsc::Sender<SourceEvent>,
    synced: Arc<watch::Sender<bool>>,
}

impl Sender {
    /// Err when the consumer is gone: the task should end.
    pub(crate) async fn send(&self, ev: SourceEvent) -> Result<(), SourceClosed> {
        self.tx.send(ev).await.map_err(|_| SourceClosed)
    }

    pub(crate) async fn send_synced(&self) -> Result<(), SourceClosed> {
        self.send(SourceEvent::Synced).await?;
        self.synced.send_replace(true);
        Ok(())
    }
}

/// Count one event in the metrics (`op`: apply, delete, replace).
pub(crate) fn count_event(metrics: &Metrics, source: &str, ev: &SourceEvent) {
    let (kind, op) = match ev {
        SourceEvent::Apply(o) => (o.kind(), "apply"),
        SourceEvent::Delete(r) => (r.kind, "delete"),
        SourceEvent::Replace(k, _) => (*k, "replace"),
        SourceEvent::Synced => return,
    };
    metrics.source_events.inc(&[source, kind.label(), op]);
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
        }
    }
}

/// Everything a source reports as wrong. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No usable client configuration (kubeconfig, in-cluster environment).
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// The (re)list of a kind failed; retried with back-off.
    #[error("listing {kind} failed: {message}")]
    ListFailed { kind: ObjectKind, message: String },
    /// The watch request was refused; retried with back-off.
    #[error("starting the {kind} watch failed: {message}")]
    WatchStartFailed { kind: ObjectKind, message: String },
    /// 410 Gone: the resourceVersion we resumed from is compacted away.
    /// Recovered by relisting the kind.
    #[error("{kind} watch expired (410 Gone): relisting")]
    WatchGone { kind: ObjectKind },
    /// An ERROR event other than 410 in the watch stream.
    #[error("{kind} watch returned error {code}: {message}")]
    WatchError {
        kind: ObjectKind,
        code: u16,
        message: String,
    },
    /// The watch stream broke (connection dropped, undecodable event);
    /// resumed from the last resourceVersion seen.
    #[error("{kind} watch stream failed: {message}")]
    WatchFailed { kind: ObjectKind, message: String },
    /// A manifest file could not be read.
    #[error("{file}: cannot read: {message}")]
    ManifestRead { file: String, message: String },
    /// A manifest file is not valid YAML or an object in it does not match
    /// its kind's schema. Its previously loaded objects are kept.
    #[error("{file}: {message} (the objects it defined before are kept until it parses again or is removed)")]
    ManifestInvalid { file: String, message: String },
    /// A document whose kind or apiVersion policyd does not read (a typo
    /// such as `Networkpolicy` or `networking.k8s.io/v1beta1`, or an
    /// object of another kind).
    #[error("{file}: document {doc}: {}", unknown_kind_help(.api_version, .kind))]
    UnknownKind {
        file: String,
        doc: usize,
        api_version: String,
        kind: String,
    },
    /// A manifest file's last good version could not be saved or removed
    /// (`<run dir>/manifests-last-good`): a restart while the file is
    /// broken would not find it.
    #[error("{dir}: keeping the last good manifest versions failed: {message}")]
    LastGoodWrite { dir: String, message: String },
    /// The same object is defined by two files; the later file name wins.
    #[error(
        "{object} is defined in both {first} and {second}: using {second} (later file name wins)"
    )]
    DuplicateObject {
        object: ObjectRef,
        first: String,
        second: String,
    },
}

/// What is wrong with an unknown (apiVersion, kind) and how to fix it.
fn unknown_kind_help(api_version: &str, kind: &str) -> String {
    let accepted = ObjectKind::ALL
        .iter()
        .map(|k| format!("{k} ({})", k.api_version()))
        .collect::<Vec<_>>()
        .join(", ");
    let wrong = match unknown_kind_field(kind) {
        "apiVersion" => {
            let k = ObjectKind::ALL.iter().find(|k| k.to_string() == kind).expect("a known kind");
            format!("apiVersion {api_version:?} is not read for kind {kind}: write apiVersion: {}", k.api_version())
        }
        _ => match ObjectKind::ALL.iter().find(|k| k.to_string().eq_ignore_ascii_case(kind)) {
            Some(k) => format!("kind {kind:?} is not a kind policyd reads: write kind: {k} (kinds are case-sensitive)"),
            None => format!("kind {kind:?} (apiVersion {api_version:?}) is not a kind policyd reads"),
        },
    };
    format!("{wrong}; accepted kinds (apiVersion): {accepted}, and List of them; keep other objects out of the manifest directory")
}

/// The field of an unknown (apiVersion, kind) to correct: `apiVersion`
/// when the kind is one policyd reads, `kind` otherwise.
fn unknown_kind_field(kind: &str) -> &'static str {
    if ObjectKind::ALL.iter().any(|k| k.to_string() == kind) {
        "apiVersion"
    } else {
        "kind"
    }
}

impl SourceError {
    /// The manifest field the error is about, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            SourceError::UnknownKind { kind, .. } => Some(unknown_kind_field(kind)),
            _ => None,
        }
    }

    /// Metric label: stable, lower_snake_case.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Config(_) => "config",
            SourceError::ListFailed { .. } => "list_failed",
            SourceError::WatchStartFailed { .. } => "watch_start_failed",
            SourceError::WatchGone { .. } => "watch_gone",
            SourceError::WatchError { .. } => "watch_error",
            SourceError::WatchFailed { .. } => "watch_failed",
            SourceError::ManifestRead { .. } => "manifest_read",
            SourceError::ManifestInvalid { .. } => "manifest_invalid",
            SourceError::UnknownKind { .. } => "unknown_kind",
            SourceError::LastGoodWrite { .. } => "last_good_write",
            SourceError::DuplicateObject { .. } => "duplicate_object",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(name: &str) -> Object {
        Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// A source fed by the test through a channel.
    fn scripted() -> (mpsc::UnboundedSender<SourceEvent>, Source) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let src = Source::spawn(move |out| async move {
            while let Some(ev) = rx.recv().await {
                let r = if matches!(ev, SourceEvent::Synced) {
                    out.send_synced().await
                } else {
                    out.send(ev).await
                };
                if r.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await
        });
        (tx, src)
    }

    #[tokio::test]
    async fn cancelled_next_batch_reports_its_events_next_time() {
        let (tx, mut src) = scripted();
        let mut store = Store::default();
        tx.send(SourceEvent::Apply(ns("a"))).unwrap();
        tx.send(SourceEvent::Synced).unwrap();
        // The flag rises after Synced is queued, so both events are queued.
        src.synced().wait_for(|s| *s).await.unwrap();
        {
            // One poll folds what is queued, then waits for the burst to
            // settle (an hour); dropping it is what select! does when
            // another branch wins.
            let fut = src.next_batch(
                &mut store,
                Duration::from_secs(3600),
                Duration::from_secs(3600),
            );
            tokio::pin!(fut);
            assert!(futures::poll!(fut.as_mut()).is_pending());
        }
        assert!(
            store.namespaces.contains_key("a"),
            "folded before the cancellation"
        );
        // The next call reports them without waiting for a new event.
        let b = src
            .next_batch(&mut store, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(b.events, 2);
        assert!(b.synced && b.kinds.contains(&ObjectKind::Namespace));
    }

    #[tokio::test]
    async fn wait_synced_folds_every_replace_first() {
        let (tx, mut src) = scripted();
        let mut store = Store::default();
        tx.send(SourceEvent::Replace(
            ObjectKind::Namespace,
            vec![ns("a"), ns("b")],
        ))
        .unwrap();
        tx.send(SourceEvent::Replace(ObjectKind::Namespace, vec![ns("b")]))
            .unwrap();
        tx.send(SourceEvent::Synced).unwrap();
        tx.send(SourceEvent::Delete(ns("b").object_ref())).unwrap();
        let b = src.wait_synced(&mut store).await.unwrap();
        assert!(b.synced);
        assert_eq!(b.events, 3);
        assert_eq!(
            store.namespaces.keys().collect::<Vec<_>>(),
            ["b"],
            "a Replace drops what the previous one had"
        );
        let b = src
            .next_batch(&mut store, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(b.events, 1);
        assert!(store.namespaces.is_empty());
    }

    #[test]
    fn cluster_scoped_objects_ignore_a_namespace() {
        let mut o = ns("a");
        if let Object::Namespace(n) = &mut o {
            n.metadata.namespace = Some("stray".into());
        }
        assert_eq!(o.object_ref().namespace, "");
    }
}
