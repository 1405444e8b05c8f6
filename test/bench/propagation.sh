#!/usr/bin/env bash
# propagation.sh - how fast the other nodes learn what changed, on a 2-node
# `weirctl lab`, per backend:
#
#   newpod  A pod created on node-1 connects to a server on node-2 whose
#           ingress admits it by label only. node-2 learns the new pod's
#           address through its own watch of the Pod; until then it judges
#           the packets as the world and drops them. A prober
#           (propagation/prober.py) waits for the pod's netns, enters it and
#           connects in a loop (a fresh socket every ATTEMPT_MS) until the
#           server answers. Recorded per pod: window_ms, from the netns
#           appearing (before CNI ADD runs) to the first accepted
#           connection; after_wired_ms, from the first attempt that found
#           eth0 configured (ADD sets the address before it returns) to the
#           first accepted one, the tighter upper bound of "ADD returned
#           until node-2 admits the first packet"; and the dropped attempts.
#   nodeadd A Node object (pod CIDR, InternalIP, backend annotations, as a
#           remote weir-policyd publishes them) is written to the lab's API
#           directory; node-1's weir-policyd programs its route. Recorded:
#           ms until the route (proto 87) is in node-1's table, then ms
#           until it is gone after the object is deleted.
#
# Usage (root, from the repository):  bash test/bench/propagation.sh
#   env: PODS=30 NODEADDS=10 BACKENDS="vxlan host-gw" ATTEMPT_MS=20 PROFILE=release
#        OUTDIR=test/bench/results/propagation-<utc time>
# Output: $OUTDIR/raw.csv (backend,kind,round,metric,value) and a summary
# (p50/p99/max per backend and metric) on stdout and in $OUTDIR/summary.txt.
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "propagation.sh: run it, do not source it" >&2; return 1; fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PODS=${PODS:-30}
NODEADDS=${NODEADDS:-10}
BACKENDS=${BACKENDS:-vxlan host-gw}
export ATTEMPT_MS=${ATTEMPT_MS:-20}
OUTDIR=${OUTDIR:-$REPO/test/bench/results/propagation-$(date -u +%Y%m%dT%H%M%SZ)}
LAB=wprop$$
LABDIR=/run/weir/lab/$LAB

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
PROFILE=${PROFILE:-release}
(cd "$REPO" && cargo build --profile "$PROFILE" --bins >&2)
# Wherever cargo put them (CARGO_TARGET_DIR is honoured).
TARGET=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CTL=$TARGET/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/weirctl
WORK=$(mktemp -d /tmp/weir-propagation.XXXXXX)
mkdir -p "$OUTDIR"
RAW=$OUTDIR/raw.csv
echo "backend,kind,round,metric,value" >"$RAW"
cleanup() {
	"$CTL" lab down --name "$LAB" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/model.yaml" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: p, labels: {kubernetes.io/metadata.name: p}}
---
apiVersion: v1
kind: Pod
metadata: {name: srv, namespace: p, labels: {app: srv}}
spec:
  nodeName: node-2
  containers:
  - name: srv
    image: agnhost
    ports: [{containerPort: 80, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-from-clients, namespace: p}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80, protocol: TCP}]
EOF

client_pod() { # $1 name
	cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: p, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: c, image: agnhost}]
EOF
}

# Node node-9 as node-2's weir-policyd would publish it, for backend $1.
remote_node() { # $1 backend
	local data='{}' kind=host-gw
	if [ "$1" = vxlan ]; then
		kind=vxlan
		data='{"vtepMAC":"02:42:c0:00:02:09","vni":1,"port":8472}'
	fi
	cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: node-9
  annotations:
    weir.io/backend-type: $kind
    weir.io/backend-data: '$data'
    weir.io/public-ip: 192.0.2.9
spec: {podCIDR: 10.88.9.0/24, podCIDRs: [10.88.9.0/24]}
status: {addresses: [{type: InternalIP, address: 192.0.2.9}]}
EOF
}

now_ms() { date +%s%3N; }

for backend in $BACKENDS; do
	log "$backend: lab up (2 nodes)"
	"$CTL" lab up --name "$LAB" --nodes 2 --backend "$backend" -f "$WORK/model.yaml" >"$WORK/up.log"
	srv=$("$CTL" lab get pods --name "$LAB" -o json | python3 -c '
import json,sys
for p in json.load(sys.stdin)["items"]:
    if p["metadata"]["name"] == "srv":
        print(next(i["ip"] for i in p["status"]["podIPs"] if ":" not in i["ip"]))')

	for i in $(seq "$PODS"); do
		name=${backend%%-*}-c$i # names of their own per backend: each lab starts clean
		client_pod "$name" >"$WORK/$name.yaml"
		python3 "$HERE/propagation/prober.py" "/run/netns/weir-$LAB-p-$name" "$srv" 80 "$WORK/$name.ready" >"$WORK/$name.json" &
		prober=$!
		until [ -e "$WORK/$name.ready" ]; do
			kill -0 "$prober" 2>/dev/null || { log "prober for $name exited"; exit 1; }
			sleep 0.001
		done
		"$CTL" lab apply --name "$LAB" -f "$WORK/$name.yaml" >/dev/null
		wait "$prober"
		python3 - "$WORK/$name.json" "$backend" "$i" >>"$RAW" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["after_wired_ms"] = round(r["admitted_ms"] - r["wired_ms"], 1)
for m in ("window_ms", "after_wired_ms", "dropped"):
    print(f"{sys.argv[2]},newpod,{sys.argv[3]},{m},{r[m]}")
EOF
		"$CTL" lab delete --name "$LAB" -f "$WORK/$name.yaml" >/dev/null
	done
	log "$backend: $PODS new pods measured"

	remote_node "$backend" >"$WORK/node-9.yaml"
	for i in $(seq "$NODEADDS"); do
		t0=$(now_ms)
		# Written as the lab writes: a dot name, renamed into place.
		cp "$WORK/node-9.yaml" "$LABDIR/manifests/.node_node-9.yaml.tmp"
		mv "$LABDIR/manifests/.node_node-9.yaml.tmp" "$LABDIR/manifests/node_node-9.yaml"
		until ip -n "weir-$LAB-n1" route show proto 87 | grep -q '^10\.88\.9\.0/24'; do
			[ $(($(now_ms) - t0)) -lt 10000 ] || { log "node-9's route never appeared on node-1"; exit 1; }
			sleep 0.002
		done
		echo "$backend,nodeadd,$i,route_added_ms,$(($(now_ms) - t0))" >>"$RAW"
		t0=$(now_ms)
		rm "$LABDIR/manifests/node_node-9.yaml"
		while ip -n "weir-$LAB-n1" route show proto 87 | grep -q '^10\.88\.9\.0/24'; do
			[ $(($(now_ms) - t0)) -lt 10000 ] || { log "node-9's route outlived its Node on node-1"; exit 1; }
			sleep 0.002
		done
		echo "$backend,nodeadd,$i,route_removed_ms,$(($(now_ms) - t0))" >>"$RAW"
	done
	log "$backend: $NODEADDS node adds measured"
	"$CTL" lab down --name "$LAB" >/dev/null
done

python3 - "$RAW" <<'EOF' | tee "$OUTDIR/summary.txt"
import csv, collections, sys
rows = collections.defaultdict(list)
for r in csv.DictReader(open(sys.argv[1])):
    rows[(r["backend"], r["metric"])].append(float(r["value"]))
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"{'backend':8} {'metric':18} {'n':>4} {'p50':>8} {'p99':>8} {'max':>8}")
for (b, m), v in sorted(rows.items()):
    print(f"{b:8} {m:18} {len(v):4} {pct(v, 50):8.1f} {pct(v, 99):8.1f} {max(v):8.1f}")
EOF
log "raw: $RAW"
