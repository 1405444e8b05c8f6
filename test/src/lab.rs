//! Driving `weirctl lab` as a command, exactly as a person would. Every
//! command line the suite uses is built here, so a change of the CLI is a
//! change of this file only.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_yaml_ng::Value;

use crate::case::{DeleteRef, Family, Protocol, Via};
use crate::model;
use crate::placeholder::{parse_pod_ips, PodIps};
use crate::probe::{parse_probe, ProbeOutput};

/// The binaries the lab needs: `weirctl` runs it and execs `weir` (the
/// CNI plugin) and `weir-policyd`.
pub const BINARIES: [&str; 3] = ["weirctl", "weir", "weir-policyd"];
/// Where `weirctl lab` keeps a lab's state and logs.
pub const LAB_ROOT: &str = "/run/weir/lab";
pub const BUILD_HINT: &str = "cargo build -p weirctl -p weir-cni -p weir-policyd";

#[derive(Debug, Clone)]
pub struct Weirctl {
    pub bin_dir: PathBuf,
}

impl Weirctl {
    /// `$WEIR_BIN_DIR` if set, else `$CARGO_TARGET_DIR/debug`, else the
    /// workspace's `target/debug`.
    pub fn locate() -> Result<Weirctl> {
        let dir = if let Some(d) = std::env::var_os("WEIR_BIN_DIR") {
            PathBuf::from(d)
        } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            PathBuf::from(t).join("debug")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
        };
        let missing: Vec<&str> = BINARIES.iter().copied().filter(|b| !dir.join(b).is_file()).collect();
        if !missing.is_empty() {
            bail!(
                "{} missing from {} (set WEIR_BIN_DIR, or build them: `{BUILD_HINT}`)",
                missing.join(", "),
                dir.display()
            );
        }
        Ok(Weirctl { bin_dir: dir })
    }

    /// Copies the binaries into `dir` and returns a Weirctl using the
    /// copies: the suite then runs one consistent build even while a
    /// `cargo build` elsewhere replaces the files under target/.
    pub fn snapshot(&self, dir: &Path) -> Result<Weirctl> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for b in BINARIES {
            let (from, to) = (self.bin_dir.join(b), dir.join(b));
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(Weirctl { bin_dir: dir.to_path_buf() })
    }

    pub fn bin(&self) -> PathBuf {
        self.bin_dir.join("weirctl")
    }

    /// Whether this weir-policyd connects nodes (its `--help` offers
    /// `--backend`): traffic between a multi-node lab's nodes needs it.
    pub fn policyd_has_backends(&self) -> bool {
        weir_testsupport::help_offers(&self.bin_dir.join("weir-policyd"), "--backend")
    }

    /// Runs `weirctl ARGS`, returning stdout; failure carries the command
    /// line and stderr.
    pub fn run(&self, args: &[OsString]) -> Result<String> {
        let shown =
            format!("weirctl {}", args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "));
        let out = Command::new(self.bin())
            .args(args)
            .env("WEIR_BIN_DIR", &self.bin_dir)
            .output()
            .with_context(|| format!("running {shown}"))?;
        if !out.status.success() {
            bail!(
                "`{shown}` failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                if out.stdout.is_empty() {
                    String::new()
                } else {
                    format!(" / stdout: {}", String::from_utf8_lossy(&out.stdout).trim())
                }
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// How many nodes a lab has and how they are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub nodes: usize,
    /// `host-gw` or `vxlan` (multi-node labs; weirctl's default otherwise).
    pub backend: Option<String>,
}

impl Default for Topology {
    /// The one-node lab.
    fn default() -> Self {
        Topology { nodes: 1, backend: None }
    }
}

impl Topology {
    pub fn multi(nodes: usize, backend: &str) -> Topology {
        Topology { nodes, backend: Some(backend.to_string()) }
    }

    /// The `weirctl lab up` flags; none for the one-node lab, so its command
    /// line stays what it always was.
    pub fn up_args(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        if self.nodes != 1 {
            v.push("--nodes".into());
            v.push(self.nodes.to_string().into());
        }
        if let Some(b) = &self.backend {
            v.push("--backend".into());
            v.push(b.into());
        }
        v
    }

    /// Short, for lab names and report lines: `1`, `3h` (host-gw), `3v`.
    pub fn tag(&self) -> String {
        match self.backend.as_deref() {
            None => self.nodes.to_string(),
            Some(b) => format!("{}{}", self.nodes, b.chars().next().unwrap_or('x')),
        }
    }
}

/// Namespaces whose pods do not run on every node, with the nodes they
/// miss: a multi-node suite run is only worth it when each namespace
/// spans every node (so every peer pair crosses nodes somewhere).
pub fn namespaces_not_spanning(placement: &BTreeMap<String, String>, nodes: usize) -> Vec<String> {
    let mut on: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (pod, node) in placement {
        let ns = pod.split_once('/').map(|(n, _)| n).unwrap_or("");
        on.entry(ns).or_default().insert(node.as_str());
    }
    let all: Vec<String> = (1..=nodes).map(|k| format!("node-{k}")).collect();
    on.iter()
        .filter_map(|(ns, have)| {
            let missing: Vec<&str> = all.iter().map(String::as_str).filter(|n| !have.contains(n)).collect();
            (!missing.is_empty()).then(|| format!("{ns} (not on {})", missing.join(", ")))
        })
        .collect()
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// One running lab. Brought down on drop, so a panicking or failing case
/// never leaves namespaces, links or pins behind.
pub struct Lab {
    ctl: Weirctl,
    name: String,
    work: PathBuf,
    up: bool,
    seq: usize,
    /// Time spent in `weirctl lab up`, for the report.
    pub up_secs: f64,
}

impl Lab {
    /// `weirctl lab up --name NAME -f MODEL_DIR`. `work` is a scratch
    /// directory for the files handed to `apply`/`delete`.
    pub fn up(ctl: &Weirctl, name: &str, model_dir: &Path, work: &Path) -> Result<Lab> {
        Lab::up_on(ctl, name, &Topology::default(), model_dir, work)
    }

    /// `weirctl lab up` with the nodes of `topology`.
    pub fn up_on(ctl: &Weirctl, name: &str, topology: &Topology, model_dir: &Path, work: &Path) -> Result<Lab> {
        std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        let t = Instant::now();
        let mut lab =
            Lab { ctl: ctl.clone(), name: name.to_string(), work: work.to_path_buf(), up: true, seq: 0, up_secs: 0.0 };
        let mut args = os(&["lab", "up", "--name", name, "-f"]);
        args.push(model_dir.as_os_str().to_owned());
        // Name the binaries explicitly so WEIR_BIN_DIR decides, not weirctl's search path.
        args.push("--cni-bin-dir".into());
        args.push(ctl.bin_dir.as_os_str().to_owned());
        args.push("--policyd-bin".into());
        args.push(ctl.bin_dir.join("weir-policyd").into_os_string());
        args.extend(topology.up_args());
        // A debugging aid, e.g. `--no-policy` to check the harness itself
        // (then only cases expecting everything allowed pass).
        if let Ok(extra) = std::env::var("WEIR_CONFORMANCE_LAB_UP_ARGS") {
            args.extend(extra.split_whitespace().map(OsString::from));
        }
        if let Err(e) = ctl.run(&args) {
            // Half-built labs are torn down too.
            let _ = lab.down();
            return Err(e.context(format!("bringing lab {name} up")));
        }
        lab.up_secs = t.elapsed().as_secs_f64();
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, what: &str, v: &Value) -> Result<PathBuf> {
        self.seq += 1;
        let path = self.work.join(format!("{:03}-{what}.yaml", self.seq));
        std::fs::write(&path, serde_yaml_ng::to_string(v)?).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `weirctl lab apply --name NAME -f FILE`, one object per call.
    pub fn apply(&mut self, obj: &Value) -> Result<()> {
        let path = self.write("apply", obj)?;
        let mut args = os(&["lab", "apply", "--name", &self.name, "-f"]);
        args.push(path.into_os_string());
        self.ctl.run(&args).map(|_| ())
    }

    /// `weirctl lab delete --name NAME -f FILE` with the object's identity.
    pub fn delete(&mut self, r: &DeleteRef) -> Result<()> {
        let obj = model::identity_object(&r.kind, r.namespace.as_deref(), &r.name);
        let path = self.write("delete", &obj)?;
        let mut args = os(&["lab", "delete", "--name", &self.name, "-f"]);
        args.push(path.into_os_string());
        self.ctl.run(&args).map(|_| ())
    }

    /// `weirctl lab probe --name NAME --port P --protocol T [--via pod] [--ipv6] -o json`.
    pub fn probe(&self, port: u16, protocol: Protocol, via: Via, family: Family) -> Result<ProbeOutput> {
        let port = port.to_string();
        let proto = protocol.to_string();
        let mut args = vec!["lab", "probe", "--name", &self.name, "--port", &port, "--protocol", &proto];
        if via == Via::Pod {
            args.extend(["--via", "pod"]);
        }
        if family == Family::IPv6 {
            args.push("--ipv6");
        }
        args.extend(["-o", "json"]);
        let text = self.ctl.run(&os(&args))?;
        parse_probe(&text)
    }

    /// `weirctl lab explain --name NAME --from F --to T --port P --protocol X -o json`.
    /// A disagreement with the kernel fails the command: its error says so.
    pub fn explain(&self, from: &str, to: &str, port: u16, protocol: Protocol) -> Result<serde_json::Value> {
        let port = port.to_string();
        let proto = protocol.to_string();
        let args = [
            "lab",
            "explain",
            "--name",
            &self.name,
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port,
            "--protocol",
            &proto,
            "-o",
            "json",
        ];
        let text = self.ctl.run(&os(&args))?;
        serde_json::from_str(&text).context("`weirctl lab explain -o json` did not print JSON")
    }

    /// `weirctl lab get pods --name NAME -o json`.
    pub fn pod_ips(&self) -> Result<PodIps> {
        let text = self.ctl.run(&os(&["lab", "get", "pods", "--name", &self.name, "-o", "json"]))?;
        parse_pod_ips(&text)
    }

    /// `ns/name` -> the node it runs on (`spec.nodeName`).
    pub fn placement(&self) -> Result<BTreeMap<String, String>> {
        let text = self.ctl.run(&os(&["lab", "get", "pods", "--name", &self.name, "-o", "json"]))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).context("`weirctl lab get pods -o json` did not print JSON")?;
        let mut out = BTreeMap::new();
        for p in v["items"].as_array().context("no `items` list")? {
            let m = &p["metadata"];
            let key = format!("{}/{}", m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or(""));
            out.insert(key, p["spec"]["nodeName"].as_str().unwrap_or("").to_string());
        }
        Ok(out)
    }

    /// The last `lines` lines of each of the lab's policyd logs
    /// (`/run/weir/lab/<name>/logs/policyd*.log`, one per node), for a
    /// failure report; empty when there is none. Read before `down`, which
    /// removes them.
    pub fn policyd_log_tail(&self, lines: usize) -> String {
        let dir = Path::new(LAB_ROOT).join(&self.name).join("logs");
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with("policyd") && n.ends_with(".log")
            })
            .collect();
        logs.sort();
        let many = logs.len() > 1;
        let mut out = Vec::new();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            if many {
                out.push(format!("== {}", path.display()));
            }
            out.extend(all[all.len().saturating_sub(lines)..].iter().map(|l| l.to_string()));
        }
        out.join("\n")
    }

    /// `weirctl lab down --name NAME`. Idempotent.
    pub fn down(&mut self) -> Result<()> {
        if !self.up {
            return Ok(());
        }
        self.up = false;
        self.ctl.run(&os(&["lab", "down", "--name", &self.name])).map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("lab {}: teardown failed: {e:#}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_adds_no_flags() {
        assert!(Topology::default().up_args().is_empty());
        assert_eq!(
            Topology::multi(3, "host-gw").up_args(),
            ["--nodes", "3", "--backend", "host-gw"].map(OsString::from)
        );
        assert_eq!(Topology::multi(3, "vxlan").tag(), "3v");
    }

    #[test]
    fn a_namespace_missing_a_node_is_named() {
        let p = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let spread = p(&[("x/a", "node-1"), ("x/b", "node-2"), ("y/a", "node-2"), ("y/b", "node-1")]);
        assert!(namespaces_not_spanning(&spread, 2).is_empty());
        let lumped = p(&[("x/a", "node-1"), ("x/b", "node-1"), ("y/a", "node-2"), ("y/b", "node-1")]);
        assert_eq!(namespaces_not_spanning(&lumped, 2), ["x (not on node-2)"]);
        assert_eq!(namespaces_not_spanning(&spread, 3).len(), 2);
    }
}
