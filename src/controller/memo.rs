//! What the operator remembers about each grant between passes: one record
//! per grant, in one map. A pass takes its grant's record when it starts,
//! changes its own copy, and commits it when it ends, failed or not; a
//! deleted grant is forgotten in one removal. The cache already holds what
//! the cluster says; the record holds only what the cache may not show yet
//! (this operator's own writes) and what the cluster never says (failures,
//! when S3 was last asked).
//!
//! Tombstones of deleted grants are kept apart: they must outlive the record,
//! so that a pass still running when its grant was deleted commits nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::managed::{ManagedSecret, Slot};
use super::recorded::Recorded;
use crate::api::Reason;

/// Longest a written Secret (or status record) stands in for the cache; the
/// watch brings it back within milliseconds.
const WRITTEN_SECRET_TTL: Duration = Duration::from_secs(60);

/// How long a deletion is remembered: longer than any pass takes.
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// Everything kept about one grant between passes.
#[derive(Debug, Clone, Default)]
pub struct GrantMemo {
    /// Passes that failed in a row: the backoff (`retry_delay`).
    pub failures: u32,
    /// The last status written. Our own writes wake the grant again, often
    /// before the cache holds the new status; without this, each such
    /// wake-up would write the same status once more.
    pub status: Option<StatusWrite>,
    /// Where this generation settled (`decide::Settled`). The status says so
    /// too, but the cache may not show it yet when the pass's own side
    /// effects (the Secret it removed) wake the grant again.
    pub settled: Option<Box<SettledAt>>,
    /// The Secret the last pass wrote, until the cache shows it: a pass that
    /// comes sooner reads it instead of taking the name for free and signing
    /// again.
    pub secret: Option<Box<WrittenSecret>>,
    /// The URL fingerprint the rollout targets were last found up to date
    /// for (or told about): saves a GET per target on every pass.
    pub rollouts_done: Option<Box<str>>,
    /// When the multipart upload was last looked at in S3.
    pub upload_checked: Option<Instant>,
    /// The upload record this operator last wrote to the status, until the
    /// cache shows it: a pass that comes sooner acts on it, not on the
    /// older record the cache still shows (and starts no second upload).
    pub recorded: Option<Box<WrittenRecord>>,
}

/// An upload record written to the status (None: cleared), and when.
#[derive(Debug, Clone)]
pub struct WrittenRecord {
    pub at: Instant,
    pub record: Option<Recorded>,
}

/// A status write as hashes, both without transition times (which a pass
/// working from a stale cache would set afresh): the status the cache showed
/// before it, and the status written. A write is skipped only while the
/// cache still shows the older status and the same status would be written
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusWrite {
    pub before: u64,
    pub status: u64,
}

/// A Secret this operator wrote, and when.
#[derive(Debug, Clone)]
pub struct WrittenSecret {
    pub at: Instant,
    pub secret: ManagedSecret,
}

/// A settled outcome and the generation it holds for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledAt {
    pub generation: i64,
    pub reason: Reason,
    pub message: String,
}

impl GrantMemo {
    /// Nothing worth keeping: the record can go from the map.
    fn is_empty(&self) -> bool {
        self.failures == 0
            && self.status.is_none()
            && self.settled.is_none()
            && self.secret.is_none()
            && self.rollouts_done.is_none()
            && self.upload_checked.is_none()
            && self.recorded.is_none()
    }

    /// Who holds the name: the cache (`cached`), unless it has not caught
    /// up with a Secret this operator wrote for the grant a moment ago. A
    /// remembered Secret the cache has caught up with is let go.
    pub fn slot(&mut self, cached: Slot, name: &str) -> Slot {
        let Some(WrittenSecret { at, secret: mine }) = self.secret.as_deref() else {
            return cached;
        };
        let fingerprint = |s: &ManagedSecret| s.state.as_ref().map(|x| x.fingerprint.clone());
        let behind = match &cached {
            Slot::Free => true,
            Slot::Ours(seen) => fingerprint(seen) != fingerprint(mine),
            Slot::Foreign => false,
        };
        if behind && at.elapsed() < WRITTEN_SECRET_TTL && mine.name_any() == name {
            return Slot::Ours(Box::new(mine.clone()));
        }
        self.secret = None;
        cached
    }

    /// Remembers the Secret just written, until the cache shows it.
    pub fn remember_secret(&mut self, secret: ManagedSecret) {
        let at = Instant::now();
        self.secret = Some(Box::new(WrittenSecret { at, secret }));
    }

    /// The upload record to act on: the status's (`cached`), unless it has
    /// not caught up with one this operator wrote a moment ago.
    pub fn recorded(&mut self, cached: Option<Recorded>) -> Option<Recorded> {
        match self.recorded.as_deref() {
            Some(w) if w.record != cached && w.at.elapsed() < WRITTEN_SECRET_TTL => {
                w.record.clone()
            }
            _ => {
                self.recorded = None;
                cached
            }
        }
    }

    /// Remembers the upload record just written to the status.
    pub fn remember_record(&mut self, record: Option<Recorded>) {
        let at = Instant::now();
        self.recorded = Some(Box::new(WrittenRecord { at, record }));
    }

    /// What this operator last reported, if it settled this generation.
    pub fn settled(&self, generation: Option<i64>) -> Option<(Reason, &str)> {
        self.settled
            .as_ref()
            .filter(|s| Some(s.generation) == generation)
            .map(|s| (s.reason, s.message.as_str()))
    }

    /// Whether the upload is due a look, once per `interval`.
    pub fn upload_check_due(&self, interval: Duration) -> bool {
        self.upload_checked
            .is_none_or(|at| at.elapsed() >= interval)
    }
}

/// Every grant's record, by grant key (`context::grant_key`).
#[derive(Default)]
pub struct Memos {
    records: Mutex<HashMap<u64, GrantMemo>>,
}

impl Memos {
    /// Takes the grant's record out for a pass (kube-runtime never runs two
    /// passes of one grant at once), or for the revocation of a deleted
    /// grant, which may run beside a pass and then gets an empty record.
    pub fn take(&self, key: u64) -> GrantMemo {
        self.lock().remove(&key).unwrap_or_default()
    }

    /// Puts the record back at the end of a pass, unless the grant was
    /// deleted meanwhile or nothing is left worth keeping.
    pub fn commit(&self, key: u64, memo: GrantMemo, tombstones: &Tombstones) {
        // The tombstone is looked at under the records' lock: a deletion
        // lays its tombstone before it forgets the record, so its `forget`
        // either finds this record or this commit finds the tombstone.
        let mut records = self.lock();
        if memo.is_empty() || tombstones.contains(key) {
            return;
        }
        records.insert(key, memo);
    }

    /// Failed passes in a row, for the backoff after this one.
    pub fn failures(&self, key: u64) -> u32 {
        self.lock().get(&key).map_or(0, |m| m.failures)
    }

    /// Drops everything kept about a deleted grant.
    pub fn forget(&self, key: u64) {
        self.lock().remove(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, GrantMemo>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Grants the watch reported deleted, and when.
#[derive(Default)]
pub struct Tombstones {
    deleted: Mutex<HashMap<u64, Instant>>,
}

impl Tombstones {
    pub fn insert(&self, key: u64) {
        let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        deleted.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        deleted.insert(key, Instant::now());
    }

    pub fn contains(&self, key: u64) -> bool {
        let deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        deleted.contains_key(&key)
    }
}

/// Per-grant exponential backoff after failures: 5s, 10s, 20s … 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1u64 << exp)).min(Duration::from_secs(300))
}

/// How long before its URL expires a failing grant is tried once more.
const RETRY_BEFORE_EXPIRY: Duration = Duration::from_secs(10);
/// The shortest retry, also for a grant whose URL has already expired.
const MIN_RETRY: Duration = Duration::from_secs(2);

/// The backoff, but never past the current URL's expiry: the retry that
/// renews it, or reports that it cannot, must come before the grant would
/// show Ready=True with a URL that no longer works. (After a minute-long
/// apiserver or etcd outage the backoff of a due renewal reaches 80 s and
/// more, longer than what was left of its URL.)
pub fn retry_delay(failures: u32, expires_at: Option<SystemTime>, now: SystemTime) -> Duration {
    let delay = backoff(failures);
    match expires_at {
        Some(end) => {
            let left = end
                .checked_sub(RETRY_BEFORE_EXPIRY)
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or_default();
            delay.min(left.max(MIN_RETRY))
        }
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::secret_meta;

    fn written(fingerprint: &str) -> ManagedSecret {
        let meta: kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Secret> =
            serde_json::from_value(secret_meta("grant-uid")).expect("fixture");
        let mut secret = k8s_openapi::api::core::v1::Secret {
            metadata: meta.metadata,
            ..Default::default()
        };
        secret.metadata.annotations = Some(
            [
                ("grants.io/spec-hash", "abc"),
                ("grants.io/issued-at", "2026-11-29T10:00:00Z"),
                ("grants.io/expires-at", "2026-11-29T11:00:00Z"),
                ("grants.io/url-fingerprint", fingerprint),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        ManagedSecret::written(&secret)
    }

    fn fingerprint(slot: &Slot) -> Option<String> {
        match slot {
            Slot::Ours(s) => s.state.as_ref().map(|s| s.fingerprint.clone()),
            _ => None,
        }
    }

    #[test]
    fn a_secret_just_written_stands_in_for_the_cache_until_it_catches_up() {
        let mut memo = GrantMemo::default();
        assert!(matches!(memo.slot(Slot::Free, "g"), Slot::Free));
        memo.remember_secret(written("sha256:new"));
        let slot = memo.slot(Slot::Free, "g");
        assert_eq!(fingerprint(&slot).as_deref(), Some("sha256:new"));
        assert!(
            matches!(memo.slot(Slot::Free, "other-name"), Slot::Free),
            "only for the name written"
        );
        // Let go once the name was asked for under another name.
        assert!(memo.secret.is_none());
        memo.remember_secret(written("sha256:new"));
        let older = Slot::Ours(Box::new(written("sha256:old")));
        assert_eq!(
            fingerprint(&memo.slot(older, "g")).as_deref(),
            Some("sha256:new"),
            "the cache is behind"
        );
        let caught_up = Slot::Ours(Box::new(written("sha256:new")));
        assert!(matches!(memo.slot(caught_up, "g"), Slot::Ours(_)));
        assert!(memo.secret.is_none(), "let go once the cache shows it");
        // Somebody else's Secret is never hidden by our memory.
        memo.remember_secret(written("sha256:new"));
        assert!(matches!(memo.slot(Slot::Foreign, "g"), Slot::Foreign));
        // A memory older than the cache's worst lag is not trusted.
        let long_ago = Instant::now().checked_sub(WRITTEN_SECRET_TTL + Duration::from_secs(1));
        if let Some(at) = long_ago {
            memo.secret = Some(Box::new(WrittenSecret {
                at,
                secret: written("sha256:new"),
            }));
            assert!(matches!(memo.slot(Slot::Free, "g"), Slot::Free));
        }
    }

    #[test]
    fn a_record_is_taken_for_a_pass_and_committed_once() {
        let (memos, tombstones) = (Memos::default(), Tombstones::default());
        let key = 7;
        let mut memo = memos.take(key);
        memo.failures = 2;
        memo.rollouts_done = Some("f".into());
        memos.commit(key, memo, &tombstones);
        assert_eq!(memos.failures(key), 2);
        let memo = memos.take(key);
        assert_eq!(memo.rollouts_done.as_deref(), Some("f"));
        // The record is small: the steady state of every grant holds one.
        assert!(std::mem::size_of::<GrantMemo>() <= 96);
        assert_eq!(memos.failures(key), 0, "taken out while the pass runs");
        // An empty record is not kept.
        memos.commit(key, GrantMemo::default(), &tombstones);
        assert!(memos.lock().is_empty());
        // A grant deleted while its pass ran: nothing is committed.
        tombstones.insert(key);
        memos.commit(key, memo, &tombstones);
        assert!(memos.lock().is_empty());
    }

    #[test]
    fn settled_holds_for_its_generation_only() {
        let memo = GrantMemo {
            settled: Some(Box::new(SettledAt {
                generation: 3,
                reason: Reason::Expired,
                message: "gone".into(),
            })),
            ..GrantMemo::default()
        };
        assert_eq!(memo.settled(Some(3)), Some((Reason::Expired, "gone")));
        assert_eq!(memo.settled(Some(4)), None);
        assert_eq!(memo.settled(None), None);
    }

    #[test]
    fn a_retry_never_waits_past_the_urls_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| now + Duration::from_secs(s);
        // Far from expiry: the plain backoff.
        assert_eq!(retry_delay(5, Some(at(3600)), now), backoff(5));
        // Backoff 80 s, URL valid 40 s more: tried 10 s before it expires.
        assert_eq!(retry_delay(5, Some(at(40)), now), Duration::from_secs(30));
        // Within the last 10 s, or already expired: soon, not in a loop.
        assert_eq!(retry_delay(5, Some(at(5)), now), MIN_RETRY);
        assert_eq!(
            retry_delay(5, Some(now - Duration::from_secs(5)), now),
            MIN_RETRY
        );
        // A short backoff stays short; no URL: the plain backoff.
        assert_eq!(retry_delay(1, Some(at(40)), now), backoff(1));
        assert_eq!(retry_delay(7, None, now), backoff(7));
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
