//! Report: what the grant's status and events say once a decision was
//! carried out, and when the grant is looked at next. Pure: built from what
//! apply did, so a status can only say what was done.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::build::{IssuedState, format_time};
use super::events::{EventReason, Note};
use super::recorded::Recorded;
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

/// What became of a grant's uploads when it was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aborted {
    /// None was recorded or found.
    Nothing,
    /// This many were aborted (or were already gone).
    Uploads(usize),
    /// The issuer is gone, so there is no endpoint to reach: the bucket's
    /// lifecycle rule is the backstop.
    NoIssuer,
    /// The issuer does not let the grant reach the recorded object: no S3
    /// call is made on it.
    NotAllowed,
}

/// What apply carried out: everything the report says comes from here.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// The grant's Secrets were removed (`removed`: any existed) and its
    /// upload aborted (`Err`: the abort failed, and why).
    Revoked {
        reason: Reason,
        message: String,
        removed: bool,
        aborted: Result<Aborted, String>,
    },
    /// Somebody else's Secret holds the name; nothing was touched.
    Conflict { secret_name: String },
    /// The Secret's URL is current; a Secret under a former name was
    /// removed (`stale_removed`). Looked at again at `wake_at`.
    Kept {
        secret_name: String,
        state: IssuedState,
        stale_removed: bool,
        wake_at: SystemTime,
        /// A renew request waits for the end of its window, then.
        request_due: Option<SystemTime>,
    },
    /// An earlier write of ours, which the cache had not shown, is current.
    Current {
        secret_name: String,
        state: IssuedState,
    },
    /// A URL was just written.
    Issued {
        secret_name: String,
        state: IssuedState,
        renewal: bool,
    },
    /// The apiserver refused the Secret (`why`, with no URL in it); the
    /// grant's Secrets were removed.
    Refused {
        secret_name: String,
        why: String,
        removed: bool,
    },
    /// Signing failed; the current URL is kept while it works.
    Failed {
        reason: Reason,
        detail: String,
        kept: Option<(String, IssuedState)>,
    },
    /// The grant is deleted: its revocation is announced (`announce`), and
    /// what became of its upload. Its status is not written.
    Deleted { announce: bool, aborted: Aborted },
}

/// What is said once a decision was carried out: a live grant's status
/// and events, or only the events of a deleted one.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    Status(Box<Report>),
    Deleted(Vec<Note>),
}

/// What to say of what was done, and of what followed it.
pub fn say(done: Done, after: After, now: SystemTime) -> Said {
    let report = match done {
        Done::Deleted { announce, aborted } => return Said::Deleted(deleted(announce, aborted)),
        Done::Revoked {
            reason,
            message,
            removed,
            aborted,
        } => Report::revoked_and_aborted(reason, message, removed, aborted),
        Done::Conflict { secret_name } => Report::conflict(&secret_name),
        Done::Kept {
            secret_name,
            state,
            stale_removed,
            wake_at,
            request_due,
        } => Report::ready(&secret_name, state, stale_removed)
            .waking_at(wake_at)
            .answering_at(request_due),
        Done::Current { secret_name, state } => Report::ready(&secret_name, state, false),
        Done::Issued {
            secret_name,
            state,
            renewal,
        } => Report::issued(&secret_name, state, renewal),
        Done::Refused {
            secret_name,
            why,
            removed,
        } => {
            let message = format!("the apiserver refused Secret {secret_name:?}: {why}");
            Report::revoked(Reason::InvalidSpec, message, removed)
        }
        Done::Failed {
            reason,
            detail,
            kept,
        } => Report::failed(reason, detail, kept.as_ref().map(|(n, s)| (n.as_str(), s))),
    };
    Said::Status(Box::new(report.followed_by(after, now)))
}

impl Done {
    /// The URL the grant's Secret holds now, if it is current.
    pub fn current_url(&self) -> Option<&IssuedState> {
        match self {
            Done::Kept { state, .. } | Done::Current { state, .. } | Done::Issued { state, .. } => {
                Some(state)
            }
            _ => None,
        }
    }
}

/// What followed a current URL, for the report's events and wake-up: the
/// rollout restarts' notes, when a restart window ends, and when an open
/// multipart upload is looked at next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct After {
    pub restart_notes: Vec<Note>,
    pub restart_wake: Option<SystemTime>,
    pub upload_check: Option<SystemTime>,
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
    /// Said whatever the status: the rollout restarts' notes.
    pub restart_notes: Vec<Note>,
}

impl Report {
    /// A revocation, and what became of the grant's upload: the status
    /// keeps naming the upload when it was completed or the abort failed.
    fn revoked_and_aborted(
        reason: Reason,
        message: String,
        removed: bool,
        aborted: Result<Aborted, String>,
    ) -> Self {
        let message = match aborted {
            Ok(aborted) => aborted_message(message, aborted),
            Err(e) => format!("{message}; aborting the multipart upload failed: {e}"),
        };
        Report::revoked(reason, message, removed)
    }

    /// Restart notes are said; a restart window or an upload look due
    /// sooner brings the wake-up forward (the look only while a URL is out).
    fn followed_by(mut self, after: After, now: SystemTime) -> Self {
        if let Some(at) = after.restart_wake {
            self.wake = self.wake.or_at(at, now);
        }
        if let Some(at) = after.upload_check.filter(|_| self.reason == Reason::Issued) {
            self.wake = self.wake.or_at(at, now);
        }
        self.restart_notes = after.restart_notes;
        self
    }

    /// The events to publish once the status is written: a warning only
    /// when the status changes, not on every retry; Issued and Renewed
    /// (counted in metrics) only with `lifecycle_events`.
    pub fn events(&self, status_changes: bool, lifecycle_events: bool) -> Vec<Note> {
        let said = self.note.iter().filter(|note| {
            let lifecycle = note.reason.is_lifecycle();
            (status_changes || !note.reason.is_warning()) && (!lifecycle || lifecycle_events)
        });
        said.chain(&self.restart_notes).cloned().collect()
    }

    fn not_ready(reason: Reason, message: String, wake: Wake, note: Option<Note>) -> Self {
        Report {
            reason,
            message,
            issued: None,
            secret_name: None,
            wake,
            note,
            restart_notes: Vec::new(),
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
            restart_notes: Vec::new(),
        }
    }

    /// Wakes a second after `at`, so the wake-up lands after the planned instant.
    pub fn waking_at(self, at: SystemTime) -> Self {
        Report {
            wake: Wake::At(at + Duration::from_secs(1)),
            ..self
        }
    }

    /// Says when a waiting renew request is answered (`kubectl grant renew`
    /// shows it).
    fn answering_at(mut self, request_due: Option<SystemTime>) -> Self {
        if let Some(at) = request_due {
            self.message += &format!(
                "; the renew request is answered at {} (one renewal per --renew-request-interval)",
                format_time(at)
            );
        }
        self
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

/// What a revocation says about the grant's multipart upload.
fn aborted_message(message: String, aborted: Aborted) -> String {
    match aborted {
        Aborted::Nothing => message,
        Aborted::Uploads(_) => format!("{message}; the multipart upload was aborted"),
        Aborted::NoIssuer => format!(
            "{message}; the multipart upload could not be aborted (the issuer is gone): the bucket's AbortIncompleteMultipartUpload lifecycle rule is the backstop"
        ),
        Aborted::NotAllowed => format!(
            "{message}; the multipart upload was not aborted: the issuer does not let this grant reach the object its status records, so the operator makes no S3 call on it (the bucket's AbortIncompleteMultipartUpload lifecycle rule is the backstop)"
        ),
    }
}

/// What is said of a deleted grant: its Secret's revocation (`announce`),
/// and what became of its upload.
fn deleted(announce: bool, aborted: Aborted) -> Vec<Note> {
    let revoked =
        announce.then(|| Note::new(EventReason::Revoked, "grant deleted; Secret removed"));
    let upload = (aborted != Aborted::Nothing).then(|| {
        let reason = match aborted {
            Aborted::NoIssuer | Aborted::NotAllowed => EventReason::Failed,
            _ => EventReason::Revoked,
        };
        Note::new(reason, aborted_message("grant deleted".into(), aborted))
    });
    revoked.into_iter().chain(upload).collect()
}

fn removal(message: &str, removed: bool) -> String {
    if removed {
        format!("{message}; the Secret was removed")
    } else {
        message.to_owned()
    }
}

/// The status a report gives a grant whose status is `old` and whose
/// upload record is `recorded` (the status's, or what this pass made of
/// it: `multipart` writes and clears the record).
pub fn status_of(
    grant: &UploadGrant,
    report: &Report,
    recorded: Option<&Recorded>,
    now: Time,
) -> UploadGrantStatus {
    let old = grant.status.clone().unwrap_or_default();
    let time = |t: SystemTime| Time(jiff::Timestamp::try_from(t).unwrap_or_default());
    let issued = report.issued.as_ref();
    let (upload_id, upload) = recorded.map(Recorded::to_status).unwrap_or_default();
    let mut new = UploadGrantStatus {
        conditions: old.conditions,
        secret_name: report.secret_name.clone(),
        issued_at: issued.map(|s| time(s.issued_at)),
        expires_at: issued.map(|s| time(s.expires_at)),
        refresh_at: issued.and_then(|s| s.refresh_at.map(time)),
        url_fingerprint: issued.map(|s| s.fingerprint.clone()),
        upload_id,
        upload,
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
