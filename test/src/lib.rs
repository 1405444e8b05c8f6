//! weir-e2e: Weir's NetworkPolicy conformance suite and end-to-end tests.
//!
//! The conformance cases are data (test/conformance/cases/*.yaml), written
//! from the facts of upstream's NetworkPolicy e2e suite plus Weir's own.
//! This crate holds their schema (`case`), the compact expectations and
//! their evaluation into a matrix (`expect`), the standard model of
//! namespaces, pods and Services (`model`), pod-address placeholders
//! (`placeholder`), probe results and truth tables (`probe`), the
//! `weirctl lab` driver (`lab`), the lab runner (`runner`), the verdict
//! level runner (`verdicts`, BPF_PROG_TEST_RUN, no sockets) and what both
//! runners report (`report`), and `weirctl lab explain` held against the
//! lab's probes (`explain`), and podman and containerd run privately for
//! the image's and the runtimes' tests (`runtime`) with the node around
//! them (`node`: CNI dirs, install-cni, weir-policyd, manifests). The root tests in
//! tests/conformance.rs and tests/root_verdicts.rs run the whole suite.

pub mod case;
pub mod expect;
pub mod explain;
pub mod lab;
pub mod longflow;
pub mod model;
pub mod node;
pub mod placeholder;
pub mod probe;
pub mod report;
pub mod runner;
pub mod runtime;
pub mod verdicts;
