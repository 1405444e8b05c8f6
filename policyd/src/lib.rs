//! weir-policyd: turns the cluster's state into the numbers the dataplane
//! reads. `source` fills the `store`; `engine` compiles it (pure, no I/O);
//! `sync` writes the difference to the pinned maps.

pub mod api;
pub mod cluster_network_policy;
pub mod daemon;
pub mod engine;
pub mod flows;
pub mod fswatch;
pub mod http;
pub mod install;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod source;
pub mod store;
pub mod sync;
