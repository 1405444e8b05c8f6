//! Connectivity probes: every source pod to every destination, in parallel,
//! each probe on its own thread that setns'd into the source pod's netns.
//! TCP succeeds when the handshake completes, UDP when the request gets an
//! answer; SCTP cannot be probed where the kernel has no SCTP sockets and is
//! reported as such, never as connected or blocked.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Connected,
    Blocked,
    Unsupported,
}

/// A probe matrix: rows are sources, columns destinations, both `ns/pod`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub port: u16,
    pub protocol: String,
    pub via: String,
    pub froms: Vec<String>,
    pub tos: Vec<String>,
    pub cells: BTreeMap<(String, String), Cell>,
    /// What each destination's probes dialed (`ip:port`: the Service's
    /// ClusterIP or the pod address), so a probe can be explained exactly.
    pub targets: BTreeMap<String, SocketAddr>,
}

impl Matrix {
    pub fn get(&self, from: &str, to: &str) -> Option<Cell> {
        self.cells.get(&(from.to_string(), to.to_string())).copied()
    }

    /// The upstream truth-table shape: a `-` corner, destinations across,
    /// sources down, `.` connected, `X` blocked (`?` unsupported here).
    pub fn table(&self) -> String {
        let mut lines =
            vec![std::iter::once("-".to_string()).chain(self.tos.iter().cloned()).collect::<Vec<_>>().join("\t")];
        for from in &self.froms {
            let mut row = vec![from.clone()];
            for to in &self.tos {
                row.push(
                    match self.get(from, to) {
                        Some(Cell::Connected) => ".",
                        Some(Cell::Blocked) => "X",
                        Some(Cell::Unsupported) | None => "?",
                    }
                    .to_string(),
                );
            }
            lines.push(row.join("\t"));
        }
        let mut out = lines.join("\n");
        out.push('\n');
        if self.cells.values().any(|c| *c == Cell::Unsupported) {
            out.push_str(&format!(
                "? = unsupported: this kernel has no {} sockets, so the probe cannot run\n",
                self.protocol
            ));
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut results = Map::new();
        for from in &self.froms {
            let mut row = Map::new();
            for to in &self.tos {
                let v = match self.get(from, to) {
                    Some(Cell::Connected) => json!(true),
                    Some(Cell::Blocked) => json!(false),
                    Some(Cell::Unsupported) | None => json!("unsupported"),
                };
                row.insert(to.clone(), v);
            }
            results.insert(from.clone(), Value::Object(row));
        }
        let targets: Map<String, Value> = self.targets.iter().map(|(k, t)| (k.clone(), json!(t.to_string()))).collect();
        json!({"port": self.port, "protocol": self.protocol, "via": self.via, "results": results, "targets": targets})
    }

    /// Cells that differ from `before`, as (from, to, before, after).
    pub fn diff<'a>(&'a self, before: &'a Matrix) -> Vec<(&'a str, &'a str, Cell, Cell)> {
        let mut out = Vec::new();
        for ((f, t), c) in &self.cells {
            if let Some(b) = before.cells.get(&(f.clone(), t.clone())) {
                if b != c {
                    out.push((f.as_str(), t.as_str(), *b, *c));
                }
            }
        }
        out
    }

    pub fn count(&self, cell: Cell) -> usize {
        self.cells.values().filter(|c| **c == cell).count()
    }
}

/// One TCP handshake or UDP round trip from the calling thread's netns.
pub fn probe_once(target: SocketAddr, protocol: &str, timeout: Duration) -> Cell {
    match protocol {
        "TCP" => match TcpStream::connect_timeout(&target, timeout) {
            Ok(_) => Cell::Connected,
            Err(_) => Cell::Blocked,
        },
        "UDP" => probe_udp(target, timeout),
        _ => Cell::Unsupported,
    }
}

fn probe_udp(target: SocketAddr, timeout: Duration) -> Cell {
    let bind: SocketAddr = if target.is_ipv4() { ([0u8; 4], 0).into() } else { ([0u16; 8], 0).into() };
    let Ok(sock) = UdpSocket::bind(bind) else { return Cell::Blocked };
    if sock.connect(target).is_err() {
        return Cell::Blocked;
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    // Resend while waiting: the first datagram may be lost while neighbours
    // resolve; a policy drop loses every one.
    while Instant::now() < deadline {
        let _ = sock.send(b"weir-probe");
        let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
        if left.is_zero() {
            break;
        }
        let _ = sock.set_read_timeout(Some(left));
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == b"weir-probe" => return Cell::Connected,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // ICMP errors (refused, unreachable) surface here: not connected,
            // and waiting longer will not change that.
            Err(_) => return Cell::Blocked,
        }
    }
    Cell::Blocked
}

/// A source: its `ns/pod` and netns name.
#[derive(Debug, Clone)]
pub struct Source {
    pub key: String,
    pub netns: String,
}

/// A destination: its `ns/pod` and address, or why it cannot be probed.
#[derive(Debug, Clone)]
pub struct Dest {
    pub key: String,
    pub target: Result<SocketAddr, String>,
}

/// All cells in parallel, one thread each.
pub fn run(sources: &[Source], dests: &[Dest], port: u16, protocol: &str, via: &str, timeout: Duration) -> Matrix {
    let mut cells = BTreeMap::new();
    let unsupported = protocol == "SCTP";
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for src in sources {
            for dst in dests {
                let key = (src.key.clone(), dst.key.clone());
                if unsupported {
                    cells.insert(key, Cell::Unsupported);
                    continue;
                }
                let Ok(target) = dst.target.clone() else {
                    cells.insert(key, Cell::Unsupported);
                    continue;
                };
                let netns = src.netns.clone();
                handles.push((
                    key,
                    s.spawn(move || {
                        if super::sys::enter_netns_this_thread(&netns).is_err() {
                            return Cell::Blocked;
                        }
                        probe_once(target, protocol, timeout)
                    }),
                ));
            }
        }
        for (key, h) in handles {
            cells.insert(key, h.join().unwrap_or(Cell::Blocked));
        }
    });
    Matrix {
        port,
        protocol: protocol.to_string(),
        via: via.to_string(),
        froms: sources.iter().map(|s| s.key.clone()).collect(),
        tos: dests.iter().map(|d| d.key.clone()).collect(),
        cells,
        targets: dests.iter().filter_map(|d| Some((d.key.clone(), d.target.clone().ok()?))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(cells: &[(&str, &str, Cell)]) -> Matrix {
        Matrix {
            port: 80,
            protocol: "TCP".into(),
            via: "service".into(),
            froms: vec!["x/a".into(), "x/b".into()],
            tos: vec!["x/a".into(), "x/b".into()],
            cells: cells.iter().map(|(f, t, c)| ((f.to_string(), t.to_string()), *c)).collect(),
            targets: BTreeMap::new(),
        }
    }

    #[test]
    fn table_shape() {
        let t = m(&[
            ("x/a", "x/a", Cell::Connected),
            ("x/a", "x/b", Cell::Blocked),
            ("x/b", "x/a", Cell::Connected),
            ("x/b", "x/b", Cell::Connected),
        ]);
        assert_eq!(t.table(), "-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\n");
    }

    #[test]
    fn json_shape_and_unsupported() {
        let t = m(&[
            ("x/a", "x/a", Cell::Connected),
            ("x/a", "x/b", Cell::Blocked),
            ("x/b", "x/a", Cell::Unsupported),
            ("x/b", "x/b", Cell::Unsupported),
        ]);
        let j = t.json();
        assert_eq!(j["port"], 80);
        assert_eq!(j["protocol"], "TCP");
        assert_eq!(j["via"], "service");
        assert_eq!(j["results"]["x/a"]["x/a"], true);
        assert_eq!(j["results"]["x/a"]["x/b"], false);
        assert_eq!(j["results"]["x/b"]["x/a"], "unsupported");
        assert!(t.table().contains("x/b\t?\t?\n"));
        assert!(t.table().contains("? = unsupported"));
    }

    #[test]
    fn sctp_is_never_true_or_false() {
        let src = vec![Source { key: "x/a".into(), netns: "does-not-matter".into() }];
        let dst = vec![Dest { key: "x/a".into(), target: Ok("127.0.0.1:80".parse().unwrap()) }];
        let r = run(&src, &dst, 80, "SCTP", "pod", Duration::from_millis(10));
        assert_eq!(r.json()["results"]["x/a"]["x/a"], "unsupported");
    }

    #[test]
    fn diff_lists_changes() {
        let a = m(&[("x/a", "x/b", Cell::Connected), ("x/b", "x/a", Cell::Connected)]);
        let b = m(&[("x/a", "x/b", Cell::Blocked), ("x/b", "x/a", Cell::Connected)]);
        assert_eq!(b.diff(&a), vec![("x/a", "x/b", Cell::Connected, Cell::Blocked)]);
        assert_eq!(b.count(Cell::Blocked), 1);
    }
}
