//! Apply: writes and removes the Secrets a grant owns, and never touches one
//! it does not own.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::build::IssuedState;
use super::{Context, MANAGER};
use crate::api::UploadGrant;
use crate::error::Result;

/// What the operator keeps of a Secret it manages: who it is, its controller
/// owner, and the URL state parsed from its annotations. The annotations
/// themselves would be most of the cache's memory with thousands of grants.
#[derive(Debug, Clone)]
pub struct ManagedSecret {
    /// Name, namespace, uid and the controller ownerReference only.
    pub metadata: ObjectMeta,
    pub state: Option<IssuedState>,
}

impl From<PartialObjectMeta<Secret>> for ManagedSecret {
    fn from(secret: PartialObjectMeta<Secret>) -> Self {
        let meta = secret.metadata;
        ManagedSecret {
            state: meta
                .annotations
                .as_ref()
                .and_then(IssuedState::from_annotations),
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                owner_references: meta.owner_references.map(|refs| {
                    refs.into_iter()
                        .filter(|o| o.controller == Some(true))
                        .collect()
                }),
                ..ObjectMeta::default()
            },
        }
    }
}

/// Lets a `ManagedSecret` sit in a kube-runtime cache as a Secret.
impl kube::Resource for ManagedSecret {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Secret::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        Secret::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        Secret::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Secret::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Who holds the Secret name a grant wants.
#[derive(Debug)]
pub enum Slot {
    /// No Secret by that name.
    Free,
    /// A Secret this grant controls.
    Ours(Box<ManagedSecret>),
    /// Somebody else's Secret: never modified or deleted.
    Foreign,
}

pub fn owned_by(secret: &ManagedSecret, grant: &UploadGrant) -> bool {
    let Some(uid) = grant.uid() else { return false };
    secret
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Who holds the name according to the metadata cache alone, which holds
/// every Secret labelled as ours. A miss may still be someone else's Secret:
/// the create that follows gets a 409 then.
pub fn cached_slot(ctx: &Context, grant: &UploadGrant, namespace: &str, name: &str) -> Slot {
    classify(cached(ctx, namespace, name), grant)
}

/// Looks the name up in the metadata cache first; a miss is confirmed with
/// one GET, since the cache only holds Secrets labelled as ours.
pub async fn slot(ctx: &Context, grant: &UploadGrant, namespace: &str, name: &str) -> Result<Slot> {
    let secret = match cached(ctx, namespace, name) {
        Some(secret) => Some(secret),
        None => api(ctx, namespace)
            .get_metadata_opt(name)
            .await?
            .map(ManagedSecret::from),
    };
    Ok(classify(secret, grant))
}

fn cached(ctx: &Context, namespace: &str, name: &str) -> Option<ManagedSecret> {
    let secret = ctx.secrets.get(&ObjectRef::new(name).within(namespace))?;
    Some((*secret).clone())
}

fn classify(secret: Option<ManagedSecret>, grant: &UploadGrant) -> Slot {
    match secret {
        None => Slot::Free,
        Some(secret) if owned_by(&secret, grant) => Slot::Ours(Box::new(secret)),
        Some(_) => Slot::Foreign,
    }
}

/// Writes a Secret: create when the name is free, server-side apply when it
/// holds ours, whose uid is given. Returns false when the name turned out to
/// be taken by another Secret.
pub async fn write(
    ctx: &Context,
    namespace: &str,
    secret: &Secret,
    ours: Option<&str>,
) -> Result<bool> {
    let api = api(ctx, namespace);
    let name = secret.name_any();
    if let Some(uid) = ours {
        // With the uid in the body the server refuses (uid is immutable)
        // rather than apply over a Secret that replaced ours meanwhile.
        let mut secret = secret.clone();
        secret.metadata.uid = Some(uid.to_owned());
        let params = PatchParams::apply(MANAGER).force();
        return match api.patch(&name, &params, &Patch::Apply(&secret)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("metadata.uid") => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        };
    }
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a Secret if, and only if, it is the one this grant owns: the uid
/// precondition makes the server refuse when the name now holds another.
/// Returns whether something was deleted.
pub async fn remove(
    ctx: &Context,
    grant: &UploadGrant,
    namespace: &str,
    name: &str,
) -> Result<bool> {
    let Slot::Ours(meta) = slot(ctx, grant, namespace, name).await? else {
        return Ok(false);
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: meta.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api(ctx, namespace).delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn api(ctx: &Context, namespace: &str) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), namespace)
}

#[cfg(test)]
mod tests {
    //! Edge cases of ownership against a mocked API server: what requests are
    //! sent, and which are never sent.
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use kube::client::Body;
    use kube::runtime::reflector;

    use super::*;
    use crate::controller::Settings;
    use crate::metrics::Metrics;
    use crate::signing::{CredentialSnapshot, Presigner};

    fn context(client: kube::Client) -> Context {
        let creds = aws_credential_types::Credentials::new("AKID", "secret", None, None, "test");
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        Context {
            events: crate::controller::events::Events::new(client.clone(), "test", None),
            client,
            settings: Settings {
                default_issuer: None,
                concurrency: 1,
                namespace: None,
            },
            credentials: CredentialSnapshot::new(
                aws_credential_types::provider::SharedCredentialsProvider::new(creds),
            ),
            presigner: Presigner::new(sdk),
            issuers: reflector::store().0,
            namespaces: reflector::store().0,
            secrets: reflector::store().0,
            metrics: Arc::new(Metrics::default()),
            failures: Mutex::default(),
            written: Mutex::default(),
        }
    }

    fn grant() -> UploadGrant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
            "metadata": {"name": "g", "namespace": "ns", "uid": "grant-uid"},
            "spec": {"bucket": "reports", "key": "k"}
        }))
        .expect("fixture")
    }

    fn secret_meta(owner_uid: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "g", "namespace": "ns", "uid": "secret-uid", "ownerReferences": [{
                "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "name": "g",
                "uid": owner_uid, "controller": true
            }]}
        })
    }

    #[tokio::test]
    async fn a_status_write_is_skipped_only_while_the_cache_shows_the_status_before_it() {
        use crate::controller::reconcile::WrittenStatus;
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(kube::Client::new(service, "ns"));
        let wrote = WrittenStatus {
            grant: 1,
            before: 10,
            status: 20,
        };
        assert!(!ctx.status_written(wrote), "nothing written yet");
        ctx.record_status(wrote);
        assert!(ctx.status_written(wrote), "the cache is behind our write");
        let changed_meanwhile = WrittenStatus {
            before: 30,
            ..wrote
        };
        assert!(!ctx.status_written(changed_meanwhile), "someone else wrote");
        ctx.forget_status_key(1);
        assert!(!ctx.status_written(wrote), "forgotten after a failed write");
    }

    #[test]
    fn the_cache_keeps_identity_owner_and_url_state_only() {
        let mut meta = secret_meta("grant-uid");
        meta["metadata"]["labels"] =
            serde_json::json!({"app.kubernetes.io/managed-by": "upload-grant-operator"});
        meta["metadata"]["annotations"] = serde_json::json!({
            "grants.io/spec-hash": "abc", "grants.io/issued-at": "2026-11-29T10:00:00Z",
            "grants.io/expires-at": "2026-11-29T11:00:00Z", "grants.io/refresh-at": "2026-11-29T10:40:00Z",
            "grants.io/url-fingerprint": "sha256:0123", "note": "kept by the server, not by us",
        });
        meta["metadata"]["ownerReferences"]
            .as_array_mut()
            .expect("list")
            .push(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "x"}));
        let partial: PartialObjectMeta<Secret> = serde_json::from_value(meta).expect("fixture");
        let cached = ManagedSecret::from(partial);
        assert!(owned_by(&cached, &grant()));
        assert_eq!(cached.uid().as_deref(), Some("secret-uid"));
        assert_eq!(cached.owner_references().len(), 1, "only the controller");
        assert!(cached.metadata.annotations.is_none() && cached.metadata.labels.is_none());
        let state = cached.state.expect("parsed from the annotations");
        assert_eq!(state.spec_hash, "abc");
        assert_eq!(state.fingerprint, "sha256:0123");
        assert!(state.refresh_at.is_some_and(|r| r < state.expires_at));
    }

    #[tokio::test]
    async fn a_foreign_secret_is_looked_at_and_never_deleted() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(kube::Client::new(service, "ns"));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a GET");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ns/secrets/g");
            let body = serde_json::to_vec(&secret_meta("someone-else")).expect("json");
            send.send_response(
                Response::builder()
                    .body(Body::from(body))
                    .expect("response"),
            );
            // Nothing else may be sent: no DELETE.
            assert!(
                handle.next_request().await.is_none(),
                "a request after the GET"
            );
        });
        let deleted = remove(&ctx, &grant(), "ns", "g").await.expect("no error");
        assert!(!deleted);
        drop(ctx);
        server.await.expect("mock server");
    }

    #[tokio::test]
    async fn an_owned_secret_is_deleted_only_with_its_uid_as_precondition() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(kube::Client::new(service, "ns"));
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("a GET");
            let body = serde_json::to_vec(&secret_meta("grant-uid")).expect("json");
            send.send_response(
                Response::builder()
                    .body(Body::from(body))
                    .expect("response"),
            );
            let (req, send) = handle.next_request().await.expect("a DELETE");
            assert_eq!(req.method(), http::Method::DELETE);
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let params: serde_json::Value = serde_json::from_slice(&bytes).expect("json body");
            assert_eq!(params["preconditions"]["uid"], "secret-uid");
            let status = serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&status).expect("json")))
                    .expect("response"),
            );
        });
        let deleted = remove(&ctx, &grant(), "ns", "g").await.expect("no error");
        assert!(deleted);
        server.await.expect("mock server");
    }
}
