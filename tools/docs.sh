#!/usr/bin/env bash
# docs.sh [DEST]: builds the book (`make docs`). Renders the diagrams,
# docs/diagrams/*.dot, to SVG in docs/src/diagrams (generated, not
# committed) with Graphviz, then docs/ with mdbook into DEST (default
# target/book).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/target/book}"
command -v dot >/dev/null || { echo "docs.sh: Graphviz's dot is missing; tools/install-deps.sh installs it" >&2; exit 1; }
out="$root/docs/src/diagrams"
tmp=$(mktemp -d "$root/docs/src/.diagrams.XXXX")
trap 'rm -rf "$tmp"' EXIT
for source in "$root"/docs/diagrams/*.dot; do
  name=$(basename "${source%.dot}")
  dot -Tsvg "$source" -o "$tmp/$name.svg"
done
rm -rf "$out"
mv "$tmp" "$out"
exec "$root/tools/mdbook.sh" build "$root/docs" --dest-dir "$dest"
