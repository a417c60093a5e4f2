//! The issuer decides: no issuer, or no matching rule, means no URL, and a
//! change to the issuer or the namespace's labels is acted on at once.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult};
use upload_grant_operator::api::ClusterGrantIssuer;

async fn expect_forbidden(ctx: &TestContext, name: &str, needle: &str) -> TestResult {
    let grant = wait_reason(ctx, name, "Forbidden").await?;
    let message = ready_message(&grant);
    assert!(
        message.contains(needle),
        "{name}: expected {needle:?} in {message:?}"
    );
    assert!(
        ctx.api::<Secret>().get_opt(name).await?.is_none(),
        "{name}: a forbidden grant has no Secret"
    );
    wait_event(ctx, name, "Denied").await
}

#[tokio::test]
async fn each_kind_of_rule_denies_what_it_does_not_allow() -> TestResult {
    let labelled = TestContext::with_labels("forbid", &[("team", "analytics")]).await?;
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start_in(labelled, OperatorOptions::default()).await?;
    let bucket = ctx.env.bucket();
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{
            "namespaces": {"matchLabels": {"team": "analytics"}},
            "buckets": [bucket],
            "keyPrefixes": ["{namespace}/"],
            "methods": ["PUT", "GET"],
            "maxTtl": "30m",
            "maxContentLength": "1Ki",
            "kmsKeyIds": ["alias/analytics"],
        }, {
            // Another tenant's rule: a denial here must not describe it.
            "namespaces": {"matchLabels": {"team": "finance"}},
            "buckets": ["finance-ledgers"],
            "keyPrefixes": ["ledgers/"],
        }]),
    )
    .await?;
    let ok = serde_json::json!({"ttl": "30m", "contentLength": 1024});
    create_grant(&ctx, "allowed", spec(&ctx, &issuer, "data.csv", ok)).await?;
    create_grant(
        &ctx,
        "bucket",
        spec(
            &ctx,
            &issuer,
            "data.csv",
            serde_json::json!({"bucket": "other-bucket", "ttl": "30m", "contentLength": 1}),
        ),
    )
    .await?;
    create_grant(
        &ctx,
        "prefix",
        spec(
            &ctx,
            &issuer,
            "data.csv",
            serde_json::json!({"key": "someone-else/data.csv", "ttl": "30m", "contentLength": 1}),
        ),
    )
    .await?;
    create_grant(
        &ctx,
        "method",
        spec(
            &ctx,
            &issuer,
            "data.csv",
            serde_json::json!({"method": "DELETE", "ttl": "30m"}),
        ),
    )
    .await?;
    create_grant(
        &ctx,
        "ttl",
        spec(
            &ctx,
            &issuer,
            "data.csv",
            serde_json::json!({"ttl": "31m", "contentLength": 1}),
        ),
    )
    .await?;
    create_grant(
        &ctx,
        "size",
        spec(
            &ctx,
            &issuer,
            "data.csv",
            serde_json::json!({"ttl": "30m", "contentLength": 1025}),
        ),
    )
    .await?;
    let kms = |key: &str| {
        serde_json::json!({"ttl": "30m", "contentLength": 1,
        "serverSideEncryption": {"type": "aws:kms", "kmsKeyId": key}})
    };
    create_grant(
        &ctx,
        "kms",
        spec(&ctx, &issuer, "data.csv", kms("alias/other")),
    )
    .await?;
    create_grant(
        &ctx,
        "kms-ok",
        spec(&ctx, &issuer, "data.csv", kms("alias/analytics")),
    )
    .await?;
    create_grant(
        &ctx,
        "unpinned",
        spec(&ctx, &issuer, "data.csv", serde_json::json!({"ttl": "30m"})),
    )
    .await?;

    wait_ready(&ctx, "allowed").await?;
    expect_forbidden(&ctx, "bucket", "bucket \"other-bucket\"").await?;
    expect_forbidden(&ctx, "prefix", &format!("[\"{}/\"]", ctx.namespace)).await?;
    expect_forbidden(&ctx, "method", "method DELETE").await?;
    expect_forbidden(&ctx, "ttl", "longer than maxTtl").await?;
    expect_forbidden(&ctx, "size", "larger than maxContentLength").await?;
    expect_forbidden(&ctx, "unpinned", "must set contentLength").await?;
    expect_forbidden(&ctx, "kms", "is not one of kmsKeyIds").await?;
    wait_ready(&ctx, "kms-ok").await?;
    let told = ready_message(&wait_reason(&ctx, "bucket", "Forbidden").await?);
    assert!(
        !told.contains("finance") && told.contains("1 rule(s) are for other namespaces"),
        "another tenant's rule described: {told}"
    );

    // The namespace selector follows label changes: unlabel, and even the
    // allowed grant is revoked.
    let patch = serde_json::json!({"metadata": {"labels": {"team": "web"}}});
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            &ctx.namespace,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    expect_forbidden(&ctx, "allowed", "no allow rule applies to this namespace").await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_issuer_is_reported_and_picked_up_when_it_appears() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("issuer").await?;
    let name = format!("late-{}", support::random_suffix());
    ctx.delete_issuer_on_drop(&name);
    create_grant(
        &ctx,
        "waiting",
        spec(&ctx, &name, "data.csv", serde_json::json!({})),
    )
    .await?;
    let grant = wait_reason(&ctx, "waiting", "IssuerNotFound").await?;
    assert!(
        ready_message(&grant).contains(&name),
        "{}",
        ready_message(&grant)
    );

    create_grant(
        &ctx,
        "no-ref",
        serde_json::json!({"bucket": ctx.env.bucket(), "key": "x"}),
    )
    .await?;
    let grant = wait_reason(&ctx, "no-ref", "IssuerNotFound").await?;
    assert!(
        ready_message(&grant).contains("no default issuer"),
        "{}",
        ready_message(&grant)
    );

    let issuer: ClusterGrantIssuer = serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "ClusterGrantIssuer", "metadata": {"name": name},
        "spec": {"s3": {"region": ctx.env.region(), "endpoint": ctx.env.s3_endpoint(), "forcePathStyle": true},
                 "allow": [{"buckets": [ctx.env.bucket()]}]}
    }))?;
    let issuers: Api<ClusterGrantIssuer> = Api::all(ctx.client.clone());
    issuers.create(&Default::default(), &issuer).await?;
    wait_ready(&ctx, "waiting").await?;

    // Tightening the issuer revokes what it no longer allows.
    let patch = serde_json::json!({"spec": {"allow": [{"buckets": ["somewhere-else"]}]}});
    issuers
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    expect_forbidden(&ctx, "waiting", "somewhere-else").await?;
    wait_secret_gone(&ctx, "waiting").await?;
    Ok(())
}

#[tokio::test]
async fn grants_without_an_issuer_ref_use_the_operators_default() -> TestResult {
    let ctx = TestContext::new("default").await?;
    support::install_committed_crds(&ctx.client).await?;
    let issuer = open_issuer(&ctx).await?;
    let opts = OperatorOptions {
        default_issuer: Some(issuer),
        ..Default::default()
    };
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start_in(ctx, opts).await?;
    create_grant(&ctx, "implicit", serde_json::json!({"bucket": ctx.env.bucket(), "key": format!("{}/implicit.txt", ctx.namespace)})).await?;
    wait_ready(&ctx, "implicit").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "implicit").await?;
    assert_eq!(
        consume(&data, Some(b"implicit".to_vec())).await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn issuers_report_whether_their_rules_can_be_evaluated() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("issuer-status").await?;
    let good = open_issuer(&ctx).await?;
    let broken = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()],
            "namespaces": {"matchExpressions": [{"key": "team", "operator": "Near", "values": ["a"]}]}}]),
    )
    .await?;
    let issuers: Api<ClusterGrantIssuer> = Api::all(ctx.client.clone());
    let ready = |name: String| {
        let issuers = issuers.clone();
        async move {
            support::eventually(
                &format!("issuer {name} status"),
                std::time::Duration::from_secs(30),
                || async {
                    let issuer = issuers.get(&name).await?;
                    Ok(issuer
                        .status
                        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                        .filter(|c| c.observed_generation == issuer.metadata.generation))
                },
            )
            .await
        }
    };
    let good = ready(good).await?;
    assert_eq!(
        (good.status.as_str(), good.reason.as_str()),
        ("True", "Valid"),
        "{}",
        good.message
    );
    let broken_condition = ready(broken.clone()).await?;
    assert_eq!(
        (
            broken_condition.status.as_str(),
            broken_condition.reason.as_str()
        ),
        ("False", "InvalidSpec")
    );
    assert!(
        broken_condition.message.contains("Near"),
        "{}",
        broken_condition.message
    );

    // A grant under the broken rule is refused with the same explanation.
    create_grant(
        &ctx,
        "under-broken",
        spec(&ctx, &broken, "x.csv", serde_json::json!({})),
    )
    .await?;
    expect_forbidden(&ctx, "under-broken", "Near").await?;
    Ok(())
}
