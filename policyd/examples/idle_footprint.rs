//! weir-policyd's idle footprint on a node with 110 pods: the real
//! release binary, connected to a list/watch API server (the tests'
//! fixture) holding the engine benchmark's cluster (10,000 pods in 100
//! namespaces, 1,000 NetworkPolicies, 300 Services, a Node per 110 pods),
//! 110 of the pods on this node as real endpoints (veth, endpoint record,
//! endpoint entry in the maps, as CNI ADD leaves them).
//!
//!     cargo build --release -p weir-policyd --bin weir-policyd --example idle_footprint
//!     sudo target/release/examples/idle_footprint [--pods 10000] [--seconds 60] [--churn-seconds 60]
//!
//! Once /readyz answers 200 and every endpoint is READY, it lets the
//! daemon settle (`--settle`, default 10 s), then reads VmRSS, VmHWM and
//! utime+stime of the daemon at the start and end of an idle window
//! (`--seconds`), no change made; then of a churn window
//! (`--churn-seconds`, 0 to skip) with one pod label change a second made
//! through the API server. Prints a JSON summary.
//!
//! Needs root. Everything runs in a network namespace of its own (this
//! process unshares one before any thread starts: it and the veths go when
//! the process ends, however it ends), under a bpffs root
//! `/sys/fs/bpf/weir-idle-<pid>` and a run dir `/tmp/weir-idle-<pid>`, both
//! removed at the end, also on error or panic. weir-policyd is killed at
//! the end, and by the kernel if this process dies first.

mod common;
#[path = "../tests/apiserver_fixture/mod.rs"]
mod fixture;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_bpf::Dataplane;
use weir_common::registry::Registry;

const NODE: &str = "idle-node";
/// How long weir-policyd may take to list 10,000 pods and program the maps.
const READY_WITHIN: Duration = Duration::from_secs(300);

struct Opts {
    pods: usize,
    settle: u64,
    seconds: u64,
    churn_seconds: u64,
    policyd: PathBuf,
}

/// Paths this run creates, removed on drop (every return path) and by the
/// panic hook (release builds abort on panic, so no drop runs).
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn remove(paths: &[PathBuf]) {
        for p in paths {
            if let Err(e) = std::fs::remove_dir_all(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("could not remove {}: {e}", p.display());
                }
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        Scratch::remove(&self.0);
    }
}

/// The running daemon, killed and reaped on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One reading of the daemon's /proc files.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("weir-policyd is gone")?;
    let kib = |field: &str| -> Result<u64> {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("weir-policyd is gone")?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').context("/proc/PID/stat")? + 2..].split(' ').collect();
    let tick = |i: usize| -> Result<u64> { fields[i - 3].parse().context("/proc/PID/stat utime/stime") };
    Ok(Sample {
        at: Instant::now(),
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        cpu_ticks: tick(14)? + tick(15)?,
    })
}

/// CPU used between two samples, in percent of one core.
fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (b.cpu_ticks - a.cpu_ticks) as f64 / hz / (b.at - a.at).as_secs_f64() * 100.0
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
}

/// GET `path` from the daemon's HTTP listener: (status code, body).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    conn.read_to_string(&mut resp)?;
    let code = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((code, body))
}

/// The sum of a metric's samples (every label set) in Prometheus text.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The daemon's log, last lines, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn run(opts: &Opts, bpffs_root: &Path, run_dir: &Path) -> Result<serde_json::Value> {
    let (store, mut locals) = common::build_with(opts.pods / common::NAMESPACES);
    // The same pods as the API server serves them (the store keeps less).
    let api_pods = common::pods(opts.pods / common::NAMESPACES);
    let pods = store.pods.len();
    let nodes = pods.div_ceil(common::LOCALS);

    // The cluster, in the API server: pods spread over `nodes` nodes, the
    // locals on this one.
    let api = fixture::ApiServer::start().await;
    let local_keys: std::collections::BTreeSet<_> =
        locals.iter().map(|r| (r.pod_namespace.clone(), r.pod_name.clone())).collect();
    for k in 0..nodes {
        let name = if k == 0 { NODE.to_string() } else { format!("node-{k}") };
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"podCIDR": format!("10.244.{k}.0/24"), "podCIDRs": [format!("10.244.{k}.0/24")]},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", k / 250, k % 250 + 1)}]}}))?;
        api.put(&node);
    }
    for ns in store.namespaces.values() {
        api.put(ns);
    }
    for (i, (key, pod)) in api_pods.iter().enumerate() {
        let mut pod = pod.clone();
        let node = if local_keys.contains(key) { NODE.to_string() } else { format!("node-{}", 1 + i % (nodes - 1)) };
        pod.spec.as_mut().unwrap().node_name = Some(node);
        api.put(&pod);
    }
    for svc in store.services.values() {
        api.put(svc);
    }
    for np in store.policies.values() {
        api.put(np);
    }

    // The locals as CNI ADD leaves them before policyd has seen them: a
    // veth, a not-READY endpoint entry, the endpoint record.
    let batch: String = (0..locals.len()).map(|j| format!("link add wi{j} type veth peer name wip{j}\n")).collect();
    let mut ip = Command::new("ip").args(["-batch", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    ip.stdin.take().unwrap().write_all(batch.as_bytes())?;
    let out = ip.wait_with_output()?;
    if !out.status.success() {
        bail!("creating the veths: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let dp = Dataplane::load_or_open(bpffs_root)
        .with_context(|| format!("loading the dataplane under {}", bpffs_root.display()))?;
    let registry = Registry::under(run_dir);
    for (j, r) in locals.iter_mut().enumerate() {
        r.host_ifname = format!("wi{j}");
        let name = std::ffi::CString::new(r.host_ifname.clone())?;
        // SAFETY: a NUL-terminated name we own.
        r.host_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if r.host_ifindex == 0 {
            bail!("no interface {} after creating it", r.host_ifname);
        }
        r.pod_uid = store.pods[&(r.pod_namespace.clone(), r.pod_name.clone())].uid.as_deref().unwrap().to_string();
        let addrs: Vec<ipnet::IpNet> = r.ips.iter().map(|ip| ipnet::IpNet::from(*ip)).collect();
        dp.admit_pod(r.host_ifindex, weir_bpf::pkt::test_mac(r.host_ifindex), &addrs, false)?;
        registry.put(r)?;
    }

    let kubeconfig = run_dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let log = run_dir.join("policyd.log");
    let mut cmd = Command::new(&opts.policyd);
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", NODE, "--listen", &listen])
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--bpffs-root")
        .arg(bpffs_root)
        // At its default log level, as deployed.
        .env_remove("WEIR_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    // SAFETY: prctl is async-signal-safe. If this process dies without
    // dropping the guard (abort on panic), the kernel kills the daemon.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut daemon = Daemon(cmd.spawn().with_context(|| format!("starting {}", opts.policyd.display()))?);
    let pid = daemon.0.id();
    loop {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("weir-policyd exited ({status}) before ready:\n{}", log_tail(&log));
        }
        if matches!(get(&listen, "/readyz"), Ok((200, _))) {
            break;
        }
        if started.elapsed() > READY_WITHIN {
            bail!("weir-policyd not ready after {READY_WITHIN:?}:\n{}", log_tail(&log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = started.elapsed();
    let not_ready = locals.iter().filter(|r| !dp.is_ready(r.host_ifindex).unwrap_or(false)).count();
    if not_ready != 0 {
        bail!("{not_ready} of {} endpoints not READY after /readyz", locals.len());
    }
    let hwm_at_ready = sample(pid)?.hwm_kib;
    eprintln!(
        "ready after {:.1} s ({pods} pods, {} local, {} policies); settling {} s, then {} s idle",
        ready_after.as_secs_f64(),
        locals.len(),
        store.policies.len(),
        opts.settle,
        opts.seconds
    );
    tokio::time::sleep(Duration::from_secs(opts.settle)).await;

    let load_start = loadavg();
    let metrics_start = get(&listen, "/metrics")?.1;
    let idle_start = sample(pid)?;
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    let idle_end = sample(pid)?;
    let metrics_idle = get(&listen, "/metrics")?.1;
    let syncs = |m: &str| metric(m, "weir_policyd_syncs_total");
    let mut summary = json!({
        "pods": pods,
        "local_pods": locals.len(),
        "policies": store.policies.len(),
        "namespaces": store.namespaces.len(),
        "services": store.services.len(),
        "nodes": nodes,
        "ready_after_s": (ready_after.as_secs_f64() * 10.0).round() / 10.0,
        "hwm_at_ready_mib": mib(hwm_at_ready),
        "idle_seconds": opts.seconds,
        "rss_mib": mib(idle_end.rss_kib),
        "rss_at_idle_start_mib": mib(idle_start.rss_kib),
        "hwm_mib": mib(idle_end.hwm_kib),
        "idle_cpu_percent": (cpu_percent(&idle_start, &idle_end) * 100.0).round() / 100.0,
        "idle_syncs": syncs(&metrics_idle) - syncs(&metrics_start),
        "load_at_start": load_start,
    });

    if opts.churn_seconds > 0 {
        // One pod label change a second, alternately a local pod and a remote one.
        let remotes: Vec<&Pod> =
            api_pods.iter().filter(|(k, _)| !local_keys.contains(*k)).map(|(_, p)| p).step_by(97).collect();
        let churn_start = sample(pid)?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for c in 0..opts.churn_seconds as usize {
            tick.tick().await;
            let mut pod = if c % 2 == 0 {
                let r = &locals[(c / 2) % locals.len()];
                api_pods[&(r.pod_namespace.clone(), r.pod_name.clone())].clone()
            } else {
                remotes[(c / 2) % remotes.len()].clone()
            };
            let tier = ["web", "api", "db", "cache", "worker"][(c + 1) % 5];
            pod.metadata.labels.get_or_insert_with(Default::default).insert("tier".into(), tier.into());
            api.put(&pod);
        }
        tick.tick().await;
        let churn_end = sample(pid)?;
        let metrics_churn = get(&listen, "/metrics")?.1;
        let changes_seen = |m: &str| metric(m, "weir_policyd_change_to_maps_seconds_count");
        summary["churn_seconds"] = json!(opts.churn_seconds);
        summary["churn_changes"] = json!(opts.churn_seconds);
        summary["churn_syncs"] = json!(syncs(&metrics_churn) - syncs(&metrics_idle));
        summary["churn_changes_reaching_maps"] = json!(changes_seen(&metrics_churn) - changes_seen(&metrics_idle));
        summary["churn_cpu_percent"] = json!((cpu_percent(&churn_start, &churn_end) * 100.0).round() / 100.0);
        summary["churn_rss_mib"] = json!(mib(churn_end.rss_kib));
        summary["churn_hwm_mib"] = json!(mib(churn_end.hwm_kib));
    }
    summary["load_at_end"] = json!(loadavg());
    if let Some(status) = daemon.0.try_wait()? {
        bail!("weir-policyd exited ({status}) during the measurement:\n{}", log_tail(&log));
    }
    let warnings = std::fs::read_to_string(&log)?.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
    summary["daemon_log_warnings_and_errors"] = json!(warnings);
    drop(daemon);
    Ok(summary)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned());
    let num = |name: &str, def: u64| -> u64 {
        opt(name).map_or(def, |v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{name} {v}: not a number");
                std::process::exit(2)
            })
        })
    };
    let pods = num("--pods", 10_000) as usize;
    if !pods.is_multiple_of(common::NAMESPACES) || !(200..=common::NAMESPACES * common::PODS_PER_NS).contains(&pods) {
        eprintln!(
            "--pods {pods}: a multiple of {} from 200 to {} (pods are spread evenly over the namespaces)",
            common::NAMESPACES,
            common::NAMESPACES * common::PODS_PER_NS
        );
        std::process::exit(2);
    }
    let policyd = opt("--policyd").map(PathBuf::from).unwrap_or_else(|| {
        // target/release/examples/idle_footprint -> target/release/weir-policyd
        let exe = std::env::current_exe().expect("own path");
        exe.parent().and_then(Path::parent).expect("target/<profile>/examples").join("weir-policyd")
    });
    if !policyd.is_file() {
        eprintln!(
            "{}: no weir-policyd there; build it (cargo build --release -p weir-policyd --bin weir-policyd) or pass --policyd PATH",
            policyd.display()
        );
        std::process::exit(2);
    }
    let opts = Opts {
        pods,
        settle: num("--settle", 10),
        seconds: num("--seconds", 60),
        churn_seconds: num("--churn-seconds", 60),
        policyd,
    };
    if opts.seconds == 0 {
        eprintln!("--seconds 0: the idle window needs at least a second");
        std::process::exit(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("idle_footprint needs root (network namespace, BPF maps); run it with sudo");
        std::process::exit(2);
    }
    // Before any thread exists, so every thread and child is in it. It
    // holds the veths and the loopback everything talks over.
    // SAFETY: unshare has no memory preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    if let Err(e) = run_cmd(Command::new("ip").args(["link", "set", "lo", "up"])) {
        eprintln!("idle_footprint: {e:#}");
        std::process::exit(1);
    }

    let pid = std::process::id();
    let bpffs_root = PathBuf::from(format!("/sys/fs/bpf/weir-idle-{pid}"));
    let run_dir = PathBuf::from(format!("/tmp/weir-idle-{pid}"));
    let scratch = Scratch(vec![bpffs_root.clone(), run_dir.clone()]);
    let paths = scratch.0.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        Scratch::remove(&paths);
        default_hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let result = rt.block_on(run(&opts, &bpffs_root, &run_dir));
    drop(rt);
    drop(scratch);
    match result {
        Ok(summary) => println!("{}", serde_json::to_string_pretty(&summary).unwrap()),
        Err(e) => {
            eprintln!("idle_footprint: {e:#}");
            std::process::exit(1);
        }
    }
}
