//! The operator's own credential snapshot.
//!
//! Asking the default chain for credentials calls STS every time, and the
//! SDK's identity cache only refreshes seconds before expiry, which would cut
//! every URL short. So the operator keeps one snapshot, refreshes it when half
//! its lifetime is gone, and signs every grant with it: a thousand grants cost
//! one STS call, and a freshly signed URL gets at least half a session.
//!
//! Refreshing never holds up a reconcile: it runs in the background, each
//! attempt bounded by [`ATTEMPT_TIMEOUT`] and retried every
//! [`RETRY_INTERVAL`], while grants are signed with the current snapshot as
//! long as it is usable. A slow or unreachable STS therefore delays nothing
//! that does not need new credentials — revocations least of all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use futures::Stream;

/// Credentials this close to expiry are not used for signing at all.
pub const MIN_REMAINING: Duration = Duration::from_secs(120);
/// Refresh no later than this long before expiry, even for short sessions.
const REFRESH_FLOOR: Duration = Duration::from_secs(300);
/// Longest one load may take (an STS call with the SDK's own retries).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait between failed loads.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// How long a reconcile that has no usable credentials at all waits for a
/// load already under way (the first grants after start-up).
const FIRST_LOAD_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

#[derive(Clone)]
struct Loaded {
    credentials: Credentials,
    loaded_at: SystemTime,
}

impl Loaded {
    /// When this snapshot should be replaced: half way through its lifetime,
    /// or REFRESH_FLOOR before expiry, whichever comes first.
    fn refresh_at(&self) -> Option<SystemTime> {
        let expiry = self.credentials.expiry()?;
        let lifetime = expiry.duration_since(self.loaded_at).unwrap_or_default();
        let by_half = self.loaded_at + lifetime / 2;
        let by_floor = expiry.checked_sub(REFRESH_FLOOR).unwrap_or(self.loaded_at);
        Some(by_half.min(by_floor))
    }

    fn usable_at(&self, now: SystemTime) -> bool {
        match self.credentials.expiry() {
            None => true,
            Some(expiry) => expiry
                .duration_since(now)
                .is_ok_and(|left| left > MIN_REMAINING),
        }
    }
}

/// A shared copy of the process's AWS credentials, refreshed in the
/// background.
#[derive(Clone)]
pub struct CredentialSnapshot {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SharedCredentialsProvider,
    latest: RwLock<Option<Loaded>>,
    /// A load is under way (at most one at a time), since `started`.
    loading: AtomicBool,
    started: Mutex<Option<tokio::time::Instant>>,
    /// When the last load failed, and why; cleared by a successful one.
    failure: Mutex<Option<(Instant, String)>>,
    /// Wakes whoever waits for a load to end.
    loaded: tokio::sync::Notify,
    /// Counts loads that succeeded after a failure (see `recoveries`).
    recovered: tokio::sync::watch::Sender<u64>,
    loads: AtomicU64,
}

impl CredentialSnapshot {
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        CredentialSnapshot {
            inner: Arc::new(Inner {
                provider,
                latest: RwLock::new(None),
                loading: AtomicBool::new(false),
                started: Mutex::new(None),
                failure: Mutex::new(None),
                loaded: tokio::sync::Notify::new(),
                recovered: tokio::sync::watch::Sender::new(0),
                loads: AtomicU64::new(0),
            }),
        }
    }

    /// Credentials good for signing now. The current snapshot while it is
    /// usable (a refresh that is due starts in the background); with none,
    /// a short wait for a load, then the last load's error.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let now = SystemTime::now();
        if let Some(current) = self.read().filter(|l| l.usable_at(now)) {
            if current.refresh_at().is_some_and(|at| now >= at) {
                self.load_in_background();
            }
            return Ok(current.credentials);
        }
        if self.failed_within(RETRY_INTERVAL).is_none() || self.is_loading() {
            // The load runs on its own task: giving up waiting must not
            // cancel it.
            // The wait is counted from the load's start, so with a slow STS
            // the reconciles that need credentials hold their slots for
            // FIRST_LOAD_WAIT in all, not each.
            let done = self.inner.loaded.notified();
            self.load_in_background();
            let started = *self.lock_started();
            let left = started.map(|at| FIRST_LOAD_WAIT.saturating_sub(at.elapsed()));
            if let Some(left) = left.filter(|left| !left.is_zero() && self.is_loading()) {
                let _ = tokio::time::timeout(left, done).await;
            }
        }
        match self.read().filter(|l| l.usable_at(SystemTime::now())) {
            Some(current) => Ok(current.credentials),
            None => Err(CredentialsError(
                self.failed_within(Duration::MAX).unwrap_or_else(|| {
                    "AWS credentials are still loading (STS has not answered yet)".into()
                }),
            )),
        }
    }

    /// Keeps the snapshot fresh: loads at each refresh time, and every
    /// RETRY_INTERVAL after a failure. Returns for credentials that never
    /// expire (static keys), once loaded.
    pub async fn keep_fresh(self) {
        loop {
            let now = SystemTime::now();
            let wait = match self.read() {
                Some(l) if l.credentials.expiry().is_none() => return,
                Some(l) if self.failed_within(RETRY_INTERVAL).is_none() => l
                    .refresh_at()
                    .and_then(|at| at.duration_since(now).ok())
                    .unwrap_or_default(),
                _ if self.failed_within(RETRY_INTERVAL).is_some() => RETRY_INTERVAL,
                _ => Duration::ZERO,
            };
            tokio::time::sleep(wait).await;
            self.load().await;
        }
    }

    /// Fires (once per recovery) when credentials load again after failing,
    /// so grants that could not be signed are retried at once rather than at
    /// the end of their backoff.
    pub fn recoveries(&self) -> impl Stream<Item = ()> + Send + Sync + 'static + use<> {
        let rx = self.inner.recovered.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    /// When the current snapshot expires, if it has been loaded and expires.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.read().and_then(|l| l.credentials.expiry())
    }

    /// True once credentials have been loaded at least once.
    pub fn loaded(&self) -> bool {
        self.read().is_some()
    }

    /// Why the last load failed, while no load has succeeded since.
    pub fn refresh_failure(&self) -> Option<String> {
        self.failed_within(Duration::MAX)
    }

    /// How many times the provider has been asked (STS calls for IRSA).
    pub fn loads(&self) -> u64 {
        self.inner.loads.load(Ordering::Relaxed)
    }

    fn is_loading(&self) -> bool {
        self.inner.loading.load(Ordering::Acquire)
    }

    /// Claims the one load that may run; false if one is under way.
    fn claim(&self) -> bool {
        let claimed = !self.inner.loading.swap(true, Ordering::AcqRel);
        if claimed {
            *self.lock_started() = Some(tokio::time::Instant::now());
        }
        claimed
    }

    fn lock_started(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.inner
            .started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn load_in_background(&self) {
        if self.claim() {
            let this = self.clone();
            tokio::spawn(async move { this.run_claimed().await });
        }
    }

    /// One bounded load, or the end of the one under way.
    async fn load(&self) {
        let done = self.inner.loaded.notified();
        if self.claim() {
            self.run_claimed().await;
        } else if self.is_loading() {
            done.await;
        }
    }

    async fn run_claimed(&self) {
        /// Ends the load however its future ends.
        struct Release<'a>(&'a Inner);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.loading.store(false, Ordering::Release);
                self.0.loaded.notify_waiters();
            }
        }
        let _release = Release(&self.inner);
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        let attempt =
            tokio::time::timeout(ATTEMPT_TIMEOUT, self.inner.provider.provide_credentials()).await;
        let outcome = match attempt {
            Ok(Ok(credentials)) => {
                let loaded = Loaded {
                    credentials,
                    loaded_at: SystemTime::now(),
                };
                if loaded.usable_at(loaded.loaded_at) {
                    Ok(loaded)
                } else {
                    Err("the credential provider returned credentials that expire within two minutes".into())
                }
            }
            Ok(Err(err)) => {
                Err(aws_smithy_types::error::display::DisplayErrorContext(&err).to_string())
            }
            Err(_) => Err(format!(
                "the credential provider did not answer within {}s",
                ATTEMPT_TIMEOUT.as_secs()
            )),
        };
        match outcome {
            Ok(loaded) => {
                tracing::info!(expires_at = ?loaded.credentials.expiry().map(jiff_ts), "loaded AWS credentials");
                *self.write() = Some(loaded);
                if self.lock_failure().take().is_some() {
                    self.inner.recovered.send_modify(|n| *n += 1);
                }
            }
            Err(message) => {
                let usable = self.read().is_some_and(|l| l.usable_at(SystemTime::now()));
                tracing::warn!(error = %message, signing_with_current = usable, retry_in_s = RETRY_INTERVAL.as_secs(), "loading AWS credentials failed");
                *self.lock_failure() = Some((Instant::now(), message));
            }
        }
    }

    /// The last failure's message, if it happened within `within`.
    fn failed_within(&self, within: Duration) -> Option<String> {
        let failure = self.lock_failure();
        failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < within)
            .map(|(_, message)| message.clone())
    }

    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> Option<Loaded> {
        match self.inner.latest.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Loaded>> {
        self.inner
            .latest
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn jiff_ts(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(lifetime: Duration) -> Loaded {
        let loaded_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Loaded {
            credentials: Credentials::new(
                "AKID",
                "secret",
                Some("token".into()),
                Some(loaded_at + lifetime),
                "test",
            ),
            loaded_at,
        }
    }

    #[test]
    fn hour_long_sessions_refresh_half_way() {
        let l = loaded(Duration::from_secs(3600));
        assert_eq!(
            l.refresh_at(),
            Some(l.loaded_at + Duration::from_secs(1800))
        );
    }

    #[test]
    fn short_sessions_refresh_at_least_five_minutes_before_expiry() {
        let l = loaded(Duration::from_secs(480));
        assert_eq!(l.refresh_at(), Some(l.loaded_at + Duration::from_secs(180)));
    }

    #[test]
    fn static_keys_never_need_refreshing() {
        let l = Loaded {
            credentials: Credentials::new("AKID", "secret", None, None, "static"),
            loaded_at: SystemTime::now(),
        };
        assert_eq!(l.refresh_at(), None);
        assert!(l.usable_at(SystemTime::now() + Duration::from_secs(10 * 365 * 86400)));
    }

    #[tokio::test]
    async fn many_signers_share_one_load() {
        let creds = Credentials::new(
            "AKID",
            "secret",
            Some("t".into()),
            Some(SystemTime::now() + Duration::from_secs(3600)),
            "test",
        );
        let snapshot = CredentialSnapshot::new(SharedCredentialsProvider::new(creds));
        let all = futures::future::join_all((0..100).map(|_| snapshot.get())).await;
        assert!(all.iter().all(|r| r.is_ok()));
        assert_eq!(snapshot.loads(), 1);
        assert!(snapshot.loaded());
    }

    #[tokio::test]
    async fn nearly_expired_credentials_are_refused() {
        let creds = Credentials::new(
            "AKID",
            "secret",
            Some("t".into()),
            Some(SystemTime::now() + Duration::from_secs(30)),
            "test",
        );
        let snapshot = CredentialSnapshot::new(SharedCredentialsProvider::new(creds));
        assert!(snapshot.get().await.is_err());
    }

    /// A provider whose n-th call (from 0) does what `script(n)` says:
    /// Some(lifetime) answers with credentials, None fails, and a call past
    /// `hang_from` never answers.
    #[derive(Debug)]
    struct Scripted {
        calls: Arc<AtomicU64>,
        script: fn(u64) -> Option<Duration>,
        hang_from: u64,
    }

    impl ProvideCredentials for Scripted {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = (self.script)(n);
            let hang = n >= self.hang_from;
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                match answer {
                    Some(lifetime) => Ok(Credentials::new(
                        "AKID",
                        "secret",
                        Some("t".into()),
                        Some(SystemTime::now() + lifetime),
                        "scripted",
                    )),
                    None => Err(
                        aws_credential_types::provider::error::CredentialsError::provider_error(
                            "connection refused",
                        ),
                    ),
                }
            })
        }
    }

    fn scripted(
        script: fn(u64) -> Option<Duration>,
        hang_from: u64,
    ) -> (CredentialSnapshot, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let provider = Scripted {
            calls: calls.clone(),
            script,
            hang_from,
        };
        (
            CredentialSnapshot::new(SharedCredentialsProvider::new(provider)),
            calls,
        )
    }

    #[tokio::test]
    async fn a_refresh_that_never_answers_does_not_hold_up_signing() {
        // Four minutes left: usable, and due for a refresh at once.
        let (snapshot, calls) = scripted(|_| Some(Duration::from_secs(240)), 1);
        let first = snapshot.get().await.expect("first load");
        for _ in 0..3 {
            let again = tokio::time::timeout(Duration::from_millis(500), snapshot.get())
                .await
                .expect("get() returned while STS hangs")
                .expect("still usable");
            assert_eq!(again.access_key_id(), first.access_key_id());
        }
        // One refresh was started (on its own task), and only one.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(snapshot.is_loading());
    }

    #[tokio::test]
    async fn without_usable_credentials_a_failure_is_reported_at_once_and_not_retried_per_call() {
        let (snapshot, calls) = scripted(|_| None, u64::MAX);
        let err = snapshot.get().await.expect_err("STS refuses");
        assert!(err.0.contains("connection refused"), "{err}");
        let started = Instant::now();
        for _ in 0..10 {
            assert!(snapshot.get().await.is_err());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "retries belong to keep_fresh"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_fresh_retries_and_announces_the_recovery() {
        use futures::StreamExt;
        // Fails twice, then answers with an hour-long session.
        let (snapshot, calls) =
            scripted(|n| (n >= 2).then_some(Duration::from_secs(3600)), u64::MAX);
        let mut recoveries = std::pin::pin!(snapshot.recoveries());
        assert!(snapshot.get().await.is_err());
        tokio::spawn(snapshot.clone().keep_fresh());
        tokio::time::timeout(Duration::from_secs(60), recoveries.next())
            .await
            .expect("a recovery within two retry intervals")
            .expect("the stream lives");
        assert!(snapshot.get().await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_fresh_refreshes_at_the_refresh_time_only() {
        let (snapshot, calls) = scripted(|_| Some(Duration::from_secs(3600)), u64::MAX);
        tokio::spawn(snapshot.clone().keep_fresh());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Half an hour later (the refresh time), one more load.
        tokio::time::sleep(Duration::from_secs(1800)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn with_sts_hanging_from_the_start_reconciles_wait_a_few_seconds_in_all() {
        let (snapshot, _) = scripted(|_| Some(Duration::from_secs(3600)), 0);
        let started = tokio::time::Instant::now();
        assert!(snapshot.get().await.is_err());
        assert!(snapshot.get().await.is_err());
        // The second caller did not wait again.
        assert_eq!(started.elapsed(), FIRST_LOAD_WAIT);
    }
}
