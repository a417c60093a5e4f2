//! The AWS policies that allow no more than the issuers do: the IAM policy
//! for the operator's role (a URL can do only what its signer may), and a
//! guardrail bucket policy per bucket. Pure: issuers in, JSON out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::duration::parse_duration;
use crate::api::{AllowRule, ClusterGrantIssuer, Method};
use crate::signing::MAX_PRESIGN;

/// Where the generated ARNs point.
#[derive(Debug, Clone)]
pub struct Options {
    /// The ARN partition: aws, aws-cn or aws-us-gov.
    pub partition: String,
    /// Limit the bucket guardrails to requests signed by this role.
    pub role_arn: Option<String>,
    /// Deny requests that do not come through this VPC endpoint.
    pub vpce: Option<String>,
}

/// The S3 action a presigned URL for `method` needs.
pub fn action(method: Method) -> &'static str {
    match method {
        // A browser form upload is authorized as PutObject.
        Method::Put | Method::Post => "s3:PutObject",
        // S3 authorizes HEAD as GetObject.
        Method::Get | Method::Head => "s3:GetObject",
        Method::Delete => "s3:DeleteObject",
    }
}

/// What the operator itself calls for a multipart grant, on its objects:
/// CreateMultipartUpload (and the parts and completion it signs) is
/// authorized as PutObject; ListParts, then HeadObject (GetObject) to tell
/// a completed upload from an aborted one; AbortMultipartUpload on revoke.
pub const MULTIPART_OBJECT_ACTIONS: [&str; 4] = [
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:GetObject",
];
/// On the bucket: ListMultipartUploads, to find an upload created just
/// before a crash and not yet recorded.
pub const MULTIPART_BUCKET_ACTION: &str = "s3:ListBucketMultipartUploads";

/// The IAM policy the operator's role needs: per action, the objects some
/// rule lets a grant reach. `{namespace}` and `{name}` become `*`, which
/// also matches '/': the role may sign for a little more than the rules,
/// and the operator's own checks hold the rest.
pub fn iam_policy(issuers: &[ClusterGrantIssuer], options: &Options) -> Value {
    let mut by_action: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for rule in issuers.iter().flat_map(|i| &i.spec.allow) {
        let resources = object_resources(rule, &options.partition);
        for method in methods(rule) {
            by_action
                .entry(action(method))
                .or_default()
                .extend(resources.iter().cloned());
        }
        if rule.multipart {
            for action in MULTIPART_OBJECT_ACTIONS {
                by_action
                    .entry(action)
                    .or_default()
                    .extend(resources.iter().cloned());
            }
            by_action
                .entry(MULTIPART_BUCKET_ACTION)
                .or_default()
                .extend(bucket_resources(rule, &options.partition));
        }
    }
    let statements: Vec<Value> = by_action
        .into_iter()
        .map(|(action, resources)| {
            json!({
                "Sid": action.trim_start_matches("s3:"),
                "Effect": "Allow",
                "Action": action,
                "Resource": minimal(resources),
            })
        })
        .collect();
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// A bucket policy for each bucket the issuers name ("*" has none): deny
/// presigned requests older than the longest maxTtl any rule allows on the
/// bucket, requests not signed with SigV4, and optionally requests from
/// outside a VPC endpoint.
pub fn bucket_policies(
    issuers: &[ClusterGrantIssuer],
    options: &Options,
) -> BTreeMap<String, Value> {
    let mut longest: BTreeMap<String, Duration> = BTreeMap::new();
    for rule in issuers.iter().flat_map(|i| &i.spec.allow) {
        let ttl = rule
            .max_ttl
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(MAX_PRESIGN);
        for bucket in rule.buckets.iter().filter(|b| *b != "*") {
            let entry = longest.entry(bucket.clone()).or_default();
            *entry = (*entry).max(ttl);
        }
    }
    longest
        .into_iter()
        .map(|(bucket, ttl)| {
            let policy = bucket_policy(&bucket, ttl, options);
            (bucket, policy)
        })
        .collect()
}

fn bucket_policy(bucket: &str, max_ttl: Duration, options: &Options) -> Value {
    let arn = format!("arn:{}:s3:::{bucket}", options.partition);
    let resources = json!([arn, format!("{arn}/*")]);
    let deny = |sid: &str, mut condition: serde_json::Map<String, Value>| {
        if let Some(role) = &options.role_arn {
            condition.insert("ArnEquals".into(), json!({"aws:PrincipalArn": role}));
        }
        json!({"Sid": sid, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": resources, "Condition": condition})
    };
    let cond = |v: Value| v.as_object().cloned().unwrap_or_default();
    let mut statements = vec![
        deny(
            "DenyPresignedOlderThanMaxTtl",
            cond(json!({
                "StringEquals": {"s3:authType": "REST-QUERY-STRING"},
                "NumericGreaterThan": {"s3:signatureAge": max_ttl.as_millis().to_string()},
            })),
        ),
        deny(
            "DenyNotSigV4",
            cond(json!({"StringNotEquals": {"s3:signatureversion": "AWS4-HMAC-SHA256"}})),
        ),
    ];
    if let Some(vpce) = &options.vpce {
        statements.push(deny(
            "DenyOutsideVpcEndpoint",
            cond(json!({"StringNotEquals": {"aws:SourceVpce": vpce}})),
        ));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn methods(rule: &AllowRule) -> Vec<Method> {
    rule.methods.clone().unwrap_or_else(|| Method::ALL.to_vec())
}

/// The object ARNs a rule reaches: each bucket with each key prefix.
fn object_resources(rule: &AllowRule, partition: &str) -> Vec<String> {
    let prefixes: Vec<String> = match &rule.key_prefixes {
        Some(p) => p.iter().map(|p| wildcard_prefix(p)).collect(),
        None => vec![String::new()],
    };
    rule.buckets
        .iter()
        .flat_map(|bucket| {
            let bucket = if bucket == "*" {
                "*".to_owned()
            } else {
                escape(bucket)
            };
            prefixes
                .iter()
                .map(move |p| format!("arn:{partition}:s3:::{bucket}/{p}*"))
        })
        .collect()
}

/// The bucket ARNs a rule names.
fn bucket_resources(rule: &AllowRule, partition: &str) -> Vec<String> {
    rule.buckets
        .iter()
        .map(|bucket| {
            let bucket = if bucket == "*" {
                "*".to_owned()
            } else {
                escape(bucket)
            };
            format!("arn:{partition}:s3:::{bucket}")
        })
        .collect()
}

/// A key prefix as an ARN pattern: its own `*`, `?` and `$` taken literally,
/// its `{namespace}` and `{name}` as any text.
fn wildcard_prefix(prefix: &str) -> String {
    escape(prefix)
        .replace("{namespace}", "*")
        .replace("{name}", "*")
}

/// IAM reads `*` and `?` as wildcards and `${…}` as a variable.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' => out.push_str("${*}"),
            '?' => out.push_str("${?}"),
            '$' => out.push_str("${$}"),
            c => out.push(c),
        }
    }
    out
}

/// Drops every resource another one already covers.
fn minimal(resources: BTreeSet<String>) -> Vec<String> {
    let all: Vec<&String> = resources.iter().collect();
    all.iter()
        .filter(|r| !all.iter().any(|o| o != *r && glob(o, r)))
        .map(|r| (*r).clone())
        .collect()
}

/// Whether the pattern `p` (`*` any text) matches `text`, read literally:
/// then every key `text` matches as a pattern, `p` matches too.
fn glob(p: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (p.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::issuer;

    fn options() -> Options {
        Options {
            partition: "aws".into(),
            role_arn: None,
            vpce: None,
        }
    }

    #[test]
    fn actions_per_method_and_objects_per_bucket_and_prefix() {
        let issuers = [
            issuer(
                "a",
                json!([
                    {"buckets": ["reports"], "keyPrefixes": ["{namespace}/", "{name}.csv"], "methods": ["PUT", "HEAD"]},
                    {"buckets": ["reports", "logs"], "keyPrefixes": ["team-a/"], "methods": ["GET"]},
                ]),
            ),
            issuer(
                "b",
                json!([{"buckets": ["archive"], "methods": ["DELETE"]}]),
            ),
        ];
        let want = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "DeleteObject", "Effect": "Allow", "Action": "s3:DeleteObject",
             "Resource": ["arn:aws:s3:::archive/*"]},
            {"Sid": "GetObject", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": ["arn:aws:s3:::logs/team-a/*", "arn:aws:s3:::reports/*.csv*", "arn:aws:s3:::reports/*/*"]},
            {"Sid": "PutObject", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": ["arn:aws:s3:::reports/*.csv*", "arn:aws:s3:::reports/*/*"]},
        ]});
        // reports/team-a/* is inside reports/*/* and left out.
        assert_eq!(iam_policy(&issuers, &options()), want);
    }

    #[test]
    fn a_multipart_rule_adds_what_the_operator_calls_itself() {
        let issuers = [issuer(
            "a",
            json!([{"buckets": ["reports"], "keyPrefixes": ["in/"], "methods": ["PUT"], "multipart": true},
                   {"buckets": ["other"], "methods": ["PUT"]}]),
        )];
        let objects = json!(["arn:aws:s3:::reports/in/*"]);
        let want = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "AbortMultipartUpload", "Effect": "Allow", "Action": "s3:AbortMultipartUpload",
             "Resource": objects},
            {"Sid": "GetObject", "Effect": "Allow", "Action": "s3:GetObject", "Resource": objects},
            {"Sid": "ListBucketMultipartUploads", "Effect": "Allow",
             "Action": "s3:ListBucketMultipartUploads", "Resource": ["arn:aws:s3:::reports"]},
            {"Sid": "ListMultipartUploadParts", "Effect": "Allow",
             "Action": "s3:ListMultipartUploadParts", "Resource": objects},
            {"Sid": "PutObject", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": ["arn:aws:s3:::other/*", "arn:aws:s3:::reports/in/*"]},
        ]});
        assert_eq!(iam_policy(&issuers, &options()), want);
    }

    #[test]
    fn a_form_upload_needs_put_object() {
        assert_eq!(action(Method::Post), "s3:PutObject");
        let issuers = [issuer(
            "a",
            json!([{"buckets": ["reports"], "keyPrefixes": ["in/"], "methods": ["POST"]}]),
        )];
        let want = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "PutObject", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": ["arn:aws:s3:::reports/in/*"]},
        ]});
        assert_eq!(iam_policy(&issuers, &options()), want);
    }

    #[test]
    fn omitted_fields_allow_everything_and_literal_wildcards_are_escaped() {
        let policy = iam_policy(
            &[issuer(
                "a",
                json!([{"buckets": ["*"]}, {"buckets": ["b"], "keyPrefixes": ["what?/$*"]}]),
            )],
            &options(),
        );
        let statements = policy["Statement"].as_array().cloned().unwrap_or_default();
        let actions: Vec<&str> = statements
            .iter()
            .filter_map(|s| s["Action"].as_str())
            .collect();
        assert_eq!(actions, ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]);
        assert_eq!(statements[2]["Resource"], json!(["arn:aws:s3:::*/*"]));
        let narrow = iam_policy(
            &[issuer(
                "a",
                json!([{"buckets": ["b"], "keyPrefixes": ["what?/$*"], "methods": ["PUT"]}]),
            )],
            &options(),
        );
        assert_eq!(
            narrow["Statement"][0]["Resource"],
            json!(["arn:aws:s3:::b/what${?}/${$}${*}*"])
        );
    }

    #[test]
    fn bucket_guardrails_use_the_longest_max_ttl_per_bucket() {
        let issuers = [issuer(
            "a",
            json!([
                {"buckets": ["reports"], "maxTtl": "1h"},
                {"buckets": ["reports", "logs"], "maxTtl": "90m"},
                {"buckets": ["open"]},
                {"buckets": ["*"], "maxTtl": "999h"},
            ]),
        )];
        let opts = Options {
            role_arn: Some("arn:aws:iam::111122223333:role/ugo".into()),
            vpce: Some("vpce-0abc".into()),
            ..options()
        };
        let policies = bucket_policies(&issuers, &opts);
        assert_eq!(
            policies.keys().collect::<Vec<_>>(),
            ["logs", "open", "reports"]
        );
        let reports = &policies["reports"]["Statement"];
        assert_eq!(reports[0]["Sid"], "DenyPresignedOlderThanMaxTtl");
        assert_eq!(
            reports[0]["Condition"]["NumericGreaterThan"]["s3:signatureAge"],
            "5400000"
        );
        assert_eq!(
            reports[0]["Condition"]["ArnEquals"]["aws:PrincipalArn"],
            "arn:aws:iam::111122223333:role/ugo"
        );
        assert_eq!(
            reports[0]["Resource"],
            json!(["arn:aws:s3:::reports", "arn:aws:s3:::reports/*"])
        );
        assert_eq!(
            reports[1]["Condition"]["StringNotEquals"]["s3:signatureversion"],
            "AWS4-HMAC-SHA256"
        );
        assert_eq!(
            reports[2]["Condition"]["StringNotEquals"]["aws:SourceVpce"],
            "vpce-0abc"
        );
        // No maxTtl: the longest ttl a grant may have, 168h.
        assert_eq!(
            policies["open"]["Statement"][0]["Condition"]["NumericGreaterThan"]["s3:signatureAge"],
            "604800000"
        );
        let plain = bucket_policies(&issuers, &options());
        let statements = plain["logs"]["Statement"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            statements.len(),
            2,
            "no VPC endpoint statement unless asked"
        );
        assert!(
            statements
                .iter()
                .all(|s| s["Condition"].get("ArnEquals").is_none())
        );
    }

    #[test]
    fn a_pattern_covers_what_it_matches_literally() {
        assert!(glob("b/*", "b/x/*"));
        assert!(glob("b/*/*", "b/team-a/*"));
        assert!(!glob("b/team-a/*", "b/*/*"));
        assert!(!glob("b/x*", "c/x*"));
        assert!(glob("*", "anything"));
    }
}
