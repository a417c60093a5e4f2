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
    // Two tenants the rule selects by a label of this test's own, so the
    // policy names exactly their namespaces.
    let tenant = format!("policy-{}", support::random_suffix());
    let ctx = TestContext::with_labels("policy", &[("policy.test/tenant", &tenant)]).await?;
    let neighbour =
        TestContext::with_labels("policy-other", &[("policy.test/tenant", &tenant)]).await?;
    support::install_committed_crds(&ctx.client).await?;
    let rules = serde_json::json!([
        {"namespaces": {"matchLabels": {"policy.test/tenant": tenant}}, "buckets": [ctx.env.bucket()],
         "keyPrefixes": ["{namespace}/in/"], "methods": ["PUT", "GET"]},
        {"buckets": [ctx.env.bucket()], "keyPrefixes": ["shared/"], "methods": ["GET"]},
    ]);
    let issuer = create_issuer(&ctx, rules).await?;
    let iam = policy(&ctx, &["iam", "--issuer", &issuer])?;
    let bucket = ctx.env.bucket();
    let mut per_namespace = [
        format!("arn:aws:s3:::{bucket}/{}/in/*", ctx.namespace),
        format!("arn:aws:s3:::{bucket}/{}/in/*", neighbour.namespace),
    ];
    per_namespace.sort();
    assert_eq!(iam["Statement"][1]["Sid"], "PutObject", "{iam}");
    assert_eq!(
        iam["Statement"][1]["Resource"],
        serde_json::json!(per_namespace),
        "{iam}"
    );
    assert!(
        !iam.to_string().contains(&format!("{bucket}/*/")),
        "no wildcard in the namespace's place: {iam}"
    );

    let inside = format!("{}/in/report.csv", ctx.namespace);
    let outside = format!("{}/out/report.csv", ctx.namespace);
    let neighbours = format!("{}/in/report.csv", neighbour.namespace);
    // `*/in/*` would have allowed these: a namespace the rule does not
    // select, and another tenant's folder below an allowed one.
    let unselected = format!("{}-x/in/report.csv", ctx.namespace);
    let nested = format!("{}/x/in/report.csv", neighbour.namespace);
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
        try_request(&ctx, &limited, "PUT", &neighbours).await?,
        200,
        "PUT under the other selected namespace's {{namespace}}/in/"
    );
    assert_eq!(
        try_request(&ctx, &limited, "PUT", &outside).await?,
        403,
        "PUT outside every prefix"
    );
    assert_eq!(
        try_request(&ctx, &limited, "PUT", &unselected).await?,
        403,
        "PUT under a namespace the rule does not select"
    );
    assert_eq!(
        try_request(&ctx, &limited, "PUT", &nested).await?,
        403,
        "PUT where only a wildcard for the namespace would reach"
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

/// Runs `policy` offline (no cluster), returning (status, stdout, stderr).
fn offline(args: &[&str]) -> TestResult<(bool, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upload-grant-operator"))
        .arg("policy")
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn offline_the_namespaces_come_from_the_flag_or_namespace_objects_in_the_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let issuers = dir.path().join("issuers.yaml");
    std::fs::write(
        &issuers,
        r#"apiVersion: grants.io/v1alpha1
kind: ClusterGrantIssuer
metadata: {name: tenants}
spec:
  s3: {region: eu-west-1}
  allow:
  - buckets: [reports]
    keyPrefixes: ["{namespace}/"]
    methods: [PUT]
  - namespaces: {matchLabels: {team: web}}
    buckets: [web]
    keyPrefixes: ["{namespace}/"]
    methods: [GET]
"#,
    )?;
    let file = issuers.to_string_lossy().into_owned();

    // Without namespaces, {namespace} cannot be expanded.
    let (ok, _, stderr) = offline(&["iam", "-f", &file])?;
    assert!(!ok && stderr.contains("--namespaces a,b,c"), "{stderr}");
    // Names only: a label selector cannot be evaluated.
    let (ok, _, stderr) = offline(&["iam", "-f", &file, "--namespaces", "b,a"])?;
    assert!(
        !ok && stderr.contains("cannot be evaluated offline"),
        "{stderr}"
    );
    // Namespace objects (kubectl get namespaces -o yaml) carry the labels.
    let namespaces = dir.path().join("namespaces.yaml");
    std::fs::write(
        &namespaces,
        "apiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: Namespace, metadata: {name: b, labels: {team: web}}}\n\
         - {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n",
    )?;
    let ns_file = namespaces.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = offline(&["iam", "-f", &file, "-f", &ns_file])?;
    assert!(ok, "{stderr}");
    let iam: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(
        iam["Statement"],
        serde_json::json!([
            {"Sid": "GetObject", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": ["arn:aws:s3:::web/b/*"]},
            {"Sid": "PutObject", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": ["arn:aws:s3:::reports/a/*", "arn:aws:s3:::reports/b/*"]},
        ])
    );
    // --namespaces belongs with -f.
    let (ok, _, stderr) = offline(&["iam", "--namespaces", "a"])?;
    assert!(
        !ok && stderr.contains("--namespaces is for issuers read with -f"),
        "{stderr}"
    );
    Ok(())
}
