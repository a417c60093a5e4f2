//! Validate: turns a grant's spec into checked, parsed values, or says what is
//! wrong. The CRD schema rejects most of this at apply time; this step is the
//! second line for objects written before a schema change or by other means.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::api::duration::parse_quantity;
use crate::api::duration::{format_duration, parse_duration};
use crate::api::grant::{FILENAME_PLACEHOLDER, fixed_key};
use crate::api::grant::{MAX_MULTIPART_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
use crate::api::limits::{
    MAX_LABEL_VALUE_LEN, MAX_METADATA_BYTES, MAX_QUALIFIED_NAME_LEN, MAX_QUALIFIED_NAME_PREFIX_LEN,
    MAX_SECRET_METADATA_BYTES, MIN_REFRESH_BEFORE, MIN_TTL, RESERVED_KEY_PREFIX,
    RESERVED_MANAGED_BY_KEY, min_ttl,
};
use crate::api::{MAX_POST_CONTENT_LENGTH, Size};
use crate::api::{Method, RefreshPolicy, ServerSideEncryption, UploadGrantSpec};
use crate::signing::{PostInput, SignInput};

pub const MAX_TTL: Duration = Duration::from_secs(168 * 3600);
pub const MAX_KEY_BYTES: usize = 1024;

/// A spec whose values have been checked and parsed: every input of the
/// signature and of the Secret, so later stages never go back to the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidGrant {
    pub bucket: String,
    pub key: String,
    pub method: Method,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// POST only: the sizes the upload may have, both ends included.
    pub content_length_range: Option<(u64, u64)>,
    /// POST only: the status S3 answers a successful upload with.
    pub success_action_status: Option<u16>,
    pub metadata: BTreeMap<String, String>,
    pub sse: Option<ServerSideEncryption>,
    /// PUT only: a multipart upload of (parts, partSize in bytes).
    pub multipart: Option<(u32, u64)>,
    pub ttl: Duration,
    pub refresh_before: Option<Duration>,
    pub refresh_policy: RefreshPolicy,
    pub not_after: Option<SystemTime>,
    pub secret_name: String,
    pub secret_labels: BTreeMap<String, String>,
    pub secret_annotations: BTreeMap<String, String>,
}

impl ValidGrant {
    /// What the signer needs for a URL signed at `signed_at`.
    pub fn sign_input(&self, signed_at: SystemTime, expires_in: Duration) -> SignInput<'_> {
        SignInput {
            bucket: &self.bucket,
            key: &self.key,
            method: self.method,
            content_type: self.content_type.as_deref(),
            content_length: self.content_length.and_then(|n| i64::try_from(n).ok()),
            metadata: (!self.metadata.is_empty()).then_some(&self.metadata),
            sse: self.sse.as_ref(),
            signed_at,
            expires_in,
        }
    }

    /// What the signer needs for a POST policy signed at `signed_at`.
    pub fn post_input(&self, signed_at: SystemTime, expires_in: Duration) -> PostInput<'_> {
        PostInput {
            bucket: &self.bucket,
            key: &self.key,
            content_type: self.content_type.as_deref(),
            content_length_range: self.content_length_range,
            metadata: (!self.metadata.is_empty()).then_some(&self.metadata),
            sse: self.sse.as_ref(),
            success_action_status: self.success_action_status,
            signed_at,
            expires_in,
        }
    }

    /// The part of the key a `${filename}` key always starts with; the whole
    /// key otherwise.
    pub fn fixed_key(&self) -> &str {
        fixed_key(&self.key)
    }
}

/// Why a spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

pub fn validate(spec: &UploadGrantSpec, grant_name: &str) -> Result<ValidGrant, InvalidSpec> {
    check_target(spec)?;
    check_signed_fields(spec)?;
    check_secret_template(spec)?;
    let content_length_range = content_length_range(spec)?;
    let multipart = multipart(spec)?;
    let (ttl, refresh_before) = lifetimes(spec)?;
    let template = spec.secret.clone().unwrap_or_default();
    Ok(ValidGrant {
        bucket: spec.bucket.clone(),
        key: spec.key.clone(),
        method: spec.method,
        content_type: spec.content_type.clone(),
        content_length: spec.content_length.and_then(|n| u64::try_from(n).ok()),
        content_length_range,
        success_action_status: spec
            .success_action_status
            .and_then(|n| u16::try_from(n).ok()),
        metadata: spec.metadata.clone().unwrap_or_default(),
        sse: spec.server_side_encryption.clone(),
        multipart,
        ttl,
        refresh_before,
        refresh_policy: spec.refresh_policy,
        not_after: spec.not_after.as_ref().map(|t| SystemTime::from(t.0)),
        secret_name: secret_name(spec, grant_name),
        secret_labels: template.labels,
        secret_annotations: template.annotations,
    })
}

/// The bucket and key S3 and HTTP clients can use.
fn check_target(spec: &UploadGrantSpec) -> Result<(), InvalidSpec> {
    check_bucket(&spec.bucket).map_err(|e| InvalidSpec(format!("spec.bucket: {e}")))?;
    if spec.key.is_empty() || spec.key.len() > MAX_KEY_BYTES {
        return Err(InvalidSpec(format!(
            "spec.key: must be 1 to {MAX_KEY_BYTES} bytes of UTF-8, got {} bytes",
            spec.key.len()
        )));
    }
    check_key_path(&spec.key).map_err(|e| InvalidSpec(format!("spec.key: {e}")))?;
    check_filename_placeholder(&spec.key, spec.method)
        .map_err(|e| InvalidSpec(format!("spec.key: {e}")))
}

/// `${filename}` only in a POST grant's key, once, at its end.
pub fn check_filename_placeholder(key: &str, method: Method) -> Result<(), String> {
    let count = key.matches(FILENAME_PLACEHOLDER).count();
    if count == 0 {
        return Ok(());
    }
    if method != Method::Post {
        return Err(format!(
            "only a POST grant's key may contain {FILENAME_PLACEHOLDER}: the form supplies the file name"
        ));
    }
    if count > 1 || !key.ends_with(FILENAME_PLACEHOLDER) {
        return Err(format!(
            "{FILENAME_PLACEHOLDER} may appear only once in key, at its end"
        ));
    }
    Ok(())
}

/// The headers a PUT, or the conditions a POST, is signed with.
fn check_signed_fields(spec: &UploadGrantSpec) -> Result<(), InvalidSpec> {
    if spec.method != Method::Put && spec.content_length.is_some() {
        return Err(InvalidSpec(
            "contentLength is only allowed when method is PUT (a POST grant bounds the size with contentLengthRange)".into(),
        ));
    }
    if !matches!(spec.method, Method::Put | Method::Post)
        && (spec.content_type.is_some()
            || spec.metadata.is_some()
            || spec.server_side_encryption.is_some())
    {
        return Err(InvalidSpec(
            "contentType, metadata and serverSideEncryption are only allowed when method is PUT or POST".into(),
        ));
    }
    if spec.method != Method::Post
        && (spec.content_length_range.is_some() || spec.success_action_status.is_some())
    {
        return Err(InvalidSpec(
            "contentLengthRange and successActionStatus are only allowed when method is POST"
                .into(),
        ));
    }
    if let Some(status) = spec.success_action_status
        && ![200, 201, 204].contains(&status)
    {
        return Err(InvalidSpec(format!(
            "spec.successActionStatus: {status} is not 200, 201 or 204"
        )));
    }
    if spec.content_length.is_some_and(|n| n < 0) {
        return Err(InvalidSpec(
            "spec.contentLength: must not be negative".into(),
        ));
    }
    if let Some(metadata) = &spec.metadata {
        check_metadata(metadata).map_err(|e| InvalidSpec(format!("spec.metadata: {e}")))?;
    }
    Ok(())
}

/// A POST's size range in bytes: min ≤ max ≤ 5Gi.
fn content_length_range(spec: &UploadGrantSpec) -> Result<Option<(u64, u64)>, InvalidSpec> {
    let Some(range) = &spec.content_length_range else {
        return Ok(None);
    };
    let bytes = |field: &str, q: &Size| {
        quantity_bytes(q).map_err(|e| InvalidSpec(format!("spec.contentLengthRange.{field}: {e}")))
    };
    let (min, max) = (bytes("min", &range.min)?, bytes("max", &range.max)?);
    if min > max {
        return Err(InvalidSpec(format!(
            "spec.contentLengthRange: min {min} is larger than max {max}"
        )));
    }
    if max > MAX_POST_CONTENT_LENGTH {
        return Err(InvalidSpec(format!(
            "spec.contentLengthRange.max: {max} bytes is more than 5Gi, S3's limit for a single upload"
        )));
    }
    Ok(Some((min, max)))
}

/// A multipart upload's (parts, partSize): PUT only, within S3's bounds.
fn multipart(spec: &UploadGrantSpec) -> Result<Option<(u32, u64)>, InvalidSpec> {
    let Some(m) = &spec.multipart else {
        return Ok(None);
    };
    if spec.method != Method::Put {
        return Err(InvalidSpec(
            "multipart is only allowed when method is PUT".into(),
        ));
    }
    if spec.content_length.is_some() {
        return Err(InvalidSpec(
            "multipart and contentLength exclude each other".into(),
        ));
    }
    if !(1..=MAX_MULTIPART_PARTS).contains(&m.parts) {
        return Err(InvalidSpec(format!(
            "spec.multipart.parts: {} is not between 1 and {MAX_MULTIPART_PARTS}",
            m.parts
        )));
    }
    let size = quantity_bytes(&m.part_size)
        .map_err(|e| InvalidSpec(format!("spec.multipart.partSize: {e}")))?;
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
        return Err(InvalidSpec(format!(
            "spec.multipart.partSize: {size} bytes is not between 5Mi and 5Gi (S3's part sizes)"
        )));
    }
    Ok(Some((m.parts, size)))
}

/// A size given as an integer or a quantity like `10Mi`, in bytes.
pub fn quantity_bytes(q: &Size) -> Result<u64, String> {
    match q {
        Size::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        Size::Quantity(s) => parse_quantity(s),
    }
}

/// Labels and annotations the apiserver accepts on the Secret.
fn check_secret_template(spec: &UploadGrantSpec) -> Result<(), InvalidSpec> {
    let Some(secret) = &spec.secret else {
        return Ok(());
    };
    check_secret_labels(&secret.labels)
        .map_err(|e| InvalidSpec(format!("spec.secret.labels: {e}")))?;
    check_secret_annotations(&secret.annotations)
        .map_err(|e| InvalidSpec(format!("spec.secret.annotations: {e}")))
}

/// The URL's lifetime and how long before its end it is renewed.
fn lifetimes(spec: &UploadGrantSpec) -> Result<(Duration, Option<Duration>), InvalidSpec> {
    let ttl = parse_duration(&spec.ttl).map_err(|e| InvalidSpec(format!("spec.ttl: {e}")))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(InvalidSpec(format!(
            "spec.ttl: {} is not between 1m and 168h",
            spec.ttl
        )));
    }
    let Some(s) = &spec.refresh_before else {
        return Ok((ttl, None));
    };
    let d = parse_duration(s).map_err(|e| InvalidSpec(format!("spec.refreshBefore: {e}")))?;
    check_refresh_before_minimum(d)
        .map_err(|e| InvalidSpec(format!("spec.refreshBefore: {s} {e}")))?;
    if d >= ttl {
        return Err(InvalidSpec(format!(
            "spec.refreshBefore: {} must be shorter than ttl {}",
            format_duration(d),
            format_duration(ttl)
        )));
    }
    Ok((ttl, Some(d)))
}

/// A ttl this operator can keep fresh in pods: a renewal must be able to land
/// a whole propagation budget before the URL it replaces expires.
pub fn check_propagation(ttl: Duration, budget: Duration) -> Result<(), InvalidSpec> {
    let shortest = min_ttl(budget);
    if ttl >= shortest {
        return Ok(());
    }
    Err(InvalidSpec(format!(
        "spec.ttl: {} is shorter than {}, the shortest ttl this operator signs: a renewed URL \
         can take up to {} (its propagation budget) to reach pods that mount the Secret",
        format_duration(ttl),
        format_duration(shortest),
        format_duration(budget)
    )))
}

/// The Secret a grant writes: spec.secret.name, else the grant's name.
pub fn secret_name(spec: &UploadGrantSpec, grant_name: &str) -> String {
    spec.secret
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| grant_name.to_owned())
}

/// S3's bucket naming rules for general purpose buckets.
pub fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    let bytes = bucket.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
    {
        return Err("may only contain lowercase letters, digits, dots and hyphens");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must start and end with a letter or digit");
    }
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return Err("must not contain two adjacent periods or a period next to a hyphen");
    }
    if bucket.split('.').count() == 4
        && bucket
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("must not be formatted as an IP address");
    }
    if ["xn--", "sthree-"].iter().any(|p| bucket.starts_with(p))
        || ["-s3alias", "--ol-s3"].iter().any(|s| bucket.ends_with(s))
    {
        return Err("must not use a prefix or suffix that S3 reserves");
    }
    Ok(())
}

/// An object key without `.` or `..` path segments (clients such as curl
/// normalise them away, so the signed path would no longer match) and without
/// control characters.
pub fn check_key_path(key: &str) -> Result<(), String> {
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("must not contain '.' or '..' path segments: clients normalise them away and the signature no longer matches".into());
    }
    if let Some(c) = key.chars().find(char::is_ascii_control) {
        return Err(format!(
            "must not contain control characters (U+0000 to U+001F, U+007F), found U+{:04X}",
            u32::from(c)
        ));
    }
    Ok(())
}

/// refreshBefore leaves a renewal time to land before the URL expires.
pub fn check_refresh_before_minimum(refresh_before: Duration) -> Result<(), String> {
    if refresh_before < MIN_REFRESH_BEFORE {
        return Err(format!(
            "must be at least {}",
            format_duration(MIN_REFRESH_BEFORE)
        ));
    }
    Ok(())
}

/// x-amz-meta-* names and values S3 and HTTP clients carry as signed: names
/// of letters, digits, '.', '_' and '-', printable ASCII values, and at most
/// [`MAX_METADATA_BYTES`] of names and values together.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in metadata {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "name {name:?} may only contain letters, digits, '.', '_' and '-'"
            ));
        }
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(format!(
                "value of {name:?} must be printable ASCII (space to '~')"
            ));
        }
    }
    let total = map_bytes(metadata);
    if total > MAX_METADATA_BYTES {
        return Err(format!(
            "names and values total {total} bytes, more than S3's limit of {MAX_METADATA_BYTES}"
        ));
    }
    Ok(())
}

/// Labels the Secret can carry: qualified-name keys the operator does not
/// reserve, and valid label values.
pub fn check_secret_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in labels {
        check_not_reserved(key)?;
        check_qualified_name(key)?;
        check_label_value(value).map_err(|e| format!("value of {key:?} {e}"))?;
    }
    check_secret_metadata_size(labels)
}

/// Annotations the Secret can carry: qualified-name keys the operator does not
/// reserve, at most [`MAX_SECRET_METADATA_BYTES`] in all.
pub fn check_secret_annotations(annotations: &BTreeMap<String, String>) -> Result<(), String> {
    for key in annotations.keys() {
        check_not_reserved(key)?;
        check_qualified_name(key)?;
    }
    check_secret_metadata_size(annotations)
}

/// The schema's bound, also for a grant created before the schema had it.
fn check_secret_metadata_size(map: &BTreeMap<String, String>) -> Result<(), String> {
    let total = map_bytes(map);
    if total > MAX_SECRET_METADATA_BYTES {
        return Err(format!(
            "keys and values total {total} bytes, more than the limit of {MAX_SECRET_METADATA_BYTES}"
        ));
    }
    Ok(())
}

/// Keys under grants.io/ and app.kubernetes.io/managed-by are the operator's.
pub fn check_not_reserved(key: &str) -> Result<(), String> {
    if key.starts_with(RESERVED_KEY_PREFIX) || key == RESERVED_MANAGED_BY_KEY {
        return Err(format!(
            "key {key:?} is reserved: the operator keeps its own bookkeeping under {RESERVED_KEY_PREFIX} and {RESERVED_MANAGED_BY_KEY}"
        ));
    }
    Ok(())
}

/// A Kubernetes qualified name: an optional DNS subdomain prefix of at most
/// 253 characters and '/', then a name of 1 to 63 characters.
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !(prefix.len() <= MAX_QUALIFIED_NAME_PREFIX_LEN && is_dns_subdomain(prefix))
    {
        return Err(format!(
            "key {key:?}: the prefix before '/' must be a DNS subdomain of at most {MAX_QUALIFIED_NAME_PREFIX_LEN} characters (lowercase letters, digits, '-' and '.')"
        ));
    }
    if name.len() > MAX_QUALIFIED_NAME_LEN || !is_name_part(name) {
        return Err(format!(
            "key {key:?}: the name must be 1 to {MAX_QUALIFIED_NAME_LEN} letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or a name part of at most 63 characters.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_VALUE_LEN || !(value.is_empty() || is_name_part(value)) {
        return Err(format!(
            "must be empty or at most {MAX_LABEL_VALUE_LEN} letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
            }
            _ => false,
        }
    })
}

/// The sum of the UTF-8 bytes of every key and value, as Kubernetes counts
/// annotations and S3 counts metadata.
fn map_bytes(map: &BTreeMap<String, String>) -> usize {
    map.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::grant;

    #[test]
    fn defaults_give_an_hour_and_the_grant_name() {
        let v = validate(&grant(serde_json::json!({})).spec, "nightly").expect("valid");
        assert_eq!(v.ttl, Duration::from_secs(3600));
        assert_eq!(v.refresh_before, None);
        assert_eq!(v.secret_name, "nightly");
    }

    #[test]
    fn secret_name_comes_from_the_template() {
        let v = validate(
            &grant(serde_json::json!({"secret": {"name": "upload"}})).spec,
            "nightly",
        )
        .expect("valid");
        assert_eq!(v.secret_name, "upload");
    }

    #[test]
    fn key_length_counts_bytes_not_characters() {
        let ok = "ü".repeat(512); // 1024 bytes
        assert!(validate(&grant(serde_json::json!({"key": ok})).spec, "g").is_ok());
        let long = "ü".repeat(513); // 1026 bytes, 513 characters
        let err = validate(&grant(serde_json::json!({"key": long})).spec, "g").unwrap_err();
        assert!(err.0.contains("1026 bytes"), "{err}");
    }

    #[test]
    fn ttl_must_parse_and_be_in_range() {
        for (ttl, needle) in [
            ("30s", "between"),
            ("169h", "between"),
            ("1d", "not a duration"),
        ] {
            let err = validate(&grant(serde_json::json!({"ttl": ttl})).spec, "g").unwrap_err();
            assert!(err.0.contains(needle), "{ttl}: {err}");
        }
    }

    #[test]
    fn refresh_before_must_be_shorter_than_ttl() {
        let err = validate(
            &grant(serde_json::json!({"ttl": "1h", "refreshBefore": "1h"})).spec,
            "g",
        )
        .unwrap_err();
        assert!(err.0.contains("shorter than ttl"), "{err}");
        let ok = validate(
            &grant(serde_json::json!({"ttl": "1h", "refreshBefore": "10m"})).spec,
            "g",
        )
        .expect("valid");
        assert_eq!(ok.refresh_before, Some(Duration::from_secs(600)));
    }

    #[test]
    fn put_only_fields_are_refused_on_other_methods() {
        let err = validate(
            &grant(serde_json::json!({"method": "GET", "contentLength": 5})).spec,
            "g",
        )
        .unwrap_err();
        assert!(err.0.contains("only allowed when method is PUT"), "{err}");
        let err = validate(&grant(serde_json::json!({"contentLength": -1})).spec, "g").unwrap_err();
        assert!(err.0.contains("negative"), "{err}");
    }

    #[test]
    fn post_grants_take_a_size_range_and_a_success_status() {
        let v = validate(
            &grant(serde_json::json!({
                "method": "POST", "key": "up/${filename}", "contentType": "text/csv",
                "metadata": {"owner": "a"}, "contentLengthRange": {"min": 1, "max": "10Mi"},
                "successActionStatus": 201
            }))
            .spec,
            "g",
        )
        .expect("valid");
        assert_eq!(v.content_length_range, Some((1, 10 << 20)));
        assert_eq!(v.success_action_status, Some(201));
        assert_eq!(v.fixed_key(), "up/");
        let input = v.post_input(SystemTime::UNIX_EPOCH, Duration::from_secs(60));
        assert_eq!(input.key, "up/${filename}");
        assert_eq!(input.content_type, Some("text/csv"));
        assert_eq!(input.content_length_range, Some((1, 10 << 20)));
        assert_eq!(input.success_action_status, Some(201));
        assert!(input.metadata.is_some_and(|m| m["owner"] == "a"));
    }

    #[test]
    fn post_fields_are_checked() {
        let post = |mut extra: serde_json::Value| {
            extra["method"] = "POST".into();
            validate(&grant(extra).spec, "g")
        };
        let err = |extra| post(extra).unwrap_err().0;
        assert!(
            err(serde_json::json!({"contentLengthRange": {"min": 10, "max": 9}}))
                .contains("min 10 is larger than max 9")
        );
        assert!(
            err(serde_json::json!({"contentLengthRange": {"min": 0, "max": "6Gi"}}))
                .contains("more than 5Gi")
        );
        assert!(
            err(serde_json::json!({"contentLengthRange": {"min": -1, "max": 9}}))
                .contains("contentLengthRange.min")
        );
        assert!(
            err(serde_json::json!({"contentLengthRange": {"min": 0, "max": "lots"}}))
                .contains("contentLengthRange.max")
        );
        assert!(err(serde_json::json!({"successActionStatus": 202})).contains("200, 201 or 204"));
        assert!(
            err(serde_json::json!({"contentLength": 5}))
                .contains("only allowed when method is PUT")
        );
        assert!(
            err(serde_json::json!({"key": "a/${filename}/b"}))
                .contains("only once in key, at its end")
        );
        assert!(err(serde_json::json!({"key": "${filename}${filename}"})).contains("only once"));
        assert!(
            post(serde_json::json!({"contentLengthRange": {"min": "0", "max": "5Gi"}})).is_ok()
        );
        // POST-only fields and ${filename} on other methods.
        let put = |extra| validate(&grant(extra).spec, "g").unwrap_err().0;
        assert!(
            put(serde_json::json!({"contentLengthRange": {"min": 0, "max": 1}}))
                .contains("only allowed when method is POST")
        );
        assert!(
            put(serde_json::json!({"successActionStatus": 201}))
                .contains("only allowed when method is POST")
        );
        assert!(
            put(serde_json::json!({"key": "a/${filename}"})).contains("only a POST grant's key")
        );
    }

    #[test]
    fn bucket_rules_match_s3() {
        for good in ["reports", "a.b-c", "123", "my.bucket.name"] {
            assert_eq!(check_bucket(good), Ok(()), "{good}");
        }
        for bad in [
            "ab",
            "Reports",
            "-ab",
            "ab-",
            "a..b",
            "a.-b",
            "192.168.0.1",
            "xn--abc",
            "abc-s3alias",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(check_bucket(bad).is_err(), "{bad} should be refused");
        }
    }
    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn key_must_not_have_dot_segments() {
        for bad in [".", "..", "./a", "../a", "a/.", "a/..", "a/./b", "a/../b"] {
            let err = check_key_path(bad).unwrap_err();
            assert!(err.contains("'.' or '..' path segments"), "{bad}: {err}");
        }
        for good in ["a..b", "...", ".hidden", "a/.b/c", "a/b..", "a//b", "a/"] {
            assert_eq!(check_key_path(good), Ok(()), "{good}");
        }
        let err = validate(&grant(serde_json::json!({"key": "a/../b"})).spec, "g").unwrap_err();
        assert!(err.0.starts_with("spec.key: "), "{err}");
    }

    #[test]
    fn key_must_not_have_control_characters() {
        for bad in ["\u{0}", "a\tb", "a\nb", "\u{1f}", "a\u{7f}"] {
            let err = check_key_path(bad).unwrap_err();
            assert!(err.contains("control characters"), "{bad:?}: {err}");
        }
        for good in ["a b", "ü/€", "~!@#$%^&*()"] {
            assert_eq!(check_key_path(good), Ok(()), "{good}");
        }
        let err = validate(&grant(serde_json::json!({"key": "a\u{7f}"})).spec, "g").unwrap_err();
        assert!(
            err.0.starts_with("spec.key: ") && err.0.contains("U+007F"),
            "{err}"
        );
    }

    #[test]
    fn refresh_before_must_be_at_least_ten_seconds() {
        assert_eq!(
            check_refresh_before_minimum(Duration::from_secs(10)),
            Ok(())
        );
        for short in [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(9_999),
        ] {
            let err = check_refresh_before_minimum(short).unwrap_err();
            assert!(err.contains("at least 10s"), "{short:?}: {err}");
        }
        let err = validate(
            &grant(serde_json::json!({"refreshBefore": "1ms"})).spec,
            "g",
        )
        .unwrap_err();
        assert_eq!(err.0, "spec.refreshBefore: 1ms must be at least 10s");
        let ok = validate(
            &grant(serde_json::json!({"refreshBefore": "10s"})).spec,
            "g",
        )
        .expect("valid");
        assert_eq!(ok.refresh_before, Some(Duration::from_secs(10)));
    }

    #[test]
    fn metadata_must_be_printable_ascii_within_two_kilobytes() {
        assert_eq!(check_metadata(&map(&[("owner", "a b ~!")])), Ok(()));
        for (name, value, needle) in [
            ("own er", "x", "may only contain"),
            ("owner", "ü", "printable ASCII"),
            ("owner", "a\tb", "printable ASCII"),
            ("owner", "a\u{7f}", "printable ASCII"),
        ] {
            let err = check_metadata(&map(&[(name, value)])).unwrap_err();
            assert!(err.contains(needle), "{name:?}={value:?}: {err}");
        }
        // Names count too: 5 + 2043 = 2048 bytes is the limit.
        let at_limit = "v".repeat(MAX_METADATA_BYTES - 5);
        assert_eq!(check_metadata(&map(&[("owner", &at_limit)])), Ok(()));
        let over = "v".repeat(MAX_METADATA_BYTES - 4);
        let err = check_metadata(&map(&[("owner", &over)])).unwrap_err();
        assert!(err.contains("2049 bytes"), "{err}");
        let err = validate(
            &grant(serde_json::json!({"metadata": {"owner": over}})).spec,
            "g",
        )
        .unwrap_err();
        assert!(err.0.starts_with("spec.metadata: "), "{err}");
    }

    #[test]
    fn reserved_keys_belong_to_the_operator() {
        for reserved in [
            "grants.io/grant",
            "grants.io/spec-hash",
            "grants.io/anything",
            "app.kubernetes.io/managed-by",
        ] {
            let err = check_not_reserved(reserved).unwrap_err();
            assert!(err.contains("reserved"), "{reserved}: {err}");
        }
        for free in [
            "app.kubernetes.io/name",
            "grants.io",
            "sub.grants.io/x",
            "team",
        ] {
            assert_eq!(check_not_reserved(free), Ok(()), "{free}");
        }
        for (field, needle) in [
            ("labels", "spec.secret.labels: "),
            ("annotations", "spec.secret.annotations: "),
        ] {
            let err = validate(
                &grant(serde_json::json!({"secret": {field: {"grants.io/grant": "x"}}})).spec,
                "g",
            )
            .unwrap_err();
            assert!(
                err.0.starts_with(needle) && err.0.contains("reserved"),
                "{err}"
            );
        }
    }

    #[test]
    fn keys_must_be_qualified_names() {
        let name63 = "n".repeat(MAX_QUALIFIED_NAME_LEN);
        let prefix253 = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        let long_prefix_ok = format!("{prefix253}/x");
        let long_prefix_bad = format!("{prefix253}a/x");
        let name64 = "n".repeat(MAX_QUALIFIED_NAME_LEN + 1);
        for good in [
            "team",
            "a",
            "A_b.c-D9",
            "example.com/team",
            "app.kubernetes.io/name",
            name63.as_str(),
            long_prefix_ok.as_str(),
        ] {
            assert_eq!(check_qualified_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-team",
            "team-",
            "te am",
            "/team",
            "example.com/",
            "a/b/c",
            "Example.com/team",
            "example..com/team",
            "-example.com/team",
            "tëam",
            name64.as_str(),
            long_prefix_bad.as_str(),
        ] {
            assert!(
                check_qualified_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        let err = validate(
            &grant(serde_json::json!({"secret": {"annotations": {"bad key": "x"}}})).spec,
            "g",
        )
        .unwrap_err();
        assert!(err.0.starts_with("spec.secret.annotations: "), "{err}");
    }

    #[test]
    fn label_values_follow_kubernetes_syntax() {
        let value63 = "v".repeat(MAX_LABEL_VALUE_LEN);
        for good in ["", "a", "A-b_c.9", value63.as_str()] {
            assert_eq!(check_label_value(good), Ok(()), "{good}");
        }
        let value64 = "v".repeat(MAX_LABEL_VALUE_LEN + 1);
        for bad in ["-a", "a-", "a b", "a/b", "ü", value64.as_str()] {
            assert!(check_label_value(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(check_secret_labels(&map(&[("team", &value63)])), Ok(()));
        let err = validate(
            &grant(serde_json::json!({"secret": {"labels": {"team": value64}}})).spec,
            "g",
        )
        .unwrap_err();
        assert!(
            err.0.starts_with("spec.secret.labels: value of \"team\""),
            "{err}"
        );
    }

    #[test]
    fn labels_and_annotations_total_at_most_4_kib() {
        // Keys count too: 4 + (4096 - 4) bytes is the limit.
        let at_limit = "v".repeat(MAX_SECRET_METADATA_BYTES - 4);
        assert_eq!(
            check_secret_annotations(&map(&[("note", &at_limit)])),
            Ok(())
        );
        // Annotation values may hold anything, unlike label values.
        assert_eq!(
            check_secret_annotations(&map(&[("note", "any text: ü, spaces\nand lines")])),
            Ok(())
        );
        let over = "v".repeat(MAX_SECRET_METADATA_BYTES - 3);
        let err = check_secret_annotations(&map(&[("note", &over)])).unwrap_err();
        assert!(err.contains("4097 bytes"), "{err}");
        // Labels: 64 keys of 60 bytes with 6-byte values are 4224 bytes.
        let long: Vec<(String, String)> = (0..64)
            .map(|i| (format!("{i:0>60}"), "v".repeat(6)))
            .collect();
        let labels = long.into_iter().collect::<BTreeMap<_, _>>();
        let err = check_secret_labels(&labels).unwrap_err();
        assert!(err.contains("4224 bytes"), "{err}");
    }
}
