//! Real container runtimes for tests: Debian's podman and containerd, each
//! confined to a scratch directory and a private mount namespace, so the
//! host's image stores, `/run`, `/var/lib` and `/dev/shm` stay as they
//! were, and every process, mount and directory they make goes away on
//! drop, also when the test panics.
//!
//! Configured as /work's runtimes notes found necessary here: runc (crun
//! 1.8 fails on this host's cgroups), cgroupfs, rlimits no higher than the
//! host's (no CAP_SYS_RESOURCE), no registry. A runtime given a CNI
//! network runs in a network namespace of its own, with a bpffs of its
//! own ([`PrivateMounts::with_network`]).

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

/// One runtime at a time within a test binary: once in four runs, podman's
/// runc failed to start a container ("error during container init:
/// %!w(<nil>)") while a containerd test ran beside it on a loaded machine;
/// alone it has not. (cargo runs test binaries one after another.)
pub fn one_runtime_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Whether it has a network namespace of its own too.
    network: bool,
}

impl PrivateMounts {
    pub fn new() -> Result<PrivateMounts> {
        PrivateMounts::start(false)
    }

    /// Also a network namespace of its own (loopback up) and a bpffs of its
    /// own over /sys/fs/bpf: what a runtime's CNI plugins make on "the
    /// node" (bridge, host veths, nft rules, pins, `/run/weir`, the IPAM
    /// store under /var/lib) is then seen by no other test nor the host,
    /// and goes with the namespaces. The defaults of Weir's conflist can
    /// stay as `install-cni` renders them.
    pub fn with_network() -> Result<PrivateMounts> {
        PrivateMounts::start(true)
    }

    fn start(network: bool) -> Result<PrivateMounts> {
        let mut script =
            String::from("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib && mount -t tmpfs tmpfs /dev/shm");
        let mut unshare = vec!["--mount", "--propagation", "private"];
        if network {
            unshare.push("--net");
            script.push_str(" && mount -t bpf bpf /sys/fs/bpf && ip link set lo up");
        }
        script.push_str(" && echo ready && exec sleep infinity");
        let mut holder = Command::new("unshare")
            .args(&unshare)
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting unshare (util-linux)")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("piped")).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!("the private namespace could not be set up ({script})");
        }
        let ns = fs::read_link(format!("/proc/{}/ns/mnt", holder.id()))?;
        Ok(PrivateMounts { holder, ns, network })
    }

    /// `path` as the programs in the namespace see it (through the
    /// holder's `/proc/PID/root`): the node's /run and /var/lib.
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }

    /// The namespace's network namespace, to enter with setns(2) or
    /// `nsenter --net=` (only [`PrivateMounts::with_network`] has its own).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder.id())).arg("--mount");
        if self.network {
            cmd.arg("--net");
        }
        cmd.args(["--", program]);
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

impl PrivateMounts {
    /// Kills every process in the namespace, the holder too (which takes
    /// the namespace's mounts with it). Daemons (containerd, its shims,
    /// conmon) are no children of ours: each is killed by pid until none
    /// is left.
    fn kill_all(&mut self) {
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

impl Drop for PrivateMounts {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The directories of cgroup `name` that exist: in the unified hierarchy
/// and in each v1 hierarchy.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    if let Ok(entries) = fs::read_dir(root) {
        bases.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    bases.iter().map(|b| b.join(name.trim_start_matches('/'))).filter(|d| d.is_dir()).collect()
}

/// Removes a cgroup made for a test (a v1 hierarchy per controller, or
/// the unified one) with every cgroup below it; cgroupfs keeps the files,
/// so only directories are removed, deepest first.
pub fn remove_cgroup(name: &str) {
    fn pids_below(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids_below(&e.path(), out);
            }
        }
    }
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
    let dirs = cgroup_dirs(name);
    // A container a failed test left running (a pod sandbox, in a mount
    // namespace of its own, which the runtime's private namespace does not
    // hold) keeps its cgroup busy: killed by pid, as long as any is left.
    for _ in 0..100 {
        let mut pids = Vec::new();
        for d in &dirs {
            pids_below(d, &mut pids);
        }
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid read from the test's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for dir in dirs {
        remove_tree(&dir);
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
        Podman::new_with(None)
    }

    /// podman with its CNI backend on the networks (conflists) in
    /// `cni.conf_dir`, plugins from `cni.bin_dir`, running in a network
    /// namespace of its own ([`PrivateMounts::with_network`]): "the node"
    /// of its containers.
    pub fn with_cni(cni: &CniDirs) -> Result<Podman> {
        Podman::new_with(Some(cni))
    }

    fn new_with(cni: Option<&CniDirs>) -> Result<Podman> {
        require_programs(&["podman", "runc", "conmon"])?;
        let name = unique("wimgp");
        let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(&name));
        fs::create_dir_all(dir.path().join("tmp"))?;
        let d = dir.path().display();
        let limit = ulimit();
        let network = match cni {
            None => format!("network_config_dir = \"{d}/cni\"\n"),
            Some(c) => format!(
                "network_backend = \"cni\"\nnetwork_config_dir = \"{}\"\ncni_plugin_dirs = [\"{}\"]\n",
                c.conf_dir.display(),
                c.bin_dir.display()
            ),
        };
        fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={limit}:{limit}\", \"nproc={limit}:{limit}\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\nimage_copy_tmp_dir = \"{d}/tmp\"\n\
                 [network]\n{network}"
            ),
        )?;
        fs::write(
            dir.path().join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"),
        )?;
        let mounts = if cni.is_some() { PrivateMounts::with_network()? } else { PrivateMounts::new()? };
        Ok(Podman { mounts, dir, cgroup_parent: format!("/{name}") })
    }

    /// Its private namespaces, to run programs on "the node".
    pub fn mounts(&self) -> &PrivateMounts {
        &self.mounts
    }

    /// The cgroup parent its containers must be given (removed on drop).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
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
    /// For CRI sandboxes (`LinuxPodSandboxConfig.cgroup_parent`).
    cgroup_parent: String,
}

/// Where a runtime finds its CNI plugins and network configuration.
#[derive(Debug, Clone)]
pub struct CniDirs {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

/// The containerd namespace of the CRI plugin (kubelet's pods).
pub const CRI_NAMESPACE: &str = "k8s.io";

impl Containerd {
    pub fn start() -> Result<Containerd> {
        // The CRI plugin is not needed to import and run an image.
        Containerd::start_with(
            PrivateMounts::new()?,
            unique("wimgc"),
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
    }

    /// containerd as a Kubernetes node runs it: its CRI plugin serves
    /// `runtime.v1` on [`Containerd::socket`], takes pods' networks from
    /// the conflist in `cni.conf_dir` (plugins from `cni.bin_dir`) and
    /// starts each sandbox from `sandbox_image` (import it first, into
    /// [`CRI_NAMESPACE`]). It runs in a network namespace of its own
    /// ([`PrivateMounts::with_network`]): that is "the node" of its pods.
    pub fn start_cri(cni: &CniDirs, sandbox_image: &str) -> Result<Containerd> {
        let (conf, bin) = (cni.conf_dir.display(), cni.bin_dir.display());
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        // restrict_oom_score_adj: the VM lacks CAP_SYS_RESOURCE. The native
        // snapshotter: plain directories, no overlay mounts to leave behind.
        Containerd::start_with(
            PrivateMounts::with_network()?,
            CRI_NAMESPACE.to_string(),
            &format!(
                "[{cri}]\n  sandbox_image = \"{sandbox_image}\"\n  restrict_oom_score_adj = true\n\
                 [{cri}.containerd]\n  snapshotter = \"native\"\n\
                 [{cri}.cni]\n  bin_dir = \"{bin}\"\n  conf_dir = \"{conf}\"\n"
            ),
        )
    }

    fn start_with(mounts: PrivateMounts, namespace: String, config: &str) -> Result<Containerd> {
        require_programs(&["containerd", "ctr", "runc", "containerd-shim-runc-v2"])?;
        let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(unique("wctd")));
        fs::create_dir_all(dir.path())?;
        let d = dir.path().display();
        fs::write(
            dir.path().join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{config}\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
            ),
        )?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let daemon = mounts
            .command("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let cgroup_parent = format!("/{}", unique("wctdcg"));
        let containerd = Containerd { daemon, mounts, dir, namespace, cgroup_parent };
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// The daemon's gRPC socket (containerd's API, and CRI's when enabled).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Its log so far (for a failure's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Its private namespaces, to run programs on "the node".
    pub fn mounts(&self) -> &PrivateMounts {
        &self.mounts
    }

    /// The cgroup parent to give CRI sandboxes (removed on drop).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
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
        bail!("containerd did not answer on its socket; its log:\n{}", self.log())
    }

    /// `ctr ARGS` against this daemon and namespace, with the native
    /// snapshotter (plain directories: no overlay mounts to leave behind).
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.mounts.command("ctr");
        cmd.env("CONTAINERD_SNAPSHOTTER", "native")
            .arg("--address")
            .arg(self.socket())
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
        // Shims and sandboxes left by a failed run are killed and the
        // snapshot and task mounts vanish with the namespace; only then
        // can their cgroups go. `dir` goes last.
        self.mounts.kill_all();
        remove_cgroup(&self.cgroup_parent);
    }
}

/// A root filesystem of Debian's busybox-static alone (no libraries
/// needed): `/bin/busybox` and links for the applets tests run.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    const BUSYBOX: &str = "/bin/busybox";
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: run `bash test/deps.sh` (Debian package busybox-static)");
    }
    fs::create_dir_all(dir.join("bin"))?;
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    for applet in ["sh", "sleep", "nc", "ip", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    Ok(())
}

/// Builds, in `dir`, an image archive (`docker save` layout, which `ctr
/// image import` reads) named `name` whose one process sleeps: what a pod
/// sandbox needs of its pause image, made without a registry.
pub fn pause_image_archive(dir: &Path, name: &str) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs)?;
    let layer = dir.join("layer.tar");
    output(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
            .arg(&layer)
            .arg("."),
    )?;
    let sum = output(Command::new("sha256sum").arg(&layer))?;
    let diff_id = sum.split_whitespace().next().context("sha256sum printed nothing")?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    // The sandbox's process only holds the namespaces: SIGKILL is how
    // containerd stops it, so a plain sleep serves.
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": { "Entrypoint": ["/bin/busybox", "sleep", "2147483647"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"] }]);
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let archive = dir.join("pause.tar");
    output(Command::new("tar").arg("-C").arg(dir).arg("-cf").arg(&archive).args([
        "manifest.json",
        "config.json",
        "layer.tar",
    ]))?;
    Ok(archive)
}
