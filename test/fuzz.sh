#!/usr/bin/env bash
# Fuzzes for a bounded time each: the CNI config and prevResult parsers
# (cni_config), policyd's manifest parser and engine against the reference
# judgment (policy_compile), and the tc programs on random frames through
# BPF_PROG_TEST_RUN (packet_verdict). Each target starts from its committed
# corpus, fuzz/corpus/<target>/; new inputs go to a scratch directory, so
# the tree stays clean. Fails when any target crashes, panics or finds an
# invariant broken, and prints how to replay the input that did it.
#
# Needs root and bpffs (packet_verdict loads the programs in a network
# namespace of its own) and a nightly toolchain (cargo-fuzz builds with
# -Zsanitizer); installs cargo-fuzz when missing.
#
#   sudo bash test/fuzz.sh                          # 60 s per target
#   FUZZ_SECONDS=600 FUZZ_TARGETS=policy_compile sudo -E bash test/fuzz.sh
#
# Grow the committed corpus with what a long run found (keep it small):
#   cd fuzz && cargo +nightly fuzz cmin <target> corpus/<target>
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-cni_config policy_compile packet_verdict}
target_dir=${FUZZ_TARGET_DIR:-$repo/fuzz/target}

[ "$(id -u)" = 0 ] || { echo "test/fuzz.sh: run as root (packet_verdict loads BPF programs in a network namespace)" >&2; exit 1; }
bash test/deps.sh # clang and libbpf-dev build weir-bpf's programs; mounts bpffs
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "test/fuzz.sh: cargo-fuzz needs a nightly toolchain and none is installed (rustup toolchain list)" >&2
	exit 1
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
	cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# Release build with debug assertions and overflow checks (cargo-fuzz's
# default), AddressSanitizer.
cd fuzz
cargo +nightly fuzz build --target-dir "$target_dir"

scratch=$(mktemp -d /tmp/weir-fuzz.XXXXXX)
failed=()
for t in $targets; do
	[ -d "corpus/$t" ] || { echo "test/fuzz.sh: no target $t (fuzz/corpus/$t is missing)" >&2; exit 1; }
	mkdir -p "$scratch/$t" "artifacts/$t"
	before=$(ls "artifacts/$t")
	echo "== $t: ${seconds}s from fuzz/corpus/$t ($(ls "corpus/$t" | wc -l) inputs)"
	# libFuzzer writes new inputs to the first directory, reads both.
	if cargo +nightly fuzz run --target-dir "$target_dir" "$t" "$scratch/$t" "corpus/$t" -- \
		-max_total_time="$seconds" -timeout=60 -max_len=4096 -print_final_stats=1 \
		>"$scratch/$t.log" 2>&1; then
		grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$t.log" || true
	else
		failed+=("$t")
		tail -n 80 "$scratch/$t.log"
		for a in $(ls "artifacts/$t"); do
			if ! grep -qxF "$a" <<<"$before"; then
				echo "REPRODUCER: $repo/fuzz/artifacts/$t/$a"
				echo "  replay:   cd $repo/fuzz && cargo +nightly fuzz run $t artifacts/$t/$a"
				echo "  minimize: cd $repo/fuzz && cargo +nightly fuzz tmin $t artifacts/$t/$a"
			fi
		done
	fi
done

# packet_verdict removes its bpffs root on exit; a crash skips exit handlers.
for d in /sys/fs/bpf/weir-fuzz-*; do
	[ -e "$d" ] || continue
	[ -d "/proc/${d##*-}" ] || rm -rf "$d"
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "test/fuzz.sh: ${failed[*]} failed (logs in $scratch)" >&2
	exit 1
fi
rm -rf "$scratch"
echo "test/fuzz.sh: ${targets// /, } ran ${seconds}s each without a finding"
