//! Renewal, restart and every way a Secret is revoked.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use support::TestResult;
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use upload_grant_operator::api::UploadGrant;
use upload_grant_operator::api::secret::FINALIZER;

#[tokio::test]
async fn renewal_replaces_the_url_and_a_restart_re_signs_nothing_fresh() -> TestResult {
    let Scenario {
        ctx,
        dir,
        mut operator,
    } = Scenario::start("renew").await?;
    let issuer = open_issuer(&ctx).await?;
    // ttl 1m, refreshBefore 50s: renewed about ten seconds after issue.
    create_grant(
        &ctx,
        "short",
        spec(
            &ctx,
            &issuer,
            "short.txt",
            serde_json::json!({"ttl": "1m", "refreshBefore": "50s"}),
        ),
    )
    .await?;
    create_grant(
        &ctx,
        "fresh",
        spec(&ctx, &issuer, "fresh.txt", serde_json::json!({"ttl": "1h"})),
    )
    .await?;
    let first = wait_ready(&ctx, "short").await?;
    let first_fp = fingerprint(&first).ok_or("no fingerprint")?;
    let first_url = secret_data(&ctx.client, &ctx.namespace, "short").await?["url"].clone();

    let renewed = wait_for_grant(&ctx, "short", "renewed", Duration::from_secs(60), |g| {
        fingerprint(g).is_some_and(|f| f != first_fp)
    })
    .await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "short").await?;
    assert_ne!(data["url"], first_url, "the Secret must hold the new URL");
    let status = renewed.status.clone().unwrap_or_default();
    let first_status = first.status.clone().unwrap_or_default();
    assert!(
        status.issued_at > first_status.issued_at && status.expires_at > first_status.expires_at
    );
    assert_eq!(
        data["expiresAt"],
        status
            .expires_at
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    );
    // Counted, not published: no Normal Event without --lifecycle-events.
    assert!(
        operator
            .metric(r#"upload_grant_issued_total{kind="renewed"}"#)
            .await?
            >= 1.0
    );
    let reasons = event_reasons(&ctx, "short").await?;
    assert!(
        !reasons.iter().any(|r| r == "Issued" || r == "Renewed"),
        "{reasons:?}"
    );
    let response = consume(&data, Some(b"renewed".to_vec())).await?;
    assert_eq!(response.status(), 200);

    // Restart with only fresh grants: nothing is signed or written.
    ctx.api::<UploadGrant>()
        .delete("short", &DeleteParams::default())
        .await?;
    wait_secret_gone(&ctx, "short").await?;
    support::eventually(
        "the deleted grant to go",
        Duration::from_secs(30),
        || async {
            Ok(ctx
                .api::<UploadGrant>()
                .get_opt("short")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    let fresh = wait_ready(&ctx, "fresh").await?;
    let secret_version = ctx.api::<Secret>().get("fresh").await?.resource_version();
    operator.stop().await?;
    let restarted = Operator::start(&ctx, dir.path(), OperatorOptions::default()).await?;
    // The gauge counts grants, not passes: once it shows "fresh" Issued, the
    // restarted operator has evaluated it (signing, if it were to, included).
    support::eventually(
        "the restarted operator to evaluate the fresh grant",
        Duration::from_secs(30),
        || async {
            Ok((restarted
                .metric(r#"upload_grant_grants{reason="Issued"}"#)
                .await?
                >= 1.0)
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        restarted
            .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
            .await?,
        0.0
    );
    assert_eq!(
        ctx.api::<Secret>().get("fresh").await?.resource_version(),
        secret_version,
        "the Secret was rewritten"
    );
    let after = ctx.api::<UploadGrant>().get("fresh").await?;
    assert_eq!(
        after.resource_version(),
        fresh.resource_version(),
        "the grant's status was rewritten"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_suspending_and_changing_a_grant_revoke_its_secret() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("revoke").await?;
    let issuer = open_issuer(&ctx).await?;
    let grants = ctx.api::<UploadGrant>();
    for name in ["deleted", "suspended", "changed"] {
        create_grant(
            &ctx,
            name,
            spec(&ctx, &issuer, &format!("{name}.txt"), serde_json::json!({})),
        )
        .await?;
    }

    wait_ready(&ctx, "deleted").await?;
    grants.delete("deleted", &DeleteParams::default()).await?;
    wait_secret_gone(&ctx, "deleted").await?;
    support::eventually("the grant to go", Duration::from_secs(30), || async {
        Ok(grants.get_opt("deleted").await?.is_none().then_some(()))
    })
    .await?;

    wait_ready(&ctx, "suspended").await?;
    patch_spec(&ctx, "suspended", serde_json::json!({"suspend": true})).await?;
    wait_reason(&ctx, "suspended", "Suspended").await?;
    wait_secret_gone(&ctx, "suspended").await?;
    wait_event(&ctx, "suspended", "Revoked").await?;
    patch_spec(&ctx, "suspended", serde_json::json!({"suspend": false})).await?;
    wait_ready(&ctx, "suspended").await?;
    assert!(ctx.api::<Secret>().get_opt("suspended").await?.is_some());

    let before = wait_ready(&ctx, "changed").await?;
    let new_key = format!("{}/changed-v2.txt", ctx.namespace);
    patch_spec(&ctx, "changed", serde_json::json!({"key": new_key})).await?;
    let after = wait_ready(&ctx, "changed").await?;
    assert_ne!(fingerprint(&after), fingerprint(&before));
    assert_eq!(
        secret_data(&ctx.client, &ctx.namespace, "changed").await?["key"],
        new_key
    );
    patch_spec(
        &ctx,
        "changed",
        serde_json::json!({"secret": {"name": "changed-renamed"}}),
    )
    .await?;
    let renamed = wait_ready(&ctx, "changed").await?;
    assert_eq!(
        renamed.status.and_then(|s| s.secret_name).as_deref(),
        Some("changed-renamed")
    );
    wait_secret_gone(&ctx, "changed").await?;
    assert!(
        ctx.api::<Secret>()
            .get_opt("changed-renamed")
            .await?
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn refresh_policy_never_and_not_after_remove_the_secret_at_expiry() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start("expire").await?;
    let issuer = open_issuer(&ctx).await?;
    let not_after = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(25);
    let not_after_text = not_after.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    create_grant(
        &ctx,
        "once",
        spec(
            &ctx,
            &issuer,
            "once.txt",
            serde_json::json!({"ttl": "1m", "refreshPolicy": "Never"}),
        ),
    )
    .await?;
    create_grant(
        &ctx,
        "until",
        spec(
            &ctx,
            &issuer,
            "until.txt",
            serde_json::json!({"ttl": "1h", "notAfter": not_after_text}),
        ),
    )
    .await?;

    let until = wait_ready(&ctx, "until").await?;
    let expires = until
        .status
        .and_then(|s| s.expires_at)
        .ok_or("no expiresAt")?;
    assert_eq!(
        expires.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        not_after_text,
        "notAfter caps the URL"
    );
    let once = wait_ready(&ctx, "once").await?;
    assert!(
        once.status.and_then(|s| s.refresh_at).is_none(),
        "a Never grant has no refresh time"
    );

    let expired = wait_reason(&ctx, "until", "Expired").await?;
    assert!(
        ready_message(&expired).contains("notAfter"),
        "{}",
        ready_message(&expired)
    );
    wait_secret_gone(&ctx, "until").await?;
    let expired = wait_for_grant(&ctx, "once", "Expired", Duration::from_secs(90), |g| {
        g.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Expired"))
    })
    .await?;
    assert!(expired.status.and_then(|s| s.secret_name).is_none());
    wait_secret_gone(&ctx, "once").await?;
    // Gone for good: a pass that still saw the Issued status could sign
    // the expired grant again right after its Secret went.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        ctx.api::<Secret>().get_opt("once").await?.is_none(),
        "the expired Never grant's Secret came back"
    );
    assert_eq!(
        operator
            .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
            .await?,
        2.0,
        "one URL per grant, none after expiry"
    );
    Ok(())
}

#[tokio::test]
async fn a_secret_the_grant_does_not_own_is_never_touched() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("conflict").await?;
    let issuer = open_issuer(&ctx).await?;
    let theirs: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "taken"}, "stringData": {"password": "hunter2"}
    }))?;
    let created = ctx
        .api::<Secret>()
        .create(&PostParams::default(), &theirs)
        .await?;
    create_grant(
        &ctx,
        "grabby",
        spec(
            &ctx,
            &issuer,
            "grabby.txt",
            serde_json::json!({"secret": {"name": "taken"}}),
        ),
    )
    .await?;
    let grant = wait_reason(&ctx, "grabby", "SecretConflict").await?;
    assert!(
        ready_message(&grant).contains("\"taken\""),
        "{}",
        ready_message(&grant)
    );
    wait_event(&ctx, "grabby", "Failed").await?;

    ctx.api::<UploadGrant>()
        .delete("grabby", &DeleteParams::default())
        .await?;
    support::eventually("the grant to go", Duration::from_secs(30), || async {
        Ok(ctx
            .api::<UploadGrant>()
            .get_opt("grabby")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let after = ctx.api::<Secret>().get("taken").await?;
    assert_eq!(
        after.resource_version(),
        created.resource_version(),
        "the foreign Secret was modified"
    );
    assert_eq!(
        secret_data(&ctx.client, &ctx.namespace, "taken").await?["password"],
        "hunter2"
    );
    Ok(())
}

/// Ordinary grants carry no finalizer: deleting one removes its Secret at
/// once while the operator runs, and garbage collection of the Secret's
/// ownerReference removes it while the operator is stopped. A grant that
/// still carries the finalizer from an older version is released on delete.
#[tokio::test]
async fn a_deleted_grant_loses_its_secret_with_or_without_the_operator() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        mut operator,
    } = Scenario::start("gone").await?;
    let issuer = open_issuer(&ctx).await?;
    let grants = ctx.api::<UploadGrant>();
    for name in ["running", "stopped"] {
        let spec = spec(&ctx, &issuer, &format!("{name}.txt"), serde_json::json!({}));
        create_grant(&ctx, name, spec).await?;
    }
    // As an older version left it: the finalizer set before any Secret.
    let legacy: UploadGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
        "metadata": {"name": "legacy", "namespace": ctx.namespace, "finalizers": [FINALIZER]},
        "spec": spec(&ctx, &issuer, "legacy.txt", serde_json::json!({})),
    }))?;
    grants.create(&PostParams::default(), &legacy).await?;
    for name in ["running", "stopped", "legacy"] {
        let grant = wait_ready(&ctx, name).await?;
        let owner = ctx
            .api::<Secret>()
            .get_metadata(name)
            .await?
            .metadata
            .owner_references
            .unwrap_or_default();
        assert!(
            owner
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == grant.uid().as_ref()),
            "{name}: the Secret's controller is its grant: {owner:?}"
        );
        let expected: &[&str] = if name == "legacy" { &[FINALIZER] } else { &[] };
        assert_eq!(grant.finalizers(), expected, "{name}");
    }

    grants.delete("running", &DeleteParams::default()).await?;
    wait_secret_gone_within(&ctx, "running", Duration::from_secs(10)).await?;
    wait_event(&ctx, "running", "Revoked").await?;

    grants.delete("legacy", &DeleteParams::default()).await?;
    wait_secret_gone_within(&ctx, "legacy", Duration::from_secs(10)).await?;
    support::eventually(
        "the legacy grant to be released",
        Duration::from_secs(30),
        || async { Ok(grants.get_opt("legacy").await?.is_none().then_some(())) },
    )
    .await?;
    // Both deleted grants are forgotten: one grant left to count.
    support::eventually(
        "the gauge to forget the deleted grants",
        Duration::from_secs(10),
        || async {
            let issued = operator
                .metric(r#"upload_grant_grants{reason="Issued"}"#)
                .await?;
            Ok((issued == 1.0).then_some(()))
        },
    )
    .await?;

    // With the operator stopped, kube-controller-manager's garbage
    // collector removes the Secret of the deleted grant.
    operator.stop().await?;
    grants.delete("stopped", &DeleteParams::default()).await?;
    wait_secret_gone_within(&ctx, "stopped", Duration::from_secs(30)).await?;
    Ok(())
}
