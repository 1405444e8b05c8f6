//! The manifest directory source against a real directory: initial list,
//! files added / changed / removed, multi-document files, `kind: List`,
//! the default namespace, duplicates across files (later file name wins),
//! broken files and files with an unknown kind or apiVersion (their objects
//! kept until the file is fixed or removed, also across a restart).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir_policyd::metrics::Metrics;
use weir_policyd::source::dir::{spawn_dir, DirOptions};
use weir_policyd::source::{ObjectKind, Source, SourceEvent};
use weir_policyd::store::{Object, Store};

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
        match tokio::time::timeout(left, src.next_batch(store, Duration::ZERO, Duration::ZERO)).await {
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
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const NAMESPACE_AND_POD: &str = r#"
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
"#;

const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
"#;

fn initial() -> String {
    format!("{NAMESPACE_AND_POD}---\n{DENY_ALL}")
}

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
    put(dir, "10-base.yaml", &initial());
    put(dir, "20-list.yml", LIST);
    std::fs::write(dir.join("README.md"), "not a manifest").unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics.clone());

    // Initial view: one Replace per kind, then Synced.
    let mut store = Store::default();
    let mut replaced = Vec::new();
    // The pod as the source sent it (the store keeps its own form).
    let mut web = None;
    loop {
        let ev = tokio::time::timeout(GUARD, src.recv()).await.expect("initial events").expect("source alive");
        match &ev {
            SourceEvent::Replace(k, objs) => {
                replaced.push(*k);
                web = web.or_else(|| objs.iter().find(|o| o.object_ref().name == "web").cloned());
            }
            SourceEvent::Synced => break,
            other => panic!("before Synced only Replace is expected, got {other:?}"),
        }
        store.handle(ev);
    }
    replaced.sort();
    assert_eq!(replaced, ObjectKind::ALL.to_vec(), "one Replace per kind before Synced");
    // The flag is raised right after Synced is queued.
    let flag = src.synced();
    metric_until("synced flag", || *flag.borrow()).await;
    assert_eq!(store.namespaces.keys().collect::<Vec<_>>(), ["x"]);
    assert_eq!(store.pods.keys().cloned().collect::<Vec<_>>(), [key("default", "web"), key("x", "db")]);
    assert!(store.services.contains_key(&key("x", "svc")));
    assert!(store.policies.contains_key(&key("x", "deny-all")));
    let Some(Object::Pod(web)) = web else { panic!("no pod web in the initial lists") };
    assert!(web.metadata.annotations.is_none(), "annotations are trimmed");
    let c = &web.spec.as_ref().unwrap().containers[0];
    assert!(c.env.is_none(), "container env is trimmed");
    assert_eq!(c.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"), "named ports are kept");
    assert_eq!(&*store.pods[&key("default", "web")].named_ports[0].name, "http", "and stored");
    assert_eq!(metrics.source_synced.get(&["dir"]), 1.0);

    // A file added.
    put(dir, "30-more.json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"late","namespace":"x"}}"#);
    until(&mut src, &mut store, "30-more.json's pod", |s| s.pods.contains_key(&key("x", "late"))).await;

    // A file changed: labels updated.
    put(dir, "10-base.yaml", &initial().replace("app: web", "app: web2"));
    until(&mut src, &mut store, "web relabelled", |s| s.pods[&key("default", "web")].labels["app"] == "web2").await;

    // A broken file: objects kept, error counted, gauge raised.
    let invalid_before = metrics.source_errors.get(&["dir", "manifest_invalid"]);
    put(dir, "10-base.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web\n  - broken: [\n");
    metric_until("broken file noticed", || metrics.manifest_files_broken.get(&["manifest_invalid"]) == 1.0).await;
    assert!(metrics.source_errors.get(&["dir", "manifest_invalid"]) > invalid_before);
    // A later change elsewhere; events are ordered, so once it is in, any
    // deletion caused by the broken file would have been seen first.
    put(dir, "40-marker.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: marker}\n");
    until(&mut src, &mut store, "marker namespace", |s| s.namespaces.contains_key("marker")).await;
    assert!(store.policies.contains_key(&key("x", "deny-all")), "a broken file keeps its policy");
    assert!(store.pods.contains_key(&key("default", "web")), "a broken file keeps its pods");
    assert!(store.namespaces.contains_key("x"));

    // Fixed again, with the policy now gone from it: the policy is deleted.
    put(dir, "10-base.yaml", NAMESPACE_AND_POD);
    until(&mut src, &mut store, "deny-all removed", |s| !s.policies.contains_key(&key("x", "deny-all"))).await;
    assert_eq!(metrics.manifest_files_broken.get(&["manifest_invalid"]), 0.0);
    assert!(store.pods.contains_key(&key("default", "web")));

    // Duplicates: the later file name wins, with a diagnostic.
    put(dir, "50-dup.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: x, labels: {app: other}}\n");
    until(&mut src, &mut store, "50-dup.yaml wins", |s| s.pods[&key("x", "db")].labels["app"] == "other").await;
    assert!(metrics.source_errors.get(&["dir", "duplicate_object"]) >= 1.0);
    // Removing the winner falls back to the earlier definition, not to nothing.
    std::fs::remove_file(dir.join("50-dup.yaml")).unwrap();
    until(&mut src, &mut store, "db back to 20-list.yml's labels", |s| {
        s.pods.get(&key("x", "db")).is_some_and(|p| p.labels["app"] == "db")
    })
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
    put(
        dir,
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
    );
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics);
    let mut store = Store::default();
    src.wait_synced(&mut store).await.unwrap();
    assert!(store.policies.contains_key(&key("default", "p")));

    // Truncate (what `>` does before writing): the policy stays for a grace
    // period. A marker written right after is seen before any deletion.
    std::fs::write(dir.join("p.yaml"), "").unwrap();
    put(dir, "q.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n");
    until(&mut src, &mut store, "marker", |s| s.namespaces.contains_key("q")).await;
    assert!(store.policies.contains_key(&key("default", "p")), "a just-emptied file keeps its policy");
    // Left empty, it is eventually taken at its word.
    until(&mut src, &mut store, "policy removed after the grace period", |s| s.policies.is_empty()).await;
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
    assert_eq!(metrics.manifest_files_broken.get(&["manifest_invalid"]), 1.0);
    assert_eq!(metrics.source_errors.get(&["dir", "manifest_invalid"]), 1.0);
}

#[tokio::test]
async fn an_unreadable_directory_keeps_its_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    let away = tmp.path().join("away");
    std::fs::create_dir(&dir).unwrap();
    put(
        &dir,
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
    );
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.clone(), DirOptions::default(), metrics.clone());
    let mut store = Store::default();
    src.wait_synced(&mut store).await.unwrap();

    // Gone in one step (rename), so no scan can see it half-emptied.
    std::fs::rename(&dir, &away).unwrap();
    metric_until("unreadable directory noticed", || metrics.source_errors.get(&["dir", "manifest_read"]) >= 1.0).await;
    std::fs::rename(&away, &dir).unwrap();
    put(&dir, "q.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n");
    until(&mut src, &mut store, "directory back", |s| s.namespaces.contains_key("q")).await;
    // Had a failed scan counted as "no files", p's deletion would have been
    // sent before q.
    assert!(store.policies.contains_key(&key("default", "p")), "kept through the outage");
}

const POLICY_P: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

/// The three ways a file can be wrong without being removed: a schema error
/// (`port: [1]`), a kind typo and an apiVersion typo.
fn breakages() -> [(&'static str, String); 3] {
    [
        (
            "manifest_invalid",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
             spec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: [1]\n"
                .to_string(),
        ),
        ("unknown_kind", POLICY_P.replace("kind: NetworkPolicy", "kind: Networkpolicy")),
        ("unknown_kind", POLICY_P.replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1")),
    ]
}

fn dir_options(last_good: &Path) -> DirOptions {
    DirOptions { last_good: Some(last_good.to_path_buf()), ..Default::default() }
}

/// A fresh source on `dir`, as a restarted weir-policyd starts it, synced.
async fn start(dir: &Path, last_good: &Path) -> (Source, Store, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), dir_options(last_good), metrics.clone());
    let mut store = Store::default();
    tokio::time::timeout(GUARD, src.wait_synced(&mut store)).await.expect("initial sync").unwrap();
    (src, store, metrics)
}

#[tokio::test]
async fn a_kind_or_api_version_typo_keeps_the_files_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    put(dir, "p.yaml", POLICY_P);
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics.clone());
    let mut store = Store::default();
    src.wait_synced(&mut store).await.unwrap();
    assert!(store.policies.contains_key(&key("x", "p")));

    let typos = [
        POLICY_P.replace("kind: NetworkPolicy", "kind: Networkpolicy"),
        POLICY_P.replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
        // A good policy plus an object policyd does not read: the file as a
        // whole is held too (the policy in it might be the mistyped one).
        format!("{POLICY_P}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n"),
    ];
    for (i, typo) in typos.iter().enumerate() {
        let errors_before = metrics.source_errors.get(&["dir", "unknown_kind"]);
        // The mistyped version also changes the policy, so reading any of
        // it would show.
        put(dir, "p.yaml", &typo.replace("policyTypes: [Ingress]", "policyTypes: [Egress]"));
        // Counted as it is read, the gauge set once the scan ends.
        metric_until("typo noticed", || {
            metrics.source_errors.get(&["dir", "unknown_kind"]) > errors_before
                && metrics.manifest_files_broken.get(&["unknown_kind"]) == 1.0
        })
        .await;
        let marker = format!("marker{i}");
        put(dir, "q.yaml", &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {marker}}}\n"));
        until(&mut src, &mut store, "marker namespace", |s| s.namespaces.contains_key(&marker)).await;
        let p = store.policies.get(&key("x", "p")).unwrap_or_else(|| panic!("typo {i} dropped the policy"));
        assert_eq!(
            p.spec.as_ref().unwrap().policy_types.as_deref(),
            Some(&["Ingress".to_string()][..]),
            "typo {i}: the last good version stays, not the mistyped one"
        );
    }

    // Fixed: read again, the gauge falls back.
    put(dir, "p.yaml", &POLICY_P.replace("policyTypes: [Ingress]", "policyTypes: [Egress]"));
    until(&mut src, &mut store, "fixed version read", |s| {
        s.policies[&key("x", "p")].spec.as_ref().unwrap().policy_types.as_deref() == Some(&["Egress".to_string()][..])
    })
    .await;
    assert_eq!(metrics.manifest_files_broken.get(&["unknown_kind"]), 0.0);
}

#[tokio::test]
async fn the_last_good_version_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    let last_good = tmp.path().join("run").join(weir_policyd::source::dir::LAST_GOOD_DIR);
    std::fs::create_dir(&dir).unwrap();
    put(&dir, "p.yaml", POLICY_P);
    put(&dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");

    for (reason, broken) in breakages() {
        // Running: the good version is read (and kept).
        let (src, store, _) = start(&dir, &last_good).await;
        assert!(store.policies.contains_key(&key("x", "p")));
        drop(src);
        // Broken while policyd is down, then started again: the policy
        // stays, the file is reported.
        put(&dir, "p.yaml", &broken);
        let (src, store, metrics) = start(&dir, &last_good).await;
        assert!(store.policies.contains_key(&key("x", "p")), "{reason}: the restart dropped the policy");
        assert_eq!(metrics.manifest_files_broken.get(&[reason]), 1.0, "{reason}");
        drop(src);
        put(&dir, "p.yaml", POLICY_P);
    }

    // A fixed file replaces the kept copy: broken again after a restart,
    // the fixed version is what stays.
    let fixed = POLICY_P.replace("policyTypes: [Ingress]", "policyTypes: [Egress]");
    let (mut src, mut store, _) = start(&dir, &last_good).await;
    put(&dir, "p.yaml", &fixed);
    until(&mut src, &mut store, "fixed version read", |s| {
        s.policies[&key("x", "p")].spec.as_ref().unwrap().policy_types.as_deref() == Some(&["Egress".to_string()][..])
    })
    .await;
    drop(src);
    put(&dir, "p.yaml", &breakages()[0].1);
    let (mut src, mut store, _) = start(&dir, &last_good).await;
    assert_eq!(
        store.policies[&key("x", "p")].spec.as_ref().unwrap().policy_types.as_deref(),
        Some(&["Egress".to_string()][..]),
        "the fixed version, not the first one, is kept"
    );
    assert_eq!(std::fs::read_to_string(last_good.join("p.yaml")).unwrap(), fixed);

    // Removing the file is a decision, not breakage: the policy goes, also
    // after a restart, and so does the copy.
    std::fs::remove_file(dir.join("p.yaml")).unwrap();
    until(&mut src, &mut store, "policy removed", |s| !s.policies.contains_key(&key("x", "p"))).await;
    assert!(!last_good.join("p.yaml").exists(), "the copy goes with the file");
    drop(src);
    let (_src, store, _) = start(&dir, &last_good).await;
    assert!(!store.policies.contains_key(&key("x", "p")), "a removed file stays removed");
    assert!(store.namespaces.contains_key("x"));
}

#[tokio::test]
async fn a_file_removed_while_policyd_is_down_removes_its_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    let last_good = tmp.path().join("last-good");
    std::fs::create_dir(&dir).unwrap();
    put(&dir, "p.yaml", POLICY_P);
    let (src, store, _) = start(&dir, &last_good).await;
    assert!(store.policies.contains_key(&key("x", "p")));
    drop(src);
    std::fs::remove_file(dir.join("p.yaml")).unwrap();
    let (_src, store, _) = start(&dir, &last_good).await;
    assert!(store.policies.is_empty(), "the kept copy must not resurrect a removed file");
    assert!(!last_good.join("p.yaml").exists());
}

const ADMIN_DENY: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: admin-deny
  # Cluster-scoped: a namespace here is ignored, as the API server ignores it.
  namespace: x
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  ingress:
  - name: deny-from-y
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}]
"#;

#[tokio::test]
async fn cluster_network_policies_are_read_changed_and_deleted_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    put(dir, "10-cnp.yaml", ADMIN_DENY);
    let metrics = Arc::new(Metrics::new());
    let mut src = spawn_dir(dir.to_path_buf(), DirOptions::default(), metrics.clone());
    let mut store = Store::default();
    until(&mut src, &mut store, "admin-deny read", |s| s.cluster_policies.contains_key("admin-deny")).await;
    let p = &store.cluster_policies["admin-deny"];
    assert_eq!((p.spec.tier.as_str(), p.spec.priority), ("Admin", 10));
    assert_eq!(p.spec.ingress[0].action, "Deny");
    assert!(store.pods.is_empty() && store.policies.is_empty(), "no namespace defaulting into other kinds");

    // Changed: a new priority in place, still one object keyed by name.
    put(dir, "10-cnp.yaml", &ADMIN_DENY.replace("priority: 10", "priority: 20"));
    until(&mut src, &mut store, "priority 20", |s| s.cluster_policies["admin-deny"].spec.priority == 20).await;
    assert_eq!(store.cluster_policies.len(), 1);

    // Deleted with its file.
    std::fs::remove_file(dir.join("10-cnp.yaml")).unwrap();
    until(&mut src, &mut store, "admin-deny removed", |s| s.cluster_policies.is_empty()).await;
    assert_eq!(metrics.source_errors.get(&["dir", "manifest_invalid"]), 0.0);
}
