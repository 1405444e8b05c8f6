//! The NetworkPolicy conformance suite against the real lab: every case of
//! test/conformance/cases in a fresh `weirctl lab`, as root; once on the
//! one-node lab, and once per backend on a 3-node lab whose pods spread so
//! that every namespace spans every node.
//!
//! Needs the binaries built (`cargo build -p weirctl -p weir-cni -p
//! weir-policyd`, or WEIR_BIN_DIR). Select cases with
//! WEIR_CONFORMANCE_CASES=substr,substr; see docs/conformance.md.

use weir_e2e::case::{load_dir, Case};
use weir_e2e::lab::{Topology, Weirctl};
use weir_e2e::runner::{run_suite, selected, Config};
use weir_testsupport::is_root;

/// The cases `keep` takes on `topology`; the report goes to
/// target/weir-conformance-report<suffix>.txt.
fn suite(test: &str, topology: Topology, suffix: &str, keep: fn(&Case) -> bool) {
    if !is_root() {
        eprintln!("{test}: skipped, needs root (network namespaces, BPF)");
        return;
    }
    let ctl = Weirctl::locate().unwrap_or_else(|e| panic!("{e:#}"));
    if topology.nodes > 1 && !ctl.policyd_has_backends() {
        eprintln!("{test}: SKIPPED: weir-policyd has no --backend flag yet");
        return;
    }
    let mut cases = selected(load_dir(&weir_e2e::case::cases_dir()).unwrap_or_else(|e| panic!("{e:#}")));
    cases.retain(keep);
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

fn every_case(_: &Case) -> bool {
    true
}

/// host-gw differs from vxlan (which runs every case) only in the route to a
/// remote pod CIDR and the device `leave_node` sits on. So it runs the cases
/// whose verdicts depend on that path, and the representative ones that
/// explain checks; `WEIR_CONFORMANCE_HOST_GW=all` runs every case.
fn host_gw_case(case: &Case) -> bool {
    std::env::var("WEIR_CONFORMANCE_HOST_GW").is_ok_and(|v| v == "all")
        || case.depends_on_the_path_between_nodes()
        || weir_e2e::explain::REPRESENTATIVE.contains(&case.name.as_str())
}

#[test]
fn root_conformance_suite() {
    suite("root_conformance_suite", Topology::default(), "", every_case);
}

#[test]
fn root_conformance_3_nodes_vxlan() {
    suite("root_conformance_3_nodes_vxlan", Topology::multi(3, "vxlan"), "-3-nodes-vxlan", every_case);
}

#[test]
fn root_conformance_3_nodes_host_gw() {
    suite("root_conformance_3_nodes_host_gw", Topology::multi(3, "host-gw"), "-3-nodes-host-gw", host_gw_case);
}
