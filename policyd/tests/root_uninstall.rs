//! `weir-policyd uninstall`, the real binary, on a node set up the real
//! way (needs root; build the binaries first: `cargo build --workspace
//! --bins`): `install-cni` into temporary CNI directories beside a host
//! plugin of the host's own, the dataplane loaded under a bpffs root of the
//! test's, the VXLAN backend reconciled by policyd's node agent (device,
//! routes, leave_node) in a private "node" network namespace, and one pod
//! added by the real `weir` binary (masquerade table, IPAM store, endpoint
//! record and entry). Uninstall refuses while the pod is there or
//! weir-policyd runs, changing nothing; after DEL it removes every part,
//! leaves what is not Weir's, and a second run removes nothing. With API
//! access (`apiserver_fixture`, served inside the node's namespace) it
//! takes Weir's annotations off its Node; with `--force` it goes on while a
//! pod is running.

mod apiserver_fixture;

use apiserver_fixture::node;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};
use weir_policyd::install::{conflist, record};
use weir_policyd::node::annotations::{self, Published};
use weir_policyd::node::{Backend, Config, NodeNetworking};
use weir_testsupport::{require_root, unique, Netns, RemoveOnDrop};

const POLICYD: &str = env!("CARGO_BIN_EXE_weir-policyd");

/// The `weir` binary cargo built beside weir-policyd.
fn weir_binary() -> PathBuf {
    let p = Path::new(POLICYD).with_file_name("weir");
    assert!(p.is_file(), "{} is missing: cargo build --workspace --bins first", p.display());
    p
}

/// A node: its network namespace, its host directories (under a temporary
/// directory), its pins.
struct TestNode {
    ns: Netns,
    tmp: tempfile::TempDir,
    pins: RemoveOnDrop,
}

impl TestNode {
    fn new() -> TestNode {
        let ns = Netns::new("wun");
        // The underlay (the node's InternalIP picks it): a veth, as the
        // kernel has no dummy devices.
        ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
        ns.ip(&["addr", "add", "192.168.66.1/24", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0peer", "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let pins = RemoveOnDrop::fresh(format!("/sys/fs/bpf/{}", unique("weir-un-")));
        TestNode { ns, tmp: tempfile::tempdir().unwrap(), pins }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn bin(&self) -> PathBuf {
        self.path("host/opt/cni/bin")
    }
    fn conf(&self) -> PathBuf {
        self.path("host/etc/cni/net.d")
    }
    fn run_dir(&self) -> PathBuf {
        self.path("host/run/weir")
    }
    fn ipam_store(&self) -> PathBuf {
        self.path("host/var/lib/cni/networks/weir")
    }

    fn policyd(&self, args: &[&str]) -> Output {
        self.ns.command(POLICYD).args(args).env_remove("NODE_NAME").output().unwrap()
    }

    /// Uninstall, told every place (once the conflist and the record are
    /// gone it would otherwise look at the host's own defaults), with no
    /// PATH: the image it runs from in a DaemonSet holds no other program
    /// (no nft, no ip).
    fn uninstall(&self, extra: &[&str]) -> Output {
        let (bin, conf, run, data) = (self.bin(), self.conf(), self.run_dir(), self.path("host/var/lib/cni/networks"));
        let mut args = vec!["uninstall", "--bin-dir", bin.to_str().unwrap(), "--conf-dir", conf.to_str().unwrap()];
        args.extend(["--bpffs-root", self.pins.path().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]);
        args.extend(["--ipam-data-dir", data.to_str().unwrap()]);
        args.extend_from_slice(extra);
        self.ns.command(POLICYD).args(&args).env_remove("NODE_NAME").env("PATH", "/nonexistent").output().unwrap()
    }

    /// Uninstall told no place of the network, as on a node: it takes
    /// them from the conflist, or once that is gone from the install
    /// record. Only while whichever it reads names this test's places, so
    /// that a fault can never reach the host's own defaults.
    fn uninstall_by_its_conflist(&self, extra: &[&str]) -> Output {
        let network = match std::fs::read(self.conf().join(conflist::FILE_NAME)) {
            Ok(b) => {
                record::Network::of(&weir_cni::config::parse_netconf(serde_json::from_slice(&b).unwrap()).unwrap())
            }
            Err(_) => record::Record::read(&self.bin()).unwrap().expect("the conflist or the record").network,
        };
        assert_eq!(
            (&network.run_dir, &network.bpffs_root, network.ipam_data_dir.as_deref()),
            (&self.run_dir(), &self.pins.path().to_path_buf(), Some(self.path("host/var/lib/cni/networks").as_path())),
            "the places uninstall would take are not this test's"
        );
        let (bin, conf) = (self.bin(), self.conf());
        let mut args = vec!["uninstall", "--bin-dir", bin.to_str().unwrap(), "--conf-dir", conf.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.ns.command(POLICYD).args(&args).env_remove("NODE_NAME").env("PATH", "/nonexistent").output().unwrap()
    }

    /// The conflist as installed, then pointed at this test's places (as an
    /// operator may edit it): the CNI binary and uninstall both read them.
    fn install(&self) {
        let from = self.path("image");
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(self.bin()).unwrap();
        std::fs::copy(weir_binary(), from.join("weir")).unwrap();
        // The image's portmap; the host has its own bandwidth and loopback.
        script(&from.join("portmap"), "the image's portmap");
        script(&self.bin().join("bandwidth"), "the host's bandwidth");
        script(&self.bin().join("loopback"), "the host's loopback");
        let (bin, conf) = (self.bin(), self.conf());
        let out = self.policyd(&[
            "install-cni",
            "--pod-cidr",
            "10.66.1.0/24",
            "--cluster-cidr",
            "10.66.0.0/16",
            "--from",
            from.to_str().unwrap(),
            "--bin-dir",
            bin.to_str().unwrap(),
            "--conf-dir",
            conf.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "install-cni: {}", String::from_utf8_lossy(&out.stderr));
        let path = self.conf().join(conflist::FILE_NAME);
        let mut list: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let weir = &mut list["plugins"][0];
        weir["bridge"] = json!(unique("wub"));
        weir["ipam"]["dataDir"] = json!(self.path("host/var/lib/cni/networks"));
        weir["policy"]["bpffsRoot"] = json!(self.pins.path());
        weir["policy"]["runDir"] = json!(self.run_dir());
        // ADD returns at once: nobody plays weir-policyd for the pod.
        weir["policy"]["readyTimeoutMs"] = json!(0);
        std::fs::write(&path, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    }

    /// What weir-policyd does at start and on its first reconcile: the
    /// dataplane pinned, the VXLAN device towards node n2 with its route,
    /// leave_node on the device, this node's network file.
    fn start_policyd_parts(&self) {
        let (dp, _) = weir_bpf::Dataplane::load_or_upgrade(self.pins.path()).unwrap();
        let cfg = Config { backend: Backend::Vxlan, vxlan_vni: 1, vxlan_port: 8472, underlay_iface: None };
        let mut agent = NodeNetworking::new(cfg, "n1".into(), self.run_dir());
        let mut n2 = node("n2", "10.66.2.0/24", "192.168.66.2");
        n2.metadata.annotations = Some(annotations::format(&Published::Vxlan {
            public_ip: "192.168.66.2".parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, 2],
            vni: 1,
            port: 8472,
        }));
        let nodes = BTreeMap::from([("n1".to_string(), node("n1", "10.66.1.0/24", "192.168.66.1")), ("n2".into(), n2)]);
        let out = self.ns.run(move || {
            let out = agent.reconcile(&nodes);
            if let Some(dev) = out.leave_device {
                dp.attach_leave_node(dev).unwrap();
            }
            out
        });
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert!(out.leave_device.is_some());
        assert!(!self.ns.ip(&["route", "show", "proto", "87"]).is_empty(), "Weir's route to n2");
    }

    /// CNI ADD or DEL of the pod, as a runtime execs the installed binary.
    fn cni(&self, command: &str, pod: &Netns) -> Output {
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(self.conf().join(conflist::FILE_NAME)).unwrap()).unwrap();
        let mut entry = list["plugins"][0].clone();
        entry["name"] = list["name"].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        let mut child = self
            .ns
            .command(self.bin().join("weir"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "uninstall-pod")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.bin())
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u-1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&serde_json::to_vec(&entry).unwrap()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{command}: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        out
    }

    /// DEL leaves the host veth to a process of its own: wait for it.
    fn del(&self, pod: &Netns) {
        self.cni("DEL", pod);
        let veth = weir_cni::naming::host_veth("uninstall-pod", "eth0");
        let until = Instant::now() + Duration::from_secs(20);
        while self.ns.has_link(&veth) {
            assert!(Instant::now() < until, "{veth} still there 20 s after DEL");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The bridge the installed conflist names.
    fn bridge(&self) -> String {
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(self.conf().join(conflist::FILE_NAME)).unwrap()).unwrap();
        list["plugins"][0]["bridge"].as_str().unwrap().to_string()
    }

    fn has_masquerade_table(&self) -> bool {
        self.ns.command("nft").args(["list", "table", "inet", "weir"]).output().unwrap().status.success()
    }

    /// Everything uninstall may touch, to see that a refusal touched none.
    fn state(&self) -> String {
        // Files with their contents; pins by name (what reading one gives
        // is the kernel's, not ours).
        fn walk(d: &Path, out: &mut String) {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(d).into_iter().flatten().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for p in entries {
                out.push_str(&format!("{}\n", p.display()));
                if p.is_dir() {
                    walk(&p, out);
                } else if let Some(b) = std::fs::read(&p).ok().filter(|_| !p.starts_with("/sys/fs/bpf")) {
                    out.push_str(&format!("  {}\n", record::digest(&b)));
                }
            }
        }
        let mut s = String::new();
        walk(&self.path("host"), &mut s);
        walk(self.pins.path(), &mut s);
        s.push_str(&format!("links: {:?}\n", self.ns.links()));
        s.push_str(&self.ns.ip(&["-d", "link", "show", "type", "vxlan"]));
        // A bridge that just lost its last port turns "linkdown", and a
        // device that came up gets its IPv6 link-local address, in their
        // own time: the kernel's doing, not uninstall's.
        let routes = self.ns.ip(&["route", "show", "table", "all"]).replace(" linkdown", "");
        for r in routes.lines().filter(|r| !r.contains("fe80::")) {
            s.push_str(&format!("{r}\n"));
        }
        s.push_str(&format!("masquerade table: {}\n", self.has_masquerade_table()));
        s
    }
}

fn script(path: &Path, what: &str) {
    std::fs::write(
        path,
        format!("#!/bin/sh\n# {what}\necho '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The lines of `before` and `after` that differ, for a readable failure.
fn assert_unchanged(before: &str, after: &str) {
    let gone: Vec<&str> = before.lines().filter(|l| !after.lines().any(|a| a == *l)).collect();
    let new: Vec<&str> = after.lines().filter(|l| !before.lines().any(|b| b == *l)).collect();
    assert!(gone.is_empty() && new.is_empty(), "a refused uninstall changed things: gone {gone:#?}, new {new:#?}");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_refused(o: &Output, wants: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "should have refused: {}{err}", stdout(o));
    assert!(err.contains("nothing was removed") && err.contains("--force"), "{err}");
    for w in wants {
        assert!(err.contains(w), "the refusal should name {w:?}: {err}");
    }
}

#[test]
fn root_uninstall_refuses_while_a_pod_uses_weir_then_removes_everything_weirs_once() {
    require_root!();
    let n = TestNode::new();
    n.install();
    let installed = record::Record::read(&n.bin()).unwrap().expect("install-cni leaves its record");
    assert_eq!(installed.binaries.keys().collect::<Vec<_>>(), ["portmap", "weir"], "not the host's own plugins");
    n.start_policyd_parts();
    // What is not Weir's and must stay: a route of the host's, a VXLAN
    // device of another CNI, and one named like Weir's with another VNI.
    n.ns.ip(&["route", "add", "10.99.0.0/24", "via", "192.168.66.9", "dev", "eth0"]);
    n.ns.ip(&["link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8473", "dev", "eth0"]);
    n.ns.ip(&["link", "add", "weir.5", "type", "vxlan", "id", "6", "dstport", "8474", "dev", "eth0"]);
    let pod = Netns::new("wup");
    n.cni("ADD", &pod);
    assert!(n.has_masquerade_table(), "ADD with ipMasq made the table");
    assert!(n.ipam_store().is_dir());

    // While the pod is there: refused, and nothing changed.
    let before = n.state();
    assert_refused(&n.uninstall_by_its_conflist(&[]), &["pod default/web", "uninstall-pod"]);
    assert_unchanged(&before, &n.state());

    n.del(&pod);
    // weir-policyd still running (its heartbeat is fresh): refused too.
    let heartbeat = n.run_dir().join(weir_common::paths::POLICYD_HEARTBEAT);
    std::fs::write(&heartbeat, b"").unwrap();
    let before = n.state();
    assert_refused(&n.uninstall_by_its_conflist(&[]), &["weir-policyd", "kubectl delete -f conf/weir.yaml"]);
    assert_unchanged(&before, &n.state());
    // Stopped a minute ago.
    let stale = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&heartbeat).unwrap().set_modified(stale).unwrap();

    let bridge = n.bridge();
    let out = n.uninstall_by_its_conflist(&[]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    println!("uninstall said:\n{said}");
    let bin = n.bin();
    for line in [
        format!("removed {}", n.conf().join(conflist::FILE_NAME).display()),
        format!("removed {}", bin.join("weir").display()),
        format!("removed {}", bin.join("portmap").display()),
        "detached leave_node from ifindex".to_string(),
        "removed route 10.66.2.0/24 via ".to_string(),
        "removed VXLAN device weir.1".to_string(),
        format!("removed bridge {bridge}"),
        "removed nftables table inet weir".to_string(),
        format!("removed IPAM store {}", n.ipam_store().display()),
        format!("removed pins {}", n.pins.path().display()),
        format!("removed run dir {}", n.run_dir().display()),
        "left this node's weir.io/* annotations".to_string(),
        format!("removed {}", record::Record::path(&bin).display()),
    ] {
        assert!(said.lines().any(|l| l.starts_with(&line)), "missing {line:?} in:\n{said}");
    }
    // Exactly the host's own plugins are left.
    let mut left: Vec<String> =
        std::fs::read_dir(&bin).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["bandwidth", "loopback"]);
    assert!(std::fs::read_to_string(bin.join("bandwidth")).unwrap().contains("the host's bandwidth"));
    assert!(!n.conf().join(conflist::FILE_NAME).exists());
    assert!(!n.ipam_store().exists() && !n.run_dir().exists() && !n.pins.path().exists());
    assert!(!n.has_masquerade_table());
    assert_eq!(n.ns.ip(&["route", "show", "proto", "87"]).trim(), "", "no Weir route left");
    assert!(n.ns.ip(&["route", "show"]).contains("10.99.0.0/24"), "the host's route stays");
    assert!(!n.ns.has_link("weir.1") && !n.ns.has_link(&bridge));
    assert!(n.ns.has_link("flannel.1") && n.ns.has_link("weir.5"), "other VXLAN devices stay");

    // Again: nothing left to remove, and success.
    let again = n.uninstall(&[]);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = stdout(&again);
    assert!(!said.lines().any(|l| l.starts_with("removed") || l.starts_with("detached")), "{said}");
}

/// The API stand-in serving `node`, inside `ns` (where uninstall runs):
/// its kubeconfig, a stop switch, and the Node as it is when stopped.
fn api_in(
    ns: &Netns,
    node: Node,
) -> (String, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<Option<Value>>) {
    let name = node.metadata.name.clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = ns.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let api = apiserver_fixture::ApiServer::start().await;
            api.put(&node);
            tx.send(api.kubeconfig()).unwrap();
            let _ = stopped.await;
            api.object(apiserver_fixture::Res::Nodes, &name)
        })
    });
    (rx.recv().unwrap(), stop, served)
}

#[test]
fn root_uninstall_with_api_access_takes_only_weirs_annotations_off_its_node() {
    require_root!();
    let n = TestNode::new();
    let mut me = node("n-api", "10.66.1.0/24", "192.168.66.1");
    let mut a = annotations::format(&Published::HostGw { public_ip: "192.168.66.1".parse().unwrap() });
    a.insert("example.com/owner".into(), "ops".into());
    me.metadata.annotations = Some(a);
    let (kubeconfig, stop, served) = api_in(&n.ns, me);
    let kubeconfig_path = n.path("kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig).unwrap();
    let api_args = ["--kubeconfig", kubeconfig_path.to_str().unwrap(), "--node-name", "n-api"];

    let out = n.uninstall(&api_args);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    for k in [annotations::BACKEND_TYPE, annotations::BACKEND_DATA, annotations::PUBLIC_IP] {
        assert!(said.contains(&format!("removed annotation {k} from Node n-api")), "{said}");
    }
    let again = n.uninstall(&api_args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(!stdout(&again).lines().any(|l| l.starts_with("removed")), "{}", stdout(&again));

    stop.send(()).unwrap();
    let node = served.join().unwrap().expect("the Node is still there");
    assert_eq!(node["metadata"]["annotations"], json!({"example.com/owner": "ops"}), "only Weir's went");
}

#[test]
fn root_uninstall_with_force_goes_on_while_a_pod_runs_and_says_so() {
    require_root!();
    let n = TestNode::new();
    n.install();
    weir_bpf::Dataplane::load_or_upgrade(n.pins.path()).unwrap();
    let pod = Netns::new("wup");
    n.cni("ADD", &pod);
    let veth = weir_cni::naming::host_veth("uninstall-pod", "eth0");
    let bridge = n.bridge();

    let out = n.uninstall(&["--force"]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(said.starts_with("--force: going on although Weir is in use here:"), "{said}");
    assert!(said.contains("pod default/web"), "{said}");
    assert!(said.contains("detached from_pod from ifindex") && said.contains("detached to_pod from ifindex"), "{said}");
    assert!(!n.pins.path().exists() && !n.run_dir().exists() && !n.ipam_store().exists());
    assert!(!n.bin().join("weir").exists());
    // The pod keeps its interface (its traffic is no longer judged), and
    // the bridge it is on.
    assert!(n.ns.has_link(&veth) && n.ns.has_link(&bridge));
    assert!(said.contains(&format!("left bridge {bridge}: 1 interface(s) still on it")), "{said}");
}

/// A bpffs root shared with another program (a conflist pointing
/// `bpffsRoot` at it): uninstall unpins Weir's maps, programs and markers,
/// and the other program's pin stays, with the root reported left.
#[test]
fn root_uninstall_leaves_a_pin_that_is_not_weirs() {
    require_root!();
    let n = TestNode::new();
    n.install();
    weir_bpf::Dataplane::load_or_upgrade(n.pins.path()).unwrap();
    let foreign = n.pins.path().join("other_cni_map");
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&foreign)
        .args(["type", "array", "key", "4", "value", "4", "entries", "1", "name", "other_cni_map"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    assert!(made.status.success(), "bpftool: {}", stderr(&made));
    let out = n.uninstall_by_its_conflist(&[]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let line = format!("left pins {}: not empty, it holds what is not Weir's: other_cni_map", n.pins.path().display());
    assert!(stdout(&out).lines().any(|l| l == line), "missing {line:?} in:\n{}", stdout(&out));
    let left: Vec<String> =
        std::fs::read_dir(n.pins.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(left, ["other_cni_map"], "every pin of Weir's is gone, the other one stays");
}

/// Pins another build made (its map ABI differs: this build cannot open
/// its maps) or a stopped run half removed: uninstall still tells that no
/// pod uses them, by the endpoints map's keys alone, and detaches
/// leave_node by its link pin alone.
#[test]
fn root_uninstall_detaches_and_removes_pins_of_another_abi() {
    require_root!();
    let n = TestNode::new();
    n.install();
    n.start_policyd_parts();
    let abi = n.pins.path().join(weir_bpf::abi::MAP_ABI);
    let set = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&abi)
        .args(["key", "0", "0", "0", "0", "value", "99", "0", "0", "0"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    assert!(set.status.success(), "bpftool: {}", stderr(&set));
    assert!(weir_bpf::Dataplane::open(n.pins.path()).is_err(), "this build cannot open another ABI's maps");

    let out = n.uninstall_by_its_conflist(&[]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(said.contains("detached leave_node from ifindex"), "{said}");
    assert!(!said.lines().any(|l| l.starts_with("left leave_node")), "{said}");
    assert!(!n.pins.path().exists());
}

/// A pod attached with tc (`policy.attach: "tc"`): its cls_bpf filters
/// live with the device, not in the pins, and uninstall takes them off
/// (here under --force, the pod still running on its veth).
#[test]
fn root_uninstall_takes_off_the_tc_filters_of_a_pod_attached_with_tc() {
    require_root!();
    let n = TestNode::new();
    n.install();
    let path = n.conf().join(conflist::FILE_NAME);
    let mut list: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    list["plugins"][0]["policy"]["attach"] = json!("tc");
    std::fs::write(&path, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    weir_bpf::Dataplane::load_or_upgrade(n.pins.path()).unwrap();
    let pod = Netns::new("wup");
    n.cni("ADD", &pod);
    let veth = weir_cni::naming::host_veth("uninstall-pod", "eth0");
    let filters = || {
        n.ns.exec(&["tc", "filter", "show", "dev", &veth, "ingress"])
            + &n.ns.exec(&["tc", "filter", "show", "dev", &veth, "egress"])
    };
    let before = filters();
    assert!(before.contains("from_pod") && before.contains("to_pod"), "ADD attached with tc: {before}");

    let out = n.uninstall_by_its_conflist(&["--force"]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(said.contains("detached from_pod from ifindex") && said.contains("detached to_pod from ifindex"), "{said}");
    assert!(n.ns.has_link(&veth), "the pod keeps its interface");
    let after = filters();
    assert!(!after.contains("bpf"), "no Weir filter left on {veth}: {after}");
}
