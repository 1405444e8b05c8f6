//! `weirctl lab demo`: the upstream e2e model (x, y, z times a, b, c, one
//! Service per pod), its matrix, then example policies one by one with the
//! matrix after each and a line saying what changed and why.

use super::ops::{self, ProbeOpts, UpOpts};
use super::probe::{Cell, Matrix};
use super::state::Lab;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const MODEL: &str = include_str!("../../../conf/examples/netpol-model.yaml");
pub const DENY_ALL_X: &str = include_str!("../../../conf/examples/policies/01-deny-all-ingress-x.yaml");
pub const ALLOW_FROM_Y: &str = include_str!("../../../conf/examples/policies/02-allow-from-y-to-x.yaml");
pub const PORT_81_ONLY: &str = include_str!("../../../conf/examples/policies/03-z-a-port-81-only.yaml");
pub const HALF_BLOCKED: &str = include_str!("../../../conf/examples/policies/04-half-blocked.yaml");

enum Action {
    Apply(&'static str, &'static str),
    Delete(&'static str, &'static str),
}

struct Step {
    action: Action,
    port: u16,
    /// Whether the matrix should change (the demo waits for it to).
    changes: bool,
    why: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        action: Action::Apply("01-deny-all-ingress-x.yaml", DENY_ALL_X),
        port: 80,
        changes: true,
        why: "deny-all-ingress selects every pod in x for Ingress and allows nothing",
    },
    Step {
        action: Action::Apply("02-allow-from-y-to-x.yaml", ALLOW_FROM_Y),
        port: 80,
        changes: true,
        why: "allow-from-y adds an ingress rule for namespace y; policies add up, so y may reach x while x and z stay blocked",
    },
    Step {
        action: Action::Apply("03-z-a-port-81-only.yaml", PORT_81_ONLY),
        port: 80,
        changes: true,
        why: "allow-port-81-only isolates z/a and allows only its named port serve-81-tcp, so port 80 to z/a is blocked",
    },
    Step {
        action: Action::Apply("03-z-a-port-81-only.yaml", PORT_81_ONLY),
        port: 81,
        changes: true,
        why: "the same policy on port 81: z/a answers again (x is still closed to everyone but y)",
    },
    Step {
        action: Action::Delete("01-deny-all-ingress-x.yaml", DENY_ALL_X),
        port: 80,
        changes: false,
        why: "deny-all-ingress deleted, but allow-from-y still selects every pod in x, so x stays isolated and open only to y",
    },
    Step {
        action: Action::Delete("02-allow-from-y-to-x.yaml", ALLOW_FROM_Y),
        port: 80,
        changes: true,
        why: "no policy selects pods in x any more: they are no longer isolated and accept everything",
    },
];

fn summarize(now: &Matrix, before: &Matrix) -> String {
    let d = now.diff(before);
    if d.is_empty() {
        return "no cell changed".into();
    }
    let opened = d.iter().filter(|c| c.3 == Cell::Connected).count();
    let closed = d.iter().filter(|c| c.3 == Cell::Blocked).count();
    let tos: BTreeSet<&str> = d.iter().map(|c| c.1).collect();
    let froms: BTreeSet<&str> = d.iter().map(|c| c.0).collect();
    let mut parts = Vec::new();
    if closed > 0 {
        parts.push(format!("{closed} cell(s) . -> X"));
    }
    if opened > 0 {
        parts.push(format!("{opened} cell(s) X -> ."));
    }
    format!(
        "{} (from {} to {})",
        parts.join(", "),
        froms.into_iter().collect::<Vec<_>>().join(","),
        tos.into_iter().collect::<Vec<_>>().join(",")
    )
}

/// Probe until the matrix differs from `before` and holds still (policyd
/// applies changes asynchronously), at most `wait`.
fn settle(lab: &Lab, o: &ProbeOpts, before: Option<&Matrix>, wait: Duration) -> Result<Matrix> {
    let deadline = Instant::now() + wait;
    let mut last = ops::probe(lab, o)?;
    loop {
        let changed = before.map(|b| !last.diff(b).is_empty()).unwrap_or(true);
        if Instant::now() >= deadline {
            return Ok(last);
        }
        let again = ops::probe(lab, o)?;
        if changed && again.cells == last.cells {
            return Ok(again);
        }
        last = again;
    }
}

pub fn run(lab: &Lab, keep: bool, mut opts: UpOpts) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    opts.files = vec![write("netpol-model.yaml", MODEL)?];
    outln!(
        "== weirctl lab demo: the NetworkPolicy e2e model (namespaces x y z, pods a b c, Service s-<ns>-<pod> each)"
    );
    ops::up(lab, &opts)?;
    // Takes the lab down even when printing panics (stdout closed early,
    // e.g. `| head`), so a demo never leaves namespaces behind.
    struct Teardown<'a>(&'a Lab, bool);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            if self.1 && std::thread::panicking() {
                let _lock = self.0.lock();
                let _ = ops::down_inner(self.0, true);
                self.0.remove_lock_file();
            }
        }
    }
    let _teardown = Teardown(lab, !keep);
    let result = (|| -> Result<()> {
        let policy = lab.require_state()?.policy;
        if !policy {
            outln!("note: policy enforcement is OFF, so the policies below are stored but change nothing");
        }
        let probe = |port| ProbeOpts {
            port,
            protocol: "TCP".into(),
            via_service: true,
            timeout: Duration::from_millis(1000),
            from: None,
            to: None,
            ipv6: false,
        };
        let wait = if policy { Duration::from_secs(5) } else { Duration::ZERO };
        let mut prev = settle(lab, &probe(80), None, Duration::ZERO)?;
        outln!(
            "\n== TCP/80 via each pod's Service, before any policy ({} of 81 connected)",
            prev.count(Cell::Connected)
        );
        out!("{}", prev.table());
        let mut prev81: Option<Matrix> = None;
        for step in STEPS {
            let (verb, file) = match &step.action {
                Action::Apply(name, text) => ("apply", write(name, text)?),
                Action::Delete(name, text) => ("delete", write(name, text)?),
            };
            let already = matches!(step.action, Action::Apply(..)) && step.port == 81;
            if !already {
                outln!(
                    "\n== weirctl lab {verb} -f conf/examples/policies/{}",
                    file.file_name().unwrap().to_string_lossy()
                );
                match verb {
                    "apply" => ops::apply(lab, std::slice::from_ref(&file), false)?,
                    _ => ops::delete(lab, std::slice::from_ref(&file), false)?,
                }
            } else {
                outln!("\n== the same policies, probed on TCP/81");
            }
            let before = if step.port == 81 { prev81.clone().unwrap_or_else(|| prev.clone()) } else { prev.clone() };
            let m = settle(
                lab,
                &probe(step.port),
                Some(&before),
                if step.changes { wait } else { Duration::from_millis(500).min(wait) },
            )?;
            out!("{}", m.table());
            outln!("changed: {}: {}", summarize(&m, &before), step.why);
            if step.port == 81 {
                prev81 = Some(m);
            } else {
                prev = m;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    if keep {
        outln!(
            "\nlab {:?} kept: `weirctl lab probe --name {}`, `weirctl lab down --name {}`",
            lab.name,
            lab.name,
            lab.name
        );
    } else {
        outln!();
        ops::down(lab, false)?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::objects::{parse_text, Object};

    #[test]
    fn embedded_examples_parse() {
        let model = parse_text(MODEL, "model").unwrap();
        assert_eq!(model.iter().filter(|o| matches!(o, Object::Pod(_))).count(), 9);
        assert_eq!(model.iter().filter(|o| matches!(o, Object::Service(_))).count(), 9);
        assert_eq!(model.iter().filter(|o| matches!(o, Object::Namespace(_))).count(), 3);
        for p in [DENY_ALL_X, ALLOW_FROM_Y, PORT_81_ONLY, HALF_BLOCKED] {
            let objs = parse_text(p, "policy").unwrap();
            assert!(objs.iter().all(|o| matches!(o, Object::NetworkPolicy(_))));
        }
        crate::lab::objects::validate_batch(&model, &[]).unwrap();
    }

    #[test]
    fn summary_names_cells() {
        let mk = |c: Cell| Matrix {
            port: 80,
            protocol: "TCP".into(),
            via: "service".into(),
            froms: vec!["y/a".into()],
            tos: vec!["x/a".into()],
            cells: [(("y/a".to_string(), "x/a".to_string()), c)].into(),
            targets: Default::default(),
        };
        assert_eq!(summarize(&mk(Cell::Blocked), &mk(Cell::Connected)), "1 cell(s) . -> X (from y/a to x/a)");
        assert_eq!(summarize(&mk(Cell::Blocked), &mk(Cell::Blocked)), "no cell changed");
    }
}
