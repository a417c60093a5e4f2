# Shared settings for the testenv scripts. Sourced, not run.
set -euo pipefail

TESTENV_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TESTENV_TOOLS_DIR/../.." && pwd)"
# shellcheck source=versions.env
. "$TESTENV_TOOLS_DIR/versions.env"

# Built binaries live outside the repository, keyed by version, so a fresh
# clone on the same machine reuses them and `git clean` never throws them away.
CACHE_DIR="${UGO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/upload-grant-operator}"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

# The node's sandbox image (and the image node tests run): built locally from
# pause/, tagged with a hash of its source so that a change rebuilds it.
PAUSE_SOURCE_HASH=$(cat "$TESTENV_TOOLS_DIR/pause/go.mod" "$TESTENV_TOOLS_DIR/pause/main.go" | sha256sum | cut -c1-12)
PAUSE_IMAGE="localhost/upload-grant-operator/testenv-pause:$PAUSE_SOURCE_HASH"

# shellcheck source=s3.sh
. "$TESTENV_TOOLS_DIR/s3.sh"

log() { printf '[testenv] %s\n' "$*" >&2; }
# is_loopback_registry REF: whether REF's registry is on this machine
# (127.0.0.0/8, localhost, [::1]): spoken to over plain HTTP.
is_loopback_registry() {
  local host=${1#oci://}; host=${host%%/*}
  case "$host" in localhost | localhost:* | 127.* | \[::1\] | \[::1\]:*) return 0 ;; esac
  return 1
}
die() { printf '[testenv] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=node.sh
. "$TESTENV_TOOLS_DIR/node.sh"
