//! Write fencing: with leader election, a replica writes to the apiserver
//! only while it can show that it still holds the lease.
//!
//! Losing the lease is noticed late by a replica that was frozen (SIGSTOP, a
//! paused VM, a long GC pause): until its lease task runs again it still
//! believes it leads, and a reconcile that was in flight would write. So
//! every write goes through [`FenceLayer`], which refuses it unless the
//! Lease, as last seen on a watch, names this replica and was renewed
//! recently enough by the wall clock — the same clock and rule a standby
//! uses to take the lease over, less a margin for skew and requests in
//! flight. Reads are never fenced: a standby's caches stay warm.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use http::{Method, Request};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tower::{BoxError, Layer, Service};

/// Who may write: everyone (no leader election), or the lease holder.
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Option<Arc<Held>>,
}

#[derive(Debug)]
struct Held {
    identity: String,
    /// Writes are allowed until this many milliseconds after the Unix
    /// epoch; 0 while the lease names somebody else.
    until_ms: AtomicU64,
    changed: tokio::sync::Notify,
}

/// The error a fenced write fails with.
#[derive(Debug, thiserror::Error)]
#[error("write refused: this replica cannot show that it still holds the leader lease")]
pub struct Fenced;

impl Fence {
    /// No leader election: every write goes through.
    pub fn open() -> Self {
        Fence { inner: None }
    }

    /// Closed until [`Fence::follow`] sees `identity` hold the lease.
    pub fn for_identity(identity: impl Into<String>) -> Self {
        Fence {
            inner: Some(Arc::new(Held {
                identity: identity.into(),
                until_ms: AtomicU64::new(0),
                changed: tokio::sync::Notify::new(),
            })),
        }
    }

    /// Whether a write may be sent now.
    pub fn allows_writes(&self) -> bool {
        self.allows_writes_at(SystemTime::now())
    }

    fn allows_writes_at(&self, now: SystemTime) -> bool {
        match &self.inner {
            None => true,
            Some(held) => millis(now) < held.until_ms.load(Ordering::Acquire),
        }
    }

    /// Waits (at most `timeout`) until writes are allowed: the lease task may
    /// report leadership a moment before the watch shows the Lease.
    pub async fn opened(&self, timeout: Duration) -> bool {
        let Some(held) = &self.inner else {
            return true;
        };
        let wait = async {
            loop {
                let changed = held.changed.notified();
                if self.allows_writes() {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Applies one observation of the Lease (None: it is gone).
    fn observe(&self, lease: Option<&Lease>) {
        let Some(held) = &self.inner else { return };
        let until = lease
            .and_then(|l| held_until(l, &held.identity))
            .map_or(0, millis);
        held.until_ms.store(until, Ordering::Release);
        held.changed.notify_waiters();
    }

    /// Keeps the fence in step with the Lease `name` in `namespace` until
    /// the process ends. Each renewal the lease task writes arrives here.
    pub fn follow(
        &self,
        client: Client,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = ()> + Send + use<> {
        let fence = self.clone();
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                        fence.observe(Some(&l))
                    }
                    Ok(watcher::Event::Delete(_)) => fence.observe(None),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => {
                        // Without a current view of the lease, assume the worst.
                        fence.observe(None);
                        tracing::warn!(error = %e, "lease watch failed; writes fenced until it recovers");
                    }
                }
            }
        }
    }
}

/// Until when `identity` holds `lease`, fencing a margin before a standby
/// may take over (`renewTime + leaseDurationSeconds` on its clock).
fn held_until(lease: &Lease, identity: &str) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    Some(renewed + duration - margin(duration))
}

/// A fifth of the lease, at least half a second and at most five: room for
/// clock skew and a write already on the wire. The lease task renews a third
/// of the way before expiry, so a healthy leader is never fenced.
fn margin(duration: Duration) -> Duration {
    (duration / 5).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses writes the [`Fence`] does not allow, checked when the request is
/// sent (after any rate limiter has let it through).
#[derive(Clone)]
pub struct FenceLayer(pub Fence);

impl<S> Layer<S> for FenceLayer {
    type Service = FenceService<S>;

    fn layer(&self, inner: S) -> FenceService<S> {
        FenceService {
            inner,
            fence: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FenceService<S> {
    inner: S,
    fence: Fence,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for FenceService<S>
where
    S: Service<Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_write(request.method()) && !self.fence.allows_writes() {
            return Box::pin(std::future::ready(Err(BoxError::from(Fenced))));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

/// True when `error` is a write this replica refused to send.
pub fn is_fenced(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Service(e) if e.is::<Fenced>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: SystemTime, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::try_from(renewed).expect("in range"),
                )),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn without_leader_election_everything_writes() {
        assert!(Fence::open().allows_writes());
    }

    #[test]
    fn the_holder_writes_until_a_margin_before_the_lease_runs_out() {
        let fence = Fence::for_identity("me");
        assert!(!fence.allows_writes(), "closed before the lease is seen");
        let renewed = SystemTime::now();
        fence.observe(Some(&lease("me", renewed, 15)));
        assert!(fence.allows_writes_at(renewed + Duration::from_secs(11)));
        // 15 s lease, 3 s margin: a standby could take over at 15 s.
        assert!(!fence.allows_writes_at(renewed + Duration::from_secs(12)));
        assert!(!fence.allows_writes_at(renewed + Duration::from_secs(15)));
    }

    #[test]
    fn a_frozen_leader_resumes_fenced() {
        // The last renewal it saw is older than the lease: it was stopped
        // past its lease, whatever its own lease task still believes.
        let fence = Fence::for_identity("me");
        fence.observe(Some(&lease(
            "me",
            SystemTime::now() - Duration::from_secs(20),
            15,
        )));
        assert!(!fence.allows_writes());
    }

    #[test]
    fn another_holder_or_no_lease_fences() {
        let fence = Fence::for_identity("me");
        fence.observe(Some(&lease("me", SystemTime::now(), 15)));
        assert!(fence.allows_writes());
        fence.observe(Some(&lease("them", SystemTime::now(), 15)));
        assert!(!fence.allows_writes());
        fence.observe(Some(&lease("me", SystemTime::now(), 15)));
        fence.observe(None);
        assert!(!fence.allows_writes());
    }

    #[test]
    fn margins_stay_within_bounds() {
        assert_eq!(margin(Duration::from_secs(3)), Duration::from_millis(600));
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(margin(Duration::from_secs(15)), Duration::from_secs(3));
        assert_eq!(margin(Duration::from_secs(300)), Duration::from_secs(5));
    }

    type Mock = tower_test::mock::Mock<Request<()>, http::Response<()>>;
    type Handle = tower_test::mock::Handle<Request<()>, http::Response<()>>;

    /// Sends `method` through the fence; the method the server saw, if any.
    async fn send(
        service: &mut FenceService<Mock>,
        server: &mut Handle,
        method: Method,
    ) -> Result<Option<Method>, BoxError> {
        use tower::ServiceExt;
        let request = Request::builder()
            .method(method)
            .uri("/api/v1/namespaces/ns/secrets/s")
            .body(())
            .expect("request");
        let call = service.ready().await?.call(request);
        let serve = async {
            let (request, reply) = server.next_request().await?;
            reply.send_response(http::Response::new(()));
            Some(request.method().clone())
        };
        // The server's side first: once it has answered, that is the result.
        // A refused call ends at once, before the server sees anything.
        tokio::select! {
            biased;
            seen = serve => Ok(seen),
            response = call => response.map(|_| None),
        }
    }

    #[tokio::test]
    async fn fenced_writes_never_reach_the_server_but_reads_do() {
        let (mock, mut server) = tower_test::mock::pair::<Request<()>, http::Response<()>>();
        let fence = Fence::for_identity("me");
        let mut service = FenceLayer(fence.clone()).layer(mock);
        let refused = send(&mut service, &mut server, Method::PATCH).await;
        assert!(refused.is_err_and(|e| e.is::<Fenced>()));
        let read = send(&mut service, &mut server, Method::GET).await;
        assert_eq!(read.ok().flatten(), Some(Method::GET));

        fence.observe(Some(&lease("me", SystemTime::now(), 15)));
        let write = send(&mut service, &mut server, Method::DELETE).await;
        assert_eq!(write.ok().flatten(), Some(Method::DELETE));
    }

    #[tokio::test]
    async fn opened_waits_for_the_lease_to_be_seen() {
        let fence = Fence::for_identity("me");
        assert!(!fence.opened(Duration::from_millis(20)).await);
        let observer = {
            let fence = fence.clone();
            async move {
                tokio::task::yield_now().await;
                fence.observe(Some(&lease("me", SystemTime::now(), 15)));
            }
        };
        let (opened, ()) = tokio::join!(fence.opened(Duration::from_secs(5)), observer);
        assert!(opened);
    }
}
