#!/usr/bin/env bash
# Fails `make test` at once, with the figures, when the disk cannot hold what
# it builds, instead of a linker error twenty minutes in. A cold run (no
# target/debug yet) writes about 20 GiB there (some 40 test binaries and
# their dependencies, with incremental caches off) plus a few GiB of
# component and Go build caches; a warm one rewrites a few GiB.
# DISK_CHECK_GIB overrides the figure; 0 turns the check off.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
if [ -d "$target/debug/deps" ]; then need=8; else need=28; fi
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
