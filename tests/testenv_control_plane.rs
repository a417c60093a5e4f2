//! Proof that the local control plane is the real thing: the pinned version,
//! and a CRD schema the apiserver enforces.

mod support;

use kube::Api;
use kube::api::PostParams;
use support::{TestContext, TestEnv, TestResult};
use upload_grant_operator::api::{UploadGrant, UploadGrantSpec};

const KUBERNETES_VERSION: &str = "v1.36.3";

#[tokio::test]
async fn apiserver_and_kubectl_report_the_pinned_version() -> TestResult {
    let env = TestEnv::get();
    let info = env.client().await?.apiserver_version().await?;
    assert_eq!(info.git_version, KUBERNETES_VERSION);

    let out = env
        .command("kubectl")
        .args(["version", "-o", "json"])
        .output()?;
    assert!(
        out.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["clientVersion"]["gitVersion"], KUBERNETES_VERSION);
    assert_eq!(v["serverVersion"]["gitVersion"], KUBERNETES_VERSION);

    let out = env
        .command("helm")
        .args(["version", "--template", "{{.Version}}"])
        .output()?;
    let helm = String::from_utf8(out.stdout)?;
    assert!(helm.starts_with("v3.22."), "helm reports {helm:?}");
    Ok(())
}

#[tokio::test]
async fn apiserver_rejects_a_custom_resource_that_breaks_the_crd_schema() -> TestResult {
    let ctx = TestContext::new("schema").await?;
    support::install_committed_crds(&ctx.client).await?;
    let grants: Api<UploadGrant> = ctx.api();

    let valid = grant("valid", "reports-bucket");
    grants.create(&PostParams::default(), &valid).await?;

    let invalid = grant("invalid", "Not_A_Bucket");
    match grants.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("spec.bucket"),
                "message should name the field: {}",
                status.message
            );
        }
        other => panic!("expected HTTP 422, got {other:?}"),
    }
    Ok(())
}

fn grant(name: &str, bucket: &str) -> UploadGrant {
    let spec: UploadGrantSpec = serde_json::from_value(serde_json::json!({
        "bucket": bucket,
        "key": "reports/today.csv",
    }))
    .expect("static spec");
    UploadGrant::new(name, spec)
}
