//! Renew-now (`grants.io/renew-requested-at`) and rollout restarts of the
//! workloads that read a grant's URL from environment variables.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::rollout::*;
use support::{TestContext, TestResult};
use upload_grant_operator::controller::rollout::{RESTARTED_AT_ANNOTATION, url_annotation};

const DEBOUNCE: Duration = Duration::from_secs(20);
const SIGNED: &str = r#"upload_grant_signings_total{result="success",reason="ok"}"#;

fn restarts_on() -> OperatorOptions {
    OperatorOptions {
        env: vec![
            ("UPLOAD_GRANT_ROLLOUT_RESTARTS".into(), "true".into()),
            (
                "UPLOAD_GRANT_ROLLOUT_RESTART_DEBOUNCE".into(),
                format!("{}s", DEBOUNCE.as_secs()),
            ),
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn renew_now_renews_once_and_each_new_url_restarts_env_consumers_once() -> TestResult {
    let ctx = TestContext::new("rollout").await?;
    let Scenario {
        ctx,
        dir,
        mut operator,
    } = Scenario::start_in(ctx, restarts_on().with_lifecycle_events()).await?;
    let issuer = open_issuer(&ctx).await?;
    create_deployment(&ctx, "uploader", Some("env")).await?;
    let targets = serde_json::json!({"ttl": "1h", "secret": {
        "rolloutRestartTargets": [{"kind": "Deployment", "name": "uploader"}]}});
    create_grant(&ctx, "env", spec(&ctx, &issuer, "env.txt", targets)).await?;
    let first = fingerprint(&wait_ready(&ctx, "env").await?).ok_or("no fingerprint")?;
    wait_event(&ctx, "env", "Issued").await?;
    settle(&ctx, &operator, "env", 0).await?;
    let (generation, annotations) = template(&ctx, "uploader").await?;
    assert_eq!(generation, 1, "a grant's first URL restarts nothing");
    assert!(!annotations.contains_key(&url_annotation("env")));
    let signed = operator.metric(SIGNED).await?;

    // Renew now: exactly one new URL, and one restart for it.
    request_renewal(&ctx, "env", "2026-12-02T03:00:00.000000001Z").await?;
    let second = wait_answered(&ctx, "env", "2026-12-02T03:00:00.000000001Z").await?;
    assert_ne!(second, first, "renew-now must put a new URL in the Secret");
    let restarted =
        wait_restarted_for(&ctx, "uploader", "env", &second, Duration::from_secs(30)).await?;
    assert_eq!(restarted.0, 2, "one restart, one new pod template");
    settle(&ctx, &operator, "env", 1).await?;
    assert_eq!(
        operator.metric(SIGNED).await?,
        signed + 1.0,
        "one renewal per request"
    );
    assert_eq!(template(&ctx, "uploader").await?.0, 2, "no second restart");
    let secret = ctx.api::<Secret>().get_metadata("env").await?;
    let fp = secret.metadata.annotations.unwrap_or_default();
    assert_eq!(fp.get("grants.io/url-fingerprint"), Some(&second));
    wait_event(&ctx, "env", "Renewed").await?;
    wait_event(&ctx, "env", "RolloutRestarted").await?;

    // A second request inside the debounce window: the URL is renewed at
    // once, the restart waits for the window to end.
    request_renewal(&ctx, "env", "2026-12-02T03:00:01Z").await?;
    let third = wait_answered(&ctx, "env", "2026-12-02T03:00:01Z").await?;
    assert_ne!(third, second);
    settle(&ctx, &operator, "env", 2).await?;
    let (generation, held) = template(&ctx, "uploader").await?;
    let first_restart = held
        .get(RESTARTED_AT_ANNOTATION)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .ok_or("no restartedAt")?;
    if jiff::Timestamp::now() < first_restart + DEBOUNCE {
        assert_eq!(generation, 2, "no second restart inside the window");
    }
    let window = DEBOUNCE + Duration::from_secs(30);
    let (generation, annotations) =
        wait_restarted_for(&ctx, "uploader", "env", &third, window).await?;
    assert_eq!(generation, 3);
    let second_restart = annotations
        .get(RESTARTED_AT_ANNOTATION)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .ok_or("no restartedAt")?;
    assert!(
        second_restart >= first_restart + DEBOUNCE,
        "restarts {first_restart} and {second_restart} are closer than the window"
    );

    // An operator restart re-signs nothing and restarts nothing.
    operator.stop().await?;
    let operator = Operator::start(&ctx, dir.path(), restarts_on().with_lifecycle_events()).await?;
    settle(&ctx, &operator, "env", 3).await?;
    assert_eq!(operator.metric(SIGNED).await?, 0.0);
    assert_eq!(template(&ctx, "uploader").await?.0, 3);
    let renewed = event_reasons(&ctx, "env").await?;
    let count = |r: &str| renewed.iter().filter(|x| *x == r).count();
    assert_eq!((count("Renewed"), count("RolloutRestarted")), (2, 2));
    Ok(())
}

#[tokio::test]
async fn a_grant_without_targets_is_renewed_on_request_and_restarts_nothing() -> TestResult {
    let Scenario { ctx, operator, .. } =
        Scenario::start_in(TestContext::new("renew-now").await?, restarts_on()).await?;
    let issuer = open_issuer(&ctx).await?;
    create_deployment(&ctx, "bystander", Some("*")).await?;
    let never = serde_json::json!({"ttl": "1h", "refreshPolicy": "Never"});
    create_grant(&ctx, "once", spec(&ctx, &issuer, "once.txt", never)).await?;
    let first = fingerprint(&wait_ready(&ctx, "once").await?).ok_or("no fingerprint")?;
    // Even a URL that is never renewed on its own is renewed on request.
    request_renewal(&ctx, "once", "r1").await?;
    let second = wait_answered(&ctx, "once", "r1").await?;
    assert_ne!(first, second);
    let grant = wait_for_grant(
        &ctx,
        "once",
        "status to show the new URL",
        Duration::from_secs(30),
        |g| fingerprint(g).as_deref() == Some(second.as_str()),
    )
    .await?;
    assert!(
        ready_message(&grant).contains("not renewed"),
        "{}",
        ready_message(&grant)
    );
    settle(&ctx, &operator, "once", 0).await?;
    assert_eq!(template(&ctx, "bystander").await?.0, 1);
    Ok(())
}
