//! CRI RunPodSandbox and StopPodSandbox latency, as kubelet sees it, on two
//! containerd 1.6 nodes in the same run: one on the conflist `weir-policyd
//! install-cni` renders with weir-policyd enforcing, one on the reference
//! `bridge` + `host-local` with the same chain (portmap, bandwidth), bridge
//! name, gateway, masquerade, hairpin and range; and a third running
//! hostNetwork sandboxes (no CNI call: the runtime's own share). Each node
//! runs in namespaces of its own (`PrivateMounts::with_network`); pods are
//! interleaved between the nodes, the order rotating pod by pod, so load
//! drift hits all alike.
//!
//! Root. Build the binaries first (`cargo build --release -p weir-cni -p
//! weir-policyd -p weirctl`, WEIR_BIN_DIR=target/release), then
//!
//!     cargo run --release -p weir-e2e --example cri_bench -- --pods 30 --reps 3

// The runtime tests' CRI client; the benchmark needs less of it.
#[allow(dead_code)]
#[path = "../tests/cri/mod.rs"]
mod cri;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cri::Cri;
use weir_e2e::lab::Weirctl;
use weir_e2e::node::{install_cni, node_cni_dirs_with, pod_yaml, put_manifest, PodMeta, Policyd};
use weir_e2e::runtime::{pause_image_archive, CniDirs, Containerd};
use weir_testsupport::{unique, RemoveOnDrop};

const POD_CIDR: &str = "10.244.78.0/24";
const NODE_NAME: &str = "wbench-node";
const PAUSE_IMAGE: &str = "weir.test/pause:1";
const NAMESPACE: &str = "bench";

/// The reference plugins configured as install-cni's conflist configures
/// weir (conf/10-weir.conflist), policy aside.
fn reference_conflist() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ref",
        "plugins": [
            { "type": "bridge", "bridge": "cni0", "mtu": 1500, "hairpinMode": true, "isGateway": true,
              "isDefaultGateway": true, "ipMasq": true,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": POD_CIDR }]],
                        "dataDir": "/var/lib/cni/networks" } },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
            { "type": "bandwidth", "capabilities": { "bandwidth": true } }
        ]
    })
    .to_string()
}

/// One node: containerd's CRI plugin on its network, and what it ran.
struct Node {
    name: &'static str,
    /// The CNI network its pods join (the IPAM store's directory); None:
    /// hostNetwork pods, no CNI call (the runtime's own share).
    network: Option<&'static str>,
    containerd: Containerd,
    cri: Cri,
    run_ms: Vec<f64>,
    stop_ms: Vec<f64>,
}

impl Node {
    fn start(name: &'static str, network: Option<&'static str>, dirs: &CniDirs, archive: &Path) -> Result<Node> {
        let containerd = Containerd::start_cri(dirs, PAUSE_IMAGE)?;
        containerd.ctr(&["image", "import", &archive.to_string_lossy()])?;
        let cri = Cri::connect(&containerd.socket())?;
        Ok(Node { name, network, containerd, cri, run_ms: Vec::new(), stop_ms: Vec::new() })
    }

    fn wait_network_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.cri.network_ready()?.0 {
            if Instant::now() > deadline {
                bail!("{}: containerd never reported NetworkReady; its log:\n{}", self.name, self.containerd.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// RunPodSandbox, timed; the sandbox's id and address (asked after).
    fn run(&mut self, pod: &PodMeta) -> Result<(String, String)> {
        let t = Instant::now();
        let id = match self.network {
            Some(_) => self.cri.run_pod_sandbox(pod, self.containerd.cgroup_parent()),
            None => self.cri.run_host_network_sandbox(pod, self.containerd.cgroup_parent()),
        }
        .with_context(|| format!("{}: {}", self.name, pod.name))?;
        self.run_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let status = self.cri.pod_sandbox_status(&id)?;
        if !status.ready {
            bail!("{}: sandbox of {} is not ready: {status:?}", self.name, pod.name);
        }
        Ok((id, status.ip))
    }

    /// StopPodSandbox (DEL), timed; RemovePodSandbox after, untimed.
    fn stop(&mut self, id: &str) -> Result<()> {
        let t = Instant::now();
        self.cri.stop_pod_sandbox(id)?;
        self.stop_ms.push(t.elapsed().as_secs_f64() * 1e3);
        self.cri.remove_pod_sandbox(id)
    }

    /// Addresses still reserved in the node's IPAM store.
    fn reserved(&self) -> usize {
        let Some(network) = self.network else { return 0 };
        let dir = self.containerd.mounts().path(&format!("/var/lib/cni/networks/{network}"));
        fs::read_dir(dir)
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().parse::<std::net::IpAddr>().is_ok()).count()
            })
            .unwrap_or(0)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a number"))?;
            v.parse().with_context(|| format!("{name} {v}: not a number"))
        }
    }
}

fn main() -> Result<()> {
    let pods = arg("--pods", 30)?;
    let reps = arg("--reps", 3)?;
    if !(1..=200).contains(&pods) || reps == 0 {
        bail!("--pods 1..200 (the node's /24), --reps at least 1");
    }
    let weir = Weirctl::locate()?;
    let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(unique("wcribench")));
    fs::create_dir_all(dir.path().join("image"))?;
    let archive = pause_image_archive(&dir.path().join("image"), PAUSE_IMAGE)?;
    let manifests = dir.path().join("manifests");
    fs::create_dir_all(&manifests)?;

    // Weir's node, as Kubernetes brings it up.
    let weir_dirs = node_cni_dirs_with(&dir.path().join("weir"), &["loopback", "portmap", "bandwidth"])?;
    let weir_node = Node::start("weir", Some("weir"), &weir_dirs, &archive)?;
    let mut policyd =
        Policyd::start(&weir, weir_node.containerd.mounts(), &manifests, NODE_NAME, dir.path().join("policyd.log"))?;
    install_cni(&weir, &weir_dirs, POD_CIDR)?;
    weir_node.wait_network_ready()?;

    // The reference node.
    let ref_dirs =
        node_cni_dirs_with(&dir.path().join("ref"), &["loopback", "bridge", "host-local", "portmap", "bandwidth"])?;
    fs::write(ref_dirs.conf_dir.join("10-ref.conflist"), reference_conflist())?;
    let ref_node = Node::start("ref", Some("ref"), &ref_dirs, &archive)?;
    ref_node.wait_network_ready()?;

    // hostNetwork sandboxes: the runtime's work alone (no conflist needed).
    let host_dirs = node_cni_dirs_with(&dir.path().join("host"), &[])?;
    let host_node = Node::start("hostNetwork", None, &host_dirs, &archive)?;
    let mut nodes = [weir_node, ref_node, host_node];

    // Every Pod exists before its sandbox starts (as the API server has it
    // before kubelet acts), so weir-policyd can mark each endpoint READY.
    let pod = |rep: usize, i: usize| PodMeta {
        name: format!("p{rep}-{i}"),
        namespace: NAMESPACE.to_string(),
        uid: format!("00000000-0000-4000-8000-{:012x}", rep * 1000 + i),
    };
    for rep in 0..=reps {
        for i in 0..pods {
            let p = pod(rep, i);
            put_manifest(&manifests, &format!("{}.yaml", p.name), &pod_yaml(&p, NODE_NAME, "bench", None))?;
        }
    }

    // One untimed warm-up each (rep 0, pod 0): image unpacked, programs
    // loaded and pinned.
    for node in &mut nodes {
        let (id, _) = node.run(&pod(0, 0))?;
        node.stop(&id)?;
        node.run_ms.clear();
        node.stop_ms.clear();
    }

    let started = Instant::now();
    let k = nodes.len();
    // (pod, node) in the order they run: each pod on every node, the
    // node order rotating pod by pod.
    let order: Vec<(usize, usize)> = (0..pods).flat_map(|i| (0..k).map(move |j| (i, (i + j) % k))).collect();
    for rep in 1..=reps {
        // ids[node][pod]: (sandbox id, address)
        let mut ids: Vec<Vec<(String, String)>> = vec![Vec::new(); k];
        for &(i, n) in &order {
            let got = nodes[n].run(&pod(rep, i))?;
            ids[n].push(got);
        }
        for (node, ids) in nodes.iter().zip(&ids) {
            if node.network.is_none() {
                continue;
            }
            let mut ips: Vec<&str> = ids.iter().map(|(_, ip)| ip.as_str()).collect();
            ips.sort();
            ips.dedup();
            if ips.len() != pods || ips.contains(&"") {
                bail!("{}: {pods} sandboxes got {} distinct addresses", node.name, ips.len());
            }
        }
        for &(i, n) in &order {
            nodes[n].stop(&ids[n][i].0)?;
        }
        for node in &nodes {
            let left = node.reserved();
            if left != 0 {
                bail!("{}: {left} addresses still reserved after every StopPodSandbox", node.name);
            }
        }
    }
    if !policyd.running() {
        bail!("weir-policyd exited; its log:\n{}", policyd.log());
    }

    let n = pods * reps;
    println!(
        "{pods} pods x {reps} reps per node, interleaved ({:.0} s); CRI calls timed at the client",
        started.elapsed().as_secs_f64()
    );
    println!("| node | RunPodSandbox p50 ms | p99 ms | StopPodSandbox p50 ms | p99 ms | n |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for node in &nodes {
        let (run50, run99) = summary(&node.run_ms);
        let (stop50, stop99) = summary(&node.stop_ms);
        println!("| {} | {run50:.1} | {run99:.1} | {stop50:.1} | {stop99:.1} | {n} |", node.name);
        rows.push((run50, run99, stop50, stop99));
    }
    let (w, r, h) = (rows[0], rows[1], rows[2]);
    println!(
        "weir / ref: RunPodSandbox p50 {:.2}, p99 {:.2}; StopPodSandbox p50 {:.2}, p99 {:.2}",
        w.0 / r.0,
        w.1 / r.1,
        w.2 / r.2,
        w.3 / r.3
    );
    // What the network adds to the runtime's own work, p50.
    println!(
        "over hostNetwork, p50: RunPodSandbox weir +{:.1} ms, ref +{:.1} ms; StopPodSandbox weir +{:.1} ms, ref +{:.1} ms",
        w.0 - h.0,
        r.0 - h.0,
        w.2 - h.2,
        r.2 - h.2
    );
    println!("every sandbox got a distinct address of {POD_CIDR}; no reservation left after the stops");
    Ok(())
}
