#!/usr/bin/env bash
# index.sh REF IMAGE@DIGEST...: joins images already in a registry (one per
# architecture, each pushed by push.sh) into one multi-architecture index
# tagged REF, and prints it as REPOSITORY@DIGEST. The release workflow runs
# it after its per-architecture builds; tests/release.rs runs it against the
# test environment's registry.
. "$(dirname "$0")/../testenv/lib.sh"
[ $# -ge 2 ] || die "usage: index.sh REGISTRY/REPOSITORY:TAG IMAGE@DIGEST..."
ref=$1; shift
flags=()
if is_loopback_registry "$ref"; then flags+=(--insecure); fi
args=()
for image in "$@"; do args+=(-m "$image"); done
digest=$(bash "$(dirname "$0")/crane.sh" index append "${flags[@]}" "${args[@]}" -t "$ref" --docker-empty-base=false)
case "$digest" in
  *@sha256:*) echo "$digest" ;;
  *) repository=${ref%:*}; echo "$repository@${digest##*@}" ;;
esac
