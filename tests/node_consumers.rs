//! The example consumers run as pods on the test node, from the image
//! `make consumer-image` builds (target/image/upload-grant-consumers.tar,
//! pushed to the test environment's registry, from which the node pulls it),
//! each with a grant's Secret mounted as a volume: the curl Job of
//! examples/curl-job.yaml as written (only its image, namespace and Secret
//! replaced, and what this node needs: hostNetwork), and pods
//! running the Python, Go, Java and Node.js consumers. Each uploads its own
//! body through a PUT grant that pins its length; the test reads every
//! object back from the store.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use support::grants::*;
use support::node::*;
use support::{TestContext, TestResult, repo_root};

/// Java compiles its source file at start-up, and five pods share two cores.
const POD_TIMEOUT: Duration = Duration::from_secs(240);

/// The consumers' commands in the image: each reads the body on stdin.
const CONSUMERS: &[(&str, &str)] = &[
    ("python", "python3 /examples/consumer.py /grant"),
    ("go", "consumer-go /grant"),
    ("java", "java /examples/Consumer.java /grant"),
    ("node", "node /examples/consumer.mjs /grant"),
];

/// What examples/curl-job.yaml uploads.
const CURL_JOB_BODY: &[u8] = b"day,total\n2026-11-29,42\n";

#[tokio::test]
async fn the_example_consumers_upload_from_pods_on_the_node() -> TestResult {
    // Fails at once, before any setup, without `make consumer-image`.
    consumer_image()?;
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("node-consumers").await?;
    let issuer = open_issuer(&ctx).await?;

    let mut bodies = BTreeMap::new();
    bodies.insert("curl", CURL_JOB_BODY.to_vec());
    for &(lang, _) in CONSUMERS {
        bodies.insert(
            lang,
            format!("uploaded from a pod by the {lang} consumer\n").into_bytes(),
        );
    }
    for (lang, body) in &bodies {
        let pinned = serde_json::json!({"contentType": "text/csv", "contentLength": body.len()});
        create_grant(
            &ctx,
            &format!("{lang}-put"),
            spec(&ctx, &issuer, &format!("{lang}.csv"), pinned),
        )
        .await?;
    }
    for lang in bodies.keys() {
        wait_ready(&ctx, &format!("{lang}-put")).await?;
    }
    wait_default_service_account(&ctx).await?;

    // All at once: the node runs them side by side.
    let job = curl_job(&ctx, "curl-put")?;
    Api::<Job>::namespaced(ctx.client.clone(), &ctx.namespace)
        .create(&PostParams::default(), &job)
        .await?;
    let pods: Api<Pod> = ctx.api();
    for &(lang, command) in CONSUMERS {
        let body = String::from_utf8(bodies[lang].clone())?;
        pods.create(&PostParams::default(), &consumer_pod(lang, command, &body)?)
            .await?;
    }
    let mut waits = vec![];
    for &(lang, _) in CONSUMERS {
        let ctx = &ctx;
        waits.push(
            Box::pin(async move { (lang, pod_outcome(ctx, lang).await) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
        );
    }
    waits.push(Box::pin(async {
        (
            "curl",
            wait_job_succeeded(&ctx, "upload-nightly-report").await,
        )
    }));
    let failures: Vec<String> = futures::future::join_all(waits)
        .await
        .into_iter()
        .filter_map(|(lang, outcome)| outcome.err().map(|e| format!("{lang}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "consumer pods failed:\n{}",
        failures.join("\n")
    );

    let s3 = support::s3_client(ctx.env, ctx.env.root_credentials());
    for (lang, body) in &bodies {
        let object = s3
            .get_object()
            .bucket(ctx.env.bucket())
            .key(format!("{}/{lang}.csv", ctx.namespace))
            .send()
            .await?;
        assert_eq!(object.content_type(), Some("text/csv"), "{lang}");
        let stored = object.body.collect().await?.into_bytes();
        assert_eq!(
            &stored[..],
            &body[..],
            "the {lang} consumer's pod stored other bytes"
        );
    }
    Ok(())
}

/// examples/curl-job.yaml with only its namespace, image and Secret replaced,
/// plus what this node needs: hostNetwork (the store is on 127.0.0.1) and
/// never pulling. Its command is the example's own.
fn curl_job(ctx: &TestContext, secret: &str) -> TestResult<Job> {
    let mut job: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(
        repo_root().join("examples/curl-job.yaml"),
    )?)?;
    job["metadata"]["namespace"] = ctx.namespace.clone().into();
    let pod = &mut job["spec"]["template"]["spec"];
    pod["hostNetwork"] = true.into();
    pod["volumes"][0]["secret"]["secretName"] = secret.into();
    let container = &mut pod["containers"][0];
    container["image"] = consumer_image()?.into();
    Ok(serde_json::from_value(job)?)
}

/// A pod that pipes `body` into one consumer, with the `{lang}-put` grant's
/// Secret mounted at /grant.
fn consumer_pod(lang: &str, command: &str, body: &str) -> TestResult<Pod> {
    let script = format!("printf '%s' \"$BODY\" | {command}");
    let env = serde_json::json!([{"name": "BODY", "value": body}]);
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": lang},
        "spec": consumer_pod_spec(&format!("{lang}-put"), &script, env)?,
    }))?)
}

async fn pod_outcome(ctx: &TestContext, name: &str) -> TestResult {
    let pod = wait_pod_finished(ctx, name, POD_TIMEOUT).await?;
    let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
    if phase != "Succeeded" {
        let logs = pod_logs(ctx, name).unwrap_or_else(|e| format!("(no logs: {e})"));
        return Err(format!("pod {name} {phase}: {logs}").into());
    }
    Ok(())
}
