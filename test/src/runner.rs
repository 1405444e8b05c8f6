//! Runs cases against `weirctl lab`: one fresh lab per case (so no case
//! sees another's leftovers), steps applied in order, every probe compared
//! with its expectation and retried for up to 10 s (upstream's budget;
//! no settle time after a change), the lab brought down whatever happens.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_yaml_ng::Value;

use crate::case::{Case, Protocol, Step, World};
use crate::lab::{namespaces_not_spanning, Lab, Topology, Weirctl};
use crate::model;
use crate::placeholder::{self, PodIps};
use crate::probe::{check_header, compare, Outcome};
use crate::report::{CaseResult, Report, Runner, Status};

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
    /// The nodes of every lab: one, or several with pods spread so that
    /// each namespace spans every node.
    pub topology: Topology,
    /// Which cases also run `weirctl lab explain` on every probed cell
    /// (`crate::explain`).
    pub explain: crate::explain::Scope,
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
            topology: Topology::default(),
            // One node: every case (about 1 s per probe on 2 cores).
            explain: crate::explain::Scope::from_env(crate::explain::Scope::All),
        }
    }

    /// A suite on `topology`, with lab names and scratch space of its own,
    /// so suites of several topologies run side by side in one process.
    pub fn with_topology(ctl: Weirctl, topology: Topology) -> Config {
        let mut cfg = Config::new(ctl);
        if topology != Topology::default() {
            let tag = topology.tag();
            cfg.lab_prefix = format!("c{}t{tag}n", std::process::id() % 100_000);
            cfg.work_dir = std::env::temp_dir().join(format!("weir-conformance-{}-{tag}", std::process::id()));
        }
        if topology.nodes > 1 {
            // Each cell asks two nodes: a representative subset.
            cfg.explain = crate::explain::Scope::from_env(crate::explain::Scope::representative());
        }
        cfg.topology = topology;
        cfg
    }
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
    CaseResult { max_attempts, ..CaseResult::new(case, status, detail, t.elapsed().as_secs_f64()) }
}

fn run_steps(
    cfg: &Config,
    case: &Case,
    lab_name: &str,
    work: &std::path::Path,
    detail: &mut String,
    max_attempts: &mut usize,
) -> Result<Status> {
    let mut lab = Lab::up_on(&cfg.ctl, lab_name, &cfg.topology, &cfg.model_dir, work)?;
    let result = spread_check(cfg, &lab).and_then(|()| drive(cfg, case, &mut lab, detail, max_attempts));
    if !matches!(result, Ok(Status::Pass | Status::Unsupported)) {
        // The lab's own account of what it did, read before `down` removes it.
        let log = lab.policyd_log_tail(30);
        if !log.is_empty() {
            let _ = writeln!(detail, "policyd log (last lines):\n{log}");
        }
    }
    let down = lab.down();
    let status = result?;
    down?;
    Ok(status)
}

/// On several nodes, every namespace of the model must span every node,
/// or the run would not cross nodes for every peer pair.
fn spread_check(cfg: &Config, lab: &Lab) -> Result<()> {
    if cfg.topology.nodes <= 1 {
        return Ok(());
    }
    let lumped = namespaces_not_spanning(&lab.placement()?, cfg.topology.nodes);
    if !lumped.is_empty() {
        anyhow::bail!("pods are not spread over the {} nodes: {}", cfg.topology.nodes, lumped.join(", "));
    }
    Ok(())
}

/// The steps of one case in a running lab.
fn drive(cfg: &Config, case: &Case, lab: &mut Lab, detail: &mut String, max_attempts: &mut usize) -> Result<Status> {
    let mut world = World::model();
    let mut unsupported = false;
    for (j, obj) in case.setup.iter().enumerate() {
        apply_one(lab, &mut world, obj).with_context(|| format!("setup[{j}]"))?;
    }
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Apply(objs) => {
                for (j, obj) in objs.iter().enumerate() {
                    apply_one(lab, &mut world, obj).with_context(|| format!("steps[{i}].apply[{j}]"))?;
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
                    let out =
                        lab.probe(p.port, p.protocol, p.via, p.family).with_context(|| format!("steps[{i}].probe"))?;
                    check_header(&out, p.port, p.protocol)?;
                    let cmp = compare(&expected, &out, p.protocol == Protocol::SCTP);
                    *max_attempts = (*max_attempts).max(attempts);
                    let settled = matches!(cmp.outcome(), Outcome::Match | Outcome::Unsupported);
                    if settled && cfg.explain.covers(&case.name) {
                        let checked = crate::explain::check_probe(lab, &out, p.protocol);
                        if !checked.problems.is_empty() {
                            let _ = writeln!(
                                detail,
                                "steps[{i}] {}/{}: weirctl lab explain disagrees on {} of {} cells:\n  {}",
                                p.protocol,
                                p.port,
                                checked.problems.len(),
                                checked.cells,
                                checked.problems.join("\n  ")
                            );
                            return Ok(Status::Fail);
                        }
                        let _ = writeln!(
                            detail,
                            "steps[{i}] {}/{}: weirctl lab explain agrees on all {} cells",
                            p.protocol, p.port, checked.cells
                        );
                    }
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
                            return Ok(Status::Fail);
                        }
                    }
                }
            }
        }
    }
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

/// Runs `cases` one after the other, printing each result as it lands.
pub fn run_suite(cfg: &Config, cases: &[Case]) -> Report {
    let mut report = Report::new(Runner::Lab);
    for (i, c) in cases.iter().enumerate() {
        report.push(run_case(cfg, c, i), cases.len());
    }
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_substring_or_exact_name() {
        let all =
            crate::case::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases")).unwrap();
        let n = all.len();
        assert_eq!(select(all.clone(), "").len(), n);
        let names = |v: Vec<Case>| v.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(select(all.clone(), "=default-deny-ingress")), ["default-deny-ingress"]);
        let some = names(select(all.clone(), "p-default-deny-ingress, =allow-all"));
        assert_eq!(some, ["allow-all", "sctp-default-deny-ingress", "udp-default-deny-ingress"]);
    }

    /// A stand-in `weirctl` (a shell script) so the runner's whole flow is
    /// tested without root: it logs every call, serves canned pod and
    /// probe JSON, and fails `up` on request.
    struct FakeLab {
        dir: std::path::PathBuf,
    }

    impl FakeLab {
        fn new(tag: &str) -> FakeLab {
            let dir = std::env::temp_dir().join(format!("weir-e2e-fake-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let script = r#"#!/bin/sh
d=$(dirname "$0")
echo "$*" >> "$d/calls.log"
case "$2" in
  up) [ -e "$d/fail-up" ] && { echo "no bridge for you" >&2; exit 1; }; exit 0 ;;
  apply) cat "$6" >> "$d/applied.log"; exit 0 ;;
  delete|down) exit 0 ;;
  get) cat "$d/pods.json" ;;
  probe) cat "$d/probe.json" ;;
esac
"#;
            for b in crate::lab::BINARIES {
                let p = dir.join(b);
                std::fs::write(&p, script).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let pods: Vec<serde_json::Value> = crate::model::model_pods()
                .iter()
                .enumerate()
                .map(|(i, p)| serde_json::json!({"metadata": {"namespace": p.ns, "name": p.name}, "status": {"podIP": format!("10.88.0.{}", i + 2)}}))
                .collect();
            std::fs::write(dir.join("pods.json"), serde_json::json!({"items": pods}).to_string()).unwrap();
            let mut res = serde_json::Map::new();
            for f in crate::model::model_pods() {
                let row: serde_json::Map<String, serde_json::Value> =
                    crate::model::model_pods().iter().map(|t| (t.to_string(), serde_json::Value::Bool(true))).collect();
                res.insert(f.to_string(), serde_json::Value::Object(row));
            }
            let probe = serde_json::json!({"port": 80, "protocol": "TCP", "via": "service", "results": res});
            std::fs::write(dir.join("probe.json"), probe.to_string()).unwrap();
            FakeLab { dir }
        }

        fn config(&self) -> Config {
            let mut cfg = Config::new(Weirctl { bin_dir: self.dir.clone() });
            cfg.work_dir = self.dir.join("work");
            cfg.retry_for = Duration::from_millis(300);
            // The fake weirctl knows no explain.
            cfg.explain = crate::explain::Scope::Off;
            cfg
        }

        fn log(&self, f: &str) -> String {
            std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
        }
    }

    impl Drop for FakeLab {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn case(expect: &str) -> Case {
        let text = format!(
            r#"
name: fake
origin: weir
reference: "runner flow"
protocols: [TCP]
ports: [80]
steps:
  - apply:
      - kind: NetworkPolicy
        metadata: {{name: p, namespace: x}}
        spec: {{podSelector: {{}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: "{{{{hostcidr y/b}}}}"}}}}]}}]}}
  - probe: {{port: 80, protocol: TCP, expect: {expect}}}
"#
        );
        Case::parse(&text, std::path::Path::new("fake.yaml")).unwrap()
    }

    #[test]
    fn a_matching_case_passes_with_placeholders_resolved_and_the_lab_brought_down() {
        let fake = FakeLab::new("pass");
        let r = run_case(&fake.config(), &case("{default: allow}"), 3);
        assert_eq!(r.status, Status::Pass, "{}", r.detail);
        assert_eq!(r.max_attempts, 1);
        let calls: Vec<String> =
            fake.log("calls.log").lines().map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(calls, ["lab up", "lab get", "lab apply", "lab probe", "lab down"]);
        assert!(fake.log("calls.log").contains("--policyd-bin"));
        // y/b is the fifth model pod: 10.88.0.6.
        assert!(fake.log("applied.log").contains("10.88.0.6/32"), "{}", fake.log("applied.log"));
        assert!(fake.log("applied.log").contains("networking.k8s.io/v1"));
    }

    #[test]
    fn a_multi_node_run_passes_its_topology_and_refuses_pods_not_spread() {
        let fake = FakeLab::new("multi");
        let pods = |node_of: &dyn Fn(usize) -> usize| -> String {
            let items: Vec<serde_json::Value> = crate::model::model_pods()
                .iter()
                .enumerate()
                .map(|(i, p)| serde_json::json!({"metadata": {"namespace": p.ns, "name": p.name}, "spec": {"nodeName": format!("node-{}", node_of(i))}, "status": {"podIP": format!("10.88.0.{}", i + 2)}}))
                .collect();
            serde_json::json!({"items": items}).to_string()
        };
        // round-robin in model order: every namespace on node-1..3
        std::fs::write(fake.dir.join("pods.json"), pods(&|i| i % 3 + 1)).unwrap();
        let mut cfg = fake.config();
        cfg.topology = Topology::multi(3, "host-gw");
        let r = run_case(&cfg, &case("{default: allow}"), 7);
        assert_eq!(r.status, Status::Pass, "{}", r.detail);
        assert!(fake.log("calls.log").contains("--nodes 3 --backend host-gw"), "{}", fake.log("calls.log"));
        // one namespace per node: refused, and the lab still goes down
        std::fs::write(fake.dir.join("pods.json"), pods(&|i| i / 3 + 1)).unwrap();
        let r = run_case(&cfg, &case("{default: allow}"), 8);
        assert_eq!(r.status, Status::Error);
        assert!(r.detail.contains("not spread") && r.detail.contains("x (not on node-2, node-3)"), "{}", r.detail);
        assert!(fake.log("calls.log").lines().last().unwrap().starts_with("lab down"));
    }

    #[test]
    fn a_disagreeing_probe_is_retried_then_fails_with_truth_tables_and_the_lab_goes_down() {
        let fake = FakeLab::new("fail");
        let r = run_case(&fake.config(), &case("{deny: [{from: x/a, to: y/b}]}"), 4);
        assert_eq!(r.status, Status::Fail);
        assert!(r.max_attempts > 1, "retried: {}", r.max_attempts);
        assert!(r.detail.contains("incorrect 1") && r.detail.contains("comparison"), "{}", r.detail);
        assert!(fake.log("calls.log").lines().last().unwrap().starts_with("lab down"));
    }

    #[test]
    fn a_lab_that_does_not_come_up_is_an_error_with_its_stderr_and_is_torn_down() {
        let fake = FakeLab::new("error");
        std::fs::write(fake.dir.join("fail-up"), "").unwrap();
        let r = run_case(&fake.config(), &case("{default: allow}"), 5);
        assert_eq!(r.status, Status::Error);
        assert!(r.detail.contains("no bridge for you"), "{}", r.detail);
        assert!(fake.log("calls.log").lines().last().unwrap().starts_with("lab down"));
        let report = Report { runner: Runner::Lab, results: vec![r] };
        assert_eq!(report.summary_line(), "0 passed, 1 failed, 0 unsupported");
    }

    #[test]
    fn sctp_answers_unsupported_and_the_case_is_not_a_pass() {
        let fake = FakeLab::new("sctp");
        let probe = fake.log("probe.json").replace("true", "\"unsupported\"").replace("\"TCP\"", "\"SCTP\"");
        std::fs::write(fake.dir.join("probe.json"), probe).unwrap();
        let text = r#"
name: fake
origin: upstream
reference: "sctp"
protocols: [SCTP]
ports: [80]
sctp: verdict-only
steps:
  - apply: [{kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {podSelector: {}, policyTypes: [Ingress]}}]
  - probe: {port: 80, protocol: SCTP, expect: {deny: [{to: "x/*"}]}}
"#;
        let c = Case::parse(text, std::path::Path::new("fake.yaml")).unwrap();
        let r = run_case(&fake.config(), &c, 6);
        assert_eq!(r.status, Status::Unsupported, "{}", r.detail);
        assert!(r.detail.contains("72 cells unsupported"), "{}", r.detail);
    }
}
