//! `kubectl grant`, run through kubectl as a user runs it: the plugin found on
//! PATH, against the real apiserver, operator and store. No output of it may
//! hold a URL or a signature.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult};

/// What a run of `kubectl grant …` ended with.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    raw_stdout: Vec<u8>,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `kubectl grant ARGS` with the plugin's directory first on PATH.
/// Every run is checked for presigned-URL material in what it printed.
fn kubectl(ctx: &TestContext, args: &[&str]) -> TestResult<Run> {
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-grant"));
    let dir = plugin.parent().ok_or("the plugin has no directory")?;
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = ctx
        .env
        .command("kubectl")
        .env("PATH", path)
        .args(args)
        .output()?;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw_stdout: out.stdout,
    };
    for leak in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    ] {
        assert!(
            !run.all().contains(leak),
            "{args:?} printed {leak}:\n{run:?}"
        );
    }
    Ok(run)
}

/// `scheme://host[:port]` of the URL in a grant's Secret: what `curl` says
/// it sends to.
async fn destination(ctx: &TestContext, secret: &str) -> TestResult<String> {
    let data = secret_data(&ctx.client, &ctx.namespace, secret).await?;
    let url = reqwest::Url::parse(data.get("url").ok_or("no url")?)?;
    Ok(url.origin().ascii_serialization())
}

/// `kubectl grant ARGS -n <the test namespace>`.
fn grant_cmd(ctx: &TestContext, args: &[&str]) -> TestResult<Run> {
    let mut all = vec!["grant"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-n", &ctx.namespace]);
    kubectl(ctx, &all)
}

/// Fails if the run printed the URL of any Secret in the namespace.
async fn assert_no_url(ctx: &TestContext, secrets: &[&str], run: &Run) -> TestResult {
    for name in secrets {
        let data = secret_data(&ctx.client, &ctx.namespace, name).await?;
        let url = data.get("url").ok_or("no url")?;
        let (base, _) = url.split_once('?').ok_or("a presigned URL has a query")?;
        assert!(
            !run.all().contains(base),
            "the URL of {name} was printed:\n{run:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_finds_the_plugin_and_its_help_lists_the_commands() -> TestResult {
    let ctx = TestContext::new("plugin-help").await?;
    let help = kubectl(&ctx, &["grant", "--help"])?;
    assert_eq!(help.code, 0, "{help:?}");
    for word in [
        "status",
        "renew",
        "check",
        "curl",
        "Exit codes",
        "4  timed out",
    ] {
        assert!(
            help.stdout.contains(word),
            "{word} missing:\n{}",
            help.stdout
        );
    }
    for command in ["status", "renew", "check", "curl"] {
        let sub = kubectl(&ctx, &["grant", command, "--help"])?;
        assert_eq!(sub.code, 0, "{sub:?}");
        assert!(sub.stdout.contains("--namespace"), "{sub:?}");
    }
    let list = kubectl(&ctx, &["plugin", "list"])?;
    assert!(
        list.stdout.lines().any(|l| l.ends_with("/kubectl-grant")),
        "kubectl plugin list does not show it: {list:?}"
    );
    let usage = kubectl(&ctx, &["grant", "status", "--bogus"])?;
    assert_eq!(usage.code, 2, "a usage error: {usage:?}");
    let bad = kubectl(
        &ctx,
        &["grant", "status", "--kubeconfig", "/nonexistent/config"],
    )?;
    assert_eq!(bad.code, 1, "a bad kubeconfig: {bad:?}");
    assert!(bad.stderr.contains("kubeconfig"), "{bad:?}");
    Ok(())
}

#[test]
fn the_krew_manifest_installs_this_binary() -> TestResult {
    let text = std::fs::read_to_string(support::repo_root().join("plugins/grant.yaml"))?;
    let manifest: serde_json::Value = serde_norway::from_str(&text)?;
    // What krew reads (tests/release.rs runs krew's own checker on the
    // manifest a release fills in).
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "grant");
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["spec"]["version"], version.as_str());
    let platforms = manifest["spec"]["platforms"]
        .as_array()
        .ok_or("no platforms")?;
    assert!(!platforms.is_empty());
    for p in platforms {
        assert_eq!(p["bin"], "kubectl-grant", "{p}");
        assert!(p["sha256"].as_str().is_some_and(|s| s.len() == 64), "{p}");
    }
    assert!(text.contains("filled in at release time"));
    Ok(())
}

#[tokio::test]
async fn status_shows_ready_and_forbidden_grants() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start_in(
        TestContext::new("plugin-status").await?,
        // `status` lists the last Events: with Issued among them.
        OperatorOptions::lifecycle_events(),
    )
    .await?;
    let issuer = open_issuer(&ctx).await?;
    create_grant(
        &ctx,
        "ready",
        spec(&ctx, &issuer, "r.txt", serde_json::json!({})),
    )
    .await?;
    let other = serde_json::json!({"bucket": "other-bucket"});
    create_grant(&ctx, "denied", spec(&ctx, &issuer, "d.txt", other)).await?;
    let ready = wait_ready(&ctx, "ready").await?;
    wait_reason(&ctx, "denied", "Forbidden").await?;
    wait_event(&ctx, "ready", "Issued").await?;
    let fp = fingerprint(&ready).ok_or("no fingerprint")?;

    let one = grant_cmd(&ctx, &["status", "ready"])?;
    assert_eq!(one.code, 0, "{one:?}");
    let row: Vec<&str> = one
        .stdout
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let key = format!("{}/{}/r.txt", ctx.env.bucket(), ctx.namespace);
    assert_eq!(
        row[..5],
        ["ready", "PUT", key.as_str(), "True", "Issued"],
        "{one:?}"
    );
    assert!(
        one.stdout.contains(&format!("URL fingerprint: {fp}")),
        "{one:?}"
    );
    assert!(
        one.stdout
            .contains("Ready:           True (Issued), observedGeneration 1"),
        "{one:?}"
    );
    assert!(
        one.stdout.contains("Normal   Issued"),
        "the Issued event: {one:?}"
    );
    assert_no_url(&ctx, &["ready"], &one).await?;

    let denied = grant_cmd(&ctx, &["status", "denied"])?;
    assert_eq!(denied.code, 3, "not Ready: {denied:?}");
    assert!(denied.stdout.contains("False (Forbidden)"), "{denied:?}");
    assert!(
        denied.stdout.contains("no allow rule matches"),
        "{denied:?}"
    );

    let both = grant_cmd(&ctx, &["status", "-o", "json"])?;
    assert_eq!(both.code, 3, "one of them is not Ready: {both:?}");
    let json: serde_json::Value = serde_json::from_str(&both.stdout)?;
    let grants = json["grants"].as_array().ok_or("no grants array")?;
    let summary: Vec<(&str, &str)> = grants
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap_or("?"),
                g["ready"]["reason"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(summary, [("denied", "Forbidden"), ("ready", "Issued")]);
    assert_eq!(grants[1]["urlFingerprint"], fp.as_str());
    assert_eq!(grants[1]["issuer"], issuer.as_str());

    let yaml = grant_cmd(&ctx, &["status", "ready", "-o", "yaml"])?;
    assert_eq!(yaml.code, 0, "{yaml:?}");
    let yaml: serde_json::Value = serde_norway::from_str(&yaml.stdout)?;
    let events = yaml["grants"][0]["events"].as_array().ok_or("no events")?;
    assert!(events.iter().any(|e| e["reason"] == "Issued"), "{events:?}");

    let all = kubectl(&ctx, &["grant", "status", "-A"])?;
    assert_eq!(all.code, 3, "{all:?}");
    assert!(all.stdout.starts_with("NAMESPACE"), "{all:?}");
    let ours = all
        .stdout
        .lines()
        .filter(|l| l.starts_with(&ctx.namespace))
        .count();
    assert_eq!(ours, 2, "{all:?}");

    // --kubeconfig without KUBECONFIG in the environment.
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-grant"));
    let out = std::process::Command::new(plugin)
        .env_remove("KUBECONFIG")
        .env("HOME", _dir.path())
        .args([
            "status",
            "ready",
            "-n",
            &ctx.namespace,
            "--kubeconfig",
            ctx.env.kubeconfig(),
        ])
        .output()?;
    assert!(out.status.success(), "{out:?}");

    let missing = grant_cmd(&ctx, &["status", "nope"])?;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("UploadGrant \"nope\" not found"),
        "{missing:?}"
    );
    Ok(())
}

/// One case of the check table: the flags, the same grant as a spec, and the
/// Ready reason the operator must give it.
struct Case {
    name: &'static str,
    issuer: String,
    flags: Vec<String>,
    spec: serde_json::Value,
    reason: &'static str,
    /// Found in check's answer.
    says: &'static str,
}

fn case(
    ctx: &TestContext,
    (name, issuer, key, extra, reason, says): (
        &'static str,
        &str,
        &str,
        serde_json::Value,
        &'static str,
        &'static str,
    ),
) -> Case {
    let mut spec = serde_json::json!({
        "issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": key, "method": "PUT", "ttl": "1h",
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let text = |k: &str| spec[k].as_str().map(str::to_owned).unwrap_or_default();
    let mut flags = vec![
        "--issuer".to_owned(),
        issuer.to_owned(),
        "--bucket".to_owned(),
        text("bucket"),
        "--key".to_owned(),
        text("key"),
        "--method".to_owned(),
        text("method"),
        "--ttl".to_owned(),
        text("ttl"),
        "--name".to_owned(),
        name.to_owned(),
    ];
    if let Some(n) = spec["contentLength"].as_i64() {
        flags.extend(["--content-length".to_owned(), n.to_string()]);
    }
    Case {
        name,
        issuer: issuer.to_owned(),
        flags,
        spec,
        reason,
        says,
    }
}

#[tokio::test]
async fn check_agrees_with_the_operators_decision() -> TestResult {
    let labelled = TestContext::with_labels("plugin-check", &[("grants-test", "check")]).await?;
    // The operator's default propagation budget, which check assumes too.
    let opts = OperatorOptions {
        env: vec![("UPLOAD_GRANT_PROPAGATION_BUDGET".into(), "2m".into())],
        ..OperatorOptions::default()
    };
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start_in(labelled, opts).await?;
    let bucket = ctx.env.bucket();
    let rules = serde_json::json!([{
        "namespaces": {"matchLabels": {"grants-test": "check"}},
        "buckets": [bucket],
        "keyPrefixes": ["{namespace}/"],
        "methods": ["PUT", "GET"],
        "maxTtl": "2h",
        "maxContentLength": "1Ki",
    }]);
    let main = create_issuer(&ctx, rules).await?;
    let elsewhere = create_issuer(
        &ctx,
        serde_json::json!([{"namespaces": {"matchLabels": {"grants-test": "elsewhere"}}, "buckets": [bucket]}]),
    )
    .await?;
    let ns = ctx.namespace.clone();
    let key = format!("{ns}/a.csv");
    let k = key.as_str();
    let m = main.as_str();
    let e = elsewhere.as_str();
    let cases: Vec<Case> = [
        (
            "allowed",
            m,
            k,
            json!({"contentLength": 100}),
            "Issued",
            "allow[0]",
        ),
        ("get", m, k, json!({"method": "GET"}), "Issued", "allow[0]"),
        (
            "bucket",
            m,
            k,
            json!({"bucket": "other-bucket", "contentLength": 1}),
            "Forbidden",
            "bucket \\\"other-bucket\\\"",
        ),
        (
            "prefix",
            m,
            "elsewhere/a.csv",
            json!({"contentLength": 1}),
            "Forbidden",
            "key does not start with",
        ),
        (
            "method",
            m,
            k,
            json!({"method": "DELETE"}),
            "Forbidden",
            "method DELETE",
        ),
        (
            "maxttl",
            m,
            k,
            json!({"ttl": "3h", "contentLength": 1}),
            "Forbidden",
            "longer than maxTtl",
        ),
        (
            "size",
            m,
            k,
            json!({"contentLength": 2048}),
            "Forbidden",
            "larger than maxContentLength",
        ),
        (
            "unpinned",
            m,
            k,
            json!({}),
            "Forbidden",
            "must set contentLength",
        ),
        (
            "namespace",
            e,
            k,
            json!({}),
            "Forbidden",
            "namespace selector",
        ),
        (
            "shortttl",
            m,
            k,
            json!({"ttl": "2m", "contentLength": 1}),
            "InvalidSpec",
            "propagation budget",
        ),
    ]
    .into_iter()
    .map(|c| case(&ctx, c))
    .collect();

    let mut answers = BTreeMap::new();
    for c in &cases {
        let mut args: Vec<&str> = vec!["check", "-o", "json"];
        args.extend(c.flags.iter().map(String::as_str));
        let run = grant_cmd(&ctx, &args)?;
        let report: serde_json::Value =
            serde_json::from_str(&run.stdout).map_err(|e| format!("{}: {e}: {run:?}", c.name))?;
        let verdict = &report["issuers"][0];
        assert_eq!(verdict["issuer"], c.issuer.as_str(), "{}", c.name);
        let reason = verdict["reason"].as_str().unwrap_or("?").to_owned();
        let want_code = if reason == "Allowed" { 0 } else { 3 };
        assert_eq!(run.code, want_code, "{}: {run:?}", c.name);
        assert!(
            run.stdout.contains(c.says),
            "{}: {:?} missing: {}",
            c.name,
            c.says,
            run.stdout
        );
        answers.insert(c.name, reason);
        create_grant(&ctx, c.name, c.spec.clone()).await?;
    }
    for c in &cases {
        let want = c.reason;
        wait_reason(&ctx, c.name, want).await?;
        let said = answers[c.name].as_str();
        let agrees = matches!((said, want), ("Allowed", "Issued")) || said == want;
        assert!(agrees, "{}: check said {said}, the operator {want}", c.name);
    }

    // The text answer names the rule, or each rule's refusal.
    let allowed = &cases[0];
    let mut args: Vec<&str> = vec!["check"];
    args.extend(allowed.flags.iter().map(String::as_str));
    let text = grant_cmd(&ctx, &args)?;
    assert_eq!(text.code, 0, "{text:?}");
    let first = format!("ALLOWED: ClusterGrantIssuer {main:?} allows it by allow[0]");
    assert!(text.stdout.starts_with(&first), "{text:?}");
    let method = &cases[4];
    let mut args: Vec<&str> = vec!["check"];
    args.extend(method.flags.iter().map(String::as_str));
    let text = grant_cmd(&ctx, &args)?;
    assert_eq!(text.code, 3, "{text:?}");
    assert!(text.stdout.starts_with("DENIED (Forbidden)"), "{text:?}");
    assert!(
        text.stdout
            .contains("  allow[0]: method DELETE is not one of"),
        "{text:?}"
    );

    // Without an issuer: every issuer's verdict; allowed because one allows.
    let listed = grant_cmd(
        &ctx,
        &[
            "check",
            "--bucket",
            bucket,
            "--key",
            k,
            "--content-length",
            "1",
        ],
    )?;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        listed
            .stdout
            .contains(&format!("ALLOWED: ClusterGrantIssuer {main:?}")),
        "{listed:?}"
    );
    assert!(
        listed.stdout.contains(&format!(
            "DENIED (Forbidden): ClusterGrantIssuer {elsewhere:?}"
        )),
        "{listed:?}"
    );
    // The operator's default issuer stands in for a missing issuerRef.
    let default = [
        "check",
        "--default-issuer",
        e,
        "--bucket",
        bucket,
        "--key",
        k,
    ];
    let default = grant_cmd(&ctx, &default)?;
    assert_eq!(default.code, 3, "{default:?}");
    let missing = grant_cmd(
        &ctx,
        &[
            "check",
            "--issuer",
            "no-such-issuer",
            "--bucket",
            bucket,
            "--key",
            k,
        ],
    )?;
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(
        missing.stdout.contains("DENIED (IssuerNotFound)"),
        "{missing:?}"
    );
    Ok(())
}

#[tokio::test]
async fn curl_uploads_through_a_put_grant_and_reads_back_through_a_get_grant() -> TestResult {
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("plugin-curl").await?;
    let issuer = open_issuer(&ctx).await?;
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let put = serde_json::json!({"contentLength": body.len()});
    create_grant(&ctx, "put", spec(&ctx, &issuer, "curl.bin", put)).await?;
    let get = serde_json::json!({"method": "GET"});
    create_grant(&ctx, "get", spec(&ctx, &issuer, "curl.bin", get)).await?;
    wait_ready(&ctx, "put").await?;
    wait_ready(&ctx, "get").await?;

    let absent = grant_cmd(&ctx, &["curl", "get"])?;
    assert_eq!(absent.code, 3, "nothing uploaded yet: {absent:?}");
    assert!(
        absent.stderr.contains("HTTP 404 Not Found: NoSuchKey"),
        "{absent:?}"
    );

    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &body)?;
    let file = file.to_str().ok_or("a UTF-8 path")?;
    let upload = grant_cmd(&ctx, &["curl", "put", "-f", file])?;
    assert_eq!(upload.code, 0, "{upload:?}");
    let to = destination(&ctx, "put").await?;
    assert_eq!(
        upload.stderr.trim(),
        format!("sending PUT to {to}\nHTTP 200 OK")
    );

    let out = dir.path().join("download.bin");
    let out_s = out.to_str().ok_or("a UTF-8 path")?;
    let download = grant_cmd(&ctx, &["curl", "get", "-o", out_s])?;
    assert_eq!(download.code, 0, "{download:?}");
    assert!(std::fs::read(&out)? == body, "the downloaded file differs");
    let to_stdout = grant_cmd(&ctx, &["curl", "get"])?;
    assert_eq!(to_stdout.code, 0, "{:?}", to_stdout.stderr);
    assert!(
        to_stdout.raw_stdout == body,
        "stdout differs from the upload"
    );

    let no_file = grant_cmd(&ctx, &["curl", "put"])?;
    assert_eq!(no_file.code, 1, "{no_file:?}");
    for run in [&absent, &upload, &download, &no_file] {
        assert_no_url(&ctx, &["put", "get"], run).await?;
    }
    Ok(())
}

/// A POST grant's form goes out with `-f`: the file lands under the
/// `${filename}` prefix with the file's name. The operator signs with the
/// store's static keys: the store verifies POST policies only for those.
#[tokio::test]
async fn curl_sends_a_post_grants_form_with_the_file() -> TestResult {
    let ctx = TestContext::new("plugin-post").await?;
    let root = ctx.env.root_credentials();
    let opts = OperatorOptions {
        without_irsa: true,
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), root.access_key_id().into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                root.secret_access_key().into(),
            ),
        ],
        ..OperatorOptions::default()
    };
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start_in(ctx, opts).await?;
    let issuer = open_issuer(&ctx).await?;
    let form = json!({"method": "POST", "contentLengthRange": {"min": 1, "max": "1Mi"}});
    create_grant(&ctx, "form", spec(&ctx, &issuer, "in/${filename}", form)).await?;
    wait_ready(&ctx, "form").await?;
    let fields: BTreeMap<String, String> =
        serde_json::from_str(&secret_data(&ctx.client, &ctx.namespace, "form").await?["fields"])?;

    let file = dir.path().join("report.csv");
    std::fs::write(&file, b"day,total\n")?;
    let file = file.to_str().ok_or("a UTF-8 path")?;
    let upload = grant_cmd(&ctx, &["curl", "form", "-f", file])?;
    assert_eq!(upload.code, 0, "{upload:?}");
    let to = destination(&ctx, "form").await?;
    assert_eq!(
        upload.stderr.trim(),
        format!("sending POST to {to}\nHTTP 204 No Content")
    );
    let root = support::s3_client(ctx.env, ctx.env.root_credentials());
    let object = root
        .get_object()
        .bucket(ctx.env.bucket())
        .key(format!("{}/in/report.csv", ctx.namespace))
        .send()
        .await?;
    assert_eq!(
        object.body.collect().await?.into_bytes().as_ref(),
        b"day,total\n"
    );
    let no_file = grant_cmd(&ctx, &["curl", "form"])?;
    assert_eq!(no_file.code, 1, "{no_file:?}");
    assert!(
        no_file.stderr.contains("a POST grant needs the body"),
        "{no_file:?}"
    );
    for run in [&upload, &no_file] {
        for field in ["policy", "x-amz-signature"] {
            assert!(
                !run.all().contains(&fields[field]),
                "the {field} field was printed:\n{run:?}"
            );
        }
    }
    Ok(())
}

/// `curl -f FILE` on a multipart grant reads the file a part at a time, sends
/// each part and completes the upload: the object is the file. A file with
/// more parts than the grant has is refused before completing, and no
/// signature is printed.
#[tokio::test]
async fn curl_uploads_a_file_in_parts_and_completes_it() -> TestResult {
    const MIB: usize = 1 << 20;
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("plugin-parts").await?;
    let issuer = multipart_issuer(&ctx).await?;
    for (name, parts) in [("parts", 3), ("one", 1)] {
        let multipart = json!({"multipart": {"parts": parts, "partSize": "5Mi"}});
        create_grant(
            &ctx,
            name,
            spec(&ctx, &issuer, &format!("{name}.bin"), multipart),
        )
        .await?;
        wait_ready(&ctx, name).await?;
    }
    let body: Vec<u8> = (0..2 * 5 * MIB + 1234).map(|n| (n % 249) as u8).collect();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &body)?;
    let file = file.to_str().ok_or("a UTF-8 path")?;

    let upload = grant_cmd(&ctx, &["curl", "parts", "-f", file])?;
    assert_eq!(upload.code, 0, "{upload:?}");
    assert!(
        upload
            .stderr
            .contains("3 parts sent; completing: HTTP 200 OK"),
        "{upload:?}"
    );
    let stored = stored(&ctx, &format!("{}/parts.bin", ctx.namespace)).await?;
    assert!(stored == body, "the object differs from the file");

    let too_big = grant_cmd(&ctx, &["curl", "one", "-f", file])?;
    assert_ne!(too_big.code, 0, "{too_big:?}");
    assert!(too_big.stderr.contains("more than 1 parts"), "{too_big:?}");
    let parts: serde_json::Value =
        serde_json::from_str(&secret_data(&ctx.client, &ctx.namespace, "parts").await?["parts"])?;
    for run in [&upload, &too_big] {
        for signature in parts["signatures"].as_array().into_iter().flatten() {
            let signature = signature.as_str().unwrap_or_default();
            assert!(
                !run.all().contains(signature),
                "a signature was printed:\n{run:?}"
            );
        }
    }
    Ok(())
}

/// `curl` sends only a Secret the operator wrote for the grant: not somebody
/// else's Secret of the name the grant asks for (the grant is in
/// SecretConflict), not one of the operator's type whose controller is
/// another grant. Neither request leaves.
#[tokio::test]
async fn curl_refuses_a_secret_the_operator_did_not_write_for_the_grant() -> TestResult {
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("plugin-curl-foreign").await?;
    let issuer = open_issuer(&ctx).await?;
    let file = dir.path().join("upload.txt");
    std::fs::write(&file, b"secret data")?;
    let file = file.to_str().ok_or("a UTF-8 path")?;
    let request = json!({
        "url": "http://127.0.0.1:9/steal?X-Amz-Signature=forged",
        "method": "PUT", "headers": "{}",
    });
    let secrets = ctx.api::<Secret>();
    let post = kube::api::PostParams::default();

    let opaque: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken"}, "stringData": request,
    }))?;
    secrets.create(&post, &opaque).await?;
    let taken = json!({"secret": {"name": "taken"}});
    create_grant(&ctx, "grabby", spec(&ctx, &issuer, "g.txt", taken)).await?;
    wait_reason(&ctx, "grabby", "SecretConflict").await?;
    let run = grant_cmd(&ctx, &["curl", "grabby", "-f", file])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("Secret \"taken\" is of type \"Opaque\", not \"grants.io/presigned-url\"")
            && run.stderr.contains("not sending its request"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("sending PUT"), "{run:?}");

    create_grant(&ctx, "real", spec(&ctx, &issuer, "r.txt", json!({}))).await?;
    let real = wait_ready(&ctx, "real").await?;
    let forged: Secret = serde_json::from_value(json!({
        "metadata": {"name": "forged", "ownerReferences": [{
            "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "name": "real",
            "uid": real.metadata.uid, "controller": true,
        }]},
        "type": "grants.io/presigned-url", "stringData": request,
    }))?;
    secrets.create(&post, &forged).await?;
    let forged = json!({"secret": {"name": "forged"}});
    create_grant(&ctx, "other", spec(&ctx, &issuer, "o.txt", forged)).await?;
    wait_reason(&ctx, "other", "SecretConflict").await?;
    let run = grant_cmd(&ctx, &["curl", "other", "-f", file])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("Secret \"forged\" belongs to UploadGrant \"real\", not to \"other\""),
        "{run:?}"
    );
    assert!(!run.stderr.contains("sending PUT"), "{run:?}");
    Ok(())
}

/// The Secret's fingerprint annotation.
async fn secret_fingerprint(ctx: &TestContext, name: &str) -> TestResult<Option<String>> {
    let meta = ctx.api::<Secret>().get_metadata(name).await?;
    Ok(meta
        .metadata
        .annotations
        .and_then(|a| a.get("grants.io/url-fingerprint").cloned()))
}

#[tokio::test]
async fn renew_produces_exactly_one_new_url() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start("plugin-renew").await?;
    let issuer = open_issuer(&ctx).await?;
    create_grant(
        &ctx,
        "g",
        spec(&ctx, &issuer, "renew.txt", serde_json::json!({})),
    )
    .await?;
    let first = wait_ready(&ctx, "g").await?;
    let before = fingerprint(&first).ok_or("no fingerprint")?;

    let run = grant_cmd(&ctx, &["renew", "g", "--timeout", "60s"])?;
    assert_eq!(run.code, 0, "{run:?}");
    let printed = run
        .stdout
        .strip_prefix("renewed: URL ")
        .and_then(|s| s.split_whitespace().next())
        .ok_or_else(|| format!("unexpected output: {run:?}"))?
        .to_owned();
    assert_ne!(printed, before, "a new URL");
    assert_eq!(
        secret_fingerprint(&ctx, "g").await?.as_deref(),
        Some(printed.as_str())
    );
    assert_no_url(&ctx, &["g"], &run).await?;

    // One request, one renewal: the URL stays put for a while after.
    let quiet_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_until {
        let now = secret_fingerprint(&ctx, "g").await?;
        assert_eq!(now.as_deref(), Some(printed.as_str()), "renewed again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewed = operator
        .metric(r#"upload_grant_issued_total{kind="renewed"}"#)
        .await?;
    assert_eq!(renewed, 1.0, "renewals counted");
    Ok(())
}

#[tokio::test]
async fn renew_of_a_suspended_grant_times_out_and_says_why() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("plugin-renew-suspended").await?;
    let issuer = open_issuer(&ctx).await?;
    let suspended = serde_json::json!({"suspend": true});
    create_grant(&ctx, "g", spec(&ctx, &issuer, "s.txt", suspended)).await?;
    wait_reason(&ctx, "g", "Suspended").await?;

    let started = Instant::now();
    let run = grant_cmd(&ctx, &["renew", "g", "--timeout", "5s"])?;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(run.stderr.contains("timed out after 5s"), "{run:?}");
    assert!(run.stderr.contains("(Suspended)"), "{run:?}");

    let missing = grant_cmd(&ctx, &["renew", "nope", "--timeout", "5s"])?;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("UploadGrant \"nope\" not found"),
        "{missing:?}"
    );
    Ok(())
}
