//! Renewals in order of expiry.
//!
//! When more renewals are due than the request bound serves at once (a
//! storm, or the backlog after an outage), kube-runtime hands the due grants
//! to reconciles in no particular order: they wait in a hash set. A URL with
//! a minute left could then wait behind thousands with an hour left. So a due
//! renewal first counts the due renewals, known to the Secret cache, whose
//! URLs expire before its own (a binary search in an index rebuilt every
//! quarter second); with more of them than twice the reconcile slots, it
//! steps aside for about as long as the bound needs to serve them and is
//! looked at again. Renewals then go out roughly in order of expiry,
//! and nothing changes while the operator keeps up. Work without a
//! deadline (first URLs, changed specs, renew requests) gives way to every
//! renewal that fell due lately, so no namespace's flood of it delays
//! another namespace's renewals.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use kube::runtime::reflector::Store;

use super::decide::Decision;
use super::managed::ManagedSecret;

/// A renewal costs two requests (its Secret and its status; bench/README.md):
/// the bound's renewals per second is its rate over this.
const REQUESTS_PER_RENEWAL: f64 = 2.0;
/// A renewal that steps aside is looked at again within these bounds.
const SHORTEST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// How old the index of due renewals may be. In a storm of thousands of
/// renewals, each deferral then costs a binary search, not a scan of every
/// Secret; and within this time the bound serves fewer renewals than there
/// are reconcile slots, so the staleness holds nobody back for long.
const REBUILD: Duration = Duration::from_millis(250);

/// How the operator serves renewals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Reconciles that run at once.
    pub slots: usize,
    /// Requests per second the client may start (None: no bound).
    pub qps: Option<u32>,
}

/// What a pass that signs is, as far as the order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A renewal that fell due: it goes in order of expiry.
    Due { expires_at: SystemTime },
    /// Work without a deadline: a first URL, a changed spec, a renew
    /// request. Nobody's URL runs out while it waits.
    Discretionary,
}

/// The turn of a pass that signs; None for any other decision.
pub fn turn(decision: &Decision, now: SystemTime) -> Option<Turn> {
    let Decision::Sign(plan) = decision else {
        return None;
    };
    let due = plan
        .current
        .as_ref()
        .filter(|c| plan.renewal && c.refresh_at.is_some_and(|at| at <= now));
    Some(match due {
        Some(current) => Turn::Due {
            expires_at: current.expires_at,
        },
        None => Turn::Discretionary,
    })
}

/// How long this pass steps aside for more urgent renewals: a due renewal
/// for those that expire before it, work without a deadline for every
/// renewal that fell due lately (`give_way`). So no namespace's renew
/// requests or new grants delay another namespace's renewal past its
/// expiry while the request bound could serve it, and due renewals go out
/// roughly in order of expiry, whoever holds them.
pub(super) fn step_aside(
    index: &DueIndex,
    secrets: &Store<ManagedSecret>,
    decision: &Decision,
    now: SystemTime,
) -> Option<Duration> {
    let turn = turn(decision, now)?;
    index.pace.qps?;
    let Turn::Due { expires_at } = turn else {
        return give_way(index.fresh(secrets, now), index.pace);
    };
    let ahead = index.ahead(secrets, now, expires_at);
    let wait = wait(ahead, index.pace)?;
    // Renewals that keep failing stay due; they must not hold this one back
    // until its URL no longer reaches pods in time.
    let last_call = expires_at.checked_sub(index.propagation + wait)?;
    (now < last_call).then_some(wait)
}

/// How long work without a deadline gives way to `due` renewals that fell
/// due lately (`FRESH`): about as long as the bound needs to serve them;
/// None when there are none. It waits for every one of them, not only for
/// more than the slots hold: kube-runtime picks the next reconcile from a
/// hash set, so a flood of such work would otherwise win most slots from
/// the last few due renewals.
pub fn give_way(due: usize, pace: Pace) -> Option<Duration> {
    if due == 0 {
        return None;
    }
    serving(due, pace)
}

/// How long a due renewal steps aside when `ahead` due renewals expire
/// before it; None: it goes now.
pub fn wait(ahead: usize, pace: Pace) -> Option<Duration> {
    // Twice the slots: the next renewals already wait their turn at the
    // bound, so no slot idles while the ones ahead finish.
    let queue = 2 * pace.slots.max(1);
    if ahead < queue {
        return None;
    }
    serving(ahead - queue, pace)
}

/// About how long the bound takes to serve `renewals`, within the wait's
/// bounds; None without a bound.
fn serving(renewals: usize, pace: Pace) -> Option<Duration> {
    let qps = f64::from(pace.qps?);
    if qps <= 0.0 {
        return None;
    }
    let seconds = renewals as f64 / (qps / REQUESTS_PER_RENEWAL);
    Some(Duration::from_secs_f64(seconds).clamp(SHORTEST_WAIT, LONGEST_WAIT))
}

/// Due renewals whose refresh came longer ago than this do not hold back
/// work without a deadline: a renewal that keeps failing stays due until
/// its URL expires (hours, maybe), and must not stop new grants and renew
/// requests for that long. A storm's backlog is served well within it.
const FRESH: Duration = Duration::from_secs(600);

/// The due renewals the Secret cache shows, as of a moment no older than
/// REBUILD: their expiry times and their refresh times, each sorted; and
/// how the operator serves them.
pub(super) struct DueIndex {
    built: Mutex<Option<(Instant, Due)>>,
    pace: Pace,
    /// How long a renewed URL may take to reach pods (`Settings`).
    propagation: Duration,
}

impl DueIndex {
    pub(super) fn new(pace: Pace, propagation: Duration) -> Self {
        DueIndex {
            built: Mutex::default(),
            pace,
            propagation,
        }
    }

    /// How many due renewals expire before `expires_at` (and after `now`).
    fn ahead(
        &self,
        secrets: &Store<ManagedSecret>,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> usize {
        self.with(secrets, now, |due| rank(&due.expiries, now, expires_at))
    }

    /// How many due renewals fell due within `FRESH` of `now`.
    fn fresh(&self, secrets: &Store<ManagedSecret>, now: SystemTime) -> usize {
        self.with(secrets, now, |due| due.fresh(now))
    }

    /// `f` of the index, rebuilt first when it is older than REBUILD.
    fn with<T>(&self, secrets: &Store<ManagedSecret>, now: SystemTime, f: impl Fn(&Due) -> T) -> T {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if built.as_ref().is_none_or(|(at, _)| at.elapsed() >= REBUILD) {
            let all = secrets.state();
            let times = all
                .iter()
                .filter_map(|s| s.state.as_ref().map(|st| (st.refresh_at, st.expires_at)));
            *built = Some((Instant::now(), Due::of(times, now)));
        }
        match built.as_ref() {
            Some((_, due)) => f(due),
            None => f(&Due::default()),
        }
    }
}

/// The due renewals at a moment: expiry and refresh times, each sorted.
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    pub expiries: Vec<SystemTime>,
    pub refreshes: Vec<SystemTime>,
}

impl Due {
    /// Those of `urls` (each a refresh and an expiry time) that are due at
    /// `now` and not expired.
    pub fn of<I>(urls: I, now: SystemTime) -> Self
    where
        I: IntoIterator<Item = (Option<SystemTime>, SystemTime)>,
    {
        let (mut refreshes, mut expiries): (Vec<_>, Vec<_>) = urls
            .into_iter()
            .filter_map(|(refresh_at, expiry)| {
                let at = refresh_at.filter(|at| *at <= now && now < expiry)?;
                Some((at, expiry))
            })
            .unzip();
        refreshes.sort_unstable();
        expiries.sort_unstable();
        Due {
            expiries,
            refreshes,
        }
    }

    /// How many fell due within `FRESH` of `now`.
    pub fn fresh(&self, now: SystemTime) -> usize {
        let since = now.checked_sub(FRESH).unwrap_or(SystemTime::UNIX_EPOCH);
        self.refreshes.len() - self.refreshes.partition_point(|r| *r < since)
    }
}

/// How many of the sorted `due` expire before `expires_at` and after `now`
/// (the index may be a moment old: URLs that expired since do not count).
pub fn rank(due: &[SystemTime], now: SystemTime, expires_at: SystemTime) -> usize {
    let expired = due.partition_point(|e| *e <= now);
    let sooner = due.partition_point(|e| *e < expires_at);
    sooner.saturating_sub(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace {
        slots: 16,
        qps: Some(100),
    };

    #[test]
    fn with_fewer_ahead_than_twice_the_slots_a_renewal_goes_now() {
        assert_eq!(wait(0, PACE), None);
        assert_eq!(wait(31, PACE), None);
    }

    #[test]
    fn a_renewal_behind_a_backlog_waits_about_as_long_as_the_bound_needs() {
        // 100 requests/s, 2 per renewal: 50 renewals a second.
        let w = wait(32 + 500, PACE).expect("waits");
        assert!((w.as_secs_f64() - 10.0).abs() < 0.01, "{w:?}");
        assert_eq!(wait(33, PACE), Some(SHORTEST_WAIT));
        assert_eq!(wait(100_000, PACE), Some(LONGEST_WAIT));
    }

    #[test]
    fn without_a_bound_nothing_waits() {
        let unbounded = Pace {
            slots: 16,
            qps: None,
        };
        assert_eq!(wait(100_000, unbounded), None);
    }

    #[test]
    fn only_due_renewals_that_expire_sooner_count() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let now = t(1000);
        let urls = vec![
            (Some(t(900)), t(1100)),  // due, expires sooner: ahead
            (Some(t(1000)), t(1199)), // due now, sooner: ahead
            (Some(t(900)), t(1200)),  // same expiry: not ahead
            (Some(t(900)), t(1300)),  // expires later
            (Some(t(1001)), t(1050)), // not due yet
            (None, t(1010)),          // never renewed
            (Some(t(500)), t(999)),   // expired already
        ];
        let due = Due::of(urls, now).expiries;
        assert_eq!(due, vec![t(1100), t(1199), t(1200), t(1300)]);
        assert_eq!(rank(&due, now, t(1200)), 2);
        // A moment later the index is not rebuilt yet: what expired since
        // no longer counts.
        assert_eq!(rank(&due, t(1150), t(1200)), 1);
        assert_eq!(rank(&due, now, t(1000)), 0);
    }

    #[test]
    fn only_a_renewal_that_fell_due_has_a_deadline() {
        use crate::controller::build::IssuedState;
        use crate::controller::decide::SignPlan;
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let state = |refresh_at| IssuedState {
            spec_hash: "h".into(),
            issued_at: t(0),
            expires_at: t(3600),
            refresh_at,
            fingerprint: "sha256:x".into(),
            renew_request: None,
            replaces: None,
        };
        let plan = |renewal, current| {
            Decision::Sign(Box::new(SignPlan {
                renewal,
                current,
                ..crate::fixtures::sign_plan()
            }))
        };
        let now = t(3000);
        let due = Turn::Due {
            expires_at: t(3600),
        };
        // (what, decision, turn)
        let cases = [
            (
                "due renewal",
                plan(true, Some(state(Some(t(2900))))),
                Some(due),
            ),
            (
                "renew request before refresh",
                plan(true, Some(state(Some(t(3100))))),
                Some(Turn::Discretionary),
            ),
            (
                "never renewed, renew request",
                plan(true, Some(state(None))),
                Some(Turn::Discretionary),
            ),
            ("first URL", plan(false, None), Some(Turn::Discretionary)),
            (
                "changed spec",
                plan(false, Some(state(Some(t(2900))))),
                Some(Turn::Discretionary),
            ),
            (
                "not signing",
                Decision::Conflict {
                    secret_name: "s".into(),
                },
                None,
            ),
        ];
        for (what, decision, expected) in cases {
            assert_eq!(turn(&decision, now), expected, "{what}");
        }
    }

    #[test]
    fn work_without_a_deadline_gives_way_to_every_fresh_due_renewal() {
        assert_eq!(give_way(0, PACE), None);
        // One due renewal is enough; at 50 renewals a second, 500 take 10 s.
        assert_eq!(give_way(1, PACE), Some(SHORTEST_WAIT));
        let w = give_way(500, PACE).expect("waits");
        assert!((w.as_secs_f64() - 10.0).abs() < 0.01, "{w:?}");
        let unbounded = Pace {
            slots: 16,
            qps: None,
        };
        assert_eq!(give_way(500, unbounded), None);
        // Only renewals that fell due lately count: one that keeps failing
        // stays due for hours.
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let now = t(10_000);
        let due = Due::of(
            vec![
                (Some(t(9_990)), t(10_100)),
                (Some(t(9_500)), t(10_200)),
                (Some(t(1_000)), t(20_000)),
            ],
            now,
        );
        assert_eq!(due.refreshes, vec![t(1_000), t(9_500), t(9_990)]);
        assert_eq!(due.fresh(now), 2);
    }
}
