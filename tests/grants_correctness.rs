//! Correct by construction: one writer per Secret, and no silent failure loops.
//!
//! - Every write of a grant's Secret comes from one field manager, so a field
//!   the operator stops setting (the refresh time of a URL that is no longer
//!   renewed, a label or annotation removed from `spec.secret`) leaves the
//!   Secret, and a URL that is not renewed is signed once.
//! - A Secret the apiserver refuses, for whatever reason (a label value the
//!   operator derived badly, an admission policy), is reported on the grant
//!   once, removes the old URL and is not re-signed in a loop.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use support::grants::*;
use support::operator::{Operator, OperatorOptions};
use support::{TestContext, TestEnv, TestResult, eventually, random_suffix};
use upload_grant_operator::api::UploadGrant;

const SIGNINGS: &str = r#"upload_grant_signings_total{result="success",reason="ok"}"#;
const REFRESH_AT: &str = "grants.io/refresh-at";
const GRANT_LABEL: &str = "grants.io/grant";

/// Deletes cluster-scoped objects a test created when it ends, whether it
/// passed or not (in reverse order of creation).
struct ClusterObjects {
    env: &'static TestEnv,
    objects: Vec<(&'static str, String)>,
}

impl ClusterObjects {
    fn new(env: &'static TestEnv) -> Self {
        ClusterObjects {
            env,
            objects: Vec::new(),
        }
    }

    /// `resource` as kubectl names it, e.g. `clustergrantissuers.grants.io`.
    fn add(&mut self, resource: &'static str, name: &str) {
        self.objects.push((resource, name.to_owned()));
    }
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for (resource, name) in self.objects.iter().rev() {
            let out = self
                .env
                .command("kubectl")
                .args([
                    "delete",
                    resource,
                    name,
                    "--ignore-not-found",
                    "--wait=false",
                ])
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "could not delete {resource} {name}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("could not run kubectl to delete {resource} {name}: {e}"),
            }
        }
    }
}

const SPEC_HASH: &str = "grants.io/spec-hash";

/// The Secret's `grants.io/spec-hash` annotation: which spec its URL was
/// signed for.
async fn spec_hash_of(ctx: &TestContext, secret: &str) -> TestResult<String> {
    secret_meta(ctx, secret)
        .await?
        .annotations
        .unwrap_or_default()
        .get(SPEC_HASH)
        .cloned()
        .ok_or_else(|| format!("Secret {secret} has no {SPEC_HASH} annotation").into())
}

/// Waits until the grant is Ready for its current generation, and checks that
/// its Secret was re-issued for the new spec. (Not the URL fingerprint: a
/// re-sign within the same second as the previous signing yields the same
/// URL, and a renewal would be mistaken for the re-issue.)
async fn wait_reissued(
    ctx: &TestContext,
    name: &str,
    old_spec_hash: &str,
) -> TestResult<UploadGrant> {
    let grant = wait_for_grant(
        ctx,
        name,
        "Ready for its new spec",
        Duration::from_secs(30),
        |g| ready(g).is_some_and(|(_, r)| r == "Issued"),
    )
    .await?;
    let hash = spec_hash_of(ctx, name).await?;
    if hash == old_spec_hash {
        return Err(format!(
            "grant {name} is Ready but its Secret was not re-issued for the new spec"
        )
        .into());
    }
    Ok(grant)
}

async fn secret_meta(ctx: &TestContext, name: &str) -> TestResult<ObjectMeta> {
    Ok(ctx.api::<Secret>().get(name).await?.metadata)
}

/// Polls `violation` until `window` has passed; fails as soon as it reports
/// something.
async fn never_within<F, Fut>(what: &str, window: Duration, mut violation: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Option<String>>>,
{
    let deadline = tokio::time::Instant::now() + window;
    loop {
        if let Some(why) = violation().await? {
            return Err(format!("{what}: {why}").into());
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Time from now until `t` (zero if it has passed).
fn until(t: jiff::Timestamp) -> Duration {
    Duration::try_from(t.duration_since(jiff::Timestamp::now())).unwrap_or_default()
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The Warning events recorded for a grant: (reason, note).
async fn warnings(ctx: &TestContext, grant: &str) -> TestResult<Vec<(String, String)>> {
    Ok(grant_events(ctx, grant)
        .await?
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// A valid label value: at most 63 characters, alphanumerics with `-`, `_`
/// and `.` inside.
fn valid_label_value(v: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    v.len() <= 63
        && v.chars().all(ok)
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------
// 1. One writer per Secret
// ---------------------------------------------------------------------------

/// A grant switched to `refreshPolicy: Never` before its first renewal loses
/// its refresh time and is not renewed at the refresh time of its old URL.
#[tokio::test]
async fn switching_to_refresh_policy_never_drops_the_refresh_time_and_stops_renewal() -> TestResult
{
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("fix-never").await?;
    let issuer = open_issuer(&ctx).await?;
    // ttl 1m, refreshBefore 50s: the first URL is due for renewal about ten
    // seconds after it was issued.
    create_grant(
        &ctx,
        "switch",
        spec(
            &ctx,
            &issuer,
            "switch.txt",
            serde_json::json!({"ttl": "1m", "refreshBefore": "50s"}),
        ),
    )
    .await?;
    let first = wait_ready(&ctx, "switch").await?;
    let first_hash = spec_hash_of(&ctx, "switch").await?;
    let stale_refresh = first
        .status
        .as_ref()
        .and_then(|s| s.refresh_at.clone())
        .ok_or("the first URL has no refresh time")?
        .0;
    assert!(
        secret_meta(&ctx, "switch")
            .await?
            .annotations
            .unwrap_or_default()
            .contains_key(REFRESH_AT),
        "the Secret of a URL that is renewed carries {REFRESH_AT}"
    );

    patch_spec(
        &ctx,
        "switch",
        serde_json::json!({"refreshPolicy": "Never"}),
    )
    .await?;
    let second = wait_reissued(&ctx, "switch", &first_hash).await?;
    let second_fp = fingerprint(&second).ok_or("no fingerprint")?;
    let status = second.status.clone().unwrap_or_default();
    let annotations = secret_meta(&ctx, "switch")
        .await?
        .annotations
        .unwrap_or_default();
    assert_eq!(
        annotations.get(REFRESH_AT),
        None,
        "a URL that is never renewed must not keep the old URL's {REFRESH_AT} on its Secret"
    );
    assert!(
        status.refresh_at.is_none(),
        "status.refreshAt must be unset for refreshPolicy Never, got {:?}",
        status.refresh_at
    );
    let expires = status.expires_at.clone().ok_or("no expiresAt")?.0;

    // Watch well past the old URL's refresh time (and stay clear of expiry):
    // the same URL in status and Secret, and no refresh time.
    let stop = (stale_refresh + jiff::SignedDuration::from_secs(15))
        .min(expires - jiff::SignedDuration::from_secs(10));
    never_within(
        &format!(
            "the Never grant was renewed or scheduled for renewal (old refresh time {}, watched until {})",
            rfc3339(stale_refresh),
            rfc3339(stop)
        ),
        until(stop),
        || async {
            let grant = ctx.api::<UploadGrant>().get("switch").await?;
            if fingerprint(&grant).as_deref() != Some(second_fp.as_str()) {
                return Ok(Some(format!("status now {:?}", grant.status)));
            }
            if let Some(at) = grant.status.as_ref().and_then(|s| s.refresh_at.as_ref()) {
                return Ok(Some(format!("status.refreshAt is now {}", rfc3339(at.0))));
            }
            let secret = secret_meta(&ctx, "switch")
                .await?
                .annotations
                .unwrap_or_default();
            let on_secret = secret.get("grants.io/url-fingerprint");
            if on_secret != Some(&second_fp) {
                return Ok(Some(format!("the Secret now holds URL {on_secret:?}")));
            }
            Ok(None)
        },
    )
    .await?;
    Ok(())
}

/// Labels and annotations removed from `spec.secret` are removed from the
/// Secret.
#[tokio::test]
async fn labels_and_annotations_removed_from_the_spec_leave_the_secret() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("fix-meta").await?;
    let issuer = open_issuer(&ctx).await?;
    create_grant(
        &ctx,
        "tagged",
        spec(
            &ctx,
            &issuer,
            "tagged.txt",
            serde_json::json!({"secret": {"labels": {"team": "a"}, "annotations": {"note": "x"}}}),
        ),
    )
    .await?;
    wait_ready(&ctx, "tagged").await?;
    let first_hash = spec_hash_of(&ctx, "tagged").await?;
    let meta = secret_meta(&ctx, "tagged").await?;
    let labels = meta.labels.unwrap_or_default();
    let annotations = meta.annotations.unwrap_or_default();
    assert_eq!(
        labels.get("team").map(String::as_str),
        Some("a"),
        "{labels:?}"
    );
    assert_eq!(
        annotations.get("note").map(String::as_str),
        Some("x"),
        "{annotations:?}"
    );

    patch_spec(
        &ctx,
        "tagged",
        serde_json::json!({"secret": {"labels": null, "annotations": null}}),
    )
    .await?;
    wait_reissued(&ctx, "tagged", &first_hash).await?;
    let meta = secret_meta(&ctx, "tagged").await?;
    let labels = meta.labels.unwrap_or_default();
    let annotations = meta.annotations.unwrap_or_default();
    assert_eq!(
        labels.get("team"),
        None,
        "a label removed from spec.secret stays on the Secret: {labels:?}"
    );
    assert_eq!(
        annotations.get("note"),
        None,
        "an annotation removed from spec.secret stays on the Secret: {annotations:?}"
    );
    assert_eq!(
        labels.get(GRANT_LABEL).map(String::as_str),
        Some("tagged"),
        "{labels:?}"
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("upload-grant-operator"),
        "{labels:?}"
    );
    Ok(())
}

/// A grant whose spec is too large for the cache to keep whole (over 2 KiB
/// of Secret labels and annotations) is read from the apiserver by its
/// pass: its Secret carries every label and annotation, and a change of one
/// re-issues it.
#[tokio::test]
async fn a_grant_too_large_to_cache_whole_gets_its_whole_spec() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start("fix-large").await?;
    let issuer = open_issuer(&ctx).await?;
    let labels: serde_json::Map<String, serde_json::Value> = (0..40)
        .map(|i| {
            (
                format!("team.example.com/l{i:02}"),
                format!("{i:02}{}", "v".repeat(58)).into(),
            )
        })
        .collect();
    let annotations: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| {
            (
                format!("note.example.com/a{i:02}"),
                format!("{i:02}{}", "n".repeat(98)).into(),
            )
        })
        .collect();
    create_grant(
        &ctx,
        "large",
        spec(
            &ctx,
            &issuer,
            "large.txt",
            serde_json::json!({"secret": {"labels": labels, "annotations": annotations}}),
        ),
    )
    .await?;
    wait_ready(&ctx, "large").await?;
    let meta = secret_meta(&ctx, "large").await?;
    let (on_labels, on_annotations) = (
        meta.labels.unwrap_or_default(),
        meta.annotations.unwrap_or_default(),
    );
    for (k, v) in &labels {
        assert_eq!(
            on_labels.get(k).map(String::as_str),
            v.as_str(),
            "label {k}"
        );
    }
    for (k, v) in &annotations {
        assert_eq!(
            on_annotations.get(k).map(String::as_str),
            v.as_str(),
            "annotation {k}"
        );
    }
    let first_hash = spec_hash_of(&ctx, "large").await?;
    patch_spec(
        &ctx,
        "large",
        serde_json::json!({"secret": {"labels": {"team.example.com/l07": "changed"}}}),
    )
    .await?;
    wait_reissued(&ctx, "large", &first_hash).await?;
    let labels = secret_meta(&ctx, "large").await?.labels.unwrap_or_default();
    assert_eq!(
        labels.get("team.example.com/l07").map(String::as_str),
        Some("changed"),
        "{labels:?}"
    );
    assert_eq!(
        labels.len(),
        40 + 3,
        "every label and the operator's three (managed-by, grant, shard): {labels:?}"
    );
    Ok(())
}

/// A URL capped by `notAfter` is signed once, not on every wake-up until
/// notAfter; then the grant is Expired and its Secret gone.
#[tokio::test]
async fn a_url_capped_by_not_after_is_signed_once_then_expires() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start("fix-notafter").await?;
    let issuer = open_issuer(&ctx).await?;
    create_grant(
        &ctx,
        "capped",
        spec(
            &ctx,
            &issuer,
            "capped.txt",
            serde_json::json!({"ttl": "1m", "refreshBefore": "50s"}),
        ),
    )
    .await?;
    wait_ready(&ctx, "capped").await?;
    let first_hash = spec_hash_of(&ctx, "capped").await?;

    let not_after_text = rfc3339(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(40));
    let not_after: jiff::Timestamp = not_after_text.parse()?;
    patch_spec(
        &ctx,
        "capped",
        serde_json::json!({"notAfter": not_after_text}),
    )
    .await?;
    let capped = wait_reissued(&ctx, "capped", &first_hash).await?;
    let status = capped.status.clone().unwrap_or_default();
    let annotations = secret_meta(&ctx, "capped")
        .await?
        .annotations
        .unwrap_or_default();
    assert_eq!(
        annotations.get(REFRESH_AT),
        None,
        "a URL capped by notAfter is not renewed, so its Secret must not keep {REFRESH_AT}"
    );
    assert!(
        status.refresh_at.is_none(),
        "status.refreshAt must be unset for a URL capped by notAfter, got {:?}",
        status.refresh_at
    );
    assert_eq!(
        status.expires_at.as_ref().map(|t| rfc3339(t.0)),
        Some(not_after_text.clone()),
        "notAfter caps the URL"
    );

    let signings = operator.metric(SIGNINGS).await?;
    never_within(
        &format!(
            "the capped URL was renewed or scheduled for renewal before notAfter {not_after_text}"
        ),
        until(not_after),
        || async {
            let now = operator.metric(SIGNINGS).await?;
            if now > signings {
                return Ok(Some(format!(
                    "{} signings after the re-issue",
                    now - signings
                )));
            }
            let grant = ctx.api::<UploadGrant>().get("capped").await?;
            if let Some(at) = grant.status.as_ref().and_then(|s| s.refresh_at.as_ref()) {
                return Ok(Some(format!("status.refreshAt is now {}", rfc3339(at.0))));
            }
            Ok(None)
        },
    )
    .await?;

    let expired = wait_reason(&ctx, "capped", "Expired").await?;
    assert!(
        ready_message(&expired).contains("notAfter"),
        "{}",
        ready_message(&expired)
    );
    wait_secret_gone(&ctx, "capped").await?;
    assert_eq!(
        operator.metric(SIGNINGS).await?,
        signings,
        "nothing is signed for a grant past notAfter"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. No silent failure loops
// ---------------------------------------------------------------------------

/// A DNS-subdomain grant name of exactly `len` characters. All such names
/// share their first 63 characters, so a label value cut to 63 characters
/// would be the same for all of them.
fn long_name(len: usize, tail: &str) -> String {
    let head = "a".repeat(120);
    let mut name = format!("{head}.{}", "b".repeat(200));
    name.truncate(len - tail.len() - 1);
    let name = format!("{name}-{tail}");
    assert_eq!(name.len(), len);
    name
}

/// Grant names up to the 253-character maximum become Ready with a valid,
/// distinct `grants.io/grant` label, and their events are recorded.
#[tokio::test]
async fn grants_with_long_names_are_issued_with_valid_labels_and_events() -> TestResult {
    let Scenario {
        ctx,
        dir: _dir,
        operator: _operator,
    } = Scenario::start_in(
        TestContext::new("fix-longname").await?,
        OperatorOptions::lifecycle_events(),
    )
    .await?;
    let issuer = open_issuer(&ctx).await?;
    let name100 = long_name(100, "hundred");
    let name253 = long_name(253, "max");
    for (name, key) in [(&name100, "long-100.txt"), (&name253, "long-253.txt")] {
        create_grant(&ctx, name, spec(&ctx, &issuer, key, serde_json::json!({}))).await?;
    }
    let mut values = Vec::new();
    for name in [&name100, &name253] {
        let grant = wait_ready(&ctx, name).await?;
        let secret_name = grant
            .status
            .and_then(|s| s.secret_name)
            .ok_or("no secretName")?;
        let labels = secret_meta(&ctx, &secret_name)
            .await?
            .labels
            .unwrap_or_default();
        let value = labels.get(GRANT_LABEL).cloned().ok_or_else(|| {
            format!(
                "the Secret of a {}-character grant has no {GRANT_LABEL} label",
                name.len()
            )
        })?;
        assert!(
            valid_label_value(&value),
            "{GRANT_LABEL}={value:?} is not a valid label value"
        );
        values.push(value);
    }
    assert_ne!(
        values[0], values[1],
        "two grants with long names got the same {GRANT_LABEL} label"
    );
    wait_event(&ctx, &name253, "Issued").await?;
    Ok(())
}

/// Denies Secrets labelled `policy.test/deny: "true"` in the namespaces
/// labelled `policy.test/scope: <id>`; both objects go when dropped.
async fn deny_policy(
    ctx: &TestContext,
    id: &str,
    cleanup: &mut ClusterObjects,
) -> TestResult<String> {
    let name = format!("grants-correctness-deny-{id}");
    let marker = format!("refused by test policy {name}");
    cleanup.add(
        "validatingadmissionpolicies.admissionregistration.k8s.io",
        &name,
    );
    cleanup.add(
        "validatingadmissionpolicybindings.admissionregistration.k8s.io",
        &name,
    );
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["secrets"],
            }]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('policy.test/deny' in object.metadata.labels) || object.metadata.labels['policy.test/deny'] != 'true'",
                "message": marker,
            }],
        }
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(ctx.client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"policy.test/scope": id}}},
        }
    }))?;
    Api::<ValidatingAdmissionPolicyBinding>::all(ctx.client.clone())
        .create(&PostParams::default(), &binding)
        .await?;

    // The apiserver loads policies asynchronously: wait until a labelled
    // Secret is refused.
    let secrets = ctx.api::<Secret>();
    let mut n = 0;
    eventually(
        "the admission policy to take effect",
        Duration::from_secs(60),
        || {
            n += 1;
            let probe: Secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("policy-probe-{n}")),
                    labels: Some(BTreeMap::from([(
                        "policy.test/deny".to_owned(),
                        "true".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Secret::default()
            };
            let secrets = secrets.clone();
            let marker = marker.clone();
            async move {
                match secrets.create(&PostParams::default(), &probe).await {
                    Ok(created) => {
                        secrets
                            .delete(&created.name_any(), &DeleteParams::default())
                            .await?;
                        Ok(None)
                    }
                    Err(kube::Error::Api(s)) if s.message.contains(&marker) => Ok(Some(())),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await?;
    Ok(marker)
}

/// Fails if the signing counter grows by more than `allowed` over `base`
/// within `window`, or the grant leaves InvalidSpec.
async fn no_signing_loop(
    ctx: &TestContext,
    operator: &Operator,
    grant: &str,
    base: f64,
    allowed: f64,
    window: Duration,
) -> TestResult {
    never_within(
        &format!("grant {grant} kept re-signing after its Secret was refused"),
        window,
        || async {
            let now = operator.metric(SIGNINGS).await?;
            if now > base + allowed {
                return Ok(Some(format!(
                    "{} signings since the change, at most {allowed} expected",
                    now - base
                )));
            }
            let g = ctx.api::<UploadGrant>().get(grant).await?;
            if ready(&g).is_none_or(|(_, r)| r != "InvalidSpec") {
                return Ok(Some(format!("left InvalidSpec: {:?}", g.status)));
            }
            Ok(None)
        },
    )
    .await
}

/// Waits (bounded) until the grant has a Warning event, then asserts it has
/// exactly one, `Failed`, carrying the apiserver's message.
async fn one_failed_warning(ctx: &TestContext, grant: &str, marker: &str) -> TestResult {
    wait_event(ctx, grant, "Failed").await?;
    let warnings = warnings(ctx, grant).await?;
    assert_eq!(
        warnings.len(),
        1,
        "a refused Secret is reported once, not per retry: {warnings:#?}"
    );
    assert_eq!(warnings[0].0, "Failed", "{warnings:#?}");
    assert!(warnings[0].1.contains(marker), "{warnings:#?}");
    Ok(())
}

/// A Secret the apiserver refuses makes the grant InvalidSpec with the
/// apiserver's message, reported once, the old Secret revoked, and no
/// re-signing loop; removing the cause brings the grant back.
#[tokio::test]
async fn a_secret_the_apiserver_refuses_is_reported_once_revoked_and_not_retried() -> TestResult {
    let id = random_suffix();
    let ctx = TestContext::with_labels("fix-refused", &[("policy.test/scope", &id)]).await?;
    let Scenario {
        ctx,
        dir: _dir,
        operator,
    } = Scenario::start_in(ctx, OperatorOptions::default()).await?;
    // The policy and its binding are cluster-scoped: removed at the end.
    let mut cleanup = ClusterObjects::new(ctx.env);
    let issuer = open_issuer(&ctx).await?;
    let marker = deny_policy(&ctx, &id, &mut cleanup).await?;
    let deny = serde_json::json!({"secret": {"labels": {"policy.test/deny": "true"}}});
    let window = Duration::from_secs(15);

    // (i) A Ready grant whose next Secret is refused.
    create_grant(
        &ctx,
        "refused",
        spec(&ctx, &issuer, "refused.txt", serde_json::json!({})),
    )
    .await?;
    wait_ready(&ctx, "refused").await?;
    assert!(ctx.api::<Secret>().get_opt("refused").await?.is_some());
    let before = operator.metric(SIGNINGS).await?;
    patch_spec(&ctx, "refused", deny.clone()).await?;
    let grant = wait_reason(&ctx, "refused", "InvalidSpec").await?;
    assert!(
        ready_message(&grant).contains(&marker),
        "the condition must carry the apiserver's refusal: {:?}",
        ready_message(&grant)
    );
    wait_secret_gone(&ctx, "refused").await?;
    no_signing_loop(&ctx, &operator, "refused", before, 1.0, window).await?;
    one_failed_warning(&ctx, "refused", &marker).await?;

    // (ii) A new grant whose very first Secret is refused.
    let before = operator.metric(SIGNINGS).await?;
    let mut first = spec(&ctx, &issuer, "refused-new.txt", serde_json::json!({}));
    first["secret"] = deny["secret"].clone();
    create_grant(&ctx, "refused-new", first).await?;
    let grant = wait_reason(&ctx, "refused-new", "InvalidSpec").await?;
    assert!(
        ready_message(&grant).contains(&marker),
        "the condition must carry the apiserver's refusal: {:?}",
        ready_message(&grant)
    );
    assert!(
        ctx.api::<Secret>().get_opt("refused-new").await?.is_none(),
        "a refused Secret does not exist"
    );
    no_signing_loop(&ctx, &operator, "refused-new", before, 1.0, window).await?;
    one_failed_warning(&ctx, "refused-new", &marker).await?;

    // (iii) Without the label, both are issued again.
    for name in ["refused", "refused-new"] {
        patch_spec(&ctx, name, serde_json::json!({"secret": {"labels": null}})).await?;
        let grant = wait_ready(&ctx, name).await?;
        let secret_name = grant
            .status
            .and_then(|s| s.secret_name)
            .ok_or("no secretName")?;
        let data = secret_data(&ctx.client, &ctx.namespace, &secret_name).await?;
        assert!(data.contains_key("url"), "{name}: the Secret holds no URL");
    }
    Ok(())
}
