#!/usr/bin/env bash
# pyvenv.sh NAME REQUIREMENT: prints the path of a Python venv in the cache
# with REQUIREMENT installed, creating it once. It is built beside its final
# place and renamed, so an interrupted install is never reused.
. "$(dirname "$0")/testenv/lib.sh"
[ $# -eq 2 ] || die "usage: pyvenv.sh NAME REQUIREMENT"
venv="$CACHE_DIR/venv-$1"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv" "$venv.tmp"
  python3 -m venv "$venv.tmp" >&2
  "$venv.tmp/bin/pip" install --quiet "$2" >&2
  touch "$venv.tmp/.complete"
  # Only bin/python and the packages' own binaries are used, which work
  # from the new place (pip's script shebangs would not).
  mv "$venv.tmp" "$venv"
fi
echo "$venv"
