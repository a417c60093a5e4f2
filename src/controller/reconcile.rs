//! The reconcile pipeline for one grant, each stage once and in order:
//! load (every read) → decide (pure) → apply (every write, including the
//! rollout restarts) → report (pure: what to say of what was done) →
//! status → events → the record's commit. A deleted grant takes the same
//! path: load sees its deletion, decide revokes it, and nothing is written
//! to its status; a grant already gone comes here from the watch
//! (`super::deletions`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kube::{Api, Resource, ResourceExt};

use super::build::whole_seconds;
use super::cache::Keyed;
use super::cached::CachedGrant;
use super::context::{Context, grant_key};
use super::decide::Settled;
use super::load::{self, Phase};
use super::memo::{GrantMemo, SettledAt};
use super::report::{self, Report, Said, Wake};
use super::{apply, finalizer, status};
use crate::api::UploadGrant;
use crate::error::{Error, Result};

/// How soon a grant whose namespace the cache lacks is looked at again.
const NAMESPACE_RETRY: Duration = Duration::from_secs(5);

/// One pass over the grant's record: taken when the pass starts, committed
/// when it ends, also when it fails (the failure counts in it).
pub async fn reconcile(cached: Arc<CachedGrant>, ctx: Arc<Context>) -> Result<Next> {
    let started = Instant::now();
    let Some(grant) = whole(&cached, &ctx).await? else {
        // Deleted meanwhile: the watch reports it, and its deletion revokes.
        return Ok(Next::wake(Wake::OnChange));
    };
    let grant = Arc::new(grant);
    let key = grant_key(&grant);
    let mut memo = ctx.memos.take(key);
    let result = run(grant, &ctx, &mut memo).await;
    memo.failures = match result {
        Ok(_) => 0,
        Err(_) => memo.failures.saturating_add(1),
    };
    ctx.memos.commit(key, memo, &ctx.tombstones);
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// The grant a pass works on: the cache's, or the apiserver's for a grant
/// the cache keeps in part (`CachedGrant::partial`); None when the apiserver
/// has it no more.
async fn whole(cached: &CachedGrant, ctx: &Context) -> Result<Option<UploadGrant>> {
    if !cached.partial() {
        return cached.grant().map(Some);
    }
    let key = cached.key();
    let api: Api<UploadGrant> = Api::namespaced(ctx.client.clone(), key.namespace());
    Ok(api.get_opt(key.name()).await?)
}

async fn run(mut grant: Arc<UploadGrant>, ctx: &Context, memo: &mut GrantMemo) -> Result<Next> {
    let namespace = grant.namespace().ok_or(Error::IncompleteObject)?;
    let api: Api<UploadGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = |g: &UploadGrant| g.meta().deletion_timestamp.is_some();
    if !deleting(&grant) && finalizer::wanted(&grant) && !finalizer::has_finalizer(&grant) {
        // The finalizer is in place before any Secret exists. The grant as
        // the server returns it may be deleting by now.
        grant = Arc::new(finalizer::add(&api, &grant).await?);
    }
    // Deleting, held by our finalizer (a grant that wants it, or one an
    // older version gave it) or by somebody else's: revoked now. A grant
    // without finalizers is revoked when the watch reports it gone.
    let phase = match deleting(&grant) {
        true => Phase::Deleting,
        false => Phase::Live,
    };
    let action = pass(&grant, ctx, memo, phase).await;
    if phase == Phase::Live && ctx.tombstones.contains(grant_key(&grant)) {
        // Deleted while this pass ran: what it wrote must not outlive the
        // grant (its status write failed, too).
        return pass(&grant, ctx, memo, Phase::Deleting).await;
    }
    let action = action?;
    if phase == Phase::Deleting && finalizer::has_finalizer(&grant) {
        finalizer::remove(&api, &grant).await?;
    }
    Ok(action)
}

/// Revokes a grant the watch reported gone (`super::deletions`).
pub(super) async fn revoke_gone(
    grant: &UploadGrant,
    ctx: &Context,
    memo: &mut GrantMemo,
    announce_held: bool,
) -> Result<()> {
    pass(grant, ctx, memo, Phase::Gone { announce_held })
        .await
        .map(drop)
}

/// One pass of the pipeline.
async fn pass(
    grant: &UploadGrant,
    ctx: &Context,
    memo: &mut GrantMemo,
    phase: Phase,
) -> Result<Next> {
    let Some(loaded) = load::load(grant, ctx, memo, phase).await else {
        tracing::debug!(grant = %grant.name_any(), "namespace not in the cache yet; waiting");
        return Ok(Next::wake(Wake::After(NAMESPACE_RETRY)));
    };
    let now = whole_seconds(SystemTime::now());
    let decision = loaded.decide(now);
    let applied = apply::carry_out(ctx, grant, memo, &loaded, decision, now).await?;
    let (after, follow_error) = match apply::follow_up(ctx, grant, memo, &applied, now).await {
        Ok(after) => (after, None),
        Err(e) => (Default::default(), Some(e)),
    };
    let (done, error) = applied;
    let error = error.or(follow_error);
    match report::say(done, after, now) {
        Said::Status(report) => live(grant, ctx, memo, *report, error).await,
        Said::Deleted(notes) => {
            for note in notes {
                ctx.events.publish(grant, note);
            }
            error.map_or(Ok(()), Err)?;
            forget(grant, ctx, memo);
            Ok(Next::wake(Wake::OnChange))
        }
    }
}

/// The end of a live grant's pass: its status, its events, its record.
async fn live(
    grant: &UploadGrant,
    ctx: &Context,
    memo: &mut GrantMemo,
    report: Report,
    error: Option<Error>,
) -> Result<Next> {
    remember_settled(memo, grant, &report);
    let change = status::change(grant, memo, &report);
    let events = report.events(change.is_some(), ctx.settings.lifecycle_events);
    status::write(grant, ctx, memo, change).await?;
    for note in events {
        ctx.events.publish(grant, note);
    }
    ctx.metrics.grant_state(
        grant_key(grant),
        Some(report.reason),
        report.issued.as_ref().map(|s| s.expires_at),
    );
    error.map_or(Ok(()), Err)?;
    Ok(Next {
        wake: report.wake,
        expires_at: report.issued.as_ref().map(|s| s.expires_at),
    })
}

/// Nothing is kept about a grant that is gone but its failures, so that the
/// backoff still grows while its finalizer cannot be removed.
fn forget(grant: &UploadGrant, ctx: &Context, memo: &mut GrantMemo) {
    ctx.metrics.grant_state(grant_key(grant), None, None);
    *memo = GrantMemo {
        failures: memo.failures,
        ..GrantMemo::default()
    };
    ctx.memos.forget(grant_key(grant));
}

/// Keeps a settled outcome for its generation, and forgets one that no
/// longer holds.
fn remember_settled(memo: &mut GrantMemo, grant: &UploadGrant, report: &Report) {
    memo.settled = grant
        .metadata
        .generation
        .filter(|_| Settled::holds(report.reason))
        .map(|generation| {
            Box::new(SettledAt {
                generation,
                reason: report.reason,
                message: report.message.clone(),
            })
        });
}

/// What a pass says of the grant's next one: when, and until when the URL
/// it holds works (a renewal's deadline is that, less the propagation
/// budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub wake: Wake,
    pub expires_at: Option<SystemTime>,
}

impl Next {
    fn wake(wake: Wake) -> Self {
        Next {
            wake,
            expires_at: None,
        }
    }
}
