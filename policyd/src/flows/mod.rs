//! The flow log: every drop the dataplane reports (and allowed new flows
//! where enabled) as one JSON line naming the pods, the verdict and the
//! policy and rule that decided.
//!
//! - a thread of its own ([`spawn_reader`]) waits on the `weir_events`
//!   ring, turns each event into a [`record::FlowRecord`] with the names
//!   of the last compile ([`record::Names`], published by the daemon loop
//!   after each one) and hands it to the [`FlowLog`];
//! - a token bucket ([`TokenBucket`], `--flow-log-rate`/`--flow-log-burst`)
//!   bounds the lines per second: those over it are counted
//!   (`weir_policyd_flow_events_rate_limited_total`), not written;
//! - the [`FlowLog`] appends each line to a file (`--flow-log`, rotated by
//!   size to `<path>.1`, so at most twice `--flow-log-max-bytes` on disk),
//!   keeps the last [`RECENT`] records for `/v1/flows`, and hands each to
//!   the clients following it.

pub mod record;

use crate::metrics::Metrics;
use record::{FlowRecord, Names};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Records kept in memory for `/v1/flows`.
pub const RECENT: usize = 4096;

/// How the flow log is written.
#[derive(Debug, Clone)]
pub struct Options {
    /// Off: the programs emit no events (`CFG_EVENTS_OFF`; verdicts are
    /// still counted) and nothing is written.
    pub enabled: bool,
    /// The programs' event ring, in bytes.
    pub ring_bytes: u64,
    /// The file lines are appended to.
    pub path: PathBuf,
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// Lines per second, sustained (0: none are written).
    pub rate: f64,
    /// Lines allowed at once above the rate.
    pub burst: f64,
}

/// A token bucket: `rate` tokens a second up to `burst`. Time is passed
/// in, so it is tested without waiting.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        let burst = burst.max(0.0);
        TokenBucket { rate: rate.max(0.0), burst, tokens: burst, last: None }
    }

    /// Whether one more line may go out at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which records a reader wants (`/v1/flows?pod=NS/POD&verdict=drop`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub pod: Option<crate::store::Key>,
    /// `allow`, `drop`, or `audit` (the allows an audit-mode policy
    /// would drop).
    pub verdict: Option<&'static str>,
}

impl Filter {
    /// From the query's values; an error names the parameter and the fix.
    pub fn parse(pod: Option<&str>, verdict: Option<&str>) -> Result<Filter, String> {
        let pod = match pod.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => match p.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Some((ns.to_string(), name.to_string()))
                }
                _ => return Err(format!("pod {p:?}: give NAMESPACE/POD")),
            },
        };
        let verdict = match verdict.filter(|v| !v.is_empty()) {
            None => None,
            Some("allow") => Some("allow"),
            Some("drop") => Some("drop"),
            Some("audit") => Some("audit"),
            Some(v) => return Err(format!("verdict {v:?}: give allow, drop or audit")),
        };
        Ok(Filter { pod, verdict })
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        let verdict_ok = match self.verdict {
            None => true,
            Some("audit") => r.reason == weir_bpf::abi::reason_name(weir_bpf::abi::R_ALLOW_AUDIT),
            Some(v) => v == r.verdict,
        };
        verdict_ok && self.pod.as_ref().is_none_or(|p| r.involves(p))
    }
}

/// Where records go: the file, the recent ring and the followers.
pub struct FlowLog {
    file: Mutex<Rotating>,
    recent: Mutex<VecDeque<Arc<FlowRecord>>>,
    live: broadcast::Sender<Arc<FlowRecord>>,
}

impl FlowLog {
    pub fn new(path: PathBuf, max_bytes: u64) -> FlowLog {
        FlowLog {
            file: Mutex::new(Rotating { path, max_bytes, file: None, size: 0 }),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            live: broadcast::channel(1024).0,
        }
    }

    /// Write one record everywhere it goes.
    pub fn push(&self, r: FlowRecord) {
        let r = Arc::new(r);
        let mut line = serde_json::to_string(&*r).unwrap_or_default();
        line.push('\n');
        if let Err(e) = self.file.lock().unwrap_or_else(|p| p.into_inner()).append(line.as_bytes()) {
            log::warn!("flow log: {e}");
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(r.clone());
        drop(recent);
        let _ = self.live.send(r); // nobody following is fine
    }

    /// The kept records `f` matches, oldest first.
    pub fn recent(&self, f: &Filter) -> Vec<Arc<FlowRecord>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|r| f.matches(r)).cloned().collect()
    }

    /// Every record pushed from now on (a follower too slow loses the
    /// oldest and is told how many).
    pub fn follow(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.live.subscribe()
    }
}

/// An append-only file rotated by size to `<path>.1`.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
}

impl Rotating {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let err = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display()));
        if self.file.is_none() {
            // 0600: lines name pods and addresses.
            let f = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&self.path).map_err(err)?;
            self.size = f.metadata().map_err(err)?.len();
            self.file = Some(f);
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.file = None;
            std::fs::rename(&self.path, rotated(&self.path)).map_err(err)?;
            return self.append(line);
        }
        self.file.as_mut().expect("opened above").write_all(line).map_err(err)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Where a flow log file rotates to.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The names the reader uses, replaced by the daemon loop after each compile.
pub type SharedNames = Arc<RwLock<Arc<Names>>>;

/// Read the dataplane's events on a thread of its own until the process
/// ends: each becomes a record, rate-limited, into `log`.
pub fn spawn_reader(
    mut reader: weir_bpf::EventReader,
    names: SharedNames,
    log: Arc<FlowLog>,
    opts: &Options,
    metrics: Arc<Metrics>,
) {
    use std::os::fd::AsRawFd;
    let mut bucket = TokenBucket::new(opts.rate, opts.burst);
    let spawned = std::thread::Builder::new().name("flow log".into()).spawn(move || loop {
        let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::error!("flow log: polling the event ring: {}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_secs(1));
        }
        let events = reader.drain();
        if events.is_empty() {
            continue;
        }
        let current = names.read().unwrap_or_else(|p| p.into_inner()).clone();
        let clock = Clock::now();
        for e in events {
            if !bucket.take(Instant::now()) {
                metrics.flow_events_rate_limited.inc(&["policyd"]);
                continue;
            }
            for r in record::build_all(&current, &e, clock.rfc3339_of(e.ts_ns)) {
                log.push(r);
            }
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the flow log thread: {e}; no flow log");
    }
}

/// The wall clock of a monotonic instant: events carry
/// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
struct Clock {
    realtime_ns: i128,
    monotonic_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        let read = |id| {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid timespec to fill.
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        Clock { realtime_ns: read(libc::CLOCK_REALTIME), monotonic_ns: read(libc::CLOCK_MONOTONIC) }
    }

    fn rfc3339_of(&self, ts_ns: u64) -> String {
        record::rfc3339((self.realtime_ns - (self.monotonic_ns - ts_ns as i128)).max(0) as u128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::End;

    fn rec(verdict: &'static str, src: (&str, &str), dst: (&str, &str)) -> FlowRecord {
        let end = |(ns, pod): (&str, &str), ip: &str| End {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ip: ip.parse().unwrap(),
            port: 80,
        };
        FlowRecord {
            time: "t".into(),
            node: "n".into(),
            direction: "ingress",
            verdict,
            reason: if verdict == "drop" { "drop_policy" } else { "allow_policy" },
            protocol: "TCP".into(),
            source: end(src, "10.0.0.1"),
            destination: end(dst, "10.0.0.2"),
            policy: None,
            isolated_by: vec![],
            audited_by: vec![],
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0);
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3, "the burst");
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(b.take(t0 + Duration::from_millis(100)), "one token after 100 ms at 10/s");
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
        let mut none = TokenBucket::new(0.0, 0.0);
        assert!(!none.take(later), "rate 0 writes nothing");
    }

    #[test]
    fn filters_select_by_pod_at_either_end_and_by_verdict() {
        let f = Filter::parse(Some("x/a"), Some("drop")).unwrap();
        assert!(f.matches(&rec("drop", ("x", "a"), ("y", "b"))));
        assert!(f.matches(&rec("drop", ("y", "b"), ("x", "a"))));
        assert!(!f.matches(&rec("allow", ("x", "a"), ("y", "b"))), "verdict");
        assert!(!f.matches(&rec("drop", ("x", "ab"), ("y", "b"))), "another pod");
        assert!(Filter::parse(None, None).unwrap().matches(&rec("allow", ("x", "a"), ("y", "b"))));
        assert!(Filter::parse(Some("a"), None).unwrap_err().contains("NAMESPACE/POD"));
        assert!(Filter::parse(None, Some("dropped")).unwrap_err().contains("allow, drop or audit"));
    }

    #[test]
    fn the_log_keeps_the_recent_records_feeds_followers_and_rotates_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let line_len = serde_json::to_string(&rec("drop", ("x", "a"), ("y", "b"))).unwrap().len() as u64 + 1;
        let log = FlowLog::new(path.clone(), line_len * 3);
        let mut follower = log.follow();
        for _ in 0..RECENT + 2 {
            log.push(rec("drop", ("x", "a"), ("y", "b")));
        }
        log.push(rec("allow", ("x", "c"), ("y", "b")));
        assert_eq!(log.recent(&Filter::default()).len(), RECENT, "bounded");
        let allows = log.recent(&Filter::parse(None, Some("allow")).unwrap());
        assert_eq!(allows.len(), 1);
        assert_eq!(allows[0].source.pod.as_deref(), Some("c"));
        // 4099 records into a follower's 1024: it is told it lagged, then
        // gets the latest.
        use tokio::sync::broadcast::error::TryRecvError;
        assert!(matches!(follower.try_recv(), Err(TryRecvError::Lagged(_))), "a slow follower is told");
        assert_eq!(follower.try_recv().unwrap().verdict, "drop", "a follower gets what is pushed after it");
        // Bounded on disk: the file and one rotated file, whole lines each.
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&path) <= line_len * 3, "{}", size(&path));
        assert_eq!(size(&rotated(&path)), line_len * 3);
        let last = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(v["verdict"], "allow");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
