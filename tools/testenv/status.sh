#!/usr/bin/env bash
# Exits 0 when every process of the running testenv is alive.
. "$(dirname "$0")/lib.sh"
STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
[ -d "$STATE_DIR/pids" ] || exit 1
n=0
for f in "$STATE_DIR"/pids/*; do
  [ -f "$f" ] || continue
  n=$((n + 1))
  pid=$(cat "$f")
  if [ ! -r "/proc/$pid/stat" ] || grep -q '^[0-9]* (.*) Z' "/proc/$pid/stat"; then
    echo "$(basename "$f") is not running"; exit 1
  fi
done
[ $n -gt 0 ] || exit 1
echo "running ($n processes)"
