#!/usr/bin/env bash
# Exits 0 when every process of the running testenv is alive.
. "$(dirname "$0")/lib.sh"
STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
[ -d "$STATE_DIR/pids" ] || exit 1
n=0
for f in "$STATE_DIR"/pids/*; do
  [ -f "$f" ] || continue
  n=$((n + 1))
  kill -0 "$(cat "$f")" 2>/dev/null || { echo "$(basename "$f") is not running"; exit 1; }
done
[ $n -gt 0 ] || exit 1
echo "running ($n processes)"
