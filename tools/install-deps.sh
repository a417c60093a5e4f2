#!/usr/bin/env bash
# Installs the system packages the build and tests need, when missing.
# Rust and Go come with the machine; everything else is built by
# tools/testenv/build.sh from registry packages.
set -euo pipefail
declare -A pkg_for=([openssl]=openssl [curl]=curl [python3]=python3 [flock]=util-linux [setsid]=util-linux [jq]=jq [runc]=runc
  # make image (tools/image/build.sh) and its check (tests/image.rs)
  [strip]=binutils [readelf]=binutils [tar]=tar [gzip]=gzip [chroot]=coreutils [unshare]=util-linux
  [sha256sum]=coreutils [apt-get]=apt
  # the test node's pod network (tools/testenv/node.sh)
  [ip]=iproute2 [socat]=socat
  # make consumer-image (tools/image/consumers.sh): the root file system from Debian 12 packages
  [debootstrap]=debootstrap
  # tests/browser_post.rs: examples/post-form.html in a headless browser (about a minute to install)
  [chromium]=chromium
  # make docs (tools/docs.sh): the book's diagrams, from docs/diagrams/*.dot to SVG
  [dot]=graphviz
  # tests/release.rs: actionlint runs it on the release workflow's scripts
  [shellcheck]=shellcheck)
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
# tools/pyvenv.sh (botocore for tests/signing_botocore.rs, boto3 for the
# benchmark) runs `python3 -m venv`, which needs ensurepip: Debian ships it
# apart from python3.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
for tool in cargo go; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-deps: $tool is required and not on PATH" >&2; exit 1; }
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
