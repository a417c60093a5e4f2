//! Presigning S3 requests for grants, with the lifetime capped by what the
//! signing credentials really allow.

pub mod credentials;
mod endpoint;
mod multipart;
#[cfg(test)]
mod oracle;
mod post;
mod sigv4;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use sha2::{Digest, Sha256};

pub use credentials::{CredentialSnapshot, CredentialsError};
pub use multipart::{MultipartInput, PartUrls, PresignedMultipart, S3_OPERATION_TIMEOUT};
pub use post::{FormFields, PostInput, PresignedPost};

use crate::api::{Method, S3Target, ServerSideEncryption};

/// S3 refuses presigned URLs valid for more than seven days.
pub const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);
/// A URL ends at least this long before the credentials that signed it, so a
/// request that starts just before the end is not refused half way.
pub const CREDENTIAL_MARGIN: Duration = Duration::from_secs(60);

/// A presigned URL. It is a bearer credential, so it never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: String) -> Self {
        SecretUrl(url)
    }

    /// The URL itself, for the Secret's data and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short hash that tells URLs apart without revealing one.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("sha256:{}", &hex::encode(digest)[..16])
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretUrl({})", self.fingerprint())
    }
}

/// What to sign.
#[derive(Debug, Clone)]
pub struct SignInput<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub method: Method,
    pub content_type: Option<&'a str>,
    pub content_length: Option<i64>,
    pub metadata: Option<&'a BTreeMap<String, String>>,
    pub sse: Option<&'a ServerSideEncryption>,
    pub signed_at: SystemTime,
    pub expires_in: Duration,
}

/// A signed request: what the consumer must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    pub url: SecretUrl,
    pub method: Method,
    /// Every header the client must send, lower-case names.
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SigningError(pub String);

/// The lifetime a URL may really have: the requested ttl, cut short by the
/// credentials' expiry (minus a margin), by notAfter and by S3's seven days.
/// `None` when nothing usable is left.
pub fn url_lifetime(
    now: SystemTime,
    ttl: Duration,
    credential_expiry: Option<SystemTime>,
    not_after: Option<SystemTime>,
) -> Option<Duration> {
    let mut lifetime = ttl.min(MAX_PRESIGN);
    if let Some(expiry) = credential_expiry {
        lifetime = lifetime.min(
            expiry
                .checked_sub(CREDENTIAL_MARGIN)?
                .duration_since(now)
                .ok()?,
        );
    }
    if let Some(end) = not_after {
        lifetime = lifetime.min(end.duration_since(now).ok()?);
    }
    // X-Amz-Expires counts whole seconds.
    let lifetime = Duration::from_secs(lifetime.as_secs());
    (lifetime >= Duration::from_secs(1)).then_some(lifetime)
}

/// Presigns with SigV4 directly: aws-sdk-s3's endpoint rules decide where a
/// URL points (once per target and bucket), and the signature is computed
/// here with a cached signing key. aws-sdk-s3's presigner gives the same
/// URLs (the oracle tests compare them) at a fraction of the rate.
pub struct Presigner {
    endpoints: endpoint::Endpoints,
    keys: sigv4::KeyCache,
    /// For the S3 client of multipart grants (`s3_client`).
    base: aws_config::SdkConfig,
}

impl Presigner {
    /// `base` supplies what the SDK would take from it for S3 endpoints:
    /// a configured endpoint URL, FIPS and dual-stack.
    pub fn new(base: aws_config::SdkConfig) -> Self {
        Presigner {
            endpoints: endpoint::Endpoints::new(&base),
            keys: sigv4::KeyCache::default(),
            base,
        }
    }

    pub async fn presign(
        &self,
        target: &S3Target,
        credentials: &Credentials,
        input: &SignInput<'_>,
    ) -> Result<Presigned, SigningError> {
        // aws-sdk-s3 refuses these before building a request.
        if input.bucket.trim().is_empty() {
            return Err(SigningError("bucket must not be empty".into()));
        }
        if input.key.trim().is_empty() {
            return Err(SigningError("key must not be empty".into()));
        }
        if input.method == Method::Post {
            return Err(SigningError(
                "a POST is signed as a form policy (presign_post), not as a URL".into(),
            ));
        }
        let route = self.endpoints.route(target, input.bucket).await?;
        sigv4::presign(&route, credentials, input, &self.keys)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::SseType;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn lifetime_is_the_ttl_when_nothing_ends_sooner() {
        assert_eq!(
            url_lifetime(at(0), Duration::from_secs(3600), None, None),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn lifetime_is_capped_by_credentials_minus_margin() {
        let l = url_lifetime(at(0), Duration::from_secs(7200), Some(at(3600)), None);
        assert_eq!(l, Some(Duration::from_secs(3600) - CREDENTIAL_MARGIN));
    }

    #[test]
    fn lifetime_is_capped_by_not_after_and_seven_days() {
        assert_eq!(
            url_lifetime(at(0), Duration::from_secs(3600), None, Some(at(600))),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            url_lifetime(at(0), Duration::from_secs(30 * 86400), None, None),
            Some(MAX_PRESIGN)
        );
    }

    #[test]
    fn nothing_left_means_no_lifetime() {
        assert_eq!(
            url_lifetime(at(100), Duration::from_secs(3600), None, Some(at(50))),
            None
        );
        assert_eq!(
            url_lifetime(at(0), Duration::from_secs(3600), Some(at(30)), None),
            None
        );
    }

    #[test]
    fn url_debug_shows_only_a_fingerprint() {
        let url = SecretUrl::new("https://s3/b/k?X-Amz-Signature=abcdef".into());
        let shown = format!("{url:?}");
        assert!(
            !shown.contains("abcdef") && shown.contains("sha256:"),
            "{shown}"
        );
        assert_eq!(url.fingerprint().len(), "sha256:".len() + 16);
    }

    pub(crate) fn presigner() -> Presigner {
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        Presigner::new(base)
    }

    pub(crate) fn target() -> S3Target {
        S3Target {
            region: "eu-west-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            force_path_style: true,
        }
    }

    fn input<'a>(method: Method) -> SignInput<'a> {
        SignInput {
            bucket: "reports",
            key: "a b/ü+%=&.csv",
            method,
            content_type: None,
            content_length: None,
            metadata: None,
            sse: None,
            signed_at: at(0),
            expires_in: Duration::from_secs(900),
        }
    }

    #[tokio::test]
    async fn put_carries_signed_headers_and_no_default_checksum() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("session".into()),
            None,
            "test",
        );
        let meta = BTreeMap::from([("owner".to_string(), "analytics".to_string())]);
        let sse = ServerSideEncryption {
            type_: SseType::AwsKms,
            kms_key_id: Some("alias/reports".into()),
        };
        let mut req = input(Method::Put);
        req.content_type = Some("text/csv");
        req.content_length = Some(42);
        req.metadata = Some(&meta);
        req.sse = Some(&sse);
        let signed = presigner()
            .presign(&target(), &creds, &req)
            .await
            .expect("signs");
        let url = signed.url.expose();
        assert!(url.starts_with("http://127.0.0.1:9000/reports/"), "{url}");
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        assert!(url.contains("X-Amz-Security-Token=session"), "{url}");
        assert!(
            !url.to_ascii_lowercase().contains("checksum"),
            "no default checksum: {url}"
        );
        assert_eq!(
            signed.headers.get("content-type").map(String::as_str),
            Some("text/csv")
        );
        assert_eq!(
            signed.headers.get("content-length").map(String::as_str),
            Some("42")
        );
        assert_eq!(
            signed.headers.get("x-amz-meta-owner").map(String::as_str),
            Some("analytics")
        );
        assert_eq!(
            signed
                .headers
                .get("x-amz-server-side-encryption")
                .map(String::as_str),
            Some("aws:kms")
        );
        assert_eq!(
            signed
                .headers
                .get("x-amz-server-side-encryption-aws-kms-key-id")
                .map(String::as_str),
            Some("alias/reports")
        );
    }

    #[tokio::test]
    async fn every_method_signs_with_its_own_verb() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        for method in Method::URL {
            let signed = presigner()
                .presign(&target(), &creds, &input(method))
                .await
                .expect("signs");
            assert_eq!(signed.method, method);
            assert!(signed.url.expose().contains("X-Amz-Signature="));
        }
    }
}
