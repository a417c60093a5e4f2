//! The store as its root sees it: multipart uploads started, listed and
//! left open by somebody other than the operator.

use std::time::SystemTime;

use aws_sdk_s3::types::MultipartUpload;

use super::{TestContext, TestResult};

/// A client of the store with its root keys.
pub fn root_s3(ctx: &TestContext) -> aws_sdk_s3::Client {
    super::s3_client(ctx.env, ctx.env.root_credentials())
}

/// The open uploads of exactly `key`, as the store lists them.
async fn listed(ctx: &TestContext, key: &str) -> TestResult<Vec<MultipartUpload>> {
    let out = root_s3(ctx)
        .list_multipart_uploads()
        .bucket(ctx.env.bucket())
        .prefix(key)
        .send()
        .await?;
    let all = out.uploads.unwrap_or_default();
    Ok(all.into_iter().filter(|u| u.key() == Some(key)).collect())
}

/// The ids of the open uploads of exactly `key`.
pub async fn open_uploads(ctx: &TestContext, key: &str) -> TestResult<Vec<String>> {
    let listed = listed(ctx, key).await?;
    Ok(listed.into_iter().filter_map(|u| u.upload_id).collect())
}

/// Starts an upload of `key` as the store's root would; its id and when
/// the store says it started.
pub async fn root_upload(ctx: &TestContext, key: &str) -> TestResult<(String, SystemTime)> {
    let id = root_s3(ctx)
        .create_multipart_upload()
        .bucket(ctx.env.bucket())
        .key(key)
        .send()
        .await?
        .upload_id
        .ok_or("no upload id")?;
    let initiated = listed(ctx, key)
        .await?
        .into_iter()
        .find(|u| u.upload_id() == Some(id.as_str()))
        .and_then(|u| u.initiated)
        .ok_or("the store does not list the upload's start")?;
    Ok((id, SystemTime::try_from(initiated)?))
}

/// Aborts an upload of `key` as the store's root.
pub async fn root_abort(ctx: &TestContext, key: &str, id: &str) -> TestResult {
    root_s3(ctx)
        .abort_multipart_upload()
        .bucket(ctx.env.bucket())
        .key(key)
        .upload_id(id)
        .send()
        .await?;
    Ok(())
}
