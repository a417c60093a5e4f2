//! The operator's own credential snapshot.
//!
//! Asking the default chain for credentials calls STS every time, and the
//! SDK's identity cache only refreshes seconds before expiry, which would cut
//! every URL short. So the operator keeps one snapshot, refreshes it when half
//! its lifetime is gone, and signs every grant with it: a thousand grants cost
//! one STS call, and a freshly signed URL gets at least half a session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

/// Credentials this close to expiry are not used for signing at all.
pub const MIN_REMAINING: Duration = Duration::from_secs(120);
/// Refresh no later than this long before expiry, even for short sessions.
const REFRESH_FLOOR: Duration = Duration::from_secs(300);

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

/// A shared, lazily refreshed copy of the process's AWS credentials.
#[derive(Clone)]
pub struct CredentialSnapshot {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SharedCredentialsProvider,
    latest: RwLock<Option<Loaded>>,
    refresh: tokio::sync::Mutex<()>,
    loads: AtomicU64,
}

impl CredentialSnapshot {
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        CredentialSnapshot {
            inner: Arc::new(Inner {
                provider,
                latest: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
                loads: AtomicU64::new(0),
            }),
        }
    }

    /// Credentials good for signing now, refreshed first if due. A failed
    /// refresh falls back to the current snapshot while it is still usable.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let now = SystemTime::now();
        if let Some(current) = self.fresh(now) {
            return Ok(current);
        }
        // One refresh at a time; whoever waited here finds it done.
        let _guard = self.inner.refresh.lock().await;
        if let Some(current) = self.fresh(SystemTime::now()) {
            return Ok(current);
        }
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        match self.inner.provider.provide_credentials().await {
            Ok(credentials) => {
                let loaded = Loaded {
                    credentials: credentials.clone(),
                    loaded_at: SystemTime::now(),
                };
                if !loaded.usable_at(loaded.loaded_at) {
                    return Err(CredentialsError(
                        "the credential provider returned credentials that expire within two minutes".into(),
                    ));
                }
                *self.write() = Some(loaded);
                tracing::info!(expires_at = ?credentials.expiry().map(jiff_ts), "loaded AWS credentials");
                Ok(credentials)
            }
            Err(err) => {
                let message =
                    aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
                let previous = self.read();
                match previous.filter(|p| p.usable_at(SystemTime::now())) {
                    Some(p) => {
                        tracing::warn!(error = %message, "refreshing AWS credentials failed; signing with the current ones");
                        Ok(p.credentials)
                    }
                    None => Err(CredentialsError(message)),
                }
            }
        }
    }

    /// When the current snapshot expires, if it has been loaded and expires.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.read().and_then(|l| l.credentials.expiry())
    }

    /// True once credentials have been loaded at least once.
    pub fn loaded(&self) -> bool {
        self.read().is_some()
    }

    /// How many times the provider has been asked (STS calls for IRSA).
    pub fn loads(&self) -> u64 {
        self.inner.loads.load(Ordering::Relaxed)
    }

    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        let loaded = self.read()?;
        match loaded.refresh_at() {
            Some(at) if now >= at => None,
            _ => Some(loaded.credentials),
        }
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
}
