//! The reconcile pipeline for one grant, each stage once and in order:
//! load (from the caches) → decide (pure: validate, authorize, schedule) →
//! apply (sign, write, remove) → status (and events). A deleted grant takes
//! the finalizer's path instead: revoke, then let it go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::build::whole_seconds;
use super::decide::{self, Decision, Observed, Settled, Wake};
use super::events::{EventReason, Note};
use super::secrets::Slot;
use super::validate::secret_name;
use super::{Context, apply, finalizer, grant_key, priority, rollout, status};
use crate::api::{ClusterGrantIssuer, Reason, UploadGrant};
use crate::error::{Error, Result};

pub async fn reconcile(grant: Arc<UploadGrant>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = run(grant.clone(), &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.clear_failures(&ObjectRef::from_obj(grant.as_ref()));
    }
    result
}

async fn run(mut grant: Arc<UploadGrant>, ctx: &Context) -> Result<Action> {
    let namespace = grant.namespace().ok_or(Error::IncompleteObject)?;
    let api: Api<UploadGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = |g: &UploadGrant| g.meta().deletion_timestamp.is_some();
    if !deleting(&grant) && !finalizer::has_finalizer(&grant) {
        // The finalizer is in place before any Secret exists. The grant as
        // the server returns it may be deleting by now.
        grant = Arc::new(finalizer::add(&api, &grant).await?);
    }
    if !deleting(&grant) {
        return pass(&grant, ctx).await;
    }
    if finalizer::has_finalizer(&grant) {
        cleanup(&grant, ctx).await?;
        finalizer::remove(&api, &grant).await?;
    }
    Ok(Action::await_change())
}

/// One pass of the pipeline for a grant that is not being deleted.
async fn pass(grant: &UploadGrant, ctx: &Context) -> Result<Action> {
    let now = whole_seconds(SystemTime::now());
    let loaded = Loaded::load(grant, ctx);
    if loaded.namespace.is_none() {
        // The namespace cache has not seen the grant's namespace (yet, or
        // after a relist): judging it as unlabelled could revoke a grant
        // its labels allow. Its arrival wakes the grant; so does this.
        tracing::debug!(grant = %grant.name_any(), "namespace not in the cache yet; waiting");
        return Ok(Action::requeue(NAMESPACE_RETRY));
    }
    let decision = loaded.decide(grant, now);
    if let Some(wait) = priority::step_aside(ctx, &decision, now) {
        tracing::debug!(grant = %grant.name_any(), wait_ms = wait.as_millis(), "renewals that expire sooner go first");
        return Ok(Action::requeue(wait));
    }
    let (report, error) = apply::carry_out(ctx, grant, decision, now).await?;
    ctx.remember_settled(grant, &report);
    let wrote = status::write(grant, ctx, &report).await?;
    if let Some(note) = &report.note {
        // A warning is said once, when the status changes, not on every retry.
        if wrote || !note.reason.is_warning() {
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
        Some(state) => rollout::restart_owed(ctx, grant, state, now).await?,
        None => rollout::Outcome::default(),
    };
    for note in restarts.notes {
        ctx.events.publish(grant, note);
    }
    let wake = match restarts.wake_at {
        Some(at) => report.wake.or_at(at, SystemTime::now()),
        None => report.wake,
    };
    Ok(action(wake))
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
    fn load(grant: &'a UploadGrant, ctx: &'a Context) -> Self {
        let namespace = grant.namespace().unwrap_or_default();
        let issuer_name = decide::issuer_name(grant, ctx.settings.default_issuer.as_deref());
        let name = secret_name(&grant.spec, &grant.name_any());
        Loaded {
            issuer_name,
            issuer: issuer_name.and_then(|n| ctx.issuers.get(&ObjectRef::new(n))),
            namespace: ctx.namespaces.get(&ObjectRef::new(&namespace)),
            secret: ctx.secret_slot(grant, &namespace, &name),
            remembered: ctx.settled(grant),
            propagation: ctx.settings.propagation_budget,
        }
    }

    fn decide(&self, grant: &UploadGrant, now: SystemTime) -> Decision {
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
            now,
        })
    }
}

/// Deletion: revoke, then let the finalizer go. In a namespace being
/// deleted the namespace's own deletion removes the Secrets, and may already
/// have removed this operator's Role there (`operator.watchNamespaces`).
async fn cleanup(grant: &UploadGrant, ctx: &Context) -> Result<()> {
    if namespace_terminating(grant, ctx) {
        tracing::debug!(grant = %grant.name_any(), "namespace terminating; its deletion removes the Secret");
    } else if apply::revoke_all(ctx, grant).await? {
        let note = Note::new(EventReason::Revoked, "grant deleted; Secret removed");
        ctx.events.publish(grant, note);
    }
    ctx.metrics.grant_state(grant_key(grant), None, None);
    ctx.forget(grant);
    Ok(())
}

fn namespace_terminating(grant: &UploadGrant, ctx: &Context) -> bool {
    let namespace = grant.namespace().unwrap_or_default();
    ctx.namespaces
        .get(&ObjectRef::new(&namespace))
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
}
