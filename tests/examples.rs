//! The examples users copy: the manifests are accepted by the apiserver, and
//! the Python and Go consumers upload and download through a real grant's
//! Secret files, as a pod with the Secret mounted would.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use support::grants::*;
use support::{TestResult, repo_root};

/// Writes the Secret's keys as files, the way a Secret volume mounts them.
fn mount(dir: &Path, data: &BTreeMap<String, String>) -> TestResult {
    std::fs::create_dir_all(dir)?;
    for (k, v) in data {
        std::fs::write(dir.join(k), v)?;
    }
    Ok(())
}

fn run_consumer(mut cmd: Command, stdin: &[u8]) -> TestResult<Vec<u8>> {
    use std::io::Write;
    let mut child = cmd
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

#[tokio::test]
async fn python_and_go_consumers_work_through_a_mounted_secret() -> TestResult {
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("examples").await?;
    let issuer = open_issuer(&ctx).await?;
    let report = b"day,total\n2026-11-29,42\n".to_vec();
    for (lang, cmd) in [
        ("python", vec!["python3", "examples/consumer.py"]),
        ("go", vec!["go", "run", "examples/consumer.go"]),
    ] {
        let key = format!("{lang}.csv");
        let pinned = serde_json::json!({"contentType": "text/csv", "contentLength": report.len()});
        create_grant(
            &ctx,
            &format!("{lang}-put"),
            spec(&ctx, &issuer, &key, pinned),
        )
        .await?;
        create_grant(
            &ctx,
            &format!("{lang}-get"),
            spec(&ctx, &issuer, &key, serde_json::json!({"method": "GET"})),
        )
        .await?;
        for direction in ["put", "get"] {
            let name = format!("{lang}-{direction}");
            wait_ready(&ctx, &name).await?;
            mount(
                &dir.path().join(&name),
                &secret_data(&ctx.client, &ctx.namespace, &name).await?,
            )?;
        }
        let consumer = |direction: &str| {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..])
                .arg(dir.path().join(format!("{lang}-{direction}")));
            c
        };
        run_consumer(consumer("put"), &report)?;
        let downloaded = run_consumer(consumer("get"), b"")?;
        assert_eq!(
            downloaded, report,
            "{lang} consumer read back different bytes"
        );
    }
    Ok(())
}

#[test]
fn example_manifests_are_accepted_by_the_apiserver() -> TestResult {
    let env = support::TestEnv::get();
    let kubectl = |args: &[&str]| -> TestResult<()> {
        let out = env
            .command("kubectl")
            .args(args)
            .current_dir(repo_root())
            .output()?;
        if !out.status.success() {
            return Err(
                format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        Ok(())
    };
    kubectl(&["apply", "--server-side", "-f", "crds/"])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/uploadgrants.grants.io",
        "crd/clustergrantissuers.grants.io",
    ])?;
    // The examples live in namespace analytics.
    let _ = kubectl(&["create", "namespace", "analytics"]);
    for file in [
        "examples/issuer.yaml",
        "examples/grant-put.yaml",
        "examples/grant-get.yaml",
        "examples/curl-job.yaml",
    ] {
        kubectl(&["apply", "--dry-run=server", "-f", file])?;
    }
    Ok(())
}
