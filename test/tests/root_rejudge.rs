//! Established flows follow policy changes (bpf/progs/rejudge.h), on real
//! sockets in a real lab (`weirctl lab up`, the real `weir` CNI binary and
//! weir-policyd, kube-proxy's Service DNAT in the node).
//!
//! Pod x/a holds long-lived flows to x/b (TCP to its pod IP, TCP to its
//! ClusterIP, UDP to its pod IP) and to x/c (TCP, pod IP and ClusterIP),
//! each exchanging a numbered message every 50 ms with the lab's echo
//! servers. Then the policy allowing a -> b goes. Conntrack timeouts are
//! long (TCP 6 h by default, UDP set to 1 h here), so only re-judging can
//! end those flows: once weir-policyd has synced the change, the a -> b
//! flows stop (the sender sees its message unanswered), their entries are
//! marked revoked with hours left to live, and drops are counted as
//! `drop_policy_revoked`; the a -> c flows lose no message. With
//! `--rejudge-established false` the a -> b flows carry on.
//!
//! Needs root and the binaries (`cargo build -p weirctl -p weir-cni -p
//! weir-policyd`, or WEIR_BIN_DIR).
//!
//!     cargo test -p weir-e2e --test root_rejudge -- --nocapture

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weir_bpf::{abi, Dataplane};
use weir_e2e::case::DeleteRef;
use weir_e2e::expect::PodRef;
use weir_e2e::lab::Lab;
use weir_e2e::longflow::*;
use weir_testsupport::is_root;

/// Conntrack's UDP and unanswered-flow timeouts here (TCP's is 6 h by
/// default): far beyond the test's length. (A Service flow's backend entry
/// never sees its replies, which come back from the VIP: it lives on the
/// unanswered timeout, refreshed by the client's packets.)
const LONG_TIMEOUT_S: u32 = 3600;

/// `name`: pod `to` accepts UDP 5353 from pod `from` (both in x).
fn allow_udp(name: &str, from: &str, to: &str) -> serde_yaml_ng::Value {
    yaml(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: {to}}}}}\n  policyTypes: [Ingress]\n  \
         ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: {from}}}}}}}]\n    ports: [{{protocol: UDP, port: 5353}}]\n"
    ))
}

fn delete_policy(lab: &mut Lab, name: &str) -> Result<()> {
    lab.delete(&DeleteRef { kind: "NetworkPolicy".into(), namespace: Some("x".into()), name: name.into() })
}

fn ipv4(ips: &[IpAddr], what: &str) -> Result<IpAddr> {
    ips.iter().copied().find(IpAddr::is_ipv4).with_context(|| format!("{what} has no IPv4 address"))
}

/// The ClusterIP (IPv4) of Service `key` (namespace/name) in the lab's state.
fn service_ipv4(state: &serde_json::Value, key: &str) -> Result<IpAddr> {
    let list: Vec<IpAddr> =
        state["services"][key].as_array().into_iter().flatten().filter_map(|v| v.as_str()?.parse().ok()).collect();
    ipv4(&list, &format!("service {key}"))
}

/// The lab up, a -> b (TCP 80, UDP 5353) and a -> c (TCP 80) allowed,
/// everything else into x isolated, converged.
/// Fields drop in order: the lab goes down before the scratch directory
/// holding the weirctl that takes it down.
struct Setup {
    lab: Lab,
    ctl: weir_e2e::lab::Weirctl,
    _work: weir_testsupport::RemoveOnDrop,
    name: String,
    dp: Dataplane,
    a_netns: String,
    b: IpAddr,
    b_vip: IpAddr,
    c: IpAddr,
    c_vip: IpAddr,
}

impl Setup {
    fn up(tag: &str) -> Result<Setup> {
        let name = format!("{tag}{}", std::process::id());
        let (work, ctl, mut lab) = up_model_lab(&name, tag)?;
        let state = lab_state(&name)?;
        let a_netns = pod_netns(&state, "x/a")?;
        let ips = lab.pod_ips()?;
        let pod = |p: &str| -> Result<IpAddr> {
            ipv4(ips.get(&PodRef::new("x", p)).map(Vec::as_slice).unwrap_or(&[]), &format!("pod x/{p}"))
        };
        let vip = |p: &str| service_ipv4(&state, &format!("x/s-x-{p}"));
        let (b, b_vip, c, c_vip) = (pod("b")?, vip("b")?, pod("c")?, vip("c")?);
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/weir-lab-{name}"));
        let dp = Dataplane::open(&bpffs).with_context(|| format!("opening the maps under {}", bpffs.display()))?;
        let cfg = dp.config()?;
        dp.set_config(&abi::Config { ct_udp_timeout_s: LONG_TIMEOUT_S, ct_syn_timeout_s: LONG_TIMEOUT_S, ..cfg })?;

        lab.apply(&deny_all_ingress())?;
        lab.apply(&allow("b-from-a", "a", "b"))?;
        lab.apply(&allow_udp("b-from-a-udp", "a", "b"))?;
        lab.apply(&allow("c-from-a", "a", "c"))?;
        converge(&lab, &expected(&[("a", "b"), ("a", "c")]), "a -> b and a -> c allowed")?;
        Ok(Setup { lab, ctl, _work: work, name, dp, a_netns, b, b_vip, c, c_vip })
    }

    fn revoked_drops(&self) -> Result<u64> {
        Ok(self
            .dp
            .counters()?
            .iter()
            .filter(|(k, _)| k.reason == abi::R_DROP_POLICY_REVOKED)
            .map(|(_, v)| v.packets)
            .sum())
    }

    /// Remove what allows a -> b and wait until weir-policyd has synced it:
    /// new connections a -> b are refused and a new policy generation is in
    /// the maps (bumped by the same sync, after its removals).
    fn revoke_a_to_b(&mut self) -> Result<()> {
        let gen = self.dp.config()?.policy_gen;
        delete_policy(&mut self.lab, "b-from-a")?;
        delete_policy(&mut self.lab, "b-from-a-udp")?;
        converge(&self.lab, &expected(&[("a", "c")]), "a -> b revoked")?;
        for _ in 0..1000 {
            if self.dp.config()?.policy_gen != gen {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("weir-policyd synced a -> b's removal without a new policy generation (still {gen})")
    }
}

fn start(netns: &str, flows: &[(&'static str, Transport, SocketAddr)]) -> Result<Vec<(&'static str, Flow)>> {
    let mut out = Vec::new();
    for (what, t, dst) in flows {
        out.push((*what, Flow::start_on(*t, netns, *dst).with_context(|| format!("flow {what}"))?));
    }
    for (what, f) in &out {
        f.advance(f.echoed(), 5, &format!("flow {what}, before the change"))?;
    }
    Ok(out)
}

#[test]
fn root_rejudge_cuts_revoked_flows_and_keeps_allowed_ones() {
    if !is_root() {
        eprintln!("root_rejudge_cuts_revoked_flows_and_keeps_allowed_ones: skipped, needs root");
        return;
    }
    if let Err(e) = cuts_revoked_flows() {
        panic!("{e:#}");
    }
}

fn cuts_revoked_flows() -> Result<()> {
    let mut s = Setup::up("rjc")?;
    let revoked = start(
        &s.a_netns,
        &[
            ("a -> b pod IP, TCP", Transport::Tcp, SocketAddr::new(s.b, 80)),
            ("a -> b ClusterIP, TCP", Transport::Tcp, SocketAddr::new(s.b_vip, 80)),
            ("a -> b pod IP, UDP", Transport::Udp, SocketAddr::new(s.b, 5353)),
        ],
    )?;
    let kept = start(
        &s.a_netns,
        &[
            ("a -> c pod IP, TCP", Transport::Tcp, SocketAddr::new(s.c, 80)),
            ("a -> c ClusterIP, TCP", Transport::Tcp, SocketAddr::new(s.c_vip, 80)),
        ],
    )?;
    let drops_before = s.revoked_drops()?;
    s.revoke_a_to_b()?;

    for (what, f) in &revoked {
        let failure = f.wait_failure(&format!("flow {what}, after a -> b was revoked"))?;
        eprintln!("flow {what}: cut after {} echoed messages: {failure}", f.echoed());
    }
    if s.revoked_drops()? <= drops_before {
        bail!("the flows stopped, but no packet was counted as drop_policy_revoked");
    }
    // Cut by re-judging, not by expiry: each flow's entry at b (after DNAT
    // for the ClusterIP one) is marked revoked and would otherwise live on
    // for most of its timeout.
    let entries = s.dp.ct_entries()?;
    for ((what, f), proto) in revoked.iter().zip([6u8, 6, 17]) {
        let Some(entry) = entries.iter().find(|c| {
            c.src() == f.local.ip()
                && u16::from_be(c.key.sport) == f.local.port()
                && c.dst() == s.b
                && c.key.protocol == proto
        }) else {
            bail!("flow {what}: no conntrack entry from {} to {}", f.local, s.b);
        };
        if entry.value.flags & abi::CT_REVOKED == 0 {
            bail!("flow {what}: its entry is not marked revoked: {entry:?}");
        }
        if entry.expires_in_ns < 600 * 1_000_000_000 {
            bail!("flow {what}: its entry was about to expire anyway: {entry:?}");
        }
    }
    for (what, f) in &kept {
        let from = f.check(&format!("flow {what}, after the change"))?;
        f.advance(from, 20, &format!("flow {what}, after the change"))?;
    }
    for (what, mut f) in kept {
        f.finish();
        let n = f.check(&format!("flow {what}, at the end"))?;
        eprintln!("flow {what}: {n} messages ({} bytes each way) echoed in order, none lost", n * 8);
    }
    s.lab.down()?;
    Ok(())
}

#[test]
fn root_rejudge_off_keeps_established_flows() {
    if !is_root() {
        eprintln!("root_rejudge_off_keeps_established_flows: skipped, needs root");
        return;
    }
    if let Err(e) = off_keeps_flows() {
        panic!("{e:#}");
    }
}

fn off_keeps_flows() -> Result<()> {
    let mut s = Setup::up("rjo")?;
    // weir-policyd again, with re-judging off
    let state = lab_state(&s.name)?;
    let pid = state["policyds"]["lab"]["pid"].as_i64().context("state.json: no policyds.lab.pid")? as i32;
    kill_policyd(pid)?;
    let _restarted = restart_policyd(&s.ctl, &s.name, &["--rejudge-established", "false"])?;
    for _ in 0..1000 {
        if s.dp.config()?.flags & abi::CFG_REJUDGE_OFF != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if s.dp.config()?.flags & abi::CFG_REJUDGE_OFF == 0 {
        bail!("weir-policyd --rejudge-established false did not switch re-judging off in weir_config");
    }
    let flows = start(
        &s.a_netns,
        &[
            ("a -> b pod IP, TCP", Transport::Tcp, SocketAddr::new(s.b, 80)),
            ("a -> b ClusterIP, TCP", Transport::Tcp, SocketAddr::new(s.b_vip, 80)),
            ("a -> b pod IP, UDP", Transport::Udp, SocketAddr::new(s.b, 5353)),
        ],
    )?;
    s.revoke_a_to_b()?;
    for (what, f) in &flows {
        let from = f.check(&format!("flow {what}, re-judging off"))?;
        f.advance(from, 20, &format!("flow {what}, re-judging off, after the change"))?;
    }
    if s.revoked_drops()? != 0 {
        bail!("re-judging off, yet packets were counted as drop_policy_revoked");
    }
    s.lab.down()?;
    Ok(())
}

/// The two-node model: x/a on node-1, x/b and x/c on node-2, a Service
/// on UDP PUSH_PORT for each of b and c, and a's egress allowed to both.
fn remote_backend_model(dir: &std::path::Path) -> Result<()> {
    let mut files = vec![(
        "00-namespace-x.yaml".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {kubernetes.io/metadata.name: x}}\n".to_string(),
    )];
    for (pod, node) in [("a", "node-1"), ("b", "node-2"), ("c", "node-2")] {
        files.push((
            format!("10-pod-{pod}.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: x, labels: {{pod: {pod}}}}}\n\
                 spec:\n  nodeName: {node}\n  containers:\n  - name: c\n"
            ),
        ));
    }
    for to in ["b", "c"] {
        files.push((
            format!("20-service-{to}.yaml"),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: push-{to}, namespace: x}}\n\
                 spec:\n  selector: {{pod: {to}}}\n  ports:\n  - {{protocol: UDP, port: {PUSH_PORT}, targetPort: {PUSH_PORT}}}\n"
            ),
        ));
        files.push((format!("30-policy-{to}.yaml"), serde_yaml_ng::to_string(&allow_egress_udp(to))?));
    }
    std::fs::create_dir_all(dir)?;
    for (f, text) in files {
        std::fs::write(dir.join(f), text)?;
    }
    Ok(())
}

/// The backends' UDP port (no pod of the lab serves it: the test does).
const PUSH_PORT: u16 = 7000;

/// a-egress-<to>: x/a may send UDP PUSH_PORT to x/<to>.
fn allow_egress_udp(to: &str) -> serde_yaml_ng::Value {
    yaml(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-egress-{to}, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  \
         egress:\n  - to: [{{podSelector: {{matchLabels: {{pod: {to}}}}}}}]\n    ports: [{{protocol: UDP, port: {PUSH_PORT}}}]\n"
    ))
}

/// Two nodes: x/a on node-1, its Service backends x/b and x/c on node-2,
/// each pushing a UDP stream to a through its ClusterIP. a's egress allows
/// both; then the allow for b goes. Node-1 sees b's datagrams only after
/// kube-proxy un-DNATs them to the VIP, on the SERVICE entry of a's flow:
/// re-judged against the backend leave_node linked it to, b's stream is
/// cut there, on the client's node, while c's keeps arriving.
#[test]
fn root_rejudge_cuts_a_remote_backends_stream_at_the_clients_node() {
    if !is_root() {
        eprintln!("root_rejudge_cuts_a_remote_backends_stream_at_the_clients_node: skipped, needs root");
        return;
    }
    if let Err(e) = cuts_remote_backend_stream() {
        panic!("{e:#}");
    }
}

fn cuts_remote_backend_stream() -> Result<()> {
    let tag = "rjr";
    let name = format!("{tag}{}", std::process::id());
    let work =
        weir_testsupport::RemoveOnDrop::fresh(std::env::temp_dir().join(format!("weir-{tag}-{}", std::process::id())));
    let ctl = weir_e2e::lab::Weirctl::locate()?.snapshot(&work.path().join("bin"))?;
    if !ctl.policyd_has_backends() {
        eprintln!("SKIPPED: weir-policyd has no --backend flag, traffic cannot cross nodes");
        return Ok(());
    }
    let model = work.path().join("model");
    remote_backend_model(&model)?;
    let topology = weir_e2e::lab::Topology::multi(2, "vxlan");
    let mut lab = Lab::up_on(&ctl, &name, &topology, &model, &work.path().join("steps"))?;
    let state = lab_state(&name)?;
    let placement = lab.placement()?;
    let on = |pod: &str, node: &str| placement.get(pod).map(String::as_str) == Some(node);
    if !(on("x/a", "node-1") && on("x/b", "node-2") && on("x/c", "node-2")) {
        bail!("pods not where their nodeName says: {placement:?}");
    }
    let vip = |svc: &str| service_ipv4(&state, &format!("x/{svc}"));
    let ips = lab.pod_ips()?;
    let b = ipv4(ips.get(&PodRef::new("x", "b")).map(Vec::as_slice).unwrap_or(&[]), "pod x/b")?;
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/weir-lab-{name}/node-1"));
    let dp = Dataplane::open(&bpffs).with_context(|| format!("opening node-1's maps under {}", bpffs.display()))?;
    let cfg = dp.config()?;
    dp.set_config(&abi::Config { ct_udp_timeout_s: LONG_TIMEOUT_S, ct_syn_timeout_s: LONG_TIMEOUT_S, ..cfg })?;

    let a_netns = pod_netns(&state, "x/a")?;
    let b_vip = SocketAddr::new(vip("push-b")?, PUSH_PORT);
    let mut from_b = PushStream::start(&pod_netns(&state, "x/b")?, PUSH_PORT, &a_netns, b_vip)?;
    let mut from_c =
        PushStream::start(&pod_netns(&state, "x/c")?, PUSH_PORT, &a_netns, SocketAddr::new(vip("push-c")?, PUSH_PORT))?;
    from_b.advance(0, 10, "b's stream, before the change")?;
    from_c.advance(0, 10, "c's stream, before the change")?;

    // node-1 linked the VIP entry of a's flow to b, where kube-proxy sent it
    let links = dp.service_backends()?;
    let linked = links.iter().find(|(k, _)| {
        k.src() == from_b.local.ip() && u16::from_be(k.sport) == from_b.local.port() && k.dst() == b_vip.ip()
    });
    match linked {
        Some((_, backend)) if backend.addr() == b && u16::from_be(backend.bport) == PUSH_PORT => {}
        other => bail!("a's flow to {b_vip} is not linked to {b}:{PUSH_PORT} on node-1: {other:?} (all: {links:?})"),
    }

    let drops = |dp: &Dataplane| -> Result<u64> {
        Ok(dp.counters()?.iter().filter(|(k, _)| k.reason == abi::R_DROP_POLICY_REVOKED).map(|(_, v)| v.packets).sum())
    };
    let drops_before = drops(&dp)?;
    let gen = dp.config()?.policy_gen;
    lab.delete(&DeleteRef { kind: "NetworkPolicy".into(), namespace: Some("x".into()), name: "a-egress-b".into() })?;
    let mut synced = false;
    for _ in 0..1000 {
        if dp.config()?.policy_gen != gen {
            synced = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !synced {
        bail!("node-1's weir-policyd never synced the removal of a-egress-b:\n{}", lab.policyd_log_tail(30));
    }
    let synced_ms = from_b.now_ms();

    let n = from_b.wait_cut(Duration::from_secs(1), "b's stream, after a's egress to b was revoked")?;
    let after = from_b.last_ms() as i64 - synced_ms as i64;
    eprintln!(
        "b's stream: cut after {n} datagrams (the last {after} ms after node-1's sync), its backend still sending"
    );
    if drops(&dp)? <= drops_before {
        bail!("b's stream stopped, but node-1 counted no drop_policy_revoked");
    }
    let entry = dp.ct_entries()?.into_iter().find(|c| {
        c.src() == from_b.local.ip() && u16::from_be(c.key.sport) == from_b.local.port() && c.dst() == b_vip.ip()
    });
    match entry {
        Some(c) if c.value.flags & (abi::CT_SERVICE | abi::CT_REVOKED) == abi::CT_SERVICE | abi::CT_REVOKED => {}
        other => bail!("a's SERVICE entry for {b_vip} on node-1 is not marked revoked: {other:?}"),
    }
    let from = from_c.received();
    let now = from_c.advance(from, 20, "c's stream, after the change")?;
    eprintln!("c's stream: {now} datagrams, still arriving");
    from_b.finish();
    from_c.finish();
    lab.down()?;
    Ok(())
}
