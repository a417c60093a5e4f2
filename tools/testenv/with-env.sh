#!/usr/bin/env bash
# Runs a command with the test environment up and its variables exported.
# Starts the environment if needed, and stops it afterwards only if this
# script started it (a `make testenv` you started yourself stays up).
. "$(dirname "$0")/lib.sh"
STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
started=0
if ! bash "$TESTENV_TOOLS_DIR/status.sh" >/dev/null 2>&1; then
  bash "$TESTENV_TOOLS_DIR/up.sh"
  started=1
fi
cleanup() {
  if [ $started = 1 ]; then bash "$TESTENV_TOOLS_DIR/down.sh"; fi
}
trap cleanup EXIT
set +u
# shellcheck disable=SC1091
. "$STATE_DIR/env"
set -u
"$@"
