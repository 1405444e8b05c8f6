//! Driving `weirctl lab` as a command, exactly as a person would. Every
//! command line the suite uses is built here, so a change of the CLI is a
//! change of this file only.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_yaml_ng::Value;

use crate::case::{DeleteRef, Family, Protocol, Via};
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
        let missing: Vec<&str> = BINARIES
            .iter()
            .copied()
            .filter(|b| !dir.join(b).is_file())
            .collect();
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
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(Weirctl {
            bin_dir: dir.to_path_buf(),
        })
    }

    pub fn bin(&self) -> PathBuf {
        self.bin_dir.join("weirctl")
    }

    /// Runs `weirctl ARGS`, returning stdout; failure carries the command
    /// line and stderr.
    pub fn run(&self, args: &[OsString]) -> Result<String> {
        let shown = format!(
            "weirctl {}",
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
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
        std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        let t = Instant::now();
        let mut lab = Lab {
            ctl: ctl.clone(),
            name: name.to_string(),
            work: work.to_path_buf(),
            up: true,
            seq: 0,
            up_secs: 0.0,
        };
        let mut args = os(&["lab", "up", "--name", name, "-f"]);
        args.push(model_dir.as_os_str().to_owned());
        // Name the binaries explicitly so WEIR_BIN_DIR decides, not weirctl's search path.
        args.push("--cni-bin-dir".into());
        args.push(ctl.bin_dir.as_os_str().to_owned());
        args.push("--policyd-bin".into());
        args.push(ctl.bin_dir.join("weir-policyd").into_os_string());
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
        std::fs::write(&path, serde_yaml_ng::to_string(v)?)
            .with_context(|| format!("writing {}", path.display()))?;
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
        let api = if r.kind == "NetworkPolicy" {
            "networking.k8s.io/v1"
        } else {
            "v1"
        };
        let mut meta = serde_yaml_ng::Mapping::new();
        meta.insert("name".into(), r.name.clone().into());
        if let Some(ns) = &r.namespace {
            meta.insert("namespace".into(), ns.clone().into());
        }
        let mut obj = serde_yaml_ng::Mapping::new();
        obj.insert("apiVersion".into(), api.into());
        obj.insert("kind".into(), r.kind.clone().into());
        obj.insert("metadata".into(), Value::Mapping(meta));
        let path = self.write("delete", &Value::Mapping(obj))?;
        let mut args = os(&["lab", "delete", "--name", &self.name, "-f"]);
        args.push(path.into_os_string());
        self.ctl.run(&args).map(|_| ())
    }

    /// `weirctl lab probe --name NAME --port P --protocol T [--via pod] [--ipv6] -o json`.
    pub fn probe(
        &self,
        port: u16,
        protocol: Protocol,
        via: Via,
        family: Family,
    ) -> Result<ProbeOutput> {
        let port = port.to_string();
        let proto = protocol.to_string();
        let mut args = vec![
            "lab",
            "probe",
            "--name",
            &self.name,
            "--port",
            &port,
            "--protocol",
            &proto,
        ];
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

    /// `weirctl lab get pods --name NAME -o json`.
    pub fn pod_ips(&self) -> Result<PodIps> {
        let text = self.ctl.run(&os(&[
            "lab", "get", "pods", "--name", &self.name, "-o", "json",
        ]))?;
        parse_pod_ips(&text)
    }

    /// The last `lines` lines of the lab's policyd log
    /// (`/run/weir/lab/<name>/logs/policyd.log`), for a failure report;
    /// empty when there is none. Read before `down`, which removes it.
    pub fn policyd_log_tail(&self, lines: usize) -> String {
        let path = Path::new(LAB_ROOT)
            .join(&self.name)
            .join("logs/policyd.log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `weirctl lab down --name NAME`. Idempotent.
    pub fn down(&mut self) -> Result<()> {
        if !self.up {
            return Ok(());
        }
        self.up = false;
        self.ctl
            .run(&os(&["lab", "down", "--name", &self.name]))
            .map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("lab {}: teardown failed: {e:#}", self.name);
        }
    }
}
