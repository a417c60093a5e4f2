//! Secrets written before they carried their grant's shard label
//! (`grants.io/shard`), which a replica's label-selected Secret watch would
//! not see. While a Secret of its shards' grants lacks the label, a run
//! watches every managed Secret (and drops the other shards' by their grant,
//! as it always does) and labels its own with one metadata patch each. Then
//! the run ends, and the next one selects by label; nothing is re-signed.
//! Other shards' Secrets are their replicas' to label: a replica needs to
//! see only its own.

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

/// Whether a Secret of `owned`'s grants in `namespaces` (all when empty)
/// lacks the shard label.
pub async fn any_mine(client: &Client, namespaces: &[String], owned: &Owned) -> Result<bool> {
    let mut found = false;
    each_unlabelled(client, namespaces, |secret| {
        found = label_patch(secret, owned).is_some();
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
        if let Some(patch) = label_patch(secret, owned) {
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
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
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
    use std::collections::BTreeSet;

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
