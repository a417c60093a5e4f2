#!/usr/bin/env bash
# Faults for the chaos suite: signals one of the environment's servers by its
# recorded pid, and restarts it from the command line up.sh recorded (its
# data, e.g. etcd's data dir, stays where it was).
#
#   proc.sh pid NAME            print the server's pid
#   proc.sh kill NAME [SIG]     send SIG (default KILL) and, for KILL/TERM,
#                               wait until the process is gone
#   proc.sh signal NAME SIG     send SIG only (e.g. STOP, CONT)
#   proc.sh start NAME          start it again, as up.sh did (after kill)
#   proc.sh user NAME [plain]   a client certificate for user NAME in the
#                               groups system:masters and testenv:audited
#                               (audited: see up.sh); prints cert and key paths.
#                               plain: in testenv:audited only, so that RBAC
#                               and API Priority and Fairness apply to it
#                               (system:masters is exempt from both)
#
# NAME is a file in .testenv/pids: etcd, kube-apiserver, s3.
. "$(dirname "$0")/lib.sh"
STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
cmd=${1:-} name=${2:-}
[ -n "$cmd" ] && [ -n "$name" ] || die "usage: proc.sh pid|kill|signal|start|user NAME [SIG]"

alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
pidfile="$STATE_DIR/pids/$name"

case "$cmd" in
  pid) cat "$pidfile" ;;
  signal)
    kill "-${3:?signal}" "$(cat "$pidfile")" ;;
  kill)
    sig=${3:-KILL} pid=$(cat "$pidfile")
    kill "-$sig" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while alive "$pid"; do
      [ $SECONDS -lt $deadline ] || die "$name ($pid) still alive 30 s after SIG$sig"
      sleep 0.05
    done ;;
  start)
    [ -f "$STATE_DIR/cmd/$name" ] || die "no recorded command line for $name (a testenv started before proc.sh existed: restart it)"
    if [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; then die "$name is still running"; fi
    LOGS="$STATE_DIR/logs"
    printf '\n--- restarted by proc.sh at %s ---\n' "$(date -u +%FT%TZ)" >>"$LOGS/$name.log"
    # The same as up.sh's start: its own session, the log appended. A plain
    # command in the background, so that $! is the server itself.
    eval "args=( $(cat "$STATE_DIR/cmd/$name") )"
    setsid "${args[@]}" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$pidfile" ;;
  user)
    PKI="$STATE_DIR/pki" dir="$STATE_DIR/users"
    case "${3:-}" in
      "") file=$name groups="/O=system:masters/O=testenv:audited" ;;
      plain) file=$name.plain groups="/O=testenv:audited" ;;
      *) die "unknown user kind ${3} (plain or nothing)" ;;
    esac
    mkdir -p "$dir"
    if [ ! -f "$dir/$file.crt" ]; then
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/$file.key" \
        -out "$dir/$file.csr" -subj "$groups/CN=$name" 2>/dev/null
      printf 'extendedKeyUsage=clientAuth\n' >"$dir/$file.ext"
      openssl x509 -req -in "$dir/$file.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 30 -extfile "$dir/$file.ext" -out "$dir/$file.crt" 2>/dev/null
    fi
    echo "$dir/$file.crt $dir/$file.key" ;;
  *) die "unknown command $cmd" ;;
esac
