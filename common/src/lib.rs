//! What the `weir` CNI binary, `weir-policyd` and `weirctl` must agree on.
//!
//! The contract between the CNI binary and policyd is deliberately tiny and
//! lives entirely on the node's filesystems, so that either side can restart
//! without the other noticing:
//! - the pinned BPF maps (layout in `bpf/include/weir_abi.h`, mirrored by the
//!   `weir-bpf` crate), in particular the endpoint entry whose READY flag is
//!   the pod-start handshake;
//! - the endpoint registry ([`registry`]): one JSON file per pod interface,
//!   written by CNI ADD, removed by CNI DEL, read and watched by policyd;
//! - this node's pod CIDRs and pod MTU ([`node_network`]), written by
//!   policyd from its Node, read by CNI ADD when `ipam.ranges` is left out.
//!
//! It also holds the one typed rtnetlink layer ([`netlink`]) both the CNI
//! binary and policyd speak to the kernel with.

pub mod netlink;
pub mod node_network;
pub mod paths;
pub mod registry;
pub mod trust;
