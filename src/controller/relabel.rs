//! Secrets written before they carried their grant's shard label
//! (`grants.io/shard`), which a replica's label-selected Secret watch would
//! not see. While a Secret of its shards' grants lacks the label, a run
//! watches every managed Secret (and drops the other shards' by their grant,
//! as it always does) and labels its own with one metadata patch each. Then
//! the run ends, and the next one selects by label; nothing is re-signed.
//! Other shards' Secrets are their replicas' to label: a replica needs to
//! see only its own.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

use super::build::managed_selector;
use super::managed;
use crate::api::secret::{SECRET_TYPE, SHARD_LABEL};
use crate::error::{Error, Result};
use crate::shard::{self, Owned};

/// How long a labeller waits after a pass that failed or left some.
const RETRY: Duration = Duration::from_secs(15);

/// A page of the list of unlabelled Secrets.
const PAGE: u32 = 500;

/// Secrets (by uid) whose label patch the apiserver refused: one that says
/// it is a grant's, but is not the operator's kind of Secret (an admission
/// policy refuses the patch). They are not tried again, nor waited for, by
/// any run of this process: otherwise one such Secret would hold every run
/// to watching every Secret.
static REFUSED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

fn refused(meta: &ObjectMeta) -> bool {
    let uid = meta.uid.as_deref().unwrap_or_default();
    REFUSED.lock().is_ok_and(|r| r.contains(uid))
}

/// Whether a Secret of `owned`'s grants in `namespaces` (all when empty)
/// lacks the shard label and may still get it.
pub async fn any_mine(client: &Client, namespaces: &[String], owned: &Owned) -> Result<bool> {
    let mut found = false;
    each_unlabelled(client, namespaces, |secret| {
        found = label_patch(secret, owned).is_some() && !refused(&secret.metadata);
        !found
    })
    .await?;
    Ok(found)
}

/// Labels the unlabelled Secrets of `owned`'s grants until none is left,
/// then says so on `done`. Errors are said and tried again.
pub async fn run(client: Client, namespaces: Vec<String>, owned: Owned, done: oneshot::Sender<()>) {
    loop {
        match label_mine(&client, &namespaces, &owned).await {
            Ok(labelled) => tracing::info!(labelled, "labelled Secrets with their grant's shard"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot label Secrets with their shard; trying again")
            }
        }
        match any_mine(&client, &namespaces, &owned).await {
            Ok(false) => {
                tracing::info!(
                    "this replica's Secrets carry their shard label: its Secret watch selects by it from now on"
                );
                // The receiver lives as long as the run.
                let _ = done.send(());
                return;
            }
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "cannot list unlabelled Secrets; trying again"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One pass over the unlabelled Secrets; how many it labelled. A Secret
/// that cannot be labelled now is said and left for the next pass, and the
/// others are labelled all the same.
async fn label_mine(client: &Client, namespaces: &[String], owned: &Owned) -> Result<usize> {
    // What a patch needs, not the whole metadata: thousands at an upgrade.
    let mut patches = Vec::new();
    each_unlabelled(client, namespaces, |secret| {
        let meta = &secret.metadata;
        if let (Some(patch), Some(ns), Some(name), Some(uid)) = (
            label_patch(secret, owned).filter(|_| !refused(meta)),
            &meta.namespace,
            &meta.name,
            &meta.uid,
        ) {
            patches.push((ns.clone(), name.clone(), uid.clone(), patch));
        }
        true
    })
    .await?;
    let mut labelled = 0;
    for (namespace, name, uid, patch) in patches {
        match apply(client, &namespace, &name, &uid, patch).await {
            Ok(done) => labelled += usize::from(done),
            Err(e) => {
                tracing::warn!(namespace, secret = %name, error = %e, "cannot label a Secret with its shard; trying again later")
            }
        }
    }
    Ok(labelled)
}

/// Calls `each` with every managed Secret without the shard label, page by
/// page, until it returns false.
async fn each_unlabelled(
    client: &Client,
    namespaces: &[String],
    mut each: impl FnMut(&PartialObjectMeta<Secret>) -> bool,
) -> Result<()> {
    let selector = format!("{},!{SHARD_LABEL}", managed_selector());
    for api in apis(client, namespaces) {
        let mut params = ListParams::default().labels(&selector).limit(PAGE);
        loop {
            let page = api.list_metadata(&params).await?;
            if !page.items.iter().all(&mut each) {
                return Ok(());
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(())
}

/// The JSON patch that labels `secret`, if it is a Secret of a grant in
/// `owned`. It applies only to the Secret of this uid (a Secret deleted and
/// created again under the name is left alone) and of the operator's type
/// (a user's Secret that names a grant as its controller is not touched).
fn label_patch(secret: &PartialObjectMeta<Secret>, owned: &Owned) -> Option<serde_json::Value> {
    let meta = &secret.metadata;
    let grant = managed::controlling_grant_uid(meta).filter(|uid| owned.contains(uid))?;
    let uid = meta.uid.as_deref()?;
    let path = format!("/metadata/labels/{}", SHARD_LABEL.replace('/', "~1"));
    Some(serde_json::json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "test", "path": "/type", "value": SECRET_TYPE},
        {"op": "add", "path": path, "value": shard::label_value(grant)},
    ]))
}

/// Sends the patch; false when the Secret changed, went, or refused it.
async fn apply(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
    patch: serde_json::Value,
) -> Result<bool> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(Error::Serialize)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api
        .patch_metadata(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(false),
        // A test failed: another uid under the name, or not our type.
        Err(kube::Error::Api(s)) if s.code == 422 => {
            tracing::info!(namespace, secret = %name, "a Secret that names a grant as its controller is not the operator's (or was replaced meanwhile); it is left unlabelled");
            remember_refused(uid);
            Ok(false)
        }
        // An admission policy's refusal; the operator's RBAC ("cannot")
        // stays an error, tried again.
        Err(kube::Error::Api(s)) if super::secrets::refusal(s.code, &s.message) => {
            tracing::warn!(namespace, secret = %name, code = s.code, reason = %s.reason, "a Secret that names a grant as its controller refused its shard label; it is left as it is");
            remember_refused(uid);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

fn remember_refused(uid: &str) {
    if let Ok(mut r) = REFUSED.lock() {
        r.insert(uid.to_owned());
    }
}

fn apis(client: &Client, namespaces: &[String]) -> Vec<Api<Secret>> {
    match namespaces {
        [] => vec![Api::all(client.clone())],
        some => some
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use std::collections::BTreeSet;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// Answers the next request, which must be `method` on `path` (query
    /// aside), with `code` and `body`.
    async fn answer(
        handle: &mut Handle,
        method: http::Method,
        path: &str,
        code: u16,
        body: serde_json::Value,
    ) {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!((req.method(), req.uri().path()), (&method, path));
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("response"),
        );
    }

    fn page(items: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": {}, "items": items})
    }

    /// A Secret with this uid, which the grant "grant-uid" controls, as a
    /// metadata list returns it.
    fn listed(uid: &str) -> serde_json::Value {
        let mut secret = crate::fixtures::secret_meta("grant-uid");
        secret["apiVersion"] = "meta.k8s.io/v1".into();
        secret["kind"] = "PartialObjectMetadata".into();
        secret["metadata"]["uid"] = uid.into();
        secret
    }

    fn status(code: u16, message: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "code": code, "reason": "Forbidden", "message": message})
    }

    /// One pass of the labeller over a Secret of uid `uid` whose label
    /// patch the apiserver answers with 403 and `message`; then whether the
    /// replica still waits for a Secret of its own to be labelled.
    async fn waits_after_a_403(uid: &str, message: &str) -> bool {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ns");
        let owned = Owned {
            shards: shard::Shards::new(1).expect("a power of two"),
            owned: BTreeSet::from([0]),
        };
        let (listing, refusal) = (page(vec![listed(uid)]), status(403, message));
        let server = tokio::spawn(async move {
            let list = "/api/v1/namespaces/ns/secrets";
            answer(&mut handle, http::Method::GET, list, 200, listing.clone()).await;
            let patched = format!("{list}/g");
            answer(&mut handle, http::Method::PATCH, &patched, 403, refusal).await;
            answer(&mut handle, http::Method::GET, list, 200, listing).await;
        });
        let namespaces = ["ns".to_owned()];
        let labelled = label_mine(&client, &namespaces, &owned).await;
        assert_eq!(labelled.expect("a pass"), 0);
        let waits = any_mine(&client, &namespaces, &owned)
            .await
            .expect("a list");
        server.await.expect("mock apiserver");
        waits
    }

    /// The operator's own RBAC refusing the patch is its setup, not the
    /// Secret's doing: the Secret is still waited for.
    #[tokio::test]
    async fn without_the_rbac_the_secret_is_still_waited_for() {
        let rbac = "secrets \"g\" is forbidden: User \"ugo\" cannot patch resource \"secrets\"";
        assert!(waits_after_a_403("rbac-uid", rbac).await);
    }

    /// A Secret that names a grant as its controller but that the
    /// apiserver will not let the operator label (an admission policy:
    /// not the operator's type) is left alone, and no longer counts as
    /// waiting for its label: the run may select by label.
    #[tokio::test]
    async fn a_refused_secret_is_not_waited_for() {
        let policy = "denied by ValidatingAdmissionPolicy: not its own Secret";
        assert!(!waits_after_a_403("forged-uid", policy).await);
    }

    fn secret(owner_uid: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(crate::fixtures::secret_meta(owner_uid)).expect("fixture")
    }

    /// Only a Secret a grant of this replica's shards controls is labelled,
    /// with that grant's label value, and only while it is the same Secret.
    #[test]
    fn labels_only_the_secrets_of_its_own_shards() {
        let shards = shard::Shards::new(2).expect("a power of two");
        let uids: Vec<String> = (0..20).map(|i| format!("{i}-grant")).collect();
        let mine = |uid: &str| shards.of(uid) == 0;
        assert!(uids.iter().any(|u| mine(u)) && uids.iter().any(|u| !mine(u)));
        let owned = Owned {
            shards,
            owned: BTreeSet::from([0]),
        };
        for uid in &uids {
            let patch = label_patch(&secret(uid), &owned);
            let want = mine(uid).then(|| {
                serde_json::json!([
                    {"op": "test", "path": "/metadata/uid", "value": "secret-uid"},
                    {"op": "test", "path": "/type", "value": "grants.io/presigned-url"},
                    {"op": "add", "path": "/metadata/labels/grants.io~1shard", "value": shard::label_value(uid)},
                ])
            });
            assert_eq!(patch, want, "{uid}");
        }
        let mut orphan = secret("grant-0");
        orphan.metadata.owner_references = None;
        let all = Owned {
            shards,
            owned: BTreeSet::from([0, 1]),
        };
        assert_eq!(label_patch(&orphan, &all), None, "not a grant's Secret");
    }
}
