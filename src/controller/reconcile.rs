//! The reconcile pipeline for one grant, each stage once and in order:
//! load (from the caches) → decide (pure: validate, authorize, schedule) →
//! apply (sign, write, remove) → status (and events). A grant being deleted
//! is revoked instead, and let go if it holds the finalizer; one already
//! gone is revoked from the watch (`super::deletions`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::build::whole_seconds;
use super::context::{Context, grant_key};
use super::decide::{self, Decision, Observed, Settled};
use super::events::{EventReason, Note};
use super::managed::Slot;
use super::memo::{GrantMemo, SettledAt};
use super::report::{Report, Wake};
use super::secrets;
use super::validate::secret_name;
use super::{apply, finalizer, multipart, priority, rollout, status};
use crate::api::{ClusterGrantIssuer, Reason, UploadGrant};
use crate::error::{Error, Result};

/// One pass over the grant's record: taken when the pass starts, committed
/// when it ends, also when it fails (the failure counts in it).
pub async fn reconcile(grant: Arc<UploadGrant>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
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

async fn run(mut grant: Arc<UploadGrant>, ctx: &Context, memo: &mut GrantMemo) -> Result<Action> {
    let namespace = grant.namespace().ok_or(Error::IncompleteObject)?;
    let api: Api<UploadGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = |g: &UploadGrant| g.meta().deletion_timestamp.is_some();
    if !deleting(&grant) && finalizer::wanted(&grant) && !finalizer::has_finalizer(&grant) {
        // The finalizer is in place before any Secret exists. The grant as
        // the server returns it may be deleting by now.
        grant = Arc::new(finalizer::add(&api, &grant).await?);
    }
    if !deleting(&grant) {
        let action = pass(&grant, ctx, memo).await;
        // A deletion the watch reported while this pass ran: what the pass
        // wrote must not outlive the grant (its status write failed, too).
        if ctx.tombstones.contains(grant_key(&grant)) {
            cleanup(&grant, ctx, memo).await?;
            return Ok(Action::await_change());
        }
        return action;
    }
    // Deleting, held by our finalizer (a grant that wants it, or one an
    // older version gave it) or by somebody else's: revoke now. A grant
    // without finalizers is revoked when the watch reports it gone.
    cleanup(&grant, ctx, memo).await?;
    if finalizer::has_finalizer(&grant) {
        finalizer::remove(&api, &grant).await?;
    }
    Ok(Action::await_change())
}

/// One pass of the pipeline for a grant that is not being deleted.
async fn pass(grant: &UploadGrant, ctx: &Context, memo: &mut GrantMemo) -> Result<Action> {
    let loaded = Loaded::load(grant, ctx, memo);
    if loaded.namespace.is_none() {
        // The namespace cache has not seen the grant's namespace (yet, or
        // after a relist): judging it as unlabelled could revoke a grant
        // its labels allow. Its arrival wakes the grant; so does this.
        tracing::debug!(grant = %grant.name_any(), "namespace not in the cache yet; waiting");
        return Ok(Action::requeue(NAMESPACE_RETRY));
    }
    let upload = multipart::probe(ctx, grant, memo).await;
    let now = whole_seconds(SystemTime::now());
    let decision = loaded.decide(grant, upload, now);
    if let Some(wait) = priority::step_aside(&ctx.due_index, &ctx.secrets, &decision, now) {
        tracing::debug!(grant = %grant.name_any(), wait_ms = wait.as_millis(), "renewals that expire sooner go first");
        return Ok(Action::requeue(wait));
    }
    let (report, error) = apply::carry_out(ctx, grant, memo, decision, now).await?;
    remember_settled(memo, grant, &report);
    let wrote = status::write(grant, ctx, memo, &report).await?;
    if let Some(note) = &report.note {
        // A warning is said once, when the status changes, not on every retry.
        // Issued and Renewed are counted in metrics; as Events only if asked.
        let lifecycle = note.reason.is_lifecycle();
        if (wrote || !note.reason.is_warning()) && (!lifecycle || ctx.settings.lifecycle_events) {
            ctx.events.publish(grant, note.clone());
        }
    }
    ctx.metrics.grant_state(
        grant_key(grant),
        Some(report.reason),
        report.issued.as_ref().map(|s| s.expires_at),
    );
    if let Some(e) = error {
        return Err(e);
    }
    let restarts = match report
        .issued
        .as_ref()
        .filter(|_| report.reason == Reason::Issued)
    {
        Some(state) => rollout::restart_owed(ctx, grant, memo, state, now).await?,
        None => rollout::Outcome::default(),
    };
    for note in restarts.notes {
        ctx.events.publish(grant, note);
    }
    let mut wake = match restarts.wake_at {
        Some(at) => report.wake.or_at(at, SystemTime::now()),
        None => report.wake,
    };
    // An open multipart upload is looked at again within the interval.
    if grant.spec.multipart.is_some() && report.reason == Reason::Issued {
        let at = SystemTime::now() + ctx.settings.multipart_check_interval;
        wake = wake.or_at(at, SystemTime::now());
    }
    Ok(action(wake))
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

fn action(wake: Wake) -> Action {
    match wake {
        Wake::At(t) => Action::requeue(t.duration_since(SystemTime::now()).unwrap_or_default()),
        Wake::After(d) => Action::requeue(d),
        Wake::OnChange => Action::await_change(),
    }
}

/// What a decision needs from the caches, looked up once.
struct Loaded<'a> {
    issuer_name: Option<&'a str>,
    issuer: Option<Arc<ClusterGrantIssuer>>,
    namespace: Option<Arc<PartialObjectMeta<Namespace>>>,
    secret: Slot,
    /// What this operator last reported, if it settled this generation.
    remembered: Option<(Reason, String)>,
    propagation: Duration,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// How soon a grant whose namespace the cache lacks is looked at again.
const NAMESPACE_RETRY: Duration = Duration::from_secs(5);

impl<'a> Loaded<'a> {
    fn load(grant: &'a UploadGrant, ctx: &'a Context, memo: &mut GrantMemo) -> Self {
        let namespace = grant.namespace().unwrap_or_default();
        let (issuer_name, issuer) = ctx.issuer_of(grant);
        let name = secret_name(&grant.spec, &grant.name_any());
        Loaded {
            issuer_name,
            issuer,
            namespace: ctx.namespaces.get(&ObjectRef::new(&namespace)),
            secret: memo.slot(secrets::cached_slot(ctx, grant, &namespace, &name), &name),
            remembered: memo
                .settled(grant.metadata.generation)
                .map(|(reason, message)| (reason, message.to_owned())),
            propagation: ctx.settings.propagation_budget,
        }
    }

    fn decide(
        &self,
        grant: &UploadGrant,
        upload: Option<crate::uploads::UploadState>,
        now: SystemTime,
    ) -> Decision {
        decide::decide(&Observed {
            grant,
            issuer_name: self.issuer_name,
            issuer: self.issuer.as_deref(),
            namespace_labels: self
                .namespace
                .as_ref()
                .and_then(|n| n.metadata.labels.as_ref())
                .unwrap_or(&NO_LABELS),
            secret: &self.secret,
            settled: match &self.remembered {
                Some((reason, message)) => Some(Settled {
                    reason: *reason,
                    message,
                }),
                None => Settled::from_status(grant),
            },
            propagation: self.propagation,
            upload,
            now,
        })
    }
}

/// Deletion: revoke, publish it, and forget the grant. In a namespace being
/// deleted the namespace's own deletion removes the Secrets, and may already
/// have removed this operator's Role there (`operator.watchNamespaces`).
pub(super) async fn cleanup(
    grant: &UploadGrant,
    ctx: &Context,
    memo: &mut GrantMemo,
) -> Result<()> {
    revoke_deleted(grant, ctx, memo, false).await
}

/// `cleanup` for a grant the watch reported gone. With `announce_held`, the
/// Revoked Event is published also when the Secret the cache showed was
/// removed by somebody else first (garbage collection races the operator
/// for it); without, only for a Secret this call removed, so a grant whose
/// finalizer path already revoked it is not announced twice.
pub(super) async fn revoke_deleted(
    grant: &UploadGrant,
    ctx: &Context,
    memo: &mut GrantMemo,
    announce_held: bool,
) -> Result<()> {
    if namespace_terminating(grant, ctx) {
        tracing::debug!(grant = %grant.name_any(), "namespace terminating; its deletion removes the Secret");
    } else {
        let held = announce_held && apply::holds_secret(ctx, grant);
        if apply::revoke_all(ctx, grant, memo).await? || held {
            let note = Note::new(EventReason::Revoked, "grant deleted; Secret removed");
            ctx.events.publish(grant, note);
        }
    }
    // S3 has no garbage collection: the upload is aborted before the grant
    // goes, also in a terminating namespace. A failure keeps the finalizer
    // and is retried with backoff.
    let has_upload = grant.status.as_ref().is_some_and(|s| s.upload_id.is_some());
    let aborted = match (finalizer::wanted(grant) || has_upload) && !multipart::completed(grant) {
        true => multipart::abort_grant_uploads(ctx, grant, memo).await?,
        false => multipart::Aborted::Nothing,
    };
    if aborted != multipart::Aborted::Nothing {
        let message = apply::aborted_message("grant deleted".into(), aborted);
        let reason = match aborted {
            multipart::Aborted::NoIssuer => EventReason::Failed,
            _ => EventReason::Revoked,
        };
        ctx.events.publish(grant, Note::new(reason, message));
    }
    ctx.metrics.grant_state(grant_key(grant), None, None);
    // Nothing is kept about a grant that is gone but its failures, so that
    // the backoff still grows while its finalizer cannot be removed.
    *memo = GrantMemo {
        failures: memo.failures,
        ..GrantMemo::default()
    };
    ctx.memos.forget(grant_key(grant));
    Ok(())
}

fn namespace_terminating(grant: &UploadGrant, ctx: &Context) -> bool {
    let namespace = grant.namespace().unwrap_or_default();
    ctx.namespaces
        .get(&ObjectRef::new(&namespace))
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
}
