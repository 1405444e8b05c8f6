//! The daemon's HTTP surface: `/healthz` (the process answers), `/readyz`
//! (200 once the sources synced and the first sync reached the maps),
//! `/metrics` (Prometheus text format).
//!
//! A few fixed GET routes, one request per connection: a hand-written
//! HTTP/1.1 responder is smaller than pulling in a server framework.
//! [`serve_one`] is that responder for both of policyd's listeners (this
//! TCP one and the local API's unix socket, `crate::api`).

use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
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
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve_one(conn, |t| route(&state, t))).await;
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

async fn route(state: &HttpState, target: Target) -> Response {
    match target.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            if state.is_ready() {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "not ready: sources not synced or maps not yet programmed\n")
            }
        }
        "/metrics" => Response {
            code: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: state.metrics.render().into_bytes(),
        },
        _ => Response::text(404, "not found: try /healthz, /readyz, /metrics\n"),
    }
}

/// What a GET or HEAD asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: String,
    /// The query string's `key=value` pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
}

impl Target {
    fn parse(target: &str) -> Target {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Target { path: path.to_string(), query }
    }

    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `%XX` escapes and `+` (a space, as forms write it); a malformed escape
/// is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |i: usize| {
        b.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1)) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(code: u16, body: &str) -> Response {
        Response { code, content_type: "text/plain", body: body.as_bytes().to_vec() }
    }

    pub fn json(code: u16, body: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(body).unwrap_or_default();
        body.push(b'\n');
        Response { code, content_type: "application/json", body }
    }
}

/// An answer: whole, or lines as they come (`/v1/flows?follow=true`).
pub enum Reply {
    Whole(Response),
    /// 200 with a body of lines, each sent as it arrives, until the sender
    /// is dropped or the client closes.
    Lines {
        content_type: &'static str,
        lines: tokio::sync::mpsc::Receiver<String>,
    },
}

const MAX_REQUEST: usize = 16 * 1024;
/// A client that never finishes its request must not hold a task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Read one request from `conn`, answer it with `route` and close: the
/// one HTTP/1.1 responder of both listeners (TCP here, the unix socket of
/// `crate::api`).
pub async fn serve_one<S, F, Fut>(conn: S, route: F) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Target) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    serve_one_reply(conn, |t| async move { Reply::Whole(route(t).await) }).await
}

/// [`serve_one`] for routes that may stream ([`Reply::Lines`]).
pub async fn serve_one_reply<S, F, Fut>(mut conn: S, route: F) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Target) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return respond(&mut conn, &Response::text(431, "request header too large\n"), false).await;
        }
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, conn.read(&mut chunk)).await {
            Ok(n) => n?,
            Err(_) => return Ok(()),
        };
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
        return respond(&mut conn, &Response::text(405, "only GET and HEAD\n"), false).await;
    }
    match route(Target::parse(target)).await {
        Reply::Whole(response) => respond(&mut conn, &response, head).await,
        Reply::Lines { content_type, lines } => stream(conn, content_type, lines, head).await,
    }
}

/// A 200 whose body is `lines` as they come, delimited by closing the
/// connection (HTTP/1.1 allows it with `Connection: close`), so any client
/// reads it line by line. Ends when the sender is dropped or the client
/// closes (seen by a read returning end of file).
async fn stream<S: AsyncRead + AsyncWrite + Unpin>(
    conn: S,
    content_type: &str,
    mut lines: tokio::sync::mpsc::Receiver<String>,
    head: bool,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let header = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n");
    wr.write_all(header.as_bytes()).await?;
    wr.flush().await?;
    if head {
        return wr.shutdown().await;
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(l) => {
                    wr.write_all(l.as_bytes()).await?;
                    wr.flush().await?;
                }
                None => break,
            },
            n = rd.read(&mut scratch) => match n {
                Ok(0) | Err(_) => return Ok(()), // the client went away
                Ok(_) => {}
            },
        }
    }
    wr.shutdown().await
}

async fn respond<S: AsyncWrite + Unpin>(conn: &mut S, r: &Response, head: bool) -> std::io::Result<()> {
    let reason = match r.code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let header = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.code,
        r.content_type,
        r.body.len()
    );
    conn.write_all(header.as_bytes()).await?;
    if !head {
        conn.write_all(&r.body).await?;
    }
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_split_and_decoded() {
        let t = Target::parse("/v1/explain?from=x%2Fa&to=svc/y/s&port=80&protocol=TCP&bad=%zz&flag");
        assert_eq!(t.path, "/v1/explain");
        assert_eq!(t.param("from"), Some("x/a"));
        assert_eq!(t.param("to"), Some("svc/y/s"));
        assert_eq!(t.param("bad"), Some("%zz"), "a malformed escape is kept");
        assert_eq!(t.param("flag"), Some(""));
        assert_eq!(t.param("missing"), None);
        assert_eq!(percent_decode("a+b%20c%"), "a b c%");
    }

    #[tokio::test]
    async fn one_responder_serves_any_stream() {
        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(serve_one(server, |t| async move {
            Response::json(200, &serde_json::json!({"path": t.path, "port": t.param("port")}))
        }));
        client.write_all(b"GET /x?port=81 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: application/json"));
        assert!(out.ends_with("{\"path\":\"/x\",\"port\":\"81\"}\n"), "{out}");
    }
}
