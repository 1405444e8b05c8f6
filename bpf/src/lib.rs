//! placeholder, replaced by the dataplane crate
