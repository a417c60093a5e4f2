//! What the operator knows of a Secret it manages, as its metadata cache
//! keeps it, and who holds a Secret name: pure, so the decision stage can
//! read it without touching the cluster.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ManagedFieldsEntry, ObjectMeta, OwnerReference,
};
use kube::ResourceExt;
use kube::api::PartialObjectMeta;

use super::build::IssuedState;
use super::cache::{Key, Keyed, Uid};
use crate::api::UploadGrant;
use crate::api::secret::MANAGER;

/// What the operator keeps of a Secret it manages: who it is, its controller
/// owner, and the URL state parsed from its annotations. The annotations
/// themselves would be most of the cache's memory with thousands of grants.
#[derive(Debug, Clone)]
pub struct ManagedSecret {
    key: Key,
    uid: Option<Uid>,
    /// The UploadGrant that controls it (`controlled_by_grant`).
    owner: Option<Owner>,
    pub state: Option<IssuedState>,
    /// Written by an operator version that created Secrets with a plain
    /// create: fields it set then are owned by an Update entry that no apply
    /// can remove, until `adopt_legacy_fields` hands them to the applier.
    pub legacy_fields: bool,
}

/// A Secret's controlling grant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    /// None: the Secret's own name, as it mostly is.
    name: Option<Box<str>>,
    uid: Uid,
}

impl From<PartialObjectMeta<Secret>> for ManagedSecret {
    fn from(secret: PartialObjectMeta<Secret>) -> Self {
        ManagedSecret::from_meta(secret.metadata)
    }
}

impl ManagedSecret {
    /// What the cache will hold of a Secret this operator just wrote.
    pub fn written(secret: &Secret) -> Self {
        ManagedSecret::from_meta(secret.metadata.clone())
    }

    fn from_meta(meta: ObjectMeta) -> Self {
        let owner = controlling_grant(&meta).map(|o| Owner {
            name: (meta.name.as_ref() != Some(&o.name)).then(|| o.name.as_str().into()),
            uid: Uid::new(&o.uid),
        });
        ManagedSecret {
            legacy_fields: legacy_entry(meta.managed_fields.as_deref().unwrap_or_default())
                .is_some(),
            state: meta
                .annotations
                .as_ref()
                .and_then(IssuedState::from_annotations),
            uid: meta.uid.as_deref().map(Uid::new),
            owner,
            key: Key::new(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            ),
        }
    }

    /// The Secret's name.
    pub fn name_any(&self) -> String {
        self.key.name().to_owned()
    }

    /// The Secret's namespace.
    pub fn namespace(&self) -> Option<String> {
        Some(self.key.namespace().to_owned())
    }

    /// The Secret's uid.
    pub fn uid(&self) -> Option<String> {
        self.uid.as_ref().map(Uid::to_string)
    }

    /// The name of the grant that controls the Secret.
    pub fn owner_name(&self) -> Option<&str> {
        let owner = self.owner.as_ref()?;
        Some(owner.name.as_deref().unwrap_or(self.key.name()))
    }

    /// The uid of the grant that controls the Secret.
    pub fn owner_uid(&self) -> Option<String> {
        self.owner.as_ref().map(|o| o.uid.to_string())
    }

    /// A Secret of `owner_uid`'s holding `state`, for tests.
    #[cfg(test)]
    pub fn for_test(uid: &str, owner_uid: &str, state: Option<IssuedState>) -> Self {
        ManagedSecret {
            key: Key::new("ns", "g"),
            uid: Some(Uid::new(uid)),
            owner: Some(Owner {
                name: Some("grant".into()),
                uid: Uid::new(owner_uid),
            }),
            state,
            legacy_fields: false,
        }
    }
}

/// The index of the Update entry an older operator version left by creating
/// the Secret.
fn legacy_entry(entries: &[ManagedFieldsEntry]) -> Option<usize> {
    entries.iter().position(|e| {
        e.manager.as_deref() == Some(MANAGER)
            && e.operation.as_deref() == Some("Update")
            && e.subresource.as_deref().unwrap_or_default().is_empty()
    })
}

/// A JSON patch that gives the applier every field the legacy Update entry
/// owns: merged into the operator's Apply entry, or the entry becomes one.
/// The `test`s make the server refuse it if the list changed meanwhile.
pub fn adoption_patch(entries: &[ManagedFieldsEntry]) -> Option<serde_json::Value> {
    let legacy = legacy_entry(entries)?;
    let entry = |i: usize, op: &str| {
        serde_json::json!([
            {"op": "test", "path": format!("/metadata/managedFields/{i}/manager"), "value": MANAGER},
            {"op": "test", "path": format!("/metadata/managedFields/{i}/operation"), "value": op},
        ])
    };
    let applied = entries.iter().position(|e| {
        e.manager.as_deref() == Some(MANAGER) && e.operation.as_deref() == Some("Apply")
    });
    let mut ops = entry(legacy, "Update")
        .as_array()
        .cloned()
        .unwrap_or_default();
    match applied {
        None => ops.push(serde_json::json!(
            {"op": "replace", "path": format!("/metadata/managedFields/{legacy}/operation"), "value": "Apply"}
        )),
        Some(a) => {
            let mut fields = fields_of(&entries[a]);
            union(&mut fields, &fields_of(&entries[legacy]));
            ops.extend(entry(a, "Apply").as_array().cloned().unwrap_or_default());
            ops.push(serde_json::json!(
                {"op": "replace", "path": format!("/metadata/managedFields/{a}/fieldsV1"), "value": fields}
            ));
            ops.push(serde_json::json!({"op": "remove", "path": format!("/metadata/managedFields/{legacy}")}));
        }
    }
    Some(serde_json::Value::Array(ops))
}

fn fields_of(entry: &ManagedFieldsEntry) -> serde_json::Value {
    entry
        .fields_v1
        .as_ref()
        .map_or_else(|| serde_json::json!({}), |f| f.0.clone())
}

/// Adds every field of `other` to the field set `into` (both fieldsV1 trees).
fn union(into: &mut serde_json::Value, other: &serde_json::Value) {
    let (Some(into), Some(other)) = (into.as_object_mut(), other.as_object()) else {
        return;
    };
    for (key, value) in other {
        match into.get_mut(key) {
            Some(existing) => union(existing, value),
            None => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

impl Keyed for ManagedSecret {
    fn key(&self) -> Key {
        self.key.clone()
    }
}

/// Who holds the Secret name a grant wants.
#[derive(Debug)]
pub enum Slot {
    /// No Secret by that name.
    Free,
    /// A Secret this grant controls.
    Ours(Box<ManagedSecret>),
    /// Somebody else's Secret: never modified or deleted.
    Foreign,
}

/// Whether an UploadGrant is the Secret's controller: the Secrets the
/// operator writes always say so.
pub fn controlled_by_grant(meta: &ObjectMeta) -> bool {
    controlling_grant(meta).is_some()
}

/// The uid of the grant that controls the Secret, if one does.
pub fn controlling_grant_uid(meta: &ObjectMeta) -> Option<&str> {
    controlling_grant(meta).map(|o| o.uid.as_str())
}

fn controlling_grant(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    refs.iter().find(|o| {
        o.controller == Some(true)
            && o.kind == "UploadGrant"
            && o.api_version.starts_with("grants.io/")
    })
}

/// Whether the grant with uid `uid` controls the Secret.
pub fn owned_by_uid(secret: &ManagedSecret, uid: &Uid) -> bool {
    secret.owner.as_ref().is_some_and(|o| o.uid == *uid)
}

pub fn owned_by(secret: &ManagedSecret, grant: &UploadGrant) -> bool {
    let Some(uid) = grant.uid() else { return false };
    owned_by_uid(secret, &Uid::new(&uid))
}

pub fn classify(secret: Option<ManagedSecret>, grant: &UploadGrant) -> Slot {
    match secret {
        None => Slot::Free,
        Some(secret) if owned_by(&secret, grant) => Slot::Ours(Box::new(secret)),
        Some(_) => Slot::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::secret::MAX_STATE_VALUE_LEN;
    use crate::fixtures::{grant, secret_meta};

    #[test]
    fn the_cache_keeps_identity_owner_and_url_state_only() {
        let mut meta = secret_meta("grant-uid");
        meta["metadata"]["labels"] =
            serde_json::json!({"app.kubernetes.io/managed-by": "upload-grant-operator"});
        meta["metadata"]["annotations"] = serde_json::json!({
            "grants.io/spec-hash": "abc", "grants.io/issued-at": "2026-11-29T10:00:00Z",
            "grants.io/expires-at": "2026-11-29T11:00:00Z", "grants.io/refresh-at": "2026-11-29T10:40:00Z",
            "grants.io/url-fingerprint": "sha256:0123", "note": "kept by the server, not by us",
        });
        meta["metadata"]["ownerReferences"]
            .as_array_mut()
            .expect("list")
            .push(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "x"}));
        let partial: PartialObjectMeta<Secret> = serde_json::from_value(meta).expect("fixture");
        let cached = ManagedSecret::from(partial);
        assert!(owned_by(&cached, &grant(serde_json::json!({}))));
        assert_eq!(cached.uid().as_deref(), Some("secret-uid"));
        assert_eq!(cached.owner_uid().as_deref(), Some("grant-uid"));
        assert_eq!(cached.owner_name(), Some("g"));
        assert_eq!(cached.key().as_str(), "ns/g");
        let state = cached.state.expect("parsed from the annotations");
        assert_eq!(state.spec_hash, "abc");
        assert_eq!(state.fingerprint, "sha256:0123");
        assert!(state.refresh_at.is_some_and(|r| r < state.expires_at));
    }

    /// Secrets anybody could label as ours: only one an UploadGrant
    /// controls is taken in, and its state only at the lengths the operator
    /// writes.
    #[test]
    fn only_a_grant_controlled_secret_with_short_state_is_read() {
        let owner = |api_version: &str, kind: &str, controller: bool| {
            let mut meta = secret_meta("grant-uid");
            meta["metadata"]["ownerReferences"] = serde_json::json!([{
                "apiVersion": api_version, "kind": kind, "name": "g", "uid": "grant-uid",
                "controller": controller,
            }]);
            let partial: PartialObjectMeta<Secret> = serde_json::from_value(meta).expect("fixture");
            controlled_by_grant(&partial.metadata)
        };
        assert!(owner("grants.io/v1alpha1", "UploadGrant", true));
        assert!(
            !owner("grants.io/v1alpha1", "UploadGrant", false),
            "not the controller"
        );
        assert!(
            !owner("example.com/v1", "UploadGrant", true),
            "another group's kind"
        );
        assert!(!owner("grants.io/v1alpha1", "ClusterGrantIssuer", true));
        assert!(
            !controlled_by_grant(&ObjectMeta::default()),
            "no owner at all"
        );

        // A valid state, with `extra` annotations set over it.
        let state = |extra: &[(&str, String)]| {
            let mut annotations: std::collections::BTreeMap<String, String> = [
                ("grants.io/spec-hash", "abc"),
                ("grants.io/issued-at", "2026-11-29T10:00:00Z"),
                ("grants.io/expires-at", "2026-11-29T11:00:00Z"),
                ("grants.io/url-fingerprint", "sha256:0123"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            for (name, value) in extra {
                annotations.insert((*name).to_owned(), value.clone());
            }
            IssuedState::from_annotations(&annotations)
        };
        let long = "x".repeat(MAX_STATE_VALUE_LEN + 1);
        for name in [
            "grants.io/spec-hash",
            "grants.io/url-fingerprint",
            "grants.io/renew-requested-at",
            "grants.io/replaces",
        ] {
            let at_limit = "x".repeat(MAX_STATE_VALUE_LEN);
            assert!(state(&[(name, at_limit)]).is_some(), "{name}");
            assert_eq!(state(&[(name, long.clone())]), None, "{name}: garbled");
        }
    }

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        serde_json::from_value(serde_json::json!({
            "manager": manager, "operation": operation, "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": fields,
        }))
        .expect("fixture entry")
    }

    /// Applies a JSON patch to a managedFields list, as the server would.
    fn patched(
        entries: &[ManagedFieldsEntry],
        patch: serde_json::Value,
    ) -> Vec<ManagedFieldsEntry> {
        let mut doc = serde_json::json!({"metadata": {"managedFields": entries}});
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("patch");
        json_patch::patch(&mut doc, &patch).expect("tests pass");
        serde_json::from_value(doc["metadata"]["managedFields"].clone()).expect("entries")
    }

    #[test]
    fn legacy_create_fields_are_handed_to_the_applier() {
        let created = serde_json::json!({"f:metadata": {"f:annotations": {"f:grants.io/refresh-at": {}}}, "f:type": {}});
        let applied = serde_json::json!({"f:metadata": {"f:annotations": {"f:grants.io/expires-at": {}}}, "f:data": {"f:url": {}}});
        let kubectl = entry(
            "kubectl-label",
            "Update",
            serde_json::json!({"f:metadata": {"f:labels": {"f:x": {}}}}),
        );

        // Created and never applied: the entry becomes an Apply entry.
        let only = [kubectl.clone(), entry(MANAGER, "Update", created.clone())];
        let after = patched(&only, adoption_patch(&only).expect("a patch"));
        assert_eq!(after[1].operation.as_deref(), Some("Apply"));
        assert_eq!(after[0], kubectl, "other managers are untouched");
        assert_eq!(legacy_entry(&after), None);

        // Created, then applied: one Apply entry owning both sets.
        let both = [
            entry(MANAGER, "Update", created),
            kubectl.clone(),
            entry(MANAGER, "Apply", applied),
        ];
        let after = patched(&both, adoption_patch(&both).expect("a patch"));
        assert_eq!(after.len(), 2);
        assert_eq!(after[0], kubectl);
        let fields = &after[1].fields_v1.as_ref().expect("fields").0;
        assert!(
            fields["f:metadata"]["f:annotations"]
                .get("f:grants.io/refresh-at")
                .is_some()
        );
        assert!(
            fields["f:metadata"]["f:annotations"]
                .get("f:grants.io/expires-at")
                .is_some()
        );
        assert!(fields.get("f:type").is_some() && fields.get("f:data").is_some());

        // Nothing to adopt.
        assert_eq!(adoption_patch(&after), None);
    }
}
