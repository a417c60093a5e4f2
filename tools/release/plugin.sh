#!/usr/bin/env bash
# plugin.sh BINARY OS ARCH OUTDIR: packs a built kubectl-grant as
# OUTDIR/kubectl-grant-OS-ARCH.tar.gz (the binary and LICENSE, as krew
# installs it) and prints the archive's path. The release workflow runs it
# per platform; krew.sh then fills plugins/grant.yaml from the archives.
. "$(dirname "$0")/../testenv/lib.sh"
[ $# -eq 4 ] || die "usage: plugin.sh BINARY OS ARCH OUTDIR"
binary=$1 os=$2 arch=$3 outdir=$4
[ -x "$binary" ] || die "$binary: no executable there"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/kubectl-grant"
cp "$REPO_ROOT/LICENSE" "$stage/LICENSE"
mkdir -p "$outdir"
archive="$outdir/kubectl-grant-$os-$arch.tar.gz"
# Reproducible: sorted names, no timestamps or owners of the build machine.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$stage" -cf - kubectl-grant LICENSE |
  gzip -n >"$archive"
echo "$archive"
