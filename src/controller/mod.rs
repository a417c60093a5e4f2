//! The UploadGrant controller: watches grants, the Secrets it owns (metadata
//! only), issuers and namespace labels, and runs the reconcile pipeline
//! load → validate → authorize → build → apply → status.

pub mod build;
mod reconcile;
mod secrets;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::{ClusterGrantIssuer, UploadGrant};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::server::Readiness;
use crate::signing::{CredentialSnapshot, Presigner};

/// The name the operator writes under: field manager, event reporter.
pub const MANAGER: &str = "upload-grant-operator";
/// Holds a grant until its Secret is gone: deletion must revoke even where
/// ownerReference garbage collection is slow or absent.
pub const FINALIZER: &str = "grants.io/revoke-secret";

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_issuer: Option<String>,
    pub concurrency: u16,
    /// Only watch grants and Secrets in this namespace (all when None).
    pub namespace: Option<String>,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub credentials: CredentialSnapshot,
    pub presigner: Presigner,
    pub issuers: Store<ClusterGrantIssuer>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<ObjectRef<UploadGrant>, u32>>,
}

impl Context {
    /// Waits until the caches the reconcile reads from have listed once, so
    /// no grant is judged against a half-filled cache.
    async fn caches_ready(&self) {
        let _ = tokio::join!(
            self.issuers.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.secrets.wait_until_ready()
        );
    }

    fn record_failure(&self, grant: &ObjectRef<UploadGrant>) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(grant.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn clear_failures(&self, grant: &ObjectRef<UploadGrant>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(grant);
    }
}

/// Per-grant exponential backoff after failures: 5s, 10s, 20s … 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1u64 << exp)).min(Duration::from_secs(300))
}

fn error_policy(grant: Arc<UploadGrant>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.record_failure(&ObjectRef::from_obj(grant.as_ref()));
    let delay = backoff(n);
    tracing::warn!(
        grant = %grant.name_any(),
        namespace = grant.namespace().as_deref().unwrap_or(""),
        category = error.category(),
        error = %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    ctx.metrics.reconcile_failure(error.category());
    Action::requeue(delay)
}

/// A reflector for resources the controller reads and that trigger it.
fn reflect<K>(
    stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = watcher::Result<K>> + Send + 'static,
)
where
    K: kube::Resource + Clone + Send + Sync + std::fmt::Debug + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, stream)
        .default_backoff()
        .touched_objects();
    (reader, stream)
}

/// Runs the controller until a shutdown signal arrives.
pub async fn run(
    client: Client,
    settings: Settings,
    credentials: CredentialSnapshot,
    presigner: Presigner,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (grants, secret_api, namespace_cfg) = match &settings.namespace {
        Some(ns) => (
            Api::<UploadGrant>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={ns}")),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            watcher::Config::default(),
        ),
    };
    let secret_cfg = watcher::Config::default().labels(&build::managed_selector());
    // PartialObjectMeta: metadata-only requests, so Secret data never enters the cache.
    let (secrets, secret_stream) = reflect(watcher(secret_api, secret_cfg));
    let (issuers, issuer_stream) = reflect(watcher(
        Api::<ClusterGrantIssuer>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (namespaces, namespace_stream) = reflect(watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        namespace_cfg,
    ));

    let controller = Controller::new(grants, watcher::Config::default().any_semantic());
    let grant_store = controller.store();
    let default_issuer = settings.default_issuer.clone();
    let by_issuer = grant_store.clone();
    let by_namespace = grant_store.clone();
    {
        let stores = (
            issuers.clone(),
            namespaces.clone(),
            secrets.clone(),
            grant_store.clone(),
        );
        tokio::spawn(async move {
            let _ = tokio::join!(
                stores.0.wait_until_ready(),
                stores.1.wait_until_ready(),
                stores.2.wait_until_ready(),
                stores.3.wait_until_ready()
            );
            readiness.set_caches_synced();
            tracing::info!("caches synced");
        });
    }

    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client,
        settings: settings.clone(),
        credentials,
        presigner,
        issuers,
        namespaces,
        secrets,
        metrics: metrics.clone(),
        failures: Mutex::default(),
    });

    controller
        .owns_stream(secret_stream)
        // A changed issuer re-evaluates every grant that uses it.
        .watches_stream(issuer_stream, move |issuer: ClusterGrantIssuer| {
            let name = issuer.name_any();
            by_issuer
                .state()
                .into_iter()
                .filter(|g| {
                    reconcile::issuer_name(g, default_issuer.as_deref()).as_deref()
                        == Some(name.as_str())
                })
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        })
        // Namespace labels decide which allow rules apply.
        .watches_stream(namespace_stream, move |ns: PartialObjectMeta<Namespace>| {
            let name = ns.name_any();
            by_namespace
                .state()
                .into_iter()
                .filter(|g| g.namespace().as_deref() == Some(name.as_str()))
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
