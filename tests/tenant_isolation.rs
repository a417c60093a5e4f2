//! One tenant cannot hurt another. Each test acts as a tenant would: a user
//! with the built-in `edit` role in its own namespace (by impersonation),
//! against the real apiserver and an operator serving every namespace.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult, eventually};
use upload_grant_operator::api::UploadGrant;
use upload_grant_operator::api::secret::RENEW_REQUEST_ANNOTATION;

const IGNORED: &str = "upload_grant_ignored_secrets_total";
const RENEWED: &str = r#"upload_grant_issued_total{kind="renewed"}"#;

/// A Secret labelled as the operator's, with forged state that says it is
/// due for renewal now and expires before anything else, and a 64 KiB
/// annotation, but controlled by no grant.
fn decoy(name: &str) -> TestResult<Secret> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "upload-grant-operator"},
            "annotations": {
                "grants.io/spec-hash": "forged",
                "grants.io/issued-at": "2020-01-01T00:00:00Z",
                "grants.io/refresh-at": "2020-01-01T00:00:01Z",
                "grants.io/expires-at": "2020-01-01T00:00:02Z",
                "grants.io/url-fingerprint": "sha256:forged",
                "grants.io/upload-id": "someone-elses-upload",
                "grants.io/upload-object": format!("other-bucket/{}", "k".repeat(65536)),
            },
        },
        "type": "grants.io/presigned-url",
    }))?)
}

/// Decoy Secrets cost the operator no memory and steer nothing: none enters
/// its cache (each is counted as ignored), none is touched, and a real
/// grant beside them keeps its URL.
#[tokio::test]
async fn secrets_a_tenant_labels_as_the_operators_steer_nothing() -> TestResult {
    let Scenario { ctx, operator, .. } = Scenario::start("decoys").await?;
    let issuer = open_issuer(&ctx).await?;
    let real = spec(&ctx, &issuer, "real.txt", serde_json::json!({"ttl": "1h"}));
    create_grant(&ctx, "real", real).await?;
    let before = wait_ready(&ctx, "real").await?;
    let ignored_before = operator.metric(IGNORED).await?;

    let tenant: Api<Secret> = Api::namespaced(ctx.tenant().await?, &ctx.namespace);
    let mut created = Vec::new();
    for i in 0..40 {
        let secret = tenant
            .create(&PostParams::default(), &decoy(&format!("decoy-{i}"))?)
            .await?;
        created.push((secret.name_any(), secret.resource_version()));
    }
    eventually(
        "the operator to count every decoy as ignored",
        Duration::from_secs(30),
        || async {
            let ignored = operator.metric(IGNORED).await? - ignored_before;
            Ok((ignored >= 40.0).then_some(()))
        },
    )
    .await?;

    for (name, version) in &created {
        let now = tenant.get(name).await?;
        assert_eq!(
            now.resource_version(),
            *version,
            "the operator wrote to decoy {name}"
        );
    }
    let after = wait_ready(&ctx, "real").await?;
    assert_eq!(
        fingerprint(&after),
        fingerprint(&before),
        "the real grant's URL was re-signed"
    );
    Ok(())
}

/// A loop of renew requests costs one Secret write per
/// `--renew-request-interval` (10 s here), not one per request, and the last
/// request is still answered.
#[tokio::test]
async fn a_flood_of_renew_requests_costs_one_write_per_interval() -> TestResult {
    let opts = OperatorOptions {
        env: vec![("UPLOAD_GRANT_RENEW_REQUEST_INTERVAL".into(), "10s".into())],
        ..OperatorOptions::default()
    };
    let ctx = TestContext::new("renew-flood").await?;
    let Scenario { ctx, operator, .. } = Scenario::start_in(ctx, opts).await?;
    let issuer = open_issuer(&ctx).await?;
    let grant = spec(&ctx, &issuer, "flood.txt", serde_json::json!({"ttl": "1h"}));
    create_grant(&ctx, "flood", grant).await?;
    wait_ready(&ctx, "flood").await?;
    let renewed_before = operator.metric(RENEWED).await?;

    let grants: Api<UploadGrant> = Api::namespaced(ctx.tenant().await?, &ctx.namespace);
    let started = std::time::Instant::now();
    let mut last = String::new();
    for i in 0..40 {
        last = format!("2027-01-15T08:00:{i:02}.000000000Z");
        let patch =
            serde_json::json!({"metadata": {"annotations": {RENEW_REQUEST_ANNOTATION: last}}});
        grants
            .patch("flood", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let flood = started.elapsed();
    let during = operator.metric(RENEWED).await? - renewed_before;
    // One window may have begun just before the flood: at most one renewal
    // per started window, plus that one.
    let bound = (flood.as_secs_f64() / 10.0).ceil() + 1.0;
    assert!(
        (1.0..=bound).contains(&during),
        "{during} renewals for 40 requests in {flood:?} (at most {bound})"
    );
    let secrets: Api<Secret> = ctx.api();
    eventually(
        "the last request to be answered",
        Duration::from_secs(30),
        || async {
            let secret = secrets.get("flood").await?;
            Ok((secret.annotations().get(RENEW_REQUEST_ANNOTATION) == Some(&last)).then_some(()))
        },
    )
    .await?;
    Ok(())
}
