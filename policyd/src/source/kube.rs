//! The Kubernetes API source: one `kube::runtime::watcher` per kind
//! (Namespaces, Pods and Services and NetworkPolicies in all namespaces,
//! Nodes, ClusterNetworkPolicies).
//!
//! The watcher lists, then watches from the list's resourceVersion, resumes
//! from the last resourceVersion (BOOKMARKs included) after a dropped
//! connection, and relists on 410 Gone. A relist arrives as
//! Init / InitApply... / InitDone: we buffer the InitApply objects and send
//! one `Replace` at InitDone, so objects deleted while we were disconnected
//! disappear at once and nothing is ever half-replaced.
//!
//! `Synced` is sent once every kind's first InitDone is in.
//!
//! ClusterNetworkPolicy is a CRD a cluster may not have installed: its list
//! then answers 404, which we take as "no objects" (a `Replace` with none,
//! so `Synced` still comes), logged once. The list keeps being retried with
//! the usual backoff, so objects arrive within `backoff_max` of the CRD
//! being installed.

use super::{count_event, Object, ObjectKind, Sender, Source, SourceError, SourceEvent};
use crate::cluster_network_policy::ClusterNetworkPolicy;
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Metric/log label of this source.
pub const SOURCE: &str = "kube";

/// How to reach the API server.
#[derive(Debug, Clone)]
pub enum Access {
    /// The pod's service account (KUBERNETES_SERVICE_HOST/PORT, token and
    /// CA under /var/run/secrets/kubernetes.io/serviceaccount).
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(std::path::PathBuf),
}

/// Build a client for `access`.
pub async fn client(access: &Access) -> Result<Client, SourceError> {
    let config = match access {
        Access::InCluster => kube::Config::incluster().map_err(|e| {
            SourceError::Config(format!(
                "in-cluster configuration: {e} (run inside a pod with a service account, or pass --kubeconfig PATH)"
            ))
        })?,
        Access::Kubeconfig(path) => kubeconfig(path).await?,
    };
    Client::try_from(config).map_err(|e| SourceError::Config(format!("building the client: {e}")))
}

async fn kubeconfig(path: &Path) -> Result<kube::Config, SourceError> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| SourceError::Config(format!("--kubeconfig {}: {e}", path.display())))?;
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| SourceError::Config(format!("--kubeconfig {}: {e}", path.display())))
}

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// First retry delay after a watch/list error; doubles per consecutive
    /// error up to `backoff_max`, reset by the next good event.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Server-side timeout of each watch request (the watcher re-watches
    /// from the last resourceVersion when it ends). None: kube's default.
    pub watch_timeout_secs: Option<u32>,
    /// Objects per list page (relists of large clusters come in pages
    /// joined by continue tokens; the Replace is sent after the last one).
    pub page_size: u32,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: None,
            page_size: 500,
        }
    }
}

/// Start the six watches. The returned [`Source`] yields each kind's
/// `Replace`, then `Synced`, then changes.
pub fn spawn_kube(client: Client, opts: KubeOptions, metrics: Arc<Metrics>) -> Source {
    Source::spawn(move |tx| async move {
        let pending = Arc::new(AtomicUsize::new(ObjectKind::ALL.len()));
        let mut tasks = tokio::task::JoinSet::new();
        macro_rules! watch_kind {
            ($ty:ty, $kind:expr, $wrap:expr) => {
                tasks.spawn(watch_kind::<$ty>(
                    Api::all(client.clone()),
                    $kind,
                    $wrap,
                    opts.clone(),
                    metrics.clone(),
                    tx.clone(),
                    pending.clone(),
                ));
            };
        }
        watch_kind!(Namespace, ObjectKind::Namespace, Object::Namespace);
        watch_kind!(Pod, ObjectKind::Pod, Object::Pod);
        watch_kind!(Service, ObjectKind::Service, Object::Service);
        watch_kind!(NetworkPolicy, ObjectKind::NetworkPolicy, Object::NetworkPolicy);
        watch_kind!(Node, ObjectKind::Node, Object::Node);
        watch_kind!(ClusterNetworkPolicy, ObjectKind::ClusterNetworkPolicy, Object::ClusterNetworkPolicy);
        // The JoinSet aborts the watches when this task is aborted (the
        // Source was dropped); they end on their own when the consumer is gone.
        while tasks.join_next().await.is_some() {}
    })
}

/// Where the ClusterNetworkPolicy CRD ships, for the "not installed" log.
const CNP_CRD: &str = "conf/clusternetworkpolicies-crd.yaml";

/// Whether the API server always serves a kind, or only once its CRD is
/// installed.
#[derive(Debug, Clone, Copy)]
enum Served {
    Always,
    /// A 404 on the list means "no such objects", not an error.
    IfInstalled {
        crd: &'static str,
    },
}

impl Served {
    fn of(kind: ObjectKind) -> Served {
        match kind {
            ObjectKind::ClusterNetworkPolicy => Served::IfInstalled { crd: CNP_CRD },
            _ => Served::Always,
        }
    }
}

/// The list of a kind whose CRD is not installed.
fn is_not_installed(served: Served, e: &watcher::Error) -> bool {
    matches!(served, Served::IfInstalled { .. })
        && matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

fn classify(kind: ObjectKind, e: watcher::Error) -> (SourceError, bool) {
    // Second value: restart the watcher from a fresh list. kube's watcher
    // relists by itself on a 410 ERROR event, but a 410 answered to the
    // watch request itself would make it retry the same stale
    // resourceVersion forever.
    match e {
        watcher::Error::InitialListFailed(e) => (SourceError::ListFailed { kind, message: e.to_string() }, false),
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410 => {
            (SourceError::WatchGone { kind }, true)
        }
        watcher::Error::WatchStartFailed(e) => (SourceError::WatchStartFailed { kind, message: e.to_string() }, false),
        watcher::Error::WatchError(s) if s.code == 410 => (SourceError::WatchGone { kind }, false),
        watcher::Error::WatchError(s) => {
            (SourceError::WatchError { kind, code: s.code, message: s.message.clone() }, false)
        }
        watcher::Error::WatchFailed(e) => (SourceError::WatchFailed { kind, message: e.to_string() }, false),
        watcher::Error::NoResourceVersion => {
            (SourceError::WatchFailed { kind, message: "no metadata.resourceVersion in a list or event".into() }, false)
        }
    }
}

async fn watch_kind<K>(
    api: Api<K>,
    kind: ObjectKind,
    wrap: fn(K) -> Object,
    opts: KubeOptions,
    metrics: Arc<Metrics>,
    tx: Sender,
    pending: Arc<AtomicUsize>,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut wc = watcher::Config::default().page_size(opts.page_size.max(1));
    if let Some(t) = opts.watch_timeout_secs {
        wc = wc.timeout(t);
    }
    let served = Served::of(kind);
    let mut synced = FirstSync { done: false, pending };
    let mut backoff = opts.backoff_initial;
    // The CRD was found missing, and the empty Replace that stands for it sent.
    let mut not_installed = false;
    let to_obj = |k: K| {
        let mut o = wrap(k);
        o.trim();
        o
    };
    'restart: loop {
        let mut stream = watcher(api.clone(), wc.clone()).boxed();
        // Objects of the list in progress; None outside Init..InitDone.
        let mut buffer: Option<Vec<Object>> = None;
        while let Some(item) = stream.next().await {
            let ev = match item {
                Ok(watcher::Event::Init) => {
                    buffer = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(k)) => {
                    buffer.get_or_insert_with(Vec::new).push(to_obj(k));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    backoff = opts.backoff_initial;
                    if std::mem::take(&mut not_installed) {
                        log::info!("{kind}: the CRD is installed now, watching it");
                    }
                    SourceEvent::Replace(kind, buffer.take().unwrap_or_default())
                }
                Ok(watcher::Event::Apply(k)) => {
                    backoff = opts.backoff_initial;
                    SourceEvent::Apply(to_obj(k))
                }
                Ok(watcher::Event::Delete(k)) => {
                    backoff = opts.backoff_initial;
                    SourceEvent::Delete(to_obj(k).object_ref())
                }
                Err(e) if is_not_installed(served, &e) => {
                    if !not_installed {
                        not_installed = true;
                        if let Served::IfInstalled { crd } = served {
                            log::warn!(
                                "{kind} is not installed in this cluster (the API server has no such resource): \
                                 none are enforced; install the CRD ({crd}) to use them. Checking again every \
                                 {:?} at most",
                                opts.backoff_max
                            );
                        }
                        // No objects of a kind that does not exist: the
                        // store forgets any it had, and Synced can come.
                        if !deliver(&tx, &metrics, &mut synced, SourceEvent::Replace(kind, Vec::new())).await {
                            return;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = std::cmp::min(backoff * 2, opts.backoff_max);
                    continue;
                }
                Err(e) => {
                    let (err, restart) = classify(kind, e);
                    match &err {
                        SourceError::WatchGone { .. } => log::info!("{err}"),
                        _ => log::warn!("{err}; retrying in {backoff:?}"),
                    }
                    metrics.source_error(SOURCE, &err);
                    tokio::time::sleep(backoff).await;
                    backoff = std::cmp::min(backoff * 2, opts.backoff_max);
                    if restart {
                        continue 'restart;
                    }
                    continue;
                }
            };
            if !deliver(&tx, &metrics, &mut synced, ev).await {
                return;
            }
        }
        // The watcher stream never ends by itself; if it does, start over.
        tokio::time::sleep(backoff).await;
    }
}

/// Whether this kind's first Replace is out, and how many kinds still owe theirs.
struct FirstSync {
    done: bool,
    pending: Arc<AtomicUsize>,
}

/// Send `ev`, and `Synced` after the last kind's first Replace. False when
/// the consumer is gone.
async fn deliver(tx: &Sender, metrics: &Metrics, synced: &mut FirstSync, ev: SourceEvent) -> bool {
    let is_replace = matches!(ev, SourceEvent::Replace(..));
    count_event(metrics, SOURCE, &ev);
    if tx.send(ev).await.is_err() {
        return false;
    }
    if is_replace && !synced.done {
        synced.done = true;
        // The last kind to finish its first list announces Synced, after
        // its own Replace: every Replace precedes it.
        if synced.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if tx.send_synced().await.is_err() {
                return false;
            }
            metrics.source_synced.set(&[SOURCE], 1.0);
            log::info!("Kubernetes API: every kind listed, synced");
        }
    }
    true
}
