//! Helpers for the root tests: a private bpffs root per test, a private
//! network namespace per test thread, and a packet builder.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use weir_bpf::pkt;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use weir_bpf::Dataplane;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A bpffs root unique to the test, removed (pins, links, dirs) on drop.
pub struct TestRoot {
    pub path: PathBuf,
}

impl TestRoot {
    pub fn new(tag: &str) -> TestRoot {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/weir-t{}-{}-{}", std::process::id(), n, tag));
        let _ = std::fs::remove_dir_all(&path);
        TestRoot { path }
    }
    pub fn load(&self) -> Dataplane {
        Dataplane::load_or_open(&self.path).expect("load_or_open")
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Move the calling thread (a test's own thread) into a new, empty network
/// namespace: its devices vanish with the thread, so nothing needs cleanup
/// and tests cannot collide. bpffs stays visible (no remount).
pub fn private_netns() {
    // SAFETY: unshare of the network namespace affects this thread only.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    sh(&["ip", "link", "set", "lo", "up"]);
}

/// Run a command (in the calling thread's netns), panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !out.status.success() {
        panic!("{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A device in the current netns (one end of a veth pair: the kernel has
/// no dummy driver); returns its ifindex.
pub fn dummy(name: &str) -> u32 {
    let peer = format!("{name}p");
    sh(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
    ifindex(name)
}

pub fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            // /sys shows the mount namespace's view; ask ip instead
            let out = sh(&["ip", "-o", "link", "show", "dev", name]);
            out.split(':').next().unwrap().trim().parse().unwrap()
        })
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
