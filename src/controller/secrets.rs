//! Secrets: the one place that reads, writes and removes the Secrets a grant
//! owns, and never touches one it does not own.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};

use super::context::Context;
use super::managed::{ManagedSecret, Slot, adoption_patch, classify};
use super::validate::secret_name;
use crate::api::UploadGrant;
use crate::api::secret::MANAGER;
use crate::error::{Error, Result};

/// Hands the fields of a legacy Secret to the applier, once, before the
/// first apply over it. A Secret that changed meanwhile is left as it is.
pub async fn adopt_legacy_fields(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<()> {
    let api = api(ctx, namespace);
    let Some(meta) = api.get_metadata_opt(name).await? else {
        return Ok(());
    };
    if meta.metadata.uid.as_deref() != Some(uid) {
        return Ok(());
    }
    let entries = meta.metadata.managed_fields.unwrap_or_default();
    let Some(patch) = adoption_patch(&entries) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(Error::Serialize)?;
    match api
        .patch_metadata(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Who holds the name according to the metadata cache alone, which holds
/// every Secret labelled as ours. A miss may still be someone else's Secret:
/// the create that follows gets a 409 then.
pub fn cached_slot(ctx: &Context, grant: &UploadGrant, namespace: &str, name: &str) -> Slot {
    classify(cached(ctx, namespace, name), grant)
}

/// Whether the cache shows a Secret this grant owns under either of its
/// names (`owned_names`).
pub fn holds_any(ctx: &Context, grant: &UploadGrant) -> bool {
    let namespace = grant.namespace().unwrap_or_default();
    owned_names(grant)
        .iter()
        .any(|name| matches!(cached_slot(ctx, grant, &namespace, name), Slot::Ours(_)))
}

/// The names a grant's Secret may have: the one its spec names and the one
/// its status names.
pub fn owned_names(grant: &UploadGrant) -> Vec<String> {
    let mut names = vec![secret_name(&grant.spec, &grant.name_any())];
    if let Some(status_name) = grant.status.as_ref().and_then(|s| s.secret_name.clone())
        && !names.contains(&status_name)
    {
        names.push(status_name);
    }
    names
}

/// Looks the name up in the metadata cache first; a miss is confirmed with
/// one GET, since the cache only holds Secrets labelled as ours.
pub async fn slot(ctx: &Context, grant: &UploadGrant, namespace: &str, name: &str) -> Result<Slot> {
    match cached(ctx, namespace, name) {
        Some(secret) => Ok(classify(Some(secret), grant)),
        None => server_slot(ctx, grant, namespace, name).await,
    }
}

/// Who holds the name according to the server, for when the cache may be
/// behind: after a write was refused.
pub async fn server_slot(
    ctx: &Context,
    grant: &UploadGrant,
    namespace: &str,
    name: &str,
) -> Result<Slot> {
    let secret = api(ctx, namespace).get_metadata_opt(name).await?;
    Ok(classify(secret.map(ManagedSecret::from), grant))
}

fn cached(ctx: &Context, namespace: &str, name: &str) -> Option<ManagedSecret> {
    let secret = ctx.secrets.get_in(namespace, name)?;
    Some((*secret).clone())
}

/// How a Secret write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The apiserver refused the write, with its reason: the Secret itself
    /// was invalid or denied by a policy, or the name turned out to hold
    /// another Secret. The caller asks the server which.
    Refused(String),
}

/// Writes a Secret by server-side apply, the operator's only way of writing
/// one, under one field manager from creation on: the Secret always equals
/// the last one built, and a key left out is removed.
///
/// `ours` is the uid of the Secret of ours that holds the name. The apply
/// then carries it, so it lands on that very object or fails (uid is
/// immutable), and it is forced, taking back fields somebody edited. With
/// no uid the Secret is new: the apply is not forced, so it fails on a
/// Secret somebody else made (their fields conflict, its type is immutable,
/// its controller is another) instead of taking it over.
pub async fn write(ctx: &Context, secret: &Secret, ours: Option<&str>) -> Result<Written> {
    let namespace = secret.namespace().unwrap_or_default();
    let mut secret = secret.clone();
    secret.metadata.uid = ours.map(str::to_owned);
    let mut params = PatchParams::apply(MANAGER);
    params.force = ours.is_some();
    let name = secret.name_any();
    match api(ctx, &namespace)
        .patch(&name, &params, &Patch::Apply(&secret))
        .await
    {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(status)) if refusal(status.code, &status.message) => {
            Ok(Written::Refused(status.message))
        }
        Err(e) => Err(e.into()),
    }
}

/// A 4xx about the Secret, not about the operator: validation (422, 400),
/// a conflict over the name (409), size (413), or an admission policy or
/// webhook denying it (403). A 403 from authorization ("… cannot patch …")
/// is the operator's RBAC and stays an error that is retried.
pub(super) fn refusal(code: u16, message: &str) -> bool {
    matches!(code, 400 | 409 | 413 | 422) || (code == 403 && !message.contains(" cannot "))
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
pub(crate) mod tests {
    //! Edge cases of ownership against a mocked API server: what requests are
    //! sent, and which are never sent.
    use std::sync::Arc;

    use crate::controller::cache;
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::controller::context::Settings;
    use crate::fixtures::{grant, secret, secret_meta};
    use crate::metrics::Metrics;
    use crate::signing::{CredentialSnapshot, Presigner};

    pub(crate) fn context(client: kube::Client) -> Context {
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
                kube_api_qps: 0,
                namespaces: Vec::new(),
                propagation_budget: crate::api::limits::DEFAULT_PROPAGATION_BUDGET,
                rollout_restart_debounce: None,
                multipart_check_interval: crate::controller::multipart::DEFAULT_CHECK_INTERVAL,
                renew_request_interval: std::time::Duration::from_secs(60),
                lifecycle_events: false,
                shard: None,
                shard_selector: true,
                cluster_wide: true,
            },
            credentials: CredentialSnapshot::new(
                aws_credential_types::provider::SharedCredentialsProvider::new(creds),
            ),
            presigner: Arc::new(Presigner::new(sdk)),
            fence: crate::fence::Fence::open(),
            issuers: cache::cache().0,
            namespaces: cache::cache().0,
            secrets: cache::cache().0,
            metrics: Arc::new(Metrics::default()),
            memos: Default::default(),
            tombstones: Default::default(),
        }
    }

    #[test]
    fn refusals_are_about_the_secret_and_rbac_is_not_one() {
        assert!(refusal(422, "Secret \"x\" is invalid: metadata.labels"));
        assert!(refusal(409, "Apply failed with 1 conflict"));
        assert!(refusal(
            403,
            "secrets \"x\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request"
        ));
        assert!(!refusal(
            403,
            "secrets \"x\" is forbidden: User \"op\" cannot patch resource \"secrets\""
        ));
        assert!(!refusal(404, "namespaces \"gone\" not found"));
        assert!(!refusal(500, "etcdserver: request timed out"));
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
        let deleted = remove(&ctx, &grant(serde_json::json!({})), "ns", "g")
            .await
            .expect("no error");
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
        let deleted = remove(&ctx, &grant(serde_json::json!({})), "ns", "g")
            .await
            .expect("no error");
        assert!(deleted);
        server.await.expect("mock server");
    }

    /// Answers one apply and returns its query string and body.
    pub(crate) async fn one_apply(
        handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
        status: u16,
        answer: serde_json::Value,
    ) -> (String, serde_json::Value) {
        let (req, send) = handle.next_request().await.expect("an apply");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).expect("json body");
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response"),
        );
        (query, body)
    }

    #[tokio::test]
    async fn every_write_is_one_apply_by_one_manager_forced_only_onto_our_own_uid() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(kube::Client::new(service, "ns"));
        let server = tokio::spawn(async move {
            let ok = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "g"}});
            let (query, body) = one_apply(&mut handle, 200, ok.clone()).await;
            assert!(
                query.contains("fieldManager=upload-grant-operator"),
                "{query}"
            );
            assert!(
                !query.contains("force"),
                "a new Secret is never forced: {query}"
            );
            assert!(body["metadata"].get("uid").is_none());
            let (query, body) = one_apply(&mut handle, 200, ok).await;
            assert!(
                query.contains("fieldManager=upload-grant-operator"),
                "{query}"
            );
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(body["metadata"]["uid"], "secret-uid");
            let refused = serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "code": 403, "reason": "Forbidden",
                "message": "secrets \"g\" is forbidden: ValidatingAdmissionPolicy 'p' denied request"});
            one_apply(&mut handle, 403, refused).await;
        });
        assert_eq!(
            write(&ctx, &secret(), None).await.expect("written"),
            Written::Done
        );
        assert_eq!(
            write(&ctx, &secret(), Some("secret-uid"))
                .await
                .expect("written"),
            Written::Done
        );
        match write(&ctx, &secret(), Some("secret-uid"))
            .await
            .expect("an answer")
        {
            Written::Refused(reason) => assert!(reason.contains("ValidatingAdmissionPolicy")),
            other => panic!("refused, not {other:?}"),
        }
        server.await.expect("mock server");
    }
}
