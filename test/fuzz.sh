#!/usr/bin/env bash
# Fuzzes for a bounded time each: the CNI config and prevResult parsers
# (cni_config), policyd's manifest parser and engine against the reference
# judgment (policy_compile), and the tc programs on random frames through
# BPF_PROG_TEST_RUN (packet_verdict). Each target starts from its committed
# corpus, fuzz/corpus/<target>/; new inputs go to a scratch directory, so
# the tree stays clean. Exits 1 when any target crashes, panics or finds an
# invariant broken, and prints how to replay the input that did it; 0 when
# every target ran its time without a finding.
#
# Needs root and bpffs (packet_verdict loads the programs in a network
# namespace of its own); installs cargo-fuzz when missing.
#
# Toolchain: stable Rust and no sanitizer by default. The targets are
# safe Rust and the BPF programs run in the kernel, so a sanitizer has
# little to catch here, and AddressSanitizer needs nightly's -Zsanitizer,
# which a machine with only stable Rust cannot build. libFuzzer's
# coverage instrumentation, debug assertions and overflow checks work on
# stable. Where a nightly exists, FUZZ_SANITIZER=address builds with
# AddressSanitizer through +nightly.
#
#   sudo bash test/fuzz.sh                          # 60 s per target
#   FUZZ_SECONDS=600 FUZZ_TARGETS=policy_compile sudo -E bash test/fuzz.sh
#   FUZZ_SANITIZER=address sudo -E bash test/fuzz.sh   # needs nightly
#
# Keep the committed corpus small: seeds with names that say what they
# are (fuzz/examples/seed_corpus.rs writes them) and the reproducers of
# findings, not a minimized dump of what a long run found.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-cni_config policy_compile packet_verdict}
target_dir=${FUZZ_TARGET_DIR:-$repo/fuzz/target}
sanitizer=${FUZZ_SANITIZER:-none}
case "$sanitizer" in
none) toolchain=${FUZZ_TOOLCHAIN:-stable} ;;
*) toolchain=${FUZZ_TOOLCHAIN:-nightly} ;; # -Zsanitizer is nightly-only
esac

[ "$(id -u)" = 0 ] || { echo "test/fuzz.sh: run as root (packet_verdict loads BPF programs in a network namespace)" >&2; exit 1; }
bash test/deps.sh # clang and libbpf-dev build weir-bpf's programs; mounts bpffs
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
	echo "test/fuzz.sh: no $toolchain toolchain (rustup toolchain list);" \
		"FUZZ_SANITIZER=$sanitizer needs it (FUZZ_SANITIZER=none builds on stable)" >&2
	exit 1
fi
if [ "$(cargo "+$toolchain" fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
	cargo "+$toolchain" install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

scratch=$(mktemp -d /tmp/weir-fuzz.XXXXXX)
# packet_verdict removes its bpffs root at exit and its network namespace
# is its own (it goes with the process), but a crash skips exit handlers:
# remove the roots of fuzz processes that are gone, whatever way this ends.
cleanup() {
	for d in /sys/fs/bpf/weir-fuzz-*; do
		[ -e "$d" ] || continue
		[ -d "/proc/${d##*-}" ] || rm -rf "$d"
	done
}
trap cleanup EXIT

# Release build with debug assertions and overflow checks (cargo-fuzz's
# default).
fuzz() {
	cargo "+$toolchain" fuzz "$1" --sanitizer "$sanitizer" --target-dir "$target_dir" "${@:2}"
}
how="cargo +$toolchain fuzz <cmd> --sanitizer $sanitizer --target-dir $target_dir"
cd fuzz
fuzz build

failed=()
for t in $targets; do
	[ -d "corpus/$t" ] || { echo "test/fuzz.sh: no target $t (fuzz/corpus/$t is missing)" >&2; exit 1; }
	mkdir -p "$scratch/$t" "artifacts/$t"
	before=$(ls "artifacts/$t")
	echo "== $t: ${seconds}s from fuzz/corpus/$t ($(ls "corpus/$t" | wc -l) inputs)"
	# libFuzzer writes new inputs to the first directory, reads both.
	if fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
		-max_total_time="$seconds" -timeout=60 -max_len=4096 -print_final_stats=1 \
		>"$scratch/$t.log" 2>&1; then
		# The final coverage line and the run's totals.
		grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" || true
		grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$scratch/$t.log" || true
	else
		failed+=("$t")
		tail -n 80 "$scratch/$t.log"
		for a in $(ls "artifacts/$t"); do
			if ! grep -qxF "$a" <<<"$before"; then
				echo "REPRODUCER: $repo/fuzz/artifacts/$t/$a"
				echo "  replay:   cd $repo/fuzz && ${how/<cmd>/run} $t artifacts/$t/$a"
				echo "  minimize: cd $repo/fuzz && ${how/<cmd>/tmin} $t artifacts/$t/$a"
			fi
		done
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	echo "test/fuzz.sh: ${failed[*]} failed (logs in $scratch)" >&2
	exit 1
fi
rm -rf "$scratch"
echo "test/fuzz.sh: ${targets// /, } ran ${seconds}s each without a finding"
