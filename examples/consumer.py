"""Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.

Standard library only. Reads the files on every call, so a renewed URL is
picked up without a restart.
"""
import json
import pathlib
import sys
import urllib.request

GRANT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/grant")


def send(body: bytes | None = None) -> bytes:
    method = (GRANT / "method").read_text().strip()
    url = (GRANT / "url").read_text().strip()
    headers = json.loads((GRANT / "headers").read_text())
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request) as response:
        return response.read()


if __name__ == "__main__":
    if (GRANT / "method").read_text().strip() == "PUT":
        send(sys.stdin.buffer.read())
        print("uploaded", file=sys.stderr)
    else:
        sys.stdout.buffer.write(send())
