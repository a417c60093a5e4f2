//! The S3 calls of multipart grants, made with the operator's own
//! credentials: create the upload, see whether it is still open or was
//! assembled, and abort it when the grant is revoked. What to do when is
//! decided in `decide`; this module only talks to S3.

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::ServerSideEncryption as S3Sse;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::build::Upload;
use super::decide::{self, SignPlan};
use super::memo::GrantMemo;
use super::secrets::{self, Slot};
use super::validate::{ValidGrant, secret_name};
use crate::api::condition::ready_condition;
use crate::api::{Reason, S3Target, SseType, UploadGrant};
use crate::signing::CredentialsError;

/// How often, by default, an open upload is looked at to notice that the
/// client completed it: S3 sends no notification here.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// Aborts tried before giving up on an upload that keeps gaining parts (a
/// part in flight during an abort can land after it).
const ABORT_ROUNDS: usize = 3;

/// What S3 said, by its error code and message: no URL or credential.
#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    #[error("S3: {0}")]
    S3(String),
    #[error("the upload still has parts after {ABORT_ROUNDS} aborts")]
    StillOpen,
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
}

type Result<T> = std::result::Result<T, MultipartError>;

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Open: parts may still be uploaded.
    Open,
    /// No such upload, and the object exists: the client completed it.
    Completed,
    /// No such upload and no object: aborted by someone else, or by a
    /// bucket lifecycle rule.
    Gone,
}

/// S3's error code and message, or what kept the request from an answer.
fn s3_error<E, R>(e: &SdkError<E, R>) -> MultipartError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    MultipartError::S3(match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("unknown error"),
            s.message().unwrap_or("no message")
        ),
        None => DisplayErrorContext(e).to_string(),
    })
}

fn no_such_upload<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .is_some_and(|s| s.code() == Some("NoSuchUpload"))
}

/// ListParts for at most one part: enough to tell whether the upload is
/// still open.
async fn list_one_part(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> std::result::Result<
    aws_sdk_s3::operation::list_parts::ListPartsOutput,
    SdkError<aws_sdk_s3::operation::list_parts::ListPartsError>,
> {
    client
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .max_parts(1)
        .send()
        .await
}

/// An S3 client for `target` with the operator's current credentials.
pub async fn client(ctx: &Context, target: &S3Target) -> Result<Client> {
    let credentials = ctx.credentials.get().await?;
    Ok(ctx.presigner.s3_client(target, credentials))
}

/// Creates the upload with what the grant signs for a single PUT: content
/// type, metadata and server-side encryption belong to the upload.
pub async fn create(client: &Client, valid: &ValidGrant) -> Result<String> {
    let mut req = client
        .create_multipart_upload()
        .bucket(&valid.bucket)
        .key(&valid.key)
        .set_content_type(valid.content_type.clone());
    for (name, value) in &valid.metadata {
        req = req.metadata(name, value);
    }
    if let Some(sse) = &valid.sse {
        req = req.server_side_encryption(match sse.type_ {
            SseType::Aes256 => S3Sse::Aes256,
            SseType::AwsKms => S3Sse::AwsKms,
        });
        req = req.set_ssekms_key_id(sse.kms_key_id.clone());
    }
    let out = req.send().await.map_err(|e| s3_error(&e))?;
    out.upload_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| MultipartError::S3("CreateMultipartUpload returned no upload id".into()))
}

/// Open uploads of exactly this key started at or after `since`, newest
/// first. After a crash between creating an upload and recording its id,
/// the grant's own upload is among them (see the README's crash window).
pub async fn open_since(
    client: &Client,
    bucket: &str,
    key: &str,
    since: SystemTime,
) -> Result<Vec<String>> {
    let out = client
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .map_err(|e| s3_error(&e))?;
    let mut found: Vec<(SystemTime, String)> = out
        .uploads
        .unwrap_or_default()
        .into_iter()
        .filter(|u| u.key.as_deref() == Some(key))
        .filter_map(|u| {
            let initiated = SystemTime::try_from(u.initiated?).ok()?;
            (initiated >= since).then_some((initiated, u.upload_id?))
        })
        .collect();
    found.sort_by_key(|u| std::cmp::Reverse(u.0));
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// Whether the upload is open, completed into the object, or gone.
pub async fn state(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<UploadState> {
    match list_one_part(client, bucket, key, upload_id).await {
        Ok(_) => return Ok(UploadState::Open),
        Err(e) if no_such_upload(&e) => {}
        Err(e) => return Err(s3_error(&e)),
    }
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(UploadState::Completed),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(UploadState::Gone),
        Err(e) => Err(s3_error(&e)),
    }
}

/// Aborts the upload, then checks with ListParts that nothing is left: a
/// part uploaded while the abort ran can land after it, and S3 asks for
/// another abort then. An upload that is already gone is fine.
pub async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
    for _ in 0..ABORT_ROUNDS {
        if let Err(e) = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            && !no_such_upload(&e)
        {
            return Err(s3_error(&e));
        }
        match list_one_part(client, bucket, key, upload_id).await {
            Err(e) if no_such_upload(&e) => return Ok(()),
            Err(e) => return Err(s3_error(&e)),
            // Still listed: a part landed meanwhile. Abort again.
            Ok(_) => continue,
        }
    }
    Err(MultipartError::StillOpen)
}

/// The uploads a grant may have left in S3: the one its Secret records
/// (where it is), and the one its status records (at the spec's object:
/// the status names no object).
fn recorded(grant: &UploadGrant, in_secret: Option<Upload>) -> Vec<Upload> {
    let mut uploads: Vec<Upload> = in_secret.into_iter().collect();
    if let Some(id) = grant.status.as_ref().and_then(|s| s.upload_id.clone())
        && !uploads.iter().any(|u| u.id == id)
    {
        uploads.push(Upload {
            id,
            bucket: grant.spec.bucket.clone(),
            key: grant.spec.key.clone(),
        });
    }
    uploads
}

/// The upload the grant's Secret records, as the cache (or this
/// operator's own last write) shows it.
pub fn secret_upload(ctx: &Context, grant: &UploadGrant, memo: &mut GrantMemo) -> Option<Upload> {
    let namespace = grant.namespace().unwrap_or_default();
    let name = secret_name(&grant.spec, &grant.name_any());
    match memo.slot(secrets::cached_slot(ctx, grant, &namespace, &name), &name) {
        Slot::Ours(s) => s.state.as_ref()?.upload.clone(),
        _ => None,
    }
}

/// The issuer's S3 target for a grant, from the cache.
fn target(ctx: &Context, grant: &UploadGrant) -> Option<S3Target> {
    let name = decide::issuer_name(grant, ctx.settings.default_issuer.as_deref())?;
    let issuer = ctx.issuers.get(&ObjectRef::new(name))?;
    Some(issuer.spec.s3.clone())
}

/// What became of a grant's uploads when it was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aborted {
    /// None was recorded or found.
    Nothing,
    /// This many were aborted (or were already gone).
    Uploads(usize),
    /// The issuer is gone, so there is no endpoint to reach: the bucket's
    /// lifecycle rule is the backstop.
    NoIssuer,
}

/// Aborts every upload of a revoked multipart grant: the recorded ones, or
/// (only when none is recorded: the crash window between creating an
/// upload and recording it) the open uploads of its key started since the
/// grant was created.
pub async fn abort_grant_uploads(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
) -> Result<Aborted> {
    let recorded = recorded(grant, secret_upload(ctx, grant, memo));
    if grant.spec.multipart.is_none() && recorded.is_empty() {
        return Ok(Aborted::Nothing);
    }
    let Some(target) = target(ctx, grant) else {
        return Ok(match recorded.is_empty() {
            true => Aborted::Nothing,
            false => Aborted::NoIssuer,
        });
    };
    let client = client(ctx, &target).await?;
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
    let reason = ready_condition(grant.status.as_ref()).and_then(|c| Reason::parse(&c.reason));
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
    let id = create(client, &plan.valid).await?;
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
) -> Option<UploadState> {
    grant.spec.multipart.as_ref()?;
    let interval = ctx.settings.multipart_check_interval;
    if grant.spec.suspend || completed(grant) || !memo.upload_check_due(interval) {
        return None;
    }
    let upload = recorded(grant, secret_upload(ctx, grant, memo))
        .into_iter()
        .next()?;
    let target = target(ctx, grant)?;
    memo.upload_checked = Some(Instant::now());
    let result = match client(ctx, &target).await {
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

#[cfg(test)]
mod tests {
    //! The S3 calls against a scripted loopback server: what is sent, and
    //! what each answer leads to.
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::signing::Presigner;

    const NO_SUCH_UPLOAD: (u16, &str) = (
        404,
        "<Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist.</Message></Error>",
    );
    const ONE_PART: (u16, &str) = (
        200,
        "<ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u1</UploadId><Part><PartNumber>1</PartNumber><ETag>\"e\"</ETag><Size>5</Size></Part></ListPartsResult>",
    );
    const ABORTED: (u16, &str) = (204, "");

    /// Serves `answers` in order, one per request, and records each
    /// request's method and query.
    async fn server(answers: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, answers) = (log.clone(), answers.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            stream.read_line(&mut header).await.unwrap_or(0);
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some(v) =
                                header.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        let _ = stream.read_exact(&mut body).await;
                        let request: Vec<&str> = line.split_whitespace().take(2).collect();
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(request.join(" "));
                        let next = answers.lock().unwrap_or_else(|p| p.into_inner()).next();
                        let (status, body) = next.unwrap_or((500, "no answer scripted"));
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream
                            .get_mut()
                            .write_all(response.as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn client(endpoint: String) -> Client {
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let target = S3Target {
            region: "eu-west-1".into(),
            endpoint: Some(endpoint),
            force_path_style: true,
        };
        let creds = aws_credential_types::Credentials::new("AKID", "secret", None, None, "t");
        Presigner::new(base).s3_client(&target, creds)
    }

    fn requests(seen: &Mutex<Vec<String>>) -> Vec<String> {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .map(|r| {
                let (method, target) = r.split_once(' ').unwrap_or_default();
                let op = if target.contains("x-id=AbortMultipartUpload") || method == "DELETE" {
                    "abort"
                } else {
                    "list-parts"
                };
                format!("{method} {op}")
            })
            .collect()
    }

    #[tokio::test]
    async fn a_part_that_lands_after_the_abort_is_aborted_again() {
        let (endpoint, seen) = server(vec![ABORTED, ONE_PART, ABORTED, NO_SUCH_UPLOAD]).await;
        abort(&client(endpoint), "b", "k", "u1")
            .await
            .expect("aborted");
        assert_eq!(
            requests(&seen),
            [
                "DELETE abort",
                "GET list-parts",
                "DELETE abort",
                "GET list-parts"
            ]
        );
    }

    #[tokio::test]
    async fn an_upload_already_gone_is_aborted_and_one_that_keeps_parts_is_reported() {
        let (endpoint, seen) = server(vec![NO_SUCH_UPLOAD, NO_SUCH_UPLOAD]).await;
        abort(&client(endpoint), "b", "k", "u1")
            .await
            .expect("gone is fine");
        assert_eq!(requests(&seen).len(), 2);
        let stubborn = [ABORTED, ONE_PART].repeat(ABORT_ROUNDS);
        let (endpoint, _) = server(stubborn).await;
        let err = abort(&client(endpoint), "b", "k", "u1")
            .await
            .expect_err("still open");
        assert!(matches!(err, MultipartError::StillOpen), "{err}");
    }

    #[tokio::test]
    async fn an_upload_is_open_completed_or_gone() {
        let (endpoint, _) = server(vec![ONE_PART]).await;
        let open = state(&client(endpoint), "b", "k", "u1").await;
        assert_eq!(open.expect("answer"), UploadState::Open);
        let (endpoint, _) = server(vec![NO_SUCH_UPLOAD, (200, "")]).await;
        let done = state(&client(endpoint), "b", "k", "u1").await;
        assert_eq!(done.expect("answer"), UploadState::Completed);
        let (endpoint, _) = server(vec![NO_SUCH_UPLOAD, (404, "")]).await;
        let gone = state(&client(endpoint), "b", "k", "u1").await;
        assert_eq!(gone.expect("answer"), UploadState::Gone);
        let denied = (
            403,
            "<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
        );
        let (endpoint, _) = server(vec![denied]).await;
        let err = state(&client(endpoint), "b", "k", "u1")
            .await
            .expect_err("denied");
        assert_eq!(err.to_string(), "S3: AccessDenied: no");
    }
}
