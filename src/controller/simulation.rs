//! The dispatch queue (`queue`) in virtual time, against the request bound
//! as a single server: no cluster, every deadline checked.
//!
//! A renewal costs the bound two requests and a first URL three
//! (bench/README.md), so at `--kube-api-qps` q the server does q/2
//! renewals a second. A pass that renews a URL misses when it ends after
//! the old URL's deadline (its expiry less the propagation budget).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::forecast::{self, Rate, Renewal};
use super::queue::{Pace, Queue, Urgency};

const PROPAGATION: Duration = Duration::from_secs(60);
/// Passes per second the bound serves (a renewal is one pass; a first URL
/// one and a half): `--kube-api-qps` 100.
const RATE: f64 = 50.0;
const FIRST_URL_COST: f64 = 1.5;
/// How often the forecast is read, and how far ahead it looks.
const FORECAST_EVERY: f64 = 30.0;
const FORECAST_HORIZON: f64 = 600.0;

/// One grant as the simulation keeps it.
#[derive(Debug, Clone)]
struct Grant {
    created: f64,
    ttl: f64,
    refresh_before: f64,
    /// The current URL: when it expires and when it is renewed.
    expires: Option<f64>,
    refresh: Option<f64>,
}

#[derive(Debug, Default)]
struct Outcome {
    renewed: usize,
    issued: usize,
    /// Renewals that ended after their deadline: grant and deadline.
    missed: Vec<(u32, f64)>,
    /// When each grant was first forecast to miss.
    forecast: HashMap<u32, f64>,
}

fn time(t: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0))
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The production forecast (`forecast`) of the renewals falling due before
/// `horizon`: the grants it says will miss.
fn forecast_misses(grants: &[Grant], now: f64, horizon: f64) -> Vec<u32> {
    let mut ahead: Vec<Renewal<u32>> = grants
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let refresh = g.refresh.filter(|r| *r <= horizon)?;
            Some(Renewal {
                key: i as u32,
                eligible: time(refresh),
                deadline: time(deadline(g)?),
            })
        })
        .collect();
    let f = forecast::forecast(&mut ahead, time(now), rate());
    f.misses.into_iter().map(|m| m.key).collect()
}

fn rate() -> Rate {
    Rate::per_second(RATE).unwrap_or(Rate::UNBOUNDED)
}

fn deadline(g: &Grant) -> Option<f64> {
    g.expires.map(|e| e - PROPAGATION.as_secs_f64())
}

/// How the operator classifies a grant when it wakes: a due renewal by its
/// deadline, anything else by arrival.
fn urgency(g: &Grant, now: f64) -> Urgency {
    match (g.refresh, deadline(g)) {
        (Some(r), Some(d)) if r <= now => Urgency::Renewal { deadline: time(d) },
        _ => Urgency::Arrival,
    }
}

/// Runs `grants` (sorted by creation) until `until`, serving one pass at a
/// time at `RATE`. The forecast is read whenever a renewal falls due.
fn simulate(grants: &mut [Grant], until: f64) -> Outcome {
    let mut queue: Queue<u32> = Queue::new(Pace {
        rate: rate(),
        margin: Duration::from_secs(10),
    });
    let mut out = Outcome::default();
    let (mut now, mut next_arrival, mut next_forecast) = (0.0_f64, 0_usize, 0.0_f64);
    for (i, g) in grants.iter().enumerate() {
        if let (Some(r), Some(_)) = (g.refresh, g.expires) {
            queue.wake_at(&(i as u32), Some(time(r)), deadline(g).map(time));
        }
    }
    loop {
        while next_arrival < grants.len() && grants[next_arrival].created <= now {
            if grants[next_arrival].expires.is_none() {
                queue.wake(&(next_arrival as u32), Urgency::Arrival, time(now));
            }
            next_arrival += 1;
        }
        if now >= next_forecast {
            for key in forecast_misses(grants, now, now + FORECAST_HORIZON) {
                out.forecast.entry(key).or_insert(now);
            }
            next_forecast = now + FORECAST_EVERY;
        }
        let popped = queue.pop(time(now), |&i| urgency(&grants[i as usize], now));
        let Some(i) = popped else {
            let arrival = grants.get(next_arrival).map(|g| g.created);
            let timer = queue.next_timer().map(secs);
            match [arrival, timer].into_iter().flatten().reduce(f64::min) {
                Some(next) if next <= until => now = next.max(now),
                _ => return out,
            }
            continue;
        };
        let g = &mut grants[i as usize];
        let renewal = g.expires.is_some();
        now += if renewal { 1.0 } else { FIRST_URL_COST } / RATE;
        if renewal {
            out.renewed += 1;
            if let Some(d) = deadline(g).filter(|d| now > *d) {
                out.missed.push((i, d));
            }
        } else {
            out.issued += 1;
        }
        g.expires = Some(now + g.ttl);
        g.refresh = Some(now + g.ttl - g.refresh_before);
        queue.wake_at(&i, g.refresh.map(time), deadline(g).map(time));
        queue.done(&i, time(now));
    }
}

/// Earliest-deadline-first over renewals alone, each released at its refresh
/// time: the misses no order can avoid (for unit jobs on one server, EDF is
/// optimal).
fn unavoidable(jobs: &[(f64, f64, u32)]) -> Vec<u32> {
    let mut jobs = jobs.to_vec();
    jobs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ready = std::collections::BinaryHeap::new();
    let (mut now, mut next, mut missed) = (0.0_f64, 0, Vec::new());
    while next < jobs.len() || !ready.is_empty() {
        while next < jobs.len() && jobs[next].0 <= now {
            let (_, d, i) = jobs[next];
            ready.push(std::cmp::Reverse((ordered(d), i)));
            next += 1;
        }
        match ready.pop() {
            Some(std::cmp::Reverse((d, i))) => {
                now += 1.0 / RATE;
                if now > d.0 {
                    missed.push(i);
                }
            }
            None => now = jobs[next].0,
        }
    }
    missed.sort_unstable();
    missed
}

/// An f64 that orders (the simulation's times are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f64);
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
fn ordered(x: f64) -> Ordered {
    Ordered(x)
}

/// 100,000 grants created in a burst, with ttls from 15 minutes to 12
/// hours and jittered refresh times, over six virtual hours: the load fits
/// the bound, and no renewal misses while the first URLs are still being
/// issued around them.
#[test]
fn a_feasible_load_of_100000_grants_misses_no_deadline() {
    let mut rng = StdRng::seed_from_u64(7);
    let ttls = [(900.0, 5), (3600.0, 20), (21600.0, 40), (43200.0, 35)];
    let mut grants: Vec<Grant> = (0..100_000)
        .map(|n| {
            let pick = rng.random_range(0..100);
            let mut acc = 0;
            let ttl = ttls
                .iter()
                .find(|(_, w)| {
                    acc += w;
                    pick < acc
                })
                .map_or(3600.0, |(t, _)| *t);
            let window = ttl / 3.0;
            Grant {
                created: f64::from(n / 2000),
                ttl,
                refresh_before: window + rng.random_range(0.0..window / 10.0),
                expires: None,
                refresh: None,
            }
        })
        .collect();
    let out = simulate(&mut grants, 6.0 * 3600.0);
    assert_eq!(out.issued, 100_000);
    assert!(out.renewed > 50_000, "renewed only {}", out.renewed);
    assert_eq!(out.missed, [], "deadline misses with a feasible load");
    assert!(out.forecast.is_empty(), "nothing was at risk");
}

/// 10,000 URLs due within a minute whose deadlines the bound cannot all
/// meet, with 1,000 new grants arriving in the storm: exactly the renewals
/// EDF cannot save miss, and each was forecast before its deadline.
#[test]
fn an_overload_misses_only_what_edf_cannot_avoid_and_forecasts_each() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut grants: Vec<Grant> = (0..10_000)
        .map(|_| {
            let refresh = 100.0 + rng.random_range(0.0..60.0);
            let expires = refresh + PROPAGATION.as_secs_f64() + rng.random_range(30.0..150.0);
            Grant {
                created: 0.0,
                ttl: 3600.0,
                refresh_before: 1200.0,
                expires: Some(expires),
                refresh: Some(refresh),
            }
        })
        .collect();
    grants.extend((0..1000).map(|n| Grant {
        created: 100.0 + f64::from(n) / 100.0,
        ttl: 3600.0,
        refresh_before: 1200.0,
        expires: None,
        refresh: None,
    }));
    let jobs: Vec<(f64, f64, u32)> = grants
        .iter()
        .enumerate()
        .filter_map(|(i, g)| Some((g.refresh?, deadline(g)?, i as u32)))
        .collect();
    let expected = unavoidable(&jobs);
    assert!(
        expected.len() > 1000,
        "the storm must overload: {}",
        expected.len()
    );
    let out = simulate(&mut grants, 1000.0);
    let mut missed: Vec<u32> = out.missed.iter().map(|(i, _)| *i).collect();
    missed.sort_unstable();
    assert_eq!(missed.len(), expected.len());
    assert_eq!(missed, expected);
    for (i, deadline) in &out.missed {
        let forecast = out.forecast.get(i).copied();
        assert!(
            forecast.is_some_and(|f| f < *deadline),
            "miss of {i} (deadline {deadline}) forecast at {forecast:?}"
        );
    }
    assert_eq!(
        out.issued, 1000,
        "the new grants were served after the storm"
    );
}
