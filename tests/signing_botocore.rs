//! The signer against botocore, a SigV4 implementation that shares no code
//! with it or with aws-sdk-s3 (which the oracle tests in src/signing compare
//! with). Every request is presigned by both, botocore in one Python process
//! (tests/fixtures/botocore_presign.py) with its clock pinned to ours, and the
//! URLs must be the same bytes. The one difference allowed is where the
//! session token goes: botocore puts it before X-Amz-Signature, aws-sdk-s3
//! (and so this signer) after; the order is not signed.
//!
//! botocore is installed once, pinned, by tools/pyvenv.sh into the cache.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use serde_json::{Value, json};
use upload_grant_operator::api::{Method, S3Target, ServerSideEncryption, SseType};
use upload_grant_operator::signing::{Presigner, SignInput};

const BOTOCORE: &str = support::botocore::VERSION;

/// Keys that test the path's encoding: reserved and unreserved characters,
/// `+`, `%`, `~`, spaces, repeated, leading and trailing slashes, dot
/// segments, control characters and non-ASCII.
const KEYS: &[&str] = &[
    "plain.txt",
    "a b/ü+%=&.csv",
    "dir//x",
    "~tilde_-.",
    "plus+sign",
    "100%",
    "percent%2F",
    "emoji 😀",
    "q?x#y",
    "trailing/",
    "/leading",
    "a/./b/../c",
    "*star*",
    "tab\tnewline\n",
    " !\"#$&'()*+,:;<=>?@[\\]^`{|}~\u{7f}",
    "日本語/ключ",
];

/// Endpoints both route the same way, virtual-hosted and path-style: the
/// route is aws-sdk-s3's business (the oracle tests), the signature ours.
fn targets() -> Vec<S3Target> {
    let target = |region: &str, endpoint: Option<&str>, force_path_style| S3Target {
        region: region.into(),
        endpoint: endpoint.map(Into::into),
        force_path_style,
    };
    vec![
        target("eu-west-1", Some("http://127.0.0.1:9000"), true),
        target("eu-west-1", Some("https://minio.example.com:9443"), true),
        target("us-east-1", Some("https://storage.example.com"), false),
        target("eu-west-1", None, false),
        target("us-east-1", None, true),
        target("ap-southeast-2", None, false),
    ]
}

fn credentials(session: bool) -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session.then(|| "FwoGZXIvYXdzEJr//////////wEaDP+/token= with space".to_owned()),
        None,
        "test",
    )
}

/// Signing times and lifetimes, taken in turn: midnight, a leap day, the
/// last second of a day, fractions of a second, one second to seven days.
const TIMES: &[(u64, u64)] = &[
    (1_800_000_000_000, 900),
    (951_782_400_000, 1),
    (1_709_164_799_999, 604_800),
    (1_369_353_600_500, 86_400),
    (4_102_444_799_000, 3600),
];

/// One request, as the signer takes it.
struct Case<'a> {
    target: &'a S3Target,
    session: bool,
    input: SignInput<'a>,
}

impl Case<'_> {
    /// The same request for botocore_presign.py.
    fn to_json(&self) -> Value {
        let creds = credentials(self.session);
        let signed_at = self
            .input
            .signed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        json!({
            "method": self.input.method.as_str(),
            "endpoint": self.target.endpoint,
            "region": self.target.region,
            "addressing_style": if self.target.force_path_style { "path" } else { "virtual" },
            "bucket": self.input.bucket,
            "key": self.input.key,
            "access_key_id": creds.access_key_id(),
            "secret_access_key": creds.secret_access_key(),
            "session_token": creds.session_token(),
            // botocore signs whole seconds, as SigV4 does.
            "signed_at": signed_at.as_secs(),
            "expires_in": self.input.expires_in.as_secs(),
            "content_type": self.input.content_type,
            "content_length": self.input.content_length,
            "metadata": self.input.metadata,
            "sse": self.input.sse.map(|s| s.type_.as_str()),
            "kms_key_id": self.input.sse.and_then(|s| s.kms_key_id.as_deref()),
        })
    }
}

fn input<'a>(bucket: &'a str, key: &'a str, method: Method, n: usize) -> SignInput<'a> {
    let (millis, expires) = TIMES[n % TIMES.len()];
    SignInput {
        bucket,
        key,
        method,
        content_type: None,
        content_length: None,
        metadata: None,
        sse: None,
        signed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        expires_in: Duration::from_secs(expires),
    }
}

/// botocore's URL for each case, or why it refused.
fn botocore_urls(cases: &[Case<'_>]) -> Vec<Result<String, String>> {
    let requests = Value::Array(cases.iter().map(Case::to_json).collect());
    let out = support::botocore::run("botocore_presign.py", &requests.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let results: Vec<Value> = serde_json::from_slice(&out).expect("a JSON array");
    assert_eq!(results.len(), cases.len(), "one result per request");
    results
        .into_iter()
        .map(|r| match (&r["url"], &r["error"]) {
            (Value::String(url), _) => Ok(url.clone()),
            (_, Value::String(error)) => Err(error.clone()),
            _ => Err(format!("unexpected result {r}")),
        })
        .collect()
}

/// botocore's URL in aws-sdk-s3's parameter order: the session token moved
/// from before the signature to the end. Nothing else is touched.
fn in_sdk_order(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (token, rest): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .partition(|p| p.starts_with("X-Amz-Security-Token="));
    let params: Vec<&str> = rest.into_iter().chain(token).collect();
    format!("{base}?{}", params.join("&"))
}

/// Signs every case with both and compares; returns how many URLs were the
/// same bytes as botocore's as it wrote them.
async fn compare(cases: &[Case<'_>]) -> usize {
    let presigner = Presigner::new(
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build(),
    );
    let theirs = botocore_urls(cases);
    let mut identical = 0;
    for (case, theirs) in cases.iter().zip(theirs) {
        let what = format!(
            "{:?} {:?} session={}",
            case.target, case.input, case.session
        );
        let theirs = theirs.unwrap_or_else(|e| panic!("botocore refused {what}: {e}"));
        let ours = presigner
            .presign(case.target, &credentials(case.session), &case.input)
            .await
            .unwrap_or_else(|e| panic!("refused {what}: {e}"));
        let ours = ours.url.expose();
        assert_eq!(ours, in_sdk_order(&theirs), "{what}\nbotocore: {theirs}");
        identical += usize::from(ours == theirs);
    }
    identical
}

#[tokio::test]
async fn urls_match_botocore_for_every_method_key_endpoint_and_session() {
    let started = Instant::now();
    let targets = targets();
    let mut cases = Vec::new();
    for target in &targets {
        let buckets: &[&str] = if target.force_path_style {
            &["reports", "my.dotted.bucket"]
        } else {
            &["reports"]
        };
        for bucket in buckets {
            for key in KEYS {
                for method in Method::URL {
                    for session in [false, true] {
                        let input = input(bucket, key, method, cases.len());
                        cases.push(Case {
                            target,
                            session,
                            input,
                        });
                    }
                }
            }
        }
    }
    let identical = compare(&cases).await;
    // Without a session token the parameter order is the same too.
    assert_eq!(identical, cases.len() / 2);
    eprintln!(
        "{} URLs the same as botocore {BOTOCORE}'s in {:?}",
        cases.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn put_signed_headers_match_botocore() {
    let started = Instant::now();
    let metadata = [
        BTreeMap::from([("owner".to_string(), "analytics".to_string())]),
        BTreeMap::from([
            ("Mixed-Case".to_string(), "  two  spaces  ".to_string()),
            ("empty".to_string(), String::new()),
            ("x.y_z-1".to_string(), "x".to_string()),
        ]),
        BTreeMap::from([("odd!#$%&'*+^`|~".to_string(), "v a=l;u/e".to_string())]),
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
    let targets = targets();
    let targets = [&targets[0], &targets[2]];
    let content_types = [None, Some("text/csv"), Some(" text/plain;  charset=utf-8 ")];
    let lengths = [None, Some(0), Some(42), Some(i64::MAX)];
    let mut cases = Vec::new();
    for target in targets {
        for session in [false, true] {
            for content_type in content_types {
                for content_length in lengths {
                    for meta in [None].into_iter().chain(metadata.iter().map(Some)) {
                        for sse in [None].into_iter().chain(sse.iter().map(Some)) {
                            let mut input =
                                input("reports", "up/ü load.csv", Method::Put, cases.len());
                            input.content_type = content_type;
                            input.content_length = content_length;
                            input.metadata = meta;
                            input.sse = sse;
                            cases.push(Case {
                                target,
                                session,
                                input,
                            });
                        }
                    }
                }
            }
        }
    }
    let identical = compare(&cases).await;
    assert_eq!(identical, cases.len() / 2);
    eprintln!(
        "{} PUT URLs the same as botocore {BOTOCORE}'s in {:?}",
        cases.len(),
        started.elapsed()
    );
}
