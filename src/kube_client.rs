//! The operator's Kubernetes client, with its request rate bounded so a
//! renewal storm or a mass apply cannot flood the apiserver.

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::limit::RateLimitLayer;

/// A client for the controller: at most `qps` requests start in any one
/// second (0 lifts the bound). Requests over the bound wait in order.
///
/// Leader election must use its own unbounded client: a lease renewal stuck
/// behind a queue of Secret writes would cost the lease.
pub fn bounded(config: Config, qps: u32) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(match qps {
        0 => builder.build(),
        qps => builder
            .with_layer(&RateLimitLayer::new(u64::from(qps), Duration::from_secs(1)))
            .build(),
    })
}
