"""Writing OCI image archives without a container engine, shared by the
operator's image (build.py) and the consumer image (consumers.py).

An OCI archive is a tar of `oci-layout`, `index.json` and `blobs/sha256/*`:
gzipped layer tars, a config JSON and a manifest; the index names the image
(`io.containerd.image.name`) so `ctr images import` tags it.

Everything is reproducible: entries sorted, one mtime (the caller's, usually
SOURCE_DATE_EPOCH or 0), numeric owners without names, gzip without a name
or time.

Python 3 standard library only.
"""

import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_INDEX = "application/vnd.oci.image.index.v1+json"


class Entry:
    """One file system object of a layer; a file's content is `data`, or the
    file at `path` (read while the layer is written)."""

    def __init__(self, kind, mode, uid=0, gid=0, data=b"", link="", path=None):
        self.kind, self.mode, self.uid, self.gid, self.data, self.link = kind, mode, uid, gid, data, link
        self.path = path


class Layer:
    """A gzipped layer blob: its bytes (`data`) or a file holding them (`path`)."""

    def __init__(self, digest, diff_id, size, data=None, path=None):
        self.digest, self.diff_id, self.size, self.data, self.path = digest, diff_id, size, data, path

    def to_json(self):
        return {"digest": self.digest, "diff_id": self.diff_id, "size": self.size}

    @staticmethod
    def from_json(value, path):
        return Layer(value["digest"], value["diff_id"], value["size"], path=path)


def die(msg):
    print(f"[image] error: {msg}", file=sys.stderr)
    sys.exit(1)


def with_parents(fs):
    for name in list(fs):
        parent = os.path.dirname(name)
        while parent:
            fs.setdefault(parent, Entry("dir", 0o755))
            parent = os.path.dirname(parent)
    return fs


def write_tar(fs, mtime, fileobj):
    """A reproducible tar of `fs` (name -> Entry): sorted, one mtime,
    numeric owners and no names."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(with_parents(fs)):
            e = fs[name]
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, mtime
            info.uname = info.gname = ""
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, e.link
                tar.addfile(info)
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.link
                tar.addfile(info)
            elif e.path is not None:
                info.size = os.path.getsize(e.path)
                with open(e.path, "rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))


def layer_tar(fs, mtime):
    out = io.BytesIO()
    write_tar(fs, mtime, out)
    return out.getvalue()


def gzipped(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer(fs, mtime):
    """A layer of `fs` held in memory."""
    raw = layer_tar(fs, mtime)
    gz = gzipped(raw)
    return Layer(sha256(gz), sha256(raw), len(gz), data=gz)


class _Hashing:
    """A write-only stream that hashes and counts what passes to `inner`."""

    def __init__(self, inner):
        self.inner, self.hash, self.size = inner, hashlib.sha256(), 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def tell(self):
        return self.size

    def flush(self):
        pass


def directory_entries(root, skip=()):
    """The tree under `root` as Entries (files by path, not read), owners and
    modes kept. A file with several names becomes one file and hard links to
    its first name in sorted order. `skip` names directories written empty
    (proc, sys, dev: the runtime mounts them). Device nodes, FIFOs and
    sockets are left out."""
    fs, first = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                fs[rel] = Entry("dir", mode, st.st_uid, st.st_gid)
            elif stat.S_ISLNK(st.st_mode):
                fs[rel] = Entry("sym", 0o777, st.st_uid, st.st_gid, link=os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                fs[rel] = Entry("file", mode, st.st_uid, st.st_gid, path=full)
                if st.st_nlink > 1:
                    first.setdefault((st.st_dev, st.st_ino), []).append(rel)
        dirnames[:] = [d for d in dirnames
                       if os.path.normpath(os.path.join(rel_dir, d)) not in skip
                       and not os.path.islink(os.path.join(dirpath, d))]
    for names in first.values():
        names.sort()
        for other in names[1:]:
            e = fs[other]
            fs[other] = Entry("hardlink", e.mode, e.uid, e.gid, link=names[0])
    return fs


def file_layer(fs, mtime, out_path):
    """A layer of `fs` streamed into the gzipped blob `out_path`; for layers
    too large to hold in memory (a whole root file system)."""
    with open(out_path + ".tmp", "wb") as f:
        compressed = _Hashing(f)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
            raw = _Hashing(gz)
            write_tar(fs, mtime, raw)
    os.replace(out_path + ".tmp", out_path)
    return Layer("sha256:" + compressed.hash.hexdigest(), "sha256:" + raw.hash.hexdigest(),
                 compressed.size, path=out_path)


def write_archive(out, ref, arch, config, layers, annotations, mtime):
    """Writes the OCI archive `out` of one linux/`arch` image: `config` (the
    image config; its rootfs is filled in from `layers`), the manifest with
    `annotations`, and an index naming it `ref`. Returns the manifest digest
    and the archive's size."""
    config = dict(config, rootfs={"type": "layers", "diff_ids": [l.diff_id for l in layers]})
    config_blob = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": MT_LAYER, "digest": l.digest, "size": l.size} for l in layers],
        "annotations": annotations,
    }
    manifest_blob = canonical_json(manifest)
    tag = ref.rsplit("/", 1)[-1].partition(":")[2] or "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": sha256(manifest_blob),
            "size": len(manifest_blob),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
        }],
    }
    files = {"oci-layout": Entry("file", 0o644, data=canonical_json({"imageLayoutVersion": "1.0.0"})),
             "index.json": Entry("file", 0o644, data=canonical_json(index))}
    blobs = {l.digest: (l.data, l.path) for l in layers}
    blobs[sha256(config_blob)] = (config_blob, None)
    blobs[sha256(manifest_blob)] = (manifest_blob, None)
    for digest, (data, path) in blobs.items():
        name = "blobs/sha256/" + digest.split(":", 1)[1]
        files[name] = Entry("file", 0o644, data=data or b"", path=path)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        write_tar(files, mtime, f)
        size = f.tell()
    os.replace(tmp, out)
    return sha256(manifest_blob), size
