#!/usr/bin/env bash
# cargo-deny.sh ARGS…: runs cargo-deny, built once from crates.io into the
# cache (keyed by version) with `cargo install --locked`. It is built beside
# its final place and renamed, so an interrupted build is never reused, and
# a cached binary that does not answer with its version is built again.
. "$(dirname "$0")/testenv/lib.sh"
VERSION=0.20.2
root="$CACHE_DIR/bin/cargo-deny-$VERSION"
if ! "$root/bin/cargo-deny" --version 2>/dev/null | grep -qF "cargo-deny $VERSION"; then
  mkdir -p "$CACHE_DIR/bin"
  tmp=$(mktemp -d "$CACHE_DIR/bin/.cargo-deny.XXXX")
  # Its own target directory (inside tmp), so the project's stays warm.
  CARGO_TARGET_DIR="$tmp/target" nice cargo install --quiet --locked "cargo-deny@$VERSION" --root "$tmp/root" >&2 \
    || { rm -rf "$tmp"; die "cannot build cargo-deny $VERSION"; }
  rm -rf "$root"
  mv "$tmp/root" "$root"
  rm -rf "$tmp"
fi
exec "$root/bin/cargo-deny" "$@"
