//! `UploadGrant`: one presigned URL, kept fresh in a Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::{DURATION_PATTERN, format_duration};
use super::limits::{
    MAX_LABEL_VALUE_LEN, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, MAX_QUALIFIED_NAME_LEN,
    MAX_QUALIFIED_NAME_PREFIX_LEN, MAX_SECRET_ANNOTATIONS, MAX_SECRET_LABELS,
    MAX_SECRET_METADATA_BYTES, MIN_REFRESH_BEFORE, RESERVED_KEY_PREFIX, RESERVED_MANAGED_BY_KEY,
};

/// Asks for an S3 presigned URL for one object, delivered in a Secret in the
/// grant's namespace and renewed before it expires.
// kube's printcolumn(...) repeats `type_ = ...`, which this lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grants.io",
    version = "v1alpha1",
    kind = "UploadGrant",
    namespaced,
    shortname = "ug",
    category = "grants",
    status = "UploadGrantStatus",
    doc = "UploadGrant asks for an S3 presigned URL for one object, delivered in a Secret and renewed before it expires.",
    printcolumn(name = "Bucket", type_ = "string", json_path = ".spec.bucket"),
    printcolumn(name = "Key", type_ = "string", json_path = ".spec.key"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.refreshBefore) || duration(self.refreshBefore) < duration(self.ttl)").message("refreshBefore must be shorter than ttl"),
    validation = Rule::new("!has(self.contentLength) || self.method == 'PUT'").message("contentLength is only allowed when method is PUT (a POST grant bounds the size with contentLengthRange)"),
    validation = Rule::new("(!has(self.contentType) && !has(self.metadata) && !has(self.serverSideEncryption)) || self.method == 'PUT' || self.method == 'POST'").message("contentType, metadata and serverSideEncryption are only allowed when method is PUT or POST"),
    validation = Rule::new("(!has(self.contentLengthRange) && !has(self.successActionStatus)) || self.method == 'POST'").message("contentLengthRange and successActionStatus are only allowed when method is POST"),
    validation = Rule::new("!self.key.contains('${filename}') || self.method == 'POST'").message("only a POST grant's key may contain ${filename}: the form supplies the file name"),
    validation = Rule::new("!self.key.contains('${filename}') || (self.key.endsWith('${filename}') && self.key.indexOf('${filename}') == self.key.lastIndexOf('${filename}'))").message("${filename} may appear only once in key, at its end"),
    validation = Rule::new("!has(self.multipart) || self.method == 'PUT'").message("multipart is only allowed when method is PUT"),
    validation = Rule::new("!has(self.multipart) || !has(self.contentLength)").message("multipart and contentLength exclude each other: a multipart upload's size is parts × partSize at most")
)]
#[serde(rename_all = "camelCase")]
pub struct UploadGrantSpec {
    /// The ClusterGrantIssuer that signs this grant. When omitted, the
    /// operator's default issuer (flag --default-issuer) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,

    /// The S3 bucket: 3 to 63 lowercase letters, digits, dots and hyphens,
    /// starting and ending with a letter or digit.
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]*[a-z0-9]$')").message("bucket must consist of lowercase letters, digits, dots and hyphens, and start and end with a letter or digit"),
        validation = Rule::new("!self.contains('..') && !self.contains('.-') && !self.contains('-.')").message("bucket must not contain two adjacent periods or a period next to a hyphen"),
        validation = Rule::new("!self.matches('^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$')").message("bucket must not be formatted as an IP address"),
        validation = Rule::new("!self.startsWith('xn--') && !self.startsWith('sthree-') && !self.endsWith('-s3alias') && !self.endsWith('--ol-s3')").message("bucket must not use a prefix or suffix that S3 reserves (xn--, sthree-, -s3alias, --ol-s3)")
    )]
    pub bucket: String,

    /// The object key, 1 to 1024 bytes of UTF-8; the operator encodes it in the
    /// URL. A POST grant may end the key with `${filename}` (once, at the
    /// end): the form then chooses the file name, and the object lands under
    /// the part before it. Any character except control characters (U+0000 to U+001F,
    /// U+007F), and no `.` or `..` path segments (clients normalise those away,
    /// so the signature would no longer match).
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = Rule::new("size(bytes(self)) <= 1024").message("key must be at most 1024 bytes of UTF-8"),
        validation = Rule::new("!self.matches('(^|/)[.][.]?(/|$)')").message("key must not contain '.' or '..' path segments: clients normalise them away and the signature no longer matches"),
        validation = Rule::new("!self.matches('[\\\\x00-\\\\x1f\\\\x7f]')").message("key must not contain control characters (U+0000 to U+001F, U+007F)")
    )]
    pub key: String,

    /// The HTTP method the URL is signed for: PUT (upload, the default), GET
    /// (download), HEAD (read metadata), DELETE, or POST (a browser form
    /// upload: the Secret holds the form's action URL and its fields).
    #[serde(default)]
    pub method: Method,

    /// Lifetime of each URL, as a Go duration between 1m and 168h, and at
    /// least 1.5 times the operator's propagation budget (3m by default). The
    /// URL may end earlier when the operator's credentials or notAfter end
    /// first; status.expiresAt says when.
    #[serde(default = "default_ttl")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("ttl must be between 1m and 168h"))]
    pub ttl: String,

    /// How long before expiry the URL is renewed, as a Go duration of at least
    /// 10s and shorter than ttl. Defaults to a third of the URL's lifetime;
    /// never less than the operator's propagation budget (2m by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = refresh_before_minimum_rule())]
    pub refresh_before: Option<String>,

    /// Always (the default) keeps renewing the URL; Never issues it once and
    /// removes the Secret when it expires.
    #[serde(default)]
    pub refresh_policy: RefreshPolicy,

    /// No URL outlives this time (RFC 3339). Afterwards the Secret is removed
    /// and the grant is Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,

    /// If set, the URL is signed with this Content-Type and the client must
    /// send exactly it (PUT: as a header; POST: as the Content-Type form
    /// field, an exact-match condition of the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[\\\\x21-\\\\x7e][\\\\x20-\\\\x7e]*$')").message("contentType must be printable ASCII"))]
    pub content_type: Option<String>,

    /// PUT only: the exact body size in bytes the client must upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub content_length: Option<i64>,

    /// Object metadata, signed as x-amz-meta-NAME headers the client must send
    /// (POST: x-amz-meta-NAME form fields, exact-match conditions).
    /// Names are letters, digits, '.', '_' and '-'; values are printable ASCII;
    /// names and values together are at most 2048 bytes (S3's 2 KB limit), in
    /// at most 64 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxProperties" = MAX_METADATA_ENTRIES,
        "additionalProperties" = {"type": "string", "maxLength": MAX_METADATA_BYTES}
    ))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9._-]+$'))").message("metadata names may only contain letters, digits, '.', '_' and '-'"),
        validation = Rule::new("self.all(k, self[k].matches('^[\\\\x20-\\\\x7e]*$'))").message("metadata values must be printable ASCII (space to '~'): headers cannot reliably carry anything else"),
        validation = metadata_size_rule()
    )]
    pub metadata: Option<BTreeMap<String, String>>,

    /// Server-side encryption the client must request; signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,

    /// POST only: the sizes in bytes the uploaded file may have, both ends
    /// included; quantities like 10Mi. min must not exceed max, and max is
    /// at most 5Gi (S3's limit for a single upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length_range: Option<ContentLengthRange>,

    /// POST only: the status S3 answers a successful upload with, 200, 201
    /// (with an XML body describing the object) or 204 (S3's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 200 || self == 201 || self == 204").message("successActionStatus must be 200, 201 or 204"))]
    pub success_action_status: Option<i32>,

    /// PUT only: a multipart upload. The operator creates the upload with
    /// its own credentials (with contentType, metadata and
    /// serverSideEncryption) and the Secret holds one URL per part, plus
    /// the URLs that complete and abort it. Renewals re-sign for the same
    /// upload; revoking the grant aborts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart: Option<Multipart>,

    /// The Secret the URL is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTemplate>,

    /// true removes the Secret now and issues nothing until set back to false.
    #[serde(default)]
    pub suspend: bool,
}

fn default_ttl() -> String {
    "1h".to_owned()
}

// CEL rules built from the limits in super::limits, which the controller's
// validate step checks again.

fn refresh_before_minimum_rule() -> Rule {
    let min = format_duration(MIN_REFRESH_BEFORE);
    Rule::new(format!("duration(self) >= duration('{min}')"))
        .message(format!("refreshBefore must be at least {min}").as_str())
}

fn metadata_size_rule() -> Rule {
    Rule::new(format!(
        "self.map(k, size(bytes(k)) + size(bytes(self[k]))).sum() <= {MAX_METADATA_BYTES}"
    ))
    .message(
        format!("metadata names and values must total at most {MAX_METADATA_BYTES} bytes (S3's 2 KB limit on user-defined metadata)").as_str(),
    )
}

/// `field`'s keys are not the operator's own labels or annotations.
fn reserved_keys_rule(field: &str) -> Rule {
    Rule::new(format!(
        "self.all(k, !k.startsWith('{RESERVED_KEY_PREFIX}') && k != '{RESERVED_MANAGED_BY_KEY}')"
    ))
    .message(
        format!("{field} keys must not start with {RESERVED_KEY_PREFIX} or be {RESERVED_MANAGED_BY_KEY}: the operator keeps its own bookkeeping there").as_str(),
    )
}

/// `field`'s keys are Kubernetes qualified names: an optional DNS subdomain
/// prefix and '/', then a name.
fn qualified_keys_rule(field: &str) -> Rule {
    let dns_label = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
    let name_inner = MAX_QUALIFIED_NAME_LEN - 2;
    // The size test comes first so that a huge key fails fast instead of
    // running the regex into the apiserver's runtime cost limit.
    let max_len = MAX_QUALIFIED_NAME_PREFIX_LEN + 1 + MAX_QUALIFIED_NAME_LEN;
    Rule::new(format!(
        "self.all(k, size(k) <= {max_len} && k.matches('^({dns_label}([.]{dns_label})*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,{name_inner}}}[A-Za-z0-9])?$') && k.indexOf('/') <= {MAX_QUALIFIED_NAME_PREFIX_LEN})"
    ))
    .message(
        format!("{field} keys must be qualified names: an optional DNS subdomain prefix of at most {MAX_QUALIFIED_NAME_PREFIX_LEN} characters and '/', then a name of 1 to {MAX_QUALIFIED_NAME_LEN} letters, digits, '-', '_' or '.' that starts and ends with a letter or digit").as_str(),
    )
}

fn label_values_rule() -> Rule {
    Rule::new(format!(
        "self.all(k, size(self[k]) <= {MAX_LABEL_VALUE_LEN} && self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$'))"
    ))
    .message(
        format!("secret.labels values must be empty or at most {MAX_LABEL_VALUE_LEN} letters, digits, '-', '_' or '.' that start and end with a letter or digit").as_str(),
    )
}

/// `field`'s keys and values total at most [`MAX_SECRET_METADATA_BYTES`].
fn secret_metadata_size_rule(field: &str) -> Rule {
    Rule::new(format!(
        "self.map(k, size(bytes(k)) + size(bytes(self[k]))).sum() <= {MAX_SECRET_METADATA_BYTES}"
    ))
    .message(
        format!("{field} keys and values must total at most {MAX_SECRET_METADATA_BYTES} bytes")
            .as_str(),
    )
}

/// The largest size contentLengthRange.max may have: S3's limit for a
/// single upload.
pub const MAX_POST_CONTENT_LENGTH: u64 = 5 << 30;

/// A size as a quantity: an integer, or a string like `10Mi`, as CEL reads it.
const QUANTITY_BYTES: &str = "(type(x) == int ? x : quantity(x).asInteger())";

fn quantity_rule(field: &str) -> Rule {
    Rule::new(format!(
        "type(self.{field}) == int ? self.{field} >= 0 : (self.{field}.matches('^[0-9]+([.][0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$') && isQuantity(self.{field}) && quantity(self.{field}).isInteger())"
    ))
    .message(format!("contentLengthRange.{field} must be a whole, non-negative number of bytes, or a quantity like 10Mi").as_str())
}

fn range_order_rule() -> Rule {
    let min = QUANTITY_BYTES.replace('x', "self.min");
    let max = QUANTITY_BYTES.replace('x', "self.max");
    Rule::new(format!("{min} <= {max}"))
        .message("contentLengthRange.min must not be larger than max")
}

fn range_max_rule() -> Rule {
    let max = QUANTITY_BYTES.replace('x', "self.max");
    Rule::new(format!("{max} <= {MAX_POST_CONTENT_LENGTH}"))
        .message("contentLengthRange.max must be at most 5Gi, S3's limit for a single upload")
}

/// The sizes a POST upload may have, both ends included.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = quantity_rule("min"),
    validation = quantity_rule("max"),
    validation = range_order_rule(),
    validation = range_max_rule()
)]
pub struct ContentLengthRange {
    /// The smallest size in bytes, or a quantity like 1Ki.
    pub min: Size,
    /// The largest size in bytes, or a quantity like 10Mi; at most 5Gi.
    pub max: Size,
}

/// A size in bytes: an integer, or a quantity string like `10Mi`. Unlike
/// IntOrString, the integer may exceed 32 bits, as 5Gi does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Size {
    Bytes(i64),
    Quantity(String),
}

impl JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"x-kubernetes-int-or-string": true})
    }
}

/// S3's bounds on a multipart upload: parts, and the size of every part
/// but the last.
pub const MAX_MULTIPART_PARTS: u32 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;

fn part_size_rule() -> Rule {
    let bytes = QUANTITY_BYTES.replace('x', "self.partSize");
    Rule::new(format!(
        "(type(self.partSize) == int || (self.partSize.matches('^[0-9]+([.][0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$') && isQuantity(self.partSize) && quantity(self.partSize).isInteger())) && {bytes} >= {MIN_PART_SIZE} && {bytes} <= {MAX_PART_SIZE}"
    ))
    .message("multipart.partSize must be a whole number of bytes, or a quantity like 64Mi, between 5Mi and 5Gi (S3's part sizes)")
}

/// A multipart upload: how many parts, and how large each is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = part_size_rule())]
pub struct Multipart {
    /// How many part URLs the Secret holds, 1 to 10000.
    // int32: schemars says uint32, a format Kubernetes does not know and
    // `kubectl apply` / `helm install` warn about.
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub parts: u32,
    /// The size of every part but the last (which may be smaller), in bytes
    /// or as a quantity like 64Mi; 5Mi to 5Gi. The issuer's
    /// maxContentLength caps parts × partSize.
    pub part_size: Size,
}

/// Names a ClusterGrantIssuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct IssuerRef {
    /// Name of the ClusterGrantIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The HTTP method a URL is signed for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Put,
    Get,
    Head,
    Delete,
    Post,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Put,
        Method::Get,
        Method::Head,
        Method::Delete,
        Method::Post,
    ];
    /// The methods signed as a presigned URL; POST is signed as a form policy.
    pub const URL: [Method; 4] = [Method::Put, Method::Get, Method::Head, Method::Delete];

    /// Whether the method uploads an object.
    pub fn uploads(self) -> bool {
        matches!(self, Method::Put | Method::Post)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Put => "PUT",
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Delete => "DELETE",
            Method::Post => "POST",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the operator keeps renewing a URL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RefreshPolicy {
    #[default]
    Always,
    Never,
}

/// Server-side encryption headers the URL is signed with.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.kmsKeyId) || self.type == 'aws:kms'").message("kmsKeyId is only allowed with type aws:kms"))]
pub struct ServerSideEncryption {
    /// AES256 (S3-managed keys) or aws:kms.
    #[serde(rename = "type")]
    pub type_: SseType,
    /// The KMS key for aws:kms; the bucket's default key when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
}

/// A server-side encryption kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SseType {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl SseType {
    pub fn as_str(self) -> &'static str {
        match self {
            SseType::Aes256 => "AES256",
            SseType::AwsKms => "aws:kms",
        }
    }
}

/// Name, labels and annotations of the Secret the grant writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Name of the Secret; defaults to the grant's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Labels added to the Secret, at most 64, keys and values totalling at
    /// most 4 KiB. Keys are qualified names (`[prefix/]name`); values are
    /// empty or up to 63 letters, digits, '-', '_' and '.'. Keys under
    /// grants.io/ and app.kubernetes.io/managed-by are reserved for the
    /// operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_SECRET_LABELS,
        "additionalProperties" = {"type": "string", "maxLength": MAX_LABEL_VALUE_LEN}
    ))]
    #[x_kube(
        validation = reserved_keys_rule("secret.labels"),
        validation = qualified_keys_rule("secret.labels"),
        validation = label_values_rule(),
        validation = secret_metadata_size_rule("secret.labels")
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret, at most 64. Keys are qualified names
    /// (`[prefix/]name`); keys and values total at most 4 KiB. Keys under
    /// grants.io/ and app.kubernetes.io/managed-by are reserved for the
    /// operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_SECRET_ANNOTATIONS,
        "additionalProperties" = {"type": "string", "maxLength": MAX_SECRET_METADATA_BYTES}
    ))]
    #[x_kube(
        validation = reserved_keys_rule("secret.annotations"),
        validation = qualified_keys_rule("secret.annotations"),
        validation = secret_metadata_size_rule("secret.annotations")
    )]
    pub annotations: BTreeMap<String, String>,
    /// Workloads in the grant's namespace to restart, as `kubectl rollout
    /// restart` does, when a new URL replaces one in the Secret: for pods
    /// that read the URL from environment variables, which never change in
    /// a running container. Pods that mount the Secret as a volume need no
    /// restart. Needs an operator with rollout restarts enabled (Helm:
    /// rolloutRestarts.enabled). At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["kind", "name"]
    ))]
    pub rollout_restart_targets: Vec<RolloutTarget>,
}

/// A workload restarted when the grant's URL is replaced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct RolloutTarget {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: WorkloadKind,
    /// The workload's name, in the grant's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// The kinds of workload `kubectl rollout restart` restarts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// What the operator last did for the grant. It never contains the URL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadGrantStatus {
    /// Ready is True while the Secret holds a working URL; when False, the
    /// reason is one of InvalidSpec, IssuerNotFound, Forbidden,
    /// CredentialsUnavailable, SigningFailed, SecretConflict, Suspended,
    /// Expired or Completed (a multipart upload was assembled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Secret holding the current URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current URL was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// When the current URL stops working: the earliest of ttl, the signing
    /// credentials' expiry and notAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the operator will renew the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_at: Option<Time>,
    /// A short hash of the current URL, to tell URLs apart without revealing
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_fingerprint: Option<String>,
    /// Multipart grants: the upload the part URLs belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Multipart grants: the operator's own record of the upload it started
    /// (uploadId names it once S3 answered). Only this record decides which
    /// object the operator looks at or aborts uploads of, never the Secret,
    /// which the namespace can edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRecord>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Where and when the operator started a grant's multipart upload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    /// The bucket the upload is in.
    pub bucket: String,
    /// The key the upload assembles.
    pub key: String,
    /// The spec the upload was started for: a changed spec starts a new one.
    pub spec_hash: String,
    /// When the operator asked S3 to start it. An upload of this key that S3
    /// started right after, while uploadId is not yet set, is the one a crash
    /// left unrecorded: it alone is adopted or aborted.
    pub requested_at: Time,
}

/// The placeholder a POST grant's key may end with: the form substitutes
/// the uploaded file's name.
pub const FILENAME_PLACEHOLDER: &str = "${filename}";

/// The part of a key before a trailing `${filename}`; the whole key
/// otherwise: what an issuer's prefixes are matched against.
pub fn fixed_key(key: &str) -> &str {
    key.strip_suffix(FILENAME_PLACEHOLDER).unwrap_or(key)
}
