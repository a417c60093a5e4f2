#!/usr/bin/env python3
"""Assembles the operator's container image as an OCI image archive, without
a container engine: what the Dockerfile's runtime stage describes.

Base layer (as gcr.io/distroless/cc-debian12:nonroot): glibc and libgcc from
the given Debian 12 .debs, the CA bundle built from the ca-certificates .deb,
/etc/passwd and /etc/group with the nonroot user 65532, its home, /tmp, and a
dpkg status.d entry per package so scanners see the versions.
App layer (the Dockerfile's COPY): the stripped binary.

The output is reproducible: entries sorted, one mtime (SOURCE_DATE_EPOCH,
default 0), numeric owners without names, gzip without a name or time.

Python 3 standard library only.
"""

import argparse
import io
import os
import re
import sys
import tarfile
import time

from oci import Entry, die, layer, write_archive

# What the Dockerfile's runtime stage says; tests/image.rs fails when they drift.
BINARY_PATH = "usr/local/bin/upload-grant-operator"
USER = "65532:65532"
EXPOSED_PORTS = ["8080/tcp"]
ENTRYPOINT = ["/" + BINARY_PATH]
BASE = "gcr.io/distroless/cc-debian12:nonroot"
# As distroless sets them.
ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
]
WORKDIR = "/home/nonroot"

PASSWD = """root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = """root:x:0:
tty:x:5:
staff:x:50:
nonroot:x:65532:
nobody:x:65534:
"""
NSSWITCH = """passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
"""
OS_RELEASE = """PRETTY_NAME="upload-grant-operator on Debian GNU/Linux 12 packages"
NAME="Debian GNU/Linux"
ID=debian
VERSION_ID="12"
VERSION_CODENAME=bookworm
HOME_URL="https://www.debian.org/"
"""

DEB_ARCH_TO_OCI = {"amd64": "amd64", "arm64": "arm64", "armhf": "arm", "ppc64el": "ppc64le",
                   "s390x": "s390x", "riscv64": "riscv64", "i386": "386"}

def read_ar(path):
    """The members of a .deb (an ar archive): name -> bytes."""
    with open(path, "rb") as f:
        blob = f.read()
    if not blob.startswith(b"!<arch>\n"):
        die(f"{path}: not a .deb (ar) archive")
    members, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return members


def open_member(members, prefix, path):
    for name, data in members.items():
        if name.startswith(prefix):
            if name.endswith(".zst"):
                die(f"{path}: {name} is zstd-compressed; Debian 12 packages are xz")
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    die(f"{path}: no {prefix}* member")


def control_of(members, path):
    with open_member(members, "control.tar", path) as tar:
        for info in tar:
            if info.name.lstrip("./") == "control":
                return tar.extractfile(info).read().decode()
    die(f"{path}: no control file")


def field(control, name):
    m = re.search(rf"^{name}: *(.*)$", control, re.M)
    return m.group(1).strip() if m else ""


def keep_from_package(path):
    """Which files of a library package go into the image: the libraries and
    their configuration, and each package's copyright; no manuals, changelogs,
    lintian overrides or iconv modules (the binary never calls iconv)."""
    parts = path.split("/")
    if path.startswith("usr/share/doc/"):
        return len(parts) == 3 or (len(parts) == 4 and parts[3] == "copyright")
    if path.startswith(("usr/share/man/", "usr/share/info/", "usr/share/lintian/")):
        return False
    if "gconv" in parts:
        return False
    return True


def add_package(fs, path, ca_bundle):
    members = read_ar(path)
    control = control_of(members, path)
    package = field(control, "Package")
    with open_member(members, "data.tar", path) as tar:
        for info in tar:
            name = os.path.normpath(info.name).lstrip("/")
            if name in (".", ""):
                continue
            if package == "ca-certificates":
                # Only the bundle update-ca-certificates would write, and the copyright.
                if info.isfile() and name.startswith("usr/share/ca-certificates/mozilla/"):
                    ca_bundle[name] = tar.extractfile(info).read()
                if name != "usr/share/doc/ca-certificates/copyright":
                    continue
            elif not keep_from_package(name):
                continue
            if info.isdir():
                fs.setdefault(name, Entry("dir", info.mode & 0o7777))
            elif info.issym():
                fs[name] = Entry("sym", 0o777, link=info.linkname)
            elif info.isfile():
                fs[name] = Entry("file", info.mode & 0o7777, data=tar.extractfile(info).read())
            elif info.islnk():
                # A hard link becomes a copy: sorted entries may put it before its target.
                target = fs.get(os.path.normpath(info.linkname).lstrip("/"))
                if target is None:
                    die(f"{path}: hard link {name} to {info.linkname}, which is not in the image")
                fs[name] = Entry("file", info.mode & 0o7777, data=target.data)
            else:
                die(f"{path}: unsupported entry {name}")
    # A dpkg status entry, as distroless writes them (var/lib/dpkg/status.d).
    status = control.rstrip("\n") + "\nStatus: install ok installed\n"
    fs[f"var/lib/dpkg/status.d/{package}"] = Entry("file", 0o644, data=status.encode())
    return package, field(control, "Version"), field(control, "Architecture")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True, help="the stripped release binary")
    ap.add_argument("--deb", action="append", required=True, help="a Debian 12 package for the base layer")
    ap.add_argument("--ref", required=True, help="image reference, e.g. docker.io/library/upload-grant-operator:dev")
    ap.add_argument("--version", default="", help="org.opencontainers.image.version")
    ap.add_argument("--out", required=True, help="the OCI archive to write")
    args = ap.parse_args()

    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = "%04d-%02d-%02dT%02d:%02d:%02dZ" % tuple(time.gmtime(mtime)[:6])

    # --- base layer ------------------------------------------------------------
    base, bundle, packages = {}, {}, []
    for deb in sorted(args.deb):
        packages.append(add_package(base, deb, bundle))
    names = {p for p, _, _ in packages}
    for needed in ("libc6", "libgcc-s1", "ca-certificates"):
        if needed not in names:
            die(f"no {needed} among the --deb packages")
    if len(bundle) < 100:
        die(f"only {len(bundle)} certificates in the ca-certificates package")
    certs = b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for _, pem in sorted(bundle.items()))
    base["etc/ssl/certs/ca-certificates.crt"] = Entry("file", 0o644, data=certs)
    base["etc/passwd"] = Entry("file", 0o644, data=PASSWD.encode())
    base["etc/group"] = Entry("file", 0o644, data=GROUP.encode())
    base["etc/nsswitch.conf"] = Entry("file", 0o644, data=NSSWITCH.encode())
    base["etc/os-release"] = Entry("file", 0o644, data=OS_RELEASE.encode())
    base["home/nonroot"] = Entry("dir", 0o700, uid=65532, gid=65532)
    base["root"] = Entry("dir", 0o700)
    base["tmp"] = Entry("dir", 0o1777)
    deb_arch = {a for _, _, a in packages} - {"all"}
    if len(deb_arch) != 1:
        die(f"packages of several architectures: {sorted(deb_arch)}")
    arch = DEB_ARCH_TO_OCI.get(deb_arch.pop()) or die("unknown architecture")

    # --- app layer: COPY --from=build …/upload-grant-operator /usr/local/bin/ ----
    with open(args.binary, "rb") as f:
        binary = f.read()
    if not binary.startswith(b"\x7fELF"):
        die(f"{args.binary} is not an ELF binary")
    app = {BINARY_PATH: Entry("file", 0o755, data=binary)}

    layers = [layer(base, mtime), layer(app, mtime)]
    versions = " ".join(f"{p}={v}" for p, v, _ in sorted(packages))
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": USER,
            "ExposedPorts": {p: {} for p in EXPOSED_PORTS},
            "Env": ENV,
            "Entrypoint": ENTRYPOINT,
            "WorkingDir": WORKDIR,
            "Labels": {"org.opencontainers.image.base.name": BASE},
        },
        "history": [
            {"created": created, "created_by": f"Debian 12 packages {versions}, CA bundle, "
             "passwd and group with nonroot 65532 (as " + BASE + ")"},
            {"created": created, "created_by": f"COPY upload-grant-operator /{BINARY_PATH}"},
        ],
    }
    annotations = {"org.opencontainers.image.base.name": BASE, "org.opencontainers.image.created": created}
    if args.version:
        annotations["org.opencontainers.image.version"] = args.version
    manifest, size = write_archive(args.out, args.ref, arch, config, layers, annotations, mtime)
    print(f"[image] wrote {args.out} ({size // 1024} KiB), {args.ref}, "
          f"manifest {manifest}, {versions}", file=sys.stderr)


if __name__ == "__main__":
    main()
