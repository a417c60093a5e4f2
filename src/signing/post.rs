//! SigV4 POST policies: signed forms for browser uploads, as the S3 API
//! reference describes them ("Browser-Based Uploads Using POST (AWS
//! Signature Version 4)"). The policy is a JSON document of conditions; its
//! base64 is the string to sign, with the same signing key as a presigned URL
//! for that day, region and service (from the same cache).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::calculate_signature;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::endpoint::Route;
use super::sigv4::{ALGORITHM, KeyCache, ascii, is_token_char, scope, timestamps};
use super::{MAX_PRESIGN, Presigner, SigningError};
use crate::api::{S3Target, ServerSideEncryption};

/// What S3 replaces with the uploaded file's name in the `key` field.
const FILENAME: &str = "${filename}";
/// The statuses S3 answers a successful form with; anything else means 204.
const SUCCESS_STATUSES: [u16; 3] = [200, 201, 204];

/// A form's fields as the Secret's `fields`: a JSON object whose keys keep
/// their order, since S3 reads form fields in the order sent (a serde_json
/// map would sort them). Written by the operator, read by its consumers.
pub struct FormFields(pub Vec<(String, String)>);

impl serde::Serialize for FormFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for FormFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FormFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<FormFields, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(FormFields(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// What a POST policy allows.
#[derive(Debug, Clone)]
pub struct PostInput<'a> {
    pub bucket: &'a str,
    /// An exact key, or a prefix ending in "${filename}": then the policy has
    /// ["starts-with", "$key", PREFIX] for the part before ${filename}, and the
    /// `key` field is the key as given (S3 replaces ${filename} with the file's name).
    pub key: &'a str,
    /// ["eq", "$Content-Type", v] + field Content-Type
    pub content_type: Option<&'a str>,
    /// ["content-length-range", min, max]
    pub content_length_range: Option<(u64, u64)>,
    /// {"x-amz-meta-NAME": v} conditions + fields
    pub metadata: Option<&'a BTreeMap<String, String>>,
    /// x-amz-server-side-encryption (+ -aws-kms-key-id) conditions + fields
    pub sse: Option<&'a ServerSideEncryption>,
    /// {"success_action_status": "201"} + field
    pub success_action_status: Option<u16>,
    pub signed_at: SystemTime,
    pub expires_in: Duration,
}

/// A signed form: where to POST it and every field to send before the file, in order.
/// No Debug output of the policy or signature (print a fingerprint, like SecretUrl).
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedPost {
    /// The form's action URL (path-style: ENDPOINT/BUCKET; virtual-hosted: https://BUCKET.HOST/).
    pub url: String,
    /// Field name and value, in the order to send them.
    pub fields: Vec<(String, String)>,
}

impl PresignedPost {
    /// A short hash of the signed fields (sha256:16 hex), to tell forms apart without revealing one.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        // Lengths first, so that no two forms hash the same bytes.
        for part in [self.url.as_str()].into_iter().chain(
            self.fields
                .iter()
                .flat_map(|(n, v)| [n.as_str(), v.as_str()]),
        ) {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        format!("sha256:{}", &hex::encode(hash.finalize())[..16])
    }
}

impl std::fmt::Debug for PresignedPost {
    /// The action URL and the field names: the values include the policy, the
    /// signature and any session token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresignedPost")
            .field("url", &self.url)
            .field(
                "fields",
                &self.fields.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Presigner {
    /// Signs a POST policy for `input`: the form's action URL comes from the
    /// same endpoint rules as presigned URLs, the signature from the same
    /// cached signing key.
    pub async fn presign_post(
        &self,
        target: &S3Target,
        credentials: &Credentials,
        input: &PostInput<'_>,
    ) -> Result<PresignedPost, SigningError> {
        // Refused before resolving anything.
        let form = Form::new(input)?;
        let route = self.endpoints.route(target, input.bucket).await?;
        form.sign(&route, credentials, input, &self.keys)
    }

    /// The `x-amz-signature` of a base64 POST `policy` signed at `signed_at`
    /// for S3 in `region`, with the key `presign_post` would use: for checking
    /// a policy signed elsewhere.
    pub fn sign_post_policy(
        &self,
        credentials: &Credentials,
        region: &str,
        signed_at: SystemTime,
        policy: &str,
    ) -> Result<String, SigningError> {
        let (day, _) = timestamps(signed_at)?;
        let key = self.keys.key(credentials, signed_at, &day, region, "s3")?;
        Ok(sign_policy(key, policy))
    }
}

/// The signature of a base64 policy: hex HMAC-SHA256 with the signing key.
fn sign_policy(key: [u8; 32], policy: &str) -> String {
    calculate_signature(key, policy.as_bytes())
}

/// The conditions and fields a grant asks for, checked, before the
/// signature's own.
struct Form {
    conditions: Vec<Value>,
    fields: Vec<(String, String)>,
}

impl Form {
    fn new(input: &PostInput<'_>) -> Result<Self, SigningError> {
        if input.bucket.trim().is_empty() {
            return Err(SigningError("bucket must not be empty".into()));
        }
        if input.key.trim().is_empty() {
            return Err(SigningError("key must not be empty".into()));
        }
        let mut form = Form {
            conditions: vec![json!({ "bucket": input.bucket })],
            fields: Vec::new(),
        };
        check_value("key", input.key)?;
        match input.key.strip_suffix(FILENAME) {
            Some(prefix) if !prefix.contains(FILENAME) => {
                form.conditions.push(json!(["starts-with", "$key", prefix]));
            }
            // S3 would substitute it wherever it is, and the policy could
            // then match neither the key as given nor the one stored.
            _ if input.key.contains(FILENAME) => {
                return Err(SigningError(format!(
                    "`{FILENAME}` may only end a key, once"
                )));
            }
            _ => form.conditions.push(json!({ "key": input.key })),
        }
        form.fields.push(("key".into(), input.key.into()));

        if let Some(content_type) = input.content_type {
            form.add("Content-Type".into(), content_type, |name, value| {
                json!(["eq", format!("${name}"), value])
            })?;
        }
        if let Some((min, max)) = input.content_length_range {
            if min > max {
                return Err(SigningError(format!(
                    "content length range {min}..{max} is empty"
                )));
            }
            form.conditions
                .push(json!(["content-length-range", min, max]));
        }
        for (name, value) in input.metadata.into_iter().flatten() {
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(SigningError(format!(
                    "`{name}` cannot be used as a metadata name"
                )));
            }
            form.add(
                format!("x-amz-meta-{}", name.to_ascii_lowercase()),
                value,
                exact,
            )?;
        }
        if let Some(sse) = input.sse {
            form.add(
                "x-amz-server-side-encryption".into(),
                sse.type_.as_str(),
                exact,
            )?;
            if let Some(key_id) = &sse.kms_key_id {
                form.add(
                    "x-amz-server-side-encryption-aws-kms-key-id".into(),
                    key_id,
                    exact,
                )?;
            }
        }
        if let Some(status) = input.success_action_status {
            if !SUCCESS_STATUSES.contains(&status) {
                return Err(SigningError(format!(
                    "success_action_status must be 200, 201 or 204, not {status}"
                )));
            }
            form.add("success_action_status".into(), &status.to_string(), exact)?;
        }
        lifetime(input.expires_in)?;
        Ok(form)
    }

    /// A field and the condition that pins it.
    fn add(
        &mut self,
        name: String,
        value: &str,
        condition: impl Fn(&str, &str) -> Value,
    ) -> Result<(), SigningError> {
        check_value(&name, value)?;
        if self
            .fields
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            return Err(SigningError(format!("field `{name}` given twice")));
        }
        self.conditions.push(condition(&name, value));
        self.fields.push((name, value.to_owned()));
        Ok(())
    }

    /// Adds the signature's own conditions and fields, and signs.
    fn sign(
        mut self,
        route: &Route,
        creds: &Credentials,
        input: &PostInput<'_>,
        keys: &KeyCache,
    ) -> Result<PresignedPost, SigningError> {
        let (day, date_time) = timestamps(input.signed_at)?;
        let expiration = expiration(input.signed_at, lifetime(input.expires_in)?)?;
        let credential = format!("{}/{}", creds.access_key_id(), scope(&day, route));
        let mut auth = vec![
            ("x-amz-algorithm", ALGORITHM),
            ("x-amz-credential", credential.as_str()),
            ("x-amz-date", ascii(&date_time)),
        ];
        if let Some(token) = creds.session_token() {
            auth.push(("x-amz-security-token", token));
        }
        for (name, value) in auth {
            self.conditions.push(exact(name, value));
            self.fields.push((name.into(), value.into()));
        }
        let policy = format!(
            "{{\"expiration\":{},\"conditions\":{}}}",
            Value::String(expiration),
            Value::Array(self.conditions)
        );
        let policy = aws_smithy_types::base64::encode(policy);
        let key = keys.key(creds, input.signed_at, &day, &route.region, &route.service)?;
        let signature = sign_policy(key, &policy);
        self.fields.push(("policy".into(), policy));
        self.fields.push(("x-amz-signature".into(), signature));
        Ok(PresignedPost {
            url: action(route),
            fields: self.fields,
        })
    }
}

/// `{"NAME": "VALUE"}`: S3's exact match.
fn exact(name: &str, value: &str) -> Value {
    json!({ name: value })
}

/// Form fields are text: a browser rewrites line breaks in them, so a value
/// with control characters would not match its own condition.
fn check_value(name: &str, value: &str) -> Result<(), SigningError> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        Ok(())
    } else {
        Err(SigningError(format!(
            "`{name}` cannot be used with a control character"
        )))
    }
}

/// The policy's lifetime in whole seconds: at least one, at most what a
/// presigned URL may have.
fn lifetime(expires_in: Duration) -> Result<u64, SigningError> {
    if expires_in > MAX_PRESIGN {
        return Err(SigningError(format!(
            "a POST policy cannot be valid for more than {} seconds",
            MAX_PRESIGN.as_secs()
        )));
    }
    match expires_in.as_secs() {
        0 => Err(SigningError(
            "a POST policy must be valid for at least a second".into(),
        )),
        secs => Ok(secs),
    }
}

/// `expiration`: the signing second plus the lifetime, as botocore writes it
/// (ISO 8601, UTC, whole seconds).
fn expiration(signed_at: SystemTime, lifetime: u64) -> Result<String, SigningError> {
    let end = signed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_secs().checked_add(lifetime)?).ok())
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .ok_or_else(|| SigningError("the policy's expiration is out of range".into()))?;
    Ok(end.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The form's action: the bucket's URL, which ends in `/` when the bucket
/// is in the host name.
fn action(route: &Route) -> String {
    let path = if route.path_prefix.is_empty() {
        "/"
    } else {
        &route.path_prefix
    };
    format!("{}{path}", route.origin)
}

#[cfg(test)]
mod tests {

    #[test]
    fn form_fields_keep_their_order_through_json() {
        let fields = FormFields(vec![
            ("key".into(), "k".into()),
            ("Content-Type".into(), "text/csv".into()),
            ("policy".into(), "p".into()),
        ]);
        let text = serde_json::to_string(&fields).expect("serialises");
        assert_eq!(
            text,
            r#"{"key":"k","Content-Type":"text/csv","policy":"p"}"#
        );
        let FormFields(back) = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, fields.0);
        assert!(serde_json::from_str::<FormFields>(r#"{"key": 1}"#).is_err());
    }

    use super::*;
    use crate::api::{Method, SseType};
    use crate::signing::SignInput;

    /// AWS's worked example of a POST policy, from the S3 API reference,
    /// "Example: Browser-Based Upload using HTTP POST (Using AWS Signature
    /// Version 4)": the policy as the page gives it (CRLF line ends, which its
    /// base64 shows), signed on 2015-12-29 for us-east-1 with AWS's example
    /// key. The base64 and the signature are the page's, byte for byte.
    #[test]
    fn aws_published_post_policy_example() {
        const POLICY: &str = "{ \"expiration\": \"2015-12-30T12:00:00.000Z\",\r\n  \
            \"conditions\": [\r\n    \
            {\"bucket\": \"sigv4examplebucket\"},\r\n    \
            [\"starts-with\", \"$key\", \"user/user1/\"],\r\n    \
            {\"acl\": \"public-read\"},\r\n    \
            {\"success_action_redirect\": \"http://sigv4examplebucket.s3.amazonaws.com/successful_upload.html\"},\r\n    \
            [\"starts-with\", \"$Content-Type\", \"image/\"],\r\n    \
            {\"x-amz-meta-uuid\": \"14365123651274\"},\r\n    \
            {\"x-amz-server-side-encryption\": \"AES256\"},\r\n    \
            [\"starts-with\", \"$x-amz-meta-tag\", \"\"],\r\n\r\n    \
            {\"x-amz-credential\": \"AKIAIOSFODNN7EXAMPLE/20151229/us-east-1/s3/aws4_request\"},\r\n    \
            {\"x-amz-algorithm\": \"AWS4-HMAC-SHA256\"},\r\n    \
            {\"x-amz-date\": \"20151229T000000Z\" }\r\n  ]\r\n}";
        const BASE64: &str = "eyAiZXhwaXJhdGlvbiI6ICIyMDE1LTEyLTMwVDEyOjAwOjAwLjAwMFoiLA0KICAiY29uZGl0aW9ucyI6IFsNCiAgICB7ImJ1Y2tldCI6ICJzaWd2NGV4YW1wbGVidWNrZXQifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRrZXkiLCAidXNlci91c2VyMS8iXSwNCiAgICB7ImFjbCI6ICJwdWJsaWMtcmVhZCJ9LA0KICAgIHsic3VjY2Vzc19hY3Rpb25fcmVkaXJlY3QiOiAiaHR0cDovL3NpZ3Y0ZXhhbXBsZWJ1Y2tldC5zMy5hbWF6b25hd3MuY29tL3N1Y2Nlc3NmdWxfdXBsb2FkLmh0bWwifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRDb250ZW50LVR5cGUiLCAiaW1hZ2UvIl0sDQogICAgeyJ4LWFtei1tZXRhLXV1aWQiOiAiMTQzNjUxMjM2NTEyNzQifSwNCiAgICB7IngtYW16LXNlcnZlci1zaWRlLWVuY3J5cHRpb24iOiAiQUVTMjU2In0sDQogICAgWyJzdGFydHMtd2l0aCIsICIkeC1hbXotbWV0YS10YWciLCAiIl0sDQoNCiAgICB7IngtYW16LWNyZWRlbnRpYWwiOiAiQUtJQUlPU0ZPRE5ON0VYQU1QTEUvMjAxNTEyMjkvdXMtZWFzdC0xL3MzL2F3czRfcmVxdWVzdCJ9LA0KICAgIHsieC1hbXotYWxnb3JpdGhtIjogIkFXUzQtSE1BQy1TSEEyNTYifSwNCiAgICB7IngtYW16LWRhdGUiOiAiMjAxNTEyMjlUMDAwMDAwWiIgfQ0KICBdDQp9";
        const SIGNATURE: &str = "8afdbf4008c03f22c2cd3cdb72e4afbb1f6a588f3255ac628749a66d7f09699e";

        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "aws-docs",
        );
        // 2015-12-29T00:00:00Z.
        let signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_451_347_200);
        assert_eq!(aws_smithy_types::base64::encode(POLICY), BASE64);
        let (day, date_time) = timestamps(signed_at).expect("in range");
        assert_eq!(ascii(&date_time), "20151229T000000Z");
        let key = KeyCache::default()
            .key(&creds, signed_at, &day, "us-east-1", "s3")
            .expect("derives a key");
        assert_eq!(sign_policy(key, BASE64), SIGNATURE);
        // And through the public entry point, with its own cache.
        let signature = presigner()
            .sign_post_policy(&creds, "us-east-1", signed_at, BASE64)
            .expect("signs");
        assert_eq!(signature, SIGNATURE);
    }

    const T0: u64 = 1_800_000_000;

    fn presigner() -> Presigner {
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        Presigner::new(base)
    }

    fn target(force_path_style: bool) -> S3Target {
        S3Target {
            region: "eu-west-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            force_path_style,
        }
    }

    fn creds(session: bool) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            session.then(|| "session-token".to_owned()),
            None,
            "test",
        )
    }

    fn input<'a>(key: &'a str) -> PostInput<'a> {
        PostInput {
            bucket: "reports",
            key,
            content_type: None,
            content_length_range: None,
            metadata: None,
            sse: None,
            success_action_status: None,
            signed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(T0 * 1000 + 999),
            expires_in: Duration::from_secs(900),
        }
    }

    fn field<'p>(post: &'p PresignedPost, name: &str) -> Option<&'p str> {
        post.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn policy(post: &PresignedPost) -> Value {
        let policy = field(post, "policy").expect("a policy field");
        let json = aws_smithy_types::base64::decode(policy).expect("base64");
        serde_json::from_slice(&json).expect("JSON")
    }

    #[tokio::test]
    async fn form_has_every_field_in_order_and_a_policy_for_each() {
        let meta = BTreeMap::from([("Owner".to_string(), "analytics".to_string())]);
        let sse = ServerSideEncryption {
            type_: SseType::AwsKms,
            kms_key_id: Some("alias/reports".into()),
        };
        let mut req = input("up/${filename}");
        req.content_type = Some("text/csv");
        req.content_length_range = Some((1, 10 << 20));
        req.metadata = Some(&meta);
        req.sse = Some(&sse);
        req.success_action_status = Some(201);
        let post = presigner()
            .presign_post(&target(true), &creds(true), &req)
            .await
            .expect("signs");
        assert_eq!(post.url, "http://127.0.0.1:9000/reports");
        let names: Vec<&str> = post.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "key",
                "Content-Type",
                "x-amz-meta-owner",
                "x-amz-server-side-encryption",
                "x-amz-server-side-encryption-aws-kms-key-id",
                "success_action_status",
                "x-amz-algorithm",
                "x-amz-credential",
                "x-amz-date",
                "x-amz-security-token",
                "policy",
                "x-amz-signature",
            ]
        );
        assert_eq!(field(&post, "key"), Some("up/${filename}"));
        assert_eq!(
            field(&post, "x-amz-credential"),
            Some("AKIDEXAMPLE/20270115/eu-west-1/s3/aws4_request")
        );
        // Whole seconds: the signing time's fraction is dropped.
        assert_eq!(field(&post, "x-amz-date"), Some("20270115T080000Z"));
        assert_eq!(
            policy(&post),
            json!({
                "expiration": "2027-01-15T08:15:00Z",
                "conditions": [
                    {"bucket": "reports"},
                    ["starts-with", "$key", "up/"],
                    ["eq", "$Content-Type", "text/csv"],
                    ["content-length-range", 1, 10 << 20],
                    {"x-amz-meta-owner": "analytics"},
                    {"x-amz-server-side-encryption": "aws:kms"},
                    {"x-amz-server-side-encryption-aws-kms-key-id": "alias/reports"},
                    {"success_action_status": "201"},
                    {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
                    {"x-amz-credential": "AKIDEXAMPLE/20270115/eu-west-1/s3/aws4_request"},
                    {"x-amz-date": "20270115T080000Z"},
                    {"x-amz-security-token": "session-token"},
                ]
            })
        );
    }

    #[tokio::test]
    async fn exact_key_virtual_host_and_no_session() {
        let target = S3Target {
            region: "us-east-1".into(),
            endpoint: Some("https://storage.example.com".into()),
            force_path_style: false,
        };
        let post = presigner()
            .presign_post(&target, &creds(false), &input("a b/ü.csv"))
            .await
            .expect("signs");
        assert_eq!(post.url, "https://reports.storage.example.com/");
        assert!(field(&post, "x-amz-security-token").is_none());
        assert_eq!(policy(&post)["conditions"][1], json!({"key": "a b/ü.csv"}));
    }

    #[tokio::test]
    async fn urls_and_forms_share_the_cached_signing_key() {
        let presigner = presigner();
        let creds = creds(false);
        let target = target(true);
        let url = SignInput {
            bucket: "reports",
            key: "k",
            method: Method::Put,
            content_type: None,
            content_length: None,
            metadata: None,
            sse: None,
            signed_at: input("k").signed_at,
            expires_in: Duration::from_secs(60),
        };
        presigner
            .presign(&target, &creds, &url)
            .await
            .expect("signs a URL");
        let post = presigner
            .presign_post(&target, &creds, &input("k"))
            .await
            .expect("signs a form");
        assert_eq!(presigner.keys.derivations(), 1);
        // The signature is the policy's HMAC with that key.
        let signature = presigner
            .sign_post_policy(
                &creds,
                "eu-west-1",
                input("k").signed_at,
                field(&post, "policy").expect("policy"),
            )
            .expect("signs");
        assert_eq!(field(&post, "x-amz-signature"), Some(signature.as_str()));
        assert_eq!(presigner.keys.derivations(), 1);
    }

    #[tokio::test]
    async fn refusals() {
        let meta_dup = BTreeMap::from([
            ("Owner".to_string(), "a".to_string()),
            ("owner".to_string(), "b".to_string()),
        ]);
        let meta_bad = BTreeMap::from([("a b".to_string(), "v".to_string())]);
        let cases: Vec<(&str, PostInput<'_>)> = vec![
            (
                "empty bucket",
                PostInput {
                    bucket: "",
                    ..input("k")
                },
            ),
            (
                "blank bucket",
                PostInput {
                    bucket: " ",
                    ..input("k")
                },
            ),
            ("empty key", input("")),
            ("blank key", input("  ")),
            (
                "range min > max",
                PostInput {
                    content_length_range: Some((2, 1)),
                    ..input("k")
                },
            ),
            (
                "no lifetime",
                PostInput {
                    expires_in: Duration::ZERO,
                    ..input("k")
                },
            ),
            (
                "under a second",
                PostInput {
                    expires_in: Duration::from_millis(999),
                    ..input("k")
                },
            ),
            (
                "over seven days",
                PostInput {
                    expires_in: MAX_PRESIGN + Duration::from_secs(1),
                    ..input("k")
                },
            ),
            ("${filename} inside the key", input("a/${filename}/b")),
            ("${filename} twice", input("${filename}${filename}")),
            ("control character in the key", input("a\nb")),
            (
                "control character in the content type",
                PostInput {
                    content_type: Some("text/csv\r\nx: y"),
                    ..input("k")
                },
            ),
            (
                "metadata names equal but for case",
                PostInput {
                    metadata: Some(&meta_dup),
                    ..input("k")
                },
            ),
            (
                "metadata name not a token",
                PostInput {
                    metadata: Some(&meta_bad),
                    ..input("k")
                },
            ),
            (
                "success_action_status 302",
                PostInput {
                    success_action_status: Some(302),
                    ..input("k")
                },
            ),
        ];
        let presigner = presigner();
        for (what, req) in cases {
            let result = presigner
                .presign_post(&target(true), &creds(false), &req)
                .await;
            assert!(result.is_err(), "{what}: {result:?}");
        }
        // The limits themselves are fine.
        for req in [
            PostInput {
                expires_in: MAX_PRESIGN,
                ..input("${filename}")
            },
            PostInput {
                expires_in: Duration::from_secs(1),
                ..input("k")
            },
            PostInput {
                content_length_range: Some((5, 5)),
                ..input("k")
            },
        ] {
            presigner
                .presign_post(&target(true), &creds(false), &req)
                .await
                .expect("signs");
        }
    }

    #[tokio::test]
    async fn debug_shows_neither_policy_nor_signature_nor_token() {
        let post = presigner()
            .presign_post(&target(true), &creds(true), &input("k"))
            .await
            .expect("signs");
        let shown = format!("{post:?}");
        for secret in ["policy", "x-amz-signature", "x-amz-security-token"] {
            let value = field(&post, secret).expect("present");
            assert!(!shown.contains(value), "{secret} shown: {shown}");
        }
        assert!(shown.contains(&post.fingerprint()), "{shown}");
        assert_eq!(post.fingerprint().len(), "sha256:".len() + 16);
        let mut other = post.clone();
        other.fields[0].1.push('x');
        assert_ne!(other.fingerprint(), post.fingerprint());
    }
}
