//! Runs cases against `weirctl lab`: one fresh lab per case (so no case
//! sees another's leftovers), steps applied in order, every probe compared
//! with its expectation and retried for up to 10 s (upstream's budget;
//! no settle time after a change), the lab brought down whatever happens.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_yaml_ng::Value;

use crate::case::{Case, Origin, Protocol, Step, World};
use crate::lab::{Lab, Weirctl};
use crate::model;
use crate::placeholder::{self, PodIps};
use crate::probe::{check_header, compare, Outcome};

#[derive(Debug, Clone)]
pub struct Config {
    pub ctl: Weirctl,
    pub model_dir: PathBuf,
    /// Scratch space: one subdirectory per case for the applied files.
    pub work_dir: PathBuf,
    /// How long one probe may keep failing before the case fails.
    pub retry_for: Duration,
    /// Lab names are `<prefix><index>`; keep the prefix short (netns and
    /// interface names derive from it).
    pub lab_prefix: String,
}

impl Config {
    pub fn new(ctl: Weirctl) -> Config {
        let retry = std::env::var("WEIR_CONFORMANCE_RETRY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
        let pid = std::process::id();
        Config {
            ctl,
            model_dir: crate::case::model_dir(),
            work_dir: std::env::temp_dir().join(format!("weir-conformance-{pid}")),
            retry_for: Duration::from_secs_f64(retry),
            lab_prefix: format!("c{}n", pid % 100_000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Could not be judged here (SCTP probes without SCTP sockets).
    Unsupported,
    /// The lab itself failed (up, apply, probe...): counted as failed.
    Error,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unsupported => "unsupported here (SCTP sockets)",
            Status::Error => "ERROR",
        }
    }
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
    /// The most attempts any probe of the case needed to agree (1 = the
    /// first probe after the change already agreed): how fast changes land.
    pub max_attempts: usize,
}

/// Which cases to run: `WEIR_CONFORMANCE_CASES` is a comma-separated list
/// of substrings of case names, or `=name` for exactly one (unset or
/// empty: all).
pub fn selected(cases: Vec<Case>) -> Vec<Case> {
    select(cases, &std::env::var("WEIR_CONFORMANCE_CASES").unwrap_or_default())
}

fn select(cases: Vec<Case>, filter: &str) -> Vec<Case> {
    let words: Vec<&str> = filter.split(',').map(str::trim).filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return cases;
    }
    let hit = |name: &str, w: &str| match w.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(w),
    };
    cases.into_iter().filter(|c| words.iter().any(|w| hit(&c.name, w))).collect()
}

pub fn run_case(cfg: &Config, case: &Case, index: usize) -> CaseResult {
    let t = Instant::now();
    let lab_name = format!("{}{index}", cfg.lab_prefix);
    let work = cfg.work_dir.join(&case.name);
    let mut detail = String::new();
    let mut max_attempts = 0;
    let status = match run_steps(cfg, case, &lab_name, &work, &mut detail, &mut max_attempts) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(detail, "error: {e:#}");
            Status::Error
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    CaseResult {
        name: case.name.clone(),
        origin: case.origin,
        protocols: case.protocols.clone(),
        status,
        detail,
        secs: t.elapsed().as_secs_f64(),
        max_attempts,
    }
}

fn run_steps(
    cfg: &Config,
    case: &Case,
    lab_name: &str,
    work: &std::path::Path,
    detail: &mut String,
    max_attempts: &mut usize,
) -> Result<Status> {
    let mut lab = Lab::up(&cfg.ctl, lab_name, &cfg.model_dir, work)?;
    let mut world = World::model();
    let mut unsupported = false;
    let objects_with_steps = case.setup.iter().map(|o| ("setup".to_string(), o));
    for (what, obj) in objects_with_steps {
        apply_one(&mut lab, &mut world, obj).with_context(|| what.clone())?;
    }
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Apply(objs) => {
                for (j, obj) in objs.iter().enumerate() {
                    apply_one(&mut lab, &mut world, obj).with_context(|| format!("steps[{i}].apply[{j}]"))?;
                }
            }
            Step::Delete(refs) => {
                for (j, r) in refs.iter().enumerate() {
                    lab.delete(r).with_context(|| format!("steps[{i}].delete[{j}]"))?;
                    world.delete(r)?;
                }
            }
            Step::Probe(p) => {
                let expected = p.expect.evaluate(&world.pods()).map_err(anyhow::Error::msg)?;
                let start = Instant::now();
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let out = lab.probe(p.port, p.protocol, p.via, p.family).with_context(|| format!("steps[{i}].probe"))?;
                    check_header(&out, p.port, p.protocol)?;
                    let cmp = compare(&expected, &out, p.protocol == Protocol::SCTP);
                    *max_attempts = (*max_attempts).max(attempts);
                    match cmp.outcome() {
                        Outcome::Match => break,
                        Outcome::Unsupported => {
                            let _ = writeln!(
                                detail,
                                "steps[{i}] {}/{}: {} cells unsupported here (no SCTP sockets), not compared",
                                p.protocol, p.port, cmp.unsupported
                            );
                            unsupported = true;
                            break;
                        }
                        Outcome::Mismatch if start.elapsed() < cfg.retry_for => {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Outcome::Mismatch => {
                            let _ = writeln!(
                                detail,
                                "steps[{i}] probe {}/{} via {:?} over {:?}: wrong after {attempts} attempts over {:.1}s",
                                p.protocol,
                                p.port,
                                p.via,
                                p.family,
                                start.elapsed().as_secs_f64()
                            );
                            detail.push_str(&cmp.render());
                            lab.down()?;
                            return Ok(Status::Fail);
                        }
                    }
                }
            }
        }
    }
    lab.down()?;
    Ok(if unsupported { Status::Unsupported } else { Status::Pass })
}

fn apply_one(lab: &mut Lab, world: &mut World, obj: &Value) -> Result<()> {
    let done = model::complete(obj.clone())?;
    let resolved = if placeholder::placeholders(&done)?.is_empty() {
        done
    } else {
        // Addresses are read right before the apply: pods recreated in an
        // earlier step resolve to their new addresses.
        let ips: PodIps = lab.pod_ips()?;
        placeholder::resolve(&done, &ips)?
    };
    lab.apply(&resolved)?;
    world.apply(obj)
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn count(&self, s: Status) -> usize {
        self.results.iter().filter(|r| r.status == s).count()
    }

    pub fn passed(&self) -> usize {
        self.count(Status::Pass)
    }

    /// Failures and lab errors alike.
    pub fn failed(&self) -> usize {
        self.count(Status::Fail) + self.count(Status::Error)
    }

    pub fn unsupported(&self) -> usize {
        self.count(Status::Unsupported)
    }

    pub fn summary_line(&self) -> String {
        format!("{} passed, {} failed, {} unsupported", self.passed(), self.failed(), self.unsupported())
    }

    /// The per-case table, the details of everything not passed, and the
    /// summary line last.
    pub fn render(&self) -> String {
        let w = self.results.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4) + 2;
        let mut s = format!("{:<w$}{:<10}{:<14}{:>7}{:>6}  result\n", "case", "origin", "protocols", "secs", "tries");
        for r in &self.results {
            let protos: Vec<String> = r.protocols.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(
                s,
                "{:<w$}{:<10}{:<14}{:>7.1}{:>6}  {}",
                r.name,
                r.origin.to_string(),
                protos.join(","),
                r.secs,
                r.max_attempts,
                r.status.word()
            );
        }
        for r in self.results.iter().filter(|r| r.status != Status::Pass) {
            let _ = write!(s, "\n== {} ({})\n{}", r.name, r.status.word(), r.detail);
        }
        let _ = writeln!(s, "\n{}", self.summary_line());
        s
    }
}

/// Runs `cases` one after the other, printing each result as it lands.
pub fn run_suite(cfg: &Config, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for (i, c) in cases.iter().enumerate() {
        let r = run_case(cfg, c, i);
        eprintln!("[{}/{}] {:<60} {} ({:.1}s)", i + 1, cases.len(), r.name, r.status.word(), r.secs);
        report.results.push(r);
    }
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, status: Status) -> CaseResult {
        CaseResult {
            name: name.into(),
            origin: Origin::Upstream,
            protocols: vec![Protocol::TCP],
            status,
            detail: format!("detail of {name}\n"),
            secs: 1.0,
            max_attempts: 1,
        }
    }

    #[test]
    fn selection_by_substring_or_exact_name() {
        let all = crate::case::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases")).unwrap();
        let n = all.len();
        assert_eq!(select(all.clone(), "").len(), n);
        let names = |v: Vec<Case>| v.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(select(all.clone(), "=default-deny-ingress")), ["default-deny-ingress"]);
        let some = names(select(all.clone(), "p-default-deny-ingress, =allow-all"));
        assert_eq!(some, ["allow-all", "sctp-default-deny-ingress", "udp-default-deny-ingress"]);
    }

    #[test]
    fn summary_counts_errors_as_failures_and_never_unsupported_as_passes() {
        let r = Report {
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
}
