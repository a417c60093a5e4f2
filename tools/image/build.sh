#!/usr/bin/env bash
# build.sh: builds the operator's image without a container engine and writes
# it as an OCI archive, which tools/image/push.sh (`make push`) pushes to a
# registry. Called by `make image` after `make release`.
#   IMAGE      image reference (default docker.io/library/upload-grant-operator:dev)
#   IMAGE_OUT  the archive (default target/image/upload-grant-operator.tar)
. "$(dirname "$0")/../testenv/lib.sh"
log() { printf '[image] %s\n' "$*" >&2; }

IMAGE="${IMAGE:-docker.io/library/upload-grant-operator:dev}"
OUT="${IMAGE_OUT:-$REPO_ROOT/target/image/upload-grant-operator.tar}"
RELEASE_BIN="$REPO_ROOT/target/release/upload-grant-operator"
# The runtime packages of gcr.io/distroless/cc-debian12 the binary needs
# (ldd: libc.so.6, libm.so.6, libgcc_s.so.1, ld-linux), gcc-12-base for
# libgcc's copyright, and ca-certificates for the CA bundle.
PACKAGES=(libc6 libgcc-s1 gcc-12-base ca-certificates)
DEB_CACHE="$CACHE_DIR/debs"

[ -x "$RELEASE_BIN" ] || die "no $RELEASE_BIN; run make release first"
mkdir -p "$DEB_CACHE" "$(dirname "$OUT")"

# The candidate .debs of the machine's apt sources (Debian 12), downloaded
# once into the cache and checked against the archive's SHA256.
uris() { apt-get download --print-uris "${PACKAGES[@]}" 2>/dev/null; }
if ! listing=$(uris) || [ "$(grep -c '\.deb ' <<<"$listing")" -ne ${#PACKAGES[@]} ]; then
  log "apt lists lack ${PACKAGES[*]}; running apt-get update"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  listing=$(uris) || die "apt-get download --print-uris ${PACKAGES[*]} failed"
fi
debs=()
while read -r _uri file _size hash; do
  [ -n "$file" ] || continue
  want=${hash#SHA256:}
  if [ ! -f "$DEB_CACHE/$file" ] || [ "$(sha256sum "$DEB_CACHE/$file" | cut -d' ' -f1)" != "$want" ]; then
    log "downloading $file"
    tmp=$(mktemp -d)
    # apt downloads as its sandbox user _apt, which cannot write to root's cache.
    if [ "$(id -u)" = 0 ] && getent passwd _apt >/dev/null; then chown _apt "$tmp"; fi
    (cd "$tmp" && apt-get download -qq "${file%%_*}") \
      || die "apt-get download of $file failed"
    [ "$(sha256sum "$tmp/$file" | cut -d' ' -f1)" = "$want" ] || die "$file: SHA256 mismatch"
    mv "$tmp/$file" "$DEB_CACHE/$file"
    rm -rf "$tmp"
  fi
  debs+=(--deb "$DEB_CACHE/$file")
done <<<"$listing"

# Stripped as the Dockerfile's build stage does, leaving cargo's output alone.
bin="$(dirname "$OUT")/upload-grant-operator"
strip -o "$bin" "$RELEASE_BIN"
version=$("$RELEASE_BIN" --version | awk '{print $2}')
python3 "$TESTENV_TOOLS_DIR/../image/build.py" --binary "$bin" "${debs[@]}" \
  --ref "$IMAGE" --version "$version" --out "$OUT"

