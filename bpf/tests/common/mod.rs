//! Helpers for the root tests: a private bpffs root per test, a private
//! network namespace per test thread, a packet builder, and real traffic
//! between named network namespaces.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use weir_bpf::pkt;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
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

/// Run `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = path.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this dedicated thread only.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
}

/// A TCP "ping" from the netns at `from` gets "pong" back from `to`.
pub fn tcp_ok(from: &str, to: SocketAddr) -> bool {
    in_netns(from, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(1500)) else { return false };
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        if s.write_all(b"ping").is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).is_ok() && &buf == b"pong"
    })
    .join()
    .unwrap()
}

/// A UDP "ping" from the netns at `from` gets "pong" back (one retry).
pub fn udp_ok(from: &str, to: SocketAddr) -> bool {
    in_netns(from, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        for _ in 0..2 {
            s.send_to(b"ping", to).unwrap();
            let mut buf = [0u8; 16];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return &buf[..n] == b"pong";
            }
        }
        false
    })
    .join()
    .unwrap()
}

/// A TCP server answering "pong", in the netns at `ns`, for the life of the
/// test process (its thread blocks in accept and dies with the process; the
/// netns goes first). Returns once it listens.
pub fn serve_tcp(ns: &str, ip: IpAddr, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let l = TcpListener::bind((ip, port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(b"pong");
            }
        }
    });
    rx.recv().unwrap();
}

/// The UDP counterpart of `serve_tcp`.
pub fn serve_udp(ns: &str, ip: IpAddr, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let u = UdpSocket::bind((ip, port)).unwrap();
        tx.send(()).unwrap();
        let mut b = [0u8; 16];
        while let Ok((_, from)) = u.recv_from(&mut b) {
            let _ = u.send_to(b"pong", from);
        }
    });
    rx.recv().unwrap();
}
