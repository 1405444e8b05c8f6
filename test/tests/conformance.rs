//! The NetworkPolicy conformance suite against the real lab: every case of
//! test/conformance/cases in a fresh `weirctl lab`, as root.
//!
//! Needs the binaries built (`cargo build -p weirctl -p weir-cni -p
//! weir-policyd`, or WEIR_BIN_DIR). Select cases with
//! WEIR_CONFORMANCE_CASES=substr,substr; see docs/conformance.md.

use weir_e2e::case::load_dir;
use weir_e2e::lab::Weirctl;
use weir_e2e::runner::{run_suite, selected, Config};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn root_conformance_suite() {
    if !is_root() {
        eprintln!("root_conformance_suite: skipped, needs root (network namespaces, BPF)");
        return;
    }
    let ctl = Weirctl::locate().unwrap_or_else(|e| panic!("{e:#}"));
    let cases =
        selected(load_dir(&weir_e2e::case::cases_dir()).unwrap_or_else(|e| panic!("{e:#}")));
    assert!(!cases.is_empty(), "WEIR_CONFORMANCE_CASES selected no case");
    let mut cfg = Config::new(ctl);
    cfg.ctl = cfg
        .ctl
        .snapshot(&cfg.work_dir.join("bin"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let report = run_suite(&cfg, &cases);
    let text = report.render();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/weir-conformance-report.txt");
    if let Err(e) = std::fs::write(&out, &text) {
        eprintln!("could not write {}: {e}", out.display());
    }
    eprintln!("{text}");
    assert_eq!(report.failed(), 0, "{}", report.summary_line());
}
