//! `ClusterGrantIssuer`: the platform admin's word on who may get which URLs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::DURATION_PATTERN;
use super::grant::Method;

/// Says which S3 endpoint grants are signed for, and which namespaces may get
/// URLs for which buckets, key prefixes, methods and lifetimes.
// kube's printcolumn(...) repeats `type_ = ...`, which this lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "grants.io",
    version = "v1alpha1",
    kind = "ClusterGrantIssuer",
    shortname = "cgi",
    category = "grants",
    status = "ClusterGrantIssuerStatus",
    doc = "ClusterGrantIssuer says which S3 endpoint UploadGrants are signed for and which namespaces may get which buckets, key prefixes, methods and lifetimes.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.s3.region"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.s3.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGrantIssuerSpec {
    /// The S3 service URLs are signed for.
    pub s3: S3Target,
    /// Every grant using this issuer must match at least one rule; with no
    /// rules, nothing is allowed.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
}

/// Where and how to sign.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct S3Target {
    /// The signing region, e.g. eu-west-1.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,
    /// The S3 endpoint URL; the region's AWS endpoint when omitted. Set it for
    /// S3-compatible stores. The host is part of the signature, so use the one
    /// the consumers will reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http') && url(self).getHostname() != ''").message("endpoint must be an http or https URL"))]
    pub endpoint: Option<String>,
    /// Sign path-style URLs (https://HOST/BUCKET/KEY) instead of
    /// virtual-hosted ones (https://BUCKET.HOST/KEY). Most S3-compatible
    /// stores need true.
    #[serde(default)]
    pub force_path_style: bool,
}

/// One thing the issuer allows. A grant is allowed when some rule matches its
/// namespace, bucket, key, method, ttl and size.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.maxParts) || (has(self.multipart) && self.multipart)").message("maxParts is only allowed with multipart: true (it caps a multipart grant's parts)")
)]
pub struct AllowRule {
    /// Namespaces the rule applies to, by label; {} or omitted means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Buckets the rule allows; "*" allows any.
    #[schemars(length(min = 1))]
    pub buckets: Vec<String>,
    /// Keys must start with one of these; {namespace} and {name} are replaced
    /// with the grant's namespace and name. Omitted allows any key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefixes: Option<Vec<String>>,
    /// Methods the rule allows; omitted allows all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<Method>>,
    /// The longest ttl a grant may ask for, as a Go duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub max_ttl: Option<String>,
    /// When set, a PUT grant must pin contentLength to at most this size,
    /// and a POST grant must set contentLengthRange with max at most this
    /// size (bytes, or a quantity like 100Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
    )]
    pub max_content_length: Option<String>,
    /// Multipart grants (spec.multipart) are allowed only where true;
    /// maxContentLength then caps parts × partSize.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multipart: bool,
    /// The most parts a multipart grant may ask for (spec.multipart.parts),
    /// 1 to 10000; only with multipart: true. Every part's URL is in the
    /// grant's Secret and signed again on each renewal, so this bounds what
    /// one grant costs. Omitted allows S3's 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // int32: schemars says uint32, a format Kubernetes does not know and
    // `kubectl apply` / `helm install` warn about.
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub max_parts: Option<u32>,
    /// KMS keys a grant may name in serverSideEncryption.kmsKeyId (key ids,
    /// ARNs or aliases, compared as written). Omitted allows any key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub kms_key_ids: Option<Vec<String>>,
}

/// Whether the issuer is usable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGrantIssuerStatus {
    /// Ready is True when the spec is valid and the operator holds credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
