//! The Helm chart: lints, renders hardened with every option, installs into
//! the real apiserver, and its RBAC is enough: the operator, running as the
//! chart's ServiceAccount, passes the core grant scenario.

mod support;

use std::path::Path;

use kube::Api;
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestEnv, TestResult};

const CHART: &str = "charts/upload-grant-operator";
const ALL_OPTIONS: &str = "charts/upload-grant-operator/ci/all-options-values.yaml";

/// The chart rendered as release "r" in namespace "ugo", with `extra`
/// arguments to `helm template` (`--set`, `-f`).
fn template(env: &TestEnv, extra: &[&str]) -> TestResult<Vec<serde_json::Value>> {
    let mut args = vec!["template", "r", CHART, "-n", "ugo"];
    args.extend(extra);
    support::yaml_documents(&env.helm(&args)?)
}

#[test]
fn chart_lints_and_renders_hardened_with_every_option() -> TestResult {
    let env = TestEnv::get();
    env.helm(&["lint", "--strict", CHART])?;
    env.helm(&["lint", "--strict", CHART, "-f", ALL_OPTIONS])?;

    let defaults = template(env, &[])?;
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
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let all = template(env, &["-f", ALL_OPTIONS])?;
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
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
    // The operator's settings: (variable, by default, with every option on).
    for (var, default, all_options) in [
        ("UPLOAD_GRANT_KUBE_API_QPS", "100", "50"),
        // Issued and Renewed Events are off by default.
        ("UPLOAD_GRANT_LIFECYCLE_EVENTS", "false", "true"),
        ("UPLOAD_GRANT_PROPAGATION_BUDGET", "2m", "90s"),
        ("UPLOAD_GRANT_MULTIPART_CHECK_INTERVAL", "5m", "1m"),
    ] {
        assert_eq!(
            env_of(&defaults, var),
            Some(default.into()),
            "{var} by default"
        );
        assert_eq!(
            env_of(&all, var),
            Some(all_options.into()),
            "{var} with every option on"
        );
    }

    // Issuer warnings: a Warn-only policy, on by default.
    let binding = defaults
        .iter()
        .find(|d| {
            d["kind"] == "ValidatingAdmissionPolicyBinding"
                && d["metadata"]["name"] == "r-upload-grant-operator-issuer-warnings"
        })
        .ok_or("no issuer warnings")?;
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Warn"])
    );
    let quiet = template(env, &["--set", "issuerWarnings.enabled=false"])?;
    let warnings = |d: &&serde_json::Value| {
        d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-issuer-warnings"))
    };
    assert!(!quiet.iter().any(|d| warnings(&d)));
    assert_eq!(defaults.iter().filter(warnings).count(), 2);

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
    let no_drain = template(env, &["--set", "drainOnUninstall=false"])?;
    assert!(!no_drain.iter().any(|d| d["kind"] == "Job"));

    let deployment = defaults
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .ok_or("no Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // Hardened: each field of the pod or its container, and what it must be.
    for (name, value, want) in [
        (
            "runAsNonRoot",
            &pod["securityContext"]["runAsNonRoot"],
            serde_json::json!(true),
        ),
        (
            "seccompProfile",
            &pod["securityContext"]["seccompProfile"]["type"],
            serde_json::json!("RuntimeDefault"),
        ),
        (
            "readOnlyRootFilesystem",
            &container["securityContext"]["readOnlyRootFilesystem"],
            serde_json::json!(true),
        ),
        (
            "allowPrivilegeEscalation",
            &container["securityContext"]["allowPrivilegeEscalation"],
            serde_json::json!(false),
        ),
        (
            "dropped capabilities",
            &container["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
        ),
        (
            "liveness probe",
            &container["livenessProbe"]["httpGet"]["path"],
            serde_json::json!("/healthz"),
        ),
        (
            "readiness probe",
            &container["readinessProbe"]["httpGet"]["path"],
            serde_json::json!("/readyz"),
        ),
    ] {
        assert_eq!(*value, want, "{name}");
    }
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string()
    );

    // The CRDs the chart installs are the generated ones, kept on uninstall.
    let crd = defaults
        .iter()
        .find(|d| d["metadata"]["name"] == "uploadgrants.grants.io")
        .ok_or("no CRD")?;
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let generated: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(
        support::repo_root().join("crds/uploadgrants.grants.io.yaml"),
    )?)?;
    assert_eq!(
        numbers_as_floats(&crd["spec"]),
        numbers_as_floats(&generated["spec"])
    );

    // Without a watch list the namespaced powers are cluster-wide; with one
    // they move to a Role and RoleBinding in each listed namespace.
    let resources_of = |rules: &serde_json::Value| -> Vec<String> {
        let mut r: Vec<String> = rules
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| rule["resources"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        r.sort();
        r
    };
    let cluster_role = |docs: &[serde_json::Value]| -> TestResult<serde_json::Value> {
        Ok(docs
            .iter()
            .find(|d| {
                d["kind"] == "ClusterRole" && d["metadata"]["name"] == "r-upload-grant-operator"
            })
            .ok_or("no ClusterRole")?
            .clone())
    };
    let namespaced = ["events", "secrets", "uploadgrants", "uploadgrants/status"];
    let cluster_scoped = [
        "clustergrantissuers",
        "clustergrantissuers/status",
        "namespaces",
    ];
    let mut everything: Vec<&str> = namespaced.iter().chain(&cluster_scoped).copied().collect();
    everything.sort();
    assert_eq!(resources_of(&cluster_role(&defaults)?["rules"]), everything);
    assert_eq!(env_of(&defaults, "UPLOAD_GRANT_WATCH_NAMESPACE"), None);
    let listed = template(
        env,
        &[
            "--set",
            "operator.watchNamespaces={team-b,team-a}",
            "--set",
            "operator.watchNamespace=team-c",
            "--set",
            "rolloutRestarts.enabled=true",
        ],
    )?;
    let mut kept = cluster_scoped.to_vec();
    kept.push("uploadgrants");
    kept.sort();
    assert_eq!(
        resources_of(&cluster_role(&listed)?["rules"]),
        kept,
        "the ClusterRole keeps what is cluster-scoped, and get/patch on grants for their finalizers"
    );
    let grants_rule = cluster_role(&listed)?["rules"]
        .as_array()
        .and_then(|rules| {
            rules
                .iter()
                .find(|r| r["resources"] == serde_json::json!(["uploadgrants"]))
                .cloned()
        })
        .ok_or("no rule for grants")?;
    assert_eq!(grants_rule["verbs"], serde_json::json!(["get", "patch"]));
    assert_eq!(
        env_of(&listed, "UPLOAD_GRANT_WATCH_NAMESPACE"),
        Some("team-a,team-b,team-c".into())
    );
    let in_namespace = |kind: &str, ns: &str| {
        listed
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["namespace"] == ns
                    && d["metadata"]["name"] == "r-upload-grant-operator"
            })
            .cloned()
    };
    let mut with_restarts: Vec<&str> = namespaced.to_vec();
    with_restarts.extend(["daemonsets", "deployments", "statefulsets"]);
    with_restarts.sort();
    for ns in ["team-a", "team-b", "team-c"] {
        let role = in_namespace("Role", ns).ok_or(format!("no Role in {ns}"))?;
        assert_eq!(resources_of(&role["rules"]), with_restarts, "Role in {ns}");
        let secrets = role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resources"] == serde_json::json!(["secrets"]))
            .ok_or("no Secret rule")?;
        assert_eq!(
            secrets["verbs"],
            serde_json::json!(["get", "list", "watch", "create", "patch", "delete"])
        );
        let binding = in_namespace("RoleBinding", ns).ok_or(format!("no RoleBinding in {ns}"))?;
        assert_eq!(binding["roleRef"]["name"], "r-upload-grant-operator");
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "r-upload-grant-operator", "namespace": "ugo"}])
        );
    }
    assert_eq!(
        listed.iter().filter(|d| d["kind"] == "Role").count(),
        5,
        "a Role per listed namespace, the leader election's and the drain hook's"
    );

    // The Secret write guard matches the operator's ServiceAccount only.
    let guard = "r-upload-grant-operator-secret-write-guard";
    let policy = defaults
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy" && d["metadata"]["name"] == guard)
        .ok_or("no Secret write guard")?;
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:ugo:r-upload-grant-operator'"
    );
    let binding = defaults
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding" && d["metadata"]["name"] == guard)
        .ok_or("no binding for the Secret write guard")?;
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    let unguarded = template(env, &["--set", "secretWriteGuard.enabled=false"])?;
    assert!(!unguarded.iter().any(|d| {
        d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-secret-write-guard"))
    }));

    // image.digest pins the operator's and the hook's image; the tag is ignored.
    let images = |docs: &[serde_json::Value]| -> Vec<String> {
        docs.iter()
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
            .map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let repository = "ghcr.io/upload-grant-operator/upload-grant-operator";
    let chart_yaml = std::fs::read_to_string(support::repo_root().join(CHART).join("Chart.yaml"))?;
    let app_version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"'))
        .ok_or("no appVersion in Chart.yaml")?;
    let tagged = format!("{repository}:{app_version}");
    assert_eq!(images(&defaults), [tagged.as_str(), tagged.as_str()]);
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let pinned = template(
        env,
        &[
            "--set",
            "image.tag=moved",
            "--set",
            &format!("image.digest={digest}"),
        ],
    )?;
    let by_digest = format!("{repository}@{digest}");
    assert_eq!(images(&pinned), [by_digest.as_str(), by_digest.as_str()]);

    // values.schema.json refuses wrong values.
    for bad in [
        "replicaCount=-1",
        "operator.logFormat=xml",
        "unknownKey=1",
        "metrics.port=0",
        "operator.kubeApiQps=-1",
        "rolloutRestarts.debounce=soon",
        "operator.watchNamespaces={Team_A}",
        "operator.watchNamespace=-x",
        "secretWriteGuard.enabled=maybe",
        "events.lifecycle=sometimes",
        "image.digest=sha256:abc",
        "image.digest=latest",
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

/// Runs helm and fails on any warning it prints: an install or upgrade with
/// every option prints none the user did not cause (an unknown schema
/// format in the CRDs printed one on every install).
fn helm_without_warnings(env: &TestEnv, args: &[&str]) -> TestResult {
    let mut helm = env.command("helm");
    helm.args(args).current_dir(support::repo_root());
    let out = helm.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("helm {args:?}: {stderr}").into());
    }
    if stderr.to_lowercase().contains("warning") {
        return Err(format!("helm {args:?} warned: {stderr}").into());
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
    // Deleted on drop too: a failed install may leave it behind.
    ctx.delete_issuer_on_drop(&issuer);
    let mut guard = Release {
        env,
        name: release.clone(),
        namespace: ctx.namespace.clone(),
        uninstalled: false,
    };
    // Prometheus Operator is not here; stand-in CRDs let the server accept
    // the ServiceMonitor and the PrometheusRule the chart renders.
    let mut apply = env.command("kubectl");
    apply.args([
        "apply",
        "--server-side",
        "-f",
        "tests/fixtures/servicemonitor-crd.yaml",
        "-f",
        "tests/fixtures/prometheusrule-crd.yaml",
    ]);
    support::output(apply)?;
    let mut established = env.command("kubectl");
    established.args([
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
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
    helm_without_warnings(env, &args)?;
    // An upgrade applies every object again, CRDs included.
    let mut upgrade = args.to_vec();
    upgrade[0] = "upgrade";
    upgrade.retain(|a| *a != "--take-ownership");
    helm_without_warnings(env, &upgrade)?;

    // Run the operator as the chart's ServiceAccount: a missing permission fails the scenario.
    let dir = tempfile::tempdir()?;
    let sa = format!("{release}-upload-grant-operator");
    // The apiserver accepts tokens for its own audience, the issuer URL.
    let hour = std::time::Duration::from_secs(3600);
    let token = ctx
        .service_account_token(&sa, env.var("TESTENV_APISERVER_URL"), hour)
        .await?;
    let kubeconfig = write_kubeconfig(dir.path(), env, &token)?;
    // The Secret write guard is on (the default): the operator's whole run
    // below happens under it.
    let user = format!("system:serviceaccount:{}:{sa}", ctx.namespace);
    wait_guard_active(env, &user, &ctx.namespace).await?;
    let work = TestContext::new("chart-grants").await?;
    // With leader election on, as the chart runs it: the Lease lives in the release namespace.
    let opts = OperatorOptions {
        env: vec![
            ("KUBECONFIG".into(), kubeconfig),
            ("UPLOAD_GRANT_LEADER_ELECT".into(), "true".into()),
            // The Issued Event below exercises the chart's Event RBAC.
            ("UPLOAD_GRANT_LIFECYCLE_EVENTS".into(), "true".into()),
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
    // A renewal rewrites the Secret (server-side apply) under the guard too.
    let before = secret_data(&work.client, &work.namespace, "via-chart").await?;
    support::rollout::request_renewal(&work, "via-chart", "chart-r1").await?;
    support::rollout::wait_answered(&work, "via-chart", "chart-r1").await?;
    let after = secret_data(&work.client, &work.namespace, "via-chart").await?;
    assert_ne!(
        before.get("url"),
        after.get("url"),
        "the renewal wrote no new URL"
    );
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
    // The CRDs are the test's own (the operator here runs beside the chart).
    let (mut guard, sa, _) = install_plain(&ctx, &["rolloutRestarts.enabled=false"])?;
    let release = guard.name.clone();

    // The operator runs as the chart's ServiceAccount with restarts turned on
    // by hand: only the chart's RBAC stands between it and the Deployment.
    let dir = tempfile::tempdir()?;
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
    create_deployment(&work, "uploader", Some("env")).await?;
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

    env.helm(&[
        "upgrade",
        &release,
        CHART,
        "-n",
        &ctx.namespace,
        "--reuse-values",
        "--set",
        "rolloutRestarts.enabled=true",
    ])?;
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

/// Installs a release in `ctx`'s namespace with the CRDs left to the test
/// (`support::install_committed_crds`) and no uninstall hook, plus `extra`
/// `--set` values; its operator ServiceAccount's name and username.
fn install_plain<'a>(
    ctx: &'a TestContext,
    extra: &[&str],
) -> TestResult<(Release<'a>, String, String)> {
    let release = format!("ugo-{}", support::random_suffix());
    let guard = Release {
        env: ctx.env,
        name: release.clone(),
        namespace: ctx.namespace.clone(),
        uninstalled: false,
    };
    let mut args = vec![
        "install",
        &release,
        CHART,
        "-n",
        &ctx.namespace,
        "--wait=false",
        "--set",
        "crds.install=false",
        "--set",
        "drainOnUninstall=false",
    ];
    for value in extra {
        args.extend(["--set", value]);
    }
    ctx.env.helm(&args)?;
    let sa = format!("{release}-upload-grant-operator");
    let user = format!("system:serviceaccount:{}:{sa}", ctx.namespace);
    Ok((guard, sa, user))
}

/// A client of the test environment's admin, acting as `user`.
async fn impersonating(env: &TestEnv, user: &str) -> TestResult<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info.impersonate = Some(user.to_owned());
    Ok(kube::Client::try_from(config)?)
}

/// The status code and message of a refused request; None if it succeeded.
fn refusal<T>(result: Result<T, kube::Error>) -> TestResult<Option<(u16, String)>> {
    match result {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) => Ok(Some((status.code, status.message))),
        Err(e) => Err(e.into()),
    }
}

const PRESIGNED: &str = "grants.io/presigned-url";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

fn secret(name: &str, type_: &str, managed: bool) -> k8s_openapi::api::core::v1::Secret {
    let labels =
        managed.then(|| [(MANAGED_BY.to_owned(), "upload-grant-operator".to_owned())].into());
    k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels,
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        string_data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    }
}

/// Policies take a moment to be enforced after they are created: waits
/// until `user` is refused a plain Opaque Secret in `namespace` by the
/// guard (removing any that got through before it was active).
async fn wait_guard_active(env: &TestEnv, user: &str, namespace: &str) -> TestResult {
    use k8s_openapi::api::core::v1::Secret;
    let as_user = impersonating(env, user).await?;
    let admin = env.client().await?;
    let name = format!("guard-probe-{}", support::random_suffix());
    let probe = secret(&name, "Opaque", false);
    support::eventually(
        "the Secret write guard to refuse a plain Secret",
        std::time::Duration::from_secs(60),
        || async {
            let created = Api::<Secret>::namespaced(as_user.clone(), namespace)
                .create(&Default::default(), &probe)
                .await;
            match refusal(created)? {
                None => {
                    Api::<Secret>::namespaced(admin.clone(), namespace)
                        .delete(&name, &Default::default())
                        .await?;
                    Ok(None)
                }
                Some((403, message)) if message.contains("may create only") => Ok(Some(())),
                Some((code, message)) => {
                    Err(format!("probe refused otherwise: {code} {message}").into())
                }
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_secret_write_guard_confines_the_operators_identity_to_its_own_secrets() -> TestResult {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
    let ctx = TestContext::new("chart-guard").await?;
    let env = ctx.env;
    // Without a watch list the chart's RBAC lets the identity write every
    // Secret: only the guard stands in the way below.
    let (mut release, _sa, user) = install_plain(&ctx, &[])?;
    let work = TestContext::new("chart-guard-work").await?;
    wait_guard_active(env, &user, &work.namespace).await?;

    let admin: Api<Secret> = work.api();
    let operator: Api<Secret> = Api::namespaced(impersonating(env, &user).await?, &work.namespace);
    let foreign = [
        secret("plain", "Opaque", false),
        secret("typed", PRESIGNED, false),
        secret("labelled", "Opaque", true),
        secret("relabelled", PRESIGNED, true),
    ];
    for s in &foreign {
        admin.create(&PostParams::default(), s).await?;
    }
    // Somebody took "relabelled" out of the operator's hands.
    let release_it = serde_json::json!({"metadata": {"labels": {MANAGED_BY: "someone-else"}}});
    admin
        .patch(
            "relabelled",
            &PatchParams::default(),
            &Patch::Merge(&release_it),
        )
        .await?;

    let denied = |what: &str, result: Option<(u16, String)>| -> TestResult {
        match result {
            Some((403, message)) if message.contains("upload-grant-operator may") => Ok(()),
            other => Err(format!("{what}: not refused by the guard: {other:?}").into()),
        }
    };
    // Creating anything but its own kind of Secret.
    for (name, type_, managed) in [
        ("new-plain", "Opaque", false),
        ("new-typed", PRESIGNED, false),
        ("new-labelled", "Opaque", true),
    ] {
        let created = operator
            .create(&PostParams::default(), &secret(name, type_, managed))
            .await;
        denied(&format!("create {name}"), refusal(created)?)?;
    }
    // Patching, relabelling into ours, server-side applying or deleting a foreign Secret.
    let ours_label =
        serde_json::json!({"metadata": {"labels": {MANAGED_BY: "upload-grant-operator"}}});
    let data = serde_json::json!({"stringData": {"k": "changed"}});
    let ssa = PatchParams::apply("upload-grant-operator").force();
    for name in ["plain", "typed", "labelled", "relabelled"] {
        for patch in [&data, &ours_label] {
            let patched = operator
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await;
            denied(&format!("patch {name} with {patch}"), refusal(patched)?)?;
        }
        let applied = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {MANAGED_BY: "upload-grant-operator"}}, "stringData": {"url": "x"}});
        let applied = operator.patch(name, &ssa, &Patch::Apply(&applied)).await;
        denied(&format!("apply {name}"), refusal(applied)?)?;
        let deleted = operator.delete(name, &DeleteParams::default()).await;
        denied(&format!("delete {name}"), refusal(deleted)?)?;
    }
    for s in &foreign {
        let now = admin
            .get(&s.metadata.name.clone().unwrap_or_default())
            .await?;
        assert_eq!(now.type_, s.type_, "{:?} changed type", s.metadata.name);
        assert_eq!(
            now.data.unwrap_or_default().get("k").map(|v| v.0.clone()),
            Some(b"v".to_vec()),
            "{:?} changed",
            s.metadata.name
        );
    }

    // Its own Secrets, written as the operator writes them, pass: created
    // by server-side apply, renewed, and deleted with a uid precondition;
    // but not released from its label.
    let own = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": PRESIGNED,
        "metadata": {"name": "own", "labels": {MANAGED_BY: "upload-grant-operator", "grants.io/grant": "own"}},
        "stringData": {"url": "https://example.invalid/1"}});
    let created = operator
        .patch(
            "own",
            &PatchParams::apply("upload-grant-operator"),
            &Patch::Apply(&own),
        )
        .await?;
    let mut renewed = own.clone();
    renewed["metadata"]["uid"] = created.metadata.uid.clone().into();
    renewed["stringData"]["url"] = "https://example.invalid/2".into();
    operator.patch("own", &ssa, &Patch::Apply(&renewed)).await?;
    let unlabelled = operator
        .patch("own", &PatchParams::default(), &Patch::Merge(&release_it))
        .await;
    denied("relabel own", refusal(unlabelled)?)?;
    let precondition = DeleteParams {
        preconditions: Some(Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    operator.delete("own", &precondition).await?;
    assert!(admin.get_opt("own").await?.is_none());

    // Nobody else is matched: the admin still edits and deletes foreign Secrets.
    admin
        .patch("plain", &PatchParams::default(), &Patch::Merge(&data))
        .await?;
    admin.delete("plain", &DeleteParams::default()).await?;

    env.helm(&["uninstall", &release.name, "-n", &ctx.namespace])?;
    release.uninstalled = true;
    Ok(())
}

#[tokio::test]
async fn with_watch_namespaces_the_charts_identity_works_there_and_nowhere_else() -> TestResult {
    let ctx = TestContext::new("chart-ns").await?;
    let env = ctx.env;
    let labels = [("chart-ns", "yes")];
    let a = TestContext::with_labels("chart-ns-a", &labels).await?;
    let b = TestContext::with_labels("chart-ns-b", &labels).await?;
    let c = TestContext::with_labels("chart-ns-c", &labels).await?;
    let listed = format!(
        "operator.watchNamespaces={{{},{}}}",
        a.namespace, b.namespace
    );
    let (mut release, sa, user) = install_plain(&ctx, &[&listed, "leaderElection.enabled=false"])?;

    let dir = tempfile::tempdir()?;
    let hour = std::time::Duration::from_secs(3600);
    let token = ctx
        .service_account_token(&sa, env.var("TESTENV_APISERVER_URL"), hour)
        .await?;
    let kubeconfig = write_kubeconfig(dir.path(), env, &token)?;
    let opts = OperatorOptions {
        env: vec![
            ("KUBECONFIG".into(), kubeconfig),
            (
                "UPLOAD_GRANT_WATCH_NAMESPACE".into(),
                format!("{},{}", a.namespace, b.namespace),
            ),
            // The Issued Events below exercise the namespaced Event RBAC.
            ("UPLOAD_GRANT_LIFECYCLE_EVENTS".into(), "true".into()),
        ],
        ..Default::default()
    };
    let Scenario {
        ctx: a,
        operator: _op,
        dir: _d,
    } = Scenario::start_in(a, opts).await?;
    let issuer = open_issuer(&a).await?;
    for ns in [&a, &b] {
        create_grant(
            ns,
            "confined",
            spec(ns, &issuer, "confined.txt", serde_json::json!({})),
        )
        .await?;
    }
    for ns in [&a, &b] {
        wait_ready(ns, "confined").await?;
        let data = secret_data(&ns.client, &ns.namespace, "confined").await?;
        assert_eq!(
            consume(&data, Some(b"confined".to_vec())).await?.status(),
            200
        );
        wait_event(ns, "confined", "Issued").await?;
    }

    let can_i = |verb: &str, resource: &str, namespace: Option<&str>| -> TestResult<bool> {
        let mut cmd = env.command("kubectl");
        cmd.args(["auth", "can-i", verb, resource, "--as", &user]);
        match namespace {
            Some(ns) => cmd.args(["-n", ns]),
            None => cmd.arg("--all-namespaces"),
        };
        let out = cmd.output()?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => Err(format!(
                "kubectl auth can-i {verb} {resource}: {other:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into()),
        }
    };
    for verb in [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ] {
        assert!(
            !can_i(verb, "secrets", Some(&c.namespace))?,
            "may {verb} Secrets in {}",
            c.namespace
        );
        assert!(
            !can_i(verb, "secrets", None)?,
            "may {verb} Secrets in every namespace"
        );
    }
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        for ns in [&a.namespace, &b.namespace] {
            assert!(
                can_i(verb, "secrets", Some(ns))?,
                "may not {verb} Secrets in {ns}"
            );
        }
    }
    assert!(!can_i(
        "list",
        "uploadgrants.grants.io",
        Some(&c.namespace)
    )?);
    assert!(can_i("list", "namespaces", None)?);

    // C's grant is not the operator's business.
    create_grant(
        &c,
        "confined",
        spec(&c, &issuer, "confined.txt", serde_json::json!({})),
    )
    .await?;
    create_grant(
        &a,
        "later",
        spec(&a, &issuer, "later.txt", serde_json::json!({})),
    )
    .await?;
    wait_ready(&a, "later").await?;
    let ignored = c
        .api::<upload_grant_operator::api::UploadGrant>()
        .get("confined")
        .await?;
    assert_eq!(ignored.status, None);

    // Deleting a watched namespace deletes the operator's Role there too;
    // nothing of the operator's holds its grants, so the namespace goes.
    let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.client.clone());
    namespaces.delete(&b.namespace, &Default::default()).await?;
    support::eventually(
        "the watched namespace to be deleted",
        std::time::Duration::from_secs(90),
        || async {
            Ok(namespaces
                .get_opt(&b.namespace)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;

    env.helm(&["uninstall", &release.name, "-n", &ctx.namespace])?;
    release.uninstalled = true;
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

/// With rollout restarts, the operator's identity may patch workloads: the
/// workload guard lets it change only the pod template's restart
/// annotations. The admin, and the operator's own restart patch, pass.
#[tokio::test]
async fn the_workload_guard_lets_the_operators_identity_only_restart() -> TestResult {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{DeleteParams, Patch, PatchParams};
    use upload_grant_operator::controller::rollout::{RESTARTED_AT_ANNOTATION, url_annotation};
    let ctx = TestContext::new("chart-workloads").await?;
    let env = ctx.env;
    let (mut release, _sa, user) = install_plain(&ctx, &["rolloutRestarts.enabled=true"])?;
    let work = TestContext::new("chart-workloads-work").await?;
    support::rollout::create_deployment(&work, "app", Some("*")).await?;
    support::rollout::create_deployment(&work, "probe", Some("*")).await?;
    let admin: Api<Deployment> = work.api();
    let operator: Api<Deployment> =
        Api::namespaced(impersonating(env, &user).await?, &work.namespace);
    let patch = |value: serde_json::Value| Patch::Merge(value);
    let template = |annotations: serde_json::Value| serde_json::json!({"spec": {"template": {"metadata": {"annotations": annotations}}}});
    let image = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.invalid/other:2"}]}}}});
    // Policies take a moment to be enforced: a probe Deployment takes the
    // changes that pass before it is.
    let mut attempt = 0;
    support::eventually(
        "the workload guard to refuse a change",
        std::time::Duration::from_secs(60),
        || {
            attempt += 1;
            let label = serde_json::json!({"metadata": {"labels": {"probe": attempt.to_string()}}});
            let operator = operator.clone();
            async move {
                let changed = operator
                    .patch("probe", &PatchParams::default(), &patch(label))
                    .await;
                match refusal(changed)? {
                    Some((403, m)) if m.contains("upload-grant-operator may") => Ok(Some(())),
                    None => Ok(None),
                    Some((code, m)) => Err(format!("refused otherwise: {code} {m}").into()),
                }
            }
        },
    )
    .await?;
    let refused = [
        ("a new image", image.clone()),
        (
            "another pod-template annotation",
            template(serde_json::json!({"x": "y"})),
        ),
        ("replicas", serde_json::json!({"spec": {"replicas": 3}})),
        ("paused", serde_json::json!({"spec": {"paused": true}})),
        (
            "template labels",
            serde_json::json!({"spec": {"template": {"metadata": {"labels": {"extra": "1"}}}}}),
        ),
        (
            "workload labels",
            serde_json::json!({"metadata": {"labels": {"extra": "1"}}}),
        ),
        (
            "workload annotations",
            serde_json::json!({"metadata": {"annotations": {"grants.io/accept-restarts-from": "*,x"}}}),
        ),
    ];
    for (what, value) in refused {
        let changed = operator
            .patch("app", &PatchParams::default(), &patch(value))
            .await;
        match refusal(changed)? {
            Some((403, m)) if m.contains("upload-grant-operator may") => {}
            other => return Err(format!("{what}: not refused by the guard: {other:?}").into()),
        }
    }
    let deleted = operator.delete("app", &DeleteParams::default()).await;
    assert!(matches!(refusal(deleted)?, Some((403, _))), "delete");

    // The restart itself passes, as the operator sends it.
    let restart = template(serde_json::json!({
        RESTARTED_AT_ANNOTATION: "2027-01-01T00:00:00Z", url_annotation("env"): "sha256:abc"}));
    let params = PatchParams {
        field_manager: Some("upload-grant-operator".into()),
        ..PatchParams::default()
    };
    operator.patch("app", &params, &patch(restart)).await?;
    // The admin is not matched.
    admin
        .patch("app", &PatchParams::default(), &patch(image))
        .await?;
    let now = admin.get("app").await?;
    let generation = now.metadata.generation.unwrap_or_default();
    assert_eq!(
        generation, 3,
        "the restart and the admin's change, nothing else"
    );
    env.helm(&["uninstall", &release.name, "-n", &ctx.namespace])?;
    release.uninstalled = true;
    Ok(())
}
