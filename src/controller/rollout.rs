//! Rollout restarts: when a new URL replaces one in a grant's Secret, the
//! workloads in `spec.secret.rolloutRestartTargets` are restarted the way
//! `kubectl rollout restart` does it, by changing their pod template. Pods
//! that read the URL from an environment variable would otherwise keep the
//! old one until it expires.
//!
//! Whether a restart is owed is read from the cluster, not remembered: the
//! pod template records, per grant, the fingerprint of the URL its pods were
//! started for, and when this operator last restarted it. So an operator
//! restart or a failover neither repeats a restart nor loses one, and an
//! unchanged Secret never causes one.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::build::{IssuedState, format_time, parse_time};
use super::context::Context;
use super::events::{EventReason, Note};
use super::memo::GrantMemo;
use crate::api::limits::{MAX_QUALIFIED_NAME_LEN, shorten};
use crate::api::secret::MANAGER;
use crate::api::{RolloutTarget, UploadGrant};
use crate::error::Result;

/// When this operator last restarted the workload (RFC 3339): the debounce
/// window starts there.
pub const RESTARTED_AT_ANNOTATION: &str = "grants.io/restartedAt";
/// Prefix of the per-grant pod-template annotation holding the fingerprint
/// of the URL the pods were (re)started for.
pub const URL_ANNOTATION_PREFIX: &str = "restarts.grants.io/";
/// On the workload (not its pod template): the grants that may restart it,
/// comma-separated, or `*` for every grant in the namespace. A grant's
/// author names the targets; the workload's owner decides whether they are.
pub const ACCEPT_ANNOTATION: &str = "grants.io/accept-restarts-from";

/// Whether a workload annotated `annotations` accepts restarts from `grant`.
pub fn accepts(annotations: &BTreeMap<String, String>, grant: &str) -> bool {
    annotations.get(ACCEPT_ANNOTATION).is_some_and(|names| {
        names
            .split(',')
            .map(str::trim)
            .any(|name| name == "*" || name == grant)
    })
}

/// What one target needs for the URL in the Secret now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Its pods hold this URL, or started after it was written.
    UpToDate,
    Restart,
    /// Restarted too recently: restart at this time.
    After(SystemTime),
}

/// The pod-template annotation that records a grant's URL fingerprint. Annotation
/// names hold at most 63 characters; longer grant names keep their start and
/// gain a hash of the whole.
pub fn url_annotation(grant: &str) -> String {
    let name = shorten(grant, MAX_QUALIFIED_NAME_LEN, 12);
    format!("{URL_ANNOTATION_PREFIX}{name}")
}

/// Pure: what a target whose pod template carries `template` needs.
pub fn step(
    grant: &str,
    state: &IssuedState,
    template: &BTreeMap<String, String>,
    now: SystemTime,
    debounce: Duration,
) -> Step {
    let seen = template.get(&url_annotation(grant));
    if seen == Some(&state.fingerprint) {
        return Step::UpToDate;
    }
    // A grant's first URL: pods that waited for the Secret read it as they
    // start. A URL re-issued after a revocation does replace what pods hold.
    if seen.is_none() && state.replaces.is_none() {
        return Step::UpToDate;
    }
    let last = template
        .get(RESTARTED_AT_ANNOTATION)
        .and_then(|v| parse_time(v));
    match last {
        // Restarted (for another grant) a whole second after this URL was
        // written: its pods read this URL already.
        Some(t) if t >= state.issued_at + Duration::from_secs(1) => Step::UpToDate,
        Some(t) if now < t + debounce => Step::After(t + debounce),
        _ => Step::Restart,
    }
}

/// The patch that restarts a workload: two pod-template annotations.
pub fn restart_patch(grant: &str, state: &IssuedState, now: SystemTime) -> serde_json::Value {
    serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: format_time(now),
        url_annotation(grant): state.fingerprint,
    }}}}})
}

/// What the rollout stage did for a grant.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Come back then to restart a target inside its debounce window.
    pub wake_at: Option<SystemTime>,
    pub notes: Vec<Note>,
}

/// Restarts the targets that are owed one. A target that is missing or
/// that the operator may not patch is reported once per URL, not retried;
/// other API errors are retried with the reconcile's backoff.
pub async fn restart_owed(
    ctx: &Context,
    grant: &UploadGrant,
    memo: &mut GrantMemo,
    state: &IssuedState,
    now: SystemTime,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let targets = targets(grant);
    if targets.is_empty() || memo.rollouts_done.as_deref() == Some(state.fingerprint.as_str()) {
        return Ok(outcome);
    }
    let Some(debounce) = ctx.settings.rollout_restart_debounce else {
        if state.replaces.is_some() {
            outcome.notes.push(Note::new(
                EventReason::RolloutRestartFailed,
                "spec.secret.rolloutRestartTargets is set, but this operator runs without rollout restarts (--rollout-restarts; Helm: rolloutRestarts.enabled=true); nothing was restarted",
            ));
        }
        memo.rollouts_done = Some(state.fingerprint.as_str().into());
        return Ok(outcome);
    };
    let namespace = grant.namespace().unwrap_or_default();
    let name = grant.name_any();
    for target in targets {
        let api = workloads(ctx, &namespace, target);
        let restart = Restart {
            api: &api,
            grant: &name,
            namespace: &namespace,
            target,
            state,
            now,
        };
        restart.owed(debounce, &mut outcome).await?;
    }
    if outcome.wake_at.is_none() {
        memo.rollouts_done = Some(state.fingerprint.as_str().into());
    }
    Ok(outcome)
}

/// One target's restart, if it is owed one.
struct Restart<'a> {
    api: &'a Api<DynamicObject>,
    grant: &'a str,
    namespace: &'a str,
    target: &'a RolloutTarget,
    state: &'a IssuedState,
    now: SystemTime,
}

impl Restart<'_> {
    /// Looks at the target and restarts it when `step` says so; what was
    /// done, or why not, goes into `outcome`.
    async fn owed(&self, debounce: Duration, outcome: &mut Outcome) -> Result<()> {
        let (target, state) = (self.target, self.state);
        let what = format!("{} {:?}", target.kind.as_str(), target.name);
        let workload = match self.api.get_opt(&target.name).await {
            Ok(Some(w)) => w,
            Ok(None) => {
                outcome.notes.push(failed(&what, "it does not exist"));
                return Ok(());
            }
            Err(e) if refused(&e) => {
                outcome.notes.push(failed(&what, &e.to_string()));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let annotations = template_annotations(&workload);
        match step(self.grant, state, &annotations, self.now, debounce) {
            Step::UpToDate => {}
            Step::After(t) => {
                outcome.wake_at = Some(outcome.wake_at.map_or(t, |w| w.min(t)));
            }
            Step::Restart if !accepts(workload.annotations(), self.grant) => {
                let why = format!(
                    "it does not accept restarts from this grant: its owner may annotate it {ACCEPT_ANNOTATION}={}",
                    self.grant
                );
                outcome.notes.push(failed(&what, &why));
            }
            Step::Restart => outcome.notes.push(self.restart(&what).await?),
        }
        Ok(())
    }

    async fn restart(&self, what: &str) -> Result<Note> {
        let (target, state) = (self.target, self.state);
        let patch = Patch::Merge(restart_patch(self.grant, state, self.now));
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self.api.patch(&target.name, &params, &patch).await {
            Ok(_) => {
                tracing::info!(grant = %self.grant, namespace = %self.namespace, kind = target.kind.as_str(),
                    workload = %target.name, fingerprint = %state.fingerprint, "rollout restart");
                Ok(Note::new(
                    EventReason::RolloutRestarted,
                    format!("restarted {what}: a new URL replaced the one its pods read"),
                ))
            }
            Err(e) if refused(&e) => Ok(failed(what, &e.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

fn targets(grant: &UploadGrant) -> &[RolloutTarget] {
    grant
        .spec
        .secret
        .as_ref()
        .map_or(&[], |s| s.rollout_restart_targets.as_slice())
}

fn failed(what: &str, why: &str) -> Note {
    Note::new(
        EventReason::RolloutRestartFailed,
        format!("cannot restart {what}: {why}"),
    )
}

/// The workload is gone or the operator lacks the RBAC (Helm:
/// rolloutRestarts.enabled): waiting will not change that.
fn refused(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 403 | 404 | 422))
}

fn workloads(ctx: &Context, namespace: &str, target: &RolloutTarget) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("apps", "v1", target.kind.as_str());
    let resource = ApiResource::from_gvk(&gvk);
    Api::namespaced_with(ctx.client.clone(), namespace, &resource)
}

fn template_annotations(workload: &DynamicObject) -> BTreeMap<String, String> {
    workload
        .data
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    const WINDOW: Duration = Duration::from_secs(60);

    fn state(fingerprint: &str, issued: u64, replaces: Option<&str>) -> IssuedState {
        IssuedState {
            spec_hash: "h".into(),
            issued_at: at(issued),
            expires_at: at(issued + 3600),
            refresh_at: Some(at(issued + 2400)),
            fingerprint: fingerprint.into(),
            renew_request: None,
            replaces: replaces.map(str::to_owned),
        }
    }

    fn template(fingerprint: Option<&str>, restarted: Option<u64>) -> BTreeMap<String, String> {
        let mut t = BTreeMap::from([("unrelated".to_owned(), "x".to_owned())]);
        if let Some(f) = fingerprint {
            t.insert(url_annotation("g"), f.to_owned());
        }
        if let Some(r) = restarted {
            t.insert(RESTARTED_AT_ANNOTATION.into(), format_time(at(r)));
        }
        t
    }

    #[test]
    fn a_restart_is_owed_once_per_replaced_url() {
        let renewed = state("sha256:2", 1000, Some("sha256:1"));
        let cases = [
            (
                "first URL, never restarted",
                state("sha256:1", 0, None),
                template(None, None),
                Step::UpToDate,
            ),
            (
                "renewal, never restarted",
                renewed.clone(),
                template(None, None),
                Step::Restart,
            ),
            (
                "renewal, pods hold the old URL",
                renewed.clone(),
                template(Some("sha256:1"), Some(10)),
                Step::Restart,
            ),
            (
                "after the restart for it",
                renewed.clone(),
                template(Some("sha256:2"), Some(1000)),
                Step::UpToDate,
            ),
            (
                "re-issued after a revocation",
                state("sha256:3", 1000, None),
                template(Some("sha256:1"), Some(10)),
                Step::Restart,
            ),
            (
                "within the window of another restart",
                renewed.clone(),
                template(Some("sha256:1"), Some(990)),
                Step::After(at(1050)),
            ),
            (
                "another grant restarted it a second after",
                renewed.clone(),
                template(Some("sha256:1"), Some(1001)),
                Step::UpToDate,
            ),
            (
                "another grant restarted it the same second",
                renewed.clone(),
                template(Some("sha256:1"), Some(1000)),
                Step::After(at(1060)),
            ),
        ];
        for (what, state, template, want) in cases {
            assert_eq!(
                step("g", &state, &template, at(1000), WINDOW),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn the_restart_patch_records_the_url_and_the_time() {
        let s = state("sha256:2", 1000, Some("sha256:1"));
        let patch = restart_patch("g", &s, at(1000));
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(patch["spec"]["template"]["metadata"]["annotations"].clone())
                .expect("annotations");
        assert_eq!(
            step("g", &s, &annotations, at(1001), WINDOW),
            Step::UpToDate
        );
        let next = state("sha256:3", 1030, Some("sha256:2"));
        assert_eq!(
            step("g", &next, &annotations, at(1030), WINDOW),
            Step::After(at(1060))
        );
        assert_eq!(
            step("g", &next, &annotations, at(1060), WINDOW),
            Step::Restart
        );
    }

    #[test]
    fn annotation_names_stay_valid_for_the_longest_grant_names() {
        let longest = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let key = url_annotation(&longest);
        let name = key.strip_prefix(URL_ANNOTATION_PREFIX).expect("prefix");
        assert!(name.len() <= 63, "{} characters", name.len());
        assert_ne!(url_annotation(&format!("{longest}x")), key);
        assert_eq!(url_annotation("short"), "restarts.grants.io/short");
    }

    mod against_a_mocked_api {
        //! The requests a restart makes, and how a refusal is reported.
        use http::{Request, Response};
        use kube::client::Body;

        use super::*;
        use crate::controller::secrets::tests::context;

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        /// The base grant, restarting Deployment "uploader" on a new URL.
        fn restarting() -> UploadGrant {
            crate::fixtures::grant(serde_json::json!({"secret": {
                "rolloutRestartTargets": [{"kind": "Deployment", "name": "uploader"}]}}))
        }

        fn deployment(fingerprint: &str) -> serde_json::Value {
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "uploader", "namespace": "ns",
                    "annotations": {ACCEPT_ANNOTATION: "g"}},
                "spec": {"template": {"metadata": {"annotations": {url_annotation("g"): fingerprint}}}}})
        }

        async fn answer(
            handle: &mut Handle,
            method: http::Method,
            code: u16,
            body: serde_json::Value,
        ) -> serde_json::Value {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), method);
            assert_eq!(
                req.uri().path(),
                "/apis/apps/v1/namespaces/ns/deployments/uploader"
            );
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let sent = serde_json::from_slice(&bytes).unwrap_or_default();
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response"),
            );
            sent
        }

        fn forbidden() -> serde_json::Value {
            serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
                "message": "deployments.apps \"uploader\" is forbidden: User \"system:serviceaccount:x:ugo\" cannot patch resource \"deployments\""})
        }

        #[tokio::test]
        async fn a_replaced_url_patches_the_pod_template_once() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let mut ctx = context(kube::Client::new(service, "ns"));
            ctx.settings.rollout_restart_debounce = Some(WINDOW);
            let server = tokio::spawn(async move {
                answer(&mut handle, http::Method::GET, 200, deployment("sha256:1")).await;
                let patch = answer(
                    &mut handle,
                    http::Method::PATCH,
                    200,
                    deployment("sha256:2"),
                )
                .await;
                let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
                assert_eq!(annotations[url_annotation("g")], "sha256:2");
                assert_eq!(annotations[RESTARTED_AT_ANNOTATION], format_time(at(1000)));
                assert!(
                    handle.next_request().await.is_none(),
                    "one GET and one patch"
                );
            });
            let s = state("sha256:2", 1000, Some("sha256:1"));
            let mut memo = GrantMemo::default();
            let out = restart_owed(&ctx, &restarting(), &mut memo, &s, at(1000))
                .await
                .expect("restarted");
            let reasons: Vec<_> = out.notes.iter().map(|n| n.reason).collect();
            assert_eq!(reasons, [EventReason::RolloutRestarted]);
            assert_eq!(out.wake_at, None);
            // The same URL again (the Secret's own watch event): no request.
            let again = restart_owed(&ctx, &restarting(), &mut memo, &s, at(1001))
                .await
                .expect("nothing to do");
            assert!(again.notes.is_empty());
            drop(ctx);
            server.await.expect("mock server");
        }

        #[tokio::test]
        async fn without_the_rbac_the_refusal_is_reported_once_and_not_retried() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let mut ctx = context(kube::Client::new(service, "ns"));
            ctx.settings.rollout_restart_debounce = Some(WINDOW);
            let server = tokio::spawn(async move {
                answer(&mut handle, http::Method::GET, 403, forbidden()).await;
                assert!(
                    handle.next_request().await.is_none(),
                    "not retried for this URL"
                );
            });
            let s = state("sha256:2", 1000, Some("sha256:1"));
            let mut memo = GrantMemo::default();
            let out = restart_owed(&ctx, &restarting(), &mut memo, &s, at(1000))
                .await
                .expect("reported, not an error");
            assert_eq!(out.notes.len(), 1);
            assert_eq!(out.notes[0].reason, EventReason::RolloutRestartFailed);
            assert!(
                out.notes[0].text.contains("cannot patch"),
                "{}",
                out.notes[0].text
            );
            assert!(
                restart_owed(&ctx, &restarting(), &mut memo, &s, at(1001))
                    .await
                    .expect("quiet")
                    .notes
                    .is_empty()
            );
            drop(ctx);
            server.await.expect("mock server");
        }

        #[tokio::test]
        async fn an_operator_without_rollout_restarts_says_so_and_calls_nothing() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let ctx = context(kube::Client::new(service, "ns"));
            let server = tokio::spawn(async move {
                assert!(handle.next_request().await.is_none(), "no request");
            });
            let s = state("sha256:2", 1000, Some("sha256:1"));
            let mut memo = GrantMemo::default();
            let out = restart_owed(&ctx, &restarting(), &mut memo, &s, at(1000))
                .await
                .expect("reported");
            assert_eq!(out.notes.len(), 1);
            assert!(out.notes[0].text.contains("rolloutRestarts.enabled"));
            drop(ctx);
            server.await.expect("mock server");
        }
    }

    #[test]
    fn a_workload_accepts_only_the_grants_it_names() {
        let annotated = |v: &str| BTreeMap::from([(ACCEPT_ANNOTATION.to_owned(), v.to_owned())]);
        // (annotation, grant, accepted)
        let cases = [
            (None, "env", false),
            (Some("env"), "env", true),
            (Some("other, env"), "env", true),
            (Some("other"), "env", false),
            (Some("envy"), "env", false),
            (Some(""), "env", false),
            (Some("*"), "env", true),
        ];
        for (value, grant, accepted) in cases {
            let annotations = value.map(annotated).unwrap_or_default();
            assert_eq!(
                accepts(&annotations, grant),
                accepted,
                "{value:?} for {grant}"
            );
        }
    }
}
