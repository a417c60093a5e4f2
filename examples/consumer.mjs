// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// Node.js only (the global fetch and FormData, Node 18 or later), no npm
// packages:
//
//   node consumer.mjs [/grant] < file          # a PUT grant: uploads stdin
//   node consumer.mjs [/grant] > file          # a GET grant: writes the object
//   node consumer.mjs [/grant] [NAME] < file   # a POST grant: uploads stdin as
//                                              # the form's file NAME (upload.bin)
//   node consumer.mjs [/grant] < file          # a multipart grant: uploads stdin
//                                              # in parts, then completes it
//
// Reads the files at the moment of use, so a renewed URL is picked up
// without a restart.
//
// The rule every example consumer follows: send every header in `headers`
// exactly, except the one the HTTP client derives from the body itself,
// `content-length`. fetch sends the length of the body it is given (and the
// Fetch standard forbids setting it), so it is not set by hand; the body
// must have exactly that many bytes (a grant that pins contentLength signed
// it), checked before anything is sent.
//
// A POST grant is a form: `url` is its action and `fields` a JSON object of
// fields, sent in order, then the file last as `file`. S3 answers 204 or the
// grant's successActionStatus.
//
// A multipart grant (its Secret has `uploadId`) has `parts`: JSON {"count",
// "partSize", "url", "signatures"}; part N's URL is `url` with {partNumber}
// replaced by N and {signature} by signatures[N-1]. Parts are read from stdin
// one at a time (never the whole file), each sent as a plain PUT and retried
// up to 3 times with `parts` read again, so a renewal during a long upload
// is picked up. completeUrl takes a POST of the part numbers and ETags; S3
// may answer it 200 with an <Error> in the body, so the body is checked too.
import { existsSync, readFileSync, readSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2] ?? "/grant";
const read = (name) => readFileSync(join(dir, name), "utf8").trim();
const fail = (message) => {
  process.stderr.write(`consumer: ${message}\n`);
  process.exit(1);
};
const ATTEMPTS = 3;

/** S3's <Error><Code>…</Code><Message>…</Message></Error> as one line. */
const s3Error = (status, body) => {
  const tag = (name) => body.match(new RegExp(`<${name}>([^<]*)</${name}>`))?.[1];
  return tag("Code") ? `${status} ${tag("Code")}: ${tag("Message")}` : `${status}: ${body}`;
};

/** fetch, with a network failure reported as the consumer's error. */
const send = async (url, init) => {
  try {
    const response = await fetch(url, init);
    return { response, text: Buffer.from(await response.arrayBuffer()) };
  } catch (e) {
    throw new Error(`${e.message}${e.cause ? `: ${e.cause.message ?? e.cause}` : ""}`);
  }
};

/** Up to `size` bytes of stdin; fewer only at its end. */
const readChunk = (size) => {
  const chunk = Buffer.alloc(size);
  let filled = 0;
  while (filled < size) {
    const n = readSync(0, chunk, filled, size - filled, null);
    if (n === 0) break;
    filled += n;
  }
  return chunk.subarray(0, filled);
};

/** One part, retried with `parts` read again: its ETag. */
const putPart = async (n, chunk) => {
  for (let attempt = 1; ; attempt++) {
    const parts = JSON.parse(read("parts"));
    const url = parts.url.replace("{partNumber}", n).replace("{signature}", parts.signatures[n - 1]);
    let problem;
    try {
      const { response, text } = await send(url, { method: "PUT", body: chunk });
      if (response.ok) return response.headers.get("etag");
      problem = s3Error(response.status, text.toString());
    } catch (e) {
      problem = e.message;
    }
    if (attempt === ATTEMPTS) fail(`part ${n}: ${problem}; gave up after ${ATTEMPTS} attempts`);
    process.stderr.write(`consumer: part ${n}: ${problem}; retrying (attempt ${attempt + 1} of ${ATTEMPTS})\n`);
    await new Promise((resolve) => setTimeout(resolve, 1000 * attempt));
  }
};

const multipart = async () => {
  const etags = [];
  for (;;) {
    const { count, partSize } = JSON.parse(read("parts"));
    const chunk = readChunk(partSize);
    if (chunk.length === 0 && etags.length > 0) break;
    const n = etags.length + 1;
    if (n > count) fail(`the file has more than ${count} parts of ${partSize} bytes; the upload was not completed`);
    etags.push(await putPart(n, chunk));
  }
  const body =
    "<CompleteMultipartUpload>" +
    etags.map((etag, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${etag}</ETag></Part>`).join("") +
    "</CompleteMultipartUpload>";
  const { response, text } = await send(read("completeUrl"), {
    method: "POST",
    headers: { "content-type": "application/xml" },
    body,
  });
  // A 200 can still carry an error: S3 reports some failures in the body.
  if (response.status !== 200 || text.includes("<Error>")) fail(`complete: ${s3Error(response.status, text.toString())}`);
};

const post = async (name) => {
  const fields = JSON.parse(read("fields"));
  const form = new FormData();
  // JSON.parse keeps the object's order, which is the order to send.
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  form.append("file", new Blob([readFileSync(0)], { type: "application/octet-stream" }), name);
  const { response, text } = await send(read("url"), { method: "POST", body: form });
  const expected = Number(fields.success_action_status ?? 204);
  if (response.status !== expected) fail(s3Error(response.status, text.toString()));
};

const single = async () => {
  const method = read("method");
  const body = method === "PUT" ? readFileSync(0) : Buffer.alloc(0);
  // Read at the moment of use: the kubelet replaces the files on renewal.
  const url = read("url");
  const headers = JSON.parse(read("headers"));
  // The client derives Content-Length from the body: check it, do not set it.
  const pinned = headers["content-length"];
  delete headers["content-length"];
  if (pinned !== undefined && Number(pinned) !== body.length) {
    fail(`the body is ${body.length} bytes but the grant signed content-length ${pinned}; nothing was sent`);
  }
  const { response, text } = await send(url, { method, headers, body: method === "PUT" ? body : undefined });
  if (!response.ok) fail(`${response.status} ${response.statusText}: ${text.toString()}`);
  if (method !== "PUT") process.stdout.write(text);
  return method;
};

try {
  if (existsSync(join(dir, "uploadId"))) {
    await multipart();
    process.stderr.write("uploaded\n");
  } else if (read("method") === "POST") {
    await post(process.argv[3] ?? "upload.bin");
    process.stderr.write("uploaded\n");
  } else if ((await single()) === "PUT") {
    process.stderr.write("uploaded\n");
  }
} catch (e) {
  fail(e.message);
}
