//! The chart's credentials without the EKS webhook. IRSA's projected token
//! (`irsa.projectedToken.enabled`): it renders exactly what the pod-identity
//! webhook would inject, nothing of it when off, refuses half-configured or
//! doubled set-ups, and the real apiserver accepts the Deployment it renders.
//! Static keys (`staticKeys.existingSecret`): the two variables from the
//! named Secret, never together with IRSA (tests/node_operator.rs signs and
//! uploads with them on the node).

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use support::{TestContext, TestEnv, TestResult};

const CHART: &str = "charts/upload-grant-operator";
const ROLE: &str = "arn:aws:iam::111122223333:role/upload-grant-operator";
const TOKEN_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";

/// The Deployment `helm template` renders with these --set values.
fn rendered_deployment(env: &TestEnv, set: &[&str]) -> TestResult<Value> {
    let mut args = vec!["template", "r", CHART, "-n", "ugo"];
    for s in set {
        args.extend(["--set", s]);
    }
    support::yaml_documents(&env.helm(&args)?)?
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .ok_or_else(|| "no Deployment rendered".into())
}

/// Each set of values is refused, with the words that explain it.
fn assert_refused(env: &TestEnv, refused: &[(&[&str], &str)]) {
    for (set, why) in refused {
        match rendered_deployment(env, set) {
            Ok(_) => panic!("--set {set:?} was accepted"),
            Err(e) => assert!(e.to_string().contains(why), "--set {set:?}: {e}"),
        }
    }
}

fn pod(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn env_vars(deployment: &Value) -> Vec<Value> {
    pod(deployment)["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Env entries of `with` that `without` does not have.
fn added_env(without: &Value, with: &Value) -> Vec<Value> {
    let before = env_vars(without);
    env_vars(with)
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect()
}

fn webhook_volume(audience: &str, seconds: u64) -> Value {
    json!([{
        "name": "aws-iam-token",
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": audience, "expirationSeconds": seconds, "path": "token"
        }}]}
    }])
}

fn webhook_mount() -> Value {
    json!([{"name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": true}])
}

fn assert_hardened(deployment: &Value) {
    let pod = pod(deployment);
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
}

#[test]
fn irsa_projected_token_renders_what_the_webhook_injects_and_nothing_when_off() -> TestResult {
    let env = TestEnv::get();
    let role = format!("irsa.roleArn={ROLE}");
    let on = ["irsa.projectedToken.enabled=true", role.as_str()];
    env.helm(&["lint", "--strict", CHART, "--set", on[0], "--set", on[1]])?;

    // Off (the default, and the EKS path with the annotation): none of it.
    let off = rendered_deployment(env, &[])?;
    let eks = rendered_deployment(
        env,
        &[&format!(
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}"
        )],
    )?;
    for deployment in [&off, &eks] {
        let pod = pod(deployment);
        assert!(pod["volumes"].is_null(), "no volumes when off: {pod}");
        assert!(pod["containers"][0]["volumeMounts"].is_null());
        assert!(
            !env_vars(deployment)
                .iter()
                .any(|e| e["name"].as_str().unwrap_or("").starts_with("AWS_")),
            "no AWS_* env when off"
        );
        assert_hardened(deployment);
    }
    assert_eq!(env_vars(&eks), env_vars(&off));

    // On: exactly the webhook's env, volume and read-only mount.
    let with = rendered_deployment(env, &on)?;
    assert_eq!(
        added_env(&off, &with),
        [
            json!({"name": "AWS_ROLE_ARN", "value": ROLE}),
            json!({"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
        ]
    );
    assert_eq!(
        env_vars(&off).len() + 2,
        env_vars(&with).len(),
        "nothing else changed in env"
    );
    assert_eq!(
        pod(&with)["volumes"],
        webhook_volume("sts.amazonaws.com", 86400)
    );
    assert_eq!(pod(&with)["containers"][0]["volumeMounts"], webhook_mount());
    assert_hardened(&with);

    // Every option: audience, lifetime, region and a non-AWS STS.
    let all = rendered_deployment(
        env,
        &[
            on[0],
            on[1],
            "irsa.audience=https://sts.example.internal",
            "irsa.expirationSeconds=3600",
            "irsa.region=eu-central-1",
            "irsa.stsEndpoint=https://sts.example.internal:8443",
        ],
    )?;
    assert_eq!(
        added_env(&off, &all),
        [
            json!({"name": "AWS_ROLE_ARN", "value": ROLE}),
            json!({"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
            json!({"name": "AWS_REGION", "value": "eu-central-1"}),
            json!({"name": "AWS_DEFAULT_REGION", "value": "eu-central-1"}),
            json!({"name": "AWS_ENDPOINT_URL_STS", "value": "https://sts.example.internal:8443"}),
        ]
    );
    assert_eq!(
        pod(&all)["volumes"],
        webhook_volume("https://sts.example.internal", 3600)
    );
    assert_eq!(pod(&all)["containers"][0]["volumeMounts"], webhook_mount());
    Ok(())
}

#[test]
fn irsa_projected_token_refuses_half_or_doubled_configurations() -> TestResult {
    let env = TestEnv::get();
    let role = format!("irsa.roleArn={ROLE}");
    let annotation = format!("serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}");
    let enabled = "irsa.projectedToken.enabled=true";
    // Each refusal with the words that explain it.
    let refused: [(&[&str], &str); 7] = [
        (&[enabled], "irsa.roleArn is required"),
        // A role that would silently do nothing: the option is off.
        (&[&role], "used only with irsa.projectedToken.enabled"),
        // Both the webhook's annotation and the chart's rendering of it.
        (&[enabled, &role, &annotation], "use one or the other"),
        (&[enabled, "irsa.roleArn=my-role"], "/irsa/roleArn"),
        (
            &[enabled, &role, "irsa.expirationSeconds=599"],
            "/irsa/expirationSeconds",
        ),
        (&[enabled, &role, "irsa.audience="], "/irsa/audience"),
        (
            &[enabled, &role, "irsa.stsEndpoint=sts.local"],
            "/irsa/stsEndpoint",
        ),
    ];
    assert_refused(env, &refused);
    Ok(())
}

#[test]
fn static_keys_come_from_the_named_secret_and_never_with_irsa() -> TestResult {
    let env = TestEnv::get();
    let secret = "staticKeys.existingSecret=s3-keys";
    let key_ref = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": key}}});
    let plain = rendered_deployment(env, &[])?;
    let keys = rendered_deployment(env, &[secret])?;
    assert_eq!(
        added_env(&plain, &keys),
        [
            key_ref("AWS_ACCESS_KEY_ID", "access-key-id"),
            key_ref("AWS_SECRET_ACCESS_KEY", "secret-access-key"),
        ]
    );
    assert_hardened(&keys);
    let renamed = rendered_deployment(
        env,
        &[
            secret,
            "staticKeys.accessKeyIdKey=id",
            "staticKeys.secretAccessKeyKey=secret",
        ],
    )?;
    assert_eq!(
        added_env(&plain, &renamed),
        [
            key_ref("AWS_ACCESS_KEY_ID", "id"),
            key_ref("AWS_SECRET_ACCESS_KEY", "secret"),
        ]
    );
    let role = format!("irsa.roleArn={ROLE}");
    let annotation = format!("serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}");
    let refused: [(&[&str], &str); 3] = [
        // The SDK's chain takes keys first: the role would do nothing.
        (
            &[secret, "irsa.projectedToken.enabled=true", &role],
            "use one or the other",
        ),
        (&[secret, &annotation], "use one or the other"),
        (
            &["staticKeys.existingSecret=S3 keys"],
            "/staticKeys/existingSecret",
        ),
    ];
    assert_refused(env, &refused);
    Ok(())
}

#[tokio::test]
async fn irsa_projected_token_is_accepted_by_the_apiserver() -> TestResult {
    let ctx = TestContext::new("chart-irsa").await?;
    let env = ctx.env;
    let release = format!("irsa-{}", support::random_suffix());
    let role = format!("irsa.roleArn={ROLE}");
    // No CRDs (chart.rs's release owns them) and no replicas: the objects
    // must be accepted; nothing has to run.
    env.helm(&[
        "install",
        &release,
        CHART,
        "-n",
        &ctx.namespace,
        "--wait=false",
        "--set",
        "crds.install=false",
        "--set",
        "replicaCount=0",
        // Nothing runs, so nothing to drain; the hook's Job could not pull
        // the chart's default image here either.
        "--set",
        "drainOnUninstall=false",
        "--set",
        "irsa.projectedToken.enabled=true",
        "--set",
        &role,
        "--set",
        "irsa.expirationSeconds=3600",
        "--set",
        "irsa.region=us-east-1",
        "--set",
        &format!("irsa.stsEndpoint={}", env.sts_endpoint()),
    ])?;
    let stored = ctx
        .api::<Deployment>()
        .get(&format!("{release}-upload-grant-operator"))
        .await?;
    let stored = serde_json::to_value(&stored)?;
    let pod = pod(&stored);
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"})
    );
    assert_eq!(pod["containers"][0]["volumeMounts"], webhook_mount());
    let env_of = |name: &str| {
        env_vars(&stored)
            .into_iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env_of("AWS_ROLE_ARN"), Some(json!(ROLE)));
    assert_eq!(
        env_of("AWS_WEB_IDENTITY_TOKEN_FILE"),
        Some(json!(format!("{TOKEN_DIR}/token")))
    );
    assert_eq!(
        env_of("AWS_ENDPOINT_URL_STS"),
        Some(json!(env.sts_endpoint()))
    );
    assert_hardened(&stored);

    // The token the kubelet would project: the apiserver issues one for the
    // chart's ServiceAccount with that audience and lifetime.
    let token = ctx
        .service_account_token(
            &format!("{release}-upload-grant-operator"),
            "sts.amazonaws.com",
            std::time::Duration::from_secs(3600),
        )
        .await?;
    assert_eq!(token.split('.').count(), 3, "a JWT");

    env.helm(&["uninstall", &release, "-n", &ctx.namespace])?;
    Ok(())
}
