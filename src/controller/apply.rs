//! Apply: carries a decision out — signing, the S3 upload calls, the
//! Secret write or removal, rollout restarts — and returns what was done
//! (`report::Done`), for `report` to say. The only stage with side effects;
//! what to do was settled by `decide`.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

use kube::ResourceExt;

use super::build::{self, Issued, IssuedState, Signed, format_time};
use super::context::Context;
use super::decide::{self, Decision, Removal, SignPlan};
use super::load::Loaded;
use super::managed::{ManagedSecret, Slot};
use super::memo::GrantMemo;
use super::report::{Aborted, After, Done};
use super::secrets::{self, Written};
use super::{multipart, rollout};
use crate::api::{Method, Reason, UploadGrant};
use crate::error::{Error, Result};
use crate::metrics::Signing;
use crate::signing::{CredentialsError, MultipartInput, SigningError};

/// What was done, and the error to back off with when the pass failed.
pub type Applied = (Done, Option<Error>);

/// Carries the decision out. What the loaded grant recorded (the upload in
/// its status, its issuer's endpoint) is what a revocation aborts.
pub async fn carry_out(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    loaded: &Loaded<'_>,
    decision: Decision,
    now: SystemTime,
) -> Result<Applied> {
    let done = match decision {
        Decision::Revoke { reason, message } => {
            return revoke(ctx, grant, memo, loaded, reason, message).await;
        }
        Decision::RevokeDeleted(removal) => {
            return revoke_deleted(ctx, grant, memo, loaded, removal).await;
        }
        Decision::Conflict { secret_name } => Done::Conflict { secret_name },
        Decision::Keep {
            secret_name,
            state,
            stale,
            wake_at,
            request_due,
        } => Done::Kept {
            stale_removed: remove_stale(ctx, grant, memo, stale.as_deref()).await?,
            secret_name,
            state: *state,
            wake_at,
            request_due,
        },
        Decision::Sign(plan) => return sign_and_write(ctx, grant, memo, &plan, now).await,
    };
    Ok((done, None))
}

/// Removes every Secret the grant owns, then aborts its upload, unless S3
/// says it was completed.
async fn revoke(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    loaded: &Loaded<'_>,
    reason: Reason,
    message: String,
) -> Result<Applied> {
    let removed = revoke_all(ctx, grant, memo).await?;
    let (aborted, error) = match reason {
        Reason::Completed => (Ok(Aborted::Nothing), None),
        _ => match abort(ctx, grant, memo, loaded, Abort::AndForget).await {
            Ok(aborted) => (Ok(aborted), None),
            Err(e) => (Err(e.to_string()), Some(e.into())),
        },
    };
    let done = Done::Revoked {
        reason,
        message,
        removed,
        aborted,
    };
    Ok((done, error))
}

/// A deleted grant: its Secrets go (unless the namespace's deletion takes
/// them) and its upload is aborted. A failed abort keeps the finalizer and
/// is retried with backoff; the revocation is said first.
async fn revoke_deleted(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    loaded: &Loaded<'_>,
    removal: Removal,
) -> Result<Applied> {
    let removed = match removal.remove {
        true => revoke_all(ctx, grant, memo).await?,
        false => {
            tracing::debug!(grant = %grant.name_any(), "namespace terminating; its deletion removes the Secret");
            false
        }
    };
    let asked = match removal.abort {
        true => Abort::Only,
        false => Abort::No,
    };
    let (aborted, error) = match abort(ctx, grant, memo, loaded, asked).await {
        Ok(aborted) => (aborted, None),
        Err(e) => (Aborted::Nothing, Some(e.into())),
    };
    let done = Done::Deleted {
        announce: removal.remove && (removed || removal.announce_held),
        aborted,
    };
    Ok((done, error))
}

/// Whether to abort the grant's upload, and then clear its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    No,
    /// A grant being deleted: its status goes with it.
    Only,
    AndForget,
}

/// Aborts the grant's uploads, when asked to.
async fn abort(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    loaded: &Loaded<'_>,
    asked: Abort,
) -> std::result::Result<Aborted, crate::uploads::MultipartError> {
    if asked == Abort::No {
        return Ok(Aborted::Nothing);
    }
    let issuer = (loaded.issuer(), loaded.namespace_labels());
    let forget = asked == Abort::AndForget;
    multipart::abort_grant_uploads(ctx, grant, memo, issuer, loaded.recorded(), forget).await
}

/// What follows a current URL: the rollout restarts it owes (not after a
/// failed pass), and when an open multipart upload is looked at next.
pub async fn follow_up(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    applied: &Applied,
    now: SystemTime,
) -> Result<After> {
    let Some(state) = applied.0.current_url().filter(|_| applied.1.is_none()) else {
        return Ok(After::default());
    };
    let restarts = rollout::restart_owed(ctx, grant, memo, state, now).await?;
    // S3 sends no notification when the client completes the upload.
    let upload_check = grant
        .spec
        .multipart
        .as_ref()
        .map(|_| SystemTime::now() + ctx.settings.multipart_check_interval);
    Ok(After {
        restart_notes: restarts.notes,
        restart_wake: restarts.wake_at,
        upload_check,
    })
}

/// Why no URL could be signed.
enum Failure {
    Credentials(CredentialsError),
    Signing(SigningError),
    Multipart(crate::uploads::MultipartError),
}

async fn sign_and_write(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    now: SystemTime,
) -> Result<Applied> {
    // A changed name revokes the old Secret at once, whatever follows.
    remove_stale(ctx, grant, memo, plan.stale.as_deref()).await?;
    let issued = match sign(ctx, grant, memo, plan, now).await {
        Ok(issued) => issued,
        Err(failure) => return fail(ctx, grant, memo, plan, now, failure).await,
    };
    let name = plan.valid.secret_name.as_str();
    let secret = build::build_secret(grant, &plan.valid, &issued)?;
    let secret_name = name.to_owned();
    let done = match write(ctx, grant, plan, &secret, now).await? {
        WriteEnd::Written => {
            memo.remember_secret(ManagedSecret::written(&secret));
            None
        }
        WriteEnd::Current(state) => Some(Done::Current { secret_name, state }),
        WriteEnd::Conflict => Some(Done::Conflict { secret_name }),
        WriteEnd::Refused(reason) => Some(Done::Refused {
            secret_name,
            why: issued.presigned.redact(&reason),
            removed: revoke_all(ctx, grant, memo).await?,
        }),
    };
    if let Some(done) = done {
        return Ok((done, None));
    }
    ctx.metrics.issued(plan.renewal);
    tracing::info!(
        grant = %grant.name_any(), namespace = grant.namespace().as_deref().unwrap_or(""),
        secret = name, renewal = plan.renewal, fingerprint = %issued.presigned.fingerprint(),
        expires_at = %format_time(issued.expires_at), "issued presigned URL"
    );
    let done = Done::Issued {
        secret_name: name.to_owned(),
        state: issued.state(),
        renewal: plan.renewal,
    };
    Ok((done, None))
}

async fn sign(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    now: SystemTime,
) -> Result<Issued, Failure> {
    let credentials = ctx.credentials.get().await.map_err(Failure::Credentials)?;
    let times = decide::times(
        now,
        &plan.valid,
        credentials.expiry(),
        ctx.settings.propagation_budget,
        rand::random::<f64>(),
    )
    .ok_or_else(|| {
        Failure::Credentials(CredentialsError(
            "the credentials expire too soon to sign a URL".into(),
        ))
    })?;
    if let Some(why) = no_gain(
        plan,
        now + times.lifetime,
        ctx.credentials.refresh_failure(),
    ) {
        return Err(Failure::Credentials(CredentialsError(why)));
    }
    let presigned = presign(ctx, grant, memo, plan, &credentials, now, times.lifetime).await?;
    ctx.metrics.signed(Signing::Ok);
    Ok(Issued {
        presigned,
        issued_at: now,
        expires_at: now + times.lifetime,
        refresh_at: times.refresh_at,
        spec_hash: plan.spec_hash.clone(),
        renew_request: plan.renew_request.clone(),
        replaces: plan.current.as_ref().map(|s| s.fingerprint.clone()),
    })
}

/// Signs what the grant's method asks for: a URL, a POST form, or the part
/// URLs of a multipart upload (created, or found, first).
async fn presign(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    credentials: &Credentials,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Signed, Failure> {
    let (presigner, target, valid) = (&ctx.presigner, &plan.target, &plan.valid);
    if let Some((parts, part_size)) = valid.multipart {
        let client = presigner.s3_client(target, credentials.clone());
        let upload_id = multipart::ensure_upload(ctx, grant, memo, plan, &client)
            .await
            .map_err(Failure::Multipart)?;
        let input = MultipartInput {
            bucket: &valid.bucket,
            key: &valid.key,
            upload_id: &upload_id,
            parts,
            part_size,
            signed_at: now,
            expires_in: lifetime,
        };
        let signed = presigner
            .presign_multipart(target, credentials, &input)
            .await;
        return signed.map(Signed::Multipart).map_err(Failure::Signing);
    }
    if valid.method == Method::Post {
        let input = valid.post_input(now, lifetime);
        let post = presigner.presign_post(target, credentials, &input).await;
        return post.map(Signed::Post).map_err(Failure::Signing);
    }
    let input = valid.sign_input(now, lifetime);
    let url = presigner.presign(target, credentials, &input).await;
    url.map(Signed::Url).map_err(Failure::Signing)
}

/// Why a renewal would be pointless: the credentials could not be refreshed
/// and a URL signed with them would end no later than the current one (both
/// capped at the session's end). Re-signing then only churns writes right
/// before every such URL expires at once; reporting it now, while the URL
/// still works, leaves time to mark the grants not Ready before it ends.
fn no_gain(plan: &SignPlan, new_expiry: SystemTime, failure: Option<String>) -> Option<String> {
    let current = plan.current.as_ref().filter(|_| plan.renewal)?;
    if new_expiry > current.expires_at {
        return None;
    }
    failure.map(|why| {
        format!("the AWS credentials could not be refreshed ({why}), and a URL signed now would end no later than the current one")
    })
}

/// Reports a failed signing. The current URL stays only for a renewal that
/// can still use it; otherwise the Secret goes.
async fn fail(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    now: SystemTime,
    failure: Failure,
) -> Result<Applied> {
    let kept = plan.keeps_current_on_failure(now);
    if kept.is_none() {
        remove(ctx, grant, memo, &plan.valid.secret_name).await?;
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
        Failure::Multipart(e) => (
            Reason::SigningFailed,
            format!("multipart upload: {e}"),
            Error::Multipart(e),
            Signing::PresignFailed,
        ),
    };
    ctx.metrics.signed(metric);
    let kept = kept.map(|state| (plan.valid.secret_name.clone(), state.clone()));
    let done = Done::Failed {
        reason,
        detail,
        kept,
    };
    Ok((done, Some(error)))
}

/// How a Secret write ended, once the server was asked about a refusal.
#[derive(Debug)]
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
/// cache may be behind: the name may hold somebody else's Secret, one of
/// ours written a moment ago, or nothing any more. Where the server's view
/// differs from the cache's, the write is tried once more on the server's;
/// where they agree, the Secret itself was refused.
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
    let actual = match secrets::server_slot(ctx, grant, &namespace, name).await? {
        Slot::Foreign => return Ok(WriteEnd::Conflict),
        Slot::Ours(existing) => {
            let state = existing.state.clone();
            if existing.uid() != plan.ours
                && let Some(state) = state.filter(|s| decide::is_current(now, s, plan))
            {
                return Ok(WriteEnd::Current(state));
            }
            existing.uid()
        }
        Slot::Free => None,
    };
    if actual == plan.ours {
        return Ok(WriteEnd::Refused(refused));
    }
    Ok(
        match secrets::write(ctx, secret, actual.as_deref()).await? {
            Written::Done => WriteEnd::Written,
            Written::Refused(reason) => WriteEnd::Refused(reason),
        },
    )
}

/// Removes the grant's Secret by this name, if it is the grant's own. The
/// Secret the record remembers writing is forgotten first: the removal
/// looks it up afresh (the cache, else the server).
async fn remove(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    name: &str,
) -> Result<bool> {
    memo.secret = None;
    let namespace = grant.namespace().unwrap_or_default();
    secrets::remove(ctx, grant, &namespace, name).await
}

/// Removes a Secret the grant wrote under a name it no longer uses.
async fn remove_stale(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    stale: Option<&str>,
) -> Result<bool> {
    let Some(name) = stale else { return Ok(false) };
    remove(ctx, grant, memo, name).await
}

/// Removes every Secret this grant owns: the one its spec names and the one
/// its status names. Returns whether anything was removed.
pub async fn revoke_all(ctx: &Context, grant: &UploadGrant, memo: &mut GrantMemo) -> Result<bool> {
    let mut any = false;
    for name in secrets::owned_names(grant) {
        any |= remove(ctx, grant, memo, &name).await?;
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    //! How a refused write is looked into, against a mocked API server.
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::controller::secrets::tests::{context, one_apply};
    use crate::fixtures::{grant, secret, sign_plan};

    fn plan(ours: Option<&str>) -> SignPlan {
        SignPlan {
            renewal: true,
            ours: ours.map(str::to_owned),
            ..sign_plan()
        }
    }

    fn status(code: u16, message: &str) -> serde_json::Value {
        let reason = if code == 404 { "NotFound" } else { "" };
        serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "code": code, "reason": reason, "message": message})
    }

    /// The server's answer to the look-up after a refusal: no such Secret.
    async fn answer_get_not_found(
        handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (req, send) = handle.next_request().await.expect("a GET");
        assert_eq!(req.method(), http::Method::GET);
        let missing = serde_json::to_vec(&status(404, "not found")).expect("json");
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(missing))
                .expect("response"),
        );
    }

    #[tokio::test]
    async fn a_secret_deleted_behind_the_cache_is_written_anew_not_reported_invalid() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(kube::Client::new(service, "ns"));
        let server = tokio::spawn(async move {
            let gone = status(
                409,
                "uid mismatch: the provided object specified uid x, and no existing object was found",
            );
            let (_, body) = one_apply(&mut handle, 409, gone).await;
            assert_eq!(body["metadata"]["uid"], "cached-uid");
            answer_get_not_found(&mut handle).await;
            let ok = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "g"}});
            let (query, body) = one_apply(&mut handle, 200, ok).await;
            assert!(body["metadata"].get("uid").is_none(), "a new Secret");
            assert!(!query.contains("force"), "{query}");
        });
        let end = write(
            &ctx,
            &grant(serde_json::json!({})),
            &plan(Some("cached-uid")),
            &secret(),
            SystemTime::now(),
        )
        .await
        .expect("an answer");
        assert!(matches!(end, WriteEnd::Written), "{end:?}");
        server.await.expect("mock server");
    }

    #[tokio::test]
    async fn a_refusal_the_server_confirms_is_reported_with_its_reason() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(kube::Client::new(service, "ns"));
        let server = tokio::spawn(async move {
            let denied = status(
                403,
                "secrets \"g\" is forbidden: ValidatingAdmissionPolicy 'p' denied request",
            );
            one_apply(&mut handle, 403, denied).await;
            answer_get_not_found(&mut handle).await;
            assert!(handle.next_request().await.is_none(), "no second write");
        });
        let end = write(
            &ctx,
            &grant(serde_json::json!({})),
            &plan(None),
            &secret(),
            SystemTime::now(),
        )
        .await
        .expect("an answer");
        match end {
            WriteEnd::Refused(reason) => assert!(reason.contains("ValidatingAdmissionPolicy")),
            other => panic!("refused, not {other:?}"),
        }
        drop(ctx);
        server.await.expect("mock server");
    }

    #[test]
    fn a_renewal_that_cannot_outlive_the_current_url_reports_a_failed_refresh() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + s);
        let mut renewal = plan(Some("uid"));
        renewal.current = Some(IssuedState {
            spec_hash: "h".into(),
            issued_at: at(0),
            expires_at: at(600),
            refresh_at: Some(at(400)),
            fingerprint: "f".into(),
            renew_request: None,
            replaces: None,
        });
        let refused = Some("connection refused".to_owned());
        // Capped at the same session end: nothing gained, and STS failed.
        let why = no_gain(&renewal, at(600), refused.clone()).expect("reported");
        assert!(why.contains("connection refused"), "{why}");
        // STS failing, but the new URL still ends later: renew.
        assert_eq!(no_gain(&renewal, at(601), refused.clone()), None);
        // Nothing gained but no failure (a refresh under way): renew anyway.
        assert_eq!(no_gain(&renewal, at(600), None), None);
        // A first URL or a replacement is never held back.
        renewal.renewal = false;
        assert_eq!(no_gain(&renewal, at(500), refused), None);
    }
}
