//! Work that DEL leaves to a detached process.
//!
//! Deleting a veth and detaching TCX programs each wait for RCU grace
//! periods in the kernel: 20-50 ms, several times the rest of a DEL. DEL
//! first does everything that matters for correctness (map entries gone,
//! the link down and labelled, addresses released), then hands that wait
//! to a grandchild and returns. ADD recognises a link still being retired
//! by its label (`naming::VethLabel::Retired`) and removes it itself; GC removes whatever a killed
//! grandchild left behind.

use std::os::fd::AsRawFd;

/// Run `work` in a grandchild that has left the caller's session and pipes
/// (the runtime reads the plugin's stdout until EOF, so nothing may keep it
/// open), and return once the intermediate child has exited, so no zombie
/// is left with the caller. When fork fails, `work` runs in place.
pub fn detached(work: impl FnOnce()) {
    // SAFETY: the plugin is single-threaded when it calls this (no runtime,
    // setns threads joined), so the children may run arbitrary code.
    match unsafe { libc::fork() } {
        -1 => work(),
        0 => {
            unsafe {
                libc::setsid();
                if libc::fork() != 0 {
                    libc::_exit(0);
                }
            }
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                for fd in 0..3 {
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            work();
            unsafe { libc::_exit(0) }
        }
        child => {
            let mut status = 0;
            unsafe { libc::waitpid(child, &mut status, 0) };
        }
    }
}
