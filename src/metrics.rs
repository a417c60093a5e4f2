//! Prometheus metrics. Labels are bounded sets (reasons, categories,
//! results): never a grant name, a key or a URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::Reason;
use crate::signing::CredentialSnapshot;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// What the gauges derive from a grant: its last Ready reason, its URL's
/// expiry, and since when it has been failing (`failing`). The times are
/// whole Unix seconds, what the gauges show: one of these per grant, 24
/// bytes instead of 40.
#[derive(Debug, Clone, Copy)]
struct GrantState {
    reason: Reason,
    expires_at: Option<UnixSecs>,
    failing_since: Option<UnixSecs>,
}

/// A time after the epoch, in whole seconds.
type UnixSecs = std::num::NonZeroU64;

fn unix_secs(t: SystemTime) -> Option<UnixSecs> {
    UnixSecs::new(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs())
}

/// Whether a grant with this Ready reason needs somebody: it is not Ready,
/// and not because its owner chose so (Suspended) or it ended as it should
/// (Expired, Completed).
fn failing(reason: Reason) -> bool {
    match reason {
        Reason::Issued | Reason::Suspended | Reason::Expired | Reason::Completed => false,
        Reason::InvalidSpec
        | Reason::IssuerNotFound
        | Reason::Forbidden
        | Reason::CredentialsUnavailable
        | Reason::SigningFailed
        | Reason::SecretConflict => true,
    }
}

/// The `kind` labels of `upload_grant_issued_total`, as the Normal Events
/// `--lifecycle-events` publishes are named, lower case.
const ISSUED_KINDS: [&str; 2] = ["issued", "renewed"];

/// How a presigning attempt ended: the `result` and `reason` labels of
/// `upload_grant_signings_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Ok,
    /// No credentials, or none that live long enough.
    CredentialsUnavailable,
    /// The presigner refused the request.
    PresignFailed,
}

impl Signing {
    /// Each is registered at 0 from the start, so a 0 read from /metrics is
    /// a real 0 and not a sample nobody has touched yet.
    pub const ALL: [Signing; 3] = [
        Signing::Ok,
        Signing::CredentialsUnavailable,
        Signing::PresignFailed,
    ];

    fn labels(self) -> Labels2 {
        let (result, reason) = match self {
            Signing::Ok => ("success", "ok"),
            Signing::CredentialsUnavailable => ("failure", "credentials"),
            Signing::PresignFailed => ("failure", "presign"),
        };
        [("result", result), ("reason", reason)]
    }
}

pub struct Metrics {
    registry: Registry,
    reconcile_duration: Histogram,
    reconcile_failures: Family<Labels, Counter>,
    signings: Family<Labels2, Counter>,
    issued: Family<Labels, Counter>,
    grants: Family<Labels, Gauge>,
    earliest_expiry: Gauge<f64, AtomicU64>,
    credentials_expiry: Gauge<f64, AtomicU64>,
    credential_loads: Gauge,
    leader: Gauge,
    shards_held: Gauge,
    shard_foreign: Family<Labels, Counter>,
    ignored_secrets: Counter,
    renewal_slack: Gauge<f64, AtomicU64>,
    renewals_at_risk: Gauge,
    renewals_overdue: Gauge,
    not_ready_since: Gauge<f64, AtomicU64>,
    credentials_refresh_failing: Gauge,
    kube_api_requests: Counter,
    kube_api_qps_bound: Gauge,
    /// Each grant's last reason and URL expiry, to derive the gauges.
    /// Keyed by `controller::grant_key`: a number, not a name.
    states: Mutex<HashMap<u64, GrantState>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("upload_grant");
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile of a grant",
            reconcile_duration.clone(),
        );
        let reconcile_failures = Family::<Labels, Counter>::default();
        for category in crate::error::Error::CATEGORIES {
            let _ = reconcile_failures.get_or_create(&[("category", category)]);
        }
        registry.register(
            "reconcile_failures",
            "Reconciles that ended in an error, by category",
            reconcile_failures.clone(),
        );
        let signings = Family::<Labels2, Counter>::default();
        for outcome in Signing::ALL {
            let _ = signings.get_or_create(&outcome.labels());
        }
        registry.register(
            "signings",
            "Presigning attempts, by result and reason",
            signings.clone(),
        );
        let issued = Family::<Labels, Counter>::default();
        for kind in ISSUED_KINDS {
            let _ = issued.get_or_create(&[("kind", kind)]);
        }
        registry.register(
            "issued",
            "URLs written into Secrets: kind=\"issued\" for a grant's first URL or one replacing a changed spec, kind=\"renewed\" for a renewal",
            issued.clone(),
        );
        let grants = Family::<Labels, Gauge>::default();
        for reason in Reason::ALL {
            let _ = grants.get_or_create(&[("reason", reason.as_str())]);
        }
        registry.register(
            "grants",
            "Grants by the reason of their Ready condition",
            grants.clone(),
        );
        let earliest_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "earliest_url_expiry_timestamp_seconds",
            "Unix time at which the first of the issued URLs expires (0 when none)",
            earliest_expiry.clone(),
        );
        let credentials_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "credentials_expiry_timestamp_seconds",
            "Unix time at which the operator's AWS credentials expire (0 when static or not loaded)",
            credentials_expiry.clone(),
        );
        let credential_loads = Gauge::default();
        registry.register(
            "credential_loads",
            "Times the operator asked its credential provider (STS calls for IRSA)",
            credential_loads.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease and runs the controller",
            leader.clone(),
        );
        let shards_held = Gauge::default();
        registry.register(
            "shards_held",
            "Shards this replica holds and runs the controller for (--sharding; 0 otherwise)",
            shards_held.clone(),
        );
        let shard_foreign = Family::<Labels, Counter>::default();
        registry.register(
            "shard_foreign_objects",
            "Objects the apiserver sent this replica outside its shards, dropped here: the apiserver does not filter by shard (its ShardedListAndWatch gate is off, or it is older than 1.36), so every replica reads every object",
            shard_foreign.clone(),
        );
        for kind in ["UploadGrant", "Secret"] {
            let _ = shard_foreign.get_or_create(&[("kind", kind)]);
        }
        let ignored_secrets = Counter::default();
        registry.register(
            "ignored_secrets",
            "Secrets labelled as the operator's that no UploadGrant controls, left out of its cache and its decisions",
            ignored_secrets.clone(),
        );
        let renewal_slack = Gauge::<f64, AtomicU64>::default();
        renewal_slack.set(f64::NAN);
        registry.register(
            "renewal_slack_seconds",
            "The least slack of the URLs the operator renews: seconds between the moment the earliest-deadline-first forecast finishes a renewal at the request bound and its deadline (the URL's expiry less the propagation budget); negative: forecast to miss; NaN when it renews none",
            renewal_slack.clone(),
        );
        let renewals_at_risk = Gauge::default();
        registry.register(
            "renewals_at_risk",
            "URLs whose renewal is forecast to miss its deadline by a second or more",
            renewals_at_risk.clone(),
        );
        let renewals_overdue = Gauge::default();
        registry.register(
            "renewals_overdue",
            "URLs whose renewal deadline passed a second or more ago without a new URL: pods may soon read an expired one",
            renewals_overdue.clone(),
        );
        let not_ready_since = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "not_ready_since_timestamp_seconds",
            "Unix time since which the longest-failing grant has not been Ready, as this replica saw it (0 when none is failing; Suspended, Expired and Completed grants are not failing)",
            not_ready_since.clone(),
        );
        let credentials_refresh_failing = Gauge::default();
        registry.register(
            "credentials_refresh_failing",
            "1 while the last attempt to load the operator's AWS credentials failed and none has succeeded since",
            credentials_refresh_failing.clone(),
        );
        let kube_api_requests = Counter::default();
        registry.register(
            "kube_api_requests",
            "Requests the controller's client sent to the Kubernetes API, after the request bound",
            kube_api_requests.clone(),
        );
        let kube_api_qps_bound = Gauge::default();
        registry.register(
            "kube_api_qps_bound",
            "The bound on requests per second to the Kubernetes API (--kube-api-qps; 0: none)",
            kube_api_qps_bound.clone(),
        );
        Metrics {
            registry,
            leader,
            shards_held,
            shard_foreign,
            ignored_secrets,
            reconcile_duration,
            reconcile_failures,
            signings,
            issued,
            grants,
            earliest_expiry,
            credentials_expiry,
            credential_loads,
            renewal_slack,
            renewals_at_risk,
            renewals_overdue,
            not_ready_since,
            credentials_refresh_failing,
            kube_api_requests,
            kube_api_qps_bound,
            states: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_shards_held(&self, shards: usize) {
        self.shards_held
            .set(i64::try_from(shards).unwrap_or(i64::MAX));
    }

    /// Counts an object of `kind` outside this replica's shards.
    pub fn shard_foreign(&self, kind: &'static str) {
        self.shard_foreign.get_or_create(&[("kind", kind)]).inc();
    }

    /// Counts a Secret labelled as ours that no grant controls.
    pub fn ignored_secret(&self) {
        self.ignored_secrets.inc();
    }

    #[cfg(test)]
    pub fn shard_foreign_count(&self, kind: &'static str) -> u64 {
        self.shard_foreign.get_or_create(&[("kind", kind)]).get()
    }

    #[cfg(test)]
    pub fn ignored_secrets(&self) -> u64 {
        self.ignored_secrets.get()
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn reconcile_failure(&self, category: &'static str) {
        self.reconcile_failures
            .get_or_create(&[("category", category)])
            .inc();
    }

    /// Counts a presigning attempt; `(ok, reason)` is one of `SIGNING_OUTCOMES`.
    pub fn signed(&self, outcome: Signing) {
        self.signings.get_or_create(&outcome.labels()).inc();
    }

    /// Counts a URL written into a Secret: a renewal, or a new URL.
    pub fn issued(&self, renewal: bool) {
        let kind = if renewal { "renewed" } else { "issued" };
        self.issued.get_or_create(&[("kind", kind)]).inc();
    }

    /// Forgets every grant's state: a controller run that ends (with
    /// sharding, its shards may now be another replica's) reports none.
    pub fn forget_grants(&self) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Records a grant's state; `None` forgets a deleted grant.
    pub fn grant_state(&self, grant: u64, reason: Option<Reason>, expires_at: Option<SystemTime>) {
        self.grant_state_at(grant, reason, expires_at, SystemTime::now());
    }

    fn grant_state_at(
        &self,
        grant: u64,
        reason: Option<Reason>,
        expires_at: Option<SystemTime>,
        now: SystemTime,
    ) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reason) = reason else {
            states.remove(&grant);
            return;
        };
        let was = states.get(&grant).and_then(|s| s.failing_since);
        let state = GrantState {
            reason,
            expires_at: expires_at.and_then(unix_secs),
            failing_since: failing(reason).then(|| was.or(unix_secs(now))).flatten(),
        };
        states.insert(grant, state);
    }

    /// Records the renewal forecast (`controller::at_risk`): the least slack
    /// in seconds (None: no URL is renewed), the URLs forecast to miss and
    /// those already past their deadline.
    pub fn renewal_forecast(&self, least_slack: Option<f64>, at_risk: usize, overdue: usize) {
        self.renewal_slack.set(least_slack.unwrap_or(f64::NAN));
        self.renewals_at_risk
            .set(i64::try_from(at_risk).unwrap_or(i64::MAX));
        self.renewals_overdue
            .set(i64::try_from(overdue).unwrap_or(i64::MAX));
    }

    /// The counter of requests the controller's client sends
    /// (`kube_client::bounded`), and its bound.
    pub fn kube_api_requests(&self, qps_bound: u32) -> Counter {
        self.kube_api_qps_bound.set(i64::from(qps_bound));
        self.kube_api_requests.clone()
    }

    /// Renders the text exposition, deriving the gauges first.
    pub fn render(&self, credentials: &CredentialSnapshot) -> String {
        {
            let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let mut counts: HashMap<Reason, i64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
            let mut earliest: Option<UnixSecs> = None;
            let mut failing_since: Option<UnixSecs> = None;
            let min = |a: Option<UnixSecs>, b: Option<UnixSecs>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for state in states.values() {
                *counts.entry(state.reason).or_default() += 1;
                earliest = min(earliest, state.expires_at);
                failing_since = min(failing_since, state.failing_since);
            }
            for (reason, n) in counts {
                self.grants
                    .get_or_create(&[("reason", reason.as_str())])
                    .set(n);
            }
            let secs = |t: Option<UnixSecs>| t.map_or(0.0, |t| t.get() as f64);
            self.earliest_expiry.set(secs(earliest));
            self.not_ready_since.set(secs(failing_since));
        }
        self.credentials_refresh_failing
            .set(i64::from(credentials.refresh_failure().is_some()));
        self.credentials_expiry
            .set(credentials.expiry().map_or(0.0, unix));
        self.credential_loads
            .set(i64::try_from(credentials.loads()).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The names of every sample the operator exports (`upload_grant_…`,
/// with `_total` for counters and `_bucket`, `_sum` and `_count` for
/// histograms), read from its registry: what dashboards and alerts may name.
pub fn exported_names() -> Vec<String> {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &Metrics::default().registry);
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_once(' '))
        .flat_map(|(family, kind)| {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().map(move |s| format!("{family}{s}"))
        })
        .collect();
    names.sort();
    names
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;

    #[test]
    fn renders_bounded_families_without_grant_names() {
        let m = Metrics::default();
        let grant = 42;
        m.grant_state(
            grant,
            Some(Reason::Issued),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
        );
        m.signed(Signing::Ok);
        m.issued(true);
        m.reconcile_failure("kube_api");
        m.reconciled(Duration::from_millis(3));
        let snapshot = CredentialSnapshot::new(SharedCredentialsProvider::new(Credentials::new(
            "AKID", "secret", None, None, "test",
        )));
        let text = m.render(&snapshot);
        assert!(
            text.contains(r#"upload_grant_grants{reason="Issued"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"upload_grant_grants{reason="Forbidden"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("upload_grant_earliest_url_expiry_timestamp_seconds 2000000000"),
            "{text}"
        );
        assert!(
            text.contains(r#"upload_grant_signings_total{result="success",reason="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"upload_grant_reconcile_failures_total{category="kube_api"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"upload_grant_issued_total{kind="renewed"} 1"#)
                && text.contains(r#"upload_grant_issued_total{kind="issued"} 0"#),
            "{text}"
        );
        assert!(
            !text.contains("secret-project-name") && !text.contains("team-a"),
            "{text}"
        );
        m.grant_state(grant, None, None);
        assert!(
            m.render(&snapshot)
                .contains(r#"upload_grant_grants{reason="Issued"} 0"#)
        );
    }

    #[test]
    fn bounded_label_sets_are_present_at_zero_before_anything_happens() {
        let m = Metrics::default();
        let snapshot = CredentialSnapshot::new(SharedCredentialsProvider::new(Credentials::new(
            "AKID", "secret", None, None, "test",
        )));
        let text = m.render(&snapshot);
        for category in crate::error::Error::CATEGORIES {
            let sample =
                format!(r#"upload_grant_reconcile_failures_total{{category="{category}"}} 0"#);
            assert!(
                text.lines().any(|l| l == sample),
                "{sample} missing:\n{text}"
            );
        }
        for outcome in Signing::ALL {
            let [(_, result), (_, reason)] = outcome.labels();
            let sample =
                format!(r#"upload_grant_signings_total{{result="{result}",reason="{reason}"}} 0"#);
            assert!(
                text.lines().any(|l| l == sample),
                "{sample} missing:\n{text}"
            );
        }
        for kind in ISSUED_KINDS {
            let sample = format!(r#"upload_grant_issued_total{{kind="{kind}"}} 0"#);
            assert!(
                text.lines().any(|l| l == sample),
                "{sample} missing:\n{text}"
            );
        }
        for reason in Reason::ALL {
            let sample = format!(r#"upload_grant_grants{{reason="{}"}} 0"#, reason.as_str());
            assert!(
                text.lines().any(|l| l == sample),
                "{sample} missing:\n{text}"
            );
        }
    }

    fn snapshot() -> CredentialSnapshot {
        CredentialSnapshot::new(SharedCredentialsProvider::new(Credentials::new(
            "AKID", "secret", None, None, "test",
        )))
    }

    /// The value of the sample named exactly `name` (no labels).
    fn sample(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn the_renewal_forecast_is_nan_and_zero_until_there_is_one() {
        let m = Metrics::default();
        let text = m.render(&snapshot());
        assert_eq!(
            sample(&text, "upload_grant_renewal_slack_seconds").as_deref(),
            Some("NaN")
        );
        assert_eq!(
            sample(&text, "upload_grant_renewals_at_risk").as_deref(),
            Some("0")
        );
        m.renewal_forecast(Some(-12.5), 3, 1);
        let text = m.render(&snapshot());
        assert_eq!(
            sample(&text, "upload_grant_renewal_slack_seconds").as_deref(),
            Some("-12.5")
        );
        assert_eq!(
            sample(&text, "upload_grant_renewals_at_risk").as_deref(),
            Some("3")
        );
        assert_eq!(
            sample(&text, "upload_grant_renewals_overdue").as_deref(),
            Some("1")
        );
        m.renewal_forecast(None, 0, 0);
        let text = m.render(&snapshot());
        assert_eq!(
            sample(&text, "upload_grant_renewal_slack_seconds").as_deref(),
            Some("NaN")
        );
    }

    #[test]
    fn not_ready_since_is_the_oldest_failure_and_survives_a_change_of_reason() {
        let m = Metrics::default();
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let since = |m: &Metrics| {
            sample(
                &m.render(&snapshot()),
                "upload_grant_not_ready_since_timestamp_seconds",
            )
        };
        m.grant_state_at(1, Some(Reason::Issued), None, t(100));
        m.grant_state_at(2, Some(Reason::Suspended), None, t(100));
        assert_eq!(since(&m).as_deref(), Some("0.0"), "none failing");
        m.grant_state_at(1, Some(Reason::SigningFailed), None, t(200));
        m.grant_state_at(3, Some(Reason::Forbidden), None, t(300));
        // Still failing, for another reason: the time it started stays.
        m.grant_state_at(1, Some(Reason::CredentialsUnavailable), None, t(400));
        assert_eq!(since(&m).as_deref(), Some("200.0"));
        // Ready again, then failing again: a new start.
        m.grant_state_at(1, Some(Reason::Issued), None, t(500));
        assert_eq!(since(&m).as_deref(), Some("300.0"));
        m.grant_state_at(3, None, None, t(600));
        m.grant_state_at(1, Some(Reason::SecretConflict), None, t(700));
        assert_eq!(since(&m).as_deref(), Some("700.0"));
        let failing_reasons: Vec<&str> = Reason::ALL
            .into_iter()
            .filter(|r| failing(*r))
            .map(Reason::as_str)
            .collect();
        assert_eq!(
            failing_reasons,
            [
                "InvalidSpec",
                "IssuerNotFound",
                "Forbidden",
                "CredentialsUnavailable",
                "SigningFailed",
                "SecretConflict"
            ]
        );
    }

    #[test]
    fn requests_and_their_bound_and_a_working_credential_load() {
        let m = Metrics::default();
        let sent = m.kube_api_requests(100);
        sent.inc();
        sent.inc();
        let text = m.render(&snapshot());
        assert_eq!(
            sample(&text, "upload_grant_kube_api_requests_total").as_deref(),
            Some("2")
        );
        assert_eq!(
            sample(&text, "upload_grant_kube_api_qps_bound").as_deref(),
            Some("100")
        );
        assert_eq!(
            sample(&text, "upload_grant_credentials_refresh_failing").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn exported_names_are_every_sample_rendered() {
        let names = exported_names();
        for contract in [
            "upload_grant_renewal_slack_seconds",
            "upload_grant_renewals_at_risk",
            "upload_grant_reconcile_failures_total",
            "upload_grant_reconcile_duration_seconds_bucket",
            "upload_grant_earliest_url_expiry_timestamp_seconds",
            "upload_grant_leader",
        ] {
            assert!(names.iter().any(|n| n == contract), "{contract}: {names:?}");
        }
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(1));
        let text = m.render(&snapshot());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(names.iter().any(|n| n == name), "{name} is not listed");
        }
    }
}
