//! A multipart grant's upload as this operator recorded it in the grant's
//! status: the only upload state it acts on. The Secret names the upload
//! too, for consumers, but the namespace can edit its Secrets: nothing read
//! from one decides where the operator calls S3.
//!
//! The record is written in two steps around CreateMultipartUpload: first
//! where and when (`requested`), then the id S3 answered (`with_id`). A
//! crash in between leaves a record without an id; the upload S3 started
//! for it is then the one at its key in a short window after the request
//! (`window`), and no other upload is ever adopted or aborted.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::api::condition::ready_condition;
use crate::api::{ClusterGrantIssuerSpec, UploadGrant, UploadGrantStatus, UploadRecord};
use crate::issuer::reaches_upload;

/// How much earlier than the operator's clock says S3 may date an upload
/// it started after the request: the two clocks may disagree a little.
const CLOCK_SKEW: Duration = Duration::from_secs(15);

/// The upload a grant's status records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// None until S3 answered the request with an id.
    pub id: Option<String>,
    pub bucket: String,
    pub key: String,
    /// None for an upload recorded before records named their spec (only
    /// `uploadId`): it is taken to be at the spec's object.
    pub spec_hash: Option<String>,
    pub requested_at: Option<SystemTime>,
}

impl Recorded {
    /// The record in the grant's status, if any.
    pub fn from_status(grant: &UploadGrant) -> Option<Self> {
        Self::of(grant, grant.status.as_ref()?)
    }

    /// The record in `status`, a status of `grant`.
    pub fn of(grant: &UploadGrant, status: &UploadGrantStatus) -> Option<Self> {
        let Some(record) = &status.upload else {
            // Recorded by an earlier version: an id, at the spec's object.
            return Some(Recorded {
                id: Some(status.upload_id.clone()?),
                bucket: grant.spec.bucket.clone(),
                key: grant.spec.key.clone(),
                spec_hash: None,
                requested_at: None,
            });
        };
        Some(Recorded {
            id: status.upload_id.clone(),
            bucket: record.bucket.clone(),
            key: record.key.clone(),
            spec_hash: Some(record.spec_hash.clone()),
            requested_at: Some(SystemTime::from(record.requested_at.0)),
        })
    }

    /// A record of an upload about to be requested.
    pub fn requested(bucket: &str, key: &str, spec_hash: &str, now: SystemTime) -> Self {
        Recorded {
            id: None,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            spec_hash: Some(spec_hash.to_owned()),
            requested_at: Some(now),
        }
    }

    /// The record once S3 answered with the upload's id.
    pub fn with_id(mut self, id: String) -> Self {
        self.id = Some(id);
        self
    }

    /// Whether the upload was started for the grant's current spec. An
    /// older record without a spec hash counts when the status describes
    /// this generation.
    pub fn for_spec(&self, grant: &UploadGrant, spec_hash: &str) -> bool {
        match &self.spec_hash {
            Some(hash) => hash == spec_hash,
            None => ready_condition(grant.status.as_ref())
                .is_some_and(|c| c.observed_generation == grant.metadata.generation),
        }
    }

    /// When an upload S3 started for this record may be dated: from a
    /// little before the request (clock skew) to when the request could
    /// last have been answered. None once the id is known, or for a record
    /// without a time: no window, nothing to look for.
    pub fn window(&self, request_timeout: Duration) -> Option<(SystemTime, SystemTime)> {
        if self.id.is_some() {
            return None;
        }
        let at = self.requested_at?;
        let from = at.checked_sub(CLOCK_SKEW)?;
        Some((from, at.checked_add(request_timeout + CLOCK_SKEW)?))
    }

    /// Whether the grant's issuer lets it reach the recorded object: checked
    /// before any S3 call on the upload, whoever wrote the status.
    pub fn reachable(
        &self,
        issuer: &ClusterGrantIssuerSpec,
        grant: &UploadGrant,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let namespace = grant.namespace().unwrap_or_default();
        let who = (namespace.as_str(), labels, grant.name_any());
        reaches_upload(
            issuer,
            (who.0, who.1, who.2.as_str()),
            &self.bucket,
            &self.key,
        )
    }

    /// What the status says of it: `uploadId` and `upload`.
    pub fn to_status(&self) -> (Option<String>, Option<UploadRecord>) {
        let record = match (&self.spec_hash, self.requested_at) {
            (Some(spec_hash), Some(at)) => Some(UploadRecord {
                bucket: self.bucket.clone(),
                key: self.key.clone(),
                spec_hash: spec_hash.clone(),
                requested_at: Time(jiff::Timestamp::try_from(at).unwrap_or_default()),
            }),
            _ => None,
        };
        (self.id.clone(), record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::nightly as grant;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn with_status(status: UploadGrantStatus) -> UploadGrant {
        let mut g = grant();
        g.status = Some(status);
        g
    }

    #[test]
    fn a_record_survives_the_status() {
        let requested = Recorded::requested("b", "k", "h1", at(1_000));
        for record in [requested.clone(), requested.with_id("u1".into())] {
            let (upload_id, upload) = record.to_status();
            let g = with_status(UploadGrantStatus {
                upload_id,
                upload,
                ..Default::default()
            });
            assert_eq!(Recorded::from_status(&g), Some(record));
        }
    }

    #[test]
    fn an_older_record_is_an_id_at_the_specs_object() {
        let g = with_status(UploadGrantStatus {
            upload_id: Some("u0".into()),
            ..Default::default()
        });
        let record = Recorded::from_status(&g).expect("recorded");
        assert_eq!(
            (record.id.as_deref(), &record.bucket, &record.key),
            (Some("u0"), &g.spec.bucket, &g.spec.key)
        );
        assert_eq!(record.window(Duration::from_secs(30)), None);
        assert_eq!(record.to_status(), (Some("u0".into()), None));
        assert_eq!(Recorded::from_status(&grant()), None);
    }

    #[test]
    fn only_a_record_without_an_id_has_a_window() {
        let requested = Recorded::requested("b", "k", "h1", at(1_000));
        assert_eq!(
            requested.window(Duration::from_secs(30)),
            Some((at(985), at(1_045)))
        );
        assert_eq!(
            requested
                .with_id("u".into())
                .window(Duration::from_secs(30)),
            None
        );
    }

    #[test]
    fn a_record_is_for_the_spec_it_names() {
        let record = Recorded::requested("b", "k", "h1", at(1_000));
        let g = grant();
        assert!(record.for_spec(&g, "h1"));
        assert!(!record.for_spec(&g, "h2"));
    }
}
