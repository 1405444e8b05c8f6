//! The daemon's handle on node networking: runs a reconcile when the Nodes
//! in the store changed (or a resync period passed), reports problems once
//! each (log) and always (metrics), and publishes this node's annotations.

use super::apply::NodeNetworking;
use super::desired::{Problem, Reason};
use super::publish::Publisher;
use super::Config;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct NodeAgent {
    net: NodeNetworking,
    publisher: Publisher,
    node: String,
    metrics: Arc<Metrics>,
    resync: Duration,
    seen: Option<BTreeMap<String, Node>>,
    last_run: Instant,
    last_problems: BTreeSet<Problem>,
    /// Where leave_node is attached (see `Outcome::leave_device`).
    leave_device: Option<u32>,
}

impl NodeAgent {
    pub fn new(
        cfg: Config,
        node: String,
        run_dir: PathBuf,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        resync: Duration,
    ) -> NodeAgent {
        NodeAgent {
            net: NodeNetworking::new(cfg, node.clone(), run_dir),
            publisher,
            node,
            metrics,
            resync,
            seen: None,
            last_run: Instant::now(),
            last_problems: BTreeSet::new(),
            leave_device: None,
        }
    }

    /// Reconcile if the Nodes changed since the last run or a resync period
    /// passed; otherwise nothing (a comparison of the Node map).
    pub fn on_wake(&mut self, nodes: &BTreeMap<String, Node>, dp: &weir_bpf::Dataplane) {
        if self.seen.as_ref() == Some(nodes) && self.last_run.elapsed() < self.resync {
            return;
        }
        self.seen = Some(nodes.clone());
        self.last_run = Instant::now();
        let started = Instant::now();
        let outcome = self.net.reconcile(nodes);
        if outcome.written + outcome.removed > 0 {
            log::info!(
                "node network ({}): {} entries written, {} removed, {} remote nodes, in {:?}",
                self.net.config().backend.name(),
                outcome.written,
                outcome.removed,
                outcome.remote_nodes,
                started.elapsed()
            );
        }
        self.guard_leaving(outcome.leave_device, dp);
        self.report(&outcome.problems, outcome.remote_nodes);
        if let Some(wanted) = &outcome.annotations {
            let current = nodes.get(&self.node).and_then(|n| n.metadata.annotations.as_ref());
            self.publisher.publish(&self.node, wanted, current);
        }
    }

    /// leave_node on the device to other nodes, so a Service whose backend
    /// is remote still has the source pod's egress judged (after DNAT).
    /// Idempotent; a device that changed loses it.
    fn guard_leaving(&mut self, device: Option<u32>, dp: &weir_bpf::Dataplane) {
        let Some(dev) = device else { return };
        if let Some(old) = self.leave_device.filter(|old| *old != dev) {
            if let Err(e) = dp.detach_leave_node(old) {
                log::warn!("node network: detaching leave_node from ifindex {old}: {e}");
            }
        }
        match dp.attach_leave_node(dev) {
            Ok(()) => self.leave_device = Some(dev),
            Err(e) => log::error!(
                "node network: cannot attach leave_node to ifindex {dev}: egress to Services with remote backends \
                 is not judged until it is: {e}"
            ),
        }
    }

    fn report(&mut self, problems: &[Problem], remote_nodes: usize) {
        let now: BTreeSet<Problem> = problems.iter().cloned().collect();
        for p in now.difference(&self.last_problems) {
            log::warn!("node network: {p}");
        }
        for reason in Reason::ALL {
            let n = now.iter().filter(|p| p.reason == reason).count();
            self.metrics.node_network_errors.set(&[reason.label()], n as f64);
        }
        self.metrics.remote_nodes.clear();
        self.metrics.remote_nodes.set(&[self.net.config().backend.name()], remote_nodes as f64);
        self.last_problems = now;
    }
}
