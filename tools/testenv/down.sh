#!/usr/bin/env bash
# Stops every process up.sh started and waits until they are gone.
. "$(dirname "$0")/lib.sh"
STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
if [ "${1:-}" != "--locked" ]; then
  mkdir -p "$STATE_DIR"; exec 9>"$STATE_DIR/.lock"; flock 9
fi
[ -d "$STATE_DIR/pids" ] || exit 0
pids=()
for f in "$STATE_DIR"/pids/*; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  # Each server runs in its own session; signal the whole group.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  pids+=("$pid")
done
# Alive: exists and is not a zombie waiting for a parent that never reaps.
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
deadline=$((SECONDS + 20))
for pid in "${pids[@]}"; do
  while alive "$pid"; do
    if [ $SECONDS -ge $deadline ]; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      [ $SECONDS -ge $((deadline + 5)) ] && die "process $pid survived SIGKILL"
    fi
    sleep 0.1
  done
done
rm -rf "$STATE_DIR/pids" "$STATE_DIR/env"
log "stopped"
