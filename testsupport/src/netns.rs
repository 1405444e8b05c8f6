//! Network namespaces for tests. There is one way in: `setns(2)`, on a
//! thread made for it ([`enter`], [`spawn_in`], [`Netns::run`]) or in a
//! child between fork and exec ([`command`], [`Netns::exec`]). Unlike
//! `ip netns exec`, neither remounts /sys, so pinned BPF objects stay
//! visible.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use crate::{sh, sh_ok, unique};

/// The bind mount `ip netns add NAME` makes.
pub fn path(name: &str) -> String {
    format!("/run/netns/{name}")
}

fn setns(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns only changes the calling thread's network namespace.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Move the calling thread into the namespace at `ns_path`. Only on a
/// thread made for it: the thread stays there.
pub fn enter(ns_path: &str) -> std::io::Result<()> {
    let f = File::open(ns_path)?;
    setns(f.as_raw_fd())
}

/// Move the calling thread into a new, empty network namespace of its own:
/// what it makes there vanishes with the thread.
pub fn enter_private() -> std::io::Result<()> {
    // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's netns.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread inside the namespace at `ns_path` (sockets it
/// opens stay there).
pub fn spawn_in<T: Send + 'static>(ns_path: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns_path = ns_path.to_string();
    std::thread::spawn(move || {
        enter(&ns_path).unwrap_or_else(|e| panic!("setns {ns_path}: {e}"));
        f()
    })
}

/// [`spawn_in`], waiting for the result.
pub fn run_in<T: Send + 'static>(ns_path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(ns_path, f).join().expect("the thread in the netns panicked")
}

/// `program` to be run inside the namespace at `ns_path` (what `nsenter
/// --net=PATH program` does, without the extra process).
pub fn command(ns_path: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let f = File::open(ns_path).unwrap_or_else(|e| panic!("opening netns {ns_path}: {e}"));
    let mut cmd = Command::new(program);
    // SAFETY: only setns(2) runs between fork and exec, on an fd opened
    // before the fork; `f` lives in the closure until exec.
    unsafe {
        cmd.pre_exec(move || setns(f.as_raw_fd()));
    }
    cmd
}

/// A named network namespace with loopback up, removed on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace named `prefix` plus what makes it unique.
    pub fn new(prefix: &str) -> Netns {
        Netns::named(&unique(prefix))
    }

    /// A namespace of exactly this name (the caller made it unique).
    pub fn named(name: &str) -> Netns {
        sh(&["ip", "netns", "add", name]);
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        path(&self.name)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// `args` run inside the namespace; stdout, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = command(&self.path(), args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} in netns {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command(&self.path(), program)
    }

    pub fn has_link(&self, name: &str) -> bool {
        sh_ok(&["ip", "-n", &self.name, "link", "show", "dev", name])
    }

    /// Names of every link in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Run `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.path(), f)
    }

    /// Start `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        spawn_in(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_a_namespace_is_entered_by_threads_and_commands_and_removed_on_drop() {
        crate::require_root!();
        let ns = Netns::new("wts");
        ns.ip(&["link", "add", "wtsa", "type", "veth", "peer", "name", "wtsb"]);
        assert!(ns.has_link("wtsa"));
        assert!(ns.exec(&["ip", "-o", "link", "show"]).contains("wtsb"));
        let name = std::ffi::CString::new("wtsa").unwrap();
        // SAFETY: NUL-terminated name.
        let here = ns.run(move || unsafe { libc::if_nametoindex(name.as_ptr()) });
        assert_ne!(here, 0, "the thread sees the namespace's link");
        assert!(!sh_ok(&["ip", "link", "show", "dev", "wtsa"]), "this thread stays where it was");
        let p = ns.path();
        drop(ns);
        assert!(!std::path::Path::new(&p).exists());
    }
}
