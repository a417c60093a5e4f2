//! Two replicas: exactly one leads and writes; when it is killed the other
//! takes over within the lease duration, re-signs nothing fresh and loses no
//! Secret; SIGTERM releases the lease.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::{TestContext, TestResult, eventually};

const LEASE_SECONDS: u64 = 6;

async fn is_leader(op: &Operator) -> TestResult<bool> {
    Ok(op.metric("upload_grant_leader").await? == 1.0)
}

#[tokio::test]
async fn one_leader_writes_and_a_standby_takes_over_when_it_dies() -> TestResult {
    let ctx = TestContext::new("leader").await?;
    support::install_committed_crds(&ctx.client).await?;
    let issuer = open_issuer(&ctx).await?;
    let dir = tempfile::tempdir()?;
    let opts = OperatorOptions {
        env: vec![
            ("UPLOAD_GRANT_LEADER_ELECT".into(), "true".into()),
            ("UPLOAD_GRANT_LEASE_NAMESPACE".into(), ctx.namespace.clone()),
            (
                "UPLOAD_GRANT_LEASE_DURATION".into(),
                LEASE_SECONDS.to_string(),
            ),
        ],
        ..Default::default()
    };
    let a = Operator::start(&ctx, dir.path(), opts.clone()).await?;
    let b = Operator::start(&ctx, dir.path(), opts).await?;
    let first_is_a = eventually("a leader", Duration::from_secs(30), || async {
        let (la, lb) = (is_leader(&a).await?, is_leader(&b).await?);
        assert!(!(la && lb), "two leaders at once");
        Ok((la || lb).then_some(la))
    })
    .await?;
    let (mut leader, standby) = if first_is_a { (a, b) } else { (b, a) };

    let names = ["one", "two", "three"];
    for name in names {
        create_grant(
            &ctx,
            name,
            spec(&ctx, &issuer, &format!("{name}.txt"), serde_json::json!({})),
        )
        .await?;
    }
    let mut before = Vec::new();
    for name in names {
        let grant = wait_ready(&ctx, name).await?;
        let secret = ctx.api::<Secret>().get(name).await?;
        before.push((fingerprint(&grant), secret.resource_version()));
    }
    assert!(!is_leader(&standby).await?);
    let healthz = support::http()
        .get(format!("http://{}/healthz", standby.metrics_addr))
        .send()
        .await?;
    assert_eq!(healthz.status(), 200, "a standby is alive");
    assert_eq!(
        standby
            .metric("upload_grant_reconcile_duration_seconds_count")
            .await?,
        0.0,
        "the standby reconciled"
    );
    assert_eq!(
        standby
            .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
            .await?,
        0.0
    );
    assert_eq!(
        leader
            .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
            .await?,
        3.0
    );

    // Kill the leader: nothing is released, the standby waits out the lease.
    leader.kill()?;
    let killed = Instant::now();
    eventually(
        "the standby to take over",
        Duration::from_secs(LEASE_SECONDS * 3),
        || async { Ok(is_leader(&standby).await?.then_some(())) },
    )
    .await?;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS + 3),
        "takeover took {took:?}, lease is {LEASE_SECONDS}s"
    );

    // The gauge counts grants, not passes (several passes of one grant
    // would satisfy a count of reconciles).
    eventually(
        "the new leader to evaluate every grant",
        Duration::from_secs(30),
        || async {
            Ok((standby
                .metric(r#"upload_grant_grants{reason="Issued"}"#)
                .await?
                >= names.len() as f64)
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        standby
            .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
            .await?,
        0.0,
        "failover re-signed fresh URLs"
    );
    for (name, (fp, version)) in names.iter().zip(before) {
        let grant = ctx
            .api::<upload_grant_operator::api::UploadGrant>()
            .get(name)
            .await?;
        assert_eq!(fingerprint(&grant), fp, "{name}: URL changed");
        assert_eq!(
            ctx.api::<Secret>().get(name).await?.resource_version(),
            version,
            "{name}: Secret rewritten"
        );
    }

    // SIGTERM: a clean exit that gives the lease up at once.
    let mut standby = standby;
    let status = standby.stop().await?;
    assert!(status.success(), "exit status {status}");
    let lease = ctx.api::<Lease>().get("upload-grant-operator").await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.is_empty(), "lease still held by {holder:?}");
    Ok(())
}
