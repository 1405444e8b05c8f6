#!/usr/bin/env bash
# crossnode.sh - pod to pod between two nodes: Weir's programs against the
# bare kernel path, for the host-gw and VXLAN backends, in the same run.
#
# Topology (all in namespaces this script creates, rebuilt for every
# measurement, removed on exit):
#   wx-p1 10.242.1.2 (client)                     wx-p2 10.242.2.2 (server)
#        | wxp1                                        | wxp2
#   [wx-n1: bridge wxbr0 10.242.1.1]   [wx-n2: bridge wxbr0 10.242.2.1]
#   [       wxeth0 192.168.251.1   ]---[       wxeth0 192.168.251.2   ] underlay veth
# Backends, as flannel programs them:
#   hostgw   route 10.242.<peer>.0/24 via the peer's underlay address
#   vxlan    device wxvx (vxlan id 1 dstport 8472 nolearning, MTU underlay-50,
#            pods too), route via 10.242.<peer>.0 onlink, permanent neighbour
#            and fdb entry for the peer's VTEP
# Configs (interleaved rep-major so drift hits every config alike):
#   hostgw, vxlan         the bare kernel path: no program (the reference)
#   <backend>-weir-N      the same path with Weir on EACH node (own bpffs root):
#                         from_pod/to_pod on the pod's host veth, leave_node on
#                         the device to the other node (wxeth0 for hostgw, wxvx
#                         for vxlan), both pods READY and isolated in both
#                         directions, the client's egress to the server and the
#                         server's ingress from the client allowed by policy,
#                         the ipcache holding both pods (the remote one with
#                         endpoint 0), ipcache and policy padded to N entries
# Metrics: as datapath.sh (lib.sh measure_flows). For the weir configs it also
#   records each node's in-kernel cost per packet (fill --cost) and verdict
#   counters, and stops if the policy path did not run.
#   INPATH_STATS=1 also records what each program costs in the path itself,
#   while the throughput samples run: the kernel's BPF statistics
#   (kernel.bpf_stats_enabled, run_time_ns / run_cnt of each pinned program),
#   whose own cost (two clock reads a run, 65-90 ns here for a program that
#   returns at once) is in the figure and slows the weir configs' throughput:
#   read that run's ratios as biased low.
#
# Usage (root, from the repository):  bash test/bench/crossnode.sh
#   env: REPS=3 DUR=5 TPUT_SAMPLES=3 LATDUR=5 UMTU=1500 INPATH_STATS=0
#        CONFIGS="hostgw hostgw-weir-1 hostgw-weir-100k vxlan vxlan-weir-1 vxlan-weir-100k"
#        OUTDIR=test/bench/results/crossnode-<utc time>
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "crossnode.sh: run it, do not source it" >&2; return 1; fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPS=${REPS:-3}
DUR=${DUR:-5}
LATDUR=${LATDUR:-5}
UMTU=${UMTU:-1500}
INPATH_STATS=${INPATH_STATS:-0}
STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)
CONFIGS=${CONFIGS:-"hostgw hostgw-weir-1 hostgw-weir-100k vxlan vxlan-weir-1 vxlan-weir-100k"}
OUTDIR=${OUTDIR:-$HERE/results/crossnode-$(date -u +%Y%m%dT%H%M%SZ)}
ROOT=/sys/fs/bpf/weir-xbench-$$
CLIENT=10.242.1.2
SERVER=10.242.2.2
NSS="wx-p1 wx-p2 wx-n1 wx-n2"
WORK=$(mktemp -d /tmp/weir-xbench.XXXXXX)
RAW=""

topo_down() {
	kill_pids
	local n
	for n in $NSS; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf -- "$ROOT-n1" "$ROOT-n2"
}
cleanup() {
	set +e
	[ "$INPATH_STATS" = 1 ] && sysctl -qw kernel.bpf_stats_enabled="$STATS_WAS"
	topo_down
	case $WORK in /tmp/weir-xbench.??????) rm -rf -- "$WORK" ;; esac
}
trap cleanup EXIT
trap 'exit 130' INT TERM

backend() { echo "${1%%-*}"; }
# the device traffic to the other node leaves by
node_dev() { case $(backend "$1") in hostgw) echo wxeth0 ;; vxlan) echo wxvx ;; esac; }

topo_up() { # $1 = config
	local be i j mac mtu=$UMTU
	be=$(backend "$1")
	[ "$be" = vxlan ] && mtu=$((UMTU - 50))
	topo_down
	for i in $NSS; do ip netns add "$i"; ip -n "$i" link set lo up; done
	ip -n wx-n1 link add wxeth0 mtu "$UMTU" type veth peer name wxeth0 mtu "$UMTU" netns wx-n2
	for i in 1 2; do
		ip netns exec wx-n$i sysctl -qw net.ipv4.ip_forward=1
		ip netns exec wx-n$i sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
		ip -n wx-n$i addr add 192.168.251.$i/24 dev wxeth0
		ip -n wx-n$i link set wxeth0 up
		ip -n wx-n$i link add wxbr0 type bridge
		ip -n wx-n$i addr add 10.242.$i.1/24 dev wxbr0
		ip -n wx-n$i link set wxbr0 up
		ip -n wx-n$i link add wxp$i mtu "$mtu" type veth peer name eth0 mtu "$mtu" address 02:77:00:00:00:0$i netns wx-p$i
		ip -n wx-n$i link set wxp$i master wxbr0 up
		ip -n wx-p$i addr add 10.242.$i.2/24 dev eth0
		ip -n wx-p$i link set eth0 up
		ip -n wx-p$i route add default via 10.242.$i.1
	done
	case $be in
	hostgw)
		ip -n wx-n1 route add 10.242.2.0/24 via 192.168.251.2
		ip -n wx-n2 route add 10.242.1.0/24 via 192.168.251.1 ;;
	vxlan)
		for i in 1 2; do
			ip -n wx-n$i link add wxvx type vxlan id 1 dstport 8472 local 192.168.251.$i nolearning dev wxeth0
			ip -n wx-n$i link set wxvx mtu $((UMTU - 50))
			ip -n wx-n$i addr add 10.242.$i.0/32 dev wxvx
			ip -n wx-n$i link set wxvx up
		done
		for i in 1 2; do
			j=$((3 - i))
			mac=$(ip -n wx-n$j -br link show wxvx | awk '{print $3}')
			ip -n wx-n$i route add 10.242.$j.0/24 via 10.242.$j.0 dev wxvx onlink
			ip -n wx-n$i neigh add 10.242.$j.0 lladdr "$mac" dev wxvx nud permanent
			bridge -n wx-n$i fdb add "$mac" dev wxvx dst 192.168.251.$j self permanent
		done ;;
	*) log "unknown config $1"; exit 2 ;;
	esac
	# before any policy: the path works at all (ICMP is not allowed after)
	ip netns exec wx-p1 ping -c 2 -i 0.2 -W 1 -q $SERVER >/dev/null || { log "$1: no connectivity to $SERVER"; exit 1; }
}

apply_cfg() { # $1 = config
	local cfg=$1 n dev i
	case $cfg in *-weir-*) ;; *) return 0 ;; esac
	n=${cfg##*-}
	case $n in *k) n=$(( ${n%k} * 1000 )) ;; esac
	dev=$(node_dev "$cfg")
	"$FILL" --root "$ROOT-n1" --netns /run/netns/wx-n1 --client $CLIENT=wxp1=02:77:00:00:00:01 --server $SERVER \
		--leave-node "$dev" --ports $P_IPERF,$P_SOCKPERF,$P_CRR --entries "$n" --cost >"$WORK/cost-n1.txt"
	"$FILL" --root "$ROOT-n2" --netns /run/netns/wx-n2 --client $CLIENT --server $SERVER=wxp2=02:77:00:00:00:02 \
		--leave-node "$dev" --ports $P_IPERF,$P_SOCKPERF,$P_CRR --entries "$n" --cost >"$WORK/cost-n2.txt"
	for i in 1 2; do   # the pinned TCX link that holds leave_node on the device
		[ -e "$ROOT-n$i/node-links/$(ifindex $i "$dev")_leave_node" ] ||
			{ log "$cfg: leave_node is not attached to $dev on wx-n$i"; exit 1; }
	done
}

ifindex() { ip netns exec wx-n$1 cat "/sys/class/net/$2/ifindex"; }   # $1 node index, $2 device

# The verdict counters of one pod's endpoint as metrics NODE_DIR_REASON.
counters() { # $1 cfg, $2 rep, $3 node index, $4 host veth
	local idx
	idx=$(ifindex "$3" "$4")
	"$FILL" --root "$ROOT-n$3" --counters |
		awk -v ep="ep=$idx" -v pfx="n${3}_" '$1 == ep { sub("dir=", "", $2); split($3, r, "="); print pfx $2 "_" r[1], r[2] }' |
		while read -r m v; do emit "$1" "$2" "$m" "$v"; done
}
# run_cnt and run_time_ns of each node's programs: `node prog count ns` lines.
prog_stats() {
	local i prog
	for i in 1 2; do
		for prog in from_pod to_pod leave_node; do
			bpftool prog show pinned "$ROOT-n$i/progs/$prog" --json |
				python3 -c 'import json,sys; p=json.load(sys.stdin); print(sys.argv[1], sys.argv[2], p.get("run_cnt", 0), p.get("run_time_ns", 0))' "n$i" "$prog"
		done
	done
}
tput_begin() { # $1 cfg
	[ "$INPATH_STATS" = 1 ] || return 0
	case $1 in *-weir-*) ;; *) return 0 ;; esac
	sysctl -qw kernel.bpf_stats_enabled=1
	prog_stats >"$WORK/stats-before"
}
tput_end() { # $1 cfg, $2 rep
	[ "$INPATH_STATS" = 1 ] || return 0
	case $1 in *-weir-*) ;; *) return 0 ;; esac
	prog_stats >"$WORK/stats-after"
	sysctl -qw kernel.bpf_stats_enabled="$STATS_WAS"
	local node prog c0 t0 c1 t1
	while read -r node prog c0 t0 && read -r _ _ c1 t1 <&3; do
		[ "$c1" -gt "$c0" ] && emit "$1" "$2" "${node}_${prog}_inpath_ns" "$(( (t1 - t0) / (c1 - c0) ))"
	done <"$WORK/stats-before" 3<"$WORK/stats-after"
}
txp() { ip netns exec wx-n1 cat "/sys/class/net/$1/statistics/tx_packets" 2>/dev/null || echo 0; }

measure() { # $1 cfg, $2 rep
	local cfg=$1 rep=$2 pol
	emit_costs "$cfg" "$rep" "$WORK/cost-n1.txt" n1_
	emit_costs "$cfg" "$rep" "$WORK/cost-n2.txt" n2_
	measure_flows "$cfg" "$rep" wx-p1 wx-p2 $SERVER
	# the path taken: packets n1 sent on the underlay and on the vxlan device
	emit "$cfg" "$rep" n1_underlay_tx_pkts "$(txp wxeth0)"
	emit "$cfg" "$rep" n1_vxlan_tx_pkts "$(txp wxvx)"
	case $cfg in *-weir-*) ;; *) return 0 ;; esac
	counters "$cfg" "$rep" 1 wxp1
	counters "$cfg" "$rep" 2 wxp2
	# the policy path ran: the client's egress judged on n1, the server's ingress on n2
	for pol in n1_out_allow_policy n2_in_allow_policy; do
		grep -q "^$cfg,$rep,$pol,[1-9]" "$RAW" || { log "$cfg: no $pol verdict: the policy path did not run"; exit 1; }
	done
}

summarize() {
	local c args=()
	for c in $CONFIGS; do args+=("$c=$(backend "$c")"); done
	for c in $CONFIGS; do case $c in *-weir-100k) args+=(--floor "$c") ;; esac; done
	python3 "$HERE/ratios.py" "$RAW" "${args[@]}"
	echo
	echo 'Verdict counters (packets, median over rounds), n1 = client node, n2 = server node; path evidence:'
	echo
	python3 - "$RAW" "$CONFIGS" <<'PY'
import sys, csv, statistics as st, collections
raw, configs = sys.argv[1], sys.argv[2].split()
d = collections.defaultdict(list)
for c, r, m, v in csv.reader(open(raw)):
    if m.startswith('n') and not m.endswith('_ns'):
        d[(c, m)].append(float(v))
ms = sorted({m for c, m in d})
print('| counter | ' + ' | '.join(configs) + ' |')
print('|---|' + '---|' * len(configs))
for m in ms:
    print(f'| {m} | ' + ' | '.join('%.0f' % st.median(d[(c, m)]) if (c, m) in d else '-' for c in configs) + ' |')
PY
}

main() {
	[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
	need_tools ip bridge iperf3 sockperf nsenter taskset python3 cc cargo ping
	[ "$INPATH_STATS" = 1 ] && need_tools bpftool sysctl
	build_tools
	mkdir -p "$OUTDIR"
	RAW=$OUTDIR/raw.csv
	: >"$RAW"
	{ uname -r; nproc; date -u; echo "REPS=$REPS DUR=$DUR TPUT_SAMPLES=$TPUT_SAMPLES LATDUR=$LATDUR UMTU=$UMTU INPATH_STATS=$INPATH_STATS CONFIGS=$CONFIGS"; cat /proc/loadavg; } >"$OUTDIR/env.txt"
	local rep cfg
	for rep in $(seq "$REPS"); do
		for cfg in $CONFIGS; do
			log "rep $rep/$REPS: $cfg"
			topo_up "$cfg"
			apply_cfg "$cfg"
			measure "$cfg" "$rep"
			topo_down
		done
	done
	cat /proc/loadavg >>"$OUTDIR/env.txt"
	summarize | tee "$OUTDIR/summary.md"
	log "results in $OUTDIR"
}
main "$@"
