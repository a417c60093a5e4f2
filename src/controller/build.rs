//! Build: the pure decisions of a reconcile — whether to sign, keep or revoke,
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
use crate::api::{RefreshPolicy, S3Target, UploadGrant, UploadGrantSpec};
use crate::signing::Presigned;

pub const SECRET_TYPE: &str = "grants.io/presigned-url";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "upload-grant-operator";
pub const GRANT_LABEL: &str = "grants.io/grant";
pub const SPEC_HASH_ANNOTATION: &str = "grants.io/spec-hash";
pub const ISSUED_AT_ANNOTATION: &str = "grants.io/issued-at";
pub const EXPIRES_AT_ANNOTATION: &str = "grants.io/expires-at";
pub const REFRESH_AT_ANNOTATION: &str = "grants.io/refresh-at";
pub const FINGERPRINT_ANNOTATION: &str = "grants.io/url-fingerprint";

/// The label selector that finds every Secret this operator manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// A hash of everything that shapes a URL: when it changes, the Secret is
/// replaced at once.
pub fn spec_hash(spec: &UploadGrantSpec, target: &S3Target) -> String {
    let mut spec = spec.clone();
    spec.suspend = false;
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
}

impl IssuedState {
    /// Reads the state; None when an annotation is missing or garbled, which
    /// makes the caller re-sign.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Self> {
        let time = |key: &str| annotations.get(key).and_then(|v| parse_time(v));
        Some(IssuedState {
            spec_hash: annotations.get(SPEC_HASH_ANNOTATION)?.clone(),
            issued_at: time(ISSUED_AT_ANNOTATION)?,
            expires_at: time(EXPIRES_AT_ANNOTATION)?,
            refresh_at: match annotations.get(REFRESH_AT_ANNOTATION) {
                None => None,
                Some(v) => Some(parse_time(v)?),
            },
            fingerprint: annotations.get(FINGERPRINT_ANNOTATION)?.clone(),
        })
    }
}

/// Why a Secret is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// refreshPolicy Never or notAfter: the URL ran out.
    Expired,
}

/// What a reconcile does for a grant that is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The Secret is current; look again at `wake_at`.
    Keep {
        state: IssuedState,
        wake_at: SystemTime,
    },
    /// Sign a URL: the first one, a replacement after a spec change, or a
    /// renewal of a URL close to expiry.
    Sign { renewal: bool },
    /// Remove the Secret and issue nothing more.
    Revoke(RevokeReason),
}

pub fn plan(
    now: SystemTime,
    current: Option<&IssuedState>,
    desired_hash: &str,
    grant: &ValidGrant,
    already_expired: bool,
) -> Plan {
    if grant.not_after.is_some_and(|end| now >= end) {
        return Plan::Revoke(RevokeReason::Expired);
    }
    match current {
        None if already_expired => Plan::Revoke(RevokeReason::Expired),
        None => Plan::Sign { renewal: false },
        Some(state) if state.spec_hash != desired_hash => Plan::Sign { renewal: false },
        Some(state) => match state.refresh_at {
            None if now >= state.expires_at => Plan::Revoke(RevokeReason::Expired),
            None => Plan::Keep {
                state: state.clone(),
                wake_at: state.expires_at,
            },
            Some(at) if now >= at => Plan::Sign { renewal: true },
            Some(at) => Plan::Keep {
                state: state.clone(),
                wake_at: at,
            },
        },
    }
}

/// When to renew a URL valid for `lifetime` from `signed_at`; None when it is
/// never renewed. `jitter` in [0, 1) moves the time up to a tenth of the
/// refresh window (at most a minute) earlier, so grants created together do
/// not all renew in the same second.
pub fn refresh_at(
    signed_at: SystemTime,
    lifetime: Duration,
    grant: &ValidGrant,
    policy: RefreshPolicy,
    jitter: f64,
) -> Option<SystemTime> {
    let expires_at = signed_at + lifetime;
    if policy == RefreshPolicy::Never || grant.not_after.is_some_and(|end| expires_at >= end) {
        return None;
    }
    // An explicit refreshBefore that a capped lifetime cannot honour falls
    // back to the default third.
    let before = grant
        .refresh_before
        .filter(|d| *d < lifetime)
        .unwrap_or(lifetime / 3);
    let spread = (before / 10).min(Duration::from_secs(60));
    Some(expires_at - before - spread.mul_f64(jitter.clamp(0.0, 1.0)))
}

/// A freshly signed URL and its times.
#[derive(Debug, Clone)]
pub struct Issued {
    pub presigned: Presigned,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub refresh_at: Option<SystemTime>,
    pub spec_hash: String,
}

impl Issued {
    /// What the Secret's annotations will say about this URL.
    pub fn state(&self) -> IssuedState {
        IssuedState {
            spec_hash: self.spec_hash.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            refresh_at: self.refresh_at,
            fingerprint: self.presigned.url.fingerprint(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the grant has no name, namespace or uid yet")]
    Incomplete,
    #[error("serialising headers: {0}")]
    Headers(#[from] serde_json::Error),
}

/// The Secret a pod mounts: the URL, the method, the headers to send, and
/// where it points; owned by the grant.
pub fn build_secret(
    grant: &UploadGrant,
    secret_name: &str,
    issued: &Issued,
) -> Result<Secret, BuildError> {
    let owner = grant
        .controller_owner_ref(&())
        .ok_or(BuildError::Incomplete)?;
    let namespace = grant.namespace().ok_or(BuildError::Incomplete)?;
    let template = grant.spec.secret.clone().unwrap_or_default();

    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(GRANT_LABEL.into(), grant.name_any());

    let mut annotations = template.annotations;
    annotations.insert(SPEC_HASH_ANNOTATION.into(), issued.spec_hash.clone());
    annotations.insert(ISSUED_AT_ANNOTATION.into(), format_time(issued.issued_at));
    annotations.insert(EXPIRES_AT_ANNOTATION.into(), format_time(issued.expires_at));
    if let Some(at) = issued.refresh_at {
        annotations.insert(REFRESH_AT_ANNOTATION.into(), format_time(at));
    }
    annotations.insert(
        FINGERPRINT_ANNOTATION.into(),
        issued.presigned.url.fingerprint(),
    );

    let text = |s: &str| ByteString(s.as_bytes().to_vec());
    let data = BTreeMap::from([
        ("url".to_owned(), text(issued.presigned.url.expose())),
        ("method".to_owned(), text(issued.presigned.method.as_str())),
        (
            "headers".to_owned(),
            ByteString(serde_json::to_vec(&issued.presigned.headers)?),
        ),
        (
            "expiresAt".to_owned(),
            text(&format_time(issued.expires_at)),
        ),
        ("bucket".to_owned(), text(&grant.spec.bucket)),
        ("key".to_owned(), text(&grant.spec.key)),
    ]);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    })
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
    use crate::signing::SecretUrl;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn valid() -> ValidGrant {
        ValidGrant {
            ttl: HOUR,
            refresh_before: None,
            not_after: None,
            secret_name: "s".into(),
        }
    }

    fn state(refresh_at: Option<SystemTime>) -> IssuedState {
        IssuedState {
            spec_hash: "h1".into(),
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at,
            fingerprint: "sha256:x".into(),
        }
    }

    #[test]
    fn first_reconcile_signs() {
        assert_eq!(
            plan(at(0), None, "h1", &valid(), false),
            Plan::Sign { renewal: false }
        );
    }

    #[test]
    fn fresh_secret_is_kept_until_its_refresh_time() {
        let s = state(Some(at(2400)));
        assert_eq!(
            plan(at(100), Some(&s), "h1", &valid(), false),
            Plan::Keep {
                state: s.clone(),
                wake_at: at(2400)
            }
        );
        assert_eq!(
            plan(at(2400), Some(&s), "h1", &valid(), false),
            Plan::Sign { renewal: true }
        );
    }

    #[test]
    fn a_changed_spec_replaces_the_url_at_once() {
        let s = state(Some(at(2400)));
        assert_eq!(
            plan(at(100), Some(&s), "h2", &valid(), false),
            Plan::Sign { renewal: false }
        );
    }

    #[test]
    fn unrenewed_urls_are_revoked_at_expiry() {
        let s = state(None);
        assert_eq!(
            plan(at(100), Some(&s), "h1", &valid(), false),
            Plan::Keep {
                state: s.clone(),
                wake_at: at(3600)
            }
        );
        assert_eq!(
            plan(at(3600), Some(&s), "h1", &valid(), false),
            Plan::Revoke(RevokeReason::Expired)
        );
        assert_eq!(
            plan(at(3700), None, "h1", &valid(), true),
            Plan::Revoke(RevokeReason::Expired)
        );
    }

    #[test]
    fn not_after_revokes_whatever_the_secret_says() {
        let g = ValidGrant {
            not_after: Some(at(1000)),
            ..valid()
        };
        let s = state(Some(at(2400)));
        assert_eq!(
            plan(at(1000), Some(&s), "h1", &g, false),
            Plan::Revoke(RevokeReason::Expired)
        );
    }

    #[test]
    fn default_refresh_is_a_third_of_the_lifetime_before_expiry() {
        assert_eq!(
            refresh_at(at(0), HOUR, &valid(), RefreshPolicy::Always, 0.0),
            Some(at(2400))
        );
    }

    #[test]
    fn jitter_moves_refresh_earlier_by_at_most_a_tenth_capped_at_a_minute() {
        let r = refresh_at(at(0), HOUR, &valid(), RefreshPolicy::Always, 0.999).expect("renews");
        assert!(r < at(2400) && r >= at(2340), "{r:?}");
        let short = Duration::from_secs(300);
        let g = ValidGrant {
            ttl: short,
            ..valid()
        };
        let r = refresh_at(at(0), short, &g, RefreshPolicy::Always, 0.999).expect("renews");
        assert!(r >= at(190) && r <= at(200), "{r:?}");
    }

    #[test]
    fn explicit_refresh_before_is_used_unless_the_lifetime_is_shorter() {
        let g = ValidGrant {
            refresh_before: Some(Duration::from_secs(600)),
            ..valid()
        };
        assert_eq!(
            refresh_at(at(0), HOUR, &g, RefreshPolicy::Always, 0.0),
            Some(at(3000))
        );
        // Credentials capped the URL at 5 minutes: a 10-minute refreshBefore cannot apply.
        assert_eq!(
            refresh_at(
                at(0),
                Duration::from_secs(300),
                &g,
                RefreshPolicy::Always,
                0.0
            ),
            Some(at(200))
        );
    }

    #[test]
    fn never_and_not_after_capped_urls_are_not_renewed() {
        assert_eq!(
            refresh_at(at(0), HOUR, &valid(), RefreshPolicy::Never, 0.0),
            None
        );
        let g = ValidGrant {
            not_after: Some(at(3600)),
            ..valid()
        };
        assert_eq!(
            refresh_at(at(0), HOUR, &g, RefreshPolicy::Always, 0.0),
            None
        );
    }

    fn grant() -> UploadGrant {
        let mut g: UploadGrant = serde_json::from_value(serde_json::json!({
            "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
            "metadata": {"name": "nightly", "namespace": "analytics", "uid": "uid-1"},
            "spec": {"bucket": "reports", "key": "a/b.csv",
                     "secret": {"labels": {"team": "a", "app.kubernetes.io/managed-by": "someone"}, "annotations": {"note": "x"}}}
        }))
        .expect("fixture grant");
        g.metadata.generation = Some(1);
        g
    }

    fn issued() -> Issued {
        Issued {
            presigned: Presigned {
                url: SecretUrl::new("https://s3.example/reports/a/b.csv?X-Amz-Signature=00".into()),
                method: Method::Put,
                headers: BTreeMap::from([("content-type".into(), "text/csv".into())]),
            },
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at: Some(at(2400)),
            spec_hash: "h1".into(),
        }
    }

    #[test]
    fn secret_carries_the_contract_keys_and_ownership() {
        let s = build_secret(&grant(), "nightly-upload", &issued()).expect("builds");
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
    }

    #[test]
    fn spec_hash_ignores_suspend_but_not_the_key_or_target() {
        let g = grant();
        let target = S3Target {
            region: "eu-west-1".into(),
            endpoint: None,
            force_path_style: false,
        };
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
