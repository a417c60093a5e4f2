//! `kubectl grant renew`: asks the operator to sign a new URL now, and waits
//! until the grant's Secret holds it.
//!
//! The contract with the operator: the plugin sets the annotation
//! `grants.io/renew-requested-at` on the UploadGrant to the current time
//! (RFC 3339, nanoseconds); any new value is one request. The operator
//! renews once per distinct value and, when it writes the new URL, copies
//! the value into the same annotation on the Secret. The renewal is done when the Secret carries
//! that value and a fingerprint other than the one before.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};

use super::{Conn, Error, Outcome, secret_name};
use crate::api::UploadGrant;
use crate::api::condition::ready_condition;
use crate::api::duration::{format_duration, parse_duration};
use crate::api::secret::{
    EXPIRES_AT_ANNOTATION, FINGERPRINT_ANNOTATION, RENEW_REQUEST_ANNOTATION as RENEW_REQUESTED_AT,
};

/// How often the Secret is looked at while waiting.
const POLL: Duration = Duration::from_millis(250);

/// Ask the operator to renew the grant's URL now, and wait for the new one.
///
/// Exits 4 if no new URL arrives within --timeout, and says why.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The grant.
    pub name: String,
    /// How long to wait for the new URL (Go duration).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A request's value: now, RFC 3339 with nanoseconds, so two requests
/// differ.
pub fn request_value(now: jiff::Timestamp) -> String {
    format!(
        "{}.{:09}Z",
        now.strftime("%Y-%m-%dT%H:%M:%S"),
        now.subsec_nanosecond().unsigned_abs()
    )
}

/// The new URL, once the Secret shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    pub fingerprint: String,
    pub expires_at: Option<String>,
}

/// Whether the Secret's annotations show the renewal of `requested`.
pub fn renewed(
    annotations: &BTreeMap<String, String>,
    requested: &str,
    before: Option<&str>,
) -> Option<Renewed> {
    let served = annotations.get(RENEW_REQUESTED_AT).map(String::as_str) == Some(requested);
    let fingerprint = annotations.get(FINGERPRINT_ANNOTATION)?;
    (served && Some(fingerprint.as_str()) != before).then(|| Renewed {
        fingerprint: fingerprint.clone(),
        expires_at: annotations.get(EXPIRES_AT_ANNOTATION).cloned(),
    })
}

/// Why no new URL came: the grant's Ready condition, and whether the
/// operator wrote the request to the Secret at all.
pub fn timeout_message(
    timeout: Duration,
    grant: Option<&UploadGrant>,
    secret: Option<(&str, &BTreeMap<String, String>)>,
    requested: &str,
) -> String {
    let mut msg = format!(
        "timed out after {} waiting for the renewal",
        format_duration(timeout)
    );
    match grant.and_then(|g| ready_condition(g.status.as_ref())) {
        Some(c) => {
            msg += &format!(
                "; the grant's Ready is {} ({}): {}",
                c.status, c.reason, c.message
            )
        }
        None if grant.is_none() => msg += "; the grant is gone",
        None => msg += "; the grant has no Ready condition yet",
    }
    msg += &match secret {
        None => "; its Secret does not exist: the operator has not issued a URL for it".into(),
        Some((name, annotations)) => match annotations.get(RENEW_REQUESTED_AT) {
            Some(v) if v == requested => {
                format!("; Secret {name:?} records the request but its URL did not change")
            }
            _ => format!(
                "; Secret {name:?} does not record the request: the operator has not acted on it \
                 (is it running, watching this namespace, and a version that renews on request?)"
            ),
        },
    };
    msg
}

async fn secret_annotations(
    conn: &Conn,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, Error> {
    let meta = conn.api::<Secret>().get_metadata_opt(name).await?;
    Ok(meta.map(|m| m.metadata.annotations.unwrap_or_default()))
}

/// The phrase of the Ready message while a renew request waits for its
/// window (`--renew-request-interval`), before the time it is answered at.
const ANSWERED_AT: &str = "the renew request is answered at ";

/// When the operator answers a waiting renew request, as the grant's Ready
/// message says.
pub fn answered_at(grant: &UploadGrant) -> Option<String> {
    let message = &ready_condition(grant.status.as_ref())?.message;
    let rest = &message[message.find(ANSWERED_AT)? + ANSWERED_AT.len()..];
    Some(
        rest.split_whitespace()
            .next()?
            .trim_end_matches([';', ','])
            .to_owned(),
    )
}

/// How long until an RFC 3339 time; None if it is not one or has passed.
fn until(at: &str) -> Option<Duration> {
    let at: jiff::Timestamp = at.parse().ok()?;
    Duration::try_from(at.duration_since(jiff::Timestamp::now())).ok()
}

async fn request(conn: &Conn, grant: &str, value: &str) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {RENEW_REQUESTED_AT: value}}});
    conn.api::<UploadGrant>()
        .patch(grant, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

pub async fn run(conn: &Conn, args: Args) -> Result<Outcome, Error> {
    let grant = conn.grant(&args.name).await?;
    let secret = secret_name(&grant);
    let before = secret_annotations(conn, &secret)
        .await?
        .and_then(|a| a.get(FINGERPRINT_ANNOTATION).cloned());
    let requested = request_value(jiff::Timestamp::now());
    request(conn, &args.name, &requested).await?;
    let mut deadline = tokio::time::Instant::now() + args.timeout;
    let mut told = false;
    for poll in 1u32.. {
        let annotations = secret_annotations(conn, &secret).await?;
        let done = annotations
            .as_ref()
            .and_then(|a| renewed(a, &requested, before.as_deref()));
        if let Some(r) = done {
            let expires = r.expires_at.as_deref().unwrap_or("an unknown time");
            println!(
                "renewed: URL {} expires at {expires} (Secret {secret:?})",
                r.fingerprint
            );
            return Ok(Outcome::Success);
        }
        // Every two seconds: does the request wait for its window?
        if !told && poll % 8 == 0 {
            let grant = conn.api::<UploadGrant>().get_opt(&args.name).await?;
            if let Some(at) = grant.as_ref().and_then(answered_at) {
                eprintln!(
                    "waiting: the operator renews a grant on request at most once per --renew-request-interval; this request is answered at {at}"
                );
                told = true;
                // --timeout counts from then.
                if let Some(wait) = until(&at) {
                    deadline = deadline.max(tokio::time::Instant::now() + wait + args.timeout);
                }
            }
        }
        if tokio::time::Instant::now() + POLL > deadline {
            let grant = conn.api::<UploadGrant>().get_opt(&args.name).await?;
            let secret_view = annotations.as_ref().map(|a| (secret.as_str(), a));
            let why = timeout_message(args.timeout, grant.as_ref(), secret_view, &requested);
            eprintln!("error: {why}");
            return Ok(Outcome::TimedOut);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Outcome::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_waiting_request_says_when_it_is_answered() {
        let with_message = |message: &str| {
            let mut g = crate::fixtures::grant(serde_json::json!({}));
            g.status = Some(
                serde_json::from_value(serde_json::json!({"conditions": [{
                    "type": "Ready", "status": "True", "reason": "Issued", "message": message,
                    "lastTransitionTime": "2027-01-15T08:00:00Z",
                }]}))
                .expect("status"),
            );
            g
        };
        let waiting = with_message(
            "URL valid until 2027-01-15T09:00:00Z; renews at 2027-01-15T08:40:00Z; the renew request is answered at 2027-01-15T08:01:00Z (one renewal per --renew-request-interval)",
        );
        assert_eq!(
            answered_at(&waiting).as_deref(),
            Some("2027-01-15T08:01:00Z")
        );
        let plain =
            with_message("URL valid until 2027-01-15T09:00:00Z; renews at 2027-01-15T08:40:00Z");
        assert_eq!(answered_at(&plain), None);
    }

    #[test]
    fn the_annotation_is_the_contracts() {
        assert_eq!(RENEW_REQUESTED_AT, "grants.io/renew-requested-at");
    }

    #[test]
    fn request_values_carry_nanoseconds() {
        let t: jiff::Timestamp = "2027-01-15T08:00:00.000000042Z".parse().expect("a time");
        assert_eq!(request_value(t), "2027-01-15T08:00:00.000000042Z");
        let whole: jiff::Timestamp = "2027-01-15T08:00:00Z".parse().expect("a time");
        assert_eq!(request_value(whole), "2027-01-15T08:00:00.000000000Z");
        assert_eq!(
            request_value(whole).parse::<jiff::Timestamp>().ok(),
            Some(whole)
        );
    }

    #[test]
    fn renewed_needs_the_request_served_and_a_new_fingerprint() {
        let req = "2027-01-15T08:00:00.000000042Z";
        let served_new = annotations(&[
            (RENEW_REQUESTED_AT, req),
            (FINGERPRINT_ANNOTATION, "sha256:new"),
            (EXPIRES_AT_ANNOTATION, "2027-01-15T09:00:00Z"),
        ]);
        assert_eq!(
            renewed(&served_new, req, Some("sha256:old")),
            Some(Renewed {
                fingerprint: "sha256:new".into(),
                expires_at: Some("2027-01-15T09:00:00Z".into()),
            })
        );
        assert_eq!(renewed(&served_new, req, Some("sha256:new")), None);
        assert_eq!(
            renewed(&served_new, "another request", Some("sha256:old")),
            None
        );
        let unserved = annotations(&[(FINGERPRINT_ANNOTATION, "sha256:new")]);
        assert_eq!(renewed(&unserved, req, Some("sha256:old")), None);
        assert!(
            renewed(&served_new, req, None).is_some(),
            "a first URL counts"
        );
    }

    #[test]
    fn a_timeout_says_the_reason_and_whether_the_request_was_seen() {
        let g = crate::fixtures::grant_with(serde_json::json!({
            "spec": {"suspend": true},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Suspended",
                "message": "suspended: no URL is issued", "lastTransitionTime": "2027-01-15T08:00:00Z"}]},
        }));
        let t = Duration::from_secs(5);
        let none = annotations(&[]);
        let msg = timeout_message(t, Some(&g), Some(("g", &none)), "r1");
        assert!(msg.starts_with("timed out after 5s"), "{msg}");
        assert!(
            msg.contains("Ready is False (Suspended): suspended"),
            "{msg}"
        );
        assert!(msg.contains("has not acted on it"), "{msg}");
        let seen = annotations(&[(RENEW_REQUESTED_AT, "r1")]);
        let msg = timeout_message(t, Some(&g), Some(("g", &seen)), "r1");
        assert!(msg.contains("records the request"), "{msg}");
        let msg = timeout_message(t, Some(&g), None, "r1");
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(timeout_message(t, None, None, "r1").contains("the grant is gone"));
    }
}
