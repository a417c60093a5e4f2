#!/usr/bin/env bash
# fresh-check.sh: runs the steps of `make test` that install tools and read
# cargo's registry (`make deps`, `make deny`, hadolint) as a new machine
# would, with an empty CARGO_HOME and an empty component cache. A step that
# passes only because an earlier one happened to leave something in a cache
# (cargo-deny reading `cargo metadata` offline after a build fetched only
# this platform's crates) fails here, on every machine, not just a new one.
#
# The new component cache is seeded with what is costly to build and safe to
# reuse: a component directory keyed by its version whose binary answers with
# that version. Everything else (crates, Python venvs) is fetched afresh.
. "$(dirname "$0")/testenv/lib.sh"
log() { printf '[fresh-check] %s\n' "$*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fresh_cache="$tmp/cache"
mkdir -p "$fresh_cache/bin" "$tmp/cargo-home"

# seed NAME-VERSION BINARY VERSION: links the cached component into the new
# cache when BINARY --version names VERSION; otherwise the step under test
# builds it as a new machine would.
seed() {
  local dir="$CACHE_DIR/bin/$1" bin=$2 version=$3
  if [ -x "$dir/$bin" ] && "$dir/$bin" --version 2>/dev/null | grep -qF "$version"; then
    ln -s "$dir" "$fresh_cache/bin/$1"
  else
    log "no checked $1 in $CACHE_DIR; it is built afresh"
  fi
}
deny_version=$(sed -n 's/^VERSION=//p' "$TESTENV_TOOLS_DIR/../cargo-deny.sh")
seed "cargo-deny-$deny_version" bin/cargo-deny "$deny_version"

cd "$REPO_ROOT"
started=$(date +%s)
export CARGO_HOME="$tmp/cargo-home" UGO_CACHE_DIR="$fresh_cache" CARGO_TERM_QUIET=true
# rustup's proxies find the toolchain through RUSTUP_HOME, not CARGO_HOME.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
make --no-print-directory deps deny
tools/hadolint.sh Dockerfile
log "deps, deny and hadolint passed from an empty CARGO_HOME and component cache in $(($(date +%s) - started)) s"
