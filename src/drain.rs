//! `upload-grant-operator drain`: scales the operator's Deployment to zero and
//! waits until its pods are gone. The chart runs it as a pre-delete hook:
//! `helm uninstall` deletes the Deployment and the RBAC at once, so pods that
//! stop afterwards can no longer release their Lease (a standby of the next
//! install would wait a whole lease duration). Drained first, they stop while
//! their permissions still exist.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
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
    #[error("{pods} pod(s) of Deployment {deployment} still running after {timeout:?}")]
    Timeout {
        deployment: String,
        pods: usize,
        timeout: Duration,
    },
}

/// Scales `deployment` to zero and waits up to `timeout` until none of its
/// pods is left. A Deployment that does not exist is already drained.
pub async fn drain(
    client: Client,
    namespace: &str,
    deployment: &str,
    timeout: Duration,
) -> Result<(), DrainError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(found) = deployments.get_opt(deployment).await? else {
        tracing::info!(deployment, "no Deployment to drain");
        return Ok(());
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
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = pods
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 {
            tracing::info!(deployment, "drained");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DrainError::Timeout {
                deployment: deployment.to_owned(),
                pods: left,
                timeout,
            });
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
