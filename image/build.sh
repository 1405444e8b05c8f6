#!/usr/bin/env bash
# image/build.sh - build Weir's OCI image from our binaries and the Debian
# files they need at run time, without a container registry or base image.
#
# The layer is a plain tar made here (sorted names, one mtime, owner 0:0,
# no atime/ctime), gzip -n, and the config, manifest and index are written
# byte for byte by this script: the same binaries, Debian package versions
# and SOURCE_DATE_EPOCH give the same digest. See docs/runtimes.md ("The image").
set -euo pipefail
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then echo "image/build.sh: run it, do not source it" >&2; return 1; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BINARIES=(weir weir-policyd weirctl)
# weir sits next to weir-policyd: `weir-policyd install-cni` copies the CNI
# binary from its own directory to the host by default.
BIN_IN_IMAGE=/usr/local/bin

usage() {
	cat <<EOF
Usage: image/build.sh [options]

Builds an OCI image holding ${BINARIES[*]} (in $BIN_IN_IMAGE, entrypoint
weir-policyd) and the shared libraries they load, copied from this
machine's Debian packages (each checked with dpkg), and writes it as an OCI
archive (a tar of an OCI image layout) for \`podman load -i\`,
\`ctr image import\` or \`skopeo copy oci-archive:...\`.

Options:
  --bin-dir DIR   where the binaries are (default $TARGET/release;
                  build them with: cargo build --release -p weir-cni -p weir-policyd -p weirctl)
  --output FILE   the archive (default $TARGET/image/weir-<version>.oci.tar);
                  written to a temporary name and renamed when complete
  --name REF      the image's name (default localhost/weir:<version>)
  -h, --help      this text

SOURCE_DATE_EPOCH (seconds) sets every file's mtime and the image's creation
date; unset, it is the commit time of the repository's HEAD.
EOF
}

die() {
	echo "image/build.sh: $*" >&2
	exit 1
}

BIN_DIR="$TARGET/release" OUTPUT="" NAME=""
while [ $# -gt 0 ]; do
	case $1 in
	--bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift ;;
	--output) OUTPUT=${2:?--output needs a file name}; shift ;;
	--name) NAME=${2:?--name needs an image reference such as localhost/weir:dev}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "image/build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done

for tool in tar gzip sha256sum dpkg-query ldd; do
	command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install tar gzip coreutils dpkg libc-bin)"
done
for b in "${BINARIES[@]}"; do
	if [ ! -f "$BIN_DIR/$b" ] || [ ! -x "$BIN_DIR/$b" ]; then
		die "$BIN_DIR has no executable $b: build it (cargo build --release -p weir-cni -p weir-policyd -p weirctl) or pass --bin-dir with all of ${BINARIES[*]}"
	fi
done

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null) ||
		die "SOURCE_DATE_EPOCH is unset and $REPO is not a git checkout: set it (seconds since 1970) so the image is reproducible"
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH: expected whole seconds since 1970, e.g. $(date +%s)"
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

VERSION=$("$BIN_DIR/weir-policyd" --version | awk '{print $2}')
[[ $VERSION =~ ^[0-9A-Za-z._+-]+$ ]] || die "$BIN_DIR/weir-policyd --version printed no usable version ($VERSION)"
NAME=${NAME:-localhost/weir:$VERSION}
[[ $NAME =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] || die "--name $NAME: expected a reference such as localhost/weir:dev (lower case, no spaces)"
ARCH=$(dpkg --print-architecture)
OUTPUT=${OUTPUT:-$TARGET/image/weir-$VERSION.oci.tar}
OUT_DIR=$(dirname "$OUTPUT")
mkdir -p "$OUT_DIR"

# Everything is assembled in a scratch directory beside the output and the
# archive renamed into place last: a failure leaves no partial archive (and
# an older archive at OUTPUT untouched).
WORK=$(mktemp -d "$OUT_DIR/.weir-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS$BIN_IN_IMAGE" "$ROOTFS/tmp" "$ROOTFS/usr/share/doc/weir"
for b in "${BINARIES[@]}"; do
	cp "$BIN_DIR/$b" "$ROOTFS$BIN_IN_IMAGE/$b"
done

# The shared libraries (and the dynamic loader) each binary loads, at the
# paths the binary asks for, taken from the Debian package that owns them.
# A library no package owns is refused: the image holds Debian's files only.
# Nothing else is needed: weir-policyd execs no program; weir runs on the
# host (install-cni copies it there) and execs the host's nft and IPAM
# plugins; only `weirctl lab` execs `ip`, and the lab is not run in a pod.
declare -A PACKAGES=()
for b in "${BINARIES[@]}"; do
	libs=$(ldd "$BIN_DIR/$b" 2>&1) || {
		[[ $libs == *"not a dynamic executable"* ]] && continue
		die "ldd $BIN_DIR/$b failed: $libs"
	}
	if grep -q "not found" <<<"$libs"; then
		die "$BIN_DIR/$b needs libraries this machine lacks: $(grep "not found" <<<"$libs" | tr -s '\t\n' ' ')"
	fi
	while read -r lib; do
		owner=$(dpkg-query -S "$lib" 2>/dev/null | head -n 1) ||
			die "$lib (loaded by $b) belongs to no Debian package; the image takes only Debian's files"
		pkg=${owner%%: *}
		PACKAGES[$pkg]=$(dpkg-query -W -f='${Version}' "$pkg")
		mkdir -p "$ROOTFS$(dirname "$lib")"
		cp -L "$lib" "$ROOTFS$lib"
	done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$libs")
done

# Each package's copyright file travels with its files, and the list of
# packages and versions (the inputs besides our binaries) is in the image
# and in its config's labels.
pkg_list=""
for pkg in $(printf '%s\n' "${!PACKAGES[@]}" | LC_ALL=C sort); do
	name=${pkg%%:*}
	copyright=/usr/share/doc/$name/copyright
	[ -f "$copyright" ] || die "$copyright is missing (the license of $pkg, whose libraries the image holds): reinstall $name"
	mkdir -p "$ROOTFS/usr/share/doc/$name"
	cp -L "$copyright" "$ROOTFS/usr/share/doc/$name/copyright"
	pkg_list+="$name=${PACKAGES[$pkg]} "
done
pkg_list=${pkg_list% }
tr ' ' '\n' <<<"$pkg_list" >"$ROOTFS/usr/share/doc/weir/debian-packages"

# Modes do not depend on the umask or on how the files were copied.
normalize_modes() { # DIR
	find "$1" -type d -exec chmod 0755 {} +
	find "$1" -type f -perm /111 -exec chmod 0755 {} +
	find "$1" -type f ! -perm /111 -exec chmod 0644 {} +
}
normalize_modes "$ROOTFS"
chmod 1777 "$ROOTFS/tmp"

# A tar with nothing of this machine or moment in it.
reproducible_tar() { # OUT DIR
	LC_ALL=C tar --create --file "$1" --directory "$2" \
		--sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
		--format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
}
sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

LAYOUT=$WORK/layout
BLOBS=$LAYOUT/blobs/sha256
mkdir -p "$BLOBS"
# Stores file $1 as a blob and prints its digest.
add_blob() {
	local digest
	digest=$(sha256 "$1")
	mv "$1" "$BLOBS/$digest"
	echo "$digest"
}

reproducible_tar "$WORK/layer.tar" "$ROOTFS"
DIFF_ID=$(sha256 "$WORK/layer.tar")
gzip -n -6 "$WORK/layer.tar"
LAYER_SIZE=$(size "$WORK/layer.tar.gz")
LAYER=$(add_blob "$WORK/layer.tar.gz")

# JSON written by hand: key order and spacing are fixed, so are the digests.
# Every value was checked above to need no escaping.
printf '%s' "{\"architecture\":\"$ARCH\",\"os\":\"linux\",\"created\":\"$CREATED\",\
\"config\":{\"Entrypoint\":[\"$BIN_IN_IMAGE/weir-policyd\"],\"Env\":[\"PATH=/usr/local/bin:/usr/bin:/bin\"],\
\"Labels\":{\"org.opencontainers.image.title\":\"weir\",\"org.opencontainers.image.version\":\"$VERSION\",\
\"org.opencontainers.image.licenses\":\"Apache-2.0\",\"weir.debian-packages\":\"$pkg_list\"}},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$DIFF_ID\"]},\
\"history\":[{\"created\":\"$CREATED\",\"created_by\":\"image/build.sh\"}]}" >"$WORK/config.json"
CONFIG_SIZE=$(size "$WORK/config.json")
CONFIG=$(add_blob "$WORK/config.json")

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$CONFIG\",\"size\":$CONFIG_SIZE},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$LAYER\",\"size\":$LAYER_SIZE}]}" \
	>"$WORK/manifest.json"
MANIFEST_SIZE=$(size "$WORK/manifest.json")
MANIFEST=$(add_blob "$WORK/manifest.json")

# podman names the image from org.opencontainers.image.ref.name, containerd
# from io.containerd.image.name.
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\
\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$MANIFEST\",\"size\":$MANIFEST_SIZE,\
\"annotations\":{\"io.containerd.image.name\":\"$NAME\",\"org.opencontainers.image.ref.name\":\"$NAME\"}}]}" \
	>"$LAYOUT/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"

normalize_modes "$LAYOUT"
reproducible_tar "$WORK/archive.tar" "$LAYOUT"
mv -f "$WORK/archive.tar" "$OUTPUT"
echo "image:    $NAME"
echo "archive:  $OUTPUT"
echo "digest:   sha256:$MANIFEST"
echo "image id: sha256:$CONFIG"
echo "layer:    $LAYER_SIZE bytes (gzip), packages: $pkg_list"
