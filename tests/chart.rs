//! The Helm chart: lints, renders hardened with every option, installs into
//! the real apiserver, and its RBAC is enough: the operator, running as the
//! chart's ServiceAccount, passes the core grant scenario.

mod support;

use std::path::Path;

use serde::Deserialize;
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestEnv, TestResult};

const CHART: &str = "charts/upload-grant-operator";
const ALL_OPTIONS: &str = "charts/upload-grant-operator/ci/all-options-values.yaml";

fn documents(yaml: &str) -> TestResult<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

#[test]
fn chart_lints_and_renders_hardened_with_every_option() -> TestResult {
    let env = TestEnv::get();
    env.helm(&["lint", "--strict", CHART])?;
    env.helm(&["lint", "--strict", CHART, "-f", ALL_OPTIONS])?;

    let defaults = documents(&env.helm(&["template", "r", CHART, "-n", "ugo"])?)?;
    let kinds = |docs: &[serde_json::Value]| {
        let mut k: Vec<String> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        kinds(&defaults),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Job",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let all = documents(&env.helm(&["template", "r", CHART, "-n", "ugo", "-f", ALL_OPTIONS])?)?;
    for kind in [
        "ServiceMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ClusterGrantIssuer",
    ] {
        assert!(
            kinds(&all).iter().any(|k| k == kind),
            "{kind} missing with every option on"
        );
    }

    let env_of = |docs: &[serde_json::Value], name: &str| {
        docs.iter()
            .filter(|d| d["kind"] == "Deployment")
            .flat_map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env_of(&defaults, "UPLOAD_GRANT_KUBE_API_QPS"),
        Some("100".into())
    );
    assert_eq!(env_of(&all, "UPLOAD_GRANT_KUBE_API_QPS"), Some("50".into()));
    assert_eq!(
        env_of(&defaults, "UPLOAD_GRANT_PROPAGATION_BUDGET"),
        Some("2m".into())
    );
    assert_eq!(
        env_of(&all, "UPLOAD_GRANT_PROPAGATION_BUDGET"),
        Some("90s".into())
    );

    // Issuer warnings: a Warn-only policy, on by default.
    let binding = defaults
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .ok_or("no issuer warnings")?;
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Warn"])
    );
    let quiet = documents(&env.helm(&[
        "template",
        "r",
        CHART,
        "--set",
        "issuerWarnings.enabled=false",
    ])?)?;
    assert!(
        !quiet
            .iter()
            .any(|d| d["kind"] == "ValidatingAdmissionPolicy")
    );

    // Rollout restarts: the flag, and the RBAC for them, only when enabled.
    let restarts_rule = |docs: &[serde_json::Value]| {
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .find(|r| r["apiGroups"] == serde_json::json!(["apps"]))
    };
    assert_eq!(restarts_rule(&defaults), None);
    assert_eq!(env_of(&defaults, "UPLOAD_GRANT_ROLLOUT_RESTARTS"), None);
    let rule = restarts_rule(&all).ok_or("no RBAC for rollout restarts")?;
    assert_eq!(
        (&rule["resources"], &rule["verbs"]),
        (
            &serde_json::json!(["deployments", "statefulsets", "daemonsets"]),
            &serde_json::json!(["get", "patch"])
        )
    );
    assert_eq!(
        env_of(&all, "UPLOAD_GRANT_ROLLOUT_RESTARTS"),
        Some("true".into())
    );
    assert_eq!(
        env_of(&all, "UPLOAD_GRANT_ROLLOUT_RESTART_DEBOUNCE"),
        Some("45s".into())
    );

    // The uninstall hook: a Job of the operator's image that drains its Deployment.
    let drain = defaults
        .iter()
        .find(|d| d["kind"] == "Job")
        .ok_or("no drain Job")?;
    assert_eq!(
        drain["metadata"]["annotations"]["helm.sh/hook"],
        "pre-delete"
    );
    assert_eq!(
        drain["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "--deployment=r-upload-grant-operator"
    );
    let no_drain = documents(&env.helm(&[
        "template",
        "r",
        CHART,
        "-n",
        "ugo",
        "--set",
        "drainOnUninstall=false",
    ])?)?;
    assert!(!no_drain.iter().any(|d| d["kind"] == "Job"));

    let deployment = defaults
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .ok_or("no Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The CRDs the chart installs are the generated ones, kept on uninstall.
    let crd = defaults
        .iter()
        .find(|d| d["metadata"]["name"] == "uploadgrants.grants.io")
        .ok_or("no CRD")?;
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let generated: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(
        support::repo_root().join("crds/uploadgrants.grants.io.yaml"),
    )?)?;
    assert_eq!(
        numbers_as_floats(&crd["spec"]),
        numbers_as_floats(&generated["spec"])
    );

    // values.schema.json refuses wrong values.
    for bad in [
        "replicaCount=-1",
        "operator.logFormat=xml",
        "unknownKey=1",
        "metrics.port=0",
        "operator.kubeApiQps=-1",
        "rolloutRestarts.debounce=soon",
    ] {
        let out = env
            .command("helm")
            .args(["template", "r", CHART, "--set", bad])
            .current_dir(support::repo_root())
            .output()?;
        assert!(!out.status.success(), "--set {bad} was accepted");
    }
    Ok(())
}

#[tokio::test]
async fn chart_installs_and_its_rbac_is_enough_for_the_operator() -> TestResult {
    let ctx = TestContext::new("chart").await?;
    let env = ctx.env;
    let release = format!("ugo-{}", support::random_suffix());
    let issuer = format!("{release}-issuer");
    let endpoint = format!("defaultIssuer.s3.endpoint={}", env.s3_endpoint());
    let bucket = format!("defaultIssuer.allow[0].buckets[0]={}", env.bucket());
    let issuer_name = format!("defaultIssuer.name={issuer}");
    let region = format!("defaultIssuer.s3.region={}", env.region());
    // The issuer is a hook, which `helm uninstall` leaves behind.
    ctx.delete_issuer_on_drop(&issuer);
    let mut guard = Release {
        env,
        name: release.clone(),
        namespace: ctx.namespace.clone(),
        uninstalled: false,
    };
    // Prometheus Operator is not here; a stand-in CRD lets the server accept
    // the ServiceMonitor the chart renders.
    let mut apply = env.command("kubectl");
    apply.args([
        "apply",
        "--server-side",
        "-f",
        "tests/fixtures/servicemonitor-crd.yaml",
    ]);
    support::output(apply)?;
    let mut established = env.command("kubectl");
    established.args([
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
    ]);
    support::output(established)?;
    let args = [
        "install",
        &release,
        CHART,
        "-n",
        &ctx.namespace,
        "--take-ownership",
        "--wait=false",
        "-f",
        ALL_OPTIONS,
        "--set",
        &issuer_name,
        "--set",
        &region,
        "--set",
        &endpoint,
        "--set",
        "defaultIssuer.s3.forcePathStyle=true",
        "--set",
        &bucket,
        // The Deployment here never runs (its image is not on the node), and
        // the uninstall hook's Job, which uses the same image, could not either.
        "--set",
        "drainOnUninstall=false",
    ];
    env.helm(&args)?;
    // An upgrade applies every object again, CRDs included.
    let mut upgrade = args.to_vec();
    upgrade[0] = "upgrade";
    upgrade.retain(|a| *a != "--take-ownership");
    env.helm(&upgrade)?;

    // Run the operator as the chart's ServiceAccount: a missing permission fails the scenario.
    let dir = tempfile::tempdir()?;
    let sa = format!("{release}-upload-grant-operator");
    // The apiserver accepts tokens for its own audience, the issuer URL.
    let hour = std::time::Duration::from_secs(3600);
    let token = ctx
        .service_account_token(&sa, env.var("TESTENV_APISERVER_URL"), hour)
        .await?;
    let kubeconfig = write_kubeconfig(dir.path(), env, &token)?;
    let work = TestContext::new("chart-grants").await?;
    // With leader election on, as the chart runs it: the Lease lives in the release namespace.
    let opts = OperatorOptions {
        env: vec![
            ("KUBECONFIG".into(), kubeconfig),
            ("UPLOAD_GRANT_LEADER_ELECT".into(), "true".into()),
            ("UPLOAD_GRANT_LEASE_NAMESPACE".into(), ctx.namespace.clone()),
            (
                "UPLOAD_GRANT_LEASE_NAME".into(),
                format!("{release}-upload-grant-operator"),
            ),
        ],
        ..Default::default()
    };
    let Scenario {
        ctx: work,
        dir: _d,
        operator: op,
    } = Scenario::start_in(work, opts).await?;
    eventually_leader(&op).await?;

    let body = b"installed by helm".to_vec();
    let pinned = serde_json::json!({"contentLength": body.len()});
    create_grant(
        &work,
        "via-chart",
        spec(&work, &issuer, "chart.txt", pinned),
    )
    .await?;
    wait_ready(&work, "via-chart").await?;
    let data = secret_data(&work.client, &work.namespace, "via-chart").await?;
    assert_eq!(consume(&data, Some(body)).await?.status(), 200);
    wait_event(&work, "via-chart", "Issued").await?;
    work.api::<upload_grant_operator::api::UploadGrant>()
        .delete("via-chart", &Default::default())
        .await?;
    wait_secret_gone(&work, "via-chart").await?;

    env.helm(&["uninstall", &release, "-n", &ctx.namespace])?;
    guard.uninstalled = true;
    // A deleted CRD is still there, Terminating, while its objects go: kept
    // means not being deleted.
    for crd in ["uploadgrants.grants.io", "clustergrantissuers.grants.io"] {
        let deleting = support::output({
            let mut c = env.command("kubectl");
            c.args([
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ]);
            c
        })?;
        assert!(
            deleting.trim().is_empty(),
            "uninstall must keep the CRDs: {crd} is being deleted since {deleting}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rollout_restarts_are_refused_without_the_charts_rbac_and_work_with_it() -> TestResult {
    use support::rollout::*;
    let ctx = TestContext::new("chart-rbac").await?;
    let env = ctx.env;
    let release = format!("ugo-{}", support::random_suffix());
    let mut guard = Release {
        env,
        name: release.clone(),
        namespace: ctx.namespace.clone(),
        uninstalled: false,
    };
    // The CRDs are the test's own (the operator here runs beside the chart).
    let install = |enabled: &str| -> TestResult {
        let verb = if enabled == "true" {
            "upgrade"
        } else {
            "install"
        };
        let restarts = format!("rolloutRestarts.enabled={enabled}");
        env.helm(&[
            verb,
            &release,
            CHART,
            "-n",
            &ctx.namespace,
            "--wait=false",
            "--set",
            "crds.install=false",
            "--set",
            "drainOnUninstall=false",
            "--set",
            &restarts,
        ])?;
        Ok(())
    };
    install("false")?;

    // The operator runs as the chart's ServiceAccount with restarts turned on
    // by hand: only the chart's RBAC stands between it and the Deployment.
    let dir = tempfile::tempdir()?;
    let sa = format!("{release}-upload-grant-operator");
    let hour = std::time::Duration::from_secs(3600);
    let token = ctx
        .service_account_token(&sa, env.var("TESTENV_APISERVER_URL"), hour)
        .await?;
    let kubeconfig = write_kubeconfig(dir.path(), env, &token)?;
    let opts = OperatorOptions {
        env: vec![
            ("KUBECONFIG".into(), kubeconfig),
            ("UPLOAD_GRANT_ROLLOUT_RESTARTS".into(), "true".into()),
            ("UPLOAD_GRANT_ROLLOUT_RESTART_DEBOUNCE".into(), "0s".into()),
        ],
        ..Default::default()
    };
    let Scenario {
        ctx: work,
        operator,
        ..
    } = Scenario::start_in(TestContext::new("chart-restarts").await?, opts).await?;
    let issuer = open_issuer(&work).await?;
    create_deployment(&work, "uploader").await?;
    let targets = serde_json::json!({"secret": {
        "rolloutRestartTargets": [{"kind": "Deployment", "name": "uploader"}]}});
    create_grant(&work, "env", spec(&work, &issuer, "env.txt", targets)).await?;
    wait_ready(&work, "env").await?;

    request_renewal(&work, "env", "r1").await?;
    wait_answered(&work, "env", "r1").await?;
    wait_event(&work, "env", "RolloutRestartFailed").await?;
    settle(&work, &operator, "env", 0).await?;
    assert_eq!(
        template(&work, "uploader").await?.0,
        1,
        "restarted without RBAC"
    );
    // A refused restart leaves the URL Ready.
    wait_ready(&work, "env").await?;

    install("true")?;
    request_renewal(&work, "env", "r2").await?;
    let fingerprint = wait_answered(&work, "env", "r2").await?;
    let timeout = std::time::Duration::from_secs(30);
    let (generation, _) =
        wait_restarted_for(&work, "uploader", "env", &fingerprint, timeout).await?;
    assert_eq!(generation, 2);
    wait_event(&work, "env", "RolloutRestarted").await?;
    env.helm(&["uninstall", &release, "-n", &ctx.namespace])?;
    guard.uninstalled = true;
    Ok(())
}

/// Uninstalls a release when dropped, unless the test got to do it, so a
/// failed test leaves no ClusterRole or ClusterRoleBinding behind.
struct Release<'a> {
    env: &'a TestEnv,
    name: String,
    namespace: String,
    uninstalled: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self
                .env
                .command("helm")
                .args(["uninstall", &self.name, "-n", &self.namespace])
                .output();
        }
    }
}

async fn eventually_leader(op: &support::operator::Operator) -> TestResult {
    support::eventually(
        "the chart's ServiceAccount to take the lease",
        std::time::Duration::from_secs(30),
        || async { Ok((op.metric("upload_grant_leader").await? == 1.0).then_some(())) },
    )
    .await
}

/// Helm's YAML round trip prints `minimum: 0.0` as `0`; compare values, not spellings.
fn numbers_as_floats(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
        serde_json::Value::Array(a) => a.iter().map(numbers_as_floats).collect(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
            .collect(),
        other => other.clone(),
    }
}

fn write_kubeconfig(dir: &Path, env: &TestEnv, token: &str) -> TestResult<String> {
    let path = dir.join("chart-sa.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: chart-sa\n  user:\n    token: {token}\ncontexts:\n- name: chart\n  context: {{cluster: testenv, user: chart-sa}}\ncurrent-context: chart\n",
        env.var("TESTENV_APISERVER_URL"),
        env.var("TESTENV_CA_FILE"),
    );
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}
