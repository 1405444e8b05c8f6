//! What both conformance runners (the lab's and the verdict level's) make
//! of a case, and the text report they print: one table row per case, the
//! details of every case that did not pass, and the summary line last.

use std::fmt::Write as _;

use crate::case::{Origin, Protocol};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Could not be judged here (lab probes of SCTP without SCTP sockets).
    Unsupported,
    /// The runner itself failed (lab up, apply, probe; load, sync):
    /// counted as failed.
    Error,
    /// Not run by this runner, with why.
    Skipped(String),
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unsupported => "unsupported here (SCTP sockets)",
            Status::Error => "ERROR",
            Status::Skipped(_) => "skipped",
        }
    }
}

/// Which runner judged the cases: what its figures are and what it calls
/// the cases it did not judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// `weirctl lab`: seconds and the most attempts a probe needed.
    Lab,
    /// BPF_PROG_TEST_RUN: cells judged and seconds.
    Verdict,
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub origin: Origin,
    pub protocols: Vec<Protocol>,
    pub status: Status,
    /// Why it failed, with truth tables, or what could not be probed.
    pub detail: String,
    pub secs: f64,
    /// Lab: the most attempts any probe of the case needed to agree (1 =
    /// the first probe after the change already agreed): how fast changes
    /// land.
    pub max_attempts: usize,
    /// Verdict: cells judged over all probes (each cell is four program
    /// runs).
    pub cells: usize,
}

impl CaseResult {
    pub fn new(case: &crate::case::Case, status: Status, detail: String, secs: f64) -> CaseResult {
        CaseResult {
            name: case.name.clone(),
            origin: case.origin,
            protocols: case.protocols.clone(),
            status,
            detail,
            secs,
            max_attempts: 0,
            cells: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub runner: Runner,
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn new(runner: Runner) -> Report {
        Report { runner, results: Vec::new() }
    }

    pub fn count(&self, pred: impl Fn(&Status) -> bool) -> usize {
        self.results.iter().filter(|r| pred(&r.status)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|s| *s == Status::Pass)
    }

    /// Failures and runner errors alike.
    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, Status::Fail | Status::Error))
    }

    pub fn unsupported(&self) -> usize {
        self.count(|s| *s == Status::Unsupported)
    }

    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, Status::Skipped(_)))
    }

    pub fn summary_line(&self) -> String {
        let (n, word) = match self.runner {
            Runner::Lab => (self.unsupported(), "unsupported"),
            Runner::Verdict => (self.skipped(), "skipped"),
        };
        format!("{} passed, {} failed, {n} {word}", self.passed(), self.failed())
    }

    /// Adds a result, printing it as it lands (suites take minutes).
    pub fn push(&mut self, r: CaseResult, total: usize) {
        eprintln!("[{}/{total}] {:<60} {} ({:.2}s)", self.results.len() + 1, r.name, r.status.word(), r.secs);
        self.results.push(r);
    }

    /// The per-case table, the details of everything not passed, and the
    /// summary line last.
    pub fn render(&self) -> String {
        let header = match self.runner {
            Runner::Lab => format!("{:>7}{:>6}", "secs", "tries"),
            Runner::Verdict => format!("{:>7}{:>7}", "cells", "secs"),
        };
        let w = self.results.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4) + 2;
        let mut s = format!("{:<w$}{:<10}{:<16}{header}  result\n", "case", "origin", "protocols");
        for r in &self.results {
            let figures = match self.runner {
                Runner::Lab => format!("{:>7.1}{:>6}", r.secs, r.max_attempts),
                Runner::Verdict => format!("{:>7}{:>7.2}", r.cells, r.secs),
            };
            let protocols = r.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
            let _ = writeln!(
                s,
                "{:<w$}{:<10}{:<16}{figures}  {}",
                r.name,
                r.origin.to_string(),
                protocols,
                r.status.word()
            );
        }
        for r in &self.results {
            let detail = match &r.status {
                Status::Pass => continue,
                Status::Skipped(why) => format!("{why}\n{}", r.detail),
                _ => r.detail.clone(),
            };
            let _ = write!(s, "\n== {} ({})\n{detail}", r.name, r.status.word());
        }
        let _ = writeln!(s, "\n{}", self.summary_line());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, status: Status) -> CaseResult {
        CaseResult {
            name: name.into(),
            origin: Origin::Weir,
            protocols: vec![Protocol::SCTP],
            status,
            detail: format!("detail of {name}\n"),
            secs: 0.1,
            max_attempts: 1,
            cells: 72,
        }
    }

    #[test]
    fn lab_summary_counts_errors_as_failures_and_never_unsupported_as_passes() {
        let r = Report {
            runner: Runner::Lab,
            results: vec![
                result("a", Status::Pass),
                result("b", Status::Fail),
                result("c", Status::Error),
                result("d", Status::Unsupported),
                result("e", Status::Pass),
            ],
        };
        assert_eq!(r.summary_line(), "2 passed, 2 failed, 1 unsupported");
        let text = r.render();
        assert!(text.trim_end().ends_with("2 passed, 2 failed, 1 unsupported"), "{text}");
        assert!(text.contains("== b (FAIL)\ndetail of b"));
        assert!(text.contains("unsupported here (SCTP sockets)"));
        assert!(!text.contains("detail of a"));
    }

    #[test]
    fn verdict_summary_counts_errors_as_failures() {
        let rep = Report {
            runner: Runner::Verdict,
            results: vec![
                result("a", Status::Pass),
                result("b", Status::Fail),
                result("c", Status::Error),
                result("d", Status::Skipped("no model of it".into())),
            ],
        };
        assert_eq!(rep.summary_line(), "1 passed, 2 failed, 1 skipped");
        let text = rep.render();
        assert!(text.trim_end().ends_with("1 passed, 2 failed, 1 skipped"), "{text}");
        assert!(text.contains("== d (skipped)\nno model of it"), "{text}");
        assert!(text.contains("== b (FAIL)\ndetail of b"), "{text}");
        assert!(!text.contains("detail of a"));
    }
}
