//! Build: the pure parts a decision is made of — the state a Secret records,
//! when to renew, and the Secret that carries a URL. No cluster access, so it
//! is tested from fixtures.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::validate::ValidGrant;
use crate::api::Method;
use crate::api::limits::{
    MAX_LABEL_VALUE_LEN, RESERVED_KEY_PREFIX, RESERVED_MANAGED_BY_KEY, shorten,
};
use crate::api::secret::{
    EXPIRES_AT_ANNOTATION, FINGERPRINT_ANNOTATION, GRANT_LABEL, ISSUED_AT_ANNOTATION, MANAGED_BY,
    MANAGED_BY_LABEL, MAX_STATE_VALUE_LEN, REFRESH_AT_ANNOTATION, RENEW_REQUEST_ANNOTATION,
    REPLACES_ANNOTATION, SECRET_TYPE, SHARD_LABEL, SPEC_HASH_ANNOTATION, UPLOAD_ID_ANNOTATION,
    UPLOAD_OBJECT_ANNOTATION,
};
use crate::api::{RefreshPolicy, S3Target, UploadGrant, UploadGrantSpec};
use crate::error::{Error, Result};
use crate::shard::{self, Owned, Selection};
use crate::signing::{FormFields, Presigned, PresignedMultipart, PresignedPost};

/// Keys of the operator's own labels and annotations. Values a user puts
/// under them are never written, so they are never read back as state.
fn reserved(key: &str) -> bool {
    key.starts_with(RESERVED_KEY_PREFIX) || key == RESERVED_MANAGED_BY_KEY
}

/// Label values hold at most 63 characters; grant names up to 253. A longer
/// name keeps its start and gains a hash of the whole, so it stays readable
/// and two long names do not share a value.
pub fn grant_label_value(name: &str) -> String {
    shorten(name, MAX_LABEL_VALUE_LEN, 10)
}

/// The label selector that finds every Secret this operator manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// With `--sharding` and only some shards: the selector of the Secrets of
/// `owned`'s grants, by their `grants.io/shard` label. None selects every
/// managed Secret.
pub fn shard_selector(owned: &Owned) -> Option<String> {
    if owned.selection() == Selection::All {
        return None;
    }
    let mine = owned.label_values();
    // The shorter of the two sets, so a URL stays within a few KiB. `notin`
    // also selects Secrets without the label, which the owner check sorts
    // out like any other.
    let half = (shard::LABEL_SHARDS / 2) as usize;
    let (operator, values): (&str, Vec<u32>) = if mine.len() > half {
        let others = (0..shard::LABEL_SHARDS).filter(|v| mine.binary_search(v).is_err());
        ("notin", others.collect())
    } else {
        ("in", mine)
    };
    let values: Vec<String> = values.iter().map(u32::to_string).collect();
    // A set may not be empty: no shard selects a value no Secret has.
    let values = match values.is_empty() {
        true => "none".to_owned(),
        false => values.join(","),
    };
    Some(format!(
        "{},{SHARD_LABEL} {operator} ({values})",
        managed_selector()
    ))
}

/// A hash of everything that shapes a URL: when it changes, the Secret is
/// replaced at once.
pub fn spec_hash(spec: &UploadGrantSpec, target: &S3Target) -> String {
    let mut spec = spec.clone();
    spec.suspend = false;
    // Whom to restart does not shape the URL.
    if let Some(secret) = spec.secret.as_mut() {
        secret.rollout_restart_targets.clear();
    }
    let mut hasher = Sha256::new();
    // Serialising these types cannot fail: they hold only strings, numbers and maps.
    hasher.update(serde_json::to_vec(&spec).unwrap_or_default());
    hasher.update(serde_json::to_vec(target).unwrap_or_default());
    hex::encode(hasher.finalize())[..16].to_owned()
}

/// What an existing Secret says about the URL it holds, read from its
/// annotations (so a metadata-only watch is enough).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedState {
    pub spec_hash: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// None: the URL is not renewed (refreshPolicy Never, or capped by notAfter).
    pub refresh_at: Option<SystemTime>,
    pub fingerprint: String,
    /// The renew request (`RENEW_REQUEST_ANNOTATION`) this URL answers.
    pub renew_request: Option<String>,
    /// The fingerprint of the URL this one replaced.
    pub replaces: Option<String>,
}

impl IssuedState {
    /// Reads the state; None when an annotation is missing or garbled, which
    /// makes the caller re-sign.
    /// Values longer than the operator writes make the state garbled: what
    /// the cache keeps of a Secret stays small whatever was written to it.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Self> {
        let read = |key| bounded(annotations, key, MAX_STATE_VALUE_LEN);
        let time = |key| read(key).and_then(parse_time);
        let optional = |key| match annotations.get(key) {
            None => Some(None),
            Some(_) => read(key).map(|v| Some(v.to_owned())),
        };
        Some(IssuedState {
            spec_hash: read(SPEC_HASH_ANNOTATION)?.to_owned(),
            issued_at: time(ISSUED_AT_ANNOTATION)?,
            expires_at: time(EXPIRES_AT_ANNOTATION)?,
            refresh_at: match annotations.get(REFRESH_AT_ANNOTATION) {
                None => None,
                Some(_) => Some(time(REFRESH_AT_ANNOTATION)?),
            },
            fingerprint: read(FINGERPRINT_ANNOTATION)?.to_owned(),
            renew_request: optional(RENEW_REQUEST_ANNOTATION)?,
            replaces: optional(REPLACES_ANNOTATION)?,
        })
    }
}

/// An annotation's value, if it is at most `max` bytes long.
fn bounded<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &str,
    max: usize,
) -> Option<&'a str> {
    annotations
        .get(key)
        .map(String::as_str)
        .filter(|v| v.len() <= max)
}

/// When to renew a URL valid for `lifetime` from `signed_at`; None when it is
/// never renewed. The renewal lands `refreshBefore` (default a third of the
/// lifetime) before expiry, and never less than `propagation` before it, so
/// that pods reading a mounted Secret get the new URL in time. `jitter` in
/// [0, 1) moves the time up to a tenth of the refresh window (at most a
/// minute) earlier, so grants created together do not all renew in the same
/// second.
pub fn refresh_at(
    signed_at: SystemTime,
    lifetime: Duration,
    grant: &ValidGrant,
    propagation: Duration,
    jitter: f64,
) -> Option<SystemTime> {
    let expires_at = signed_at + lifetime;
    if grant.refresh_policy == RefreshPolicy::Never
        || grant.not_after.is_some_and(|end| expires_at >= end)
    {
        return None;
    }
    // A lifetime capped (by the credentials) below the window falls back to
    // the default third: renewing at once would sign the same again.
    let wanted = grant
        .refresh_before
        .unwrap_or(lifetime / 3)
        .max(propagation);
    let before = if wanted < lifetime {
        wanted
    } else {
        lifetime / 3
    };
    let spread = (before / 10).min(Duration::from_secs(60));
    Some(expires_at - before - spread.mul_f64(jitter.clamp(0.0, 1.0)))
}

/// What was signed: a URL, a POST form, or a multipart upload's URLs.
#[derive(Debug, Clone)]
pub enum Signed {
    Url(Presigned),
    Post(PresignedPost),
    Multipart(PresignedMultipart),
}

impl Signed {
    /// A short hash that tells URLs (or forms) apart without revealing one.
    pub fn fingerprint(&self) -> String {
        match self {
            Signed::Url(p) => p.url.fingerprint(),
            Signed::Post(p) => p.fingerprint(),
            Signed::Multipart(m) => m.fingerprint(),
        }
    }

    /// `text` with everything that grants access replaced by `<url>` or
    /// `<field>`, for messages that might quote what was sent.
    pub fn redact(&self, text: &str) -> String {
        match self {
            Signed::Url(p) => text.replace(p.url.expose(), "<url>"),
            Signed::Post(p) => {
                let mut text = text.replace(&p.url, "<url>");
                for (_, value) in &p.fields {
                    if value.len() >= 16 {
                        text = text.replace(value.as_str(), "<field>");
                    }
                }
                text
            }
            Signed::Multipart(m) => m.redact(text),
        }
    }
}

/// A freshly signed URL and its times.
#[derive(Debug, Clone)]
pub struct Issued {
    pub presigned: Signed,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub refresh_at: Option<SystemTime>,
    pub spec_hash: String,
    pub renew_request: Option<String>,
    pub replaces: Option<String>,
}

impl Issued {
    /// What the Secret's annotations will say about this URL.
    pub fn state(&self) -> IssuedState {
        IssuedState {
            spec_hash: self.spec_hash.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            refresh_at: self.refresh_at,
            fingerprint: self.presigned.fingerprint(),
            renew_request: self.renew_request.clone(),
            replaces: self.replaces.clone(),
        }
    }
}

/// The Secret a pod mounts: the URL, the method, the headers to send, and
/// where it points; owned by the grant. It is the whole of what the operator
/// writes: a key left out here is removed from the Secret.
pub fn build_secret(grant: &UploadGrant, valid: &ValidGrant, issued: &Issued) -> Result<Secret> {
    let owner = grant
        .controller_owner_ref(&())
        .ok_or(Error::IncompleteObject)?;
    let namespace = grant.namespace().ok_or(Error::IncompleteObject)?;
    let mut labels = user_keys(&valid.secret_labels);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(GRANT_LABEL.into(), grant_label_value(&grant.name_any()));
    let uid = grant.uid().ok_or(Error::IncompleteObject)?;
    labels.insert(SHARD_LABEL.into(), shard::label_value(&uid));
    let mut annotations = user_keys(&valid.secret_annotations);
    annotations.extend(state_annotations(issued));
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(valid.secret_name.clone()),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(secret_data(valid, issued)?),
        ..Secret::default()
    })
}

/// The user's labels or annotations, less any under the operator's own keys.
fn user_keys(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The URL's state as the Secret's annotations record it
/// (`IssuedState::from_annotations` reads it back).
fn state_annotations(issued: &Issued) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (SPEC_HASH_ANNOTATION.into(), issued.spec_hash.clone()),
        (ISSUED_AT_ANNOTATION.into(), format_time(issued.issued_at)),
        (EXPIRES_AT_ANNOTATION.into(), format_time(issued.expires_at)),
        (
            FINGERPRINT_ANNOTATION.into(),
            issued.presigned.fingerprint(),
        ),
    ]);
    let optional = [
        (REFRESH_AT_ANNOTATION, issued.refresh_at.map(format_time)),
        (RENEW_REQUEST_ANNOTATION, issued.renew_request.clone()),
        (REPLACES_ANNOTATION, issued.replaces.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            annotations.insert(key.into(), value);
        }
    }
    if let Signed::Multipart(m) = &issued.presigned {
        annotations.insert(UPLOAD_ID_ANNOTATION.into(), m.upload_id.clone());
        annotations.insert(
            UPLOAD_OBJECT_ANNOTATION.into(),
            format!("{}/{}", m.bucket, m.key),
        );
    }
    annotations
}

/// The Secret's keys: what a pod reads (DESIGN.md).
fn secret_data(valid: &ValidGrant, issued: &Issued) -> Result<BTreeMap<String, ByteString>> {
    let text = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = match &issued.presigned {
        Signed::Url(p) => BTreeMap::from([
            ("url".to_owned(), text(p.url.expose())),
            ("method".to_owned(), text(p.method.as_str())),
            ("headers".to_owned(), json(&p.headers)?),
        ]),
        Signed::Post(p) => BTreeMap::from([
            ("url".to_owned(), text(&p.url)),
            ("method".to_owned(), text(Method::Post.as_str())),
            ("fields".to_owned(), json(&FormFields(p.fields.clone()))?),
            ("headers".to_owned(), text("{}")),
        ]),
        Signed::Multipart(m) => BTreeMap::from([
            ("uploadId".to_owned(), text(&m.upload_id)),
            ("parts".to_owned(), json(&m.parts)?),
            ("completeUrl".to_owned(), text(m.complete.expose())),
            ("abortUrl".to_owned(), text(m.abort.expose())),
        ]),
    };
    data.extend([
        (
            "expiresAt".to_owned(),
            text(&format_time(issued.expires_at)),
        ),
        ("bucket".to_owned(), text(&valid.bucket)),
        ("key".to_owned(), text(&valid.key)),
    ]);
    Ok(data)
}

fn json<T: serde::Serialize>(value: &T) -> Result<ByteString> {
    serde_json::to_vec(value)
        .map(ByteString)
        .map_err(Error::Serialize)
}

/// RFC 3339 in UTC, whole seconds, as Kubernetes prints times.
pub fn format_time(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    s.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// Truncates to whole seconds: SigV4 dates have no fractions, and the times
/// in status and annotations must agree with the URL's.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Method;
    use crate::fixtures::{nightly, s3_target, valid};
    use crate::signing::SecretUrl;

    const HOUR: Duration = Duration::from_secs(3600);
    /// No propagation budget: consumers that read the Secret through the API.
    const NONE: Duration = Duration::ZERO;
    const BUDGET: Duration = crate::api::limits::DEFAULT_PROPAGATION_BUDGET;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn default_refresh_is_a_third_of_the_lifetime_before_expiry() {
        assert_eq!(refresh_at(at(0), HOUR, &valid(), NONE, 0.0), Some(at(2400)));
    }

    #[test]
    fn jitter_moves_refresh_earlier_by_at_most_a_tenth_capped_at_a_minute() {
        let r = refresh_at(at(0), HOUR, &valid(), NONE, 0.999).expect("renews");
        assert!(r < at(2400) && r >= at(2340), "{r:?}");
        let short = Duration::from_secs(300);
        let g = ValidGrant {
            ttl: short,
            ..valid()
        };
        let r = refresh_at(at(0), short, &g, NONE, 0.999).expect("renews");
        assert!(r >= at(190) && r <= at(200), "{r:?}");
    }

    #[test]
    fn explicit_refresh_before_is_used_unless_the_lifetime_is_shorter() {
        let g = ValidGrant {
            refresh_before: Some(Duration::from_secs(600)),
            ..valid()
        };
        assert_eq!(refresh_at(at(0), HOUR, &g, NONE, 0.0), Some(at(3000)));
        // Credentials capped the URL at 5 minutes: a 10-minute refreshBefore cannot apply.
        assert_eq!(
            refresh_at(at(0), Duration::from_secs(300), &g, NONE, 0.0),
            Some(at(200))
        );
    }

    #[test]
    fn renewals_land_a_propagation_budget_before_expiry() {
        let g = ValidGrant {
            refresh_before: Some(Duration::from_secs(10)),
            ttl: Duration::from_secs(180),
            ..valid()
        };
        let three_minutes = Duration::from_secs(180);
        assert_eq!(
            refresh_at(at(0), three_minutes, &g, BUDGET, 0.0),
            Some(at(60)),
            "refreshBefore 10s is raised to the 2m budget"
        );
        // Jitter only ever moves a renewal earlier, away from expiry.
        let r = refresh_at(at(0), three_minutes, &g, BUDGET, 0.999).expect("renews");
        assert!(r <= at(60) && r >= at(48), "{r:?}");
        // A window wider than the budget stays as asked.
        assert_eq!(
            refresh_at(at(0), HOUR, &valid(), BUDGET, 0.0),
            Some(at(2400))
        );
        // Credentials capped the URL below the budget: renew after a third.
        assert_eq!(
            refresh_at(at(0), Duration::from_secs(90), &g, BUDGET, 0.0),
            Some(at(60))
        );
    }

    #[test]
    fn never_and_not_after_capped_urls_are_not_renewed() {
        let never = ValidGrant {
            refresh_policy: RefreshPolicy::Never,
            ..valid()
        };
        assert_eq!(refresh_at(at(0), HOUR, &never, NONE, 0.0), None);
        let g = ValidGrant {
            not_after: Some(at(3600)),
            ..valid()
        };
        assert_eq!(refresh_at(at(0), HOUR, &g, NONE, 0.0), None);
    }

    fn issued() -> Issued {
        Issued {
            presigned: Signed::Url(Presigned {
                url: SecretUrl::new("https://s3.example/reports/a/b.csv?X-Amz-Signature=00".into()),
                method: Method::Put,
                headers: BTreeMap::from([("content-type".into(), "text/csv".into())]),
            }),
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at: Some(at(2400)),
            spec_hash: "h1".into(),
            renew_request: None,
            replaces: None,
        }
    }

    #[test]
    fn a_replicas_secret_watch_selects_its_shards_by_label() {
        let owned = |count, shards: &[u32]| Owned {
            shards: shard::Shards::new(count).expect("a power of two"),
            owned: shards.iter().copied().collect(),
        };
        let managed = managed_selector();
        let first_half: Vec<String> = (0..512).map(|v| v.to_string()).collect();
        for (owned, want) in [
            (owned(1, &[0]), None),
            (owned(64, &(0..64).collect::<Vec<_>>()), None),
            (
                owned(512, &[3, 7]),
                Some(format!("{managed},{SHARD_LABEL} in (6,7,14,15)")),
            ),
            (
                owned(2, &[0]),
                Some(format!(
                    "{managed},{SHARD_LABEL} in ({})",
                    first_half.join(",")
                )),
            ),
            (
                owned(64, &[]),
                Some(format!("{managed},{SHARD_LABEL} in (none)")),
            ),
            (
                owned(4, &[0, 1, 3]),
                Some(format!(
                    "{managed},{SHARD_LABEL} notin ({})",
                    (512..768)
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            ),
        ] {
            assert_eq!(shard_selector(&owned), want);
        }
    }

    #[test]
    fn secret_carries_the_contract_keys_and_ownership() {
        let v = ValidGrant {
            secret_name: "nightly-upload".into(),
            ..valid()
        };
        let s = build_secret(&nightly(), &v, &issued()).expect("builds");
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(s.metadata.name.as_deref(), Some("nightly-upload"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("analytics"));
        let data = s.data.expect("data");
        let get = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf8");
        assert_eq!(
            get("url"),
            "https://s3.example/reports/a/b.csv?X-Amz-Signature=00"
        );
        assert_eq!(get("method"), "PUT");
        assert_eq!(get("headers"), r#"{"content-type":"text/csv"}"#);
        assert_eq!(get("expiresAt"), format_time(at(3600)));
        assert_eq!(get("bucket"), "reports");
        assert_eq!(get("key"), "a/b.csv");
        let labels = s.metadata.labels.expect("labels");
        assert_eq!(
            labels[MANAGED_BY_LABEL], MANAGED_BY,
            "users cannot override the managed-by label"
        );
        assert_eq!(labels[GRANT_LABEL], "nightly");
        assert_eq!(labels[SHARD_LABEL], shard::label_value("uid-1"));
        assert_eq!(labels["team"], "a");
        let owner = &s.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("UploadGrant", "uid-1", Some(true))
        );
        let annotations = s.metadata.annotations.expect("annotations");
        assert_eq!(annotations["note"], "x");
        let state = IssuedState::from_annotations(&annotations).expect("round trip");
        assert_eq!(state.refresh_at, Some(at(2400)));
        assert_eq!(state.expires_at, at(3600));
        assert_eq!(state.spec_hash, "h1");
        assert_eq!((state.renew_request, state.replaces), (None, None));
    }

    #[test]
    fn a_post_secret_holds_the_form_fields_in_the_signers_order() {
        let fields: Vec<(String, String)> = [
            ("key", "uploads/${filename}"),
            ("Content-Type", "text/csv"),
            ("success_action_status", "201"),
            ("x-amz-algorithm", "AWS4-HMAC-SHA256"),
            ("policy", "eyJleHBpcmF0aW9uIjoi"),
            ("x-amz-signature", "0123456789abcdef0123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let post = PresignedPost {
            url: "https://s3.example/reports".into(),
            fields,
        };
        let form = Issued {
            presigned: Signed::Post(post.clone()),
            ..issued()
        };
        let v = ValidGrant {
            method: Method::Post,
            key: "uploads/${filename}".into(),
            ..valid()
        };
        let s = build_secret(&nightly(), &v, &form).expect("builds");
        let data = s.data.expect("data");
        let get = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf8");
        assert_eq!(get("url"), "https://s3.example/reports");
        assert_eq!(get("method"), "POST");
        assert_eq!(get("headers"), "{}");
        assert_eq!(get("key"), "uploads/${filename}");
        assert_eq!(
            get("fields"),
            r#"{"key":"uploads/${filename}","Content-Type":"text/csv","success_action_status":"201","x-amz-algorithm":"AWS4-HMAC-SHA256","policy":"eyJleHBpcmF0aW9uIjoi","x-amz-signature":"0123456789abcdef0123"}"#,
            "an object whose keys keep the signer's order"
        );
        let annotations = s.metadata.annotations.expect("annotations");
        assert_eq!(annotations[FINGERPRINT_ANNOTATION], post.fingerprint());
        let redacted = form
            .presigned
            .redact("refused: policy=eyJleHBpcmF0aW9uIjoi sig=0123456789abcdef0123");
        assert!(
            !redacted.contains("eyJleHBpcmF0aW9uIjoi")
                && !redacted.contains("0123456789abcdef0123"),
            "{redacted}"
        );
    }

    /// The data of a multipart grant's Secret for `parts` parts, signed
    /// with session credentials whose token is as long as AWS's (~1,100
    /// characters for an assumed role), and its total size as the
    /// apiserver counts it (keys and values).
    async fn multipart_secret(
        parts: u32,
    ) -> (
        BTreeMap<String, ByteString>,
        usize,
        BTreeMap<String, String>,
    ) {
        use crate::signing::{MultipartInput, Presigner};
        let token = "IQoJb3JpZ2luX2VjE".repeat(70);
        assert!(token.len() >= 1100);
        let creds = aws_credential_types::Credentials::new(
            "ASIAXAMPLEXAMPLEXAMP",
            "secret",
            Some(token),
            None,
            "test",
        );
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let target = s3_target();
        let input = MultipartInput {
            bucket: "acme-reports",
            key: "analytics/2026/12/a-rather-long-object-key-for-a-nightly-export.parquet",
            upload_id: &"VXBsb2FkIElEIGZvciA2OWQ".repeat(8),
            parts,
            part_size: 64 << 20,
            signed_at: at(0),
            expires_in: HOUR,
        };
        let signed = Presigner::new(base)
            .presign_multipart(&target, &creds, &input)
            .await
            .expect("signs");
        let multipart = Issued {
            presigned: Signed::Multipart(signed),
            ..issued()
        };
        let v = ValidGrant {
            multipart: Some((parts, 64 << 20)),
            bucket: input.bucket.into(),
            key: input.key.into(),
            ..valid()
        };
        let secret = build_secret(&nightly(), &v, &multipart).expect("builds");
        let annotations = secret.metadata.annotations.expect("annotations");
        let data = secret.data.expect("data");
        let size = data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
        (data, size, annotations)
    }

    #[tokio::test]
    async fn ten_thousand_part_urls_fit_a_secret() {
        const MIB: usize = 1 << 20;
        let mut sizes = Vec::new();
        for parts in [10, 1_000, 10_000] {
            let (data, size, annotations) = multipart_secret(parts).await;
            assert_eq!(
                annotations[UPLOAD_ID_ANNOTATION].as_bytes(),
                &data["uploadId"].0[..]
            );
            let object = [&data["bucket"].0[..], b"/", &data["key"].0[..]].concat();
            assert_eq!(annotations[UPLOAD_OBJECT_ANNOTATION].as_bytes(), object);
            let keys: Vec<&str> = data.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                [
                    "abortUrl",
                    "bucket",
                    "completeUrl",
                    "expiresAt",
                    "key",
                    "parts",
                    "uploadId"
                ]
            );
            let parts_json: serde_json::Value =
                serde_json::from_slice(&data["parts"].0).expect("parts is JSON");
            assert_eq!(parts_json["count"], parts);
            assert_eq!(
                parts_json["signatures"].as_array().map(Vec::len),
                Some(parts as usize)
            );
            sizes.push((parts, size));
        }
        // Recorded in docs/src/consuming.md ("Multipart grants").
        eprintln!("multipart Secret data sizes (parts, bytes): {sizes:?}");
        let (_, largest) = sizes[2];
        assert!(largest < MIB, "10,000 parts: {largest} bytes");
        // The template costs once, a part costs its signature: 64 hex
        // digits, quotes and a comma.
        let per_part = (sizes[2].1 - sizes[1].1) / 9_000;
        assert_eq!(per_part, 67, "{sizes:?}");
    }

    #[test]
    fn the_secret_records_the_renew_request_and_the_url_it_replaced() {
        let renewed = Issued {
            renew_request: Some("2026-12-02T03:00:00.123456789Z".into()),
            replaces: Some("sha256:0123456789abcdef".into()),
            ..issued()
        };
        let s = build_secret(&nightly(), &valid(), &renewed).expect("builds");
        let annotations = s.metadata.annotations.expect("annotations");
        let state = IssuedState::from_annotations(&annotations).expect("round trip");
        assert_eq!(state.renew_request, renewed.renew_request);
        assert_eq!(state.replaces, renewed.replaces);
    }

    #[test]
    fn whom_to_restart_does_not_change_the_spec_hash() {
        let target = s3_target();
        let g = nightly();
        let mut with_targets = g.spec.clone();
        if let Some(secret) = with_targets.secret.as_mut() {
            secret.rollout_restart_targets = vec![crate::api::RolloutTarget {
                kind: crate::api::WorkloadKind::Deployment,
                name: "uploader".into(),
            }];
        }
        assert_ne!(with_targets, g.spec);
        assert_eq!(
            spec_hash(&with_targets, &target),
            spec_hash(&g.spec, &target)
        );
    }

    #[test]
    fn reserved_keys_from_the_template_are_never_written() {
        let mut v = valid();
        v.secret_annotations
            .insert(REFRESH_AT_ANNOTATION.into(), "2000-01-01T00:00:00Z".into());
        v.secret_labels.insert(GRANT_LABEL.into(), "other".into());
        let never = Issued {
            refresh_at: None,
            ..issued()
        };
        let s = build_secret(&nightly(), &v, &never).expect("builds");
        let annotations = s.metadata.annotations.expect("annotations");
        assert!(!annotations.contains_key(REFRESH_AT_ANNOTATION));
        let state = IssuedState::from_annotations(&annotations).expect("parses");
        assert_eq!(state.refresh_at, None, "a user value read back as state");
        assert_eq!(s.metadata.labels.expect("labels")[GRANT_LABEL], "nightly");
    }

    #[test]
    fn long_grant_names_give_valid_distinct_label_values() {
        let label = regex_lite_label();
        let a = format!("{}a", "x".repeat(99));
        let b = format!("{}b", "x".repeat(99));
        let dotted = format!("{}.{}", "y".repeat(51), "z".repeat(200));
        for name in [&a, &b, &dotted] {
            let v = grant_label_value(name);
            assert!(v.len() <= 63 && label(&v), "{v:?}");
        }
        assert_ne!(grant_label_value(&a), grant_label_value(&b));
        assert_eq!(grant_label_value("nightly"), "nightly");
    }

    /// Kubernetes' label value syntax.
    fn regex_lite_label() -> impl Fn(&str) -> bool {
        |v: &str| {
            let ok = |c: char| c.is_ascii_alphanumeric();
            v.is_empty()
                || (v.starts_with(ok)
                    && v.ends_with(ok)
                    && v.chars().all(|c| ok(c) || "-_.".contains(c)))
        }
    }

    #[test]
    fn spec_hash_ignores_suspend_but_not_the_key_or_target() {
        let g = nightly();
        let target = s3_target();
        let base = spec_hash(&g.spec, &target);
        let mut suspended = g.spec.clone();
        suspended.suspend = true;
        assert_eq!(spec_hash(&suspended, &target), base);
        let mut other_key = g.spec.clone();
        other_key.key = "c.csv".into();
        assert_ne!(spec_hash(&other_key, &target), base);
        let moved = S3Target {
            endpoint: Some("https://other".into()),
            ..target
        };
        assert_ne!(spec_hash(&g.spec, &moved), base);
    }

    #[test]
    fn times_round_trip_in_whole_seconds() {
        let t = whole_seconds(at(5) + Duration::from_millis(700));
        assert_eq!(t, at(5));
        assert_eq!(parse_time(&format_time(t)), Some(t));
    }
}
