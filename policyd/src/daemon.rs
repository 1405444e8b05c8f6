//! The node agent's main loop: sources fill the store, the endpoint registry
//! says which pods live here, the engine compiles, sync writes the maps.
//!
//! Level-triggered: every wake-up (a batch of object changes, a registry
//! change, the periodic resync) recompiles from the whole store and writes
//! only the difference, so a missed or coalesced notification costs at most
//! one resync period, never a wrong map.

use crate::engine::{Desired, Diagnostic, Engine};
use crate::fswatch;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::source;
use crate::store::Store;
use crate::sync::Sync;
use anyhow::Context;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_bpf::{abi, Dataplane};
use weir_common::registry::Registry;

/// Where the objects come from.
#[derive(Debug, Clone)]
pub enum SourceChoice {
    Kube(source::kube::Access),
    Manifests(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: SourceChoice,
    pub node_name: String,
    pub bpffs_root: PathBuf,
    pub run_dir: PathBuf,
    pub listen: SocketAddr,
    /// Level-triggered safety net: recompile and resync this often even
    /// without a notification.
    pub resync: Duration,
}

/// Object bursts (a `kubectl apply -f dir`) are folded into one compile:
/// wait this long after each event for another...
const SETTLE: Duration = Duration::from_millis(2);
/// ...but never longer than this in total.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(20);

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let http_state = HttpState::new(metrics.clone());
    let listener = http::bind(opts.listen).await.with_context(|| {
        format!(
            "--listen {}: cannot bind (is another weir-policyd running?)",
            opts.listen
        )
    })?;
    http::spawn(listener, http_state.clone());

    let dp = Dataplane::load_or_open(&opts.bpffs_root)
        .with_context(|| format!("--bpffs-root {}", opts.bpffs_root.display()))?;
    let registry = Registry::under(&opts.run_dir);
    let mut registry_changes = fswatch::watch_dir(registry.dir()).with_context(|| {
        format!(
            "watching the endpoint registry {}",
            registry.dir().display()
        )
    })?;
    spawn_event_logger(&dp);

    let mut source = match &opts.source {
        SourceChoice::Manifests(dir) => source::dir::spawn_dir(
            dir.clone(),
            source::dir::DirOptions::default(),
            metrics.clone(),
        ),
        SourceChoice::Kube(access) => {
            let client = source::kube::client(access).await?;
            source::kube::spawn_kube(
                client,
                source::kube::KubeOptions::default(),
                metrics.clone(),
            )
        }
    };
    let mut store = Store::default();
    log::info!("waiting for every object kind's initial list");
    source
        .wait_synced(&mut store)
        .await
        .context("the object source stopped before its initial lists")?;

    let identities_file = opts.run_dir.join("identities.json");
    let mut agent = Agent {
        engine: Engine::new(),
        sync: Sync::from_maps(&dp).context("reading back the pinned maps")?,
        dp,
        registry,
        metrics: metrics.clone(),
        identities_file,
        last_identities: Default::default(),
        last_diagnostics: BTreeSet::new(),
    };
    agent.seed_identities();
    log::info!(
        "synced: {} objects; programming the maps",
        store_size(&store)
    );
    while let Err(e) = agent.reconcile(&store, Instant::now()) {
        log::error!("first sync to the maps failed: {e:#}; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    http_state.set_ready(true);
    metrics.ready.set(&[], 1.0);
    log::info!(
        "ready: node {} revision {}",
        opts.node_name,
        agent.sync.revision()
    );

    // CNI STATUS reads this to tell the runtime whether ADD can be served.
    let heartbeat = opts.run_dir.join(weir_common::paths::POLICYD_HEARTBEAT);
    touch(&heartbeat);
    let mut resync = tokio::time::interval(opts.resync);
    resync.tick().await;
    let mut counters = tokio::time::interval(weir_common::paths::POLICYD_HEARTBEAT_EVERY);
    let mut dirty = false;
    loop {
        tokio::select! {
            batch = source.next_batch(&mut store, SETTLE, MAX_BATCH_WAIT) => {
                if batch.is_none() {
                    anyhow::bail!("the object source stopped");
                }
                dirty = true;
            }
            Some(()) = registry_changes.recv() => dirty = true,
            _ = resync.tick() => dirty = true,
            _ = counters.tick() => {
                agent.export_counters();
                touch(&heartbeat);
            }
            _ = shutdown_signal() => {
                // Nothing to undo: the pinned maps keep enforcing what they hold.
                log::info!("shutting down; the maps keep enforcing revision {}", agent.sync.revision());
                return Ok(());
            }
        }
        if dirty {
            let started = Instant::now();
            match agent.reconcile(&store, started) {
                Ok(()) => dirty = false,
                Err(e) => log::error!(
                    "sync to the maps failed (retrying on the next change or resync): {e:#}"
                ),
            }
        }
    }
}

struct Agent {
    engine: Engine,
    sync: Sync,
    dp: Dataplane,
    registry: Registry,
    metrics: Arc<Metrics>,
    identities_file: PathBuf,
    last_identities: std::collections::BTreeMap<u32, crate::engine::IdentityLabels>,
    last_diagnostics: BTreeSet<Diagnostic>,
}

impl Agent {
    fn reconcile(&mut self, store: &Store, started: Instant) -> anyhow::Result<()> {
        let (records, errors) = self.registry.list();
        for e in &errors {
            log::warn!("endpoint registry: {e}");
        }
        let desired = self.engine.compile(store, &records);
        self.report_diagnostics(&desired);
        let result = self.sync.apply(&self.dp, &desired);
        self.metrics
            .syncs
            .inc(&[if result.is_ok() { "ok" } else { "error" }]);
        let stats = result?;
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        for (map, n) in self.sync.sizes() {
            self.metrics.map_entries.set(&[map], n as f64);
        }
        self.metrics.observe_store(store);
        if stats.upserts + stats.removals + stats.endpoints_programmed > 0 {
            log::info!(
                "revision {}: {} entries written, {} removed, {} endpoints programmed in {:?}",
                stats.revision,
                stats.upserts,
                stats.removals,
                stats.endpoints_programmed,
                started.elapsed()
            );
        }
        self.persist_identities(&desired);
        Ok(())
    }

    /// Each problem is logged once when it appears, not at every compile.
    fn report_diagnostics(&mut self, desired: &Desired) {
        let now: BTreeSet<Diagnostic> = desired.diagnostics.iter().cloned().collect();
        for d in now.difference(&self.last_diagnostics) {
            log::warn!(
                "{} {}: {} (the valid part is enforced; the rest allows nothing)",
                d.object,
                d.field,
                d.message
            );
        }
        let objects: BTreeSet<&str> = now.iter().map(|d| d.object.as_str()).collect();
        self.metrics.policies_invalid.set(&[], objects.len() as f64);
        self.last_diagnostics = now;
    }

    /// Identity numbers survive a restart so the maps do not churn.
    fn seed_identities(&mut self) {
        let Ok(bytes) = std::fs::read(&self.identities_file) else {
            return;
        };
        match serde_json::from_slice::<Vec<(u32, String, crate::engine::Labels)>>(&bytes) {
            Ok(rows) => {
                let mut previous = Desired::default();
                for (id, namespace, labels) in rows {
                    previous
                        .identities
                        .insert(id, crate::engine::IdentityLabels { namespace, labels });
                }
                let n = self.engine.seed_identities(&previous);
                log::info!(
                    "kept {n} identity numbers from {}",
                    self.identities_file.display()
                );
            }
            Err(e) => log::warn!(
                "{}: {e}; identities are renumbered",
                self.identities_file.display()
            ),
        }
    }

    fn persist_identities(&mut self, desired: &Desired) {
        if desired.identities == self.last_identities {
            return;
        }
        let rows: Vec<_> = desired
            .identities
            .iter()
            .map(|(id, l)| (*id, &l.namespace, &l.labels))
            .collect();
        let tmp = self.identities_file.with_extension("json.tmp");
        let written = serde_json::to_vec(&rows)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.identities_file));
        match written {
            Ok(()) => self.last_identities = desired.identities.clone(),
            Err(e) => log::warn!("{}: {e}", self.identities_file.display()),
        }
    }

    fn export_counters(&self) {
        let Ok(rows) = self.dp.counters() else { return };
        let mut sums: std::collections::BTreeMap<(&str, &str), (u64, u64)> = Default::default();
        for (k, v) in rows {
            let dir = if k.direction == abi::DIR_EGRESS {
                "egress"
            } else {
                "ingress"
            };
            let e = sums.entry((dir, abi::reason_name(k.reason))).or_default();
            e.0 += v.packets;
            e.1 += v.bytes;
        }
        self.metrics
            .set_dataplane_verdicts(sums.iter().map(|((d, r), (p, b))| (*d, *r, *p, *b)));
    }
}

fn store_size(store: &Store) -> usize {
    store.namespaces.len()
        + store.pods.len()
        + store.services.len()
        + store.policies.len()
        + store.nodes.len()
}

/// Drops are logged from the dataplane's event ring, at most a few per
/// second so a flood cannot flood the log too.
fn spawn_event_logger(dp: &Dataplane) {
    let Ok(mut reader) = dp.events() else { return };
    std::thread::Builder::new()
        .name("verdict events".into())
        .spawn(move || {
            let mut window = Instant::now();
            let mut logged = 0u32;
            loop {
                let events = reader.drain();
                if events.is_empty() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                if window.elapsed() > Duration::from_secs(1) {
                    window = Instant::now();
                    logged = 0;
                }
                for e in events {
                    if logged >= 10 {
                        break;
                    }
                    logged += 1;
                    log::info!(
                        "verdict={} endpoint={} dir={} proto={} src={}:{} dst={}:{} peer_identity={} rule={}",
                        abi::reason_name(e.reason),
                        e.endpoint,
                        if e.direction == abi::DIR_EGRESS { "egress" } else { "ingress" },
                        e.protocol,
                        weir_bpf::addr::from_bytes(e.saddr),
                        u16::from_be(e.sport),
                        weir_bpf::addr::from_bytes(e.daddr),
                        u16::from_be(e.dport),
                        e.peer_identity,
                        e.rule
                    );
                }
            }
        })
        .ok();
}

fn touch(path: &std::path::Path) {
    if let Err(e) = std::fs::write(path, b"") {
        log::warn!("heartbeat {}: {e}", path.display());
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
