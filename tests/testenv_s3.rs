//! Proof that the local S3 store checks what AWS checks: a presigned URL
//! works byte for byte, and a tampered or expired one is refused.

mod support;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use support::{TestEnv, TestResult};

#[tokio::test]
async fn presigned_put_uploads_and_get_reads_back_byte_for_byte() -> TestResult {
    let env = TestEnv::get();
    let s3 = support::s3_client(env, env.root_credentials());
    let key = format!("proof/{}/data.bin", support::random_suffix());
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    let put = presign_put(&s3, env, &key, Duration::from_secs(300)).await?;
    let response = support::send(&put, body.clone()).await?;
    assert_eq!(
        response.status(),
        200,
        "upload failed: {}",
        response.text().await?
    );

    let get = s3
        .get_object()
        .bucket(env.bucket())
        .key(&key)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300))?)
        .await?;
    let response = support::send(&get, Vec::new()).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await?.as_ref(), body.as_slice());
    Ok(())
}

#[tokio::test]
async fn presigned_url_with_one_signature_character_changed_is_refused() -> TestResult {
    let env = TestEnv::get();
    let s3 = support::s3_client(env, env.root_credentials());
    let put = presign_put(&s3, env, "proof/tampered.txt", Duration::from_secs(300)).await?;

    let url = put.uri().to_owned();
    let at = url.find("X-Amz-Signature=").ok_or("no signature in URL")? + "X-Amz-Signature=".len();
    let mut tampered = url.clone().into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered)?;
    assert_ne!(tampered, url);

    let response = support::http()
        .put(&tampered)
        .headers(support::header_map(&put)?)
        .body("x")
        .send()
        .await?;
    assert_eq!(response.status(), 403);

    // The untampered URL works, so the 403 above is about the signature.
    let response = support::send(&put, b"x".to_vec()).await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn presigned_url_past_its_expiry_is_refused() -> TestResult {
    let env = TestEnv::get();
    let s3 = support::s3_client(env, env.root_credentials());
    // Signed ten minutes ago for one minute: expired without waiting.
    let config = PresigningConfig::builder()
        .start_time(SystemTime::now() - Duration::from_secs(600))
        .expires_in(Duration::from_secs(60))
        .build()?;
    let put = s3
        .put_object()
        .bucket(env.bucket())
        .key("proof/expired.txt")
        .presigned(config)
        .await?;
    let response = support::send(&put, b"late".to_vec()).await?;
    assert_eq!(response.status(), 403);
    Ok(())
}

async fn presign_put(
    s3: &aws_sdk_s3::Client,
    env: &TestEnv,
    key: &str,
    ttl: Duration,
) -> TestResult<PresignedRequest> {
    Ok(s3
        .put_object()
        .bucket(env.bucket())
        .key(key)
        .presigned(PresigningConfig::expires_in(ttl)?)
        .await?)
}
