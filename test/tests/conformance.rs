//! The NetworkPolicy conformance suite against the real lab: every case of
//! test/conformance/cases in a fresh `weirctl lab`, as root; once on the
//! one-node lab, and once per backend on a 3-node lab whose pods spread so
//! that every namespace spans every node.
//!
//! Needs the binaries built (`cargo build -p weirctl -p weir-cni -p
//! weir-policyd`, or WEIR_BIN_DIR). Select cases with
//! WEIR_CONFORMANCE_CASES=substr,substr; see docs/conformance.md.

use weir_e2e::case::load_dir;
use weir_e2e::lab::{Topology, Weirctl};
use weir_e2e::runner::{run_suite, selected, Config};
use weir_testsupport::is_root;

/// The whole suite on `topology`; the report goes to
/// target/weir-conformance-report<suffix>.txt.
fn suite(test: &str, topology: Topology, suffix: &str) {
    if !is_root() {
        eprintln!("{test}: skipped, needs root (network namespaces, BPF)");
        return;
    }
    let ctl = Weirctl::locate().unwrap_or_else(|e| panic!("{e:#}"));
    if topology.nodes > 1 && !ctl.policyd_has_backends() {
        eprintln!("{test}: SKIPPED: weir-policyd has no --backend flag yet");
        return;
    }
    let cases = selected(load_dir(&weir_e2e::case::cases_dir()).unwrap_or_else(|e| panic!("{e:#}")));
    assert!(!cases.is_empty(), "WEIR_CONFORMANCE_CASES selected no case");
    let mut cfg = Config::with_topology(ctl, topology);
    cfg.ctl = cfg.ctl.snapshot(&cfg.work_dir.join("bin")).unwrap_or_else(|e| panic!("{e:#}"));
    let report = run_suite(&cfg, &cases);
    let text = report.render();
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/weir-conformance-report{suffix}.txt"));
    if let Err(e) = std::fs::write(&out, &text) {
        eprintln!("could not write {}: {e}", out.display());
    }
    eprintln!("{text}");
    assert_eq!(report.failed(), 0, "{}", report.summary_line());
}

#[test]
fn root_conformance_suite() {
    suite("root_conformance_suite", Topology::default(), "");
}

#[test]
fn root_conformance_3_nodes_vxlan() {
    suite("root_conformance_3_nodes_vxlan", Topology::multi(3, "vxlan"), "-3-nodes-vxlan");
}

#[test]
fn root_conformance_3_nodes_host_gw() {
    suite("root_conformance_3_nodes_host_gw", Topology::multi(3, "host-gw"), "-3-nodes-host-gw");
}
