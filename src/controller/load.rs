//! Load: the first stage of a pass, and the only one that reads. Every fact
//! a decision needs is looked up here once — the caches (issuer, namespace,
//! who holds the Secret's name), the grant's record, and, for a multipart
//! grant due a look, what S3 says of its upload — so `decide` can be pure
//! and `apply` acts only on what was loaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;

use super::context::{Context, labels_of};
use super::decide::{Decision, Deletion, Observed, Settled};
use super::managed::Slot;
use super::memo::GrantMemo;
use super::recorded::Recorded;
use super::validate::secret_name;
use super::{decide, multipart, secrets};
use crate::api::{ClusterGrantIssuer, Reason, UploadGrant};
use crate::uploads::UploadState;

/// Where the grant is in its life, as the pass found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not being deleted.
    Live,
    /// Deleting, held by a finalizer, or deleted while a pass ran.
    Deleting,
    /// The watch reported it gone. With `announce_held`, the revocation is
    /// announced also when somebody else (garbage collection) removed the
    /// Secret first, so a grant without a finalizer is announced once.
    Gone { announce_held: bool },
}

/// What a decision needs, looked up once.
pub struct Loaded<'a> {
    grant: &'a UploadGrant,
    issuer_name: Option<&'a str>,
    issuer: Option<Arc<ClusterGrantIssuer>>,
    namespace: Option<Arc<PartialObjectMeta<Namespace>>>,
    secret: Slot,
    /// What this operator last reported, if it settled this generation.
    remembered: Option<(Reason, String)>,
    propagation: Duration,
    renew_interval: Duration,
    /// Multipart grants: where the recorded upload stands, when S3 was
    /// asked in this pass.
    upload: Option<UploadState>,
    /// The upload the grant's status records (or this operator recorded a
    /// moment ago); never what its Secret says.
    recorded: Option<Recorded>,
    deletion: Option<Deletion>,
}

/// Reads everything the pass needs. A live grant whose namespace the
/// cache has not seen yet (or lost in a relist) gives None: judged as
/// unlabelled, it could be revoked although its labels allow it.
pub async fn load<'a>(
    grant: &'a UploadGrant,
    ctx: &'a Context,
    memo: &mut GrantMemo,
    phase: Phase,
) -> Option<Loaded<'a>> {
    let namespace = grant.namespace().unwrap_or_default();
    let namespace = ctx.namespaces.get(&namespace);
    if namespace.is_none() && phase == Phase::Live {
        return None;
    }
    let (issuer_name, issuer) = ctx.issuer_of(grant);
    let secret = slot(ctx, grant, memo);
    let recorded = memo.recorded(Recorded::from_status(grant));
    let (deletion, upload) = match phase {
        Phase::Live => {
            let labels = labels_of(&namespace);
            let (issuer, recorded) = (issuer.as_deref(), recorded.as_ref());
            let probe = multipart::probe(ctx, grant, memo, issuer, labels, recorded);
            (None, probe.await)
        }
        Phase::Deleting => (Some(deletion(ctx, grant, &namespace, false)), None),
        Phase::Gone { announce_held } => {
            (Some(deletion(ctx, grant, &namespace, announce_held)), None)
        }
    };
    Some(Loaded {
        grant,
        issuer_name,
        issuer,
        namespace,
        remembered: memo
            .settled(grant.metadata.generation)
            .map(|(reason, message)| (reason, message.to_owned())),
        secret,
        propagation: ctx.settings.propagation_budget,
        renew_interval: ctx.settings.renew_request_interval,
        upload,
        recorded,
        deletion,
    })
}

/// Who holds the Secret's name: the cache, or this operator's own write
/// the cache has not caught up with.
fn slot(ctx: &Context, grant: &UploadGrant, memo: &mut GrantMemo) -> Slot {
    let namespace = grant.namespace().unwrap_or_default();
    let name = secret_name(&grant.spec, &grant.name_any());
    memo.slot(secrets::cached_slot(ctx, grant, &namespace, &name), &name)
}

/// What a deleted grant's revocation needs to know.
fn deletion(
    ctx: &Context,
    grant: &UploadGrant,
    namespace: &Option<Arc<PartialObjectMeta<Namespace>>>,
    announce_held: bool,
) -> Deletion {
    // In a namespace being deleted the namespace's own deletion removes the
    // Secrets, and may already have removed this operator's Role there
    // (`operator.watchNamespaces`).
    let namespace_terminating = namespace
        .as_ref()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
    // The grant's last status says it held a URL: garbage collection may
    // have removed its Secret before this look at the cache.
    let issued = grant
        .status
        .as_ref()
        .is_some_and(|s| s.url_fingerprint.is_some());
    Deletion {
        namespace_terminating,
        held: announce_held && (issued || secrets::holds_any(ctx, grant)),
    }
}

impl Loaded<'_> {
    /// The decision on what was loaded, at `now`.
    pub fn decide(&self, now: SystemTime) -> Decision {
        decide::decide(&Observed {
            grant: self.grant,
            issuer_name: self.issuer_name,
            issuer: self.issuer.as_deref(),
            namespace_labels: self.namespace_labels(),
            secret: &self.secret,
            settled: match &self.remembered {
                Some((reason, message)) => Some(Settled {
                    reason: *reason,
                    message,
                }),
                None => Settled::from_status(self.grant),
            },
            propagation: self.propagation,
            renew_interval: self.renew_interval,
            upload: self.upload,
            recorded: self.recorded.as_ref(),
            deletion: self.deletion,
            now,
        })
    }

    /// The upload the grant recorded, which its revocation aborts.
    pub fn recorded(&self) -> Option<&Recorded> {
        self.recorded.as_ref()
    }

    /// The grant's issuer; None when it is gone.
    pub fn issuer(&self) -> Option<&ClusterGrantIssuer> {
        self.issuer.as_deref()
    }

    /// The labels of the grant's namespace, as the cache shows them.
    pub fn namespace_labels(&self) -> &BTreeMap<String, String> {
        labels_of(&self.namespace)
    }
}
