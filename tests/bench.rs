//! Benchmarks, run by `make bench` (they are #[ignore]d in `make test`). Each
//! figure is measured next to its baseline in the same run and written to
//! bench/results/latest.md. See bench/README.md for what each one measures.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::{RequestSampler, TestContext, TestResult, apiserver_requests, eventually};
use upload_grant_operator::api::{Method, S3Target, UploadGrant};
use upload_grant_operator::signing::{Presigner, SignInput};

/// One version of a Secret as a watch saw it: when, and what its grant
/// annotations said.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    wall: jiff::Timestamp,
    fingerprint: Option<String>,
    expires_at: Option<jiff::Timestamp>,
    refresh_at: Option<jiff::Timestamp>,
}

/// Every Secret in a namespace as a watch sees it: the first sighting of each
/// name, and each change of its URL fingerprint. Waiters are woken by the
/// watch itself, so a measured latency carries no polling delay.
struct Arrivals {
    versions: Mutex<HashMap<String, Vec<Seen>>>,
    tick: tokio::sync::watch::Sender<u64>,
}

impl Arrivals {
    fn watch(ctx: &TestContext) -> Arc<Arrivals> {
        let arrivals = Arc::new(Arrivals {
            versions: Mutex::default(),
            tick: tokio::sync::watch::channel(0).0,
        });
        let sink = arrivals.clone();
        let api: Api<Secret> = ctx.api();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let _ = stream
                .try_for_each(|s| {
                    sink.record(&s);
                    futures::future::ready(Ok(()))
                })
                .await;
        });
        arrivals
    }

    fn record(&self, secret: &Secret) {
        let annotation = |k: &str| secret.annotations().get(k).cloned();
        let time = |k: &str| annotation(k).and_then(|v| v.parse().ok());
        let seen = Seen {
            at: Instant::now(),
            wall: jiff::Timestamp::now(),
            fingerprint: annotation("grants.io/url-fingerprint"),
            expires_at: time("grants.io/expires-at"),
            refresh_at: time("grants.io/refresh-at"),
        };
        let mut versions = self.versions.lock().expect("lock");
        let list = versions.entry(secret.name_any()).or_default();
        if list
            .last()
            .is_none_or(|last| last.fingerprint != seen.fingerprint)
        {
            list.push(seen);
            drop(versions);
            self.tick.send_modify(|n| *n += 1);
        }
    }

    fn get(&self, name: &str) -> Vec<Seen> {
        let versions = self.versions.lock().expect("lock");
        versions.get(name).cloned().unwrap_or_default()
    }

    /// Waits until `done` holds over the recorded versions.
    async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&HashMap<String, Vec<Seen>>) -> Option<T>,
    ) -> TestResult<T> {
        let mut tick = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = done(&self.versions.lock().expect("lock")) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, tick.changed())
                .await
                .is_err()
            {
                return Err(format!("timed out after {timeout:?} waiting for {what}").into());
            }
        }
    }

    async fn first_sight(&self, name: &str) -> TestResult<Instant> {
        self.wait_until(name, Duration::from_secs(120), |v| {
            v.get(name).and_then(|l| l.first()).map(|s| s.at)
        })
        .await
    }

    async fn wait_count(&self, prefix: &str, n: usize, timeout: Duration) -> TestResult {
        self.wait_until(&format!("{n} Secrets {prefix}*"), timeout, |v| {
            (v.keys().filter(|k| k.starts_with(prefix)).count() >= n).then_some(())
        })
        .await
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Creates `n` objects with `concurrency` in flight.
async fn create_many<F, Fut>(n: usize, concurrency: usize, make: F) -> TestResult
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    futures::stream::iter((0..n).map(|i| make(format!("{i:05}"))))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// `concurrency` clients, each creating an object and waiting until the watch
/// sees the Secret it leads to before creating the next; sorted latencies.
async fn closed_loop<F, Fut>(
    n: usize,
    concurrency: usize,
    arrivals: &Arrivals,
    prefix: &str,
    make: F,
) -> TestResult<Vec<Duration>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let make = &make;
    let mut latencies = futures::stream::iter((0..n).map(|i| async move {
        let name = format!("{prefix}{i:05}");
        let t = Instant::now();
        make(name.clone()).await?;
        let seen = arrivals.first_sight(&name).await?;
        TestResult::Ok(seen.saturating_duration_since(t))
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<_>>()
    .await?;
    latencies.sort();
    Ok(latencies)
}

/// Waits until the apiserver has served no request for grants, Secrets or
/// Events for a second: the operator's trailing writes are done.
async fn quiesce(client: &kube::Client) -> TestResult {
    let last = Mutex::new((apiserver_requests(client).await?, Instant::now()));
    eventually(
        "the apiserver to go quiet",
        Duration::from_secs(300),
        || async {
            let n = apiserver_requests(client).await?;
            let mut last = last.lock().expect("lock");
            if n != last.0 {
                *last = (n, Instant::now());
            }
            Ok((last.1.elapsed() >= Duration::from_secs(1)).then_some(()))
        },
    )
    .await
}

/// The same requests as `apiserver_requests`, by resource, subresource,
/// verb and code: where a grant's requests go.
async fn apiserver_breakdown(client: &kube::Client) -> TestResult<BTreeMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let label = |line: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        line.split(&key)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && !l.contains("verb=\"WATCH\""))
    {
        let resource = label(line, "resource");
        if !["secrets", "uploadgrants", "events"].contains(&resource.as_str()) {
            continue;
        }
        let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let sub = label(line, "subresource");
        let key = format!(
            "{resource}{} {} {}",
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            },
            label(line, "verb"),
            label(line, "code")
        );
        *out.entry(key).or_default() += n;
    }
    Ok(out)
}

/// What was served between two breakdowns, per unit (grant, renewal),
/// the larger first.
fn per_unit(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, units: f64) -> String {
    let mut parts: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) / units,
            )
        })
        .filter(|(_, v)| *v >= 0.005)
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    parts
        .iter()
        .map(|(k, v)| format!("{k}: {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every object of a kind in the namespace, listed in pages so 40,000
/// grants do not make one response of a hundred megabytes.
async fn list_all<K>(api: &Api<K>, labels: Option<&str>) -> TestResult<Vec<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(5000);
        if let Some(l) = labels {
            params = params.labels(l);
        }
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

/// The floor: what a grant costs the apiserver at the least, with no
/// controller in between. Each call makes the UploadGrant, a Secret as large
/// as the operator's (a copy of one it wrote, owned by the new grant) and the
/// grant's status as the operator writes it. The status write does not hold
/// the caller, as the operator's does not hold the user: latency ends when
/// the Secret is readable.
struct Floor<'a> {
    ctx: &'a TestContext,
    issuer: &'a str,
    template: Secret,
    status: serde_json::Value,
    pending: Mutex<Vec<tokio::task::JoinHandle<TestResult>>>,
}

impl<'a> Floor<'a> {
    /// Copies the Secret and status the operator wrote for `grant` in `from`.
    async fn new(
        ctx: &'a TestContext,
        issuer: &'a str,
        from: &TestContext,
        grant: &str,
    ) -> TestResult<Floor<'a>> {
        let written: Secret = from.api().get(grant).await?;
        let status = from
            .api::<UploadGrant>()
            .get(grant)
            .await?
            .status
            .ok_or("the operator's grant has no status")?;
        Ok(Floor {
            ctx,
            issuer,
            template: Secret {
                metadata: ObjectMeta {
                    labels: written.metadata.labels,
                    annotations: written.metadata.annotations,
                    ..ObjectMeta::default()
                },
                ..written
            },
            status: serde_json::json!({
                "apiVersion": "grants.io/v1alpha1",
                "kind": "UploadGrant",
                "status": status,
            }),
            pending: Mutex::default(),
        })
    }

    async fn grant(&self, name: String) -> TestResult {
        let spec = spec(
            self.ctx,
            self.issuer,
            &format!("{name}.bin"),
            serde_json::json!({"ttl": "6h"}),
        );
        let grant = create_grant(self.ctx, &name, spec).await?;
        let mut secret = self.template.clone();
        secret.metadata.name = Some(name.clone());
        secret.metadata.owner_references = Some(vec![
            grant.controller_owner_ref(&()).ok_or("grant without uid")?,
        ]);
        if let Some(labels) = secret.metadata.labels.as_mut() {
            labels.insert("grants.io/grant".into(), name.clone());
        }
        self.ctx
            .api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await?;
        let grants = self.ctx.api::<UploadGrant>();
        let status = self.status.clone();
        let write = tokio::spawn(async move {
            grants
                .patch_status(
                    &name,
                    &PatchParams::apply("bench-floor").force(),
                    &Patch::Apply(&status),
                )
                .await
                .map(|_| ())
                .map_err(Into::into)
        });
        self.pending.lock().expect("lock").push(write);
        Ok(())
    }

    /// Waits for the status writes still under way; fails if one failed.
    async fn settle(&self) -> TestResult {
        let pending = std::mem::take(&mut *self.pending.lock().expect("lock"));
        for write in pending {
            write.await??;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
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
        "| Signing, one core | {ours:.0} URLs/s | boto3 `generate_presigned_url`: {boto3:.0} URLs/s | ≥ 50× boto3 and ≥ 50,000/s | {:.1}× boto3; {} |",
        ours / boto3,
        met(ours >= 50_000.0 && ours >= 50.0 * boto3)
    ));
    Ok(())
}

#[test]
#[ignore = "benchmark: run with make bench"]
fn benchmarks() -> TestResult {
    let mut rows = table_head();
    signing(&mut rows)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(cluster_benchmarks(&mut rows))?;
    write_results("latest.md", "Benchmark results", "", &rows)
}

/// The head of a results table.
fn table_head() -> Vec<String> {
    vec![
        "| What | Operator | Baseline (same run) | Target | Result |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ]
}

/// Writes `rows` as bench/results/`file`, under `title`, stamped with the
/// time and the machine's cores, and prints them.
fn write_results(file: &str, title: &str, about: &str, rows: &[String]) -> TestResult {
    let table = format!(
        "# {title}\n\nMeasured by `make bench` on {} ({} cores){about}. How each figure is measured: bench/README.md.\n\n{}\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        rows.join("\n")
    );
    std::fs::write(
        support::repo_root().join("bench/results").join(file),
        &table,
    )?;
    println!("{table}");
    Ok(())
}

/// The operator as the cluster benchmarks run it: info logs, and the request
/// bound set to `qps` (None: the default).
fn options(qps: Option<u32>) -> OperatorOptions {
    let mut env = vec![("UPLOAD_GRANT_LOG_LEVEL".to_owned(), "info".to_owned())];
    if let Some(qps) = qps {
        env.push(("UPLOAD_GRANT_KUBE_API_QPS".to_owned(), qps.to_string()));
    }
    OperatorOptions {
        env,
        ..OperatorOptions::default()
    }
}

/// The operator's default bound on requests per second (`--kube-api-qps`).
const DEFAULT_QPS: f64 = 100.0;

async fn cluster_benchmarks(rows: &mut Vec<String>) -> TestResult {
    const CONCURRENCY: usize = 16;
    // Latency and throughput measure the operator's own pipeline, so its
    // request bound is lifted there; the storm measures the bound.
    let Scenario {
        ctx,
        dir,
        mut operator,
    } = Scenario::start_in(TestContext::new("bench").await?, options(Some(0))).await?;
    let issuer = open_issuer(&ctx).await?;
    let direct = TestContext::new("bench-direct").await?;
    // No operator watches this namespace: the floor's grants are its own.
    let floor_ctx = TestContext::new("bench-floor").await?;
    let seen = Arrivals::watch(&ctx);
    let seen_direct = Arrivals::watch(&direct);
    let seen_floor = Arrivals::watch(&floor_ctx);
    let grant = |name: String, extra: serde_json::Value| {
        let spec = spec(&ctx, &issuer, &format!("{name}.bin"), extra);
        let ctx = &ctx;
        async move { create_grant(ctx, &name, spec).await.map(|_| ()) }
    };
    let six_hours = || serde_json::json!({"ttl": "6h"});
    let direct_api: Api<Secret> = direct.api();
    let direct_secret = |name: String| {
        let api = direct_api.clone();
        async move {
            api.create(&PostParams::default(), &secret(&name, 512))
                .await
                .map(|_| ())
                .map_err(Into::into)
        }
    };

    // 2. Apply-to-ready latency: 16 clients, each applying a grant and
    // waiting for its Secret, 1,000 in all; the same for the floor and for
    // direct Secrets.
    let ours = closed_loop(1000, CONCURRENCY, &seen, "lat-", |n| grant(n, six_hours())).await?;
    quiesce(&ctx.client).await?;
    let floor = Floor::new(&floor_ctx, &issuer, &ctx, "lat-00000").await?;
    let fl = closed_loop(1000, CONCURRENCY, &seen_floor, "lat-", |n| floor.grant(n)).await?;
    floor.settle().await?;
    quiesce(&ctx.client).await?;
    let base = closed_loop(1000, CONCURRENCY, &seen_direct, "lat-", direct_secret).await?;
    quiesce(&ctx.client).await?;
    let p = |l: &[Duration], q: f64| ms(percentile(l, q));
    let ratio99 = p(&ours, 0.99) / p(&fl, 0.99);
    rows.push(format!(
        "| Apply to readable Secret, 1,000 by {CONCURRENCY} clients | p50 {:.0} ms, p99 {:.0} ms | floor: p50 {:.0} ms, p99 {:.0} ms (direct Secret create: p50 {:.0} ms, p99 {:.0} ms) | p99 ≤ 2× floor | {ratio99:.2}× floor ({}) |",
        p(&ours, 0.5), p(&ours, 0.99), p(&fl, 0.5), p(&fl, 0.99), p(&base, 0.5), p(&base, 0.99),
        met(ratio99 <= 2.0)
    ));

    // The same with one client: the pipeline's own latency, unloaded.
    let ours = closed_loop(200, 1, &seen, "one-", |n| grant(n, six_hours())).await?;
    quiesce(&ctx.client).await?;
    let fl = closed_loop(200, 1, &seen_floor, "one-", |n| floor.grant(n)).await?;
    floor.settle().await?;
    quiesce(&ctx.client).await?;
    let base = closed_loop(200, 1, &seen_direct, "one-", direct_secret).await?;
    quiesce(&ctx.client).await?;
    rows.push(format!(
        "| Apply to readable Secret, 200 by 1 client | p50 {:.0} ms, p99 {:.0} ms | floor: p50 {:.0} ms, p99 {:.0} ms (direct: p50 {:.0} ms, p99 {:.0} ms) | (no target) | p50 {:.1}×, p99 {:.1}× floor |",
        p(&ours, 0.5), p(&ours, 0.99), p(&fl, 0.5), p(&fl, 0.99), p(&base, 0.5), p(&base, 0.99),
        p(&ours, 0.5) / p(&fl, 0.5), p(&ours, 0.99) / p(&fl, 0.99)
    ));

    // 3. Throughput: 5,000 at once until every Secret is readable, for the
    // operator, the floor and direct Secrets; with the requests the
    // apiserver served for each.
    const TP: usize = 5000;
    let (t, before, parts) = (
        Instant::now(),
        apiserver_requests(&ctx.client).await?,
        apiserver_breakdown(&ctx.client).await?,
    );
    let cpu = operator.cpu_seconds()?;
    create_many(TP, 64, |n| grant(format!("tp-{n}"), six_hours())).await?;
    seen.wait_count("tp-", TP, Duration::from_secs(900)).await?;
    let ours = TP as f64 / t.elapsed().as_secs_f64();
    // The status writes that follow the Secrets count too, and the
    // baselines must not share the apiserver with them.
    quiesce(&ctx.client).await?;
    let ours_requests = (apiserver_requests(&ctx.client).await? - before) / TP as f64;
    let ours_parts = per_unit(&parts, &apiserver_breakdown(&ctx.client).await?, TP as f64);
    let cpu_per_grant = (operator.cpu_seconds()? - cpu) / TP as f64;

    let (t, before, parts) = (
        Instant::now(),
        apiserver_requests(&ctx.client).await?,
        apiserver_breakdown(&ctx.client).await?,
    );
    create_many(TP, 64, |n| floor.grant(format!("tp-{n}"))).await?;
    seen_floor
        .wait_count("tp-", TP, Duration::from_secs(900))
        .await?;
    let fl = TP as f64 / t.elapsed().as_secs_f64();
    floor.settle().await?;
    quiesce(&ctx.client).await?;
    let floor_requests = (apiserver_requests(&ctx.client).await? - before) / TP as f64;
    let floor_parts = per_unit(&parts, &apiserver_breakdown(&ctx.client).await?, TP as f64);

    let (t, before) = (Instant::now(), apiserver_requests(&ctx.client).await?);
    create_many(TP, 64, |n| direct_secret(format!("tp-{n}"))).await?;
    seen_direct
        .wait_count("tp-", TP, Duration::from_secs(300))
        .await?;
    let base = TP as f64 / t.elapsed().as_secs_f64();
    let base_requests = (apiserver_requests(&ctx.client).await? - before) / TP as f64;
    quiesce(&ctx.client).await?;
    rows.push(format!(
        "| Throughput, 5,000 created at once (64 in flight) | {ours:.0} grants/s to a readable Secret | floor: {fl:.0} grants/s (direct Secret create: {base:.0}/s, {base_requests:.1} requests each) | ≥ 0.8× floor | {:.2}× floor ({}) |",
        ours / fl, met(ours >= 0.8 * fl)
    ));
    rows.push(format!(
        "| apiserver requests per new grant, user's create included (throughput run) | {ours_requests:.2}: {ours_parts}; operator CPU {:.2} ms per grant | floor: {floor_requests:.2}: {floor_parts} | ≤ 3.2 | {} |",
        cpu_per_grant * 1e3,
        met(ours_requests <= 3.2)
    ));

    // 4. Memory with 10,000 Ready grants, then 10,000 unrelated 64 KiB
    // Secrets, then 30,000 grants more. 1,000 + 200 + 5,000 so far.
    create_many(3800, 64, |n| grant(format!("mem-{n}"), six_hours())).await?;
    seen.wait_count("mem-", 3800, Duration::from_secs(900))
        .await?;
    quiesce(&ctx.client).await?;
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
    seen.wait_count("unrelated-", 10_000, Duration::from_secs(300))
        .await?;
    let (peak_after, rss_after) = operator.memory_kib()?;
    rows.push(format!(
        "| Memory, 10,000 Ready grants | peak {:.1} MiB, current {:.1} MiB | — | < 64 MiB | {} |",
        peak as f64 / 1024.0,
        rss as f64 / 1024.0,
        met(peak < 64 * 1024)
    ));
    rows.push(format!(
        "| Memory, + 10,000 unrelated 64 KiB Secrets | peak {:.1} MiB (+{:.1} MiB), current {:.1} MiB | same operator before them | adds < 5 MiB | {} |",
        peak_after as f64 / 1024.0, (peak_after as f64 - peak as f64) / 1024.0, rss_after as f64 / 1024.0,
        met(peak_after.saturating_sub(peak) < 5 * 1024)
    ));
    const MORE: usize = 30_000;
    const ALL: usize = 10_000 + MORE;
    let t = Instant::now();
    create_many(MORE, 64, |n| grant(format!("big-{n}"), six_hours())).await?;
    seen.wait_count("big-", MORE, Duration::from_secs(1800))
        .await?;
    let big_rate = MORE as f64 / t.elapsed().as_secs_f64();
    quiesce(&ctx.client).await?;
    let (peak40, rss40) = operator.memory_kib()?;
    let per_grant = (rss40 as f64 - rss_after as f64) / MORE as f64;
    rows.push(format!(
        "| Memory per additional grant, 10,000 → 40,000 Ready grants | {per_grant:.2} KiB per grant (current {:.1} → {:.1} MiB, peak {:.1} MiB; the 30,000 issued at {big_rate:.0} grants/s) | the same operator at 10,000 | ≤ 2 KiB per grant | {} |",
        rss_after as f64 / 1024.0, rss40 as f64 / 1024.0, peak40 as f64 / 1024.0,
        met(per_grant <= 2.0)
    ));

    // 5. Restart with 40,000 Ready grants: time to ready and to all
    // evaluated, writes and signatures.
    let before = versions_of(&ctx).await?;
    let objects = before.len();
    operator.stop().await?;
    let t = Instant::now();
    let mut restarted = Operator::start(&ctx, dir.path(), options(None)).await?;
    let ready = t.elapsed();
    // Grants evaluated, not passes: a count of reconciles reaches 40,000
    // early when some grants are reconciled twice.
    eventually(
        "the restarted operator to evaluate all 40,000",
        Duration::from_secs(600),
        || async {
            Ok((restarted
                .metric(r#"upload_grant_grants{reason="Issued"}"#)
                .await?
                >= ALL as f64)
                .then_some(()))
        },
    )
    .await?;
    let idle = t.elapsed();
    // Anything it was going to write has been written.
    quiesce(&ctx.client).await?;
    let signed = restarted
        .metric(r#"upload_grant_signings_total{result="success",reason="ok"}"#)
        .await?;
    let after = versions_of(&ctx).await?;
    let writes = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    rows.push(format!(
        "| Restart with 40,000 Ready grants | ready in {:.1} s, all reconciled in {:.1} s; {writes} writes, {signed:.0} signatures ({objects} grants and managed Secrets compared) | — | ready ≤ 5 s, all ≤ 20 s, 0 writes, 0 signatures | {} |",
        ready.as_secs_f64(), idle.as_secs_f64(),
        met(ready <= Duration::from_secs(5) && idle <= Duration::from_secs(20) && writes == 0 && signed == 0.0)
    ));

    // 5b. Grants at the schema's largest: what one costs the operator.
    const LARGEST: usize = 1000;
    let (_, rss_before) = restarted.memory_kib()?;
    create_many(LARGEST, 16, |n| {
        let name = format!("max-{n:04}");
        let doc = largest_grant(&ctx, &issuer, &name);
        let api = ctx.api::<UploadGrant>();
        async move {
            let grant: UploadGrant = serde_json::from_value(doc)?;
            api.create(&PostParams::default(), &grant).await?;
            Ok(())
        }
    })
    .await?;
    seen.wait_count("max-", LARGEST, Duration::from_secs(600))
        .await?;
    quiesce(&ctx.client).await?;
    let (peak_max, rss_max) = restarted.memory_kib()?;
    let per_largest = (rss_max as f64 - rss_before as f64) / LARGEST as f64;
    rows.push(format!(
        "| Memory per grant at the schema's largest, 1,000 beside 40,000 | {per_largest:.2} KiB per grant (current {:.1} → {:.1} MiB, peak {:.1} MiB): spec.secret labels and annotations near 4 KiB each, 2 KiB of object metadata, a 1 KiB key, 16 rollout targets, and 200 KiB of annotations on the grant itself | the same operator before them | ≤ 16 KiB per grant | {} |",
        rss_before as f64 / 1024.0, rss_max as f64 / 1024.0, peak_max as f64 / 1024.0,
        met(per_largest <= 16.0)
    ));
    restarted.stop().await?;

    rows.extend(renewal_storm(&ctx, dir.path(), &seen, &grant, ALL + LARGEST).await?);
    Ok(())
}

/// The resourceVersion of every grant and managed Secret in the namespace:
/// what changed between two of these was written.
async fn versions_of(ctx: &TestContext) -> TestResult<BTreeMap<String, String>> {
    let (grants, secrets) = (ctx.api::<UploadGrant>(), ctx.api::<Secret>());
    let mut v: BTreeMap<String, String> = BTreeMap::new();
    for g in list_all(&grants, None).await? {
        v.insert(
            format!("ug/{}", g.name_any()),
            g.resource_version().unwrap_or_default(),
        );
    }
    let managed = "app.kubernetes.io/managed-by=upload-grant-operator";
    for s in list_all(&secrets, Some(managed)).await? {
        v.insert(
            format!("secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    Ok(v)
}

/// A grant with every size-bounded field near its schema's limit, and 200
/// KiB of annotations of its own (the apiserver allows 256 KiB).
fn largest_grant(ctx: &TestContext, issuer: &str, name: &str) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = (0..44)
        .map(|i| (format!("team.example.com/l{i:02}"), "v".repeat(60).into()))
        .collect();
    let annotations: serde_json::Map<String, serde_json::Value> = (0..30)
        .map(|i| (format!("note.example.com/a{i:02}"), "n".repeat(100).into()))
        .collect();
    let metadata: serde_json::Map<String, serde_json::Value> = (0..30)
        .map(|i| (format!("m{i:02}"), "m".repeat(60).into()))
        .collect();
    let targets: Vec<serde_json::Value> = (0..16)
        .map(|i| serde_json::json!({"kind": "Deployment", "name": format!("{}-{i:02}", "d".repeat(200))}))
        .collect();
    let key = format!("{name}/{}", "k".repeat(1000));
    serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
        "metadata": {"name": name, "namespace": ctx.namespace,
            "annotations": {"note": "a".repeat(200 * 1024)}},
        "spec": spec(ctx, issuer, &key, serde_json::json!({"ttl": "6h",
            "metadata": metadata,
            "secret": {"labels": labels, "annotations": annotations,
                "rolloutRestartTargets": targets}})),
    })
}

/// Figure 6, the renewal storm: 8,000 grants issued together (ttl 10m,
/// refreshBefore 6m) by an operator without a bound; the operator that
/// renews them runs with the default bound. Every renewal must land before the old URL ends,
/// and the apiserver must never see more than the bound.
async fn renewal_storm<F, Fut>(
    ctx: &TestContext,
    dir: &std::path::Path,
    seen: &Arrivals,
    grant: &F,
    others: usize,
) -> TestResult<Vec<String>>
where
    F: Fn(String, serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    // Enough that, at 2 requests a renewal, the storm asks for more than
    // the bound: about 16,000 requests due within about two minutes.
    const N: usize = 8000;
    let shape = serde_json::json!({"ttl": "10m", "refreshBefore": "6m"});
    let due = Due {
        prefix: "storm-",
        n: N,
        shape,
        others,
    };
    let s = storm(ctx, dir, seen, grant, &due, || async {
        Ok(vec![Operator::start(ctx, dir, options(None)).await?])
    })
    .await?;
    let held = s.peak10 <= DEFAULT_QPS * 1.1 && s.offered > DEFAULT_QPS * 1.1;
    let per_renewal = s.total / N as f64;
    Ok(vec![
        format!(
            "| Renewal storm, {N} grants refreshing within {:.0} s | {}/{N} renewed before the old URL expired (closest {:.0} s before); the storm asked for {:.0} req/s, the apiserver saw at most {:.0} req/s over 10 s ({:.0} in a 1 s sample) | bound `--kube-api-qps` {DEFAULT_QPS:.0} (default) | all on time, bound held | {} |",
            s.spread,
            s.on_time,
            s.min_margin,
            s.offered,
            s.peak10,
            s.peak1,
            met(s.on_time == N && held)
        ),
        format!(
            "| apiserver requests per renewal (storm) | {per_renewal:.2}: {}; operator CPU {:.2} ms per renewal; the renewals took {:.0} s, first to last (the bound predicts {:.0} s) | floor: 2 (the Secret, the status) | ≤ 2.1 | {} |",
            s.parts,
            s.cpu * 1e3 / N as f64,
            s.took,
            per_renewal * N as f64 / DEFAULT_QPS,
            met(per_renewal <= 2.1)
        ),
    ])
}

/// Grants issued together so that their renewals come due together.
struct Due {
    /// Their names' prefix.
    prefix: &'static str,
    n: usize,
    /// Their ttl and refreshBefore.
    shape: serde_json::Value,
    /// Grants already in the namespace, evaluated before the storm.
    others: usize,
}

/// What a renewal storm showed.
struct Storm {
    /// Seconds between the first and the last refresh time.
    spread: f64,
    on_time: usize,
    /// Seconds before its old URL ended, of the renewal that came closest.
    min_margin: f64,
    /// Requests a second the apiserver served: at most, over 10 s and 1 s.
    peak10: f64,
    peak1: f64,
    /// The requests all renewals needed, over the time their refreshes span.
    offered: f64,
    total: f64,
    /// Seconds from the first renewal to the last.
    took: f64,
    /// CPU seconds of all the renewing operators.
    cpu: f64,
    /// The requests per renewal, by resource, verb and code.
    parts: String,
}

/// Issues `due` with an operator without a bound, stops it, starts the
/// operators that renew (`renewers`), and measures them renewing every one.
async fn storm<F, Fut, R, RFut>(
    ctx: &TestContext,
    dir: &std::path::Path,
    seen: &Arrivals,
    grant: &F,
    due: &Due,
    renewers: R,
) -> TestResult<Storm>
where
    F: Fn(String, serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
    R: FnOnce() -> RFut,
    RFut: std::future::Future<Output = TestResult<Vec<Operator>>>,
{
    let (prefix, n) = (due.prefix, due.n);
    let mut setup = Operator::start(ctx, dir, options(Some(0))).await?;
    create_many(n, 64, |i| grant(format!("{prefix}{i}"), due.shape.clone())).await?;
    seen.wait_count(prefix, n, Duration::from_secs(600)).await?;
    setup.stop().await?;
    let mut ops = renewers().await?;

    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:05}")).collect();
    let first: Vec<Seen> = names
        .iter()
        .map(|n| seen.get(n).first().cloned().ok_or("no first version"))
        .collect::<Result<_, _>>()?;
    let refresh: Vec<jiff::Timestamp> = first.iter().filter_map(|s| s.refresh_at).collect();
    let (Some(earliest), Some(latest)) = (refresh.iter().min(), refresh.iter().max()) else {
        return Err("storm grants have no refresh time".into());
    };
    let spread = latest.duration_since(*earliest).as_secs_f64();
    let last_expiry = first
        .iter()
        .filter_map(|s| s.expires_at)
        .max()
        .ok_or("no expiry")?;

    // Their first pass over every grant in the cache is no part of the
    // renewals' CPU.
    let all = (due.others + n) as f64;
    eventually(
        "the renewing operators to evaluate every grant",
        Duration::from_secs(180),
        || async { Ok((sum(&ops, ISSUED).await? >= all).then_some(())) },
    )
    .await?;
    let parts_before = apiserver_breakdown(&ctx.client).await?;
    let cpu = cpu_of(&ops)?;
    // Sample the apiserver's own request counters once a second while the
    // renewals run.
    let sampler = RequestSampler::start(&ctx.client);
    let wait = last_expiry
        .duration_since(jiff::Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO)
        + Duration::from_secs(60);
    let renewed = seen
        .wait_until("every storm grant renewed", wait, |v| {
            names
                .iter()
                .all(|n| v.get(n).is_some_and(|l| l.len() >= 2))
                .then_some(())
        })
        .await;
    let samples = sampler.stop().await?;
    let cpu = cpu_of(&ops)? - cpu;
    let parts = per_unit(
        &parts_before,
        &apiserver_breakdown(&ctx.client).await?,
        n as f64,
    );
    for op in &mut ops {
        op.stop().await?;
    }
    renewed?;
    if samples.len() < 11 {
        return Err(format!("only {} samples of the apiserver's metrics", samples.len()).into());
    }

    let mut on_time = 0;
    let mut min_margin = f64::MAX;
    for name in &names {
        let versions = seen.get(name);
        if let (Some(old), Some(new)) = (versions.first(), versions.get(1))
            && let Some(end) = old.expires_at
        {
            let margin = end.duration_since(new.wall).as_secs_f64();
            min_margin = min_margin.min(margin);
            if margin > 0.0 {
                on_time += 1;
            }
        }
    }
    let total = samples.total();
    // How long the renewals took, first to last.
    let renewed_at: Vec<Instant> = names
        .iter()
        .filter_map(|n| seen.get(n).get(1).map(|s| s.at))
        .collect();
    let took = match (renewed_at.iter().min(), renewed_at.iter().max()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Storm {
        spread,
        on_time,
        min_margin,
        // Rate over any 10 s (the bound counts per second; a 1 s sample can
        // straddle two of the limiter's windows).
        peak10: samples.peak_rate(10),
        peak1: samples.peak_rate(1),
        // The bound only shows if the storm asks for more than it allows.
        offered: total / spread.max(1.0),
        total,
        took,
        cpu,
        parts,
    })
}

const ISSUED: &str = r#"upload_grant_grants{reason="Issued"}"#;
const SIGNED: &str = r#"upload_grant_signings_total{result="success",reason="ok"}"#;

/// `sample` summed over `ops`.
async fn sum(ops: &[Operator], sample: &str) -> TestResult<f64> {
    let mut total = 0.0;
    for op in ops {
        total += op.metric(sample).await?;
    }
    Ok(total)
}

fn cpu_of(ops: &[Operator]) -> TestResult<f64> {
    ops.iter().map(|op| op.cpu_seconds()).sum()
}

#[test]
#[ignore = "benchmark: run with make bench"]
fn sharded_replicas() -> TestResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = table_head();
    rows.extend(rt.block_on(sharded_benchmarks())?);
    write_results(
        "sharded.md",
        "Sharded replicas",
        ", the replicas, the apiserver and etcd sharing them",
        &rows,
    )
}

/// A replica with `--sharding` (64 shards, Leases in the namespace) and the
/// request bound `qps` (None: the default).
async fn replica(
    ctx: &TestContext,
    dir: &std::path::Path,
    name: &str,
    qps: Option<u32>,
) -> TestResult<Operator> {
    let mut opts = options(qps);
    opts.env.extend(
        [
            ("UPLOAD_GRANT_SHARDING", "true"),
            ("UPLOAD_GRANT_LEASE_NAMESPACE", ctx.namespace.as_str()),
            ("POD_NAME", name),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    Operator::start(ctx, dir, opts).await
}

/// `n` replicas started together, with the default bound.
async fn replicas(ctx: &TestContext, dir: &std::path::Path, n: usize) -> TestResult<Vec<Operator>> {
    let names: Vec<String> = (0..n).map(|i| format!("replica-{i}")).collect();
    futures::future::try_join_all(names.iter().map(|name| replica(ctx, dir, name, None))).await
}

/// What starting replicas over Ready grants cost each of them.
struct Start {
    /// Seconds from the first start until the shards were split fairly and
    /// every grant evaluated.
    settled: f64,
    writes: usize,
    signed: f64,
    /// Grants and Secrets of other shards that reached a replica.
    foreign: f64,
    /// Per replica: shards, peak and current resident KiB, CPU seconds.
    each: Vec<(f64, u64, u64, f64)>,
}

impl Start {
    fn describe(&self) -> String {
        let each: Vec<String> = self
            .each
            .iter()
            .map(|(shards, peak, rss, cpu)| {
                format!(
                    "{shards:.0} shards: peak {:.1} MiB, current {:.1} MiB, CPU {cpu:.1} s",
                    *peak as f64 / 1024.0,
                    *rss as f64 / 1024.0
                )
            })
            .collect();
        format!(
            "{}; split and all evaluated in {:.1} s; {} writes, {:.0} signatures, {:.0} foreign objects received",
            each.join("; "),
            self.settled,
            self.writes,
            self.signed,
            self.foreign
        )
    }

    fn largest_rss(&self) -> u64 {
        self.each.iter().map(|e| e.2).max().unwrap_or(0)
    }
}

/// Waits until `ops` hold a fair share of the 64 shards each and have
/// evaluated `grants` grants between them.
async fn split_fairly(ops: &[Operator], grants: usize) -> TestResult {
    let share = 64.0 / ops.len() as f64;
    let fair = |held: f64| held == share.floor() || held == share.ceil();
    eventually(
        "a fair split, every grant evaluated",
        Duration::from_secs(600),
        || async {
            let mut split = true;
            for op in ops {
                split &= fair(op.metric("upload_grant_shards_held").await?);
            }
            Ok((split && sum(ops, ISSUED).await? >= grants as f64).then_some(()))
        },
    )
    .await
}

/// Starts `n` replicas over the namespace's `grants` Ready grants, waits
/// until they split the shards fairly and evaluated every grant, and stops
/// them.
async fn start_over(
    ctx: &TestContext,
    dir: &std::path::Path,
    n: usize,
    grants: usize,
) -> TestResult<Start> {
    let before = versions_of(ctx).await?;
    let t = Instant::now();
    let mut ops = replicas(ctx, dir, n).await?;
    split_fairly(&ops, grants).await?;
    let settled = t.elapsed().as_secs_f64();
    quiesce(&ctx.client).await?;
    let after = versions_of(ctx).await?;
    let mut each = Vec::new();
    for op in &ops {
        let (peak, rss) = op.memory_kib()?;
        let shards = op.metric("upload_grant_shards_held").await?;
        each.push((shards, peak, rss, op.cpu_seconds()?));
    }
    let foreign = sum(
        &ops,
        r#"upload_grant_shard_foreign_objects_total{kind="UploadGrant"}"#,
    )
    .await?
        + sum(
            &ops,
            r#"upload_grant_shard_foreign_objects_total{kind="Secret"}"#,
        )
        .await?;
    let start = Start {
        settled,
        writes: before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .count(),
        signed: sum(&ops, SIGNED).await?,
        foreign,
        each,
    };
    for op in &mut ops {
        op.stop().await?;
    }
    Ok(start)
}

/// 30,000 Ready grants served by one sharded replica, then by three; then
/// a renewal storm served by one, then by three, each with the default
/// bound.
async fn sharded_benchmarks() -> TestResult<Vec<String>> {
    const GRANTS: usize = 30_000;
    let ctx = TestContext::new("bench-shards").await?;
    let issuer = open_issuer(&ctx).await?;
    let dir = tempfile::tempdir()?;
    let seen = Arrivals::watch(&ctx);
    let grant = |name: String, extra: serde_json::Value| {
        let spec = spec(&ctx, &issuer, &format!("{name}.bin"), extra);
        let ctx = &ctx;
        async move { create_grant(ctx, &name, spec).await.map(|_| ()) }
    };
    let mut setup = Operator::start(&ctx, dir.path(), options(Some(0))).await?;
    create_many(GRANTS, 64, |n| {
        grant(format!("g-{n}"), serde_json::json!({"ttl": "6h"}))
    })
    .await?;
    seen.wait_count("g-", GRANTS, Duration::from_secs(1800))
        .await?;
    quiesce(&ctx.client).await?;
    setup.stop().await?;

    let mut rows = Vec::new();
    let one = start_over(&ctx, dir.path(), 1, GRANTS).await?;
    let three = start_over(&ctx, dir.path(), 3, GRANTS).await?;
    let ratio = three.largest_rss() as f64 / one.largest_rss().max(1) as f64;
    rows.push(format!(
        "| 3 replicas start over {GRANTS} Ready grants | {} | 1 replica: {} | 0 writes, 0 signatures, 0 foreign objects; each replica below one alone | largest current memory {ratio:.2}× one replica's; {} |",
        three.describe(),
        one.describe(),
        met(three.writes == 0
            && three.signed == 0.0
            && three.foreign == 0.0
            && one.writes == 0
            && ratio < 1.0)
    ));

    // Each storm in a namespace of its own: the first one's grants would
    // come due again during the second.
    let mut storms = Vec::new();
    for n in [1, 3] {
        let ctx = TestContext::new(&format!("bench-storm{n}")).await?;
        let issuer = open_issuer(&ctx).await?;
        let seen = Arrivals::watch(&ctx);
        let grant = |name: String, extra: serde_json::Value| {
            let spec = spec(&ctx, &issuer, &format!("{name}.bin"), extra);
            let ctx = &ctx;
            async move { create_grant(ctx, &name, spec).await.map(|_| ()) }
        };
        let due = Due {
            prefix: "storm-",
            n: 8000,
            shape: serde_json::json!({"ttl": "6m", "refreshBefore": "4m"}),
            others: 0,
        };
        let dir = dir.path();
        let s = storm(&ctx, dir, &seen, &grant, &due, || async {
            let ops = replicas(&ctx, dir, n).await?;
            split_fairly(&ops, 8000).await?;
            Ok(ops)
        })
        .await?;
        storms.push((ctx, s));
    }
    let describe = |s: &Storm, bound: f64| {
        format!(
            "{}/8000 on time (closest {:.0} s before), renewed in {:.0} s first to last (the bounds predict {:.0} s); the apiserver served at most {:.0} req/s over 10 s ({:.0} in 1 s) of {bound:.0} allowed; {:.2} requests and {:.2} ms of operator CPU per renewal",
            s.on_time,
            s.min_margin,
            s.took,
            s.total / bound,
            s.peak10,
            s.peak1,
            s.total / 8000.0,
            s.cpu * 1e3 / 8000.0
        )
    };
    let (Some((_, alone)), Some((_, shared))) = (storms.first(), storms.get(1)) else {
        return Err("no storm".into());
    };
    rows.push(format!(
        "| Renewal storm, 8,000 grants with ttl 6m refreshing within {:.0} s, served by 3 replicas | {} | 1 replica: {} | all on time; faster than one | {:.2}× one replica's time; {} |",
        shared.spread,
        describe(shared, 3.0 * DEFAULT_QPS),
        describe(alone, DEFAULT_QPS),
        shared.took / alone.took.max(1.0),
        met(shared.on_time == 8000 && alone.on_time == 8000 && shared.took < alone.took)
    ));
    Ok(rows)
}
