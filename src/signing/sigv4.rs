//! SigV4 query-string presigning of S3 object requests, written to produce
//! the same bytes as aws-sdk-s3's presigner without its request pipeline,
//! which costs several times more than the cryptography.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::endpoint::Route;
use super::{MAX_PRESIGN, Presigned, SecretUrl, SignInput, SigningError};
use crate::api::Method;

/// Smithy's encoding of query strings (aws-smithy-http's `BASE_SET`): all
/// but RFC 3986 unreserved characters.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Smithy's greedy label, used for object keys: slashes stay.
const KEY: &AsciiSet = &QUERY.remove(b'/');

pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Signing keys kept; a few credentials × regions on one day, and the day
/// before around midnight.
const CACHED_KEYS: usize = 16;

/// Derived SigV4 signing keys. A key depends only on the secret, the UTC day,
/// the region and the service, and deriving it costs four HMACs, as much as
/// the rest of a signature. No `Debug`: the keys sign for a whole day.
#[derive(Default)]
pub(crate) struct KeyCache {
    entries: RwLock<Vec<CachedKey>>,
    derivations: AtomicU64,
}

struct CachedKey {
    access_key_id: String,
    /// Held to notice a new secret under the same key id.
    secret: String,
    date: [u8; 8],
    region: String,
    service: String,
    key: [u8; 32],
}

impl CachedKey {
    fn matches(&self, creds: &Credentials, date: &[u8; 8], region: &str, service: &str) -> bool {
        &self.date == date
            && self.region == region
            && self.service == service
            && self.access_key_id == creds.access_key_id()
            && self.secret == creds.secret_access_key()
    }
}

impl KeyCache {
    /// The signing key for `creds` on `date` (the day of `time`) in `region`
    /// for `service`: cached, derived once otherwise. Query presigning and
    /// POST policies share it.
    pub(super) fn key(
        &self,
        creds: &Credentials,
        time: SystemTime,
        date: &[u8; 8],
        region: &str,
        service: &str,
    ) -> Result<[u8; 32], SigningError> {
        let cached = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|e| e.matches(creds, date, region, service))
            .map(|e| e.key);
        if let Some(key) = cached {
            return Ok(key);
        }
        self.derivations.fetch_add(1, Ordering::Relaxed);
        let key: [u8; 32] = generate_signing_key(creds.secret_access_key(), time, region, service)
            .as_ref()
            .try_into()
            .map_err(|_| SigningError("unexpected SigV4 signing key length".into()))?;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if !entries
            .iter()
            .any(|e| e.matches(creds, date, region, service))
        {
            if entries.len() >= CACHED_KEYS {
                entries.remove(0);
            }
            entries.push(CachedKey {
                access_key_id: creds.access_key_id().to_owned(),
                secret: creds.secret_access_key().to_owned(),
                date: *date,
                region: region.to_owned(),
                service: service.to_owned(),
                key,
            });
        }
        Ok(key)
    }

    /// How many keys were derived rather than found.
    #[cfg(test)]
    pub fn derivations(&self) -> u64 {
        self.derivations.load(Ordering::Relaxed)
    }
}

/// One query parameter or header: a name and its value. Query parameters
/// are held encoded, as they appear in the URL.
type Param<'a> = (&'a str, &'a str);

/// A slice put in SigV4's order (by name, then value) when made, so a
/// canonical request cannot be given parameters or headers in any other.
/// Header names are unique here, so for them this is the order by name.
struct Sorted<'s, T>(&'s [T]);

impl<'s, T: Ord> Sorted<'s, T> {
    fn new(items: &'s mut [T]) -> Self {
        items.sort_unstable();
        Sorted(items)
    }
}

/// What a SigV4 signature covers.
struct Request<'s, 'a> {
    pub method: &'a str,
    /// The URL's path as sent: S3 signs it encoded once and not normalised.
    pub path: &'a str,
    pub query: Sorted<'s, Param<'a>>,
    /// Lower-case names; values as sent.
    pub headers: Sorted<'s, Param<'a>>,
    pub payload_hash: &'a str,
}

/// The bytes whose hash is signed. Two signers agree on a signature only if
/// they agree on these, so this is what to compare when they do not.
struct CanonicalRequest(String);

impl CanonicalRequest {
    #[cfg(test)]
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// SigV4's canonical form of `req`. The query and headers come sorted (by
/// their type), and the signed-header list is written from the same headers
/// as their lines, so the two cannot disagree.
fn canonical_request(req: &Request<'_, '_>) -> CanonicalRequest {
    let query_len: usize = req.query.0.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let headers_len: usize = req
        .headers
        .0
        .iter()
        .map(|(n, v)| 2 * n.len() + v.len() + 2)
        .sum();
    let mut out = String::with_capacity(
        req.method.len() + req.path.len() + query_len + headers_len + req.payload_hash.len() + 8,
    );
    out.push_str(req.method);
    out.push('\n');
    out.push_str(req.path);
    out.push('\n');
    push_query(&mut out, req.query.0);
    out.push('\n');
    for (name, value) in req.headers.0 {
        out.push_str(name);
        out.push(':');
        push_trimmed(&mut out, value);
        out.push('\n');
    }
    out.push('\n');
    for (i, (name, _)) in req.headers.0.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out.push('\n');
    out.push_str(req.payload_hash);
    CanonicalRequest(out)
}

/// What the signing key signs: the canonical request reduced to its hash and
/// bound to the time and scope, which the server checks on their own.
fn string_to_sign(canonical: &CanonicalRequest, date_time: &str, scope: &str) -> String {
    let hash = Sha256::digest(canonical.0.as_bytes());
    format!("{ALGORITHM}\n{date_time}\n{scope}\n{hash:x}")
}

/// The URL, its query in `query`'s order: the order is not signed, and the
/// caller keeps the SDK's so that URLs compare byte for byte.
fn url(origin: &str, path: &str, query: &[Param<'_>]) -> String {
    let query_len: usize = query.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut url = String::with_capacity(origin.len() + path.len() + query_len);
    url.push_str(origin);
    url.push_str(path);
    url.push('?');
    push_query(&mut url, query);
    url
}

/// Signs `input` for `route`. The bucket is already part of the route.
pub(crate) fn presign(
    route: &Route,
    creds: &Credentials,
    input: &SignInput<'_>,
    keys: &KeyCache,
) -> Result<Presigned, SigningError> {
    let expires = expires(input.expires_in)?;
    let (day, date_time) = timestamps(input.signed_at)?;
    let date_time = ascii(&date_time);
    let scope = scope(&day, route);
    let headers = request_headers(input)?;
    let mut signed = signed_headers(&headers, &route.host);
    let signed = Sorted::new(&mut signed);
    let path = object_path(route, input.key);

    let algorithm = ("X-Amz-Algorithm", ALGORITHM);
    let credential = credential(creds.access_key_id(), &scope);
    let credential = ("X-Amz-Credential", credential.as_str());
    let date = ("X-Amz-Date", date_time);
    let expires = ("X-Amz-Expires", expires.as_str());
    let names = header_names(&signed);
    let signed_headers = ("X-Amz-SignedHeaders", names.as_str());
    let token = creds.session_token().map(encode);
    let token = token.as_deref().map(|t| ("X-Amz-Security-Token", t));
    let operation = operation(input.method).map(|op| ("x-id", op));

    // The URL's parameters but the signature, in its order: sorting them is
    // the canonical request's business.
    let (mut query, len) = present([
        operation,
        Some(algorithm),
        Some(credential),
        Some(date),
        Some(expires),
        Some(signed_headers),
        token,
    ]);
    let canonical = canonical_request(&Request {
        method: input.method.as_str(),
        path: &path,
        query: Sorted::new(&mut query[..len]),
        headers: signed,
        payload_hash: UNSIGNED_PAYLOAD,
    });
    let string_to_sign = string_to_sign(&canonical, date_time, &scope);
    let key = keys.key(creds, input.signed_at, &day, &route.region, &route.service)?;
    let signature = calculate_signature(key, string_to_sign.as_bytes());

    // The SDK's order: the operation's own parameter, then the signer's, the
    // session token last.
    let (query, len) = present([
        operation,
        Some(algorithm),
        Some(credential),
        Some(date),
        Some(expires),
        Some(signed_headers),
        Some(("X-Amz-Signature", signature.as_str())),
        token,
    ]);
    Ok(Presigned {
        url: SecretUrl::new(url(&route.origin, &path, &query[..len])),
        method: input.method,
        headers: headers.into_iter().collect(),
    })
}

/// Signs requests on one object that carry no headers but `host` and
/// parameters of their own ahead of the signer's: the multipart operations
/// (UploadPart, CompleteMultipartUpload, AbortMultipartUpload). Everything
/// but the operation's parameters and the signature is worked out once, so
/// 10,000 part URLs cost 10,000 HMACs and nothing more.
pub(crate) struct QuerySigner<'r> {
    route: &'r Route,
    path: String,
    date_time: [u8; 16],
    scope: String,
    credential: String,
    expires: String,
    token: Option<String>,
    key: [u8; 32],
}

impl<'r> QuerySigner<'r> {
    pub fn new(
        route: &'r Route,
        creds: &Credentials,
        object_key: &str,
        signed_at: SystemTime,
        expires_in: Duration,
        keys: &KeyCache,
    ) -> Result<Self, SigningError> {
        let expires = expires(expires_in)?;
        let (day, date_time) = timestamps(signed_at)?;
        let scope = scope(&day, route);
        let key = keys.key(creds, signed_at, &day, &route.region, &route.service)?;
        Ok(QuerySigner {
            route,
            path: object_path(route, object_key),
            date_time,
            credential: credential(creds.access_key_id(), &scope),
            scope,
            expires,
            token: creds.session_token().map(encode),
            key,
        })
    }

    /// The signer's parameters, in the SDK's order, with `signature` if given.
    fn params<'s>(&'s self, signature: Option<&'s str>) -> ([Param<'s>; 7], usize) {
        present([
            Some(("X-Amz-Algorithm", ALGORITHM)),
            Some(("X-Amz-Credential", self.credential.as_str())),
            Some(("X-Amz-Date", ascii(&self.date_time))),
            Some(("X-Amz-Expires", self.expires.as_str())),
            Some(("X-Amz-SignedHeaders", "host")),
            signature.map(|s| ("X-Amz-Signature", s)),
            self.token.as_deref().map(|t| ("X-Amz-Security-Token", t)),
        ])
    }

    /// The signature of `method` on the object with the operation's own
    /// parameters `extra` (encoded).
    pub fn signature(&self, method: &str, extra: &[Param<'_>]) -> String {
        let (own, len) = self.params(None);
        let mut query: Vec<Param<'_>> = extra
            .iter()
            .copied()
            .chain(own[..len].iter().copied())
            .collect();
        let mut headers = [("host", self.route.host.as_str())];
        let canonical = canonical_request(&Request {
            method,
            path: &self.path,
            query: Sorted::new(&mut query),
            headers: Sorted::new(&mut headers),
            payload_hash: UNSIGNED_PAYLOAD,
        });
        let string_to_sign = string_to_sign(&canonical, ascii(&self.date_time), &self.scope);
        calculate_signature(self.key, string_to_sign.as_bytes())
    }

    /// The URL with the operation's parameters first, then the signer's.
    pub fn url(&self, extra: &[Param<'_>], signature: &str) -> String {
        let (own, len) = self.params(Some(signature));
        let query: Vec<Param<'_>> = extra
            .iter()
            .copied()
            .chain(own[..len].iter().copied())
            .collect();
        url(&self.route.origin, &self.path, &query)
    }
}

/// `X-Amz-Expires`: whole seconds, and no more than S3 accepts.
fn expires(expires_in: Duration) -> Result<String, SigningError> {
    if expires_in > MAX_PRESIGN {
        return Err(SigningError(format!(
            "a presigned URL cannot be valid for more than {} seconds",
            MAX_PRESIGN.as_secs()
        )));
    }
    Ok(expires_in.as_secs().to_string())
}

/// The headers the signature covers: the request's and `host`, which every
/// client sends whether asked to or not.
fn signed_headers<'a>(headers: &'a [(String, String)], host: &'a str) -> Vec<Param<'a>> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain([("host", host)])
        .collect()
}

/// The parameters that are there, first in a fixed array: no allocation for
/// what is never more than a handful.
fn present<'a, const N: usize>(params: [Option<Param<'a>>; N]) -> ([Param<'a>; N], usize) {
    let mut out = [("", ""); N];
    let mut len = 0;
    for (slot, param) in out.iter_mut().zip(params.into_iter().flatten()) {
        *slot = param;
        len += 1;
    }
    (out, len)
}

/// The operation aws-sdk-s3 names in an `x-id` parameter, from the Smithy
/// model's URIs; HeadObject's has none.
fn operation(method: Method) -> Option<&'static str> {
    match method {
        Method::Put => Some("PutObject"),
        Method::Get => Some("GetObject"),
        Method::Delete => Some("DeleteObject"),
        Method::Head | Method::Post => None,
    }
}

/// The URL path of an object: the route's prefix and the key, slashes kept.
fn object_path(route: &Route, key: &str) -> String {
    let mut path = String::with_capacity(route.path_prefix.len() + key.len() + 16);
    path.push_str(&route.path_prefix);
    path.push('/');
    path.extend(utf8_percent_encode(key, KEY));
    path
}

/// The credential scope: what, besides the secret, the signing key is
/// derived from, and so all a signature is valid for.
pub(super) fn scope(day: &[u8; 8], route: &Route) -> String {
    format!(
        "{}/{}/{}/aws4_request",
        ascii(day),
        route.region,
        route.service
    )
}

/// `X-Amz-Credential`, encoded: the key id and the scope.
fn credential(access_key_id: &str, scope: &str) -> String {
    let mut out = String::with_capacity(access_key_id.len() + scope.len() + 16);
    out.extend(utf8_percent_encode(access_key_id, QUERY));
    out.push_str("%2F");
    out.extend(utf8_percent_encode(scope, QUERY));
    out
}

/// `X-Amz-SignedHeaders`, encoded: the names joined by `;`.
fn header_names(headers: &Sorted<'_, Param<'_>>) -> String {
    let mut out = String::with_capacity(headers.0.iter().map(|(n, _)| n.len() + 3).sum());
    for (i, (name, _)) in headers.0.iter().enumerate() {
        if i > 0 {
            out.push_str("%3B");
        }
        out.extend(utf8_percent_encode(name, QUERY));
    }
    out
}

/// The headers a PUT carries, as aws-sdk-s3 serialises PutObject: lower-case
/// names, values as given. Other methods carry none.
fn request_headers(input: &SignInput<'_>) -> Result<Vec<(String, String)>, SigningError> {
    let mut headers = Vec::new();
    if input.method != Method::Put {
        return Ok(headers);
    }
    let mut add = |name: String, value: &str| -> Result<(), SigningError> {
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        {
            return Err(SigningError(format!(
                "`{name}` cannot be used with a control character"
            )));
        }
        if headers.iter().any(|(n, _)| *n == name) {
            return Err(SigningError(format!("header `{name}` given twice")));
        }
        headers.push((name, value.to_owned()));
        Ok(())
    };
    if let Some(content_type) = input.content_type {
        add("content-type".into(), content_type)?;
    }
    if let Some(length) = input.content_length {
        add("content-length".into(), &length.to_string())?;
    }
    for (name, value) in input.metadata.into_iter().flatten() {
        if !name.bytes().all(is_token_char) {
            return Err(SigningError(format!(
                "`{name}` cannot be used as a metadata name"
            )));
        }
        add(format!("x-amz-meta-{}", name.to_ascii_lowercase()), value)?;
    }
    if let Some(sse) = input.sse {
        add("x-amz-server-side-encryption".into(), sse.type_.as_str())?;
        if let Some(key_id) = &sse.kms_key_id {
            add("x-amz-server-side-encryption-aws-kms-key-id".into(), key_id)?;
        }
    }
    Ok(headers)
}

/// RFC 9110 `tchar`: what the http crate accepts in a header name.
pub(super) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `name=value` pairs joined by `&`; both are already encoded.
fn push_query(out: &mut String, params: &[Param<'_>]) {
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
}

/// A canonical header value: spaces (only spaces) trimmed and runs of them
/// collapsed, as aws-sigv4 does.
fn push_trimmed(out: &mut String, value: &str) {
    let mut last_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
}

/// A query parameter value, encoded as SigV4 and S3 expect.
pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ`, in UTC.
pub(super) fn timestamps(t: SystemTime) -> Result<([u8; 8], [u8; 16]), SigningError> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .as_ref()
        .map(Duration::as_secs)
        .map_err(|_| SigningError("cannot sign before 1970".into()))?;
    let (year, month, day) = civil_from_days(secs / 86_400);
    if year > 9999 {
        return Err(SigningError("cannot sign after 9999".into()));
    }
    let of_day = secs % 86_400;
    let mut date = [0u8; 8];
    digits(&mut date[..4], year);
    digits(&mut date[4..6], month);
    digits(&mut date[6..], day);
    let mut date_time = *b"00000000T000000Z";
    date_time[..8].copy_from_slice(&date);
    digits(&mut date_time[9..11], of_day / 3600);
    digits(&mut date_time[11..13], of_day / 60 % 60);
    digits(&mut date_time[13..15], of_day % 60);
    Ok((date, date_time))
}

/// Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn digits(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

pub(super) fn ascii(bytes: &[u8]) -> &str {
    // Only ever called on the ASCII digits written above.
    std::str::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's worked example of a presigned URL, from the S3 API reference,
    /// "Authenticating Requests: Using Query Parameters (AWS Signature
    /// Version 4)": GET examplebucket/test.txt for a day from
    /// 2013-05-24T00:00:00Z with AWS's example key. The expected texts are
    /// the page's, byte for byte. The request is built with the signer's own
    /// helpers but without `x-id`, which aws-sdk-s3 (and so `presign`) adds.
    #[test]
    fn aws_published_presigned_url_example() {
        const CANONICAL_REQUEST: &str = "GET\n\
            /test.txt\n\
            X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\n\
            host:examplebucket.s3.amazonaws.com\n\
            \n\
            host\n\
            UNSIGNED-PAYLOAD";
        const STRING_TO_SIGN: &str = "AWS4-HMAC-SHA256\n\
            20130524T000000Z\n\
            20130524/us-east-1/s3/aws4_request\n\
            3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04";
        const SIGNATURE: &str = "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        const URL: &str = "https://examplebucket.s3.amazonaws.com/test.txt?\
            X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&\
            X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";

        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "aws-docs",
        );
        let route = Route {
            origin: "https://examplebucket.s3.amazonaws.com".into(),
            path_prefix: String::new(),
            host: "examplebucket.s3.amazonaws.com".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
        };
        let signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let (day, date_time) = timestamps(signed_at).expect("in range");
        let date_time = ascii(&date_time);
        let scope = scope(&day, &route);
        let path = object_path(&route, "test.txt");
        let credential = credential(creds.access_key_id(), &scope);
        let expires = expires(Duration::from_secs(86_400)).expect("within seven days");
        let mut headers = [("host", route.host.as_str())];
        let names = header_names(&Sorted::new(&mut headers));
        let params = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", credential.as_str()),
            ("X-Amz-Date", date_time),
            ("X-Amz-Expires", expires.as_str()),
            ("X-Amz-SignedHeaders", names.as_str()),
        ];
        // The example lists them sorted; give them otherwise, for the
        // canonical request to sort.
        let mut query = params;
        query.reverse();

        let canonical = canonical_request(&Request {
            method: "GET",
            path: &path,
            query: Sorted::new(&mut query),
            headers: Sorted::new(&mut headers),
            payload_hash: UNSIGNED_PAYLOAD,
        });
        assert_eq!(canonical.as_str(), CANONICAL_REQUEST);
        let string_to_sign = string_to_sign(&canonical, date_time, &scope);
        assert_eq!(string_to_sign, STRING_TO_SIGN);
        let key = KeyCache::default()
            .key(&creds, signed_at, &day, &route.region, &route.service)
            .expect("derives a key");
        let signature = calculate_signature(key, string_to_sign.as_bytes());
        assert_eq!(signature, SIGNATURE);
        let mut in_url = params.to_vec();
        in_url.push(("X-Amz-Signature", &signature));
        assert_eq!(url(&route.origin, &path, &in_url), URL);
    }

    #[test]
    fn canonical_query_is_sorted_by_name_then_value_whatever_the_url_order() {
        let mut query = [
            ("b", "1"),
            ("a", "2"),
            ("X-b", "z"),
            ("a", "10"),
            ("a-b", ""),
        ];
        let mut headers = [("x-amz-meta-b", "v"), ("host", "h")];
        let canonical = canonical_request(&Request {
            method: "PUT",
            path: "/k",
            query: Sorted::new(&mut query),
            headers: Sorted::new(&mut headers),
            payload_hash: UNSIGNED_PAYLOAD,
        });
        assert_eq!(
            canonical.as_str(),
            "PUT\n/k\nX-b=z&a=10&a=2&a-b=&b=1\nhost:h\nx-amz-meta-b:v\n\nhost;x-amz-meta-b\nUNSIGNED-PAYLOAD"
        );
    }

    #[test]
    fn timestamps_match_jiff() {
        for secs in [
            0u64,
            86_399,
            951_782_400, // 2000-02-29
            1_709_164_799,
            1_800_000_000,
            4_102_444_800,   // 2100-01-01
            253_402_207_200, // 9999-12-30
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(999);
            let (date, date_time) = timestamps(t).expect("in range");
            let ts = jiff::Timestamp::from_second(secs as i64).expect("valid");
            assert_eq!(ascii(&date), ts.strftime("%Y%m%d").to_string());
            assert_eq!(ascii(&date_time), ts.strftime("%Y%m%dT%H%M%SZ").to_string());
        }
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert!(timestamps(before).is_err());
        assert!(timestamps(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800)).is_err());
    }

    #[test]
    fn header_values_are_trimmed_like_aws_sigv4() {
        for (raw, want) in [
            ("  a   b  ", "a b"),
            ("a\t b", "a\t b"),
            ("ü  ü", "ü ü"),
            ("", ""),
            ("   ", ""),
        ] {
            let mut out = String::new();
            push_trimmed(&mut out, raw);
            assert_eq!(out, want, "{raw:?}");
        }
    }
}
