#!/usr/bin/env bash
# mdbook.sh ARGS…: runs mdbook, which builds docs/ (`make docs`), built once
# from crates.io (cargo-tool.sh).
VERSION=0.5.4
exec "$(dirname "$0")/cargo-tool.sh" mdbook "$VERSION" "$@"
