//! What the lab's root tests share: the binaries, and a guard per lab that
//! takes it down on success and on failure.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn weirctl() -> &'static str {
    env!("CARGO_BIN_EXE_weirctl")
}

/// weirctl finds the other binaries next to itself (test/run.sh builds
/// every bin first); say so plainly when one is missing rather than fail
/// obscurely.
pub fn require_binaries(bins: &[&str]) {
    let dir = Path::new(weirctl()).parent().unwrap();
    for bin in bins {
        assert!(
            dir.join(bin).is_file(),
            "{}/{bin} is missing: run `cargo build --workspace --bins` first",
            dir.display()
        );
    }
}

/// Whether this weir-policyd connects nodes (`--backend`): until it does,
/// traffic between nodes cannot flow and tests of it say SKIPPED.
pub fn policyd_has_backends() -> bool {
    weir_testsupport::help_offers(&Path::new(weirctl()).parent().unwrap().join("weir-policyd"), "--backend")
}

/// A lab named `<tag><pid>`, taken down on drop.
pub struct LabGuard {
    pub name: String,
}

impl LabGuard {
    pub fn new(tag: &str) -> LabGuard {
        LabGuard { name: format!("{tag}{}", std::process::id()) }
    }
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = vec!["lab"];
        full.extend_from_slice(&args[..1]);
        full.extend_from_slice(&["--name", &self.name]);
        full.extend_from_slice(&args[1..]);
        Command::new(weirctl()).args(&full).output().expect("running weirctl")
    }
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "weirctl lab {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "weirctl lab {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
    /// Writes `text` to `dir/model.yaml` and brings the lab up with it.
    pub fn up_with(&self, dir: &Path, text: &str) {
        let p = dir.join("model.yaml");
        std::fs::write(&p, text).unwrap();
        self.ok(&["up", "-f", p.to_str().unwrap()]);
    }
    /// Writes `text` to `dir/file` and applies it.
    pub fn apply(&self, dir: &Path, file: &str, text: &str) {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        self.ok(&["apply", "-f", p.to_str().unwrap()]);
    }
    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/weir/lab/{}", self.name))
    }
    /// Everything of this lab still on the machine.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("weir-{}", self.name);
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n == prefix || n.starts_with(&format!("{prefix}-")) {
                left.push(format!("netns {n}"));
            }
        }
        for p in [self.dir(), PathBuf::from(format!("/sys/fs/bpf/weir-lab-{}", self.name))] {
            if p.exists() {
                left.push(p.display().to_string());
            }
        }
        let marker = self.dir().display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&format!("{marker}/")) {
                if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                    if stat.rsplit(')').next().map(|s| s.trim_start().starts_with('Z')).unwrap_or(false) {
                        continue;
                    }
                }
                left.push(format!("process {}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
        left
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(weirctl()).args(["lab", "down", "--name", &self.name]).output();
    }
}

/// A `weirctl` table (columns padded, at least 3 spaces apart; no cell
/// holds 3 spaces) as one map of header to cell per row.
#[allow(dead_code)] // not every test binary reads tables
pub fn table_rows(table: &str) -> Vec<std::collections::HashMap<String, String>> {
    let split = |l: &str| -> Vec<String> {
        l.split("   ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect()
    };
    let mut lines = table.lines().take_while(|l| !l.is_empty());
    let Some(header) = lines.next() else { return Vec::new() };
    let header = split(header);
    lines.map(|l| header.iter().cloned().zip(split(l)).collect()).collect()
}
