//! Upgrading from a version that created Secrets with a plain create: the
//! fields that create set belong to an Update entry no apply can remove, so
//! the operator hands them to its applier before the first apply over them.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::{TestContext, TestResult};

const MANAGER: &str = "upload-grant-operator";

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The Secret an older version wrote for `grant`: created, not applied,
/// with a renewal time and a label the grant no longer asks for.
fn legacy_secret(grant: &upload_grant_operator::api::UploadGrant) -> TestResult<Secret> {
    let now = SystemTime::now();
    let owner = grant.controller_owner_ref(&()).ok_or("grant without uid")?;
    let text = |s: &str| ByteString(s.as_bytes().to_vec());
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(grant.name_any()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
                ("grants.io/grant".into(), grant.name_any()),
                ("old".into(), "x".into()),
            ])),
            annotations: Some(BTreeMap::from([
                ("grants.io/spec-hash".into(), "0000000000000000".into()),
                ("grants.io/issued-at".into(), rfc3339(now)),
                (
                    "grants.io/expires-at".into(),
                    rfc3339(now + Duration::from_secs(3600)),
                ),
                (
                    "grants.io/refresh-at".into(),
                    rfc3339(now + Duration::from_secs(2400)),
                ),
                ("grants.io/url-fingerprint".into(), "sha256:legacy".into()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("grants.io/presigned-url".into()),
        data: Some(BTreeMap::from([
            ("url".into(), text("https://legacy.invalid/")),
            ("method".into(), text("PUT")),
        ])),
        ..Secret::default()
    })
}

#[tokio::test]
async fn a_secret_created_by_an_older_version_is_adopted_by_the_applier() -> TestResult {
    let ctx = TestContext::new("upgrade").await?;
    support::install_committed_crds(&ctx.client).await?;
    let issuer = open_issuer(&ctx).await?;
    let extra = serde_json::json!({"refreshPolicy": "Never"});
    let grant = create_grant(&ctx, "legacy", spec(&ctx, &issuer, "legacy.txt", extra)).await?;
    let created = ctx
        .api::<Secret>()
        .create(
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            },
            &legacy_secret(&grant)?,
        )
        .await?;

    let dir = tempfile::tempdir()?;
    let _operator = Operator::start(&ctx, dir.path(), OperatorOptions::default()).await?;
    let ready = wait_ready(&ctx, "legacy").await?;
    let status = ready.status.clone().unwrap_or_default();
    assert_eq!(status.refresh_at, None, "refreshPolicy Never");

    let secret = ctx.api::<Secret>().get("legacy").await?;
    assert_eq!(secret.uid(), created.uid(), "the same Secret, updated");
    let annotations = secret.annotations();
    assert!(
        !annotations.contains_key("grants.io/refresh-at"),
        "the older version's renewal time survived: {annotations:?}"
    );
    assert_eq!(
        annotations.get("grants.io/url-fingerprint"),
        status.url_fingerprint.as_ref()
    );
    assert!(
        !secret.labels().contains_key("old"),
        "a label the grant does not ask for survived"
    );
    let managers: Vec<(String, String)> = secret
        .managed_fields()
        .iter()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        managers,
        [(MANAGER.to_owned(), "Apply".to_owned())],
        "one writer"
    );
    let data = secret_data(&ctx.client, &ctx.namespace, "legacy").await?;
    let response = consume(&data, Some(b"after the upgrade".to_vec())).await?;
    assert_eq!(response.status(), 200);
    Ok(())
}
