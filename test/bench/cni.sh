#!/usr/bin/env bash
# cni.sh - CNI ADD/DEL latency of `weir` against the reference bridge + host-local
# (Debian containernetworking-plugins, /usr/lib/cni), measured in the same run,
# interleaved pod by pod (the order of configs rotates with every pod), like
# with like: IPv4 only, one /16, gateway on the bridge, no hairpin, no default
# route, and ipMasq off in both ("plain") or on in both ("ipmasq").
#
# Each timing is one plugin exec as a runtime does it (fork+exec included),
# until the plugin exits (weir's DEL leaves deleting the veth to a detached
# process; the script waits, untimed, until the pod's interface is gone
# before the next timing, so no config is slowed by another one's teardown),
# sequential, PODS pods per config, from a bash loop running inside one node
# network namespace (nsenter, so /sys/fs/bpf stays visible). One untimed
# warm-up ADD/DEL per config first (page cache; for weir-enforce it also loads
# and pins the dataplane once, as the first pod of a node would).
#
# Configs:
#   ref          reference bridge + host-local
#   weir         weir, policy.enforce false
#   weir-enforce weir, policy.enforce true with policy.readyTimeoutMs 0: endpoint
#                entry, attach (policy.attach "auto", as shipped: clsact + cls_bpf
#                filters through rtnetlink for a pod without egress shaping),
#                registry record and ipcache writes are all timed; the wait for
#                weir-policyd's READY is not (no weir-policyd runs here; a fake
#                one would measure nothing real).
#                Measured in the "plain" variant only.
#   weir-tcx     as weir-enforce with policy.attach "tcx" (pinned TCX links, what
#                "auto" gives a pod whose egress is shaped). Plain variant only;
#                ENFORCE_CFGS="weir-enforce" leaves it out.
#
# Filesystems, as on a node: the reference's host-local store and weir's
# (ipam.dataDir, /var/lib/cni/networks on a node) share one directory on the
# disk; weir's policy.runDir (its endpoint records and reservation index,
# /run/weir on a node, where /run is tmpfs) is a tmpfs mounted for the run.
# RUNDIR_FS=disk puts the runDir on the disk too, for machines whose /run is
# no tmpfs: inode allocation on ext4 slows while recently deleted inodes
# abound (every rep deletes hundreds), and weir creates two more files per
# ADD than the reference.
#
# Usage: sudo bash test/bench/cni.sh     (env: PODS=100 REPS=3 VARIANTS="plain ipmasq"
#                                          ENFORCE_CFGS="weir-enforce weir-tcx"
#                                          WEIR_BIN=<path> (default: cargo build --release)
#                                          RUNDIR_FS=tmpfs|disk
#                                          CNI_BIN_DIR=/usr/lib/cni OUTDIR=...)
# Creates netns wcb-node and wcb-<config>-<i>, bridges wcbref/wcbweir/wcbenf/wcbtcx inside
# wcb-node, /run/wcb (a tmpfs on /run/wcb/run), and bpffs root /sys/fs/bpf/wcb-<pid>;
# removes all of it on exit.
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "cni.sh: run it, do not source it" >&2; return 1; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PODS=${PODS:-100}
REPS=${REPS:-3}
VARIANTS=${VARIANTS:-"plain ipmasq"}
ENFORCE_CFGS=${ENFORCE_CFGS:-"weir-enforce weir-tcx"}
RUNDIR_FS=${RUNDIR_FS:-tmpfs}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
OUTDIR=${OUTDIR:-$ROOT/target/bench/cni-$(date -u +%Y%m%dT%H%M%SZ)}
BPFROOT=/sys/fs/bpf/wcb-$$
RUN=/run/wcb

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "cni.sh: needs root (network namespaces)" >&2; exit 1; }
for t in ip nsenter python3 nft iptables; do command -v "$t" >/dev/null || { echo "cni.sh: missing $t" >&2; exit 1; }; done
[ -x "$CNI_BIN_DIR/bridge" ] && [ -x "$CNI_BIN_DIR/host-local" ] || {
	echo "cni.sh: no reference plugins in $CNI_BIN_DIR (apt-get install containernetworking-plugins)" >&2; exit 1; }

if [ -z "${WEIR_BIN:-}" ]; then
	log "building weir (release)"
	(cd "$ROOT" && cargo build --release -q -p weir-cni)
	WEIR_BIN=$ROOT/target/release/weir
fi

down() {
	local n
	for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^wcb-/ {print $1}'); do ip netns del "$n" 2>/dev/null || true; done
	if mountpoint -q "$RUN/run"; then umount "$RUN/run"; fi
	rm -rf -- "$RUN"
}
cleanup() { set +e; down; rm -rf -- "$BPFROOT"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

conf() { # $1 cfg, $2 masq(true|false)
	local type=weir br subnet extra=""
	case $1 in
	ref) type=bridge br=wcbref subnet=10.250.0.0/16 ;;
	weir) br=wcbweir subnet=10.251.0.0/16
		extra=', "isDefaultGateway": false, "policy": {"enforce": false, "runDir": "'$RUN'/run"}' ;;
	weir-enforce) br=wcbenf subnet=10.252.0.0/16
		extra=', "isDefaultGateway": false, "policy": {"enforce": true, "readyTimeoutMs": 0, "bpffsRoot": "'$BPFROOT'", "runDir": "'$RUN'/run", "attach": "auto"}' ;;
	weir-tcx) br=wcbtcx subnet=10.253.0.0/16
		extra=', "isDefaultGateway": false, "policy": {"enforce": true, "readyTimeoutMs": 0, "bpffsRoot": "'$BPFROOT'", "runDir": "'$RUN'/run", "attach": "tcx"}' ;;
	esac
	cat <<JSON
{ "cniVersion": "1.0.0", "name": "wcb-$1", "type": "$type", "bridge": "$br",
  "isGateway": true, "ipMasq": $2, "hairpinMode": false$extra,
  "ipam": { "type": "host-local", "subnet": "$subnet", "dataDir": "$RUN/ipam" } }
JSON
}

mkdir -p "$OUTDIR"
RAW=$OUTDIR/timings.txt
: >"$RAW"
log "weir: $WEIR_BIN; reference: $CNI_BIN_DIR (containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null || echo '?'))"
for rep in $(seq "$REPS"); do
	for variant in $VARIANTS; do
		masq=false; cfgs="ref weir $ENFORCE_CFGS"
		[ "$variant" = ipmasq ] && { masq=true; cfgs="ref weir"; }
		log "rep $rep/$REPS $variant: $PODS pods x ($cfgs)"
		down
		mkdir -p "$RUN/run"
		case $RUNDIR_FS in
		tmpfs) mount -t tmpfs -o mode=0700,size=64m wcb-run "$RUN/run" ;;
		disk) ;;
		*) echo "cni.sh: RUNDIR_FS=$RUNDIR_FS: give tmpfs or disk" >&2; exit 1 ;;
		esac
		ip netns add wcb-node
		ip -n wcb-node link set lo up
		for c in $cfgs; do
			conf "$c" "$masq" >"$RUN/$c.json"
			for i in $(seq 0 "$PODS"); do ip netns add "wcb-$c-$i"; done
		done
		nsenter --net=/run/netns/wcb-node env PODS="$PODS" CFGS="$cfgs" RUN="$RUN" WEIR="$WEIR_BIN" REF="$CNI_BIN_DIR/bridge" \
			CNI_PATH="$CNI_BIN_DIR" VARIANT="$variant" REP="$rep" bash -c '
			set -u
			us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
			read -r -a C <<<"$CFGS"
			bin() { [ "$1" = ref ] && echo "$REF" || echo "$WEIR"; }
			# CNI_ARGS as the kubelet passes them: enforcement needs the Pod name
			one() { # op cfg i -> prints the timing line
				local op=$1 c=$2 i=$3 b a rc
				b=$(bin "$c")
				a=$(us)
				CNI_COMMAND=$op CNI_CONTAINERID=$c-$i CNI_NETNS=/run/netns/wcb-$c-$i CNI_IFNAME=eth0 \
					CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$c-$i" "$b" <"$RUN/$c.json" >"$RUN/$op-$c-$i.json" 2>>"$RUN/stderr.txt"
				rc=$?
				echo "$VARIANT $REP $c $op $i $(( $(us) - a )) $rc"
				# untimed: let the kernel finish deleting the interface (weir
				# leaves that to a background process) before the next timing,
				# so no config pays for another one'"'"'s teardown
				if [ "$op" = DEL ]; then
					local n=0
					while ip -n "wcb-$c-$i" link show eth0 >/dev/null 2>&1 && [ $n -lt 400 ]; do
						sleep 0.005; n=$((n + 1))
					done
				fi
			}
			for c in "${C[@]}"; do one ADD "$c" 0 >/dev/null; one DEL "$c" 0 >/dev/null; done   # warm-up, untimed
			n=${#C[@]}
			for op in ADD DEL; do
				for i in $(seq 1 "$PODS"); do
					for k in $(seq 0 $((n - 1))); do one "$op" "${C[$(( (i + k) % n ))]}" "$i"; done
				done
			done' >>"$RAW"
		# correctness of what was timed: unique addresses, nothing leaked
		for c in $cfgs; do
			python3 - "$RUN" "$c" "$PODS" >>"$OUTDIR/checks.txt" <<'PY'
import json, os, sys
run, c, pods = sys.argv[1], sys.argv[2], int(sys.argv[3])
ips = set()
for i in range(1, pods + 1):
    try:
        ips.add(json.load(open(os.path.join(run, 'ADD-%s-%d.json' % (c, i))))['ips'][0]['address'])
    except Exception:
        pass
d = os.path.join(run, 'ipam', 'wcb-' + c)
left = [f for f in os.listdir(d) if f[0].isdigit()] if os.path.isdir(d) else []
print('%s unique_ips=%d leaked_reservations=%d' % (c, len(ips), len(left)))
PY
		done
		left=$(ip -n wcb-node -o link show | grep -c -E 'weir[0-9a-f]{11}|veth' || true)
		echo "node links left after DEL: $left" >>"$OUTDIR/checks.txt"
		echo "TCX link pins and tc filter records left after DEL: $(ls "$BPFROOT/links" 2>/dev/null | wc -l)" >>"$OUTDIR/checks.txt"
		cp "$RUN/stderr.txt" "$OUTDIR/stderr-$variant-$rep.txt" 2>/dev/null || true
	done
done
down

# Kernel floor of DEL: deleting a bridged, up veth pair with `ip link del`,
# against `ip link show` (the same exec, no deletion). Any plugin's DEL pays
# the difference: the kernel's device unregistration (RCU waits under RTNL).
log "kernel floor: $PODS x ip link del of a bridged veth"
ip netns add wcb-node; ip netns add wcb-kpod
ip -n wcb-node link add wcbk type bridge; ip -n wcb-node link set wcbk up
FLOOR=$OUTDIR/floor.txt; : >"$FLOOR"
for i in $(seq "$PODS"); do
	ip -n wcb-node link add wcbv$i type veth peer name e$i netns wcb-kpod
	ip -n wcb-node link set wcbv$i master wcbk up; ip -n wcb-kpod link set e$i up
	a=$EPOCHREALTIME; ip -n wcb-node link del wcbv$i; b=$EPOCHREALTIME
	c=$EPOCHREALTIME; ip -n wcb-node link show wcbk >/dev/null; d=$EPOCHREALTIME
	echo "${a/./} ${b/./} ${c/./} ${d/./}" >>"$FLOOR"
done
down

python3 - "$RAW" "$OUTDIR/summary.md" "$PODS" "$REPS" "$RUNDIR_FS" <<'PY'
import sys, statistics as st
raw, out, pods, reps, rundir_fs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rows = [l.split() for l in open(raw) if l.strip()]
def pct(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; lo = int(k); hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
data = {}
fails = {}
for var, rep, cfg, op, i, us, rc in rows:
    data.setdefault((var, cfg, op), []).append(int(us) / 1000)
    if rc != '0':
        fails[(var, cfg, op)] = fails.get((var, cfg, op), 0) + 1
lines = ['| variant | config | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | failures |', '|---|---|---|---|---|---|---|']
for (var, cfg) in sorted({(v, c) for v, c, _ in data}, key=lambda x: (x[0], ['ref', 'weir', 'weir-enforce', 'weir-tcx'].index(x[1]))):
    a, d = data[(var, cfg, 'ADD')], data[(var, cfg, 'DEL')]
    f = fails.get((var, cfg, 'ADD'), 0) + fails.get((var, cfg, 'DEL'), 0)
    lines.append('| %s | %s | %.2f | %.2f | %.2f | %.2f | %d |' % (var, cfg, pct(a, .5), pct(a, .99), pct(d, .5), pct(d, .99), f))
lines += ['', '| variant | config | ADD p50 ratio vs ref | DEL p50 ratio vs ref | floor (<= 0.5) |', '|---|---|---|---|---|']
for (var, cfg) in sorted({(v, c) for v, c, _ in data if c != 'ref'}):
    if (var, 'ref', 'ADD') not in data:
        continue
    ra = pct(data[(var, cfg, 'ADD')], .5) / pct(data[(var, 'ref', 'ADD')], .5)
    rd = pct(data[(var, cfg, 'DEL')], .5) / pct(data[(var, 'ref', 'DEL')], .5)
    ok = 'met' if ra <= 0.5 and rd <= 0.5 else 'NOT met'
    lines.append('| %s | %s | %.3f | %.3f | %s |' % (var, cfg, ra, rd, ok))
lines.append('')
lines.append('%s pods x %s reps per config; percentiles over all reps; weir runDir on %s.' % (pods, reps, rundir_fs))
import os
fl = os.path.join(os.path.dirname(out), 'floor.txt')
if os.path.exists(fl):
    dl, ex = [], []
    for l in open(fl):
        a, b, c, d = map(int, l.split())
        dl.append((b - a) / 1000); ex.append((d - c) / 1000)
    lines.append('')
    lines.append('kernel floor of DEL: `ip link del` of a bridged veth p50 %.2f ms, `ip link show` (exec alone) p50 %.2f ms, difference %.2f ms' % (pct(dl, .5), pct(ex, .5), pct(dl, .5) - pct(ex, .5)))
open(out, 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines))
PY
cat "$OUTDIR/checks.txt"
log "raw timings and summary in $OUTDIR"
