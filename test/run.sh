#!/usr/bin/env bash
# The whole test suite: unit and property tests, BPF verdict tests through
# BPF_PROG_TEST_RUN, the root tests that build pods in network namespaces
# with the real binaries (the conformance suite on one node and on three),
# and a bounded fuzzing run of every fuzz target (test/fuzz.sh).
# Run as root on Linux >= 6.6: sudo bash test/run.sh
#   FUZZ_SECONDS=60 per fuzz target; FUZZ_SECONDS=0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test/run.sh: run as root (the tests create network namespaces and load BPF programs)" >&2; exit 1; }
bash test/deps.sh
# Integration tests of one crate exec the binaries of others (weirctl execs
# weir and weir-policyd): build them all first, and the tests, before the
# fuzz build competes for the cores.
cargo build --workspace --bins
cargo test --workspace --no-run
fuzz_seconds=${FUZZ_SECONDS:-60}
fuzz_log=target/fuzz.log
if [ "$fuzz_seconds" != 0 ]; then
	# Beside the test binaries, which mostly wait on namespaces and probes:
	# its own target dir and bpffs root, nothing shared with the tests.
	FUZZ_SECONDS=$fuzz_seconds bash test/fuzz.sh >"$fuzz_log" 2>&1 &
	fuzz=$!
fi
status=0
cargo test --workspace --no-fail-fast || status=$?
if [ "$fuzz_seconds" != 0 ]; then
	if wait "$fuzz"; then
		tail -n 1 "$fuzz_log"
	else
		echo "test/run.sh: fuzzing failed; its log ($fuzz_log) ends:" >&2
		tail -n 120 "$fuzz_log" >&2
		status=1
	fi
fi
exit $status
