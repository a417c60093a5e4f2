//! POST grants without the operator: botocore's `generate_presigned_post`
//! (tests/fixtures/botocore_post.py) signs a form policy with the test store's
//! root keys (SeaweedFS checks POST policies for static keys only), in the
//! shape of a POST grant's Secret, for the consumers and the browser page.

use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::{TestEnv, TestResult};

/// A signed form: its action URL and its fields, as JSON text in the order
/// they must be sent (a serde_json map would sort them).
pub struct PostForm {
    pub url: String,
    pub fields: String,
}

impl PostForm {
    /// `{"url": ..., "fields": {...}}`, what an app's backend serves the
    /// page (examples/post-form.html).
    pub fn grant_json(&self) -> String {
        format!(r#"{{"url":{},"fields":{}}}"#, json!(self.url), self.fields)
    }

    /// The data of a POST grant's Secret for this form.
    pub fn secret_data(&self, env: &TestEnv, key: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("url".into(), self.url.clone()),
            ("method".into(), "POST".into()),
            ("fields".into(), self.fields.clone()),
            ("headers".into(), "{}".into()),
            ("expiresAt".into(), "2099-01-01T00:00:00Z".into()),
            ("bucket".into(), env.bucket().into()),
            ("key".into(), key.into()),
        ])
    }
}

/// What to sign: the key (exact, or a prefix ending in `${filename}`), the
/// size range, and optionally a Content-Type and success_action_status.
#[derive(Default)]
pub struct PostPolicy<'a> {
    pub key: &'a str,
    pub min: u64,
    pub max: u64,
    pub content_type: Option<&'a str>,
    pub success_action_status: Option<u16>,
}

/// botocore's form for `policy`, valid for an hour, signed with the root keys.
pub fn botocore_post(env: &TestEnv, policy: &PostPolicy<'_>) -> TestResult<PostForm> {
    let creds = env.root_credentials();
    let request = json!({
        "endpoint": env.s3_endpoint(),
        "region": env.region(),
        "bucket": env.bucket(),
        "key": policy.key,
        "access_key_id": creds.access_key_id(),
        "secret_access_key": creds.secret_access_key(),
        "expires_in": 3600,
        "min": policy.min,
        "max": policy.max,
        "content_type": policy.content_type,
        "success_action_status": policy.success_action_status,
    });
    let out = super::botocore::run("botocore_post.py", &request.to_string())?;
    let answer: Value = serde_json::from_slice(&out)?;
    Ok(PostForm {
        url: answer["url"].as_str().ok_or("no url")?.to_owned(),
        fields: answer["fields_json"]
            .as_str()
            .ok_or("no fields_json")?
            .to_owned(),
    })
}

/// A test namespace with an operator that signs with the store's static
/// root keys: the test store verifies POST policies only for static keys (it
/// does not accept a session token in a form).
pub async fn static_key_scenario(prefix: &str) -> TestResult<super::grants::Scenario> {
    let ctx = super::TestContext::new(prefix).await?;
    let root = ctx.env.root_credentials();
    let opts = super::operator::OperatorOptions {
        without_irsa: true,
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), root.access_key_id().into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                root.secret_access_key().into(),
            ),
        ],
        ..Default::default()
    };
    super::grants::Scenario::start_in(ctx, opts).await
}
