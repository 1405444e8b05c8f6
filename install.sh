#!/usr/bin/env bash
# install.sh - build Weir and install it on this node. Idempotent.
#
# Order matters to the container runtime: binaries first (each written to a
# temporary name in the destination directory, then renamed over the old one,
# so a running runtime never execs a half-written file), the conflist last
# and atomically (its presence is what tells the runtime "network ready").
# The CNI binary and the conflist are installed by `weir-policyd install-cni`
# (the DaemonSet's init container does the same), so the conflist is rendered
# one way.
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "install.sh: run it, do not source it" >&2; return 1; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
	cat <<'EOF'
Usage: install.sh [options]

Builds the release binaries and installs them:
  weir-policyd, weirctl      -> <bin-dir>      (default /usr/local/bin; weirctl when built)
  weir                       -> <cni-bin-dir>  (default /opt/cni/bin)
  conf/10-weir.conflist      -> <cni-conf-dir> (default /etc/cni/net.d), last, atomically
The last two by `weir-policyd install-cni --pod-cidr ...` (see its --help).
Reference plugins the conflist chains (portmap, bandwidth) and loopback are
copied from /usr/lib/cni into <cni-bin-dir> when missing there. Without
--prefix or --no-bpffs, bpffs is mounted at /sys/fs/bpf when nothing is
mounted there (weir-policyd and weirctl do the same; the CNI binary never
mounts).

Options:
  --prefix DIR          install under DIR (DIR/opt/cni/bin, DIR/usr/local/bin,
                        DIR/etc/cni/net.d); for tests and packaging
  --cni-bin-dir DIR     where the CNI binary goes
  --bin-dir DIR         where weir-policyd and weirctl go
  --cni-conf-dir DIR    where the conflist goes
  --pod-cidr CIDR       this node's pod range (replaces 10.244.1.0/24)
  --cluster-cidr CIDR   the cluster's pod range (replaces 10.244.0.0/16)
  --cni-version V       cniVersion of the conflist: 1.0.0 (default) or 1.1.0
                        (or 0.3.0, 0.3.1, 0.4.0). 1.0.0 is what every runtime
                        accepts; choose 1.1.0 only when every runtime on the
                        node links libcni >= 1.2 (containerd >= 2.0,
                        CRI-O >= 1.30): it adds STATUS and GC, but libcni 1.1
                        (containerd 1.6/1.7, podman 4) rejects its results, so
                        no pod could start there. 1.1.0 also needs the
                        chained portmap/bandwidth to speak it.
  --from DIR            take binaries from DIR instead of building (implies --no-build)
  --no-build            do not run cargo; use target/release as it is
  --no-apt              never install system packages
  --no-bpffs            leave /sys/fs/bpf alone (an install container: the
                        weir-policyd container mounts it)
  --uninstall           remove Weir from this node: `weir-policyd uninstall`
                        (the conflist first, then the CNI binaries it
                        installed, programs, routes, VXLAN device, bridge,
                        masquerade table, IPAM store, pins, run dir), then weir-policyd
                        and weirctl; refuses, removing nothing, while pods
                        still use Weir. With --prefix, only files under it.
  --force               with --uninstall: go on although pods use Weir (they
                        lose policy enforcement, cross-node routes and
                        masquerade; see weir-policyd uninstall --help)
  -h, --help            this text

System packages installed with apt-get when missing (unless --no-apt):
  clang llvm libbpf-dev (eBPF build), nftables (ipMasq),
  containernetworking-plugins (portmap, bandwidth, loopback).
EOF
}

PREFIX=""
CNI_BIN_DIR="" BIN_DIR="" CNI_CONF_DIR=""
POD_CIDR="" CLUSTER_CIDR="" CNI_VERSION="1.0.0"
FROM="" BUILD=1 APT=1 UNINSTALL=0 FORCE=0 BPFFS_MOUNT=1
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
	--cni-bin-dir) CNI_BIN_DIR=${2:?}; shift ;;
	--bin-dir) BIN_DIR=${2:?}; shift ;;
	--cni-conf-dir) CNI_CONF_DIR=${2:?}; shift ;;
	--pod-cidr) POD_CIDR=${2:?}; shift ;;
	--cluster-cidr) CLUSTER_CIDR=${2:?}; shift ;;
	--cni-version) CNI_VERSION=${2:?--cni-version needs a version}; shift ;;
	--from) FROM=${2:?}; BUILD=0; shift ;;
	--no-build) BUILD=0 ;;
	--no-apt) APT=0 ;;
	--no-bpffs) BPFFS_MOUNT=0 ;;
	--uninstall) UNINSTALL=1 ;;
	--force) FORCE=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
CNI_BIN_DIR=${CNI_BIN_DIR:-$PREFIX/opt/cni/bin}
BIN_DIR=${BIN_DIR:-$PREFIX/usr/local/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-$PREFIX/etc/cni/net.d}
FROM=${FROM:-$HERE/target/release}
CONFLIST=10-weir.conflist
REF=/usr/lib/cni
BPFFS=/sys/fs/bpf

log() { echo "install.sh: $*" >&2; }

# write-then-rename inside the destination directory (same filesystem)
put() { # src dest mode
	local src=$1 dest=$2 mode=$3 tmp
	if [ -f "$dest" ] && cmp -s "$src" "$dest"; then return 0; fi
	tmp="$(dirname "$dest")/.$(basename "$dest").tmp.$$"
	cp "$src" "$tmp"
	chmod "$mode" "$tmp"
	mv -f "$tmp" "$dest"
	log "installed $dest"
}

if [ "$UNINSTALL" = 1 ]; then
	# One uninstall logic: weir-policyd's (it knows, from install-cni's
	# record, which CNI binaries are Weir's and which the host's own).
	POLICYD=$BIN_DIR/weir-policyd
	[ -x "$POLICYD" ] || POLICYD=$FROM/weir-policyd
	if [ -x "$POLICYD" ]; then
		args=(uninstall --bin-dir "$CNI_BIN_DIR" --conf-dir "$CNI_CONF_DIR")
		[ "$FORCE" = 1 ] && args+=(--force)
		if [ -n "$PREFIX" ]; then
			# An install under a prefix never ran here: its own files only,
			# never this host's routes, devices, nftables or state.
			args+=(--files-only --bpffs-root "$PREFIX/sys/fs/bpf/weir" --run-dir "$PREFIX/run/weir"
				--ipam-data-dir "$PREFIX/var/lib/cni/networks")
		fi
		"$POLICYD" "${args[@]}" || { log "uninstall did not finish (see above); fix that and run install.sh --uninstall again"; exit 1; }
	else
		# Removing files without weir-policyd's check that no pod uses Weir
		# would strand running pods: refuse instead.
		log "no weir-policyd in $BIN_DIR or $FROM: it is what uninstalls (after checking that no pod uses Weir); nothing was removed. Build it (cargo build --release) or pass --from DIR holding it"
		exit 1
	fi
	rm -f "$BIN_DIR/weir-policyd" "$BIN_DIR/weirctl"
	log "removed $BIN_DIR/weir-policyd and $BIN_DIR/weirctl"
	exit 0
fi

# ---- system packages ------------------------------------------------------
if [ "$APT" = 1 ]; then
	missing=()
	command -v clang >/dev/null || missing+=(clang)
	command -v llvm-strip >/dev/null || command -v llvm-strip-14 >/dev/null || missing+=(llvm)
	[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
	command -v nft >/dev/null || missing+=(nftables)
	[ -x $REF/portmap ] && [ -x $REF/bandwidth ] || missing+=(containernetworking-plugins)
	if [ ${#missing[@]} -gt 0 ]; then
		[ "$(id -u)" = 0 ] || { log "needs root to apt-get install ${missing[*]} (or pass --no-apt)"; exit 1; }
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
fi

# ---- build ------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
	command -v cargo >/dev/null || { log "cargo not found: install Rust (https://rustup.rs) or pass --from DIR"; exit 1; }
	(cd "$HERE" && cargo build --release -p weir-cni -p weir-policyd)
	(cd "$HERE" && cargo build --release -p weirctl) || log "WARNING: weirctl did not build; installing without it"
fi
for b in weir weir-policyd; do
	[ -x "$FROM/$b" ] || { log "no $b binary in $FROM (build first, or pass --from DIR)"; exit 1; }
done

# ---- bpffs --------------------------------------------------------------------
# The pins live there; a fresh machine has nothing mounted. Never mount over
# something else, never remount; a --prefix install (packaging, tests) leaves
# the host's mounts alone.
if [ "$BPFFS_MOUNT" = 1 ] && [ -z "$PREFIX" ] && [ "$(stat -f -c %T "$BPFFS" 2>/dev/null)" != bpf_fs ]; then
	if mountpoint -q "$BPFFS"; then
		log "$BPFFS has another filesystem mounted on it, not bpffs; unmount it or mount bpffs there (mount -t bpf bpf $BPFFS)"
		exit 1
	fi
	mount -t bpf -o mode=0700,nosuid,nodev,noexec bpf "$BPFFS" ||
		{ log "cannot mount bpffs at $BPFFS (run as root): mount -t bpf bpf $BPFFS"; exit 1; }
	log "mounted bpffs at $BPFFS"
fi

# ---- weir, then the conflist, last ----------------------------------------------
# install-cni takes weir and every chained plugin the host lacks from one
# directory: weir from $FROM, the reference plugins from $REF. It checks
# everything (cniVersion, the chained plugins speak it, the pod range) before
# it writes anything. No API server here: the pod range is given (the shipped
# conflist's by default).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
ln -s "$FROM/weir" "$stage/weir"
for p in "$REF"/*; do
	if [ -x "$p" ]; then ln -s "$p" "$stage/$(basename "$p")"; fi
done
"$FROM/weir-policyd" install-cni --from "$stage" \
	--bin-dir "$CNI_BIN_DIR" --conf-dir "$CNI_CONF_DIR" --cni-version "$CNI_VERSION" \
	--pod-cidr "${POD_CIDR:-10.244.1.0/24}" ${CLUSTER_CIDR:+--cluster-cidr "$CLUSTER_CIDR"}

# ---- weir-policyd, weirctl ------------------------------------------------------
mkdir -p "$BIN_DIR"
for b in weir-policyd weirctl; do
	if [ -x "$FROM/$b" ]; then put "$FROM/$b" "$BIN_DIR/$b" 0755; fi
done
log "done"
