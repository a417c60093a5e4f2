//! The test environment's node: images loaded into its containerd, and
//! waiting on what pods need and do.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;

use super::{TestContext, TestEnv, TestResult, eventually, output};

/// Imports the OCI archive `archive` (as `make image` and `make
/// consumer-image` write them) into the node's containerd, namespace k8s.io,
/// unless the image it names is there already with the same manifest; so
/// calling it again, from any test, costs one `ctr images ls`. `make_target`
/// is what builds the archive, for the message when it is missing. Returns
/// the image's reference.
pub fn import_image(archive: &Path, make_target: &str) -> TestResult<String> {
    static IMPORTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = IMPORTING.lock().unwrap_or_else(|p| p.into_inner());
    if !archive.is_file() {
        return Err(format!(
            "no image archive {}: run `{make_target}` first",
            archive.display()
        )
        .into());
    }
    let (reference, digest) = archive_image(archive)?;
    let env = TestEnv::get();
    let address = env.var("TESTENV_CONTAINERD_ADDRESS");
    let ctr = |args: &[&str]| {
        let mut cmd = Command::new(env.bin("ctr"));
        cmd.args(["--address", address, "-n", "k8s.io"]).args(args);
        cmd
    };
    let listed = output(ctr(&["images", "ls", &format!("name=={reference}")]))?;
    let present = listed.lines().any(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        columns.first() == Some(&reference.as_str()) && columns.get(2) == Some(&digest.as_str())
    });
    if !present {
        eprintln!("importing {} into the node's containerd", archive.display());
        output(ctr(&["images", "import", &archive.display().to_string()]))?;
    }
    Ok(reference)
}

/// The reference and manifest digest an OCI archive's index.json names.
fn archive_image(archive: &Path) -> TestResult<(String, String)> {
    let mut tar = Command::new("tar");
    tar.arg("-xOf").arg(archive).arg("index.json");
    let index: serde_json::Value = serde_json::from_str(&output(tar)?)?;
    let manifest = &index["manifests"][0];
    let reference = manifest["annotations"]["io.containerd.image.name"]
        .as_str()
        .ok_or(format!(
            "{}: no io.containerd.image.name",
            archive.display()
        ))?;
    let digest = manifest["digest"]
        .as_str()
        .ok_or(format!("{}: no manifest digest", archive.display()))?;
    Ok((reference.to_owned(), digest.to_owned()))
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
