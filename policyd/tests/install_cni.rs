//! `weir-policyd install-cni`, the real binary, as the DaemonSet's init
//! container runs it: this node's Node read from `apiserver_fixture` (the
//! stand-in for kube-apiserver), `weir` and the chained plugins copied from
//! `--from` into a temporary CNI bin dir, the conflist written into a
//! temporary conf dir. Bad input (no pod CIDR, an unwritable directory, a
//! binary missing from `--from`, an unknown cniVersion) fails naming what
//! to fix and leaves both directories as they were.

mod apiserver_fixture;

use apiserver_fixture::ApiServer;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use weir_policyd::install::conflist::FILE_NAME;

/// A node's CNI directories and what install-cni is given.
struct Host {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    from: PathBuf,
    bin: PathBuf,
    conf: PathBuf,
    kubeconfig: PathBuf,
}

const PLUGINS: [&str; 4] = ["weir", "portmap", "bandwidth", "loopback"];

/// How the stand-in plugins answer VERSION (as containernetworking-plugins
/// >= 1.5 do).
const VERSIONS: &str = r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#;

impl Host {
    fn new(api: &ApiServer) -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let from = root.join("image-bin");
        std::fs::create_dir(&from).unwrap();
        for p in PLUGINS {
            std::fs::write(from.join(p), format!("#!/bin/sh\n# {p} as built\necho '{VERSIONS}'\n")).unwrap();
            std::fs::set_permissions(from.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let kubeconfig = root.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        Host {
            bin: root.join("host/opt/cni/bin"),
            conf: root.join("host/etc/cni/net.d"),
            _tmp: tmp,
            root,
            from,
            kubeconfig,
        }
    }

    /// Runs the binary (blocking: the fixture answers on the test's runtime).
    async fn install(&self, node: &str, extra: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir-policyd"));
        cmd.arg("install-cni")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", node, "--from"])
            .arg(&self.from)
            .arg("--bin-dir")
            .arg(&self.bin)
            .arg("--conf-dir")
            .arg(&self.conf)
            .args(extra)
            .env_remove("NODE_NAME");
        tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
    }

    fn conflist(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.conf.join(FILE_NAME)).unwrap()).unwrap()
    }

    /// Every file under the host directories, with its contents.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in std::fs::read_dir(d).into_iter().flatten() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    out.push((p.clone(), Vec::new()));
                    walk(&p, out);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root.join("host"), &mut out);
        out.sort();
        out
    }
}

fn node(name: &str, pod_cidrs: &[&str], pod_cidr: Option<&str>) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.spec = Some(NodeSpec {
        pod_cidrs: Some(pod_cidrs.iter().map(|c| c.to_string()).collect()),
        pod_cidr: pod_cidr.map(Into::into),
        ..Default::default()
    });
    n
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_failed_changing_nothing(o: &Output, before: &[(PathBuf, Vec<u8>)], host: &Host, wants: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "should have failed: {err}");
    for w in wants {
        assert!(err.contains(w), "error should say {w:?}: {err}");
    }
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(host.snapshot(), before, "the host's CNI directories are as they were");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_node_gets_both_ranges_binaries_first_and_reinstall_changes_nothing() {
    let api = ApiServer::start().await;
    api.put(&node("n-dual", &["10.244.3.0/24", "fd00:10:244:3::/64"], Some("10.244.3.0/24")));
    let host = Host::new(&api);
    let out = host.install("n-dual", &["--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    for p in PLUGINS {
        let dest = host.bin.join(p);
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(host.from.join(p)).unwrap(), "{p}");
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o755, "{p}");
    }
    let list = host.conflist();
    assert_eq!(list["cniVersion"], "1.0.0", "the default every runtime accepts");
    let weir = &list["plugins"][0];
    assert_eq!(weir["ipam"]["ranges"], json!([[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]));
    assert_eq!(weir["clusterCIDRs"], json!(["10.244.0.0/16", "fd00:10:244::/56"]));
    // What the runtime will hand the CNI binary parses as the binary parses it.
    weir_cni::config::parse_netconf(list.clone()).unwrap();
    // The conflist is announced last: after every binary.
    let err = stderr(&out);
    let conflist_at = err.find(&format!("installed {}", host.conf.join(FILE_NAME).display())).expect(&err);
    for p in PLUGINS {
        assert!(err.find(&format!("installed {}", host.bin.join(p).display())).expect(&err) < conflist_at, "{err}");
    }

    let before = host.snapshot();
    let again = host.install("n-dual", &["--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(!stderr(&again).contains("installed "), "nothing rewritten: {}", stderr(&again));
    assert_eq!(host.snapshot(), before, "no temporary file left, nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_and_single_pod_cidr_nodes() {
    let api = ApiServer::start().await;
    api.put(&node("n-v6", &["fd00:10:244:7::/64"], None));
    // Older clusters set only spec.podCIDR.
    api.put(&node("n-old", &[], Some("10.244.9.0/24")));
    let host = Host::new(&api);
    let out = host.install("n-v6", &["--cluster-cidr", "fd00:10:244::/56", "--cni-version", "1.1.0"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = host.conflist();
    assert_eq!(list["cniVersion"], "1.1.0");
    assert_eq!(list["plugins"][0]["ipam"]["ranges"], json!([[{"subnet": "fd00:10:244:7::/64"}]]));
    assert_eq!(list["plugins"][0]["clusterCIDRs"], json!(["fd00:10:244::/56"]));

    let out = host.install("n-old", &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(host.conflist()["plugins"][0]["ipam"]["ranges"], json!([[{"subnet": "10.244.9.0/24"}]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_pod_cidr_or_no_such_node_installs_nothing() {
    let api = ApiServer::start().await;
    api.put(&node("n-none", &[], None));
    let host = Host::new(&api);
    let out = host.install("n-none", &[]).await;
    assert_failed_changing_nothing(&out, &[], &host, &["Node n-none", "spec.podCIDRs", "--allocate-node-cidrs"]);
    assert!(!host.root.join("host").exists());

    let out = host.install("n-missing", &[]).await;
    assert_failed_changing_nothing(&out, &[], &host, &["Node n-missing does not exist", "--node-name"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_directories_missing_binaries_and_unknown_versions_change_nothing() {
    let api = ApiServer::start().await;
    api.put(&node("n-1", &["10.244.1.0/24"], None));
    let mut host = Host::new(&api);
    // A node with an older install: it must survive every failure below.
    std::fs::create_dir_all(&host.bin).unwrap();
    std::fs::create_dir_all(&host.conf).unwrap();
    std::fs::write(host.bin.join("weir"), b"older weir").unwrap();
    std::fs::write(host.conf.join(FILE_NAME), b"{\"older\": true}").unwrap();
    let before = host.snapshot();

    // The conf dir is a regular file: no directory there, even for root
    // (mode bits do not stop root). The binaries were staged first.
    let conf = host.conf.clone();
    host.conf = host.root.join("host/etc/cni/net.d").join(FILE_NAME);
    let out = host.install("n-1", &[]).await;
    assert_failed_changing_nothing(&out, &before, &host, &[&host.conf.display().to_string()]);
    // A path through a regular file.
    host.conf = host.root.join("host/etc/cni/net.d").join(FILE_NAME).join("net.d");
    let out = host.install("n-1", &[]).await;
    assert_failed_changing_nothing(&out, &before, &host, &[&host.conf.display().to_string()]);
    host.conf = conf;

    std::fs::remove_file(host.from.join("weir")).unwrap();
    let out = host.install("n-1", &[]).await;
    assert_failed_changing_nothing(&out, &before, &host, &["--from", "no weir binary"]);
    std::fs::write(host.from.join("weir"), b"weir").unwrap();

    // A chained plugin neither the host nor --from has.
    std::fs::remove_file(host.from.join("portmap")).unwrap();
    let out = host.install("n-1", &[]).await;
    assert_failed_changing_nothing(&out, &before, &host, &["portmap", "containernetworking-plugins"]);

    let out = host.install("n-1", &["--cni-version", "2.0.0"]).await;
    assert_failed_changing_nothing(&out, &before, &host, &["--cni-version 2.0.0", "use 1.0.0"]);

    // The host's own portmap is used as it is, not replaced; asked whether
    // it speaks 1.1.0 (it cannot even run), it does not.
    std::fs::write(host.bin.join("portmap"), b"the host's portmap").unwrap();
    std::fs::set_permissions(host.bin.join("portmap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = host.snapshot();
    let out = host.install("n-1", &["--cni-version", "1.1.0"]).await;
    let portmap = host.bin.join("portmap").display().to_string();
    assert_failed_changing_nothing(&out, &before, &host, &[&format!("{portmap} does not speak cniVersion 1.1.0")]);
    let out = host.install("n-1", &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(host.bin.join("portmap")).unwrap(), b"the host's portmap");
    assert_eq!(std::fs::read(host.bin.join("weir")).unwrap(), b"weir");
}

/// install-cni records exactly what it wrote, so uninstall can tell Weir's
/// binaries from the host's: a chained plugin the host had is not Weir's;
/// one Weir wrote stays Weir's on a reinstall (and is updated from --from);
/// one a package replaced since is the host's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_record_says_which_binaries_are_weirs() {
    use weir_policyd::install::record::{digest, Record};
    let api = ApiServer::start().await;
    api.put(&node("n-rec", &["10.244.4.0/24"], None));
    let host = Host::new(&api);
    std::fs::create_dir_all(&host.bin).unwrap();
    std::fs::write(host.bin.join("bandwidth"), b"the host's bandwidth").unwrap();
    std::fs::set_permissions(host.bin.join("bandwidth"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = host.install("n-rec", &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let names = |r: &Record| r.binaries.keys().cloned().collect::<Vec<_>>();
    let r = Record::read(&host.bin).unwrap().expect("a record");
    assert_eq!(names(&r), ["loopback", "portmap", "weir"], "not the host's bandwidth");
    for p in ["loopback", "portmap", "weir"] {
        assert_eq!(r.binaries[p], digest(&std::fs::read(host.bin.join(p)).unwrap()), "{p}");
    }
    assert_eq!(r.network.name, "weir");
    assert_eq!(r.network.ipam_store(), Some("/var/lib/cni/networks/weir".into()));
    // The record is in place before the conflist.
    let err = stderr(&out);
    let at = |p: &Path| err.find(&format!("installed {}", p.display())).expect(&err);
    assert!(at(&Record::path(&host.bin)) < at(&host.conf.join(FILE_NAME)), "{err}");

    // A newer image: Weir's own portmap is updated, still Weir's.
    std::fs::write(host.from.join("portmap"), format!("#!/bin/sh\n# portmap v2\necho '{VERSIONS}'\n")).unwrap();
    let out = host.install("n-rec", &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(host.bin.join("portmap")).unwrap(), std::fs::read(host.from.join("portmap")).unwrap());
    let r = Record::read(&host.bin).unwrap().unwrap();
    assert!(r.wrote("portmap", &std::fs::read(host.bin.join("portmap")).unwrap()));

    // A package replaced it since: the host's now, left alone and forgotten.
    std::fs::write(host.bin.join("portmap"), b"the package's portmap").unwrap();
    let out = host.install("n-rec", &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(host.bin.join("portmap")).unwrap(), b"the package's portmap");
    assert_eq!(names(&Record::read(&host.bin).unwrap().unwrap()), ["loopback", "weir"]);

    // A record that cannot be read (damaged by hand, or naming a file
    // outside the bin dir) is as none: the init container must not
    // crash-loop on it; it is said, and a good record replaces it.
    std::fs::write(Record::path(&host.bin), b"{ damaged").unwrap();
    let out = host.install("n-rec", &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not an install record") && stderr(&out).contains("as if there were none"));
    // Without a record, the loopback Weir wrote is taken for the host's
    // (the safe side: uninstall then leaves it).
    assert_eq!(names(&Record::read(&host.bin).unwrap().unwrap()), ["weir"]);
}
