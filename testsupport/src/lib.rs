//! What the root tests of every crate share, so each thing is written once:
//! whether we are root, unique names, running a command, network namespaces
//! (entered one way: `setns(2)` on a thread or in a child before exec, never
//! `ip netns exec`, which hides /sys/fs/bpf), and guards that clean up on
//! success and on failure alike.
//!
//! A dev-dependency only: no product binary links it.

pub mod guard;
pub mod netns;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub use guard::RemoveOnDrop;
pub use netns::Netns;

/// Root tests skip (loudly) without root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Return from the calling test, saying so, when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!("network namespaces")
    };
    ($why:expr) => {
        if !$crate::is_root() {
            eprintln!("skipping: needs root ({})", $why);
            return;
        }
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (netns and link names: at
/// most 15 bytes with a short prefix), so tests run side by side.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfffff)
}

/// Run a command, returning its stdout; panics with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command succeeds (its output discarded).
pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether `bin --help` mentions `flag` (a binary of an older build may
/// lack it; tests needing it say SKIPPED).
pub fn help_offers(bin: &std::path::Path, flag: &str) -> bool {
    Command::new(bin).arg("--help").output().map(|o| String::from_utf8_lossy(&o.stdout).contains(flag)).unwrap_or(false)
}
