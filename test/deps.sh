#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test Weir.
# Idempotent: installs only missing packages. Needs root.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool iproute2 iptables nftables ipset
      iperf3 sockperf iputils-ping containernetworking-plugins util-linux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The image's tests (test/tests/root_image.rs) load it into real runtimes;
# test/tests/root_runtimes.rs starts pods in them from a busybox-static
# tree (no registry, no image to pull). Without recommends: buildah, criu, fuse-overlayfs, slirp4netns and the
# rest are not needed to load and run an image (some 40 MB to fetch).
runtime_pkgs=(podman containerd runc busybox-static)
missing_runtimes=()
for p in "${runtime_pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_runtimes+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_runtimes[@]} -gt 0 ]; then
	echo "installing: ${missing[*]} ${missing_runtimes[*]}" >&2
	apt-get update -qq
	[ ${#missing[@]} -eq 0 ] ||
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	[ ${#missing_runtimes[@]} -eq 0 ] ||
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_runtimes[@]}" >/dev/null
fi
# weir-policyd and weirctl mount bpffs themselves when absent, but the
# library's root tests load the dataplane without them. The fresh-machine
# test (weirctl/tests/root_lab.rs) unmounts it in a namespace of its own.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
