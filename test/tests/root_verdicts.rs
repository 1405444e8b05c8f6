//! The conformance cases judged at the verdict level: every case of
//! test/conformance/cases compiled by the real engine, written by the real
//! sync into a fresh dataplane, and every probe cell run through from_pod
//! and to_pod with BPF_PROG_TEST_RUN (no sockets, so SCTP is judged too).
//! Needs root (BPF, bpffs, a private network namespace). Select cases with
//! WEIR_CONFORMANCE_CASES as for the lab runner; see docs/conformance.md.

use weir_e2e::case::load_dir;
use weir_e2e::case::Case;
use weir_e2e::runner::selected;
use weir_e2e::verdicts::{enter_private_netns, run_case, run_suite, Devices, Status};
use weir_testsupport::is_root;

#[test]
fn root_verdict_conformance() {
    if !is_root() {
        eprintln!("root_verdict_conformance: skipped, needs root (BPF, bpffs)");
        return;
    }
    let cases = selected(load_dir(&weir_e2e::case::cases_dir()).unwrap_or_else(|e| panic!("{e:#}")));
    assert!(!cases.is_empty(), "WEIR_CONFORMANCE_CASES selected no case");
    // A thread of its own: it enters a private network namespace for the
    // fake pod devices, which vanish with it.
    let report = std::thread::spawn(move || {
        enter_private_netns().unwrap_or_else(|e| panic!("{e:#}"));
        run_suite(&cases)
    })
    .join()
    .expect("the verdict runner thread panicked");
    let text = report.render();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/weir-verdict-report.txt");
    if let Err(e) = std::fs::write(&out, &text) {
        eprintln!("could not write {}: {e}", out.display());
    }
    eprintln!("{text}");
    assert_eq!(report.failed(), 0, "{}", report.summary_line());
    assert!(report.passed() > 0, "{}", report.summary_line());
}

/// The runner can fail: an SCTP default-deny whose expectation claims
/// everything is allowed must fail on exactly the cells into x, each
/// dropped at to_pod by the ingress policy; the true expectation passes.
#[test]
fn root_verdicts_fail_on_a_wrong_expectation() {
    if !is_root() {
        eprintln!("root_verdicts_fail_on_a_wrong_expectation: skipped, needs root");
        return;
    }
    let case = |expect: &str| {
        let text = format!(
            r#"
name: control
origin: weir
reference: "a control of the verdict runner"
protocols: [SCTP]
ports: [80]
sctp: verdict-only
steps:
  - apply:
      - kind: NetworkPolicy
        metadata: {{name: deny-ingress, namespace: x}}
        spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
  - probe: {{port: 80, protocol: SCTP, expect: {expect}}}
"#
        );
        Case::parse(&text, std::path::Path::new("control.yaml")).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let (wrong, right) = (case("{default: allow}"), case("{deny: [{to: \"x/*\"}]}"));
    let (w, r) = std::thread::spawn(move || {
        enter_private_netns().unwrap_or_else(|e| panic!("{e:#}"));
        let mut devices = Devices::default();
        (run_case(&mut devices, &wrong), run_case(&mut devices, &right))
    })
    .join()
    .expect("runner thread");
    assert_eq!(w.status, Status::Fail, "{}", w.detail);
    assert!(w.detail.contains("incorrect 24"), "9 sources x 3 pods of x minus loopback: {}", w.detail);
    assert!(w.detail.contains("request at to_pod(dst)"), "{}", w.detail);
    assert_eq!(r.status, Status::Pass, "{}", r.detail);
}
