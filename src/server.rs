//! The HTTP endpoints for the platform: /metrics, /healthz and /readyz.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::signing::CredentialSnapshot;

/// What /readyz reports on. A standby (not the leader) is ready when its
/// credentials work: it must not block a rollout while it waits.
#[derive(Default)]
pub struct Readiness {
    caches_synced: AtomicBool,
    standby: AtomicBool,
}

impl Readiness {
    pub fn set_caches_synced(&self) {
        self.caches_synced.store(true, Ordering::Relaxed);
    }

    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    credentials: CredentialSnapshot,
    readiness: Arc<Readiness>,
}

pub fn router(
    metrics: Arc<Metrics>,
    credentials: CredentialSnapshot,
    readiness: Arc<Readiness>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics,
            credentials,
            readiness,
        })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.render(&state.credentials);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let synced = state.readiness.caches_synced.load(Ordering::Relaxed)
        || state.readiness.standby.load(Ordering::Relaxed);
    match (synced, state.credentials.loaded()) {
        (true, true) => (StatusCode::OK, "ok"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "caches not synced"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "credentials not loaded"),
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
