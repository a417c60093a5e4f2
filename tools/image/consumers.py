#!/usr/bin/env python3
"""Assembles the example consumers' image as an OCI archive, without a
container engine (tools/image/consumers.sh prepares its inputs).

Base layer: a Debian 12 root file system (debootstrap), written once per
package list into the cache as a gzipped layer (--base-layer, with its
digests in --base-layer.json) and reused from there.
App layer: the Go consumer as a static binary at /usr/local/bin/consumer-go
and the example sources under /examples.

Python 3 standard library only; the archive writing is oci.py's.
"""

import argparse
import json
import os
import sys
import time

from oci import Entry, Layer, die, directory_entries, file_layer, layer, write_archive

EXAMPLES_DIR = "examples"
GO_BINARY = "usr/local/bin/consumer-go"
# Left empty in the layer: the runtime mounts them (and the kubelet writes
# etc/hosts, etc/hostname and etc/resolv.conf, which the root file system
# therefore does not carry).
SKIP = ("proc", "sys", "dev", "run")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs", help="the root file system, to write --base-layer from")
    ap.add_argument("--base-layer", required=True, help="the base layer blob (written from --rootfs when given)")
    ap.add_argument("--go-binary", required=True, help="the static Go consumer")
    ap.add_argument("--example", action="append", required=True, help="a file for /examples")
    ap.add_argument("--packages", required=True, help="the Debian packages asked for, for the history")
    ap.add_argument("--arch", required=True, help="OCI architecture (amd64, arm64, …)")
    ap.add_argument("--ref", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = "%04d-%02d-%02dT%02d:%02d:%02dZ" % tuple(time.gmtime(mtime)[:6])

    meta = args.base_layer + ".json"
    if args.rootfs:
        fs = directory_entries(args.rootfs, skip=SKIP)
        for name in SKIP:
            fs[name] = Entry("dir", 0o555 if name in ("proc", "sys") else 0o755)
        base = file_layer(fs, mtime, args.base_layer)
        with open(meta, "w") as f:
            json.dump(base.to_json(), f)
    with open(meta) as f:
        base = Layer.from_json(json.load(f), args.base_layer)

    with open(args.go_binary, "rb") as f:
        go = f.read()
    if not go.startswith(b"\x7fELF"):
        die(f"{args.go_binary} is not an ELF binary")
    app = {GO_BINARY: Entry("file", 0o755, data=go)}
    for path in args.example:
        with open(path, "rb") as f:
            app[f"{EXAMPLES_DIR}/{os.path.basename(path)}"] = Entry("file", 0o644, data=f.read())

    config = {
        "created": created,
        "architecture": args.arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.description":
                       "upload-grant-operator's example consumers: curl, Python, Go, Java, Node.js"},
        },
        "history": [
            {"created": created, "created_by": f"debootstrap --variant=minbase bookworm: {args.packages}"},
            {"created": created, "created_by": f"COPY consumer-go /{GO_BINARY}, examples /{EXAMPLES_DIR}"},
        ],
    }
    manifest, size = write_archive(args.out, args.ref, args.arch, config, [base, layer(app, mtime)],
                                   {"org.opencontainers.image.created": created}, mtime)
    print(f"[consumer-image] wrote {args.out} ({size // (1024 * 1024)} MiB), {args.ref}, manifest {manifest}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
