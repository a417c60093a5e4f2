//! Revocation of grants that are gone. An ordinary grant has no finalizer
//! (`finalizer::wanted`), so the controller never sees it again once it is
//! deleted: the grant watch hands it here instead, and its Secret is removed
//! at once. Garbage collection of the Secret's ownerReference covers the
//! time the operator is not running.

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use kube::ResourceExt;

use super::context::{Context, grant_key};
use super::memo::backoff;
use super::{finalizer, reconcile};
use crate::api::UploadGrant;

/// Attempts per deleted grant; garbage collection removes what they miss.
const ATTEMPTS: u32 = 3;

/// Revokes each grant the watch reports deleted, until the watch ends.
pub async fn run(ctx: Arc<Context>, deleted: mpsc::UnboundedReceiver<UploadGrant>) {
    let concurrency = usize::from(ctx.settings.concurrency);
    deleted
        .for_each_concurrent(concurrency, |grant| {
            let ctx = ctx.clone();
            async move { revoke(&ctx, &grant).await }
        })
        .await;
}

async fn revoke(ctx: &Context, grant: &UploadGrant) {
    let key = grant_key(grant);
    ctx.tombstones.insert(key);
    if finalizer::wanted(grant) {
        // Its finalizer held it until the reconcile had revoked it.
        ctx.metrics.grant_state(key, None, None);
        ctx.memos.forget(key);
        return;
    }
    // The record, if no pass holds it: what it remembers of the upload the
    // grant's Secret records, for a namespace whose deletion takes the Secret.
    let mut memo = ctx.memos.take(key);
    for attempt in 1..=ATTEMPTS {
        // A grant deleted without a finalizer goes at once; one with a
        // deletion timestamp waited on a finalizer, and the reconcile of its
        // deleting state revoked and announced it.
        let announce = grant.metadata.deletion_timestamp.is_none();
        match reconcile::revoke_gone(grant, ctx, &mut memo, announce).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    grant = %grant.name_any(),
                    namespace = grant.namespace().as_deref().unwrap_or(""),
                    category = e.category(),
                    error = %e,
                    attempt,
                    "revoking a deleted grant's Secret failed"
                );
                if attempt < ATTEMPTS {
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
    // Garbage collection removes the Secret; the operator forgets the grant.
    ctx.metrics.grant_state(key, None, None);
    ctx.memos.forget(key);
}
