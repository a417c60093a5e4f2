//! Active-active replicas (`--sharding`) on the test apiserver, which runs
//! with `ShardedListAndWatch` on: three replicas split the 64 shards fairly
//! and each signs only its own grants, received through a watch the server
//! filters (not one foreign grant arrives); when one is killed, the others
//! take its shards within the lease duration and re-sign nothing; scaling
//! 2 → 5 → 2 moves shards with nothing lost, re-signed or rewritten. The
//! apiserver's audit log, one client certificate per replica, shows that no
//! grant or Secret was ever written by two replicas.
//!
//! The same checks run with the replicas not asking the server to filter
//! (`--shard-selector=false`): then every replica receives every grant, as
//! from an apiserver without the gate, and the split holds by the replicas'
//! own filter, which counts what it drops.
//!
//! Secrets are selected by their `grants.io/shard` label in both modes: no
//! replica receives another's Secret. Secrets written before the label are
//! labelled by the replica of their grant's shard, which then selects by
//! label, re-signing nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ListParams;
use support::chaos::{Groups, audited, kubeconfig};
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::{TestContext, TestResult, eventually};
use upload_grant_operator::api::UploadGrant;
use upload_grant_operator::api::secret::SHARD_LABEL;
use upload_grant_operator::shard::{self, Shards};

const LEASE_SECONDS: u64 = 6;
const SHARDS: u32 = 64;
const GRANTS: usize = 60;
const PREFIX: &str = "upload-grant-operator";

const SIGNED: &str = r#"upload_grant_signings_total{result="success",reason="ok"}"#;

/// A replica named `name`: its POD_NAME, its identity in the Leases and its
/// user in the audit log.
async fn replica(
    ctx: &TestContext,
    dir: &Path,
    name: &str,
    selector: bool,
) -> TestResult<Operator> {
    let server = ctx.env.var("TESTENV_APISERVER_URL");
    let config = kubeconfig(ctx.env, name, Groups::Masters, server, dir)?;
    let env = [
        ("UPLOAD_GRANT_SHARDING", "true"),
        ("UPLOAD_GRANT_SHARDS", &SHARDS.to_string()),
        ("UPLOAD_GRANT_LEASE_NAMESPACE", &ctx.namespace),
        ("UPLOAD_GRANT_LEASE_DURATION", &LEASE_SECONDS.to_string()),
        ("POD_NAME", name),
        ("KUBECONFIG", &config.display().to_string()),
        ("UPLOAD_GRANT_SHARD_SELECTOR", &selector.to_string()),
    ];
    Operator::start(ctx, dir, with_env(&env)).await
}

fn with_env(env: &[(&str, &str)]) -> OperatorOptions {
    OperatorOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

const FOREIGN_SECRETS: &str = r#"upload_grant_shard_foreign_objects_total{kind="Secret"}"#;

/// Whether every Secret in the namespace carries its grant's shard label.
async fn all_labelled(ctx: &TestContext) -> TestResult<bool> {
    let secrets = ctx.api::<Secret>().list(&ListParams::default()).await?;
    Ok(secrets.items.iter().all(|s| {
        let owner = s.owner_references().first().map(|o| o.uid.as_str());
        let label = s.labels().get(SHARD_LABEL).map(String::as_str);
        owner.is_some_and(|uid| label == Some(shard::label_value(uid).as_str()))
    }))
}

/// Creates the grant `name` (a PUT of the key `name`) and waits until it is
/// Ready; its uid.
async fn ready_grant(ctx: &TestContext, issuer: &str, name: &str) -> TestResult<String> {
    let grant = create_grant(ctx, name, spec(ctx, issuer, name, serde_json::json!({}))).await?;
    wait_ready(ctx, name).await?;
    Ok(grant.uid().unwrap_or_default())
}

/// Who holds each shard now, read from the Leases as a standby would: the
/// holder of a Lease renewed within its duration.
async fn holders(ctx: &TestContext) -> TestResult<BTreeMap<u32, String>> {
    let now = SystemTime::now();
    let mut out = BTreeMap::new();
    for lease in ctx.api::<Lease>().list(&ListParams::default()).await? {
        let name = lease.name_any();
        let Some(shard) = name
            .strip_prefix(&format!("{PREFIX}-shard-"))
            .and_then(|rest| rest.strip_suffix(&format!("-of-{SHARDS}")))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let spec = lease.spec.unwrap_or_default();
        let (Some(holder), Some(renewed), Some(secs)) = (
            spec.holder_identity.filter(|h| !h.is_empty()),
            spec.renew_time,
            spec.lease_duration_seconds,
        ) else {
            continue;
        };
        let until = SystemTime::from(renewed.0) + Duration::from_secs(secs as u64);
        if now < until {
            out.insert(shard, holder);
        }
    }
    Ok(out)
}

/// Waits until `live` hold every shard between them, each a fair share, and
/// each replica's gauge says what its Leases say.
async fn split_between(
    ctx: &TestContext,
    live: &BTreeMap<&str, &Operator>,
    timeout: Duration,
) -> TestResult<BTreeMap<u32, String>> {
    let n = live.len() as u32;
    eventually("a fair split", timeout, || async {
        let holders = holders(ctx).await?;
        let mut count: BTreeMap<&str, u32> = BTreeMap::new();
        for h in holders.values() {
            *count.entry(h.as_str()).or_default() += 1;
        }
        let fair = |c: u32| c == SHARDS / n || c == SHARDS / n + 1;
        let mut done = holders.len() == SHARDS as usize
            && count.len() == live.len()
            && live.keys().all(|r| count.get(r).is_some_and(|c| fair(*c)));
        for (name, op) in live {
            let gauge = op.metric("upload_grant_shards_held").await?;
            done &= gauge == f64::from(count.get(name).copied().unwrap_or(0));
        }
        Ok(done.then_some(holders))
    })
    .await
}

/// Sum of `sample` over `ops`.
async fn total(ops: &[&Operator], sample: &str) -> TestResult<f64> {
    let mut sum = 0.0;
    for op in ops {
        sum += op.metric(sample).await?;
    }
    Ok(sum)
}

/// Each grant's URL fingerprint and its Secret's resourceVersion.
async fn snapshot(ctx: &TestContext) -> TestResult<BTreeMap<String, (Option<String>, String)>> {
    let mut out = BTreeMap::new();
    for grant in ctx
        .api::<UploadGrant>()
        .list(&ListParams::default())
        .await?
    {
        let secret = ctx.api::<Secret>().get(&grant.name_any()).await?;
        let version = secret.resource_version().unwrap_or_default();
        out.insert(grant.name_any(), (fingerprint(&grant), version));
    }
    Ok(out)
}

/// Waits until the replicas `ops` have evaluated all `n` grants.
async fn all_evaluated(ops: &[&Operator], n: usize) -> TestResult {
    eventually("every grant evaluated", Duration::from_secs(60), || async {
        let issued = total(ops, r#"upload_grant_grants{reason="Issued"}"#).await?;
        Ok((issued >= n as f64).then_some(()))
    })
    .await
}

/// One run at a time: two would share the 2 cores and blur the takeover.
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn replicas_split_the_shards_and_take_over_without_writing_twice() -> TestResult {
    let _one = ONE_RUN.lock().await;
    split_and_take_over(true).await
}

#[tokio::test]
async fn without_the_servers_filter_the_replicas_split_all_the_same() -> TestResult {
    let _one = ONE_RUN.lock().await;
    split_and_take_over(false).await
}

async fn split_and_take_over(selector: bool) -> TestResult {
    let ctx = TestContext::new("replicas").await?;
    support::install_committed_crds(&ctx.client).await?;
    let issuer = open_issuer(&ctx).await?;
    let dir = tempfile::tempdir()?;
    let shards = Shards::new(SHARDS)?;

    let mut a = replica(&ctx, dir.path(), "replica-a", selector).await?;
    let b = replica(&ctx, dir.path(), "replica-b", selector).await?;
    let mut c = replica(&ctx, dir.path(), "replica-c", selector).await?;
    let three = BTreeMap::from([("replica-a", &a), ("replica-b", &b), ("replica-c", &c)]);
    let split = split_between(&ctx, &three, Duration::from_secs(60)).await?;

    // Each replica signs the grants of its shards, and no other reaches it.
    let mut uids = BTreeMap::new();
    for i in 0..GRANTS {
        let name = format!("g-{i}");
        let grant = create_grant(
            &ctx,
            &name,
            spec(&ctx, &issuer, &name, serde_json::json!({})),
        )
        .await?;
        uids.insert(name, grant.uid().unwrap_or_default());
    }
    for name in uids.keys() {
        wait_ready(&ctx, name).await?;
    }
    for (name, op) in &three {
        let mine = uids
            .values()
            .filter(|uid| split.get(&shards.of(uid)).map(String::as_str) == Some(*name))
            .count();
        assert!(mine > 0 && mine < GRANTS, "{name}: {mine} of {GRANTS}");
        assert_eq!(op.metric(SIGNED).await?, mine as f64, "{name} signed");
        let foreign = op
            .metric(r#"upload_grant_shard_foreign_objects_total{kind="UploadGrant"}"#)
            .await?;
        if selector {
            assert_eq!(
                foreign, 0.0,
                "{name}: the apiserver sent grants of other shards"
            );
        } else {
            // Each of the others' grants, at least once.
            assert!(
                foreign >= (GRANTS - mine) as f64,
                "{name}: dropped {foreign}"
            );
        }
        // It says so when the server does not filter, and only then.
        assert_eq!(
            op.logs().contains("it does not filter by shard"),
            !selector,
            "{name}: whether it says the server does not filter"
        );
        // Secrets are selected by label in either mode.
        assert_eq!(
            op.metric(FOREIGN_SECRETS).await?,
            0.0,
            "{name}: received Secrets of other shards"
        );
    }
    assert!(
        all_labelled(&ctx).await?,
        "a Secret without its shard label"
    );
    let signed = total(&[&a, &b, &c], SIGNED).await?;
    assert_eq!(signed, GRANTS as f64);
    let before = snapshot(&ctx).await?;
    let by_a = a.metric(SIGNED).await?;
    drop(three);

    // Killed: nothing released; the others wait out its Leases.
    a.kill()?;
    let killed = Instant::now();
    let two = BTreeMap::from([("replica-b", &b), ("replica-c", &c)]);
    split_between(&ctx, &two, Duration::from_secs(LEASE_SECONDS * 4)).await?;
    let took = killed.elapsed();
    eprintln!("takeover after SIGKILL of 1 of 3: {took:?} (lease {LEASE_SECONDS}s)");
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS + 3),
        "takeover took {took:?}, the lease is {LEASE_SECONDS}s"
    );
    all_evaluated(&[&b, &c], GRANTS).await?;
    assert_eq!(
        total(&[&b, &c], SIGNED).await?,
        signed - by_a,
        "a survivor re-signed"
    );
    assert_eq!(
        snapshot(&ctx).await?,
        before,
        "a URL or Secret changed on takeover"
    );

    // 2 → 5: the newcomers take their share from the holders' hands.
    let d = replica(&ctx, dir.path(), "replica-d", selector).await?;
    let mut e = replica(&ctx, dir.path(), "replica-e", selector).await?;
    let mut f = replica(&ctx, dir.path(), "replica-f", selector).await?;
    let five = BTreeMap::from([
        ("replica-b", &b),
        ("replica-c", &c),
        ("replica-d", &d),
        ("replica-e", &e),
        ("replica-f", &f),
    ]);
    split_between(&ctx, &five, Duration::from_secs(60)).await?;
    let live = [&b, &c, &d, &e, &f];
    all_evaluated(&live, GRANTS).await?;
    assert_eq!(
        total(&[&d, &e, &f], SIGNED).await?,
        0.0,
        "a newcomer re-signed"
    );
    assert_eq!(
        snapshot(&ctx).await?,
        before,
        "a URL or Secret changed on scale-up"
    );

    // 5 → 2 with SIGTERM: shards are released at once, not waited out.
    let stopped = Instant::now();
    for op in [&mut c, &mut e, &mut f] {
        op.stop().await?;
    }
    let two = BTreeMap::from([("replica-b", &b), ("replica-d", &d)]);
    split_between(&ctx, &two, Duration::from_secs(LEASE_SECONDS * 4)).await?;
    let took = stopped.elapsed();
    all_evaluated(&[&b, &d], GRANTS).await?;
    assert_eq!(
        snapshot(&ctx).await?,
        before,
        "a URL or Secret changed on scale-down"
    );

    // New grants are served by whoever holds their shard now.
    for i in 0..4 {
        ready_grant(&ctx, &issuer, &format!("late-{i}")).await?;
    }
    eprintln!("takeover after SIGTERM of 3 of 5: {took:?}");
    assert_eq!(total(&[&b, &d], FOREIGN_SECRETS).await?, 0.0);
    for (name, op) in [("b", &b), ("d", &d)] {
        let logs = op.logs();
        let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("\"WARN\"")).collect();
        eprintln!(
            "replica-{name}: {} warnings, e.g. {:?}",
            warnings.len(),
            warnings.first()
        );
    }

    no_object_written_by_two_replicas(&ctx, 2 * GRANTS)
}

/// Every grant and Secret in the namespace was written (created, patched,
/// updated or deleted, successfully) by one replica at most, and at least
/// `min` writes were.
fn no_object_written_by_two_replicas(ctx: &TestContext, min: usize) -> TestResult {
    let mut writers: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut writes = 0;
    for user in ["a", "b", "c", "d", "e", "f"].map(|r| format!("replica-{r}")) {
        for w in audited(ctx.env, &user)? {
            let ours = w.namespace == ctx.namespace
                && matches!(w.resource.as_str(), "secrets" | "uploadgrants");
            if ours && w.is_write() && (200..300).contains(&w.code) {
                writes += 1;
                writers
                    .entry((w.resource.clone(), w.name.clone()))
                    .or_default()
                    .insert(user.clone());
            }
        }
    }
    assert!(writes >= min, "only {writes} writes audited");
    let twice: Vec<_> = writers.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(twice.is_empty(), "written by two replicas: {twice:?}");
    Ok(())
}

/// A rolling update between the modes: a sharded replica started beside a
/// leader-elected one (the same lease name) takes no shard while the leader
/// leads, and takes every shard once the leader lets go, re-signing
/// nothing.
#[tokio::test]
async fn a_sharded_replica_stands_aside_while_a_leader_elected_one_leads() -> TestResult {
    let _one = ONE_RUN.lock().await;
    let ctx = TestContext::new("modes").await?;
    support::install_committed_crds(&ctx.client).await?;
    let issuer = open_issuer(&ctx).await?;
    let dir = tempfile::tempdir()?;
    let env = [
        ("UPLOAD_GRANT_LEADER_ELECT", "true"),
        ("UPLOAD_GRANT_LEASE_NAMESPACE", &ctx.namespace),
        ("UPLOAD_GRANT_LEASE_DURATION", &LEASE_SECONDS.to_string()),
        ("POD_NAME", "leader"),
    ];
    let mut leader = Operator::start(&ctx, dir.path(), with_env(&env)).await?;
    eventually("the leader to lead", Duration::from_secs(30), || async {
        Ok((leader.metric("upload_grant_leader").await? == 1.0).then_some(()))
    })
    .await?;
    let sharded = replica(&ctx, dir.path(), "replica-s", true).await?;
    ready_grant(&ctx, &issuer, "g").await?;
    // Rounds of its lease loop have run once it renewed its own Lease
    // twice: each round looks at the leader Lease before taking a shard.
    let own = format!("{PREFIX}-replica-replica-s-of-{SHARDS}");
    let renewed = || async {
        let lease = ctx.api::<Lease>().get_opt(&own).await?;
        TestResult::Ok(lease.and_then(|l| l.spec?.renew_time))
    };
    let first = eventually("its replica Lease", Duration::from_secs(30), || async {
        renewed().await
    })
    .await?;
    for _ in 0..2 {
        let seen = renewed().await?;
        eventually(
            "a renewal",
            Duration::from_secs(LEASE_SECONDS * 2),
            || async { Ok((renewed().await? > seen).then_some(())) },
        )
        .await?;
    }
    assert!(renewed().await? > Some(first));
    assert!(
        holders(&ctx).await?.is_empty(),
        "a shard taken beside the leader"
    );
    assert_eq!(sharded.metric("upload_grant_shards_held").await?, 0.0);
    assert_eq!(sharded.metric(SIGNED).await?, 0.0);
    let before = snapshot(&ctx).await?;

    leader.stop().await?;
    let one = BTreeMap::from([("replica-s", &sharded)]);
    split_between(&ctx, &one, Duration::from_secs(LEASE_SECONDS * 4)).await?;
    all_evaluated(&[&sharded], 1).await?;
    assert_eq!(
        sharded.metric(SIGNED).await?,
        0.0,
        "re-signed on the switch"
    );
    assert_eq!(snapshot(&ctx).await?, before);
    Ok(())
}

/// An upgrade from a version that wrote Secrets without the shard label:
/// two replicas each label their own grants' Secrets (and no other), then
/// select by label, so neither receives the other's new Secrets. Nothing is
/// re-signed.
#[tokio::test]
async fn secrets_without_the_shard_label_are_labelled_then_selected() -> TestResult {
    const OLD: usize = 16;
    let _one = ONE_RUN.lock().await;
    let ctx = TestContext::new("relabel").await?;
    support::install_committed_crds(&ctx.client).await?;
    let issuer = open_issuer(&ctx).await?;
    let dir = tempfile::tempdir()?;
    let mut old = replica(&ctx, dir.path(), "replica-old", true).await?;
    for i in 0..OLD {
        ready_grant(&ctx, &issuer, &format!("old-{i}")).await?;
    }
    old.stop().await?;
    // As the older version left them.
    let unlabel: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "remove", "path": "/metadata/labels/grants.io~1shard"}
    ]))?;
    for secret in ctx.api::<Secret>().list(&ListParams::default()).await? {
        let patch = kube::api::Patch::<()>::Json(unlabel.clone());
        ctx.api::<Secret>()
            .patch(&secret.name_any(), &Default::default(), &patch)
            .await?;
    }
    assert!(!all_labelled(&ctx).await?);
    let fingerprints = |snap: BTreeMap<String, (Option<String>, String)>| -> BTreeMap<_, _> {
        snap.into_iter().map(|(k, (f, _))| (k, f)).collect()
    };
    let before = fingerprints(snapshot(&ctx).await?);

    let a = replica(&ctx, dir.path(), "replica-a", true).await?;
    let b = replica(&ctx, dir.path(), "replica-b", true).await?;
    let two = BTreeMap::from([("replica-a", &a), ("replica-b", &b)]);
    let split = split_between(&ctx, &two, Duration::from_secs(60)).await?;
    let selecting = "its Secret watch selects by it from now on";
    eventually(
        "labelled, then selected by label",
        Duration::from_secs(60),
        || async {
            let done = all_labelled(&ctx).await?
                && a.logs().contains(selecting)
                && b.logs().contains(selecting);
            Ok(done.then_some(()))
        },
    )
    .await?;
    all_evaluated(&[&a, &b], OLD).await?;
    assert_eq!(total(&[&a, &b], SIGNED).await?, 0.0, "re-signed");
    assert_eq!(fingerprints(snapshot(&ctx).await?), before);

    // New grants on both sides: neither watch receives the other's Secret.
    let foreign = total(&[&a, &b], FOREIGN_SECRETS).await?;
    let mut sides = BTreeSet::new();
    for i in 0.. {
        if sides.len() == 2 || i == 40 {
            break;
        }
        let uid = ready_grant(&ctx, &issuer, &format!("new-{i}")).await?;
        sides.extend(split.get(&Shards::new(SHARDS)?.of(&uid)).cloned());
    }
    assert_eq!(sides.len(), 2, "new grants on one side only");
    assert!(all_labelled(&ctx).await?);
    assert_eq!(
        total(&[&a, &b], FOREIGN_SECRETS).await?,
        foreign,
        "a replica received the other's Secret after labelling"
    );
    no_object_written_by_two_replicas(&ctx, OLD)
}
