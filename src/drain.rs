//! `upload-grant-operator drain`: scales the operator's Deployment to zero and
//! waits until its pods are gone, or all terminating with the Lease released.
//! The chart runs it as a pre-delete hook:
//! `helm uninstall` deletes the Deployment and the RBAC at once, so pods that
//! stop afterwards can no longer release their Lease (a standby of the next
//! install would wait a whole lease duration). Drained first, they stop while
//! their permissions still exist. Best effort: a drain that runs out of time
//! says so and lets the uninstall go on.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "Deployment {0} selects pods by labels only through matchExpressions; cannot list them"
    )]
    NoLabels(String),
}

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
/// gone, or are all terminating with `lease` (when given) released. A
/// Deployment that does not exist is already drained.
pub async fn drain(
    client: Client,
    namespace: &str,
    deployment: &str,
    lease: Option<&str>,
    timeout: Duration,
) -> Result<Drained, DrainError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(found) = deployments.get_opt(deployment).await? else {
        return Ok(Drained::PodsGone);
    };
    let selector = label_selector(
        found
            .spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default(),
    )
    .ok_or_else(|| DrainError::NoLabels(deployment.to_owned()))?;
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
}
