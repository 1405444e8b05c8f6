//! weir-policyd is not in the datapath: killing it must not drop a single
//! packet of an allowed flow, and the maps it left behind keep enforcing
//! the last programmed policy until a restarted policyd converges them to
//! the current one, again without disturbing flows allowed by both.
//!
//! A real lab (`weirctl lab up`, the real `weir` CNI binary and
//! weir-policyd) with namespace x and pods a, b, c serving TCP 80 behind
//! Services. Client threads in pod x/a hold TCP connections to x/b's lab
//! server (which echoes), one to its pod IP and one to its ClusterIP, and
//! exchange a numbered message every 50 ms for the whole test; every
//! message must come back, in order.
//!
//! Needs root and the binaries (`cargo build -p weirctl -p weir-cni -p
//! weir-policyd`, or WEIR_BIN_DIR).
//!
//!     cargo test -p weir-e2e --test root_policyd_restart -- --nocapture
//!
//! A second test breaks the manifest file of the policy isolating the pods
//! (a schema error, then a `kind` typo, then an `apiVersion` typo) and
//! SIGKILLs and restarts weir-policyd after each: the pods must stay
//! isolated (the last good version is kept under the run directory), a
//! fixed file must replace it, and a deleted file must open traffic, also
//! across a restart.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weir_e2e::case::DeleteRef;
use weir_e2e::expect::PodRef;
use weir_e2e::lab::LAB_ROOT;
use weir_e2e::longflow::*;
use weir_testsupport::is_root;

fn ip_netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect()
}

fn procs_mentioning(marker: &Path) -> Vec<i32> {
    let marker = marker.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let hit = cmdline.split(|b| *b == 0).any(|a| {
            let a = String::from_utf8_lossy(a);
            a == marker || a.starts_with(&format!("{marker}/"))
        });
        if hit && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn root_policyd_restart_keeps_flows_and_converges() {
    if !is_root() {
        eprintln!("root_policyd_restart_keeps_flows_and_converges: skipped, needs root (network namespaces, BPF)");
        return;
    }
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

fn run() -> Result<()> {
    let name = format!("prs{}", std::process::id());
    let (_work, ctl, mut lab) = up_model_lab(&name, "restart")?;

    let state = lab_state(&name)?;
    let netns: Vec<String> = PODS.iter().map(|p| pod_netns(&state, &format!("x/{p}"))).collect::<Result<_>>()?;
    // The one-node lab's only node is `lab`.
    let policyd_pid = state["policyds"]["lab"]["pid"]
        .as_i64()
        .context("state.json: no policyds.lab.pid (is weir-policyd built?)")? as i32;

    // 1. Policy P1: ingress isolation, a -> b and c -> a allowed.
    let p1 = expected(&[("a", "b"), ("c", "a")]);
    lab.apply(&deny_all_ingress())?;
    lab.apply(&allow("b-from-a", "a", "b"))?;
    lab.apply(&allow("a-from-c", "c", "a"))?;
    converge(&lab, &p1, "policy P1 with weir-policyd running")?;

    // 2. Two long-lived allowed flows a -> b: to the pod IP (judged at
    // b's to_pod), and to b's ClusterIP (kube-proxy's DNAT in the node, the
    // un-DNATed reply passing on the Service CT entry). The lab server
    // echoes and keeps a connection while it hears from the client.
    let ips = lab.pod_ips()?;
    let b_ip: IpAddr = *ips
        .get(&PodRef::new("x", "b"))
        .and_then(|v| v.iter().find(|ip| ip.is_ipv4()))
        .context("`lab get pods`: x/b has no IPv4 address")?;
    let b_vip: IpAddr = state["services"]["x/s-x-b"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|v| v.as_str()?.parse::<IpAddr>().ok()).find(IpAddr::is_ipv4))
        .context("state.json: no IPv4 ClusterIP for services[\"x/s-x-b\"]")?;
    let mut flows = vec![
        ("x/a -> x/b pod IP", Flow::start(&netns[0], SocketAddr::new(b_ip, 80))?),
        ("x/a -> x/b ClusterIP", Flow::start(&netns[0], SocketAddr::new(b_vip, 80))?),
    ];
    let advance = |flows: &[(&str, Flow)], n: u64, when: &str| -> Result<()> {
        for (what, f) in flows {
            let from = f.echoed();
            f.advance(from, n, &format!("{when}, flow {what}"))?;
        }
        Ok(())
    };
    advance(&flows, 5, "before killing weir-policyd")?;

    // 3. SIGKILL weir-policyd: no shutdown path runs.
    kill_policyd(policyd_pid)?;
    eprintln!("killed weir-policyd {policyd_pid}");

    // While it is dead: the maps keep enforcing P1 for new connections,
    // allowed and denied, and the established flow keeps flowing.
    assert_matrix(&lab, &p1, "weir-policyd dead, policy P1")?;
    advance(&flows, 20, "weir-policyd dead")?;

    // 4. Policy P2 written while it is dead: c -> a removed, b -> c added.
    // Nothing programs it, so P1 must still hold.
    lab.delete(&DeleteRef { kind: "NetworkPolicy".into(), namespace: Some("x".into()), name: "a-from-c".into() })?;
    lab.apply(&allow("c-from-b", "b", "c"))?;
    assert_matrix(&lab, &p1, "weir-policyd dead, P2 written but not programmed")?;
    advance(&flows, 20, "weir-policyd dead, P2 written")?;

    // 5. Restart as the lab starts it: converges to P2, flow untouched.
    let restarted = restart_policyd(&ctl, &name, &[])?;
    let p2 = expected(&[("a", "b"), ("b", "c")]);
    let attempts = converge(&lab, &p2, "after restarting weir-policyd, policy P2")?;
    eprintln!("converged to P2 after {attempts} probe(s)");
    advance(&flows, 20, "after the restart converged")?;
    // Settled: a second probe agrees, and the flow is still intact.
    assert_matrix(&lab, &p2, "after convergence, again")?;
    for (what, f) in &mut flows {
        f.check(&format!("at the end, flow {what}"))?;
        f.finish();
        if let Some(e) = f.failure() {
            bail!("flow {what} broke while stopping: {e}");
        }
        eprintln!("long-lived flow {what}: {} messages echoed, none lost", f.echoed());
    }

    // 6. `lab down` leaves nothing behind.
    let lab_dir = Path::new(LAB_ROOT).join(&name);
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/weir-lab-{name}"));
    lab.down()?;
    drop(restarted);
    let mut left = Vec::new();
    let existing = ip_netns_list();
    for ns in std::iter::once(format!("weir-{name}")).chain(netns) {
        if existing.contains(&ns) {
            left.push(format!("netns {ns}"));
        }
    }
    if bpffs.exists() {
        left.push(format!("pins under {}", bpffs.display()));
    }
    if lab_dir.exists() {
        left.push(format!("lab dir {}", lab_dir.display()));
    }
    for pid in procs_mentioning(&lab_dir) {
        left.push(format!("process {pid}"));
    }
    if !left.is_empty() {
        bail!("`weirctl lab down --name {name}` left: {}", left.join(", "));
    }
    Ok(())
}

/// The lab's policyd log, one entry per line.
fn policyd_log(lab_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(lab_dir.join("logs/policyd.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Wait until a policyd log line after the first `from` lines satisfies
/// `pred`; returns its index. The bound only ends a failed wait.
fn wait_for_log(lab_dir: &Path, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> Result<usize> {
    for _ in 0..1200 {
        if let Some(i) = policyd_log(lab_dir).iter().skip(from).position(|l| pred(l)) {
            return Ok(from + i);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("weir-policyd never logged {what}; its log ends:\n{}", policyd_log(lab_dir)[from..].join("\n"))
}

/// Write as the lab does: a dot name (ignored by weir-policyd), renamed into place.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Every pod's endpoint is READY and ingress-isolated in the maps, and x/a
/// cannot open a connection to x/b's server.
fn assert_isolated(bpffs: &Path, a_netns: &str, b: SocketAddr, when: &str) -> Result<()> {
    let dp = weir_bpf::Dataplane::open(bpffs).with_context(|| format!("opening the maps under {}", bpffs.display()))?;
    let endpoints = dp.endpoints()?;
    if endpoints.len() != PODS.len() {
        bail!("{when}: {} endpoints in the maps, expected {}", endpoints.len(), PODS.len());
    }
    for (ifindex, e) in endpoints {
        let want = weir_bpf::abi::EP_READY | weir_bpf::abi::EP_INGRESS_ISOLATED;
        if e.flags & want != want {
            bail!("{when}: endpoint {ifindex} is not isolated any more (flags {:#x})", e.flags);
        }
    }
    if let Ok(mut f) = Flow::start(a_netns, b) {
        f.finish();
        bail!("{when}: x/a connected to x/b {b}: the pod is open");
    }
    Ok(())
}

#[test]
fn root_policyd_restart_with_a_broken_manifest_keeps_pods_isolated() {
    if !is_root() {
        eprintln!("root_policyd_restart_with_a_broken_manifest_keeps_pods_isolated: skipped, needs root (network namespaces, BPF)");
        return;
    }
    if let Err(e) = run_broken_manifest() {
        panic!("{e:#}");
    }
}

fn run_broken_manifest() -> Result<()> {
    let name = format!("pbm{}", std::process::id());
    let (_work, ctl, mut lab) = up_model_lab(&name, "broken")?;
    let lab_dir = Path::new(LAB_ROOT).join(&name);
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/weir-lab-{name}"));
    let state = lab_state(&name)?;
    let a_netns = pod_netns(&state, "x/a")?;
    let mut lab_policyd = Some(
        state["policyds"]["lab"]["pid"].as_i64().context("state.json: no policyds.lab.pid (is weir-policyd built?)")?
            as i32,
    );
    let b_ip: IpAddr = *lab
        .pod_ips()?
        .get(&PodRef::new("x", "b"))
        .and_then(|v| v.iter().find(|ip| ip.is_ipv4()))
        .context("`lab get pods`: x/b has no IPv4 address")?;
    let b = SocketAddr::new(b_ip, 80);
    let everything = expected(&[("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]);
    converge(&lab, &everything, "no policy yet")?;
    lab.apply(&deny_all_ingress())?;
    converge(&lab, &expected(&[]), "deny-ingress applied")?;

    let file = lab_dir.join("manifests/networkpolicy_x_deny-ingress.yaml");
    let kept = lab_dir.join("run/manifests-last-good/networkpolicy_x_deny-ingress.yaml");
    let file_name = "networkpolicy_x_deny-ingress.yaml";
    let good = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: x}\n\
                spec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";
    let breakages = [
        ("a schema error", good.to_string() + "  ingress:\n  - ports:\n    - port: [1]\n"),
        ("a kind typo", good.replace("kind: NetworkPolicy", "kind: Networkpolicy")),
        ("an apiVersion typo", good.replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1")),
    ];
    let mut restarted: Option<Restarted> = None;
    // SIGKILL whichever weir-policyd runs now, start a new one and wait
    // until it has programmed the maps; the log lines it wrote so far.
    let mut kill_and_restart = |restarted: &mut Option<Restarted>| -> Result<usize> {
        match (restarted.take(), lab_policyd.take()) {
            (Some(r), _) => drop(r), // SIGKILL and reap
            (None, Some(pid)) => kill_policyd(pid)?,
            (None, None) => bail!("no weir-policyd to kill"),
        }
        let from = policyd_log(&lab_dir).len();
        *restarted = Some(restart_policyd(&ctl, &name, &[])?);
        wait_for_log(&lab_dir, from, "ready after the restart", |l| l.contains("ready: node lab"))?;
        Ok(from)
    };

    for (what, broken) in &breakages {
        let from = policyd_log(&lab_dir).len();
        write_atomic(&file, broken)?;
        // The running policyd reports it and keeps the policy.
        wait_for_log(&lab_dir, from, &format!("{what} in {file_name}"), |l| l.contains(file_name))?;
        assert_isolated(&bpffs, &a_netns, b, &format!("{what}, weir-policyd running"))?;
        let from = kill_and_restart(&mut restarted)?;
        // The restarted policyd read the broken file, and kept its last good version.
        wait_for_log(&lab_dir, from, &format!("{what} in {file_name} after the restart"), |l| {
            l.contains(file_name) && l.contains("document")
        })?;
        assert_isolated(&bpffs, &a_netns, b, &format!("{what}, after SIGKILL and restart"))?;
        eprintln!("{what}: still isolated after SIGKILL and restart");
    }

    // Fixed, with a different policy: it replaces the kept version.
    let fixed = good.to_string()
        + "  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    ports: [{protocol: TCP, port: 80}]\n";
    write_atomic(&file, &fixed)?;
    converge(&lab, &expected(&[("a", "b"), ("a", "c")]), "the file fixed")?;
    let copy = std::fs::read_to_string(&kept).with_context(|| format!("reading {}", kept.display()))?;
    if copy != fixed {
        bail!("{} holds {copy:?}, not the fixed version", kept.display());
    }

    // Deleted: a decision, not breakage. Open, and still open after a restart.
    lab.delete(&DeleteRef { kind: "NetworkPolicy".into(), namespace: Some("x".into()), name: "deny-ingress".into() })?;
    converge(&lab, &everything, "the policy file deleted")?;
    if kept.exists() {
        bail!("{} outlived its manifest file", kept.display());
    }
    kill_and_restart(&mut restarted)?;
    // Probed until right: a single probe on a loaded machine may time out.
    converge(&lab, &everything, "the policy file deleted, after SIGKILL and restart")?;

    lab.down()?;
    drop(restarted);
    Ok(())
}
