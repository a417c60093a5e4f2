//! Benchmarks, run by `make bench` (they are #[ignore]d in `make test`). Each
//! figure is measured next to its baseline in the same run and written to
//! bench/results/latest.md. See bench/README.md for what each one measures.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::{TestContext, TestResult, eventually};
use upload_grant_operator::api::{Method, S3Target, UploadGrant};
use upload_grant_operator::signing::{Presigner, SignInput};

/// First time each Secret name in a namespace was seen, from a watch.
fn watch_secret_arrivals(ctx: &TestContext) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sink = seen.clone();
    let api: Api<Secret> = ctx.api();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).applied_objects();
        let _ = stream
            .try_for_each(|s| {
                sink.lock()
                    .expect("lock")
                    .entry(s.name_any())
                    .or_insert_with(Instant::now);
                futures::future::ready(Ok(()))
            })
            .await;
    });
    seen
}

async fn wait_arrivals(
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
    prefix: &str,
    n: usize,
    timeout: Duration,
) -> TestResult {
    eventually(&format!("{n} Secrets {prefix}*"), timeout, || async {
        let count = seen
            .lock()
            .expect("lock")
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count();
        Ok((count >= n).then_some(()))
    })
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Creates `n` objects with `concurrency` in flight; returns each start time.
async fn create_many<F, Fut>(
    n: usize,
    concurrency: usize,
    make: F,
) -> TestResult<Vec<(String, Instant)>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let starts = futures::stream::iter((0..n).map(|i| {
        let name = format!("{i:05}");
        let fut = make(name.clone());
        async move {
            let t = Instant::now();
            fut.await.map(|_| (name, t))
        }
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<_>>()
    .await?;
    Ok(starts)
}

fn latencies(
    starts: &[(String, Instant)],
    prefix: &str,
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
) -> Vec<Duration> {
    let seen = seen.lock().expect("lock");
    let mut l: Vec<Duration> = starts
        .iter()
        .filter_map(|(name, t)| {
            seen.get(&format!("{prefix}{name}"))
                .map(|s| s.saturating_duration_since(*t))
        })
        .collect();
    l.sort();
    l
}

fn secret(name: &str, bytes: usize) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "blob".to_owned(),
        k8s_openapi::ByteString(vec![b'x'; bytes]),
    );
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Signing on one core: the operator's path against boto3.
fn signing(rows: &mut Vec<String>) -> TestResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let presigner = Presigner::new(
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build(),
    );
    let target = S3Target {
        region: "us-east-1".into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        force_path_style: true,
    };
    let creds = aws_credential_types::Credentials::new(
        "AKIDBENCHMARK",
        "benchmark-secret",
        Some("benchmark-session-token".into()),
        None,
        "bench",
    );
    let ours = rt.block_on(async {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(5) {
            let input = SignInput {
                bucket: "bench-bucket",
                key: "analytics/report.csv",
                method: Method::Put,
                content_type: Some("text/csv"),
                content_length: Some(1024),
                metadata: None,
                sse: None,
                signed_at: SystemTime::now(),
                expires_in: Duration::from_secs(3600),
            };
            presigner
                .presign(&target, &creds, &input)
                .await
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok::<f64, String>(n as f64 / start.elapsed().as_secs_f64())
    })?;
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(support::repo_root().join("bench/boto3_sign.py"))
        .args([
            "http://127.0.0.1:9000",
            "bench-bucket",
            "analytics/report.csv",
            "5",
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "boto3 baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let boto3: f64 = serde_json::from_slice::<serde_json::Value>(&out.stdout)?["urls_per_second"]
        .as_f64()
        .ok_or("no rate")?;
    rows.push(format!(
        "| Signing, one core | {ours:.0} URLs/s | boto3 `generate_presigned_url`: {boto3:.0} URLs/s | ≥10× boto3 and ≥50,000/s | {:.1}× boto3; {} |",
        ours / boto3,
        if ours >= 50_000.0 && ours >= 10.0 * boto3 { "met" } else if ours >= 10.0 * boto3 { "10× met, 50,000/s not met" } else { "not met" }
    ));
    Ok(())
}

#[test]
#[ignore = "benchmark: run with make bench"]
fn benchmarks() -> TestResult {
    let mut rows = vec![
        "| What | Operator | Baseline (same run) | Target | Result |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    signing(&mut rows)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(cluster_benchmarks(&mut rows))?;
    let table = format!(
        "# Benchmark results\n\nMeasured by `make bench` on {} ({} cores). How each figure is measured: bench/README.md.\n\n{}\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        rows.join("\n")
    );
    std::fs::write(support::repo_root().join("bench/results/latest.md"), &table)?;
    println!("{table}");
    Ok(())
}

async fn cluster_benchmarks(rows: &mut Vec<String>) -> TestResult {
    const CONCURRENCY: usize = 16;
    let Scenario {
        ctx,
        dir,
        mut operator,
    } = Scenario::start("bench").await?;
    let issuer = open_issuer(&ctx).await?;
    let direct = TestContext::new("bench-direct").await?;
    let seen = watch_secret_arrivals(&ctx);
    let seen_direct = watch_secret_arrivals(&direct);
    let grant_spec = |name: &str| {
        spec(
            &ctx,
            &issuer,
            &format!("{name}.bin"),
            serde_json::json!({"ttl": "6h"}),
        )
    };

    // 2. Apply-to-ready latency over 1,000 grants vs 1,000 direct Secrets.
    let starts = create_many(1000, CONCURRENCY, |n| {
        let (ctx, spec) = (&ctx, grant_spec(&format!("lat-{n}")));
        async move {
            create_grant(ctx, &format!("lat-{n}"), spec)
                .await
                .map(|_| ())
        }
    })
    .await?;
    wait_arrivals(&seen, "lat-", 1000, Duration::from_secs(300)).await?;
    let direct_api: Api<Secret> = direct.api();
    let direct_starts = create_many(1000, CONCURRENCY, |n| {
        let api = direct_api.clone();
        async move {
            api.create(&PostParams::default(), &secret(&format!("lat-{n}"), 512))
                .await
                .map(|_| ())
                .map_err(Into::into)
        }
    })
    .await?;
    wait_arrivals(&seen_direct, "lat-", 1000, Duration::from_secs(120)).await?;
    let (ours, base) = (
        latencies(&starts, "lat-", &seen),
        latencies(&direct_starts, "lat-", &seen_direct),
    );
    let (p50, p99, b50, b99) = (
        percentile(&ours, 0.5),
        percentile(&ours, 0.99),
        percentile(&base, 0.5),
        percentile(&base, 0.99),
    );
    rows.push(format!(
        "| Apply to readable Secret, 1,000 at concurrency {CONCURRENCY} | p50 {:.0} ms, p99 {:.0} ms | direct Secret create: p50 {:.0} ms, p99 {:.0} ms | p99 ≤ 3× direct | {:.1}× ({}) |",
        p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, b50.as_secs_f64() * 1e3, b99.as_secs_f64() * 1e3,
        p99.as_secs_f64() / b99.as_secs_f64(), if p99 <= b99 * 3 { "met" } else { "not met" }
    ));

    // 3. Throughput: 5,000 at once until all Ready, vs 5,000 direct Secrets.
    let t = Instant::now();
    create_many(5000, 64, |n| {
        let (ctx, spec) = (&ctx, grant_spec(&format!("tp-{n}")));
        async move {
            create_grant(ctx, &format!("tp-{n}"), spec)
                .await
                .map(|_| ())
        }
    })
    .await?;
    wait_arrivals(&seen, "tp-", 5000, Duration::from_secs(900)).await?;
    let ours = 5000.0 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    create_many(5000, 64, |n| {
        let api = direct_api.clone();
        async move {
            api.create(&PostParams::default(), &secret(&format!("tp-{n}"), 512))
                .await
                .map(|_| ())
                .map_err(Into::into)
        }
    })
    .await?;
    wait_arrivals(&seen_direct, "tp-", 5000, Duration::from_secs(300)).await?;
    let base = 5000.0 / t.elapsed().as_secs_f64();
    rows.push(format!(
        "| Throughput, 5,000 created at once (64 in flight) | {ours:.0} grants/s to a readable Secret | direct Secret create: {base:.0}/s | ≥ half of direct | {:.2}× ({}) |",
        ours / base, if ours >= base / 2.0 { "met" } else { "not met" }
    ));

    // 4. Memory with 10,000 Ready grants, then 10,000 unrelated 64 KiB Secrets.
    create_many(4000, 64, |n| {
        let (ctx, spec) = (&ctx, grant_spec(&format!("mem-{n}")));
        async move {
            create_grant(ctx, &format!("mem-{n}"), spec)
                .await
                .map(|_| ())
        }
    })
    .await?;
    wait_arrivals(&seen, "mem-", 4000, Duration::from_secs(900)).await?;
    let (peak, rss) = operator.memory_kib()?;
    let unrelated: Api<Secret> = ctx.api();
    create_many(10_000, 64, |n| {
        let api = unrelated.clone();
        async move {
            api.create(
                &PostParams::default(),
                &secret(&format!("unrelated-{n}"), 64 * 1024),
            )
            .await
            .map(|_| ())
            .map_err(Into::into)
        }
    })
    .await?;
    let (peak_after, rss_after) = operator.memory_kib()?;
    rows.push(format!(
        "| Memory, 10,000 Ready grants | peak {:.1} MiB, current {:.1} MiB | — | < 64 MiB | {} |",
        peak as f64 / 1024.0,
        rss as f64 / 1024.0,
        if peak < 64 * 1024 { "met" } else { "not met" }
    ));
    rows.push(format!(
        "| Memory, + 10,000 unrelated 64 KiB Secrets | peak {:.1} MiB (+{:.1} MiB), current {:.1} MiB | same operator before them | adds < 5 MiB | {} |",
        peak_after as f64 / 1024.0, (peak_after as f64 - peak as f64) / 1024.0, rss_after as f64 / 1024.0,
        if peak_after.saturating_sub(peak) < 5 * 1024 { "met" } else { "not met" }
    ));

    // 5. Restart with 10,000 Ready grants: time to ready and idle, writes and signatures.
    let versions = |ctx: &TestContext| {
        let (grants, secrets) = (ctx.api::<UploadGrant>(), ctx.api::<Secret>());
        async move {
            let mut v: BTreeMap<String, String> = BTreeMap::new();
            for g in grants.list(&ListParams::default()).await?.items {
                v.insert(
                    format!("ug/{}", g.name_any()),
                    g.resource_version().unwrap_or_default(),
                );
            }
            for s in secrets
                .list(
                    &ListParams::default()
                        .labels("app.kubernetes.io/managed-by=upload-grant-operator"),
                )
                .await?
                .items
            {
                v.insert(
                    format!("secret/{}", s.name_any()),
                    s.resource_version().unwrap_or_default(),
                );
            }
            TestResult::Ok(v)
        }
    };
    let before = versions(&ctx).await?;
    operator.stop()?;
    let t = Instant::now();
    let restarted = Operator::start(&ctx, dir.path(), OperatorOptions::default()).await?;
    let ready = t.elapsed();
    eventually(
        "the restarted operator to reconcile all 10,000",
        Duration::from_secs(600),
        || async {
            Ok((restarted
                .metric("upload_grant_reconcile_duration_seconds_count")
                .await?
                >= 10_000.0)
                .then_some(()))
        },
    )
    .await?;
    let idle = t.elapsed();
    let signed = restarted
        .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
        .await?;
    let after = versions(&ctx).await?;
    let writes = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    rows.push(format!(
        "| Restart with 10,000 Ready grants | ready in {:.1} s, all reconciled in {:.1} s; {writes} writes, {signed:.0} signatures | — | 0 writes, 0 signatures | {} |",
        ready.as_secs_f64(), idle.as_secs_f64(), if writes == 0 && signed == 0.0 { "met" } else { "not met" }
    ));
    rows.push("| Renewal storm, 5,000 in one minute | not measured yet | — | all renewed before expiry, bounded request rate | not measured |".to_owned());
    Ok(())
}
