#!/usr/bin/env bash
# krew.sh VERSION BASE_URL DIST_DIR: prints plugins/grant.yaml, the krew
# manifest, for release VERSION: each platform's uri is
# BASE_URL/kubectl-grant-OS-ARCH.tar.gz and its sha256 that of the archive of
# that name in DIST_DIR (archive.sh wrote them). A platform without its
# archive is an error: krew would install nothing there.
. "$(dirname "$0")/../testenv/lib.sh"
[ $# -eq 3 ] || die "usage: krew.sh VERSION BASE_URL DIST_DIR"
python3 - "${1#v}" "${2%/}" "$3" "$REPO_ROOT/plugins/grant.yaml" <<'PY'
import hashlib, pathlib, re, sys

version, base, dist, manifest = sys.argv[1:]
out, archive = [f"# krew plugin manifest for kubectl grant v{version}, filled by tools/release/krew.sh."], None
lines = pathlib.Path(manifest).read_text().splitlines()
while lines and lines[0].startswith("#"):
    lines.pop(0)
for line in lines:
    if re.match(r"\s*version: ", line):
        line = re.sub(r"version: \S+.*", f"version: v{version}", line)
    m = re.match(r"(\s*)uri: \S+/(kubectl-grant-[a-z0-9]+-[a-z0-9]+\.tar\.gz)", line)
    if m:
        archive = pathlib.Path(dist) / m.group(2)
        if not archive.is_file():
            sys.exit(f"krew.sh: no {archive}: every platform of plugins/grant.yaml needs its archive")
        line = f"{m.group(1)}uri: {base}/{m.group(2)}"
    m = re.match(r"(\s*)sha256: ", line)
    if m:
        if archive is None:
            sys.exit("krew.sh: a sha256 before any uri in plugins/grant.yaml")
        line = f'{m.group(1)}sha256: "{hashlib.sha256(archive.read_bytes()).hexdigest()}"'
        archive = None
    out.append(line)
print("\n".join(out))
PY
