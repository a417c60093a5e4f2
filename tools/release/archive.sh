#!/usr/bin/env bash
# archive.sh BINARY OS ARCH OUTDIR: packs a built kubectl-grant or
# upload-grant-operator as OUTDIR/NAME-OS-ARCH.tar.gz (NAME is the binary's
# file name; the archive holds it and LICENSE, as krew installs a plugin)
# and prints the archive's path. The release workflow runs it per platform
# and binary; krew.sh then fills plugins/grant.yaml from kubectl-grant's.
. "$(dirname "$0")/../testenv/lib.sh"
[ $# -eq 4 ] || die "usage: archive.sh BINARY OS ARCH OUTDIR"
binary=$1 os=$2 arch=$3 outdir=$4
[ -x "$binary" ] || die "$binary: no executable there"
name=$(basename "$binary")
case "$name" in kubectl-grant | upload-grant-operator) ;; *) die "$name: not one of the release's binaries" ;; esac
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/$name"
cp "$REPO_ROOT/LICENSE" "$stage/LICENSE"
mkdir -p "$outdir"
archive="$outdir/$name-$os-$arch.tar.gz"
# Reproducible: names in order, no timestamps or owners of the build machine.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$stage" -cf - LICENSE "$name" |
  gzip -n >"$archive"
echo "$archive"
