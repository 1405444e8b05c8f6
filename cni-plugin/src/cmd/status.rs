//! STATUS: cheap (the runtime polls it every few seconds). Exit 0 when an
//! ADD could be served, code 50 otherwise. What is checked:
//! - host-local: some range set with every address reserved (file names
//!   only; nothing is opened or locked), or no ranges yet (left out of the
//!   config and this node's network file not written by policyd);
//! - policy.enforce: the pinned maps exist under policy.bpffsRoot, and, when
//!   weir-policyd publishes a heartbeat file (`<runDir>/policyd.heartbeat`),
//!   that it was touched within the last 30 s.

use crate::config::{Ipam, NetConf};
use crate::dataplane::Dataplane;
use crate::error::{code, CniError, Result};
use std::net::IpAddr;
use std::time::SystemTime;
use weir_common::paths::{POLICYD_HEARTBEAT as HEARTBEAT_FILE, POLICYD_HEARTBEAT_MAX_AGE as HEARTBEAT_MAX_AGE};

fn unavailable(msg: String) -> CniError {
    CniError::new(code::STATUS_UNAVAILABLE, msg)
}

pub fn status(conf: &NetConf) -> Result<()> {
    if let Ipam::HostLocal(h) = &conf.ipam {
        if let Some(why) = &h.ranges_pending {
            return Err(unavailable(why.clone()));
        }
        let dir = conf.store_dir().expect("host-local");
        let names: Vec<IpAddr> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect(),
            Err(_) => vec![],
        };
        for (i, set) in h.range_sets.iter().enumerate() {
            let used =
                names.iter().filter(|a| set.ranges.iter().any(|r| r.contains(**a) && **a != r.gateway)).count() as u128;
            if used >= set.capacity() {
                return Err(unavailable(format!(
                    "ipam.ranges[{i}] is exhausted ({used} of {} addresses reserved in {}): ADD would fail; \
                     delete pods, run GC or widen the range",
                    set.capacity(),
                    dir.display()
                )));
            }
        }
    }
    if conf.policy.enforce {
        if !Dataplane::pins_present(&conf.policy) {
            return Err(unavailable(format!(
                "policy.enforce is true but the pinned maps are missing under {} (weir_endpoints); start weir-policyd",
                conf.policy.bpffs_root.display()
            )));
        }
        let hb = conf.policy.run_dir.join(HEARTBEAT_FILE);
        if let Ok(meta) = std::fs::metadata(&hb) {
            let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
            if age > HEARTBEAT_MAX_AGE {
                return Err(unavailable(format!(
                    "weir-policyd heartbeat {} is {} s old: weir-policyd is not running; start it",
                    hb.display(),
                    age.as_secs()
                )));
            }
        }
    }
    Ok(())
}
