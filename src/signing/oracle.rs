//! aws-sdk-s3's own presigner, the reference the direct signer must match
//! byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Builder as S3ConfigBuilder, RequestChecksumCalculation};
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use aws_sdk_s3::types::ServerSideEncryption as SdkSse;

use super::{Presigned, Presigner, SecretUrl, SignInput, SigningError};
use crate::api::{Method, S3Target, ServerSideEncryption, SseType};

/// The operator's former signing path: one SDK client per S3 target.
struct SdkPresigner {
    base: aws_config::SdkConfig,
    clients: Mutex<HashMap<S3Target, aws_sdk_s3::Client>>,
}

impl SdkPresigner {
    fn new(base: aws_config::SdkConfig) -> Self {
        SdkPresigner {
            base,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, target: &S3Target) -> aws_sdk_s3::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(target.clone())
            .or_insert_with(|| {
                let mut config = S3ConfigBuilder::from(&self.base)
                    .region(aws_sdk_s3::config::Region::new(target.region.clone()))
                    .force_path_style(target.force_path_style)
                    // The 2025 SDK default adds a CRC32 of an empty body to
                    // presigned PUTs, which breaks every real upload.
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
                if let Some(endpoint) = &target.endpoint {
                    config = config.endpoint_url(endpoint);
                }
                aws_sdk_s3::Client::from_conf(config.build())
            })
            .clone()
    }

    async fn presign(
        &self,
        target: &S3Target,
        credentials: &Credentials,
        input: &SignInput<'_>,
    ) -> Result<Presigned, SigningError> {
        let client = self.client(target);
        let presigning = PresigningConfig::builder()
            .start_time(input.signed_at)
            .expires_in(input.expires_in)
            .build()
            .map_err(|e| SigningError(e.to_string()))?;
        let creds = S3ConfigBuilder::default().credentials_provider(credentials.clone());
        macro_rules! presign {
            ($op:expr) => {
                $op.customize()
                    .config_override(creds)
                    .presigned(presigning)
                    .await
                    .map_err(describe)
            };
        }
        let result = match input.method {
            Method::Put => {
                let sse = input.sse.map(|s| SdkSse::from(s.type_.as_str()));
                presign!(
                    client
                        .put_object()
                        .bucket(input.bucket)
                        .key(input.key)
                        .set_content_type(input.content_type.map(str::to_owned))
                        .set_content_length(input.content_length)
                        .set_metadata(input.metadata.map(|m| m.clone().into_iter().collect()))
                        .set_server_side_encryption(sse)
                        .set_ssekms_key_id(input.sse.and_then(|s| s.kms_key_id.clone()))
                )
            }
            Method::Get => presign!(client.get_object().bucket(input.bucket).key(input.key)),
            Method::Head => presign!(client.head_object().bucket(input.bucket).key(input.key)),
            Method::Delete => presign!(client.delete_object().bucket(input.bucket).key(input.key)),
            Method::Post => return Err(SigningError("POST is signed as a form policy".into())),
        }?;
        Ok(into_presigned(input.method, &result))
    }
}

fn describe<E: std::error::Error>(err: E) -> SigningError {
    SigningError(aws_smithy_types::error::display::DisplayErrorContext(&err).to_string())
}

fn into_presigned(method: Method, req: &PresignedRequest) -> Presigned {
    Presigned {
        url: SecretUrl::new(req.uri().to_owned()),
        method,
        headers: req
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect(),
    }
}

const KEYS: &[&str] = &[
    "a b/ü+%=&.csv",
    "dir//x",
    "~tilde_-.",
    "plus+sign",
    "emoji 😀",
    "q?x#y",
    "trailing/",
    "*star*",
    "percent%2F",
    "/leading",
    "a/./b/../c",
    "tab\tnewline\n",
    " !\"#$&'()*+,:;<=>?@[\\]^`{|}~\u{7f}",
    "日本語/ключ",
];

fn signed_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123)
}

fn creds(session: bool) -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session.then(|| "FwoGZXIvYXdzEJr//////////wEaDP+/token=".to_owned()),
        None,
        "test",
    )
}

fn target(region: &str, endpoint: Option<&str>, force_path_style: bool) -> S3Target {
    S3Target {
        region: region.into(),
        endpoint: endpoint.map(Into::into),
        force_path_style,
    }
}

fn sdk_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build()
}

fn input<'a>(bucket: &'a str, key: &'a str, method: Method) -> SignInput<'a> {
    SignInput {
        bucket,
        key,
        method,
        content_type: None,
        content_length: None,
        metadata: None,
        sse: None,
        signed_at: signed_at(),
        expires_in: Duration::from_secs(900),
    }
}

/// Signs every input with both presigners and compares the results; both
/// failing counts as agreement.
struct Oracle {
    ours: Presigner,
    sdk: SdkPresigner,
    signed: usize,
    refused: usize,
}

impl Oracle {
    fn new(base: aws_config::SdkConfig) -> Self {
        Oracle {
            ours: Presigner::new(base.clone()),
            sdk: SdkPresigner::new(base),
            signed: 0,
            refused: 0,
        }
    }

    async fn check(&mut self, target: &S3Target, creds: &Credentials, input: &SignInput<'_>) {
        let ours = self.ours.presign(target, creds, input).await;
        let sdk = self.sdk.presign(target, creds, input).await;
        match (ours, sdk) {
            (Ok(ours), Ok(sdk)) => {
                assert_eq!(ours.url.expose(), sdk.url.expose(), "{target:?} {input:?}");
                assert_eq!(ours.headers, sdk.headers, "{target:?} {input:?}");
                assert_eq!(ours.method, sdk.method);
                self.signed += 1;
            }
            (Err(_), Err(_)) => self.refused += 1,
            (ours, sdk) => panic!(
                "{target:?} {input:?}: ours {:?}, SDK {:?}",
                ours.map(|p| p.url.expose().to_owned()),
                sdk.map(|p| p.url.expose().to_owned())
            ),
        }
    }
}

#[tokio::test]
async fn urls_match_the_sdk_for_every_method_key_and_addressing_style() {
    let targets = [
        target("eu-west-1", Some("http://127.0.0.1:9000"), true),
        target("us-east-1", Some("http://127.0.0.1:9000"), true),
        // The rules fall back to path style for an IP address.
        target("eu-west-1", Some("http://127.0.0.1:9000"), false),
        target(
            "eu-west-1",
            Some("https://minio.example.com:9443/prefix/"),
            true,
        ),
        target(
            "eu-west-1",
            Some("https://minio.example.com:9443/prefix"),
            false,
        ),
        target("us-east-1", Some("https://storage.example.com"), false),
        target("us-east-1", Some("http://storage.example.com:80"), false),
        target("eu-west-1", Some("https://storage.example.com:443/"), true),
        target("eu-west-1", None, false),
        target("eu-west-1", None, true),
        target("us-east-1", None, false),
        target("us-east-1", None, true),
    ];
    let mut oracle = Oracle::new(sdk_config());
    for target in &targets {
        for bucket in ["reports", "my.dotted.bucket", "Not_DNS"] {
            for key in KEYS {
                for method in Method::URL {
                    for session in [false, true] {
                        oracle
                            .check(target, &creds(session), &input(bucket, key, method))
                            .await;
                    }
                }
            }
        }
    }
    assert_eq!(oracle.signed, targets.len() * 3 * KEYS.len() * 4 * 2);
}

#[tokio::test]
async fn other_partitions_and_regions_match_the_sdk() {
    let mut oracle = Oracle::new(sdk_config());
    for region in [
        "aws-global",
        "us-gov-west-1",
        "cn-north-1",
        "eu-isoe-west-1",
        "not-a-region",
    ] {
        for force_path_style in [false, true] {
            let target = target(region, None, force_path_style);
            for method in Method::URL {
                oracle
                    .check(&target, &creds(true), &input("reports", "k/ü", method))
                    .await;
            }
        }
    }
    assert_eq!((oracle.signed, oracle.refused), (40, 0));
}

#[tokio::test]
async fn endpoint_settings_of_the_shared_config_match_the_sdk() {
    let base =
        || aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest());
    let configs = [
        base()
            .endpoint_url("http://shared.example.com:8000")
            .build(),
        base().use_fips(true).build(),
        base().use_dual_stack(true).build(),
        base().use_fips(true).use_dual_stack(true).build(),
    ];
    let mut outcomes = Vec::new();
    for config in configs {
        let mut oracle = Oracle::new(config);
        for endpoint in [None, Some("http://127.0.0.1:9000")] {
            for force_path_style in [false, true] {
                let target = target("eu-west-1", endpoint, force_path_style);
                oracle
                    .check(
                        &target,
                        &creds(false),
                        &input("reports", "a b", Method::Put),
                    )
                    .await;
            }
        }
        outcomes.push((oracle.signed, oracle.refused));
    }
    // FIPS and dual-stack cannot be combined with a custom endpoint.
    assert_eq!(outcomes, [(4, 0), (2, 2), (2, 2), (2, 2)]);
}

#[tokio::test]
async fn put_headers_match_the_sdk() {
    let metadata = [
        BTreeMap::from([("owner".to_string(), "analytics".to_string())]),
        BTreeMap::from([
            ("Mixed-Case".to_string(), "  two  spaces  ü 😀 ".to_string()),
            ("tab".to_string(), "a\t b".to_string()),
            ("empty".to_string(), String::new()),
            ("x.y_z-1".to_string(), "x".to_string()),
        ]),
        BTreeMap::from([("odd!#$%&'*+^`|~".to_string(), "v".to_string())]),
        // Both presigners must refuse these.
        BTreeMap::from([("bad name".to_string(), "v".to_string())]),
        BTreeMap::from([("ü".to_string(), "v".to_string())]),
        BTreeMap::from([("owner".to_string(), "line\nbreak".to_string())]),
        BTreeMap::from([("owner".to_string(), "del\u{7f}".to_string())]),
    ];
    let sse = [
        ServerSideEncryption {
            type_: SseType::Aes256,
            kms_key_id: None,
        },
        ServerSideEncryption {
            type_: SseType::AwsKms,
            kms_key_id: None,
        },
        ServerSideEncryption {
            type_: SseType::AwsKms,
            kms_key_id: Some("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab".into()),
        },
    ];
    let targets = [
        target("eu-west-1", Some("http://127.0.0.1:9000"), true),
        target("us-east-1", None, false),
    ];
    let content_types = [
        None,
        Some("text/csv"),
        Some(" text/plain;  charset=utf-8 "),
        Some(""),
    ];
    let lengths = [None, Some(0), Some(42), Some(-1), Some(i64::MAX)];
    let mut oracle = Oracle::new(sdk_config());
    for target in &targets {
        for session in [false, true] {
            let creds = creds(session);
            for content_type in content_types {
                for content_length in lengths {
                    for meta in [None].into_iter().chain(metadata.iter().map(Some)) {
                        for sse in [None].into_iter().chain(sse.iter().map(Some)) {
                            let mut req = input("reports", "up/ü load.csv", Method::Put);
                            req.content_type = content_type;
                            req.content_length = content_length;
                            req.metadata = meta;
                            req.sse = sse;
                            oracle.check(target, &creds, &req).await;
                        }
                    }
                }
            }
        }
    }
    // Headers are for PUT only; the SDK ignores them for other methods.
    let mut get = input("reports", "k", Method::Get);
    get.content_type = Some("text/csv");
    get.metadata = metadata.first();
    oracle.check(&targets[0], &creds(true), &get).await;
    // Four of the eight metadata choices are invalid.
    assert_eq!((oracle.signed, oracle.refused), (1281, 1280));
}

#[tokio::test]
async fn times_lifetimes_and_refusals_match_the_sdk() {
    let mut oracle = Oracle::new(sdk_config());
    let target = target("eu-west-1", Some("http://127.0.0.1:9000"), true);
    for expires_in in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_millis(3_600_500),
        super::MAX_PRESIGN,
        super::MAX_PRESIGN + Duration::from_millis(1),
        super::MAX_PRESIGN + Duration::from_secs(1),
    ] {
        let mut req = input("reports", "k", Method::Get);
        req.expires_in = expires_in;
        oracle.check(&target, &creds(true), &req).await;
    }
    for secs in [0, 951_782_400, 1_709_164_799, 4_102_444_800] {
        let mut req = input("reports", "k", Method::Put);
        req.signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        oracle.check(&target, &creds(false), &req).await;
    }
    for (bucket, key) in [("reports", ""), ("reports", "  "), ("", "k"), (" ", "k")] {
        oracle
            .check(&target, &creds(false), &input(bucket, key, Method::Get))
            .await;
    }
    let odd = Credentials::new(
        "AKID/with+odd=chars",
        "s",
        Some("t o k".into()),
        None,
        "test",
    );
    oracle
        .check(&target, &odd, &input("reports", "k", Method::Put))
        .await;
    assert_eq!((oracle.signed, oracle.refused), (9, 6));
}

#[tokio::test]
async fn s3_express_and_arn_buckets_are_refused_or_match() {
    let mut oracle = Oracle::new(sdk_config());
    for bucket in [
        "arn:aws:s3:eu-west-1:123456789012:accesspoint/reports-ap",
        "arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap",
    ] {
        oracle
            .check(
                &target("eu-west-1", None, false),
                &creds(true),
                &input(bucket, "k", Method::Get),
            )
            .await;
    }
    // A multi-region access point needs SigV4a, which neither signs.
    assert_eq!((oracle.signed, oracle.refused), (1, 1));
    // The SDK would fetch an S3 Express session first; the operator refuses.
    let express = Presigner::new(sdk_config())
        .presign(
            &target("us-east-1", None, false),
            &creds(true),
            &input("reports--use1-az4--x-s3", "k", Method::Put),
        )
        .await;
    assert!(express.is_err());
}

#[tokio::test]
async fn metadata_names_that_differ_only_in_case_are_refused() {
    let meta = BTreeMap::from([
        ("Owner".to_string(), "a".to_string()),
        ("owner".to_string(), "b".to_string()),
    ]);
    let mut req = input("reports", "k", Method::Put);
    req.metadata = Some(&meta);
    let signed = Presigner::new(sdk_config())
        .presign(&target("eu-west-1", None, false), &creds(false), &req)
        .await;
    assert!(signed.is_err());
}

#[tokio::test]
async fn the_signing_key_is_derived_once_per_day_region_and_secret() {
    let presigner = Presigner::new(sdk_config());
    let eu = target("eu-west-1", None, false);
    let us = target("us-east-1", None, false);
    let one = creds(true);
    let mut req = input("reports", "k", Method::Put);
    let sign = async |target: &S3Target, creds: &Credentials, req: &SignInput<'_>| {
        presigner.presign(target, creds, req).await.expect("signs");
        presigner.keys.derivations()
    };

    assert_eq!(sign(&eu, &one, &req).await, 1);
    req.signed_at += Duration::from_secs(3600);
    assert_eq!(sign(&eu, &one, &req).await, 1, "same day, same key");
    assert_eq!(
        sign(&eu, &creds(false), &req).await,
        1,
        "the session token is not in the key"
    );
    assert_eq!(sign(&us, &one, &req).await, 2, "another region");
    req.signed_at += Duration::from_secs(86_400);
    assert_eq!(sign(&eu, &one, &req).await, 3, "a new day");
    let rotated = Credentials::new("AKIDEXAMPLE", "another secret", None, None, "test");
    assert_eq!(
        sign(&eu, &rotated, &req).await,
        4,
        "a new secret, same key id"
    );
    assert_eq!(
        sign(&eu, &one, &req).await,
        4,
        "the old secret's key is still cached"
    );
    assert_eq!(sign(&us, &one, &req).await, 5);
}

#[tokio::test]
async fn cached_keys_sign_like_fresh_ones() {
    let cached = Presigner::new(sdk_config());
    let target = target("eu-west-1", None, false);
    for method in Method::URL {
        let req = input("reports", "k", method);
        let warm = cached
            .presign(&target, &creds(true), &req)
            .await
            .expect("signs");
        let cold = Presigner::new(sdk_config())
            .presign(&target, &creds(true), &req)
            .await
            .expect("signs");
        assert_eq!(warm, cold);
    }
    assert_eq!(cached.keys.derivations(), 1);
}
