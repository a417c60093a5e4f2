//! What the grant cache keeps of each UploadGrant: a compact projection,
//! expanded back into the grant a pass reads when the pass starts.
//!
//! With tens of thousands of grants the cache is most of the operator's
//! memory. An `UploadGrant` is over a kilobyte before any string, most of it
//! fields that are empty (object metadata, optional spec fields) and a dozen
//! small allocations each; the cache holds its key, the few fields the
//! dispatcher orders it by and, as one JSON buffer, the rest a pass reads.
//! Expanding costs microseconds per pass.
//!
//! The JSON is kept LZ4-compressed against [`DICTIONARY`], a body of the
//! shape every body repeats (field names, the finalizer, the Ready
//! condition's words): a typical 640-byte body keeps 221 bytes.
//! Packing takes a few microseconds per watch event, and unpacking as long
//! per pass (and per grant on the rare change of an issuer, which looks
//! for its grants).
//!
//! A spec may carry up to 4 KiB each of Secret labels and annotations, 2 KiB
//! of object metadata and 16 rollout targets: 15 KiB that only a pass which
//! writes needs. A grant with more than [`MAX_KEPT_MAPS`] of them is kept
//! without them, and its pass reads it from the apiserver (one GET).

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};

use super::cache::{Key, Keyed, Uid};
use crate::api::secret::{MAX_STATE_VALUE_LEN, RENEW_REQUEST_ANNOTATION};
use crate::api::{UploadGrant, UploadGrantSpec, UploadGrantStatus};
use crate::error::{Error, Result};

/// The most bytes of keys and values of the Secret's labels, annotations
/// and rollout targets and of the object metadata that a grant's projection
/// keeps; a grant with more keeps none of them. A typical grant has a few
/// labels, and its whole projection is under 1 KiB.
pub const MAX_KEPT_MAPS: usize = 2048;

/// A grant as the cache keeps it.
#[derive(Debug, Clone)]
pub struct CachedGrant {
    key: Key,
    uid: Option<Uid>,
    /// `spec.secret.name`, when it names the Secret (else the grant's name
    /// does): the dispatcher finds the Secret without expanding the body.
    secret_name: Option<Box<str>>,
    /// Suspended or deleted: what the dispatch queue orders it by
    /// (`queue::Urgency`).
    revoking: bool,
    /// The body lacks the maps of a spec with more than [`MAX_KEPT_MAPS`].
    partial: bool,
    /// The status's refresh and expiry times, when it shows a URL that is
    /// renewed.
    renewal: Option<(SystemTime, SystemTime)>,
    /// `Body` as JSON, packed by [`pack`].
    body: Box<[u8]>,
}

/// What `CachedGrant::body` holds: of the metadata, the generation, the
/// deletion time, finalizers and a renew request of a length the operator
/// acts on.
#[derive(Serialize)]
struct BodyRef<'a> {
    metadata: &'a ObjectMeta,
    spec: &'a UploadGrantSpec,
    status: Option<&'a UploadGrantStatus>,
}

#[derive(Deserialize)]
struct Body {
    metadata: ObjectMeta,
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
        let key = Key::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let renew = meta
            .annotations
            .and_then(|mut a| a.remove_entry(RENEW_REQUEST_ANNOTATION))
            .filter(|(_, v)| v.len() <= MAX_STATE_VALUE_LEN);
        let kept = ObjectMeta {
            generation: meta.generation,
            deletion_timestamp: meta.deletion_timestamp,
            finalizers: meta.finalizers,
            annotations: renew.map(|entry| [entry].into()),
            ..ObjectMeta::default()
        };
        let mut spec = grant.spec;
        let status = grant.status;
        let partial = writer_maps_len(&spec) > MAX_KEPT_MAPS;
        if partial {
            drop_writer_maps(&mut spec);
        }
        let json = serde_json::to_vec(&BodyRef {
            metadata: &kept,
            spec: &spec,
            status: status.as_ref(),
        })
        .map_err(Error::Serialize)?;
        let body = pack(&json);
        let time = |t: Option<&Time>| t.map(|t| SystemTime::from(t.0));
        let renewal = status
            .as_ref()
            .and_then(|s| Some((time(s.refresh_at.as_ref())?, time(s.expires_at.as_ref())?)));
        Ok(CachedGrant {
            key,
            uid: meta.uid.as_deref().map(Uid::new),
            secret_name: spec.secret.and_then(|s| s.name).map(String::into_boxed_str),
            revoking: spec.suspend || kept.deletion_timestamp.is_some(),
            partial,
            renewal,
            body,
        })
    }

    /// The grant as `new` kept it: for a `partial` one, without the spec's
    /// metadata and the Secret's labels, annotations and rollout targets.
    pub fn grant(&self) -> Result<UploadGrant> {
        let body: Body = serde_json::from_slice(&unpack(&self.body)?).map_err(Error::Serialize)?;
        let mut metadata = body.metadata;
        metadata.name = Some(self.key.name().to_owned());
        metadata.namespace = Some(self.key.namespace().to_owned());
        metadata.uid = self.uid.as_ref().map(Uid::to_string);
        Ok(UploadGrant {
            metadata,
            spec: body.spec,
            status: body.status,
        })
    }

    /// The grant's name.
    pub fn name_any(&self) -> String {
        self.key.name().to_owned()
    }

    /// The grant's namespace.
    pub fn namespace(&self) -> Option<String> {
        Some(self.key.namespace().to_owned())
    }

    pub fn uid(&self) -> Option<&Uid> {
        self.uid.as_ref()
    }

    /// The name of the grant's Secret.
    pub fn secret_name(&self) -> &str {
        self.secret_name.as_deref().unwrap_or(self.key.name())
    }

    /// Kept without what only a pass that writes reads: the pass reads the
    /// grant from the apiserver.
    pub fn partial(&self) -> bool {
        self.partial
    }

    /// The issuer the spec names, if it names one: read from the body
    /// alone, for the rare change of an issuer that looks for its grants.
    pub fn issuer_ref(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Doc {
            spec: Spec,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            issuer_ref: Option<Ref>,
        }
        #[derive(Deserialize)]
        struct Ref {
            name: String,
        }
        let body = unpack(&self.body)
            .inspect_err(|e| {
                let grant = self.key.as_str();
                tracing::error!(grant, error = %e, "the cache's copy of a grant is corrupt");
            })
            .ok()?;
        let doc: Doc = serde_json::from_slice(&body).ok()?;
        Some(doc.spec.issuer_ref?.name)
    }

    /// Deleted or suspended: its next pass revokes what it holds.
    pub fn revoking(&self) -> bool {
        self.revoking
    }

    /// When the URL the status shows is renewed, and when it expires.
    pub fn renewal(&self) -> Option<(SystemTime, SystemTime)> {
        self.renewal
    }
}

/// What LZ4 matches a body against, besides the body itself: a body whose
/// words are these repeats few of them. Only this process reads what it
/// packed, so the dictionary may change from one release to the next. The
/// typical grant's shape comes last, where the encoder looks first.
const DICTIONARY: &[u8] = br#"{"metadata":{"annotations":{"grants.io/renew-requested-at":""},"deletionTimestamp":"","finalizers":["grants.io/revoke-secret"],"generation":2},"spec":{"bucket":"","contentLength":0,"contentLengthRange":{"max":"","min":""},"contentType":"application/octet-stream","issuerRef":{"name":""},"key":"","metadata":{},"method":"POST","multipart":{"partSize":"","parts":0},"notAfter":"","refreshBefore":"","refreshPolicy":"OnDemand","secret":{"annotations":{},"labels":{},"name":"","rolloutRestartTargets":[{"kind":"Deployment","name":""}]},"serverSideEncryption":{"kmsKeyId":"","type":"aws:kms"},"successActionStatus":201,"suspend":true,"ttl":"15m"},"status":{"conditions":[{"lastTransitionTime":"","message":"","observedGeneration":2,"reason":"Forbidden","status":"False","type":"Ready"}],"upload":{"bucket":"","key":"","requestedAt":"","specHash":""},"uploadId":"","observedGeneration":2}}{"metadata":{"finalizers":["grants.io/revoke-secret"],"generation":1},"spec":{"bucket":"","issuerRef":{"name":""},"key":"uploads/","method":"GET","refreshPolicy":"Always","suspend":false,"ttl":"1h"},"status":{"conditions":[{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"URL valid until 2026-01-01T00:00:00Z; renews at 2026-01-01T00:00:00Z","observedGeneration":1,"reason":"Issued","status":"True","type":"Ready"}],"expiresAt":"2026-01-01T00:00:00Z","issuedAt":"2026-01-01T00:00:00Z","observedGeneration":1,"refreshAt":"2026-01-01T00:00:00Z","secretName":"","urlFingerprint":""}}"#;

/// A body as the cache keeps it: LZ4 against [`DICTIONARY`], its length
/// first.
fn pack(json: &[u8]) -> Box<[u8]> {
    lz4_flex::block::compress_prepend_size_with_dict(json, DICTIONARY).into_boxed_slice()
}

/// The JSON [`pack`] packed. It fails only if the cache's own bytes were
/// corrupted.
fn unpack(packed: &[u8]) -> Result<Vec<u8>> {
    lz4_flex::block::decompress_size_prepended_with_dict(packed, DICTIONARY).map_err(|e| {
        Error::Serialize(serde::de::Error::custom(format_args!(
            "the cached grant does not unpack: {e}"
        )))
    })
}

/// Bytes of keys and values in the spec's object metadata and the Secret's
/// labels, annotations and rollout targets: what only a pass that writes
/// reads.
fn writer_maps_len(spec: &UploadGrantSpec) -> usize {
    let map = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let secret = spec.secret.as_ref().map_or(0, |s| {
        let targets = s.rollout_restart_targets.iter();
        map(&s.labels) + map(&s.annotations) + targets.map(|t| t.name.len() + 16).sum::<usize>()
    });
    spec.metadata.as_ref().map_or(0, map) + secret
}

/// Drops what [`writer_maps_len`] counts.
fn drop_writer_maps(spec: &mut UploadGrantSpec) {
    spec.metadata = None;
    if let Some(secret) = spec.secret.as_mut() {
        secret.labels.clear();
        secret.annotations.clear();
        secret.rollout_restart_targets.clear();
    }
}

impl Keyed for CachedGrant {
    fn key(&self) -> Key {
        self.key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{grant, grant_with};
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
        assert_eq!(cached.issuer_ref().as_deref(), Some("team"));
        assert_eq!(cached.renewal(), Some((refresh, expires)));
        assert!(!cached.revoking());
        assert_eq!(cached.key().as_str(), "ns/g");
        let back = cached.grant().expect("expands");
        assert_eq!(back.spec, full.spec);
        assert_eq!(back.status, full.status);
        assert_eq!(back.uid(), full.uid());
        assert_eq!(back.metadata.finalizers, full.metadata.finalizers);
        assert_eq!(back.metadata.generation, Some(3));
        assert_eq!(back.name_any(), "g");
        assert_eq!(back.namespace().as_deref(), Some("ns"));
        assert_eq!(back.metadata.resource_version, None);
        assert_eq!(back.metadata.labels, None);
        assert_eq!(back.metadata.owner_references, None);
        assert_eq!(
            back.metadata.annotations,
            Some([(RENEW_REQUEST_ANNOTATION.to_owned(), "r1".to_owned())].into())
        );
    }

    /// A spec with more than `MAX_KEPT_MAPS` of the maps only a writing
    /// pass reads is kept without them; the rest comes back, and the grant
    /// says it is partial. A small one is kept whole, whatever its status.
    #[test]
    fn keeps_a_large_spec_in_part() {
        let big = |n: usize| -> serde_json::Map<String, serde_json::Value> {
            (0..n)
                .map(|i| (format!("example.com/k{i:02}"), "v".repeat(60).into()))
                .collect()
        };
        let spec = serde_json::json!({
            "multipart": {"partSize": "8Mi", "parts": 2},
            "metadata": big(20),
            "secret": {"name": "s", "labels": big(30), "annotations": big(30),
                "rolloutRestartTargets": [{"kind": "Deployment", "name": "d"}]},
        });
        let mut full = grant(spec);
        full.metadata.uid = Some("6f1c2b3a-1d2e-4f5a-9b8c-00000000123f".into());
        full.status = Some(UploadGrantStatus {
            upload_id: Some("u".into()),
            ..UploadGrantStatus::default()
        });
        let cached = CachedGrant::new(full.clone()).expect("projects");
        assert!(cached.partial());
        let kept = unpack(&cached.body).expect("unpacks").len();
        assert!(kept < 1024, "{kept}");
        assert_eq!(cached.secret_name(), "s");
        let back = cached.grant().expect("expands");
        assert_eq!(back.uid(), full.uid());
        assert_eq!(back.status, full.status);
        assert_eq!(back.spec.multipart, full.spec.multipart);
        assert_eq!(back.spec.key, full.spec.key);
        assert_eq!(back.spec.metadata, None);
        let secret = back.spec.secret.expect("the template");
        assert_eq!(secret.name.as_deref(), Some("s"));
        assert!(secret.labels.is_empty() && secret.annotations.is_empty());
        assert!(secret.rollout_restart_targets.is_empty());

        // A long status alone leaves the spec whole.
        let mut long = grant(serde_json::json!({"secret": {"labels": big(3)}}));
        long.status = Some(UploadGrantStatus {
            secret_name: Some("x".repeat(8 * MAX_KEPT_MAPS)),
            ..UploadGrantStatus::default()
        });
        assert!(!CachedGrant::new(long).expect("projects").partial());

        let small = CachedGrant::new(grant(serde_json::json!({"secret": {"labels": big(3)}})))
            .expect("projects");
        assert!(!small.partial());
        assert_eq!(small.secret_name(), "g");
        let labels = small
            .grant()
            .expect("expands")
            .spec
            .secret
            .map(|s| s.labels);
        assert_eq!(labels.map(|l| l.len()), Some(3));
    }

    /// A typical grant's body packs to a fraction of its JSON and comes
    /// back byte for byte; so does one the dictionary knows nothing of.
    #[test]
    fn packs_a_typical_body_to_a_fraction() {
        let typical = grant_with(serde_json::json!({
            "metadata": {"finalizers": [crate::api::secret::FINALIZER]},
            "spec": {"issuerRef": {"name": "team-a"}, "bucket": "team-a-uploads",
                "key": "reports/2026/q4-7781.csv", "method": "PUT", "ttl": "6h"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                    "message": "URL valid until 2026-12-07T17:00:00Z; renews at 2026-12-07T15:48:00Z",
                    "lastTransitionTime": "2026-12-07T11:00:00Z", "observedGeneration": 2}],
                "secretName": "g", "issuedAt": "2026-12-07T11:00:00Z",
                "expiresAt": "2026-12-07T17:00:00Z", "refreshAt": "2026-12-07T15:48:00Z",
                "urlFingerprint": "3f9a1c2b7d4e8f60", "observedGeneration": 2},
        }));
        let cached = CachedGrant::new(typical.clone()).expect("projects");
        let json = unpack(&cached.body).expect("unpacks");
        assert!(json.len() > 600, "{}", json.len());
        assert!(
            cached.body.len() * 2 < json.len(),
            "{} of {}",
            cached.body.len(),
            json.len()
        );
        let back = cached.grant().expect("expands");
        let value = |g: &UploadGrant| serde_json::to_value(g).expect("serialises");
        assert_eq!(value(&back), value(&typical));

        let odd: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        assert_eq!(unpack(&pack(&odd)).expect("unpacks"), odd);
        assert!(unpack(&pack(&odd)[..100]).is_err());
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
