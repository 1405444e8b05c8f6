#!/usr/bin/env bash
# datapath.sh - Weir's dataplane against no policy, iptables, ipset and nft sets.
#
# Topology (all in namespaces this script creates, removed on exit):
#   wb-pod1 <-veth wb1c|wb1h-> [wb-node: bridge wbbr0] <-veth wb2h|wb2c-> wb-pod2
# Configs (interleaved rep-major so drift hits every config alike):
#   base          no program, bridge-nf-call-iptables=0
#   null          a program that passes everything on both hooks of both host
#                 veths (TCX): the cost of the hooks alone, Weir's fixed floor
#   weir-N        Weir's from_pod/to_pod on both host veths (TCX), both pods
#                 isolated in both directions, the flow allowed by policy,
#                 ipcache and policy maps padded to N entries
#   ipt-N         br_netfilter on, N non-matching FORWARD rules, then ACCEPT
#   ipset-N       one FORWARD rule matching a hash:ip,port,ip set of N members
#   nftset-N      native nftables, one rule on a concatenated set of N elements
# Metrics: iperf3 TCP throughput (1 stream, client CPU0 / server CPU1),
#   sockperf TCP ping-pong (64 B, both on CPU1), TCP connect/request/response/
#   close rate (test/bench/datapath/crr.c, both on CPU1).
#
# Usage (root, from the repository):  bash test/bench/datapath.sh
#   env: REPS=3 DUR=5 LATDUR=5 CONFIGS="base null weir-1 weir-1k weir-100k ipt-1k ipt-10k ipset-10k nftset-10k"
#        OUTDIR=test/bench/results/<utc time>
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "datapath.sh: run it, do not source it" >&2; return 1; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-3}
DUR=${DUR:-5}
LATDUR=${LATDUR:-5}
CONFIGS=${CONFIGS:-"base null weir-1 weir-1k weir-100k ipt-1k ipt-10k ipset-10k nftset-10k"}
OUTDIR=${OUTDIR:-$HERE/results/datapath-$(date -u +%Y%m%dT%H%M%SZ)}
ROOT=/sys/fs/bpf/weir-bench-$$
IP1=10.251.0.1
IP2=10.251.0.2
# fixed pod MACs: Weir's endpoint entries hold them (fill --client IP=DEV=MAC)
MAC1=02:77:00:00:00:01
MAC2=02:77:00:00:00:02
P_IPERF=5201 P_SOCKPERF=11111 P_CRR=12865
CPU_A=0 CPU_B=1
[ "$(nproc)" -lt 2 ] && CPU_B=0
WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
PIDS=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

kill_pids() {
	local p
	for p in "${PIDS[@]:-}"; do
		[ -n "$p" ] || continue
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
}
del_ns() { ip netns del "$1" 2>/dev/null || true; }
topo_down() {
	kill_pids
	del_ns wb-pod1; del_ns wb-pod2; del_ns wb-node
	rm -rf -- "$ROOT"
}
cleanup() {
	set +e
	topo_down
	case $WORK in /tmp/weir-bench.??????) rm -rf -- "$WORK" ;; esac
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need_tools() {
	local miss=() t
	for t in ip iperf3 sockperf ipset nft iptables-nft nsenter taskset python3 cc cargo clang; do
		command -v "$t" >/dev/null || miss+=("$t")
	done
	if [ ${#miss[@]} -gt 0 ]; then
		log "missing tools: ${miss[*]} (apt-get install iproute2 iperf3 sockperf ipset nftables iptables util-linux python3 gcc)"
		exit 1
	fi
	[ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ] || { log "bpffs not mounted at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf"; exit 1; }
}

build() {
	cc -O2 -o "$WORK/crr" "$HERE/datapath/crr.c"
	clang -O2 -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -c "$HERE/datapath/null.bpf.c" -o "$WORK/null.o"
	(cd "$REPO" && cargo build --release --example fill -p weir-bpf >&2)
	FILL=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/fill
	[ -x "$FILL" ] || { log "fill not built at $FILL"; exit 1; }
}

topo_up() {
	topo_down
	ip netns add wb-node; ip netns add wb-pod1; ip netns add wb-pod2
	ip -n wb-node link set lo up
	ip -n wb-node link add wbbr0 type bridge
	ip -n wb-node link set wbbr0 up
	local i m1 m2 mac
	for i in 1 2; do
		mac=MAC$i
		ip -n wb-node link add wb${i}h type veth peer name wb${i}c address "${!mac}" netns wb-pod$i
		ip -n wb-node link set wb${i}h master wbbr0 up
		ip -n wb-pod$i link set lo up
		ip -n wb-pod$i addr add 10.251.0.$i/24 dev wb${i}c
		ip -n wb-pod$i link set wb${i}c up
	done
	# static neighbours: no ARP in the measured path
	m1=$(ip -n wb-pod1 -br link show wb1c | awk '{print $3}')
	m2=$(ip -n wb-pod2 -br link show wb2c | awk '{print $3}')
	ip -n wb-pod1 neigh replace $IP2 lladdr "$m2" dev wb1c nud permanent
	ip -n wb-pod2 neigh replace $IP1 lladdr "$m1" dev wb2c nud permanent
	nfcall 0
	sleep 0.2
}
nfcall() { ip netns exec wb-node sysctl -qw net.bridge.bridge-nf-call-iptables="$1" 2>/dev/null || true; }
num() { case $1 in *k) echo $(( ${1%k} * 1000 ));; *) echo "$1";; esac; }

gen_ipt_rules() { # $1 = N
	python3 - "$1" "$IP2" <<'PY'
import sys
n, ip2 = int(sys.argv[1]), sys.argv[2]
print('*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]')
for i in range(n):
    print('-A FORWARD -s 10.252.%d.%d/32 -d %s/32 -p tcp -m tcp --dport %d -j ACCEPT'
          % (i // 250, i % 250 + 1, ip2, 1000 + i % 50000))
print('-A FORWARD -j ACCEPT\nCOMMIT')
PY
}
gen_ipset() { # $1 = N
	python3 - "$1" "$IP1" "$IP2" "$P_IPERF" "$P_SOCKPERF" "$P_CRR" <<'PY'
import sys
n, ip1, ip2 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
print('create wb-allow hash:ip,port,ip family inet hashsize 16384 maxelem 262144')
for p in sys.argv[4:7]:
    print('add wb-allow %s,tcp:%s,%s' % (ip1, p, ip2))
for i in range(max(0, n - 3)):
    print('add wb-allow 10.252.%d.%d,tcp:%d,10.253.%d.%d' % ((i >> 8) & 255, i & 255, 1000 + i % 50000, (i >> 16) & 255, (i >> 8) & 255))
PY
}
gen_nft() { # $1 = N
	python3 - "$1" "$IP1" "$IP2" "$P_IPERF" "$P_SOCKPERF" "$P_CRR" <<'PY'
import sys
n, ip1, ip2 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
el = ['%s . %s . %s' % (ip1, ip2, p) for p in sys.argv[4:7]]
el += ['10.252.%d.%d . 10.253.%d.%d . %d' % ((i >> 8) & 255, i & 255, (i >> 16) & 255, (i >> 8) & 255, 1000 + i % 50000)
       for i in range(max(0, n - 3))]
print('table ip wb {\n set allow {\n  type ipv4_addr . ipv4_addr . inet_service\n  size 262144')
print('  elements = { ' + ', '.join(el) + ' }\n }')
print(' chain wbfwd {\n  type filter hook forward priority 0; policy accept;')
print('  ip saddr . ip daddr . tcp dport @allow counter accept\n  counter accept\n }\n}')
PY
}

apply_cfg() { # $1 = config
	local cfg=$1 kind=${1%%-*} n=0
	case $cfg in *-*) n=$(num "${cfg#*-}") ;; esac
	case $kind in
	base) nfcall 0 ;;
	null)
		nfcall 0
		"$FILL" --root "$ROOT" --netns /run/netns/wb-node --pass-all "$WORK/null.o" --devs wb1h,wb2h
		;;
	weir)
		nfcall 0
		"$FILL" --root "$ROOT" --netns /run/netns/wb-node --client $IP1=wb1h=$MAC1 --server $IP2=wb2h=$MAC2 \
			--ports $P_IPERF,$P_SOCKPERF,$P_CRR --entries "$n" --cost >"$WORK/cost.txt"
		;;
	ipt)
		nfcall 1
		gen_ipt_rules "$n" >"$WORK/ipt.rules"
		ip netns exec wb-node iptables-nft-restore <"$WORK/ipt.rules"
		;;
	ipset)
		nfcall 1
		gen_ipset "$n" >"$WORK/ipset.txt"
		ip netns exec wb-node ipset restore <"$WORK/ipset.txt"
		printf '*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m set --match-set wb-allow src,dst,dst -j ACCEPT\n-A FORWARD -j ACCEPT\nCOMMIT\n' |
			ip netns exec wb-node iptables-nft-restore
		;;
	nftset)
		nfcall 1
		gen_nft "$n" >"$WORK/nft.txt"
		ip netns exec wb-node nft -f "$WORK/nft.txt"
		;;
	*) log "unknown config $cfg"; exit 2 ;;
	esac
}

# evidence that the policy path really ran
evidence() {
	case ${1%%-*} in
	weir) "$FILL" --root "$ROOT" --counters | tr '\n' ' ' ;;
	ipt|ipset) ip netns exec wb-node iptables-nft -L FORWARD -v -x -n | awk 'NR>2 {r++; last=$1} END {printf "rules=%d final_accept_pkts=%s", r, last}' ;;
	nftset) ip netns exec wb-node nft list chain ip wb wbfwd | grep -o 'counter packets [0-9]*' | tr '\n' ' ' ;;
	*) echo - ;;
	esac
}

spawn() { "$@" >/dev/null 2>&1 & PIDS+=($!); }
wait_port() {
	local i
	for i in $(seq 50); do
		ip netns exec "$1" ss -Htln "sport = :$2" | grep -q . && return 0
		sleep 0.1
	done
	log "server on :$2 did not start"; return 1
}
RAW=""
emit() { echo "$1,$2,$3,$4" >>"$RAW"; }

measure() { # $1 cfg, $2 rep
	local cfg=$1 rep=$2 out v gbps
	emit "$cfg" "$rep" loadavg1 "$(cut -d' ' -f1 /proc/loadavg)"
	if [ -s "$WORK/cost.txt" ]; then   # in-kernel ns per packet (BPF_PROG_TEST_RUN, repeat)
		while read -r _ name ns _; do emit "$cfg" "$rep" "$name" "$ns"; done <"$WORK/cost.txt"
		rm -f "$WORK/cost.txt"
	fi
	spawn ip netns exec wb-pod2 taskset -c $CPU_B iperf3 -s -B $IP2 -p $P_IPERF
	wait_port wb-pod2 $P_IPERF
	out=$(ip netns exec wb-pod1 taskset -c $CPU_A iperf3 -c $IP2 -p $P_IPERF -t "$DUR" -J)
	gbps=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out")
	emit "$cfg" "$rep" tput_gbps "$gbps"
	spawn ip netns exec wb-pod2 taskset -c $CPU_B sockperf server --tcp -i $IP2 -p $P_SOCKPERF
	wait_port wb-pod2 $P_SOCKPERF
	out=$(ip netns exec wb-pod1 taskset -c $CPU_B sockperf ping-pong --tcp -i $IP2 -p $P_SOCKPERF -t "$LATDUR" -m 64 --full-rtt 2>&1 | sed 's/\x1b\[[0-9;]*m//g')
	v=$(sed -n 's/.*avg-rtt=\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
	emit "$cfg" "$rep" rr_avg_us "$v"
	emit "$cfg" "$rep" rr_per_s "$(python3 -c "print('%.0f' % (1e6 / float('$v')))")"
	spawn ip netns exec wb-pod2 taskset -c $CPU_B "$WORK/crr" server $IP2 $P_CRR
	wait_port wb-pod2 $P_CRR
	out=$(ip netns exec wb-pod1 taskset -c $CPU_B "$WORK/crr" client $IP2 $P_CRR "$LATDUR")
	emit "$cfg" "$rep" crr_per_s "$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' <<<"$out")"
	kill_pids
	echo "$cfg,$rep,check,$(evidence "$cfg" | tr ',' ' ')" >>"$RAW"
}

summarize() {
	python3 - "$RAW" "$CONFIGS" <<'PY'
import sys, statistics as st, collections
raw, configs = sys.argv[1], sys.argv[2].split()
vals = collections.defaultdict(dict)   # (cfg, metric) -> {rep: value}
for line in open(raw):
    c, rep, m, v = line.rstrip('\n').split(',', 3)
    try:
        vals[(c, m)][rep] = float(v)
    except ValueError:
        pass
def med(c, m):
    xs = list(vals.get((c, m), {}).values())
    return st.median(xs) if xs else float('nan')
def ratios(c, ref, m):
    # paired by rep: each config against the reference measured in the same
    # round, so load drift across the run cancels out
    a, b = vals.get((c, m), {}), vals.get((ref, m), {})
    return [a[r] / b[r] for r in a if r in b and b[r]]
def rmed(c, ref, m):
    xs = ratios(c, ref, m)
    return st.median(xs) if xs else float('nan')
def rspread(c, ref, m):
    xs = ratios(c, ref, m)
    return (max(xs) - min(xs)) if len(xs) > 1 else 0.0
metrics = [('tput_gbps', 'throughput Gbit/s'), ('rr_per_s', 'request/response per s'), ('crr_per_s', 'new connections per s')]
print('Median of per-round ratios to base (min..max over rounds); absolute medians in brackets.')
print()
print('| config | ' + ' | '.join(t for _, t in metrics) + ' |')
print('|---|' + '---|' * len(metrics))
for c in configs:
    cells = []
    for m, _ in metrics:
        xs = ratios(c, 'base', m) or [float('nan')]
        cells.append('%.3f (%.2f..%.2f) [%.4g]' % (rmed(c, 'base', m), min(xs), max(xs), med(c, m)))
    print(f'| {c} | ' + ' | '.join(cells) + ' |')
print()
costs = sorted({m for (c, m) in vals if m.endswith('_ns')})
if costs:
    wc = [c for c in configs if c.startswith('weir')]
    print('In-kernel program cost per packet, ns (BPF_PROG_TEST_RUN mean, median over rounds):')
    print()
    print('| path | ' + ' | '.join(wc) + ' |')
    print('|---|' + '---|' * len(wc))
    for m in costs:
        print(f'| {m[:-3]} | ' + ' | '.join('%.0f' % med(c, m) for c in wc) + ' |')
    print()
load = [v for (c, m), d in vals.items() if m == 'loadavg1' for v in d.values()]
if load:
    print(f'load average during the run: {min(load):.2f}..{max(load):.2f} on {__import__("os").cpu_count()} CPUs')
if 'weir-100k' in configs and 'base' in configs:
    floors = {'tput_gbps': 0.95, 'rr_per_s': 0.92, 'crr_per_s': 0.90}
    for m, f in floors.items():
        r = rmed('weir-100k', 'base', m)
        print(f'floor {m}: weir-100k/base = {r:.3f} (floor {f}) {"OK" if r >= f else "BELOW"}')
    if 'weir-1' in configs:
        for m, _ in metrics:
            r = rmed('weir-100k', 'weir-1', m)
            print(f'1 vs 100k {m}: weir-100k/weir-1 = {r:.3f}; base round-to-round spread {rspread("weir-1", "base", m):.2f}')
    if 'null' in configs:
        for m, _ in metrics:
            print(f'hooks alone {m}: null/base = {rmed("null", "base", m):.3f}; Weir\'s logic on top: weir-100k/null = {rmed("weir-100k", "null", m):.3f}')
    if 'nftset-10k' in configs:
        for m, _ in metrics:
            r = rmed('weir-100k', 'nftset-10k', m)
            print(f'weir-100k vs nftset-10k {m}: {r:.3f} {"ahead" if r > 1 else "BEHIND"}')
PY
}

main() {
	[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
	need_tools
	build
	mkdir -p "$OUTDIR"
	RAW=$OUTDIR/raw.csv
	: >"$RAW"
	{ uname -r; nproc; date -u; echo "REPS=$REPS DUR=$DUR LATDUR=$LATDUR CONFIGS=$CONFIGS"; } >"$OUTDIR/env.txt"
	local rep cfg
	for rep in $(seq "$REPS"); do
		for cfg in $CONFIGS; do
			log "rep $rep/$REPS: $cfg"
			topo_up
			apply_cfg "$cfg"
			measure "$cfg" "$rep"
			topo_down
		done
	done
	summarize | tee "$OUTDIR/summary.md"
	log "results in $OUTDIR"
}
main "$@"
