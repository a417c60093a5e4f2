//! Events on a grant (Issued, Renewed, Revoked, Denied, Failed).
//!
//! kube-runtime's `Recorder` keeps every event it sent for six minutes to
//! count repeats, and scans that cache on every publish; with thousands of
//! grants that costs megabytes and serialises all reconciles on one lock. The
//! reconcile already reports a repeated warning only once per change, so
//! events here are created and forgotten, off the reconcile's critical path.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::UploadGrant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
}

impl Events {
    /// `instance` tells replicas apart (the pod name); the controller name
    /// stands in when it is unknown.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Events {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
        }
    }

    /// Sends the event in the background; a failure is logged, never fatal.
    pub fn publish(&self, grant: &UploadGrant, type_: EventType, reason: &str, note: String) {
        let event = self.event(grant.object_ref(&()), type_, reason, note);
        let api: Api<Event> = Api::namespaced(
            self.client.clone(),
            grant.namespace().as_deref().unwrap_or("default"),
        );
        let name = grant.name_any();
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(grant = %name, error = %e, "could not publish event");
            }
        });
    }

    fn event(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) -> Event {
        let now = jiff::Timestamp::now();
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(reason.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note),
            type_: Some(type_.as_str().to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}
