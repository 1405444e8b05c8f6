//! The node-side sysctls the plugin owns. `/proc/sys/net` resolves to the
//! network namespace of the thread that opens it, here the node's; the one
//! pod-side setting (`arp_notify`) goes over netlink instead, see
//! `Netlink::set_up_arp_notify`.

use crate::error::{CniError, Result};
use std::fs;

/// Set `path` to `value` unless it already holds it (a write of an unchanged
/// forwarding sysctl still walks every device).
pub fn ensure(path: &str, value: &str) -> Result<()> {
    match fs::read_to_string(path) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => fs::write(path, value).map_err(|e| CniError::kernel(format!("cannot set {path}={value}"), e)),
    }
}

/// Forwarding for each family the pods use (in the node's namespace).
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<()> {
    if v4 {
        ensure("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    if v6 {
        ensure("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}
