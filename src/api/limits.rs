//! Reserved names and limits of an UploadGrant's spec, in one place: the CRD
//! schema's CEL rules (src/api/grant.rs) refuse them at apply time, and the
//! controller's validate step (src/controller/validate.rs) refuses them again
//! for objects stored before a schema change.

use std::time::Duration;

/// Label and annotation keys under this prefix belong to the operator: it
/// keeps its bookkeeping on the Secret there (`grants.io/grant`,
/// `grants.io/spec-hash`, `grants.io/issued-at`, `grants.io/expires-at`,
/// `grants.io/refresh-at`, `grants.io/url-fingerprint`).
pub const RESERVED_KEY_PREFIX: &str = "grants.io/";

/// The one key outside [`RESERVED_KEY_PREFIX`] the operator sets on every
/// Secret it writes (as a label, value `upload-grant-operator`).
pub const RESERVED_MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";

/// Longest prefix (a DNS subdomain) of a Kubernetes qualified name, before the `/`.
pub const MAX_QUALIFIED_NAME_PREFIX_LEN: usize = 253;

/// Longest name part of a Kubernetes qualified name (after the `/`, if any).
pub const MAX_QUALIFIED_NAME_LEN: usize = 63;

/// Longest Kubernetes label value.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// Kubernetes' limit on all annotations of one object: the sum of the bytes of
/// every key and value (256 KiB).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Most bytes the keys and values of `spec.secret.labels`, and of
/// `spec.secret.annotations`, may each total: what a consumer plausibly needs
/// (a reloader's annotation, a team label), far below Kubernetes' 256 KiB.
/// Every grant's spec sits in the operator's cache, so this also bounds what
/// one tenant's grants cost the operator's memory.
pub const MAX_SECRET_METADATA_BYTES: usize = 4096;

/// Most labels `spec.secret.labels` may hold. Kubernetes sets no such limit;
/// the bound keeps the CEL rules on the map within the apiserver's cost budget.
pub const MAX_SECRET_LABELS: usize = 64;

/// Most annotations `spec.secret.annotations` may hold; a CEL cost bound like
/// [`MAX_SECRET_LABELS`].
pub const MAX_SECRET_ANNOTATIONS: usize = 64;

/// S3's limit on user-defined metadata, 2 KB counted as 2048 bytes. From the
/// Amazon S3 User Guide, "Working with object metadata"
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html>):
/// "Within the PUT request header, the user-defined metadata is limited to 2 KB
/// in size. The size of user-defined metadata is measured by taking the sum of
/// the number of bytes in the UTF-8 encoding of each key and value." The key is
/// the name without its `x-amz-meta-` prefix.
pub const MAX_METADATA_BYTES: usize = 2048;

/// Most entries `spec.metadata` may hold. S3 counts only bytes; the bound keeps
/// the CEL rules on the map within the apiserver's cost budget.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Shortest `refreshBefore`: a renewal has to be signed, written and seen by
/// the pod before the old URL expires, and a very short window (`1ms`) means it
/// lands after expiry.
pub const MIN_REFRESH_BEFORE: Duration = Duration::from_secs(10);

/// How long a renewed URL may take to reach a pod that mounts the Secret as a
/// volume, by default. The kubelet rewrites mounted Secrets only when it syncs
/// the pod: every `syncFrequency` (1m by default) plus up to half of it as
/// jitter, so 90 s; the rest covers the write, the kubelet's watch and its
/// atomic file swap. Every renewal lands at least this long before the URL it
/// replaces expires (`refreshBefore` is raised to it), and no ttl shorter than
/// [`min_ttl`] of it is signed. Operators whose consumers read the Secret
/// through the API, or whose kubelets sync faster, may set it lower.
pub const DEFAULT_PROPAGATION_BUDGET: Duration = Duration::from_secs(120);

/// Shortest `ttl` of a grant, any budget: a URL renewed every few seconds
/// would only load the API.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// Shortest `ttl` an operator with this propagation budget signs: the budget
/// and half of it again, so that a URL lives at least a third of its ttl
/// before it is renewed.
pub fn min_ttl(propagation_budget: Duration) -> Duration {
    MIN_TTL.max(propagation_budget + propagation_budget / 2)
}
/// `name` cut to at most `max` characters for a label value or an
/// annotation name: a longer one keeps its start and gains `hash_len` hex
/// digits of a SHA-256 of the whole, so it stays readable and two long names
/// do not share a value. (The hash lengths in use differ and are part of what
/// is already written in clusters.)
pub fn shorten(name: &str, max: usize, hash_len: usize) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= max {
        return name.to_owned();
    }
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    let start: String = name.chars().take(max - hash_len - 1).collect();
    format!(
        "{}-{}",
        start.trim_end_matches(['.', '-']),
        &hash[..hash_len]
    )
}
