//! Status: writes what a report says into the grant's status, and only when
//! it changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::context::{Context, hash};
use super::memo::{GrantMemo, StatusWrite};
use super::recorded::Recorded;
use super::report::{Report, status_of};
use crate::api::secret::MANAGER;
use crate::api::{UploadGrant, UploadGrantStatus};
use crate::error::Result;

/// A status write a report asks for.
pub struct Change {
    status: UploadGrantStatus,
    written: StatusWrite,
    /// The upload record it writes, when that changes.
    record: Option<Option<Recorded>>,
}

/// The status write the report asks for; None when the cache already shows
/// that status or this operator just wrote it. Known before the write, so
/// what is said of it can be chosen first.
pub fn change(grant: &UploadGrant, memo: &mut GrantMemo, report: &Report) -> Option<Change> {
    let old = grant.status.clone().unwrap_or_default();
    let recorded = memo.recorded(Recorded::from_status(grant));
    let new = status_of(
        grant,
        report,
        recorded.as_ref(),
        Time(jiff::Timestamp::now()),
    );
    if new == old {
        // The cache shows what would be written: the last write (if it was
        // this) has landed, and need not be remembered. A grant at rest
        // then keeps no record at all.
        memo.status = None;
        return None;
    }
    let written = status_write(&old, &new);
    let record = (&new.upload_id, &new.upload) != (&old.upload_id, &old.upload);
    (memo.status != Some(written)).then_some(Change {
        record: record.then(|| Recorded::of(grant, &new)),
        status: new,
        written,
    })
}

/// Writes the status, if it changes.
pub async fn write(
    grant: &UploadGrant,
    ctx: &Context,
    memo: &mut GrantMemo,
    change: Option<Change>,
) -> Result<()> {
    let Some(Change {
        status,
        written,
        record,
    }) = change
    else {
        return Ok(());
    };
    // Forgotten until the write is known to have landed.
    memo.status = None;
    let patch = serde_json::json!({
        "apiVersion": "grants.io/v1alpha1",
        "kind": "UploadGrant",
        "status": status,
    });
    let namespace = grant.namespace().unwrap_or_default();
    Api::<UploadGrant>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &grant.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    memo.status = Some(written);
    if let Some(record) = record {
        memo.remember_record(record);
    }
    Ok(())
}

/// The write from `before` to `status` as hashes, without transition times
/// (`memo::StatusWrite`).
fn status_write(before: &UploadGrantStatus, status: &UploadGrantStatus) -> StatusWrite {
    let timeless = |s: &UploadGrantStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        hash(&serde_json::to_vec(&s).unwrap_or_default())
    };
    StatusWrite {
        before: timeless(before),
        status: timeless(status),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;

    fn status(reason: &str, at: i64) -> UploadGrantStatus {
        UploadGrantStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: reason.into(),
                message: "m".into(),
                observed_generation: Some(1),
                last_transition_time: Time(
                    jiff::Timestamp::from_second(at).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                ),
            }],
            ..UploadGrantStatus::default()
        }
    }

    #[test]
    fn a_status_write_is_the_same_whatever_its_transition_times() {
        let (before, after) = (status("Issued", 10), status("Expired", 20));
        let wrote = status_write(&before, &after);
        // Computed afresh from a stale cache, a second later: the same write.
        assert_eq!(
            status_write(&status("Issued", 11), &status("Expired", 21)),
            wrote
        );
        // The cache changed meanwhile (somebody else wrote): another write.
        assert_ne!(status_write(&status("Denied", 10), &after), wrote);
        assert_ne!(status_write(&before, &status("Suspended", 20)), wrote);
    }
}
