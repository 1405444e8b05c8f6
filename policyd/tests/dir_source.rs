//! The manifest directory source against a real directory: initial list,
//! files added / changed / removed, multi-document files, `kind: List`,
//! the default namespace, unknown kinds (skipped with a diagnostic),
//! duplicates across files (later file name wins) and broken files (their
//! objects kept until the file parses again).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir_policyd::metrics::Metrics;
use weir_policyd::source::dir::{spawn_dir, DirOptions};
use weir_policyd::source::{ObjectKind, Source, SourceEvent};
use weir_policyd::store::Store;

/// Failure guard only: every wait below ends as soon as its condition holds.
const GUARD: Duration = Duration::from_secs(30);

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

/// Write atomically (temp name starting with '.', then rename), as the lab does.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Fold events into `store` until `cond` holds.
async fn until(src: &mut Source, store: &mut Store, what: &str, cond: impl Fn(&Store) -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !cond(store) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, src.next_batch(store, Duration::ZERO, Duration::ZERO))
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("source stopped while waiting for: {what}"),
            Err(_) => panic!("gave up waiting for: {what}; store: {store:#?}"),
        }
    }
}

/// Wait for a metric to reach a value (changes that produce no event).
async fn metric_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const INITIAL: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {team: a}
---
# no namespace: defaulted to "default"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
spec:
  containers:
  - name: c
    image: nginx
    env: [{name: A, value: b}]
    ports: [{name: http, containerPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
"#;

const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: svc, namespace: x}
  spec:
    selector: {app: db}
    ports: [{port: 5432}]
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: x, labels: {app: db}}
  spec: {containers: [{name: c, image: postgres}]}
"#;

#[tokio::test]
async fn directory_source_follows_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    put(dir, "10-base.yaml", INITIAL);
    put(dir, "20-list.yml", LIST);
    std::fs::write(dir.join("README.md"), "not a manifest").unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics.clone());

    // Initial view: one Replace per kind, then Synced.
    let mut store = Store::default();
    let mut replaced = Vec::new();
    loop {
        let ev = tokio::time::timeout(GUARD, src.recv())
            .await
            .expect("initial events")
            .expect("source alive");
        match &ev {
            SourceEvent::Replace(k, _) => replaced.push(*k),
            SourceEvent::Synced => break,
            other => panic!("before Synced only Replace is expected, got {other:?}"),
        }
        store.handle(ev);
    }
    replaced.sort();
    assert_eq!(
        replaced,
        ObjectKind::ALL.to_vec(),
        "one Replace per kind before Synced"
    );
    // The flag is raised right after Synced is queued.
    let flag = src.synced();
    metric_until("synced flag", || *flag.borrow()).await;
    assert_eq!(store.namespaces.keys().collect::<Vec<_>>(), ["x"]);
    assert_eq!(
        store.pods.keys().cloned().collect::<Vec<_>>(),
        [key("default", "web"), key("x", "db")]
    );
    assert!(store.services.contains_key(&key("x", "svc")));
    assert!(store.policies.contains_key(&key("x", "deny-all")));
    let web = &store.pods[&key("default", "web")];
    assert!(
        web.metadata.annotations.is_none(),
        "annotations are trimmed"
    );
    let c = &web.spec.as_ref().unwrap().containers[0];
    assert!(c.env.is_none(), "container env is trimmed");
    assert_eq!(
        c.ports.as_ref().unwrap()[0].name.as_deref(),
        Some("http"),
        "named ports are kept"
    );
    assert!(
        metrics.source_errors.get(&["dir", "unknown_kind"]) >= 1.0,
        "the Deployment is reported"
    );
    assert_eq!(metrics.source_synced.get(&["dir"]), 1.0);

    // A file added.
    put(
        dir,
        "30-more.json",
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"late","namespace":"x"}}"#,
    );
    until(&mut src, &mut store, "30-more.json's pod", |s| {
        s.pods.contains_key(&key("x", "late"))
    })
    .await;

    // A file changed: labels updated, the Deployment document dropped.
    put(
        dir,
        "10-base.yaml",
        &INITIAL.replace("app: web", "app: web2"),
    );
    until(&mut src, &mut store, "web relabelled", |s| {
        s.pods[&key("default", "web")]
            .metadata
            .labels
            .as_ref()
            .unwrap()["app"]
            == "web2"
    })
    .await;

    // A broken file: objects kept, error counted, gauge raised.
    let invalid_before = metrics.source_errors.get(&["dir", "manifest_invalid"]);
    put(
        dir,
        "10-base.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web\n  - broken: [\n",
    );
    metric_until("broken file noticed", || {
        metrics.manifest_files_broken.get(&[]) == 1.0
    })
    .await;
    assert!(metrics.source_errors.get(&["dir", "manifest_invalid"]) > invalid_before);
    // A later change elsewhere; events are ordered, so once it is in, any
    // deletion caused by the broken file would have been seen first.
    put(
        dir,
        "40-marker.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: marker}\n",
    );
    until(&mut src, &mut store, "marker namespace", |s| {
        s.namespaces.contains_key("marker")
    })
    .await;
    assert!(
        store.policies.contains_key(&key("x", "deny-all")),
        "a broken file keeps its policy"
    );
    assert!(
        store.pods.contains_key(&key("default", "web")),
        "a broken file keeps its pods"
    );
    assert!(store.namespaces.contains_key("x"));

    // Fixed again, with the policy now gone from it: the policy is deleted.
    let fixed = INITIAL
        .replace("kind: NetworkPolicy", "kind: ConfigMap")
        .replace("networking.k8s.io/v1", "v1");
    put(dir, "10-base.yaml", &fixed);
    until(&mut src, &mut store, "deny-all removed", |s| {
        !s.policies.contains_key(&key("x", "deny-all"))
    })
    .await;
    assert_eq!(metrics.manifest_files_broken.get(&[]), 0.0);
    assert!(store.pods.contains_key(&key("default", "web")));

    // Duplicates: the later file name wins, with a diagnostic.
    put(
        dir,
        "50-dup.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: x, labels: {app: other}}\n",
    );
    until(&mut src, &mut store, "50-dup.yaml wins", |s| {
        s.pods[&key("x", "db")].metadata.labels.as_ref().unwrap()["app"] == "other"
    })
    .await;
    assert!(metrics.source_errors.get(&["dir", "duplicate_object"]) >= 1.0);
    // Removing the winner falls back to the earlier definition, not to nothing.
    std::fs::remove_file(dir.join("50-dup.yaml")).unwrap();
    until(
        &mut src,
        &mut store,
        "db back to 20-list.yml's labels",
        |s| {
            s.pods
                .get(&key("x", "db"))
                .is_some_and(|p| p.metadata.labels.as_ref().unwrap()["app"] == "db")
        },
    )
    .await;

    // A file removed: its objects go.
    std::fs::remove_file(dir.join("20-list.yml")).unwrap();
    until(&mut src, &mut store, "20-list.yml's objects removed", |s| {
        !s.services.contains_key(&key("x", "svc")) && !s.pods.contains_key(&key("x", "db"))
    })
    .await;
    assert!(store.pods.contains_key(&key("x", "late")));
}

#[tokio::test]
async fn emptied_file_keeps_objects_until_it_stays_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    put(dir, "p.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n");
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics);
    let mut store = Store::default();
    src.wait_synced(&mut store).await.unwrap();
    assert!(store.policies.contains_key(&key("default", "p")));

    // Truncate (what `>` does before writing): the policy stays for a grace
    // period. A marker written right after is seen before any deletion.
    std::fs::write(dir.join("p.yaml"), "").unwrap();
    put(
        dir,
        "q.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n",
    );
    until(&mut src, &mut store, "marker", |s| {
        s.namespaces.contains_key("q")
    })
    .await;
    assert!(
        store.policies.contains_key(&key("default", "p")),
        "a just-emptied file keeps its policy"
    );
    // Left empty, it is eventually taken at its word.
    until(
        &mut src,
        &mut store,
        "policy removed after the grace period",
        |s| s.policies.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn unreadable_content_is_reported_with_the_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("bad.yaml"), "kind: Pod\n").unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics.clone());
    let mut store = Store::default();
    src.wait_synced(&mut store).await.unwrap();
    assert!(store.pods.is_empty());
    assert_eq!(metrics.manifest_files_broken.get(&[]), 1.0);
    assert_eq!(metrics.source_errors.get(&["dir", "manifest_invalid"]), 1.0);
}

#[tokio::test]
async fn an_unreadable_directory_keeps_its_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    let away = tmp.path().join("away");
    std::fs::create_dir(&dir).unwrap();
    put(&dir, "p.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n");
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.clone(), DirOptions::default(), metrics.clone());
    let mut store = Store::default();
    src.wait_synced(&mut store).await.unwrap();

    // Gone in one step (rename), so no scan can see it half-emptied.
    std::fs::rename(&dir, &away).unwrap();
    metric_until("unreadable directory noticed", || {
        metrics.source_errors.get(&["dir", "manifest_read"]) >= 1.0
    })
    .await;
    std::fs::rename(&away, &dir).unwrap();
    put(
        &dir,
        "q.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n",
    );
    until(&mut src, &mut store, "directory back", |s| {
        s.namespaces.contains_key("q")
    })
    .await;
    // Had a failed scan counted as "no files", p's deletion would have been
    // sent before q.
    assert!(
        store.policies.contains_key(&key("default", "p")),
        "kept through the outage"
    );
}
