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

# upstream_gomod MODULE@VERSION: path of that version's go.mod, downloaded.
upstream_gomod() {
  local gomod
  gomod=$(go mod download -json "$1" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "could not download $1"
  echo "$gomod"
}

# consumer_module DIR GOVERSION MODULE VERSION PKG...: a module of our own
# that requires MODULE@VERSION and imports PKG... (main packages included),
# so `go mod tidy` pins their dependencies. Extra go.mod lines (replace
# directives) come on stdin.
consumer_module() {
  local dir=$1 gover=$2 module=$3 version=$4; shift 4
  mkdir -p "$dir"
  {
    printf 'module ugo.testenv/%s\n\ngo %s\n\nrequire %s %s\n\n' "$(basename "$dir")" "$gover" "$module" "$version"
    cat
  } >"$dir/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
}

# go_build MODDIR DEST LDFLAGS BIN=PKG...: builds each PKG as BIN, statically
# and stripped, then publishes them together as DEST.
go_build() {
  local mod=$1 dest=$2 ldflags=$3; shift 3
  local tmp pair; tmp=$(mktemp -d "$CACHE_DIR/bin/.build.XXXX")
  for pair in "$@"; do
    (cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/${pair%%=*}" "${pair#*=}")
  done
  publish "$tmp" "$dest"
}

# The consumer module every Kubernetes binary is built from: the control
# plane's kube-apiserver and kubectl, and the node's kubelet,
# kube-controller-manager and kube-scheduler. Sets KUBERNETES_MOD and
# KUBERNETES_LDFLAGS.
KUBERNETES_CMDS=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler)
kubernetes_module() {
  local v="$KUBERNETES_VERSION" gomod staging_v major minor pkg cmd pkgs=()
  KUBERNETES_MOD="$CACHE_DIR/src/kubernetes-$v"
  gomod=$(upstream_gomod "k8s.io/kubernetes@$v")
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
  # with local paths; a consumer module points each at its published v0.X.Y.
  staging_v="v0.${v#v1.}"
  for cmd in "${KUBERNETES_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  sed -n 's#^\s*\(k8s\.io/[^ ]*\) => \./staging/.*#replace \1 => \1 '"$staging_v"'#p' "$gomod" |
    consumer_module "$KUBERNETES_MOD" 1.26.0 k8s.io/kubernetes "$v" "${pkgs[@]}"
  major=${v#v}; major=${major%%.*}; minor=${v#v*.}; minor=${minor%%.*}
  KUBERNETES_LDFLAGS=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    KUBERNETES_LDFLAGS+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    KUBERNETES_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
}

build_kubernetes() {
  local v="$KUBERNETES_VERSION" dest="$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION"
  [ -x "$dest/kube-apiserver" ] && [ -x "$dest/kubectl" ] && return 0
  log "building kube-apiserver and kubectl $v (first time only; about 10 minutes on 2 cores)"
  kubernetes_module
  go_build "$KUBERNETES_MOD" "$dest" "$KUBERNETES_LDFLAGS" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kubectl=k8s.io/kubernetes/cmd/kubectl
}

# The node's Kubernetes parts, from the same module (so mostly from the same
# build cache) as kube-apiserver.
build_node() {
  local v="$KUBERNETES_VERSION" dest="$CACHE_DIR/bin/kubernetes-node-$KUBERNETES_VERSION" c
  [ -x "$dest/kubelet" ] && [ -x "$dest/kube-controller-manager" ] && [ -x "$dest/kube-scheduler" ] && return 0
  log "building kubelet, kube-controller-manager and kube-scheduler $v (first time only)"
  kubernetes_module
  go_build "$KUBERNETES_MOD" "$dest" "$KUBERNETES_LDFLAGS" \
    kubelet=k8s.io/kubernetes/cmd/kubelet \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler
}

# containerd 2.x (Kubernetes 1.36 needs it; Debian ships 1.6), ctr and the
# runc shim, static, without the snapshotters that need cgo or kernel modules.
# runc itself is Debian's (tools/install-deps.sh).
build_containerd() {
  local v="$CONTAINERD_VERSION" dest="$CACHE_DIR/bin/containerd-$CONTAINERD_VERSION"
  local mod="$CACHE_DIR/src/containerd-$CONTAINERD_VERSION" m=github.com/containerd/containerd/v2
  [ -x "$dest/containerd" ] && [ -x "$dest/ctr" ] && [ -x "$dest/containerd-shim-runc-v2" ] && return 0
  log "building containerd $v"
  consumer_module "$mod" 1.26.6 "$m" "$v" "$m/cmd/containerd" "$m/cmd/ctr" "$m/cmd/containerd-shim-runc-v2" </dev/null
  GOFLAGS="$GOFLAGS -tags=no_btrfs,no_devmapper,no_zfs" \
    go_build "$mod" "$dest" "-X $m/version.Version=$v -X $m/version.Revision=$v" \
    containerd="$m/cmd/containerd" ctr="$m/cmd/ctr" containerd-shim-runc-v2="$m/cmd/containerd-shim-runc-v2"
}

# The CNI reference plugins the pod network needs (node.sh): bridge, its
# host-local IPAM, and loopback, which containerd runs for every sandbox.
build_cni() {
  local v="$CNI_PLUGINS_VERSION" dest="$CACHE_DIR/bin/cni-plugins-$CNI_PLUGINS_VERSION"
  local mod="$CACHE_DIR/src/cni-plugins-$CNI_PLUGINS_VERSION" m=github.com/containernetworking/plugins
  [ -x "$dest/bridge" ] && [ -x "$dest/host-local" ] && [ -x "$dest/loopback" ] && return 0
  log "building the CNI plugins $v"
  consumer_module "$mod" 1.26.8 "$m" "$v" "$m/plugins/main/bridge" "$m/plugins/ipam/host-local" \
    "$m/plugins/main/loopback" </dev/null
  go_build "$mod" "$dest" "-X $m/pkg/utils/buildversion.BuildVersion=$v" \
    bridge="$m/plugins/main/bridge" host-local="$m/plugins/ipam/host-local" loopback="$m/plugins/main/loopback"
}

build_etcd() {
  local v="$ETCD_VERSION" dest="$CACHE_DIR/bin/etcd-$ETCD_VERSION" mod="$CACHE_DIR/src/etcd-$ETCD_VERSION"
  [ -x "$dest/etcd" ] && return 0
  log "building etcd $v"
  consumer_module "$mod" 1.26.0 go.etcd.io/etcd/server/v3 "$v" go.etcd.io/etcd/server/v3 </dev/null
  go_build "$mod" "$dest" "-X go.etcd.io/etcd/api/v3/version.GitSHA=release" etcd=go.etcd.io/etcd/server/v3
}

build_helm() {
  local v="$HELM_VERSION" dest="$CACHE_DIR/bin/helm-$HELM_VERSION" mod="$CACHE_DIR/src/helm-$HELM_VERSION" kminor
  [ -x "$dest/helm" ] && return 0
  log "building helm $v"
  consumer_module "$mod" 1.26.0 helm.sh/helm/v3 "$v" helm.sh/helm/v3/cmd/helm </dev/null
  # Offline `helm template`/`lint` assume this Kubernetes version.
  kminor=${KUBERNETES_VERSION#v1.}; kminor=${kminor%%.*}
  go_build "$mod" "$dest" "-X helm.sh/helm/v3/internal/version.version=$v \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor" helm=helm.sh/helm/v3/cmd/helm
}

# The sandbox ("pause") image, which tests also run with other arguments: the
# static program in pause/ in a one-layer OCI image archive that
# `ctr images import` loads. Keyed by a hash of its source (PAUSE_IMAGE).
build_pause() {
  local dest="$CACHE_DIR/bin/pause-$PAUSE_SOURCE_HASH" tmp oci layer config manifest
  [ -f "$dest/pause.oci.tar" ] && return 0
  log "building the pause image $PAUSE_IMAGE"
  tmp=$(mktemp -d "$CACHE_DIR/bin/.build.XXXX"); oci="$tmp/oci"
  mkdir -p "$tmp/rootfs" "$oci/blobs/sha256"
  (cd "$TESTENV_TOOLS_DIR/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/rootfs/pause" .)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/rootfs" -cf "$tmp/layer.tar" pause
  # blob FILE: stores FILE under its digest; prints "DIGEST SIZE".
  blob() {
    local d; d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$oci/blobs/sha256/$d"; echo "sha256:$d $(stat -c %s "$1")"
  }
  read -r -a layer < <(blob "$tmp/layer.tar")
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "${layer[0]}" >"$tmp/config.json"
  read -r -a config < <(blob "$tmp/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "${config[@]}" "${layer[@]}" >"$tmp/manifest.json"
  read -r -a manifest < <(blob "$tmp/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${manifest[@]}" "$PAUSE_IMAGE" "${PAUSE_IMAGE##*:}" >"$oci/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$oci" -cf "$tmp/pause.oci.tar" .
  rm -rf "$tmp/rootfs" "$tmp/oci" "$tmp"/*.json "$tmp/layer.tar"
  publish "$tmp" "$dest"
}

# promtool from Debian 12's prometheus package, pinned by its Debian
# version: apt downloads it (checking it against the signed archive) and
# only /usr/bin/promtool is kept. A build from the Go module proxy would
# compile Prometheus with the service-discovery SDKs promtool links.
build_promtool() {
  local v="$PROMETHEUS_DEB_VERSION" dest="$CACHE_DIR/bin/promtool-$PROMETHEUS_DEB_VERSION" tmp deb
  [ -x "$dest/promtool" ] && return 0
  log "fetching promtool from Debian's prometheus $v"
  tmp=$(mktemp -d "$CACHE_DIR/bin/.build.XXXX")
  # apt downloads as its sandbox user _apt, which cannot write to root's cache.
  if [ "$(id -u)" = 0 ] && getent passwd _apt >/dev/null; then chown _apt "$tmp"; fi
  if ! (cd "$tmp" && apt-get download -qq "prometheus=$v" 2>/dev/null); then
    log "apt lists lack prometheus $v; running apt-get update"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    (cd "$tmp" && apt-get download -qq "prometheus=$v") || die "apt-get download prometheus=$v failed"
  fi
  deb=$(ls "$tmp"/prometheus_*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/bin/promtool
  mv "$tmp/usr/bin/promtool" "$tmp/promtool"
  rm -rf "$tmp/usr" "$deb"
  "$tmp/promtool" --version >/dev/null || die "the promtool of prometheus $v does not run"
  publish "$tmp" "$dest"
}

# go_tool NAME VERSION MODULE LDFLAGS BIN=PKG...: a tool from one module at
# one version, as $CACHE_DIR/bin/NAME-VERSION/BIN..., unless all are there.
go_tool() {
  local name=$1 v=$2 m=$3 ldflags=$4; shift 4
  local dest="$CACHE_DIR/bin/$name-$v" mod="$CACHE_DIR/src/$name-$v" pair missing=0 pkgs=()
  for pair in "$@"; do
    [ -x "$dest/${pair%%=*}" ] || missing=1
    pkgs+=("${pair#*=}")
  done
  [ $missing = 1 ] || return 0
  log "building $name $v"
  consumer_module "$mod" 1.26.0 "$m" "$v" "${pkgs[@]}" </dev/null
  go_build "$mod" "$dest" "$ldflags" "$@"
}

# The registry the node pulls images from (up.sh starts it on loopback).
build_registry() {
  local m=github.com/distribution/distribution/v3
  go_tool registry "$DISTRIBUTION_VERSION" "$m" "-X $m/version.version=$DISTRIBUTION_VERSION" \
    registry="$m/cmd/registry"
}

# crane: pushes OCI archives to a registry without a container engine.
build_crane() {
  local m=github.com/google/go-containerregistry
  go_tool crane "$GO_CONTAINERREGISTRY_VERSION" "$m" "-X $m/cmd/crane/cmd.Version=$GO_CONTAINERREGISTRY_VERSION" \
    crane="$m/cmd/crane"
}

build_actionlint() {
  local m=github.com/rhysd/actionlint
  go_tool actionlint "$ACTIONLINT_VERSION" "$m" "-X $m.version=$ACTIONLINT_VERSION" actionlint="$m/cmd/actionlint"
}

# krew's own manifest checker, which tests/release.rs runs on the manifest
# tools/release/krew.sh fills; it installs each platform's archive with
# `kubectl krew`, so krew itself too.
build_krew() {
  local m=sigs.k8s.io/krew
  go_tool krew "$KREW_VERSION" "$m" "-X $m/internal/version.gitTag=$KREW_VERSION" \
    validate-krew-manifest="$m/cmd/validate-krew-manifest" kubectl-krew="$m/cmd/krew"
}

mkdir -p "$CACHE_DIR/bin" "$CACHE_DIR/src"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kubernetes etcd helm s3 node containerd cni pause promtool registry crane actionlint krew)
for t in "${targets[@]}"; do
  "build_$t"
done
