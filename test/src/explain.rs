//! `weirctl lab explain` held against the probe: for every cell of a probe
//! (loopback excluded, as in the comparison), explain the flow the probe
//! made (the address and port it dialed, so a Service cell is explained
//! through the Service) and require that the control plane's verdict is
//! the probe's and that the dataplane check (BPF_PROG_TEST_RUN on the
//! lab's live maps) agrees with it.

use std::net::SocketAddr;

use anyhow::Result;

use crate::case::Protocol;
use crate::expect::PodRef;
use crate::lab::Lab;
use crate::probe::{Observed, ProbeOutput};

/// Which cases explain their probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Off,
    All,
    /// Cases whose name contains one of these.
    Only(Vec<String>),
}

/// Cases covering every kind of verdict explain attributes: isolation
/// without rules, pod and namespace selectors, ipBlock with except,
/// named ports, several protocols, egress and ingress together, and a
/// Service whose port differs from its targetPort.
pub const REPRESENTATIVE: [&str; 8] = [
    "default-deny-ingress",
    "allow-only-from-other-namespace",
    "egress-cidr-except",
    "ingress-on-one-named-port",
    "ingress-and-egress-together",
    "egress-denied-by-client-despite-server-allow",
    "weir-service-port-differs-from-target-port",
    "weir-ipv6-selectors-and-ports",
];

impl Scope {
    /// `WEIR_CONFORMANCE_EXPLAIN`: `all`, `off`, or comma-separated
    /// substrings of case names; unset: `default`.
    pub fn from_env(default: Scope) -> Scope {
        match std::env::var("WEIR_CONFORMANCE_EXPLAIN").as_deref().map(str::trim) {
            Err(_) | Ok("") => default,
            Ok("all") => Scope::All,
            Ok("off") => Scope::Off,
            Ok(list) => Scope::Only(list.split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect()),
        }
    }

    pub fn representative() -> Scope {
        Scope::Only(REPRESENTATIVE.iter().map(|s| s.to_string()).collect())
    }

    pub fn covers(&self, case: &str) -> bool {
        match self {
            Scope::Off => false,
            Scope::All => true,
            Scope::Only(words) => words.iter().any(|w| case.contains(w.as_str())),
        }
    }
}

/// What explaining one probe found.
#[derive(Debug, Default)]
pub struct Checked {
    pub cells: usize,
    /// One line per cell whose explanation is wrong or failed.
    pub problems: Vec<String>,
}

/// Explain every cell of `out` (see the module documentation), four at a time.
pub fn check_probe(lab: &Lab, out: &ProbeOutput, protocol: Protocol) -> Checked {
    let mut cells: Vec<(&PodRef, &PodRef, &Observed, SocketAddr)> = Vec::new();
    let mut problems = Vec::new();
    for (from, row) in &out.results {
        for (to, observed) in row {
            if from == to || matches!(observed, Observed::Other(_)) {
                continue;
            }
            match out.targets.get(to).map(|t| t.parse::<SocketAddr>()) {
                Some(Ok(t)) => cells.push((from, to, observed, t)),
                Some(Err(_)) | None => problems.push(format!("{from} -> {to}: the probe output names no target")),
            }
        }
    }
    let results: Vec<(String, Result<()>)> = std::thread::scope(|s| {
        let chunks: Vec<_> = cells.chunks(cells.len().div_ceil(4).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(from, to, observed, target)| {
                            let what = format!("{from} -> {to} ({target} {protocol})");
                            (what, check_cell(lab, from, observed, *target, protocol))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let checked = results.len();
    problems.extend(results.into_iter().filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e:#}"))));
    Checked { cells: checked, problems }
}

fn check_cell(lab: &Lab, from: &PodRef, observed: &Observed, target: SocketAddr, protocol: Protocol) -> Result<()> {
    let v = lab.explain(&from.to_string(), &target.ip().to_string(), target.port(), protocol)?;
    let allowed = v["allowed"].as_bool();
    let want = match observed {
        Observed::Connected => Some(true),
        Observed::Blocked => Some(false),
        // No SCTP sockets here: the kernel's check still has to agree.
        _ => None,
    };
    if let Some(want) = want {
        anyhow::ensure!(
            allowed == Some(want),
            "explain says allowed={allowed:?}, the probe {}; egress: {}; ingress: {}",
            if want { "connected" } else { "was blocked" },
            v["egress"]["reason"],
            v["ingress"]["reason"]
        );
    }
    let dp = &v["dataplane"];
    anyhow::ensure!(dp["agrees"].as_bool() == Some(true), "the dataplane check disagrees: {dp}");
    anyhow::ensure!(
        dp["runs"].as_array().is_some_and(|r| !r.is_empty()),
        "no program ran: the lab's pods are on its nodes, so some must: {dp}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_select_cases_by_substring() {
        assert!(Scope::All.covers("anything"));
        assert!(!Scope::Off.covers("anything"));
        let r = Scope::representative();
        assert!(r.covers("default-deny-ingress") && !r.covers("allow-all"));
    }

    #[test]
    fn every_representative_case_exists() {
        let cases = crate::case::load_dir(&crate::case::cases_dir()).unwrap();
        for name in REPRESENTATIVE {
            assert!(cases.iter().any(|c| c.name == name), "no case named {name}");
        }
    }
}
