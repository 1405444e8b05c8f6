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
#   env: REPS=3 DUR=5 TPUT_SAMPLES=3 LATDUR=5 CONFIGS="base null weir-1 weir-1k weir-100k ipt-1k ipt-10k ipset-10k nftset-10k"
#        OUTDIR=test/bench/results/<utc time>
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "datapath.sh: run it, do not source it" >&2; return 1; fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
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
WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
RAW=""

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

build() {
	build_tools
	clang -O2 -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -c "$HERE/datapath/null.bpf.c" -o "$WORK/null.o"
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

measure() { # $1 cfg, $2 rep
	local cfg=$1 rep=$2
	emit_costs "$cfg" "$rep" "$WORK/cost.txt" ""
	measure_flows "$cfg" "$rep" wb-pod1 wb-pod2 $IP2
	echo "$cfg,$rep,check,$(evidence "$cfg" | tr ',' ' ')" >>"$RAW"
}

summarize() {
	local c args=()
	for c in $CONFIGS; do args+=("$c=base"); done
	case " $CONFIGS " in *" weir-100k "*)
		args+=(--floor weir-100k)
		for c in weir-1 null nftset-10k; do
			case " $CONFIGS " in *" $c "*) args+=(--compare "weir-100k/$c") ;; esac
		done ;;
	esac
	case " $CONFIGS " in *" null "*) args+=(--compare null/base) ;; esac
	python3 "$HERE/ratios.py" "$RAW" "${args[@]}"
}

main() {
	[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
	need_tools ip iperf3 sockperf ipset nft iptables-nft nsenter taskset python3 cc cargo clang
	build
	mkdir -p "$OUTDIR"
	RAW=$OUTDIR/raw.csv
	: >"$RAW"
	{ uname -r; nproc; date -u; echo "REPS=$REPS DUR=$DUR TPUT_SAMPLES=$TPUT_SAMPLES LATDUR=$LATDUR CONFIGS=$CONFIGS"; } >"$OUTDIR/env.txt"
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
