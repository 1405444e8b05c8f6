//! The HTTP surface over a real socket on 127.0.0.1: /healthz, /readyz
//! before and after the daemon declares readiness, and /metrics parsed
//! line by line as Prometheus text.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_policyd::http::{self, HttpState};
use weir_policyd::metrics::Metrics;
use weir_policyd::source::{ObjectKind, SourceError};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let clen: usize =
        head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("Content-Length").parse().unwrap();
    assert_eq!(clen, body.len(), "Content-Length matches the body");
    (code, head.to_string(), body.to_string())
}

/// One sample line: `name{label="v",...} value`; returns (name, labels, value).
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line.find(['{', ' ']).expect("name then labels or value");
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "metric name {name:?} in {line:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let end: usize;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).unwrap();
            if r[start..].starts_with('}') {
                end = start + 1;
                break;
            }
            let eq = r[start..].find("=\"").expect("label=\"value\"") + start;
            let lname = &r[start..eq];
            assert!(lname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "label name {lname:?}");
            while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next().expect("unterminated label value");
                match c {
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((lname.to_string(), value));
            match chars.next().expect("label separator") {
                (_, ',') => continue,
                (i, '}') => {
                    end = i + 1;
                    break;
                }
                (_, c) => panic!("unexpected {c:?} after a label in {line:?}"),
            }
        }
        rest = &r[end..];
    }
    let value = rest.strip_prefix(' ').expect("one space before the value");
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
    };
    (name.to_string(), labels, v)
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let metrics = Arc::new(Metrics::new());
    let state = HttpState::new(metrics.clone());
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = http::spawn(listener, state.clone());

    let (code, _, body) = get(addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    let (code, _, _) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "not ready before the daemon says so");
    state.set_ready(true);
    let (code, _, _) = get(addr, "/readyz").await;
    assert_eq!(code, 200);
    state.set_ready(false);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    state.set_ready(true);

    assert_eq!(get(addr, "/nope").await.0, 404);

    // Some of every metric type, including a label value needing escapes.
    metrics.source_events.inc(&["kube", ObjectKind::Pod.label(), "apply"]);
    metrics.source_error("dir", &SourceError::ManifestInvalid { file: "a.yaml".into(), message: "x".into() });
    metrics.map_entries.set(&["policy"], 42.0);
    metrics.map_entries.set(&["weird\"map\\"], 1.0);
    metrics.sync_duration.observe(0.004);
    metrics.set_dataplane_verdicts([("ingress", "drop_policy", 7, 420)]);

    let (code, head, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let mut samples = Vec::new();
    let mut typed = std::collections::BTreeMap::new();
    for line in body.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            let mut w = c.splitn(3, ' ');
            let (kw, name, rest) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap_or(""));
            assert!(kw == "HELP" || kw == "TYPE", "comment {line:?}");
            if kw == "TYPE" {
                assert!(["counter", "gauge", "histogram"].contains(&rest), "{line:?}");
                typed.insert(name.to_string(), rest.to_string());
            }
            continue;
        }
        assert!(!line.is_empty(), "no blank lines");
        samples.push(parse_sample(line));
    }
    // Every sample belongs to a family declared with # TYPE before it.
    for (name, _, _) in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{name} has no # TYPE");
    }
    let find = |n: &str, l: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(name, labels, _)| {
                name == n && l.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
    };
    assert_eq!(
        find("weir_policyd_source_events_total", &[("source", "kube"), ("kind", "pod"), ("op", "apply")]),
        Some(1.0)
    );
    assert_eq!(
        find("weir_policyd_source_errors_total", &[("source", "dir"), ("reason", "manifest_invalid")]),
        Some(1.0)
    );
    assert_eq!(find("weir_policyd_map_entries", &[("map", "policy")]), Some(42.0));
    assert_eq!(find("weir_policyd_map_entries", &[("map", "weird\"map\\")]), Some(1.0));
    assert_eq!(find("weir_policyd_ready", &[]), Some(1.0));
    assert_eq!(find("weir_policyd_sync_duration_seconds_bucket", &[("le", "0.005")]), Some(1.0));
    assert_eq!(find("weir_policyd_sync_duration_seconds_count", &[]), Some(1.0));
    assert_eq!(find("weir_dataplane_packets_total", &[("direction", "ingress"), ("reason", "drop_policy")]), Some(7.0));

    server.abort();
}
