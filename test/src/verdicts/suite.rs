//! Cases driven through a [`Cluster`], one fresh cluster per case, and
//! the report.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::cluster::Cluster;
use super::kernel::Devices;
use crate::case::{Case, Step, World};
use crate::probe::{compare, Outcome};
use crate::report::{CaseResult, Report, Runner, Status};

/// Cases this runner cannot judge, with the reason. Empty: every case,
/// TCP, UDP and SCTP alike, is modelled (hairpin cells, the only thing
/// needing Service masquerade, are loopback cells that no runner compares).
pub const SKIPPED: &[(&str, &str)] = &[];

/// `WEIR_VERDICT_IGNORE_POLICIES=1`: compile as if no NetworkPolicy
/// existed (everything else unchanged). A control of the runner itself:
/// only cases expecting everything allowed can pass then.
pub fn ignore_policies() -> bool {
    std::env::var_os("WEIR_VERDICT_IGNORE_POLICIES").is_some_and(|v| v == "1")
}

fn skip_reason(name: &str) -> Option<&'static str> {
    SKIPPED.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

pub fn run_case(devices: &mut Devices, case: &Case) -> CaseResult {
    let t = Instant::now();
    let mut detail = String::new();
    let mut cells = 0;
    let status = match skip_reason(&case.name) {
        Some(r) => Status::Skipped(r.to_string()),
        None => match drive(devices, case, &mut detail, &mut cells) {
            Ok(true) => Status::Pass,
            Ok(false) => Status::Fail,
            Err(e) => {
                let _ = writeln!(detail, "error: {e:#}");
                Status::Error
            }
        },
    };
    CaseResult { cells, ..CaseResult::new(case, status, detail, t.elapsed().as_secs_f64()) }
}

/// Ok(true) when every probe matched; Ok(false) with the tables in
/// `detail` at the first that did not (later steps are not run, as in the
/// lab runner).
fn drive(devices: &mut Devices, case: &Case, detail: &mut String, cells: &mut usize) -> Result<bool> {
    let mut c = Cluster::new(devices)?;
    let mut world = World::model();
    for (j, obj) in case.setup.iter().enumerate() {
        c.apply(obj).with_context(|| format!("setup[{j}]"))?;
        world.apply(obj)?;
    }
    if !case.setup.is_empty() {
        c.sync().context("setup")?;
    }
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Apply(objs) => {
                for (j, obj) in objs.iter().enumerate() {
                    c.apply(obj).with_context(|| format!("steps[{i}].apply[{j}]"))?;
                    world.apply(obj)?;
                }
                c.sync().with_context(|| format!("steps[{i}]"))?;
            }
            Step::Delete(refs) => {
                for (j, r) in refs.iter().enumerate() {
                    c.delete(r).with_context(|| format!("steps[{i}].delete[{j}]"))?;
                    world.delete(r)?;
                }
                c.sync().with_context(|| format!("steps[{i}]"))?;
            }
            Step::Probe(p) => {
                let pods = world.pods();
                ensure!(pods == c.pods(), "steps[{i}]: the case knows pods {pods:?}, the runner made {:?}", c.pods());
                let expected = p.expect.evaluate(&pods).map_err(anyhow::Error::msg)?;
                let (out, drops) = c.probe(p, &pods).with_context(|| format!("steps[{i}].probe"))?;
                *cells += pods.len() * (pods.len() - 1);
                let cmp = compare(&expected, &out, false);
                if cmp.outcome() != Outcome::Match {
                    let _ = writeln!(
                        detail,
                        "steps[{i}] probe {}/{} via {:?} over {:?}: verdicts differ from the expectation",
                        p.protocol, p.port, p.via, p.family
                    );
                    detail.push_str(&cmp.render());
                    for (f, t) in &cmp.wrong {
                        let why = drops
                            .get(&(f.clone(), t.clone()))
                            .map(|w| format!("dropped: {w}"))
                            .unwrap_or_else(|| "all four runs passed".into());
                        let _ = writeln!(detail, "  {f} -> {t}: {why}");
                    }
                    if !c.diagnostics.is_empty() {
                        let _ = writeln!(detail, "engine diagnostics:");
                        for d in &c.diagnostics {
                            let _ = writeln!(detail, "  {d}");
                        }
                    }
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// Every case in order, on the calling thread, which must already be in a
/// private network namespace ([`enter_private_netns`]).
pub fn run_suite(cases: &[Case]) -> Report {
    let mut devices = Devices::default();
    let mut report = Report::new(Runner::Verdict);
    for c in cases {
        report.push(run_case(&mut devices, c), cases.len());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_list_names_real_cases() {
        let cases = crate::case::load_dir(&crate::case::cases_dir()).unwrap();
        for (name, why) in SKIPPED {
            assert!(cases.iter().any(|c| c.name == *name), "SKIPPED names no case {name}");
            assert!(!why.trim().is_empty(), "{name}: say why it is skipped");
        }
    }
}
