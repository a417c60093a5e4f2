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
use support::rollout::{
    create_deployment, request_renewal, template, wait_answered, wait_restarted_for,
};
use support::uploads::{open_uploads, root_abort, root_s3, root_upload};
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

/// The operator's multipart checks run every 2 seconds here.
fn multipart_checks() -> OperatorOptions {
    OperatorOptions {
        env: vec![("UPLOAD_GRANT_MULTIPART_CHECK_INTERVAL".into(), "2s".into())],
        ..OperatorOptions::default()
    }
}

/// Points the Secret's upload annotations at somebody else's upload, as a
/// tenant may: the Secret is in its namespace.
async fn forge_upload(secrets: &Api<Secret>, object: &str, id: &str) -> TestResult {
    let patch = serde_json::json!({"metadata": {"annotations": {
        "grants.io/upload-object": object, "grants.io/upload-id": id}}});
    secrets
        .patch("mine", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A tenant rewrites its own multipart Secret to name another namespace's
/// object and upload. The operator acts only on the upload the grant's
/// status records: its checks do not look at the other object (which exists:
/// it would have been reported Completed), and deleting the grant aborts the
/// grant's own upload, not the other namespace's.
#[tokio::test]
async fn a_forged_upload_in_a_secret_steers_no_s3_call() -> TestResult {
    let ctx = TestContext::new("forged-upload").await?;
    let Scenario {
        ctx,
        operator: _operator,
        dir: _dir,
    } = Scenario::start_in(ctx, multipart_checks()).await?;
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}/"],
            "methods": ["PUT"], "multipart": true, "maxContentLength": "30Mi"}]),
    )
    .await?;
    // Another namespace's finished object and open upload.
    let bucket = ctx.env.bucket();
    let other = format!("other-{}", support::random_suffix());
    let (report, open) = (format!("{other}/report.bin"), format!("{other}/open.bin"));
    let s3 = root_s3(&ctx);
    s3.put_object()
        .bucket(bucket)
        .key(&report)
        .body(b"theirs".to_vec().into())
        .send()
        .await?;
    let (theirs, _) = root_upload(&ctx, &open).await?;

    let tenant = ctx.tenant().await?;
    let grants: Api<UploadGrant> = Api::namespaced(tenant.clone(), &ctx.namespace);
    let secrets: Api<Secret> = Api::namespaced(tenant, &ctx.namespace);
    let mine = spec(
        &ctx,
        &issuer,
        "mine.bin",
        serde_json::json!({"multipart": {"parts": 2, "partSize": "5Mi"}}),
    );
    let grant: UploadGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
        "metadata": {"name": "mine"}, "spec": mine}))?;
    grants.create(&PostParams::default(), &grant).await?;
    let issued = wait_ready(&ctx, "mine").await?;
    let first = issued
        .status
        .and_then(|s| s.upload_id)
        .ok_or("no upload recorded")?;
    let key = format!("{}/mine.bin", ctx.namespace);

    // The Secret names the other object; the grant's own upload is aborted
    // behind the operator's back, so its next check has something to find.
    forge_upload(&secrets, &format!("{bucket}/{report}"), "forged").await?;
    root_abort(&ctx, &key, &first).await?;
    let renewed = eventually(
        "the operator to notice its own upload is gone and start another",
        Duration::from_secs(60),
        || async {
            let g = grants.get("mine").await?;
            let reason = ready(&g).map(|(_, reason)| reason);
            let reason = reason.as_deref();
            assert_ne!(
                reason,
                Some("Completed"),
                "the other namespace's object was looked at"
            );
            let id = g.status.as_ref().and_then(|s| s.upload_id.clone());
            Ok(id.filter(|id| *id != first && reason == Some("Issued")))
        },
    )
    .await?;
    assert_eq!(open_uploads(&ctx, &key).await?, [renewed.as_str()]);

    // The Secret names the other namespace's open upload; the grant goes.
    forge_upload(&secrets, &format!("{bucket}/{open}"), &theirs).await?;
    grants.delete("mine", &Default::default()).await?;
    eventually("the grant to be gone", Duration::from_secs(60), || async {
        Ok(grants.get_opt("mine").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        open_uploads(&ctx, &key).await?.is_empty(),
        "its own upload is aborted"
    );
    assert_eq!(
        open_uploads(&ctx, &open).await?,
        [theirs.as_str()],
        "the other namespace's upload is left alone"
    );
    root_abort(&ctx, &open, &theirs).await?;
    Ok(())
}

/// A grant's author names the workloads it restarts; only those whose owner
/// annotated them to accept this grant are restarted. Others, and one that
/// accepts another grant, are left as they are and the grant says why.
#[tokio::test]
async fn a_grant_restarts_only_workloads_that_accept_it() -> TestResult {
    let opts = OperatorOptions {
        env: vec![("UPLOAD_GRANT_ROLLOUT_RESTARTS".into(), "true".into())],
        ..OperatorOptions::default()
    };
    let ctx = TestContext::new("restart-opt-in").await?;
    let Scenario {
        ctx,
        operator: _operator,
        dir: _dir,
    } = Scenario::start_in(ctx, opts).await?;
    let issuer = open_issuer(&ctx).await?;
    create_deployment(&ctx, "unasked", None).await?;
    create_deployment(&ctx, "elsewhere", Some("another-grant")).await?;
    create_deployment(&ctx, "willing", Some("env")).await?;

    let grants: Api<UploadGrant> = Api::namespaced(ctx.tenant().await?, &ctx.namespace);
    let targets: Vec<_> = ["unasked", "elsewhere", "willing"]
        .iter()
        .map(|name| serde_json::json!({"kind": "Deployment", "name": name}))
        .collect();
    let env = spec(
        &ctx,
        &issuer,
        "env.txt",
        serde_json::json!({"ttl": "1h",
        "secret": {"rolloutRestartTargets": targets}}),
    );
    let grant: UploadGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
        "metadata": {"name": "env"}, "spec": env}))?;
    grants.create(&PostParams::default(), &grant).await?;
    wait_ready(&ctx, "env").await?;
    request_renewal(&ctx, "env", "2027-01-01T00:00:00Z").await?;
    let renewed = wait_answered(&ctx, "env", "2027-01-01T00:00:00Z").await?;
    wait_restarted_for(&ctx, "willing", "env", &renewed, Duration::from_secs(30)).await?;
    let refused = eventually(
        "both refusals to be said",
        Duration::from_secs(30),
        || async {
            let notes: Vec<String> = grant_events(&ctx, "env")
                .await?
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("RolloutRestartFailed"))
                .filter_map(|e| e.note)
                .collect();
            Ok((notes.len() >= 2).then_some(notes))
        },
    )
    .await?;
    for name in ["unasked", "elsewhere"] {
        assert!(
            refused.iter().any(|n| n.contains(&format!("{name:?}"))
                && n.contains("grants.io/accept-restarts-from=env")),
            "{name}: {refused:?}"
        );
        assert_eq!(template(&ctx, name).await?.0, 1, "{name} was restarted");
    }
    Ok(())
}

/// The URL state a Secret's annotations give: (issued-at, expires-at).
async fn issued(
    secrets: &Api<Secret>,
    name: &str,
) -> TestResult<(jiff::Timestamp, jiff::Timestamp)> {
    let meta = secrets.get_metadata(name).await?;
    let a = meta.metadata.annotations.unwrap_or_default();
    let time = |k: &str| -> TestResult<jiff::Timestamp> {
        Ok(a.get(k).ok_or_else(|| format!("{name}: no {k}"))?.parse()?)
    };
    Ok((time("grants.io/issued-at")?, time("grants.io/expires-at")?))
}

/// With the request bound the limit (4 requests/s: 2 renewals/s), twelve
/// URLs fall due 10 s before they expire while a tenant asks, every
/// second, for twenty other grants to be renewed: ten times what the bound
/// serves. Renew requests have no deadline and wait while a due renewal
/// would run short of its own, so every due URL is renewed before it
/// expires (served alone they need 6 s of the 10 s; shared with the flood,
/// about 16 s).
#[tokio::test]
async fn a_flood_of_renew_requests_does_not_delay_due_renewals_past_expiry() -> TestResult {
    const DUE: usize = 12;
    const NOISY: usize = 20;
    let ctx = TestContext::new("fair").await?;
    let Scenario {
        ctx,
        mut operator,
        dir,
    } = Scenario::start_in(ctx, OperatorOptions::default()).await?;
    let issuer = open_issuer(&ctx).await?;
    let soon = serde_json::json!({"ttl": "60s", "refreshBefore": "10s"});
    let hour = serde_json::json!({"ttl": "1h"});
    for i in 0..NOISY {
        create_grant(
            &ctx,
            &format!("noisy-{i}"),
            spec(&ctx, &issuer, &format!("n{i}"), hour.clone()),
        )
        .await?;
    }
    for i in 0..DUE {
        create_grant(
            &ctx,
            &format!("due-{i}"),
            spec(&ctx, &issuer, &format!("d{i}"), soon.clone()),
        )
        .await?;
    }
    for i in 0..DUE {
        wait_ready(&ctx, &format!("due-{i}")).await?;
    }
    for i in 0..NOISY {
        wait_ready(&ctx, &format!("noisy-{i}")).await?;
    }
    // The same grants, now served by an operator at the bound.
    operator.stop().await?;
    let bounded = OperatorOptions {
        env: vec![
            ("UPLOAD_GRANT_KUBE_API_QPS".into(), "4".into()),
            ("UPLOAD_GRANT_CONCURRENCY".into(), "2".into()),
        ],
        ..OperatorOptions::default()
    };
    let _operator = support::operator::Operator::start(&ctx, dir.path(), bounded).await?;
    let secrets: Api<Secret> = ctx.api();
    let mut before = Vec::new();
    for i in 0..DUE {
        before.push(issued(&secrets, &format!("due-{i}")).await?);
    }
    let last_expiry = before.iter().map(|(_, e)| *e).max().ok_or("no grants")?;

    // The flood runs until the last due URL has expired.
    let grants: Api<UploadGrant> = Api::namespaced(ctx.tenant().await?, &ctx.namespace);
    let mut round = 0u64;
    while jiff::Timestamp::now() < last_expiry {
        round += 1;
        for i in 0..NOISY {
            let patch = serde_json::json!({"metadata": {"annotations": {
                RENEW_REQUEST_ANNOTATION: format!("flood-{round}")}}});
            grants
                .patch(
                    &format!("noisy-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut late = Vec::new();
    for (i, (old_issue, old_expiry)) in before.iter().enumerate() {
        let (renewed_at, _) = issued(&secrets, &format!("due-{i}")).await?;
        if renewed_at <= *old_issue || renewed_at >= *old_expiry {
            late.push(format!(
                "due-{i}: signed at {renewed_at}, the old URL expired at {old_expiry}"
            ));
        }
    }
    eprintln!("DEBUG dir {:?}", dir.path());
    std::mem::forget(dir);
    assert!(
        late.is_empty(),
        "{} of {DUE} renewed late: {late:?}",
        late.len()
    );
    Ok(())
}
