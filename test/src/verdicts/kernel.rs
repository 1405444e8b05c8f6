//! The kernel parts a case runs on: a freshly loaded dataplane under a
//! bpffs root of its own, and the devices BPF_PROG_TEST_RUN needs for the
//! fake pod ifindexes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Context, Result};
use weir_bpf::Dataplane;
use weir_testsupport::{netns, RemoveOnDrop};

/// A unique bpffs root holding a freshly loaded dataplane; the pins (and
/// so the maps and programs) are removed on drop, whatever happened.
pub struct BpfRoot {
    // Field order is drop order: the dataplane's handles close before the
    // pins are removed.
    dp: Dataplane,
    _pins: RemoveOnDrop,
}

static ROOT_SEQ: AtomicU32 = AtomicU32::new(0);

impl BpfRoot {
    pub fn new() -> Result<BpfRoot> {
        let n = ROOT_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = RemoveOnDrop::fresh(format!("/sys/fs/bpf/weir-verdict-{}-{n}", std::process::id()));
        let dp = Dataplane::load_or_open(path.path())
            .with_context(|| format!("loading the dataplane under {}", path.path().display()))?;
        Ok(BpfRoot { dp, _pins: path })
    }

    pub fn dp(&self) -> &Dataplane {
        &self.dp
    }
}

/// Moves the calling thread into a new network namespace of its own (the
/// fake pod devices live there and vanish with the thread). Call on a
/// dedicated std::thread.
pub fn enter_private_netns() -> Result<()> {
    netns::enter_private().context("unshare(CLONE_NEWNET) (needs root)")
}

/// The devices BPF_PROG_TEST_RUN needs for the fake ifindexes: one veth
/// pair per pod ifindex, made once in the current netns.
#[derive(Debug, Default)]
pub struct Devices {
    made: HashSet<u32>,
}

impl Devices {
    pub fn ensure(&mut self, ifindex: u32) -> Result<()> {
        if self.made.contains(&ifindex) {
            return Ok(());
        }
        let (name, peer) = (format!("wv{ifindex}"), format!("wv{ifindex}p"));
        let (idx, pidx) = (ifindex.to_string(), (ifindex + 1).to_string());
        let out = std::process::Command::new("ip")
            .args(["link", "add", &name, "index", &idx, "type", "veth", "peer", "name", &peer, "index", &pidx])
            .output()
            .context("running `ip link add` (iproute2)")?;
        ensure!(
            out.status.success(),
            "ip link add {name} index {idx}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.made.insert(ifindex);
        Ok(())
    }
}
