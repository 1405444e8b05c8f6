#!/usr/bin/env bash
# The whole test suite: unit and property tests, BPF verdict tests through
# BPF_PROG_TEST_RUN, and the root tests that build pods in network
# namespaces with the real binaries (conformance suite included).
# Run as root on Linux >= 6.6: sudo bash test/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test/run.sh: run as root (the tests create network namespaces and load BPF programs)" >&2; exit 1; }
bash test/deps.sh
# Integration tests of one crate exec the binaries of others (weirctl execs
# weir and weir-policyd): build them all first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
