//! CNI errors: the spec's well-known codes plus Weir's own (100+), each with
//! a message that names the offending input and what to do about it.

use serde_json::json;
use std::fmt;

/// Codes from the CNI spec ("Error" section) and Weir's plugin-specific ones.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const STATUS_UNAVAILABLE: u32 = 50;
    /// A kernel (netlink, sysctl, nft) operation failed.
    pub const KERNEL: u32 = 100;
    /// `CNI_IFNAME` already exists in the pod's network namespace.
    pub const IFNAME_EXISTS: u32 = 101;
    /// Every address of a range set is reserved.
    pub const POOL_EXHAUSTED: u32 = 102;
    /// CHECK found the pod's networking different from `prevResult`.
    pub const CHECK_MISMATCH: u32 = 103;
    /// The delegated IPAM plugin failed (its own code is in the message).
    pub const IPAM_DELEGATE: u32 = 104;
    /// The policy dataplane (pinned maps, tc attach) failed.
    pub const DATAPLANE: u32 = 105;
    /// The container already has an address in this network.
    pub const DUPLICATE_ALLOCATION: u32 = 106;
    /// A requested static address (`IP=`, `ips`) lies outside `ipam.ranges`,
    /// is a gateway, or is reserved already.
    pub const ADDRESS_UNAVAILABLE: u32 = 107;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        Self::new(code::IO, format!("{what}: {e}"))
    }
    pub fn kernel(what: impl fmt::Display, e: impl fmt::Display) -> Self {
        Self::new(code::KERNEL, format!("{what}: {e}"))
    }
    /// Prefix the message with context, keeping the code.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The spec's error object, echoing the request's `cniVersion`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}
