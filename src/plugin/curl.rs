//! `kubectl grant curl`: sends the request a consumer pod would, from the
//! terminal: exactly the Secret's method, URL and headers. It prints the
//! HTTP status and the store's error code, never the URL.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;

use super::{Conn, Error, Outcome, secret_name};
use crate::signing::FormFields;

/// Send the grant's request (its Secret's method, URL and headers) to the store.
///
/// PUT sends --file as the body ("-" for stdin); POST sends it as a form
/// upload, after the Secret's form fields; GET writes the body to --output,
/// else stdout. The HTTP status goes to stderr. Exits 3 if the
/// store answers non-2xx.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The grant.
    pub name: String,
    /// The body to upload (PUT), or the file to send in the form (POST; its
    /// name fills in ${filename}); "-" reads stdin.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Where to write the downloaded body (GET); default stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// The request a Secret holds.
pub struct Request {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// POST: the form fields to send before the file, in order.
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Debug for Request {
    /// Leaves the URL out, so no debug print can show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field(
                "fields",
                &self.fields.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Reads `url`, `method` and `headers` from the Secret's data. The errors
/// name keys, never values.
pub fn request(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Request, Error> {
    let text = |key: &str| -> Result<String, Error> {
        let bytes = data
            .get(key)
            .ok_or_else(|| Error::Invalid(format!("Secret {secret:?} has no {key:?} key")))?;
        String::from_utf8(bytes.clone())
            .map_err(|_| Error::Invalid(format!("Secret {secret:?}: {key:?} is not UTF-8")))
    };
    let method = text("method")?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| Error::Invalid(format!("Secret {secret:?}: {method:?} is not a method")))?;
    let headers = serde_json::from_str(&text("headers")?).map_err(|_| {
        Error::Invalid(format!(
            "Secret {secret:?}: \"headers\" is not a JSON object of strings"
        ))
    })?;
    let fields = match method {
        reqwest::Method::POST => {
            let FormFields(fields) = serde_json::from_str(&text("fields")?).map_err(|_| {
                Error::Invalid(format!(
                    "Secret {secret:?}: \"fields\" is not a JSON object of strings"
                ))
            })?;
            fields
        }
        _ => Vec::new(),
    };
    Ok(Request {
        method,
        url: text("url")?,
        headers,
        fields,
    })
}

/// A multipart/form-data body: the fields in order, then the file, as a
/// browser sends a form. Returns the body and its Content-Type.
pub fn form_body(fields: &[(String, String)], file_name: &str, file: &[u8]) -> (Vec<u8>, String) {
    let boundary = format!("------------------------{:016x}", rand::random::<u64>());
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut body = Vec::with_capacity(file.len() + 1024);
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{value}\r\n",
                quote(name)
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            quote(file_name)
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (body, format!("multipart/form-data; boundary={boundary}"))
}

/// The `<Code>` and `<Message>` of an S3 error body, if it is one.
pub fn store_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(body).ok()?;
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_owned())
    };
    Some((element("Code")?, element("Message")))
}

/// What stderr says about the answer.
pub fn status_line(status: reqwest::StatusCode, body: &[u8]) -> String {
    let mut line = format!("HTTP {status}");
    if !status.is_success()
        && let Some((code, message)) = store_error(body)
    {
        line += &format!(": {code}");
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            line += &format!(" ({m})");
        }
    }
    line
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn read_body(file: &PathBuf) -> Result<Vec<u8>, Error> {
    if file.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(io("reading stdin".into()))?;
        return Ok(body);
    }
    std::fs::read(file).map_err(io(format!("reading {}", file.display())))
}

fn write_body(output: Option<&PathBuf>, body: &[u8]) -> Result<(), Error> {
    match output {
        Some(path) => std::fs::write(path, body).map_err(io(format!("writing {}", path.display()))),
        None => std::io::stdout()
            .write_all(body)
            .map_err(io("writing stdout".into())),
    }
}

async fn send(
    req: &Request,
    body: Option<Vec<u8>>,
    file_name: &str,
) -> Result<reqwest::Response, Error> {
    let client = reqwest::Client::builder().build().map_err(Error::http)?;
    let mut builder = client.request(req.method.clone(), &req.url);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let body = match (&req.method, body) {
        (&reqwest::Method::POST, Some(file)) => {
            let (body, content_type) = form_body(&req.fields, file_name, &file);
            builder = builder.header(reqwest::header::CONTENT_TYPE, content_type);
            Some(body)
        }
        (_, body) => body,
    };
    if let Some(body) = body {
        builder = builder.body(body);
    }
    builder.send().await.map_err(Error::http)
}

pub async fn run(conn: &Conn, args: Args) -> Result<Outcome, Error> {
    let grant = conn.grant(&args.name).await?;
    let name = secret_name(&grant);
    let secret = conn.api::<Secret>().get_opt(&name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "Secret {name:?} of grant {:?} not found: the grant has no URL (see `kubectl grant status {}`)",
            args.name, args.name
        ))
    })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let req = request(&name, &data)?;
    let body = match (&req.method, &args.file) {
        (&reqwest::Method::PUT | &reqwest::Method::POST, Some(file)) => Some(read_body(file)?),
        (&reqwest::Method::PUT | &reqwest::Method::POST, None) => {
            return Err(Error::Invalid(format!(
                "a {} grant needs the body to upload: -f FILE (or -f - for stdin)",
                req.method
            )));
        }
        (_, Some(_)) => {
            return Err(Error::Invalid(format!(
                "-f sends a body, but the grant is for {}",
                req.method
            )));
        }
        (_, None) => None,
    };
    // The name a form upload gives the file, for a key ending in ${filename}.
    let file_name = args
        .file
        .as_ref()
        .filter(|f| f.as_os_str() != "-")
        .and_then(|f| f.file_name())
        .map_or_else(|| "stdin".to_owned(), |n| n.to_string_lossy().into_owned());
    let response = send(&req, body, &file_name).await?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(Error::http)?;
    eprintln!("{}", status_line(status, &bytes));
    if !status.is_success() {
        return Ok(Outcome::Negative);
    }
    if req.method == reqwest::Method::GET {
        write_body(args.output.as_ref(), &bytes)?;
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_request_is_exactly_the_secrets() {
        let secret = data(&[
            ("url", "https://s3.example/b/k?X-Amz-Signature=abc"),
            ("method", "PUT"),
            (
                "headers",
                r#"{"Content-Length":"5","Content-Type":"text/plain"}"#,
            ),
        ]);
        let req = request("s", &secret).expect("a request");
        assert_eq!(req.method, reqwest::Method::PUT);
        assert_eq!(req.headers.len(), 2);
        assert!(!format!("{req:?}").contains("X-Amz-Signature"), "{req:?}");
    }

    #[test]
    fn a_post_secret_gives_its_fields_in_order() {
        let secret = data(&[
            ("url", "https://s3.example/b"),
            ("method", "POST"),
            ("headers", "{}"),
            (
                "fields",
                r#"{"key":"in/${filename}","x-amz-date":"20261202T000000Z","policy":"eyJAB","x-amz-signature":"abc"}"#,
            ),
        ]);
        let req = request("s", &secret).expect("a request");
        let names: Vec<&str> = req.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["key", "x-amz-date", "policy", "x-amz-signature"]);
        assert!(
            !format!("{req:?}").contains("eyJAB") && !format!("{req:?}").contains("abc"),
            "{req:?}"
        );
        let (body, content_type) = form_body(&req.fields, "a \"b\".txt", b"DATA");
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("a boundary");
        let body = String::from_utf8(body).expect("text");
        let key = body
            .find("name=\"key\"\r\n\r\nin/${filename}\r\n")
            .expect("key");
        let signature = body.find("name=\"x-amz-signature\"").expect("signature");
        let file = body
            .find("name=\"file\"; filename=\"a \\\"b\\\".txt\"")
            .expect("file");
        assert!(key < signature && signature < file, "{body}");
        assert!(
            body.ends_with(&format!("DATA\r\n--{boundary}--\r\n")),
            "{body}"
        );
        let no_fields = data(&[("url", "u"), ("method", "POST"), ("headers", "{}")]);
        let e = request("s", &no_fields).expect_err("no fields").to_string();
        assert_eq!(e, "Secret \"s\" has no \"fields\" key");
    }

    #[test]
    fn a_broken_secret_names_the_key_not_the_value() {
        let no_url = data(&[("method", "GET"), ("headers", "{}")]);
        let e = request("s", &no_url).expect_err("no url").to_string();
        assert_eq!(e, "Secret \"s\" has no \"url\" key");
        let bad = data(&[
            ("url", "https://x/?X-Amz-Signature=abc"),
            ("method", "GET"),
            ("headers", "[1]"),
        ]);
        let e = request("s", &bad).expect_err("bad headers").to_string();
        assert!(
            e.contains("\"headers\" is not a JSON object") && !e.contains("Signature"),
            "{e}"
        );
    }

    #[test]
    fn store_errors_show_their_code_and_message() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>a</Key></Error>";
        assert_eq!(
            status_line(reqwest::StatusCode::NOT_FOUND, xml),
            "HTTP 404 Not Found: NoSuchKey (The specified key does not exist.)"
        );
        assert_eq!(status_line(reqwest::StatusCode::OK, b""), "HTTP 200 OK");
        assert_eq!(
            status_line(reqwest::StatusCode::FORBIDDEN, b"nope"),
            "HTTP 403 Forbidden"
        );
        assert_eq!(
            store_error(b"<Error><Code>AccessDenied</Code></Error>"),
            Some(("AccessDenied".into(), None))
        );
    }
}
