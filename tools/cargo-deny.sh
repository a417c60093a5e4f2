#!/usr/bin/env bash
# cargo-deny.sh ARGS…: runs cargo-deny, built once from crates.io (cargo-tool.sh).
VERSION=0.20.2
exec "$(dirname "$0")/cargo-tool.sh" cargo-deny "$VERSION" "$@"
