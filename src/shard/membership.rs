//! A replica's part in the split: it keeps its replica Lease current,
//! claims the shards [`super::plan`] gives it, renews them, and hands over
//! or releases the rest. What it may serve goes out on a watch channel; the
//! shards the controller runs with come back on another, so a shard is
//! released only once nothing writes for it here.
//!
//! Every Lease it reads also feeds the [`Fence`], so the controller's writes
//! stop the moment a shard's Lease is no longer shown held.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{PostParams, PropagationPolicy};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::Shards;
use super::leases::{self, Holding, SET_LABEL, View};
use crate::fence::Fence;

/// Who this replica is among the others, and how long its Leases last.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Starts every Lease name of the set (`--lease-name`).
    pub prefix: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub shards: Shards,
}

/// The channels between this loop and the replica's controller.
pub struct Channels {
    /// Shards the controller should run with.
    pub serve: watch::Sender<BTreeSet<u32>>,
    /// Shards the controller runs with now.
    pub running: watch::Receiver<BTreeSet<u32>>,
}

/// A replica Lease unrenewed this long is deleted by whoever sees it: a pod
/// that died leaves one behind.
const FORGOTTEN: Duration = Duration::from_secs(3600);

/// How soon a step is retried after a write failed.
const RETRY: Duration = Duration::from_secs(1);

/// Shard Lease renewals in flight at once.
const RENEWALS_AT_ONCE: usize = 16;

/// The least time between two rounds that Lease events (mostly other
/// replicas' renewals, a dozen a second with 64 shards) bring about. A
/// released shard is taken this much later at most.
const ROUND_GAP: Duration = Duration::from_millis(200);

/// Takes part until `leave` resolves, then releases every shard it holds
/// and deletes its replica Lease, so others take over at once. The
/// controller must have stopped before `leave` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    fence: Fence,
    mut channels: Channels,
    leave: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let config = watcher::Config::default().labels(&format!("{SET_LABEL}={}", settings.prefix));
    let mut events = std::pin::pin!(watcher(api.clone(), config).default_backoff());
    // The leader-election Lease of the same name, which carries no label.
    let leader = watcher::Config::default().fields(&format!("metadata.name={}", settings.prefix));
    let mut leader = std::pin::pin!(watcher(api.clone(), leader).default_backoff());
    let mut member = Member {
        api,
        settings,
        fence,
        leases: BTreeMap::new(),
        listing: None,
        leader: None,
        leader_seen_held: false,
    };
    let mut leave = std::pin::pin!(leave);
    let mut wake = tokio::time::Instant::now();
    // No round before both watches have listed: a first round that had
    // not seen a held leader Lease could take shards beside its holder.
    let (mut synced, mut leader_synced) = (false, false);
    let mut last_round = tokio::time::Instant::now();
    loop {
        let mut lease_event = false;
        tokio::select! {
            biased;
            () = &mut leave => break,
            event = events.next() => match event {
                Some(event) => {
                    synced |= member.see(event);
                    lease_event = true;
                }
                None => break,
            },
            event = leader.next() => match event {
                Some(event) => leader_synced |= member.see_leader(event),
                None => break,
            },
            changed = channels.running.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = tokio::time::Instant::now();
        if synced && leader_synced && lease_event && now < last_round + ROUND_GAP {
            // Every replica's renewals arrive here: a round at most every
            // ROUND_GAP for them.
            wake = wake.min(last_round + ROUND_GAP);
        } else if synced && leader_synced {
            last_round = now;
            let running = channels.running.borrow().clone();
            let (serve, next) = member.step(&running).await;
            channels
                .serve
                .send_if_modified(|s| std::mem::replace(s, serve) != *s);
            wake = tokio::time::Instant::now() + next;
        } else {
            // Not listed yet: no round, and no spin on a past wake.
            wake = tokio::time::Instant::now() + RETRY;
        }
    }
    let duration = member.settings.duration;
    if tokio::time::timeout(duration, member.leave())
        .await
        .is_err()
    {
        tracing::warn!("could not release every shard in time; the rest run out on their own");
    }
}

/// Waits until no shard Lease of the set `prefix` is held: a replica that
/// leads alone (`--leader-elect`) must not write beside sharded replicas of
/// a rolling update between the modes. Called after the leader Lease is
/// taken (sharded replicas watch it and give everything up when they see
/// it held), so neither side can miss the other. Returns early if `stop`
/// does.
pub async fn wait_unsharded(
    client: Client,
    namespace: &str,
    prefix: &str,
    stop: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let lp = kube::api::ListParams::default().labels(&format!("{SET_LABEL}={prefix}"));
    let mut stop = std::pin::pin!(stop);
    loop {
        let now = SystemTime::now();
        let shard = format!("{prefix}-shard-");
        match api.list(&lp).await {
            Ok(list) => {
                let held = list
                    .items
                    .iter()
                    .filter(|l| l.name_any().starts_with(&shard))
                    .any(|l| leases::holder(l, now).is_some());
                if !held {
                    return;
                }
                tracing::info!("sharded replicas still hold shards; waiting for them to give up");
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the shard leases; trying again"),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The loop's state: the set's Leases as last seen or written.
struct Member {
    api: Api<Lease>,
    settings: Settings,
    fence: Fence,
    leases: BTreeMap<String, Lease>,
    /// A relist in progress.
    listing: Option<BTreeMap<String, Lease>>,
    /// The leader-election Lease of the same name, as last seen.
    leader: Option<Lease>,
    /// Whether the last round saw it held (said once, not every round).
    leader_seen_held: bool,
}

impl Member {
    /// Applies one watch event; true when it ends a listing.
    fn see(&mut self, event: watcher::Result<watcher::Event<Lease>>) -> bool {
        use watcher::Event;
        match event {
            Ok(Event::Init) => self.listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(lease)) => {
                self.fence.observe(&lease);
                if let Some(listing) = self.listing.as_mut() {
                    listing.insert(lease.name_any(), lease);
                }
            }
            Ok(Event::InitDone) => {
                self.leases = self.listing.take().unwrap_or_default();
                return true;
            }
            Ok(Event::Apply(lease)) => self.remember(lease),
            Ok(Event::Delete(lease)) => {
                self.fence.observe_deleted(&lease.name_any());
                self.leases.remove(&lease.name_any());
            }
            Err(e) => {
                self.fence.observe_nothing();
                tracing::warn!(error = %e, "shard lease watch failed; writes fenced until it recovers");
            }
        }
        false
    }

    /// Applies one event of the leader Lease's watch; true when it ends a
    /// listing.
    fn see_leader(&mut self, event: watcher::Result<watcher::Event<Lease>>) -> bool {
        use watcher::Event;
        match event {
            // A relist keeps the last one seen until it lists another: a
            // round meanwhile must not take a leader's Lease for free.
            Ok(Event::Init) => {}
            Ok(Event::InitApply(lease) | Event::Apply(lease)) => self.leader = Some(lease),
            Ok(Event::Delete(_)) => self.leader = None,
            Ok(Event::InitDone) => return true,
            // The last one seen stands until it runs out.
            Err(e) => tracing::warn!(error = %e, "leader lease watch failed; retrying"),
        }
        false
    }

    fn remember(&mut self, lease: Lease) {
        self.fence.observe(&lease);
        self.leases.insert(lease.name_any(), lease);
    }

    fn holding(&self) -> Holding<'_> {
        Holding {
            identity: &self.settings.identity,
            prefix: &self.settings.prefix,
            duration: self.settings.duration,
        }
    }

    /// One round: renew what is due, claim and release what the plan says.
    /// Returns what the controller may serve and how long until the next
    /// round is needed.
    async fn step(&mut self, running: &BTreeSet<u32>) -> (BTreeSet<u32>, Duration) {
        let s = &self.settings;
        let (prefix, count, me) = (s.prefix.clone(), s.shards.count(), s.identity.clone());
        let mut failed = !self.keep(&leases::replica_lease(&prefix, count, &me)).await;
        let now = SystemTime::now();
        let mut view = View::of(self.leases.values(), &prefix, count, now);
        view.leader_held = self
            .leader
            .as_ref()
            .is_some_and(|l| leases::holder(l, now).is_some());
        let seen_before = std::mem::replace(&mut self.leader_seen_held, view.leader_held);
        if view.leader_held && !seen_before {
            tracing::warn!(lease = %prefix, "a leader-elected replica holds the leader lease; serving no shard until it is released");
        }
        let plan = super::plan(count, &me, &view.replicas, &view.holders);
        let steps = leases::steps(&view, &me, &plan, running);
        let releasing = steps
            .release
            .iter()
            .map(|shard| leases::shard_lease(&prefix, count, *shard))
            .collect();
        failed |= !self.renew_due(&releasing).await;
        for shard in &steps.acquire {
            failed |= !self
                .claim(&leases::shard_lease(&prefix, count, *shard))
                .await;
        }
        for shard in &steps.release {
            failed |= !self
                .release(&leases::shard_lease(&prefix, count, *shard))
                .await;
        }
        self.forget_departed().await;
        let next = if failed { RETRY } else { self.next_round() };
        (steps.serve, next)
    }

    /// Renews every shard Lease this replica holds that is due, but those
    /// it is `releasing`, all at once: one after another, on an apiserver a
    /// renewal storm keeps busy, the last of 64 could land after its fence
    /// margin. False if one failed.
    async fn renew_due(&mut self, releasing: &BTreeSet<String>) -> bool {
        let now = SystemTime::now();
        let holding = self.holding();
        let (prefix, count) = (&self.settings.prefix, self.settings.shards.count());
        let (shard, of) = (format!("{prefix}-shard-"), format!("-of-{count}"));
        let due: Vec<(String, Lease)> = self
            .leases
            .iter()
            .filter(|(name, l)| {
                name.starts_with(&shard)
                    && name.ends_with(&of)
                    && !releasing.contains(*name)
                    && leases::holder(l, now) == Some(holding.identity)
                    && holding.due(l, now)
            })
            .map(|(name, l)| (name.clone(), holding.claim(name, Some(l), now)))
            .collect();
        let api = &self.api;
        let written: Vec<Option<Lease>> = futures::stream::iter(due)
            .map(|(name, lease)| async move { write(api, &name, lease).await })
            .buffer_unordered(RENEWALS_AT_ONCE)
            .collect()
            .await;
        let mut all = true;
        for lease in written {
            match lease {
                Some(lease) => self.remember(lease),
                None => all = false,
            }
        }
        all
    }

    /// Renews `name` if due, or claims it if it is not there yet.
    async fn keep(&mut self, name: &str) -> bool {
        let now = SystemTime::now();
        match self.leases.get(name) {
            Some(lease) if !self.holding().due(lease, now) => true,
            _ => self.claim(name).await,
        }
    }

    async fn claim(&mut self, name: &str) -> bool {
        let lease = self
            .holding()
            .claim(name, self.leases.get(name), SystemTime::now());
        self.write(name, lease).await
    }

    async fn release(&mut self, name: &str) -> bool {
        let Some(lease) = self.leases.get(name) else {
            return true;
        };
        let released = self.holding().release(lease, SystemTime::now());
        tracing::info!(lease = name, "releasing shard");
        self.write(name, released).await
    }

    async fn write(&mut self, name: &str, lease: Lease) -> bool {
        match write(&self.api, name, lease).await {
            Some(lease) => {
                self.remember(lease);
                true
            }
            None => false,
        }
    }

    /// Deletes replica Leases nobody renewed for [`FORGOTTEN`].
    async fn forget_departed(&mut self) {
        let now = SystemTime::now();
        let replicas = format!("{}-replica-", self.settings.prefix);
        let departed: Vec<(String, Option<String>)> = self
            .leases
            .iter()
            .filter(|(name, _)| name.starts_with(&replicas))
            .filter(|(_, l)| leases::expiry(l).is_some_and(|end| end + FORGOTTEN < now))
            .map(|(name, l)| (name.clone(), l.resource_version()))
            .collect();
        for (name, version) in departed {
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: version,
                    uid: None,
                }),
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            if self.api.delete(&name, &dp).await.is_ok() {
                self.leases.remove(&name);
            }
        }
    }

    /// Until the next Lease this replica holds is due, or the next one of
    /// the set runs out (its shard may then be taken): at most a third of
    /// the lease duration.
    fn next_round(&self) -> Duration {
        let now = SystemTime::now();
        let third = self.settings.duration / 3;
        let me = self.settings.identity.as_str();
        self.leases
            .values()
            .filter_map(|l| {
                let end = leases::expiry(l)?;
                let mine = leases::holder(l, now) == Some(me);
                Some(if mine { end - third } else { end })
            })
            .filter_map(|at| at.duration_since(now).ok())
            // A little past the moment, so the Lease has run out by then.
            .map(|d| d + Duration::from_millis(50))
            .fold(third, Duration::min)
    }

    /// Deletes the replica Lease, so the others stop counting this replica
    /// in the split, then gives up every shard held.
    async fn leave(mut self) {
        let me = self.settings.identity.clone();
        let count = self.settings.shards.count();
        let replica = leases::replica_lease(&self.settings.prefix, count, &me);
        if let Err(e) = self.api.delete(&replica, &Default::default()).await {
            tracing::warn!(lease = replica, error = %e, "cannot delete the replica lease");
        }
        let now = SystemTime::now();
        let held: Vec<String> = self
            .leases
            .iter()
            .filter(|(name, l)| {
                leases::holder(l, now) == Some(me.as_str())
                    && !name.starts_with(&format!("{}-replica-", self.settings.prefix))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in held {
            // A renewal the watch has not shown yet makes the first try a
            // conflict: once more, on the Lease as it is now.
            if !self.release(&name).await
                && let Ok(lease) = self.api.get(&name).await
            {
                self.remember(lease);
                self.release(&name).await;
            }
        }
        tracing::info!("left the shard split");
    }
}

/// Creates `lease`, or replaces it at the version last seen: a Lease
/// someone else changed meanwhile is not overwritten (409), and the watch
/// brings its new state. The Lease as written, None if it was not.
async fn write(api: &Api<Lease>, name: &str, mut lease: Lease) -> Option<Lease> {
    lease.metadata.managed_fields = None;
    let pp = PostParams::default();
    let written = if lease.metadata.resource_version.is_some() {
        api.replace(name, &pp, &lease).await
    } else {
        api.create(&pp, &lease).await
    };
    match written {
        Ok(lease) => Some(lease),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(lease = name, "lease changed meanwhile; reading it again");
            None
        }
        Err(e) => {
            tracing::warn!(lease = name, error = %e, "cannot write lease");
            None
        }
    }
}
