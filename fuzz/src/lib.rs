//! The fuzz targets' logic, one module per target (`fuzz_targets/*.rs`
//! only hand the bytes over), plus the structured cluster input.

pub mod cluster;
pub mod cni;
pub mod packet;
pub mod policy;
