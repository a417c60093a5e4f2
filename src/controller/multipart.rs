//! A multipart grant's uploads: which the grant recorded, when one is due a
//! look, and which to abort when it is revoked, with the operator's own
//! credentials. The S3 calls themselves are `crate::uploads`; what to do
//! when is decided in `decide`.

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use kube::ResourceExt;

use super::build::Upload;
use super::context::Context;
use super::decide::{self, SignPlan};
use super::memo::GrantMemo;
use super::report::Aborted;
use crate::api::condition::ready_reason;
use crate::api::{Reason, S3Target, UploadGrant};
use crate::uploads::{self, MultipartError, NewUpload, UploadState, abort, open_since, state};

type Result<T> = std::result::Result<T, MultipartError>;

/// How often, by default, an open upload is looked at to notice that the
/// client completed it: S3 sends no notification here.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// An S3 client for `target` with the operator's current credentials.
pub async fn client(ctx: &Context, target: &S3Target) -> Result<Client> {
    let credentials = ctx.credentials.get().await?;
    Ok(ctx.presigner.s3_client(target, credentials))
}

/// The uploads a grant may have left in S3: the one its Secret records
/// (where it is), and the one its status records (at the spec's object:
/// the status names no object).
fn recorded(grant: &UploadGrant, in_secret: Option<Upload>) -> Vec<Upload> {
    let mut uploads: Vec<Upload> = in_secret.into_iter().collect();
    if let Some(upload) = Upload::from_status(grant)
        && !uploads.iter().any(|u| u.id == upload.id)
    {
        uploads.push(upload);
    }
    uploads
}

/// Aborts every upload of a revoked multipart grant: the recorded ones (in
/// its Secret, `in_secret`, and its status; `target` is None when the
/// issuer is gone), or
/// (only when none is recorded: the crash window between creating an
/// upload and recording it) the open uploads of its key started since the
/// grant was created.
pub async fn abort_grant_uploads(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    target: Option<&S3Target>,
    in_secret: Option<Upload>,
) -> Result<Aborted> {
    let recorded = recorded(grant, in_secret);
    if grant.spec.multipart.is_none() && recorded.is_empty() {
        return Ok(Aborted::Nothing);
    }
    let Some(target) = target else {
        return Ok(match recorded.is_empty() {
            true => Aborted::Nothing,
            false => Aborted::NoIssuer,
        });
    };
    let client = client(ctx, target).await?;
    let (bucket, key) = (&grant.spec.bucket, &grant.spec.key);
    let uploads = match (recorded.is_empty(), created_at(grant)) {
        (true, Some(since)) if may_hold_unrecorded(grant) => {
            open_since(&client, bucket, key, since)
                .await?
                .into_iter()
                .map(|id| Upload {
                    id,
                    bucket: bucket.clone(),
                    key: key.clone(),
                })
                .collect()
        }
        _ => recorded,
    };
    for u in &uploads {
        abort(&client, &u.bucket, &u.key, &u.id).await?;
    }
    memo.upload_checked = None;
    Ok(match uploads.len() {
        0 => Aborted::Nothing,
        n => Aborted::Uploads(n),
    })
}

/// Whether an upload may exist that the grant has not recorded: only after
/// a pass that may have created one and not got as far as recording it
/// (no status yet, Issued, or a failure after the create). A grant already
/// revoked for another reason recorded nothing, so its key is not listed
/// again on every pass.
fn may_hold_unrecorded(grant: &UploadGrant) -> bool {
    let reason = ready_reason(grant.status.as_ref());
    matches!(
        reason,
        None | Some(Reason::Issued | Reason::SigningFailed | Reason::CredentialsUnavailable)
    )
}

/// Whether the grant's status says its upload was completed, for this
/// generation: there is nothing left to look at or abort.
pub fn completed(grant: &UploadGrant) -> bool {
    decide::Settled::from_status(grant).is_some_and(|s| s.reason == Reason::Completed)
}

/// When the grant was created, as the apiserver says.
fn created_at(grant: &UploadGrant) -> Option<SystemTime> {
    grant
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
}

/// The upload a multipart grant signs for: the plan's recorded one, else
/// one left open by a crash before it was recorded (see `open_since`; any
/// others of them are aborted), else a new one. An upload recorded for an
/// older spec is aborted first.
pub async fn ensure_upload(
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    client: &Client,
) -> Result<String> {
    if let Some(old) = &plan.abandoned {
        abort(client, &old.bucket, &old.key, &old.id).await?;
    }
    let (bucket, key) = (&plan.valid.bucket, &plan.valid.key);
    if let Some(id) = &plan.upload_id {
        return Ok(id.clone());
    }
    if let Some(since) = created_at(grant) {
        let mut open = open_since(client, bucket, key, since)
            .await?
            .into_iter()
            .filter(|id| plan.abandoned.as_ref().is_none_or(|old| old.id != *id));
        if let Some(newest) = open.next() {
            for older in open {
                abort(client, bucket, key, &older).await?;
            }
            tracing::info!(grant = %grant.name_any(), upload_id = %newest, "adopted an upload created before a restart");
            return Ok(newest);
        }
    }
    let valid = &plan.valid;
    let new = NewUpload {
        bucket: &valid.bucket,
        key: &valid.key,
        content_type: valid.content_type.as_deref(),
        metadata: &valid.metadata,
        sse: valid.sse.as_ref(),
    };
    let id = uploads::create(client, &new).await?;
    memo.upload_checked = Some(Instant::now());
    tracing::info!(grant = %grant.name_any(), upload_id = %id, "created multipart upload");
    Ok(id)
}

/// Looks at a multipart grant's recorded upload when a look is due (at
/// most once per `--multipart-check-interval`), to notice that it was
/// completed or aborted. None when not due, not multipart, nothing is
/// recorded, or S3 did not answer (logged; the next look will tell).
pub async fn probe(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    target: Option<&S3Target>,
    in_secret: Option<Upload>,
) -> Option<UploadState> {
    grant.spec.multipart.as_ref()?;
    let interval = ctx.settings.multipart_check_interval;
    if grant.spec.suspend || completed(grant) || !memo.upload_check_due(interval) {
        return None;
    }
    let upload = recorded(grant, in_secret).into_iter().next()?;
    let target = target?;
    memo.upload_checked = Some(Instant::now());
    let result = match client(ctx, target).await {
        Ok(client) => state(&client, &upload.bucket, &upload.key, &upload.id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(grant = %grant.name_any(), namespace = grant.namespace().as_deref().unwrap_or(""), error = %e, "could not look at the multipart upload");
            None
        }
    }
}
