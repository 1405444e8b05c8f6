//! The `weir` CNI plugin: a bridge plugin with built-in host-local IPAM and,
//! when `policy.enforce` is on, registration with Weir's policy dataplane.
//!
//! Layout: `cmd/` one module per CNI command; `config` the runtime's input;
//! `request` the static address and MAC a runtime may ask for;
//! `result` the per-version result; `ipam/` the allocator (pure) and the
//! host-local disk store; `netlink` + `netns` the kernel; `bridge`, `masq`,
//! `sysctl` node plumbing; `dataplane` the only door to weir-bpf.

pub mod background;
pub mod bridge;
pub mod cmd;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod ip;
pub mod ipam;
pub mod masq;
pub mod naming;
/// The typed rtnetlink layer, shared with weir-policyd.
pub use weir_common::netlink;
pub mod netns;
pub mod request;
pub mod result;
pub mod sysctl;
