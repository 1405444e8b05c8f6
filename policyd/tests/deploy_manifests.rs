//! conf/weir.yaml, the one install manifest, decoded document by document
//! into k8s-openapi types: no field the API would silently drop (typos),
//! read-only RBAC covering what the sources watch, and a DaemonSet that can
//! actually run: `install-cni` first, writing where runtimes look, then
//! policyd (bpffs, run dir, NODE_NAME, probes on the port it listens on),
//! both with the host paths the binaries default to. And
//! conf/weir-uninstall.yaml: `weir-policyd uninstall` on every node with the
//! host paths Weir uses, allowed only to take annotations off Nodes.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Resource;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use weir_policyd::cluster_network_policy::ClusterNetworkPolicy;
use weir_policyd::store::ObjectKind;

fn conf(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every key of `input` must survive a round trip through the typed object:
/// k8s-openapi ignores unknown fields, so a misspelt one would vanish.
fn assert_no_unknown_fields(path: &str, input: &Value, typed: &Value) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let tv = t.get(k).unwrap_or_else(|| panic!("{path}.{k}: not a field of this kind (typo?)"));
                assert_no_unknown_fields(&format!("{path}.{k}"), v, tv);
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            assert_eq!(i.len(), t.len(), "{path}");
            for (n, (a, b)) in i.iter().zip(t).enumerate() {
                assert_no_unknown_fields(&format!("{path}[{n}]"), a, b);
            }
        }
        _ => {}
    }
}

#[allow(clippy::large_enum_variant)]
enum Doc {
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(DaemonSet),
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, n: usize, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file} document {n}: {e}"));
    assert_no_unknown_fields(&format!("{file}#{n}"), v, &serde_json::to_value(&t).unwrap());
    t
}

fn docs(file: &str) -> Vec<Doc> {
    let text = conf(file);
    let mut out = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let n = i + 1;
        let v: Value = Value::deserialize(d).unwrap_or_else(|e| panic!("{file} document {n}: {e}"));
        if v.is_null() {
            continue;
        }
        let kind = (v["apiVersion"].as_str().unwrap_or(""), v["kind"].as_str().unwrap_or(""));
        out.push(match kind {
            ("v1", "ServiceAccount") => Doc::ServiceAccount(typed(file, n, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => Doc::ClusterRole(typed(file, n, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Doc::ClusterRoleBinding(typed(file, n, &v)),
            ("v1", "ConfigMap") => Doc::ConfigMap(typed(file, n, &v)),
            ("apps/v1", "DaemonSet") => Doc::DaemonSet(typed(file, n, &v)),
            other => panic!("{file} document {n}: unexpected {other:?}"),
        });
    }
    out
}

const MANIFEST: &str = "weir.yaml";

macro_rules! the {
    ($docs:expr, $kind:ident) => {{
        let found: Vec<_> = $docs.iter().filter_map(|d| if let Doc::$kind(x) = d { Some(x) } else { None }).collect();
        assert_eq!(found.len(), 1, concat!("exactly one ", stringify!($kind), " in the manifest"));
        found[0]
    }};
}

/// (API group, resource) of each kind the kube source lists and watches;
/// exhaustive, so a new kind fails to compile here until the RBAC is
/// checked for it.
fn watched(kind: ObjectKind) -> (String, String) {
    use k8s_openapi::api::{core::v1 as core, networking::v1 as net};
    fn of<K: k8s_openapi::Resource>() -> (String, String) {
        (K::GROUP.to_string(), K::URL_PATH_SEGMENT.to_string())
    }
    match kind {
        ObjectKind::Namespace => of::<core::Namespace>(),
        ObjectKind::Pod => of::<core::Pod>(),
        ObjectKind::Service => of::<core::Service>(),
        ObjectKind::NetworkPolicy => of::<net::NetworkPolicy>(),
        ObjectKind::Node => of::<core::Node>(),
        ObjectKind::ClusterNetworkPolicy => {
            (ClusterNetworkPolicy::group(&()).into_owned(), ClusterNetworkPolicy::plural(&()).into_owned())
        }
    }
}

#[test]
fn rbac_reads_every_watched_resource_and_writes_only_node_annotations() {
    let docs = docs(MANIFEST);
    let sa = the!(docs, ServiceAccount);
    let role = the!(docs, ClusterRole);
    let binding = the!(docs, ClusterRoleBinding);

    let read_only: BTreeSet<&str> = ["get", "list", "watch"].into();
    let mut granted = BTreeSet::new();
    let mut node_patch_granted = false;
    for rule in role.rules.iter().flatten() {
        for verb in &rule.verbs {
            // The one write: a patch of its own Node's backend annotations.
            let node_patch = verb == "patch"
                && rule.api_groups.as_deref() == Some(&["".to_string()][..])
                && rule.resources.as_deref() == Some(&["nodes".to_string()][..]);
            node_patch_granted |= node_patch;
            assert!(
                read_only.contains(verb.as_str()) || node_patch,
                "ClusterRole grants {verb:?}: policyd only reads, and patches Nodes"
            );
        }
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        assert!(rule.resource_names.is_none(), "cluster-wide: every object of each kind");
        for group in rule.api_groups.iter().flatten() {
            assert_ne!(group, "*", "no wildcard API groups");
            for res in rule.resources.iter().flatten() {
                assert_ne!(res, "*", "no wildcard resources");
                for verb in &rule.verbs {
                    granted.insert((group.clone(), res.clone(), verb.clone()));
                }
            }
        }
    }
    let can = |(g, r): &(String, String), verb: &str| granted.contains(&(g.clone(), r.clone(), verb.to_string()));
    // Service backends are read too (named targetPorts per endpoint).
    let endpoint_slices = ("discovery.k8s.io".to_string(), "endpointslices".to_string());
    for res in ObjectKind::ALL.map(watched).iter().chain([&endpoint_slices]) {
        assert!(can(res, "list") && can(res, "watch"), "list+watch on {res:?} missing");
    }
    // install-cni reads its own Node.
    assert!(can(&watched(ObjectKind::Node), "get"), "get on nodes missing");
    assert!(node_patch_granted, "patch on nodes (backend annotations) missing");

    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

/// `$(VAR)` in a container's args, resolved as the kubelet does from the
/// container's env: a literal value, or a ConfigMap key (which must exist).
fn expand(c: &Container, arg: &str, config: &ConfigMap) -> String {
    let mut out = arg.to_string();
    for e in c.env.iter().flatten() {
        let pattern = format!("$({})", e.name);
        if !out.contains(&pattern) {
            continue;
        }
        let value = match (&e.value, e.value_from.as_ref()) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) if from.config_map_key_ref.is_some() => {
                let key = from.config_map_key_ref.as_ref().unwrap();
                assert_eq!(Some(&key.name), config.metadata.name.as_ref(), "{}: the manifest's ConfigMap", e.name);
                config
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&key.key))
                    .unwrap_or_else(|| panic!("no key {}", key.key))
                    .clone()
            }
            // Filled in by the kubelet (downward API).
            _ => continue,
        };
        out = out.replace(&pattern, &value);
    }
    out
}

#[test]
fn daemonset_installs_the_cni_then_runs_policyd_with_bpffs_and_probes() {
    let docs = docs(MANIFEST);
    let sa = the!(docs, ServiceAccount);
    let config = the!(docs, ConfigMap);
    let ds = the!(docs, DaemonSet);
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(config.metadata.namespace, ds.metadata.namespace, "a pod reads ConfigMaps of its own namespace");
    let spec = ds.spec.as_ref().unwrap();
    let tmpl_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().expect("matchLabels") {
        assert_eq!(tmpl_labels.get(k), Some(v), "selector must match the template's labels");
    }
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name, "runs as the manifest's ServiceAccount");
    assert_eq!(sa.metadata.namespace, ds.metadata.namespace);
    assert_eq!(pod.host_network, Some(true));
    assert!(
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "runs on every node"
    );

    let volumes = pod.volumes.as_ref().unwrap();
    let host_path_of = |volume: &str| {
        volumes
            .iter()
            .find(|v| v.name == volume)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
            .unwrap_or_else(|| panic!("volume {volume} is not a hostPath"))
    };
    // The host's own path, mounted at the same place: the binaries' default
    // paths mean the same inside the container as on the host.
    let host_mount = |c: &Container, path: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(path).starts_with(&m.mount_path) && host_path_of(&m.name) == m.mount_path)
            .cloned()
            .unwrap_or_else(|| panic!("{}: no host mount holding {path}", c.name))
    };
    let node_name_from_field = |c: &Container| {
        c.env.iter().flatten().any(|e| {
            e.name == "NODE_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "spec.nodeName")
        })
    };

    // Init: install-cni, with its default directories, which are the host's.
    let inits = pod.init_containers.as_ref().expect("an init container");
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    let iargs: Vec<String> = init.args.iter().flatten().map(|a| expand(init, a, config)).collect();
    assert_eq!(iargs.first().map(String::as_str), Some("install-cni"), "{iargs:?}");
    assert!(init.command.is_none(), "the image's entrypoint, weir-policyd, next to the weir it installs");
    assert!(iargs.iter().any(|a| a == "--in-cluster"));
    assert!(iargs.iter().any(|a| a == "--node-name=$(NODE_NAME)") && node_name_from_field(init));
    assert!(!iargs
        .iter()
        .any(|a| a.starts_with("--bin-dir") || a.starts_with("--conf-dir") || a.starts_with("--from")));
    for dir in [weir_common::paths::DEFAULT_CNI_BIN_DIR, weir_common::paths::DEFAULT_CNI_CONF_DIR] {
        assert_ne!(host_mount(init, dir).read_only, Some(true), "install-cni writes {dir}");
    }
    // What the ConfigMap gives install-cni is what it accepts.
    let cni_version = iargs.iter().find_map(|a| a.strip_prefix("--cni-version=")).expect("--cni-version");
    assert_eq!(cni_version, weir_policyd::install::conflist::DEFAULT_CNI_VERSION, "the default every runtime accepts");
    let cluster = iargs.iter().find_map(|a| a.strip_prefix("--cluster-cidr=")).expect("--cluster-cidr");
    let settings = weir_policyd::install::conflist::Settings {
        cni_version: cni_version.to_string(),
        pod_cidrs: vec!["10.244.7.0/24".parse().unwrap()],
        cluster_cidrs: cluster.split(',').map(|c| c.parse().expect("cluster-cidrs are CIDRs")).collect(),
    };
    weir_policyd::install::conflist::render(&settings).unwrap();

    // Then policyd, with its default bpffs root and run dir.
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert!(c.command.is_none(), "the image's entrypoint, weir-policyd");
    assert_eq!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let bpf = host_mount(c, weir_common::paths::DEFAULT_BPFFS_ROOT);
    assert_eq!(bpf.mount_path, "/sys/fs/bpf", "bpffs itself, so policyd can mount it where the host has none");
    assert_eq!(bpf.mount_propagation.as_deref(), Some("Bidirectional"), "pins must reach the host");
    assert_ne!(host_mount(c, weir_common::paths::DEFAULT_RUN_DIR).read_only, Some(true), "run dir writable");
    assert!(node_name_from_field(c), "NODE_NAME from spec.nodeName");

    let args: Vec<String> = c.args.iter().flatten().map(|a| expand(c, a, config)).collect();
    assert!(args.iter().any(|a| a == "--in-cluster"));
    assert!(args.iter().any(|a| a == "--node-name=$(NODE_NAME)"));
    assert!(!args.iter().any(|a| a.starts_with("--bpffs-root") || a.starts_with("--run-dir")), "the defaults");
    let backend = args.iter().find_map(|a| a.strip_prefix("--backend=")).expect("--backend");
    assert!(["none", "host-gw", "vxlan"].contains(&backend), "--backend={backend}");
    let listen = args.iter().find_map(|a| a.strip_prefix("--listen=")).expect("--listen");
    let addr: std::net::SocketAddr = listen.parse().expect("--listen is host:port");
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(addr.port() as i32));
        if addr.ip().is_loopback() {
            assert_eq!(
                get.host.as_deref(),
                Some(addr.ip().to_string().as_str()),
                "probe the loopback address policyd listens on"
            );
        }
    }
}

const UNINSTALL_MANIFEST: &str = "weir-uninstall.yaml";

/// Host path -> where the pod mounts it.
fn host_paths(pod: &k8s_openapi::api::core::v1::PodSpec, c: &Container) -> Vec<(PathBuf, PathBuf)> {
    let volumes = pod.volumes.as_ref().unwrap();
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let v = volumes.iter().find(|v| v.name == m.name).unwrap_or_else(|| panic!("no volume {}", m.name));
            let host = v.host_path.as_ref().unwrap_or_else(|| panic!("volume {} is not a hostPath", m.name));
            (PathBuf::from(&host.path), PathBuf::from(&m.mount_path))
        })
        .collect()
}

/// Where `container_path` is on the host, through the container's mounts.
fn on_host(mounts: &[(PathBuf, PathBuf)], container_path: &str) -> Option<PathBuf> {
    mounts.iter().find_map(|(host, mounted)| {
        Path::new(container_path).strip_prefix(mounted).ok().map(|rest| host.join(rest)).map(|p| {
            // "a/" + "" joins to "a/": compare without the trailing slash
            PathBuf::from(p.to_string_lossy().trim_end_matches('/'))
        })
    })
}

#[test]
fn uninstall_daemonset_reaches_every_place_weir_uses_and_may_only_patch_nodes() {
    let docs = docs(UNINSTALL_MANIFEST);
    let sa = the!(docs, ServiceAccount);
    let role = the!(docs, ClusterRole);
    let binding = the!(docs, ClusterRoleBinding);
    let ds = the!(docs, DaemonSet);
    assert!(!docs.iter().any(|d| matches!(d, Doc::ConfigMap(_))), "nothing to configure");

    // RBAC: its own Node, read and patched (the weir.io/ annotations).
    let rules = role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["".to_string()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["nodes".to_string()][..]));
    assert_eq!(rules[0].verbs, ["get", "patch"]);
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!((Some(&subject.name), &subject.namespace), (sa.metadata.name.as_ref(), &sa.metadata.namespace));

    // The same image and host access as the install's DaemonSet.
    let install_docs = self::docs(MANIFEST);
    let install = the!(install_docs, DaemonSet).spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let spec = ds.spec.as_ref().unwrap();
    assert!(spec.min_ready_seconds.unwrap_or(0) >= 5, "a refusing container must not count as available");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    assert_eq!(pod.host_network, Some(true), "routes, devices and nftables are the host's");
    assert!(pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image, install.containers[0].image, "the install's image");
    assert!(c.command.is_none(), "the image's entrypoint, weir-policyd");
    assert_eq!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    assert!(c.env.iter().flatten().any(|e| e.name == "NODE_NAME"
        && e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).is_some_and(|f| f.field_path == "spec.nodeName")));

    // Arguments the real binary takes.
    let args: Vec<&str> = c.args.iter().flatten().map(String::as_str).collect();
    assert_eq!(args.first(), Some(&"uninstall"));
    for a in ["--in-cluster", "--node-name=$(NODE_NAME)", "--then-wait"] {
        assert!(args.contains(&a), "{a} missing from {args:?}");
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_weir-policyd")).args(["uninstall", "--help"]).output();
    let help = String::from_utf8_lossy(&help.unwrap().stdout).into_owned();
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "weir-policyd uninstall takes no {flag}:\n{help}");
    }

    // Every place Weir keeps things, reached under --host-root at the
    // host's own path, as uninstall maps it; none a volume of its own (a
    // hostPath volume of a removed directory is made again on a restart).
    let mounts = host_paths(pod, c);
    let host_root = args.iter().find_map(|a| a.strip_prefix("--host-root=")).expect("--host-root=DIR");
    let shipped = weir_policyd::install::record::Network::shipped();
    let removed_whole = [shipped.run_dir.clone(), shipped.bpffs_root.clone(), shipped.ipam_store().unwrap()];
    let cni_dirs = [weir_common::paths::DEFAULT_CNI_BIN_DIR.into(), weir_common::paths::DEFAULT_CNI_CONF_DIR.into()];
    for place in removed_whole.iter().chain(&cni_dirs) {
        let inside = Path::new(host_root).join(place.strip_prefix("/").unwrap());
        assert_eq!(
            on_host(&mounts, inside.to_str().unwrap()).as_ref(),
            Some(place),
            "{} not reachable",
            place.display()
        );
    }
    for place in &removed_whole {
        assert!(!mounts.iter().any(|(h, _)| h == place), "{} is a volume of its own", place.display());
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--bpffs-root")
            || a.starts_with("--run-dir")
            || a.starts_with("--ipam-data-dir")
            || a.starts_with("--bin-dir")
            || a.starts_with("--conf-dir")),
        "the node's own places: its conflist's, its record's, the defaults"
    );
    // Whatever the install's pods mount from the host, uninstall reaches.
    for (host, _) in host_paths(install, &install.containers[0]) {
        assert!(mounts.iter().any(|(h, _)| host.starts_with(h)), "{} not mounted", host.display());
    }
    for c in &pod.containers {
        for m in c.volume_mounts.iter().flatten() {
            assert_ne!(m.read_only, Some(true), "{} must be writable", m.mount_path);
        }
    }
}
