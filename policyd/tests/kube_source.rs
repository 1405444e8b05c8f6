//! The Kubernetes API source against `apiserver_fixture`, an in-repo
//! HTTP server that stands in for kube-apiserver (which cannot be installed
//! on this machine: no registry ships it). The fixture speaks the real
//! list/watch protocol (lists with resourceVersion, chunked `watch=true`
//! streams of ADDED/MODIFIED/DELETED/BOOKMARK events, 410 Gone as an ERROR
//! event or as HTTP 410) and injects faults; the client is a real
//! `kube::Client` built from a kubeconfig pointing at it.
//!
//! Covered: nothing is reported synced before every kind is listed; watch
//! events reach the store; trimming; a connection dropped mid-watch resumes
//! from the last resourceVersion without relisting or duplicating; objects
//! deleted while disconnected disappear after the 410-forced relist (both
//! 410 forms); the store ends equal to the server. ClusterNetworkPolicies
//! are listed and watched like the rest, and a server without their CRD
//! still syncs (an empty set) and serves them once it is installed.

mod apiserver_fixture;

use apiserver_fixture::{ApiServer, GoneMode, Res};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, Service, ServiceSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ManagedFieldsEntry, ObjectMeta};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use weir_policyd::cluster_network_policy::{
    ClusterNetworkPolicy, ClusterNetworkPolicySpec, ClusterNetworkPolicySubject,
};
use weir_policyd::metrics::Metrics;
use weir_policyd::source::kube::{client, spawn_kube, Access, KubeOptions};
use weir_policyd::source::{Object, ObjectKind, Source, SourceEvent};
use weir_policyd::store::Store;

/// Failure guard only: every wait ends as soon as its condition holds.
const GUARD: Duration = Duration::from_secs(60);

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str, app: &str) -> Pod {
    let mut m = meta(Some(ns), name, &[("app", app)]);
    // What a real server returns and the source must trim.
    m.annotations = Some(BTreeMap::from([("kubectl.kubernetes.io/last-applied-configuration".into(), "{}".into())]));
    m.managed_fields = Some(vec![ManagedFieldsEntry { manager: Some("kubectl".into()), ..Default::default() }]);
    Pod {
        metadata: m,
        spec: Some(PodSpec {
            containers: vec![Container { name: "c".into(), image: Some("nginx".into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn namespace(name: &str, team: &str) -> Namespace {
    Namespace { metadata: meta(None, name, &[("team", team)]), ..Default::default() }
}

fn policy(ns: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        }),
    }
}

fn cluster_policy(name: &str, priority: i32) -> ClusterNetworkPolicy {
    let mut p = ClusterNetworkPolicy::new(
        name,
        ClusterNetworkPolicySpec {
            tier: "Admin".into(),
            priority,
            subject: ClusterNetworkPolicySubject { namespaces: Some(LabelSelector::default()), pods: None },
            ..Default::default()
        },
    );
    p.metadata.labels = Some(BTreeMap::new());
    p
}

/// Everything the consumer saw, in order, and the store it folded into.
struct Seen {
    src: Source,
    store: Store,
    events: Vec<SourceEvent>,
}

impl Seen {
    async fn next(&mut self) -> SourceEvent {
        let ev = tokio::time::timeout(GUARD, self.src.recv())
            .await
            .unwrap_or_else(|_| panic!("no event; store: {:#?}", self.store))
            .expect("source alive");
        self.events.push(ev.clone());
        self.store.handle(ev.clone());
        ev
    }

    async fn until(&mut self, what: &str, cond: impl Fn(&Store) -> bool) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while !cond(&self.store) {
            assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
            self.next().await;
        }
    }

    /// Every Apply carried a distinct (kind, namespace, name, resourceVersion):
    /// no change was delivered twice.
    fn assert_no_duplicate_applies(&self) {
        let mut seen = BTreeSet::new();
        for ev in &self.events {
            if let SourceEvent::Apply(o) = ev {
                let rv = rv_of(o);
                assert!(
                    seen.insert((o.object_ref(), rv.clone())),
                    "{} at resourceVersion {rv} delivered twice",
                    o.object_ref()
                );
            }
        }
    }

    fn deletes_of(&self, kind: ObjectKind, ns: &str, name: &str) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, SourceEvent::Delete(r) if r.kind == kind && r.namespace == ns && r.name == name))
            .count()
    }
}

fn rv_of(o: &Object) -> String {
    o.meta().resource_version.clone().unwrap_or_default()
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn store_names(store: &Store, res: Res) -> Vec<(String, String)> {
    let cluster = |k: &String| (String::new(), k.clone());
    match res {
        Res::Namespaces => store.namespaces.keys().map(cluster).collect(),
        Res::Nodes => store.nodes.keys().map(cluster).collect(),
        Res::Pods => store.pods.keys().cloned().collect(),
        Res::Services => store.services.keys().cloned().collect(),
        Res::NetworkPolicies => store.policies.keys().cloned().collect(),
        Res::ClusterNetworkPolicies => store.cluster_policies.keys().map(cluster).collect(),
    }
}

fn assert_store_matches(server: &ApiServer, store: &Store) {
    for res in Res::ALL {
        assert_eq!(store_names(store, res), server.names(res), "{res:?} in the store vs the server");
    }
}

fn k(ns: &str, name: &str) -> (String, String) {
    (ns.into(), name.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_lists_watches_and_recovers() {
    let server = ApiServer::start().await;
    server.put(&namespace("x", "a"));
    server.put(&namespace("y", "b"));
    server.put(&pod("x", "a", "web"));
    server.put(&pod("x", "b", "db"));
    server.put(&pod("y", "z", "db"));
    server.put(&Service {
        metadata: meta(Some("x"), "svc", &[]),
        spec: Some(ServiceSpec { cluster_ip: Some("10.96.0.10".into()), ..Default::default() }),
        ..Default::default()
    });
    server.put(&policy("x", "deny"));
    server.put(&Node { metadata: meta(None, "n1", &[]), ..Default::default() });
    server.put(&cluster_policy("admin-deny", 10));

    // Nodes' list is held: the other kinds sync, yet nothing may say Synced.
    server.hold_list(Res::Nodes, true);
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let client = client(&Access::Kubeconfig(kubeconfig)).await.expect("client from kubeconfig");
    let metrics = Arc::new(Metrics::new());
    // Two objects per page: every list of pods and namespaces is paged.
    let opts = KubeOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        page_size: 2,
        ..Default::default()
    };
    let src = spawn_kube(client, opts, metrics.clone());
    let synced = src.synced();
    let mut seen = Seen { src, store: Store::default(), events: Vec::new() };

    let mut replaced = BTreeSet::new();
    while replaced.len() < ObjectKind::ALL.len() - 1 {
        match seen.next().await {
            SourceEvent::Replace(kind, _) => assert!(replaced.insert(kind), "{kind} replaced twice"),
            other => panic!("only Replace before Synced, got {other:?}"),
        }
    }
    assert!(!replaced.contains(&ObjectKind::Node));
    assert_eq!(server.lists(Res::Nodes), 0, "the nodes list is still held");
    assert!(!*synced.borrow(), "synced before the nodes list came in");
    assert_eq!(metrics.source_synced.get(&["kube"]), 0.0);

    server.hold_list(Res::Nodes, false);
    assert!(matches!(seen.next().await, SourceEvent::Replace(ObjectKind::Node, _)));
    assert!(matches!(seen.next().await, SourceEvent::Synced), "Synced right after the last kind's list");
    // The flag is raised right after Synced is queued.
    wait_for("synced flag", || *synced.borrow()).await;
    assert_store_matches(&server, &seen.store);
    assert!(server.pages(Res::Pods) > server.lists(Res::Pods), "the pod list came in pages");
    // The source trims what it sends; the store keeps its own form.
    let sent = seen
        .events
        .iter()
        .find_map(|e| match e {
            SourceEvent::Replace(ObjectKind::Pod, objs) => objs.iter().find(|o| o.object_ref().name == "a"),
            _ => None,
        })
        .expect("pod x/a in the pods' list");
    assert!(sent.meta().annotations.is_none() && sent.meta().managed_fields.is_none(), "trimmed");
    assert_eq!(seen.store.pods[&k("x", "a")].labels["app"], "web");
    assert_eq!(seen.store.services[&k("x", "svc")].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(seen.store.cluster_policies["admin-deny"].spec.priority, 10);

    // Watch events: ADDED, MODIFIED, DELETED for several kinds.
    server.put(&pod("x", "c", "cache"));
    server.put(&pod("x", "a", "web2"));
    server.delete::<Pod>("x", "b");
    server.put(&policy("y", "allow"));
    server.put(&namespace("y", "c"));
    server.put(&cluster_policy("admin-deny", 20));
    server.put(&cluster_policy("baseline", 30));
    seen.until("watch events applied", |s| {
        s.pods.contains_key(&k("x", "c"))
            && !s.pods.contains_key(&k("x", "b"))
            && s.pods[&k("x", "a")].labels["app"] == "web2"
            && s.policies.contains_key(&k("y", "allow"))
            && s.namespaces["y"].metadata.labels.as_ref().unwrap()["team"] == "c"
            && s.cluster_policies.get("admin-deny").is_some_and(|p| p.spec.priority == 20)
            && s.cluster_policies.contains_key("baseline")
    })
    .await;
    assert_eq!(seen.deletes_of(ObjectKind::Pod, "x", "b"), 1);
    server.delete::<ClusterNetworkPolicy>("", "baseline");
    seen.until("cluster policy deleted", |s| !s.cluster_policies.contains_key("baseline")).await;
    assert_eq!(seen.deletes_of(ObjectKind::ClusterNetworkPolicy, "", "baseline"), 1);

    // A BOOKMARK, then the connection drops mid-watch: the watch resumes
    // from the last resourceVersion, no relist, nothing delivered twice.
    // Services saw no change since their list: only the bookmark tells the
    // client a newer resourceVersion to resume from.
    let bookmark_rv = server.bookmark();
    wait_for("bookmark written to the services watch", || server.bookmarks_sent(Res::Services) == 1).await;
    let svc_watches = server.watches(Res::Services);
    let pod_lists = server.lists(Res::Pods);
    let pod_watches = server.watches(Res::Pods);
    server.drop_watches();
    server.put(&pod("x", "d", "late"));
    seen.until("pod d after the reconnect", |s| s.pods.contains_key(&k("x", "d"))).await;
    wait_for("pods re-watched", || server.watches(Res::Pods) > pod_watches).await;
    wait_for("services re-watched", || server.watches(Res::Services) > svc_watches).await;
    assert_eq!(server.last_watch_from(Res::Services), Some(bookmark_rv), "resumed from the BOOKMARK's resourceVersion");
    assert_eq!(server.lists(Res::Pods), pod_lists, "a dropped connection resumes the watch, it does not relist");
    seen.assert_no_duplicate_applies();
    assert_store_matches(&server, &seen.store);

    // Deleted while disconnected, and history compacted: the re-watch gets
    // an ERROR event with a 410 Status, the source relists, and pod a is
    // gone without any DELETED event ever having been sent to us.
    server.pause_watches(true);
    server.drop_watches();
    server.delete::<Pod>("x", "a");
    server.delete::<Namespace>("", "y");
    server.put(&pod("x", "e", "new"));
    server.compact();
    server.pause_watches(false);
    seen.until("relisted after 410", |s| {
        !s.pods.contains_key(&k("x", "a")) && !s.namespaces.contains_key("y") && s.pods.contains_key(&k("x", "e"))
    })
    .await;
    assert!(server.lists(Res::Pods) > pod_lists, "410 forces a relist");
    assert_eq!(seen.deletes_of(ObjectKind::Pod, "x", "a"), 0, "a vanished through the relist's Replace");
    assert!(metrics.source_errors.get(&["kube", "watch_gone"]) >= 1.0);
    assert_store_matches(&server, &seen.store);

    // The same with HTTP 410 on the watch request itself.
    server.set_gone_mode(GoneMode::Http410);
    let pod_lists = server.lists(Res::Pods);
    server.pause_watches(true);
    server.drop_watches();
    server.delete::<Pod>("x", "c");
    server.delete::<NetworkPolicy>("x", "deny");
    server.compact();
    server.pause_watches(false);
    seen.until("relisted after HTTP 410", |s| {
        !s.pods.contains_key(&k("x", "c")) && !s.policies.contains_key(&k("x", "deny"))
    })
    .await;
    assert!(server.lists(Res::Pods) > pod_lists, "HTTP 410 forces a relist");
    assert_eq!(seen.deletes_of(ObjectKind::Pod, "x", "c"), 0);

    // And the watch works again after all that.
    server.put(&pod("x", "f", "last"));
    seen.until("pod f", |s| s.pods.contains_key(&k("x", "f"))).await;
    assert_store_matches(&server, &seen.store);
    seen.assert_no_duplicate_applies();
    let synced_events = seen.events.iter().filter(|e| matches!(e, SourceEvent::Synced)).count();
    assert_eq!(synced_events, 1, "Synced is sent once, not after every relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_without_the_cnp_crd_syncs_and_picks_it_up_once_installed() {
    let server = ApiServer::start().await;
    server.set_cnp_installed(false);
    server.put(&namespace("x", "a"));
    // Created "before" the CRD existed from the client's view: served only
    // once installed.
    server.put(&cluster_policy("early", 5));
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let client = client(&Access::Kubeconfig(kubeconfig)).await.expect("client from kubeconfig");
    let metrics = Arc::new(Metrics::new());
    let opts = KubeOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    };
    let mut seen = Seen { src: spawn_kube(client, opts, metrics.clone()), store: Store::default(), events: Vec::new() };

    let mut replaced = BTreeSet::new();
    loop {
        match seen.next().await {
            SourceEvent::Replace(kind, objects) => {
                assert!(replaced.insert(kind), "{kind} replaced twice before Synced");
                if kind == ObjectKind::ClusterNetworkPolicy {
                    assert!(objects.is_empty(), "no CRD, no objects: {objects:?}");
                }
            }
            SourceEvent::Synced => break,
            other => panic!("only Replace before Synced, got {other:?}"),
        }
    }
    assert_eq!(replaced.len(), ObjectKind::ALL.len(), "every kind replaced, the missing CRD's as empty");
    assert!(server.not_found() >= 1);
    assert!(seen.store.namespaces.contains_key("x") && seen.store.cluster_policies.is_empty());

    // Still absent: the list is retried (with backoff).
    let misses = server.not_found();
    wait_for("the list retried", || server.not_found() > misses + 1).await;

    // Installed: the retried list finds the objects, and the watch follows.
    server.set_cnp_installed(true);
    seen.until("the CRD's objects after its install", |s| s.cluster_policies.contains_key("early")).await;
    server.put(&cluster_policy("late", 6));
    seen.until("a cluster policy through the watch", |s| s.cluster_policies.contains_key("late")).await;
    assert_eq!(server.lists(Res::ClusterNetworkPolicies), 1, "one successful list, then watched");
    let cnp_replaces =
        seen.events.iter().filter(|e| matches!(e, SourceEvent::Replace(ObjectKind::ClusterNetworkPolicy, _))).count();
    assert_eq!(cnp_replaces, 2, "the empty one, then the list once installed; the failed retries sent nothing");
    assert_eq!(metrics.source_errors.get(&["kube", "list_failed"]), 0.0, "a missing CRD is not an error");
    let synced_events = seen.events.iter().filter(|e| matches!(e, SourceEvent::Synced)).count();
    assert_eq!(synced_events, 1);
}

#[tokio::test]
async fn in_cluster_without_environment_names_the_fix() {
    // Not in a pod: the error must say what to do instead.
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return;
    }
    let e = client(&Access::InCluster).await.err().expect("no in-cluster environment here");
    assert!(e.to_string().contains("--kubeconfig"), "{e}");
    assert_eq!(e.reason(), "config");
}

#[tokio::test]
async fn https_client_builds_with_the_compiled_in_tls_provider() {
    // In-cluster talks HTTPS: building its TLS config must not need a
    // process-wide crypto provider the daemon never installs. No
    // connection is made.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:6443\"}\n\
         users:\n- name: u\n  user: {token: abc}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    )
    .unwrap();
    client(&Access::Kubeconfig(path)).await.expect("an HTTPS client");
}
