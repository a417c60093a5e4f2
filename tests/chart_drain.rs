//! The chart's uninstall hook (`drainOnUninstall`): its resources are
//! deleted whether it succeeds or fails, and its drain lists only the
//! release's operator pods, by the labels the Deployment selects them with.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{TestEnv, TestResult};
use upload_grant_operator::drain;

const CHART: &str = "charts/upload-grant-operator";

/// The chart rendered as `release` in namespace "ugo".
fn template(env: &TestEnv, release: &str) -> TestResult<Vec<Value>> {
    support::yaml_documents(&env.helm(&["template", release, CHART, "-n", "ugo"])?)
}

fn labels(value: &Value) -> TestResult<BTreeMap<String, String>> {
    Ok(serde_json::from_value(value.clone())?)
}

#[test]
fn the_drain_hook_cleans_up_after_itself_and_lists_only_the_releases_pods() -> TestResult {
    let env = TestEnv::get();
    // A release whose name holds the chart's (fullname = release) and one
    // whose does not.
    for release in ["r", "upload-grant-operator"] {
        let docs = template(env, release)?;
        let hooks: Vec<&Value> = docs
            .iter()
            .filter(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete")
            .collect();
        let mut kinds: Vec<&str> = hooks.iter().filter_map(|d| d["kind"].as_str()).collect();
        kinds.sort();
        assert_eq!(kinds, ["Job", "Role", "RoleBinding", "ServiceAccount"]);
        for hook in &hooks {
            let policy = hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
                .as_str()
                .unwrap_or_default();
            let mut policies: Vec<&str> = policy.split(',').map(str::trim).collect();
            policies.sort();
            assert_eq!(
                policies,
                ["before-hook-creation", "hook-failed", "hook-succeeded"],
                "{release}: {} {}",
                hook["kind"],
                hook["metadata"]["name"]
            );
        }

        let job = hooks
            .iter()
            .find(|d| d["kind"] == "Job")
            .ok_or("no drain Job")?;
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        let selector = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "UPLOAD_GRANT_DRAIN_SELECTOR")
            .and_then(|e| e["value"].as_str())
            .ok_or("no UPLOAD_GRANT_DRAIN_SELECTOR")?;
        // An environment variable, not a flag an older image would refuse.
        let args = container["args"].as_array().ok_or("no args")?;
        assert!(
            !args
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.starts_with("--selector"))),
            "{args:?}"
        );
        // It parses as the drain parses it, and is exactly what the
        // Deployment selects its pods with, the release's instance among it.
        let release_labels = drain::parse_selector(selector)?;
        assert_eq!(
            release_labels
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some(release),
            "{selector}"
        );
        assert_eq!(
            release_labels
                .get("app.kubernetes.io/name")
                .map(String::as_str),
            Some("upload-grant-operator"),
            "{selector}"
        );
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .ok_or("no Deployment")?;
        let match_labels = labels(&deployment["spec"]["selector"]["matchLabels"])?;
        assert_eq!(match_labels, release_labels);
        let pods = drain::pod_selector("d", match_labels, &release_labels)?;
        assert_eq!(pods, selector);
        // The operator's pods carry it; the drain Job's own pod does not.
        let operator_pod = labels(&deployment["spec"]["template"]["metadata"]["labels"])?;
        let drain_pod = labels(&job["spec"]["template"]["metadata"]["labels"])?;
        let selects = |pod: &BTreeMap<String, String>| {
            release_labels
                .iter()
                .all(|(k, v)| pod.get(k).is_some_and(|p| p == v))
        };
        assert!(selects(&operator_pod), "{operator_pod:?}");
        assert!(!selects(&drain_pod), "{drain_pod:?}");
    }
    Ok(())
}
