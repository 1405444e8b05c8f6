# lib.sh - what the datapath benchmarks share; sourced by datapath.sh and
# crossnode.sh. The sourcing script sets WORK (its temp dir), RAW (the CSV),
# DUR and LATDUR, and calls kill_pids in its cleanup. TPUT_SAMPLES (default
# 3): iperf3 connections of DUR seconds per throughput measurement.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
P_IPERF=5201 P_SOCKPERF=11111 P_CRR=12865
TPUT_SAMPLES=${TPUT_SAMPLES:-3}
CPU_A=0 CPU_B=1
[ "$(nproc)" -lt 2 ] && CPU_B=0
PIDS=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Only the processes this script started, by pid.
kill_pids() {
	local p
	for p in "${PIDS[@]:-}"; do
		[ -n "$p" ] || continue
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
}

need_tools() { # $@ = tools
	local miss=() t
	for t in "$@"; do command -v "$t" >/dev/null || miss+=("$t"); done
	if [ ${#miss[@]} -gt 0 ]; then
		log "missing tools: ${miss[*]} (test/deps.sh installs them)"
		exit 1
	fi
	[ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ] || { log "bpffs not mounted at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf"; exit 1; }
}

# crr (connection rate) into $WORK, and the fill example: sets FILL.
build_tools() {
	cc -O2 -o "$WORK/crr" "$HERE/datapath/crr.c"
	(cd "$REPO" && cargo build --release --example fill -p weir-bpf >&2)
	FILL=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/fill
	[ -x "$FILL" ] || { log "fill not built at $FILL"; exit 1; }
}

spawn() { "$@" >/dev/null 2>&1 & PIDS+=($!); }
wait_port() { # $1 netns, $2 port
	local i
	for i in $(seq 50); do
		ip netns exec "$1" ss -Htln "sport = :$2" | grep -q . && return 0
		sleep 0.1
	done
	log "server on :$2 did not start"; return 1
}
emit() { echo "$1,$2,$3,$4" >>"$RAW"; }   # cfg,round,metric,value

# The three metrics, client in $3 to a server at $5 in $4: iperf3 one TCP
# stream (client CPU_A, server CPU_B), sockperf TCP ping-pong 64 B and the
# connect/request/response/close loop (both ends CPU_B).
measure_flows() { # $1 cfg, $2 round, $3 client netns, $4 server netns, $5 server ip
	local cfg=$1 rep=$2 cns=$3 sns=$4 dst=$5 out v
	emit "$cfg" "$rep" loadavg1 "$(cut -d' ' -f1 /proc/loadavg)"
	spawn ip netns exec "$sns" taskset -c $CPU_B iperf3 -s -B "$dst" -p $P_IPERF
	wait_port "$sns" $P_IPERF
	# One stream on these 2 vCPUs runs at full rate or at about two thirds
	# of it, by chance, for the whole connection (docs/benchmarks.md, "VXLAN
	# a fourth time"): the round's throughput is the median of TPUT_SAMPLES
	# connections, so one slow connection does not decide it.
	local samples=() k
	# The sourcing script may watch the throughput samples (crossnode.sh
	# INPATH_STATS): tput_begin and tput_end run around them.
	if declare -F tput_begin >/dev/null; then tput_begin "$cfg" "$rep"; fi
	for k in $(seq "$TPUT_SAMPLES"); do
		out=$(ip netns exec "$cns" taskset -c $CPU_A iperf3 -c "$dst" -p $P_IPERF -t "$DUR" -J)
		v=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out")
		emit "$cfg" "$rep" "tput_gbps_sample$k" "$v"
		samples+=("$v")
	done
	if declare -F tput_end >/dev/null; then tput_end "$cfg" "$rep"; fi
	emit "$cfg" "$rep" tput_gbps "$(python3 -c 'import statistics,sys; print("%.3f" % statistics.median(map(float, sys.argv[1:])))' "${samples[@]}")"
	spawn ip netns exec "$sns" taskset -c $CPU_B sockperf server --tcp -i "$dst" -p $P_SOCKPERF
	wait_port "$sns" $P_SOCKPERF
	out=$(ip netns exec "$cns" taskset -c $CPU_B sockperf ping-pong --tcp -i "$dst" -p $P_SOCKPERF -t "$LATDUR" -m 64 --full-rtt 2>&1 | sed 's/\x1b\[[0-9;]*m//g')
	v=$(sed -n 's/.*avg-rtt=\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
	emit "$cfg" "$rep" rr_avg_us "$v"
	emit "$cfg" "$rep" rr_per_s "$(python3 -c "print('%.0f' % (1e6 / float('$v')))")"
	spawn ip netns exec "$sns" taskset -c $CPU_B "$WORK/crr" server "$dst" $P_CRR
	wait_port "$sns" $P_CRR
	out=$(ip netns exec "$cns" taskset -c $CPU_B "$WORK/crr" client "$dst" $P_CRR "$LATDUR")
	emit "$cfg" "$rep" crr_per_s "$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' <<<"$out")"
	kill_pids
}

# `cost NAME NS ...` lines (fill --cost) of file $3 as metrics, names prefixed by $4.
emit_costs() { # $1 cfg, $2 round, $3 file, $4 prefix
	[ -s "$3" ] || return 0
	local name ns
	while read -r _ name ns _; do emit "$1" "$2" "$4$name" "$ns"; done <"$3"
	rm -f -- "$3"
}
