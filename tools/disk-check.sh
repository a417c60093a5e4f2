#!/usr/bin/env bash
# Fails `make test` at once, with the figures, when the disk cannot hold what
# it builds, instead of a linker error twenty minutes in. A cold run (no
# target/debug yet) wrote 4.9 GiB there (some 40 test binaries, the release
# build and the images, with incremental caches off) and, on a new machine,
# builds the components into caches of about 8 GiB (Go's build cache 6.6,
# the component cache 1.3); a warm run rewrites a few GiB.
# DISK_CHECK_GIB overrides the figure; 0 turns the check off.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
if [ -d "$target/debug/deps" ]; then need=6; else need=16; fi
need=${DISK_CHECK_GIB:-$need}
[ "$need" -gt 0 ] || exit 0
mkdir -p "$target"
free_kib=$(df -Pk "$target" | awk 'NR == 2 { print $4 }')
free_gib=$((free_kib / 1024 / 1024))
if [ "$free_gib" -lt "$need" ]; then
  echo "disk-check: $free_gib GiB free under $target; make test needs about $need GiB." >&2
  echo "disk-check: free some space (cargo clean removes target/), or set DISK_CHECK_GIB=0 to try anyway." >&2
  exit 1
fi
