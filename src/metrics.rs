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
/// A grant's last Ready reason and URL expiry.
type GrantState = (Reason, Option<SystemTime>);

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
    ignored_secrets: Counter,
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
        let ignored_secrets = Counter::default();
        registry.register(
            "ignored_secrets",
            "Secrets labelled as the operator's that no UploadGrant controls, left out of its cache and its decisions",
            ignored_secrets.clone(),
        );
        Metrics {
            registry,
            leader,
            ignored_secrets,
            reconcile_duration,
            reconcile_failures,
            signings,
            issued,
            grants,
            earliest_expiry,
            credentials_expiry,
            credential_loads,
            states: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a Secret labelled as ours that no grant controls.
    pub fn ignored_secret(&self) {
        self.ignored_secrets.inc();
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

    /// Records a grant's state; `None` forgets a deleted grant.
    pub fn grant_state(&self, grant: u64, reason: Option<Reason>, expires_at: Option<SystemTime>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => states.insert(grant, (r, expires_at)),
            None => states.remove(&grant),
        };
    }

    /// Renders the text exposition, deriving the gauges first.
    pub fn render(&self, credentials: &CredentialSnapshot) -> String {
        {
            let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let mut counts: HashMap<Reason, i64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
            let mut earliest: Option<SystemTime> = None;
            for (reason, expiry) in states.values() {
                *counts.entry(*reason).or_default() += 1;
                if let Some(e) = expiry {
                    earliest = Some(earliest.map_or(*e, |x| x.min(*e)));
                }
            }
            for (reason, n) in counts {
                self.grants
                    .get_or_create(&[("reason", reason.as_str())])
                    .set(n);
            }
            self.earliest_expiry.set(earliest.map_or(0.0, unix));
        }
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
}
