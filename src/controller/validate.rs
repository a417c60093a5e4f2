//! Validate: turns a grant's spec into checked, parsed values, or says what is
//! wrong. The CRD schema rejects most of this at apply time; this step is the
//! second line for objects written before a schema change or by other means.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::api::duration::{format_duration, parse_duration};
use crate::api::{Method, RefreshPolicy, ServerSideEncryption, UploadGrantSpec};
use crate::signing::SignInput;

pub const MIN_TTL: Duration = Duration::from_secs(60);
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
    pub metadata: BTreeMap<String, String>,
    pub sse: Option<ServerSideEncryption>,
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
}

/// Why a spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

pub fn validate(spec: &UploadGrantSpec, grant_name: &str) -> Result<ValidGrant, InvalidSpec> {
    let invalid = |msg: String| Err(InvalidSpec(msg));
    if let Err(msg) = check_bucket(&spec.bucket) {
        return invalid(format!("spec.bucket: {msg}"));
    }
    if spec.key.is_empty() || spec.key.len() > MAX_KEY_BYTES {
        return invalid(format!(
            "spec.key: must be 1 to {MAX_KEY_BYTES} bytes of UTF-8, got {} bytes",
            spec.key.len()
        ));
    }
    let ttl = parse_duration(&spec.ttl).map_err(|e| InvalidSpec(format!("spec.ttl: {e}")))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return invalid(format!("spec.ttl: {} is not between 1m and 168h", spec.ttl));
    }
    let refresh_before = match &spec.refresh_before {
        None => None,
        Some(s) => {
            let d =
                parse_duration(s).map_err(|e| InvalidSpec(format!("spec.refreshBefore: {e}")))?;
            if d.is_zero() || d >= ttl {
                return invalid(format!(
                    "spec.refreshBefore: {} must be positive and shorter than ttl {}",
                    format_duration(d),
                    format_duration(ttl)
                ));
            }
            Some(d)
        }
    };
    if spec.method != Method::Put
        && (spec.content_length.is_some()
            || spec.content_type.is_some()
            || spec.metadata.is_some()
            || spec.server_side_encryption.is_some())
    {
        return invalid(
            "contentLength, contentType, metadata and serverSideEncryption are only allowed when method is PUT".into(),
        );
    }
    let content_length = match spec.content_length.map(u64::try_from) {
        Some(Err(_)) => return invalid("spec.contentLength: must not be negative".into()),
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let template = spec.secret.clone().unwrap_or_default();
    Ok(ValidGrant {
        bucket: spec.bucket.clone(),
        key: spec.key.clone(),
        method: spec.method,
        content_type: spec.content_type.clone(),
        content_length,
        metadata: spec.metadata.clone().unwrap_or_default(),
        sse: spec.server_side_encryption.clone(),
        ttl,
        refresh_before,
        refresh_policy: spec.refresh_policy,
        not_after: spec.not_after.as_ref().map(|t| SystemTime::from(t.0)),
        secret_name: secret_name(spec, grant_name),
        secret_labels: template.labels,
        secret_annotations: template.annotations,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> UploadGrantSpec {
        let mut base = serde_json::json!({"bucket": "reports", "key": "a/b.csv"});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::from_value(base).expect("fixture spec")
    }

    #[test]
    fn defaults_give_an_hour_and_the_grant_name() {
        let v = validate(&spec(serde_json::json!({})), "nightly").expect("valid");
        assert_eq!(v.ttl, Duration::from_secs(3600));
        assert_eq!(v.refresh_before, None);
        assert_eq!(v.secret_name, "nightly");
    }

    #[test]
    fn secret_name_comes_from_the_template() {
        let v = validate(
            &spec(serde_json::json!({"secret": {"name": "upload"}})),
            "nightly",
        )
        .expect("valid");
        assert_eq!(v.secret_name, "upload");
    }

    #[test]
    fn key_length_counts_bytes_not_characters() {
        let ok = "ü".repeat(512); // 1024 bytes
        assert!(validate(&spec(serde_json::json!({"key": ok})), "g").is_ok());
        let long = "ü".repeat(513); // 1026 bytes, 513 characters
        let err = validate(&spec(serde_json::json!({"key": long})), "g").unwrap_err();
        assert!(err.0.contains("1026 bytes"), "{err}");
    }

    #[test]
    fn ttl_must_parse_and_be_in_range() {
        for (ttl, needle) in [
            ("30s", "between"),
            ("169h", "between"),
            ("1d", "not a duration"),
        ] {
            let err = validate(&spec(serde_json::json!({"ttl": ttl})), "g").unwrap_err();
            assert!(err.0.contains(needle), "{ttl}: {err}");
        }
    }

    #[test]
    fn refresh_before_must_be_shorter_than_ttl() {
        let err = validate(
            &spec(serde_json::json!({"ttl": "1h", "refreshBefore": "1h"})),
            "g",
        )
        .unwrap_err();
        assert!(err.0.contains("shorter than ttl"), "{err}");
        let ok = validate(
            &spec(serde_json::json!({"ttl": "1h", "refreshBefore": "10m"})),
            "g",
        )
        .expect("valid");
        assert_eq!(ok.refresh_before, Some(Duration::from_secs(600)));
    }

    #[test]
    fn put_only_fields_are_refused_on_other_methods() {
        let err = validate(
            &spec(serde_json::json!({"method": "GET", "contentLength": 5})),
            "g",
        )
        .unwrap_err();
        assert!(err.0.contains("only allowed when method is PUT"), "{err}");
        let err = validate(&spec(serde_json::json!({"contentLength": -1})), "g").unwrap_err();
        assert!(err.0.contains("negative"), "{err}");
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
}
