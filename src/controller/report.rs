//! Report: what the grant's status and events say once a decision was
//! carried out, and when the grant is looked at next. Pure: built from what
//! apply did, so a status can only say what was done.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::build::{IssuedState, format_time};
use super::events::{EventReason, Note};
use crate::api::condition::set_ready;
use crate::api::{Reason, UploadGrant, UploadGrantStatus};

/// How long to wait before looking again at a name held by a Secret that is
/// not ours: such Secrets are not watched.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// When to run the next reconcile of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    At(SystemTime),
    After(Duration),
    OnChange,
}

impl Wake {
    /// This wake-up, or one at `at` if that comes first.
    pub fn or_at(self, at: SystemTime, now: SystemTime) -> Wake {
        let sooner = match self {
            Wake::At(t) => at < t,
            Wake::After(d) => at < now + d,
            Wake::OnChange => true,
        };
        if sooner { Wake::At(at) } else { self }
    }
}

/// What the grant's status and events say once a decision is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub reason: Reason,
    pub message: String,
    pub issued: Option<IssuedState>,
    pub secret_name: Option<String>,
    pub wake: Wake,
    pub note: Option<Note>,
    /// Multipart grants without a current Secret: an upload the status
    /// still names (a completed one, or one an abort has yet to reach).
    pub upload_id: Option<String>,
}

impl Report {
    fn not_ready(reason: Reason, message: String, wake: Wake, note: Option<Note>) -> Self {
        Report {
            reason,
            message,
            issued: None,
            secret_name: None,
            wake,
            note,
            upload_id: None,
        }
    }

    /// Secrets were revoked (`removed` says whether any existed).
    pub fn revoked(reason: Reason, message: String, removed: bool) -> Self {
        let note = match reason {
            Reason::Suspended => {
                removed.then(|| Note::new(EventReason::Revoked, "grant suspended; Secret removed"))
            }
            Reason::Expired | Reason::Completed => {
                removed.then(|| Note::new(EventReason::Revoked, message.clone()))
            }
            Reason::InvalidSpec => Some(Note::new(EventReason::Failed, removal(&message, removed))),
            _ => Some(Note::new(EventReason::Denied, removal(&message, removed))),
        };
        Report::not_ready(reason, message, Wake::OnChange, note)
    }

    pub fn conflict(secret_name: &str) -> Self {
        let msg = format!(
            "Secret {secret_name:?} exists and is not owned by this grant; it is left untouched. Delete it or set spec.secret.name"
        );
        let note = Note::new(EventReason::Failed, msg.clone());
        Report::not_ready(
            Reason::SecretConflict,
            msg,
            Wake::After(CONFLICT_RECHECK),
            Some(note),
        )
    }

    /// The Secret holds a current URL.
    pub fn ready(secret_name: &str, state: IssuedState, stale_removed: bool) -> Self {
        let message = match state.refresh_at {
            Some(at) => format!(
                "URL valid until {}; renews at {}",
                format_time(state.expires_at),
                format_time(at)
            ),
            None => format!(
                "URL valid until {}; it is not renewed",
                format_time(state.expires_at)
            ),
        };
        let note = stale_removed.then(|| {
            Note::new(
                EventReason::Revoked,
                "the Secret was renamed; the old one was removed",
            )
        });
        Report {
            reason: Reason::Issued,
            message,
            secret_name: Some(secret_name.to_owned()),
            // One second more, so the wake-up lands after the planned instant.
            wake: Wake::At(state.refresh_at.unwrap_or(state.expires_at) + Duration::from_secs(1)),
            issued: Some(state),
            note,
            upload_id: None,
        }
    }

    /// Wakes a second after `at`, so the wake-up lands after the planned instant.
    pub fn waking_at(self, at: SystemTime) -> Self {
        Report {
            wake: Wake::At(at + Duration::from_secs(1)),
            ..self
        }
    }

    /// A URL was just written.
    pub fn issued(secret_name: &str, state: IssuedState, renewal: bool) -> Self {
        let expires = format_time(state.expires_at);
        let note = if renewal {
            Note::new(
                EventReason::Renewed,
                format!("URL renewed; expires at {expires}"),
            )
        } else {
            Note::new(
                EventReason::Issued,
                format!("URL issued into Secret {secret_name:?}; expires at {expires}"),
            )
        };
        Report {
            note: Some(note),
            ..Report::ready(secret_name, state, false)
        }
    }

    /// Signing failed; the current URL is reported while it is kept.
    pub fn failed(reason: Reason, detail: String, kept: Option<(&str, &IssuedState)>) -> Self {
        let message = match kept {
            Some((_, s)) => format!(
                "{detail}; the current URL stays valid until {}",
                format_time(s.expires_at)
            ),
            None => detail,
        };
        let note = Some(Note::new(EventReason::Failed, message.clone()));
        let mut report = Report::not_ready(reason, message, Wake::OnChange, note);
        if let Some((name, state)) = kept {
            report.issued = Some(state.clone());
            report.secret_name = Some(name.to_owned());
        }
        report
    }
}

fn removal(message: &str, removed: bool) -> String {
    if removed {
        format!("{message}; the Secret was removed")
    } else {
        message.to_owned()
    }
}

/// The status a report gives a grant whose status is `old`.
pub fn status_of(grant: &UploadGrant, report: &Report, now: Time) -> UploadGrantStatus {
    let old = grant.status.clone().unwrap_or_default();
    let time = |t: SystemTime| Time(jiff::Timestamp::try_from(t).unwrap_or_default());
    let issued = report.issued.as_ref();
    let mut new = UploadGrantStatus {
        conditions: old.conditions,
        secret_name: report.secret_name.clone(),
        issued_at: issued.map(|s| time(s.issued_at)),
        expires_at: issued.map(|s| time(s.expires_at)),
        refresh_at: issued.and_then(|s| s.refresh_at.map(time)),
        url_fingerprint: issued.map(|s| s.fingerprint.clone()),
        upload_id: issued
            .and_then(|s| s.upload.as_ref().map(|u| u.id.clone()))
            .or_else(|| report.upload_id.clone()),
        observed_generation: old.observed_generation,
    };
    set_ready(
        &mut new,
        report.reason,
        report.message.clone(),
        grant.metadata.generation,
        now,
    );
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_restart_window_can_only_bring_a_wake_up_forward() {
        let now = at(0);
        assert_eq!(Wake::OnChange.or_at(at(60), now), Wake::At(at(60)));
        assert_eq!(Wake::At(at(30)).or_at(at(60), now), Wake::At(at(30)));
        assert_eq!(Wake::At(at(90)).or_at(at(60), now), Wake::At(at(60)));
        let soon = Wake::After(Duration::from_secs(10));
        assert_eq!(soon.or_at(at(60), now), soon);
        assert_eq!(
            Wake::After(Duration::from_secs(70)).or_at(at(60), now),
            Wake::At(at(60))
        );
    }

    #[test]
    fn reports_say_what_happened() {
        let removed = Report::revoked(Reason::Forbidden, "no rule".into(), true);
        assert_eq!(
            removed.note,
            Some(Note::new(
                EventReason::Denied,
                "no rule; the Secret was removed"
            ))
        );
        assert_eq!(removed.wake, Wake::OnChange);
        let quiet = Report::revoked(Reason::Suspended, "suspended".into(), false);
        assert_eq!(quiet.note, None, "nothing was revoked, nothing to say");
        let invalid = Report::revoked(Reason::InvalidSpec, "bad".into(), false);
        assert_eq!(invalid.note.map(|n| n.reason), Some(EventReason::Failed));
        let conflict = Report::conflict("s");
        assert_eq!(conflict.wake, Wake::After(CONFLICT_RECHECK));
        let state = IssuedState {
            spec_hash: "h".into(),
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at: Some(at(2400)),
            fingerprint: "sha256:x".into(),
            renew_request: None,
            replaces: None,
            upload: None,
        };
        let renewed = Report::issued("s", state.clone(), true);
        assert_eq!(renewed.wake, Wake::At(at(2401)));
        assert_eq!(renewed.note.map(|n| n.reason), Some(EventReason::Renewed));
        let failed = Report::failed(Reason::SigningFailed, "boom".into(), Some(("s", &state)));
        assert_eq!(failed.issued, Some(state));
        assert!(
            failed
                .message
                .starts_with("boom; the current URL stays valid")
        );
    }
}
