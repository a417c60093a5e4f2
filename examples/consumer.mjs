// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// Node.js only (the global fetch, Node 18 or later), no npm packages:
//
//   node consumer.mjs [/grant] < file   # a PUT grant: uploads stdin
//   node consumer.mjs [/grant] > file   # a GET grant: writes the object
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
import { readFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2] ?? "/grant";
const read = (name) => readFileSync(join(dir, name), "utf8").trim();
const fail = (message) => {
  process.stderr.write(`consumer: ${message}\n`);
  process.exit(1);
};

const body = read("method") === "PUT" ? readFileSync(0) : Buffer.alloc(0);
// Read at the moment of use: the kubelet replaces the files on renewal.
const method = read("method");
const url = read("url");
const headers = JSON.parse(read("headers"));

// The client derives Content-Length from the body: check it, do not set it.
const pinned = headers["content-length"];
delete headers["content-length"];
if (pinned !== undefined && Number(pinned) !== body.length) {
  fail(`the body is ${body.length} bytes but the grant signed content-length ${pinned}; nothing was sent`);
}

let response;
try {
  response = await fetch(url, { method, headers, body: method === "PUT" ? body : undefined });
} catch (e) {
  fail(`${e.message}${e.cause ? `: ${e.cause.message ?? e.cause}` : ""}`);
}
const received = Buffer.from(await response.arrayBuffer());
if (!response.ok) {
  fail(`${response.status} ${response.statusText}: ${received.toString()}`);
}
if (method === "PUT") {
  process.stderr.write("uploaded\n");
} else {
  process.stdout.write(received);
}
