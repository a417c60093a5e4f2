//! Helpers for grant scenarios: issuers, grants, waiting on conditions, and
//! using a grant's Secret the way a consumer pod does.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use upload_grant_operator::api::{ClusterGrantIssuer, UploadGrant};

use super::{TestContext, TestResult, random_suffix};

/// An issuer for the local store that allows `rules` (JSON allow rules),
/// deleted when `ctx` is dropped.
pub async fn create_issuer(ctx: &TestContext, rules: serde_json::Value) -> TestResult<String> {
    let name = format!("issuer-{}", random_suffix());
    ctx.delete_issuer_on_drop(&name);
    let issuer: ClusterGrantIssuer = serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1",
        "kind": "ClusterGrantIssuer",
        "metadata": {"name": name},
        "spec": {
            "s3": {"region": ctx.env.region(), "endpoint": ctx.env.s3_endpoint(), "forcePathStyle": true},
            "allow": rules,
        }
    }))?;
    Api::<ClusterGrantIssuer>::all(ctx.client.clone())
        .create(&PostParams::default(), &issuer)
        .await?;
    Ok(name)
}

/// An issuer allowing everything on the test bucket.
pub async fn open_issuer(ctx: &TestContext) -> TestResult<String> {
    create_issuer(ctx, serde_json::json!([{"buckets": [ctx.env.bucket()]}])).await
}

/// An issuer allowing multipart PUTs of any size on the test bucket.
pub async fn multipart_issuer(ctx: &TestContext) -> TestResult<String> {
    let rule =
        serde_json::json!([{"buckets": [ctx.env.bucket()], "methods": ["PUT"], "multipart": true}]);
    create_issuer(ctx, rule).await
}

/// The bytes stored under `key` in the test bucket, read with the root keys.
pub async fn stored(ctx: &TestContext, key: &str) -> TestResult<Vec<u8>> {
    let object = super::s3_client(ctx.env, ctx.env.root_credentials())
        .get_object()
        .bucket(ctx.env.bucket())
        .key(key)
        .send()
        .await?;
    Ok(object.body.collect().await?.into_bytes().to_vec())
}

/// Creates a grant from a JSON spec.
pub async fn create_grant(
    ctx: &TestContext,
    name: &str,
    spec: serde_json::Value,
) -> TestResult<UploadGrant> {
    let grant: UploadGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1",
        "kind": "UploadGrant",
        "metadata": {"name": name, "namespace": ctx.namespace},
        "spec": spec,
    }))?;
    Ok(ctx
        .api::<UploadGrant>()
        .create(&PostParams::default(), &grant)
        .await?)
}

/// Merge-patches a grant's spec.
pub async fn patch_spec(
    ctx: &TestContext,
    name: &str,
    spec: serde_json::Value,
) -> TestResult<UploadGrant> {
    let patch = serde_json::json!({"spec": spec});
    Ok(ctx
        .api::<UploadGrant>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// The Ready condition's status and reason, if it describes the current
/// generation.
pub fn ready(grant: &UploadGrant) -> Option<(String, String)> {
    let c = grant
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    let current = c.observed_generation == grant.metadata.generation;
    current.then(|| (c.status.clone(), c.reason.clone()))
}

/// Watches the grant until `check` holds, or fails after `timeout`.
pub async fn wait_for_grant(
    ctx: &TestContext,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&UploadGrant) -> bool,
) -> TestResult<UploadGrant> {
    let api = ctx.api::<UploadGrant>();
    let cond = move |g: Option<&UploadGrant>| g.is_some_and(&check);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(g))) => Ok(g),
        Ok(Ok(None)) => Err(format!("grant {name} disappeared while waiting for {what}").into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            let now = api.get_opt(name).await?;
            Err(format!(
                "timed out after {timeout:?} waiting for grant {name} to be {what}; status: {:?}",
                now.and_then(|g| g.status)
            )
            .into())
        }
    }
}

/// Waits until the grant's current generation has Ready with this reason.
pub async fn wait_reason(ctx: &TestContext, name: &str, reason: &str) -> TestResult<UploadGrant> {
    let want = reason.to_owned();
    wait_for_grant(ctx, name, reason, Duration::from_secs(60), move |g| {
        ready(g).is_some_and(|(_, r)| r == want)
    })
    .await
}

pub async fn wait_ready(ctx: &TestContext, name: &str) -> TestResult<UploadGrant> {
    wait_reason(ctx, name, "Issued").await
}

pub fn ready_message(grant: &UploadGrant) -> String {
    grant
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The Secret's data as text.
pub async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> TestResult<BTreeMap<String, String>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.unwrap_or_default() {
        out.insert(k, String::from_utf8(v.0)?);
    }
    Ok(out)
}

/// Waits until a Secret is gone.
pub async fn wait_secret_gone(ctx: &TestContext, name: &str) -> TestResult {
    wait_secret_gone_within(ctx, name, Duration::from_secs(60)).await
}

/// Waits until a Secret is gone, at most `timeout`.
pub async fn wait_secret_gone_within(
    ctx: &TestContext,
    name: &str,
    timeout: Duration,
) -> TestResult {
    let api = ctx.api::<Secret>();
    match tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(
            api,
            name,
            kube::runtime::wait::conditions::is_deleted(""),
        ),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(format!("Secret {name} still exists after {timeout:?}").into()),
    }
}

/// Sends a request the way a consumer does: exactly `method`, `url` and
/// `headers` from the Secret, with an optional body.
pub async fn consume(
    data: &BTreeMap<String, String>,
    body: Option<Vec<u8>>,
) -> TestResult<reqwest::Response> {
    let headers: BTreeMap<String, String> =
        serde_json::from_str(data.get("headers").ok_or("no headers key")?)?;
    let method =
        reqwest::Method::from_bytes(data.get("method").ok_or("no method key")?.as_bytes())?;
    let mut req = super::http().request(method, data.get("url").ok_or("no url key")?);
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    Ok(req.send().await?)
}

/// The events recorded for a grant, oldest first.
pub async fn grant_events(
    ctx: &TestContext,
    grant: &str,
) -> TestResult<Vec<k8s_openapi::api::events::v1::Event>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ctx.api();
    let mut list: Vec<_> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(grant))
        .collect();
    list.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    Ok(list)
}

/// The reasons of the events recorded for a grant, oldest first.
pub async fn event_reasons(ctx: &TestContext, grant: &str) -> TestResult<Vec<String>> {
    let list = grant_events(ctx, grant).await?;
    Ok(list.into_iter().filter_map(|e| e.reason).collect())
}

/// Polls the events until one with `reason` shows up for the grant.
pub async fn wait_event(ctx: &TestContext, grant: &str, reason: &str) -> TestResult {
    super::eventually(
        &format!("event {reason} on {grant}"),
        Duration::from_secs(30),
        || async {
            Ok(event_reasons(ctx, grant)
                .await?
                .iter()
                .any(|r| r == reason)
                .then_some(()))
        },
    )
    .await
}

pub fn fingerprint(grant: &UploadGrant) -> Option<String> {
    grant
        .status
        .as_ref()
        .and_then(|s| s.url_fingerprint.clone())
}

/// A test namespace with the CRDs installed and an operator running for it.
/// Dropped whole, the operator stops first, then the namespace is cleaned
/// up, then the directory with the operator's log goes.
pub struct Scenario {
    pub operator: super::operator::Operator,
    pub ctx: TestContext,
    pub dir: tempfile::TempDir,
}

impl Scenario {
    pub async fn start(prefix: &str) -> TestResult<Scenario> {
        Self::start_in(TestContext::new(prefix).await?, Default::default()).await
    }

    pub async fn start_in(
        ctx: TestContext,
        opts: super::operator::OperatorOptions,
    ) -> TestResult<Scenario> {
        let dir = tempfile::tempdir()?;
        super::install_committed_crds(&ctx.client).await?;
        let operator = super::operator::Operator::start(&ctx, dir.path(), opts).await?;
        Ok(Scenario { operator, ctx, dir })
    }
}

/// A grant spec for `key` under the test namespace's prefix in the test
/// bucket, signed by `issuer`, with `extra` fields merged in.
pub fn spec(
    ctx: &TestContext,
    issuer: &str,
    key: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": format!("{}/{key}", ctx.namespace),
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}
