"""Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.

    python3 consumer.py [/grant] < file      # a PUT grant: uploads stdin
    python3 consumer.py [/grant] > file      # a GET grant: writes the object

Standard library only. Reads the files on every call, so a renewed URL is
picked up without a restart.

The rule every example consumer follows: send every header in `headers`
exactly, except the one the HTTP client derives from the body itself,
`content-length`. That one is left to the client (urllib sends the length of
the bytes it is given), and the body must have exactly that many bytes: a
grant that pins contentLength signed it, so any other size would be refused
by S3. The length is checked before anything is sent.
"""
import json
import pathlib
import sys
import urllib.error
import urllib.request

GRANT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/grant")


def fail(message: str) -> None:
    print(f"consumer: {message}", file=sys.stderr)
    sys.exit(1)


def send(body: bytes = b"") -> bytes:
    method = (GRANT / "method").read_text().strip()
    url = (GRANT / "url").read_text().strip()
    headers = json.loads((GRANT / "headers").read_text())
    # The client derives Content-Length from the body: check it, do not set it.
    pinned = headers.pop("content-length", None)
    if pinned is not None and int(pinned) != len(body):
        fail(f"the body is {len(body)} bytes but the grant signed content-length {pinned}; nothing was sent")
    request = urllib.request.Request(url, data=body if method == "PUT" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        fail(f"{e.code} {e.reason}: {e.read().decode(errors='replace')}")


if __name__ == "__main__":
    if (GRANT / "method").read_text().strip() == "PUT":
        send(sys.stdin.buffer.read())
        print("uploaded", file=sys.stderr)
    else:
        sys.stdout.buffer.write(send())
