//! The finalizer that holds a grant until its Secret is revoked.
//!
//! Only grants that need work before they go carry it (`wanted`). An
//! ordinary grant's Secret has a controller ownerReference to it: the
//! operator deletes it when its watch reports the grant gone
//! (`controller::deletions`), and garbage collection does when the operator
//! is not running. Grants that carry the finalizer from an older version are
//! still released through it when they are deleted.
//!
//! kube-runtime's `finalizer` helper adds the finalizer and then waits for the
//! watch to bring the object back before doing any work; a new grant pays a
//! full watch round trip for that. Here the patched object is used at once.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::UploadGrant;
use crate::api::secret::FINALIZER;
use crate::error::{Error, Result};

/// Whether a grant needs the finalizer. Only multipart grants do: their
/// upload must be aborted before the grant goes, and S3 has no garbage
/// collection. Every other grant's Secret goes with it (the watch, or
/// garbage collection), which saves the patch a new grant used to cost.
pub fn wanted(grant: &UploadGrant) -> bool {
    grant.spec.multipart.is_some()
}

pub fn has_finalizer(grant: &UploadGrant) -> bool {
    grant.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the finalizer and returns the grant as the server now holds it.
pub async fn add(api: &Api<UploadGrant>, grant: &UploadGrant) -> Result<UploadGrant> {
    match try_add(api, grant).await {
        // The `test` failed: the cache is behind the server, typically when a
        // Secret event wakes a grant whose finalizer was added a moment ago.
        // Read the grant afresh instead of failing with a backoff.
        Err(Error::Finalizer(kube::Error::Api(s))) if s.code == 422 => {
            let fresh = api.get(&grant.name_any()).await.map_err(Error::Finalizer)?;
            if has_finalizer(&fresh) {
                Ok(fresh)
            } else {
                try_add(api, &fresh).await
            }
        }
        other => other,
    }
}

/// The `test` makes the patch fail, rather than clobber, when the list on
/// the server is not the one the caller saw.
async fn try_add(api: &Api<UploadGrant>, grant: &UploadGrant) -> Result<UploadGrant> {
    let patch = match &grant.meta().finalizers {
        None => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    json_patch(api, grant, patch).await
}

/// Lets the grant go once its Secret is revoked.
pub async fn remove(api: &Api<UploadGrant>, grant: &UploadGrant) -> Result<()> {
    let Some(index) = grant.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    match json_patch(api, grant, patch).await {
        // Already gone: nothing holds it any more.
        Err(Error::Finalizer(kube::Error::Api(s))) if s.code == 404 => Ok(()),
        other => other.map(drop),
    }
}

async fn json_patch(
    api: &Api<UploadGrant>,
    grant: &UploadGrant,
    patch: serde_json::Value,
) -> Result<UploadGrant> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    api.patch(
        &grant.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
    .map_err(Error::Finalizer)
}

#[cfg(test)]
mod tests {
    //! The finalizer patch against a mocked API server.
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::fixtures::{grant_doc, grant_with};

    fn respond(
        send: tower_test::mock::SendResponse<Response<Body>>,
        code: u16,
        body: serde_json::Value,
    ) {
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("response"),
        );
    }

    #[tokio::test]
    async fn a_stale_cache_reads_the_grant_afresh_instead_of_failing() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<UploadGrant> = Api::namespaced(kube::Client::new(service, "ns"), "ns");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("the patch");
            assert_eq!(req.method(), http::Method::PATCH);
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let patch: serde_json::Value = serde_json::from_slice(&bytes).expect("json patch");
            assert_eq!(
                patch[0]["op"], "test",
                "the patch must not clobber: {patch}"
            );
            let status = serde_json::json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 422,
                "reason": "Invalid", "message": "the server rejected our request"
            });
            respond(send, 422, status);
            let (req, send) = handle.next_request().await.expect("a GET");
            assert_eq!(req.method(), http::Method::GET);
            respond(
                send,
                200,
                grant_doc(serde_json::json!({"metadata": {"finalizers": [FINALIZER]}})),
            );
            // The server already holds the finalizer: no second patch.
            assert!(
                handle.next_request().await.is_none(),
                "a request after the GET"
            );
        });
        let stale = grant_with(serde_json::json!({"metadata": {"finalizers": []}}));
        let fresh = add(&api, &stale).await.expect("no error");
        assert!(has_finalizer(&fresh));
        drop(api);
        server.await.expect("mock server");
    }
}
