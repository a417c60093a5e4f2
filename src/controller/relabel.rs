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
use crate::api::secret::SHARD_LABEL;
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

/// One pass over the unlabelled Secrets; how many it labelled.
async fn label_mine(client: &Client, namespaces: &[String], owned: &Owned) -> Result<usize> {
    let mut patches = Vec::new();
    each_unlabelled(client, namespaces, |secret| {
        if let Some(patch) = label_patch(secret, owned).filter(|_| !refused(&secret.metadata)) {
            patches.push((secret.metadata.clone(), patch));
        }
        true
    })
    .await?;
    let mut labelled = 0;
    for (meta, patch) in patches {
        labelled += usize::from(apply(client, &meta, patch).await?);
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
/// `owned`: it applies only to the Secret of this uid (a Secret deleted
/// and created again under the name is left alone).
fn label_patch(secret: &PartialObjectMeta<Secret>, owned: &Owned) -> Option<serde_json::Value> {
    let meta = &secret.metadata;
    let grant = managed::controlling_grant_uid(meta).filter(|uid| owned.contains(uid))?;
    let uid = meta.uid.as_deref()?;
    let path = format!("/metadata/labels/{}", SHARD_LABEL.replace('/', "~1"));
    Some(serde_json::json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "add", "path": path, "value": shard::label_value(grant)},
    ]))
}

/// Sends the patch; false when the Secret changed or went meanwhile.
async fn apply(client: &Client, meta: &ObjectMeta, patch: serde_json::Value) -> Result<bool> {
    let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
        return Ok(false);
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(Error::Serialize)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api
        .patch_metadata(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(false),
        // Refused: not one of ours after all (or, 422, replaced meanwhile,
        // by a Secret with another uid).
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 422) => {
            tracing::warn!(namespace, secret = %name, code = s.code, reason = %s.reason, "a Secret that names a grant as its controller refused its shard label; it is left as it is");
            if let (Ok(mut r), Some(uid)) = (REFUSED.lock(), meta.uid.clone()) {
                r.insert(uid);
            }
            Ok(false)
        }
        Err(e) => Err(e.into()),
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

    /// A Secret that names a grant as its controller but that the
    /// apiserver will not let the operator label (an admission policy:
    /// not the operator's type) is left alone, and no longer counts as
    /// waiting for its label: the run may select by label.
    #[tokio::test]
    async fn a_refused_secret_is_not_waited_for() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ns");
        let owned = Owned {
            shards: shard::Shards::new(1).expect("a power of two"),
            owned: BTreeSet::from([0]),
        };
        let mut forged = crate::fixtures::secret_meta("grant-uid");
        forged["apiVersion"] = "meta.k8s.io/v1".into();
        forged["kind"] = "PartialObjectMetadata".into();
        forged["metadata"]["uid"] = "forged-uid".into();
        let server = tokio::spawn(async move {
            let list = "/api/v1/namespaces/ns/secrets";
            answer(
                &mut handle,
                http::Method::GET,
                list,
                200,
                page(vec![forged.clone()]),
            )
            .await;
            let forbidden = serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "code": 403, "reason": "Forbidden", "message": "not its own Secret"});
            answer(
                &mut handle,
                http::Method::PATCH,
                &format!("{list}/g"),
                403,
                forbidden,
            )
            .await;
            answer(
                &mut handle,
                http::Method::GET,
                list,
                200,
                page(vec![forged]),
            )
            .await;
        });
        let namespaces = ["ns".to_owned()];
        assert_eq!(
            label_mine(&client, &namespaces, &owned)
                .await
                .expect("a pass"),
            0
        );
        assert!(
            !any_mine(&client, &namespaces, &owned)
                .await
                .expect("a list")
        );
        server.await.expect("mock apiserver");
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
