//! weir-policyd: turns the cluster's state into the numbers the dataplane
//! reads. `source` fills the `store`; `engine` compiles it (pure, no I/O);
//! `sync` writes the difference to the pinned maps.

pub mod daemon;
pub mod fswatch;
pub mod logging;
pub mod sync;
pub mod engine;
pub mod store;
pub mod http;
pub mod metrics;
pub mod node;
pub mod source;
