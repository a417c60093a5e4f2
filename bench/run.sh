#!/usr/bin/env bash
# make bench: runs the benchmarks in tests/bench.rs against the local
# environment and writes bench/results/latest.md. boto3 (the baseline of the
# signing benchmark) is installed once into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR="${UGO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/upload-grant-operator}"
VENV="$CACHE_DIR/bench-venv-boto3-1"
if [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "boto3>=1.36,<2"
fi
export BENCH_PYTHON="$VENV/bin/python"
tools/testenv/with-env.sh cargo test --release --test bench -- --ignored --nocapture --test-threads=1
echo "results: bench/results/latest.md"
