//! A multipart grant's upload, with the operator's own credentials: started
//! and recorded in the grant's status, adopted after a crash, looked at,
//! aborted. Only the upload the status records (`recorded`) is ever acted
//! on, and only where the issuer lets the grant reach. The S3 calls
//! themselves are `crate::uploads`; what to do when is decided in `decide`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::context::Context;
use super::decide::{self, SignPlan, UploadPlan};
use super::memo::GrantMemo;
use super::recorded::Recorded;
use super::report::Aborted;
use crate::api::secret::MANAGER;
use crate::api::{ClusterGrantIssuer, Reason, S3Target, UploadGrant};
use crate::fence::Fenced;
use crate::signing::S3_OPERATION_TIMEOUT;
use crate::uploads::{self, MultipartError, NewUpload, UploadState, abort, open_between, state};

type Result<T> = std::result::Result<T, MultipartError>;

/// How often, by default, an open upload is looked at to notice that the
/// client completed it: S3 sends no notification here.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// An S3 client for `target` with the operator's current credentials.
pub async fn client(ctx: &Context, target: &S3Target) -> Result<Client> {
    let credentials = ctx.credentials.get().await?;
    Ok(ctx.presigner.s3_client(target, credentials))
}

/// Aborts the upload a revoked grant recorded: its id or, when the
/// operator stopped between asking S3 and recording the answer, the
/// uploads S3 started at its key in the record's window. Nothing else is
/// ever aborted, and nothing where the issuer does not let the grant reach.
/// With `forget` (a grant that stays), the record is then cleared; it
/// stays while the upload could not be reached, and for a grant being
/// deleted.
pub async fn abort_grant_uploads(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    (issuer, labels): (Option<&ClusterGrantIssuer>, &BTreeMap<String, String>),
    recorded: Option<&Recorded>,
    forget: bool,
) -> Result<Aborted> {
    let Some(record) = recorded else {
        return Ok(Aborted::Nothing);
    };
    let Some(issuer) = issuer else {
        return Ok(Aborted::NoIssuer);
    };
    if !record.reachable(&issuer.spec, grant, labels) {
        return Ok(Aborted::NotAllowed);
    }
    let client = client(ctx, &issuer.spec.s3).await?;
    let aborted = abort_recorded(ctx, &client, record).await?;
    memo.upload_checked = None;
    if forget {
        write_record(ctx, grant, memo, None).await?;
    }
    Ok(match aborted {
        0 => Aborted::Nothing,
        n => Aborted::Uploads(n),
    })
}

/// Aborts a recorded upload (or those of its window); how many.
async fn abort_recorded(ctx: &Context, client: &Client, record: &Recorded) -> Result<usize> {
    let ids = match (&record.id, record.window(S3_OPERATION_TIMEOUT)) {
        (Some(id), _) => vec![id.clone()],
        (None, Some((from, until))) => {
            open_between(client, &record.bucket, &record.key, from, until).await?
        }
        (None, None) => Vec::new(),
    };
    for id in &ids {
        leading(ctx)?;
        abort(client, &record.bucket, &record.key, id).await?;
    }
    Ok(ids.len())
}

/// S3 calls that change an upload are fenced like the apiserver writes: a
/// replica that cannot show it still leads makes none.
fn leading(ctx: &Context) -> Result<()> {
    match ctx.fence.allows_writes() {
        true => Ok(()),
        false => Err(Fenced.into()),
    }
}

/// Whether the grant's status says its upload was completed, for this
/// generation: there is nothing left to look at or abort.
pub fn completed(grant: &UploadGrant) -> bool {
    decide::Settled::from_status(grant).is_some_and(|s| s.reason == Reason::Completed)
}

/// The upload a multipart grant signs for, as the plan says: the recorded
/// one; the one S3 started for a record without an id; else a new one,
/// after aborting one recorded for an older spec.
pub async fn ensure_upload(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    client: &Client,
) -> Result<String> {
    match &plan.upload {
        UploadPlan::Recorded(id) => return Ok(id.clone()),
        UploadPlan::Find(record) => {
            if let Some(id) = adopt(ctx, grant, memo, client, record).await? {
                return Ok(id);
            }
        }
        UploadPlan::New {
            abandoned: Some(old),
        } => {
            abort_recorded(ctx, client, old).await?;
        }
        UploadPlan::New { abandoned: None } | UploadPlan::NotMultipart => {}
    }
    start(ctx, grant, memo, plan, client).await
}

/// The upload S3 started for a record that has no id yet (the newest in
/// the record's window; any others there are aborted), recorded now.
async fn adopt(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    client: &Client,
    record: &Recorded,
) -> Result<Option<String>> {
    let Some((from, until)) = record.window(S3_OPERATION_TIMEOUT) else {
        return Ok(None);
    };
    let (bucket, key) = (&record.bucket, &record.key);
    let mut open = open_between(client, bucket, key, from, until)
        .await?
        .into_iter();
    let Some(newest) = open.next() else {
        return Ok(None);
    };
    for older in open {
        leading(ctx)?;
        abort(client, bucket, key, &older).await?;
    }
    write_record(
        ctx,
        grant,
        memo,
        Some(record.clone().with_id(newest.clone())),
    )
    .await?;
    tracing::info!(grant = %grant.name_any(), upload_id = %newest, "adopted the upload a restart left unrecorded");
    Ok(Some(newest))
}

/// Starts a new upload: where and when is recorded in the grant's status
/// first, then S3 is asked, then its answer is recorded.
async fn start(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    plan: &SignPlan,
    client: &Client,
) -> Result<String> {
    let valid = &plan.valid;
    let now = SystemTime::now();
    let record = Recorded::requested(&valid.bucket, &valid.key, &plan.spec_hash, now);
    write_record(ctx, grant, memo, Some(record.clone())).await?;
    let new = NewUpload {
        bucket: &valid.bucket,
        key: &valid.key,
        content_type: valid.content_type.as_deref(),
        metadata: &valid.metadata,
        sse: valid.sse.as_ref(),
    };
    leading(ctx)?;
    let id = uploads::create(client, &new).await?;
    write_record(ctx, grant, memo, Some(record.with_id(id.clone()))).await?;
    memo.upload_checked = Some(Instant::now());
    tracing::info!(grant = %grant.name_any(), upload_id = %id, "created multipart upload");
    Ok(id)
}

/// Writes the upload record into the grant's status (None clears it): only
/// `upload` and `uploadId`, by a merge patch, which removes them also while
/// the pass's own status write (server-side apply) shares them.
async fn write_record(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    record: Option<Recorded>,
) -> Result<()> {
    let (upload_id, upload) = record.as_ref().map(Recorded::to_status).unwrap_or_default();
    let patch = serde_json::json!({"status": {"uploadId": upload_id, "upload": upload}});
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let namespace = grant.namespace().unwrap_or_default();
    let written = Api::<UploadGrant>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(&grant.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| MultipartError::Record(e.to_string()))?;
    // An older CRD prunes the record: every pass would start an upload.
    let kept = written.status.and_then(|s| s.upload);
    if upload.is_some() && kept.is_none() {
        return Err(MultipartError::Record(
            "the cluster's UploadGrant CRD has no status.upload (it is older than this operator): apply this version's CRDs".into(),
        ));
    }
    memo.remember_record(record);
    Ok(())
}

/// Looks at a multipart grant's recorded upload when a look is due (at
/// most once per `--multipart-check-interval`), to notice that it was
/// completed or aborted. None when not due, not multipart, nothing is
/// recorded, or S3 did not answer (logged; the next look will tell).
pub async fn probe(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    issuer: Option<&ClusterGrantIssuer>,
    labels: &BTreeMap<String, String>,
    recorded: Option<&Recorded>,
) -> Option<UploadState> {
    grant.spec.multipart.as_ref()?;
    let interval = ctx.settings.multipart_check_interval;
    if grant.spec.suspend || completed(grant) || !memo.upload_check_due(interval) {
        return None;
    }
    let record = recorded?;
    let id = record.id.as_deref()?;
    let issuer = issuer.filter(|i| record.reachable(&i.spec, grant, labels))?;
    memo.upload_checked = Some(Instant::now());
    let result = match client(ctx, &issuer.spec.s3).await {
        Ok(client) => state(&client, &record.bucket, &record.key, id).await,
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
