//! The operator as users run it: `helm install` with .testenv/node-values.yaml
//! puts it on the node as a pod from its image (`make image`), with IRSA-style
//! credentials from a kubelet-projected token exchanged at the local STS, and
//! workloads consume grants by mounting their Secrets. Each test installs its
//! own release, watching only its own namespace.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, Subject};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::{Api, ResourceExt};
use support::grants::*;
use support::node::*;
use support::operator::sample_value;
use support::{TestContext, TestResult, eventually, repo_root};
use upload_grant_operator::api::{ClusterGrantIssuer, UploadGrant};

const CHART: &str = "charts/upload-grant-operator";

/// One Helm release of the chart in the test's namespace; uninstalled when
/// dropped, unless the test uninstalled it.
struct Release<'a> {
    ctx: &'a TestContext,
    name: String,
    uninstalled: bool,
}

impl<'a> Release<'a> {
    /// `helm install` as a user on this node would, plus `sets`; waits until
    /// the Deployment is rolled out.
    async fn install(ctx: &'a TestContext, replicas: i32, sets: &[&str]) -> TestResult<Self> {
        let image = push_image(&repo_root().join(OPERATOR_IMAGE_ARCHIVE), "make image")?;
        let digest = format!("image.digest={}", image.digest);
        let release = Release {
            ctx,
            name: format!("ugo-{}", support::random_suffix()),
            uninstalled: false,
        };
        let values = format!("{}/node-values.yaml", ctx.env.var("TESTENV_DIR"));
        let watch = format!("operator.watchNamespace={}", ctx.namespace);
        let replica_count = format!("replicaCount={replicas}");
        let mut args = vec![
            "install",
            &release.name,
            CHART,
            "-n",
            &ctx.namespace,
            // Another test's release may have installed the CRDs.
            "--take-ownership",
            "--wait=false",
            "-f",
            &values,
            "--set",
            &watch,
            "--set",
            &replica_count,
            // What was just pushed, not whatever the moving tag `dev` names.
            "--set",
            &digest,
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        {
            // One install at a time: two releases creating the CRDs at
            // once fail with "already exists" (--take-ownership adopts
            // CRDs that exist, not ones being created).
            static HELM_INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = HELM_INSTALL.lock().unwrap_or_else(|e| e.into_inner());
            ctx.env.helm(&args)?;
        }
        wait_rolled_out(ctx, &release.deployment(), replicas).await?;
        Ok(release)
    }

    fn deployment(&self) -> String {
        format!("{}-upload-grant-operator", self.name)
    }

    fn upgrade(&self, sets: &[&str]) -> TestResult {
        let mut args = vec![
            "upgrade",
            &self.name,
            CHART,
            "-n",
            &self.ctx.namespace,
            "--reuse-values",
            "--wait=false",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        self.ctx.env.helm(&args)?;
        Ok(())
    }

    /// `helm uninstall`, which stops the pods gracefully (the chart's
    /// pre-delete hook drains them while they may still write): the lease is
    /// released rather than left to expire.
    async fn uninstall_releases_the_lease(&mut self) -> TestResult {
        self.ctx
            .env
            .helm(&["uninstall", &self.name, "-n", &self.ctx.namespace])?;
        self.uninstalled = true;
        let holder = self.lease_holder().await?;
        assert_eq!(holder, None, "the lease is still held after helm uninstall");
        Ok(())
    }

    async fn lease_holder(&self) -> TestResult<Option<String>> {
        let leases: Api<Lease> = self.ctx.api();
        Ok(leases
            .get_opt(&self.deployment())
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// The operator's running pods.
    async fn pods(&self) -> TestResult<Vec<Pod>> {
        let pods: Api<Pod> = self.ctx.api();
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        Ok(pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self
                .ctx
                .env
                .command("helm")
                .args(["uninstall", &self.name, "-n", &self.ctx.namespace])
                .output();
        }
    }
}

/// /metrics of one operator pod, on its own address on the pod network.
async fn pod_metrics(pod: &Pod) -> TestResult<String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or("pod without an IP")?;
    Ok(support::http()
        .get(format!("http://{ip}:8080/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// How many URLs a pod has signed, over every outcome.
fn signings(metrics: &str) -> TestResult<f64> {
    let ok = sample_value(
        metrics,
        r#"upload_grant_signings_total{result="success",reason="ok"}"#,
    )?;
    let failed = sample_value(
        metrics,
        r#"upload_grant_signings_total{result="failure",reason="credentials"}"#,
    )? + sample_value(
        metrics,
        r#"upload_grant_signings_total{result="failure",reason="presign"}"#,
    )?;
    Ok(ok + failed)
}

/// The resourceVersion of each Secret in the namespace the operator manages.
async fn secret_versions(ctx: &TestContext) -> TestResult<BTreeMap<String, String>> {
    let secrets: Api<Secret> = ctx.api();
    let managed =
        ListParams::default().labels("app.kubernetes.io/managed-by=upload-grant-operator");
    Ok(secrets
        .list(&managed)
        .await?
        .into_iter()
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect())
}

/// Grant `report` (a PUT to NAMESPACE/report.csv under an open issuer),
/// once Ready: the query of the URL in its Secret.
async fn signed_report(ctx: &TestContext) -> TestResult<BTreeMap<String, String>> {
    let issuer = open_issuer(ctx).await?;
    create_grant(
        ctx,
        "report",
        spec(ctx, &issuer, "report.csv", serde_json::json!({})),
    )
    .await?;
    wait_ready(ctx, "report").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "report").await?;
    let url = reqwest::Url::parse(data.get("url").ok_or("no url")?)?;
    Ok(url.query_pairs().into_owned().collect())
}

/// A Job that mounts Secret `secret` and sends `body` with its method and URL.
async fn upload_from_a_job(ctx: &TestContext, secret: &str, body: &[u8]) -> TestResult {
    wait_default_service_account(ctx).await?;
    let script = format!(
        "printf '{}' | curl --fail-with-body -sS -X \"$(cat /grant/method)\" --data-binary @- \"$(cat /grant/url)\"",
        String::from_utf8_lossy(body).replace('\n', "\\n")
    );
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "upload"},
        "spec": {"backoffLimit": 0, "template": {"spec": consumer_pod_spec(secret, &script, serde_json::json!([]))?}},
    }))?;
    ctx.api::<Job>()
        .create(&PostParams::default(), &job)
        .await?;
    wait_job_succeeded(ctx, "upload").await
}

/// The static-keys install path (`staticKeys.existingSecret`), as for an
/// S3-compatible store: the operator pod signs with the keys of the Secret
/// the admin made, not a session, and a Job uploads through a grant's Secret.
#[tokio::test]
async fn helm_install_with_static_keys_signs_with_the_secrets_keys() -> TestResult {
    let ctx = TestContext::new("node-keys").await?;
    let root = ctx.env.root_credentials();
    let keys: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-keys"},
        "stringData": {
            "access-key-id": root.access_key_id(),
            "secret-access-key": root.secret_access_key(),
        },
    }))?;
    ctx.api::<Secret>()
        .create(&PostParams::default(), &keys)
        .await?;
    let mut release = Release::install(
        &ctx,
        1,
        &[
            // The node's values use the projected-token path; this one replaces it.
            "irsa.projectedToken.enabled=false",
            "irsa.roleArn=",
            "staticKeys.existingSecret=s3-keys",
        ],
    )
    .await?;
    let query = signed_report(&ctx).await?;
    assert!(
        !query.contains_key("X-Amz-Security-Token"),
        "signed with the keys, not a session"
    );
    let credential = query.get("X-Amz-Credential").ok_or("no credential")?;
    assert!(credential.starts_with(&format!("{}/", root.access_key_id())));
    let body = b"day,total\n2026-12-07,9\n".to_vec();
    upload_from_a_job(&ctx, "report", &body).await?;
    assert_eq!(
        stored(&ctx, &format!("{}/report.csv", ctx.namespace)).await?,
        body
    );
    release.uninstall_releases_the_lease().await?;
    Ok(())
}

#[tokio::test]
async fn helm_install_runs_the_operator_as_a_pod_that_serves_a_consumer_job() -> TestResult {
    let ctx = TestContext::new("node-helm").await?;
    let mut release = Release::install(&ctx, 1, &[]).await?;

    // The chart's hardening holds on a real kubelet: non-root, read-only root
    // filesystem, no restarts (the probes pass).
    let pods = release.pods().await?;
    let [pod] = pods.as_slice() else {
        return Err(format!("one operator pod expected, got {}", pods.len()).into());
    };
    let pod_spec = pod.spec.clone().unwrap_or_default();
    assert_ne!(
        pod_spec.host_network,
        Some(true),
        "the operator has its own network namespace"
    );
    let container = &pod_spec.containers[0];
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let pod_security = pod_spec.security_context.clone().unwrap_or_default();
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(pod_security.run_as_non_root, Some(true));
    let status = pod.status.clone().unwrap_or_default();
    let restarts: i32 = status
        .container_statuses
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0, "{}", describe_pods(&ctx).await);

    // The ServiceAccount holds the chart's bindings and nothing else.
    let names_sa = |subjects: &Option<Vec<Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == release.deployment()
                && s.namespace.as_deref() == Some(&ctx.namespace)
        })
    };
    let mut bindings = BTreeSet::new();
    for b in Api::<ClusterRoleBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|b| names_sa(&b.subjects))
    {
        bindings.insert(format!("ClusterRoleBinding/{}", b.name_any()));
    }
    for b in Api::<RoleBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|b| names_sa(&b.subjects))
    {
        bindings.insert(format!("RoleBinding/{}", b.name_any()));
    }
    let chart = |kind: &str, suffix: &str| format!("{kind}/{}{suffix}", release.deployment());
    assert_eq!(
        bindings,
        BTreeSet::from([
            // Cluster-scoped reads (issuers, namespaces) only: the release
            // watches one namespace, so Secrets and grants come from a Role there.
            chart("ClusterRoleBinding", ""),
            chart("RoleBinding", ""),
            chart("RoleBinding", "-leader-election"),
        ])
    );

    // A grant becomes a Secret, signed with credentials from the STS.
    let body = b"day,total\n2026-12-01,42\n".to_vec();
    let key = format!("{}/report.csv", ctx.namespace);
    let query = signed_report(&ctx).await?;
    assert!(
        query.contains_key("X-Amz-Security-Token"),
        "signed with temporary (STS) credentials"
    );
    let credential = query.get("X-Amz-Credential").ok_or("no credential")?;
    assert!(
        !credential.starts_with(ctx.env.root_credentials().access_key_id()),
        "not signed with the store's root key"
    );
    let metrics = pod_metrics(pod).await?;
    assert!(sample_value(&metrics, "upload_grant_credential_loads")? >= 1.0);
    assert!(
        sample_value(
            &metrics,
            "upload_grant_credentials_expiry_timestamp_seconds"
        )? > 0.0
    );

    // A Job mounts the Secret and uploads through it.
    upload_from_a_job(&ctx, "report", &body).await?;
    assert_eq!(stored(&ctx, &key).await?, body);

    // Deleting the grant revokes the Secret (the operator's grant watch,
    // with the garbage collector running too).
    ctx.api::<UploadGrant>()
        .delete("report", &DeleteParams::default())
        .await?;
    wait_secret_gone(&ctx, "report").await?;

    // `helm uninstall` stops the pod with SIGTERM: it releases the lease.
    assert!(
        release.lease_holder().await?.is_some(),
        "the operator leads"
    );
    release.uninstall_releases_the_lease().await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_reading_the_mounted_secret_never_holds_an_expired_url() -> TestResult {
    let ctx = TestContext::new("node-renew").await?;
    let _release = Release::install(&ctx, 1, &[]).await?;
    let issuer = open_issuer(&ctx).await?;
    // The shortest ttl the chart's default budget (2m) allows: renewed about
    // once a minute, each renewal landing 2 minutes before expiry.
    create_grant(
        &ctx,
        "beat",
        spec(&ctx, &issuer, "beat.txt", serde_json::json!({"ttl": "3m"})),
    )
    .await?;
    let grant = wait_ready(&ctx, "beat").await?;
    let issued = grant.status.clone().unwrap_or_default();
    let (expires, refresh) = (
        issued.expires_at.ok_or("no expiresAt")?,
        issued.refresh_at.ok_or("no refreshAt")?,
    );
    let window = expires.0.duration_since(refresh.0);
    assert!(
        window >= jiff::SignedDuration::from_mins(2),
        "renewal {refresh:?} lands at least the propagation budget before expiry {expires:?}"
    );
    let data = secret_data(&ctx.client, &ctx.namespace, "beat").await?;
    assert_eq!(
        data.get("headers").map(String::as_str),
        Some("{}"),
        "no headers to send"
    );

    // Every 5 seconds: read the files, upload, print the status and a
    // fingerprint of the URL (never the URL).
    wait_default_service_account(&ctx).await?;
    let script = r#"i=0
while true; do
  i=$((i+1))
  code=$(printf 'beat %s\n' "$i" | curl -sS -o /dev/null -w '%{http_code}' -X "$(cat /grant/method)" --data-binary @- "$(cat /grant/url)")
  echo "use=$i status=$code url=$(cat /grant/url | sha256sum | cut -c1-12)"
  sleep 5
done"#;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "uploader"},
        "spec": consumer_pod_spec("beat", script, serde_json::json!([]))?,
    }))?;
    let pods: Api<Pod> = ctx.api();
    pods.create(&PostParams::default(), &pod).await?;

    // Three URLs seen by the pod means two renewals reached it; every use
    // must have been accepted.
    let uses = eventually(
        "the pod to use three different URLs",
        Duration::from_secs(300),
        || async {
            let logs = pods
                .logs("uploader", &LogParams::default())
                .await
                .unwrap_or_default();
            let uses: Vec<(String, String)> = logs
                .lines()
                .filter_map(|l| {
                    let status = l.split("status=").nth(1)?.split(' ').next()?;
                    let url = l.split("url=").nth(1)?;
                    Some((status.to_owned(), url.to_owned()))
                })
                .collect();
            if let Some(bad) = uses.iter().find(|(status, _)| status != "200") {
                return Err(format!("an upload was refused ({bad:?}):\n{logs}").into());
            }
            let urls: BTreeSet<&String> = uses.iter().map(|(_, u)| u).collect();
            Ok((urls.len() >= 3).then_some(uses.len()))
        },
    )
    .await?;
    eprintln!("{uses} uploads through three URLs, none refused");
    Ok(())
}

/// The grants use the chart's default issuer (`defaultIssuer.create`): an
/// upgrade that deleted and recreated it would revoke them all in the gap.
#[tokio::test]
async fn failover_and_upgrade_re_sign_nothing_that_is_fresh() -> TestResult {
    let ctx = TestContext::new("node-ha").await?;
    let issuer = format!("ugo-default-{}", support::random_suffix());
    ctx.delete_issuer_on_drop(&issuer);
    let sets = [
        "defaultIssuer.create=true".to_owned(),
        format!("defaultIssuer.name={issuer}"),
        format!("operator.defaultIssuer={issuer}"),
        format!("defaultIssuer.s3.region={}", ctx.env.region()),
        format!("defaultIssuer.s3.endpoint={}", ctx.env.s3_endpoint()),
        "defaultIssuer.s3.forcePathStyle=true".to_owned(),
        format!("defaultIssuer.allow[0].buckets[0]={}", ctx.env.bucket()),
        // Leader election's failover; sharding's is tests/sharding_replicas.rs.
        "sharding.enabled=false".to_owned(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let mut release = Release::install(&ctx, 2, &sets).await?;
    let issuers: Api<ClusterGrantIssuer> = Api::all(ctx.client.clone());
    let issuer_uid = issuers.get(&issuer).await?.uid();
    const GRANTS: usize = 5;
    for i in 0..GRANTS {
        let name = format!("fresh-{i}");
        let mut by_default = spec(&ctx, &issuer, &format!("{name}.bin"), serde_json::json!({}));
        if let Some(s) = by_default.as_object_mut() {
            s.remove("issuerRef");
        }
        create_grant(&ctx, &name, by_default).await?;
    }
    for i in 0..GRANTS {
        wait_ready(&ctx, &format!("fresh-{i}")).await?;
    }
    let before = secret_versions(&ctx).await?;
    assert_eq!(before.len(), GRANTS);

    // Kill the leader as a node failure would: no SIGTERM, no lease release.
    let leader = release.lease_holder().await?.ok_or("no leader")?;
    let pods: Api<Pod> = ctx.api();
    pods.delete(
        &leader,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await?;
    let successor = eventually("another pod to lead", Duration::from_secs(90), || async {
        Ok(release.lease_holder().await?.filter(|h| *h != leader))
    })
    .await?;
    settled_without_signing(&ctx, &release, &successor, GRANTS).await?;
    assert_eq!(
        secret_versions(&ctx).await?,
        before,
        "a Secret was rewritten after failover"
    );

    // A rolling upgrade replaces both pods; the new leader rewrites nothing.
    release.upgrade(&["podAnnotations.rollout=second"])?;
    wait_rolled_out(&ctx, &release.deployment(), 2).await?;
    let pods_now: BTreeSet<String> = release.pods().await?.iter().map(|p| p.name_any()).collect();
    let new_leader = eventually("a new pod to lead", Duration::from_secs(90), || async {
        Ok(release
            .lease_holder()
            .await?
            .filter(|h| pods_now.contains(h)))
    })
    .await?;
    settled_without_signing(&ctx, &release, &new_leader, GRANTS).await?;
    assert_eq!(
        secret_versions(&ctx).await?,
        before,
        "a Secret was rewritten by the upgrade"
    );
    assert_eq!(
        issuers.get(&issuer).await?.uid(),
        issuer_uid,
        "the upgrade recreated the default issuer"
    );
    for i in 0..GRANTS {
        let events = support::grants::event_reasons(&ctx, &format!("fresh-{i}")).await?;
        assert!(
            !events.iter().any(|r| r == "Denied" || r == "Revoked"),
            "fresh-{i}: {events:?}"
        );
    }

    release.uninstall_releases_the_lease().await?;
    Ok(())
}

/// Waits until the leader `name` has reconciled every grant, and checks it
/// signed nothing: what it found was fresh.
async fn settled_without_signing(
    ctx: &TestContext,
    release: &Release<'_>,
    name: &str,
    grants: usize,
) -> TestResult {
    let pod = release
        .pods()
        .await?
        .into_iter()
        .find(|p| p.name_any() == name)
        .ok_or_else(|| format!("leader {name} is not a running pod of the release"))?;
    let metrics = eventually(
        "the new leader to reconcile every grant",
        Duration::from_secs(60),
        || async {
            let metrics = pod_metrics(&pod).await?;
            let ready = sample_value(&metrics, r#"upload_grant_grants{reason="Issued"}"#)?;
            Ok((ready >= grants as f64).then_some(metrics))
        },
    )
    .await
    .map_err(|e| format!("{e}: {}", ctx.namespace))?;
    assert_eq!(
        signings(&metrics)?,
        0.0,
        "the new leader signed again:\n{metrics}"
    );
    Ok(())
}
