//! A presigned URL is a bearer credential. After a full scenario — issue,
//! renew, deny, fail, revoke — no URL, signature, session token or
//! service-account token appears in the operator's debug logs, in events, in
//! grant status or in metrics.

mod support;

use std::time::Duration;

use kube::api::{DeleteParams, ListParams};
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult};
use upload_grant_operator::api::UploadGrant;

fn query_value<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn no_secret_material_in_logs_events_status_or_metrics() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start_in(
        TestContext::new("leak").await?,
        // Renewed Events too: their notes must not carry a URL either.
        OperatorOptions::lifecycle_events(),
    )
    .await?;
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()], "methods": ["PUT", "GET", "POST"]}]),
    )
    .await?;
    let key = |k: &str| format!("{}/{k}", ctx.namespace);

    // Issue, use and renew.
    create_grant(&ctx, "upload", serde_json::json!({"issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": key("a.txt"), "ttl": "1m", "refreshBefore": "50s"})).await?;
    let first = wait_ready(&ctx, "upload").await?;
    let mut urls = vec![secret_data(&ctx.client, &ctx.namespace, "upload").await?["url"].clone()];
    assert_eq!(
        consume(
            &secret_data(&ctx.client, &ctx.namespace, "upload").await?,
            Some(b"x".to_vec())
        )
        .await?
        .status(),
        200
    );
    let fp = fingerprint(&first);
    wait_for_grant(&ctx, "upload", "renewed", Duration::from_secs(60), |g| {
        fingerprint(g) != fp
    })
    .await?;
    urls.push(secret_data(&ctx.client, &ctx.namespace, "upload").await?["url"].clone());
    // Denied, conflicting and revoked grants.
    create_grant(&ctx, "denied", serde_json::json!({"issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": key("b.txt"), "method": "DELETE"})).await?;
    wait_reason(&ctx, "denied", "Forbidden").await?;
    create_grant(&ctx, "reader", serde_json::json!({"issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": key("a.txt"), "method": "GET"})).await?;
    wait_ready(&ctx, "reader").await?;
    urls.push(secret_data(&ctx.client, &ctx.namespace, "reader").await?["url"].clone());
    ctx.api::<UploadGrant>()
        .delete("reader", &DeleteParams::default())
        .await?;
    wait_secret_gone(&ctx, "reader").await?;
    // A POST form, signed and revoked: its policy, signature and token are
    // as secret as a URL.
    create_grant(&ctx, "form", serde_json::json!({"issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": key("in/${filename}"), "method": "POST", "contentType": "text/plain"})).await?;
    wait_ready(&ctx, "form").await?;
    let form: serde_json::Value =
        serde_json::from_str(&secret_data(&ctx.client, &ctx.namespace, "form").await?["fields"])?;
    ctx.api::<UploadGrant>()
        .delete("form", &DeleteParams::default())
        .await?;
    wait_secret_gone(&ctx, "form").await?;

    let mut needles: Vec<(String, String)> = Vec::new();
    for (what, field) in [
        ("a POST policy", "policy"),
        ("a POST signature", "x-amz-signature"),
        ("a POST session token", "x-amz-security-token"),
    ] {
        let value = form[field]
            .as_str()
            .ok_or_else(|| format!("no {field} field"))?;
        needles.push((what.into(), value.to_owned()));
    }
    for url in &urls {
        needles.push(("a presigned URL".into(), url.clone()));
        let signature = query_value(url, "X-Amz-Signature").ok_or("URL without signature")?;
        needles.push(("a signature".into(), signature.to_owned()));
        let token = query_value(url, "X-Amz-Security-Token").ok_or("URL without session token")?;
        // As it stands in the URL, and decoded as a log line would print it.
        needles.push(("a session token".into(), token.to_owned()));
        needles.push(("a decoded session token".into(), percent_decode(token)));
    }
    let sa_token = std::fs::read_to_string(&operator.token_file)?;
    needles.push((
        "the service-account token".into(),
        sa_token.trim().to_owned(),
    ));
    let sa_signature = sa_token
        .trim()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    needles.push(("the service-account token's signature".into(), sa_signature));

    let metrics = operator.metrics().await?;
    let logs = operator.logs();
    let events = serde_json::to_string(
        &ctx.api::<k8s_openapi::api::events::v1::Event>()
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    let statuses = serde_json::to_string(
        &ctx.api::<UploadGrant>()
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "the scenario must run with debug logs"
    );
    assert!(
        logs.contains("issued presigned URL"),
        "the logs must cover the issuing"
    );
    assert!(
        events.contains("Renewed") && events.contains("Denied"),
        "the events must cover the scenario"
    );
    assert!(
        metrics.contains(r#"upload_grant_signings_total{result="success",reason="ok"} "#),
        "the metrics must be the operator's: {metrics}"
    );
    assert!(
        statuses.contains("urlFingerprint"),
        "the statuses must cover the issuing"
    );
    for (place, text) in [
        ("operator logs", &logs),
        ("events", &events),
        ("grant status", &statuses),
        ("metrics", &metrics),
    ] {
        for (what, needle) in &needles {
            assert!(needle.len() >= 16, "{what} is too short to search for");
            assert!(
                !text.contains(needle.as_str()),
                "{what} appears in the {place}"
            );
        }
    }
    Ok(())
}
