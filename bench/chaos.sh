#!/usr/bin/env bash
# make chaos: the fault-injection suite (tests/chaos.rs, chaos_suite) against
# an environment of its own in .testenv-chaos (no node), which it starts and
# stops: the suite kills and restarts that environment's kube-apiserver and
# etcd, so it must not share one with anything else. Its STS hands out
# 11-minute sessions, so that the operator's credentials come due for
# refresh, and run out, within the STS faults. Writes bench/results/chaos.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export TESTENV_DIR="$PWD/.testenv-chaos" TESTENV_NODE=0 TESTENV_STS_SESSION=11m
if bash tools/testenv/status.sh >/dev/null 2>&1; then
  echo "a chaos environment is already running in $TESTENV_DIR; stop it with: TESTENV_DIR=$TESTENV_DIR tools/testenv/down.sh" >&2
  exit 1
fi
tools/testenv/with-env.sh cargo test --test chaos -- --ignored --nocapture --test-threads=1 chaos_suite
echo "results: bench/results/chaos.md"
