//! Events on a grant (Revoked, Denied, Failed, RolloutRestarted /
//! RolloutRestartFailed for its rollout targets, RenewalAtRisk from the
//! renewal forecast, and Issued and Renewed with `--lifecycle-events`).
//!
//! kube-runtime's `Recorder` keeps every event it sent for six minutes to
//! count repeats, and scans that cache on every publish; with thousands of
//! grants that costs megabytes and serialises all reconciles on one lock. The
//! reconcile already reports a repeated warning only once per change, so
//! events here are created and forgotten, off the reconcile's critical path.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use tokio_util::task::TaskTracker;

use crate::api::UploadGrant;

/// Why an event is published. Each reason has one type: what went well is
/// Normal, what a user must act on is a Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReason {
    Issued,
    Renewed,
    Revoked,
    Denied,
    Failed,
    RolloutRestarted,
    RolloutRestartFailed,
    /// The renewal forecast says the grant's URL will not be renewed
    /// before its deadline (`at_risk`).
    RenewalAtRisk,
}

impl EventReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Issued => "Issued",
            EventReason::Renewed => "Renewed",
            EventReason::Revoked => "Revoked",
            EventReason::Denied => "Denied",
            EventReason::Failed => "Failed",
            EventReason::RolloutRestarted => "RolloutRestarted",
            EventReason::RolloutRestartFailed => "RolloutRestartFailed",
            EventReason::RenewalAtRisk => "RenewalAtRisk",
        }
    }

    pub fn is_warning(self) -> bool {
        matches!(
            self,
            EventReason::Denied
                | EventReason::Failed
                | EventReason::RolloutRestartFailed
                | EventReason::RenewalAtRisk
        )
    }

    /// A URL issued or renewed: routine, counted in
    /// `upload_grant_issued_total`, published only with `--lifecycle-events`.
    pub fn is_lifecycle(self) -> bool {
        matches!(self, EventReason::Issued | EventReason::Renewed)
    }

    fn type_(self) -> &'static str {
        if self.is_warning() {
            "Warning"
        } else {
            "Normal"
        }
    }
}

/// An event about to be published: its reason and the note a user reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub reason: EventReason,
    pub text: String,
}

impl Note {
    pub fn new(reason: EventReason, text: impl Into<String>) -> Self {
        Note {
            reason,
            text: text.into(),
        }
    }
}

/// Object names are DNS subdomains of at most 253 characters.
const MAX_NAME: usize = 253;
/// The suffix is `.` and at most 16 hex digits of nanoseconds.
const MAX_SUFFIX: usize = 17;

/// `<grant>.<nanoseconds in hex>`, with the grant's name cut short enough
/// that the event's name stays valid for the longest grant names.
fn event_name(regarding: &str, nanos: i128) -> String {
    let cut: String = regarding.chars().take(MAX_NAME - MAX_SUFFIX).collect();
    format!("{}.{:x}", cut.trim_end_matches(['.', '-']), nanos.max(0))
}

#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    /// The publishes in flight, which a shutdown lets finish (`flush`).
    sending: TaskTracker,
}

impl Events {
    /// `instance` tells replicas apart (the pod name); the controller name
    /// stands in when it is unknown.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Events {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            sending: TaskTracker::new(),
        }
    }

    /// Waits, at most `within`, for the events already published to be
    /// sent: an event of the last pass before a shutdown (a restart it made,
    /// a revocation) would otherwise be dropped with the runtime.
    pub async fn flush(&self, within: Duration) {
        self.sending.close();
        if tokio::time::timeout(within, self.sending.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.sending.len(),
                "events still unsent at shutdown"
            );
        }
    }

    /// Sends the event in the background; a failure is logged, never fatal.
    pub fn publish(&self, grant: &UploadGrant, note: Note) {
        self.publish_regarding(grant.object_ref(&()), note);
    }

    /// As `publish`, about the object `regarding` names: a grant known only
    /// by reference (a Secret's controller).
    pub fn publish_regarding(&self, regarding: ObjectReference, note: Note) {
        let namespace = regarding.namespace.clone();
        let name = regarding.name.clone().unwrap_or_default();
        let event = self.event(regarding, note);
        let api: Api<Event> = Api::namespaced(
            self.client.clone(),
            namespace.as_deref().unwrap_or("default"),
        );
        self.sending.spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(grant = %name, error = %e, "could not publish event");
            }
        });
    }

    fn event(&self, regarding: ObjectReference, note: Note) -> Event {
        let now = jiff::Timestamp::now();
        let reason = note.reason;
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond(),
                )),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(reason.as_str().to_owned()),
            reason: Some(reason.as_str().to_owned()),
            note: Some(note.text),
            type_: Some(reason.type_().to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shutdown lets an event already published reach the apiserver,
    /// though the apiserver answers it only later.
    #[tokio::test]
    async fn a_flush_waits_for_the_events_in_flight() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let events = Events::new(kube::Client::new(service, "ns"), "op", None);
        let grant = crate::fixtures::grant(serde_json::json!({}));
        events.publish(
            &grant,
            Note::new(EventReason::RolloutRestarted, "restarted"),
        );
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("the event");
            assert_eq!(request.method(), http::Method::POST);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let body = serde_json::to_vec(&Event::default()).expect("json");
            send.send_response(
                Response::builder()
                    .body(Body::from(body))
                    .expect("response"),
            );
        });
        events.flush(Duration::from_secs(10)).await;
        assert!(
            events.sending.is_empty(),
            "flush returned with the event unsent"
        );
        server.await.expect("mock server");
    }

    #[test]
    fn event_names_stay_valid_for_the_longest_grant_names() {
        let longest = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        assert_eq!(longest.len(), MAX_NAME);
        let name = event_name(&longest, i128::from(u64::MAX));
        assert!(name.len() <= MAX_NAME, "{} characters", name.len());
        assert!(name.ends_with(".ffffffffffffffff"));
        // A cut that lands on '-' or '.' would leave an invalid name.
        let cut = event_name(&format!("{}-x", "a".repeat(235)), 1);
        assert_eq!(cut, format!("{}.1", "a".repeat(235)));
        assert_eq!(event_name("short", 255), "short.ff");
    }

    #[test]
    fn warnings_are_what_a_user_acts_on() {
        use EventReason::*;
        let all = [
            Issued,
            Renewed,
            Revoked,
            Denied,
            Failed,
            RolloutRestarted,
            RolloutRestartFailed,
            RenewalAtRisk,
        ];
        let warnings: Vec<_> = all.into_iter().filter(|r| r.is_warning()).collect();
        assert_eq!(
            warnings,
            [Denied, Failed, RolloutRestartFailed, RenewalAtRisk]
        );
    }
}
