#!/usr/bin/env bash
# Builds every server and CLI the tests need from registry packages, pinned in
# versions.env, into $CACHE_DIR/bin/<component>-<version>/. A component whose
# directory already exists is reused as it is.
. "$(dirname "$0")/lib.sh"

# Each build goes to a temporary directory first and is renamed into place, so
# an interrupted build never leaves a half-filled cache entry behind.
publish() { # tmpdir dest
  rm -rf "$2"; mkdir -p "$(dirname "$2")"; mv "$1" "$2"
}

build_kubernetes() {
  local v="$KUBERNETES_VERSION" dest="$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION"
  [ -x "$dest/kube-apiserver" ] && [ -x "$dest/kubectl" ] && return 0
  log "building kube-apiserver and kubectl $v (first time only; about 15 minutes on 2 cores)"
  local mod="$CACHE_DIR/src/kubernetes-$v" gomod staging_v major minor
  mkdir -p "$mod"
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$v"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
  # with local paths; a consumer module points each at its published v0.X.Y.
  staging_v="v0.${v#v1.}"
  {
    echo "module ugo.testenv/kubernetes"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s\.io/[^ ]*\) => \./staging/.*#\t\1 => \1 '"$staging_v"'#p' "$gomod"
    echo ")"
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$mod" && go mod tidy)
  major=${v#v}; major=${major%%.*}; minor=${v#v*.}; minor=${minor%%.*}
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local tmp; tmp=$(mktemp -d "$CACHE_DIR/bin/.kubernetes.XXXX")
  (cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
  publish "$tmp" "$dest"
}

build_etcd() {
  local v="$ETCD_VERSION" dest="$CACHE_DIR/bin/etcd-$ETCD_VERSION"
  [ -x "$dest/etcd" ] && return 0
  log "building etcd $v"
  local mod="$CACHE_DIR/src/etcd-$v"
  mkdir -p "$mod"
  printf 'module ugo.testenv/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$v" >"$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$mod/tools.go"
  (cd "$mod" && go mod tidy)
  local tmp; tmp=$(mktemp -d "$CACHE_DIR/bin/.etcd.XXXX")
  (cd "$mod" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=release" \
    -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  publish "$tmp" "$dest"
}

build_helm() {
  local v="$HELM_VERSION" dest="$CACHE_DIR/bin/helm-$HELM_VERSION"
  [ -x "$dest/helm" ] && return 0
  log "building helm $v"
  local mod="$CACHE_DIR/src/helm-$v" kminor
  mkdir -p "$mod"
  printf 'module ugo.testenv/helm\n\ngo 1.26.0\n\nrequire helm.sh/helm/v3 %s\n' "$v" >"$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n' >"$mod/tools.go"
  (cd "$mod" && go mod tidy)
  # Offline `helm template`/`lint` assume this Kubernetes version.
  kminor=${KUBERNETES_VERSION#v1.}; kminor=${kminor%%.*}
  local tmp; tmp=$(mktemp -d "$CACHE_DIR/bin/.helm.XXXX")
  (cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$v \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor" \
    -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
  publish "$tmp" "$dest"
}

mkdir -p "$CACHE_DIR/bin" "$CACHE_DIR/src"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kubernetes etcd helm s3)
for t in "${targets[@]}"; do
  "build_$t"
done
