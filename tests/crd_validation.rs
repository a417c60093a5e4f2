//! Bad specs are refused by the apiserver at apply time, with a message that
//! says what is wrong; `kubectl explain` documents the fields and `kubectl get`
//! shows the printer columns.

mod support;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use support::{TestContext, TestResult};
use upload_grant_operator::api::limits::{
    MAX_LABEL_VALUE_LEN, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, MAX_QUALIFIED_NAME_LEN,
    MAX_SECRET_LABELS, MAX_SECRET_METADATA_BYTES,
};
use upload_grant_operator::api::{ClusterGrantIssuer, UploadGrant, UploadGrantSpec};
use upload_grant_operator::controller::validate::validate;

/// Untyped, so values the Rust types could not even hold reach the server.
fn grant(name: &str, spec: serde_json::Value) -> TestResult<DynamicObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "metadata": {"name": name}, "spec": spec
    }))?)
}

fn dynamic<K: kube::Resource<DynamicType = ()>>(
    ctx: &TestContext,
    namespaced: bool,
) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    if namespaced {
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ar)
    } else {
        Api::all_with(ctx.client.clone(), &ar)
    }
}

/// `spec` as a failure message shows it: its JSON, cut at 300 bytes.
fn shown(spec: &serde_json::Value) -> String {
    let shown = spec.to_string();
    if shown.len() <= 300 {
        return shown;
    }
    format!(
        "{}… ({} bytes)",
        &shown[..shown.floor_char_boundary(300)],
        shown.len()
    )
}

/// Creating `object` is refused as invalid (422) with `needle` in the
/// message; `case` names it when it is not.
async fn assert_refused(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
    needle: &str,
    case: &str,
) {
    match api.create(&PostParams::default(), object).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{case}: {status:?}");
            assert!(
                status.message.contains(needle),
                "{case}: expected {needle:?} in {:?}",
                status.message
            );
        }
        other => panic!("{case} was not rejected: {other:?}"),
    }
}

/// The grant `name` with `spec` passes the operator's validate step and is
/// created by the apiserver.
async fn assert_accepted(
    api: &Api<DynamicObject>,
    name: &str,
    spec: serde_json::Value,
) -> TestResult {
    let shown = shown(&spec);
    let typed: UploadGrantSpec = serde_json::from_value(spec.clone())?;
    if let Err(e) = validate(&typed, "g") {
        panic!("{shown}: validate() refused it: {e}");
    }
    if let Err(e) = api
        .create(&PostParams::default(), &grant(name, spec)?)
        .await
    {
        panic!("{shown} was refused: {e}");
    }
    Ok(())
}

fn with(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({"bucket": "reports", "key": "a/b.csv"});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

#[tokio::test]
async fn invalid_grants_are_rejected_with_a_clear_message() -> TestResult {
    let ctx = TestContext::new("crd").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<UploadGrant>(&ctx, true);
    let long_key = "k".repeat(1025);
    let long_utf8_key = "ü".repeat(513); // 513 characters, 1026 bytes
    let cases = [
        (
            with(serde_json::json!({"bucket": "Upper_Case"})),
            "bucket must consist of lowercase",
        ),
        (with(serde_json::json!({"bucket": "ab"})), "spec.bucket"),
        (
            with(serde_json::json!({"bucket": "a..b"})),
            "two adjacent periods",
        ),
        (
            with(serde_json::json!({"bucket": "192.168.1.10"})),
            "IP address",
        ),
        (
            with(serde_json::json!({"bucket": "xn--reports"})),
            "reserves",
        ),
        (with(serde_json::json!({"key": ""})), "spec.key"),
        (with(serde_json::json!({"key": long_key})), "spec.key"),
        (
            with(serde_json::json!({"key": long_utf8_key})),
            "at most 1024 bytes",
        ),
        (with(serde_json::json!({"method": "PATCH"})), "spec.method"),
        (
            with(serde_json::json!({"ttl": "30s"})),
            "ttl must be between 1m and 168h",
        ),
        (
            with(serde_json::json!({"ttl": "169h"})),
            "ttl must be between 1m and 168h",
        ),
        (with(serde_json::json!({"ttl": "1 day"})), "spec.ttl"),
        (
            with(serde_json::json!({"ttl": "1h", "refreshBefore": "1h"})),
            "refreshBefore must be shorter than ttl",
        ),
        (
            with(serde_json::json!({"method": "GET", "contentLength": 10})),
            "contentLength is only allowed when method is PUT",
        ),
        (
            with(serde_json::json!({"method": "GET", "contentType": "text/csv"})),
            "only allowed when method is PUT",
        ),
        (
            with(serde_json::json!({"contentLength": -1})),
            "spec.contentLength",
        ),
        (
            with(serde_json::json!({"notAfter": "tomorrow"})),
            "spec.notAfter",
        ),
        (
            with(serde_json::json!({"serverSideEncryption": {"type": "AES256", "kmsKeyId": "k"}})),
            "kmsKeyId is only allowed",
        ),
        (
            with(serde_json::json!({"secret": {"name": "Not A Name"}})),
            "spec.secret.name",
        ),
        (
            with(
                serde_json::json!({"secret": {"rolloutRestartTargets": [{"kind": "Job", "name": "x"}]}}),
            ),
            "spec.secret.rolloutRestartTargets[0].kind",
        ),
        (
            with(serde_json::json!({"secret": {"rolloutRestartTargets": [
                {"kind": "Deployment", "name": "x"}, {"kind": "Deployment", "name": "x"}]}})),
            "Duplicate value",
        ),
    ];
    for (i, (spec, needle)) in cases.into_iter().enumerate() {
        let shown = shown(&spec);
        assert_refused(&api, &grant(&format!("bad-{i}"), spec)?, needle, &shown).await;
    }
    // The same grant with good values is accepted, so the refusals above are
    // about the values.
    let good = with(
        serde_json::json!({"ttl": "2h", "refreshBefore": "30m", "contentLength": 10, "notAfter": "2030-01-01T00:00:00Z",
            "secret": {"rolloutRestartTargets": [{"kind": "Deployment", "name": "db"}, {"kind": "StatefulSet", "name": "db"}]}}),
    );
    api.create(&PostParams::default(), &grant("good", good)?)
        .await?;
    Ok(())
}

/// `n` distinct keys `k0`, `k1`, … with the value `value`.
fn entries(n: usize, value: &str) -> serde_json::Value {
    (0..n)
        .map(|i| (format!("k{i}"), serde_json::json!(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Valid labels whose keys and values total exactly `total` bytes: keys
/// `l00`, `l01`, … with 63-byte values, the last one shorter.
fn long_labels(total: usize) -> serde_json::Value {
    let entry = 3 + MAX_LABEL_VALUE_LEN;
    let (full, rest) = (total / entry, total % entry);
    assert!(rest == 0 || rest > 3, "{total} bytes cannot end in a label");
    let mut lengths = vec![MAX_LABEL_VALUE_LEN; full];
    if rest > 0 {
        lengths.push(rest - 3);
    }
    let labels = lengths
        .into_iter()
        .enumerate()
        .map(|(i, n)| (format!("l{i:02}"), serde_json::json!("v".repeat(n))));
    labels.collect::<serde_json::Map<_, _>>().into()
}

fn labels(labels: serde_json::Value) -> serde_json::Value {
    with(serde_json::json!({"secret": {"labels": labels}}))
}

fn annotations(annotations: serde_json::Value) -> serde_json::Value {
    with(serde_json::json!({"secret": {"annotations": annotations}}))
}

/// A DNS subdomain of exactly 253 characters, the longest qualified-name prefix.
fn prefix_253() -> String {
    format!("{}.{}", "a".repeat(126), "b".repeat(126))
}

/// What the apiserver or S3 would refuse later (or what would break the
/// operator's own bookkeeping) is refused at apply time, with a message naming
/// the field. Where the operator's validate step mirrors the rule (everything
/// but the entry-count bounds, which only keep CEL within its cost budget), it
/// refuses the same spec, for objects stored before the schema had the rule.
#[tokio::test]
async fn what_would_fail_later_is_refused_at_apply_time() -> TestResult {
    let ctx = TestContext::new("crd-refused").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<UploadGrant>(&ctx, true);
    let mirrored = true;
    let reserved_label =
        "secret.labels keys must not start with grants.io/ or be app.kubernetes.io/managed-by";
    let reserved_annotation =
        "secret.annotations keys must not start with grants.io/ or be app.kubernetes.io/managed-by";
    let label_key = "secret.labels keys must be qualified names";
    let annotation_key = "secret.annotations keys must be qualified names";
    let label_value = "secret.labels values must be empty or at most 63";
    let dot_segments = "key must not contain '.' or '..' path segments";
    let control = "key must not contain control characters";
    let metadata_ascii = "metadata values must be printable ASCII";
    let metadata_size = "metadata names and values must total at most 2048 bytes";
    let annotations_size = "secret.annotations keys and values must total at most 4096 bytes";
    let labels_size = "secret.labels keys and values must total at most 4096 bytes";
    let refresh_min = "refreshBefore must be at least 10s";
    let long_name = "n".repeat(MAX_QUALIFIED_NAME_LEN + 1);
    let long_prefix = format!("{}a/x", prefix_253());
    let long_value = "v".repeat(MAX_LABEL_VALUE_LEN + 1);
    let half = MAX_SECRET_METADATA_BYTES / 2;
    let cases = [
        // 1. Reserved keys.
        (
            labels(serde_json::json!({"grants.io/grant": "other"})),
            reserved_label,
            mirrored,
        ),
        (
            labels(serde_json::json!({"grants.io/anything": "x"})),
            reserved_label,
            mirrored,
        ),
        (
            labels(serde_json::json!({"app.kubernetes.io/managed-by": "me"})),
            reserved_label,
            mirrored,
        ),
        (
            annotations(serde_json::json!({"grants.io/spec-hash": "x"})),
            reserved_annotation,
            mirrored,
        ),
        (
            annotations(serde_json::json!({"grants.io/expires-at": "x"})),
            reserved_annotation,
            mirrored,
        ),
        (
            annotations(serde_json::json!({"app.kubernetes.io/managed-by": "me"})),
            reserved_annotation,
            mirrored,
        ),
        // 2. Label and annotation syntax.
        (
            labels(serde_json::json!({"bad key": "x"})),
            label_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({"-team": "x"})),
            label_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({"Example.com/team": "x"})),
            label_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({"/team": "x"})),
            label_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({"a/b/c": "x"})),
            label_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({long_name.clone(): "x"})),
            label_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({long_prefix.clone(): "x"})),
            label_key,
            mirrored,
        ),
        (
            annotations(serde_json::json!({"bad key": "x"})),
            annotation_key,
            mirrored,
        ),
        (
            annotations(serde_json::json!({long_name: "x"})),
            annotation_key,
            mirrored,
        ),
        (
            annotations(serde_json::json!({long_prefix: "x"})),
            annotation_key,
            mirrored,
        ),
        (
            labels(serde_json::json!({"team": "-a"})),
            label_value,
            mirrored,
        ),
        (
            labels(serde_json::json!({"team": "a b"})),
            label_value,
            mirrored,
        ),
        (
            labels(serde_json::json!({"team": "ü"})),
            label_value,
            mirrored,
        ),
        (
            labels(serde_json::json!({"team": long_value})),
            "spec.secret.labels.team",
            mirrored,
        ),
        (
            annotations(serde_json::json!({"a": "v".repeat(half), "b": "v".repeat(half - 1)})),
            annotations_size,
            mirrored,
        ),
        (
            labels(long_labels(MAX_SECRET_METADATA_BYTES + 1)),
            labels_size,
            mirrored,
        ),
        (
            labels(entries(MAX_SECRET_LABELS + 1, "x")),
            "spec.secret.labels: Too many",
            false,
        ),
        // 3. Key.
        (
            with(serde_json::json!({"key": "a/../b"})),
            dot_segments,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": "a/./b"})),
            dot_segments,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": "./a"})),
            dot_segments,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": "a/.."})),
            dot_segments,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": ".."})),
            dot_segments,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": "."})),
            dot_segments,
            mirrored,
        ),
        (with(serde_json::json!({"key": "a\nb"})), control, mirrored),
        (
            with(serde_json::json!({"key": "\u{0}a"})),
            control,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": "a\u{1f}"})),
            control,
            mirrored,
        ),
        (
            with(serde_json::json!({"key": "a\u{7f}"})),
            control,
            mirrored,
        ),
        // 4. Metadata.
        (
            with(serde_json::json!({"metadata": {"owner": "ü"}})),
            metadata_ascii,
            mirrored,
        ),
        (
            with(serde_json::json!({"metadata": {"owner": "a\tb"}})),
            metadata_ascii,
            mirrored,
        ),
        (
            with(serde_json::json!({"metadata": {"owner": "a\u{7f}"}})),
            metadata_ascii,
            mirrored,
        ),
        (
            with(serde_json::json!({"metadata": {"owner": "v".repeat(MAX_METADATA_BYTES - 4)}})),
            metadata_size,
            mirrored,
        ),
        // Names count: 1 + 1000 + 1 + 1047 = 2049 bytes.
        (
            with(serde_json::json!({"metadata": {"a": "v".repeat(1000), "b": "v".repeat(1047)}})),
            metadata_size,
            mirrored,
        ),
        // Counted in bytes, not characters: 683 × 'ü' is 1366 bytes, so this is
        // 1 + 1366 + 1 + 681 = 2049 bytes in 1366 characters (also not ASCII).
        (
            with(serde_json::json!({"metadata": {"a": "ü".repeat(683), "b": "v".repeat(681)}})),
            metadata_size,
            mirrored,
        ),
        (
            with(serde_json::json!({"metadata": entries(MAX_METADATA_ENTRIES + 1, "x")})),
            "spec.metadata: Too many",
            false,
        ),
        // 5. refreshBefore minimum.
        (
            with(serde_json::json!({"refreshBefore": "9s"})),
            refresh_min,
            mirrored,
        ),
        (
            with(serde_json::json!({"refreshBefore": "9999ms"})),
            refresh_min,
            mirrored,
        ),
        (
            with(serde_json::json!({"refreshBefore": "1ms"})),
            refresh_min,
            mirrored,
        ),
    ];
    for (i, (spec, needle, mirrored)) in cases.into_iter().enumerate() {
        let shown = shown(&spec);
        let typed: UploadGrantSpec = serde_json::from_value(spec.clone())?;
        let second_line = validate(&typed, "g");
        if mirrored {
            assert!(second_line.is_err(), "{shown}: validate() accepted it");
        } else {
            assert!(
                second_line.is_ok(),
                "{shown}: validate() refused a schema-only bound"
            );
        }
        assert_refused(&api, &grant(&format!("refused-{i}"), spec)?, needle, &shown).await;
    }
    Ok(())
}

fn post(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = with(serde_json::json!({"method": "POST"}));
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

/// POST-only fields on other methods, PUT-only ones on POST, `${filename}`
/// out of place and bad size ranges are refused at apply time with a clear
/// message, and by the operator's validate step; good POST grants pass both.
#[tokio::test]
async fn post_grants_are_checked_at_apply_time() -> TestResult {
    let ctx = TestContext::new("crd-post").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<UploadGrant>(&ctx, true);
    let range = |min: serde_json::Value, max: serde_json::Value| {
        post(serde_json::json!({"contentLengthRange": {"min": min, "max": max}}))
    };
    let cases = [
        (
            with(serde_json::json!({"contentLengthRange": {"min": 0, "max": 10}})),
            "contentLengthRange and successActionStatus are only allowed when method is POST",
        ),
        (
            with(serde_json::json!({"method": "GET", "successActionStatus": 201})),
            "contentLengthRange and successActionStatus are only allowed when method is POST",
        ),
        (
            post(serde_json::json!({"contentLength": 10})),
            "contentLength is only allowed when method is PUT (a POST grant bounds the size with contentLengthRange)",
        ),
        (
            with(serde_json::json!({"method": "GET", "contentType": "text/csv"})),
            "contentType, metadata and serverSideEncryption are only allowed when method is PUT or POST",
        ),
        (
            with(serde_json::json!({"key": "up/${filename}"})),
            "only a POST grant's key may contain ${filename}",
        ),
        (
            post(serde_json::json!({"key": "up/${filename}/x"})),
            "${filename} may appear only once in key, at its end",
        ),
        (
            post(serde_json::json!({"key": "${filename}/${filename}"})),
            "${filename} may appear only once in key, at its end",
        ),
        (
            range(serde_json::json!("2Mi"), serde_json::json!("1Mi")),
            "contentLengthRange.min must not be larger than max",
        ),
        (
            range(serde_json::json!(0), serde_json::json!("6Gi")),
            "contentLengthRange.max must be at most 5Gi",
        ),
        (
            range(serde_json::json!(0), serde_json::json!(5_368_709_121_i64)),
            "contentLengthRange.max must be at most 5Gi",
        ),
        (
            range(serde_json::json!(-1), serde_json::json!(10)),
            "contentLengthRange.min must be a whole, non-negative number of bytes",
        ),
        (
            range(serde_json::json!(0), serde_json::json!("ten")),
            "contentLengthRange.max must be a whole, non-negative number of bytes",
        ),
        (
            post(serde_json::json!({"successActionStatus": 202})),
            "successActionStatus must be 200, 201 or 204",
        ),
    ];
    for (i, (spec, needle)) in cases.into_iter().enumerate() {
        let shown = shown(&spec);
        let typed: UploadGrantSpec = serde_json::from_value(spec.clone())?;
        assert!(
            validate(&typed, "g").is_err(),
            "{shown}: validate() accepted it"
        );
        assert_refused(&api, &grant(&format!("post-{i}"), spec)?, needle, &shown).await;
    }
    let good = [
        post(
            serde_json::json!({"key": "up/${filename}", "contentType": "text/csv",
            "metadata": {"owner": "a"}, "serverSideEncryption": {"type": "AES256"},
            "contentLengthRange": {"min": 1, "max": "10Mi"}, "successActionStatus": 201}),
        ),
        range(serde_json::json!("0"), serde_json::json!("5Gi")),
        range(serde_json::json!(7), serde_json::json!(7)),
        range(
            serde_json::json!("1Ki"),
            serde_json::json!(5_368_709_120_i64),
        ),
        post(serde_json::json!({"key": "${filename}", "successActionStatus": 204})),
        post(serde_json::json!({})),
    ];
    for (i, spec) in good.into_iter().enumerate() {
        assert_accepted(&api, &format!("post-good-{i}"), spec).await?;
    }
    Ok(())
}

/// Multipart on another method or with contentLength, and parts or part
/// sizes outside S3's bounds, are refused at apply time and by the
/// operator's validate step; the edges of the bounds pass both.
#[tokio::test]
async fn multipart_grants_are_checked_at_apply_time() -> TestResult {
    let ctx = TestContext::new("crd-mp").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<UploadGrant>(&ctx, true);
    let mp = |parts: serde_json::Value, size: serde_json::Value| {
        with(serde_json::json!({"multipart": {"parts": parts, "partSize": size}}))
    };
    let part_size = "multipart.partSize must be a whole number of bytes, or a quantity like 64Mi, between 5Mi and 5Gi";
    let cases = [
        (
            with(
                serde_json::json!({"method": "GET", "multipart": {"parts": 2, "partSize": "5Mi"}}),
            ),
            "multipart is only allowed when method is PUT",
        ),
        (
            with(
                serde_json::json!({"contentLength": 10, "multipart": {"parts": 2, "partSize": "5Mi"}}),
            ),
            "multipart and contentLength exclude each other",
        ),
        (
            mp(serde_json::json!(0), serde_json::json!("5Mi")),
            "spec.multipart.parts",
        ),
        (
            mp(serde_json::json!(10_001), serde_json::json!("5Mi")),
            "spec.multipart.parts",
        ),
        (
            mp(serde_json::json!(2), serde_json::json!("4Mi")),
            part_size,
        ),
        (
            mp(serde_json::json!(2), serde_json::json!(5_242_879)),
            part_size,
        ),
        (
            mp(serde_json::json!(2), serde_json::json!("6Gi")),
            part_size,
        ),
        (
            mp(serde_json::json!(2), serde_json::json!("ten")),
            part_size,
        ),
    ];
    for (i, (spec, needle)) in cases.into_iter().enumerate() {
        let shown = shown(&spec);
        if let Ok(typed) = serde_json::from_value::<UploadGrantSpec>(spec.clone()) {
            assert!(
                validate(&typed, "g").is_err(),
                "{shown}: validate() accepted it"
            );
        }
        assert_refused(&api, &grant(&format!("mp-{i}"), spec)?, needle, &shown).await;
    }
    let good = [
        mp(serde_json::json!(1), serde_json::json!("5Mi")),
        mp(serde_json::json!(10_000), serde_json::json!("5Gi")),
        mp(serde_json::json!(3), serde_json::json!(5_242_880)),
    ];
    for (i, spec) in good.into_iter().enumerate() {
        assert_accepted(&api, &format!("mp-good-{i}"), spec).await?;
    }
    Ok(())
}

/// The edges of each limit are still accepted, by the apiserver and by the
/// operator's validate step, so the refusals above are exactly at the limits.
#[tokio::test]
async fn edges_of_the_limits_are_accepted() -> TestResult {
    let ctx = TestContext::new("crd-edges").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<UploadGrant>(&ctx, true);
    let half = MAX_SECRET_METADATA_BYTES / 2;
    let cases = [
        // Near the reserved keys, but not them.
        labels(
            serde_json::json!({"app.kubernetes.io/name": "x", "grants.io": "x", "sub.grants.io/x": "x"}),
        ),
        annotations(
            serde_json::json!({"example.com/grants.io": "x", "app.kubernetes.io/managed-by-team": "x"}),
        ),
        // Longest label value, empty value, longest name and prefix.
        labels(serde_json::json!({"team": "v".repeat(MAX_LABEL_VALUE_LEN)})),
        labels(serde_json::json!({"team": "", "A_b.c-D9": "A-b_c.9"})),
        labels(serde_json::json!({"n".repeat(MAX_QUALIFIED_NAME_LEN): "x"})),
        labels(serde_json::json!({format!("{}/x", prefix_253()): "x"})),
        labels(entries(MAX_SECRET_LABELS, "x")),
        // Labels exactly at 4 KiB; annotations too (1 + half + 1 + half - 2),
        // any text.
        labels(long_labels(MAX_SECRET_METADATA_BYTES)),
        annotations(serde_json::json!({"a": "v".repeat(half), "b": "v".repeat(half - 2)})),
        annotations(serde_json::json!({"note": "any text: ü, tabs\tand\nlines"})),
        // Dots inside segments, and other characters.
        with(serde_json::json!({"key": "a..b"})),
        with(serde_json::json!({"key": ".../.hidden/a./.b/c.."})),
        with(serde_json::json!({"key": "a//b/ü €/~!@#$%^&*() "})),
        // Metadata exactly at 2048 bytes, in one entry and across two.
        with(serde_json::json!({"metadata": {"owner": "v".repeat(MAX_METADATA_BYTES - 5)}})),
        with(serde_json::json!({"metadata": {"a": "v".repeat(1000), "b": "v".repeat(1046)}})),
        with(
            serde_json::json!({"metadata": {"owner": " printable ASCII: ~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|} "}}),
        ),
        with(serde_json::json!({"metadata": entries(MAX_METADATA_ENTRIES, "x")})),
        // The shortest refreshBefore, with the shortest ttl.
        with(serde_json::json!({"ttl": "1m", "refreshBefore": "10s"})),
        with(serde_json::json!({"ttl": "1m", "refreshBefore": "10000ms"})),
    ];
    for (i, spec) in cases.into_iter().enumerate() {
        assert_accepted(&api, &format!("edge-{i}"), spec).await?;
    }
    Ok(())
}

#[tokio::test]
async fn invalid_issuers_are_rejected() -> TestResult {
    let ctx = TestContext::new("crd-issuer").await?;
    support::install_committed_crds(&ctx.client).await?;
    let api = dynamic::<ClusterGrantIssuer>(&ctx, false);
    let issuer = |name: &str,
                  s3: serde_json::Value,
                  allow: serde_json::Value|
     -> TestResult<DynamicObject> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "grants.io/v1alpha1", "kind": "ClusterGrantIssuer", "metadata": {"name": name},
            "spec": {"s3": s3, "allow": allow}
        }))?)
    };
    let suffix = support::random_suffix();
    let cases = [
        (
            serde_json::json!({"region": "eu-west-1", "endpoint": "ftp://example.com"}),
            serde_json::json!([]),
            "endpoint must be an http or https URL",
        ),
        (
            serde_json::json!({"region": "EU West"}),
            serde_json::json!([]),
            "spec.s3.region",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "maxContentLength": "-5"}]),
            "maxContentLength",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "maxTtl": "forever"}]),
            "maxTtl",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "methods": ["PATCH"]}]),
            "methods",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "maxParts": 10}]),
            "maxParts is only allowed with multipart: true",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "multipart": false, "maxParts": 10}]),
            "maxParts is only allowed with multipart: true",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "multipart": true, "maxParts": 0}]),
            "maxParts",
        ),
        (
            serde_json::json!({"region": "eu-west-1"}),
            serde_json::json!([{"buckets": ["b"], "multipart": true, "maxParts": 10001}]),
            "maxParts",
        ),
    ];
    for (i, (s3, allow, needle)) in cases.into_iter().enumerate() {
        let bad = issuer(&format!("bad-{suffix}-{i}"), s3, allow)?;
        assert_refused(&api, &bad, needle, &format!("issuer case {i}")).await;
    }
    let good = issuer(
        &format!("good-{suffix}"),
        serde_json::json!({"region": "eu-west-1", "endpoint": "https://s3.eu-west-1.amazonaws.com"}),
        serde_json::json!([{"buckets": ["b"], "maxContentLength": "100Mi", "maxTtl": "6h", "methods": ["PUT"]},
            {"buckets": ["b"], "methods": ["PUT"], "multipart": true, "maxParts": 10000}]),
    )?;
    api.create(&PostParams::default(), &good).await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_explains_every_field_and_prints_the_columns() -> TestResult {
    let ctx = TestContext::new("explain").await?;
    support::install_committed_crds(&ctx.client).await?;
    for field in [
        "uploadgrant.spec.ttl",
        "uploadgrant.spec.refreshBefore",
        "uploadgrant.status.expiresAt",
        "clustergrantissuer.spec.allow.keyPrefixes",
        "uploadgrant.spec.secret.rolloutRestartTargets",
        "uploadgrant.spec.multipart.partSize",
        "uploadgrant.status.uploadId",
        "clustergrantissuer.spec.allow.multipart",
        "clustergrantissuer.spec.allow.maxParts",
    ] {
        let out = ctx
            .env
            .command("kubectl")
            .args(["explain", field])
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        assert!(
            out.status.success() && text.contains("DESCRIPTION"),
            "{field}: {text}"
        );
        let description = text.split("DESCRIPTION:").nth(1).unwrap_or_default().trim();
        assert!(
            !description.is_empty() && !description.starts_with("<empty>"),
            "{field} has no description"
        );
    }
    dynamic::<UploadGrant>(&ctx, true)
        .create(
            &PostParams::default(),
            &grant("shown", with(serde_json::json!({})))?,
        )
        .await?;
    let out = ctx
        .env
        .command("kubectl")
        .args(["get", "ug", "-n", &ctx.namespace])
        .output()?;
    let header = String::from_utf8(out.stdout)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "BUCKET", "KEY", "METHOD", "READY", "EXPIRES", "AGE"]
    );
    Ok(())
}
