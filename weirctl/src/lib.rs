//! weirctl as a library, so tests and benchmarks drive the same code the
//! command line runs.

pub mod explain;
pub mod flows;
pub mod get;
pub mod lab;
pub mod table;
