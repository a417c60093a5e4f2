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
//!
//! A write is checked twice: when it leaves the rate limiter, and again by
//! [`FencedBody`] when the connection takes its first bytes of body, after
//! any wait for a connection or a TLS handshake. A replica frozen between
//! the two checks resumes into the second and its write never leaves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request};
use http_body::{Body, Frame, SizeHint};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tower::{BoxError, Layer, Service};

/// Who may write: everyone (no leader election), or the holder of every
/// Lease it requires (the leader Lease, or the Leases of a replica's shards).
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Option<Arc<Held>>,
}

#[derive(Debug)]
struct Held {
    identity: String,
    leases: std::sync::Mutex<Leases>,
    /// Writes are allowed until this many milliseconds after the Unix
    /// epoch: the earliest end of the required Leases; 0 while one of them
    /// names somebody else, has not been seen, or none is required.
    until_ms: AtomicU64,
    changed: tokio::sync::Notify,
}

/// The Leases writes need, and until when this replica holds each it does.
#[derive(Debug, Default)]
struct Leases {
    required: std::collections::BTreeSet<String>,
    /// Only Leases this replica holds: as many as it may require.
    held: std::collections::BTreeMap<String, u64>,
}

impl Leases {
    fn until(&self) -> u64 {
        let ends = self.required.iter().map(|n| self.held.get(n).copied());
        ends.min().flatten().unwrap_or(0)
    }
}

/// The error a fenced write fails with.
#[derive(Debug, thiserror::Error)]
#[error("write refused: this replica cannot show that it still holds its lease")]
pub struct Fenced;

impl Fence {
    /// No leader election: every write goes through.
    pub fn open() -> Self {
        Fence { inner: None }
    }

    /// Closed until [`Fence::require`] names Leases and each is seen held
    /// by `identity`.
    pub fn for_identity(identity: impl Into<String>) -> Self {
        Fence {
            inner: Some(Arc::new(Held {
                identity: identity.into(),
                leases: std::sync::Mutex::default(),
                until_ms: AtomicU64::new(0),
                changed: tokio::sync::Notify::new(),
            })),
        }
    }

    /// Closed until [`Fence::follow`] sees `identity` hold the Lease `name`.
    pub fn for_lease(identity: impl Into<String>, name: &str) -> Self {
        let fence = Fence::for_identity(identity);
        fence.require([name.to_owned()]);
        fence
    }

    /// From now on writes need exactly these Leases; what was seen of them
    /// already counts.
    pub fn require(&self, names: impl IntoIterator<Item = String>) {
        self.update(|leases| leases.required = names.into_iter().collect());
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

    /// Applies one observation of a Lease.
    pub fn observe(&self, lease: &Lease) {
        let Some(held) = &self.inner else { return };
        let name = lease.metadata.name.clone().unwrap_or_default();
        let until = held_until(lease, &held.identity).map(millis);
        self.update(|leases| {
            match until {
                Some(until) => leases.held.insert(name, until),
                None => leases.held.remove(&name),
            };
        });
    }

    /// The Lease `name` is gone.
    pub fn observe_deleted(&self, name: &str) {
        self.update(|leases| {
            leases.held.remove(name);
        });
    }

    /// Nothing current is known of any Lease (a watch failed): fenced until
    /// they are seen again.
    pub fn observe_nothing(&self) {
        self.update(|leases| leases.held.clear());
    }

    fn update(&self, change: impl FnOnce(&mut Leases)) {
        let Some(held) = &self.inner else { return };
        // A panic while holding this lock cannot leave it half-changed.
        let mut leases = held.leases.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut leases);
        held.until_ms.store(leases.until(), Ordering::Release);
        drop(leases);
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
                fence.observe_event(event);
            }
        }
    }

    /// Applies one event of a watch of Leases.
    pub fn observe_event(&self, event: Result<watcher::Event<Lease>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => self.observe(&l),
            Ok(watcher::Event::Delete(l)) => self.observe_deleted(&l.name_any()),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => {
                // Without a current view of the leases, assume the worst.
                self.observe_nothing();
                tracing::warn!(error = %e, "lease watch failed; writes fenced until it recovers");
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
        Box::pin(async move { response.await.map_err(|e| plainly(e.into())) })
    }
}

/// A write's body that refuses to start unless the [`Fence`] allows it.
///
/// hyper writes a request's head into its buffer and polls the body before
/// it flushes either; a body that fails its first poll makes hyper drop the
/// connection with nothing sent (`writes_fenced_late_never_reach_the_wire`).
/// That poll runs on the connection, just before the bytes go out, so the
/// check sits after everything a request may wait for.
pub struct FencedBody<B> {
    inner: B,
    /// Taken by the first poll; `None` once the write was let through.
    fence: Option<Fence>,
}

impl<B> FencedBody<B> {
    /// `fence` is `None` for reads, which are never fenced.
    pub fn new(inner: B, fence: Option<Fence>) -> Self {
        FencedBody { inner, fence }
    }
}

/// Fences the body of every write in `request`.
pub fn fence_request<B>(request: Request<B>, fence: &Fence) -> Request<FencedBody<B>> {
    let checked = is_write(request.method()).then(|| fence.clone());
    request.map(|body| FencedBody::new(body, checked))
}

impl<B> Body for FencedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(fence) = self.fence.take()
            && !fence.allows_writes()
        {
            return Poll::Ready(Some(Err(BoxError::from(Fenced))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    /// Never at its end before the check: hyper polls only a body that has
    /// something left, and would otherwise send the head unchecked.
    fn is_end_stream(&self) -> bool {
        self.fence.is_none() && self.inner.is_end_stream()
    }

    /// An empty body reports an unknown length until checked: with a
    /// length of 0 hyper would send the head without polling it.
    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        if self.fence.is_some() && hint.exact() == Some(0) {
            return SizeHint::default();
        }
        hint
    }
}

/// True when `error` is a write this replica refused to send, refused
/// either before it left or by its body on the connection.
pub fn is_fenced(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Service(e) if caused_by_fence(e.as_ref()))
}

/// A write its body refused comes back wrapped by hyper and hyper-util
/// ("client error (SendRequest)"): say plainly that it was fenced.
fn plainly(error: BoxError) -> BoxError {
    if caused_by_fence(error.as_ref()) {
        BoxError::from(Fenced)
    } else {
        error
    }
}

/// hyper wraps a body's error in its own, and hyper-util in another.
fn caused_by_fence(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(c) = cause {
        if c.is::<Fenced>() {
            return true;
        }
        cause = c.source();
    }
    false
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
            metadata: kube::api::ObjectMeta {
                name: Some("lease".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn without_leader_election_everything_writes() {
        assert!(Fence::open().allows_writes());
    }

    #[test]
    fn the_holder_writes_until_a_margin_before_the_lease_runs_out() {
        let fence = Fence::for_lease("me", "lease");
        assert!(!fence.allows_writes(), "closed before the lease is seen");
        let renewed = SystemTime::now();
        fence.observe(&lease("me", renewed, 15));
        assert!(fence.allows_writes_at(renewed + Duration::from_secs(11)));
        // 15 s lease, 3 s margin: a standby could take over at 15 s.
        assert!(!fence.allows_writes_at(renewed + Duration::from_secs(12)));
        assert!(!fence.allows_writes_at(renewed + Duration::from_secs(15)));
    }

    #[test]
    fn a_frozen_leader_resumes_fenced() {
        // The last renewal it saw is older than the lease: it was stopped
        // past its lease, whatever its own lease task still believes.
        let fence = Fence::for_lease("me", "lease");
        fence.observe(&lease(
            "me",
            SystemTime::now() - Duration::from_secs(20),
            15,
        ));
        assert!(!fence.allows_writes());
    }

    #[test]
    fn another_holder_or_no_lease_fences() {
        let fence = Fence::for_lease("me", "lease");
        fence.observe(&lease("me", SystemTime::now(), 15));
        assert!(fence.allows_writes());
        fence.observe(&lease("them", SystemTime::now(), 15));
        assert!(!fence.allows_writes());
        fence.observe(&lease("me", SystemTime::now(), 15));
        fence.observe_deleted("lease");
        assert!(!fence.allows_writes());
    }

    fn named(name: &str, mut lease: Lease) -> Lease {
        lease.metadata.name = Some(name.into());
        lease
    }

    /// With several Leases required (a replica's shards), writes need every
    /// one of them, and end with the first to run out.
    #[test]
    fn every_required_lease_must_be_held() {
        let now = SystemTime::now();
        let fence = Fence::for_identity("me");
        fence.observe(&named("a", lease("me", now, 15)));
        assert!(!fence.allows_writes(), "nothing required: closed");
        fence.require(["a".to_owned(), "b".to_owned()]);
        assert!(!fence.allows_writes(), "b not seen yet");
        fence.observe(&named("b", lease("me", now - Duration::from_secs(5), 15)));
        assert!(fence.allows_writes_at(now + Duration::from_secs(6)));
        assert!(
            !fence.allows_writes_at(now + Duration::from_secs(7)),
            "b ends first"
        );
        fence.require(["a".to_owned()]);
        assert!(fence.allows_writes_at(now + Duration::from_secs(11)));
        fence.observe(&named("a", lease("them", now, 15)));
        assert!(!fence.allows_writes(), "a taken over");
        fence.require(["b".to_owned()]);
        assert!(fence.allows_writes_at(now));
        fence.observe_nothing();
        assert!(!fence.allows_writes(), "a failed watch forgets all");
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
        let fence = Fence::for_lease("me", "lease");
        let mut service = FenceLayer(fence.clone()).layer(mock);
        let refused = send(&mut service, &mut server, Method::PATCH).await;
        assert!(refused.is_err_and(|e| e.is::<Fenced>()));
        let read = send(&mut service, &mut server, Method::GET).await;
        assert_eq!(read.ok().flatten(), Some(Method::GET));

        fence.observe(&lease("me", SystemTime::now(), 15));
        let write = send(&mut service, &mut server, Method::DELETE).await;
        assert_eq!(write.ok().flatten(), Some(Method::DELETE));
    }

    #[tokio::test]
    async fn opened_waits_for_the_lease_to_be_seen() {
        let fence = Fence::for_lease("me", "lease");
        assert!(!fence.opened(Duration::from_millis(20)).await);
        let observer = {
            let fence = fence.clone();
            async move {
                tokio::task::yield_now().await;
                fence.observe(&lease("me", SystemTime::now(), 15));
            }
        };
        let (opened, ()) = tokio::join!(fence.opened(Duration::from_secs(5)), observer);
        assert!(opened);
    }

    /// A loopback HTTP/1 server that answers every request 200 and reports
    /// each connection's bytes as it closes.
    async fn recording_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!(
            "http://{}/api/v1/namespaces/ns/secrets/s",
            listener.local_addr().expect("addr")
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        let ok =
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                        let _ = socket.write_all(ok.as_bytes()).await;
                    }
                    let _ = tx.send(seen);
                });
            }
        });
        (url, rx)
    }

    type Plain = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        FencedBody<http_body_util::Full<Bytes>>,
    >;

    fn plain_client() -> Plain {
        use hyper_util::client::legacy::{Client, connect::HttpConnector};
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new())
    }

    /// Sends through the fence's two checks, as the operator's client does;
    /// with `lose_lease`, the lease is lost between them.
    async fn send_through(
        url: &str,
        method: Method,
        body: &'static str,
        fence: &Fence,
        lose_lease: bool,
    ) -> Result<http::StatusCode, BoxError> {
        use tower::ServiceExt;
        fence.observe(&lease("me", SystemTime::now(), 15));
        let request = Request::builder()
            .method(method)
            .uri(url)
            .body(http_body_util::Full::new(Bytes::from_static(
                body.as_bytes(),
            )))
            .expect("request");
        let wire = {
            let fence = fence.clone();
            plain_client().map_request(move |r| fence_request(r, &fence))
        };
        let mut service = FenceLayer(fence.clone()).layer(wire);
        let response = service.ready().await?.call(request);
        if lose_lease {
            // The replica freezes here, after the check at the bound, and
            // resumes to find that another holds the lease.
            fence.observe(&lease("them", SystemTime::now(), 15));
        }
        response.await.map(|r| r.status())
    }

    const WRITES: [(Method, &str); 2] = [(Method::PATCH, "{\"data\":{}}"), (Method::DELETE, "")];

    /// The second check, on real hyper over a real socket: a write whose
    /// fence closed after it left the bound sends not one byte, with or
    /// without a body; a read still goes.
    #[tokio::test]
    async fn writes_fenced_late_never_reach_the_wire() {
        let (url, mut seen) = recording_server().await;
        let fence = Fence::for_lease("me", "lease");
        for (method, body) in WRITES {
            let refused = send_through(&url, method.clone(), body, &fence, true).await;
            let error = refused.expect_err("a fenced write fails");
            assert!(error.is::<Fenced>(), "{method}: {error:?}");
            let bytes = seen.recv().await.expect("the connection closes");
            assert!(
                bytes.is_empty(),
                "{method}: sent {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let read = send_through(&url, Method::GET, "", &fence, true).await;
        assert_eq!(read.expect("a read goes"), http::StatusCode::OK);
        let bytes = seen.recv().await.expect("the connection closes");
        assert!(bytes.starts_with(b"GET /api/v1/namespaces/ns/secrets/s"));
    }

    /// Writes go out whole while the lease is held.
    #[tokio::test]
    async fn writes_allowed_on_the_wire_are_sent_whole() {
        let (url, mut seen) = recording_server().await;
        let fence = Fence::for_lease("me", "lease");
        for (method, body) in WRITES {
            let status = send_through(&url, method.clone(), body, &fence, false).await;
            assert_eq!(status.expect("sent"), http::StatusCode::OK);
            let bytes = String::from_utf8(seen.recv().await.expect("closed")).expect("utf-8");
            assert!(bytes.starts_with(&format!("{method} ")), "{bytes}");
            assert!(bytes.contains(body), "{bytes}");
        }
    }
}
