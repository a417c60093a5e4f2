//! Active-active replicas (`--sharding`): each runs the controller for the
//! shards it holds, and runs it again whenever they change. A controller
//! run is bound to one set of shards: its watches select them, its writes
//! are fenced on their Leases, and it stops before any of them is handed
//! over, so no grant is ever written by two replicas.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

use crate::controller::{self, Parts, Settings};
use crate::metrics::Metrics;
use crate::server::Readiness;
use crate::shard::membership::{self, Channels};
use crate::shard::{Owned, leases};

/// How long the shards must rest before the controller runs with them: a
/// rebalance may move several in a row, and each run relists.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true; then stops the controller, gives up every
/// shard and leaves the split.
pub async fn run(
    lease_client: Client,
    parts: Parts,
    settings: Settings,
    sharding: membership::Settings,
    stop: watch::Receiver<bool>,
) {
    let (serve_tx, serve) = watch::channel(BTreeSet::new());
    let (running, running_rx) = watch::channel(BTreeSet::new());
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let channels = Channels {
        serve: serve_tx,
        running: running_rx,
    };
    let member = tokio::spawn(membership::run(
        lease_client,
        sharding.clone(),
        parts.fence.clone(),
        channels,
        async move {
            let _ = left.await;
        },
    ));
    let serving = Serving {
        parts,
        settings,
        sharding,
        serve,
        running,
        stop,
    };
    serving.run().await;
    let _ = leave.send(());
    if let Err(e) = member.await {
        tracing::warn!(error = %e, "the shard lease task failed");
    }
}

struct Serving {
    parts: Parts,
    settings: Settings,
    sharding: membership::Settings,
    serve: watch::Receiver<BTreeSet<u32>>,
    running: watch::Sender<BTreeSet<u32>>,
    stop: watch::Receiver<bool>,
}

impl Serving {
    async fn run(mut self) {
        while let Some(owned) = self.settled().await {
            self.report(&owned);
            if owned.is_empty() {
                // A replica without shards waits, ready, like a standby.
                if !self.changed_or_stopped().await {
                    break;
                }
                continue;
            }
            self.serve_with(owned).await;
            if *self.stop.borrow() {
                break;
            }
        }
        self.parts.fence.require([]);
        self.running.send_replace(BTreeSet::new());
    }

    /// The shards to serve once they have not changed for [`SETTLE`]; None
    /// once stopped.
    async fn settled(&mut self) -> Option<BTreeSet<u32>> {
        loop {
            let owned = self.serve.borrow_and_update().clone();
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                changed = self.serve.changed() => if changed.is_err() { return None },
                () = tokio::time::sleep(SETTLE) => return Some(owned),
            }
        }
    }

    /// False once stopped (or the lease task ended).
    async fn changed_or_stopped(&mut self) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => false,
            changed = self.serve.changed() => changed.is_ok(),
        }
    }

    fn report(&self, owned: &BTreeSet<u32>) {
        let metrics: &Arc<Metrics> = &self.parts.metrics;
        metrics.set_shards_held(owned.len());
        metrics.set_leader(owned.contains(&0));
        let readiness: &Arc<Readiness> = &self.parts.readiness;
        readiness.set_standby(owned.is_empty());
    }

    /// One controller run with `owned`, until they change or the replica
    /// stops. Writes wait for the fence to show every shard's Lease held.
    async fn serve_with(&mut self, owned: BTreeSet<u32>) {
        let s = &self.sharding;
        let fence = &self.parts.fence;
        fence.require(
            owned
                .iter()
                .map(|shard| leases::shard_lease(&s.prefix, s.shards.count(), *shard)),
        );
        // From here on none of them is handed over until this run ends.
        self.running.send_replace(owned.clone());
        let mut stop = self.stop.clone();
        tokio::select! {
            opened = fence.opened(s.duration) => if !opened {
                tracing::warn!("the lease watch does not show the shards held yet; writes stay fenced until it does");
            },
            _ = stop.wait_for(|s| *s) => {
                fence.require([]);
                self.running.send_replace(BTreeSet::new());
                return;
            }
        }
        tracing::info!(shards = ?owned, count = s.shards.count(), "serving shards");
        let settings = Settings {
            // Shard 0's holder writes what belongs to no grant.
            cluster_wide: owned.contains(&0),
            shard: Some(Owned {
                shards: s.shards,
                owned,
            }),
            ..self.settings.clone()
        };
        let mut changes = self.serve.clone();
        let mut stop = self.stop.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {},
                _ = changes.changed() => {},
            }
        };
        controller::run(self.parts.clone(), settings, shutdown).await;
        // Nothing writes for these shards any more: they may be handed over.
        fence.require([]);
        self.running.send_replace(BTreeSet::new());
    }
}
