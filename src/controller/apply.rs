//! Apply: carries a decision out — signing, the Secret write, removals —
//! and says what happened as a `Report`. The only stage with side effects
//! on Secrets; what to do was settled by `decide`.

use std::time::SystemTime;

use kube::ResourceExt;

use super::Context;
use super::build::{self, Issued, IssuedState, format_time};
use super::decide::{self, Decision, Report, SignPlan};
use super::secrets::{self, Slot, Written};
use super::validate::secret_name;
use crate::api::{Reason, UploadGrant};
use crate::error::{Error, Result};
use crate::metrics::Signing;
use crate::signing::{CredentialsError, SigningError};

/// A report, and the error to back off with when the pass failed.
pub type Applied = (Report, Option<Error>);

pub async fn carry_out(
    ctx: &Context,
    grant: &UploadGrant,
    decision: Decision,
    now: SystemTime,
) -> Result<Applied> {
    let report = match decision {
        Decision::Revoke { reason, message } => {
            let removed = revoke_all(ctx, grant).await?;
            Report::revoked(reason, message, removed)
        }
        Decision::Conflict { secret_name } => Report::conflict(&secret_name),
        Decision::Keep {
            secret_name,
            state,
            stale,
            ..
        } => {
            let removed = remove_stale(ctx, grant, stale.as_deref()).await?;
            Report::ready(&secret_name, state, removed)
        }
        Decision::Sign(plan) => return sign_and_write(ctx, grant, &plan, now).await,
    };
    Ok((report, None))
}

/// Why no URL could be signed.
enum Failure {
    Credentials(CredentialsError),
    Signing(SigningError),
}

async fn sign_and_write(
    ctx: &Context,
    grant: &UploadGrant,
    plan: &SignPlan,
    now: SystemTime,
) -> Result<Applied> {
    // A changed name revokes the old Secret at once, whatever follows.
    remove_stale(ctx, grant, plan.stale.as_deref()).await?;
    let issued = match sign(ctx, plan, now).await {
        Ok(issued) => issued,
        Err(failure) => return fail(ctx, grant, plan, now, failure).await,
    };
    let name = plan.valid.secret_name.as_str();
    let secret = build::build_secret(grant, &plan.valid, &issued)?;
    match write(ctx, grant, plan, &secret, now).await? {
        WriteEnd::Written => {}
        WriteEnd::Current(state) => return Ok((Report::ready(name, state, false), None)),
        WriteEnd::Conflict => return Ok((Report::conflict(name), None)),
        WriteEnd::Refused(reason) => {
            let reason = reason.replace(issued.presigned.url.expose(), "<url>");
            let message = format!("the apiserver refused Secret {name:?}: {reason}");
            let removed = revoke_all(ctx, grant).await?;
            return Ok((Report::revoked(Reason::InvalidSpec, message, removed), None));
        }
    }
    tracing::info!(
        grant = %grant.name_any(), namespace = grant.namespace().as_deref().unwrap_or(""),
        secret = name, renewal = plan.renewal, fingerprint = %issued.presigned.url.fingerprint(),
        expires_at = %format_time(issued.expires_at), "issued presigned URL"
    );
    Ok((Report::issued(name, issued.state(), plan.renewal), None))
}

async fn sign(ctx: &Context, plan: &SignPlan, now: SystemTime) -> Result<Issued, Failure> {
    let credentials = ctx.credentials.get().await.map_err(Failure::Credentials)?;
    let times = decide::times(
        now,
        &plan.valid,
        credentials.expiry(),
        rand::random::<f64>(),
    )
    .ok_or_else(|| {
        Failure::Credentials(CredentialsError(
            "the credentials expire too soon to sign a URL".into(),
        ))
    })?;
    let input = plan.valid.sign_input(now, times.lifetime);
    let presigned = ctx
        .presigner
        .presign(&plan.target, &credentials, &input)
        .await
        .map_err(Failure::Signing)?;
    ctx.metrics.signed(Signing::Ok);
    Ok(Issued {
        presigned,
        issued_at: now,
        expires_at: now + times.lifetime,
        refresh_at: times.refresh_at,
        spec_hash: plan.spec_hash.clone(),
    })
}

/// Reports a failed signing. The current URL stays only for a renewal that
/// can still use it; otherwise the Secret goes.
async fn fail(
    ctx: &Context,
    grant: &UploadGrant,
    plan: &SignPlan,
    now: SystemTime,
    failure: Failure,
) -> Result<Applied> {
    let kept = plan.keeps_current_on_failure(now);
    if kept.is_none() {
        let namespace = grant.namespace().unwrap_or_default();
        secrets::remove(ctx, grant, &namespace, &plan.valid.secret_name).await?;
    }
    let (reason, detail, error, metric) = match failure {
        Failure::Credentials(e) => (
            Reason::CredentialsUnavailable,
            format!("cannot sign with the AWS credentials: {e}"),
            Error::Credentials(e),
            Signing::CredentialsUnavailable,
        ),
        Failure::Signing(e) => (
            Reason::SigningFailed,
            format!("signing failed: {e}"),
            Error::Signing(e),
            Signing::PresignFailed,
        ),
    };
    ctx.metrics.signed(metric);
    let kept = kept.map(|state| (plan.valid.secret_name.as_str(), state));
    Ok((Report::failed(reason, detail, kept), Some(error)))
}

/// How a Secret write ended, once the server was asked about a refusal.
enum WriteEnd {
    Written,
    /// Our own earlier write, which the cache had not shown, is current.
    Current(IssuedState),
    /// Somebody else's Secret holds the name.
    Conflict,
    /// The apiserver refused the Secret itself, with this reason.
    Refused(String),
}

/// Writes the Secret. A refusal is looked into with the server, since the
/// cache may be behind: the name may hold somebody else's Secret, or one of
/// ours written a moment ago (then it is applied over, by its uid).
async fn write(
    ctx: &Context,
    grant: &UploadGrant,
    plan: &SignPlan,
    secret: &k8s_openapi::api::core::v1::Secret,
    now: SystemTime,
) -> Result<WriteEnd> {
    let namespace = grant.namespace().unwrap_or_default();
    let name = &plan.valid.secret_name;
    if let Some(uid) = plan.ours.as_deref().filter(|_| plan.legacy_fields) {
        secrets::adopt_legacy_fields(ctx, &namespace, name, uid).await?;
    }
    let refused = match secrets::write(ctx, secret, plan.ours.as_deref()).await? {
        Written::Done => return Ok(WriteEnd::Written),
        Written::Refused(reason) => reason,
    };
    match secrets::server_slot(ctx, grant, &namespace, name).await? {
        Slot::Foreign => Ok(WriteEnd::Conflict),
        Slot::Ours(existing) if existing.uid() != plan.ours => {
            if let Some(state) = existing
                .state
                .clone()
                .filter(|s| decide::is_current(now, s, plan))
            {
                return Ok(WriteEnd::Current(state));
            }
            Ok(
                match secrets::write(ctx, secret, existing.uid().as_deref()).await? {
                    Written::Done => WriteEnd::Written,
                    Written::Refused(reason) => WriteEnd::Refused(reason),
                },
            )
        }
        Slot::Ours(_) | Slot::Free => Ok(WriteEnd::Refused(refused)),
    }
}

/// Removes a Secret the grant wrote under a name it no longer uses.
async fn remove_stale(ctx: &Context, grant: &UploadGrant, stale: Option<&str>) -> Result<bool> {
    let Some(name) = stale else { return Ok(false) };
    let namespace = grant.namespace().unwrap_or_default();
    secrets::remove(ctx, grant, &namespace, name).await
}

/// Removes every Secret this grant owns: the one its spec names and the one
/// its status names. Returns whether anything was removed.
pub async fn revoke_all(ctx: &Context, grant: &UploadGrant) -> Result<bool> {
    let namespace = grant.namespace().unwrap_or_default();
    let mut names = vec![secret_name(&grant.spec, &grant.name_any())];
    if let Some(status_name) = grant.status.as_ref().and_then(|s| s.secret_name.clone())
        && !names.contains(&status_name)
    {
        names.push(status_name);
    }
    let mut any = false;
    for name in names {
        any |= secrets::remove(ctx, grant, &namespace, &name).await?;
    }
    Ok(any)
}
