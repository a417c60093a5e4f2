//! Issuers that warn: the chart's ValidatingAdmissionPolicy makes `kubectl
//! apply` warn about each risky allow rule, and the operator names the same
//! rules in the issuer's RiskyRules condition. Both are held to the same
//! checks, src/policy/risks.rs.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use support::grants::{Scenario, create_issuer};
use support::{TestContext, TestEnv, TestResult, eventually};
use upload_grant_operator::api::{ClusterGrantIssuer, ClusterGrantIssuerSpec};
use upload_grant_operator::policy::risks::{RiskKind, risks};

const CHART: &str = "charts/upload-grant-operator";

/// The chart's warning policy under a release name of the test's own;
/// removed when dropped.
struct WarningPolicy {
    env: &'static TestEnv,
    manifest: String,
    name: String,
}

impl WarningPolicy {
    fn install(env: &'static TestEnv) -> TestResult<WarningPolicy> {
        let release = format!("warn-{}", support::random_suffix());
        let manifest = env.helm(&[
            "template",
            &release,
            CHART,
            "--show-only",
            "templates/issuer-warnings.yaml",
        ])?;
        let policy = WarningPolicy {
            env,
            manifest,
            name: format!("{release}-upload-grant-operator-issuer-warnings"),
        };
        kubectl_stdin(env, &["apply", "-f", "-"], &policy.manifest)?;
        Ok(policy)
    }

    /// The warnings this policy gives for an issuer with `allow`, as
    /// (rule indices, explanation), from a server-side dry run.
    fn warnings(&self, allow: &serde_json::Value) -> TestResult<BTreeSet<(String, String)>> {
        let issuer = serde_json::json!({"apiVersion": "grants.io/v1alpha1", "kind": "ClusterGrantIssuer",
            "metadata": {"name": format!("dry-{}", support::random_suffix())},
            "spec": {"s3": {"region": "eu-west-1"}, "allow": allow}});
        let stderr = kubectl_stdin(
            self.env,
            &["apply", "--dry-run=server", "-f", "-"],
            &issuer.to_string(),
        )?;
        let ours = format!("ValidatingAdmissionPolicy '{}'", self.name);
        Ok(stderr
            .lines()
            .filter(|l| l.starts_with("Warning:") && l.contains(&ours))
            .filter_map(|l| l.split_once("': allow[").map(|(_, m)| m))
            .filter_map(|m| m.split_once("] "))
            .map(|(indices, explain)| (indices.to_owned(), explain.to_owned()))
            .collect())
    }
}

impl Drop for WarningPolicy {
    fn drop(&mut self) {
        let _ = kubectl_stdin(
            self.env,
            &["delete", "--ignore-not-found", "-f", "-"],
            &self.manifest,
        );
    }
}

/// Runs kubectl with `input` on stdin; its stderr, where warnings go.
fn kubectl_stdin(env: &TestEnv, args: &[&str], input: &str) -> TestResult<String> {
    let mut child = env
        .command("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8(out.stderr)?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {stderr}").into());
    }
    Ok(stderr)
}

/// What the operator's own checks say about `allow`, in the same shape.
fn expected(allow: &serde_json::Value) -> TestResult<BTreeSet<(String, String)>> {
    let spec: ClusterGrantIssuerSpec =
        serde_json::from_value(serde_json::json!({"s3": {"region": "eu-west-1"}, "allow": allow}))?;
    let found = risks(&spec);
    Ok(RiskKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let rules: Vec<String> = found
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.rule.to_string())
                .collect();
            (!rules.is_empty()).then(|| (rules.join(", "), kind.explain().to_owned()))
        })
        .collect())
}

fn tight() -> serde_json::Value {
    serde_json::json!({"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"],
        "keyPrefixes": ["{namespace}/"], "methods": ["PUT", "GET"], "maxContentLength": "10Mi",
        "kmsKeyIds": ["alias/reports"]})
}

/// [`tight`] with some fields replaced.
fn with(fields: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut rule = tight();
    if let Some(o) = rule.as_object_mut() {
        for (field, value) in fields {
            o.insert((*field).to_owned(), value.clone());
        }
    }
    rule
}

#[tokio::test]
async fn kubectl_apply_warns_about_exactly_the_rules_the_operator_calls_risky() -> TestResult {
    let env = TestEnv::get();
    let ctx = TestContext::new("warnings").await?;
    support::install_committed_crds(&ctx.client).await?;
    let policy = WarningPolicy::install(env)?;
    let open = serde_json::json!([{"buckets": ["*"]}]);
    // A new policy takes a moment to be enforced.
    eventually(
        "the warning policy to be active",
        Duration::from_secs(30),
        || async { Ok((!policy.warnings(&open)?.is_empty()).then_some(())) },
    )
    .await?;
    // Any bucket, keys shared between namespaces, and parts without a cap.
    let new_risks = serde_json::json!([tight(), {"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b", "*"],
        "keyPrefixes": ["uploads/{name}/", ""], "methods": ["PUT"], "maxContentLength": "1Gi",
        "kmsKeyIds": ["k"], "multipart": true}]);
    let cases = [
        serde_json::json!([tight()]),
        open,
        serde_json::json!([tight(), {"buckets": ["b"], "keyPrefixes": ["{namespace}", "x/"]}, {"namespaces": {}, "buckets": ["b"], "methods": ["GET", "HEAD"]}]),
        serde_json::json!([{"namespaces": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}, "buckets": ["b"],
            "keyPrefixes": ["a/{namespace}-x/"], "methods": ["DELETE"]}]),
        serde_json::json!([tight(), {"buckets": ["b"], "methods": ["PUT"], "maxContentLength": "1Mi", "kmsKeyIds": ["k"]}]),
        // A form upload is an upload too.
        serde_json::json!([tight(), {"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"], "keyPrefixes": ["x/"], "methods": ["POST"]}]),
        new_risks.clone(),
        // Quiet: parts capped, {name} under {namespace}, multipart where no PUT is allowed.
        serde_json::json!([with(&[("multipart", serde_json::json!(true)), ("maxParts", serde_json::json!(100)),
            ("keyPrefixes", serde_json::json!(["{namespace}/{name}/"]))]),
            {"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"], "keyPrefixes": ["shared/"],
            "methods": ["GET"], "multipart": true}]),
        // Each new risk alone, on rules that are otherwise tight.
        serde_json::json!([tight(), with(&[("buckets", serde_json::json!(["*"]))])]),
        serde_json::json!([
            tight(),
            with(&[("keyPrefixes", serde_json::json!(["{name}"]))])
        ]),
        serde_json::json!([with(&[("multipart", serde_json::json!(true))]), tight()]),
    ];
    for allow in cases {
        let want = expected(&allow)?;
        assert_eq!(policy.warnings(&allow)?, want, "{allow}");
    }
    assert!(
        expected(&serde_json::json!([tight()]))?.is_empty(),
        "a quiet case"
    );
    let new_kinds = [
        RiskKind::AnyBucket,
        RiskKind::UnisolatedPrefix,
        RiskKind::UnboundedParts,
    ];
    let shown = expected(&new_risks)?;
    assert_eq!(shown.len(), new_kinds.len(), "{shown:?}");
    for kind in new_kinds {
        assert!(
            shown.iter().any(|(_, explain)| explain == kind.explain()),
            "{kind:?} is among the cases"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_issuer_status_names_each_risky_rule() -> TestResult {
    let Scenario { ctx, operator, .. } = Scenario::start("risky-status").await?;
    let allow = serde_json::json!([tight(), {"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}"], "methods": ["GET", "DELETE"]},
        {"buckets": ["*"], "keyPrefixes": ["{name}/"], "methods": ["PUT"], "multipart": true}]);
    let risky = create_issuer(&ctx, allow.clone()).await?;
    let calm = create_issuer(&ctx, serde_json::json!([tight()])).await?;
    let api = kube::Api::<ClusterGrantIssuer>::all(ctx.client.clone());
    let condition = |name: String| {
        let api = api.clone();
        async move {
            eventually(
                "the issuer's RiskyRules condition",
                Duration::from_secs(30),
                || async {
                    let issuer = api.get(&name).await?;
                    Ok(issuer
                        .status
                        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "RiskyRules")))
                },
            )
            .await
        }
    };
    let c = match condition(risky).await {
        Ok(c) => c,
        Err(e) => return Err(format!("{e}; operator log:\n{}", operator.logs()).into()),
    };
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RiskyRules")
    );
    let spec: ClusterGrantIssuerSpec =
        serde_json::from_value(serde_json::json!({"s3": {"region": "eu-west-1"}, "allow": allow}))?;
    let each: Vec<String> = risks(&spec).iter().map(ToString::to_string).collect();
    assert!(!each.is_empty());
    for needle in [
        "allow[2] allows any bucket",
        "allow[2] has a key prefix that is empty or has {name}",
        "allow[2] allows multipart grants without maxParts",
    ] {
        assert!(c.message.contains(needle), "{needle} in {}", c.message);
    }
    assert_eq!(c.message, each.join("; "));
    let quiet = condition(calm).await?;
    assert_eq!(
        (quiet.status.as_str(), quiet.reason.as_str()),
        ("False", "NoRiskyRules")
    );
    Ok(())
}
