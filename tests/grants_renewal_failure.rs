//! When renewal fails, the still-valid Secret stays, the failure is reported
//! (condition and Warning event) and retried with backoff, and the grant
//! recovers once credentials come back.
//!
//! The operator gets its credentials the way EKS Pod Identity delivers them:
//! from a container-credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI),
//! here served by the test. It hands out real STS session credentials with a
//! short advertised expiry, and can be switched to fail.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult, eventually};

/// Seconds the served credentials claim to live: the operator keeps using a
/// snapshot only while more than two minutes are left, so a failing endpoint
/// shows within half a minute.
const ADVERTISED_LIFETIME: i64 = 150;

#[derive(Clone)]
struct Endpoint {
    failing: Arc<AtomicBool>,
    credentials: Arc<(String, String, String)>,
}

async fn serve_credentials(State(ep): State<Endpoint>) -> (StatusCode, String) {
    if ep.failing.load(Ordering::Relaxed) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "credentials endpoint down".into(),
        );
    }
    let expiration = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(ADVERTISED_LIFETIME);
    let (id, secret, token) = ep.credentials.as_ref();
    let body = serde_json::json!({
        "AccessKeyId": id, "SecretAccessKey": secret, "Token": token,
        "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    (StatusCode::OK, body.to_string())
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_valid_secret_reports_and_recovers() -> TestResult {
    let ctx = TestContext::new("renew-fail").await?;
    let endpoint = Endpoint {
        failing: Arc::default(),
        credentials: Arc::new(support::session_credentials(&ctx, "renewal-failure", None).await?),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let uri = format!("http://{}/credentials", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/credentials", get(serve_credentials))
        .with_state(endpoint.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let opts = OperatorOptions {
        without_irsa: true,
        env: vec![("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), uri)],
        ..Default::default()
    };
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start_in(ctx, opts).await?;
    let issuer = open_issuer(&ctx).await?;
    create_grant(
        &ctx,
        "flaky",
        spec(
            &ctx,
            &issuer,
            "flaky.txt",
            serde_json::json!({"ttl": "1m", "refreshBefore": "50s"}),
        ),
    )
    .await?;
    wait_ready(&ctx, "flaky").await?;

    endpoint.failing.store(true, Ordering::Relaxed);
    let failed = wait_for_grant(
        &ctx,
        "flaky",
        "CredentialsUnavailable",
        Duration::from_secs(90),
        |g| {
            g.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "CredentialsUnavailable")
            })
        },
    )
    .await?;
    let message = ready_message(&failed);
    assert!(message.contains("stays valid until"), "{message}");
    // The Secret is still there, with a URL that works.
    let data = secret_data(&ctx.client, &ctx.namespace, "flaky").await?;
    assert_eq!(
        consume(&data, Some(b"still valid".to_vec()))
            .await?
            .status(),
        200,
        "the kept URL must work"
    );
    wait_event(&ctx, "flaky", "Failed").await?;
    // Retried with backoff, not abandoned.
    eventually("a retry", Duration::from_secs(30), || async {
        let n = operator
            .metric(r#"upload_grant_reconcile_failures_total{category="credentials"}"#)
            .await?;
        Ok((n >= 2.0).then_some(()))
    })
    .await?;

    endpoint.failing.store(false, Ordering::Relaxed);
    let recovered = wait_ready(&ctx, "flaky").await?;
    assert_ne!(
        fingerprint(&recovered),
        fingerprint(&failed),
        "recovery signs a new URL"
    );
    let data = secret_data(&ctx.client, &ctx.namespace, "flaky").await?;
    assert_eq!(
        consume(&data, Some(b"renewed".to_vec())).await?.status(),
        200
    );
    Ok(())
}
