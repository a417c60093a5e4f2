//! The UploadGrant controller: watches grants, the Secrets it owns (metadata
//! only), issuers and namespace labels, and runs each grant through
//! `reconcile`: load → decide (validate, authorize, schedule; pure) →
//! apply → status.

mod apply;
mod at_risk;
pub mod build;
mod cache;
mod cached;
mod context;
pub mod decide;
mod deletions;
mod dispatch;
pub(crate) mod events;
mod finalizer;
pub mod forecast;
mod issuer_status;
mod load;
mod managed;
mod memo;
pub mod multipart;
mod queue;
mod reconcile;
pub mod recorded;
mod relabel;
mod report;
pub mod rollout;
mod scoped;
pub(crate) mod secrets;
#[cfg(test)]
mod simulation;
mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinSet;

use crate::api::{ClusterGrantIssuer, UploadGrant};
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::server::Readiness;
use crate::shard::{Owned, Selection};
use crate::signing::{CredentialSnapshot, Presigner};

use crate::api::secret::MANAGER;
use cache::{Cache, Key, Keyed};
use cached::CachedGrant;
use context::Context;
pub use context::Settings;

/// The shared handles, from what the controller runs with and its caches.
fn context(parts: Parts, settings: Settings, caches: Caches) -> Context {
    Context {
        events: events::Events::new(
            parts.client.clone(),
            MANAGER,
            std::env::var("POD_NAME").ok(),
        ),
        client: parts.client,
        settings,
        credentials: parts.credentials,
        presigner: parts.presigner,
        issuers: caches.issuers,
        namespaces: caches.namespaces,
        secrets: caches.secrets,
        metrics: parts.metrics,
        fence: parts.fence,
        memos: memo::Memos::default(),
        tombstones: memo::Tombstones::default(),
    }
}

/// Drops what no reconcile reads before an object enters a cache: with
/// thousands of grants, field-manager bookkeeping, kubectl's copy of the last
/// applied object and other tools' labels would be most of the memory.
/// Annotations of our own (`grants.io/…`) stay.
fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    // The watcher has read it already; the cache's keys would copy it.
    meta.resource_version = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("grants.io/"));
    }
}

/// Only Secrets an UploadGrant controls enter the cache, and of them only
/// what `ManagedSecret` keeps. Anyone who may create Secrets in a namespace
/// can label one as ours: such a Secret costs no memory and steers nothing
/// (not the renewal order, not a decision), and one that loses its
/// controlling grant leaves the cache. Each is counted.
///
/// With `--sharding`, a Secret whose grant is in another replica's shards
/// is left out too, and counted as foreign: the server sent it because it
/// does not filter by shard.
fn admit_secret(
    event: watcher::Event<PartialObjectMeta<Secret>>,
    shard: Option<&Owned>,
    metrics: &Metrics,
) -> Option<watcher::Event<managed::ManagedSecret>> {
    use watcher::Event;
    let ours = |s: &PartialObjectMeta<Secret>| match shard {
        None => true,
        Some(owned) => {
            managed::controlling_grant_uid(&s.metadata).is_none_or(|uid| owned.contains(uid))
        }
    };
    let controlled =
        |s: &PartialObjectMeta<Secret>| ours(s) && managed::controlled_by_grant(&s.metadata);
    let ignored = |s| {
        if ours(&s) {
            metrics.ignored_secret();
        } else {
            metrics.shard_foreign("Secret");
        }
        s
    };
    Some(match event {
        Event::Apply(s) if controlled(&s) => Event::Apply(s.into()),
        Event::Apply(s) => Event::Delete(ignored(s).into()),
        Event::Delete(s) => Event::Delete(s.into()),
        Event::Init => Event::Init,
        Event::InitApply(s) if controlled(&s) => Event::InitApply(s.into()),
        Event::InitApply(s) => {
            ignored(s);
            return None;
        }
        Event::InitDone => Event::InitDone,
    })
}

/// Fills a cache from a watch on its own task, so it fills whatever the
/// controller is doing, and turns every change into requests to look at
/// grants. `watch` gets the cache it fills (a merge of several watches
/// reads it).
fn spawn_cache<K, S, F, I>(
    tasks: &mut JoinSet<()>,
    kind: &'static str,
    watch: impl FnOnce(Cache<K>) -> S,
    triggers: Triggers,
    map: F,
) -> Cache<K>
where
    K: Keyed + Clone + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    F: Fn(&K) -> I + Send + 'static,
    I: IntoIterator<Item = Key>,
{
    let (reader, writer) = cache::cache();
    // Each watch backs off on its own errors (see watch_scoped).
    let events = cache::reflect(writer, watch(reader.clone()));
    tasks.spawn(events.for_each(move |event| {
        match event {
            Ok(
                watcher::Event::Apply(obj)
                | watcher::Event::InitApply(obj)
                | watcher::Event::Delete(obj),
            ) => {
                for grant in map(&obj) {
                    // The receiver lives as long as the controller.
                    let _ = triggers.unbounded_send(grant);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
        futures::future::ready(())
    }));
    reader
}

/// Grants in the cache that match `pred`.
fn grants_where(store: &Cache<CachedGrant>, pred: impl Fn(&CachedGrant) -> bool) -> Vec<Key> {
    store.filter(pred).iter().map(|g| g.key()).collect()
}

/// What the controller runs with, besides its settings.
#[derive(Clone)]
pub struct Parts {
    pub client: Client,
    pub credentials: CredentialSnapshot,
    pub presigner: Arc<Presigner>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// What the client's writes are fenced on; S3 calls that change an
    /// upload check it too.
    pub fence: Fence,
}

/// The caches every reconcile reads, each filled by its own watch.
struct Caches {
    issuers: Cache<ClusterGrantIssuer>,
    namespaces: Cache<PartialObjectMeta<Namespace>>,
    secrets: Cache<managed::ManagedSecret>,
}

impl Caches {
    /// No grant is judged against a half-filled cache: an empty issuer cache
    /// would revoke every Secret.
    async fn synced(&self) {
        // A writer is dropped only when its watch task ends, at shutdown.
        tokio::join!(
            self.issuers.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.secrets.wait_until_ready()
        );
    }
}

/// Runs the controller until `shutdown` resolves. Every task it starts ends
/// with it, so it may run again (with other shards).
pub async fn run(
    parts: Parts,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let client = parts.client.clone();
    // Dropped on return: the cache tasks stop with the controller.
    let mut tasks = JoinSet::new();
    let (secret_selector, relabelled) = tokio::select! {
        chosen = secret_selector(&client, &settings, &mut tasks) => chosen,
        () = shutdown.clone() => return,
    };
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = relabelled => {}
        }
    }
    .boxed()
    .shared();
    let (grant_store, grant_writer) = cache::cache();
    // Grants that leave the cache, also those a relist finds gone: they are
    // never looked at again, so they are revoked from here.
    let (gone, deleted_grants) = mpsc::unbounded::<UploadGrant>();
    let grant_stream = cache::reflect(
        grant_writer,
        grant_events(
            &client,
            &settings,
            &parts.metrics,
            grant_store.clone(),
            gone,
        ),
    );
    let (triggers, requests) = mpsc::unbounded();
    // Policy changes apart: one may revoke, which goes before renewals.
    let (policy_triggers, policy_changes) = mpsc::unbounded();
    let caches = Caches {
        secrets: watch_secrets(
            &mut tasks,
            &client,
            &settings,
            &secret_selector,
            &parts.metrics,
            triggers,
        ),
        issuers: watch_issuers(
            &mut tasks,
            &client,
            &settings,
            &grant_store,
            policy_triggers.clone(),
        ),
        namespaces: watch_namespaces(
            &mut tasks,
            &client,
            &settings,
            &grant_store,
            policy_triggers,
        ),
    };
    tokio::select! {
        _ = caches.synced() => {}
        _ = shutdown.clone() => return,
    }
    // The grant cache is the dispatcher's own: it runs no pass until that
    // cache has listed.
    parts.readiness.set_caches_synced();
    tracing::info!("caches synced");

    // Grants that could not be signed retry as soon as credentials load
    // again, not at the end of their backoff.
    let recovered = parts.credentials.recoveries();
    let metrics = parts.metrics.clone();
    let ctx = Arc::new(context(parts, settings, caches));
    let events = ctx.events.clone();
    // Ends with the run: a revocation retried after this run ended could
    // pass the fence of the next run, whose shards may differ. A deleted
    // grant's Secret goes with it anyway (owner reference).
    let mut revoking = JoinSet::new();
    revoking.spawn(deletions::run(ctx.clone(), deleted_grants));
    at_risk::spawn(&ctx, shutdown.clone());
    dispatch::run(
        ctx,
        grant_store,
        grant_stream,
        requests,
        policy_changes,
        recovered,
        shutdown,
    )
    .await;
    // The grant watch ended with the dispatcher, so no revocation is handed
    // over any more: those under way finish, for a while, before the shards
    // can move (the fence still holds them) or the process exits.
    if tokio::time::timeout(REVOCATION_GRACE, revoking.join_next())
        .await
        .is_err()
    {
        tracing::warn!(
            "revocations of deleted grants still under way at shutdown are left to garbage collection"
        );
    }
    events.flush(EVENT_FLUSH).await;
    metrics.forget_grants();
}

/// How long a shutdown waits for the events its last passes published.
const EVENT_FLUSH: Duration = Duration::from_secs(5);

/// How long a run that stops waits for the revocations under way.
const REVOCATION_GRACE: Duration = Duration::from_secs(5);

/// The grant watch, in the cache's compact form, with each deletion also
/// sent to `gone`.
fn grant_events(
    client: &Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    store: Cache<CachedGrant>,
    gone: mpsc::UnboundedSender<UploadGrant>,
) -> impl Stream<Item = watcher::Result<watcher::Event<CachedGrant>>> + use<> {
    let shard = settings.shard.as_ref().filter(|_| settings.shard_selector);
    let client = sharded_client(client, shard);
    // Said once a run, at the first grant of another shard.
    let said = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = |ns: Option<&str>| {
        let shard = settings.shard.clone();
        let metrics = metrics.clone();
        let said = said.clone();
        watcher(
            api_in(&client, ns),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .try_filter_map(move |event| {
            let event = in_shards(event, shard.as_ref(), &metrics);
            if event.is_none() && !said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(
                    "the apiserver sends grants of other shards: it does not filter by shard (its ShardedListAndWatch gate is off, it is older than 1.36, or --shard-selector=false); this replica drops them itself, counted in upload_grant_shard_foreign_objects_total"
                );
            }
            std::future::ready(Ok(event.and_then(cache_event)))
        })
        .boxed()
    };
    watch_grants(&settings.namespaces, watch, store).inspect_ok(move |event| {
        if let watcher::Event::Delete(cached) = event {
            match cached.grant() {
                // The receiver lives as long as the controller.
                Ok(grant) => drop(gone.unbounded_send(grant)),
                Err(e) => tracing::error!(grant = %cached.name_any(), error = %e, "cannot revoke a deleted grant"),
            }
        }
    })
}

/// The client for the grant watch: with `--sharding`, its lists and watches
/// carry the shard selector, which a server with `ShardedListAndWatch`
/// honours and any other ignores.
fn sharded_client(client: &Client, shard: Option<&Owned>) -> Client {
    match shard.map(Owned::selection) {
        Some(Selection::Ranges(selector)) => {
            crate::kube_client::with_query(client, "shardSelector", &selector)
        }
        _ => client.clone(),
    }
}

/// The event, unless its grant is in another replica's shards (then it is
/// counted: the server does not filter by shard).
fn in_shards(
    event: watcher::Event<UploadGrant>,
    shard: Option<&Owned>,
    metrics: &Metrics,
) -> Option<watcher::Event<UploadGrant>> {
    use watcher::Event;
    let Some(owned) = shard else {
        return Some(event);
    };
    match &event {
        Event::Apply(g) | Event::Delete(g) | Event::InitApply(g)
            if !owned.contains(g.uid().as_deref().unwrap_or_default()) =>
        {
            metrics.shard_foreign("UploadGrant");
            None
        }
        _ => Some(event),
    }
}

/// A grant event with the grant in its cached form. A grant that cannot be
/// projected (it serialized once already, so never in practice) is skipped
/// and said.
fn cache_event(event: watcher::Event<UploadGrant>) -> Option<watcher::Event<CachedGrant>> {
    use watcher::Event;
    let cached = |grant: UploadGrant| {
        let name = grant.name_any();
        CachedGrant::new(grant)
            .inspect_err(|e| tracing::error!(grant = %name, error = %e, "cannot cache grant"))
            .ok()
    };
    Some(match event {
        Event::Apply(g) => Event::Apply(cached(g)?),
        Event::Delete(g) => Event::Delete(cached(g)?),
        Event::InitApply(g) => Event::InitApply(cached(g)?),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}

type Triggers = mpsc::UnboundedSender<Key>;

type WatchStream<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

/// A namespaced Api in `ns`, or across all namespaces.
fn api_in<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One watch across all namespaces when `namespaces` is empty, else one per
/// namespace, merged (`scoped::merge`) into one stream for the cache `store`:
/// the operator then needs no cluster-wide read of grants or Secrets.
fn watch_scoped<K>(
    namespaces: &[String],
    watch: impl Fn(Option<&str>) -> WatchStream<K>,
    store: Cache<K>,
    scope_of: fn(&Key) -> &str,
) -> WatchStream<K>
where
    K: Keyed + Clone + Send + Sync + 'static,
{
    match namespaces {
        [] => watch(None),
        [one] => watch(Some(one)),
        many => {
            let scopes = many
                .iter()
                .map(|ns| (ns.clone(), watch(Some(ns))))
                .collect();
            scoped::merge(scopes, store, scope_of).boxed()
        }
    }
}

/// Grants, always through `scoped::merge`, also for one watch across all
/// namespaces: a relist after a watch gap then reports the grants deleted
/// meanwhile as deletions, where a cache alone would drop them silently.
fn watch_grants(
    namespaces: &[String],
    watch: impl Fn(Option<&str>) -> WatchStream<CachedGrant>,
    store: Cache<CachedGrant>,
) -> WatchStream<CachedGrant> {
    if namespaces.is_empty() {
        // One scope holding every grant.
        let all: fn(&Key) -> &str = |_| "";
        return scoped::merge(vec![(String::new(), watch(None))], store, all).boxed();
    }
    let scopes = namespaces
        .iter()
        .map(|ns| (ns.clone(), watch(Some(ns))))
        .collect();
    scoped::merge(scopes, store, Key::namespace).boxed()
}

/// The label selector of a run's Secret watch, and what ends the run so
/// that the next one selects by label (`relabel`); it never resolves when
/// this one does already.
async fn secret_selector(
    client: &Client,
    settings: &Settings,
    tasks: &mut JoinSet<()>,
) -> (String, futures::future::BoxFuture<'static, ()>) {
    let never = || futures::future::pending().boxed();
    let Some((owned, selector)) = settings
        .shard
        .as_ref()
        .and_then(|owned| Some((owned, build::shard_selector(owned)?)))
    else {
        return (build::managed_selector(), never());
    };
    match relabel::any_mine(client, &settings.namespaces, owned).await {
        Ok(false) => return (selector, never()),
        Ok(true) => tracing::info!(
            "some of this replica's Secrets lack their shard label: watching every managed Secret until they are labelled"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list unlabelled Secrets: watching every managed Secret")
        }
    }
    let (done, labelled) = futures::channel::oneshot::channel();
    tasks.spawn(relabel::run(
        client.clone(),
        settings.namespaces.clone(),
        owned.clone(),
        done,
    ));
    // A labeller that stops without saying so ends the run too: the next
    // one looks again.
    (build::managed_selector(), labelled.map(drop).boxed())
}

/// Secrets this operator manages, metadata only (PartialObjectMeta), so
/// Secret data never enters the cache; a change wakes the owning grant.
/// `selector` picks them: all, or with `--sharding` those of the run's
/// shards.
fn watch_secrets(
    tasks: &mut JoinSet<()>,
    client: &Client,
    settings: &Settings,
    selector: &str,
    metrics: &Arc<Metrics>,
    triggers: Triggers,
) -> Cache<managed::ManagedSecret> {
    let config = watcher::Config::default().labels(selector);
    spawn_cache(
        tasks,
        "Secret",
        |store| {
            watch_scoped(
                &settings.namespaces,
                |ns| {
                    let metrics = metrics.clone();
                    let shard = settings.shard.clone();
                    watcher(api_in(client, ns), config.clone())
                        .default_backoff()
                        .try_filter_map(move |e| {
                            std::future::ready(Ok(admit_secret(e, shard.as_ref(), &metrics)))
                        })
                        .boxed()
                },
                store,
                Key::namespace,
            )
        },
        triggers,
        |secret: &managed::ManagedSecret| {
            let namespace = secret.key().namespace().to_owned();
            secret.owner_name().map(|name| Key::new(&namespace, name))
        },
    )
}

/// A changed issuer re-evaluates every grant that uses it, and gets its own
/// status.
fn watch_issuers(
    tasks: &mut JoinSet<()>,
    client: &Client,
    settings: &Settings,
    grants: &Cache<CachedGrant>,
    triggers: Triggers,
) -> Cache<ClusterGrantIssuer> {
    let default_issuer = settings.default_issuer.clone();
    let grants = grants.clone();
    let (issuer_changes, changed_issuers) = mpsc::unbounded::<ClusterGrantIssuer>();
    // One replica writes issuer status; the channel closes with the cache
    // task below, and this task with it.
    if settings.cluster_wide {
        tasks.spawn(issuer_status::run(client.clone(), changed_issuers));
    }
    spawn_cache(
        tasks,
        "ClusterGrantIssuer",
        |_| {
            watcher(Api::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .modify(slim)
        },
        triggers,
        move |issuer: &ClusterGrantIssuer| {
            let _ = issuer_changes.unbounded_send(issuer.clone());
            let name = issuer.name_any();
            grants_where(&grants, |g| {
                g.issuer_ref().as_deref().or(default_issuer.as_deref()) == Some(name.as_str())
            })
        },
    )
}

/// Namespace labels decide which allow rules apply.
fn watch_namespaces(
    tasks: &mut JoinSet<()>,
    client: &Client,
    settings: &Settings,
    grants: &Cache<CachedGrant>,
    triggers: Triggers,
) -> Cache<PartialObjectMeta<Namespace>> {
    let grants = grants.clone();
    spawn_cache(
        tasks,
        "Namespace",
        |store| {
            // Cluster-scoped: one watch per namespace, by name.
            watch_scoped(
                &settings.namespaces,
                |ns| {
                    let config = match ns {
                        Some(ns) => {
                            watcher::Config::default().fields(&format!("metadata.name={ns}"))
                        }
                        None => watcher::Config::default(),
                    };
                    watcher(
                        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                        config,
                    )
                    .default_backoff()
                    .modify(slim)
                    .boxed()
                },
                store,
                Key::name,
            )
        },
        triggers,
        move |ns: &PartialObjectMeta<Namespace>| {
            let name = ns.name_any();
            grants_where(&grants, |g| g.key().namespace() == name)
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A Secret labelled as ours enters the cache only if a grant controls
    /// it; one that stops being controlled is taken out.
    #[test]
    fn only_grant_controlled_secrets_enter_the_cache() {
        use watcher::Event;
        let secret = |owned: bool| {
            let mut meta = crate::fixtures::secret_meta("grant-uid");
            if !owned {
                meta["metadata"]["ownerReferences"] = serde_json::json!([]);
            }
            serde_json::from_value::<PartialObjectMeta<Secret>>(meta).expect("fixture")
        };
        let metrics = Metrics::default();
        let kind = |e: Option<Event<managed::ManagedSecret>>| match e {
            Some(Event::Apply(_)) => "apply",
            Some(Event::InitApply(_)) => "init-apply",
            Some(Event::Delete(_)) => "delete",
            Some(_) => "other",
            None => "dropped",
        };
        let cases = [
            (Event::Apply(secret(true)), "apply", 0),
            (Event::InitApply(secret(true)), "init-apply", 0),
            (Event::Apply(secret(false)), "delete", 1),
            (Event::InitApply(secret(false)), "dropped", 2),
            (Event::Delete(secret(false)), "delete", 2),
        ];
        for (event, expected, ignored) in cases {
            assert_eq!(kind(admit_secret(event, None, &metrics)), expected);
            assert_eq!(metrics.ignored_secrets(), ignored);
        }
    }

    /// The shard of `uid` alone, of 64.
    fn only_shard_of(uid: &str) -> Owned {
        let shards = crate::shard::Shards::new(64).expect("valid");
        Owned {
            shards,
            owned: [shards.of(uid)].into(),
        }
    }

    /// With sharding, a grant or Secret of another replica's shard is
    /// dropped and counted as foreign; its own pass as without sharding.
    #[test]
    fn objects_of_other_shards_are_dropped_and_counted() {
        use watcher::Event;
        let grant =
            |uid: &str| crate::fixtures::grant_with(serde_json::json!({"metadata": {"uid": uid}}));
        let mine = only_shard_of("uid-mine");
        let other = (0..)
            .map(|i| format!("uid-{i}"))
            .find(|uid| !mine.contains(uid))
            .expect("some uid is in another of 64 shards");
        let metrics = Metrics::default();
        for (uid, kept) in [("uid-mine", true), (other.as_str(), false)] {
            for event in [
                Event::Apply(grant(uid)),
                Event::InitApply(grant(uid)),
                Event::Delete(grant(uid)),
            ] {
                assert_eq!(
                    in_shards(event, Some(&mine), &metrics).is_some(),
                    kept,
                    "{uid}"
                );
            }
            assert!(in_shards(Event::Apply(grant(uid)), None, &metrics).is_some());
            let secret: PartialObjectMeta<Secret> =
                serde_json::from_value(crate::fixtures::secret_meta(uid)).expect("fixture");
            let admitted = admit_secret(Event::InitApply(secret), Some(&mine), &metrics);
            assert_eq!(admitted.is_some(), kept, "{uid}");
        }
        assert_eq!(metrics.shard_foreign_count("UploadGrant"), 3);
        assert_eq!(metrics.shard_foreign_count("Secret"), 1);
        assert_eq!(metrics.ignored_secrets(), 0, "foreign is not ignored");
    }

    /// The deletions the grant stream reports after `events`, for a watch
    /// of all namespaces, as they reach the cache.
    fn deletions_after(events: Vec<watcher::Event<UploadGrant>>) -> Vec<String> {
        use futures::FutureExt;
        let (tx, rx) = mpsc::unbounded();
        let rx = Mutex::new(Some(rx));
        let (store, writer) = cache::cache();
        let mut stream = cache::reflect(
            writer,
            watch_grants(
                &[],
                |_| rx.lock().expect("lock").take().expect("one watch").boxed(),
                store,
            ),
        );
        for e in events.into_iter().filter_map(cache_event) {
            assert!(tx.unbounded_send(Ok(e)).is_ok());
        }
        let mut deleted = Vec::new();
        while let Some(Some(event)) = stream.next().now_or_never() {
            if let Ok(watcher::Event::Delete(g)) = event {
                deleted.push(g.name_any());
            }
        }
        deleted
    }

    #[test]
    fn a_relist_reports_grants_deleted_during_a_watch_gap() {
        use watcher::Event::*;
        let grant = |ns: &str, name: &str| {
            crate::fixtures::grant_with(serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")}}))
        };
        let listed = vec![
            Init,
            InitApply(grant("a", "kept")),
            InitApply(grant("b", "gone")),
            InitDone,
        ];
        assert!(deletions_after(listed.clone()).is_empty());
        let mut relisted = listed;
        relisted.extend([Init, InitApply(grant("a", "kept")), InitDone]);
        assert_eq!(deletions_after(relisted), ["gone"]);
        // A deletion the watch sees is passed on as it is.
        let watched = vec![
            Init,
            InitApply(grant("a", "kept")),
            InitDone,
            Delete(grant("a", "kept")),
        ];
        assert_eq!(deletions_after(watched), ["kept"]);
    }
}
