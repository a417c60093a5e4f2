//! Renewals in order of expiry.
//!
//! When more renewals are due than the request bound serves at once (a
//! storm, or the backlog after an outage), kube-runtime hands the due grants
//! to reconciles in no particular order: they wait in a hash set. A URL with
//! a minute left could then wait behind thousands with an hour left. So a due
//! renewal first counts the due renewals, known to the Secret cache, whose
//! URLs expire before its own; with more of them than there are reconcile
//! slots, it steps aside for about as long as the bound needs to serve them
//! and is looked at again. Renewals then go out roughly in order of expiry,
//! and nothing changes while the operator keeps up.

use std::time::{Duration, SystemTime};

use super::Context;
use super::decide::Decision;

/// A renewal costs about this many requests (Secret, status, and an Event
/// or a retry): the bound's renewals per second is its rate over this.
const REQUESTS_PER_RENEWAL: f64 = 3.0;
/// A renewal that steps aside is looked at again within these bounds.
const SHORTEST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// How the operator serves renewals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Reconciles that run at once.
    pub slots: usize,
    /// Requests per second the client may start (None: no bound).
    pub qps: Option<u32>,
}

/// How long this pass's renewal, if it is one that fell due (not a first
/// URL, a changed spec or a renew request), steps aside for more urgent ones.
pub(super) fn step_aside(ctx: &Context, decision: &Decision, now: SystemTime) -> Option<Duration> {
    let Decision::Sign(plan) = decision else {
        return None;
    };
    let current = plan.current.as_ref().filter(|_| plan.renewal)?;
    if current.refresh_at.is_none_or(|at| at > now) {
        return None;
    }
    let pace = Pace {
        slots: usize::from(ctx.settings.concurrency),
        qps: Some(ctx.settings.kube_api_qps).filter(|&q| q > 0),
    };
    pace.qps?;
    let due = ctx.secrets.state();
    let times = due
        .iter()
        .filter_map(|s| s.state.as_ref().map(|st| (st.refresh_at, st.expires_at)));
    let wait = wait(ahead(times, now, current.expires_at), pace)?;
    // Renewals that keep failing stay due; they must not hold this one back
    // until its URL no longer reaches pods in time.
    let last_call = current
        .expires_at
        .checked_sub(ctx.settings.propagation_budget + wait)?;
    (now < last_call).then_some(wait)
}

/// How long a due renewal steps aside when `ahead` due renewals expire
/// before it; None: it goes now.
pub fn wait(ahead: usize, pace: Pace) -> Option<Duration> {
    let qps = f64::from(pace.qps?);
    if ahead < pace.slots.max(1) || qps <= 0.0 {
        return None;
    }
    let per_second = qps / REQUESTS_PER_RENEWAL;
    let seconds = (ahead - pace.slots) as f64 / per_second;
    Some(Duration::from_secs_f64(seconds).clamp(SHORTEST_WAIT, LONGEST_WAIT))
}

/// How many of `due` (each a URL's refresh and expiry time) are due at `now`
/// and expire before `expires_at` (but after `now`: an expired URL is not
/// renewed).
pub fn ahead<I>(due: I, now: SystemTime, expires_at: SystemTime) -> usize
where
    I: IntoIterator<Item = (Option<SystemTime>, SystemTime)>,
{
    due.into_iter()
        .filter(|(refresh_at, expiry)| {
            refresh_at.is_some_and(|at| at <= now) && now < *expiry && *expiry < expires_at
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace {
        slots: 16,
        qps: Some(100),
    };

    #[test]
    fn with_fewer_ahead_than_slots_a_renewal_goes_now() {
        assert_eq!(wait(0, PACE), None);
        assert_eq!(wait(15, PACE), None);
    }

    #[test]
    fn a_renewal_behind_a_backlog_waits_about_as_long_as_the_bound_needs() {
        // 100 requests/s, 3 per renewal: 33 renewals a second.
        let w = wait(16 + 330, PACE).expect("waits");
        assert!((w.as_secs_f64() - 9.9).abs() < 0.01, "{w:?}");
        assert_eq!(wait(17, PACE), Some(SHORTEST_WAIT));
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
        let due = vec![
            (Some(t(900)), t(1100)),  // due, expires sooner: ahead
            (Some(t(1000)), t(1199)), // due now, sooner: ahead
            (Some(t(900)), t(1200)),  // same expiry: not ahead
            (Some(t(900)), t(1300)),  // expires later
            (Some(t(1001)), t(1050)), // not due yet
            (None, t(1010)),          // never renewed
            (Some(t(500)), t(999)),   // expired already
        ];
        assert_eq!(ahead(due, now, t(1200)), 2);
    }
}
