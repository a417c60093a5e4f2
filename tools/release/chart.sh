#!/usr/bin/env bash
# chart.sh VERSION oci://REGISTRY/PATH: packages charts/upload-grant-operator
# as VERSION (its appVersion too, so its default image is the release's
# image tag) and pushes it to an OCI registry with helm; prints what was
# pushed as REPOSITORY@DIGEST. The release workflow runs it; tests/release.rs
# runs it against the test environment's registry and installs from there.
# helm: $HELM, else the one tools/testenv/build.sh builds into the cache.
# Credentials: helm's (`helm registry login`).
. "$(dirname "$0")/../testenv/lib.sh"
[ $# -eq 2 ] || die "usage: chart.sh VERSION oci://REGISTRY/PATH"
version=${1#v} dest=$2
case "$dest" in oci://*) ;; *) die "$dest: not an oci:// registry path" ;; esac
if [ -z "${HELM:-}" ]; then
  bash "$TESTENV_TOOLS_DIR/build.sh" helm
  HELM="$CACHE_DIR/bin/helm-$HELM_VERSION/helm"
fi
flags=()
if is_loopback_registry "$dest"; then flags+=(--plain-http); fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$HELM" package "$REPO_ROOT/charts/upload-grant-operator" --version "$version" --app-version "$version" \
  -d "$out" >/dev/null
"$HELM" push "$out/upload-grant-operator-$version.tgz" "$dest" "${flags[@]}" >"$out/pushed" 2>&1 ||
  { cat "$out/pushed" >&2; die "helm push to $dest failed"; }
digest=$(sed -n 's/^Digest: //p' "$out/pushed")
[ -n "$digest" ] || { cat "$out/pushed" >&2; die "helm push printed no digest"; }
echo "${dest#oci://}/upload-grant-operator@$digest"
