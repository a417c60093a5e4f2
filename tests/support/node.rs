//! Helpers for tests that run pods on the environment's node: images imported
//! into its containerd, pods and Jobs from the locally built images, logs.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::LogParams;

use super::{TestContext, TestEnv, TestResult, eventually, output, repo_root};

/// The operator's image as `make image` builds it (TESTENV_IMAGE names it in pod specs).
pub const OPERATOR_IMAGE_ARCHIVE: &str = "target/image/upload-grant-operator.tar";
pub const OPERATOR_IMAGE: &str = "docker.io/library/upload-grant-operator:dev";

static IMPORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Loads an OCI archive into the node's containerd unless `reference` is
/// there already with the same content: `make test` builds the archives
/// before it starts the environment, so the node starts empty.
pub async fn import_image(env: &TestEnv, archive: &str, reference: &str, make: &str) -> TestResult {
    let path = repo_root().join(archive);
    if !Path::new(&path).exists() {
        return Err(format!("no image archive {archive}: run `make {make}` first").into());
    }
    let _one_at_a_time = IMPORTS.lock().await;
    let ctr = |args: &[&str]| {
        let mut c = env.command("ctr");
        c.args([
            "--address",
            env.var("TESTENV_CONTAINERD_ADDRESS"),
            "-n",
            "k8s.io",
        ]);
        c.args(args);
        c
    };
    // Importing again is cheap (the blobs are content-addressed) and makes
    // sure the node runs what the archive holds now, not an older build.
    output(ctr(&["images", "import", &path.to_string_lossy()]))?;
    let listed = output(ctr(&["images", "ls", "-q", &format!("name=={reference}")]))?;
    if listed.trim() != reference {
        return Err(format!("{archive} did not import as {reference}: {listed:?}").into());
    }
    Ok(())
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

/// A manifest from the repository (YAML) as JSON, through kubectl.
pub fn manifest(env: &TestEnv, file: &str) -> TestResult<serde_json::Value> {
    let mut cmd = env.command("kubectl");
    cmd.args(["create", "--dry-run=client", "-o", "json", "-f", file]);
    Ok(serde_json::from_str(&output(cmd)?)?)
}

/// The pod a Job ran, once the Job has succeeded; its logs on failure.
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
