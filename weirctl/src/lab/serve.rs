//! The "container" of every lab pod: one process inside the pod netns
//! answering on each declared containerPort (TCP: accept and echo; UDP: echo
//! each datagram back). SCTP cannot be served where the kernel has no SCTP
//! sockets: that port is reported "unsupported", never silently skipped.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// Per-port outcome the server writes once every listener is bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub protocol: String,
    /// "serving", "unsupported" (no such socket type here) or "error: ...".
    pub state: String,
}

/// Parse `80/TCP`.
pub fn parse_port_spec(s: &str) -> Result<(u16, String)> {
    let (p, proto) = s.split_once('/').with_context(|| format!("port {s:?} must look like 80/TCP"))?;
    let port: u16 = p.parse().with_context(|| format!("port {s:?}: {p:?} is not a port number"))?;
    let proto = proto.to_ascii_uppercase();
    anyhow::ensure!(matches!(proto.as_str(), "TCP" | "UDP" | "SCTP"), "port {s:?}: protocol must be TCP, UDP or SCTP");
    Ok((port, proto))
}

fn sctp_supported() -> bool {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
        true
    } else {
        false
    }
}

/// Dual-stack where possible (`[::]` accepts IPv4 as mapped addresses),
/// IPv4-only otherwise.
fn bind_tcp(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0u16; 8], port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0u8; 4], port))))
}

fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from(([0u16; 8], port)))
        .or_else(|_| UdpSocket::bind(SocketAddr::from(([0u8; 4], port))))
}

/// Enter `netns`, bind every port, write `status_file`, serve forever.
pub fn run(netns: &str, ports: &[(u16, String)], status_file: &Path) -> Result<()> {
    // Still single-threaded here, so the whole process moves.
    super::sys::enter_netns_this_thread(netns)?;
    let mut status = Vec::new();
    let mut workers = Vec::new();
    for (port, proto) in ports {
        let port = *port;
        let state = match proto.as_str() {
            "TCP" => match bind_tcp(port) {
                Ok(l) => {
                    workers.push(std::thread::spawn(move || serve_tcp(l)));
                    "serving".to_string()
                }
                Err(e) => format!("error: {e}"),
            },
            "UDP" => match bind_udp(port) {
                Ok(s) => {
                    workers.push(std::thread::spawn(move || serve_udp(s)));
                    "serving".to_string()
                }
                Err(e) => format!("error: {e}"),
            },
            _ => {
                if sctp_supported() {
                    "error: SCTP sockets exist but the lab server does not speak SCTP yet".into()
                } else {
                    "unsupported".into()
                }
            }
        };
        status.push(PortStatus { port, protocol: proto.clone(), state });
    }
    super::sys::write_atomic(status_file, &serde_json::to_vec_pretty(&status)?)?;
    for w in workers {
        let _ = w.join();
    }
    // No ports at all: stay alive like a pause container.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn serve_tcp(l: TcpListener) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

fn serve_udp(s: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse_port_spec("80/tcp").unwrap(), (80, "TCP".into()));
        assert_eq!(parse_port_spec("81/SCTP").unwrap(), (81, "SCTP".into()));
        assert!(parse_port_spec("80").is_err());
        assert!(parse_port_spec("x/TCP").is_err());
        assert!(parse_port_spec("80/ICMP").is_err());
    }
}
