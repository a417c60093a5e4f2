//! The operator's Kubernetes client, with its request rate bounded so a
//! renewal storm or a mass apply cannot flood the apiserver.

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use tower::limit::RateLimitLayer;
use tower::util::MapRequestLayer;

use crate::fence::{Fence, FenceLayer};

/// A client for the controller that starts at most `qps` requests a second
/// (0 lifts the bound). Requests over the bound wait in order, and a write
/// is sent only if `fence` allows it when its turn comes. `sent` counts the
/// requests that go out (`Metrics::kube_api_requests`).
///
/// Leader election must use its own unbounded client: a lease renewal stuck
/// behind a queue of Secret writes would cost the lease.
pub fn bounded(
    config: Config,
    qps: u32,
    fence: Fence,
    sent: Counter,
) -> Result<Client, kube::Error> {
    // The layer added last sees a request first: the fence sits below the
    // limiter, so a write that waited for its turn is checked when it goes,
    // and only what passes both is counted.
    let count = MapRequestLayer::new(move |request| {
        sent.inc();
        request
    });
    let builder = ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&FenceLayer(fence));
    Ok(match qps {
        0 => builder.build(),
        qps => {
            let (n, per) = window(qps);
            builder.with_layer(&RateLimitLayer::new(n, per)).build()
        }
    })
}

/// tower's limiter counts in fixed windows, so a full window's worth can
/// start at the end of one and again at the start of the next. Windows of a
/// tenth of the rate keep any one second within 10% of it.
fn window(qps: u32) -> (u64, Duration) {
    let n = u64::from((qps / 10).max(1));
    (n, Duration::from_secs_f64(n as f64 / f64::from(qps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_keep_the_rate_and_stay_short() {
        for qps in [1, 5, 10, 25, 100, 333, 5000] {
            let (n, per) = window(qps);
            let rate = n as f64 / per.as_secs_f64();
            assert!(
                (rate - f64::from(qps)).abs() < 1e-6 * f64::from(qps),
                "{qps}: {rate}"
            );
            assert!(per <= Duration::from_secs(1), "{qps}: {per:?}");
            if qps >= 10 {
                assert!(n as f64 <= f64::from(qps) / 10.0, "{qps}: {n}");
            }
        }
    }
}
