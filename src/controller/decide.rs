//! Decide: the pure middle of a reconcile. From what was loaded (the grant,
//! its issuer, the namespace's labels, who holds the Secret's name, the
//! time) it says what to do — issue, keep, renew, revoke or stand aside;
//! what the status and the events then say is `report`'s. No cluster access
//! and no clock of its own, so every transition is a table test.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;

use super::build::{self, IssuedState, format_time};
use super::managed::Slot;
use super::recorded::Recorded;
use super::validate::{ValidGrant, check_propagation, validate};
use crate::api::condition::ready_condition;
use crate::api::secret::{MAX_STATE_VALUE_LEN, RENEW_REQUEST_ANNOTATION};
use crate::api::{ClusterGrantIssuer, Reason, S3Target, UploadGrant};
use crate::issuer::{Request, RuleVerdict, conclude, evaluate};
use crate::signing::url_lifetime;
use crate::uploads::UploadState;

/// Everything a decision depends on.
pub struct Observed<'a> {
    pub grant: &'a UploadGrant,
    /// The grant's issuerRef, else the operator's default; None if neither.
    pub issuer_name: Option<&'a str>,
    pub issuer: Option<&'a ClusterGrantIssuer>,
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// Who holds the Secret name the spec asks for, as the cache sees it.
    pub secret: &'a Slot,
    /// Where this generation of the grant already ended, if it did: what
    /// this operator last reported, which the cache may not show yet.
    pub settled: Option<Settled<'a>>,
    /// How long a renewed URL may take to reach pods (the operator's setting).
    pub propagation: Duration,
    /// Renew requests are answered at most once in this window, counted
    /// from the current URL's signing (the operator's setting).
    pub renew_interval: Duration,
    /// Multipart grants: where the recorded upload stands, when it was
    /// looked at in this pass (`uploads::state`).
    pub upload: Option<UploadState>,
    /// The upload the grant's status records (or this operator recorded a
    /// moment ago): the only upload the operator acts on.
    pub recorded: Option<&'a Recorded>,
    /// Set when the grant is deleted (or deleting): then it is revoked.
    pub deletion: Option<Deletion>,
    pub now: SystemTime,
}

/// What the revocation of a deleted grant depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    /// The namespace is being deleted: its deletion removes the Secrets.
    pub namespace_terminating: bool,
    /// The cache showed a Secret of the grant's before the revocation, so
    /// it is announced even if somebody else removes the Secret first.
    pub held: bool,
}

/// An outcome that holds for the rest of a generation: the URL ran out
/// (Expired), the apiserver refused the Secret (InvalidSpec), or a multipart
/// upload was assembled (Completed). Signing again would only hand out an
/// expired grant, be refused again or start a second upload; a spec change
/// is a new generation and starts afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled<'a> {
    pub reason: Reason,
    pub message: &'a str,
}

impl<'a> Settled<'a> {
    /// What the grant's status says, if it settled this generation.
    pub fn from_status(grant: &'a UploadGrant) -> Option<Self> {
        let c = ready_condition(grant.status.as_ref())?;
        let reason = Reason::parse(&c.reason).filter(|r| Settled::holds(*r))?;
        (c.observed_generation == grant.metadata.generation).then_some(Settled {
            reason,
            message: &c.message,
        })
    }

    pub fn holds(reason: Reason) -> bool {
        matches!(
            reason,
            Reason::Expired | Reason::InvalidSpec | Reason::Completed
        )
    }
}

/// What to do for a grant.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Remove every Secret the grant owns; the grant is not Ready.
    Revoke { reason: Reason, message: String },
    /// Somebody else's Secret holds the name: touch nothing.
    Conflict { secret_name: String },
    /// The Secret holds a current URL; look again at `wake_at`.
    Keep {
        secret_name: String,
        state: Box<IssuedState>,
        wake_at: SystemTime,
        /// A renew request waits for the end of its window, then.
        request_due: Option<SystemTime>,
        /// A Secret under the grant's former name, to remove.
        stale: Option<String>,
    },
    /// Sign a URL and write it.
    Sign(Box<SignPlan>),
    /// The grant is deleted: remove its Secrets and abort its upload. Its
    /// status is not written; it is going.
    RevokeDeleted(Removal),
}

/// How a deleted grant is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Remove the Secrets (not when the namespace's deletion does).
    pub remove: bool,
    /// Announce the revocation even if nothing is left to remove.
    pub announce_held: bool,
    /// Abort the multipart upload the grant may have left in S3.
    pub abort: bool,
}

/// Everything needed to sign and write a URL.
#[derive(Debug, Clone, PartialEq)]
pub struct SignPlan {
    pub valid: ValidGrant,
    pub target: S3Target,
    pub spec_hash: String,
    /// A renewal of a current URL, rather than a first or replacing one.
    pub renewal: bool,
    /// The URL in the Secret now.
    pub current: Option<IssuedState>,
    /// The uid of the Secret of ours that holds the name.
    pub ours: Option<String>,
    /// That Secret still has fields from a create by an older version.
    pub legacy_fields: bool,
    pub stale: Option<String>,
    /// The grant's renew request (`api::secret::RENEW_REQUEST_ANNOTATION`).
    pub renew_request: Option<String>,
    /// Multipart grants: the upload to sign part URLs for.
    pub upload: UploadPlan,
}

/// Which upload a multipart grant's part URLs are signed for.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadPlan {
    /// Not a multipart grant.
    NotMultipart,
    /// The recorded upload, signed for again so parts already uploaded are
    /// kept.
    Recorded(String),
    /// The record for this spec has no id: the operator stopped between
    /// asking S3 and recording the answer. The upload S3 started in the
    /// record's window is adopted; if there is none, a new one is started.
    Find(Recorded),
    /// A new upload, after aborting `abandoned`, recorded for an older spec.
    New { abandoned: Option<Recorded> },
}

impl SignPlan {
    /// A renew request the current URL does not answer yet.
    fn renew_requested(&self, state: &IssuedState) -> bool {
        self.renew_request.is_some() && state.renew_request != self.renew_request
    }

    /// The current URL stays if a renewal fails while it still works; a URL
    /// for an older spec never outlives a failed replacement.
    pub fn keeps_current_on_failure(&self, now: SystemTime) -> Option<&IssuedState> {
        self.current
            .as_ref()
            .filter(|s| self.renewal && s.expires_at > now)
    }
}

/// A URL for this very spec that is not yet due for renewal.
pub fn is_current(now: SystemTime, state: &IssuedState, plan: &SignPlan) -> bool {
    state.spec_hash == plan.spec_hash
        && now < state.refresh_at.unwrap_or(state.expires_at)
        && !plan.renew_requested(state)
}

/// The issuer a grant uses: its own issuerRef, else the operator's default.
pub fn issuer_name<'a>(grant: &'a UploadGrant, default: Option<&'a str>) -> Option<&'a str> {
    grant
        .spec
        .issuer_ref
        .as_ref()
        .map(|r| r.name.as_str())
        .or(default)
}

/// What admission looks at: the grant, the issuer it names and the labels
/// of its namespace. `kubectl grant check` builds one from the cluster.
pub struct Admission<'a> {
    pub grant: &'a UploadGrant,
    /// The grant's issuerRef, else the operator's default; None if neither.
    pub issuer_name: Option<&'a str>,
    pub issuer: Option<&'a ClusterGrantIssuer>,
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The operator's propagation budget: it bounds the shortest ttl.
    pub propagation: Duration,
}

/// A grant its issuer allows: the checked spec and the rule that allows it.
#[derive(Debug, Clone)]
pub struct Admitted<'a> {
    pub valid: ValidGrant,
    pub issuer: &'a ClusterGrantIssuer,
    pub rule: usize,
    pub verdicts: Vec<RuleVerdict>,
}

/// Why a grant gets no URL, as its Ready condition says it; `verdicts` holds
/// each rule's answer when the issuer's rules refused it (Forbidden).
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub reason: Reason,
    pub message: String,
    pub verdicts: Vec<RuleVerdict>,
}

/// The admission part of a decision: a valid spec, an issuer, a rule that
/// allows it. Pure, and shared with `kubectl grant check` so the plugin's
/// answer is the operator's.
pub fn admit<'a>(a: &Admission<'a>) -> Result<Admitted<'a>, Refused> {
    let refuse = |reason, message: String| Refused {
        reason,
        message,
        verdicts: Vec::new(),
    };
    let grant = a.grant;
    let valid = validate(&grant.spec, &grant.name_any())
        .and_then(|v| check_propagation(v.ttl, a.propagation).map(|()| v))
        .map_err(|e| refuse(Reason::InvalidSpec, e.0))?;
    let issuer = match (a.issuer_name, a.issuer) {
        (None, _) => {
            let msg = "spec.issuerRef is not set and the operator has no default issuer";
            return Err(refuse(Reason::IssuerNotFound, msg.into()));
        }
        (Some(name), None) => {
            let msg = format!("ClusterGrantIssuer {name:?} not found");
            return Err(refuse(Reason::IssuerNotFound, msg));
        }
        (Some(_), Some(issuer)) => issuer,
    };
    let verdicts = evaluate(&issuer.spec, &request(a, &valid));
    match conclude(&verdicts) {
        Ok(rule) => Ok(Admitted {
            valid,
            issuer,
            rule,
            verdicts,
        }),
        Err(denied) => Err(Refused {
            reason: Reason::Forbidden,
            message: format!("ClusterGrantIssuer {:?}: {denied}", issuer.name_any()),
            verdicts,
        }),
    }
}

/// The decision, as an ordered chain of named checks: the first that has a
/// verdict decides (deleted, suspended, admitted, settled, conflict,
/// upload), and a grant that passes them all is scheduled.
pub fn decide(o: &Observed<'_>) -> Decision {
    let verdict = deleted(o)
        .and_then(|()| suspended(o))
        .and_then(|()| admitted(o))
        .and_then(|admitted| settled(o).map(|()| admitted))
        .and_then(|admitted| conflict(o, admitted));
    let (admitted, held) = match verdict {
        Ok(passed) => passed,
        Err(decision) => return decision,
    };
    let plan = sign_plan(o, admitted, held);
    let expired = o.settled.is_some_and(|s| s.reason == Reason::Expired);
    let when = When {
        now: o.now,
        renew_interval: o.renew_interval.max(Duration::from_secs(1)),
    };
    schedule(when, plan, expired, o.upload == Some(UploadState::Gone))
}

/// The time of a decision, and the renew request window.
struct When {
    now: SystemTime,
    renew_interval: Duration,
}

/// A check's answer: pass on what the next one needs, or decide.
type Check<T> = Result<T, Decision>;

fn revoke(reason: Reason, message: impl Into<String>) -> Decision {
    Decision::Revoke {
        reason,
        message: message.into(),
    }
}

/// A deleted grant is revoked. S3 has no garbage collection, so its upload
/// is aborted before it goes (also in a terminating namespace), unless the
/// status says it was completed.
fn deleted(o: &Observed<'_>) -> Check<()> {
    let Some(d) = o.deletion else { return Ok(()) };
    let grant = o.grant;
    let has_upload = o.recorded.is_some();
    let completed = Settled::from_status(grant).is_some_and(|s| s.reason == Reason::Completed);
    Err(Decision::RevokeDeleted(Removal {
        remove: !d.namespace_terminating,
        announce_held: d.held,
        // Multipart grants are the ones that carry the finalizer.
        abort: (grant.spec.multipart.is_some() || has_upload) && !completed,
    }))
}

/// A suspended grant holds no URL.
fn suspended(o: &Observed<'_>) -> Check<()> {
    match o.grant.spec.suspend {
        true => Err(revoke(Reason::Suspended, "suspended: no URL is issued")),
        false => Ok(()),
    }
}

/// A valid spec, an issuer, and a rule of it that allows the grant.
fn admitted<'a>(o: &Observed<'a>) -> Check<Admitted<'a>> {
    admit(&Admission {
        grant: o.grant,
        issuer_name: o.issuer_name,
        issuer: o.issuer,
        namespace_labels: o.namespace_labels,
        propagation: o.propagation,
    })
    .map_err(|refused| revoke(refused.reason, refused.message))
}

/// An outcome that holds for the rest of the generation (`Settled`), or an
/// upload S3 says was completed just now.
fn settled(o: &Observed<'_>) -> Check<()> {
    match o.settled {
        Some(s) if matches!(s.reason, Reason::InvalidSpec | Reason::Completed) => {
            Err(revoke(s.reason, s.message))
        }
        _ if o.upload == Some(UploadState::Completed) => Err(revoke(Reason::Completed, COMPLETED)),
        _ => Ok(()),
    }
}

/// Somebody else's Secret holds the name: touch nothing. Otherwise what the
/// grant's own Secret (if any) holds.
fn conflict<'a>(o: &Observed<'_>, admitted: Admitted<'a>) -> Check<(Admitted<'a>, Held)> {
    let held = match o.secret {
        Slot::Foreign => {
            return Err(Decision::Conflict {
                secret_name: admitted.valid.secret_name,
            });
        }
        Slot::Ours(secret) => Held {
            current: secret.state.clone(),
            ours: secret.uid(),
            legacy_fields: secret.legacy_fields,
        },
        Slot::Free => Held::default(),
    };
    Ok((admitted, held))
}

/// What the grant's own Secret holds.
#[derive(Default)]
struct Held {
    current: Option<IssuedState>,
    ours: Option<String>,
    legacy_fields: bool,
}

/// Everything signing needs, including the upload a multipart grant signs
/// for (`recorded_upload`).
fn sign_plan(o: &Observed<'_>, admitted: Admitted<'_>, held: Held) -> SignPlan {
    let (grant, valid, issuer) = (o.grant, admitted.valid, admitted.issuer);
    let stale = grant
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .filter(|old| *old != valid.secret_name);
    let spec_hash = build::spec_hash(&grant.spec, &issuer.spec.s3);
    // A record the issuer does not let the grant reach gets no S3 call,
    // whoever wrote it: its upload is left to the bucket's lifecycle rule.
    let recorded = o
        .recorded
        .filter(|r| r.reachable(&issuer.spec, grant, o.namespace_labels));
    let upload = match valid.multipart {
        Some(_) => upload_plan(grant, recorded, &spec_hash, o.upload),
        None => UploadPlan::NotMultipart,
    };
    SignPlan {
        spec_hash,
        target: issuer.spec.s3.clone(),
        renewal: false,
        current: held.current,
        ours: held.ours,
        legacy_fields: held.legacy_fields,
        stale,
        renew_request: renew_request(grant),
        upload,
        valid,
    }
}

/// The grant's renew request; one longer than the Secret's state may hold
/// (`kubectl grant renew` writes a time) is not acted on.
fn renew_request(grant: &UploadGrant) -> Option<String> {
    let request = grant.annotations().get(RENEW_REQUEST_ANNOTATION)?;
    (request.len() <= MAX_STATE_VALUE_LEN).then(|| request.clone())
}

/// The status message of a completed multipart grant.
pub const COMPLETED: &str =
    "the multipart upload was completed: the object exists; the Secret was removed";

/// The upload a multipart grant signs for: the one its status records for
/// this spec, unless S3 says it is gone. A recorded upload for an older spec
/// is abandoned: a changed spec starts a new upload. What the Secret says
/// of the upload is never read: the namespace can write it.
fn upload_plan(
    grant: &UploadGrant,
    recorded: Option<&Recorded>,
    spec_hash: &str,
    probe: Option<UploadState>,
) -> UploadPlan {
    let Some(r) = recorded else {
        return UploadPlan::New { abandoned: None };
    };
    if !r.for_spec(grant, spec_hash) {
        return UploadPlan::New {
            abandoned: Some(r.clone()),
        };
    }
    match &r.id {
        None => UploadPlan::Find(r.clone()),
        Some(_) if probe == Some(UploadState::Gone) => UploadPlan::New { abandoned: None },
        Some(id) => UploadPlan::Recorded(id.clone()),
    }
}

/// Keep, renew, replace or let expire the URL in the grant's Secret.
fn schedule(when: When, mut plan: SignPlan, already_expired: bool, upload_gone: bool) -> Decision {
    let now = when.now;
    let expired = |plan: &SignPlan| Decision::Revoke {
        reason: Reason::Expired,
        message: expiry_message(now, &plan.valid),
    };
    if plan.valid.not_after.is_some_and(|end| now >= end) {
        return expired(&plan);
    }
    let Some(state) = plan.current.clone() else {
        return if already_expired {
            expired(&plan)
        } else {
            Decision::Sign(Box::new(plan))
        };
    };
    // A multipart upload aborted behind the operator's back: a new one.
    if state.spec_hash != plan.spec_hash || upload_gone {
        return Decision::Sign(Box::new(plan));
    }
    if state.refresh_at.is_none() && now >= state.expires_at {
        return expired(&plan);
    }
    // A renew request is answered once, even for a URL that is not renewed
    // on its own: somebody with the right to edit the grant asked for it.
    // Not before the window since the current URL was signed has passed:
    // requests in it coalesce into one renewal at its end, so a loop of
    // them costs one Secret write per window (and a URL signed again within
    // its second would be the very same URL).
    let request_due = plan
        .renew_requested(&state)
        .then_some(state.issued_at + when.renew_interval);
    let refresh = state.refresh_at.unwrap_or(state.expires_at);
    if state.refresh_at.is_some_and(|at| now >= at) || request_due.is_some_and(|at| now >= at) {
        plan.renewal = true;
        return Decision::Sign(Box::new(plan));
    }
    let request_due = request_due.filter(|at| *at < refresh);
    Decision::Keep {
        secret_name: plan.valid.secret_name,
        state: Box::new(state),
        wake_at: request_due.unwrap_or(refresh),
        request_due,
        stale: plan.stale,
    }
}

fn request<'a>(a: &'a Admission<'_>, valid: &'a ValidGrant) -> Request<'a> {
    Request {
        namespace: a.grant.metadata.namespace.as_deref().unwrap_or_default(),
        namespace_labels: a.namespace_labels,
        name: a.grant.metadata.name.as_deref().unwrap_or_default(),
        bucket: &valid.bucket,
        key: &valid.key,
        method: valid.method,
        ttl: valid.ttl,
        content_length: valid.content_length,
        content_length_range: valid.content_length_range,
        sse: valid.sse.as_ref(),
        multipart: valid.multipart,
    }
}

fn expiry_message(now: SystemTime, valid: &ValidGrant) -> String {
    match valid.not_after {
        Some(end) if now >= end => format!(
            "notAfter {} has passed; the Secret was removed",
            format_time(end)
        ),
        _ => "the URL expired and refreshPolicy is Never; the Secret was removed".into(),
    }
}

/// The times of a URL signed now: None when the credentials end too soon
/// to sign anything usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub issued_at: SystemTime,
    pub lifetime: Duration,
    pub refresh_at: Option<SystemTime>,
}

pub fn times(
    now: SystemTime,
    valid: &ValidGrant,
    credentials_expiry: Option<SystemTime>,
    propagation: Duration,
    jitter: f64,
) -> Option<Times> {
    let lifetime = url_lifetime(now, valid.ttl, credentials_expiry, valid.not_after)?;
    Some(Times {
        issued_at: now,
        lifetime,
        refresh_at: build::refresh_at(now, lifetime, valid, propagation, jitter),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::api::UploadGrantStatus;
    use crate::api::limits::DEFAULT_PROPAGATION_BUDGET;
    use crate::controller::managed::ManagedSecret;
    use crate::fixtures::{grant, issuer};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn with_ready(mut g: UploadGrant, reason: Reason, generation: i64) -> UploadGrant {
        g.status = Some(UploadGrantStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: reason.as_str().into(),
                message: "the apiserver refused it".into(),
                observed_generation: Some(generation),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..UploadGrantStatus::default()
        });
        g
    }

    /// The issuer "default", allowing the base grant's bucket.
    fn open() -> ClusterGrantIssuer {
        issuer("default", serde_json::json!([{"buckets": ["reports"]}]))
    }

    /// The Secret of ours, holding a URL for `g`'s spec (or another hash).
    fn ours(g: &UploadGrant, hash: Option<&str>, refresh_at: Option<SystemTime>) -> Slot {
        let hash = hash.map_or_else(|| build::spec_hash(&g.spec, &open().spec.s3), str::to_owned);
        let state = IssuedState {
            spec_hash: hash,
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at,
            fingerprint: "sha256:x".into(),
            renew_request: None,
            replaces: None,
        };
        let owner = g.uid().unwrap_or_default();
        let secret = ManagedSecret::for_test("secret-uid", &owner, Some(state));
        Slot::Ours(Box::new(secret))
    }

    struct Case {
        grant: UploadGrant,
        issuer: Option<ClusterGrantIssuer>,
        issuer_name: Option<&'static str>,
        labels: BTreeMap<String, String>,
        secret: Slot,
        remembered: Option<Settled<'static>>,
        propagation: Duration,
        renew_interval: Duration,
        upload: Option<UploadState>,
        /// The status's record when None.
        recorded: Option<Recorded>,
        deletion: Option<Deletion>,
        now: SystemTime,
    }

    impl Case {
        fn new(grant: UploadGrant) -> Self {
            Case {
                grant,
                issuer: Some(open()),
                issuer_name: Some("default"),
                labels: BTreeMap::new(),
                secret: Slot::Free,
                remembered: None,
                propagation: DEFAULT_PROPAGATION_BUDGET,
                renew_interval: Duration::from_secs(1),
                upload: None,
                recorded: None,
                deletion: None,
                now: at(100),
            }
        }

        fn decide(&self) -> Decision {
            let from_status = Recorded::from_status(&self.grant);
            decide(&Observed {
                grant: &self.grant,
                issuer_name: self.issuer_name,
                issuer: self.issuer.as_ref(),
                namespace_labels: &self.labels,
                secret: &self.secret,
                settled: self
                    .remembered
                    .or_else(|| Settled::from_status(&self.grant)),
                propagation: self.propagation,
                renew_interval: self.renew_interval,
                upload: self.upload,
                recorded: self.recorded.as_ref().or(from_status.as_ref()),
                deletion: self.deletion,
                now: self.now,
            })
        }
    }

    /// What a decision does, and for a revocation, why.
    type Outcome = (&'static str, Option<Reason>);

    fn reason_of(d: &Decision) -> Outcome {
        match d {
            Decision::Revoke { reason, .. } => ("revoke", Some(*reason)),
            Decision::Conflict { .. } => ("conflict", None),
            Decision::Keep { .. } => ("keep", None),
            Decision::Sign(p) if p.renewal => ("renew", None),
            Decision::Sign(_) => ("issue", None),
            Decision::RevokeDeleted(_) => ("deleted", None),
        }
    }

    #[test]
    fn a_deleted_grant_is_revoked_whatever_else_holds() {
        let deleted = |held| {
            Some(Deletion {
                namespace_terminating: false,
                held,
            })
        };
        let suspended = grant(serde_json::json!({"suspend": true}));
        let completed = {
            let c = multipart(None, None);
            let grant = with_ready(c.grant.clone(), Reason::Completed, 2);
            Case { grant, ..c }
        };
        let recorded = {
            let mut g = grant(serde_json::json!({}));
            g.status = Some(UploadGrantStatus {
                upload_id: Some("u0".into()),
                ..UploadGrantStatus::default()
            });
            g
        };
        // (case, remove, announce_held, abort)
        let cases: Vec<(&str, Case, (bool, bool, bool))> = vec![
            (
                "ordinary",
                Case::new(grant(serde_json::json!({}))),
                (true, false, false),
            ),
            ("suspended", Case::new(suspended), (true, false, false)),
            (
                "no issuer",
                Case {
                    issuer: None,
                    ..Case::new(grant(serde_json::json!({})))
                },
                (true, false, false),
            ),
            (
                "name held by another",
                Case {
                    secret: Slot::Foreign,
                    ..Case::new(grant(serde_json::json!({})))
                },
                (true, false, false),
            ),
            ("multipart", multipart(None, None), (true, false, true)),
            ("multipart, completed", completed, (true, false, false)),
            (
                "no longer multipart, status records an upload",
                Case::new(recorded),
                (true, false, true),
            ),
        ];
        for (name, case, (remove, announce_held, abort)) in cases {
            let d = Case {
                deletion: deleted(false),
                ..case
            }
            .decide();
            assert_eq!(
                d,
                Decision::RevokeDeleted(Removal {
                    remove,
                    announce_held,
                    abort
                }),
                "{name}"
            );
        }
        let terminating = Case {
            deletion: Some(Deletion {
                namespace_terminating: true,
                held: true,
            }),
            ..multipart(None, None)
        };
        assert_eq!(
            terminating.decide(),
            Decision::RevokeDeleted(Removal {
                remove: false,
                announce_held: true,
                abort: true
            }),
            "the namespace's deletion removes the Secret; the upload is still aborted"
        );
    }

    /// The grant with a renew request, and a Secret answering `answered`.
    fn asked(request: &str, answered: Option<&str>, refresh_at: Option<SystemTime>) -> Case {
        let mut g = grant(serde_json::json!({}));
        g.annotations_mut()
            .insert(RENEW_REQUEST_ANNOTATION.into(), request.into());
        let mut secret = ours(&g, None, refresh_at);
        if let Slot::Ours(s) = &mut secret
            && let Some(state) = s.state.as_mut()
        {
            state.renew_request = answered.map(str::to_owned);
        }
        Case {
            secret,
            ..Case::new(g)
        }
    }

    /// A multipart grant, an issuer that allows multipart, a Secret of ours
    /// for the spec hash `hash` (its own when None), and a status recording
    /// upload "u1" for the same spec hash.
    fn multipart(hash: Option<&str>, refresh_at: Option<SystemTime>) -> Case {
        let g = grant(serde_json::json!({"multipart": {"parts": 3, "partSize": "5Mi"}}));
        let secret = ours(&g, hash, refresh_at);
        let spec_hash =
            hash.map_or_else(|| build::spec_hash(&g.spec, &open().spec.s3), str::to_owned);
        let recorded = Recorded::requested("reports", "team/old.bin", &spec_hash, at(50));
        Case {
            secret,
            recorded: Some(recorded.with_id("u1".into())),
            issuer: Some(issuer(
                "default",
                serde_json::json!([{"buckets": ["reports"], "multipart": true}]),
            )),
            ..Case::new(g)
        }
    }

    fn sign_plan(d: Decision) -> SignPlan {
        match d {
            Decision::Sign(plan) => *plan,
            other => panic!("signed, not {other:?}"),
        }
    }

    #[test]
    fn a_multipart_grant_renews_for_the_same_upload() {
        let h = Some(at(2400));
        assert_eq!(reason_of(&multipart(None, h).decide()), ("keep", None));
        let renewal = sign_plan(
            Case {
                now: at(2400),
                ..multipart(None, h)
            }
            .decide(),
        );
        assert!(renewal.renewal);
        assert_eq!(renewal.upload, UploadPlan::Recorded("u1".into()));
        assert_eq!(renewal.valid.multipart, Some((3, 5 << 20)));
    }

    #[test]
    fn a_changed_multipart_spec_abandons_the_old_upload() {
        let plan = sign_plan(multipart(Some("older"), Some(at(2400))).decide());
        let UploadPlan::New {
            abandoned: Some(abandoned),
        } = plan.upload
        else {
            panic!("a new upload, abandoning the old one: {:?}", plan.upload);
        };
        assert_eq!(
            (abandoned.id.as_deref(), abandoned.key.as_str()),
            (Some("u1"), "team/old.bin"),
            "aborted where it is, not under the new key"
        );
    }

    #[test]
    fn a_record_without_an_id_is_looked_for_and_only_for_its_spec() {
        // The crash left no Secret either.
        let without_id = |c: Case| Case {
            recorded: c.recorded.clone().map(|r| Recorded { id: None, ..r }),
            secret: Slot::Free,
            ..c
        };
        // A crash between asking S3 and recording its answer: look in the window.
        let plan = sign_plan(without_id(multipart(None, None)).decide());
        assert!(
            matches!(&plan.upload, UploadPlan::Find(r) if r.key == "team/old.bin"),
            "{:?}",
            plan.upload
        );
        // For an older spec: abandoned, and a new upload.
        let plan = sign_plan(without_id(multipart(Some("older"), None)).decide());
        assert!(
            matches!(&plan.upload, UploadPlan::New { abandoned: Some(r) } if r.id.is_none()),
            "{:?}",
            plan.upload
        );
        // A record at an object the issuer does not let the grant reach
        // (a status somebody else wrote): left alone, a new upload.
        let elsewhere = multipart(Some("older"), None);
        let elsewhere = Case {
            recorded: elsewhere.recorded.clone().map(|r| Recorded {
                bucket: "someone-elses".into(),
                ..r
            }),
            ..elsewhere
        };
        assert_eq!(
            sign_plan(elsewhere.decide()).upload,
            UploadPlan::New { abandoned: None }
        );
        // Nothing recorded: a new upload, whatever the Secret says.
        let nothing = Case {
            recorded: None,
            secret: Slot::Free,
            ..multipart(None, None)
        };
        assert_eq!(
            sign_plan(nothing.decide()).upload,
            UploadPlan::New { abandoned: None }
        );
    }

    #[test]
    fn what_s3_says_of_the_upload_decides_completed_or_a_new_upload() {
        let h = Some(at(2400));
        let completed = Case {
            upload: Some(UploadState::Completed),
            ..multipart(None, h)
        };
        assert_eq!(
            reason_of(&completed.decide()),
            ("revoke", Some(Reason::Completed))
        );
        let gone = Case {
            upload: Some(UploadState::Gone),
            ..multipart(None, h)
        };
        let plan = sign_plan(gone.decide());
        assert_eq!(plan.upload, UploadPlan::New { abandoned: None });
        let open = Case {
            upload: Some(UploadState::Open),
            ..multipart(None, h)
        };
        assert_eq!(reason_of(&open.decide()), ("keep", None));
        // Completed holds for the generation, whatever the Secret says.
        let settled = Case {
            remembered: Some(Settled {
                reason: Reason::Completed,
                message: COMPLETED,
            }),
            ..multipart(None, h)
        };
        assert_eq!(
            reason_of(&settled.decide()),
            ("revoke", Some(Reason::Completed))
        );
    }

    #[test]
    fn multipart_needs_an_issuer_rule_that_allows_it() {
        let case = Case {
            issuer: Some(open()),
            ..multipart(None, Some(at(2400)))
        };
        match case.decide() {
            Decision::Revoke { reason, message } => {
                assert_eq!(reason, Reason::Forbidden);
                assert!(message.contains("multipart: true"), "{message}");
            }
            other => panic!("forbidden, not {other:?}"),
        }
    }

    #[test]
    fn a_renew_request_is_answered_once() {
        let h = Some(at(2400));
        let new = asked("t1", None, h);
        assert_eq!(reason_of(&new.decide()), ("renew", None));
        match new.decide() {
            Decision::Sign(plan) => {
                assert_eq!(plan.renew_request.as_deref(), Some("t1"));
                assert!(
                    plan.keeps_current_on_failure(at(100)).is_some(),
                    "a failed renew-now keeps the working URL"
                );
            }
            other => panic!("a renewal, not {other:?}"),
        }
        assert_eq!(
            reason_of(&asked("t1", Some("t1"), h).decide()),
            ("keep", None)
        );
        assert_eq!(
            reason_of(&asked("t2", Some("t1"), h).decide()),
            ("renew", None)
        );
        // A URL that is not renewed on its own is still renewed on request,
        // but an expired one is not brought back.
        assert_eq!(
            reason_of(&asked("t1", None, None).decide()),
            ("renew", None)
        );
        let late = Case {
            now: at(3600),
            ..asked("t1", None, None)
        };
        assert_eq!(reason_of(&late.decide()), ("revoke", Some(Reason::Expired)));
        // Asked within the second the URL was signed: the next second.
        let same_second = Case {
            now: at(0),
            ..asked("t1", None, h)
        };
        match same_second.decide() {
            Decision::Keep { wake_at, .. } => assert_eq!(wake_at, at(1)),
            other => panic!("kept until the next second, not {other:?}"),
        }
        // No Secret: the request changes nothing, a first URL is issued.
        let free = Case {
            secret: Slot::Free,
            ..asked("t1", None, h)
        };
        assert_eq!(reason_of(&free.decide()), ("issue", None));
    }

    /// Requests within the window since the URL was signed (at 0) wait for
    /// its end, and however many came, one renewal answers the last.
    #[test]
    fn renew_requests_coalesce_into_one_renewal_per_window() {
        let minute = Duration::from_secs(60);
        // (now, refresh_at, expected, when kept: wake-up and request due)
        let cases = [
            (at(30), Some(at(2400)), "keep", Some((at(60), Some(at(60))))),
            (at(59), Some(at(2400)), "keep", Some((at(60), Some(at(60))))),
            (at(60), Some(at(2400)), "renew", None),
            (at(600), Some(at(2400)), "renew", None),
            // The window ends after the URL's own renewal: that renewal
            // answers the request.
            (at(30), Some(at(45)), "keep", Some((at(45), None))),
            (at(45), Some(at(45)), "renew", None),
        ];
        for (now, refresh_at, expected, kept) in cases {
            let case = Case {
                now,
                renew_interval: minute,
                ..asked("t9", Some("t1"), refresh_at)
            };
            let decision = case.decide();
            assert_eq!(reason_of(&decision).0, expected, "at {now:?}");
            if let Decision::Keep {
                wake_at,
                request_due,
                ..
            } = decision
            {
                assert_eq!(Some((wake_at, request_due)), kept, "at {now:?}");
            }
        }
        // A request already answered waits for nothing.
        let answered = Case {
            renew_interval: minute,
            ..asked("t1", Some("t1"), Some(at(2400)))
        };
        match answered.decide() {
            Decision::Keep { request_due, .. } => assert_eq!(request_due, None),
            other => panic!("kept, not {other:?}"),
        }
    }

    #[test]
    fn every_reason_and_transition() {
        let g = grant(serde_json::json!({}));
        let h = Some(at(2400));
        let table: Vec<(&str, Case, Outcome)> = vec![
            ("new grant", Case::new(g.clone()), ("issue", None)),
            (
                "suspended",
                Case::new(grant(serde_json::json!({"suspend": true}))),
                ("revoke", Some(Reason::Suspended)),
            ),
            (
                "invalid ttl",
                Case::new(grant(serde_json::json!({"ttl": "1s"}))),
                ("revoke", Some(Reason::InvalidSpec)),
            ),
            (
                "ttl too short for the propagation budget",
                Case::new(grant(serde_json::json!({"ttl": "2m59s"}))),
                ("revoke", Some(Reason::InvalidSpec)),
            ),
            (
                "the shortest ttl for the budget",
                Case::new(grant(serde_json::json!({"ttl": "3m"}))),
                ("issue", None),
            ),
            (
                "a short ttl with no budget (consumers read the API)",
                Case {
                    propagation: Duration::ZERO,
                    ..Case::new(grant(serde_json::json!({"ttl": "1m"})))
                },
                ("issue", None),
            ),
            (
                "no issuer named",
                Case {
                    issuer_name: None,
                    issuer: None,
                    ..Case::new(g.clone())
                },
                ("revoke", Some(Reason::IssuerNotFound)),
            ),
            (
                "issuer missing",
                Case {
                    issuer: None,
                    ..Case::new(g.clone())
                },
                ("revoke", Some(Reason::IssuerNotFound)),
            ),
            (
                "forbidden bucket",
                Case {
                    issuer: Some(issuer(
                        "default",
                        serde_json::json!([{"buckets": ["other"]}]),
                    )),
                    ..Case::new(g.clone())
                },
                ("revoke", Some(Reason::Forbidden)),
            ),
            (
                "foreign Secret",
                Case {
                    secret: Slot::Foreign,
                    ..Case::new(g.clone())
                },
                ("conflict", None),
            ),
            (
                "fresh Secret",
                Case {
                    secret: ours(&g, None, h),
                    ..Case::new(g.clone())
                },
                ("keep", None),
            ),
            (
                "refresh time reached",
                Case {
                    secret: ours(&g, None, h),
                    now: at(2400),
                    ..Case::new(g.clone())
                },
                ("renew", None),
            ),
            (
                "spec changed",
                Case {
                    secret: ours(&g, Some("older"), h),
                    ..Case::new(g.clone())
                },
                ("issue", None),
            ),
            (
                "unrenewed URL expired",
                Case {
                    secret: ours(&g, None, None),
                    now: at(3600),
                    ..Case::new(g.clone())
                },
                ("revoke", Some(Reason::Expired)),
            ),
            (
                "expired, Secret gone",
                Case::new(with_ready(g.clone(), Reason::Expired, 2)),
                ("revoke", Some(Reason::Expired)),
            ),
            (
                "expired under an older spec",
                Case::new(with_ready(g.clone(), Reason::Expired, 1)),
                ("issue", None),
            ),
            (
                "notAfter passed",
                Case {
                    secret: ours(&g, None, h),
                    ..Case::new(grant(
                        serde_json::json!({"notAfter": "2027-01-15T08:00:00Z"}),
                    ))
                },
                ("revoke", Some(Reason::Expired)),
            ),
            (
                "Secret refused for this generation",
                Case::new(with_ready(g.clone(), Reason::InvalidSpec, 2)),
                ("revoke", Some(Reason::InvalidSpec)),
            ),
            (
                "expired, the cache not showing it yet",
                Case {
                    remembered: Some(Settled {
                        reason: Reason::Expired,
                        message: "the URL expired",
                    }),
                    ..Case::new(g.clone())
                },
                ("revoke", Some(Reason::Expired)),
            ),
            (
                "refused, the cache not showing it yet",
                Case {
                    remembered: Some(Settled {
                        reason: Reason::InvalidSpec,
                        message: "denied",
                    }),
                    ..Case::new(g.clone())
                },
                ("revoke", Some(Reason::InvalidSpec)),
            ),
            (
                "Secret refused for an older generation",
                Case::new(with_ready(g.clone(), Reason::InvalidSpec, 1)),
                ("issue", None),
            ),
        ];
        for (name, case, want) in table {
            assert_eq!(reason_of(&case.decide()), want, "{name}");
        }
    }

    #[test]
    fn admission_says_which_rule_allows_or_why_each_refuses() {
        let g = grant(serde_json::json!({}));
        let two = issuer(
            "default",
            serde_json::json!([{"buckets": ["other"]}, {"buckets": ["reports"]}]),
        );
        let labels = BTreeMap::new();
        let admission = |issuer| Admission {
            grant: &g,
            issuer_name: Some("default"),
            issuer,
            namespace_labels: &labels,
            propagation: DEFAULT_PROPAGATION_BUDGET,
        };
        let admitted = admit(&admission(Some(&two))).expect("rule 1 allows");
        assert_eq!(admitted.rule, 1);
        assert_eq!(admitted.verdicts.len(), 2);
        let none = issuer("default", serde_json::json!([{"buckets": ["other"]}]));
        let refused = admit(&admission(Some(&none))).expect_err("forbidden");
        assert_eq!(refused.reason, Reason::Forbidden);
        assert!(
            refused.verdicts[0]
                .refusal
                .as_ref()
                .is_some_and(|r| r.contains("bucket"))
        );
        let missing = admit(&admission(None)).expect_err("no issuer");
        assert_eq!(missing.reason, Reason::IssuerNotFound);
        assert!(missing.verdicts.is_empty());
    }

    #[test]
    fn a_kept_secret_wakes_at_its_refresh_time_or_expiry() {
        let g = grant(serde_json::json!({}));
        let keep = |refresh| {
            let case = Case {
                secret: ours(&g, None, refresh),
                ..Case::new(g.clone())
            };
            match case.decide() {
                Decision::Keep { wake_at, .. } => wake_at,
                other => panic!("kept, not {other:?}"),
            }
        };
        assert_eq!(keep(Some(at(2400))), at(2400));
        assert_eq!(keep(None), at(3600));
    }

    #[test]
    fn a_renamed_secret_leaves_the_old_name_to_remove() {
        let mut g = grant(serde_json::json!({"secret": {"name": "new"}}));
        g.status = Some(UploadGrantStatus {
            secret_name: Some("old".into()),
            ..UploadGrantStatus::default()
        });
        match Case::new(g).decide() {
            Decision::Sign(plan) => assert_eq!(plan.stale.as_deref(), Some("old")),
            other => panic!("signed, not {other:?}"),
        }
    }

    #[test]
    fn only_a_failed_renewal_keeps_the_current_url() {
        let g = grant(serde_json::json!({}));
        let plan = |secret, now| match (Case {
            secret,
            now,
            ..Case::new(g.clone())
        })
        .decide()
        {
            Decision::Sign(plan) => *plan,
            other => panic!("signed, not {other:?}"),
        };
        let renewal = plan(ours(&g, None, Some(at(2400))), at(2400));
        assert!(renewal.keeps_current_on_failure(at(2400)).is_some());
        assert!(renewal.keeps_current_on_failure(at(3600)).is_none());
        let replacement = plan(ours(&g, Some("older"), Some(at(2400))), at(100));
        assert!(replacement.keeps_current_on_failure(at(100)).is_none());
    }

    #[test]
    fn a_url_capped_by_not_after_is_not_renewed() {
        let g = grant(serde_json::json!({"notAfter": "2027-01-15T08:00:00Z"}));
        let valid = validate(&g.spec, "g").expect("valid");
        let end = valid.not_after.expect("notAfter");
        let now = end - Duration::from_secs(40);
        let t = times(now, &valid, None, Duration::ZERO, 0.5).expect("a lifetime");
        assert_eq!(t.lifetime, Duration::from_secs(40));
        assert_eq!(t.refresh_at, None);
        let creds_end = now + Duration::from_secs(30);
        assert_eq!(
            times(now, &valid, Some(creds_end), Duration::ZERO, 0.5),
            None,
            "credentials ending within the margin leave nothing to sign"
        );
    }

    #[test]
    fn a_too_short_ttl_says_what_the_budget_allows() {
        let d = Case::new(grant(serde_json::json!({"ttl": "1m"}))).decide();
        let Decision::Revoke { message, .. } = d else {
            panic!("revoked, not {d:?}")
        };
        assert_eq!(
            message,
            "spec.ttl: 1m0s is shorter than 3m0s, the shortest ttl this operator signs: a renewed \
             URL can take up to 2m0s (its propagation budget) to reach pods that mount the Secret"
        );
    }
}
