"""Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.

    python3 consumer.py [/grant] < file           # a PUT grant: uploads stdin
    python3 consumer.py [/grant] > file           # a GET grant: writes the object
    python3 consumer.py [/grant] [NAME] < file    # a POST grant: uploads stdin as
                                                  # the form's file NAME (upload.bin)
    python3 consumer.py [/grant] < file           # a multipart grant: uploads stdin
                                                  # in parts, then completes it

Standard library only. Reads the files on every call, so a renewed URL is
picked up without a restart.

The rule every example consumer follows: send every header in `headers`
exactly, except the one the HTTP client derives from the body itself,
`content-length`. That one is left to the client (urllib sends the length of
the bytes it is given), and the body must have exactly that many bytes: a
grant that pins contentLength signed it, so any other size would be refused
by S3. The length is checked before anything is sent.

A POST grant (a form, as a browser would send it) has no headers to send:
`url` is the form's action and `fields` a JSON object of form fields. They
are sent as multipart/form-data, every field in the order given, then the
file last as `file` (S3 ignores anything after it). S3 puts NAME in place of
`${filename}` in the key field. S3 answers 204, or the grant's
successActionStatus; anything else is an error, reported with S3's code.

A multipart grant (its Secret has `uploadId`) has no `url`: `parts` is JSON
{"count", "partSize", "url", "signatures"}, and part N's URL is `url` with
{partNumber} replaced by N and {signature} by signatures[N-1]. Each part is a
plain PUT of partSize bytes (the last may be smaller) with no extra headers;
S3 answers with the part's ETag. Parts are read from stdin one at a time
(never the whole file), and a failed part is tried again up to 3 times in
all, with `parts` read again each time. completeUrl takes a POST of the XML
list of part numbers and ETags; S3 can answer it 200 with an <Error> in the
body, so the body is checked too. `parts` is read again for every part, so a
renewal during a long upload is picked up (the upload id stays the same).
"""
import json
import pathlib
import secrets
import sys
import time
import xml.etree.ElementTree
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


def s3_error(status: int, body: bytes) -> str:
    """S3's <Error><Code>…</Code><Message>…</Message></Error> as one line."""
    try:
        error = xml.etree.ElementTree.fromstring(body)
        return f"{status} {error.findtext('Code')}: {error.findtext('Message')}"
    except xml.etree.ElementTree.ParseError:
        return f"{status}: {body.decode(errors='replace')}"


def post(body: bytes, name: str) -> None:
    url = (GRANT / "url").read_text().strip()
    # json keeps the object's order, which is the order to send.
    fields = json.loads((GRANT / "fields").read_text())
    boundary = f"upload-grant-{secrets.token_hex(16)}"
    # The file name is quoted as browsers do (WHATWG): ", CR and LF escaped.
    quoted = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    form = b"".join(parts) + body + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=form, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    expected = int(fields.get("success_action_status", 204))
    try:
        with urllib.request.urlopen(request) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    if status != expected:
        fail(s3_error(status, answer))


ATTEMPTS = 3


def put_part(n: int, chunk: bytes) -> str:
    """One part, retried with `parts` read again (fresh signatures): its ETag."""
    for attempt in range(1, ATTEMPTS + 1):
        parts = json.loads((GRANT / "parts").read_text())
        url = parts["url"].replace("{partNumber}", str(n)).replace("{signature}", parts["signatures"][n - 1])
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=chunk, method="PUT")) as response:
                return response.headers["ETag"]
        except urllib.error.HTTPError as e:
            problem = s3_error(e.code, e.read())
        except urllib.error.URLError as e:
            problem = str(e.reason)
        if attempt == ATTEMPTS:
            fail(f"part {n}: {problem}; gave up after {ATTEMPTS} attempts")
        print(f"consumer: part {n}: {problem}; retrying (attempt {attempt + 1} of {ATTEMPTS})", file=sys.stderr, flush=True)
        time.sleep(attempt)


def multipart(stream) -> None:
    etags = []
    while True:
        parts = json.loads((GRANT / "parts").read_text())
        chunk = stream.read(parts["partSize"])
        if not chunk and etags:
            break
        n = len(etags) + 1
        if n > parts["count"]:
            fail(f"the file has more than {parts['count']} parts of {parts['partSize']} bytes; the upload was not completed")
        etags.append(put_part(n, chunk))
    body = "<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>" for n, etag in enumerate(etags, 1)
    ) + "</CompleteMultipartUpload>"
    request = urllib.request.Request(
        (GRANT / "completeUrl").read_text().strip(), data=body.encode(), method="POST",
        headers={"Content-Type": "application/xml"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    # A 200 can still carry an error: S3 reports some failures in the body.
    if status != 200 or b"<Error>" in answer:
        fail(f"complete: {s3_error(status, answer)}")


if __name__ == "__main__":
    if (GRANT / "uploadId").exists():
        multipart(sys.stdin.buffer)
        print("uploaded", file=sys.stderr)
        sys.exit(0)
    method = (GRANT / "method").read_text().strip()
    if method == "POST":
        post(sys.stdin.buffer.read(), sys.argv[2] if len(sys.argv) > 2 else "upload.bin")
        print("uploaded", file=sys.stderr)
    elif method == "PUT":
        send(sys.stdin.buffer.read())
        print("uploaded", file=sys.stderr)
    else:
        sys.stdout.buffer.write(send())
