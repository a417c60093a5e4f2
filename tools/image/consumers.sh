#!/usr/bin/env bash
# consumers.sh: builds the example consumers' image without a container
# engine and writes it as an OCI archive, which tools/image/push.sh pushes to
# a registry (the tests, to the test environment's). `make consumer-image`.
#   CONSUMER_IMAGE      reference (default docker.io/library/upload-grant-consumers:dev)
#   CONSUMER_IMAGE_OUT  the archive (default target/image/upload-grant-consumers.tar)
#
# What is in it: a Debian 12 root file system made by debootstrap from the
# packages below (curl, jq, python3, a Java runtime, Node.js, CA
# certificates, and what they depend on), the Go consumer built here as a
# static binary (/usr/local/bin/consumer-go), and examples/ at /examples.
# The root file system is made once per package list and kept as a finished
# layer in the cache ($CACHE_DIR/consumer-image/<key>), so later builds only
# rebuild the Go binary and the small app layer.
. "$(dirname "$0")/../testenv/lib.sh"
log() { printf '[consumer-image] %s\n' "$*" >&2; }

IMAGE="${CONSUMER_IMAGE:-docker.io/library/upload-grant-consumers:dev}"
OUT="${CONSUMER_IMAGE_OUT:-$REPO_ROOT/target/image/upload-grant-consumers.tar}"
SUITE=bookworm
PACKAGES=(ca-certificates curl jq python3 openjdk-17-jre-headless nodejs)
EXAMPLES=(consumer.py consumer.go Consumer.java consumer.mjs curl-job.yaml)

command -v debootstrap >/dev/null || die "no debootstrap; run tools/install-deps.sh"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

# What debootstrap leaves that an image does not need, or must not carry:
# downloaded .debs and package lists, documentation and translations, logs,
# and the host's resolv.conf and hostname it copies (the kubelet writes them).
trim_rootfs() {
  local r=$1
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
    "$r"/usr/share/man "$r"/usr/share/info "$r"/usr/share/locale "$r"/usr/share/lintian \
    "$r"/var/log/* "$r"/etc/resolv.conf "$r"/etc/hostname "$r"/etc/hosts "$r"/tmp/*
  find "$r"/usr/share/doc -mindepth 2 ! -name copyright ! -type d -delete
  find "$r"/usr/share/doc -mindepth 1 -type d -empty -delete
}

# The Debian mirror the machine's apt uses for bookworm (sources.list or deb822).
mirror=$(apt-cache policy 2>/dev/null | awk -v s="$SUITE/main" '$3 == s && $2 ~ /^https?:/ {print $2; exit}')
[ -n "$mirror" ] || die "no $SUITE main in the machine's apt sources (apt-cache policy)"
deb_arch=$(dpkg --print-architecture)
case "$deb_arch" in
  amd64 | arm64 | s390x | riscv64) arch=$deb_arch ;;
  armhf) arch=arm ;;
  ppc64el) arch=ppc64le ;;
  *) die "unknown architecture $deb_arch" ;;
esac

# The cache key: everything that decides the root file system's content.
key=$( { echo "$SUITE $deb_arch minbase ${PACKAGES[*]}"; declare -f trim_rootfs; } | sha256sum | cut -c1-16)
base_dir="$CACHE_DIR/consumer-image/$key"
base_layer="$base_dir/base.tar.gz"
mkdir -p "$CACHE_DIR/consumer-image" "$(dirname "$OUT")"
work="$(dirname "$OUT")/consumers"
mkdir -p "$work"

exec 9>"$CACHE_DIR/consumer-image/.lock"
flock 9
rootfs_args=()
if [ ! -f "$base_layer" ] || [ ! -f "$base_layer.json" ]; then
  tmp="$base_dir.tmp"
  if [ -d "$tmp" ]; then
    findmnt -rn -o TARGET | grep -q "^$tmp/" && die "$tmp has mounts left from an interrupted run; unmount them"
    rm -rf "$tmp"
  fi
  mkdir -p "$tmp"
  log "debootstrap $SUITE from $mirror: ${PACKAGES[*]} (once per package list; a few minutes)"
  pkgs=$(IFS=,; echo "${PACKAGES[*]}")
  if ! debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -20 "$tmp/debootstrap.log" >&2
    die "debootstrap failed; its log: $tmp/debootstrap.log"
  fi
  trim_rootfs "$tmp/rootfs"
  rootfs_args=(--rootfs "$tmp/rootfs")
  mkdir -p "$base_dir"
  log "writing the base layer into the cache ($base_dir)"
fi

log "building the Go consumer (static)"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/consumer-go" "$REPO_ROOT/examples/consumer.go"

example_args=()
for f in "${EXAMPLES[@]}"; do example_args+=(--example "$REPO_ROOT/examples/$f"); done
python3 "$TESTENV_TOOLS_DIR/../image/consumers.py" "${rootfs_args[@]}" --base-layer "$base_layer" \
  --go-binary "$work/consumer-go" "${example_args[@]}" --packages "${PACKAGES[*]}" \
  --arch "$arch" --ref "$IMAGE" --out "$OUT"
if [ ${#rootfs_args[@]} -gt 0 ]; then
  findmnt -rn -o TARGET | grep -q "^$base_dir.tmp/" || rm -rf "$base_dir.tmp"
fi
flock -u 9

