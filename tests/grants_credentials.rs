//! URLs signed with IRSA session credentials live no longer than the session,
//! and many grants share one credential snapshot.

mod support;

use support::TestResult;
use support::grants::*;

#[tokio::test]
async fn a_url_never_outlives_the_session_that_signed_it() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start("session").await?;
    let issuer = open_issuer(&ctx).await?;

    // The testenv STS hands out one-hour sessions; the grant asks for two.
    create_grant(&ctx, "long", serde_json::json!({
        "issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": format!("{}/long.bin", ctx.namespace), "ttl": "2h",
    }))
    .await?;
    let grant = wait_ready(&ctx, "long").await?;
    let status = grant.status.unwrap_or_default();
    let issued = status.issued_at.ok_or("issuedAt")?.0;
    let expires = status.expires_at.ok_or("expiresAt")?.0;
    let credentials_expiry = operator
        .metric("upload_grant_credentials_expiry_timestamp_seconds")
        .await?;
    assert!(
        credentials_expiry > 0.0,
        "the operator reports its session's expiry"
    );
    let lifetime = expires.duration_since(issued).as_secs();
    assert!(
        lifetime < 2 * 3600,
        "expiresAt must be capped below the 2h ttl, got {lifetime}s"
    );
    assert!(
        (expires.as_second() as f64) <= credentials_expiry - 60.0,
        "expiresAt {expires} is past the session end {credentials_expiry}"
    );
    assert!(
        lifetime > 30 * 60,
        "a fresh session leaves at least half an hour, got {lifetime}s"
    );
    let refresh = status.refresh_at.ok_or("refreshAt")?.0;
    assert!(refresh < expires && refresh > issued);

    let data = secret_data(&ctx.client, &ctx.namespace, "long").await?;
    assert!(
        data["url"].contains(&format!("X-Amz-Expires={lifetime}")),
        "the URL carries the capped lifetime"
    );
    assert!(
        data["url"].contains("X-Amz-Security-Token="),
        "signed with session credentials"
    );
    assert_eq!(
        consume(&data, Some(b"within the session".to_vec()))
            .await?
            .status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn many_grants_cost_one_sts_call() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start("snapshot").await?;
    let issuer = open_issuer(&ctx).await?;
    for i in 0..25 {
        create_grant(&ctx, &format!("g{i}"), serde_json::json!({
            "issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": format!("{}/{i}.bin", ctx.namespace),
        }))
        .await?;
    }
    for i in 0..25 {
        wait_ready(&ctx, &format!("g{i}")).await?;
    }
    let signed = operator
        .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
        .await?;
    assert_eq!(signed, 25.0);
    assert_eq!(
        operator.metric("upload_grant_credential_loads").await?,
        1.0,
        "one STS call for all grants"
    );
    Ok(())
}
