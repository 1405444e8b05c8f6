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
        let vip = |p: &str| -> Result<IpAddr> {
            let list: Vec<IpAddr> = state["services"][format!("x/s-x-{p}")]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect();
            ipv4(&list, &format!("service x/s-x-{p}"))
        };
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
