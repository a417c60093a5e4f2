//! Allow rules that allow more than they name. A field left out of a rule
//! allows everything in that dimension, which is easy to write by accident:
//! each such rule is named in the issuer's status, and the chart's
//! admission policy warns at `kubectl apply` with the same checks.

use crate::api::{AllowRule, ClusterGrantIssuerSpec, Method};

/// One way a rule can allow more than an admin may mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RiskKind {
    /// No namespace selector, or an empty one.
    AllNamespaces,
    /// No key prefixes.
    AnyKey,
    /// DELETE allowed (methods omitted or listing it).
    Delete,
    /// Uploads allowed without maxContentLength.
    UnboundedUpload,
    /// `{namespace}` in a key prefix without a following '/'.
    NamespaceWithoutSlash,
    /// Uploads allowed without kmsKeyIds: any KMS key may be named.
    AnyKmsKey,
    /// `"*"` among the buckets.
    AnyBucket,
    /// A key prefix that is empty (any key), or that has `{name}` but no
    /// `{namespace}`: grants of the same name in two namespaces reach the
    /// same keys, and a tenant picks the name.
    UnisolatedPrefix,
    /// Multipart grants allowed without maxParts: a grant may hold 10000
    /// part URLs (about 675 KB of Secret), all signed again on every renewal.
    UnboundedParts,
}

impl RiskKind {
    pub const ALL: [RiskKind; 9] = [
        RiskKind::AllNamespaces,
        RiskKind::AnyKey,
        RiskKind::Delete,
        RiskKind::UnboundedUpload,
        RiskKind::NamespaceWithoutSlash,
        RiskKind::AnyKmsKey,
        RiskKind::AnyBucket,
        RiskKind::UnisolatedPrefix,
        RiskKind::UnboundedParts,
    ];

    /// What the admin reads, after `allow[i]: `.
    pub fn explain(self) -> &'static str {
        match self {
            RiskKind::AllNamespaces => {
                "applies to every namespace (no namespaces selector, or an empty one)"
            }
            RiskKind::AnyKey => "allows any key (no keyPrefixes)",
            RiskKind::Delete => "allows DELETE (methods omitted or listing it)",
            RiskKind::UnboundedUpload => "allows uploads of any size (no maxContentLength)",
            RiskKind::NamespaceWithoutSlash => {
                "has a key prefix with {namespace} not followed by '/': namespace team also matches team-b/..."
            }
            RiskKind::AnyKmsKey => "allows uploads naming any KMS key (no kmsKeyIds)",
            RiskKind::AnyBucket => "allows any bucket (buckets lists \"*\")",
            RiskKind::UnisolatedPrefix => {
                "has a key prefix that is empty or has {name} without {namespace}: grants of the same name in other namespaces reach the same keys"
            }
            RiskKind::UnboundedParts => {
                "allows multipart grants without maxParts (up to 10000 part URLs in one Secret)"
            }
        }
    }
}

/// A risky rule: its index in `allow` and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Risk {
    pub rule: usize,
    pub kind: RiskKind,
}

impl std::fmt::Display for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "allow[{}] {}", self.rule, self.kind.explain())
    }
}

/// Every risk of every rule, in rule order.
pub fn risks(issuer: &ClusterGrantIssuerSpec) -> Vec<Risk> {
    issuer
        .allow
        .iter()
        .enumerate()
        .flat_map(|(rule, r)| {
            RiskKind::ALL
                .into_iter()
                .filter(|kind| applies(*kind, r))
                .map(move |kind| Risk { rule, kind })
        })
        .collect()
}

fn applies(kind: RiskKind, rule: &AllowRule) -> bool {
    match kind {
        RiskKind::AllNamespaces => rule.namespaces.as_ref().is_none_or(|s| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        }),
        RiskKind::AnyKey => rule.key_prefixes.is_none(),
        RiskKind::Delete => allows(rule, Method::Delete),
        RiskKind::UnboundedUpload => uploads(rule) && rule.max_content_length.is_none(),
        RiskKind::NamespaceWithoutSlash => rule
            .key_prefixes
            .iter()
            .flatten()
            .any(|p| namespace_without_slash(p)),
        RiskKind::AnyKmsKey => uploads(rule) && rule.kms_key_ids.is_none(),
        RiskKind::AnyBucket => rule.buckets.iter().any(|b| b == "*"),
        RiskKind::UnisolatedPrefix => rule
            .key_prefixes
            .iter()
            .flatten()
            .any(|p| unisolated_prefix(p)),
        // Multipart grants are PUTs: a rule without PUT allows none.
        RiskKind::UnboundedParts => {
            rule.multipart && allows(rule, Method::Put) && rule.max_parts.is_none()
        }
    }
}

/// Whether the rule allows an upload: a PUT or a POST.
fn uploads(rule: &AllowRule) -> bool {
    allows(rule, Method::Put) || allows(rule, Method::Post)
}

fn allows(rule: &AllowRule, method: Method) -> bool {
    rule.methods.as_ref().is_none_or(|m| m.contains(&method))
}

/// Empty (any key), or naming the grant but not its namespace.
fn unisolated_prefix(prefix: &str) -> bool {
    prefix.is_empty() || (prefix.contains("{name}") && !prefix.contains("{namespace}"))
}

pub(crate) fn namespace_without_slash(prefix: &str) -> bool {
    prefix
        .match_indices("{namespace}")
        .any(|(at, p)| !prefix[at + p.len()..].starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::issuer_spec;

    fn kinds(allow: serde_json::Value) -> Vec<(usize, RiskKind)> {
        risks(&issuer_spec(allow))
            .into_iter()
            .map(|r| (r.rule, r.kind))
            .collect()
    }

    /// A rule that names everything it allows.
    fn tight() -> serde_json::Value {
        serde_json::json!({"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"],
            "keyPrefixes": ["{namespace}/"], "methods": ["PUT", "GET"], "maxContentLength": "10Mi",
            "kmsKeyIds": ["alias/reports"]})
    }

    fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut rule = tight();
        if let Some(o) = rule.as_object_mut() {
            match value {
                serde_json::Value::Null => o.remove(field),
                v => o.insert(field.into(), v),
            };
        }
        rule
    }

    #[test]
    fn a_rule_that_names_everything_is_not_risky() {
        assert_eq!(kinds(serde_json::json!([tight()])), []);
        let read_only = serde_json::json!({"namespaces": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
            "buckets": ["b"], "keyPrefixes": ["shared/"], "methods": ["GET", "HEAD"]});
        assert_eq!(
            kinds(serde_json::json!([read_only])),
            [],
            "reads need no size or key bounds"
        );
    }

    #[test]
    fn each_field_left_out_is_named() {
        use RiskKind::*;
        let cases = [
            (with("namespaces", serde_json::Value::Null), AllNamespaces),
            (with("namespaces", serde_json::json!({})), AllNamespaces),
            (
                with("namespaces", serde_json::json!({"matchLabels": {}})),
                AllNamespaces,
            ),
            (with("keyPrefixes", serde_json::Value::Null), AnyKey),
            (
                with("methods", serde_json::json!(["GET", "DELETE"])),
                Delete,
            ),
            (
                with("maxContentLength", serde_json::Value::Null),
                UnboundedUpload,
            ),
            (
                with("keyPrefixes", serde_json::json!(["shared/", "{namespace}"])),
                NamespaceWithoutSlash,
            ),
            (
                with("keyPrefixes", serde_json::json!(["x/{namespace}-{name}/"])),
                NamespaceWithoutSlash,
            ),
            (with("kmsKeyIds", serde_json::Value::Null), AnyKmsKey),
        ];
        for (rule, want) in cases {
            let shown = rule.to_string();
            assert_eq!(
                kinds(serde_json::json!([tight(), rule])),
                [(1, want)],
                "{shown}"
            );
        }
    }

    #[test]
    fn buckets_prefixes_and_parts_that_do_not_isolate_tenants() {
        use RiskKind::*;
        use serde_json::json;
        let multipart = |extra: serde_json::Value| {
            let mut rule = with("multipart", json!(true));
            if let (Some(o), Some(e)) = (rule.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            rule
        };
        let cases: [(&str, serde_json::Value, &[RiskKind]); 15] = [
            (
                "a wildcard bucket",
                with("buckets", json!(["*"])),
                &[AnyBucket],
            ),
            (
                "a wildcard among named buckets",
                with("buckets", json!(["b", "*"])),
                &[AnyBucket],
            ),
            (
                "a bucket with * in its name is a name",
                with("buckets", json!(["b*"])),
                &[],
            ),
            (
                "an empty prefix",
                with("keyPrefixes", json!([""])),
                &[UnisolatedPrefix],
            ),
            (
                "an empty prefix among others",
                with("keyPrefixes", json!(["{namespace}/", ""])),
                &[UnisolatedPrefix],
            ),
            (
                "{name} alone",
                with("keyPrefixes", json!(["{name}/"])),
                &[UnisolatedPrefix],
            ),
            (
                "{name} under a shared folder",
                with("keyPrefixes", json!(["uploads/{name}-"])),
                &[UnisolatedPrefix],
            ),
            (
                "{name} under {namespace}",
                with("keyPrefixes", json!(["{namespace}/{name}/"])),
                &[],
            ),
            (
                "{name} before {namespace}/",
                with("keyPrefixes", json!(["{name}/{namespace}/"])),
                &[],
            ),
            (
                "a literal shared prefix is a choice, not an accident",
                with("keyPrefixes", json!(["shared/"])),
                &[],
            ),
            (
                "multipart without maxParts",
                multipart(json!({})),
                &[UnboundedParts],
            ),
            (
                "multipart with maxParts",
                multipart(json!({"maxParts": 100})),
                &[],
            ),
            (
                "maxContentLength is not a parts cap",
                multipart(json!({"maxContentLength": "1Gi"})),
                &[UnboundedParts],
            ),
            (
                "multipart on a rule without PUT allows no multipart grant",
                multipart(json!({"methods": ["GET"]})),
                &[],
            ),
            (
                "all three at once",
                multipart(json!({"buckets": ["*"], "keyPrefixes": ["{name}"]})),
                &[AnyBucket, UnisolatedPrefix, UnboundedParts],
            ),
        ];
        for (case, rule, want) in cases {
            let want: Vec<(usize, RiskKind)> = want.iter().map(|k| (1, *k)).collect();
            assert_eq!(kinds(json!([tight(), rule])), want, "{case}");
        }
    }

    #[test]
    fn the_new_risks_read_like_the_others() {
        let said = |kind| Risk { rule: 2, kind }.to_string();
        assert_eq!(
            said(RiskKind::AnyBucket),
            "allow[2] allows any bucket (buckets lists \"*\")"
        );
        assert_eq!(
            said(RiskKind::UnisolatedPrefix),
            "allow[2] has a key prefix that is empty or has {name} without {namespace}: grants of the same name in other namespaces reach the same keys"
        );
        assert_eq!(
            said(RiskKind::UnboundedParts),
            "allow[2] allows multipart grants without maxParts (up to 10000 part URLs in one Secret)"
        );
    }

    #[test]
    fn a_post_is_an_upload() {
        use RiskKind::*;
        let post = with("methods", serde_json::json!(["POST"]));
        assert_eq!(kinds(serde_json::json!([post])), []);
        let mut open = with("methods", serde_json::json!(["POST", "GET"]));
        if let Some(o) = open.as_object_mut() {
            o.remove("maxContentLength");
            o.remove("kmsKeyIds");
        }
        assert_eq!(
            kinds(serde_json::json!([open])),
            [(0, UnboundedUpload), (0, AnyKmsKey)]
        );
    }

    #[test]
    fn omitted_methods_allow_delete_and_unbounded_uploads() {
        use RiskKind::*;
        let all = kinds(serde_json::json!([{"buckets": ["*"]}]));
        let found: Vec<RiskKind> = all.iter().map(|(_, k)| *k).collect();
        assert_eq!(
            found,
            [
                AllNamespaces,
                AnyKey,
                Delete,
                UnboundedUpload,
                AnyKmsKey,
                AnyBucket
            ]
        );
        assert_eq!(
            Risk {
                rule: 0,
                kind: Delete
            }
            .to_string(),
            "allow[0] allows DELETE (methods omitted or listing it)"
        );
    }
}
