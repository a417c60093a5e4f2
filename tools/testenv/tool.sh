#!/usr/bin/env bash
# tool.sh NAME: prints the path of the cached NAME (helm or promtool) at the
# version versions.env pins, building it first if needed (build.sh). Tests
# that need only a tool, not the running environment, find it this way.
. "$(dirname "$0")/lib.sh"
[ $# -eq 1 ] || die "usage: tool.sh helm|promtool"
case "$1" in
  helm) path="$CACHE_DIR/bin/helm-$HELM_VERSION/helm" ;;
  promtool) path="$CACHE_DIR/bin/promtool-$PROMETHEUS_DEB_VERSION/promtool" ;;
  *) die "tool.sh knows helm and promtool, not $1" ;;
esac
[ -x "$path" ] || bash "$TESTENV_TOOLS_DIR/build.sh" "$1" >&2
[ -x "$path" ] || die "build.sh $1 made no $path"
echo "$path"
