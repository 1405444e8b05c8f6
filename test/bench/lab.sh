#!/usr/bin/env bash
# lab.sh - how fast `weirctl lab` brings up the NetworkPolicy e2e model
# (3 namespaces x 3 pods, one Service each: 9 real CNI ADDs through `weir`
# with weir-policyd programming every endpoint) and how long one full
# 81-cell probe round takes, with nothing blocked and with about half the
# cells blocked (conf/examples/policies/04-half-blocked.yaml).
#
# Baselines measured in the same run, in the same rounds:
#   up          vs  up --no-policy (no weir-policyd, enforce false): the cost
#               of enforcement (BPF attach + waiting for READY) in pod start;
#   probe       vs  the same probe round in the --no-policy lab;
#   probe-half  vs  the probe timeout (a round with a blocked cell can never
#               finish before one timeout: blocked probes wait it out).
# Floors (the lab's targets): up < 5 s, probe round < 2 s with nothing
# blocked and < 3 s with half blocked.
#
# Usage: sudo bash test/bench/lab.sh   (env: REPS=5 TIMEOUT_MS=1000
#                                        BIN_DIR=<dir with weirctl, weir, weir-policyd>
#                                        (default: cargo build --release))
# Creates and removes labs "bench<pid>" and "benchnp<pid>"
# (netns weir-bench<pid>*, /run/weir/lab/bench<pid>, /sys/fs/bpf/weir-lab-bench<pid>).
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "lab.sh: run it, do not source it" >&2; return 1; fi
[ "$(id -u)" = 0 ] || { echo "lab.sh: run as root (the lab creates network namespaces)" >&2; exit 1; }
cd "$(dirname "$0")/../.."
REPS=${REPS:-5}
TIMEOUT_MS=${TIMEOUT_MS:-1000}
if [ -z "${BIN_DIR:-}" ]; then
	cargo build --release -q -p weirctl -p weir-cni -p weir-policyd
	BIN_DIR=$PWD/target/release
fi
W=$BIN_DIR/weirctl
for b in weirctl weir weir-policyd; do
	[ -x "$BIN_DIR/$b" ] || { echo "lab.sh: $BIN_DIR/$b missing" >&2; exit 1; }
done
MODEL=conf/examples/netpol-model.yaml
HALF=conf/examples/policies/04-half-blocked.yaml
LAB=bench$$
NP=benchnp$$
cleanup() {
	"$W" lab down --name "$LAB" >/dev/null 2>&1 || true
	"$W" lab down --name "$NP" >/dev/null 2>&1 || true
}
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# timed CMD...: runs CMD (output discarded), prints elapsed ms
timed() {
	local t0 t1
	t0=$(now_ms)
	"$@" >/dev/null
	t1=$(now_ms)
	echo $(( t1 - t0 ))
}
probe_json() { "$W" lab probe --name "$1" --timeout-ms "$TIMEOUT_MS" -o json; }
blocked() { probe_json "$1" | { grep -o false || true; } | wc -l; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

up=(); up_np=(); probe=(); probe_np=(); half=(); nblocked=()
for r in $(seq 1 "$REPS"); do
	# alternate which lab comes up first, so neither always gets a cold cache
	if (( r % 2 )); then
		up+=("$(timed "$W" lab up --name "$LAB" --policyd-bin "$BIN_DIR/weir-policyd" --cni-bin-dir "$BIN_DIR" -f "$MODEL")")
		up_np+=("$(timed "$W" lab up --name "$NP" --no-policy --cni-bin-dir "$BIN_DIR" -f "$MODEL")")
	else
		up_np+=("$(timed "$W" lab up --name "$NP" --no-policy --cni-bin-dir "$BIN_DIR" -f "$MODEL")")
		up+=("$(timed "$W" lab up --name "$LAB" --policyd-bin "$BIN_DIR/weir-policyd" --cni-bin-dir "$BIN_DIR" -f "$MODEL")")
	fi
	n=$(blocked "$LAB")
	[ "$n" = 0 ] || { echo "lab.sh: $n cells blocked before any policy" >&2; exit 1; }
	probe+=("$(timed probe_json "$LAB")")
	probe_np+=("$(timed probe_json "$NP")")
	"$W" lab apply --name "$LAB" -f "$HALF" >/dev/null
	# wait (untimed) until policyd has applied the policies: the count stops changing
	prev=-1
	for _ in $(seq 1 50); do
		n=$(blocked "$LAB")
		[ "$n" -gt 0 ] && [ "$n" = "$prev" ] && break
		prev=$n
	done
	nblocked+=("$n")
	half+=("$(timed probe_json "$LAB")")
	"$W" lab down --name "$LAB" >/dev/null
	"$W" lab down --name "$NP" >/dev/null
	echo "round $r: up ${up[-1]} ms (no-policy ${up_np[-1]}), probe ${probe[-1]} ms (no-policy ${probe_np[-1]}), half-blocked ($n cells) ${half[-1]} ms" >&2
done

m_up=$(median "${up[@]}"); m_up_np=$(median "${up_np[@]}")
m_probe=$(median "${probe[@]}"); m_probe_np=$(median "${probe_np[@]}")
m_half=$(median "${half[@]}"); m_blocked=$(median "${nblocked[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { if [ "$1" -lt "$2" ]; then echo "ok (< $2 ms)"; else echo "OVER (>= $2 ms)"; fi; }

echo "weirctl lab benchmark: $REPS rounds, medians; $(nproc) cores, $(uname -r); probe timeout $TIMEOUT_MS ms"
printf '%-34s %9s %14s %8s  %s\n' measure "ms" "baseline ms" ratio floor
printf '%-34s %9s %14s %8s  %s\n' "up (9 pods, 9 Services, policy)" "$m_up" "$m_up_np" "$(ratio "$m_up" "$m_up_np")" "$(verdict "$m_up" 5000)"
printf '%-34s %9s %14s %8s  %s\n' "probe 81 cells, nothing blocked" "$m_probe" "$m_probe_np" "$(ratio "$m_probe" "$m_probe_np")" "$(verdict "$m_probe" 2000)"
printf '%-34s %9s %14s %8s  %s\n' "probe 81 cells, $m_blocked blocked" "$m_half" "$TIMEOUT_MS" "$(ratio "$m_half" "$TIMEOUT_MS")" "$(verdict "$m_half" 3000)"
echo "baselines: up and the open probe against the same lab without policy (--no-policy); the half-blocked round against one probe timeout"
