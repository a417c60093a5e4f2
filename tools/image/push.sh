#!/usr/bin/env bash
# push.sh ARCHIVE REF: pushes an OCI archive (as `make image` and `make
# consumer-image` write them) to a registry with crane, no container engine,
# and prints what was pushed as REPOSITORY@DIGEST. An archive whose index
# holds one image pushes that image; one holding several (a multi-arch
# build) pushes the index. `make push`, the tests (to the test environment's
# registry) and the release workflow all push with this script.
# Credentials: crane's, i.e. ~/.docker/config.json (`crane auth login`).
# A registry on loopback (127.0.0.0/8, localhost) is spoken to over HTTP.
. "$(dirname "$0")/../testenv/lib.sh"
log() { printf '[push] %s\n' "$*" >&2; }

[ $# -eq 2 ] || die "usage: push.sh ARCHIVE REGISTRY/REPOSITORY[:TAG]"
archive=$1 ref=$2
[ -f "$archive" ] || die "no image archive $archive"
case "$ref" in
  */*) ;;
  *) die "$ref names no registry: give REGISTRY/REPOSITORY[:TAG], e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/upload-grant-operator:0.1.0" ;;
esac

flags=()
if is_loopback_registry "$ref"; then flags+=(--insecure); fi

layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
tar -xf "$archive" -C "$layout"
images=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["manifests"]))' "$layout/index.json")
[ "$images" -ge 1 ] || die "$archive: its index.json names no image"
[ "$images" -eq 1 ] || flags+=(--index)
log "pushing $(basename "$archive") to $ref"
bash "$(dirname "$0")/crane.sh" push "${flags[@]}" "$layout" "$ref"
