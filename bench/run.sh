#!/usr/bin/env bash
# make bench: runs the benchmarks in tests/bench.rs against the local
# environment and writes bench/results/latest.md. boto3 (the baseline of the
# signing benchmark) is installed once into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_PYTHON="$(tools/pyvenv.sh boto3-1 "boto3>=1.36,<2")/bin/python"
export BENCH_PYTHON
tools/testenv/with-env.sh cargo test --release --test bench -- --ignored --nocapture --test-threads=1
echo "results: bench/results/latest.md"
