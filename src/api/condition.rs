//! The Ready condition of a grant and its stable reasons: API that users
//! alert on, kept with the types so every module reads them from one place.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::UploadGrantStatus;

/// The reasons of the Ready condition. They are API: users alert on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Issued,
    InvalidSpec,
    IssuerNotFound,
    Forbidden,
    CredentialsUnavailable,
    SigningFailed,
    SecretConflict,
    Suspended,
    Expired,
    /// A multipart upload was assembled; its Secret is removed.
    Completed,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Issued,
        Reason::InvalidSpec,
        Reason::IssuerNotFound,
        Reason::Forbidden,
        Reason::CredentialsUnavailable,
        Reason::SigningFailed,
        Reason::SecretConflict,
        Reason::Suspended,
        Reason::Expired,
        Reason::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Issued => "Issued",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::IssuerNotFound => "IssuerNotFound",
            Reason::Forbidden => "Forbidden",
            Reason::CredentialsUnavailable => "CredentialsUnavailable",
            Reason::SigningFailed => "SigningFailed",
            Reason::SecretConflict => "SecretConflict",
            Reason::Suspended => "Suspended",
            Reason::Expired => "Expired",
            Reason::Completed => "Completed",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn is_ready(self) -> bool {
        self == Reason::Issued
    }
}

pub const READY: &str = "Ready";

/// The Ready condition in a status, if any.
pub fn ready_condition(status: Option<&UploadGrantStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == READY)
}

/// The Ready condition's reason, if it is one of ours.
pub fn ready_reason(status: Option<&UploadGrantStatus>) -> Option<Reason> {
    ready_condition(status).and_then(|c| Reason::parse(&c.reason))
}

/// When a condition that is now `value` last changed: the previous
/// condition's time when its value is the same, else `now`, as Kubernetes
/// conventions ask. Grants and issuers alike.
pub fn transition_time(previous: Option<&Condition>, value: &str, now: Time) -> Time {
    previous
        .filter(|c| c.status == value)
        .map_or(now, |c| c.last_transition_time.clone())
}

/// Sets the Ready condition, keeping lastTransitionTime when the status value
/// does not change.
pub fn set_ready(
    status: &mut UploadGrantStatus,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Time,
) {
    let value = if reason.is_ready() { "True" } else { "False" };
    let transition = transition_time(ready_condition(Some(status)), value, now);
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(Condition {
        type_: READY.into(),
        status: value.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
    status.observed_generation = generation;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid"))
    }

    #[test]
    fn transition_time_moves_only_when_the_value_changes() {
        let mut s = UploadGrantStatus::default();
        set_ready(&mut s, Reason::Issued, "ok".into(), Some(1), t(10));
        set_ready(&mut s, Reason::Issued, "renewed".into(), Some(1), t(20));
        assert_eq!(
            ready_condition(Some(&s)).map(|c| c.last_transition_time.clone()),
            Some(t(10))
        );
        set_ready(&mut s, Reason::Forbidden, "no".into(), Some(2), t(30));
        let c = ready_condition(Some(&s)).expect("condition");
        assert_eq!(
            (
                c.status.as_str(),
                c.reason.as_str(),
                c.last_transition_time.clone()
            ),
            ("False", "Forbidden", t(30))
        );
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }
}
