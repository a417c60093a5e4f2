//! Leader election with a Lease: with several replicas, only the leader runs
//! the controller and writes; the others wait as warm standbys.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a leader's lock lasts without renewal; a standby takes over
    /// at most this long after the leader dies.
    pub duration: u64,
}

/// This process leads until the returned signal fires or it releases.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

/// Waits until this process holds the lease, or returns None when `shutdown`
/// comes first.
pub async fn acquire(
    client: Client,
    settings: &LeaseSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<Leadership>, LeaseManagerError> {
    // Renew a third of the way before expiry, as client-go does.
    let grace = (settings.duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration)
        .with_grace(grace)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "waiting for leadership");
    let leading = tokio::select! {
        leading = state.wait_for(|leading| *leading) => leading.is_ok(),
        _ = shutdown => false,
    };
    if !leading {
        // Shut down first, or the lease task ended: stop it, report its error.
        drop(state);
        return match task.await {
            Ok(Err(e)) => Err(e),
            _ => Ok(None),
        };
    }
    tracing::info!(identity = %settings.identity, "became the leader");
    Ok(Some(Leadership { state, task }))
}

impl Leadership {
    /// Resolves when the lease is lost (or its task ends).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|leading| !*leading).await;
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(self) {
        let still_leading = *self.state.borrow();
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) if still_leading => tracing::info!("released the lease"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease"),
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
}
