//! Runs grants' passes in the dispatch queue's order (`queue`): at most
//! `--concurrency` at once, never two of one grant, revocations first and
//! due renewals by deadline. The watches and caches stay kube-runtime's;
//! which pass runs next is decided here.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use kube::runtime::watcher;

use super::cache::{Cache, Key, Keyed};
use super::cached::CachedGrant;
use super::context::{Context, grant_key};
use super::forecast::{self, Rate};
use super::managed::owned_by_uid;
use super::memo::retry_delay;
use super::queue::{Pace, Queue, Urgency};
use super::reconcile::{self, Next};
use super::report::Wake;
use crate::error::Error;

/// A renewal keeps at least this much slack ahead of other work, however
/// fast the bound (`queue::Pace::margin`).
const MIN_MARGIN: Duration = Duration::from_secs(10);

/// What a failed pass asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retry {
    /// The grant's own backoff (`memo::retry_delay`).
    After(Duration),
    /// The apiserver throttled the operator (HTTP 429): the grant waits in
    /// the queue, in its place, for the dispatcher's hold to end.
    Throttled,
}

/// The longest hold: how late the work due meanwhile may start once the
/// apiserver takes requests again.
const MAX_HOLD: Duration = Duration::from_secs(8);

/// No pass starts while the apiserver throttles the operator. A pass
/// throttled after the hold ended (a probe) doubles the next hold, from 1 s
/// to `MAX_HOLD`; one that started before it says nothing new; any pass that
/// goes through ends the streak. Each grant backing off on its own instead
/// would come back in the order of its backoff timer, not of its deadline,
/// and retry into the throttle meanwhile.
#[derive(Debug, Default)]
struct Hold {
    until: Option<SystemTime>,
    /// Probes throttled in a row.
    streak: u32,
}

impl Hold {
    /// A pass was throttled at `now`; the new hold's length if it began one.
    fn throttled(&mut self, now: SystemTime) -> Option<Duration> {
        if self.holding(now).is_some() {
            return None;
        }
        let hold = Duration::from_secs(1 << self.streak.min(3)).min(MAX_HOLD);
        self.streak += 1;
        self.until = Some(now + hold);
        Some(hold)
    }

    /// A pass went through.
    fn passed(&mut self) {
        self.streak = 0;
    }

    /// When the hold ends, while it lasts.
    fn holding(&self, now: SystemTime) -> Option<SystemTime> {
        self.until.filter(|u| *u > now)
    }
}

/// A request to look at a grant, from the other watches: its key.
pub type Request = Key;

/// How the queue paces renewals: the bound's renewals per second (a renewal
/// is two requests, bench/README.md), and a margin that covers the passes
/// already running when a renewal runs short of slack.
pub fn pace(concurrency: u16, qps: u32) -> Pace {
    let rate = Rate::of_qps(qps);
    let running = rate
        .renewals_per_second()
        .map_or(0.0, |r| 4.0 * f64::from(concurrency) / r);
    Pace {
        rate,
        margin: MIN_MARGIN.max(Duration::from_secs_f64(running)),
    }
}

/// How soon a grant must run: `renewal` is the refresh and expiry time of
/// the URL it holds (`renewal_of`).
pub fn urgency(
    grant: Option<&CachedGrant>,
    renewal: Option<(SystemTime, SystemTime)>,
    now: SystemTime,
    propagation: Duration,
) -> Urgency {
    let Some(grant) = grant else {
        return Urgency::Arrival;
    };
    if grant.revoking() {
        return Urgency::Revoke;
    }
    match renewal {
        Some((refresh, expires)) if refresh <= now => Urgency::Renewal {
            deadline: forecast::deadline(expires, propagation),
        },
        _ => Urgency::Arrival,
    }
}

/// The refresh and expiry time of the URL a grant holds: from its Secret,
/// where the operator writes them first, else from its status. The status
/// may lag the Secret (its write had not landed when the last pass ended,
/// or failed), and a grant ranked by a stale status would wait behind every
/// renewal as new work while its URL runs out.
fn renewal_of(ctx: &Context, cached: &CachedGrant) -> Option<(SystemTime, SystemTime)> {
    // Read in place, without expanding the grant: this runs on every wake
    // and fired timer.
    let on_secret = || {
        let secret = ctx
            .secrets
            .get_in(cached.key().namespace(), cached.secret_name())?;
        let uid = cached.uid()?;
        let state = secret
            .state
            .as_ref()
            .filter(|_| owned_by_uid(&secret, uid))?;
        Some((state.refresh_at?, state.expires_at))
    };
    on_secret().or_else(|| cached.renewal())
}

/// How soon a grant must run after a change of policy (its issuer, its
/// namespace's labels): at once, ahead of renewals, when its issuer no
/// longer admits it (`admitted`, None when that cannot be told here), as
/// the revocation that pass will be; else as after any other change.
pub fn policy_urgency(otherwise: Urgency, admitted: Option<bool>) -> Urgency {
    match admitted {
        Some(false) => Urgency::Revoke,
        _ => otherwise,
    }
}

/// When to look at a grant again after a pass, and the deadline of the
/// renewal then due if it is one. A failed pass retries after `retry`, but
/// never past the deadline of the URL it holds.
pub fn schedule(
    next: Next,
    retry: Option<Duration>,
    now: SystemTime,
    propagation: Duration,
) -> (Option<SystemTime>, Option<SystemTime>) {
    let deadline = next.expires_at.map(|e| forecast::deadline(e, propagation));
    let at = match (retry, next.wake) {
        // Never past a deadline ahead; once it has passed, the backoff.
        (Some(delay), _) => Some(
            deadline
                .filter(|d| *d > now)
                .map_or(now + delay, |d| (now + delay).min(d)),
        ),
        (None, Wake::At(t)) => Some(t),
        (None, Wake::After(d)) => Some(now + d),
        (None, Wake::OnChange) => None,
    };
    let renewal = deadline.filter(|d| at.is_some_and(|at| at < *d));
    (at, renewal)
}

/// The grant watch's events as the dispatcher hears them.
pub type GrantEvent = watcher::Result<watcher::Event<CachedGrant>>;

/// Runs passes until `shutdown`, then lets the running ones finish.
/// `grants` is the reflected grant watch (the cache fills as it is read),
/// `requests` asks for grants to be looked at, `policy` for grants whose
/// issuer or namespace changed, and `everyone` for all of them
/// (credentials that loaded again).
pub async fn run(
    ctx: Arc<Context>,
    store: Cache<CachedGrant>,
    grants: impl Stream<Item = GrantEvent> + Send,
    requests: impl Stream<Item = Request> + Send,
    policy: impl Stream<Item = Request> + Send,
    everyone: impl Stream<Item = ()> + Send,
    shutdown: impl Future<Output = ()> + Send,
) {
    let settings = &ctx.settings;
    let propagation = settings.propagation_budget;
    let slots = usize::from(settings.concurrency.max(1));
    let mut queue: Queue<Key> = Queue::new(pace(settings.concurrency, settings.kube_api_qps));
    let mut running = FuturesUnordered::new();
    let (mut grants, mut requests, mut policy, mut everyone) = (
        Box::pin(grants),
        Box::pin(requests),
        Box::pin(policy),
        Box::pin(everyone),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    // No pass runs before the grant cache has listed.
    let mut listed = false;
    let mut hold = Hold::default();
    let classify = |grant: Option<&CachedGrant>, now: SystemTime| {
        let renewal = grant.and_then(|g| renewal_of(&ctx, g));
        urgency(grant, renewal, now, propagation)
    };
    loop {
        let now = SystemTime::now();
        let held = hold.holding(now);
        while listed && held.is_none() && running.len() < slots {
            let cached = |k: &Key| store.get(k.as_str());
            let Some(key) = queue.pop(now, |k| classify(cached(k).as_deref(), now)) else {
                break;
            };
            match cached(&key) {
                Some(grant) => {
                    tracing::debug!(grant = %key, "pass starting");
                    running.push(pass(ctx.clone(), key, grant));
                }
                None => {
                    queue.done(&key, now);
                    queue.forget(&key);
                }
            }
        }
        // With every slot busy, a due timer waits for a pass to end (which
        // wakes this loop) instead of waking it in vain.
        let timer = held.or_else(|| {
            queue
                .next_timer()
                .filter(|_| listed && running.len() < slots)
        });
        let sleep = tokio::time::sleep(until(timer, now));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some((key, result)) = running.next(), if !running.is_empty() => {
                let now = SystemTime::now();
                let (next, retry) = match result {
                    Ok(next) => {
                        hold.passed();
                        (next, None)
                    }
                    Err((next, Retry::After(delay))) => (next, Some(delay)),
                    Err((next, Retry::Throttled)) => {
                        if let Some(d) = hold.throttled(now) {
                            tracing::warn!(hold_s = d.as_secs(), "the apiserver throttles the operator (HTTP 429); no pass starts until the hold ends");
                        }
                        (next, Some(Duration::ZERO))
                    }
                };
                let (at, deadline) = schedule(next, retry, now, propagation);
                let next_in_s = at.map(|at| until(Some(at), now).as_secs());
                tracing::debug!(grant = %key, ?next_in_s, renewal = deadline.is_some(), "pass done");
                // Before `done`, which drops a grant forgotten meanwhile,
                // timer and all.
                queue.wake_at(&key, at, deadline);
                queue.done(&key, now);
            }
            Some(event) = grants.next() => match event {
                Ok(watcher::Event::Apply(g) | watcher::Event::InitApply(g)) => {
                    let now = SystemTime::now();
                    queue.wake(&g.key(), classify(Some(&g), now), now);
                }
                Ok(watcher::Event::Delete(g)) => queue.forget(&g.key()),
                Ok(watcher::Event::InitDone) => listed = true,
                Ok(watcher::Event::Init) => {}
                Err(e) => tracing::warn!(kind = "UploadGrant", error = %e, "watch failed; retrying"),
            },
            Some(request) = requests.next() => {
                let now = SystemTime::now();
                let found = classify(store.get(request.as_str()).as_deref(), now);
                queue.wake(&request, found, now);
            }
            Some(request) = policy.next() => {
                let now = SystemTime::now();
                let grant = store.get(request.as_str());
                let admitted = grant.as_deref().and_then(|g| ctx.admits(g));
                let found = policy_urgency(classify(grant.as_deref(), now), admitted);
                queue.wake(&request, found, now);
            }
            Some(()) = everyone.next() => {
                let now = SystemTime::now();
                for grant in store.state() {
                    queue.wake(&grant.key(), classify(Some(&grant), now), now);
                }
            }
            () = sleep, if timer.is_some() => {}
        }
    }
    // Passes under way finish: each commits its record and its writes.
    while running.next().await.is_some() {}
}

/// How long to sleep for a timer at `at`.
fn until(at: Option<SystemTime>, now: SystemTime) -> Duration {
    at.and_then(|at| at.duration_since(now).ok())
        .unwrap_or_default()
}

/// One pass: what it says of the next, or the retry its failure asks for.
async fn pass(
    ctx: Arc<Context>,
    key: Key,
    grant: Arc<CachedGrant>,
) -> (Key, Result<Next, (Next, Retry)>) {
    let result = match reconcile::reconcile(grant.clone(), ctx.clone()).await {
        Ok(next) => Ok(next),
        Err(error) => Err(failed(&grant, &error, &ctx)),
    };
    (key, result)
}

/// A failed pass: said, counted, and retried after the backoff (which
/// never passes the expiry of the URL the grant holds), or, when the
/// apiserver throttled it, once the dispatcher's hold ends.
fn failed(cached: &CachedGrant, error: &Error, ctx: &Context) -> (Next, Retry) {
    // Only a pass that failed comes here: expanding again is rare.
    let grant = cached.grant().ok();
    // The failed pass counted itself in the grant's record.
    let n = grant
        .as_ref()
        .map_or(1, |g| ctx.memos.failures(grant_key(g)).max(1));
    let expires_at = cached.renewal().map(|(_, expires)| expires).or_else(|| {
        let status = grant.as_ref()?.status.as_ref()?;
        status.expires_at.as_ref().map(|t| SystemTime::from(t.0))
    });
    ctx.metrics.reconcile_failure(error.category());
    let next = Next {
        wake: Wake::OnChange,
        expires_at,
    };
    if error.is_throttled() {
        // The dispatcher says it once for all the grants it holds.
        tracing::debug!(grant = %cached.name_any(), error = %error, "throttled by the apiserver");
        return (next, Retry::Throttled);
    }
    let delay = retry_delay(n, expires_at, SystemTime::now());
    tracing::warn!(
        grant = %cached.name_any(),
        namespace = cached.namespace().as_deref().unwrap_or(""),
        category = error.category(),
        error = %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    (next, Retry::After(delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    /// A pass's wake-up is the timer, and it is a renewal's when it comes
    /// before the deadline of the URL the grant holds.
    #[test]
    fn schedules_the_next_pass_and_its_deadline() {
        let p = Duration::from_secs(60);
        let next = |wake, expires: Option<u64>| Next {
            wake,
            expires_at: expires.map(at),
        };
        let now = at(1000);
        // Renews at 1400, deadline 2000 - 60.
        assert_eq!(
            schedule(next(Wake::At(at(1400)), Some(2000)), None, now, p),
            (Some(at(1400)), Some(at(1940)))
        );
        // Wakes at expiry, to revoke: not a renewal.
        assert_eq!(
            schedule(next(Wake::At(at(2000)), Some(2000)), None, now, p),
            (Some(at(2000)), None)
        );
        assert_eq!(
            schedule(next(Wake::OnChange, None), None, now, p),
            (None, None)
        );
        assert_eq!(
            schedule(
                next(Wake::After(Duration::from_secs(5)), None),
                None,
                now,
                p
            ),
            (Some(at(1005)), None)
        );
        // A failed renewal retries after its backoff, but by its deadline.
        assert_eq!(
            schedule(
                next(Wake::OnChange, Some(1100)),
                Some(Duration::from_secs(300)),
                now,
                p
            ),
            (Some(at(1040)), None)
        );
        assert_eq!(
            schedule(
                next(Wake::OnChange, Some(5000)),
                Some(Duration::from_secs(30)),
                now,
                p
            ),
            (Some(at(1030)), Some(at(4940)))
        );
        // Past its deadline, a failed pass backs off all the same: no retry
        // loop at the head of the queue.
        assert_eq!(
            schedule(
                next(Wake::OnChange, Some(1010)),
                Some(Duration::from_secs(30)),
                now,
                p
            ),
            (Some(at(1030)), None)
        );
    }

    /// Probes refused in a row hold 1, 2, 4, 8, 8 s; a pass that started
    /// before the hold and comes back refused during it changes nothing; one
    /// that goes through starts over at 1 s.
    #[test]
    fn the_hold_doubles_for_refused_probes_only_and_ends_with_a_pass() {
        let mut hold = Hold::default();
        assert_eq!(hold.holding(at(0)), None);
        let mut now = at(100);
        for want in [1, 2, 4, 8, 8] {
            assert_eq!(hold.throttled(now), Some(Duration::from_secs(want)));
            assert_eq!(hold.holding(now), Some(now + Duration::from_secs(want)));
            // The passes already running come back refused meanwhile.
            assert_eq!(hold.throttled(now + Duration::from_millis(500)), None);
            now += Duration::from_secs(want);
            assert_eq!(hold.holding(now), None);
        }
        hold.passed();
        assert_eq!(hold.throttled(now), Some(Duration::from_secs(1)));
    }

    /// A due renewal ranks by the deadline of the URL the grant holds,
    /// whatever its status shows; a revocation goes first.
    #[test]
    fn ranks_a_grant_by_the_url_it_holds() {
        let p = Duration::from_secs(60);
        let now = at(1000);
        let plain =
            CachedGrant::new(crate::fixtures::grant(serde_json::json!({}))).expect("projects");
        let suspended =
            CachedGrant::new(crate::fixtures::grant(serde_json::json!({"suspend": true})))
                .expect("projects");
        let due = Some((at(900), at(2000)));
        let deadline = Urgency::Renewal { deadline: at(1940) };
        assert_eq!(urgency(Some(&plain), due, now, p), deadline);
        assert_eq!(
            urgency(Some(&plain), Some((at(1100), at(2000))), now, p),
            Urgency::Arrival
        );
        assert_eq!(urgency(Some(&plain), None, now, p), Urgency::Arrival);
        assert_eq!(urgency(Some(&suspended), due, now, p), Urgency::Revoke);
        assert_eq!(urgency(None, due, now, p), Urgency::Arrival);
    }

    /// A policy change that ends a grant's admission is its revocation:
    /// ahead of every renewal. Any other is judged as any change.
    #[test]
    fn a_policy_change_that_refuses_a_grant_goes_first() {
        let due = Urgency::Renewal { deadline: at(1940) };
        assert_eq!(policy_urgency(due, Some(false)), Urgency::Revoke);
        assert_eq!(policy_urgency(due, Some(true)), due);
        assert_eq!(policy_urgency(due, None), due);
        assert_eq!(
            policy_urgency(Urgency::Arrival, Some(true)),
            Urgency::Arrival
        );
    }

    /// A grant ranks by the URL state on the Secret its spec names and
    /// it controls, else by its status: a Secret of the same name that
    /// another grant (uid) controls says nothing about it.
    #[tokio::test]
    async fn ranks_by_the_state_on_its_own_secret_only() {
        use k8s_openapi::api::core::v1::Secret;
        use kube::api::PartialObjectMeta;
        use watcher::Event;
        let (service, _server) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let mut ctx = crate::controller::secrets::tests::context(kube::Client::new(service, "ns"));
        let (secrets, mut writer) = crate::controller::cache::cache();
        ctx.secrets = secrets;
        let uid = "6f1c2b3a-1d2e-4f5a-9b8c-00000000123f";
        let secret = |name: &str, owner: &str| {
            let doc = serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": "ns", "uid": "s-uid",
                    "ownerReferences": [{"apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
                        "name": "g", "uid": owner, "controller": true}],
                    "annotations": {"grants.io/spec-hash": "h",
                        "grants.io/issued-at": "2026-12-07T10:00:00Z",
                        "grants.io/expires-at": "2026-12-07T12:00:00Z",
                        "grants.io/refresh-at": "2026-12-07T11:00:00Z",
                        "grants.io/url-fingerprint": "f"}}});
            let meta: PartialObjectMeta<Secret> = serde_json::from_value(doc).expect("fixture");
            crate::controller::managed::ManagedSecret::from(meta)
        };
        for e in [
            Event::Init,
            Event::InitApply(secret("g", "other-uid")),
            Event::InitApply(secret("s", uid)),
            Event::InitDone,
        ] {
            writer.apply(&e);
        }
        let t = |s: &str| SystemTime::from(s.parse::<jiff::Timestamp>().expect("a time"));
        let on_secret = Some((t("2026-12-07T11:00:00Z"), t("2026-12-07T12:00:00Z")));
        let on_status = Some((t("2026-12-07T11:30:00Z"), t("2026-12-07T13:00:00Z")));
        let cached = |spec: serde_json::Value| {
            CachedGrant::new(crate::fixtures::grant_with(serde_json::json!({
                "metadata": {"uid": uid},
                "spec": spec,
                "status": {"refreshAt": "2026-12-07T11:30:00Z", "expiresAt": "2026-12-07T13:00:00Z"},
            })))
            .expect("projects")
        };
        // "g" is another grant's: the status speaks.
        assert_eq!(renewal_of(&ctx, &cached(serde_json::json!({}))), on_status);
        assert_eq!(
            renewal_of(&ctx, &cached(serde_json::json!({"secret": {"name": "s"}}))),
            on_secret
        );
        assert_eq!(
            renewal_of(
                &ctx,
                &cached(serde_json::json!({"secret": {"name": "none"}}))
            ),
            on_status
        );
    }

    #[test]
    fn the_margin_covers_the_passes_running_at_the_bound() {
        assert_eq!(pace(4, 100).rate.renewals_per_second(), Some(50.0));
        assert_eq!(pace(4, 100).margin, MIN_MARGIN);
        assert_eq!(pace(16, 4).margin, Duration::from_secs(32));
        assert_eq!(pace(4, 0).rate.renewals_per_second(), None);
    }
}
