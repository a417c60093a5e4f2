//! Apply: writes and removes the Secrets a grant owns, and never touches one
//! it does not own.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, MANAGER};
use crate::api::UploadGrant;
use crate::error::Result;

/// Who holds the Secret name a grant wants.
#[derive(Debug)]
pub enum Slot {
    /// No Secret by that name.
    Free,
    /// A Secret this grant controls; its metadata.
    Ours(Box<PartialObjectMeta<Secret>>),
    /// Somebody else's Secret: never modified or deleted.
    Foreign,
}

pub fn owned_by(meta: &PartialObjectMeta<Secret>, grant: &UploadGrant) -> bool {
    let Some(uid) = grant.uid() else { return false };
    meta.owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Looks the name up in the metadata cache first; a miss is confirmed with
/// one GET, since the cache only holds Secrets labelled as ours.
pub async fn slot(ctx: &Context, grant: &UploadGrant, namespace: &str, name: &str) -> Result<Slot> {
    let cached = ctx.secrets.get(&ObjectRef::new(name).within(namespace));
    let meta = match cached {
        Some(meta) => Some((*meta).clone()),
        None => api(ctx, namespace).get_metadata_opt(name).await?,
    };
    Ok(match meta {
        None => Slot::Free,
        Some(meta) if owned_by(&meta, grant) => Slot::Ours(Box::new(meta)),
        Some(_) => Slot::Foreign,
    })
}

/// Writes a Secret: create when the name is free, server-side apply when it
/// is already ours. Returns false when the name turned out to be taken.
pub async fn write(ctx: &Context, namespace: &str, secret: &Secret, ours: bool) -> Result<bool> {
    let api = api(ctx, namespace);
    let name = secret.name_any();
    if ours {
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(secret),
        )
        .await?;
        return Ok(true);
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
