//! Renew-now requests and the workloads that rollout restarts change.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use upload_grant_operator::api::UploadGrant;
use upload_grant_operator::controller::rollout::ACCEPT_ANNOTATION;

use super::operator::Operator;
use super::{TestContext, TestResult, eventually};

pub const RENEW: &str = "grants.io/renew-requested-at";
pub const RECONCILES: &str = "upload_grant_reconcile_duration_seconds_count";

/// A Deployment with no replicas whose pods would read the grant `env`'s URL
/// from an environment variable: its pod template is all that matters. It
/// accepts restarts from the grants `accepts` names (`*`: all).
pub async fn create_deployment(ctx: &TestContext, name: &str, accepts: Option<&str>) -> TestResult {
    let annotations = match accepts {
        Some(grants) => serde_json::json!({ACCEPT_ANNOTATION: grants}),
        None => serde_json::json!({}),
    };
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                    "env": [{"name": "UPLOAD_URL", "valueFrom": {"secretKeyRef": {"name": "env", "key": "url"}}}]}]}
            }
        }
    }))?;
    ctx.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await?;
    Ok(())
}

/// The Deployment's generation and pod-template annotations.
pub async fn template(
    ctx: &TestContext,
    name: &str,
) -> TestResult<(i64, BTreeMap<String, String>)> {
    let d = ctx.api::<Deployment>().get(name).await?;
    let annotations = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    Ok((d.metadata.generation.unwrap_or_default(), annotations))
}

/// Asks for a renewal the way `kubectl grant renew` does.
pub async fn request_renewal(ctx: &TestContext, grant: &str, value: &str) -> TestResult {
    let patch = serde_json::json!({"metadata": {"annotations": {RENEW: value}}});
    ctx.api::<UploadGrant>()
        .patch(grant, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the Secret answers renew request `value`; its fingerprint.
pub async fn wait_answered(ctx: &TestContext, secret: &str, value: &str) -> TestResult<String> {
    let api = ctx.api::<Secret>();
    eventually(
        "the Secret to answer the renew request",
        Duration::from_secs(30),
        || async {
            let meta = api.get_metadata(secret).await?;
            let annotations = meta.metadata.annotations.unwrap_or_default();
            Ok((annotations.get(RENEW).map(String::as_str) == Some(value))
                .then(|| annotations.get("grants.io/url-fingerprint").cloned())
                .flatten())
        },
    )
    .await
}

/// Makes the operator look at the grant once more and waits until it has:
/// what it did not do then, it will not do later on its own.
pub async fn settle(ctx: &TestContext, operator: &Operator, grant: &str, n: u32) -> TestResult {
    let before = operator.metric(RECONCILES).await?;
    let patch = serde_json::json!({"metadata": {"labels": {"touched": n.to_string()}}});
    ctx.api::<UploadGrant>()
        .patch(grant, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually(
        "the operator to reconcile the grant again",
        Duration::from_secs(30),
        || async { Ok((operator.metric(RECONCILES).await? > before).then_some(())) },
    )
    .await
}

/// Waits until the Deployment's pods are restarted for the URL `fingerprint`.
pub async fn wait_restarted_for(
    ctx: &TestContext,
    deployment: &str,
    grant: &str,
    fingerprint: &str,
    timeout: Duration,
) -> TestResult<(i64, BTreeMap<String, String>)> {
    let key = upload_grant_operator::controller::rollout::url_annotation(grant);
    eventually("the Deployment's restart", timeout, || async {
        let (generation, annotations) = template(ctx, deployment).await?;
        Ok(
            (annotations.get(&key).map(String::as_str) == Some(fingerprint))
                .then_some((generation, annotations)),
        )
    })
    .await
}
