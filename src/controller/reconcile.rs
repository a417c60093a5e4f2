//! The reconcile pipeline for one grant:
//! load → validate → authorize → build → apply → status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::build::{self, Issued, IssuedState, Plan, format_time, whole_seconds};
use super::events::EventType;
use super::finalizer;
use super::secrets::{self, Slot};
use super::status::{Reason, ready_condition, set_ready};
use super::validate::{ValidGrant, secret_name, validate};
use super::{Context, MANAGER};
use crate::api::{ClusterGrantIssuer, UploadGrant, UploadGrantStatus};
use crate::error::{Error, Result};
use crate::issuer::{Request, authorize};
use crate::signing::{SignInput, url_lifetime};

/// Requeue for conflicts we cannot watch (a foreign Secret going away).
const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

pub async fn reconcile(grant: Arc<UploadGrant>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let namespace = grant.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<UploadGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = async {
        let deleting = |g: &UploadGrant| g.meta().deletion_timestamp.is_some();
        let mut grant = grant.clone();
        if !deleting(&grant) && !finalizer::has_finalizer(&grant) {
            // The finalizer is in place before any Secret exists. The grant
            // as the server returns it may be deleting by now.
            grant = Arc::new(finalizer::add(&api, &grant).await?);
        }
        if !deleting(&grant) {
            return apply(&grant, &namespace, &ctx).await;
        }
        if finalizer::has_finalizer(&grant) {
            cleanup(&grant, &namespace, &ctx).await?;
            finalizer::remove(&api, &grant).await?;
        }
        Ok(Action::await_change())
    }
    .await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.clear_failures(&ObjectRef::from_obj(grant.as_ref()));
    }
    result
}

/// The issuer a grant uses: its own issuerRef, else the operator's default.
pub fn issuer_name(grant: &UploadGrant, default: Option<&str>) -> Option<String> {
    grant
        .spec
        .issuer_ref
        .as_ref()
        .map(|r| r.name.clone())
        .or_else(|| default.map(str::to_owned))
}

/// The outcome of one pass, before it is written to status.
struct Outcome {
    reason: Reason,
    message: String,
    issued: Option<IssuedState>,
    secret_name: Option<String>,
    action: Action,
    /// An event to publish: (type, reason, note).
    event: Option<(EventType, &'static str, String)>,
    error: Option<Error>,
}

impl Outcome {
    fn not_ready(reason: Reason, message: String, action: Action) -> Self {
        Outcome {
            reason,
            message,
            issued: None,
            secret_name: None,
            action,
            event: None,
            error: None,
        }
    }
}

async fn apply(grant: &UploadGrant, namespace: &str, ctx: &Context) -> Result<Action> {
    let outcome = evaluate(grant, namespace, ctx).await?;
    let previous =
        ready_condition(grant.status.as_ref()).map(|c| (c.reason.clone(), c.message.clone()));
    let changed =
        previous.as_ref() != Some(&(outcome.reason.as_str().to_owned(), outcome.message.clone()));
    if let Some((type_, reason, note)) = &outcome.event {
        // Repeated denials and failures are reported once per change.
        let repeated = !changed && *type_ == EventType::Warning;
        if !repeated {
            ctx.events.publish(grant, *type_, reason, note.clone());
        }
    }
    write_status(grant, namespace, ctx, &outcome).await?;
    ctx.metrics.grant_state(
        super::grant_key(grant),
        Some(outcome.reason),
        outcome.issued.as_ref().map(|s| s.expires_at),
    );
    match outcome.error {
        Some(e) => Err(e),
        None => Ok(outcome.action),
    }
}

async fn evaluate(grant: &UploadGrant, namespace: &str, ctx: &Context) -> Result<Outcome> {
    let name = grant.name_any();
    let now = whole_seconds(SystemTime::now());

    // Suspended: revoke now, keep the grant.
    if grant.spec.suspend {
        let revoked = revoke_all(grant, namespace, ctx, None).await?;
        let mut out = Outcome::not_ready(
            Reason::Suspended,
            "suspended: no URL is issued".into(),
            Action::await_change(),
        );
        out.event = revoked.then(|| {
            (
                EventType::Normal,
                "Revoked",
                "grant suspended; Secret removed".to_owned(),
            )
        });
        return Ok(out);
    }

    // Validate.
    let valid = match validate(&grant.spec, &name) {
        Ok(v) => v,
        Err(e) => return deny(grant, namespace, ctx, Reason::InvalidSpec, e.0, "Failed").await,
    };

    // Load the issuer.
    let Some(issuer_name) = issuer_name(grant, ctx.settings.default_issuer.as_deref()) else {
        let msg = "spec.issuerRef is not set and the operator has no default issuer".to_owned();
        return deny(grant, namespace, ctx, Reason::IssuerNotFound, msg, "Denied").await;
    };
    let Some(issuer) = ctx
        .issuers
        .get(&ObjectRef::<ClusterGrantIssuer>::new(&issuer_name))
    else {
        let msg = format!("ClusterGrantIssuer {issuer_name:?} not found");
        return deny(grant, namespace, ctx, Reason::IssuerNotFound, msg, "Denied").await;
    };

    // Authorize.
    let empty = BTreeMap::new();
    let ns_meta = ctx.namespaces.get(&ObjectRef::new(namespace));
    let ns_labels = ns_meta
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .unwrap_or(&empty);
    let request = Request {
        namespace,
        namespace_labels: ns_labels,
        name: &name,
        bucket: &grant.spec.bucket,
        key: &grant.spec.key,
        method: grant.spec.method,
        ttl: valid.ttl,
        content_length: grant
            .spec
            .content_length
            .and_then(|n| u64::try_from(n).ok()),
    };
    if let Err(denied) = authorize(&issuer.spec, &request) {
        let msg = format!("ClusterGrantIssuer {issuer_name:?}: {denied}");
        return deny(grant, namespace, ctx, Reason::Forbidden, msg, "Denied").await;
    }

    // A renamed Secret: the old one goes.
    let mut revoked_old = false;
    if let Some(old) = grant.status.as_ref().and_then(|s| s.secret_name.as_deref())
        && old != valid.secret_name
    {
        revoked_old = secrets::remove(ctx, grant, namespace, old).await?;
    }

    // Who holds the Secret's name, as far as the cache knows? A Secret it
    // does not know turns up as a conflict when the write is tried.
    let (current, ours) = match secrets::cached_slot(ctx, grant, namespace, &valid.secret_name) {
        Slot::Foreign => return Ok(conflict(&valid.secret_name)),
        Slot::Ours(secret) => (secret.state.clone(), secret.uid()),
        Slot::Free => (None, None),
    };

    let hash = build::spec_hash(&grant.spec, &issuer.spec.s3);
    let already_expired = ready_condition(grant.status.as_ref()).is_some_and(|c| {
        c.reason == Reason::Expired.as_str() && c.observed_generation == grant.meta().generation
    });

    match build::plan(
        SystemTime::now(),
        current.as_ref(),
        &hash,
        &valid,
        already_expired,
    ) {
        Plan::Keep { state, wake_at } => {
            let mut out = issued_outcome(&valid, state, wake_at);
            if revoked_old {
                out.event = Some((
                    EventType::Normal,
                    "Revoked",
                    "the Secret was renamed; the old one was removed".into(),
                ));
            }
            Ok(out)
        }
        Plan::Revoke(_) => {
            let revoked = revoke_all(grant, namespace, ctx, Some(&valid.secret_name)).await?;
            let msg = match valid.not_after {
                Some(end) if SystemTime::now() >= end => format!(
                    "notAfter {} has passed; the Secret was removed",
                    format_time(end)
                ),
                _ => {
                    "the URL expired and refreshPolicy is Never; the Secret was removed".to_owned()
                }
            };
            let mut out = Outcome::not_ready(Reason::Expired, msg.clone(), Action::await_change());
            out.event = revoked.then_some((EventType::Normal, "Revoked", msg));
            Ok(out)
        }
        Plan::Sign { renewal } => {
            sign_and_write(
                grant, namespace, ctx, &issuer, &valid, hash, current, ours, renewal, now,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn sign_and_write(
    grant: &UploadGrant,
    namespace: &str,
    ctx: &Context,
    issuer: &ClusterGrantIssuer,
    valid: &ValidGrant,
    hash: String,
    current: Option<IssuedState>,
    // The uid of the Secret of ours that holds the name, if any.
    ours: Option<String>,
    renewal: bool,
    now: SystemTime,
) -> Result<Outcome> {
    // A URL for an older spec must not outlive a failed replacement.
    let keep_current = renewal && current.as_ref().is_some_and(|s| s.expires_at > now);
    let fail = |reason: Reason, error: Error, detail: String| {
        let kept = match (&current, keep_current) {
            (Some(s), true) => format!(
                "; the current URL stays valid until {}",
                format_time(s.expires_at)
            ),
            _ => String::new(),
        };
        let msg = format!("{detail}{kept}");
        let mut out = Outcome::not_ready(reason, msg.clone(), Action::await_change());
        out.event = Some((EventType::Warning, "Failed", msg));
        out.error = Some(error);
        if keep_current {
            out.issued = current.clone();
            out.secret_name = Some(valid.secret_name.clone());
        }
        out
    };
    // Removed only if it is ours, which `secrets::remove` checks with the
    // server when the cache does not know the Secret.
    let stale = !keep_current;

    let credentials = match ctx.credentials.get().await {
        Ok(c) => c,
        Err(e) => {
            revoke_stale(ctx, grant, namespace, &valid.secret_name, stale).await?;
            ctx.metrics.signed(false, "credentials");
            let msg = format!("cannot load AWS credentials: {e}");
            return Ok(fail(
                Reason::CredentialsUnavailable,
                Error::Credentials(e),
                msg,
            ));
        }
    };
    let Some(lifetime) = url_lifetime(now, valid.ttl, credentials.expiry(), valid.not_after) else {
        revoke_stale(ctx, grant, namespace, &valid.secret_name, stale).await?;
        ctx.metrics.signed(false, "credentials");
        let e = crate::signing::CredentialsError(
            "the credentials expire too soon to sign a URL".into(),
        );
        let msg = e.0.clone();
        return Ok(fail(
            Reason::CredentialsUnavailable,
            Error::Credentials(e),
            msg,
        ));
    };
    let input = SignInput {
        bucket: &grant.spec.bucket,
        key: &grant.spec.key,
        method: grant.spec.method,
        content_type: grant.spec.content_type.as_deref(),
        content_length: grant.spec.content_length,
        metadata: grant.spec.metadata.as_ref(),
        sse: grant.spec.server_side_encryption.as_ref(),
        signed_at: now,
        expires_in: lifetime,
    };
    let presigned = match ctx
        .presigner
        .presign(&issuer.spec.s3, &credentials, &input)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            revoke_stale(ctx, grant, namespace, &valid.secret_name, stale).await?;
            ctx.metrics.signed(false, "presign");
            let msg = format!("signing failed: {e}");
            return Ok(fail(Reason::SigningFailed, Error::Signing(e), msg));
        }
    };
    ctx.metrics.signed(true, "ok");

    let refresh_at = build::refresh_at(
        now,
        lifetime,
        valid,
        grant.spec.refresh_policy,
        rand::random::<f64>(),
    );
    let issued = Issued {
        presigned,
        issued_at: now,
        expires_at: now + lifetime,
        refresh_at,
        spec_hash: hash,
    };
    let secret = build::build_secret(grant, &valid.secret_name, &issued)?;
    if !secrets::write(ctx, namespace, &secret, ours.as_deref()).await? {
        // The name is taken by a Secret the cache has not seen: ask the server.
        match secrets::slot(ctx, grant, namespace, &valid.secret_name).await? {
            Slot::Ours(existing) => {
                // Our own write that the cache has not caught up with yet.
                if let Plan::Keep { state, wake_at } = build::plan(
                    now,
                    existing.state.as_ref(),
                    &issued.spec_hash,
                    valid,
                    false,
                ) {
                    return Ok(issued_outcome(valid, state, wake_at));
                }
                if !secrets::write(ctx, namespace, &secret, existing.uid().as_deref()).await? {
                    return Ok(conflict(&valid.secret_name));
                }
            }
            Slot::Free if secrets::write(ctx, namespace, &secret, None).await? => {}
            Slot::Free | Slot::Foreign => return Ok(conflict(&valid.secret_name)),
        }
    }
    tracing::info!(
        grant = %grant.name_any(), namespace, secret = %valid.secret_name, renewal,
        fingerprint = %issued.presigned.url.fingerprint(), expires_at = %format_time(issued.expires_at),
        "issued presigned URL"
    );
    let state = issued.state();
    let wake_at = state.refresh_at.unwrap_or(state.expires_at);
    let mut out = issued_outcome(valid, state, wake_at);
    let (reason, note) = if renewal {
        (
            "Renewed",
            format!("URL renewed; expires at {}", format_time(issued.expires_at)),
        )
    } else {
        (
            "Issued",
            format!(
                "URL issued into Secret {:?}; expires at {}",
                valid.secret_name,
                format_time(issued.expires_at)
            ),
        )
    };
    out.event = Some((EventType::Normal, reason, note));
    Ok(out)
}

/// Somebody else's Secret holds the name: never touched; looked at again
/// later, since it is not watched.
fn conflict(secret_name: &str) -> Outcome {
    let msg = format!(
        "Secret {secret_name:?} exists and is not owned by this grant; it is left untouched. Delete it or set spec.secret.name"
    );
    let mut out = Outcome::not_ready(
        Reason::SecretConflict,
        msg.clone(),
        Action::requeue(CONFLICT_RECHECK),
    );
    out.event = Some((EventType::Warning, "Failed", msg));
    out
}

/// A failed replacement removes the URL of the older spec.
async fn revoke_stale(
    ctx: &Context,
    grant: &UploadGrant,
    namespace: &str,
    name: &str,
    stale: bool,
) -> Result<()> {
    if stale {
        secrets::remove(ctx, grant, namespace, name).await?;
    }
    Ok(())
}

fn issued_outcome(valid: &ValidGrant, state: IssuedState, wake_at: SystemTime) -> Outcome {
    let message = match state.refresh_at {
        Some(at) => format!(
            "URL valid until {}; renews at {}",
            format_time(state.expires_at),
            format_time(at)
        ),
        None => format!(
            "URL valid until {}; it is not renewed",
            format_time(state.expires_at)
        ),
    };
    let wait = wake_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Outcome {
        reason: Reason::Issued,
        message,
        issued: Some(state),
        secret_name: Some(valid.secret_name.clone()),
        // One extra second so the wake-up lands after the planned instant.
        action: Action::requeue(wait + Duration::from_secs(1)),
        event: None,
        error: None,
    }
}

/// Not allowed (invalid, no issuer, forbidden): remove any Secret and say why.
async fn deny(
    grant: &UploadGrant,
    namespace: &str,
    ctx: &Context,
    reason: Reason,
    message: String,
    event_reason: &'static str,
) -> Result<Outcome> {
    let revoked = revoke_all(grant, namespace, ctx, None).await?;
    let mut out = Outcome::not_ready(reason, message.clone(), Action::await_change());
    let note = if revoked {
        format!("{message}; the Secret was removed")
    } else {
        message
    };
    out.event = Some((EventType::Warning, event_reason, note));
    Ok(out)
}

/// Removes every Secret this grant owns: the one in status and the one its
/// spec names. Returns whether anything was removed.
async fn revoke_all(
    grant: &UploadGrant,
    namespace: &str,
    ctx: &Context,
    spec_name: Option<&str>,
) -> Result<bool> {
    let spec_name = spec_name
        .map(str::to_owned)
        .unwrap_or_else(|| secret_name(&grant.spec, &grant.name_any()));
    let mut names = vec![spec_name];
    if let Some(status_name) = grant.status.as_ref().and_then(|s| s.secret_name.clone())
        && !names.contains(&status_name)
    {
        names.push(status_name);
    }
    let mut any = false;
    for name in names {
        any |= secrets::remove(ctx, grant, namespace, &name).await?;
    }
    Ok(any)
}

/// Deletion: revoke, then let the finalizer go.
async fn cleanup(grant: &UploadGrant, namespace: &str, ctx: &Context) -> Result<()> {
    if revoke_all(grant, namespace, ctx, None).await? {
        ctx.events.publish(
            grant,
            EventType::Normal,
            "Revoked",
            "grant deleted; Secret removed".into(),
        );
    }
    ctx.metrics.grant_state(super::grant_key(grant), None, None);
    ctx.forget_status(grant);
    Ok(())
}

async fn write_status(
    grant: &UploadGrant,
    namespace: &str,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<()> {
    let old = grant.status.clone().unwrap_or_default();
    let time = |t: SystemTime| Time(jiff::Timestamp::try_from(t).unwrap_or_default());
    let mut new = UploadGrantStatus {
        conditions: old.conditions.clone(),
        secret_name: outcome.secret_name.clone(),
        issued_at: outcome.issued.as_ref().map(|s| time(s.issued_at)),
        expires_at: outcome.issued.as_ref().map(|s| time(s.expires_at)),
        refresh_at: outcome.issued.as_ref().and_then(|s| s.refresh_at.map(time)),
        url_fingerprint: outcome.issued.as_ref().map(|s| s.fingerprint.clone()),
        observed_generation: old.observed_generation,
    };
    let now = Time(jiff::Timestamp::now());
    set_ready(
        &mut new,
        outcome.reason,
        outcome.message.clone(),
        grant.meta().generation,
        now,
    );
    if new == old {
        return Ok(());
    }
    let written = WrittenStatus::of(grant, &old, &new);
    if ctx.status_written(written) {
        return Ok(());
    }
    ctx.forget_status(grant);
    let patch = serde_json::json!({
        "apiVersion": "grants.io/v1alpha1",
        "kind": "UploadGrant",
        "status": new,
    });
    Api::<UploadGrant>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &grant.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.record_status(written);
    Ok(())
}

/// A status write as hashes: which grant (its uid), the status the cache
/// showed before it, and the status written, both without transition times
/// (which a reconcile working from a stale cache would set afresh). A write
/// is skipped only while the cache still shows the older status and the
/// same status would be written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenStatus {
    pub grant: u64,
    pub before: u64,
    pub status: u64,
}

impl WrittenStatus {
    fn of(grant: &UploadGrant, before: &UploadGrantStatus, status: &UploadGrantStatus) -> Self {
        let timeless = |s: &UploadGrantStatus| {
            let mut s = s.clone();
            for c in &mut s.conditions {
                c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
            }
            super::hash(&serde_json::to_vec(&s).unwrap_or_default())
        };
        WrittenStatus {
            grant: super::grant_key(grant),
            before: timeless(before),
            status: timeless(status),
        }
    }
}
