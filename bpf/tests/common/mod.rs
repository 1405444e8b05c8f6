//! Helpers for the root tests: a private bpffs root per test, a private
//! network namespace per test thread, a packet builder, real traffic
//! between named network namespaces, pods made by the real `weir` CNI
//! binary, and raw frames put on a pod's wire.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use weir_bpf::pkt;
pub use weir_testsupport::netns::{self, spawn_in as in_netns, Netns};
pub use weir_testsupport::{is_root, sh, RemoveOnDrop};

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use weir_bpf::abi::{Endpoint, IpcacheValue, ID_HOST};
use weir_bpf::Dataplane;
use weir_common::registry::EndpointRecord;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A bpffs root unique to the test, removed (pins, links, dirs) on drop.
pub struct TestRoot {
    pub path: PathBuf,
    _remove: RemoveOnDrop,
}

impl TestRoot {
    pub fn new(tag: &str) -> TestRoot {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/weir-t{}-{}-{}", std::process::id(), n, tag));
        TestRoot { _remove: RemoveOnDrop::fresh(&path), path }
    }
    pub fn load(&self) -> Dataplane {
        Dataplane::load_or_open(&self.path).expect("load_or_open")
    }
}

/// Move the calling thread (a test's own thread) into a new, empty network
/// namespace: its devices vanish with the thread, so nothing needs cleanup
/// and tests cannot collide. bpffs stays visible (no remount).
pub fn private_netns() {
    netns::enter_private().unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
    sh(&["ip", "link", "set", "lo", "up"]);
}

/// A device in the current netns (one end of a veth pair: the kernel has
/// no dummy driver); returns its ifindex.
pub fn dummy(name: &str) -> u32 {
    let peer = format!("{name}p");
    sh(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
    ifindex(name)
}

/// The ifindex of `name` in the calling thread's netns (not /sys, which
/// shows the mount namespace's view).
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(idx != 0, "no interface {name} in this netns: {}", std::io::Error::last_os_error());
    idx
}

pub fn exists(p: &Path) -> bool {
    p.exists()
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
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let s = UdpSocket::bind(any).unwrap();
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
    serve_tcp_answering(ns, ip, port, b"pong");
}

/// `serve_tcp` answering `answer` (4 bytes) instead of "pong": an impostor
/// is told apart from the real server by what it says.
pub fn serve_tcp_answering(ns: &str, ip: IpAddr, port: u16, answer: &'static [u8; 4]) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let l = TcpListener::bind((ip, port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(answer);
            }
        }
    });
    rx.recv().unwrap();
}

/// The UDP counterpart of `serve_tcp`.
pub fn serve_udp(ns: &str, ip: IpAddr, port: u16) {
    serve_udp_answering(ns, ip, port, b"pong");
}

/// The UDP counterpart of `serve_tcp_answering`.
pub fn serve_udp_answering(ns: &str, ip: IpAddr, port: u16, answer: &'static [u8; 4]) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let u = UdpSocket::bind((ip, port)).unwrap();
        tx.send(()).unwrap();
        let mut b = [0u8; 16];
        while let Ok((_, from)) = u.recv_from(&mut b) {
            let _ = u.send_to(answer, from);
        }
    });
    rx.recv().unwrap();
}

// ---- pods made by the weir CNI binary --------------------------------------

/// target/<profile>/weir, built if absent or older than this test binary.
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("weir");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if !bin.exists() || modified(&bin) < modified(&exe) {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "weir-cni", "--bin", "weir"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p weir-cni --bin weir");
    }
    bin
}

/// Named network namespaces and a bpffs root, removed on drop.
pub struct NetnsGuard {
    pub netns: Vec<Netns>,
    pub root: PathBuf,
    _remove: RemoveOnDrop,
}

impl NetnsGuard {
    /// Create the namespaces (`ip netns add`).
    pub fn new(netns: Vec<String>, root: PathBuf) -> NetnsGuard {
        let netns = netns.iter().map(|n| Netns::named(n)).collect();
        NetnsGuard { netns, _remove: RemoveOnDrop(root.clone()), root }
    }
}

/// Run the CNI binary as a runtime does, in the node netns `node`, for the
/// pod netns `pod_ns` (interface eth0); panics with its output on failure.
pub fn cni(bin: &Path, node: &str, cmd: &str, id: &str, pod_ns: &str, conf: &serde_json::Value) -> serde_json::Value {
    let mut c = netns::command(&netns::path(node), bin);
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"))
        .env("CNI_PATH", "/usr/lib/cni");
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(conf).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI {cmd} {id}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// What weir-policyd does for a pod CNI ADD recorded: its addresses in the
/// ipcache (with `identity`), its gateways as HOST, then its endpoint entry
/// with `identity` and `flags`, keeping what ADD wrote in it.
pub fn program_like_policyd(dp: &Dataplane, rec: &EndpointRecord, identity: u32, flags: u32) {
    for a in &rec.ips {
        let v = IpcacheValue { identity, endpoint: rec.host_ifindex, flags: 0, pad: 0 };
        dp.set_ipcache(weir_bpf::addr::host_net(*a), &v).unwrap();
    }
    for gw in &rec.gateways {
        let v = IpcacheValue { identity: ID_HOST, endpoint: 0, flags: 0, pad: 0 };
        dp.set_ipcache(weir_bpf::addr::host_net(*gw), &v).unwrap();
    }
    let ep = dp.endpoint(rec.host_ifindex).unwrap().expect("CNI ADD wrote the endpoint entry");
    dp.set_endpoint(rec.host_ifindex, &Endpoint { identity, flags, revision: 1, ..ep }).unwrap();
}

/// A MAC as `ip` prints it (aa:bb:cc:dd:ee:ff).
pub fn parse_mac(s: &str) -> [u8; 6] {
    weir_bpf::addr::parse_mac(s).unwrap_or_else(|| panic!("not a MAC: {s}"))
}

/// The link-layer address the neighbour table of netns `ns` holds for `ip`
/// on `dev`, if any.
pub fn neighbour(ns: &str, dev: &str, ip: IpAddr) -> Option<[u8; 6]> {
    let out = sh(&["ip", "-n", ns, "neigh", "show", "to", &ip.to_string(), "dev", dev]);
    let mut words = out.split_whitespace();
    words.by_ref().find(|w| *w == "lladdr")?;
    words.next().map(parse_mac)
}

/// The bridge port the FDB of bridge `br` in netns `ns` has learnt `mac` on.
pub fn fdb_port(ns: &str, br: &str, mac: [u8; 6]) -> Option<String> {
    let m = weir_bpf::addr::format_mac(mac);
    let out = sh(&["bridge", "-n", ns, "fdb", "show", "br", br]);
    let line = out.lines().find(|l| l.starts_with(&m) && !l.contains("permanent"))?;
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "dev")?;
    words.next().map(str::to_string)
}

// ---- raw frames on a pod's wire -------------------------------------------

/// An experimental ethertype (IEEE 802 local experimental 1): frames the
/// tests send that no stack interprets.
pub const ETH_P_TEST: u16 = 0x88b5;

fn packet_socket(ifname: &str, protocol: u16) -> (OwnedFd, i32) {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (protocol.to_be()) as i32) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = ifindex(ifname) as i32;
    if protocol != 0 {
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = protocol.to_be();
        sa.sll_ifindex = ifindex;
        // SAFETY: sa is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
    }
    (fd, ifindex)
}

/// Put `frames` (complete Ethernet frames) on `ifname` in the netns at
/// `ns`, in order: one socket, from one thread held on one CPU, so the
/// receiving side processes them in the order sent.
pub fn send_frames(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = ifname.to_string();
    in_netns(ns, move || {
        // SAFETY: sched_getcpu/sched_setaffinity on the calling thread only.
        unsafe {
            let cpu = libc::sched_getcpu().max(0) as usize;
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        let (fd, ifindex) = packet_socket(&ifname, 0);
        for f in frames {
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = ifindex;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&f[0..6]);
            // SAFETY: f and sa are valid for the given lengths.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(n, f.len() as isize, "send on {ifname}: {}", std::io::Error::last_os_error());
        }
    })
    .join()
    .unwrap();
}

/// A broadcast frame of [`ETH_P_TEST`] from `src` carrying `payload`.
pub fn test_frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = pkt::BROADCAST_MAC.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_P_TEST.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Listens on `ifname` in the netns at `ns` for an [`ETH_P_TEST`] frame
/// carrying `payload`: once it arrived, everything sent before it from the
/// same sender has been through the bridge and the receiver's stack.
pub struct FrameWaiter(std::thread::JoinHandle<bool>);

impl FrameWaiter {
    /// Returns once the socket is open (frames sent after this are seen).
    pub fn listen(ns: &str, ifname: &str, payload: Vec<u8>) -> FrameWaiter {
        let ifname = ifname.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = in_netns(ns, move || {
            let (fd, _) = packet_socket(&ifname, ETH_P_TEST);
            tx.send(()).unwrap();
            let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
            // SAFETY: setsockopt with a timeval of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                // SAFETY: buf is valid for its length.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n >= 14 + payload.len() as isize && buf[14..14 + payload.len()] == payload[..] {
                    return true;
                }
            }
            false
        });
        rx.recv().unwrap();
        FrameWaiter(h)
    }

    /// Whether the frame arrived (within a generous deadline: a frame the
    /// bridge delivers arrives in microseconds).
    pub fn arrived(self) -> bool {
        self.0.join().unwrap()
    }
}

/// `n` pods (`c0`, `c1`, ...) added by the real `weir` binary with
/// enforcement on, in a node netns and bpffs root of their own; everything
/// is removed on drop.
pub struct CniPods {
    pub node: String,
    pub pods: Vec<String>,
    pub conf: serde_json::Value,
    pub tmp: tempfile::TempDir,
    pub guard: NetnsGuard,
}

impl CniPods {
    /// `tag` keeps names apart between tests; `subnet` is the IPv4 range.
    pub fn add(tag: &str, n: usize, subnet: &str) -> CniPods {
        Self::add_attached(tag, n, subnet, "auto")
    }

    /// [`CniPods::add`] with `policy.attach` set ("tcx", "tc", "auto").
    pub fn add_attached(tag: &str, n: usize, subnet: &str, attach: &str) -> CniPods {
        let bin = weir_bin();
        let id = std::process::id();
        let node = format!("w{tag}n{id}");
        let pods: Vec<String> = (1..=n).map(|i| format!("w{tag}p{id}-{i}")).collect();
        let tmp = tempfile::tempdir().unwrap();
        let guard = NetnsGuard::new(
            pods.iter().cloned().chain(std::iter::once(node.clone())).collect(),
            PathBuf::from(format!("/sys/fs/bpf/weir-t{tag}-{id}")),
        );
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "weirtest", "type": "weir", "bridge": "cni0", "mtu": 1500,
            "hairpinMode": true, "isDefaultGateway": true, "ipMasq": false,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet }]],
                      "dataDir": tmp.path().join("ipam") },
            "policy": { "enforce": true, "bpffsRoot": guard.root, "runDir": tmp.path().join("run"),
                        "readyTimeoutMs": 0, "whileNotReady": "drop", "onReadyTimeout": "continue",
                        "attach": attach }
        });
        for (i, p) in pods.iter().enumerate() {
            cni(&bin, &node, "ADD", &format!("c{i}"), p, &conf);
        }
        CniPods { node, pods, conf, tmp, guard }
    }

    /// What ADD recorded for pod `i` (every process that touched the
    /// dataplane has exited by now).
    pub fn record(&self, i: usize) -> EndpointRecord {
        weir_common::registry::Registry::under(self.tmp.path().join("run"))
            .get(&format!("c{i}"), "eth0")
            .unwrap()
            .expect("endpoint record")
    }

    /// The netns path of pod `i`.
    pub fn netns(&self, i: usize) -> String {
        format!("/run/netns/{}", self.pods[i])
    }
}
