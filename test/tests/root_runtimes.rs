//! Real runtimes start pods on the conflist `weir-policyd install-cni`
//! renders, with weir-policyd enforcing: containerd 1.6's CRI plugin,
//! driven over its socket as kubelet drives it (tests/cri), gives each
//! sandbox an address of the node's range, pods talk, a deny NetworkPolicy
//! stops them and its removal lets them talk again, and Stop/Remove runs
//! DEL (the reservation and the host veth go). podman (CNI backend), whose
//! containers are no Pods, is refused by that enforcing conflist, saying
//! why, and runs on the same network without enforcement.
//!
//! Each runtime runs as "the node" in namespaces of its own
//! (`PrivateMounts::with_network`: network, bpffs, /run, /var/lib), so the
//! conflist's defaults stay as rendered and nothing reaches the host.
//! Needs root, Debian's containerd, podman, runc and busybox-static (test/deps.sh),
//! the reference plugins (`containernetworking-plugins`: loopback,
//! portmap, bandwidth) and the binaries (WEIR_BIN_DIR or the debug build:
//! `cargo build -p weirctl -p weir-cni -p weir-policyd`).
//!
//!     cargo test -p weir-e2e --test root_runtimes -- --nocapture

mod cri;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cri::Cri;
use ipnet::IpNet;
use weir_common::registry::EndpointRecord;
use weir_e2e::lab::Weirctl;
use weir_e2e::node::{deny_ingress_yaml, install_cni, node_cni_dirs, pod_yaml, put_manifest, PodMeta, Policyd};
use weir_e2e::runtime::{
    busybox_rootfs, cgroup_dirs, one_runtime_at_a_time, output, pause_image_archive, Containerd, Podman, PrivateMounts,
};
use weir_testsupport::{netns, require_root, unique, RemoveOnDrop};

/// The node's pod range (inside the shipped conflist's cluster range);
/// the node is a network namespace of the test's own.
const POD_CIDR: &str = "10.244.77.0/24";
/// The network's name in the conflist: the IPAM store's directory.
const NETWORK: &str = "weir";
const NODE_NAME: &str = "wrt-node";
const PAUSE_IMAGE: &str = "weir.test/pause:1";
const PORT: u16 = 8080;

/// What a runtime is never expected to take this long for; a deadline
/// only, so a broken run fails instead of hanging (what is checked is
/// what happens, never how fast).
const PATIENCE: Duration = Duration::from_secs(60);

fn scratch(prefix: &str) -> RemoveOnDrop {
    let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(unique(prefix)));
    fs::create_dir_all(dir.path()).expect("creating the scratch directory");
    dir
}

/// Polls `f` until it gives `Some`, failing with `what` at the deadline.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP listener inside the pod whose sandbox process is `pid`, answering
/// every connection with "ok" (the socket stays in the pod's netns).
fn serve_in_pod(pid: u32) -> Result<()> {
    let listener: TcpListener = netns::run_in(&format!("/proc/{pid}/ns/net"), || TcpListener::bind(("0.0.0.0", PORT)))?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"ok");
        }
    });
    Ok(())
}

/// Whether a TCP connection from the pod whose sandbox process is `pid`
/// to `ip` gets the server's answer. A NetworkPolicy drops the SYN, so a
/// refused connection shows as the connect timing out: the time allowed
/// only decides how long "blocked" is waited for.
fn connects_from_pod(pid: u32, ip: &str, timeout: Duration) -> bool {
    let to = SocketAddr::new(ip.parse().expect("an IP address"), PORT);
    netns::run_in(&format!("/proc/{pid}/ns/net"), move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, timeout) else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        let mut answer = String::new();
        s.read_to_string(&mut answer).is_ok() && answer == "ok"
    })
}

/// The node's network interfaces.
fn node_links(node: &PrivateMounts) -> Result<String> {
    output(node.command("ip").args(["-o", "link", "show"]))
}

/// What ADD left on the node for a sandbox: its endpoint record (host veth
/// name) and its reservation in the IPAM store.
struct Attachment {
    record: PathBuf,
    host_veth: String,
    reservation: PathBuf,
}

fn attachment(node: &PrivateMounts, sandbox_id: &str, ip: &str) -> Result<Attachment> {
    let dir = node.path("/run/weir/endpoints");
    for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let rec: EndpointRecord = serde_json::from_slice(&fs::read(&path)?)?;
        if rec.container_id == sandbox_id {
            let reservation = node.path(&format!("/var/lib/cni/networks/{NETWORK}/{ip}"));
            return Ok(Attachment { record: path, host_veth: rec.host_ifname, reservation });
        }
    }
    bail!("no endpoint record in {} names sandbox {sandbox_id}", dir.display())
}

#[test]
fn root_containerd_cri_runs_pods_on_weir_with_policy_enforced() {
    require_root!("containerd runs pod sandboxes");
    let _one = one_runtime_at_a_time();
    containerd_cri_runs_pods().unwrap();
}

fn containerd_cri_runs_pods() -> Result<()> {
    let weir = Weirctl::locate()?;
    let dir = scratch("wrtcri");
    let dirs = node_cni_dirs(dir.path())?;
    let manifests = dir.path().join("manifests");
    fs::create_dir_all(&manifests)?;
    let image_dir = dir.path().join("image");
    fs::create_dir_all(&image_dir)?;
    let archive = pause_image_archive(&image_dir, PAUSE_IMAGE)?;

    // The node comes up as a Kubernetes node does: containerd first, with
    // no network configured yet; then weir-policyd; then install-cni
    // (the DaemonSet's init container) writes the conflist.
    let containerd = Containerd::start_cri(&dirs, PAUSE_IMAGE)?;
    let node = containerd.mounts();
    containerd.ctr(&["image", "import", &archive.to_string_lossy()])?;
    let cri = Cri::connect(&containerd.socket())?;
    let (ready, why) = cri.network_ready()?;
    assert!(!ready, "no conflist yet, yet containerd reports NetworkReady");
    eprintln!("before install-cni: NetworkReady false ({why})");

    let mut policyd = Policyd::start(&weir, node, &manifests, NODE_NAME, dir.path().join("policyd.log"))?;
    install_cni(&weir, &dirs, POD_CIDR)?;
    eventually("containerd reports NetworkReady after install-cni wrote its conflist", || {
        Ok(cri.network_ready()?.0.then_some(()))
    })
    .with_context(|| format!("containerd's log:\n{}", containerd.log()))?;

    pods_talk_until_denied(&cri, node, &manifests, &mut policyd, containerd.cgroup_parent())
        .with_context(|| format!("weir-policyd's log:\n{}\ncontainerd's log:\n{}", policyd.log(), containerd.log()))
}

fn pods_talk_until_denied(
    cri: &Cri,
    node: &PrivateMounts,
    manifests: &Path,
    policyd: &mut Policyd,
    cgroup_parent: &str,
) -> Result<()> {
    let namespace = "wrt";
    let pods: Vec<(PodMeta, &str)> = ["server", "client"]
        .into_iter()
        .enumerate()
        .map(|(i, app)| {
            // One uid per pod: an endpoint matched to the wrong Pod shows.
            let uid = format!("00000000-0000-4000-8000-{:012x}", std::process::id() as u64 * 16 + i as u64);
            (PodMeta { name: app.to_string(), namespace: namespace.to_string(), uid }, app)
        })
        .collect();
    let mut sandboxes = Vec::new();
    for (pod, app) in &pods {
        put_manifest(manifests, &format!("pod-{app}.yaml"), &pod_yaml(pod, NODE_NAME, app, None))?;
        let id = cri.run_pod_sandbox(pod, cgroup_parent)?;
        let status = cri.pod_sandbox_status(&id)?;
        assert!(status.ready, "{app}: the sandbox is not ready: {status:?}");
        let ip: std::net::IpAddr = status.ip.parse().with_context(|| format!("{app}: sandbox address {status:?}"))?;
        let range: IpNet = POD_CIDR.parse()?;
        assert!(range.contains(&ip), "{app}: {ip} is not in the node's range {POD_CIDR}");
        assert!(status.pid > 0, "{app}: PodSandboxStatus gave no pid");
        put_manifest(manifests, &format!("pod-{app}.yaml"), &pod_yaml(pod, NODE_NAME, app, Some(&status.ip)))?;
        sandboxes.push((id, status));
    }
    let (server, client) = (&sandboxes[0].1, &sandboxes[1].1);
    assert_ne!(server.ip, client.ip, "two sandboxes, two addresses");
    serve_in_pod(server.pid)?;

    // No policy: the pods talk.
    assert!(
        connects_from_pod(client.pid, &server.ip, PATIENCE),
        "client {} cannot reach server {}:{PORT} with no policy",
        client.ip,
        server.ip
    );
    // A deny-all-ingress policy for the server: blocked, once policyd has
    // programmed it.
    put_manifest(manifests, "deny.yaml", &deny_ingress_yaml(namespace, "server"))?;
    eventually("the deny policy blocks client -> server", || {
        Ok((!connects_from_pod(client.pid, &server.ip, Duration::from_secs(1))).then_some(()))
    })?;
    // Not one slow connect on a busy machine: blocked, again and again.
    for attempt in 1..=3 {
        assert!(
            !connects_from_pod(client.pid, &server.ip, Duration::from_secs(2)),
            "client reached server through the deny policy (attempt {attempt})"
        );
    }
    // Its removal lets them talk again.
    fs::remove_file(manifests.join("deny.yaml"))?;
    eventually("removing the deny policy lets client reach server again", || {
        Ok(connects_from_pod(client.pid, &server.ip, Duration::from_secs(2)).then_some(()))
    })?;
    assert!(policyd.running(), "weir-policyd exited");

    // Stop runs DEL: the reservation, the endpoint record and the host
    // veth go; a second Stop (kubelet repeats it) and Remove succeed.
    for (id, status) in &sandboxes {
        let att = attachment(node, id, &status.ip)?;
        assert!(att.reservation.exists(), "ADD reserved {} in the IPAM store", status.ip);
        assert!(node_links(node)?.contains(&format!(" {}@", att.host_veth)), "host veth {} exists", att.host_veth);
        cri.stop_pod_sandbox(id)?;
        assert!(!att.reservation.exists(), "DEL released {}", status.ip);
        assert!(!att.record.exists(), "DEL removed the endpoint record {}", att.record.display());
        // The veth's deletion finishes in a process of its own just after
        // DEL returns (it waits on the kernel's RCU grace periods).
        eventually(&format!("host veth {} is deleted", att.host_veth), || {
            Ok((!node_links(node)?.contains(&format!(" {}@", att.host_veth))).then_some(()))
        })?;
        cri.stop_pod_sandbox(id)?;
        cri.remove_pod_sandbox(id)?;
    }
    assert!(policyd.running(), "weir-policyd exited");
    Ok(())
}

/// The node's veths (host ends of its containers' links).
fn node_veths(node: &PrivateMounts) -> Result<usize> {
    Ok(output(node.command("ip").args(["-o", "link", "show", "type", "veth"]))?.lines().count())
}

#[test]
fn root_podman_is_refused_by_the_enforcing_conflist_and_runs_without_policy() {
    require_root!("podman runs containers");
    let _one = one_runtime_at_a_time();
    podman_on_weir().unwrap();
}

/// podman's CNI backend passes `K8S_POD_NAME=<container name>` and no
/// namespace or uid: no Pod to match, so no NetworkPolicy can select the
/// container. The enforcing conflist install-cni renders refuses such an
/// ADD at once, saying why and what to use instead; the same network
/// with `"policy": {"enforce": false}` runs podman's containers, which
/// talk freely, and `podman rm` runs DEL.
fn podman_on_weir() -> Result<()> {
    let weir = Weirctl::locate()?;
    let dir = scratch("wrtpod");
    let dirs = node_cni_dirs(dir.path())?;
    install_cni(&weir, &dirs, POD_CIDR)?;
    let podman = Podman::with_cni(&dirs)?;
    let node = podman.mounts();
    let run = |name: &str| -> Result<String> {
        let rootfs = dir.path().join(format!("rootfs-{name}"));
        busybox_rootfs(&rootfs)?;
        let rootfs = rootfs.to_string_lossy();
        podman.run(&[
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            NETWORK,
            "--cgroup-parent",
            podman.cgroup_parent(),
            "--rootfs",
            &rootfs,
            "/bin/busybox",
            "sleep",
            "600",
        ])
    };

    // Enforcing (as rendered): refused, naming what podman lacks and the fix.
    let err = format!("{:#}", run("enforced").expect_err("ADD without a pod namespace must fail"));
    assert!(err.contains("CNI_ARGS has no K8S_POD_NAMESPACE:"), "podman passes K8S_POD_NAME only: {err}");
    assert!(err.contains(r#""policy": {"enforce": false}"#), "the error says what to use instead: {err}");
    assert_eq!(node_veths(node)?, 0, "the refused ADD left a veth");
    let store = node.path(&format!("/var/lib/cni/networks/{NETWORK}"));
    let reserved = |store: &Path| -> Vec<String> {
        let Ok(entries) = fs::read_dir(store) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().filter(|n| n.parse::<std::net::IpAddr>().is_ok()).map(String::from))
            .collect()
    };
    assert!(reserved(&store).is_empty(), "the refused ADD left reservations: {:?}", reserved(&store));
    podman.run(&["rm", "--force", "enforced"])?;

    // The same network without enforcement.
    let conflist = dirs.conf_dir.join("10-weir.conflist");
    let mut conf: serde_json::Value = serde_json::from_slice(&fs::read(&conflist)?)?;
    conf["plugins"][0]["policy"] = serde_json::json!({ "enforce": false });
    fs::write(&conflist, serde_json::to_vec_pretty(&conf)?)?;
    let mut containers = Vec::new();
    for name in ["server", "client"] {
        run(name)?;
        let fmt = format!("{{{{.State.Pid}}}} {{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}");
        let seen = podman.run(&["inspect", "--format", &fmt, name])?;
        let (pid, ip) = seen.trim().split_once(' ').with_context(|| format!("podman inspect said {seen:?}"))?;
        let range: IpNet = POD_CIDR.parse()?;
        assert!(range.contains(&ip.parse::<std::net::IpAddr>()?), "{name}: {ip} is not in {POD_CIDR}");
        containers.push((name, pid.parse::<u32>()?, ip.to_string()));
    }
    let (server, client) = (&containers[0], &containers[1]);
    serve_in_pod(server.1)?;
    assert!(connects_from_pod(client.1, &server.2, PATIENCE), "client cannot reach server {}", server.2);
    assert_eq!(node_veths(node)?, 2);
    assert_eq!(reserved(&store).len(), 2);

    // `podman rm` runs DEL: the reservation goes, then the host veth.
    podman.run(&["rm", "--force", "server"])?;
    assert!(!reserved(&store).contains(&server.2), "DEL released {}", server.2);
    eventually("the server's host veth is deleted", || Ok((node_veths(node)? == 1).then_some(())))?;
    podman.run(&["rm", "--force", "client"])?;
    assert!(reserved(&store).is_empty(), "every reservation released: {:?}", reserved(&store));
    eventually("every host veth is deleted", || Ok((node_veths(node)? == 0).then_some(())))?;
    Ok(())
}

#[test]
fn root_containerd_dropped_with_sandboxes_running_leaves_none() {
    require_root!("containerd runs pod sandboxes");
    let _one = one_runtime_at_a_time();
    dropped_with_sandboxes_running().unwrap();
}

/// What a failing test leaves: sandboxes still running when containerd is
/// dropped. They live in mount namespaces of their own, not the runtime's
/// private one; the guard must still kill them and remove their cgroups.
fn dropped_with_sandboxes_running() -> Result<()> {
    let dir = scratch("wrtdrop");
    let image_dir = dir.path().join("image");
    fs::create_dir_all(&image_dir)?;
    let archive = pause_image_archive(&image_dir, PAUSE_IMAGE)?;
    let dirs = node_cni_dirs(dir.path())?;
    let containerd = Containerd::start_cri(&dirs, PAUSE_IMAGE)?;
    containerd.ctr(&["image", "import", &archive.to_string_lossy()])?;
    let cri = Cri::connect(&containerd.socket())?;
    let pod =
        PodMeta { name: "left".into(), namespace: "wrt".into(), uid: "00000000-0000-4000-8000-00000000d0d0".into() };
    let id = cri.run_host_network_sandbox(&pod, containerd.cgroup_parent())?;
    let pid = cri.pod_sandbox_status(&id)?.pid;
    assert!(pid > 0 && Path::new(&format!("/proc/{pid}")).exists(), "the sandbox runs");
    let cgroup = containerd.cgroup_parent().to_string();
    assert!(!cgroup_dirs(&cgroup).is_empty(), "sandboxes run below cgroup {cgroup}");
    drop(cri);
    drop(containerd);
    // kill(2) returned before the process was gone only if it is a zombie
    // no one reaped yet: ask its state, not whether /proc has it.
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z "), "the sandbox {pid} still runs: {state}");
    assert!(cgroup_dirs(&cgroup).is_empty(), "left: {:?}", cgroup_dirs(&cgroup));
    Ok(())
}
