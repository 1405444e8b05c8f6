//! Long-lived flows between lab pods, and the lab's weir-policyd as a
//! process: what the end-to-end tests that change policy or restart
//! policyd under live traffic share (tests/root_policyd_restart.rs,
//! tests/root_rejudge.rs).

use crate::case::{Family, Protocol, Via};
use crate::expect::PodRef;
use crate::lab::{Lab, Weirctl, LAB_ROOT};
use crate::probe::{Observed, ProbeOutput};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use weir_testsupport::{netns, RemoveOnDrop};

/// How often a long-lived flow exchanges a message.
pub const TICK: Duration = Duration::from_millis(50);

/// The model lab's pods, in namespace x; each serves TCP 80 (echo) and UDP
/// 5353 (echo), behind a Service s-x-<pod> on TCP 80.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Probes of a converging policy are retried this many times (each probe
/// is one round of connection attempts with weirctl's own timeout), so a
/// slow shared machine makes the test slower, never wrong.
pub const CONVERGE_ATTEMPTS: usize = 60;

pub fn model_yaml() -> Vec<(String, String)> {
    let mut out = vec![(
        "00-namespace-x.yaml".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    kubernetes.io/metadata.name: x\n"
            .to_string(),
    )];
    for p in PODS {
        out.push((
            format!("10-pod-x-{p}.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {p}\n  namespace: x\n  labels:\n    pod: {p}\n\
                 spec:\n  containers:\n  - name: serve\n    image: registry.k8s.io/e2e-test-images/agnhost:2.53\n    \
                 ports:\n    - name: serve-80-tcp\n      containerPort: 80\n      protocol: TCP\n    \
                 - name: serve-5353-udp\n      containerPort: 5353\n      protocol: UDP\n"
            ),
        ));
        out.push((
            format!("20-service-x-{p}.yaml"),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: s-x-{p}\n  namespace: x\n\
                 spec:\n  selector:\n    pod: {p}\n  ports:\n  - name: tcp-80\n    protocol: TCP\n    port: 80\n    targetPort: 80\n"
            ),
        ));
    }
    out
}

pub fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).expect("the test's own YAML parses")
}

/// Ingress isolation for every pod of x.
pub fn deny_all_ingress() -> serde_yaml_ng::Value {
    yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
}

/// `name`: pod `to` accepts TCP 80 from pod `from` (both in x).
pub fn allow(name: &str, from: &str, to: &str) -> serde_yaml_ng::Value {
    yaml(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: {to}}}}}\n  policyTypes: [Ingress]\n  \
         ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: {from}}}}}}}]\n    ports: [{{protocol: TCP, port: 80}}]\n"
    ))
}

/// The expected TCP 80 matrix: exactly the `allowed` (from, to) pairs
/// connect. A pod's own cell is hairpinned through its Service and
/// masqueraded to the node (see docs/lab.md), so it is not compared.
pub fn expected(allowed: &[(&str, &str)]) -> BTreeMap<(String, String), bool> {
    let mut m = BTreeMap::new();
    for f in PODS {
        for t in PODS {
            if f != t {
                m.insert((f.to_string(), t.to_string()), allowed.contains(&(f, t)));
            }
        }
    }
    m
}

/// Cells of `got` that differ from `want`, readable.
pub fn mismatches(got: &ProbeOutput, want: &BTreeMap<(String, String), bool>) -> Vec<String> {
    let mut bad = Vec::new();
    for ((f, t), allow) in want {
        let cell = got.results.get(&PodRef::new("x", f)).and_then(|row| row.get(&PodRef::new("x", t)));
        let ok = matches!((cell, allow), (Some(Observed::Connected), true) | (Some(Observed::Blocked), false));
        if !ok {
            bad.push(format!("x/{f} -> x/{t}: want {}, got {cell:?}", if *allow { "connected" } else { "blocked" }));
        }
    }
    bad
}

pub fn probe(lab: &Lab) -> Result<ProbeOutput> {
    lab.probe(80, Protocol::TCP, Via::Service, Family::IPv4)
}

/// One probe must show exactly `want` (the state is expected to be settled).
pub fn assert_matrix(lab: &Lab, want: &BTreeMap<(String, String), bool>, when: &str) -> Result<()> {
    let got = probe(lab)?;
    let bad = mismatches(&got, want);
    if !bad.is_empty() {
        bail!("{when}: the matrix is wrong:\n  {}", bad.join("\n  "));
    }
    Ok(())
}

/// Probe until the matrix is `want`, within CONVERGE_ATTEMPTS probes.
pub fn converge(lab: &Lab, want: &BTreeMap<(String, String), bool>, when: &str) -> Result<usize> {
    let mut last = Vec::new();
    for attempt in 1..=CONVERGE_ATTEMPTS {
        let got = probe(lab)?;
        last = mismatches(&got, want);
        if last.is_empty() {
            return Ok(attempt);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{when}: no convergence after {CONVERGE_ATTEMPTS} probes; still wrong:\n  {}\npolicyd log:\n{}",
        last.join("\n  "),
        lab.policyd_log_tail(30)
    )
}

/// The model lab `name` up, from a snapshot of the binaries (one
/// consistent build, even while cargo replaces target/debug) in a scratch
/// directory removed on drop.
pub fn up_model_lab(name: &str, tag: &str) -> Result<(RemoveOnDrop, Weirctl, Lab)> {
    let work = RemoveOnDrop::fresh(std::env::temp_dir().join(format!("weir-policyd-{tag}-{}", std::process::id())));
    let ctl = Weirctl::locate()?.snapshot(&work.path().join("bin"))?;
    let model = work.path().join("model");
    std::fs::create_dir_all(&model)?;
    for (f, text) in model_yaml() {
        std::fs::write(model.join(f), text)?;
    }
    let lab = Lab::up(&ctl, name, &model, &work.path().join("steps"))?;
    Ok((work, ctl, lab))
}

/// The lab's state file (`/run/weir/lab/<name>/state.json`), read as JSON:
/// the test needs only pod netns names and the policyd pid from it.
pub fn lab_state(name: &str) -> Result<serde_json::Value> {
    let path = Path::new(LAB_ROOT).join(name).join("state.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

pub fn pod_netns(state: &serde_json::Value, key: &str) -> Result<String> {
    state["pods"][key]["netns"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("state.json: no pods[{key:?}].netns"))
}

/// Whether any thread of `pid` still runs. The leader turns zombie as soon
/// as it exits, while its other threads (and the sockets they share) may
/// still be going down: a restart that trusted the leader alone raced the
/// old daemon's listening socket.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| match std::fs::read_to_string(t.path().join("stat")) {
        Ok(s) => s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with(['Z', 'X'])),
        Err(_) => false,
    })
}

/// SIGKILL weir-policyd `pid` (no shutdown path runs) and wait until all
/// of it is gone.
pub fn kill_policyd(pid: i32) -> Result<()> {
    // SAFETY: kill(2) on the pid the lab recorded for its policyd.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    for _ in 0..500 {
        if !pid_alive(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("weir-policyd {pid} survived SIGKILL")
}

/// What the flow thread saw.
#[derive(Default)]
struct FlowLog {
    /// Messages sent and echoed back intact, in order.
    echoed: AtomicU64,
    /// The first failure (a timeout, reset or wrong echo); the flow stops there.
    failure: Mutex<Option<String>>,
}

/// The transport of a [`Flow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// The flow's socket: one exchange is a sequence number out and its echo back.
enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Conn {
    fn open(transport: Transport, dst: SocketAddr) -> Result<Conn> {
        // Generous: a lost TCP segment is retransmitted within this; a
        // dropped flow never answers at all.
        let patience = Some(Duration::from_secs(3));
        Ok(match transport {
            Transport::Tcp => {
                let c = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                    .with_context(|| format!("connecting to {dst}"))?;
                c.set_nodelay(true)?;
                c.set_read_timeout(patience)?;
                Conn::Tcp(c)
            }
            Transport::Udp => {
                let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
                let s = UdpSocket::bind(any)?;
                s.connect(dst).with_context(|| format!("connecting to {dst}"))?;
                s.set_read_timeout(patience)?;
                Conn::Udp(s)
            }
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Conn::Tcp(c) => c.local_addr(),
            Conn::Udp(s) => s.local_addr(),
        }
    }

    fn exchange(&mut self, msg: [u8; 8]) -> std::io::Result<[u8; 8]> {
        let mut back = [0u8; 8];
        match self {
            Conn::Tcp(c) => c.write_all(&msg).and_then(|()| c.read_exact(&mut back))?,
            Conn::Udp(s) => {
                s.send(&msg)?;
                let n = s.recv(&mut back)?;
                if n != back.len() {
                    return Err(std::io::Error::other(format!("a {n}-byte echo")));
                }
            }
        }
        Ok(back)
    }
}

/// A connection (TCP, or a UDP socket's flow) from inside pod netns
/// `netns` to `dst`, exchanging an 8-byte sequence number every TICK. Runs
/// on its own thread: setns(2) moves only the calling thread, and the
/// socket keeps the namespace it was created in.
pub struct Flow {
    /// The pod's end of the flow.
    pub local: SocketAddr,
    log: Arc<FlowLog>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Flow {
    /// A TCP flow.
    pub fn start(netns: &str, dst: SocketAddr) -> Result<Flow> {
        Flow::start_on(Transport::Tcp, netns, dst)
    }

    pub fn start_on(transport: Transport, netns: &str, dst: SocketAddr) -> Result<Flow> {
        let log = Arc::new(FlowLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let netns_path = netns::path(netns);
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("long-lived flow".into())
            .spawn(move || {
                let conn = (|| -> Result<(Conn, SocketAddr)> {
                    // Only this thread moves.
                    netns::enter(&netns_path).with_context(|| format!("entering netns {netns_path}"))?;
                    let c = Conn::open(transport, dst)?;
                    let local = c.local_addr()?;
                    Ok((c, local))
                })();
                let mut c = match conn {
                    Ok((c, local)) => {
                        let _ = tx.send(Ok(local));
                        c
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut seq = 0u64;
                while !s.load(Ordering::Relaxed) {
                    seq += 1;
                    let err = match c.exchange(seq.to_be_bytes()) {
                        Err(e) => Some(format!("message {seq}: {e}")),
                        Ok(back) if u64::from_be_bytes(back) != seq => {
                            Some(format!("message {seq}: echo carried {}", u64::from_be_bytes(back)))
                        }
                        Ok(_) => None,
                    };
                    if let Some(e) = err {
                        *l.failure.lock().unwrap() = Some(e);
                        return;
                    }
                    l.echoed.store(seq, Ordering::Relaxed);
                    std::thread::sleep(TICK);
                }
            })
            .context("spawning the flow thread")?;
        // `local` is known once the thread has connected
        let mut flow = Flow { local: dst, log, stop, thread: Some(thread) };
        match rx.recv() {
            Ok(Ok(local)) => {
                flow.local = local;
                Ok(flow)
            }
            Ok(Err(e)) => {
                flow.finish();
                Err(e)
            }
            Err(_) => bail!("the flow thread died before connecting"),
        }
    }

    pub fn echoed(&self) -> u64 {
        self.log.echoed.load(Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        self.log.failure.lock().unwrap().clone()
    }

    /// Wait until the flow reports a failure; its message. The bound only
    /// ends a wait that failed (a flow that never breaks).
    pub fn wait_failure(&self, when: &str) -> Result<String> {
        for _ in 0..3000 {
            if let Some(f) = self.failure() {
                return Ok(f);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{when}: the flow still carries messages ({} echoed)", self.echoed())
    }

    /// Fails if any message was lost so far.
    pub fn check(&self, when: &str) -> Result<u64> {
        if let Some(f) = self.failure() {
            bail!("{when}: the established allowed flow broke after {} echoed messages: {f}", self.echoed());
        }
        Ok(self.echoed())
    }

    /// Wait until at least `n` more messages were echoed since `from`, so a
    /// phase is known to have carried traffic (bounded by the flow failing).
    pub fn advance(&self, from: u64, n: u64, when: &str) -> Result<u64> {
        for _ in 0..(n * 200) {
            let now = self.check(when)?;
            if now >= from + n {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{when}: the flow stalled at message {} (no failure reported yet)", self.echoed())
    }

    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A UDP stream a backend pushes: inside the backend pod's netns a socket
/// on `port` waits for a client's hello, then sends it a numbered datagram
/// every TICK, whatever comes back. The client end, in another pod, says
/// hello (again every few ticks until the stream starts) and then only
/// listens. So the backend's datagrams are the flow's only traffic: they
/// reach the client on the client node's SERVICE entry alone when `dst` is
/// a ClusterIP.
pub struct PushStream {
    /// The client's end.
    pub local: SocketAddr,
    /// Datagrams the backend sent.
    pub sent: Arc<AtomicU64>,
    /// Datagrams the client received, and when it last did (ms since start).
    received: Arc<AtomicU64>,
    last_ms: Arc<AtomicU64>,
    start: std::time::Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PushStream {
    /// The backend listening in `backend_netns` on UDP `port` (all
    /// addresses), the client in `client_netns` sending its hello to `dst`.
    pub fn start(backend_netns: &str, port: u16, client_netns: &str, dst: SocketAddr) -> Result<PushStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (received, last_ms) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let start = std::time::Instant::now();
        let backend = netns::run_in(&netns::path(backend_netns), move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
            s.set_read_timeout(Some(TICK))?;
            Ok(s)
        })
        .with_context(|| format!("binding UDP {port} in {backend_netns}"))?;
        let client = netns::run_in(&netns::path(client_netns), move || -> std::io::Result<UdpSocket> {
            let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("constant");
            let s = UdpSocket::bind(any)?;
            s.connect(dst)?;
            s.set_read_timeout(Some(TICK))?;
            Ok(s)
        })
        .with_context(|| format!("a UDP socket to {dst} in {client_netns}"))?;
        let local = client.local_addr()?;
        let mut stream = PushStream { local, sent, received, last_ms, start, stop, threads: Vec::new() };
        let (st, n) = (stream.stop.clone(), stream.sent.clone());
        stream.threads.push(std::thread::spawn(move || {
            let mut to = None;
            let mut buf = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                if let Ok((_, from)) = backend.recv_from(&mut buf) {
                    to = Some(from);
                }
                if let Some(to) = to {
                    let seq = n.load(Ordering::Relaxed) + 1;
                    if backend.send_to(&seq.to_be_bytes(), to).is_ok() {
                        n.store(seq, Ordering::Relaxed);
                    }
                }
            }
        }));
        let (st, got, last) = (stream.stop.clone(), stream.received.clone(), stream.last_ms.clone());
        stream.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut ticks = 0u64;
            while !st.load(Ordering::Relaxed) {
                if got.load(Ordering::Relaxed) == 0 && ticks.is_multiple_of(4) {
                    let _ = client.send(b"hello");
                }
                ticks += 1;
                if let Ok(8) = client.recv(&mut buf) {
                    got.fetch_add(1, Ordering::Relaxed);
                    last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            }
        }));
        Ok(stream)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Milliseconds since the stream started, on the clock that stamps
    /// the last arrival.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// When the last datagram arrived (`now_ms` clock).
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// Wait until at least `n` more datagrams arrived since `from`.
    pub fn advance(&self, from: u64, n: u64, when: &str) -> Result<u64> {
        for _ in 0..(n * 200) {
            let now = self.received();
            if now >= from + n {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "{when}: the stream stalled at {} datagrams ({} sent)",
            self.received(),
            self.sent.load(Ordering::Relaxed)
        )
    }

    /// Wait until no datagram has arrived for `quiet` while the backend
    /// went on sending; returns how many arrived in all. The bound only ends
    /// a wait that failed (a stream that never stops).
    pub fn wait_cut(&self, quiet: Duration, when: &str) -> Result<u64> {
        for _ in 0..3000 {
            let silent = self.now_ms().saturating_sub(self.last_ms());
            if silent >= quiet.as_millis() as u64 {
                let sent = self.sent.load(Ordering::Relaxed);
                std::thread::sleep(TICK * 4);
                if self.sent.load(Ordering::Relaxed) > sent {
                    return Ok(self.received());
                }
                bail!("{when}: the stream went quiet, but so did its backend ({sent} sent)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{when}: the stream still arrives ({} datagrams)", self.received())
    }

    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PushStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The weir-policyd this test starts in place of the killed one; killed
/// and reaped on drop (`lab down` also stops it: its command line points
/// into the lab directory).
pub struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start weir-policyd exactly as `weirctl lab up` does (weirctl/src/lab/ops.rs):
/// inside the node netns, same arguments and then `extra`, log appended to
/// the lab's policyd.log. weirctl has no restart command.
pub fn restart_policyd(ctl: &Weirctl, name: &str, extra: &[&str]) -> Result<Restarted> {
    let dir = Path::new(LAB_ROOT).join(name);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("logs/policyd.log"))
        .context("opening the lab's policyd.log")?;
    let node = netns::path(&format!("weir-{name}"));
    let child = netns::command(&node, ctl.bin_dir.join("weir-policyd"))
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .args(["--node-name", "lab", "--bpffs-root"])
        .arg(format!("/sys/fs/bpf/weir-lab-{name}"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting weir-policyd in the node netns")?;
    Ok(Restarted(child))
}
