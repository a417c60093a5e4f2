//! Evaluates a ClusterGrantIssuer's allow rules against a grant. Pure: no
//! cluster access, so every rule is tested from fixtures.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::duration::{format_duration, parse_duration, parse_quantity};
use crate::api::grant::fixed_key;
use crate::api::{AllowRule, ClusterGrantIssuerSpec, Method, ServerSideEncryption, SseType};

/// What a grant asks for, as far as the allow rules care.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub name: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub method: Method,
    pub ttl: Duration,
    pub content_length: Option<u64>,
    /// POST: the sizes the upload may have.
    pub content_length_range: Option<(u64, u64)>,
    pub sse: Option<&'a ServerSideEncryption>,
    /// A multipart upload: (parts, partSize in bytes).
    pub multipart: Option<(u32, u64)>,
}

/// Why no rule allowed a grant: one line per rule, for the grant's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One rule's answer to a request: allowed, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    /// The rule's index in `spec.allow`.
    pub rule: usize,
    pub refusal: Option<String>,
    /// The rule's namespace selector does not match: the rule is for other
    /// tenants, and a denial shown to this one does not describe it.
    pub other_namespaces: bool,
}

impl RuleVerdict {
    pub fn allows(&self) -> bool {
        self.refusal.is_none()
    }
}

/// Every rule's verdict, in order: what `authorize` decides from, and what
/// `kubectl grant check` shows.
pub fn evaluate(issuer: &ClusterGrantIssuerSpec, req: &Request<'_>) -> Vec<RuleVerdict> {
    issuer
        .allow
        .iter()
        .enumerate()
        .map(|(rule, r)| {
            let other_namespaces = !applies_to(r, req.namespace_labels);
            RuleVerdict {
                rule,
                refusal: check_rule(r, req).err(),
                other_namespaces,
            }
        })
        .collect()
}

/// The index of the first rule that allows, or why each rule for the
/// grant's namespace refused; rules for other namespaces are only counted,
/// so a tenant does not learn what other tenants may do.
pub fn conclude(verdicts: &[RuleVerdict]) -> Result<usize, Denied> {
    if verdicts.is_empty() {
        return Err(Denied(
            "the issuer has no allow rules, so it allows nothing".into(),
        ));
    }
    if let Some(v) = verdicts.iter().find(|v| v.allows()) {
        return Ok(v.rule);
    }
    let reasons: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.other_namespaces)
        .filter_map(|v| Some(format!("allow[{}]: {}", v.rule, v.refusal.as_ref()?)))
        .collect();
    let others = verdicts.iter().filter(|v| v.other_namespaces).count();
    let others = match others {
        0 => String::new(),
        n => format!("{n} rule(s) are for other namespaces"),
    };
    Err(Denied(match (reasons.is_empty(), others.is_empty()) {
        (true, _) => format!("no allow rule applies to this namespace ({others})"),
        (false, true) => format!("no allow rule matches: {}", reasons.join("; ")),
        (false, false) => format!("no allow rule matches: {}; {others}", reasons.join("; ")),
    }))
}

/// Whether a rule's namespace selector selects the grant's namespace. A
/// selector that cannot be evaluated counts as applying, so its error is
/// shown.
fn applies_to(rule: &AllowRule, labels: &BTreeMap<String, String>) -> bool {
    rule.namespaces
        .as_ref()
        .is_none_or(|s| selector_matches(s, labels).unwrap_or(true))
}

/// Returns the index of the first rule that allows the request, or why each
/// rule refused it.
pub fn authorize(issuer: &ClusterGrantIssuerSpec, req: &Request<'_>) -> Result<usize, Denied> {
    conclude(&evaluate(issuer, req))
}

/// Whether the issuer lets grant `name` in `namespace` (labelled `labels`)
/// reach an upload at `bucket`/`key`: a rule for the namespace names the
/// bucket and a prefix of the key. What a recorded upload is checked against
/// before the operator calls S3 on it, whoever wrote the record. Methods,
/// sizes and `multipart` are not asked: an issuer that stops allowing
/// multipart still lets the operator abort the uploads it started there.
pub fn reaches_upload(
    issuer: &ClusterGrantIssuerSpec,
    (namespace, labels, name): (&str, &BTreeMap<String, String>, &str),
    bucket: &str,
    key: &str,
) -> bool {
    let at = Request {
        namespace,
        namespace_labels: labels,
        name,
        bucket,
        key,
        method: Method::Put,
        ttl: Duration::ZERO,
        content_length: None,
        content_length_range: None,
        sse: None,
        multipart: None,
    };
    // Strictly: a selector that cannot be evaluated reaches nothing.
    let selects = |rule: &AllowRule| {
        rule.namespaces
            .as_ref()
            .is_none_or(|s| selector_matches(s, labels) == Ok(true))
    };
    issuer
        .allow
        .iter()
        .any(|rule| selects(rule) && check_object(rule, &at).is_ok())
}

/// The bucket and the key prefixes.
fn check_object(rule: &AllowRule, req: &Request<'_>) -> Result<(), String> {
    if !rule.buckets.iter().any(|b| b == "*" || b == req.bucket) {
        return Err(format!(
            "bucket {:?} is not one of {:?}",
            req.bucket, rule.buckets
        ));
    }
    let Some(prefixes) = &rule.key_prefixes else {
        return Ok(());
    };
    let expanded: Vec<String> = prefixes
        .iter()
        .map(|p| {
            p.replace("{namespace}", req.namespace)
                .replace("{name}", req.name)
        })
        .collect();
    // A POST key ending in ${filename} may become any key that starts
    // with its fixed part: that part is what must start with a prefix.
    let key = fixed_key(req.key);
    if expanded.iter().any(|p| key.starts_with(p.as_str())) {
        return Ok(());
    }
    if key.len() < req.key.len() {
        return Err(format!(
            "key's fixed part {key:?} (before ${{filename}}) does not start with any of {expanded:?}"
        ));
    }
    Err(format!("key does not start with any of {expanded:?}"))
}

fn check_rule(rule: &AllowRule, req: &Request<'_>) -> Result<(), String> {
    if let Some(selector) = &rule.namespaces
        && !selector_matches(selector, req.namespace_labels)?
    {
        return Err(format!(
            "namespace {:?} does not match its namespace selector",
            req.namespace
        ));
    }
    check_object(rule, req)?;
    if let Some(methods) = &rule.methods
        && !methods.contains(&req.method)
    {
        let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
        return Err(format!("method {} is not one of {names:?}", req.method));
    }
    if let Some(max_ttl) = &rule.max_ttl {
        let max = parse_duration(max_ttl).map_err(|e| format!("maxTtl: {e}"))?;
        if req.ttl > max {
            return Err(format!(
                "ttl {} is longer than maxTtl {}",
                format_duration(req.ttl),
                format_duration(max)
            ));
        }
    }
    if req.multipart.is_some() && !rule.multipart {
        return Err(
            "multipart uploads are not allowed (the rule does not set multipart: true)".into(),
        );
    }
    if let (Some((parts, _)), Some(max)) = (req.multipart, rule.max_parts)
        && parts > max
    {
        return Err(format!(
            "multipart.parts {parts} is more than maxParts {max}"
        ));
    }
    if let Some(max_len) = &rule.max_content_length {
        let max = parse_quantity(max_len).map_err(|e| format!("maxContentLength: {e}"))?;
        if let Some((parts, part_size)) = req.multipart {
            let total = u64::from(parts).saturating_mul(part_size);
            if total > max {
                return Err(format!(
                    "multipart parts × partSize ({parts} × {part_size} = {total} bytes) is larger than maxContentLength {max_len} ({max} bytes)"
                ));
            }
        } else if req.method == Method::Put {
            match req.content_length {
                None => {
                    return Err(format!(
                        "a PUT must set contentLength (at most {max} bytes, maxContentLength {max_len})"
                    ));
                }
                Some(len) if len > max => {
                    return Err(format!(
                        "contentLength {len} is larger than maxContentLength {max_len} ({max} bytes)"
                    ));
                }
                Some(_) => {}
            }
        }
        if req.method == Method::Post {
            match req.content_length_range {
                None => {
                    return Err(format!(
                        "a POST must set contentLengthRange (max at most {max} bytes, maxContentLength {max_len})"
                    ));
                }
                Some((_, top)) if top > max => {
                    return Err(format!(
                        "contentLengthRange.max {top} is larger than maxContentLength {max_len} ({max} bytes)"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    check_kms_key(rule, req)
}

/// With kmsKeyIds, a grant asking for SSE-KMS must name one of them: the
/// bucket's default key is not on the list.
fn check_kms_key(rule: &AllowRule, req: &Request<'_>) -> Result<(), String> {
    let (Some(allowed), Some(sse)) = (&rule.kms_key_ids, req.sse) else {
        return Ok(());
    };
    if sse.type_ != SseType::AwsKms {
        return Ok(());
    }
    match &sse.kms_key_id {
        Some(key) if allowed.contains(key) => Ok(()),
        Some(key) => Err(format!(
            "KMS key {key:?} is not one of kmsKeyIds {allowed:?}"
        )),
        None => Err(format!(
            "aws:kms without a kmsKeyId uses the bucket's default key; name one of kmsKeyIds {allowed:?}"
        )),
    }
}

/// Kubernetes label-selector semantics: every matchLabels entry and every
/// matchExpressions requirement must hold; an empty selector matches all.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if let Some(match_labels) = &selector.match_labels
        && match_labels.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return Ok(false);
    }
    for expr in selector.match_expressions.iter().flatten() {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        let holds = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => return Err(format!("unknown label selector operator {other:?}")),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks what the schema cannot: every rule's durations, sizes and selector
/// operators parse. Returns a one-line summary for the issuer's status.
pub fn check(issuer: &ClusterGrantIssuerSpec) -> Result<String, String> {
    for (i, rule) in issuer.allow.iter().enumerate() {
        if let Some(t) = &rule.max_ttl {
            parse_duration(t).map_err(|e| format!("allow[{i}].maxTtl: {e}"))?;
        }
        if let Some(q) = &rule.max_content_length {
            parse_quantity(q).map_err(|e| format!("allow[{i}].maxContentLength: {e}"))?;
        }
        if let Some(selector) = &rule.namespaces {
            selector_matches(selector, &BTreeMap::new())
                .map_err(|e| format!("allow[{i}].namespaces: {e}"))?;
        }
    }
    let endpoint = issuer.s3.endpoint.as_deref().unwrap_or("the AWS endpoint");
    Ok(match issuer.allow.len() {
        0 => format!(
            "signs for region {} at {endpoint}; it has no allow rules, so it allows nothing",
            issuer.s3.region
        ),
        n => format!(
            "signs for region {} at {endpoint} with {n} allow rule(s)",
            issuer.s3.region
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::issuer_spec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn rule() -> AllowRule {
        AllowRule {
            namespaces: None,
            buckets: vec!["reports".into()],
            key_prefixes: None,
            methods: None,
            max_ttl: None,
            max_content_length: None,
            multipart: false,
            max_parts: None,
            kms_key_ids: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn request<'a>(labels: &'a BTreeMap<String, String>) -> Request<'a> {
        Request {
            namespace: "analytics",
            namespace_labels: labels,
            name: "nightly",
            bucket: "reports",
            key: "analytics/2026/report.csv",
            method: Method::Put,
            ttl: Duration::from_secs(3600),
            content_length: Some(1000),
            content_length_range: None,
            sse: None,
            multipart: None,
        }
    }

    #[test]
    fn multipart_needs_a_rule_that_allows_it_and_fits_max_content_length() {
        let l = labels(&[]);
        let req = Request {
            content_length: None,
            multipart: Some((3, 5 << 20)),
            ..request(&l)
        };
        let denied = authorize(&issuer_spec(vec![rule()]), &req).expect_err("no multipart: true");
        assert!(
            denied.0.contains("multipart uploads are not allowed"),
            "{denied}"
        );
        let allowing = AllowRule {
            multipart: true,
            ..rule()
        };
        assert_eq!(authorize(&issuer_spec(vec![allowing.clone()]), &req), Ok(0));
        let capped = AllowRule {
            max_content_length: Some("15Mi".into()),
            ..allowing.clone()
        };
        assert_eq!(authorize(&issuer_spec(vec![capped]), &req), Ok(0));
        let small = AllowRule {
            max_content_length: Some("14Mi".into()),
            ..allowing
        };
        let denied = authorize(&issuer_spec(vec![small]), &req).expect_err("15Mi > 14Mi");
        assert!(denied.0.contains("parts × partSize"), "{denied}");
    }

    #[test]
    fn max_parts_caps_a_multipart_grants_parts() {
        let l = labels(&[]);
        let multipart = |parts| Request {
            content_length: None,
            multipart: Some((parts, 5 << 20)),
            ..request(&l)
        };
        let single = request(&l);
        let rule_with = |multipart, max_parts, max_content_length: Option<&str>| AllowRule {
            multipart,
            max_parts,
            max_content_length: max_content_length.map(str::to_owned),
            ..rule()
        };
        // (rule, request, the denial's text or None when allowed)
        let cases = [
            (rule_with(true, None, None), multipart(10_000), None),
            (rule_with(true, Some(100), None), multipart(100), None),
            (rule_with(true, Some(1), None), multipart(1), None),
            (
                rule_with(true, Some(100), None),
                multipart(101),
                Some("allow[0]: multipart.parts 101 is more than maxParts 100"),
            ),
            (
                rule_with(true, Some(1), None),
                multipart(2),
                Some("multipart.parts 2 is more than maxParts 1"),
            ),
            // Checked before the total size, which would also refuse it.
            (
                rule_with(true, Some(100), Some("5Mi")),
                multipart(101),
                Some("more than maxParts 100"),
            ),
            // A rule without multipart: true refuses for that reason first.
            (
                rule_with(false, Some(100), None),
                multipart(101),
                Some("multipart uploads are not allowed"),
            ),
            // A single PUT has no parts to count.
            (rule_with(true, Some(1), Some("1Ki")), single, None),
        ];
        for (i, (r, req, want)) in cases.into_iter().enumerate() {
            let got = authorize(&issuer_spec(vec![r]), &req);
            match want {
                None => assert_eq!(got, Ok(0), "case {i}"),
                Some(needle) => assert!(
                    got.as_ref().is_err_and(|d| d.0.contains(needle)),
                    "case {i}: {got:?} should contain {needle:?}"
                ),
            }
        }
    }

    #[test]
    fn no_rules_allow_nothing() {
        let l = labels(&[]);
        assert!(authorize(&issuer_spec(Vec::<AllowRule>::new()), &request(&l)).is_err());
    }

    #[test]
    fn a_matching_rule_allows_and_reports_its_index() {
        let l = labels(&[]);
        let other = AllowRule {
            buckets: vec!["other".into()],
            ..rule()
        };
        assert_eq!(
            authorize(&issuer_spec(vec![other, rule()]), &request(&l)),
            Ok(1)
        );
    }

    #[test]
    fn bucket_must_be_listed_or_wildcard() {
        let l = labels(&[]);
        let denied = authorize(
            &issuer_spec(vec![AllowRule {
                buckets: vec!["x".into()],
                ..rule()
            }]),
            &request(&l),
        );
        assert!(denied.unwrap_err().0.contains("bucket \"reports\""));
        let any = AllowRule {
            buckets: vec!["*".into()],
            ..rule()
        };
        assert!(authorize(&issuer_spec(vec![any]), &request(&l)).is_ok());
    }

    #[test]
    fn namespace_selector_filters_by_label() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("team", "analytics")])),
            ..LabelSelector::default()
        };
        let r = AllowRule {
            namespaces: Some(selector),
            ..rule()
        };
        let yes = labels(&[("team", "analytics")]);
        let no = labels(&[("team", "web")]);
        assert!(authorize(&issuer_spec(vec![r.clone()]), &request(&yes)).is_ok());
        let denied = authorize(&issuer_spec(vec![r.clone()]), &request(&no)).unwrap_err();
        assert_eq!(
            denied.0,
            "no allow rule applies to this namespace (1 rule(s) are for other namespaces)"
        );
        // The tenant reads why the rules for its namespace refused, and
        // nothing of the others'.
        let secret = AllowRule {
            buckets: vec!["finance-ledgers".into()],
            ..r
        };
        let mine = AllowRule {
            buckets: vec!["mine".into()],
            ..rule()
        };
        let denied = authorize(&issuer_spec(vec![secret, mine]), &request(&no)).unwrap_err();
        assert_eq!(
            denied.0,
            "no allow rule matches: allow[1]: bucket \"reports\" is not one of [\"mine\"]; 1 rule(s) are for other namespaces"
        );
    }

    #[test]
    fn kms_key_ids_limit_the_keys_a_grant_may_name() {
        use crate::api::{ServerSideEncryption, SseType};
        let l = labels(&[]);
        let r = AllowRule {
            kms_key_ids: Some(vec!["alias/reports".into()]),
            ..rule()
        };
        let sse = |type_, key: Option<&str>| ServerSideEncryption {
            type_,
            kms_key_id: key.map(str::to_owned),
        };
        let with = |s: &ServerSideEncryption| {
            let mut req = request(&l);
            req.sse = Some(s);
            authorize(&issuer_spec(vec![r.clone()]), &req)
        };
        assert!(with(&sse(SseType::AwsKms, Some("alias/reports"))).is_ok());
        assert!(
            with(&sse(SseType::Aes256, None)).is_ok(),
            "S3-managed keys are not KMS keys"
        );
        let other = with(&sse(SseType::AwsKms, Some("alias/other"))).unwrap_err();
        assert!(other.0.contains("is not one of kmsKeyIds"), "{other}");
        let default_key = with(&sse(SseType::AwsKms, None)).unwrap_err();
        assert!(
            default_key.0.contains("bucket's default key"),
            "{default_key}"
        );
        assert!(
            authorize(&issuer_spec(vec![r]), &request(&l)).is_ok(),
            "no encryption asked"
        );
    }

    #[test]
    fn empty_selector_matches_every_namespace() {
        let r = AllowRule {
            namespaces: Some(LabelSelector::default()),
            ..rule()
        };
        let l = labels(&[]);
        assert!(authorize(&issuer_spec(vec![r]), &request(&l)).is_ok());
    }

    #[test]
    fn match_expressions_follow_kubernetes_semantics() {
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        };
        let prod = labels(&[("env", "prod")]);
        let none = labels(&[]);
        assert_eq!(selector_matches(&expr("In", &["prod"]), &prod), Ok(true));
        assert_eq!(selector_matches(&expr("In", &["prod"]), &none), Ok(false));
        assert_eq!(
            selector_matches(&expr("NotIn", &["prod"]), &prod),
            Ok(false)
        );
        assert_eq!(selector_matches(&expr("NotIn", &["prod"]), &none), Ok(true));
        assert_eq!(selector_matches(&expr("Exists", &[]), &prod), Ok(true));
        assert_eq!(
            selector_matches(&expr("DoesNotExist", &[]), &prod),
            Ok(false)
        );
        assert!(selector_matches(&expr("Near", &[]), &prod).is_err());
    }

    #[test]
    fn key_prefix_substitutes_namespace_and_name() {
        let l = labels(&[]);
        let r = AllowRule {
            key_prefixes: Some(vec!["{namespace}/".into()]),
            ..rule()
        };
        assert!(authorize(&issuer_spec(vec![r.clone()]), &request(&l)).is_ok());
        let mut other = request(&l);
        other.key = "web/report.csv";
        let denied = authorize(&issuer_spec(vec![r]), &other).unwrap_err();
        assert!(denied.0.contains("[\"analytics/\"]"), "{denied}");
        let by_name = AllowRule {
            key_prefixes: Some(vec!["{namespace}/{name}-".into()]),
            ..rule()
        };
        let mut named = request(&l);
        named.key = "analytics/nightly-1.csv";
        assert!(authorize(&issuer_spec(vec![by_name]), &named).is_ok());
    }

    #[test]
    fn methods_limit_what_may_be_signed() {
        let l = labels(&[]);
        let r = AllowRule {
            methods: Some(vec![Method::Get]),
            ..rule()
        };
        let denied = authorize(&issuer_spec(vec![r]), &request(&l)).unwrap_err();
        assert!(denied.0.contains("method PUT"), "{denied}");
    }

    #[test]
    fn max_ttl_caps_the_requested_lifetime() {
        let l = labels(&[]);
        let r = AllowRule {
            max_ttl: Some("30m".into()),
            ..rule()
        };
        let denied = authorize(&issuer_spec(vec![r.clone()]), &request(&l)).unwrap_err();
        assert!(denied.0.contains("longer than maxTtl 30m0s"), "{denied}");
        let mut short = request(&l);
        short.ttl = Duration::from_secs(1800);
        assert!(authorize(&issuer_spec(vec![r]), &short).is_ok());
    }

    #[test]
    fn max_content_length_requires_a_pinned_size_for_put() {
        let l = labels(&[]);
        let r = AllowRule {
            max_content_length: Some("1Ki".into()),
            ..rule()
        };
        assert!(authorize(&issuer_spec(vec![r.clone()]), &request(&l)).is_ok());
        let mut big = request(&l);
        big.content_length = Some(1025);
        assert!(
            authorize(&issuer_spec(vec![r.clone()]), &big)
                .unwrap_err()
                .0
                .contains("larger than maxContentLength")
        );
        let mut unpinned = request(&l);
        unpinned.content_length = None;
        assert!(
            authorize(&issuer_spec(vec![r.clone()]), &unpinned)
                .unwrap_err()
                .0
                .contains("must set contentLength")
        );
        let mut get = unpinned.clone();
        get.method = Method::Get;
        assert!(authorize(&issuer_spec(vec![r]), &get).is_ok());
    }

    fn post<'a>(labels: &'a BTreeMap<String, String>, key: &'a str) -> Request<'a> {
        Request {
            key,
            method: Method::Post,
            content_length: None,
            content_length_range: Some((1, 1000)),
            ..request(labels)
        }
    }

    #[test]
    fn max_content_length_caps_a_posts_range() {
        let l = labels(&[]);
        let r = AllowRule {
            max_content_length: Some("1Ki".into()),
            methods: Some(vec![Method::Post]),
            ..rule()
        };
        let ok = post(&l, "analytics/a.csv");
        assert!(authorize(&issuer_spec(vec![r.clone()]), &ok).is_ok());
        let mut big = ok.clone();
        big.content_length_range = Some((0, 1025));
        let denied = authorize(&issuer_spec(vec![r.clone()]), &big).unwrap_err();
        assert!(
            denied
                .0
                .contains("contentLengthRange.max 1025 is larger than maxContentLength 1Ki"),
            "{denied}"
        );
        let mut unbounded = ok.clone();
        unbounded.content_length_range = None;
        let denied = authorize(&issuer_spec(vec![r.clone()]), &unbounded).unwrap_err();
        assert!(
            denied.0.contains("a POST must set contentLengthRange"),
            "{denied}"
        );
        // Without maxContentLength, a POST needs no range.
        let free = AllowRule {
            max_content_length: None,
            ..r
        };
        assert!(authorize(&issuer_spec(vec![free]), &unbounded).is_ok());
    }

    #[test]
    fn a_filename_key_must_have_its_fixed_part_under_a_prefix() {
        let l = labels(&[]);
        let r = AllowRule {
            key_prefixes: Some(vec!["{namespace}/uploads/".into()]),
            ..rule()
        };
        assert!(
            authorize(
                &issuer_spec(vec![r.clone()]),
                &post(&l, "analytics/uploads/${filename}")
            )
            .is_ok()
        );
        assert!(
            authorize(
                &issuer_spec(vec![r.clone()]),
                &post(&l, "analytics/uploads/day-1/${filename}")
            )
            .is_ok()
        );
        // The key as written starts with the prefix, but the file name would not.
        let tricky = AllowRule {
            key_prefixes: Some(vec!["analytics/$".into()]),
            ..rule()
        };
        let denied = authorize(
            &issuer_spec(vec![tricky]),
            &post(&l, "analytics/${filename}"),
        )
        .unwrap_err();
        assert!(denied.0.contains("fixed part \"analytics/\""), "{denied}");
        let denied =
            authorize(&issuer_spec(vec![r]), &post(&l, "analytics/${filename}")).unwrap_err();
        assert!(denied.0.contains("does not start with"), "{denied}");
    }

    #[test]
    fn methods_may_list_post_and_kms_keys_apply_to_it() {
        let l = labels(&[]);
        let put_only = AllowRule {
            methods: Some(vec![Method::Put]),
            ..rule()
        };
        let denied = authorize(&issuer_spec(vec![put_only]), &post(&l, "a/b")).unwrap_err();
        assert!(
            denied.0.contains("method POST is not one of [\"PUT\"]"),
            "{denied}"
        );
        let keys = AllowRule {
            methods: Some(vec![Method::Put, Method::Post]),
            kms_key_ids: Some(vec!["alias/reports".into()]),
            ..rule()
        };
        let sse = ServerSideEncryption {
            type_: SseType::AwsKms,
            kms_key_id: Some("alias/other".into()),
        };
        let mut req = post(&l, "a/b");
        req.sse = Some(&sse);
        let denied = authorize(&issuer_spec(vec![keys]), &req).unwrap_err();
        assert!(denied.0.contains("is not one of kmsKeyIds"), "{denied}");
    }

    #[test]
    fn check_reports_rules_that_cannot_be_evaluated() {
        assert!(check(&issuer_spec(vec![rule()])).is_ok_and(|m| m.contains("1 allow rule")));
        assert!(
            check(&issuer_spec(Vec::<AllowRule>::new()))
                .is_ok_and(|m| m.contains("allows nothing"))
        );
        let bad = AllowRule {
            max_ttl: Some("1d".into()),
            ..rule()
        };
        assert!(
            check(&issuer_spec(vec![rule(), bad])).is_err_and(|e| e.starts_with("allow[1].maxTtl"))
        );
    }

    #[test]
    fn evaluate_gives_every_rule_a_verdict() {
        let l = labels(&[]);
        let a = AllowRule {
            buckets: vec!["a".into()],
            ..rule()
        };
        let verdicts = evaluate(&issuer_spec(vec![a, rule(), rule()]), &request(&l));
        assert_eq!(verdicts.len(), 3);
        assert!(!verdicts[0].allows() && verdicts[1].allows() && verdicts[2].allows());
        assert_eq!(conclude(&verdicts), Ok(1));
        assert!(conclude(&[]).is_err_and(|d| d.0.contains("allows nothing")));
    }

    #[test]
    fn denial_lists_every_rule() {
        let l = labels(&[]);
        let a = AllowRule {
            buckets: vec!["a".into()],
            ..rule()
        };
        let b = AllowRule {
            methods: Some(vec![Method::Delete]),
            ..rule()
        };
        let denied = authorize(&issuer_spec(vec![a, b]), &request(&l)).unwrap_err();
        assert!(
            denied.0.contains("allow[0]: bucket") && denied.0.contains("allow[1]: method"),
            "{denied}"
        );
    }

    #[test]
    fn a_recorded_upload_is_reached_only_under_the_namespaces_rules() {
        let issuer = issuer_spec(serde_json::json!([{
            "buckets": ["reports"], "keyPrefixes": ["{namespace}/"],
            "namespaces": {"matchLabels": {"tier": "batch"}},
        }]));
        let batch = labels(&[("tier", "batch")]);
        let none = labels(&[]);
        // (labels, bucket, key, reached)
        let cases = [
            (&batch, "reports", "analytics/a.bin", true),
            (&batch, "reports", "other-team/a.bin", false),
            (&batch, "elsewhere", "analytics/a.bin", false),
            (&none, "reports", "analytics/a.bin", false),
        ];
        for (labels, bucket, key, reached) in cases {
            let who = ("analytics", labels, "nightly");
            assert_eq!(
                reaches_upload(&issuer, who, bucket, key),
                reached,
                "{bucket}/{key} with {labels:?}"
            );
        }
        // A selector that cannot be evaluated reaches nothing.
        let broken = issuer_spec(serde_json::json!([{
            "buckets": ["reports"],
            "namespaces": {"matchExpressions": [{"key": "tier", "operator": "Near"}]},
        }]));
        let who = ("analytics", &batch, "nightly");
        assert!(!reaches_upload(&broken, who, "reports", "analytics/a.bin"));
    }
}
