//! A grant's Secret works the way consumers use it: PUT uploads, GET reads the
//! same bytes back, HEAD and DELETE work, awkward keys survive, and the
//! headers the grant signed are enforced by the store.

mod support;

use support::TestResult;
use support::grants::{Scenario, consume, create_grant, open_issuer, secret_data, wait_ready};

#[tokio::test]
async fn put_get_head_and_delete_grants_work_end_to_end() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("consume").await?;
    let issuer = open_issuer(&ctx).await?;
    let bucket = ctx.env.bucket();
    let key = format!("{}/report.csv", ctx.namespace);
    let body = b"day,total\n2026-11-29,42\n".to_vec();

    create_grant(&ctx, "upload", serde_json::json!({
        "issuerRef": {"name": issuer}, "bucket": bucket, "key": key, "method": "PUT",
        "contentType": "text/csv", "contentLength": body.len(), "metadata": {"owner": "analytics"},
    }))
    .await?;
    let grant = wait_ready(&ctx, "upload").await?;
    let status = grant.status.clone().unwrap_or_default();
    assert_eq!(status.secret_name.as_deref(), Some("upload"));
    assert!(
        status
            .url_fingerprint
            .as_deref()
            .is_some_and(|f| f.starts_with("sha256:"))
    );

    let put = secret_data(&ctx.client, &ctx.namespace, "upload").await?;
    assert_eq!(put["method"], "PUT");
    assert_eq!(
        (put["bucket"].as_str(), put["key"].as_str()),
        (bucket, key.as_str())
    );
    let headers: serde_json::Value = serde_json::from_str(&put["headers"])?;
    assert_eq!(headers["content-type"], "text/csv");
    assert_eq!(headers["x-amz-meta-owner"], "analytics");
    let response = consume(&put, Some(body.clone())).await?;
    assert_eq!(response.status(), 200, "upload: {}", response.text().await?);

    for (name, method) in [("download", "GET"), ("probe", "HEAD"), ("remove", "DELETE")] {
        create_grant(
            &ctx,
            name,
            serde_json::json!({
                "issuerRef": {"name": issuer}, "bucket": bucket, "key": key, "method": method,
            }),
        )
        .await?;
    }
    wait_ready(&ctx, "download").await?;
    let get = secret_data(&ctx.client, &ctx.namespace, "download").await?;
    let response = consume(&get, None).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await?.as_ref(), body.as_slice());

    wait_ready(&ctx, "probe").await?;
    let head = consume(
        &secret_data(&ctx.client, &ctx.namespace, "probe").await?,
        None,
    )
    .await?;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        body.len().to_string().as_str()
    );

    wait_ready(&ctx, "remove").await?;
    let delete = consume(
        &secret_data(&ctx.client, &ctx.namespace, "remove").await?,
        None,
    )
    .await?;
    assert!(delete.status().is_success(), "delete: {}", delete.status());
    let gone = consume(&get, None).await?;
    assert_eq!(
        gone.status(),
        404,
        "the object should be gone after the DELETE grant was used"
    );
    Ok(())
}

#[tokio::test]
async fn awkward_keys_upload_to_exactly_that_key() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("keys").await?;
    let issuer = open_issuer(&ctx).await?;
    let root = support::s3_client(ctx.env, ctx.env.root_credentials());
    let keys = [
        "with space/and more spaces.txt",
        "unicode/ümlaut-日本語-😀.txt",
        "plus+sign/a+b.txt",
        "percent/100%25 and 100%.txt",
        "equals=and&ampersand/k=v&x=y.txt",
        "deeply/nested/path/to/the/object.bin",
        "tilde~and'quote(parens)!*.txt",
    ];
    for (i, key) in keys.iter().enumerate() {
        let key = format!("{}/{key}", ctx.namespace);
        let name = format!("key-{i}");
        create_grant(&ctx, &name, serde_json::json!({"issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": key})).await?;
        wait_ready(&ctx, &name).await?;
        let data = secret_data(&ctx.client, &ctx.namespace, &name).await?;
        assert_eq!(data["key"], key);
        let body = format!("body of {key}").into_bytes();
        let response = consume(&data, Some(body.clone())).await?;
        assert_eq!(response.status(), 200, "{key}: {}", response.text().await?);
        let object = root
            .get_object()
            .bucket(ctx.env.bucket())
            .key(&key)
            .send()
            .await?;
        assert_eq!(
            object.body.collect().await?.into_bytes().as_ref(),
            body.as_slice(),
            "{key}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_store_enforces_what_the_grant_signed() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("signed").await?;
    let issuer = open_issuer(&ctx).await?;
    let body = b"{\"ok\":true}".to_vec();
    create_grant(&ctx, "typed", serde_json::json!({
        "issuerRef": {"name": issuer}, "bucket": ctx.env.bucket(), "key": format!("{}/typed.json", ctx.namespace),
        "contentType": "application/json", "contentLength": body.len(), "metadata": {"owner": "team-a"},
    }))
    .await?;
    wait_ready(&ctx, "typed").await?;
    let data = secret_data(&ctx.client, &ctx.namespace, "typed").await?;

    let mut wrong_type = data.clone();
    wrong_type.insert(
        "headers".into(),
        data["headers"].replace("application/json", "text/plain"),
    );
    assert_eq!(
        consume(&wrong_type, Some(body.clone())).await?.status(),
        403,
        "a wrong Content-Type must be refused"
    );

    let mut no_meta = data.clone();
    no_meta.insert(
        "headers".into(),
        data["headers"].replace(
            "\"x-amz-meta-owner\":\"team-a\"",
            "\"x-amz-meta-owner\":\"team-b\"",
        ),
    );
    assert_eq!(
        consume(&no_meta, Some(body.clone())).await?.status(),
        403,
        "changed metadata must be refused"
    );

    let response = consume(&data, Some(body.clone())).await?;
    assert_eq!(
        response.status(),
        200,
        "the exact signed request works: {}",
        response.text().await?
    );

    // The URL carries X-Amz-Expires equal to the real lifetime in status.
    let grant = wait_ready(&ctx, "typed").await?;
    let status = grant.status.unwrap_or_default();
    let (issued, expires) = (
        status.issued_at.ok_or("issuedAt")?.0,
        status.expires_at.ok_or("expiresAt")?.0,
    );
    let lifetime = expires.duration_since(issued).as_secs();
    assert!(
        data["url"].contains(&format!("X-Amz-Expires={lifetime}")),
        "lifetime {lifetime} not in URL"
    );
    assert!(lifetime > 0 && lifetime <= 3600, "lifetime {lifetime}s");
    Ok(())
}
