//! The S3 calls of multipart uploads, made with the operator's own
//! credentials: create an upload, find the open ones of a key, see whether
//! one is still open or was assembled, and abort it. Nothing here knows of
//! grants or the cluster; when to call what is the controller's business
//! (`controller::multipart`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::ServerSideEncryption as S3Sse;

use crate::api::{ServerSideEncryption, SseType};
use crate::signing::CredentialsError;

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
    /// The upload could not be recorded in the grant's status, so it was
    /// not created (or not adopted).
    #[error("recording the upload in the grant's status failed: {0}")]
    Record(String),
    #[error(transparent)]
    Fenced(#[from] crate::fence::Fenced),
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

/// What an upload is created with: what the grant signs for a single PUT
/// (content type, metadata and server-side encryption belong to the upload).
#[derive(Debug, Clone, Copy)]
pub struct NewUpload<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub content_type: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
    pub sse: Option<&'a ServerSideEncryption>,
}

/// Creates the upload with what the grant signs for a single PUT: content
/// type, metadata and server-side encryption belong to the upload.
pub async fn create(client: &Client, new: &NewUpload<'_>) -> Result<String> {
    let mut req = client
        .create_multipart_upload()
        .bucket(new.bucket)
        .key(new.key)
        .set_content_type(new.content_type.map(str::to_owned));
    for (name, value) in new.metadata {
        req = req.metadata(name, value);
    }
    if let Some(sse) = new.sse {
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

/// Open uploads of exactly this key started between `from` and `until`,
/// newest first. After a crash between asking S3 for an upload and
/// recording its id, the grant's own upload is the one in the window its
/// record gives (see the crash window in docs/src/consuming.md).
pub async fn open_between(
    client: &Client,
    bucket: &str,
    key: &str,
    from: SystemTime,
    until: SystemTime,
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
            (from..=until)
                .contains(&initiated)
                .then_some((initiated, u.upload_id?))
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

#[cfg(test)]
mod tests {
    //! The S3 calls against a scripted loopback server: what is sent, and
    //! what each answer leads to.
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::api::S3Target;
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
