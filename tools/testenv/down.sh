#!/usr/bin/env bash
# Stops every process up.sh started and waits until they are gone; with a
# node, also its containers, and removes the mounts, cgroups and pod network
# (bridge, CNI state) they left.
. "$(dirname "$0")/lib.sh"
STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
if [ "${1:-}" != "--locked" ]; then
  mkdir -p "$STATE_DIR"; exec 9>"$STATE_DIR/.lock"; flock 9
fi
[ -d "$STATE_DIR/pids" ] || { node_cleanup; exit 0; }

# Alive: exists and is not a zombie waiting for a parent that never reaps.
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

# stop PIDFILE...: signals each server's process group (each runs in its own
# session), waits for them, and forgets them.
stop() {
  local f pid pids=() deadline=$((SECONDS + 20))
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    while alive "$pid"; do
      if [ $SECONDS -ge $deadline ]; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        [ $SECONDS -ge $((deadline + 5)) ] && die "process $pid survived SIGKILL"
      fi
      sleep 0.1
    done
  done
  rm -f "$@"
}

# The kubelet first, so that it restarts nothing; then the pods' containers
# while containerd still runs; then the servers, etcd last: an apiserver
# whose etcd is gone takes its whole grace period to stop.
stop "$STATE_DIR/pids/kubelet"
node_remove_containers
servers=()
for f in "$STATE_DIR"/pids/*; do
  [ "$(basename "$f")" = etcd ] || servers+=("$f")
done
stop "${servers[@]}"
stop "$STATE_DIR"/pids/*
node_cleanup
rm -rf "$STATE_DIR/pids" "$STATE_DIR/env" "$STATE_DIR/node-values.yaml"
log "stopped"
