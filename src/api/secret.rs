//! The names the operator writes under, part of the contract: its field
//! manager and finalizer, and the type, labels and annotations of the
//! Secrets it writes (DESIGN.md). Tools and users select and read by them.

use super::limits::RESERVED_MANAGED_BY_KEY;

/// The name the operator writes under: field manager, event reporter.
pub const MANAGER: &str = "upload-grant-operator";
/// Holds a grant until its Secret is gone: deletion must revoke even where
/// ownerReference garbage collection is slow or absent.
pub const FINALIZER: &str = "grants.io/revoke-secret";
pub const SECRET_TYPE: &str = "grants.io/presigned-url";
pub const MANAGED_BY_LABEL: &str = RESERVED_MANAGED_BY_KEY;
pub const MANAGED_BY: &str = "upload-grant-operator";
pub const GRANT_LABEL: &str = "grants.io/grant";
/// The grant's shard among [`crate::shard::LABEL_SHARDS`], so that a
/// replica's Secret watch selects its shards by label whatever `--shards`
/// is (`crate::shard::label_value`).
pub const SHARD_LABEL: &str = "grants.io/shard";
pub const SPEC_HASH_ANNOTATION: &str = "grants.io/spec-hash";
pub const ISSUED_AT_ANNOTATION: &str = "grants.io/issued-at";
pub const EXPIRES_AT_ANNOTATION: &str = "grants.io/expires-at";
pub const REFRESH_AT_ANNOTATION: &str = "grants.io/refresh-at";
pub const FINGERPRINT_ANNOTATION: &str = "grants.io/url-fingerprint";
/// On a grant: a request to renew now (`kubectl grant renew` sets it to the
/// time of asking). On its Secret: the request the URL in it answers, so
/// each request is acted on once, also across restarts and failovers.
pub const RENEW_REQUEST_ANNOTATION: &str = "grants.io/renew-requested-at";
/// The fingerprint of the URL this one replaced; absent on a grant's first
/// URL. Rollout restarts are owed only to a replaced URL.
pub const REPLACES_ANNOTATION: &str = "grants.io/replaces";
/// On a multipart grant's Secret: the upload its part URLs belong to, so
/// that a restart finds it in the (metadata-only) cache.
pub const UPLOAD_ID_ANNOTATION: &str = "grants.io/upload-id";
/// With it: the upload's `BUCKET/KEY`. Both are for people and consumers:
/// the operator acts only on the grant's status (`status.upload`), which the
/// namespace cannot write.
pub const UPLOAD_OBJECT_ANNOTATION: &str = "grants.io/upload-object";

/// Longest value of a state annotation the operator reads back (a hash, a
/// fingerprint, a time, a renew request): what it writes is far shorter, and
/// a longer value is not its own. A grant's renew request longer than this
/// is not acted on, so the operator never writes what it would not read.
pub const MAX_STATE_VALUE_LEN: usize = 128;
