#!/usr/bin/env bash
# cost-ab.sh - the programs' in-kernel cost per packet (fill --cost:
# BPF_PROG_TEST_RUN, 200,000 repeats per path) of two builds of the `fill`
# example, A and B, in the same run: each round runs both on a fresh
# topology and a fresh bpffs root each time, A first in odd rounds and B
# first in even ones (whichever runs first in a round tends to measure a few
# percent slower), so load drift and order hit both alike. Prints, per
# path, the median and the minimum ns of A and of B over the rounds, and
# B/A of each (below 1: B faster). On a loaded machine trust the minimum:
# interference only ever adds time.
#
#   sudo ROUNDS=7 ENTRIES=100000 bash test/bench/cost-ab.sh FILL_A FILL_B
#
# B_ARGS: extra arguments for B's fill alone, e.g. B_ARGS=--tiered to price
# ClusterNetworkPolicy's tiers against A's NetworkPolicy-only maps.
#
# To compare a change with the commit before it, build fill twice in two
# target directories, e.g.
#   git worktree add /tmp/before HEAD~1
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/t-before cargo build --release --example fill -p weir-bpf)
#   cargo build --release --example fill -p weir-bpf
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 FILL_A FILL_B" >&2; exit 2; }
FILL_A=$1 FILL_B=$2
ROUNDS=${ROUNDS:-5}
ENTRIES=${ENTRIES:-100000}
B_ARGS=${B_ARGS:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NS=cab$$
ROOT=/sys/fs/bpf/weir-cost-ab-$$
WORK=$(mktemp -d /tmp/weir-cost-ab.XXXXXX)
MAC1=02:77:00:00:00:01
MAC2=02:77:00:00:00:02

topo_down() {
	ip netns del $NS-node 2>/dev/null || true
	rm -rf -- "$ROOT"
}
cleanup() {
	set +e
	topo_down
	case $WORK in /tmp/weir-cost-ab.??????) rm -rf -- "$WORK" ;; esac
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The pods' host veths only: BPF_PROG_TEST_RUN needs the ifindexes, no traffic flows.
topo_up() {
	topo_down
	ip netns add $NS-node
	ip -n $NS-node link add cab1h type veth peer name cab1c address $MAC1
	ip -n $NS-node link add cab2h type veth peer name cab2c address $MAC2
	ip -n $NS-node link set cab1h up
	ip -n $NS-node link set cab2h up
}

need_tools ip
for f in "$FILL_A" "$FILL_B"; do [ -x "$f" ] || { log "not executable: $f"; exit 1; }; done
for round in $(seq "$ROUNDS"); do
	order="A B"
	[ $((round % 2)) -eq 0 ] && order="B A"
	for side in $order; do
		fill=FILL_$side
		extra=""
		[ "$side" = B ] && extra=$B_ARGS
		topo_up
		log "round $round/$ROUNDS: $side"
		"${!fill}" --root "$ROOT" --netns /run/netns/$NS-node --client 10.251.0.1=cab1h=$MAC1 \
			--server 10.251.0.2=cab2h=$MAC2 --ports $P_IPERF --entries "$ENTRIES" --cost $extra |
			awk -v s=$side '$1 == "cost" {print s, $2, $3}' >>"$WORK/costs"
	done
done
python3 - "$WORK/costs" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, path, ns = line.split()
    rows.setdefault(path, {}).setdefault(side, []).append(int(ns))
print("%-28s %8s %8s %6s   %8s %8s %6s" % ("path (ns)", "med A", "med B", "B/A", "min A", "min B", "B/A"))
for path, v in rows.items():
    a, b = statistics.median(v["A"]), statistics.median(v["B"])
    la, lb = min(v["A"]), min(v["B"])
    print("%-28s %8.0f %8.0f %6.3f   %8d %8d %6.3f" % (path, a, b, b / a, la, lb, lb / la))
PY
