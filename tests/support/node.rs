//! The test environment's node: images pushed to the registry it pulls
//! from, and waiting on what pods need and do.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::LogParams;

use super::{TestContext, TestEnv, TestResult, eventually, output};

/// Where `make image` writes the operator's image.
pub const OPERATOR_IMAGE_ARCHIVE: &str = "target/image/upload-grant-operator.tar";
/// Where `make consumer-image` writes the example consumers' image.
pub const CONSUMER_ARCHIVE: &str = "target/image/upload-grant-consumers.tar";

/// An image pushed to the test environment's registry, as the node pulls it.
pub struct Pushed {
    /// REGISTRY/NAME, the chart's `image.repository`.
    pub repository: String,
    /// sha256:…, the chart's `image.digest`.
    pub digest: String,
}

impl Pushed {
    /// REGISTRY/NAME@sha256:…, for a pod spec.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// Pushes the OCI archive `archive` (as `make image` and `make
/// consumer-image` write them) to the test environment's registry with
/// tools/image/push.sh, as `make push` does, under the archive's own name
/// and tag; the node then pulls it from there, as a cluster pulls from ECR
/// (nothing is imported into its containerd). A second push of the same
/// archive uploads nothing. `make_target` is what builds the archive, for
/// the message when it is missing.
pub fn push_image(archive: &Path, make_target: &str) -> TestResult<Pushed> {
    static PUSHING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PUSHING.lock().unwrap_or_else(|p| p.into_inner());
    if !archive.is_file() {
        return Err(format!(
            "no image archive {}: run `{make_target}` first",
            archive.display()
        )
        .into());
    }
    let name = archive_image_name(archive)?;
    let env = TestEnv::get();
    let target = format!("{}/{name}", env.var("TESTENV_REGISTRY"));
    let mut push = Command::new("bash");
    push.arg(super::repo_root().join("tools/image/push.sh"))
        .arg(archive)
        .arg(&target);
    let printed = output(push)?;
    let pushed = printed.trim();
    let (repository, digest) = pushed
        .split_once('@')
        .ok_or(format!("push.sh printed {pushed:?}, not REPOSITORY@DIGEST"))?;
    Ok(Pushed {
        repository: repository.to_owned(),
        digest: digest.to_owned(),
    })
}

/// The consumer image, pushed once per test binary; its REGISTRY/NAME@DIGEST.
pub fn consumer_image() -> TestResult<String> {
    static PUSHED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(reference) = PUSHED.get() {
        return Ok(reference.clone());
    }
    let archive = super::repo_root().join(CONSUMER_ARCHIVE);
    let reference = push_image(&archive, "make consumer-image")?.reference();
    Ok(PUSHED.get_or_init(|| reference).clone())
}

/// NAME:TAG of the reference an OCI archive's index.json names (its
/// io.containerd.image.name, e.g. upload-grant-operator:dev of
/// docker.io/library/upload-grant-operator:dev).
fn archive_image_name(archive: &Path) -> TestResult<String> {
    let mut tar = Command::new("tar");
    tar.arg("-xOf").arg(archive).arg("index.json");
    let index: serde_json::Value = serde_json::from_str(&output(tar)?)?;
    let reference = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .ok_or(format!(
            "{}: no io.containerd.image.name",
            archive.display()
        ))?;
    Ok(reference.rsplit('/').next().unwrap_or(reference).to_owned())
}

/// The ServiceAccount admission plugin refuses pods until the
/// controller-manager has created the namespace's `default` ServiceAccount.
pub async fn wait_default_service_account(ctx: &TestContext) -> TestResult {
    let sas: Api<ServiceAccount> = ctx.api();
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
    )
    .await
}

/// Waits until the pod has run to the end (phase Succeeded or Failed).
pub async fn wait_pod_finished(
    ctx: &TestContext,
    name: &str,
    timeout: Duration,
) -> TestResult<Pod> {
    let pods: Api<Pod> = ctx.api();
    eventually(&format!("pod {name} to finish"), timeout, || async {
        let pod = pods.get(name).await?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Ok(matches!(phase, Some("Succeeded" | "Failed")).then_some(pod))
    })
    .await
}

/// The pod's output, with `kubectl logs` (apiserver -> kubelet).
pub fn pod_logs(ctx: &TestContext, name: &str) -> TestResult<String> {
    let mut kubectl = ctx.env.command("kubectl");
    kubectl.args(["logs", "-n", &ctx.namespace, name]);
    output(kubectl)
}

/// Waits until the Deployment has rolled out `replicas` Available pods of its
/// current template; on timeout, says what its pods are doing.
pub async fn wait_rolled_out(ctx: &TestContext, name: &str, replicas: i32) -> TestResult {
    let deployments: Api<Deployment> = ctx.api();
    let done = eventually(
        "the Deployment to roll out",
        Duration::from_secs(180),
        || async {
            let d = deployments.get(name).await?;
            let generation = d.metadata.generation;
            let s = d.status.unwrap_or_default();
            let available = s
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            Ok((available
                && s.observed_generation == generation
                && s.updated_replicas == Some(replicas)
                && s.available_replicas == Some(replicas)
                && s.replicas == Some(replicas))
            .then_some(()))
        },
    )
    .await;
    if let Err(e) = done {
        return Err(format!("{e}; pods: {}", describe_pods(ctx).await).into());
    }
    Ok(())
}

/// Each pod's phase, container states and last log lines, for failure messages.
pub async fn describe_pods(ctx: &TestContext) -> String {
    let pods: Api<Pod> = ctx.api();
    let Ok(list) = pods.list(&Default::default()).await else {
        return "cannot list pods".into();
    };
    let mut out = String::new();
    for p in list {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.unwrap_or_default();
        out += &format!(
            "\n{name}: {:?} {:?}",
            status.phase,
            status.container_statuses.map(|c| c
                .into_iter()
                .map(|c| (c.state, c.restart_count))
                .collect::<Vec<_>>())
        );
        let tail = LogParams {
            tail_lines: Some(20),
            ..LogParams::default()
        };
        if let Ok(logs) = pods.logs(&name, &tail).await {
            out += &format!("\n{logs}");
        }
    }
    out
}

/// Waits until the Job has succeeded; on failure or timeout, says what its
/// pods did.
pub async fn wait_job_succeeded(ctx: &TestContext, job: &str) -> TestResult {
    use k8s_openapi::api::batch::v1::Job;
    let jobs: Api<Job> = ctx.api();
    let outcome = eventually("the Job to finish", Duration::from_secs(180), || async {
        let s = jobs.get(job).await?.status.unwrap_or_default();
        let finished = s
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        Ok(finished.map(|c| c.type_))
    })
    .await;
    match outcome {
        Ok(t) if t == "Complete" => Ok(()),
        Ok(t) => Err(format!("Job {job} {t}: {}", describe_pods(ctx).await).into()),
        Err(e) => Err(format!("{e}: {}", describe_pods(ctx).await).into()),
    }
}

/// A pod spec that runs `script` with sh in the consumer image (pushed to
/// the test registry first), with the Secret `secret` mounted at /grant, as
/// an unprivileged user on the node's network (the store listens on
/// 127.0.0.1).
pub fn consumer_pod_spec(
    secret: &str,
    script: &str,
    env: serde_json::Value,
) -> TestResult<serde_json::Value> {
    Ok(serde_json::json!({
        "restartPolicy": "Never",
        "hostNetwork": true,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "consumer",
            "image": consumer_image()?,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", script],
            "env": env,
            "volumeMounts": [{"name": "grant", "mountPath": "/grant", "readOnly": true}],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
        }],
        "volumes": [{"name": "grant", "secret": {"secretName": secret}}],
    }))
}
