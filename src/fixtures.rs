//! The objects unit tests start from: UploadGrants, ClusterGrantIssuers and
//! Secrets.
//!
//! Each test module used to carry its own copy of these builders, each with
//! the apiVersion, kind and required fields spelled out again. Here is one
//! base object per kind: a test states only what it is about, as a JSON
//! merge patch (RFC 7386: objects merge, `null` removes a field) or by
//! setting a field of the result, and a change to the API types is made
//! once.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::secret::MANAGED_BY_LABEL;
use crate::api::{
    ClusterGrantIssuer, ClusterGrantIssuerSpec, Method, RefreshPolicy, S3Target, UploadGrant,
};
use crate::controller::decide::{SignPlan, UploadPlan};
use crate::controller::validate::ValidGrant;

/// The UploadGrant every test starts from, as its JSON document, with
/// `patch` merged over it: "g" in namespace "ns" (uid "grant-uid") at
/// generation 2, so a status can speak of an older one, for a PUT of key
/// "k" in bucket "reports".
pub(crate) fn grant_doc(patch: Value) -> Value {
    let mut doc = json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
        "metadata": {"name": "g", "namespace": "ns", "uid": "grant-uid", "generation": 2},
        "spec": {"bucket": "reports", "key": "k"},
    });
    json_patch::merge(&mut doc, &patch);
    doc
}

/// [`grant_doc`] as an UploadGrant.
pub(crate) fn grant_with(patch: Value) -> UploadGrant {
    serde_json::from_value(grant_doc(patch)).expect("fixture grant")
}

/// The base grant with `spec` merged over its spec.
pub(crate) fn grant(spec: Value) -> UploadGrant {
    grant_with(json!({ "spec": spec }))
}

/// The base grant as "nightly" in "analytics" (uid "uid-1"), for a PUT of
/// reports/a/b.csv whose Secret template carries a user label and
/// annotation, and a reserved label: the grant [`valid`] is the checked
/// form of.
pub(crate) fn nightly() -> UploadGrant {
    grant_with(json!({
        "metadata": {"name": "nightly", "namespace": "analytics", "uid": "uid-1"},
        "spec": {"key": "a/b.csv", "secret": {
            "labels": {"team": "a", "app.kubernetes.io/managed-by": "someone"},
            "annotations": {"note": "x"}}},
    }))
}

/// The checked form of [`nightly`], written out so that tests of the pure
/// stages do not depend on validation: a PUT of reports/a/b.csv for an
/// hour, renewed by default.
pub(crate) fn valid() -> ValidGrant {
    ValidGrant {
        bucket: "reports".into(),
        key: "a/b.csv".into(),
        method: Method::Put,
        content_type: None,
        content_length: None,
        content_length_range: None,
        success_action_status: None,
        metadata: BTreeMap::new(),
        sse: None,
        multipart: None,
        ttl: Duration::from_secs(3600),
        refresh_before: None,
        refresh_policy: RefreshPolicy::Always,
        not_after: None,
        secret_name: "nightly".into(),
        secret_labels: BTreeMap::from([
            ("team".into(), "a".into()),
            (MANAGED_BY_LABEL.into(), "someone".into()),
        ]),
        secret_annotations: BTreeMap::from([("note".into(), "x".into())]),
    }
}

/// Where the test issuers sign: AWS in eu-west-1.
pub(crate) fn s3_target() -> S3Target {
    S3Target {
        region: "eu-west-1".into(),
        endpoint: None,
        force_path_style: false,
    }
}

/// An issuer spec signing for [`s3_target`] with the rules `allow`, given
/// as JSON or as `AllowRule`s.
pub(crate) fn issuer_spec(allow: impl Serialize) -> ClusterGrantIssuerSpec {
    ClusterGrantIssuerSpec {
        s3: s3_target(),
        allow: serde_json::from_value(serde_json::to_value(allow).expect("rules as JSON"))
            .expect("fixture rules"),
    }
}

/// The ClusterGrantIssuer `name` with [`issuer_spec`]`(allow)`.
pub(crate) fn issuer(name: &str, allow: impl Serialize) -> ClusterGrantIssuer {
    ClusterGrantIssuer::new(name, issuer_spec(allow))
}

/// The base grant's Secret as the apiserver's metadata-only view lists it:
/// "g" in "ns" (uid "secret-uid"), controlled by the UploadGrant "g" whose
/// uid is `owner_uid`.
pub(crate) fn secret_meta(owner_uid: &str) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "g", "namespace": "ns", "uid": "secret-uid", "ownerReferences": [{
            "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant", "name": "g",
            "uid": owner_uid, "controller": true
        }]}
    })
}

/// A Secret named like the base grant's ("g" in "ns"), with nothing else set.
pub(crate) fn secret() -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some("g".into());
    secret.metadata.namespace = Some("ns".into());
    secret
}

/// A plan to sign [`valid`] for the first time (spec hash "h"), with
/// nothing held yet: tests set what they are about.
pub(crate) fn sign_plan() -> SignPlan {
    SignPlan {
        valid: valid(),
        target: s3_target(),
        spec_hash: "h".into(),
        renewal: false,
        current: None,
        ours: None,
        legacy_fields: false,
        stale: None,
        renew_request: None,
        upload: UploadPlan::NotMultipart,
    }
}
