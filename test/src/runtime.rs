//! Real container runtimes for tests: Debian's podman and containerd, each
//! confined to a scratch directory and a private mount namespace, so the
//! host's image stores, `/run`, `/var/lib` and `/dev/shm` stay as they
//! were, and every process, mount and directory they make goes away on
//! drop, also when the test panics.
//!
//! Configured as /work's runtimes notes found necessary here: runc (crun
//! 1.8 fails on this host's cgroups), cgroupfs, rlimits no higher than the
//! host's (no CAP_SYS_RESOURCE), no network (no registry, no CNI).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weir_testsupport::{unique, RemoveOnDrop};

/// Fails naming the Debian package when a runtime's program is missing.
pub fn require_programs(programs: &[&str]) -> Result<()> {
    for p in programs {
        if !Command::new("sh").args(["-c", &format!("command -v {p}")]).stdout(Stdio::null()).status()?.success() {
            bail!("{p} is not installed: run `bash test/deps.sh` (Debian packages podman, containerd, runc)");
        }
    }
    Ok(())
}

/// Runs `cmd`, returning its stdout; fails with its output otherwise.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A process holding a mount namespace of its own in which tmpfs covers
/// `/run`, `/var/lib` and `/dev/shm`: podman and containerd write there
/// what no option moves (podman's blob-info cache in /var/lib/containers,
/// its SHM lock, runc's state in /run/runc, ctr's FIFOs). Programs run in
/// it through [`PrivateMounts::command`]; on drop every process in the
/// namespace is killed (by pid), which unmounts all of it.
#[derive(Debug)]
pub struct PrivateMounts {
    holder: Child,
    /// `/proc/PID/ns/mnt` of the holder (`mnt:[inode]`): how its processes
    /// are told from every other.
    ns: PathBuf,
}

impl PrivateMounts {
    pub fn new() -> Result<PrivateMounts> {
        let script = "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib && \
                      mount -t tmpfs tmpfs /dev/shm && echo ready && exec sleep infinity";
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting unshare (util-linux)")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("piped")).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!("the private mount namespace could not be set up (tmpfs over /run, /var/lib, /dev/shm)");
        }
        let ns = fs::read_link(format!("/proc/{}/ns/mnt", holder.id()))?;
        Ok(PrivateMounts { holder, ns })
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder.id())).args(["--mount", "--", program]);
        cmd
    }

    /// Pids of the live processes in the namespace.
    fn processes(&self) -> Vec<i32> {
        let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns == self.ns))
            .collect()
    }
}

impl Drop for PrivateMounts {
    fn drop(&mut self) {
        // Daemons (containerd, its shims, conmon) are no children of ours:
        // kill each by pid until none is left, then reap the holder.
        for _ in 0..100 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid just read from /proc.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.holder.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Removes a cgroup made for a test (a v1 hierarchy per controller, or
/// the unified one) with every cgroup below it; cgroupfs keeps the files,
/// so only directories are removed, deepest first.
pub fn remove_cgroup(name: &str) {
    fn remove_tree(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&e.path());
                }
            }
        }
        if let Err(e) = fs::remove_dir(dir) {
            eprintln!("cannot remove cgroup {}: {e}", dir.display());
        }
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    if let Ok(entries) = fs::read_dir(root) {
        bases.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for base in bases {
        let dir = base.join(name.trim_start_matches('/'));
        if dir.is_dir() {
            remove_tree(&dir);
        }
    }
}

/// The lowest of the host's soft RLIMIT_NOFILE/NPROC and 1024: a runtime
/// may set a limit no higher than the host's without CAP_SYS_RESOURCE.
fn ulimit() -> u64 {
    let mut lowest = 1024;
    for resource in [libc::RLIMIT_NOFILE, libc::RLIMIT_NPROC] {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct it is given.
        if unsafe { libc::getrlimit(resource, &mut r) } == 0 {
            lowest = lowest.min(r.rlim_cur);
        }
    }
    lowest
}

/// podman with its store, run root, temp dir, config and cgroup parent of
/// its own.
#[derive(Debug)]
pub struct Podman {
    mounts: PrivateMounts,
    dir: RemoveOnDrop,
    cgroup_parent: String,
}

impl Podman {
    pub fn new() -> Result<Podman> {
        require_programs(&["podman", "runc", "conmon"])?;
        let name = unique("wimgp");
        let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(&name));
        fs::create_dir_all(dir.path().join("tmp"))?;
        let d = dir.path().display();
        let limit = ulimit();
        fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={limit}:{limit}\", \"nproc={limit}:{limit}\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\nimage_copy_tmp_dir = \"{d}/tmp\"\n\
                 [network]\nnetwork_config_dir = \"{d}/cni\"\n"
            ),
        )?;
        fs::write(
            dir.path().join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"),
        )?;
        Ok(Podman { mounts: PrivateMounts::new()?, dir, cgroup_parent: format!("/{name}") })
    }

    /// `podman ARGS` against this store; stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let d = self.dir.path();
        let mut cmd = self.mounts.command("podman");
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        output(&mut cmd)
    }

    /// `podman run --rm` of `image` with `args` (options before the
    /// image, then the image, then the command's arguments).
    pub fn run_container(&self, options: &[&str], image: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["run", "--rm", "--network", "none", "--cgroup-parent", self.cgroup_parent.as_str()];
        all.extend_from_slice(options);
        all.push(image);
        all.extend_from_slice(args);
        self.run(&all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // vfs keeps no mounts: removing containers and images is all
        // podman itself must do; the directory goes with `dir`.
        for args in [&["rm", "--all", "--force"][..], &["rmi", "--all", "--force"][..]] {
            if let Err(e) = self.run(args) {
                eprintln!("podman cleanup: {e:#}");
            }
        }
        remove_cgroup(&self.cgroup_parent);
        // `mounts` drops next (processes killed), then `dir`.
    }
}

/// A containerd daemon with its own config, root, state and socket,
/// in a private mount namespace, and a containerd namespace of its own.
#[derive(Debug)]
pub struct Containerd {
    daemon: Child,
    mounts: PrivateMounts,
    dir: RemoveOnDrop,
    namespace: String,
}

impl Containerd {
    pub fn start() -> Result<Containerd> {
        require_programs(&["containerd", "ctr", "runc", "containerd-shim-runc-v2"])?;
        let namespace = unique("wimgc");
        let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(&namespace));
        fs::create_dir_all(dir.path())?;
        let d = dir.path().display();
        // The CRI plugin is not needed to import and run an image.
        fs::write(
            dir.path().join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
            ),
        )?;
        let mounts = PrivateMounts::new()?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let daemon = mounts
            .command("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let containerd = Containerd { daemon, mounts, dir, namespace };
        containerd.wait_ready()?;
        Ok(containerd)
    }

    fn wait_ready(&self) -> Result<()> {
        // Startup is not the thing under test: a deadline generous enough
        // for a loaded machine, and the daemon's log when it passes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "containerd did not answer on its socket; its log:\n{}",
            fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
        )
    }

    /// `ctr ARGS` against this daemon and namespace, with the native
    /// snapshotter (plain directories: no overlay mounts to leave behind).
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.mounts.command("ctr");
        cmd.env("CONTAINERD_SNAPSHOTTER", "native")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", &self.namespace])
            .args(args);
        output(&mut cmd)
    }

    /// `ctr run --rm` of `image` running `args` (the image's entrypoint
    /// is replaced: ctr does not append arguments to it).
    pub fn run_container(&self, options: &[&str], image: &str, args: &[&str]) -> Result<String> {
        let id = unique("wimgr");
        let mut all = vec!["run", "--rm", "--cgroup", ""];
        all.extend_from_slice(options);
        all.push(image);
        all.push(&id);
        all.extend_from_slice(args);
        let out = self.ctr(&all);
        // containerd 1.6 names the container's cgroup after its id even
        // with `--cgroup ""`; runc removes it, unless the run failed.
        remove_cgroup(&id);
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // `mounts` drops next: shims left by a failed run are killed and
        // the snapshot and task mounts vanish with the namespace; then `dir`.
    }
}
