//! The renewal forecast, made every few seconds from the Secret cache: the
//! least slack and the URLs at risk or overdue as metrics, and one Warning
//! event `RenewalAtRisk` on the grant of each URL newly forecast to miss its
//! deadline (`forecast`). It reads only what the cache keeps of a Secret:
//! its URL state, its namespace and name, and its controlling grant.
//!
//! Only URLs that are renewed count (a refresh time; `refreshPolicy: Never`
//! and URLs capped by `notAfter` are not). The Secret's times are whole
//! seconds (`build::format_time`), so a shortfall under `RESOLUTION` is
//! within their rounding: a grant whose `refreshBefore` equals the
//! propagation budget is due at its very deadline and renewed a moment
//! after it, every time, and that is not a risk worth a page.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;

use super::build::{IssuedState, format_time};
use super::cache::Cache;
use super::context::Context;
use super::events::{EventReason, Events, Note};
use super::forecast::{self, Rate, Renewal};
use super::managed::ManagedSecret;
use crate::api::UploadGrant;
use crate::api::duration::format_duration;
use crate::metrics::Metrics;

/// How often the forecast is made.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// The least shortfall, in seconds, that counts as a miss.
const RESOLUTION: f64 = 1.0;
/// At most this many `RenewalAtRisk` events a tick (2 a second): each is a
/// request under the bound the renewals wait for, and a storm that puts
/// thousands at risk must not add thousands of requests to it. The earliest
/// deadlines are reported first, the others on later ticks while still at
/// risk; the gauges count every one at once.
const EVENTS_PER_TICK: usize = 10;

/// The renewals a second the bound leaves once this task's own events have
/// taken their share (at most `EVENTS_PER_TICK` a tick): a forecast made at
/// the whole bound would see the shortfall its warnings cause only as its
/// last warnings come due, too late to send them.
fn renewal_rate(kube_api_qps: u32) -> Rate {
    let events = EVENTS_PER_TICK as f64 / INTERVAL.as_secs_f64();
    match kube_api_qps {
        0 => Rate::of_qps(0),
        qps => {
            Rate::per_second((f64::from(qps) - events).max(0.5) / forecast::REQUESTS_PER_RENEWAL)
                .unwrap_or(Rate::of_qps(qps))
        }
    }
}

/// Why a URL at risk cannot be reported on its grant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Secret {0} has no namespace")]
    NoNamespace(String),
    #[error("Secret {0} names no controlling UploadGrant")]
    NoGrant(String),
}

/// Runs the forecast on its own task until `shutdown`.
pub(super) fn spawn(ctx: &Context, shutdown: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(run(Forecaster::of(ctx), shutdown));
}

/// What the forecast reads and where it reports.
struct Forecaster {
    secrets: Cache<ManagedSecret>,
    events: Events,
    metrics: Arc<Metrics>,
    /// How long a renewed URL may take to reach pods (`Settings`).
    propagation: Duration,
    rate: Rate,
}

impl Forecaster {
    fn of(ctx: &Context) -> Self {
        Forecaster {
            secrets: ctx.secrets.clone(),
            events: ctx.events.clone(),
            metrics: ctx.metrics.clone(),
            propagation: ctx.settings.propagation_budget,
            rate: renewal_rate(ctx.settings.kube_api_qps),
        }
    }
}

/// Forecasts every `INTERVAL` until `shutdown`, then clears the gauges: a
/// replica that does not run the controller renews nothing.
async fn run(forecaster: Forecaster, shutdown: impl Future<Output = ()>) {
    let mut warned = Warned::default();
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticks.tick() => forecaster.tick(&mut warned, SystemTime::now()),
            () = &mut shutdown => break,
        }
    }
    forecaster.metrics.renewal_forecast(None, 0, 0);
}

impl Forecaster {
    fn tick(&self, warned: &mut Warned, now: SystemTime) {
        let secrets = self.secrets.state();
        let outlook = outlook(&secrets, now, self.propagation, self.rate);
        self.metrics
            .renewal_forecast(outlook.least_slack, outlook.at_risk.len(), outlook.overdue);
        warned.keep_only(&secrets);
        for (secret, state, shortfall) in to_report(outlook.at_risk, warned) {
            match regarding(secret) {
                Ok(grant) => self.events.publish_regarding(
                    grant,
                    note(state, shortfall, now, self.propagation, self.rate),
                ),
                Err(e) => tracing::warn!(error = %e, "renewal at risk not reported"),
            }
        }
    }
}

/// A URL at risk: its Secret, its state and its shortfall in seconds.
type AtRisk<'a> = (&'a ManagedSecret, &'a IssuedState, f64);

/// Those of `at_risk` (in the order served: earliest deadline first) to
/// report now: not reported before, at most `EVENTS_PER_TICK`. They count
/// as reported from here on.
fn to_report<'a>(at_risk: Vec<AtRisk<'a>>, warned: &mut Warned) -> Vec<AtRisk<'a>> {
    at_risk
        .into_iter()
        .filter(|(_, state, _)| warned.first(&state.fingerprint))
        .take(EVENTS_PER_TICK)
        .collect()
}

/// One forecast over the cache's URLs.
#[derive(Debug)]
struct Outlook<'a> {
    /// Seconds; None when no URL is renewed.
    least_slack: Option<f64>,
    /// Each URL forecast to miss by `RESOLUTION` or more, with its shortfall.
    at_risk: Vec<AtRisk<'a>>,
    /// URLs `RESOLUTION` or more past their deadline.
    overdue: usize,
}

fn outlook(
    secrets: &[Arc<ManagedSecret>],
    now: SystemTime,
    propagation: Duration,
    rate: Rate,
) -> Outlook<'_> {
    let renewed = |i: usize| {
        let secret = secrets.get(i)?;
        let state = secret.state.as_ref().filter(|s| s.refresh_at.is_some())?;
        Some((secret.as_ref(), state))
    };
    let mut ahead: Vec<Renewal<usize>> = (0..secrets.len())
        .filter_map(|i| {
            let (_, state) = renewed(i)?;
            Some(Renewal {
                key: i,
                eligible: state.refresh_at?,
                deadline: forecast::deadline(state.expires_at, propagation),
            })
        })
        .collect();
    let overdue = ahead
        .iter()
        .filter(|r| {
            now.duration_since(r.deadline)
                .is_ok_and(|past| past.as_secs_f64() >= RESOLUTION)
        })
        .count();
    let f = forecast::forecast(&mut ahead, now, rate);
    let at_risk = f
        .misses
        .iter()
        .filter(|m| m.shortfall >= RESOLUTION)
        .filter_map(|m| {
            let (secret, state) = renewed(m.key)?;
            Some((secret, state, m.shortfall))
        })
        .collect();
    Outlook {
        least_slack: f.least_slack,
        at_risk,
        overdue,
    }
}

/// The URLs already reported, by fingerprint: each gets one event.
#[derive(Debug, Default)]
struct Warned(HashSet<String>);

impl Warned {
    /// Forgets URLs no longer in the cache (renewed, or revoked).
    fn keep_only(&mut self, secrets: &[Arc<ManagedSecret>]) {
        if self.0.is_empty() {
            return;
        }
        let live: HashSet<&str> = secrets
            .iter()
            .filter_map(|s| s.state.as_ref())
            .map(|s| s.fingerprint.as_str())
            .collect();
        self.0.retain(|f| live.contains(f.as_str()));
    }

    /// Whether `fingerprint` is reported for the first time; it then is.
    fn first(&mut self, fingerprint: &str) -> bool {
        !self.0.contains(fingerprint) && self.0.insert(fingerprint.to_owned())
    }
}

/// The grant a Secret belongs to: its controller.
fn regarding(secret: &ManagedSecret) -> Result<ObjectReference, Error> {
    let name = secret.name_any();
    let namespace = secret
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let (Some(owner), Some(uid)) = (secret.owner_name(), secret.owner_uid()) else {
        return Err(Error::NoGrant(name));
    };
    Ok(ObjectReference {
        api_version: Some(UploadGrant::api_version(&()).into_owned()),
        kind: Some(UploadGrant::kind(&()).into_owned()),
        name: Some(owner.to_owned()),
        namespace: Some(namespace),
        uid: Some(uid),
        ..ObjectReference::default()
    })
}

/// What the event says: the URL by fingerprint, its deadline and the
/// shortfall, and what to do. Never the URL.
fn note(
    state: &IssuedState,
    shortfall: f64,
    now: SystemTime,
    propagation: Duration,
    rate: Rate,
) -> Note {
    let deadline = forecast::deadline(state.expires_at, propagation);
    let by = format_duration(Duration::from_secs_f64(shortfall.ceil().max(0.0)));
    let when = format!(
        "{} (its expiry less the {} propagation budget)",
        format_time(deadline),
        format_duration(propagation)
    );
    let text = if deadline <= now {
        format!(
            "URL {} was due for renewal by {when} and is {by} past it without a new URL: pods \
             that mount the Secret may read it after it expires; see the grant's Ready condition",
            state.fingerprint
        )
    } else {
        let pace = rate.renewals_per_second().map_or_else(
            || "no bound".to_owned(),
            |r| format!("{r} renewals a second"),
        );
        format!(
            "the renewal of URL {} is forecast to miss its deadline, {when}, by {by}: more \
             renewals are due before it than the request bound serves in time ({pace}); raise \
             --kube-api-qps or spread the grants' refreshBefore",
            state.fingerprint
        )
    };
    Note::new(EventReason::RenewalAtRisk, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forecast_leaves_the_warnings_their_share_of_the_bound() {
        let per_second = |qps| renewal_rate(qps).renewals_per_second();
        assert_eq!(per_second(0), None);
        for (qps, want) in [(100, 49.0), (10, 4.0), (1, 0.25)] {
            // A bound the warnings alone would fill still renews, slowly.
            let got = per_second(qps).unwrap_or_default();
            assert!((got - want).abs() < 1e-9, "{qps}: {got}");
        }
    }
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PartialObjectMeta;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    const BUDGET: Duration = Duration::from_secs(120);

    /// A Secret of grant `name` (controlled by it when `owned`) whose URL
    /// expires at `expires`, renewed from `refresh` (None: not renewed), as
    /// the cache takes it in from a watch.
    fn secret_of(
        name: &str,
        owned: bool,
        refresh: Option<u64>,
        expires: u64,
    ) -> Arc<ManagedSecret> {
        let time = |s| format_time(t(s));
        let mut annotations = serde_json::json!({
            "grants.io/spec-hash": "h",
            "grants.io/issued-at": time(0),
            "grants.io/expires-at": time(expires),
            "grants.io/url-fingerprint": format!("sha256:{name}"),
        });
        if let Some(refresh) = refresh {
            annotations["grants.io/refresh-at"] = time(refresh).into();
        }
        let owners = match owned {
            true => serde_json::json!([{
                "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "name": name,
                "uid": format!("{name}-uid"), "controller": true,
            }]),
            false => serde_json::json!([]),
        };
        let meta: PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": format!("{name}-secret"), "namespace": "team-a", "uid": format!("{name}-s"),
                "annotations": annotations, "ownerReferences": owners,
            },
        }))
        .expect("a Secret's metadata");
        Arc::new(ManagedSecret::from(meta))
    }

    fn secret(name: &str, refresh: Option<u64>, expires: u64) -> Arc<ManagedSecret> {
        secret_of(name, true, refresh, expires)
    }

    /// The grant of a URL at risk.
    fn grant_of(at_risk: &AtRisk) -> String {
        at_risk
            .0
            .owner_name()
            .map(str::to_owned)
            .unwrap_or_default()
    }

    fn grants<'a>(outlook: &Outlook<'a>) -> Vec<(String, f64)> {
        outlook.at_risk.iter().map(|r| (grant_of(r), r.2)).collect()
    }

    #[test]
    fn only_renewed_urls_are_forecast() {
        let now = t(10_000);
        let secrets = vec![
            // Never renewed: expires within the budget, by design.
            secret("never", None, 10_030),
            // Due, deadline in 58 s.
            secret("due", Some(9_990), 10_180),
            // Not due for an hour.
            secret("later", Some(13_600), 14_800),
        ];
        let o = outlook(&secrets, now, BUDGET, Rate::of_qps(100));
        let least = o.least_slack.expect("renewed URLs");
        assert!((least - 59.98).abs() < 1e-6, "{least}");
        assert!(o.at_risk.is_empty());
        assert_eq!(o.overdue, 0);

        let none = outlook(&secrets[..1], now, BUDGET, Rate::of_qps(100));
        assert_eq!(none.least_slack, None);
    }

    #[test]
    fn a_backlog_the_bound_cannot_serve_puts_the_latest_deadlines_at_risk() {
        let now = t(10_000);
        // --kube-api-qps 1: a renewal every 2 s. Four due, deadlines 2, 3,
        // 5 and 9 s away: served in that order, they finish at 2, 4, 6 and
        // 8 s, so the second and the third miss by 1 s each.
        let secrets: Vec<_> = [("d", 9), ("c", 5), ("a", 2), ("b", 3)]
            .iter()
            .map(|(name, deadline)| secret(name, Some(9_000), 10_120 + deadline))
            .collect();
        let o = outlook(&secrets, now, BUDGET, Rate::of_qps(1));
        let at_risk = grants(&o);
        assert_eq!(at_risk, [("b".to_owned(), 1.0), ("c".to_owned(), 1.0)]);
        let least = o.least_slack.expect("renewed URLs");
        assert!((least + 1.0).abs() < 1e-6, "{least}");
        assert_eq!(o.overdue, 0);
        // Without the bound every deadline is met.
        let free = outlook(&secrets, now, BUDGET, Rate::UNBOUNDED);
        assert!(free.at_risk.is_empty());
    }

    #[test]
    fn a_shortfall_within_the_times_rounding_is_no_risk_and_a_past_deadline_is_overdue() {
        let now = t(10_000);
        let secrets = vec![
            // refreshBefore == the budget: due at its deadline, which is now.
            secret("edge", Some(10_000), 10_120),
            // 30 s past its deadline, not renewed.
            secret("stuck", Some(9_000), 10_090),
        ];
        let o = outlook(&secrets, now, BUDGET, Rate::of_qps(100));
        assert_eq!(grants(&o).len(), 1);
        assert_eq!(grants(&o)[0].0, "stuck");
        assert!(o.at_risk[0].2 >= 30.0);
        assert_eq!(o.overdue, 1);
        let least = o.least_slack.expect("renewed URLs");
        assert!(least < -30.0, "{least}");
    }

    #[test]
    fn a_storm_is_reported_a_few_urls_a_tick_earliest_deadline_first() {
        let now = t(10_000);
        // 25 due together, deadlines 1 s apart from 2 s away, a renewal
        // every 2 s: all but the first miss.
        let secrets: Vec<_> = (0..25)
            .rev()
            .map(|i| secret(&format!("g{i:02}"), Some(9_000), 10_122 + i))
            .collect();
        let o = outlook(&secrets, now, BUDGET, Rate::of_qps(1));
        assert_eq!(o.at_risk.len(), 24);
        let mut warned = Warned::default();
        let names = |batch: Vec<AtRisk>| -> Vec<String> { batch.iter().map(grant_of).collect() };
        let first = names(to_report(o.at_risk, &mut warned));
        assert_eq!(first.len(), EVENTS_PER_TICK);
        assert_eq!(first.first().map(String::as_str), Some("g01"));
        let again = outlook(&secrets, now, BUDGET, Rate::of_qps(1));
        let second = names(to_report(again.at_risk, &mut warned));
        assert_eq!(second.first().map(String::as_str), Some("g11"));
        let third = outlook(&secrets, now, BUDGET, Rate::of_qps(1));
        assert_eq!(to_report(third.at_risk, &mut warned).len(), 4);
        let fourth = outlook(&secrets, now, BUDGET, Rate::of_qps(1));
        assert!(to_report(fourth.at_risk, &mut warned).is_empty());
    }

    #[test]
    fn each_url_is_reported_once_until_it_leaves_the_cache() {
        let mut warned = Warned::default();
        let first = vec![secret("a", Some(1), 100), secret("b", Some(1), 100)];
        assert!(warned.first("sha256:a"));
        assert!(!warned.first("sha256:a"));
        warned.keep_only(&first);
        assert!(!warned.first("sha256:a"), "still in the cache");
        // a was renewed: its new URL has a new fingerprint.
        let renewed = vec![secret("b", Some(1), 100)];
        warned.keep_only(&renewed);
        assert!(warned.0.is_empty());
        assert!(warned.first("sha256:a"));
    }

    #[test]
    fn the_event_names_the_grant_the_fingerprint_and_the_shortfall_only() {
        let s = secret("nightly", Some(9_000), 10_200);
        let grant = regarding(&s).expect("a controller");
        assert_eq!(grant.name.as_deref(), Some("nightly"));
        assert_eq!(grant.namespace.as_deref(), Some("team-a"));
        assert_eq!(grant.uid.as_deref(), Some("nightly-uid"));
        assert_eq!(grant.kind.as_deref(), Some("UploadGrant"));
        let state = s.state.as_ref().expect("state");

        let ahead = note(state, 41.2, t(10_000), BUDGET, Rate::of_qps(100));
        assert_eq!(ahead.reason, EventReason::RenewalAtRisk);
        assert_eq!(
            ahead.text,
            "the renewal of URL sha256:nightly is forecast to miss its deadline, \
             1970-01-01T02:48:00Z (its expiry less the 2m0s propagation budget), by 42s: more \
             renewals are due before it than the request bound serves in time (50 renewals a \
             second); raise --kube-api-qps or spread the grants' refreshBefore"
        );
        let past = note(state, 100.0, t(10_180), BUDGET, Rate::of_qps(100));
        assert!(
            past.text.starts_with(
                "URL sha256:nightly was due for renewal by 1970-01-01T02:48:00Z (its expiry less \
                 the 2m0s propagation budget) and is 1m40s past it"
            ),
            "{}",
            past.text
        );

        let orphan = secret_of("orphan", false, Some(9_000), 10_200);
        assert!(matches!(regarding(&orphan), Err(Error::NoGrant(_))));
    }
}
