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

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
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
    fn key(
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

/// Signs `input` for `route`. The bucket is already part of the route.
pub(crate) fn presign(
    route: &Route,
    creds: &Credentials,
    input: &SignInput<'_>,
    keys: &KeyCache,
) -> Result<Presigned, SigningError> {
    if input.expires_in > MAX_PRESIGN {
        return Err(SigningError(format!(
            "a presigned URL cannot be valid for more than {} seconds",
            MAX_PRESIGN.as_secs()
        )));
    }
    let (date_bytes, date_time) = timestamps(input.signed_at)?;
    let date_str = ascii(&date_bytes);
    let date_time_str = ascii(&date_time);

    let headers = request_headers(input)?;
    let mut signed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain([("host", route.host.as_str())])
        .collect();
    signed.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let signed_names = signed
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");

    let mut path = String::with_capacity(route.path_prefix.len() + input.key.len() + 16);
    path.push_str(&route.path_prefix);
    path.push('/');
    path.extend(utf8_percent_encode(input.key, KEY));

    let scope = format!("{date_str}/{}/{}/aws4_request", route.region, route.service);
    let credential = encode(&format!("{}/{scope}", creds.access_key_id()));
    let token = creds.session_token().map(encode);
    let expires = input.expires_in.as_secs().to_string();
    let signed_names_q = encode(&signed_names);
    let operation = match input.method {
        Method::Put => Some("PutObject"),
        Method::Get => Some("GetObject"),
        Method::Delete => Some("DeleteObject"),
        Method::Head => None,
    };

    let algorithm = ("X-Amz-Algorithm", ALGORITHM);
    let credential = ("X-Amz-Credential", credential.as_str());
    let date = ("X-Amz-Date", date_time_str);
    let expires = ("X-Amz-Expires", expires.as_str());
    let signed_headers = ("X-Amz-SignedHeaders", signed_names_q.as_str());
    let token = token.as_deref().map(|t| ("X-Amz-Security-Token", t));
    let operation = operation.map(|op| ("x-id", op));

    // Parameters sorted by name, as the canonical query string wants them.
    let mut canonical = String::with_capacity(512);
    canonical.push_str(input.method.as_str());
    canonical.push('\n');
    canonical.push_str(&path);
    canonical.push('\n');
    push_query(
        &mut canonical,
        [algorithm, credential, date, expires]
            .into_iter()
            .chain(token)
            .chain([signed_headers])
            .chain(operation),
    );
    canonical.push('\n');
    for (name, value) in &signed {
        canonical.push_str(name);
        canonical.push(':');
        push_trimmed(&mut canonical, value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_names);
    canonical.push('\n');
    canonical.push_str(UNSIGNED_PAYLOAD);

    let string_to_sign = format!(
        "{ALGORITHM}\n{date_time_str}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = keys.key(
        creds,
        input.signed_at,
        &date_bytes,
        &route.region,
        &route.service,
    )?;
    let signature = calculate_signature(key, string_to_sign.as_bytes());

    // The SDK's order: the operation's own parameter, then the signer's, the
    // session token last.
    let mut url = String::with_capacity(route.origin.len() + path.len() + canonical.len());
    url.push_str(&route.origin);
    url.push_str(&path);
    url.push('?');
    push_query(
        &mut url,
        operation
            .into_iter()
            .chain([algorithm, credential, date, expires, signed_headers])
            .chain([("X-Amz-Signature", signature.as_str())])
            .chain(token),
    );
    Ok(Presigned {
        url: SecretUrl::new(url),
        method: input.method,
        headers: headers.into_iter().collect(),
    })
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
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A canonical header value: spaces (only spaces) trimmed and runs of them
/// collapsed, as aws-sigv4 does.
/// `name=value` pairs joined by `&`; the values are already encoded.
fn push_query<'a>(out: &mut String, params: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (i, (name, value)) in params.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
}

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

fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ`, in UTC.
fn timestamps(t: SystemTime) -> Result<([u8; 8], [u8; 16]), SigningError> {
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

fn ascii(bytes: &[u8]) -> &str {
    // Only ever called on the ASCII digits written above.
    std::str::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
