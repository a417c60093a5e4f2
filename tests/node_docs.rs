//! Every command block of the book's "Consuming a grant" page
//! (docs/src/consuming.md) runs exactly as written: the PUT, multipart and
//! POST recipes in pods on the test node, from the consumer image, with a
//! grant's Secret mounted at /grant as the page says, each uploading a file
//! the test reads back from the store; and the `kubectl annotate` block
//! against the cluster, setting the annotation the operator reads. A block
//! added to the page without a place here fails the test.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use support::grants::*;
use support::node::*;
use support::post::static_key_scenario;
use support::{TestContext, TestResult, output, repo_root};
use upload_grant_operator::controller::rollout::ACCEPT_ANNOTATION;

const PAGE: &str = "docs/src/consuming.md";
const MIB: usize = 1024 * 1024;
const POD_TIMEOUT: Duration = Duration::from_secs(180);

/// The page's `sh` blocks, in order, as written.
fn page_blocks() -> TestResult<Vec<String>> {
    let page = std::fs::read_to_string(repo_root().join(PAGE))?;
    Ok(page
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .map(str::to_owned)
        .collect())
}

/// What each consumer block uploads, in the pod's working directory, and
/// the grant it needs; told apart by the file each block reads.
struct Recipe {
    grant: &'static str,
    file: &'static str,
    body: Vec<u8>,
    spec: serde_json::Value,
}

fn recipe_for(block: &str) -> TestResult<Recipe> {
    let csv = b"day,total\n2026-12-07,42\n".to_vec();
    if block.contains("big.bin") {
        // Two full parts and a short last one, as the page's sizing rule says.
        let body: Vec<u8> = b"0123456789abcdef\n"
            .iter()
            .copied()
            .cycle()
            .take(2 * 5 * MIB + 1000)
            .collect();
        let spec = serde_json::json!({"multipart": {"parts": 3, "partSize": "5Mi"}});
        Ok(Recipe {
            grant: "docs-multipart",
            file: "big.bin",
            body,
            spec,
        })
    } else if block.contains("/grant/fields") {
        let spec =
            serde_json::json!({"method": "POST", "contentLengthRange": {"min": 1, "max": "1Mi"}});
        Ok(Recipe {
            grant: "docs-post",
            file: "report.csv",
            body: csv,
            spec,
        })
    } else if block.contains("/grant/headers") {
        let spec = serde_json::json!({"contentType": "text/csv", "contentLength": csv.len()});
        Ok(Recipe {
            grant: "docs-put",
            file: "report.csv",
            body: csv,
            spec,
        })
    } else {
        Err(format!("a command block of {PAGE} no test runs:\n{block}").into())
    }
}

#[tokio::test]
async fn the_consuming_pages_commands_run_as_written() -> TestResult {
    consumer_image()?;
    let blocks = page_blocks()?;
    let (kubectl, consumers): (Vec<&String>, Vec<&String>) =
        blocks.iter().partition(|b| b.starts_with("kubectl "));
    let recipes = consumers
        .iter()
        .map(|b| recipe_for(b))
        .collect::<TestResult<Vec<_>>>()?;
    let mut grants: Vec<&str> = recipes.iter().map(|r| r.grant).collect();
    grants.sort();
    assert_eq!(
        grants,
        ["docs-multipart", "docs-post", "docs-put"],
        "one block per kind"
    );

    // Static keys: the test store verifies POST policies only for them.
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = static_key_scenario("node-docs").await?;
    let bucket = serde_json::json!([ctx.env.bucket()]);
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": bucket}, {"buckets": bucket, "methods": ["PUT"], "multipart": true}]),
    )
    .await?;
    for recipe in &recipes {
        let key = format!("{}.{}", recipe.grant, recipe.file);
        create_grant(
            &ctx,
            recipe.grant,
            spec(&ctx, &issuer, &key, recipe.spec.clone()),
        )
        .await?;
    }
    for recipe in &recipes {
        wait_ready(&ctx, recipe.grant).await?;
    }
    wait_default_service_account(&ctx).await?;

    let pods: Api<Pod> = ctx.api();
    for (block, recipe) in consumers.iter().zip(&recipes) {
        pods.create(&PostParams::default(), &block_pod(block, recipe)?)
            .await?;
    }
    let mut failures = BTreeMap::new();
    for recipe in &recipes {
        let pod = wait_pod_finished(&ctx, recipe.grant, POD_TIMEOUT).await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        if phase != "Succeeded" {
            let logs = pod_logs(&ctx, recipe.grant).unwrap_or_else(|e| format!("(no logs: {e})"));
            failures.insert(recipe.grant, format!("{phase}: {logs}"));
        }
    }
    assert!(
        failures.is_empty(),
        "blocks of {PAGE} failed in pods: {failures:#?}"
    );
    for recipe in &recipes {
        let key = format!("{}/{}.{}", ctx.namespace, recipe.grant, recipe.file);
        assert!(
            stored(&ctx, &key).await? == recipe.body,
            "{key}: other bytes stored"
        );
    }

    for block in kubectl {
        annotate_as_written(&ctx, block).await?;
    }
    Ok(())
}

/// A pod that writes the recipe's file into its working directory, then
/// runs `block` in bash exactly as written, with the grant's Secret at
/// /grant and a writable /tmp (the root file system is read-only).
fn block_pod(block: &str, recipe: &Recipe) -> TestResult<Pod> {
    let make_file = if recipe.file == "big.bin" {
        // The same bytes as Recipe::body (no pipefail: yes ends on SIGPIPE).
        format!(
            "yes 0123456789abcdef | head -c {} > big.bin",
            recipe.body.len()
        )
    } else {
        format!("printf '%s' \"$BODY\" > {}", recipe.file)
    };
    let script = format!("set -e\n{make_file}\n{block}\n");
    // The CSV body only: a 10 MiB variable is past what exec takes.
    let body = match recipe.file {
        "big.bin" => String::new(),
        _ => String::from_utf8_lossy(&recipe.body).into_owned(),
    };
    let env = serde_json::json!([{"name": "BODY", "value": body}]);
    let mut spec = consumer_pod_spec(recipe.grant, &script, env)?;
    let container = &mut spec["containers"][0];
    container["command"] = serde_json::json!(["/bin/bash", "-c", script]);
    container["workingDir"] = "/tmp".into();
    container["volumeMounts"]
        .as_array_mut()
        .ok_or("no volumeMounts")?
        .push(serde_json::json!({"name": "tmp", "mountPath": "/tmp"}));
    spec["volumes"]
        .as_array_mut()
        .ok_or("no volumes")?
        .push(serde_json::json!({"name": "tmp", "emptyDir": {}}));
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": recipe.grant},
        "spec": spec,
    }))?)
}

/// Runs the `kubectl annotate` block as written, in a kubeconfig whose
/// namespace is the test's, on the Deployment it names; the annotation it
/// sets is the one the operator reads.
async fn annotate_as_written(ctx: &TestContext, block: &str) -> TestResult {
    let name = block
        .split_whitespace()
        .nth(3)
        .ok_or(format!("which workload does `{block}` annotate?"))?;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": consumer_image()?}]}},
        },
    }))?;
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;

    let work = tempfile::tempdir()?;
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::copy(ctx.env.kubeconfig(), &kubeconfig)?;
    let mut set_namespace = ctx.env.command("kubectl");
    set_namespace.env("KUBECONFIG", &kubeconfig).args([
        "config",
        "set-context",
        "--current",
        "--namespace",
        &ctx.namespace,
    ]);
    output(set_namespace)?;
    let mut bash = std::process::Command::new("bash");
    bash.args(["-e", "-c", block])
        .env("KUBECONFIG", &kubeconfig)
        .env("PATH", ctx.env.path_with_tools());
    output(bash)?;
    let annotated = deployments.get(name).await?;
    let value = annotated
        .metadata
        .annotations
        .unwrap_or_default()
        .remove(ACCEPT_ANNOTATION)
        .ok_or(format!("`{block}` set no {ACCEPT_ANNOTATION}"))?;
    assert!(
        block.contains(&format!("{ACCEPT_ANNOTATION}={value}")),
        "`{block}` set {ACCEPT_ANNOTATION}={value}, not what it shows"
    );
    Ok(())
}
