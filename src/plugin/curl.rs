//! `kubectl grant curl`: sends the request a consumer pod would, from the
//! terminal: exactly the Secret's method, URL and headers. It prints the
//! HTTP status and the store's error code, never the URL.
//!
//! It sends only what the operator wrote for the grant named: a Secret of
//! the operator's type, controlled by that UploadGrant. Anyone who may write
//! Secrets in the namespace could otherwise point the upload at a server of
//! theirs. It says where the request goes (`scheme://host[:port]`: the path
//! and query hold the signature) before sending it, follows no redirect (a
//! signed request goes nowhere but where it was signed for), and prints
//! nothing of the store's answer with control characters in it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use reqwest::Url;

use super::{Conn, Error, Outcome, secret_name};
use crate::api::UploadGrant;
use crate::api::secret::SECRET_TYPE;
use crate::signing::{FormFields, PartUrls};

/// Send the grant's request (its Secret's method, URL and headers) to the store.
///
/// PUT sends --file as the body ("-" for stdin); POST sends it as a form
/// upload, after the Secret's form fields; a multipart grant sends it in
/// parts and completes the upload; GET writes the body to --output,
/// else stdout. Where the request goes (scheme, host and port) and the HTTP
/// status go to stderr. Sends only a Secret the operator wrote for the
/// grant, and follows no redirect. Exits 3 if the store answers non-2xx.
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
    /// An http or https URL.
    pub url: Url,
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

/// Refuses a Secret the operator did not write for `grant`: one of another
/// type, or not controlled by this UploadGrant (a controller ownerReference
/// to grants.io's UploadGrant with the grant's name and uid). The operator
/// always writes both; somebody else's Secret of that name may point
/// anywhere.
pub fn check_secret(secret: &Secret, grant: &UploadGrant) -> Result<(), Error> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let refuse =
        |why: String| Error::Invalid(format!("Secret {name:?} {why}; not sending its request"));
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != SECRET_TYPE {
        return Err(refuse(format!(
            "is of type {type_:?}, not {SECRET_TYPE:?}: upload-grant-operator did not write it"
        )));
    }
    let owner = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "UploadGrant" && o.api_version.starts_with("grants.io/"))
        .ok_or_else(|| {
            refuse(
                "is not controlled by an UploadGrant: upload-grant-operator did not write it"
                    .into(),
            )
        })?;
    if owner.name != grant_name {
        return Err(refuse(format!(
            "belongs to UploadGrant {:?}, not to {grant_name:?}",
            owner.name
        )));
    }
    if grant.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
        return Err(refuse(format!(
            "belongs to another UploadGrant named {grant_name:?} (uid {:?}, not {:?})",
            owner.uid,
            grant.metadata.uid.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL (the port only where it is not the
/// scheme's default): where a request goes, without user info, path or
/// query.
pub fn destination(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// `text` without control characters other than newline and tab: what a
/// store answers may carry terminal escape sequences.
pub fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// Reads `url`, `method` and `headers` from the Secret's data. The errors
/// name keys, never values. The URL must be http or https.
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
    let url = http_url(secret, "url", &text("url")?)?;
    Ok(Request {
        method,
        url,
        headers,
        fields,
    })
}

/// `text` as an http or https URL with a host; the error names `key`, never
/// the value.
fn http_url(secret: &str, key: &str, text: &str) -> Result<Url, Error> {
    Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "Secret {secret:?}: {key:?} is not an http or https URL"
            ))
        })
}

/// What a multipart grant's Secret holds for the upload: the part URLs and
/// where to complete it.
pub struct Parts {
    pub urls: PartUrls,
    pub complete: Url,
}

/// Reads `parts` and `completeUrl`; None for a Secret without `uploadId`
/// (not a multipart grant's).
pub fn parts(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Option<Parts>, Error> {
    if !data.contains_key("uploadId") {
        return Ok(None);
    }
    let missing = |key: &str| Error::Invalid(format!("Secret {secret:?} has no {key:?} key"));
    let urls = serde_json::from_slice(data.get("parts").ok_or_else(|| missing("parts"))?).map_err(
        |_| {
            Error::Invalid(format!(
                "Secret {secret:?}: \"parts\" is not the operator's JSON of part URLs"
            ))
        },
    )?;
    let complete = data
        .get("completeUrl")
        .ok_or_else(|| missing("completeUrl"))?;
    let complete = http_url(secret, "completeUrl", &String::from_utf8_lossy(complete))?;
    Ok(Some(Parts { urls, complete }))
}

/// CompleteMultipartUpload's body: the parts in order with their ETags.
pub fn complete_body(etags: &[String]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let parts: String = etags
        .iter()
        .enumerate()
        .map(|(i, etag)| {
            format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                escape(etag)
            )
        })
        .collect();
    format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>")
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

/// The `<Code>` and `<Message>` of an S3 error body, if it is one, without
/// control characters (but newlines and tabs).
pub fn store_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(body).ok()?;
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(printable(&text[start..end]).trim().to_owned())
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

/// Where a redirect points, as [`destination`]: its Location resolved
/// against the request's URL.
pub fn redirect_target(url: &Url, location: &reqwest::header::HeaderValue) -> String {
    match location.to_str().ok().and_then(|l| url.join(l).ok()) {
        Some(to) if matches!(to.scheme(), "http" | "https") => printable(&destination(&to)),
        Some(_) => "a URL that is not http or https".into(),
        None => "a Location that is not a URL".into(),
    }
}

/// What the store answered.
#[derive(Debug)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub location: Option<reqwest::header::HeaderValue>,
    /// A part's ETag, for completing a multipart upload.
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    /// What stderr says about it: [`status_line`], and for a redirect where
    /// it points.
    pub fn line(&self, url: &Url) -> String {
        let mut line = status_line(self.status, &self.body);
        match (self.status.is_redirection(), &self.location) {
            (true, Some(location)) => {
                line += &format!(
                    "; the redirect to {} was not followed",
                    redirect_target(url, location)
                );
            }
            (true, None) => line += "; a redirect without a Location, not followed",
            (false, _) => {}
        }
        line
    }
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

/// A client that follows no redirect: the signed request, its headers and
/// body go nowhere but to the URL's host.
fn client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(Error::http)
}

/// Sends the request and reads the answer, following no redirect.
pub async fn send(req: &Request, body: Option<Vec<u8>>, file_name: &str) -> Result<Answer, Error> {
    let mut headers = req.headers.clone();
    let body = match (&req.method, body) {
        (&reqwest::Method::POST, Some(file)) => {
            let (body, content_type) = form_body(&req.fields, file_name, &file);
            headers.insert(reqwest::header::CONTENT_TYPE.to_string(), content_type);
            Some(body)
        }
        (_, body) => body,
    };
    let body = body.map(reqwest::Body::from);
    exchange(&client()?, req.method.clone(), &req.url, &headers, body).await
}

/// One request and its answer.
async fn exchange(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &Url,
    headers: &BTreeMap<String, String>,
    body: Option<reqwest::Body>,
) -> Result<Answer, Error> {
    let mut builder = client.request(method, url.clone());
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let response = builder.send().await.map_err(Error::http)?;
    let status = response.status();
    let location = response.headers().get(reqwest::header::LOCATION).cloned();
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.map_err(Error::http)?.to_vec();
    Ok(Answer {
        status,
        location,
        etag,
        body,
    })
}

/// Opens the file to upload ("-": stdin).
fn open(file: &PathBuf) -> Result<Box<dyn Read>, Error> {
    if file.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    let opened = std::fs::File::open(file).map_err(io(format!("reading {}", file.display())))?;
    Ok(Box::new(opened))
}

/// One part of a file, read from its offset in chunks as the connection
/// takes them: a part of any size (up to 5 GiB) costs one chunk of memory.
/// Its exact length is its size hint, so it is sent with a Content-Length,
/// which S3 requires of a part.
struct FilePart {
    file: std::fs::File,
    remaining: u64,
}

/// What one read of a FilePart takes.
const CHUNK: u64 = 256 * 1024;

impl FilePart {
    fn open(path: &PathBuf, offset: u64, len: u64) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(FilePart {
            file,
            remaining: len,
        })
    }
}

impl http_body::Body for FilePart {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let mut chunk = vec![0; usize::try_from(self.remaining.min(CHUNK)).unwrap_or(0)];
        let read = match self.file.read(&mut chunk) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was sent",
            )),
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        };
        std::task::Poll::Ready(Some(read.map(|n| {
            chunk.truncate(n);
            self.remaining -= n as u64;
            http_body::Frame::data(bytes::Bytes::from(chunk))
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Where the parts come from: a regular file is read part by part at each
/// part's offset, never held whole; stdin, a pipe or a device cannot be
/// sought or sized, so it is read one part at a time into memory.
enum PartSource {
    File { path: PathBuf, size: u64 },
    Sequential(Box<dyn Read>),
}

impl PartSource {
    fn open(file: &PathBuf) -> Result<Self, Error> {
        if file.as_os_str() == "-" {
            return Ok(PartSource::Sequential(open(file)?));
        }
        let meta = std::fs::metadata(file).map_err(io(format!("reading {}", file.display())))?;
        if !meta.is_file() {
            // A FIFO (`<(…)`, /dev/stdin) reports no length: read it as it comes.
            return Ok(PartSource::Sequential(open(file)?));
        }
        Ok(PartSource::File {
            path: file.clone(),
            size: meta.len(),
        })
    }

    /// Part `n` (1-based) of `part_size` bytes, or None past the end. An
    /// empty file is one empty part, as S3 allows.
    fn part(&mut self, n: u32, part_size: u64) -> Result<Option<reqwest::Body>, Error> {
        let offset = u64::from(n.saturating_sub(1)).saturating_mul(part_size);
        match self {
            PartSource::File { path, size } => {
                if offset >= *size && !(n == 1 && *size == 0) {
                    return Ok(None);
                }
                let len = part_size.min(*size - offset);
                let part = FilePart::open(path, offset, len)
                    .map_err(io(format!("reading {}", path.display())))?;
                Ok(Some(reqwest::Body::wrap(part)))
            }
            PartSource::Sequential(reader) => {
                let mut chunk = Vec::new();
                reader
                    .by_ref()
                    .take(part_size)
                    .read_to_end(&mut chunk)
                    .map_err(io("reading stdin".into()))?;
                Ok((n == 1 || !chunk.is_empty()).then(|| reqwest::Body::from(chunk)))
            }
        }
    }
}

/// A multipart grant: the file sent one part (partSize bytes) at a time
/// over one connection, each PUT to its part URL, then the parts' ETags
/// sent to completeUrl.
async fn upload_parts(parts: Parts, file: &PathBuf) -> Result<Outcome, Error> {
    let Parts { urls, complete } = parts;
    let mut source = PartSource::open(file)?;
    let client = client()?;
    let mut etags: Vec<String> = Vec::new();
    eprintln!(
        "sending parts of {} bytes to {}",
        urls.part_size,
        destination(&complete)
    );
    loop {
        let n = u32::try_from(etags.len() + 1).unwrap_or(u32::MAX);
        let Some(body) = source.part(n, urls.part_size)? else {
            break;
        };
        let url = urls
            .url(n)
            .and_then(|u| Url::parse(&u).ok())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the file has more than {} parts of {} bytes; the upload was not completed",
                    urls.count, urls.part_size
                ))
            })?;
        let answer = exchange(
            &client,
            reqwest::Method::PUT,
            &url,
            &BTreeMap::new(),
            Some(body),
        )
        .await?;
        if !answer.status.is_success() {
            eprintln!("part {n}: {}", answer.line(&url));
            return Ok(Outcome::Negative);
        }
        etags.push(answer.etag.unwrap_or_default());
    }
    let headers = BTreeMap::from([(
        reqwest::header::CONTENT_TYPE.to_string(),
        "application/xml".to_owned(),
    )]);
    let body = reqwest::Body::from(complete_body(&etags));
    let answer = exchange(
        &client,
        reqwest::Method::POST,
        &complete,
        &headers,
        Some(body),
    )
    .await?;
    // S3 may answer 200 with an <Error> in the body.
    let error = store_error(&answer.body);
    eprintln!(
        "{} parts sent; completing: {}{}",
        etags.len(),
        answer.line(&complete),
        match (&error, answer.status.is_success()) {
            (Some((code, _)), true) => format!(", but {code}"),
            _ => String::new(),
        }
    );
    Ok(if answer.status.is_success() && error.is_none() {
        Outcome::Success
    } else {
        Outcome::Negative
    })
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
    check_secret(&secret, &grant)?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    if let Some(parts) = parts(&name, &data)? {
        let file = args.file.as_ref().ok_or_else(|| {
            Error::Invalid(
                "a multipart grant needs the file to upload: -f FILE (or -f - for stdin)".into(),
            )
        })?;
        return upload_parts(parts, file).await;
    }
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
    eprintln!("sending {} to {}", req.method, destination(&req.url));
    let answer = send(&req, body, &file_name).await?;
    eprintln!("{}", answer.line(&req.url));
    if !answer.status.is_success() {
        return Ok(Outcome::Negative);
    }
    if req.method == reqwest::Method::GET {
        write_body(args.output.as_ref(), &answer.body)?;
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Each part's bytes and the length it declares, until the source ends.
    async fn parts_of(source: &mut PartSource, part_size: u64) -> Vec<(Vec<u8>, Option<u64>)> {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let mut parts = vec![];
        for n in 1.. {
            let Some(body) = source.part(n, part_size).expect("a readable part") else {
                break;
            };
            let declared = body.size_hint().exact();
            let bytes = body.collect().await.expect("the part's bytes").to_bytes();
            parts.push((bytes.to_vec(), declared));
        }
        parts
    }

    #[tokio::test]
    async fn a_file_is_sent_part_by_part_with_each_parts_exact_length() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let part_size = CHUNK * 2 + 7;
        let cases: [(&str, u64, Vec<u64>); 4] = [
            (
                "two and a half parts",
                part_size * 2 + part_size / 2,
                vec![part_size, part_size, part_size / 2],
            ),
            (
                "exactly two parts",
                part_size * 2,
                vec![part_size, part_size],
            ),
            ("smaller than a part", 10, vec![10]),
            ("empty: one empty part", 0, vec![0]),
        ];
        for (case, size, lengths) in cases {
            let path = dir.path().join(case);
            let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &content).expect("the file written");
            let mut source = PartSource::open(&path).expect("the file opened");
            let parts = parts_of(&mut source, part_size).await;
            let declared: Vec<u64> = parts.iter().map(|(_, d)| d.unwrap_or(u64::MAX)).collect();
            assert_eq!(
                declared, lengths,
                "{case}: every part declares its exact length"
            );
            let sent: Vec<u8> = parts.into_iter().flat_map(|(bytes, _)| bytes).collect();
            assert!(
                sent == content,
                "{case}: the parts put together are the file"
            );
        }
    }

    #[tokio::test]
    async fn a_stream_is_read_one_part_at_a_time() {
        let content: Vec<u8> = (0..25u8).collect();
        let mut source = PartSource::Sequential(Box::new(std::io::Cursor::new(content.clone())));
        let parts = parts_of(&mut source, 10).await;
        let lengths: Vec<usize> = parts.iter().map(|(b, _)| b.len()).collect();
        assert_eq!(lengths, [10, 10, 5]);
        let sent: Vec<u8> = parts.into_iter().flat_map(|(bytes, _)| bytes).collect();
        assert_eq!(sent, content);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_pipe_given_as_a_path_is_read_as_it_comes_not_as_an_empty_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, [7u8; 25]).expect("the pipe written"))
        };
        let mut source = PartSource::open(&fifo).expect("the pipe opened");
        let parts = parts_of(&mut source, 10).await;
        writer.join().expect("the writer finished");
        let lengths: Vec<usize> = parts.iter().map(|(b, _)| b.len()).collect();
        assert_eq!(lengths, [10, 10, 5]);
    }

    #[tokio::test]
    async fn a_file_that_shrinks_while_sent_is_an_error_not_a_short_part() {
        use http_body_util::BodyExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("shrinks");
        std::fs::write(&path, vec![1u8; 100]).expect("the file written");
        let mut source = PartSource::open(&path).expect("the file opened");
        std::fs::write(&path, vec![1u8; 40]).expect("the file truncated");
        let body = source.part(1, 100).expect("a part").expect("one part");
        assert!(body.collect().await.is_err());
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_multipart_secrets_parts_are_read_and_completed_in_order() {
        let parts_json = r#"{"count":2,"partSize":5242880,"url":"http://s3.local/b/k?partNumber={partNumber}&X-Amz-Signature={signature}","signatures":["aa","bb"]}"#;
        let secret = data(&[
            ("uploadId", "u-1"),
            ("parts", parts_json),
            ("completeUrl", "http://s3.local/b/k?uploadId=u-1"),
        ]);
        let Some(Parts { urls, complete }) = parts("s", &secret).expect("valid") else {
            panic!("a multipart Secret");
        };
        assert_eq!(urls.part_size, 5 << 20);
        assert_eq!(
            urls.url(2).as_deref(),
            Some("http://s3.local/b/k?partNumber=2&X-Amz-Signature=bb")
        );
        assert_eq!(urls.url(3), None, "only count parts");
        assert_eq!(destination(&complete), "http://s3.local");
        assert!(parts("s", &data(&[("url", "x")])).expect("valid").is_none());
        let broken = data(&[("uploadId", "u"), ("parts", "[]"), ("completeUrl", "x")]);
        let error = parts("s", &broken).err().expect("refused").to_string();
        assert!(error.contains("\"parts\""), "{error}");
        assert_eq!(
            complete_body(&["\"a&b\"".into(), "\"c\"".into()]),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"c\"</ETag></Part></CompleteMultipartUpload>"
        );
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

    /// A Secret as the API returns it: `type_` and the controller
    /// ownerReference merged over one the operator wrote for the base grant
    /// ("g", uid "grant-uid").
    fn secret(patch: serde_json::Value) -> Secret {
        let mut doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "g", "namespace": "ns", "ownerReferences": [{
                "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "name": "g",
                "uid": "grant-uid", "controller": true, "blockOwnerDeletion": true,
            }]},
            "type": "grants.io/presigned-url",
        });
        json_patch::merge(&mut doc, &patch);
        serde_json::from_value(doc).expect("fixture Secret")
    }

    #[test]
    fn only_a_secret_the_operator_wrote_for_the_grant_is_sent() {
        let grant = crate::fixtures::grant_with(serde_json::json!({}));
        assert!(check_secret(&secret(serde_json::json!({})), &grant).is_ok());
        let owner =
            |o: serde_json::Value| serde_json::json!({"metadata": {"ownerReferences": [o]}});
        let theirs = |api_version: &str, kind: &str, name: &str, uid: &str, controller: bool| {
            owner(
                serde_json::json!({"apiVersion": api_version, "kind": kind, "name": name,
                "uid": uid, "controller": controller}),
            )
        };
        for (patch, why) in [
            (
                serde_json::json!({"type": "Opaque"}),
                "is of type \"Opaque\", not \"grants.io/presigned-url\": upload-grant-operator did not write it",
            ),
            (
                serde_json::json!({"type": null}),
                "is of type \"Opaque\", not \"grants.io/presigned-url\"",
            ),
            (
                serde_json::json!({"metadata": {"ownerReferences": null}}),
                "is not controlled by an UploadGrant",
            ),
            (
                theirs("grants.io/v1alpha1", "UploadGrant", "g", "grant-uid", false),
                "is not controlled by an UploadGrant",
            ),
            (
                theirs("apps/v1", "UploadGrant", "g", "grant-uid", true),
                "is not controlled by an UploadGrant",
            ),
            (
                theirs("grants.io/v1alpha1", "ConfigMap", "g", "grant-uid", true),
                "is not controlled by an UploadGrant",
            ),
            (
                theirs(
                    "grants.io/v1alpha1",
                    "UploadGrant",
                    "other",
                    "other-uid",
                    true,
                ),
                "belongs to UploadGrant \"other\", not to \"g\"",
            ),
            (
                theirs("grants.io/v1alpha1", "UploadGrant", "g", "old-uid", true),
                "belongs to another UploadGrant named \"g\" (uid \"old-uid\", not \"grant-uid\")",
            ),
        ] {
            let e = check_secret(&secret(patch.clone()), &grant)
                .expect_err(&format!("{patch} was accepted"))
                .to_string();
            assert!(
                e.starts_with("Secret \"g\" ")
                    && e.contains(why)
                    && e.ends_with("; not sending its request"),
                "{patch}: {e}"
            );
        }
    }

    #[test]
    fn the_destination_is_scheme_host_and_port_only() {
        for (url, want) in [
            (
                "https://s3.eu-west-1.amazonaws.com/b/k?X-Amz-Signature=abc",
                "https://s3.eu-west-1.amazonaws.com",
            ),
            (
                "http://127.0.0.1:9000/b/k?X-Amz-Signature=abc",
                "http://127.0.0.1:9000",
            ),
            (
                "https://user:pw@store.example:443/b/k#frag",
                "https://store.example",
            ),
            ("http://[::1]:8333/b", "http://[::1]:8333"),
        ] {
            let got = destination(&Url::parse(url).expect("a URL"));
            assert_eq!(got, want);
        }
        let secret = |url: &str| data(&[("url", url), ("method", "GET"), ("headers", "{}")]);
        for bad in [
            "file:///etc/passwd",
            "ftp://x/y?X-Amz-Signature=abc",
            "/b/k",
            "unix:/run/x",
        ] {
            let e = request("s", &secret(bad))
                .expect_err(&format!("{bad} was accepted"))
                .to_string();
            assert_eq!(e, "Secret \"s\": \"url\" is not an http or https URL");
        }
    }

    #[test]
    fn control_characters_of_the_answer_are_not_printed() {
        assert_eq!(
            printable("a\u{1b}[2Jb\u{1b}]0;title\u{7}c\rd\u{9b}31me\u{7f}\nf\tg"),
            "a[2Jb]0;titlecd31me\nf\tg"
        );
        let xml = "<Error><Code>Access\u{1b}[31mDenied</Code>\
            <Message>\u{1b}]52;c;ZXZpbA==\u{7}no\r\nway</Message></Error>";
        assert_eq!(
            status_line(reqwest::StatusCode::FORBIDDEN, xml.as_bytes()),
            "HTTP 403 Forbidden: Access[31mDenied (]52;c;ZXZpbA==no\nway)"
        );
    }

    /// A store on a loopback port that answers one request with `answer`;
    /// returns its address.
    fn store_answering(answer: String) -> std::net::SocketAddr {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            // The request head; the tests send no body.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = (&stream).write_all(answer.as_bytes());
        });
        addr
    }

    fn get(url: &str) -> Request {
        Request {
            method: reqwest::Method::GET,
            url: Url::parse(url).expect("a URL"),
            headers: BTreeMap::new(),
            fields: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_redirect_is_reported_and_not_followed() {
        // Where the redirect points: nothing may connect to it.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        elsewhere.set_nonblocking(true).expect("non-blocking");
        let port = elsewhere.local_addr().expect("its address").port();
        let store = store_answering(format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/steal?X-Amz-Signature=abc\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        let req = get(&format!("http://{store}/b/k?X-Amz-Signature=abc"));
        // A client that followed would wait for `elsewhere` to answer.
        let answer = tokio::time::timeout(Duration::from_secs(10), send(&req, None, "f"))
            .await
            .expect("answered in time: the redirect was followed")
            .expect("an answer");
        assert_eq!(answer.status, reqwest::StatusCode::FOUND);
        let line = answer.line(&req.url);
        assert_eq!(
            line,
            format!("HTTP 302 Found; the redirect to http://127.0.0.1:{port} was not followed")
        );
        assert!(
            matches!(elsewhere.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the redirect was followed"
        );
    }

    #[test]
    fn a_redirect_says_where_it_points_without_path_or_query() {
        let url = Url::parse("https://s3.example/b/k?X-Amz-Signature=abc").expect("a URL");
        let redirect = |status: u16, location: Option<&str>| Answer {
            status: reqwest::StatusCode::from_u16(status).expect("a status"),
            location: location.map(|l| l.parse().expect("a header value")),
            etag: None,
            body: Vec::new(),
        };
        for (status, location, want) in [
            (
                307,
                Some("https://b.s3.eu-west-1.amazonaws.com/k?X-Amz-Signature=abc"),
                "HTTP 307 Temporary Redirect; the redirect to https://b.s3.eu-west-1.amazonaws.com was not followed",
            ),
            (
                302,
                Some("/elsewhere?X-Amz-Signature=abc"),
                "HTTP 302 Found; the redirect to https://s3.example was not followed",
            ),
            (
                301,
                None,
                "HTTP 301 Moved Permanently; a redirect without a Location, not followed",
            ),
            (
                303,
                Some("file:///etc/passwd"),
                "HTTP 303 See Other; the redirect to a URL that is not http or https was not followed",
            ),
            (
                302,
                Some("http://exa mple/"),
                "HTTP 302 Found; the redirect to a Location that is not a URL was not followed",
            ),
        ] {
            assert_eq!(redirect(status, location).line(&url), want);
        }
        // An S3 redirect's error code and message come first.
        let s3 = Answer {
            body:
                b"<Error><Code>PermanentRedirect</Code><Message>Use the endpoint.</Message></Error>"
                    .to_vec(),
            ..redirect(301, None)
        };
        assert_eq!(
            s3.line(&url),
            "HTTP 301 Moved Permanently: PermanentRedirect (Use the endpoint.); a redirect without a Location, not followed"
        );
    }

    #[tokio::test]
    async fn the_answer_is_read_whole_and_its_escapes_dropped() {
        let body = "<Error><Code>\u{1b}[2JSlowDown</Code><Message>\u{1b}]0;x\u{7}Reduce your rate.</Message></Error>";
        let store = store_answering(format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        let req = get(&format!("http://{store}/b/k?X-Amz-Signature=abc"));
        let answer = send(&req, None, "f").await.expect("an answer");
        assert_eq!(answer.body, body.as_bytes());
        assert_eq!(
            answer.line(&req.url),
            "HTTP 503 Service Unavailable: [2JSlowDown (]0;xReduce your rate.)"
        );
    }
}
