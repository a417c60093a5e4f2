//! Bad specs are refused by the apiserver at apply time, with a message that
//! says what is wrong; `kubectl explain` documents the fields and `kubectl get`
//! shows the printer columns.

mod support;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use support::{TestContext, TestResult};
use upload_grant_operator::api::{ClusterGrantIssuer, UploadGrant};

/// Untyped, so values the Rust types could not even hold reach the server.
fn grant(name: &str, spec: serde_json::Value) -> TestResult<DynamicObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "metadata": {"name": name}, "spec": spec
    }))?)
}

fn dynamic<K: kube::Resource<DynamicType = ()>>(
    ctx: &TestContext,
    namespaced: bool,
) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    if namespaced {
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ar)
    } else {
        Api::all_with(ctx.client.clone(), &ar)
    }
}

fn with(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({"bucket": "reports", "key": "a/b.csv"});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

#[tokio::test]
async fn invalid_grants_are_rejected_with_a_clear_message() -> TestResult {
    let ctx = TestContext::new("crd").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<UploadGrant>(&ctx, true);
    let long_key = "k".repeat(1025);
    let long_utf8_key = "ü".repeat(513); // 513 characters, 1026 bytes
    let cases = [
        (
            with(serde_json::json!({"bucket": "Upper_Case"})),
            "bucket must consist of lowercase",
        ),
        (with(serde_json::json!({"bucket": "ab"})), "spec.bucket"),
        (
            with(serde_json::json!({"bucket": "a..b"})),
            "two adjacent periods",
        ),
        (
            with(serde_json::json!({"bucket": "192.168.1.10"})),
            "IP address",
        ),
        (
            with(serde_json::json!({"bucket": "xn--reports"})),
            "reserves",
        ),
        (with(serde_json::json!({"key": ""})), "spec.key"),
        (with(serde_json::json!({"key": long_key})), "spec.key"),
        (
            with(serde_json::json!({"key": long_utf8_key})),
            "at most 1024 bytes",
        ),
        (with(serde_json::json!({"method": "PATCH"})), "spec.method"),
        (
            with(serde_json::json!({"ttl": "30s"})),
            "ttl must be between 1m and 168h",
        ),
        (
            with(serde_json::json!({"ttl": "169h"})),
            "ttl must be between 1m and 168h",
        ),
        (with(serde_json::json!({"ttl": "1 day"})), "spec.ttl"),
        (
            with(serde_json::json!({"ttl": "1h", "refreshBefore": "1h"})),
            "refreshBefore must be shorter than ttl",
        ),
        (
            with(serde_json::json!({"method": "GET", "contentLength": 10})),
            "contentLength is only allowed when method is PUT",
        ),
        (
            with(serde_json::json!({"method": "GET", "contentType": "text/csv"})),
            "only allowed when method is PUT",
        ),
        (
            with(serde_json::json!({"contentLength": -1})),
            "spec.contentLength",
        ),
        (
            with(serde_json::json!({"notAfter": "tomorrow"})),
            "spec.notAfter",
        ),
        (
            with(serde_json::json!({"serverSideEncryption": {"type": "AES256", "kmsKeyId": "k"}})),
            "kmsKeyId is only allowed",
        ),
        (
            with(serde_json::json!({"secret": {"name": "Not A Name"}})),
            "spec.secret.name",
        ),
    ];
    for (i, (spec, needle)) in cases.into_iter().enumerate() {
        let shown = spec.to_string();
        match api
            .create(&PostParams::default(), &grant(&format!("bad-{i}"), spec)?)
            .await
        {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{shown}: {status:?}");
                assert!(
                    status.message.contains(needle),
                    "{shown}: expected {needle:?} in {:?}",
                    status.message
                );
            }
            other => panic!("{shown} was not rejected: {other:?}"),
        }
    }
    // The same grant with good values is accepted, so the refusals above are
    // about the values.
    let good = with(
        serde_json::json!({"ttl": "2h", "refreshBefore": "30m", "contentLength": 10, "notAfter": "2030-01-01T00:00:00Z"}),
    );
    api.create(&PostParams::default(), &grant("good", good)?)
        .await?;
    Ok(())
}

#[tokio::test]
async fn invalid_issuers_are_rejected() -> TestResult {
    let ctx = TestContext::new("crd-issuer").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<ClusterGrantIssuer>(&ctx, false);
    let issuer = |name: &str,
                  s3: serde_json::Value,
                  allow: serde_json::Value|
     -> TestResult<DynamicObject> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "grants.io/v1alpha1", "kind": "ClusterGrantIssuer", "metadata": {"name": name},
            "spec": {"s3": s3, "allow": allow}
        }))?)
    };
    let suffix = support::random_suffix();
    let cases = [
        (
            serde_json::json!({"region": "eu-west-1", "endpoint": "ftp://example.com"}),
            serde_json::json!([]),
            "endpoint must be an http or https URL",
        ),
        (
            serde_json::json!({"region": "EU West"}),
            serde_json::json!([]),
            "spec.s3.region",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "maxContentLength": "-5"}]),
            "maxContentLength",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "maxTtl": "forever"}]),
            "maxTtl",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "methods": ["POST"]}]),
            "methods",
        ),
    ];
    for (i, (s3, allow, needle)) in cases.into_iter().enumerate() {
        match api
            .create(
                &PostParams::default(),
                &issuer(&format!("bad-{suffix}-{i}"), s3, allow)?,
            )
            .await
        {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{needle}: {status:?}");
                assert!(
                    status.message.contains(needle),
                    "expected {needle:?} in {:?}",
                    status.message
                );
            }
            other => panic!("issuer case {i} was not rejected: {other:?}"),
        }
    }
    let good = issuer(
        &format!("good-{suffix}"),
        serde_json::json!({"region": "eu-west-1", "endpoint": "https://s3.eu-west-1.amazonaws.com"}),
        serde_json::json!([{"buckets": ["b"], "maxContentLength": "100Mi", "maxTtl": "6h", "methods": ["PUT"]}]),
    )?;
    api.create(&PostParams::default(), &good).await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_explains_every_field_and_prints_the_columns() -> TestResult {
    let ctx = TestContext::new("explain").await?;
    support::install_committed_crds(&ctx.client).await?;
    for field in [
        "uploadgrant.spec.ttl",
        "uploadgrant.spec.refreshBefore",
        "uploadgrant.status.expiresAt",
        "clustergrantissuer.spec.allow.keyPrefixes",
    ] {
        let out = ctx
            .env
            .command("kubectl")
            .args(["explain", field])
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        assert!(
            out.status.success() && text.contains("DESCRIPTION"),
            "{field}: {text}"
        );
        let description = text.split("DESCRIPTION:").nth(1).unwrap_or_default().trim();
        assert!(
            !description.is_empty() && !description.starts_with("<empty>"),
            "{field} has no description"
        );
    }
    dynamic::<UploadGrant>(&ctx, true)
        .create(
            &PostParams::default(),
            &grant("shown", with(serde_json::json!({})))?,
        )
        .await?;
    let out = ctx
        .env
        .command("kubectl")
        .args(["get", "ug", "-n", &ctx.namespace])
        .output()?;
    let header = String::from_utf8(out.stdout)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "BUCKET", "KEY", "METHOD", "READY", "EXPIRES", "AGE"]
    );
    Ok(())
}
