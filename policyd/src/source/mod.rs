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
use crate::store::Store;
pub use crate::store::{Object, ObjectKind, ObjectRef, SourceEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Summary of what one batch of events changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events folded into the store.
    pub events: usize,
    /// Kinds touched by the batch.
    pub kinds: std::collections::BTreeSet<ObjectKind>,
    /// `Synced` was part of the batch.
    pub synced: bool,
    /// When its first event was taken from the source.
    pub first_at: Option<std::time::Instant>,
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
        let task = tokio::spawn(run(Sender { tx, synced: Arc::new(synced_tx) }));
        Source { events: rx, synced: synced_rx, task, carry: Batch::default() }
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
    pub async fn next_batch(&mut self, store: &mut Store, settle: Duration, max_wait: Duration) -> Option<Batch> {
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
            match tokio::time::timeout_at(std::cmp::min(now + settle, deadline), self.events.recv()).await {
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
        self.first_at.get_or_insert_with(std::time::Instant::now);
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

// What the sources count is theirs to define: metrics.rs knows nothing of
// sources, so the two do not import each other.
impl Metrics {
    /// Count one source error under its reason label.
    pub fn source_error(&self, source: &str, err: &SourceError) {
        self.source_errors.inc(&[source, err.reason()]);
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
    WatchError { kind: ObjectKind, code: u16, message: String },
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
    UnknownKind { file: String, doc: usize, api_version: String, kind: String },
    /// A manifest file's last good version could not be saved or removed
    /// (`<run dir>/manifests-last-good`): a restart while the file is
    /// broken would not find it.
    #[error("{dir}: keeping the last good manifest versions failed: {message}")]
    LastGoodWrite { dir: String, message: String },
    /// The same object is defined by two files; the later file name wins.
    #[error("{object} is defined in both {first} and {second}: using {second} (later file name wins)")]
    DuplicateObject { object: ObjectRef, first: String, second: String },
}

/// What is wrong with an unknown (apiVersion, kind) and how to fix it.
fn unknown_kind_help(api_version: &str, kind: &str) -> String {
    let accepted = ObjectKind::ALL.iter().map(|k| format!("{k} ({})", k.api_version())).collect::<Vec<_>>().join(", ");
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
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(name: &str) -> Object {
        Object::Namespace(Namespace {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        })
    }

    /// A source fed by the test through a channel.
    fn scripted() -> (mpsc::UnboundedSender<SourceEvent>, Source) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let src = Source::spawn(move |out| async move {
            while let Some(ev) = rx.recv().await {
                let r = if matches!(ev, SourceEvent::Synced) { out.send_synced().await } else { out.send(ev).await };
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
            let fut = src.next_batch(&mut store, Duration::from_secs(3600), Duration::from_secs(3600));
            tokio::pin!(fut);
            assert!(futures::poll!(fut.as_mut()).is_pending());
        }
        assert!(store.namespaces.contains_key("a"), "folded before the cancellation");
        // The next call reports them without waiting for a new event.
        let b = src.next_batch(&mut store, Duration::ZERO, Duration::ZERO).await.unwrap();
        assert_eq!(b.events, 2);
        assert!(b.synced && b.kinds.contains(&ObjectKind::Namespace));
    }

    #[tokio::test]
    async fn wait_synced_folds_every_replace_first() {
        let (tx, mut src) = scripted();
        let mut store = Store::default();
        tx.send(SourceEvent::Replace(ObjectKind::Namespace, vec![ns("a"), ns("b")])).unwrap();
        tx.send(SourceEvent::Replace(ObjectKind::Namespace, vec![ns("b")])).unwrap();
        tx.send(SourceEvent::Synced).unwrap();
        tx.send(SourceEvent::Delete(ns("b").object_ref())).unwrap();
        let b = src.wait_synced(&mut store).await.unwrap();
        assert!(b.synced);
        assert_eq!(b.events, 3);
        assert_eq!(store.namespaces.keys().collect::<Vec<_>>(), ["b"], "a Replace drops what the previous one had");
        let b = src.next_batch(&mut store, Duration::ZERO, Duration::ZERO).await.unwrap();
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
