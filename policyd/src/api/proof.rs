//! The dataplane's own answer for an explained flow: the flow's first
//! packet built as the pod sends it ([`weir_bpf::flow`]) and run through
//! BPF_PROG_TEST_RUN by the programs on this node's part of its path, on
//! the live pinned maps.
//!
//! On one node a request crosses `from_pod` of the source's host veth and,
//! when the destination lives here, `to_pod` of the destination's:
//!
//! - both here: `from_pod` defers (local pods and Service VIPs are judged
//!   after DNAT), `to_pod` judges the source's egress and the
//!   destination's ingress on the post-DNAT packet;
//! - only the source here: `from_pod` judges its egress against the
//!   backend (for a Service with a backend on another node the real path
//!   judges at `leave_node` after DNAT, against the same backend, with the
//!   same lookups: the packet here is the post-DNAT one);
//! - only the destination here: `to_pod` judges its ingress (the source's
//!   node judged the egress);
//! - neither: nothing runs here.
//!
//! A packet that passes opens a conntrack entry like any first packet: the
//! proof picks a source port no tracked flow of the source uses and
//! removes the entries it made, so it neither finds nor leaves a flow. Its
//! packets count in the dataplane counters and drops are logged like any.

use super::resolve::Resolved;
use crate::engine::explain::Explanation;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use weir_bpf::{abi, flow, Dataplane, Hook, TC_PASS};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Proof {
    /// Every program run passed the packet.
    pub allowed: bool,
    /// The sides the runs judged (`egress`, `ingress`); empty when
    /// neither end is an endpoint of this node.
    pub judged: Vec<&'static str>,
    /// What the control plane says of those sides.
    pub expected: bool,
    /// Some run counted an audit policy's would-be drop (`allow_audit`).
    #[serde(rename = "auditWouldDrop")]
    pub audit_would_drop: bool,
    /// What the control plane says of that, on the sides judged.
    #[serde(rename = "auditExpected")]
    pub audit_expected: bool,
    /// `allowed == expected`, and the would-be drop counted when one was
    /// expected: false is a bug in Weir.
    pub agrees: bool,
    pub runs: Vec<Run>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Run {
    /// `from_pod` or `to_pod`.
    pub program: &'static str,
    /// The host veth it ran on.
    pub ifindex: u32,
    /// e.g. `10.0.0.1:61234 -> 10.96.0.10:80 TCP`.
    pub packet: String,
    /// `pass` or `drop`.
    pub verdict: &'static str,
    /// The drop counters the run raised (reason names).
    pub drop_reasons: Vec<String>,
}

/// Run the flow's packets on this node's programs (see the module doc).
pub fn prove(dp: &Dataplane, r: &Resolved, e: &Explanation) -> Result<Proof, weir_bpf::Error> {
    let src_ep = e.src.endpoint;
    let dst_ep = e.dst.endpoint;
    let proto = r.flow.protocol;
    let src = r.flow.src.addr;
    let backend = (r.flow.dst.addr, r.flow.port);
    let mut judged: Vec<&'static str> = Vec::new();
    let mut plan: Vec<(Hook, u32, (IpAddr, u16))> = Vec::new();
    if let Some(s) = src_ep {
        // With the destination here from_pod defers: the packet as dialed.
        plan.push((Hook::FromPod, s, if dst_ep.is_some() { r.dialed } else { backend }));
        if dst_ep.is_none() {
            judged.push("egress");
        }
    }
    if let Some(d) = dst_ep {
        plan.push((Hook::ToPod, d, backend));
        if src_ep.is_some() {
            judged.push("egress");
        }
        judged.push("ingress");
    }
    let side = |s: &str| if s == "egress" { &e.egress } else { &e.ingress };
    let expected = judged.iter().all(|s| side(s).allowed);
    let audit_expected = expected && judged.iter().any(|s| side(s).audit.as_ref().is_some_and(|a| a.would_drop));
    if plan.is_empty() {
        return Ok(Proof {
            allowed: expected,
            judged,
            expected,
            audit_would_drop: audit_expected,
            audit_expected,
            agrees: true,
            runs: Vec::new(),
            note: Some("neither end is an endpoint of this node: no program of this node judges the flow".into()),
        });
    }
    let sport = free_source_port(dp, src, proto)?;
    // Would-be drops are counted on the side's own endpoint: the source's
    // egress at the destination's to_pod too.
    let audit_count = |dp: &Dataplane| -> Result<u64, weir_bpf::Error> {
        let mut n = 0;
        for ep in [src_ep, dst_ep].into_iter().flatten() {
            for dir in [abi::DIR_INGRESS, abi::DIR_EGRESS] {
                n += dp.counter(ep, dir, abi::R_ALLOW_AUDIT)?.packets;
            }
        }
        Ok(n)
    };
    let audit_before = audit_count(dp)?;
    let mut runs = Vec::new();
    let mut allowed = true;
    for (hook, ifindex, to) in plan {
        let mac = dp.endpoint(ifindex)?.map(|ep| ep.mac).unwrap_or_default();
        let st = flow::stage(hook.name(), hook, ifindex, mac, &flow::request(proto, (src, sport), to));
        let before = drop_counters(dp, ifindex)?;
        let rc = dp.run(st.hook, &st.frame, st.ifindex)?;
        let after = drop_counters(dp, ifindex)?;
        let drop_reasons: Vec<String> = after
            .iter()
            .filter(|(k, n)| **n > before.get(*k).copied().unwrap_or(0))
            .map(|(r, _)| abi::reason_name(*r).to_string())
            .collect();
        let pass = rc == TC_PASS;
        allowed &= pass;
        runs.push(Run {
            program: hook.name(),
            ifindex,
            packet: format!("{} -> {} {}", sock(src, sport), sock(to.0, to.1), super::resolve::proto_name(proto)),
            verdict: if pass { "pass" } else { "drop" },
            drop_reasons,
        });
        if !pass {
            break;
        }
    }
    let audit_would_drop = allowed && audit_count(dp)? > audit_before;
    // The runs' own flows: gone, so no reply can use them.
    dp.ct_flush_where(|k, _| {
        k.protocol == proto && u16::from_be(k.sport) == sport && weir_bpf::addr::from_bytes(k.saddr) == src
    })?;
    // The audit counter is the pods' too: an increment the check did not
    // expect may be their traffic's, so only a missing one disagrees.
    let note = (audit_would_drop && !audit_expected).then(|| {
        "allow_audit was counted during the check though the control plane expects no would-be drop: \
         the pods' own traffic may have raised it"
            .to_string()
    });
    Ok(Proof {
        allowed,
        judged,
        expected,
        audit_would_drop,
        audit_expected,
        agrees: allowed == expected && (audit_would_drop || !audit_expected),
        runs,
        note,
    })
}

fn sock(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Drop packets counted on `ifindex`, by reason.
fn drop_counters(dp: &Dataplane, ifindex: u32) -> Result<HashMap<u8, u64>, weir_bpf::Error> {
    let mut out = HashMap::new();
    for (k, v) in dp.counters()? {
        if k.endpoint == ifindex && abi::reason_is_drop(k.reason) {
            *out.entry(k.reason).or_default() += v.packets;
        }
    }
    Ok(out)
}

/// A source port in 61000..65000 no tracked flow from `src` uses, so the
/// run neither rides an established flow nor disturbs one.
fn free_source_port(dp: &Dataplane, src: IpAddr, proto: u8) -> Result<u16, weir_bpf::Error> {
    let used: BTreeSet<u16> = dp
        .ct_entries()?
        .iter()
        .filter(|c| c.key.protocol == proto && (c.src() == src || c.dst() == src))
        .flat_map(|c| [u16::from_be(c.key.sport), u16::from_be(c.key.dport)])
        .collect();
    let start = (std::process::id() as u64 ^ weir_bpf::monotonic_ns()) % 4000;
    Ok((0..4000u64).map(|i| 61000 + ((start + i) % 4000) as u16).find(|p| !used.contains(p)).unwrap_or(61000))
}
