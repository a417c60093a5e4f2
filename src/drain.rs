//! `upload-grant-operator drain`: scales the operator's Deployment to zero and
//! waits until its pods are gone, or all terminating with the Lease released.
//! The chart runs it as a pre-delete hook:
//! `helm uninstall` deletes the Deployment and the RBAC at once, so pods that
//! stop afterwards can no longer release their Lease (a standby of the next
//! install would wait a whole lease duration). Drained first, they stop while
//! their permissions still exist. Best effort: a drain that runs out of time
//! says so and lets the uninstall go on.
//!
//! It lists pods by the Deployment's selector and, from the chart, the
//! release's labels too (`--selector`, or `UPLOAD_GRANT_DRAIN_SELECTOR`,
//! which an older image ignores): only the release's operator pods, never
//! every pod in the namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::controller::validate::{check_label_value, check_qualified_name};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "Deployment {0} selects pods by labels only through matchExpressions; cannot list them"
    )]
    NoLabels(String),
    #[error(
        "Deployment {deployment} selects pods with {key}={has:?}, but the selector asks for {key}={wants:?}: not the release's Deployment; left as it is"
    )]
    Conflict {
        deployment: String,
        key: String,
        has: String,
        wants: String,
    },
}

/// Labels a pod must have, all of them: an equality-based selector.
pub type Labels = BTreeMap<String, String>;

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// No pod of the Deployment is left.
    PodsGone,
    /// Every pod left is terminating and none holds the Lease: the leader
    /// released it, which is the last thing it does.
    LeaseReleased,
    /// Pods were still there at the deadline (named here); uninstalling goes
    /// on, and a lease they still hold expires on its own.
    TimedOut(Vec<String>),
}

/// Scales `deployment` to zero and waits up to `timeout` until its pods are
/// gone, or are all terminating with `lease` (when given) released. Its pods
/// are those its selector's matchLabels select that also carry `labels`
/// (the release's); a Deployment whose selector asks for other values of
/// them is left alone. A Deployment that does not exist is already drained.
pub async fn drain(
    client: Client,
    namespace: &str,
    deployment: &str,
    labels: &Labels,
    lease: Option<&str>,
    timeout: Duration,
) -> Result<Drained, DrainError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(found) = deployments.get_opt(deployment).await? else {
        return Ok(Drained::PodsGone);
    };
    let selector = pod_selector(
        deployment,
        found
            .spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default(),
        labels,
    )?;
    let zero = Patch::Merge(serde_json::json!({"spec": {"replicas": 0}}));
    deployments
        .patch_scale(deployment, &PatchParams::default(), &zero)
        .await?;
    tracing::info!(deployment, "scaled to 0; waiting for its pods to stop");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = pods
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items;
        if left.is_empty() {
            return Ok(Drained::PodsGone);
        }
        let all_terminating = left.iter().all(|p| p.metadata.deletion_timestamp.is_some());
        if all_terminating && let Some(name) = lease {
            let holder = leases
                .get_opt(name)
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty());
            if holder.is_none() {
                return Ok(Drained::LeaseReleased);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let names = left.into_iter().filter_map(|p| p.metadata.name).collect();
            return Ok(Drained::TimedOut(names));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The selector pods are listed by: the Deployment's matchLabels and
/// `labels`, all of them. Refused when the Deployment has no matchLabels
/// (an empty selector would list every pod in the namespace) or asks for
/// another value of one of `labels`.
pub fn pod_selector(
    deployment: &str,
    match_labels: Labels,
    labels: &Labels,
) -> Result<String, DrainError> {
    if match_labels.is_empty() {
        return Err(DrainError::NoLabels(deployment.to_owned()));
    }
    let mut all = match_labels;
    for (key, wants) in labels {
        match all.get(key) {
            Some(has) if has != wants => {
                return Err(DrainError::Conflict {
                    deployment: deployment.to_owned(),
                    key: key.clone(),
                    has: has.clone(),
                    wants: wants.clone(),
                });
            }
            Some(_) => {}
            None => {
                all.insert(key.clone(), wants.clone());
            }
        }
    }
    label_selector(all).ok_or_else(|| DrainError::NoLabels(deployment.to_owned()))
}

/// Parses `k=v[,k=v…]` (`k==v` too), the equality-based label selector the
/// chart passes: the release's labels. Keys and values must be valid label
/// keys and values; each key once.
pub fn parse_selector(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for term in text.split(',').map(str::trim) {
        let (key, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| format!("{term:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        check_qualified_name(key)?;
        check_label_value(value).map_err(|e| format!("value of {key:?} {e}"))?;
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("{key:?} is given twice"));
        }
    }
    Ok(labels)
}

/// `k=v,k=v` for a label selector's matchLabels; None when there are none
/// (an empty selector would match every pod in the namespace).
fn label_selector(labels: BTreeMap<String, String>) -> Option<String> {
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_from_match_labels_and_never_empty() {
        let labels = BTreeMap::from([
            ("app.kubernetes.io/instance".to_owned(), "r".to_owned()),
            ("app.kubernetes.io/name".to_owned(), "ugo".to_owned()),
        ]);
        assert_eq!(
            label_selector(labels).as_deref(),
            Some("app.kubernetes.io/instance=r,app.kubernetes.io/name=ugo")
        );
        assert_eq!(label_selector(BTreeMap::new()), None);
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_release_labels_narrow_the_deployments_selector() {
        let deployment = labels(&[
            ("app.kubernetes.io/instance", "r"),
            ("app.kubernetes.io/name", "upload-grant-operator"),
        ]);
        let release = labels(&[
            ("app.kubernetes.io/instance", "r"),
            ("app.kubernetes.io/name", "upload-grant-operator"),
        ]);
        let want = "app.kubernetes.io/instance=r,app.kubernetes.io/name=upload-grant-operator";
        // The chart's: the same labels.
        assert_eq!(
            pod_selector("d", deployment.clone(), &release).expect("a selector"),
            want
        );
        // No --selector: the Deployment's alone, as before.
        assert_eq!(
            pod_selector("d", deployment.clone(), &Labels::new()).expect("a selector"),
            want
        );
        // A Deployment that selects by its name only: the release's instance too.
        let by_name = labels(&[("app.kubernetes.io/name", "upload-grant-operator")]);
        let instance = labels(&[("app.kubernetes.io/instance", "r")]);
        assert_eq!(
            pod_selector("d", by_name, &instance).expect("a selector"),
            want
        );
        // Another release's Deployment: left alone.
        let other = labels(&[("app.kubernetes.io/instance", "other")]);
        let e = pod_selector("d", deployment, &other).expect_err("a conflict");
        assert_eq!(
            e.to_string(),
            "Deployment d selects pods with app.kubernetes.io/instance=\"r\", but the selector asks for app.kubernetes.io/instance=\"other\": not the release's Deployment; left as it is"
        );
        // No matchLabels: never every pod in the namespace.
        assert!(matches!(
            pod_selector("d", Labels::new(), &instance),
            Err(DrainError::NoLabels(_))
        ));
    }

    #[test]
    fn a_selector_is_equality_terms_of_valid_labels() {
        assert_eq!(
            parse_selector(
                "app.kubernetes.io/name=upload-grant-operator, app.kubernetes.io/instance==r"
            )
            .expect("valid"),
            labels(&[
                ("app.kubernetes.io/instance", "r"),
                ("app.kubernetes.io/name", "upload-grant-operator"),
            ])
        );
        assert_eq!(
            parse_selector("tier=").expect("valid"),
            labels(&[("tier", "")])
        );
        for bad in [
            "",
            "app",
            "a!=b",
            "a in (b)",
            "!a",
            "a=b,a=c",
            "a=b,",
            "-a=b",
            "a=b-",
            "a=b c",
            "Example.com/a=b",
            "/a=b",
            "a/=b",
            &format!("a={}", "v".repeat(64)),
            "a=\u{1b}[2J",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
