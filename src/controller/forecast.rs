//! Will the renewals ahead meet their deadlines? A forecast, pure and
//! in plain terms (times and caller-chosen keys), so the metrics task, a
//! dispatcher and a simulation in virtual time can all ask it.
//!
//! A renewal becomes eligible at its URL's refresh time, and its deadline
//! is the URL's expiry less the propagation budget: the last moment a new
//! URL still reaches pods that mount the Secret in time. The request bound
//! serves renewals one after another at `Rate` (two requests each). The
//! forecast serves them earliest deadline first from `now`: whenever the
//! bound is free, the eligible renewal with the earliest deadline goes next
//! and finishes one service time later; when none is eligible, the bound
//! waits for the next. A renewal's slack is its deadline less its finish.
//! That is the order the operator dispatches renewals in (`queue`), and
//! for renewals due together, all taking the same time, it meets every
//! deadline whenever any order can: a negative slack here is a miss unless
//! the load or the bound changes.
//!
//! O(n log n): one sort of the input in place and one heap of indices.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

/// A renewal costs two requests (its Secret and its status; bench/README.md):
/// the bound's renewals per second is its rate over this.
pub const REQUESTS_PER_RENEWAL: f64 = 2.0;

/// One renewal ahead. `key` tells it apart for the caller (an index, a
/// grant's key); the forecast never looks at it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Renewal<K> {
    pub key: K,
    /// When it may start: the URL's refresh time.
    pub eligible: SystemTime,
    /// When it must be done by (`deadline`).
    pub deadline: SystemTime,
}

/// A renewal's deadline: the URL's expiry less the propagation budget
/// (`Settings::propagation_budget`).
pub fn deadline(expires_at: SystemTime, propagation: Duration) -> SystemTime {
    expires_at
        .checked_sub(propagation)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// How fast the request bound serves renewals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Seconds one renewal holds the bound; 0 without a bound.
    service: f64,
}

impl Rate {
    /// No bound: every renewal finishes as soon as it is eligible.
    pub const UNBOUNDED: Rate = Rate { service: 0.0 };

    /// `renewals` a second; None unless it is positive and finite.
    pub fn per_second(renewals: f64) -> Option<Rate> {
        (renewals.is_finite() && renewals > 0.0).then(|| Rate {
            service: 1.0 / renewals,
        })
    }

    /// The rate of `--kube-api-qps` (0: no bound), two requests a renewal.
    pub fn of_qps(kube_api_qps: u32) -> Rate {
        Rate::per_second(f64::from(kube_api_qps) / REQUESTS_PER_RENEWAL).unwrap_or(Rate::UNBOUNDED)
    }

    /// Renewals a second; None without a bound.
    pub fn renewals_per_second(self) -> Option<f64> {
        (self.service > 0.0).then(|| 1.0 / self.service)
    }
}

/// A renewal forecast to finish after its deadline, by `shortfall` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Miss<K> {
    pub key: K,
    pub shortfall: f64,
}

/// What the forecast found.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast<K> {
    /// The least slack over all renewals, in seconds (negative: a miss);
    /// None when there are none.
    pub least_slack: Option<f64>,
    /// The renewals forecast to miss their deadline, in the order served.
    pub misses: Vec<Miss<K>>,
}

/// The least slack of `renewals` served earliest deadline first from `now`
/// at `rate`, and those forecast to miss. Reorders `renewals` (by
/// eligibility).
pub fn forecast<K: Clone>(renewals: &mut [Renewal<K>], now: SystemTime, rate: Rate) -> Forecast<K> {
    let mut least_slack: Option<f64> = None;
    let mut misses = Vec::new();
    serve(renewals, now, rate, |renewal, slack| {
        least_slack = Some(least_slack.map_or(slack, |least| least.min(slack)));
        if slack < 0.0 {
            misses.push(Miss {
                key: renewal.key.clone(),
                shortfall: -slack,
            });
        }
    });
    Forecast {
        least_slack,
        misses,
    }
}

/// Serves `renewals` earliest deadline first from `now` at `rate`, and
/// calls `served` with each renewal and its slack in seconds, in the order
/// served. Reorders `renewals` (by eligibility).
pub fn serve<K>(
    renewals: &mut [Renewal<K>],
    now: SystemTime,
    rate: Rate,
    served: impl FnMut(&Renewal<K>, f64),
) {
    serve_while(renewals, now, rate, false, served);
}

/// `serve`, up to the first moment the bound would idle: the renewals whose
/// slack work started now would take from (later ones absorb it in the
/// idle time). What the dispatch queue weighs other work against.
pub fn serve_busy_period<K>(
    renewals: &mut [Renewal<K>],
    now: SystemTime,
    rate: Rate,
    served: impl FnMut(&Renewal<K>, f64),
) {
    serve_while(renewals, now, rate, true, served);
}

fn serve_while<K>(
    renewals: &mut [Renewal<K>],
    now: SystemTime,
    rate: Rate,
    stop_when_idle: bool,
    mut served: impl FnMut(&Renewal<K>, f64),
) {
    renewals.sort_unstable_by_key(|r| r.eligible);
    // Eligible renewals by deadline, then by position (a stable order).
    let mut ready: BinaryHeap<Reverse<(SystemTime, usize)>> =
        BinaryHeap::with_capacity(renewals.len());
    let mut next = 0;
    // The bound has been busy since `busy_from` seconds after `now`, and
    // has served `served_since` renewals since (a product, not a running
    // sum: 100,000 additions of 0.02 s would drift).
    let (mut busy_from, mut served_since) = (0.0_f64, 0_u32);
    let free = |busy_from: f64, n: u32| busy_from + f64::from(n) * rate.service;
    while next < renewals.len() || !ready.is_empty() {
        let at = free(busy_from, served_since);
        while let Some(r) = renewals
            .get(next)
            .filter(|r| seconds(r.eligible, now) <= at)
        {
            ready.push(Reverse((r.deadline, next)));
            next += 1;
        }
        let Some(Reverse((_, i))) = ready.pop() else {
            if stop_when_idle {
                return;
            }
            // Nothing eligible yet: the bound idles until the next one is.
            if let Some(r) = renewals.get(next) {
                (busy_from, served_since) = (seconds(r.eligible, now), 0);
            }
            continue;
        };
        let renewal = &renewals[i];
        served_since = served_since.saturating_add(1);
        served(
            renewal,
            seconds(renewal.deadline, now) - free(busy_from, served_since),
        );
    }
}

/// Seconds from `now` to `t`, negative when `t` is earlier.
pub fn seconds(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    /// Renewals named by letter: (eligible, deadline) in seconds.
    fn renewals(spec: &[(char, u64, u64)]) -> Vec<Renewal<char>> {
        spec.iter()
            .map(|&(key, eligible, deadline)| Renewal {
                key,
                eligible: t(eligible),
                deadline: t(deadline),
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn the_rate_is_the_bound_over_two_requests_a_renewal() {
        assert_eq!(Rate::of_qps(100).renewals_per_second(), Some(50.0));
        assert_eq!(Rate::of_qps(1).renewals_per_second(), Some(0.5));
        assert_eq!(Rate::of_qps(0), Rate::UNBOUNDED);
        assert_eq!(Rate::UNBOUNDED.renewals_per_second(), None);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Rate::per_second(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_deadline_is_the_expiry_less_the_propagation_budget() {
        assert_eq!(deadline(t(3600), Duration::from_secs(120)), t(3480));
        assert!(deadline(t(60), Duration::from_secs(120)) < t(0));
    }

    /// Table: (what, renewals, rate in renewals a second, least slack,
    /// misses with their shortfall), all from now = t(1000).
    #[test]
    fn slack_and_misses_under_earliest_deadline_first() {
        let one_a_second = Rate::per_second(1.0);
        type Case<'a> = (
            &'a str,
            Vec<Renewal<char>>,
            Option<Rate>,
            Option<f64>,
            Vec<(char, f64)>,
        );
        let cases: Vec<Case> = vec![
            ("nothing ahead", vec![], one_a_second, None, vec![]),
            (
                "one due now, plenty of time",
                renewals(&[('a', 900, 1100)]),
                one_a_second,
                Some(99.0),
                vec![],
            ),
            (
                "a backlog served in deadline order: the last misses",
                renewals(&[('c', 990, 1002), ('a', 999, 1001), ('b', 950, 1002)]),
                one_a_second,
                Some(-1.0),
                vec![('c', 1.0)],
            ),
            (
                "not eligible yet: served at its refresh time",
                renewals(&[('a', 1050, 1060)]),
                one_a_second,
                Some(9.0),
                vec![],
            ),
            (
                // A later deadline that is eligible first is served while
                // the bound waits for the earlier one.
                "the bound does not idle for work that is not due",
                renewals(&[('a', 1005, 1006), ('b', 1000, 1004), ('c', 1000, 1005)]),
                one_a_second,
                Some(0.0),
                vec![],
            ),
            (
                "a deadline already past",
                renewals(&[('a', 800, 990), ('b', 800, 2000)]),
                one_a_second,
                Some(-11.0),
                vec![('a', 11.0)],
            ),
            (
                "without a bound only a past deadline misses",
                renewals(&[('a', 800, 990), ('b', 1000, 1000), ('c', 1500, 1600)]),
                Some(Rate::UNBOUNDED),
                Some(-10.0),
                vec![('a', 10.0)],
            ),
        ];
        for (what, mut ahead, rate, least, misses) in cases {
            let rate = rate.expect("a rate");
            let f = forecast(&mut ahead, t(1000), rate);
            match (f.least_slack, least) {
                (Some(got), Some(want)) => assert!(close(got, want), "{what}: {got} != {want}"),
                (got, want) => assert_eq!(got, want, "{what}"),
            }
            let got: Vec<(char, f64)> = f.misses.iter().map(|m| (m.key, m.shortfall)).collect();
            assert_eq!(got.len(), misses.len(), "{what}: {got:?}");
            for ((k, s), (wk, ws)) in got.iter().zip(&misses) {
                assert!(k == wk && close(*s, *ws), "{what}: {got:?} != {misses:?}");
            }
        }
    }

    /// A storm: 10,000 due together, served at 50 a second (--kube-api-qps
    /// 100), the i-th by deadline finishing at 0.02 (i + 1) s. Deadlines
    /// 1 s + 20 ms i away are all met, with 0.98 s to spare; deadlines
    /// 1 s + 10 ms i away are met by the first 99 only.
    #[test]
    fn a_storm_misses_only_what_the_bound_cannot_serve() {
        let storm = |step_ms: u64| -> Vec<Renewal<u32>> {
            (0..10_000u32)
                .rev()
                .map(|i| Renewal {
                    key: i,
                    eligible: t(900) + Duration::from_millis(u64::from(i)),
                    deadline: t(1001) + Duration::from_millis(step_ms * u64::from(i)),
                })
                .collect()
        };
        let rate = Rate::of_qps(100);
        let feasible = forecast(&mut storm(20), t(1000), rate);
        assert!(feasible.misses.is_empty());
        let least = feasible.least_slack.expect("renewals ahead");
        assert!(close(least, 0.98), "{least}");

        let tight = forecast(&mut storm(10), t(1000), rate);
        let missed: Vec<u32> = tight.misses.iter().map(|m| m.key).collect();
        assert_eq!(missed, (99..10_000).collect::<Vec<_>>());
        assert!(close(tight.misses[0].shortfall, 0.01));
        let worst = tight.least_slack.expect("renewals ahead");
        assert!(close(worst, 0.98 - 99.99), "{worst}");
    }

    #[test]
    fn ties_in_deadline_miss_once() {
        let mut ahead = renewals(&[('a', 1000, 1001), ('b', 1000, 1001)]);
        let f = forecast(&mut ahead, t(1000), Rate::UNBOUNDED);
        assert!(f.misses.is_empty());
        let f = forecast(&mut ahead, t(1000), Rate::of_qps(2));
        assert_eq!(f.misses.len(), 1);
        assert!(close(f.misses[0].shortfall, 1.0));
    }

    #[test]
    fn keys_are_reported_as_given() {
        let mut ahead = vec![Renewal {
            key: ("ns", 7u64),
            eligible: t(0),
            deadline: t(0),
        }];
        let f = forecast(&mut ahead, t(10), Rate::UNBOUNDED);
        assert_eq!(f.misses[0].key, ("ns", 7));
        assert!(close(f.misses[0].shortfall, 10.0));
    }
}
