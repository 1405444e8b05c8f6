//! `weirctl explain` latency on the policyd benchmarks' cluster (10,000
//! pods in 100 namespaces, 1,000 policies, 110 pods on this node):
//! policyd's real API (socket, the daemon loop's answer from a complete
//! compile, the dataplane check through BPF_PROG_TEST_RUN on real maps)
//! asked by weirctl's client, in process and as the `weirctl` binary.
//!
//!     cargo build --release -p weirctl --bins --examples
//!     sudo target/release/examples/explain_bench [--requests N]
//!
//! Needs root. Runs in a network namespace of its own (the 110 local
//! endpoints are veth pairs there, which BPF_PROG_TEST_RUN resolves), with
//! the dataplane under `/sys/fs/bpf/weir-explainbench-<pid>` and the run dir
//! in a temporary directory, both removed at the end.

#[path = "../../policyd/examples/common/mod.rs"]
mod common;

use anyhow::{ensure, Context, Result};
use common::{build, describe, ms, pct, Series};
use std::sync::Arc;
use std::time::Instant;
use weir_bpf::{abi, pkt, Dataplane};
use weir_policyd::api::{self, ApiState, Ask};
use weir_policyd::engine::Engine;
use weir_policyd::http::HttpState;
use weir_policyd::metrics::Metrics;
use weir_policyd::sync::Sync;
use weir_testsupport::RemoveOnDrop;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize =
        args.iter().position(|a| a == "--requests").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(400);
    ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespace, BPF maps)");
    // Before any thread: the whole process moves to a namespace of its own.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;

    let t = Instant::now();
    let (store, locals) = build();
    println!("{}", describe(&store, &locals, t.elapsed()));
    let root = RemoveOnDrop::fresh(format!("/sys/fs/bpf/weir-explainbench-{}", std::process::id()));
    let dp = Dataplane::load_or_open(root.path())?;
    // What CNI ADD makes: the host veth, and the endpoint with the pod's
    // MAC and address, not ready.
    for r in &locals {
        let (i, peer) = (r.host_ifindex.to_string(), (r.host_ifindex + 5000).to_string());
        let out = std::process::Command::new("ip")
            .args(["link", "add", &format!("eb{i}"), "index", &i, "type", "veth", "peer", "name"])
            .args([&format!("eb{i}p"), "index", &peer])
            .output()?;
        ensure!(out.status.success(), "ip link add: {}", String::from_utf8_lossy(&out.stderr));
        let nets: Vec<ipnet::IpNet> = r.ips.iter().map(|ip| ipnet::IpNet::new(*ip, 8).unwrap()).collect();
        dp.set_endpoint(r.host_ifindex, &abi::Endpoint::for_pod(pkt::test_mac(r.host_ifindex), &nets, 0)?)?;
    }
    let mut engine = Engine::new();
    let mut sync = Sync::from_maps(&dp)?;
    let d = engine.compile(&store, &locals);
    sync.apply(&dp, &d)?;
    println!(
        "compiled and synced: {} ipcache, {} policy, {} cidr entries",
        d.ipcache.len(),
        d.policy.len(),
        d.cidr.len()
    );
    drop(d);

    // Flows: local -> local, local -> remote, remote -> local, to the world.
    let local = |j: usize| format!("{}/{}", locals[j].pod_namespace, locals[j].pod_name);
    let remote: Vec<String> = store
        .pods
        .keys()
        .filter(|k| !locals.iter().any(|r| r.pod_name == k.1 && r.pod_namespace == k.0))
        .step_by(97)
        .map(|k| format!("{}/{}", k.0, k.1))
        .collect();
    let mut flows: Vec<(String, String, u16, &str)> = Vec::new();
    for j in 0..20 {
        flows.push((local(j), local(j + 50), [8080, 50051, 80, 5432][j % 4], "TCP"));
        flows.push((local(j + 20), remote[j].clone(), [53, 9090][j % 2], ["UDP", "TCP"][j % 2]));
        flows.push((remote[j + 20].clone(), local(j + 70), [8080, 6379, 30001][j % 3], "TCP"));
        flows.push((local(j + 40), "203.0.113.9".into(), 443, "TCP"));
    }

    let run = tempfile::tempdir()?;
    let run_dir = run.path().join("run");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Ask>(16);
    let bpffs = root.path().to_path_buf();
    let node = rt.block_on(async {
        let listener = api::bind(&run_dir)?;
        let http = HttpState::new(Arc::new(Metrics::new()));
        http.set_ready(true);
        // The bench reads no flows: the log is never written.
        let flows =
            Arc::new(weir_policyd::flows::FlowLog::new(std::env::temp_dir().join("weir-bench-flows.log"), 1 << 20));
        let state = ApiState { node: "bench".into(), asks: tx, dp: Arc::new(Dataplane::open(&bpffs)?), http, flows };
        api::spawn(listener, Arc::new(state));
        anyhow::Ok(())
    });
    node?;
    // The daemon loop's part: answer from the store and the compiled engine.
    std::thread::spawn(move || {
        while let Some(ask) = rx.blocking_recv() {
            let _ = ask.reply.send(api::answer(&ask.question, &store, &mut engine, &locals, &Default::default()));
        }
    });

    let ask = |f: &(String, String, u16, &str)| weirctl::explain::Ask {
        from: f.0.clone(),
        to: f.1.clone(),
        port: f.2,
        protocol: f.3.into(),
    };
    // Warm up, and every flow's kernel check must agree.
    for f in &flows {
        let v = weirctl::explain::explain(&run_dir, &ask(f))?;
        ensure!(weirctl::explain::problem(&v).is_none(), "{f:?}: {}", weirctl::explain::render_text(&v));
    }
    let allowed = flows
        .iter()
        .filter(|f| weirctl::explain::explain(&run_dir, &ask(f)).map(|v| v["allowed"] == true).unwrap_or(false))
        .count();
    println!("{} flows ({allowed} allowed), the kernel agreeing on each", flows.len());

    let mut lib = Series::new();
    for i in 0..requests {
        let (v, w, c) = common::measure(|| weirctl::explain::explain(&run_dir, &ask(&flows[i % flows.len()])));
        v?;
        lib.push(w, c);
    }
    println!("  {}", lib.report("weirctl::explain::explain (socket round trip, in process)"));

    let bin = std::env::current_exe()?.parent().and_then(|p| p.parent()).map(|p| p.join("weirctl"));
    if let Some(bin) = bin.filter(|b| b.is_file()) {
        let mut walls = Vec::new();
        for i in 0..requests.min(200) {
            let f = &flows[i % flows.len()];
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .args(["explain", "--run-dir"])
                .arg(&run_dir)
                .args(["--from", &f.0, "--to", &f.1, "--port", &f.2.to_string(), "--protocol", f.3, "-o", "json"])
                .output()?;
            walls.push(t.elapsed());
            ensure!(out.status.success(), "weirctl explain: {}", String::from_utf8_lossy(&out.stderr));
        }
        let n = walls.len();
        println!(
            "  `weirctl explain -o json` (process start included), n={n}: wall median {:.2} ms, p99 {:.2} ms, max {:.2} ms: {} the 50 ms floor",
            ms(common::median(&mut walls)),
            ms(pct(&mut walls, 0.99)),
            ms(*walls.iter().max().unwrap()),
            if pct(&mut walls, 0.99).as_millis() < 50 { "p99 under" } else { "p99 OVER" }
        );
    } else {
        println!("  (no weirctl binary next to the examples: build it with --bins to time the command)");
    }
    Ok(())
}
