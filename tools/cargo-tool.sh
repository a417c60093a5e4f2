#!/usr/bin/env bash
# cargo-tool.sh CRATE VERSION ARGS…: runs CRATE's binary (named as the
# crate), built once from crates.io into the cache (keyed by version) with
# `cargo install --locked`. It is built beside its final place and renamed,
# so an interrupted build is never reused, and a cached binary that does not
# answer with its version is built again.
. "$(dirname "$0")/testenv/lib.sh"
crate=$1 version=$2
shift 2
root="$CACHE_DIR/bin/$crate-$version"
if ! "$root/bin/$crate" --version 2>/dev/null | grep -qF "$version"; then
  mkdir -p "$CACHE_DIR/bin"
  tmp=$(mktemp -d "$CACHE_DIR/bin/.$crate.XXXX")
  # Its own target directory (inside tmp), so the project's stays warm.
  CARGO_TARGET_DIR="$tmp/target" nice cargo install --quiet --locked "$crate@$version" --root "$tmp/root" >&2 \
    || { rm -rf "$tmp"; die "cannot build $crate $version"; }
  rm -rf "$root"
  mv "$tmp/root" "$root"
  rm -rf "$tmp"
fi
exec "$root/bin/$crate" "$@"
