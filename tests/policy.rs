//! `upload-grant-operator policy`: the IAM policy it generates from the
//! issuers is enforced by the store as a session policy — an STS session
//! limited by it can do what the issuer's rules allow and nothing else.
//! The bucket guardrails use conditions the test store does not evaluate
//! (s3:signatureAge, s3:signatureversion, aws:SourceVpce); they are checked
//! structurally by the unit tests in src/policy/iam.rs.

mod support;

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use support::grants::create_issuer;
use support::{TestContext, TestResult};

/// Runs the operator binary's `policy` subcommand against the test cluster.
fn policy(ctx: &TestContext, args: &[&str]) -> TestResult<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upload-grant-operator"))
        .arg("policy")
        .args(args)
        .env("KUBECONFIG", ctx.env.kubeconfig())
        .output()?;
    if !out.status.success() {
        return Err(format!("policy {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Status of a request presigned with `credentials` for `method` on `key`.
async fn try_request(
    ctx: &TestContext,
    credentials: &(String, String, String),
    method: &str,
    key: &str,
) -> TestResult<u16> {
    let creds = aws_credential_types::Credentials::new(
        &credentials.0,
        &credentials.1,
        Some(credentials.2.clone()),
        None,
        "sts",
    );
    let s3 = support::s3_client(ctx.env, creds);
    let config = PresigningConfig::expires_in(Duration::from_secs(300))?;
    let bucket = ctx.env.bucket();
    let request = match method {
        "PUT" => {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await?
        }
        "GET" => {
            s3.get_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await?
        }
        _ => {
            s3.delete_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await?
        }
    };
    let body = if method == "PUT" {
        b"policy".to_vec()
    } else {
        Vec::new()
    };
    Ok(support::send(&request, body).await?.status().as_u16())
}

#[tokio::test]
async fn a_session_limited_by_the_generated_iam_policy_can_do_what_the_rules_allow_only()
-> TestResult {
    let ctx = TestContext::new("policy").await?;
    support::install_committed_crds(&ctx.client).await?;
    let rules = serde_json::json!([
        {"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}/in/"], "methods": ["PUT", "GET"]},
        {"buckets": [ctx.env.bucket()], "keyPrefixes": ["shared/"], "methods": ["GET"]},
    ]);
    let issuer = create_issuer(&ctx, rules).await?;
    let iam = policy(&ctx, &["iam", "--issuer", &issuer])?;
    let bucket = ctx.env.bucket();
    assert_eq!(
        iam["Statement"][1]["Resource"],
        serde_json::json!([format!("arn:aws:s3:::{bucket}/*/in/*")]),
        "{iam}"
    );

    let inside = format!("{}/in/report.csv", ctx.namespace);
    let outside = format!("{}/out/report.csv", ctx.namespace);
    // The role alone may do all of it: what the session is refused below is
    // the generated policy's doing.
    let role = support::session_credentials(&ctx, "policy-role", None).await?;
    assert_eq!(try_request(&ctx, &role, "PUT", &outside).await?, 200);
    assert_eq!(try_request(&ctx, &role, "DELETE", &outside).await?, 204);

    let limited =
        support::session_credentials(&ctx, "policy-limited", Some(&iam.to_string())).await?;
    assert_eq!(
        try_request(&ctx, &limited, "PUT", &inside).await?,
        200,
        "PUT under {{namespace}}/in/"
    );
    assert_eq!(
        try_request(&ctx, &limited, "GET", &inside).await?,
        200,
        "GET under {{namespace}}/in/"
    );
    assert_eq!(
        try_request(&ctx, &limited, "PUT", &outside).await?,
        403,
        "PUT outside every prefix"
    );
    assert_eq!(
        try_request(&ctx, &limited, "PUT", "shared/x.csv").await?,
        403,
        "PUT where only GET is allowed"
    );
    assert_eq!(
        try_request(&ctx, &limited, "DELETE", &inside).await?,
        403,
        "DELETE, which no rule allows"
    );
    Ok(())
}

#[tokio::test]
async fn bucket_policies_name_every_bucket_with_its_longest_max_ttl() -> TestResult {
    let ctx = TestContext::new("policy-bucket").await?;
    support::install_committed_crds(&ctx.client).await?;
    let bucket = ctx.env.bucket().to_owned();
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [bucket], "maxTtl": "2h"}, {"buckets": [bucket], "maxTtl": "30m"}]),
    )
    .await?;
    let one = policy(
        &ctx,
        &[
            "bucket",
            "--issuer",
            &issuer,
            "--bucket",
            &bucket,
            "--vpce",
            "vpce-0abc",
        ],
    )?;
    let statements = one["Statement"].as_array().cloned().unwrap_or_default();
    let sids: Vec<&str> = statements
        .iter()
        .filter_map(|s| s["Sid"].as_str())
        .collect();
    assert_eq!(
        sids,
        [
            "DenyPresignedOlderThanMaxTtl",
            "DenyNotSigV4",
            "DenyOutsideVpcEndpoint"
        ]
    );
    assert_eq!(
        statements[0]["Condition"]["NumericGreaterThan"]["s3:signatureAge"],
        "7200000"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upload-grant-operator"))
        .args([
            "policy",
            "bucket",
            "--issuer",
            &issuer,
            "--bucket",
            "not-named",
        ])
        .env("KUBECONFIG", ctx.env.kubeconfig())
        .output()?;
    assert!(
        !out.status.success(),
        "a bucket no rule names has no policy"
    );
    Ok(())
}
