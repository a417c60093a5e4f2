//! What the grant cache keeps of each UploadGrant: a compact projection,
//! expanded back into the grant a pass reads when the pass starts.
//!
//! With tens of thousands of grants the cache is most of the operator's
//! memory. An `UploadGrant` is over a kilobyte before any string, most of it
//! fields that are empty (object metadata, optional spec fields) and a dozen
//! small allocations each; the cache holds its identity and, as one JSON
//! buffer, the spec and status. Expanding costs microseconds per pass.

use std::borrow::Cow;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::{Deserialize, Serialize};

use crate::api::secret::{MAX_STATE_VALUE_LEN, RENEW_REQUEST_ANNOTATION};
use crate::api::{UploadGrant, UploadGrantSpec, UploadGrantStatus};
use crate::error::{Error, Result};

/// A grant as the cache keeps it.
#[derive(Debug, Clone)]
pub struct CachedGrant {
    /// Name, namespace, generation, creation and deletion times, finalizers
    /// and a renew request of a length the operator acts on. The uid is in
    /// `body`: kube's cache would copy it into each entry's key.
    metadata: ObjectMeta,
    /// The issuer the spec names: a changed issuer finds its grants without
    /// expanding each.
    issuer: Option<Box<str>>,
    /// What the dispatch queue orders the grant by (`queue::Urgency`).
    suspend: bool,
    /// The status's refresh and expiry times, when it shows a URL that is
    /// renewed.
    renewal: Option<(SystemTime, SystemTime)>,
    /// `Body` as JSON.
    body: Box<[u8]>,
}

/// What `CachedGrant::body` holds.
#[derive(Serialize)]
struct BodyRef<'a> {
    uid: Option<&'a str>,
    spec: &'a UploadGrantSpec,
    status: Option<&'a UploadGrantStatus>,
}

#[derive(Deserialize)]
struct Body {
    uid: Option<String>,
    spec: UploadGrantSpec,
    status: Option<UploadGrantStatus>,
}

impl CachedGrant {
    /// Keeps what a pass reads of `grant` and drops the rest: managed
    /// fields, labels, owner references, the resource version (the watch has
    /// read it) and every annotation but a short renew request. A tenant may
    /// put 256 KiB of annotations on a grant; the cache keeps none of them.
    pub fn new(grant: UploadGrant) -> Result<Self> {
        let meta = grant.metadata;
        let body = serde_json::to_vec(&BodyRef {
            uid: meta.uid.as_deref(),
            spec: &grant.spec,
            status: grant.status.as_ref(),
        })
        .map_err(Error::Serialize)?;
        let status = grant.status.as_ref();
        let time = |t: Option<&Time>| t.map(|t| SystemTime::from(t.0));
        let renewal =
            status.and_then(|s| Some((time(s.refresh_at.as_ref())?, time(s.expires_at.as_ref())?)));
        let renew = meta
            .annotations
            .and_then(|mut a| a.remove_entry(RENEW_REQUEST_ANNOTATION))
            .filter(|(_, v)| v.len() <= MAX_STATE_VALUE_LEN);
        Ok(CachedGrant {
            suspend: grant.spec.suspend,
            renewal,
            issuer: grant.spec.issuer_ref.map(|r| r.name.into_boxed_str()),
            body: body.into_boxed_slice(),
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                generation: meta.generation,
                creation_timestamp: meta.creation_timestamp,
                deletion_timestamp: meta.deletion_timestamp,
                finalizers: meta.finalizers,
                annotations: renew.map(|entry| [entry].into()),
                ..ObjectMeta::default()
            },
        })
    }

    /// The grant a pass reads: what `new` kept.
    pub fn grant(&self) -> Result<UploadGrant> {
        let body: Body = serde_json::from_slice(&self.body).map_err(Error::Serialize)?;
        let mut metadata = self.metadata.clone();
        metadata.uid = body.uid;
        Ok(UploadGrant {
            metadata,
            spec: body.spec,
            status: body.status,
        })
    }

    /// The issuer the spec names, if it names one.
    pub fn issuer_ref(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Deleted or suspended: its next pass revokes what it holds.
    pub fn revoking(&self) -> bool {
        self.suspend || self.metadata.deletion_timestamp.is_some()
    }

    /// When the URL the status shows is renewed, and when it expires.
    pub fn renewal(&self) -> Option<(SystemTime, SystemTime)> {
        self.renewal
    }
}

/// Lets a `CachedGrant` sit in a kube-runtime cache as an UploadGrant.
impl Resource for CachedGrant {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        UploadGrant::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        UploadGrant::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        UploadGrant::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        UploadGrant::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::grant;
    use kube::ResourceExt;

    /// What a pass reads comes back whole; what no pass reads is gone.
    #[test]
    fn expands_to_the_grant_less_what_no_pass_reads() {
        let mut full = grant(serde_json::json!({"issuerRef": {"name": "team"}}));
        full.metadata.finalizers = Some(vec!["grants.io/revoke".into()]);
        full.metadata.generation = Some(3);
        full.metadata.resource_version = Some("42".into());
        full.metadata.labels = Some([("team".into(), "a".into())].into());
        full.metadata.owner_references = Some(vec![Default::default()]);
        full.metadata.annotations = Some(
            [
                ("note".to_owned(), "x".repeat(200 * 1024)),
                ("grants.io/anything".to_owned(), "x".repeat(200 * 1024)),
                (RENEW_REQUEST_ANNOTATION.to_owned(), "r1".to_owned()),
            ]
            .into(),
        );
        let (refresh, expires) = (
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_600),
        );
        full.status = Some(UploadGrantStatus {
            secret_name: Some("s".into()),
            refresh_at: Some(Time(refresh.try_into().expect("a time"))),
            expires_at: Some(Time(expires.try_into().expect("a time"))),
            ..UploadGrantStatus::default()
        });
        let cached = CachedGrant::new(full.clone()).expect("projects");
        assert_eq!(cached.issuer_ref(), Some("team"));
        assert_eq!(cached.renewal(), Some((refresh, expires)));
        assert!(!cached.revoking());
        assert!(cached.uid().is_none(), "not in the cache's key");
        let back = cached.grant().expect("expands");
        assert_eq!(back.spec, full.spec);
        assert_eq!(back.status, full.status);
        assert_eq!(back.uid(), full.uid());
        assert_eq!(back.metadata.finalizers, full.metadata.finalizers);
        assert_eq!(back.metadata.generation, Some(3));
        assert_eq!(back.metadata.resource_version, None);
        assert_eq!(back.metadata.labels, None);
        assert_eq!(back.metadata.owner_references, None);
        assert_eq!(
            back.metadata.annotations,
            Some([(RENEW_REQUEST_ANNOTATION.to_owned(), "r1".to_owned())].into())
        );
    }

    /// A renew request longer than the operator acts on is not kept.
    #[test]
    fn drops_a_renew_request_too_long_to_act_on() {
        let mut full = grant(serde_json::json!({}));
        full.metadata.annotations = Some(
            [(
                RENEW_REQUEST_ANNOTATION.to_owned(),
                "r".repeat(MAX_STATE_VALUE_LEN + 1),
            )]
            .into(),
        );
        let back = CachedGrant::new(full).and_then(|c| c.grant());
        assert_eq!(back.expect("round trip").metadata.annotations, None);
    }
}
