//! POST grants against the real store: the Secret's form uploads what its
//! policy allows and the store refuses the rest — sizes outside the range,
//! a key outside the `${filename}` prefix, another Content-Type, an expired
//! policy. Renewal gives new fields; suspend removes the Secret.
//!
//! The test store verifies POST policies only for static keys (it does not
//! accept a session token in a form), so the operator signs with the store's
//! root keys here; the session-token path is proven by the signer's
//! known-answer tests.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use support::grants::{
    Scenario, create_grant, create_issuer, fingerprint, patch_spec, secret_data, spec, wait_ready,
    wait_reason, wait_secret_gone,
};
use support::post::static_key_scenario as start;
use support::rollout::{request_renewal, wait_answered};
use support::{TestContext, TestResult, eventually};
use upload_grant_operator::signing::FormFields;

/// The form a POST grant's Secret describes.
#[derive(Clone)]
struct Form {
    url: String,
    fields: Vec<(String, String)>,
}

impl Form {
    fn from_secret(data: &BTreeMap<String, String>) -> TestResult<Form> {
        assert_eq!(data["method"], "POST");
        assert_eq!(data["headers"], "{}", "a form sends no extra headers");
        let FormFields(fields) = serde_json::from_str(&data["fields"])?;
        Ok(Form {
            url: data["url"].clone(),
            fields,
        })
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form with field `name` set to `value`.
    fn with(&self, name: &str, value: &str) -> Form {
        let mut form = self.clone();
        for (n, v) in &mut form.fields {
            if n == name {
                *v = value.to_owned();
            }
        }
        form
    }

    /// Sends the fields in order, then the file, as a browser does.
    async fn send(
        &self,
        file_name: &str,
        content_type: &str,
        body: &[u8],
    ) -> TestResult<(u16, String)> {
        let boundary = format!("----form-{}", support::random_suffix());
        let mut out = Vec::new();
        for (name, value) in &self.fields {
            out.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let response = support::http()
            .post(&self.url)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(out)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }
}

/// The object's bytes, read with the store's root keys; None if absent.
async fn read_back(ctx: &TestContext, key: &str) -> TestResult<Option<Vec<u8>>> {
    let root = support::s3_client(ctx.env, ctx.env.root_credentials());
    match root
        .get_object()
        .bucket(ctx.env.bucket())
        .key(key)
        .send()
        .await
    {
        Ok(object) => Ok(Some(object.body.collect().await?.into_bytes().to_vec())),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A refusal by the store for `reason` (an S3 error code or message).
fn refused(status: u16, body: &str, reason: &str) -> bool {
    eprintln!("refused with {status}: {}", body.replace('\n', " "));
    (400..500).contains(&status) && body.contains(reason)
}

#[tokio::test]
async fn a_post_form_uploads_what_its_policy_allows_and_nothing_else() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = start("post").await?;
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}/"],
            "methods": ["POST"], "maxContentLength": "1Mi"}]),
    )
    .await?;

    // An exact key, a size range, a Content-Type and metadata.
    let key = format!("{}/report.csv", ctx.namespace);
    create_grant(
        &ctx,
        "form",
        spec(
            &ctx,
            &issuer,
            "report.csv",
            serde_json::json!({"method": "POST", "contentType": "text/csv",
                "metadata": {"owner": "analytics"}, "contentLengthRange": {"min": 10, "max": 100}}),
        ),
    )
    .await?;
    let grant = match wait_ready(&ctx, "form").await {
        Ok(g) => g,
        Err(e) => return Err(format!("{e}; operator log:\n{}", operator.logs()).into()),
    };
    let data = secret_data(&ctx.client, &ctx.namespace, "form").await?;
    assert_eq!(
        (data["bucket"].as_str(), data["key"].as_str()),
        (ctx.env.bucket(), key.as_str())
    );
    let form = Form::from_secret(&data)?;
    let names: Vec<&str> = form.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"key"), "{names:?}");
    assert_eq!(names.last(), Some(&"x-amz-signature"), "{names:?}");
    assert_eq!(form.field("key"), Some(key.as_str()));
    assert_eq!(form.field("Content-Type"), Some("text/csv"));
    assert_eq!(form.field("x-amz-meta-owner"), Some("analytics"));
    let annotations = ctx
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get_metadata("form")
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        annotations.get("grants.io/url-fingerprint").cloned(),
        fingerprint(&grant),
        "the Secret and the status name the same form"
    );

    // Sizes: one byte under min and one over max are refused, min and max work.
    let (status, body) = form.send("r.csv", "text/csv", &[b'x'; 9]).await?;
    assert!(
        refused(status, &body, "EntityTooSmall"),
        "9 bytes (min 10): {status} {body}"
    );
    let (status, body) = form.send("r.csv", "text/csv", &[b'x'; 101]).await?;
    assert!(
        refused(status, &body, "EntityTooLarge"),
        "101 bytes (max 100): {status} {body}"
    );
    assert_eq!(read_back(&ctx, &key).await?, None, "nothing was stored");
    let content = b"day,total\n2026-11-29,42\n".repeat(4);
    assert!((10..=100).contains(&content.len()));
    let (status, body) = form.send("r.csv", "text/csv", &content).await?;
    assert_eq!(status, 204, "an upload inside the range: {body}");
    assert_eq!(read_back(&ctx, &key).await?, Some(content.clone()));
    let (status, body) = form.send("r.csv", "text/csv", &[b'y'; 100]).await?;
    assert_eq!(status, 204, "exactly max: {body}");

    // Conditions: another Content-Type, other metadata or another key are refused.
    let (status, body) = form
        .with("Content-Type", "text/plain")
        .send("r.csv", "text/plain", &content)
        .await?;
    assert!(
        refused(status, &body, "Invalid according to Policy"),
        "another Content-Type: {status} {body}"
    );
    let (status, body) = form
        .with("x-amz-meta-owner", "someone-else")
        .send("r.csv", "text/csv", &content)
        .await?;
    assert!(
        refused(status, &body, "Invalid according to Policy"),
        "other metadata: {status} {body}"
    );
    let elsewhere = format!("{}/elsewhere.csv", ctx.namespace);
    let (status, body) = form
        .with("key", &elsewhere)
        .send("r.csv", "text/csv", &content)
        .await?;
    assert!(
        refused(status, &body, "Invalid according to Policy"),
        "another key: {status} {body}"
    );
    assert_eq!(read_back(&ctx, &elsewhere).await?, None);

    // A ${filename} key: the form names the object, under the prefix only.
    create_grant(
        &ctx,
        "inbox",
        spec(
            &ctx,
            &issuer,
            "inbox/${filename}",
            serde_json::json!({"method": "POST", "contentLengthRange": {"min": 1, "max": "1Ki"},
                "successActionStatus": 201}),
        ),
    )
    .await?;
    wait_ready(&ctx, "inbox").await?;
    let inbox = Form::from_secret(&secret_data(&ctx.client, &ctx.namespace, "inbox").await?)?;
    let (status, body) = inbox
        .send("photo 1.txt", "text/plain", b"a file chosen in a browser")
        .await?;
    assert_eq!(status, 201, "successActionStatus 201: {body}");
    let landed = format!("{}/inbox/photo 1.txt", ctx.namespace);
    assert_eq!(
        read_back(&ctx, &landed).await?.as_deref(),
        Some(&b"a file chosen in a browser"[..]),
        "the file name replaces ${{filename}}"
    );
    // The docs' curl snippet sends the same form from the mounted files.
    let page = std::fs::read_to_string(support::repo_root().join("docs/src/consuming.md"))?;
    let snippet = page
        .split("```sh\nargs=(); while")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .map(|rest| format!("args=(); while{rest}"))
        .ok_or("the POST snippet in docs/src/consuming.md")?;
    let mount = tempfile::tempdir()?;
    let secret = secret_data(&ctx.client, &ctx.namespace, "inbox").await?;
    for (name, value) in &secret {
        std::fs::write(mount.path().join(name), value)?;
    }
    std::fs::write(mount.path().join("report.csv"), b"sent by curl")?;
    let grant_dir = mount.path().to_str().ok_or("a UTF-8 path")?;
    let script = snippet.replace("/grant/", &format!("{grant_dir}/"));
    let run = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(mount.path())
        .output()?;
    assert!(
        run.status.success(),
        "the docs' snippet failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        read_back(&ctx, &format!("{}/inbox/report.csv", ctx.namespace))
            .await?
            .as_deref(),
        Some(&b"sent by curl"[..])
    );

    let outside = format!("{}/other/${{filename}}", ctx.namespace);
    let (status, body) = inbox
        .with("key", &outside)
        .send("x.txt", "text/plain", b"escape")
        .await?;
    assert!(
        refused(status, &body, "Invalid according to Policy"),
        "a key outside the prefix: {status} {body}"
    );
    assert_eq!(
        read_back(&ctx, &format!("{}/other/x.txt", ctx.namespace)).await?,
        None
    );

    // Under maxContentLength, a POST without a range, or with a larger max,
    // is Forbidden.
    for (name, extra) in [
        ("unbounded", serde_json::json!({"method": "POST"})),
        (
            "too-big",
            serde_json::json!({"method": "POST", "contentLengthRange": {"min": 0, "max": "2Mi"}}),
        ),
    ] {
        create_grant(&ctx, name, spec(&ctx, &issuer, "big.bin", extra)).await?;
        let grant = wait_reason(&ctx, name, "Forbidden").await?;
        let message = support::grants::ready_message(&grant);
        assert!(message.contains("contentLengthRange"), "{message}");
    }
    Ok(())
}

#[tokio::test]
async fn post_forms_expire_renew_and_go_with_suspend() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = start("post-life").await?;
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}/"], "methods": ["POST"]}]),
    )
    .await?;

    // Renewal: a new policy and signature, and the new form works.
    create_grant(
        &ctx,
        "renewed",
        spec(
            &ctx,
            &issuer,
            "renewed.txt",
            serde_json::json!({"method": "POST"}),
        ),
    )
    .await?;
    let first = match wait_ready(&ctx, "renewed").await {
        Ok(g) => fingerprint(&g).ok_or("no fingerprint")?,
        Err(e) => return Err(format!("{e}; operator log:\n{}", operator.logs()).into()),
    };
    let before = Form::from_secret(&secret_data(&ctx.client, &ctx.namespace, "renewed").await?)?;
    let request = "2026-12-02T04:00:00.000000001Z";
    request_renewal(&ctx, "renewed", request).await?;
    let second = wait_answered(&ctx, "renewed", request).await?;
    assert_ne!(second, first, "renewal must give a new form");
    let after = Form::from_secret(&secret_data(&ctx.client, &ctx.namespace, "renewed").await?)?;
    assert_ne!(after.field("policy"), before.field("policy"));
    assert_ne!(
        after.field("x-amz-signature"),
        before.field("x-amz-signature")
    );
    let (status, body) = after.send("f", "text/plain", b"renewed").await?;
    assert_eq!(status, 204, "the renewed form: {body}");

    // Suspend removes the Secret.
    patch_spec(&ctx, "renewed", serde_json::json!({"suspend": true})).await?;
    wait_secret_gone(&ctx, "renewed").await?;
    wait_reason(&ctx, "renewed", "Suspended").await?;

    // Expiry: a form capped by notAfter works until then, and is refused by
    // the store afterwards, even kept after the operator removed it.
    let not_after = SystemTime::now() + Duration::from_secs(20);
    let not_after = jiff::Timestamp::try_from(not_after)?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    create_grant(
        &ctx,
        "expiring",
        spec(
            &ctx,
            &issuer,
            "expiring.txt",
            serde_json::json!({"method": "POST", "notAfter": not_after}),
        ),
    )
    .await?;
    wait_ready(&ctx, "expiring").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "expiring").await?;
    let kept = Form::from_secret(&data)?;
    let expires_at: jiff::Timestamp = data["expiresAt"].parse()?;
    let (status, body) = kept.send("f", "text/plain", b"in time").await?;
    assert_eq!(status, 204, "before expiry: {body}");
    wait_reason(&ctx, "expiring", "Expired").await?;
    wait_secret_gone(&ctx, "expiring").await?;
    let (status, body) = eventually(
        "the store to refuse the expired form",
        Duration::from_secs(60),
        || async {
            if jiff::Timestamp::now() <= expires_at {
                return Ok(None);
            }
            Ok(Some(kept.send("f", "text/plain", b"too late").await?))
        },
    )
    .await?;
    assert!(
        refused(status, &body, "Policy expired"),
        "an expired policy: {status} {body}"
    );
    Ok(())
}
