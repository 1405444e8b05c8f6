//! The daemon's HTTP surface: `/healthz` (the process answers), `/readyz`
//! (200 once the sources synced and the first sync reached the maps),
//! `/metrics` (Prometheus text format).
//!
//! A few fixed GET routes, one request per connection: a hand-written
//! HTTP/1.1 responder is smaller than pulling in a server framework.

use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the endpoints report; shared with the daemon.
#[derive(Debug)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl HttpState {
    pub fn new(metrics: Arc<Metrics>) -> Arc<HttpState> {
        Arc::new(HttpState { metrics, ready: AtomicBool::new(false) })
    }

    /// Set once the sources are synced and the maps hold the first complete
    /// sync (and cleared if the daemon ever loses that state).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.metrics.ready.set(&[], if ready { 1.0 } else { 0.0 });
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Bind the listen address (e.g. 127.0.0.1:9913; port 0 for any).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("--listen {addr}: {e} (is another weir-policyd running?)")))
}

/// Serve on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, state: Arc<HttpState>) -> JoinHandle<()> {
    tokio::spawn(serve(listener, state))
}

pub async fn serve(listener: TcpListener, state: Arc<HttpState>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    // A client that never finishes its request must not
                    // hold a task forever.
                    let _ = tokio::time::timeout(Duration::from_secs(10), handle(conn, &state)).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

const MAX_REQUEST: usize = 16 * 1024;

async fn handle(mut conn: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return respond(&mut conn, 431, "text/plain", b"request header too large\n", false).await;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line_end = buf.iter().position(|b| *b == b'\r').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(&mut conn, 405, "text/plain", b"only GET and HEAD\n", false).await;
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/healthz" => respond(&mut conn, 200, "text/plain", b"ok\n", head).await,
        "/readyz" => {
            if state.is_ready() {
                respond(&mut conn, 200, "text/plain", b"ready\n", head).await
            } else {
                respond(
                    &mut conn,
                    503,
                    "text/plain",
                    b"not ready: sources not synced or maps not yet programmed\n",
                    head,
                )
                .await
            }
        }
        "/metrics" => {
            let body = state.metrics.render();
            respond(&mut conn, 200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), head).await
        }
        _ => respond(&mut conn, 404, "text/plain", b"not found: try /healthz, /readyz, /metrics\n", head).await,
    }
}

async fn respond(conn: &mut TcpStream, code: u16, ctype: &str, body: &[u8], head: bool) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let header = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(header.as_bytes()).await?;
    if !head {
        conn.write_all(body).await?;
    }
    conn.shutdown().await
}
