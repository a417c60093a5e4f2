//! Status: the last stage. Writes what a report says into the grant's status,
//! and only when it changes.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::decide::Report;
use super::{Context, MANAGER};
use crate::api::condition::set_ready;
use crate::api::{UploadGrant, UploadGrantStatus};
use crate::error::Result;

/// The status a report gives a grant whose status is `old`.
pub fn status_of(grant: &UploadGrant, report: &Report, now: Time) -> UploadGrantStatus {
    let old = grant.status.clone().unwrap_or_default();
    let time = |t: SystemTime| Time(jiff::Timestamp::try_from(t).unwrap_or_default());
    let issued = report.issued.as_ref();
    let mut new = UploadGrantStatus {
        conditions: old.conditions,
        secret_name: report.secret_name.clone(),
        issued_at: issued.map(|s| time(s.issued_at)),
        expires_at: issued.map(|s| time(s.expires_at)),
        refresh_at: issued.and_then(|s| s.refresh_at.map(time)),
        url_fingerprint: issued.map(|s| s.fingerprint.clone()),
        upload_id: issued
            .and_then(|s| s.upload.as_ref().map(|u| u.id.clone()))
            .or_else(|| report.upload_id.clone()),
        observed_generation: old.observed_generation,
    };
    set_ready(
        &mut new,
        report.reason,
        report.message.clone(),
        grant.metadata.generation,
        now,
    );
    new
}

/// Writes the status the report gives; returns whether it changed, which
/// it does not when the cache already shows it or it was just written.
pub async fn write(grant: &UploadGrant, ctx: &Context, report: &Report) -> Result<bool> {
    let old = grant.status.clone().unwrap_or_default();
    let new = status_of(grant, report, Time(jiff::Timestamp::now()));
    if new == old {
        return Ok(false);
    }
    let written = WrittenStatus::of(grant, &old, &new);
    if ctx.status_written(written) {
        return Ok(false);
    }
    ctx.forget_status(grant);
    let patch = serde_json::json!({
        "apiVersion": "grants.io/v1alpha1",
        "kind": "UploadGrant",
        "status": new,
    });
    let namespace = grant.namespace().unwrap_or_default();
    Api::<UploadGrant>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &grant.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.record_status(written);
    Ok(true)
}

/// A status write as hashes: which grant (its uid), the status the cache
/// showed before it, and the status written, both without transition times
/// (which a reconcile working from a stale cache would set afresh). A write
/// is skipped only while the cache still shows the older status and the
/// same status would be written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenStatus {
    pub grant: u64,
    pub before: u64,
    pub status: u64,
}

impl WrittenStatus {
    fn of(grant: &UploadGrant, before: &UploadGrantStatus, status: &UploadGrantStatus) -> Self {
        let timeless = |s: &UploadGrantStatus| {
            let mut s = s.clone();
            for c in &mut s.conditions {
                c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
            }
            super::hash(&serde_json::to_vec(&s).unwrap_or_default())
        };
        WrittenStatus {
            grant: super::grant_key(grant),
            before: timeless(before),
            status: timeless(status),
        }
    }
}
