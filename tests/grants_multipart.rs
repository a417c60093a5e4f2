//! Multipart grants against the real store, with the operator on STS
//! session credentials: the Secret's part URLs upload a file in parts and
//! its completeUrl assembles it; a renewal keeps the upload and the parts
//! already sent; deleting the grant aborts the upload; a restart keeps the
//! upload and re-signs nothing; the upload a crash left unrecorded is
//! adopted rather than doubled, and no other; an issuer without
//! `multipart: true` denies.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::api::{DeleteParams, Patch, PatchParams};
use support::grants::{
    Scenario, create_grant, create_issuer, fingerprint, secret_data, spec, wait_ready, wait_reason,
    wait_secret_gone,
};
use support::operator::{Operator, OperatorOptions};
use support::rollout::{request_renewal, settle, wait_answered};
use support::uploads::{open_uploads, root_abort, root_s3, root_upload};
use support::{TestContext, TestResult, eventually};
use upload_grant_operator::api::UploadGrant;
use upload_grant_operator::controller::build::spec_hash;

const MIB: usize = 1 << 20;

/// The operator looks at open uploads every 2 seconds here, so that a
/// completed one is noticed within a test's time.
fn options() -> OperatorOptions {
    OperatorOptions {
        env: vec![("UPLOAD_GRANT_MULTIPART_CHECK_INTERVAL".into(), "2s".into())],
        ..OperatorOptions::default()
    }
}

async fn start(prefix: &str) -> TestResult<Scenario> {
    Scenario::start_in(TestContext::new(prefix).await?, options()).await
}

/// An issuer that allows multipart PUTs under the namespace's prefix.
async fn multipart_issuer(ctx: &TestContext) -> TestResult<String> {
    create_issuer(
        ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}/"],
            "methods": ["PUT"], "multipart": true, "maxContentLength": "30Mi"}]),
    )
    .await
}

/// A file of `len` bytes that differ from part to part.
fn file(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 4099) % 251) as u8)
        .collect()
}

/// The `parts` key of a multipart Secret.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parts {
    count: u32,
    part_size: u64,
    url: String,
    signatures: Vec<String>,
}

impl Parts {
    fn of(data: &BTreeMap<String, String>) -> TestResult<Parts> {
        Ok(serde_json::from_str(&data["parts"])?)
    }

    /// Part `n`'s URL (1-based), as docs/src/consuming.md tells consumers to build it.
    fn url(&self, n: u32) -> String {
        self.url
            .replace("{partNumber}", &n.to_string())
            .replace("{signature}", &self.signatures[n as usize - 1])
    }
}

/// PUTs part `n`; its ETag.
async fn upload_part(parts: &Parts, n: u32, body: &[u8]) -> TestResult<String> {
    let response = support::http()
        .put(parts.url(n))
        .body(body.to_vec())
        .send()
        .await?;
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await?;
    match etag {
        Some(etag) if status.is_success() => Ok(etag),
        _ => Err(format!("part {n}: {status}: {body}").into()),
    }
}

/// POSTs the list of parts to completeUrl; S3 can answer 200 with an
/// `<Error>` in the body, so the body is checked too.
async fn complete(data: &BTreeMap<String, String>, etags: &[String]) -> TestResult<String> {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (i, etag) in etags.iter().enumerate() {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
            i + 1
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    let response = support::http()
        .post(&data["completeUrl"])
        .body(xml)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() || body.contains("<Error>") {
        return Err(format!("complete: {status}: {body}").into());
    }
    Ok(body)
}

/// The part numbers the store holds for the upload.
async fn listed_parts(ctx: &TestContext, key: &str, upload_id: &str) -> TestResult<Vec<i32>> {
    let out = root_s3(ctx)
        .list_parts()
        .bucket(ctx.env.bucket())
        .key(key)
        .upload_id(upload_id)
        .send()
        .await?;
    Ok(out.parts().iter().filter_map(|p| p.part_number()).collect())
}

fn status_upload_id(grant: &UploadGrant) -> Option<String> {
    grant.status.as_ref()?.upload_id.clone()
}

fn grant_spec(ctx: &TestContext, issuer: &str, key: &str) -> serde_json::Value {
    spec(
        ctx,
        issuer,
        key,
        serde_json::json!({"multipart": {"parts": 3, "partSize": "5Mi"},
            "contentType": "application/x-test", "metadata": {"owner": "multipart-test"}}),
    )
}

#[tokio::test]
async fn three_parts_with_a_renewal_between_them_complete_into_the_file() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = start("mp-complete").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let key = format!("{}/big.bin", ctx.namespace);
    create_grant(&ctx, "big", grant_spec(&ctx, &issuer, "big.bin")).await?;
    let grant = wait_ready(&ctx, "big").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "big").await?;
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "abortUrl",
            "bucket",
            "completeUrl",
            "expiresAt",
            "key",
            "parts",
            "uploadId"
        ]
    );
    let upload_id = data["uploadId"].clone();
    assert_eq!(
        status_upload_id(&grant).as_deref(),
        Some(upload_id.as_str())
    );
    assert_eq!(open_uploads(&ctx, &key).await?, [upload_id.as_str()]);
    let parts = Parts::of(&data)?;
    assert_eq!((parts.count, parts.part_size), (3, 5 * MIB as u64));
    assert!(
        parts.url.contains("X-Amz-Security-Token="),
        "signed with the operator's STS session"
    );

    let body = file(2 * 5 * MIB + 1234);
    let chunks: Vec<&[u8]> = body.chunks(5 * MIB).collect();
    let mut etags = vec![upload_part(&parts, 1, chunks[0]).await?];

    // A renewal in the middle: new signatures, the same upload, and the
    // part already sent is still there.
    let before = fingerprint(&grant);
    request_renewal(&ctx, "big", "renew-1").await?;
    let renewed_fp = wait_answered(&ctx, "big", "renew-1").await?;
    assert_ne!(Some(renewed_fp), before);
    let renewed = secret_data(&ctx.client, &ctx.namespace, "big").await?;
    assert_eq!(renewed["uploadId"], upload_id, "renewal keeps the upload");
    let renewed_parts = Parts::of(&renewed)?;
    assert_ne!(renewed_parts.signatures[1], parts.signatures[1]);
    assert_eq!(listed_parts(&ctx, &key, &upload_id).await?, [1]);

    for (i, chunk) in chunks.iter().enumerate().skip(1) {
        etags.push(upload_part(&renewed_parts, i as u32 + 1, chunk).await?);
    }
    complete(&renewed, &etags).await?;

    let object = root_s3(&ctx)
        .get_object()
        .bucket(ctx.env.bucket())
        .key(&key)
        .send()
        .await?;
    assert_eq!(object.content_type(), Some("application/x-test"));
    assert_eq!(
        object
            .metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("multipart-test"),
        "the upload carries the grant's metadata"
    );
    let read = object.body.collect().await?.into_bytes();
    assert!(read.as_ref() == body.as_slice(), "the object is the file");

    // The operator notices the completed upload and removes the Secret.
    let done = wait_reason(&ctx, "big", "Completed").await?;
    assert_eq!(status_upload_id(&done).as_deref(), Some(upload_id.as_str()));
    wait_secret_gone(&ctx, "big").await?;
    assert!(open_uploads(&ctx, &key).await?.is_empty());

    // Nothing that grants access reached the operator's logs.
    let logs = operator.logs();
    assert!(logs.contains(&upload_id), "the upload id is logged");
    for secret in [
        &data["completeUrl"],
        &data["abortUrl"],
        &parts.signatures[0],
        &renewed_parts.signatures[2],
    ] {
        assert!(
            !logs.contains(secret.as_str()),
            "a URL or signature in the logs"
        );
    }
    assert!(!logs.contains("X-Amz-Signature"), "a signature in the logs");
    Ok(())
}

#[tokio::test]
async fn deleting_a_grant_mid_upload_aborts_the_upload() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = start("mp-delete").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let key = format!("{}/abandoned.bin", ctx.namespace);
    create_grant(
        &ctx,
        "abandoned",
        grant_spec(&ctx, &issuer, "abandoned.bin"),
    )
    .await?;
    wait_ready(&ctx, "abandoned").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "abandoned").await?;
    let parts = Parts::of(&data)?;
    upload_part(&parts, 1, &file(5 * MIB)).await?;
    assert_eq!(listed_parts(&ctx, &key, &data["uploadId"]).await?, [1]);

    let grants = ctx.api::<UploadGrant>();
    grants.delete("abandoned", &DeleteParams::default()).await?;
    eventually("the grant to go", Duration::from_secs(60), || async {
        Ok(grants.get_opt("abandoned").await?.is_none().then_some(()))
    })
    .await?;
    // The finalizer held the grant until the upload was aborted.
    assert!(
        open_uploads(&ctx, &key).await?.is_empty(),
        "no upload of the key is left"
    );
    let late = support::http()
        .put(parts.url(2))
        .body(file(5 * MIB))
        .send()
        .await?;
    assert!(late.status().is_client_error(), "{}", late.status());
    Ok(())
}

#[tokio::test]
async fn a_restart_mid_upload_keeps_the_upload_and_re_signs_nothing() -> TestResult {
    let Scenario {
        ctx,
        dir,
        mut operator,
    } = start("mp-restart").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let key = format!("{}/restart.bin", ctx.namespace);
    create_grant(&ctx, "restart", grant_spec(&ctx, &issuer, "restart.bin")).await?;
    let grant = wait_ready(&ctx, "restart").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "restart").await?;
    let parts = Parts::of(&data)?;
    let body = file(5 * MIB + 77);
    let mut etags = vec![upload_part(&parts, 1, &body[..5 * MIB]).await?];

    operator.stop().await?;
    let operator = Operator::start(&ctx, dir.path(), options()).await?;
    // It has looked at the grant (and its upload) once more.
    settle(&ctx, &operator, "restart", 1).await?;
    let after = ctx.api::<UploadGrant>().get("restart").await?;
    assert_eq!(
        fingerprint(&after),
        fingerprint(&grant),
        "nothing re-signed"
    );
    let same = secret_data(&ctx.client, &ctx.namespace, "restart").await?;
    assert_eq!(same, data, "the Secret is unchanged");
    assert_eq!(open_uploads(&ctx, &key).await?, [data["uploadId"].clone()]);

    etags.push(upload_part(&parts, 2, &body[5 * MIB..]).await?);
    complete(&data, &etags).await?;
    wait_reason(&ctx, "restart", "Completed").await?;
    Ok(())
}

/// What a crash between asking S3 for an upload and recording its id
/// leaves: the status's record (where, when) without an id, and an upload
/// S3 started right after. That upload is adopted, not doubled; one that
/// somebody else started at the same key before the record's window is
/// neither adopted nor aborted.
#[tokio::test]
async fn the_upload_a_crash_left_unrecorded_is_adopted_and_no_other() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = start("mp-adopt").await?;
    let key = format!("{}/adopted.bin", ctx.namespace);
    let (foreign, foreign_at) = root_upload(&ctx, &key).await?;
    // The issuer does not exist yet: the grant waits, IssuerNotFound.
    let issuer = format!("mp-adopt-{}", support::random_suffix());
    create_grant(&ctx, "adopted", grant_spec(&ctx, &issuer, "adopted.bin")).await?;
    wait_reason(&ctx, "adopted", "IssuerNotFound").await?;
    // The record the operator writes before CreateMultipartUpload, dated so
    // that the foreign upload falls before its window (which opens 15 s
    // before the request, for the clocks' skew).
    let s3 = serde_json::json!({"region": ctx.env.region(), "endpoint": ctx.env.s3_endpoint(), "forcePathStyle": true});
    let grant = ctx.api::<UploadGrant>().get("adopted").await?;
    let requested_at = foreign_at + Duration::from_secs(16);
    let record = serde_json::json!({"status": {"upload": {
        "bucket": ctx.env.bucket(), "key": key,
        "specHash": spec_hash(&grant.spec, &serde_json::from_value(s3.clone())?),
        "requestedAt": jiff::Timestamp::try_from(requested_at)?.to_string(),
    }}});
    ctx.api::<UploadGrant>()
        .patch_status("adopted", &PatchParams::default(), &Patch::Merge(&record))
        .await?;
    // The store dates uploads to the second: once the window has opened,
    // S3 starts the upload the operator asked for, and it stops.
    let opens = requested_at - Duration::from_millis(14_500);
    eventually(
        "the record's window to open",
        Duration::from_secs(10),
        || async { Ok((SystemTime::now() >= opens).then_some(())) },
    )
    .await?;
    let (orphan, _) = root_upload(&ctx, &key).await?;

    let rules =
        serde_json::json!([{"buckets": [ctx.env.bucket()], "methods": ["PUT"], "multipart": true}]);
    let issuer_obj: upload_grant_operator::api::ClusterGrantIssuer =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "grants.io/v1alpha1", "kind": "ClusterGrantIssuer",
            "metadata": {"name": issuer},
            "spec": {"s3": s3, "allow": rules},
        }))?;
    kube::Api::<upload_grant_operator::api::ClusterGrantIssuer>::all(ctx.client.clone())
        .create(&Default::default(), &issuer_obj)
        .await?;
    ctx.delete_issuer_on_drop(&issuer);
    let grant = wait_ready(&ctx, "adopted").await?;
    assert_eq!(status_upload_id(&grant).as_deref(), Some(orphan.as_str()));
    let mut open = open_uploads(&ctx, &key).await?;
    open.sort();
    let mut expected = [foreign.clone(), orphan.clone()];
    expected.sort();
    assert_eq!(open, expected, "one adopted, the foreign one left alone");

    ctx.api::<UploadGrant>()
        .delete("adopted", &DeleteParams::default())
        .await?;
    eventually(
        "the adopted upload to be aborted",
        Duration::from_secs(60),
        || async { Ok((open_uploads(&ctx, &key).await? == [foreign.as_str()]).then_some(())) },
    )
    .await?;
    root_abort(&ctx, &key, &foreign).await?;
    Ok(())
}

#[tokio::test]
async fn an_issuer_without_multipart_denies_and_creates_no_upload() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = start("mp-denied").await?;
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [ctx.env.bucket()], "keyPrefixes": ["{namespace}/"], "methods": ["PUT"]}]),
    )
    .await?;
    let key = format!("{}/denied.bin", ctx.namespace);
    create_grant(&ctx, "denied", grant_spec(&ctx, &issuer, "denied.bin")).await?;
    let grant = wait_reason(&ctx, "denied", "Forbidden").await?;
    let message = support::grants::ready_message(&grant);
    assert!(message.contains("multipart: true"), "{message}");
    assert!(
        ctx.api::<k8s_openapi::api::core::v1::Secret>()
            .get_opt("denied")
            .await?
            .is_none()
    );
    assert!(open_uploads(&ctx, &key).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn suspending_or_losing_the_issuers_permission_aborts_the_upload() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = start("mp-revoke").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let key = format!("{}/revoked.bin", ctx.namespace);
    create_grant(&ctx, "revoked", grant_spec(&ctx, &issuer, "revoked.bin")).await?;
    wait_ready(&ctx, "revoked").await?;
    let first = secret_data(&ctx.client, &ctx.namespace, "revoked").await?;
    upload_part(&Parts::of(&first)?, 1, &file(5 * MIB)).await?;

    support::grants::patch_spec(&ctx, "revoked", serde_json::json!({"suspend": true})).await?;
    let suspended = wait_reason(&ctx, "revoked", "Suspended").await?;
    assert!(
        support::grants::ready_message(&suspended).contains("the multipart upload was aborted"),
        "{}",
        support::grants::ready_message(&suspended)
    );
    assert_eq!(status_upload_id(&suspended), None);
    wait_secret_gone(&ctx, "revoked").await?;
    assert!(open_uploads(&ctx, &key).await?.is_empty());

    // Resumed: a new upload, since the old one is gone.
    support::grants::patch_spec(&ctx, "revoked", serde_json::json!({"suspend": false})).await?;
    wait_ready(&ctx, "revoked").await?;
    let second = secret_data(&ctx.client, &ctx.namespace, "revoked").await?;
    assert_ne!(second["uploadId"], first["uploadId"]);
    assert_eq!(
        open_uploads(&ctx, &key).await?,
        [second["uploadId"].clone()]
    );

    // The issuer stops allowing multipart: Forbidden, and aborted.
    let patch = serde_json::json!({"spec": {"allow": [{"buckets": [ctx.env.bucket()], "methods": ["PUT"]}]}});
    kube::Api::<upload_grant_operator::api::ClusterGrantIssuer>::all(ctx.client.clone())
        .patch(
            &issuer,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    wait_reason(&ctx, "revoked", "Forbidden").await?;
    eventually(
        "the upload to be aborted",
        Duration::from_secs(30),
        || async { Ok(open_uploads(&ctx, &key).await?.is_empty().then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn not_after_ends_the_grant_and_aborts_its_upload() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = start("mp-expire").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let key = format!("{}/until.bin", ctx.namespace);
    let not_after = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(15);
    let mut until = grant_spec(&ctx, &issuer, "until.bin");
    until["notAfter"] = not_after.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().into();
    create_grant(&ctx, "until", until).await?;
    wait_ready(&ctx, "until").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "until").await?;
    upload_part(&Parts::of(&data)?, 1, &file(5 * MIB)).await?;
    assert_eq!(open_uploads(&ctx, &key).await?, [data["uploadId"].as_str()]);

    let expired = wait_reason(&ctx, "until", "Expired").await?;
    let message = support::grants::ready_message(&expired);
    assert!(
        message.contains("notAfter") && message.contains("the multipart upload was aborted"),
        "{message}"
    );
    wait_secret_gone(&ctx, "until").await?;
    assert!(open_uploads(&ctx, &key).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_new_key_starts_a_new_upload_and_aborts_the_old_one_where_it_is() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = start("mp-rekey").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let (old_key, new_key) = (
        format!("{}/old.bin", ctx.namespace),
        format!("{}/new.bin", ctx.namespace),
    );
    create_grant(&ctx, "rekey", grant_spec(&ctx, &issuer, "old.bin")).await?;
    wait_ready(&ctx, "rekey").await?;
    let old = secret_data(&ctx.client, &ctx.namespace, "rekey").await?;
    upload_part(&Parts::of(&old)?, 1, &file(5 * MIB)).await?;

    support::grants::patch_spec(&ctx, "rekey", serde_json::json!({"key": new_key})).await?;
    let new = eventually(
        "a Secret for the new key",
        Duration::from_secs(30),
        || async {
            let data = secret_data(&ctx.client, &ctx.namespace, "rekey").await?;
            Ok((data["key"] == new_key).then_some(data))
        },
    )
    .await?;
    assert_ne!(new["uploadId"], old["uploadId"]);
    assert!(
        open_uploads(&ctx, &old_key).await?.is_empty(),
        "the old upload is aborted"
    );
    assert_eq!(
        open_uploads(&ctx, &new_key).await?,
        [new["uploadId"].as_str()]
    );
    Ok(())
}
