//! The node agent's main loop: sources fill the store, the endpoint registry
//! says which pods live here, the engine compiles, sync writes the maps.
//!
//! Level-triggered: every wake-up (a batch of object changes, a registry
//! change, the periodic resync) recompiles from the whole store and writes
//! only the difference, so a missed or coalesced notification costs at most
//! one resync period, never a wrong map.
//!
//! No compile holds the loop for long: a compile is done in slices of
//! about [`SLICE_BUDGET`] map entries ([`crate::engine::Slice`]), each
//! synced as it ends, and the loop takes its other events between slices.
//! Endpoints waiting for READY are compiled first, so a new pod's ADD never
//! waits for a large recompile of the pods already running. The heartbeat
//! has its own thread.

use crate::engine::{Desired, Diagnostic, Engine, IdentityLabels, IdentityTable, Slice, UnmatchedRecord};
use crate::fswatch;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::source;
use crate::store::Store;
use crate::sync::Sync;
use anyhow::Context;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_bpf::{abi, Dataplane};
use weir_common::registry::Registry;

/// The identities file under the run dir: each identity's number and
/// labels, so a restart keeps the numbers the maps hold.
pub const IDENTITIES_FILE: &str = "identities.json";

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
    /// Between nodes: this node's pod CIDRs and the backend (`crate::node`).
    pub node_network: crate::node::Config,
    /// Judge established flows again after a policy change (the dataplane's
    /// `CFG_REJUDGE_OFF` when false): a flow no longer allowed stops on its
    /// next packet instead of living until its conntrack entry expires.
    pub rejudge_established: bool,
    /// The flow log: where it is written, its size and rate bounds.
    pub flow_log: crate::flows::Options,
    /// Map entries one compile slice produces before the loop takes a turn
    /// ([`SLICE_BUDGET`] by default).
    pub compile_slice_entries: usize,
}

/// Write the configuration the programs read from weir_config that comes
/// from policyd's options, keeping the rest.
pub fn configure_dataplane(
    dp: &Dataplane,
    rejudge_established: bool,
    flow_log: &crate::flows::Options,
) -> Result<(), weir_bpf::Error> {
    let mut cfg = dp.config()?;
    // A flow log writing no line needs no event; one writing `rate` lines a
    // second needs no more than rate + burst events a second from any CPU
    // (the reader's bucket then holds the exact rate over all of them).
    let events_off = !flow_log.enabled || flow_log.rate <= 0.0;
    cfg.events_per_s = (flow_log.rate + flow_log.burst).ceil().clamp(1.0, u32::MAX as f64) as u32;
    for (flag, off) in [(abi::CFG_REJUDGE_OFF, !rejudge_established), (abi::CFG_EVENTS_OFF, events_off)] {
        if off {
            cfg.flags |= flag;
        } else {
            cfg.flags &= !flag;
        }
    }
    dp.set_config(&cfg)
}

/// Object bursts (a `kubectl apply -f dir`) are folded into one compile:
/// wait this long after each event for another...
const SETTLE: Duration = Duration::from_millis(2);
/// ...but never longer than this in total.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(20);
/// Map entries one compile slice produces before the loop takes a turn
/// (new endpoints, object changes, shutdown), by default
/// (`--compile-slice-entries`). A normal node's whole compile fits in one
/// (10,000 pods, 110 endpoints: 26,000 entries); thousands of ipBlocks make
/// one endpoint a slice of its own. See docs/benchmarks.md.
pub const SLICE_BUDGET: usize = 50_000;
/// The heartbeat stops (CNI STATUS then answers 50 within
/// POLICYD_HEARTBEAT_MAX_AGE) when the loop has not turned for this long:
/// a wedged loop serves no ADD. Idle, the loop turns every
/// POLICYD_HEARTBEAT_EVERY for the counters.
const LOOP_STALL: Duration = Duration::from_secs(60);

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let http_state = HttpState::new(metrics.clone());
    let listener = http::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind (is another weir-policyd running?)", opts.listen))?;
    http::spawn(listener, http_state.clone());

    // A fresh machine has no bpffs at /sys/fs/bpf: the node agent mounts it
    // (the CNI binary never does; it waits for this).
    if let weir_bpf::bpffs::Mount::Mounted(at) = weir_bpf::bpffs::ensure_mounted_for(&opts.bpffs_root)
        .with_context(|| format!("--bpffs-root {}", opts.bpffs_root.display()))?
    {
        log::info!("mounted bpffs at {} (nothing was mounted there)", at.display());
    }
    // A new build's programs replace an older build's on every running pod.
    let load = weir_bpf::LoadOptions::with_events_bytes(opts.flow_log.ring_bytes).context("--flow-log-ring-bytes")?;
    let (dp, upgrade) = Dataplane::load_or_upgrade_with(&opts.bpffs_root, load)
        .with_context(|| format!("--bpffs-root {}", opts.bpffs_root.display()))?;
    if let Some(from) = upgrade.migrated_from {
        log::info!(
            "pins of map ABI {from} carried over to ABI {}: endpoints, policy, conntrack and configuration kept",
            weir_bpf::abi::ABI_VERSION
        );
    }
    if let Some((old, new)) = upgrade.events_resized {
        log::info!("event ring resized from {old} to {new} bytes (--flow-log-ring-bytes)");
    }
    if upgrade.replaced {
        log::info!(
            "programs of build {} now run on {} attached link(s) ({} of gone devices left to GC)",
            weir_bpf::build_id(),
            upgrade.links_updated,
            upgrade.links_defunct
        );
    }
    configure_dataplane(&dp, opts.rejudge_established, &opts.flow_log)
        .context("writing the dataplane configuration")?;
    log::info!(
        "established flows {} policy changes",
        if opts.rejudge_established { "are judged again after" } else { "keep their verdict across" }
    );
    let registry = Registry::under(&opts.run_dir);
    // Records decide which pod an interface is: root's alone (weir_common::trust).
    registry.ensure_dir().with_context(|| format!("--run-dir {}", opts.run_dir.display()))?;
    let mut registry_changes = fswatch::watch_dir(registry.dir())
        .with_context(|| format!("watching the endpoint registry {}", registry.dir().display()))?;
    // The flow log reads the event ring from the start; until the first
    // compile its records carry addresses without names.
    let flow_names: crate::flows::SharedNames =
        Arc::new(std::sync::RwLock::new(Arc::new(crate::flows::record::Names::for_node(&opts.node_name))));
    let flow_log = Arc::new(crate::flows::FlowLog::new(opts.flow_log.path.clone(), opts.flow_log.max_bytes));
    match dp.events() {
        Ok(reader) => {
            crate::flows::spawn_reader(reader, flow_names.clone(), flow_log.clone(), &opts.flow_log, metrics.clone())
        }
        Err(e) => log::error!("no flow log: cannot open the event ring: {e}"),
    }
    // The local API (`weirctl explain`): bound before the first sync, so a
    // running policyd always has its socket; it answers 503 until ready.
    let api_listener = crate::api::bind(&opts.run_dir)?;
    let api_socket = crate::api::socket_path(&opts.run_dir);
    let (ask_tx, mut asks) = tokio::sync::mpsc::channel::<crate::api::Ask>(16);
    let api_dp = Arc::new(
        Dataplane::open(&opts.bpffs_root).with_context(|| format!("--bpffs-root {}", opts.bpffs_root.display()))?,
    );
    crate::api::spawn(
        api_listener,
        Arc::new(crate::api::ApiState {
            node: opts.node_name.clone(),
            asks: ask_tx,
            dp: api_dp,
            http: http_state.clone(),
            flows: flow_log,
        }),
    );

    let (mut source, publisher) = match &opts.source {
        SourceChoice::Manifests(dir) => {
            // A broken file's last good version must outlive a restart.
            let dir_opts = source::dir::DirOptions {
                last_good: Some(opts.run_dir.join(source::dir::LAST_GOOD_DIR)),
                ..Default::default()
            };
            (
                source::dir::spawn_dir(dir.clone(), dir_opts, metrics.clone()),
                crate::node::publish::Publisher::file(&opts.run_dir),
            )
        }
        SourceChoice::Kube(access) => {
            let client = source::kube::client(access).await?;
            let publisher = crate::node::publish::Publisher::api(client.clone());
            (source::kube::spawn_kube(client, source::kube::KubeOptions::default(), metrics.clone()), publisher)
        }
    };
    let mut store = Store::default();
    log::info!("waiting for every object kind's initial list");
    source.wait_synced(&mut store).await.context("the object source stopped before its initial lists")?;

    // Node networking first and on its own: a few netlink calls, never
    // behind a policy compile.
    let mut node_network = crate::node::NodeAgent::new(
        opts.node_network.clone(),
        opts.node_name.clone(),
        opts.run_dir.clone(),
        publisher,
        metrics.clone(),
        opts.resync,
    );
    node_network.on_wake(&store.nodes, &dp);

    let mut agent = Agent::new(dp, registry, &opts.run_dir, metrics.clone(), opts.compile_slice_entries)
        .context("reading back the pinned maps")?;
    agent.seed_identities();
    log::info!("synced: {} objects; programming the maps", store_size(&store));
    loop {
        match agent.reconcile(&store, Instant::now()) {
            Ok(Progress::Complete) => break,
            Ok(Progress::Pending) => tokio::task::yield_now().await,
            Err(e) => {
                log::error!("first sync to the maps failed: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    agent.publish_flow_names(&opts.node_name, &store, &flow_names);
    http_state.set_ready(true);
    metrics.ready.set(&[], 1.0);
    log::info!("ready: node {} revision {}", opts.node_name, agent.sync.revision());

    // CNI STATUS reads this to tell the runtime whether ADD can be served.
    let progress = Arc::new(LoopProgress::new());
    let _heartbeat = Heartbeat::spawn(
        opts.run_dir.join(weir_common::paths::POLICYD_HEARTBEAT),
        weir_common::paths::POLICYD_HEARTBEAT_EVERY,
        LOOP_STALL,
        progress.clone(),
    );
    let mut resync = tokio::time::interval(opts.resync);
    resync.tick().await;
    let mut counters = tokio::time::interval(weir_common::paths::POLICYD_HEARTBEAT_EVERY);
    let mut dirty = false;
    // A compile slice left endpoints pending: continue right after taking
    // whatever else is ready.
    let mut pending = false;
    // API questions, answered after this turn's compile (if any), so always
    // from a finished compile's state.
    let mut questions: Vec<crate::api::Ask> = Vec::new();
    // When the oldest change the maps do not hold yet came in.
    let mut changed_since: Option<Instant> = None;
    loop {
        progress.mark();
        tokio::select! {
            batch = source.next_batch(&mut store, SETTLE, MAX_BATCH_WAIT) => {
                let Some(batch) = batch else {
                    anyhow::bail!("the object source stopped");
                };
                changed_since = changed_since.or(batch.first_at);
                dirty = true;
            }
            Some(()) = registry_changes.recv() => dirty = true,
            _ = resync.tick() => dirty = true,
            _ = counters.tick() => agent.export_counters(&store),
            Some(ask) = asks.recv() => questions.push(ask),
            _ = shutdown_signal() => {
                // Nothing to undo: the pinned maps keep enforcing what they hold.
                log::info!("shutting down; the maps keep enforcing revision {}", agent.sync.revision());
                let _ = std::fs::remove_file(&api_socket);
                return Ok(());
            }
            () = std::future::ready(()), if pending => {}
        }
        node_network.on_wake(&store.nodes, &agent.dp);
        if dirty || pending {
            let started = Instant::now();
            match agent.reconcile(&store, started) {
                Ok(p) => {
                    dirty = false;
                    pending = p == Progress::Pending;
                    // Named from a complete compile only: a slice leaves
                    // endpoints pending, and naming walks every pod.
                    if !pending {
                        agent.publish_flow_names(&opts.node_name, &store, &flow_names);
                        if let Some(t) = changed_since.take() {
                            agent.metrics.change_to_maps.observe(t.elapsed().as_secs_f64());
                        }
                    }
                }
                Err(e) => {
                    pending = false;
                    log::error!("sync to the maps failed (retrying on the next change or resync): {e:#}");
                }
            }
        }
        if !questions.is_empty() {
            let (records, _) = agent.registry.list();
            for ask in questions.drain(..) {
                let answer = crate::api::answer(&ask.question, &store, &mut agent.engine, &records, &agent.realized);
                let _ = ask.reply.send(answer);
            }
        }
    }
}

/// Whether a reconcile brought every endpoint up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Complete,
    /// The compile slice ran out: reconcile again to continue.
    Pending,
}

struct Agent {
    engine: Engine,
    sync: Sync,
    dp: Dataplane,
    registry: Registry,
    metrics: Arc<Metrics>,
    slice_budget: usize,
    identities_file: PathBuf,
    last_identities: std::sync::Arc<IdentityTable>,
    last_diagnostics: BTreeSet<Diagnostic>,
    unmatched: UnmatchedWatch,
    /// The last compile's rules, for the flow log's names.
    last_rules: std::sync::Arc<Vec<crate::engine::RuleInfo>>,
    /// This node's endpoints (host veth ifindex) to their pods, as of the
    /// last compile: what the counters' per-namespace and per-policy views
    /// read.
    last_endpoint_pods: HashMap<u32, crate::store::Key>,
    /// What the flow log names addresses by, patched after each compile.
    pod_names: crate::flows::record::PodNames,
    /// What the maps hold (the API's realization status).
    realized: crate::api::Realization,
    /// Drop counters at the last export, per (endpoint, direction, reason),
    /// and the totals credited from them: per (policy, direction) and per
    /// (namespace, direction).
    drop_counts: HashMap<(u32, u8, u8), u64>,
    policy_drops: std::collections::BTreeMap<(String, &'static str), u64>,
    namespace_drops: std::collections::BTreeMap<(String, &'static str), u64>,
}

/// An endpoint record unmatched this long is logged: shorter is a new
/// pod whose object has not arrived yet.
const UNMATCHED_GRACE: Duration = Duration::from_secs(10);

/// Since when each endpoint record has been unmatched, and whether it was
/// reported.
#[derive(Default)]
struct UnmatchedWatch(HashMap<String, (Instant, bool)>);

impl UnmatchedWatch {
    /// Takes this compile's unmatched records; returns those unmatched for
    /// [`UNMATCHED_GRACE`] and not reported yet, with how long. A record
    /// matched in between starts over.
    fn observe<'u>(&mut self, unmatched: &'u [UnmatchedRecord], now: Instant) -> Vec<(&'u UnmatchedRecord, Duration)> {
        let mut due = Vec::new();
        let mut still = HashMap::with_capacity(unmatched.len());
        for u in unmatched {
            let (since, mut reported) = self.0.get(&u.record).copied().unwrap_or((now, false));
            let age = now.duration_since(since);
            if !reported && age >= UNMATCHED_GRACE {
                due.push((u, age));
                reported = true;
            }
            still.insert(u.record.clone(), (since, reported));
        }
        self.0 = still;
        due
    }
}

impl Agent {
    fn new(
        dp: Dataplane,
        registry: Registry,
        run_dir: &std::path::Path,
        metrics: Arc<Metrics>,
        slice_budget: usize,
    ) -> Result<Agent, weir_bpf::Error> {
        // Rule ids are this process's numbering: counts a previous run left
        // under an id would be credited to whichever rule now has it.
        dp.retain_rule_counters(|_| false)?;
        Ok(Agent {
            engine: Engine::new(),
            sync: Sync::from_maps(&dp)?,
            dp,
            registry,
            metrics,
            slice_budget,
            identities_file: run_dir.join(IDENTITIES_FILE),
            last_identities: Default::default(),
            last_diagnostics: BTreeSet::new(),
            unmatched: UnmatchedWatch::default(),
            last_rules: Default::default(),
            last_endpoint_pods: HashMap::new(),
            pod_names: Default::default(),
            realized: Default::default(),
            drop_counts: HashMap::new(),
            policy_drops: Default::default(),
            namespace_drops: Default::default(),
        })
    }

    /// One compile slice, synced: endpoints waiting for READY first.
    fn reconcile(&mut self, store: &Store, started: Instant) -> anyhow::Result<Progress> {
        let (records, errors) = self.registry.list();
        for e in &errors {
            log::warn!("endpoint registry: {e}");
        }
        let first = self
            .dp
            .endpoints()?
            .into_iter()
            .filter(|(_, e)| e.flags & abi::EP_READY == 0)
            .map(|(ifindex, _)| ifindex)
            .collect();
        let slice = Slice { budget: Some(self.slice_budget), first };
        let desired = self.engine.compile_slice(store, &records, &slice);
        self.report_diagnostics(&desired);
        self.report_unmatched(&desired.unmatched, Instant::now());
        let result = self.sync.apply(&self.dp, &desired);
        self.metrics.syncs.inc(&[if result.is_ok() { "ok" } else { "error" }]);
        let stats = result?;
        self.note_realized(store, &desired, stats.revision);
        self.metrics.sync_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.compile_slices.inc(&[if desired.pending.is_empty() { "complete" } else { "over_budget" }]);
        self.metrics.endpoints_pending.set(&[], desired.pending.len() as f64);
        for (map, n) in self.sync.sizes() {
            self.metrics.map_entries.set(&[map], n as f64);
        }
        self.metrics.observe_store(store);
        if stats.upserts + stats.removals + stats.endpoints_programmed > 0 || !desired.pending.is_empty() {
            log::info!(
                "revision {}: {} entries written, {} removed, {} endpoints programmed in {:?}{}",
                stats.revision,
                stats.upserts,
                stats.removals,
                stats.endpoints_programmed,
                started.elapsed(),
                match desired.pending.len() {
                    0 => String::new(),
                    n => format!("; {n} endpoints still to compile"),
                }
            );
        }
        self.persist_identities(&desired);
        self.last_rules = desired.rules;
        self.last_endpoint_pods =
            records.iter().map(|r| (r.host_ifindex, (r.pod_namespace.clone(), r.pod_name.clone()))).collect();
        Ok(if desired.pending.is_empty() { Progress::Complete } else { Progress::Pending })
    }

    /// After a sync: which policies' current compiled forms the maps hold
    /// (from a complete compile; a slice leaves endpoints pending), and
    /// which endpoints are READY.
    fn note_realized(&mut self, store: &Store, desired: &Desired, revision: u64) {
        let r = &mut self.realized;
        r.pending = desired.pending.clone();
        if let Ok(eps) = self.dp.endpoints() {
            r.ready = eps.into_iter().filter(|(_, e)| e.flags & abi::EP_READY != 0).map(|(i, _)| i).collect();
        }
        if !desired.pending.is_empty() {
            return;
        }
        let keys = store.policies.keys().cloned().chain(
            store
                .cluster_policies
                .keys()
                .map(|n| (crate::engine::cluster_policy::CLUSTER_SCOPE.to_string(), n.clone())),
        );
        let mut now = HashMap::new();
        for key in keys {
            let Some(c) = self.engine.compiled_policy(&key) else { continue };
            let since = match r.policies.get(&key) {
                Some((v, rev)) if *v == c.version => *rev,
                _ => revision,
            };
            now.insert(key, (c.version, since));
        }
        r.policies = now;
    }

    /// Give the flow log the names of the compile just synced.
    fn publish_flow_names(&mut self, node: &str, store: &Store, names: &crate::flows::SharedNames) {
        let (records, _) = self.registry.list();
        self.pod_names.patch(self.engine.take_pod_names());
        let fresh = crate::flows::record::Names::build(
            node,
            store,
            &self.engine,
            &records,
            &self.last_rules,
            self.pod_names.clone(),
        );
        *names.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
    }

    /// Each problem is logged once when it appears, not at every compile.
    fn report_diagnostics(&mut self, desired: &Desired) {
        let now: BTreeSet<Diagnostic> = desired.diagnostics.iter().cloned().collect();
        for d in now.difference(&self.last_diagnostics) {
            log::warn!("{} {}: {} (the valid part is enforced; the rest allows nothing)", d.object, d.field, d.message);
        }
        let objects: BTreeSet<&str> = now.iter().map(|d| d.object.as_str()).collect();
        self.metrics.policies_invalid.set(&[], objects.len() as f64);
        self.last_diagnostics = now;
    }

    /// Counts this node's endpoint records no pod takes, and logs each
    /// once when it has stayed so for [`UNMATCHED_GRACE`].
    fn report_unmatched(&mut self, unmatched: &[UnmatchedRecord], now: Instant) {
        self.metrics.endpoint_records_unmatched.set(&[], unmatched.len() as f64);
        for (u, age) in self.unmatched.observe(unmatched, now) {
            log::warn!(
                "endpoint record {} (pod {}): {} for {age:?}; its endpoint stays not READY (fail-closed) until a pod \
                 takes it",
                u.record,
                u.pod,
                u.reason.describe()
            );
        }
    }

    /// Identity numbers survive a restart so the maps do not churn.
    fn seed_identities(&mut self) {
        let Ok(bytes) = std::fs::read(&self.identities_file) else {
            return;
        };
        match serde_json::from_slice::<Vec<(u32, String, crate::engine::Labels)>>(&bytes) {
            Ok(rows) => {
                let previous: IdentityTable = rows
                    .into_iter()
                    .map(|(id, namespace, labels)| (id, IdentityLabels { namespace, labels: labels.into() }))
                    .collect();
                let n = self.engine.seed_identities(&previous);
                log::info!("kept {n} identity numbers from {}", self.identities_file.display());
            }
            Err(e) => log::warn!("{}: {e}; identities are renumbered", self.identities_file.display()),
        }
    }

    fn persist_identities(&mut self, desired: &Desired) {
        // The same table handed on (no identity came or went) is not compared.
        if std::sync::Arc::ptr_eq(&desired.identities, &self.last_identities)
            || desired.identities == self.last_identities
        {
            return;
        }
        let rows: Vec<_> = desired.identities.iter().map(|(id, l)| (*id, &l.namespace, &*l.labels)).collect();
        let written = serde_json::to_vec(&rows)
            .map_err(std::io::Error::other)
            .and_then(|b| weir_common::trust::write_private(&self.identities_file, &b));
        match written {
            Ok(()) => self.last_identities = desired.identities.clone(),
            Err(e) => log::warn!("{}: {e}", self.identities_file.display()),
        }
    }

    fn export_counters(&mut self, store: &Store) {
        let Ok(rows) = self.dp.counters() else { return };
        let mut sums: std::collections::BTreeMap<(&str, &str), (u64, u64)> = Default::default();
        let mut events_lost = 0;
        let mut seen = HashMap::new();
        for (k, v) in rows {
            if k.reason == abi::COUNT_EVENT_LOST {
                events_lost += v.packets;
                continue;
            }
            let dir = if k.direction == abi::DIR_EGRESS { "egress" } else { "ingress" };
            let e = sums.entry((dir, abi::reason_name(k.reason))).or_default();
            e.0 += v.packets;
            e.1 += v.bytes;
            // Frames the bridge floods past a pod are no drop of its own.
            if !abi::reason_is_drop(k.reason) || k.reason == abi::R_DROP_NOT_FOR_POD {
                continue;
            }
            // What was dropped since the last export: the endpoint's counter
            // (a new endpoint's starts over), credited to the namespace and
            // the policies isolating the pod now, so totals only grow and a
            // policy added later takes no earlier drops.
            let key = (k.endpoint, k.direction, k.reason);
            let last = self.drop_counts.get(&key).copied().unwrap_or(0);
            let delta = if v.packets >= last { v.packets - last } else { v.packets };
            seen.insert(key, v.packets);
            let Some(pod) = self.last_endpoint_pods.get(&k.endpoint) else { continue };
            if delta == 0 {
                continue;
            }
            *self.namespace_drops.entry((pod.0.clone(), dir)).or_default() += delta;
            // Isolated and no rule allows: every isolating policy's drop.
            if matches!(k.reason, abi::R_DROP_POLICY | abi::R_DROP_FRAGMENT) {
                let d = if k.direction == abi::DIR_EGRESS {
                    crate::engine::Direction::Egress
                } else {
                    crate::engine::Direction::Ingress
                };
                for p in self.engine.isolating_policies(store, pod, d) {
                    *self.policy_drops.entry((p, dir)).or_default() += delta;
                }
            }
        }
        self.drop_counts = seen;
        // Series of policies and namespaces that are gone go with them.
        let exists = |name: &str| match name.split_once('/') {
            Some((ns, n)) => store.policies.contains_key(&(ns.to_string(), n.to_string())),
            None => store.cluster_policies.contains_key(name),
        };
        self.policy_drops.retain(|(p, _), _| exists(p));
        self.namespace_drops.retain(|(ns, _), _| store.namespaces.contains_key(ns));
        self.metrics.set_dataplane_verdicts(sums.iter().map(|((d, r), (p, b))| (*d, *r, *p, *b)));
        self.metrics.flow_events_lost.set(&[], events_lost as f64);
        if let Ok(n) = self.dp.events_limited() {
            self.metrics.flow_events_rate_limited.set(&["kernel"], n as f64);
        }
        let rules = self.dp.rule_counters().unwrap_or_default();
        let rule_rows = rules.iter().filter_map(|(id, v)| {
            let i = self.last_rules.binary_search_by_key(id, |r| r.id).ok()?;
            Some((&self.last_rules[i], v.packets))
        });
        self.metrics.set_policy_views(rule_rows, &self.policy_drops, &self.namespace_drops);
        // Ids of rules that are gone may be handed out again: not theirs to keep.
        if rules.iter().any(|(id, _)| self.last_rules.binary_search_by_key(id, |r| r.id).is_err()) {
            let known: std::collections::HashSet<u32> = self.last_rules.iter().map(|r| r.id).collect();
            if let Err(e) = self.dp.retain_rule_counters(|id| known.contains(&id)) {
                log::warn!("rule counters: {e}");
            }
        }
    }
}

fn store_size(store: &Store) -> usize {
    store.namespaces.len() + store.pods.len() + store.services.len() + store.policies.len() + store.nodes.len()
}

/// When the daemon loop last turned.
struct LoopProgress {
    base: Instant,
    /// Milliseconds since `base`.
    last: AtomicU64,
}

impl LoopProgress {
    fn new() -> LoopProgress {
        LoopProgress { base: Instant::now(), last: AtomicU64::new(0) }
    }

    fn mark(&self) {
        self.last.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_last(&self) -> Duration {
        self.base.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Touches the heartbeat file every `every` from its own thread, so no
/// compile or sync delays it, as long as the loop turned within `stall`.
/// Stops with its owner.
struct Heartbeat {
    shared: Arc<HeartbeatShared>,
}

struct HeartbeatShared {
    path: PathBuf,
    stall: Duration,
    progress: Arc<LoopProgress>,
    touches: AtomicU64,
    stop: AtomicBool,
}

impl Heartbeat {
    fn spawn(path: PathBuf, every: Duration, stall: Duration, progress: Arc<LoopProgress>) -> Heartbeat {
        let shared = Arc::new(HeartbeatShared {
            path,
            stall,
            progress,
            touches: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            let mut stalled = false;
            while !s.stop.load(Ordering::Relaxed) {
                let alive = s.beat();
                if alive == stalled {
                    stalled = !alive;
                    if stalled {
                        log::error!(
                            "the daemon loop has not turned for {:?}: heartbeat stopped, so CNI STATUS reports this node unavailable",
                            s.progress.since_last()
                        );
                    } else {
                        log::info!("the daemon loop turns again: heartbeat resumed");
                    }
                }
                std::thread::sleep(every);
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the heartbeat thread: {e}; CNI STATUS will report this node unavailable");
        }
        Heartbeat { shared }
    }
}

impl HeartbeatShared {
    /// Touch the file if the loop is alive; whether it is.
    fn beat(&self) -> bool {
        if self.progress.since_last() >= self.stall {
            return false;
        }
        match std::fs::write(&self.path, b"") {
            Ok(()) => {
                self.touches.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::warn!("heartbeat {}: {e}", self.path.display()),
        }
        true
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_common::registry::EndpointRecord;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A record unmatched past the grace is reported once; one matched
    /// for a moment (a new pod whose object was on its way) never is, and a
    /// record that comes back starts over. Time is given, not waited for.
    #[test]
    fn unmatched_records_are_reported_once_after_the_grace() {
        use crate::engine::Unmatched;
        let rec = |r: &str| UnmatchedRecord { record: r.into(), pod: "x/p".into(), reason: Unmatched::NoSuchPod };
        let (a, b) = (rec("ca/eth0"), rec("cb/eth0"));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = UnmatchedWatch::default();
        let names = |v: Vec<(&UnmatchedRecord, Duration)>| v.iter().map(|(u, _)| u.record.clone()).collect::<Vec<_>>();
        assert!(w.observe(&[a.clone(), b.clone()], at(0)).is_empty());
        assert!(w.observe(std::slice::from_ref(&a), at(5)).is_empty(), "b was matched at 5 s: forgotten");
        assert_eq!(names(w.observe(&[a.clone(), b.clone()], at(10))), ["ca/eth0"], "a's grace is over, b's restarted");
        assert!(w.observe(&[a.clone(), b.clone()], at(12)).is_empty(), "a is reported once");
        let both = [a.clone(), b.clone()];
        assert!(w.observe(&both, at(19)).is_empty(), "b unmatched again since 10 s");
        let due = w.observe(&both, at(20));
        assert_eq!(names(due.clone()), ["cb/eth0"]);
        assert_eq!(due[0].1, Duration::from_secs(10));
        assert!(w.observe(&[], at(21)).is_empty());
        assert!(w.observe(std::slice::from_ref(&a), at(22)).is_empty(), "back again: a new grace");
        assert_eq!(names(w.observe(&[a], at(32))), ["ca/eth0"]);
    }

    #[test]
    fn the_heartbeat_beats_while_the_loop_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policyd.heartbeat");
        let progress = Arc::new(LoopProgress::new());
        progress.mark();
        let hb = Heartbeat::spawn(path.clone(), Duration::from_millis(1), Duration::from_secs(3600), progress);
        // The loop never marks progress again, as when a compile holds it:
        // the heartbeat still beats (waiting for beats, not for a time).
        let guard = Instant::now() + Duration::from_secs(60);
        while hb.shared.touches.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < guard, "no heartbeat while the loop was busy");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(path.exists());
    }

    #[test]
    fn a_stalled_loop_stops_the_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let shared = HeartbeatShared {
            path: dir.path().join("policyd.heartbeat"),
            stall: Duration::ZERO,
            progress: Arc::new(LoopProgress::new()),
            touches: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        };
        assert!(!shared.beat());
        assert!(!shared.path.exists(), "nothing touched for a loop that does not turn");
    }

    /// The pinned maps under a bpffs root of the test's own, removed on drop.
    struct BpfRoot(PathBuf);

    impl Drop for BpfRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(name: &str, ifindex: u32, ip: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: format!("c-{name}"),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{name}"),
            network: "weir".into(),
            pod_namespace: "x".into(),
            pod_name: name.into(),
            pod_uid: String::new(),
            host_ifname: format!("veth-{name}"),
            host_ifindex: ifindex,
            ips: vec![ip.parse().unwrap()],
            mac: String::new(),
            gateways: vec![],
        }
    }

    fn pod(name: &str, app: &str, ip: &str) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "x", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    fn policy(name: &str, spec: serde_json::Value) -> k8s_openapi::api::networking::v1::NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "x"}, "spec": spec})).unwrap()
    }

    /// Ingress of app=w from 200 ipBlocks on `port`.
    fn wide(port: u16) -> k8s_openapi::api::networking::v1::NetworkPolicy {
        let from: Vec<_> = (0..200).map(|k| json!({"ipBlock": {"cidr": format!("172.16.{k}.0/24")}})).collect();
        policy(
            "wide",
            json!({"podSelector": {"matchLabels": {"app": "w"}}, "ingress": [{"from": from, "ports": [{"port": port}]}]}),
        )
    }

    /// Ports of endpoint `ifindex`'s ingress policy entries in the maps.
    fn ports_in_maps(dp: &Dataplane, ifindex: u32) -> BTreeSet<u16> {
        dp.policy_entries()
            .unwrap()
            .into_iter()
            .filter(|(m, _)| m.endpoint == ifindex)
            .filter_map(|(m, _)| Some(m.port?.start))
            .collect()
    }

    /// Each sync that writes anything ends with a new policy generation, so
    /// established flows are judged again; a sync that writes nothing
    /// starts none (the flows keep their stamp and pay nothing). The flag
    /// `--rejudge-established` lands in weir_config, the generation kept.
    #[test]
    fn root_a_sync_that_writes_starts_a_policy_generation() {
        if !is_root() {
            eprintln!("root_a_sync_that_writes_starts_a_policy_generation: skipped, needs root (BPF maps)");
            return;
        }
        let root = BpfRoot(PathBuf::from(format!("/sys/fs/bpf/weir-pd-gen-{}", std::process::id())));
        let run = tempfile::tempdir().unwrap();
        let dp = Dataplane::load_or_open(&root.0).unwrap();
        let view = Dataplane::open(&root.0).unwrap();
        let registry = Registry::under(run.path());
        let mut store = Store::default();
        store.namespaces.insert("x".into(), serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap());
        store.pods.insert(("x".into(), "w".into()), pod("w", "w", "10.0.0.1"));
        dp.admit_pod(7101, weir_bpf::pkt::test_mac(7101), &["10.0.0.1/32".parse().unwrap()], false).unwrap();
        registry.put(&record("w", 7101, "10.0.0.1")).unwrap();
        let gen = || view.config().unwrap().policy_gen;
        let mut agent =
            Agent::new(dp, Registry::under(run.path()), run.path(), Arc::new(Metrics::new()), 1000).unwrap();
        let mut sync = |store: &Store| while agent.reconcile(store, Instant::now()).unwrap() == Progress::Pending {};

        sync(&store);
        let g0 = gen();
        assert_ne!(g0, 0, "programming the first endpoint starts a generation");
        sync(&store);
        assert_eq!(gen(), g0, "nothing written, no new generation");
        store.policies.insert(("x".into(), "wide".into()), wide(443));
        sync(&store);
        assert_eq!(gen(), g0 + 1, "a policy added");
        assert_eq!(ports_in_maps(&view, 7101), BTreeSet::from([443]));
        store.policies.remove(&("x".into(), "wide".into()));
        sync(&store);
        assert_eq!(gen(), g0 + 2, "a policy removed");
        assert!(ports_in_maps(&view, 7101).is_empty());

        let flow_log = |enabled, rate| crate::flows::Options {
            enabled,
            ring_bytes: 1 << 20,
            path: run.path().join("flows.log"),
            max_bytes: 1 << 20,
            rate,
            burst: 200.0,
        };
        for (rejudge, enabled, rate, events) in [
            (false, true, 100.0, true),
            (true, false, 100.0, false),
            (true, true, 0.0, false),
            (true, true, 100.0, true),
        ] {
            configure_dataplane(&view, rejudge, &flow_log(enabled, rate)).unwrap();
            let cfg = view.config().unwrap();
            assert_eq!(cfg.flags & abi::CFG_REJUDGE_OFF == 0, rejudge);
            assert_eq!(cfg.flags & abi::CFG_EVENTS_OFF == 0, events, "enabled {enabled} rate {rate}");
            assert_eq!(cfg.policy_gen, g0 + 2, "configuration keeps the generation");
        }
        assert_eq!(view.config().unwrap().events_per_s, 300, "rate + burst per CPU");
    }

    /// A new pod's endpoint is programmed and READY between the slices of
    /// a long recompile of the running ones, whose entries stay as they
    /// were until their turn. Deterministic: the test drives the slices the
    /// daemon loop runs (one endpoint per slice here), no timing involved.
    #[test]
    fn root_a_new_endpoint_is_ready_while_a_long_recompile_is_pending() {
        if !is_root() {
            eprintln!("root_a_new_endpoint_is_ready_while_a_long_recompile_is_pending: skipped, needs root (BPF maps)");
            return;
        }
        let root = BpfRoot(PathBuf::from(format!("/sys/fs/bpf/weir-pd-slices-{}", std::process::id())));
        let run = tempfile::tempdir().unwrap();
        let dp = Dataplane::load_or_open(&root.0).unwrap();
        let registry = Registry::under(run.path());
        let running = [("w1", 7001, "10.0.0.1"), ("w2", 7002, "10.0.0.2"), ("w3", 7003, "10.0.0.3")];
        let mut store = Store::default();
        store.namespaces.insert("x".into(), serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap());
        // What CNI ADD does before waiting: a not-READY entry, then the record.
        let add = |name: &str, ifindex: u32, ip: &str| {
            dp.admit_pod(ifindex, weir_bpf::pkt::test_mac(ifindex), &[format!("{ip}/32").parse().unwrap()], false)
                .unwrap();
            registry.put(&record(name, ifindex, ip)).unwrap();
        };
        for (name, ifindex, ip) in running {
            store.pods.insert(("x".into(), name.into()), pod(name, "w", ip));
            add(name, ifindex, ip);
        }
        store.pods.insert(("x".into(), "n".into()), pod("n", "n", "10.0.0.9"));
        store.policies.insert(("x".into(), "wide".into()), wide(443));
        let dp_view = Dataplane::open(&root.0).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut agent = Agent::new(dp, Registry::under(run.path()), run.path(), metrics.clone(), 1).unwrap();
        let mut slices = 0;
        while agent.reconcile(&store, Instant::now()).unwrap() == Progress::Pending {
            slices += 1;
            assert_eq!(metrics.endpoints_pending.get(&[]), (3 - slices) as f64, "left for later slices");
        }
        assert_eq!(slices, 2, "one endpoint per slice");
        // The budget is reported: two slices stopped at it, one finished.
        assert_eq!(metrics.compile_slices.get(&["over_budget"]), 2.0);
        assert_eq!(metrics.compile_slices.get(&["complete"]), 1.0);
        assert_eq!(metrics.endpoints_pending.get(&[]), 0.0);
        for (_, ifindex, _) in running {
            assert!(dp_view.endpoint(ifindex).unwrap().unwrap().is_ready());
            assert_eq!(ports_in_maps(&dp_view, ifindex), BTreeSet::from([443]));
        }

        // Every running endpoint's policy changes: a recompile of three
        // slices. Pod n starts meanwhile, isolated by a policy of its own.
        store.policies.insert(("x".into(), "wide".into()), wide(8443));
        store.policies.insert(
            ("x".into(), "n-only".into()),
            policy("n-only", json!({"podSelector": {"matchLabels": {"app": "n"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "w"}}}], "ports": [{"port": 80}]}]})),
        );
        let n = 7009;
        dp_view.admit_pod(n, weir_bpf::pkt::test_mac(n), &["10.0.0.9/32".parse().unwrap()], false).unwrap();
        registry.put(&record("n", n, "10.0.0.9")).unwrap();

        assert_eq!(agent.reconcile(&store, Instant::now()).unwrap(), Progress::Pending);
        let ep = dp_view.endpoint(n).unwrap().unwrap();
        assert!(ep.is_ready(), "the new endpoint does not wait for the recompile");
        assert_ne!(ep.flags & abi::EP_INGRESS_ISOLATED, 0);
        assert_eq!(ports_in_maps(&dp_view, n), BTreeSet::from([80]), "READY with its policy in the maps");
        for (_, ifindex, _) in running {
            assert_eq!(ports_in_maps(&dp_view, ifindex), BTreeSet::from([443]), "pending: left as they were");
            assert!(dp_view.endpoint(ifindex).unwrap().unwrap().is_ready());
        }

        while agent.reconcile(&store, Instant::now()).unwrap() == Progress::Pending {}
        for (_, ifindex, _) in running {
            assert_eq!(ports_in_maps(&dp_view, ifindex), BTreeSet::from([8443]), "the recompile finished");
        }
    }
}
