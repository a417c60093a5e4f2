//! The README's Quickstart runs as written. Steps 2 and 3 — label the
//! namespace, apply the example issuer and grant, wait for it — go through
//! bash against the local cluster, exactly as the README shows them, with
//! an operator running; the `kubectl get` they end with prints the columns
//! the README shows. Every `helm install` of the README (step 1 on EKS, the
//! static keys path) renders with `helm template` exactly as written, its
//! `--set` flags included: this cluster has neither EKS nor the released
//! image, so tests/node_operator.rs installs the same chart on the node with
//! this environment's values. The example issuer and grants are checked by
//! tests/example_policy.rs. No `sh` block of the README is left unchecked.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use kube::Api;
use kube::api::DeleteParams;
use support::grants::Scenario;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult, eventually, repo_root};
use upload_grant_operator::api::ClusterGrantIssuer;

/// What the Quickstart creates: cluster-wide names other tests do not use.
const NAMESPACE: &str = "analytics";
const ISSUER: &str = "default";

/// The `sh` blocks of the README's Quickstart, in order.
fn quickstart_blocks() -> TestResult<Vec<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let section = readme
        .split("\n## Quickstart\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .ok_or("no Quickstart section in the README")?;
    Ok(sh_blocks(section))
}

/// The `sh` blocks of `text`, unindented.
fn sh_blocks(text: &str) -> Vec<String> {
    text.split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .map(|block| {
            // The steps are list items: their blocks are indented.
            block
                .lines()
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// The commands of a block, continuation lines joined, comments dropped.
fn commands(block: &str) -> Vec<String> {
    let joined = block.replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_helm_install_of_the_readme_renders_as_written() -> TestResult {
    let env = support::TestEnv::get();
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let mut rendered = 0;
    for block in sh_blocks(&readme) {
        let cmds = commands(&block);
        let kinds = |prefix: &str| cmds.iter().filter(|c| c.starts_with(prefix)).count();
        let checked = kinds("helm install ") + kinds("kubectl ") + kinds("make push ");
        assert!(checked > 0, "a README block no test checks:\n{block}");
        for install in cmds.iter().filter(|c| c.starts_with("helm install ")) {
            let template = install.replacen("helm install ", "helm template ", 1);
            let mut bash = Command::new("bash");
            bash.args(["-euo", "pipefail", "-c", &template])
                .current_dir(repo_root())
                .env("PATH", env.path_with_tools());
            let manifests = run(bash)?;
            assert!(
                manifests.contains("kind: Deployment"),
                "{template}: {manifests}"
            );
            rendered += 1;
        }
    }
    assert!(
        rendered >= 2,
        "the README's install paths: {rendered} helm installs"
    );
    Ok(())
}

/// Removes what an earlier, failed run may have left.
async fn clean(ctx: &TestContext) -> TestResult {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    let issuers: Api<ClusterGrantIssuer> = Api::all(ctx.client.clone());
    let _ = issuers.delete(ISSUER, &DeleteParams::default()).await;
    if namespaces.get_opt(NAMESPACE).await?.is_some() {
        let _ = namespaces.delete(NAMESPACE, &DeleteParams::default()).await;
        eventually(
            "namespace analytics to be gone",
            std::time::Duration::from_secs(120),
            || async { Ok(namespaces.get_opt(NAMESPACE).await?.is_none().then_some(())) },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_quickstart_runs_as_written() -> TestResult {
    let ctx = TestContext::new("readme").await?;
    clean(&ctx).await?;
    let watch = (
        "UPLOAD_GRANT_WATCH_NAMESPACE".to_owned(),
        NAMESPACE.to_owned(),
    );
    let scenario = Scenario::start_in(
        ctx,
        OperatorOptions {
            env: vec![watch],
            ..OperatorOptions::default()
        },
    )
    .await?;
    let ctx = &scenario.ctx;
    let blocks = quickstart_blocks()?;
    // Step 1 installs with Helm on EKS (and pushes an image to ECR); steps 2
    // and 3 are kubectl only.
    let steps: Vec<&String> = blocks
        .iter()
        .filter(|b| b.starts_with("kubectl "))
        .collect();
    assert_eq!(
        steps.len(),
        2,
        "the Quickstart's kubectl steps: {blocks:#?}"
    );
    let mut shown_header = None;
    let mut printed = String::new();
    for step in steps {
        // A block shows commands and, after them, what they print.
        let (commands, shown): (Vec<&str>, Vec<&str>) =
            step.lines().partition(|l| l.starts_with("kubectl "));
        shown_header = shown_header.or(shown.first().map(|l| l.to_string()));
        let script = commands.join("\n");
        let mut bash = Command::new("bash");
        bash.args(["-euo", "pipefail", "-c", &script])
            .env("KUBECONFIG", ctx.env.kubeconfig())
            .current_dir(repo_root())
            .env("PATH", ctx.env.path_with_tools());
        let out = run(bash)?;
        printed.push_str(&out);
    }
    // The columns `kubectl get ug` prints are the ones the README shows.
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let header = shown_header.ok_or("the README shows no output of kubectl get")?;
    let real = printed
        .lines()
        .find(|l| l.starts_with("NAME "))
        .ok_or_else(|| format!("kubectl get printed no table: {printed}"))?;
    assert_eq!(words(real), words(&header), "the README's columns");
    let row = printed
        .lines()
        .find(|l| l.starts_with("nightly-report "))
        .ok_or_else(|| format!("no row for the grant: {printed}"))?;
    let ready: BTreeSet<String> = words(row).into_iter().collect();
    assert!(ready.contains("True"), "the grant is Ready: {row}");
    clean(ctx).await?;
    Ok(())
}

/// Runs `cmd`: its standard output, or an error with everything it printed.
fn run(mut cmd: Command) -> TestResult<String> {
    let out = cmd.output()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}{}", text(&out.stdout), text(&out.stderr)).into());
    }
    Ok(text(&out.stdout))
}
