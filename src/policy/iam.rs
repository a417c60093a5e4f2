//! The AWS policies that allow no more than the issuers do: the IAM policy
//! for the operator's role (a URL can do only what its signer may), and a
//! guardrail bucket policy per bucket. Pure: issuers in, JSON out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use crate::api::duration::parse_duration;
use crate::api::{AllowRule, ClusterGrantIssuer, Method};
use crate::issuer::selector_matches;
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

/// A namespace a rule may apply to: its name and, when known, its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// None when only the name is known (`--namespaces`): a selector can
    /// then be evaluated only on [`NAME_LABEL`].
    pub labels: Option<BTreeMap<String, String>>,
}

/// The label the apiserver sets on every namespace, to its name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// IAM's limits on a policy's size, in characters without whitespace: a
/// managed policy, and all inline policies of one role together.
pub const MANAGED_POLICY_LIMIT: usize = 6144;
pub const INLINE_ROLE_POLICY_LIMIT: usize = 10240;

/// The IAM policy, and what its reader should know: the rules, key prefixes
/// and buckets it leaves out, and why (printed on stderr).
#[derive(Debug, Clone, PartialEq)]
pub struct IamPolicy {
    pub document: Value,
    pub notes: Vec<String>,
}

/// Why no IAM policy can be written from what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    #[error(
        "{rule}: key prefix {prefix:?} has {{namespace}}, so the policy names each namespace the rule applies to: list them with --namespaces a,b,c, add Namespace objects to the -f files (kubectl get namespaces -o yaml), or read the issuers from the cluster"
    )]
    NamespacesUnknown { rule: String, prefix: String },
    #[error(
        "{rule}: its namespaces selector uses labels ({keys}), and --namespaces gives only names (and the kubernetes.io/metadata.name label), so label selectors cannot be evaluated offline: add the namespaces as Namespace objects to the -f files (kubectl get namespaces -o yaml), or read the issuers from the cluster"
    )]
    LabelsUnknown { rule: String, keys: String },
}

/// The IAM policy the operator's role needs: per action, the objects some
/// rule lets a grant reach. `{namespace}` becomes each namespace the rule
/// applies to (from `namespaces`; None when they are not known, which is
/// enough only for rules without `{namespace}`), so that no ARN reaches
/// another namespace's keys: IAM's `*` also matches '/'. `{name}` becomes
/// `*` only after the namespace; a key prefix with `{name}` before
/// `{namespace}`, or bucket `*` with key prefixes, gets no ARN (a note says
/// so), and a rule that applies to no namespace no statement.
pub fn iam_policy(
    issuers: &[ClusterGrantIssuer],
    namespaces: Option<&[Namespace]>,
    options: &Options,
) -> Result<IamPolicy, IamError> {
    let mut by_action: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut notes = Vec::new();
    for issuer in issuers {
        let issuer_name = issuer.metadata.name.as_deref().unwrap_or("(unnamed)");
        for (i, rule) in issuer.spec.allow.iter().enumerate() {
            let at = format!("issuer {issuer_name} allow[{i}]");
            let Some(reach) = reach(rule, namespaces, &options.partition, &at, &mut notes)? else {
                continue;
            };
            for method in methods(rule) {
                by_action
                    .entry(action(method))
                    .or_default()
                    .extend(reach.objects.iter().cloned());
            }
            // Multipart grants are PUTs: a rule without PUT allows none.
            if rule.multipart && methods(rule).contains(&Method::Put) {
                for action in MULTIPART_OBJECT_ACTIONS {
                    by_action
                        .entry(action)
                        .or_default()
                        .extend(reach.objects.iter().cloned());
                }
                by_action
                    .entry(MULTIPART_BUCKET_ACTION)
                    .or_default()
                    .extend(reach.buckets.iter().cloned());
            }
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
    if statements.is_empty() {
        notes.push("no rule reaches any object: the policy allows nothing".to_owned());
    }
    let document = json!({"Version": "2012-10-17", "Statement": statements});
    notes.extend(size_note(&document));
    Ok(IamPolicy { document, notes })
}

/// The ARNs one rule reaches.
#[derive(Debug, Default)]
struct Reach {
    objects: Vec<String>,
    buckets: Vec<String>,
}

/// What `rule` reaches, or None (with a note) when it reaches nothing.
fn reach(
    rule: &AllowRule,
    namespaces: Option<&[Namespace]>,
    partition: &str,
    at: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Reach>, IamError> {
    let selected = match namespaces {
        None => None,
        Some(all) => match selected(rule.namespaces.as_ref(), all, at)? {
            Ok(names) if names.is_empty() => {
                notes.push(format!(
                    "{at}: no namespace matches its namespaces selector: no statement for it"
                ));
                return Ok(None);
            }
            Ok(names) => Some(names),
            Err(e) => {
                notes.push(format!(
                    "{at}: its namespaces selector cannot be evaluated ({e}), so it allows nothing: no statement for it"
                ));
                return Ok(None);
            }
        },
    };
    let patterns: BTreeSet<String> = match &rule.key_prefixes {
        None => BTreeSet::from([String::new()]),
        Some(prefixes) if prefixes.is_empty() => {
            notes.push(format!(
                "{at}: keyPrefixes is empty, so it allows no key: no statement for it"
            ));
            return Ok(None);
        }
        Some(prefixes) => {
            let mut all = BTreeSet::new();
            for prefix in prefixes {
                all.extend(key_patterns(prefix, selected.as_deref(), at, notes)?);
            }
            all
        }
    };
    let mut reach = Reach::default();
    for bucket in &rule.buckets {
        let reached: Vec<&String> = if bucket == "*" {
            // IAM's `*` in the bucket part also matches '/': it would take
            // any key that merely contains a prefix, so only "every key"
            // keeps its meaning there.
            let whole = patterns.iter().filter(|p| p.is_empty()).collect::<Vec<_>>();
            if whole.is_empty() && !patterns.is_empty() {
                notes.push(format!(
                    "{at}: bucket \"*\" with key prefixes gets no ARN: arn:{partition}:s3:::*/PREFIX* would also match keys that only contain PREFIX, in any bucket and under any namespace's prefix; name the buckets"
                ));
            }
            whole
        } else {
            patterns.iter().collect()
        };
        if reached.is_empty() {
            continue;
        }
        let bucket = if bucket == "*" {
            "*".to_owned()
        } else {
            escape(bucket)
        };
        reach.buckets.push(format!("arn:{partition}:s3:::{bucket}"));
        reach.objects.extend(
            reached
                .into_iter()
                .map(|p| format!("arn:{partition}:s3:::{bucket}/{p}*")),
        );
    }
    Ok((!reach.objects.is_empty()).then_some(reach))
}

/// The names of the namespaces `selector` selects, sorted; the inner error
/// when the selector cannot be evaluated (the rule then allows nothing).
fn selected<'n>(
    selector: Option<&LabelSelector>,
    all: &'n [Namespace],
    at: &str,
) -> Result<Result<Vec<&'n str>, String>, IamError> {
    let mut names = Vec::new();
    for namespace in all {
        let labels = match (&namespace.labels, selector) {
            (Some(labels), _) => {
                let mut labels = labels.clone();
                labels
                    .entry(NAME_LABEL.to_owned())
                    .or_insert_with(|| namespace.name.clone());
                labels
            }
            (None, Some(selector)) if !by_name_only(selector) => {
                return Err(IamError::LabelsUnknown {
                    rule: at.to_owned(),
                    keys: selector_keys(selector).join(", "),
                });
            }
            (None, _) => BTreeMap::from([(NAME_LABEL.to_owned(), namespace.name.clone())]),
        };
        let matches = match selector {
            None => true,
            Some(selector) => match selector_matches(selector, &labels) {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            },
        };
        if matches {
            names.push(namespace.name.as_str());
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(Ok(names))
}

/// The label keys a selector looks at, other than [`NAME_LABEL`], sorted.
fn selector_keys(selector: &LabelSelector) -> Vec<&str> {
    let mut keys: Vec<&str> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .chain(
            selector
                .match_expressions
                .iter()
                .flatten()
                .map(|e| e.key.as_str()),
        )
        .filter(|k| *k != NAME_LABEL)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Whether a selector looks only at the namespace's name.
fn by_name_only(selector: &LabelSelector) -> bool {
    selector_keys(selector).is_empty()
}

const NAMESPACE: &str = "{namespace}";
const NAME: &str = "{name}";

/// The key patterns (ARN syntax, without the trailing `*`) one key prefix
/// gives for the namespaces `selected`: `{namespace}` as each namespace,
/// `{name}` as `*`. Empty, with a note, when `{name}` comes before
/// `{namespace}`: its `*` would also match another namespace's keys.
fn key_patterns(
    prefix: &str,
    selected: Option<&[&str]>,
    at: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, IamError> {
    let escaped = escape(prefix);
    let Some(first_namespace) = prefix.find(NAMESPACE) else {
        return Ok(vec![escaped.replace(NAME, "*")]);
    };
    if prefix.find(NAME).is_some_and(|n| n < first_namespace) {
        notes.push(format!(
            "{at}: key prefix {prefix:?} gets no ARN: {{name}} before {{namespace}} would become a * that also matches other namespaces' keys (IAM's * matches '/'); put {{namespace}} first, e.g. \"{{namespace}}/{{name}}/\""
        ));
        return Ok(Vec::new());
    }
    let Some(selected) = selected else {
        return Err(IamError::NamespacesUnknown {
            rule: at.to_owned(),
            prefix: prefix.to_owned(),
        });
    };
    if super::risks::namespace_without_slash(prefix) {
        notes.push(format!(
            "{at}: key prefix {prefix:?} has {{namespace}} not followed by '/': the rule itself lets namespace team reach team-b/... keys, and so does its ARN"
        ));
    }
    Ok(selected
        .iter()
        .map(|ns| escaped.replace(NAMESPACE, &escape(ns)).replace(NAME, "*"))
        .collect())
}

/// A note when the policy is larger than IAM takes.
fn size_note(document: &Value) -> Option<String> {
    let size = document
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .count();
    if size <= MANAGED_POLICY_LIMIT {
        return None;
    }
    let over = if size > INLINE_ROLE_POLICY_LIMIT {
        format!(
            "over IAM's {MANAGED_POLICY_LIMIT} for a managed policy and {INLINE_ROLE_POLICY_LIMIT} for a role's inline policies together"
        )
    } else {
        format!(
            "over IAM's {MANAGED_POLICY_LIMIT} for a managed policy (a role's inline policies may total {INLINE_ROLE_POLICY_LIMIT})"
        )
    };
    Some(format!(
        "the policy is {size} characters without whitespace, {over}: select fewer namespaces per rule, or split it by issuer (--issuer)"
    ))
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

    /// Names, in a table's rows.
    type Names = &'static [&'static str];

    /// Namespaces known by name and labels (`name:key=value,…`) or, without
    /// a ':', by name only.
    fn namespaces(specs: &[&str]) -> Vec<Namespace> {
        specs
            .iter()
            .map(|spec| match spec.split_once(':') {
                None => Namespace {
                    name: (*spec).to_owned(),
                    labels: None,
                },
                Some((name, labels)) => Namespace {
                    name: name.to_owned(),
                    labels: Some(
                        labels
                            .split(',')
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                    ),
                },
            })
            .collect()
    }

    /// The policy for `issuers`, with its notes.
    fn policy(issuers: &[ClusterGrantIssuer], known: Option<&[&str]>) -> IamPolicy {
        let known = known.map(namespaces);
        match iam_policy(issuers, known.as_deref(), &options()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Every object ARN of the policy, whatever the action.
    fn arns(policy: &IamPolicy) -> BTreeSet<String> {
        policy.document["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["Sid"] != "ListBucketMultipartUploads")
            .flat_map(|s| s["Resource"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect()
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
             "Resource": ["arn:aws:s3:::logs/team-a/*", "arn:aws:s3:::reports/*.csv*",
                          "arn:aws:s3:::reports/team-a/*", "arn:aws:s3:::reports/team-b/*"]},
            {"Sid": "PutObject", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": ["arn:aws:s3:::reports/*.csv*", "arn:aws:s3:::reports/team-a/*",
                          "arn:aws:s3:::reports/team-b/*"]},
        ]});
        let got = policy(&issuers, Some(&["team-b", "team-a"]));
        assert_eq!(got.document, want);
        assert_eq!(got.notes, Vec::<String>::new());
        // The same, whichever order the issuers and namespaces come in.
        let reversed = [issuers[1].clone(), issuers[0].clone()];
        assert_eq!(
            policy(&reversed, Some(&["team-a", "team-b"])).document,
            want
        );
    }

    #[test]
    fn key_prefixes_expand_to_each_namespace() {
        // (key prefix, the object ARNs for namespaces team and team-b, a note's text)
        let cases: [(&str, &[&str], Option<&str>); 11] = [
            ("{namespace}/", &["b/team-b/*", "b/team/*"], None),
            ("{namespace}/{name}-", &["b/team-b/*-*", "b/team/*-*"], None),
            ("{namespace}/{name}/", &["b/team-b/*/*", "b/team/*/*"], None),
            (
                "data/{namespace}/in/",
                &["b/data/team-b/in/*", "b/data/team/in/*"],
                None,
            ),
            ("shared/", &["b/shared/*"], None),
            ("{name}/", &["b/*/*"], None),
            ("", &["b/*"], None),
            (
                "what?/{namespace}/$*",
                &["b/what${?}/team-b/${$}${*}*", "b/what${?}/team/${$}${*}*"],
                None,
            ),
            (
                "{name}/{namespace}/",
                &[],
                Some("key prefix \"{name}/{namespace}/\" gets no ARN: {name} before {namespace}"),
            ),
            ("x-{name}-{namespace}/", &[], Some("put {namespace} first")),
            // team* covers team-b*: the rule itself mixes the two.
            (
                "{namespace}",
                &["b/team*"],
                Some(
                    "has {namespace} not followed by '/': the rule itself lets namespace team reach team-b/",
                ),
            ),
        ];
        for (prefix, want, note) in cases {
            let issuers = [issuer(
                "i",
                json!([{"buckets": ["b"], "keyPrefixes": [prefix], "methods": ["PUT"]}]),
            )];
            let got = policy(&issuers, Some(&["team", "team-b"]));
            let want: BTreeSet<String> = want.iter().map(|a| format!("arn:aws:s3:::{a}")).collect();
            assert_eq!(arns(&got), want, "{prefix:?}");
            match note {
                None => assert_eq!(got.notes, Vec::<String>::new(), "{prefix:?}"),
                Some(text) => assert!(
                    got.notes
                        .iter()
                        .any(|n| n.starts_with("issuer i allow[0]: ") && n.contains(text)),
                    "{prefix:?}: {:?}",
                    got.notes
                ),
            }
        }
    }

    #[test]
    fn namespace_prefixes_no_longer_become_a_wildcard() {
        let issuers = [issuer(
            "i",
            json!([{"buckets": ["reports"], "keyPrefixes": ["{namespace}/", "{namespace}/{name}/"]}]),
        )];
        let got = policy(&issuers, Some(&["a", "b"]));
        let text = got.document.to_string();
        assert!(!text.contains("reports/*/*"), "{text}");
        assert!(!text.contains("reports/*"), "{text}");
        // a/*/* lies inside a/*: one ARN per namespace and action.
        assert_eq!(
            got.document["Statement"][0]["Resource"],
            json!(["arn:aws:s3:::reports/a/*", "arn:aws:s3:::reports/b/*"])
        );
    }

    #[test]
    fn no_arn_reaches_another_namespaces_keys() {
        let tenants = ["team", "team-b", "b", "a-team", "x"];
        for prefix in [
            "{namespace}/",
            "{namespace}/{name}/",
            "{namespace}/{name}-",
            "data/{namespace}/",
            "{namespace}/in/{name}.csv",
        ] {
            let issuers = [issuer(
                "i",
                json!([{"buckets": ["b"], "keyPrefixes": [prefix], "methods": ["GET"]}]),
            )];
            for mine in tenants {
                let got = policy(&issuers, Some(&[mine]));
                for theirs in tenants.iter().filter(|t| **t != mine) {
                    // Keys under their prefix, some mentioning my namespace.
                    let under = prefix.replace("{namespace}", theirs).replace("{name}", "n");
                    for rest in [
                        "x",
                        "n/x",
                        &format!("{mine}/x"),
                        &format!("x/{mine}/in/n.csv"),
                    ] {
                        let key = format!("arn:aws:s3:::b/{under}{rest}");
                        assert!(
                            !arns(&got).iter().any(|arn| glob(arn, &key)),
                            "{prefix:?}: {mine}'s {:?} reaches {key}",
                            arns(&got)
                        );
                    }
                }
                // And its own keys are reached.
                let own = prefix.replace("{namespace}", mine).replace("{name}", "n");
                let key = format!("arn:aws:s3:::b/{own}x");
                assert!(arns(&got).iter().any(|arn| glob(arn, &key)), "{key}");
            }
        }
    }

    #[test]
    fn selectors_pick_the_namespaces_a_rule_expands_to() {
        const KNOWN: Names = &["team-a:team=a,env=prod", "team-b:team=b", "kube-system:"];
        const BY_NAME: Names = &["team-a", "team-b"];
        // (selector, namespaces, the namespaces in the ARNs or the error's text)
        let cases: [(Value, Names, Result<Names, &str>); 8] = [
            (json!(null), KNOWN, Ok(&["kube-system", "team-a", "team-b"])),
            (json!({}), KNOWN, Ok(&["kube-system", "team-a", "team-b"])),
            (
                json!({"matchLabels": {"team": "a"}}),
                KNOWN,
                Ok(&["team-a"]),
            ),
            (
                json!({"matchExpressions": [{"key": "team", "operator": "Exists"}]}),
                KNOWN,
                Ok(&["team-a", "team-b"]),
            ),
            // The apiserver's name label is there even when the labels do not list it.
            (
                json!({"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}),
                KNOWN,
                Ok(&["team-b"]),
            ),
            // By name only: selectors on the name label still work …
            (
                json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "x"]}]}),
                BY_NAME,
                Ok(&["team-a"]),
            ),
            (json!(null), BY_NAME, Ok(&["team-a", "team-b"])),
            // … others cannot be evaluated.
            (
                json!({"matchLabels": {"team": "a", "kubernetes.io/metadata.name": "team-a"}}),
                BY_NAME,
                Err(
                    "issuer i allow[0]: its namespaces selector uses labels (team), and --namespaces gives only names",
                ),
            ),
        ];
        for (selector, ns, want) in cases {
            let mut rule =
                json!({"buckets": ["b"], "keyPrefixes": ["{namespace}/"], "methods": ["PUT"]});
            if !selector.is_null() {
                rule["namespaces"] = selector.clone();
            }
            let issuers = [issuer("i", json!([rule]))];
            let known = namespaces(ns);
            let got = iam_policy(&issuers, Some(&known), &options());
            match (got, want) {
                (Ok(got), Ok(names)) => {
                    let want: BTreeSet<String> = names
                        .iter()
                        .map(|n| format!("arn:aws:s3:::b/{n}/*"))
                        .collect();
                    assert_eq!(arns(&got), want, "{selector}");
                }
                (Err(e), Err(text)) => assert!(e.to_string().starts_with(text), "{selector}: {e}"),
                (got, _) => panic!("{selector}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_rule_for_no_namespace_gets_no_statement() {
        let issuers = [issuer(
            "i",
            json!([
                {"namespaces": {"matchLabels": {"team": "nobody"}}, "buckets": ["b"], "keyPrefixes": ["shared/"], "methods": ["PUT"]},
                {"namespaces": {"matchExpressions": [{"key": "team", "operator": "Near"}]}, "buckets": ["c"], "methods": ["PUT"]},
                {"buckets": ["d"], "keyPrefixes": [], "methods": ["PUT"]},
                {"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["e"], "keyPrefixes": ["shared/"], "methods": ["GET"]},
            ]),
        )];
        let got = policy(&issuers, Some(&["team-a:team=a"]));
        assert_eq!(
            got.document["Statement"],
            json!([{"Sid": "GetObject", "Effect": "Allow", "Action": "s3:GetObject",
                    "Resource": ["arn:aws:s3:::e/shared/*"]}])
        );
        assert_eq!(
            got.notes,
            [
                "issuer i allow[0]: no namespace matches its namespaces selector: no statement for it",
                "issuer i allow[1]: its namespaces selector cannot be evaluated (unknown label selector operator \"Near\"), so it allows nothing: no statement for it",
                "issuer i allow[2]: keyPrefixes is empty, so it allows no key: no statement for it",
            ]
        );
        let none = policy(&issuers[..0], Some(&[]));
        assert_eq!(none.document["Statement"], json!([]));
        assert_eq!(
            none.notes,
            ["no rule reaches any object: the policy allows nothing"]
        );
    }

    #[test]
    fn without_namespaces_only_rules_without_namespace_can_be_written() {
        let shared = issuer(
            "i",
            json!([{"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"], "keyPrefixes": ["shared/{name}/"], "methods": ["GET"]}]),
        );
        assert_eq!(
            arns(&policy(std::slice::from_ref(&shared), None)),
            BTreeSet::from(["arn:aws:s3:::b/shared/*/*".to_owned()]),
            "a rule without {{namespace}} is assumed to apply"
        );
        let scoped = issuer(
            "j",
            json!([{"buckets": ["b"], "keyPrefixes": ["shared/", "{namespace}/"]}]),
        );
        let err = iam_policy(&[shared, scoped], None, &options()).expect_err("needs namespaces");
        assert_eq!(
            err,
            IamError::NamespacesUnknown {
                rule: "issuer j allow[0]".into(),
                prefix: "{namespace}/".into()
            }
        );
        assert!(err.to_string().contains("--namespaces a,b,c"), "{err}");
    }

    #[test]
    fn a_wildcard_bucket_reaches_every_key_or_gets_no_arn() {
        // (buckets, key prefixes, object ARNs, bucket ARNs for multipart,
        // whether a note says "*" got no ARN)
        let cases: [(Value, Value, Names, Names, bool); 4] = [
            (json!(["*"]), json!(null), &["*/*"], &["*"], false),
            (json!(["*"]), json!([""]), &["*/*"], &["*"], false),
            (
                json!(["*"]),
                json!(["{namespace}/", "shared/"]),
                &[],
                &[],
                true,
            ),
            (
                json!(["reports", "*"]),
                json!(["{namespace}/"]),
                &["reports/a/*"],
                &["reports"],
                true,
            ),
        ];
        for (buckets, prefixes, objects, buckets_reached, noted) in cases {
            let mut rule =
                json!({"buckets": buckets, "methods": ["PUT"], "multipart": true, "maxParts": 10});
            if !prefixes.is_null() {
                rule["keyPrefixes"] = prefixes.clone();
            }
            let got = policy(&[issuer("i", json!([rule]))], Some(&["a"]));
            let want: BTreeSet<String> = objects
                .iter()
                .map(|a| format!("arn:aws:s3:::{a}"))
                .collect();
            assert_eq!(arns(&got), want, "{buckets} {prefixes}");
            let listed: Vec<Value> = got.document["Statement"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["Sid"] == "ListBucketMultipartUploads")
                .flat_map(|s| s["Resource"].as_array().cloned().unwrap_or_default())
                .collect();
            let want: Vec<Value> = buckets_reached
                .iter()
                .map(|b| json!(format!("arn:aws:s3:::{b}")))
                .collect();
            assert_eq!(listed, want, "{buckets} {prefixes}");
            let said = got
                .notes
                .iter()
                .any(|n| n.contains("bucket \"*\" with key prefixes gets no ARN"));
            assert_eq!(said, noted, "{buckets} {prefixes}: {:?}", got.notes);
        }
    }

    #[test]
    fn a_policy_too_large_for_iam_says_so() {
        let issuers = [issuer(
            "i",
            json!([{"buckets": ["reports"], "keyPrefixes": ["{namespace}/"], "methods": ["PUT"]}]),
        )];
        let few: Vec<String> = (0..10).map(|i| format!("tenant-{i:03}")).collect();
        let few: Vec<&str> = few.iter().map(String::as_str).collect();
        assert!(policy(&issuers, Some(&few)).notes.is_empty());
        let many: Vec<String> = (0..400).map(|i| format!("tenant-{i:03}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let notes = policy(&issuers, Some(&many)).notes;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains(
                "characters without whitespace, over IAM's 6144 for a managed policy and 10240"
            ),
            "{notes:?}"
        );
    }

    #[test]
    fn a_multipart_rule_adds_what_the_operator_calls_itself() {
        let issuers = [issuer(
            "a",
            json!([{"buckets": ["reports"], "keyPrefixes": ["in/"], "methods": ["PUT"], "multipart": true},
                   {"buckets": ["other"], "methods": ["PUT"]},
                   // Multipart grants are PUTs: without PUT, nothing to add.
                   {"buckets": ["reads"], "methods": ["GET"], "multipart": true}]),
        )];
        let objects = json!(["arn:aws:s3:::reports/in/*"]);
        let want = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "AbortMultipartUpload", "Effect": "Allow", "Action": "s3:AbortMultipartUpload",
             "Resource": objects},
            {"Sid": "GetObject", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": ["arn:aws:s3:::reads/*", "arn:aws:s3:::reports/in/*"]},
            {"Sid": "ListBucketMultipartUploads", "Effect": "Allow",
             "Action": "s3:ListBucketMultipartUploads", "Resource": ["arn:aws:s3:::reports"]},
            {"Sid": "ListMultipartUploadParts", "Effect": "Allow",
             "Action": "s3:ListMultipartUploadParts", "Resource": objects},
            {"Sid": "PutObject", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": ["arn:aws:s3:::other/*", "arn:aws:s3:::reports/in/*"]},
        ]});
        assert_eq!(policy(&issuers, None).document, want);
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
        assert_eq!(policy(&issuers, None).document, want);
    }

    #[test]
    fn omitted_fields_allow_everything_and_literal_wildcards_are_escaped() {
        let open = policy(
            &[issuer(
                "a",
                json!([{"buckets": ["*"]}, {"buckets": ["b"], "keyPrefixes": ["what?/$*"]}]),
            )],
            None,
        )
        .document;
        let statements = open["Statement"].as_array().cloned().unwrap_or_default();
        let actions: Vec<&str> = statements
            .iter()
            .filter_map(|s| s["Action"].as_str())
            .collect();
        assert_eq!(actions, ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]);
        assert_eq!(statements[2]["Resource"], json!(["arn:aws:s3:::*/*"]));
        let narrow = policy(
            &[issuer(
                "a",
                json!([{"buckets": ["b"], "keyPrefixes": ["what?/$*"], "methods": ["PUT"]}]),
            )],
            None,
        )
        .document;
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
