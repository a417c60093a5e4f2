//! The handles every pass shares: the client, the settings, the signer,
//! the caches, the event publisher, the metrics and the per-grant records.
//! Nothing here decides or does anything (`admits` asks `decide`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::{Client, ResourceExt};

use super::cache::{Cache, Keyed};
use super::cached::CachedGrant;
use super::decide::{Admission, admit, issuer_name};
use super::events::Events;
use super::managed::ManagedSecret;
use super::memo::{Memos, Tombstones};
use crate::api::{ClusterGrantIssuer, UploadGrant};
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::signing::{CredentialSnapshot, Presigner};

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_issuer: Option<String>,
    pub concurrency: u16,
    /// The client's request bound (0: none); renewals are paced to it
    /// (`dispatch`).
    pub kube_api_qps: u32,
    /// Only watch grants and Secrets in these namespaces (all when empty),
    /// so the operator needs no cluster-wide access to Secrets.
    pub namespaces: Vec<String>,
    /// How long a renewed URL may take to reach pods that mount the Secret
    /// (`api::limits::DEFAULT_PROPAGATION_BUDGET`).
    pub propagation_budget: Duration,
    /// Rollout restarts (`rollout`): off when None, else at most one restart
    /// per workload in this window.
    pub rollout_restart_debounce: Option<Duration>,
    /// How often an open multipart upload is looked at, to notice that it
    /// was completed (`multipart::DEFAULT_CHECK_INTERVAL`).
    pub multipart_check_interval: Duration,
    /// Renew requests are answered at most once per grant in this window
    /// (`--renew-request-interval`).
    pub renew_request_interval: Duration,
    /// Publish Normal Issued/Renewed Events too (`--lifecycle-events`).
    pub lifecycle_events: bool,
    /// With `--sharding`, the shards this replica serves: only their grants
    /// and Secrets are watched and written. None: every grant.
    pub shard: Option<crate::shard::Owned>,
    /// Whether the grant watch asks the apiserver for those shards only
    /// (`--shard-selector`); they are filtered here in any case.
    pub shard_selector: bool,
    /// Whether this replica also writes what belongs to no grant (issuer
    /// status): exactly one replica does.
    pub cluster_wide: bool,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub credentials: CredentialSnapshot,
    pub presigner: Arc<Presigner>,
    pub issuers: Cache<ClusterGrantIssuer>,
    pub namespaces: Cache<PartialObjectMeta<Namespace>>,
    pub secrets: Cache<ManagedSecret>,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// Whether this replica may write now (`crate::fence`).
    pub fence: Fence,
    /// What is remembered about each grant between passes (`memo`).
    pub(super) memos: Memos,
    /// Grants the watch reported deleted: a pass that was running then
    /// revokes what it wrote (`reconcile::run`) and commits nothing.
    pub(super) tombstones: Tombstones,
}

/// A grant's key in the map of per-grant records: a hash of its uid, a
/// fraction of the size of its name and namespace.
pub fn grant_key(grant: &UploadGrant) -> u64 {
    hash(grant.uid().unwrap_or_default().as_bytes())
}

pub(super) fn hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

impl Context {
    /// The issuer a grant uses (its issuerRef, else the default) and the
    /// cache's copy of it, if any.
    pub fn issuer_of<'a>(
        &'a self,
        grant: &'a UploadGrant,
    ) -> (Option<&'a str>, Option<Arc<ClusterGrantIssuer>>) {
        let name = issuer_name(grant, self.settings.default_issuer.as_deref());
        (name, name.and_then(|n| self.issuers.get(n)))
    }

    /// Whether the grant's issuer, as cached now, admits it in its
    /// namespace (`decide::admit`, as a pass would judge it); None when that
    /// cannot be told here: a spec the cache cannot expand, or a namespace
    /// the cache has not seen (a pass does not judge it either), or a grant
    /// the cache keeps in part.
    pub fn admits(&self, cached: &CachedGrant) -> Option<bool> {
        if cached.partial() {
            return None;
        }
        let grant = cached.grant().ok()?;
        let namespace = Some(self.namespaces.get(cached.key().namespace())?);
        let (issuer_name, issuer) = self.issuer_of(&grant);
        let admission = Admission {
            grant: &grant,
            issuer_name,
            issuer: issuer.as_deref(),
            namespace_labels: labels_of(&namespace),
            propagation: self.settings.propagation_budget,
        };
        Some(admit(&admission).is_ok())
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A cached namespace's labels; none for one without labels or not cached.
pub fn labels_of(
    namespace: &Option<Arc<PartialObjectMeta<Namespace>>>,
) -> &BTreeMap<String, String> {
    namespace
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .unwrap_or(&NO_LABELS)
}
