//! The thin kernel-touching layer: network namespaces, commands run inside
//! them, daemon processes. Everything here shells out to iproute2/nft or
//! calls setns(2); nothing here decides anything.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const NETNS_DIR: &str = "/run/netns";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what}: {:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of every named netns (`/run/netns`).
pub fn netns_names() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else { return vec![] };
    let mut v: Vec<String> = rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect();
    v.sort();
    v
}

/// `ip netns add NAME` and `lo` up inside it.
pub fn netns_add(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", name]), &format!("creating netns {name}"))?;
    run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]), &format!("bringing lo up in netns {name}"))?;
    Ok(())
}

/// `ip netns del NAME`; absent is fine.
pub fn netns_del(name: &str) -> Result<()> {
    if !netns_exists(name) {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "del", name]), &format!("deleting netns {name}"))?;
    Ok(())
}

/// Open a netns handle (for setns).
pub fn open_netns(name: &str) -> Result<OwnedFd> {
    let f = File::open(netns_path(name)).with_context(|| format!("opening netns {name} ({NETNS_DIR}/{name})"))?;
    Ok(OwnedFd::from(f))
}

/// A command whose child enters netns `name` before exec. setns happens in
/// the forked child, so neither this process nor other threads move. Unlike
/// `ip netns exec`, /sys is not remounted, so bpffs pins stay visible.
pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let fd = open_netns(name)?;
    let mut cmd = Command::new(program);
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Run a command in netns `name`, feeding `stdin`; error with its stderr.
pub fn run_in(name: &str, program: &str, args: &[&str], stdin: Option<&str>, what: &str) -> Result<String> {
    let mut cmd = command_in(name, program)?;
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("{what}: cannot run {program}"))?;
    if let Some(text) = stdin {
        child.stdin.take().expect("piped").write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what}: {program} {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Move the calling thread into netns `name`. Only ever call this on a
/// thread created for the purpose: the thread stays there.
pub fn enter_netns_this_thread(name: &str) -> Result<()> {
    let fd = open_netns(name)?;
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into netns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A daemon we started: its pid and kernel start time, so a recycled pid is
/// never mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcRec {
    pub pid: i32,
    pub start_time: u64,
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcRec {
    pub fn of(pid: i32) -> Self {
        ProcRec { pid, start_time: proc_start_time(pid).unwrap_or(0) }
    }
    pub fn alive(&self) -> bool {
        proc_is_running(self.pid) && proc_start_time(self.pid) == Some(self.start_time)
    }
}

fn proc_is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Spawn `cmd` as a daemon: own session, stdio to `log`, not waited for.
/// Returns once the process exists; the caller checks it came up.
pub fn spawn_daemon(mut cmd: Command, log: &Path) -> Result<ProcRec> {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf);
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as i32;
    // Deliberately not waited for: it outlives this command and init reaps it.
    drop(child);
    Ok(ProcRec::of(pid))
}

/// Every process whose command line mentions `marker` as a path prefix of
/// one of its arguments (the lab directory): finds the lab's daemons even
/// when the state file is lost.
pub fn procs_mentioning(marker: &Path) -> Vec<i32> {
    let marker = marker.to_string_lossy().to_string();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let hit = cmdline.split(|b| *b == 0).any(|arg| {
            let a = String::from_utf8_lossy(arg);
            a == marker || a.starts_with(&format!("{marker}/"))
        });
        if hit && proc_is_running(pid) {
            out.push(pid);
        }
    }
    out
}

/// SIGTERM, then SIGKILL after `grace`; returns once each is gone.
pub fn terminate(pids: &[i32], grace: std::time::Duration) {
    for &pid in pids {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + grace;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| proc_is_running(*p)).collect();
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            for pid in &left {
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            let hard = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while left.iter().any(|p| proc_is_running(*p)) && std::time::Instant::now() < hard {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Write a file atomically (temporary name starting with '.', then rename),
/// so directory watchers never read half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Run-as-root check: every lab command creates namespaces, pins or rules.
pub fn require_root() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("weirctl lab must run as root (it creates network namespaces, bpffs pins and nftables rules); run it with sudo");
    }
    Ok(())
}

/// `ip ARGS`, erroring with its stderr.
pub fn ip(args: &[&str], what: &str) -> Result<String> {
    run(Command::new("ip").args(args), what)
}
