//! POST policies against botocore's `generate_presigned_post`, a SigV4
//! implementation that shares no code with this signer. Every form is signed
//! by both, botocore in one Python process
//! (tests/fixtures/botocore_presign_post.py) with its clock pinned to ours.
//!
//! The policy bytes are not compared: botocore writes its JSON with Python's
//! `json.dumps` spacing and this signer compactly, and copying one
//! serialiser's spacing proves nothing. Instead, for every form:
//! - the action URL is the same string;
//! - the fields are the same names with the same values in the same order,
//!   but for `policy` and `x-amz-signature` (whose bytes differ with the
//!   JSON's) and for where `key` goes: botocore adds it after the caller's
//!   fields, this signer sends it first;
//! - the policies decode to the same JSON: the same expiration and the same
//!   conditions in the same order, but for botocore listing the caller's
//!   conditions before the bucket and key ones (this signer puts bucket and
//!   key first; S3 does not care);
//! - botocore's signature over this signer's base64 policy is this signer's
//!   `x-amz-signature`, and this signer's policy primitive
//!   (`Presigner::sign_post_policy`, the cached SigV4 key) over botocore's
//!   base64 policy is botocore's `x-amz-signature`.
//!
//! botocore builds the bucket, key (exact or `${filename}` prefix) and
//! signature conditions itself; the optional ones (Content-Type, metadata,
//! SSE, content-length-range, success_action_status) are the caller's in
//! boto3, so the fixture writes them as a boto3 user would.
//!
//! botocore is installed once, pinned, by tools/pyvenv.sh into the cache.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use serde_json::{Value, json};
use upload_grant_operator::api::{S3Target, ServerSideEncryption, SseType};
use upload_grant_operator::signing::{PostInput, PresignedPost, Presigner};

const BOTOCORE: &str = support::botocore::VERSION;

/// Exact keys and `${filename}` prefixes, with characters JSON escapes.
const KEYS: &[&str] = &[
    "up/report.csv",
    "a b/ü+%=&.csv",
    "quote\"back\\slash/~*",
    "emoji 😀",
    "${filename}",
    "uploads/${filename}",
    "日本語/ключ/${filename}",
];

fn targets() -> Vec<S3Target> {
    let target = |region: &str, endpoint: Option<&str>, force_path_style| S3Target {
        region: region.into(),
        endpoint: endpoint.map(Into::into),
        force_path_style,
    };
    vec![
        target("eu-west-1", Some("http://127.0.0.1:9000"), true),
        target("us-east-1", Some("https://storage.example.com"), false),
        target("eu-west-1", None, false),
        target("us-east-1", None, true),
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

/// Signing times (milliseconds) and lifetimes, taken in turn: a fraction of
/// a second, a leap day, the last second of a day, seven days.
const TIMES: &[(u64, u64)] = &[
    (1_800_000_000_500, 900),
    (951_782_400_000, 1),
    (1_709_164_799_999, 604_800),
    (4_102_444_799_000, 3600),
];

/// The optional parts of a form, each on its own and all together.
struct Options {
    content_type: Option<&'static str>,
    content_length_range: Option<(u64, u64)>,
    metadata: Option<BTreeMap<String, String>>,
    sse: Option<ServerSideEncryption>,
    success_action_status: Option<u16>,
}

fn options() -> Vec<Options> {
    let none = || Options {
        content_type: None,
        content_length_range: None,
        metadata: None,
        sse: None,
        success_action_status: None,
    };
    let metadata = || {
        BTreeMap::from([
            ("owner".to_string(), "analytics".to_string()),
            ("Mixed-Case".to_string(), "  ü and \"quotes\"  ".to_string()),
            ("empty".to_string(), String::new()),
        ])
    };
    let kms = || ServerSideEncryption {
        type_: SseType::AwsKms,
        kms_key_id: Some("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab".into()),
    };
    vec![
        none(),
        Options {
            content_type: Some("text/csv; charset=utf-8"),
            ..none()
        },
        Options {
            content_length_range: Some((1, 10 << 20)),
            ..none()
        },
        Options {
            content_length_range: Some((0, u64::from(u32::MAX) * 4)),
            ..none()
        },
        Options {
            metadata: Some(metadata()),
            ..none()
        },
        Options {
            sse: Some(ServerSideEncryption {
                type_: SseType::Aes256,
                kms_key_id: None,
            }),
            ..none()
        },
        Options {
            sse: Some(kms()),
            ..none()
        },
        Options {
            success_action_status: Some(201),
            ..none()
        },
        Options {
            content_type: Some("image/png"),
            content_length_range: Some((5, 5)),
            metadata: Some(metadata()),
            sse: Some(kms()),
            success_action_status: Some(204),
        },
    ]
}

/// One form, as the signer takes it, and what it signed.
struct Case<'a> {
    target: &'a S3Target,
    session: bool,
    input: PostInput<'a>,
    ours: PresignedPost,
}

impl Case<'_> {
    /// The same request for botocore_presign_post.py.
    fn to_json(&self) -> Value {
        let creds = credentials(self.session);
        let input = &self.input;
        let signed_at = input
            .signed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        json!({
            "endpoint": self.target.endpoint,
            "region": self.target.region,
            "addressing_style": if self.target.force_path_style { "path" } else { "virtual" },
            "bucket": input.bucket,
            "key": input.key,
            "access_key_id": creds.access_key_id(),
            "secret_access_key": creds.secret_access_key(),
            "session_token": creds.session_token(),
            // botocore signs whole seconds, as SigV4 does.
            "signed_at": signed_at.as_secs(),
            "expires_in": input.expires_in.as_secs(),
            "content_type": input.content_type,
            "content_length_range": input.content_length_range,
            "metadata": input.metadata,
            "sse": input.sse.map(|s| s.type_.as_str()),
            "kms_key_id": input.sse.and_then(|s| s.kms_key_id.as_deref()),
            "success_action_status": input.success_action_status,
            "ours": field(&self.ours.fields, "policy"),
        })
    }
}

/// What botocore made of one request.
struct Theirs {
    url: String,
    fields: Vec<(String, String)>,
    signature_of_ours: String,
}

fn botocore_posts(cases: &[Case<'_>]) -> Vec<Result<Theirs, String>> {
    let requests = Value::Array(cases.iter().map(Case::to_json).collect());
    let out = support::botocore::run("botocore_presign_post.py", &requests.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let results: Vec<Value> = serde_json::from_slice(&out).expect("a JSON array");
    assert_eq!(results.len(), cases.len(), "one result per request");
    results
        .into_iter()
        .map(|r| {
            if let Value::String(error) = &r["error"] {
                return Err(error.clone());
            }
            let fields: Vec<(String, String)> =
                serde_json::from_value(r["fields"].clone()).map_err(|e| format!("{e}: {r}"))?;
            match (&r["url"], &r["signature_of_ours"]) {
                (Value::String(url), Value::String(signature)) => Ok(Theirs {
                    url: url.clone(),
                    fields,
                    signature_of_ours: signature.clone(),
                }),
                _ => Err(format!("unexpected result {r}")),
            }
        })
        .collect()
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> &'f str {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no `{name}` field in {fields:?}"))
}

fn decode_policy(fields: &[(String, String)]) -> Value {
    let policy = aws_smithy_types::base64::decode(field(fields, "policy")).expect("base64");
    serde_json::from_slice(&policy).expect("a JSON policy")
}

/// botocore's fields in this signer's order: `key` moved to the front.
fn key_first(fields: &[(String, String)]) -> Vec<(String, String)> {
    let (key, rest): (Vec<_>, Vec<_>) = fields.iter().cloned().partition(|(n, _)| n == "key");
    key.into_iter().chain(rest).collect()
}

/// botocore's policy in this signer's order: its bucket condition and the
/// key condition that follows it moved to the front.
fn bucket_and_key_first(mut policy: Value) -> Value {
    let conditions = policy["conditions"]
        .as_array_mut()
        .expect("a conditions array");
    let at = conditions
        .iter()
        .position(|c| c.get("bucket").is_some())
        .expect("a bucket condition");
    let moved: Vec<Value> = conditions.drain(at..at + 2).collect();
    conditions.splice(0..0, moved);
    policy
}

/// The fields but the two whose bytes depend on the JSON's spacing.
fn unsigned(fields: &[(String, String)]) -> Vec<(String, Option<String>)> {
    fields
        .iter()
        .map(|(n, v)| {
            let value = (n != "policy" && n != "x-amz-signature").then(|| v.clone());
            (n.clone(), value)
        })
        .collect()
}

#[tokio::test]
async fn forms_match_botocore_for_every_key_option_endpoint_and_session() {
    let started = Instant::now();
    let presigner = Presigner::new(
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build(),
    );
    let targets = targets();
    let options = options();
    let mut cases = Vec::new();
    for target in &targets {
        let buckets: &[&str] = if target.force_path_style {
            &["reports", "my.dotted.bucket"]
        } else {
            &["reports"]
        };
        for bucket in buckets {
            for key in KEYS {
                for option in &options {
                    for session in [false, true] {
                        let (millis, expires) = TIMES[cases.len() % TIMES.len()];
                        let input = PostInput {
                            bucket,
                            key,
                            content_type: option.content_type,
                            content_length_range: option.content_length_range,
                            metadata: option.metadata.as_ref(),
                            sse: option.sse.as_ref(),
                            success_action_status: option.success_action_status,
                            signed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
                            expires_in: Duration::from_secs(expires),
                        };
                        let ours = presigner
                            .presign_post(target, &credentials(session), &input)
                            .await
                            .unwrap_or_else(|e| panic!("refused {target:?} {input:?}: {e}"));
                        cases.push(Case {
                            target,
                            session,
                            input,
                            ours,
                        });
                    }
                }
            }
        }
    }

    let theirs = botocore_posts(&cases);
    for (case, theirs) in cases.iter().zip(theirs) {
        let what = format!(
            "{:?} {:?} session={}",
            case.target, case.input, case.session
        );
        let theirs = theirs.unwrap_or_else(|e| panic!("botocore refused {what}: {e}"));
        let ours = &case.ours;
        assert_eq!(ours.url, theirs.url, "{what}");
        assert_eq!(
            unsigned(&ours.fields),
            unsigned(&key_first(&theirs.fields)),
            "{what}"
        );
        assert_eq!(
            decode_policy(&ours.fields),
            bucket_and_key_first(decode_policy(&theirs.fields)),
            "{what}"
        );
        assert_eq!(
            field(&ours.fields, "x-amz-signature"),
            theirs.signature_of_ours,
            "botocore signs our policy differently: {what}"
        );
        let region = field(&theirs.fields, "x-amz-credential")
            .split('/')
            .nth(2)
            .expect("a credential scope");
        let ours_of_theirs = presigner
            .sign_post_policy(
                &credentials(case.session),
                region,
                case.input.signed_at,
                field(&theirs.fields, "policy"),
            )
            .expect("signs");
        assert_eq!(
            ours_of_theirs,
            field(&theirs.fields, "x-amz-signature"),
            "we sign botocore's policy differently: {what}"
        );
    }
    eprintln!(
        "{} forms the same as botocore {BOTOCORE}'s in {:?}",
        cases.len(),
        started.elapsed()
    );
}
