//! `kubectl grant check`: would the operator issue this grant? It runs the
//! operator's own admission (`decide::admit`: validate the spec, pick the
//! issuer, evaluate its allow rules) on the namespace's labels and the
//! issuers read from the cluster, and says which rule allows it or why each
//! rule refuses.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::output::{Format, render};
use super::{Conn, Error, Outcome};
use crate::api::duration::parse_duration;
use crate::api::{ClusterGrantIssuer, Method, UploadGrant};
use crate::controller::decide::{Admission, admit};
use crate::issuer::RuleVerdict;

/// Would the operator issue a grant? Evaluates the issuers' allow rules
/// exactly as the operator does.
///
/// With --issuer, the grant names that issuer; with --default-issuer, it
/// names none and the operator's default is that one; with neither, every
/// issuer's verdict is listed (the grant would then need spec.issuerRef).
/// Exits 0 if allowed (by some issuer, when listing them all), 3 if denied
/// or the spec is invalid.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// spec.bucket.
    #[arg(long)]
    pub bucket: String,
    /// spec.key.
    #[arg(long)]
    pub key: String,
    /// PUT, GET, HEAD or DELETE.
    #[arg(long, default_value = "PUT", value_parser = parse_method)]
    pub method: Method,
    /// The URL's lifetime (Go duration), as spec.ttl.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The issuer the grant names in spec.issuerRef.
    #[arg(long, conflicts_with = "default_issuer")]
    pub issuer: Option<String>,
    /// The operator's --default-issuer, for a grant without spec.issuerRef.
    #[arg(long)]
    pub default_issuer: Option<String>,
    /// spec.contentLength in bytes (PUT only).
    #[arg(long)]
    pub content_length: Option<i64>,
    /// spec.contentLengthRange as MIN:MAX, in bytes or quantities like
    /// 10Mi (POST only).
    #[arg(long, value_name = "MIN:MAX")]
    pub content_length_range: Option<String>,
    /// spec.multipart.parts: a multipart upload of this many parts (PUT only,
    /// with --part-size).
    #[arg(long, requires = "part_size")]
    pub parts: Option<u32>,
    /// spec.multipart.partSize, in bytes or a quantity like 64Mi.
    #[arg(long, requires = "parts")]
    pub part_size: Option<String>,
    /// The grant's name, for `{name}` in key prefixes.
    #[arg(long, default_value = "check")]
    pub name: String,
    /// The operator's --propagation-budget: grants with a ttl under 1.5
    /// times it are invalid. The default is the operator's
    /// (api::limits::DEFAULT_PROPAGATION_BUDGET; a unit test keeps them equal).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub propagation_budget: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::ALL
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("{s:?} is not one of PUT, GET, HEAD, DELETE, POST"))
}

/// The structure of `-o json|yaml`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub name: String,
    /// Whether the grant would be issued (by any issuer, when listing all).
    pub allowed: bool,
    /// The note on how the issuer was chosen, when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub issuers: Vec<IssuerVerdict>,
}

/// One issuer's answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerVerdict {
    pub issuer: String,
    pub allowed: bool,
    /// `Allowed`, or the Ready reason the grant would get: `Forbidden`,
    /// `InvalidSpec` or `IssuerNotFound`.
    pub reason: String,
    pub message: String,
    /// The rule that allows it.
    pub rule: Option<usize>,
    /// Every rule's verdict (empty unless the rules were evaluated).
    pub rules: Vec<RuleView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleView {
    pub rule: usize,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

fn rules(verdicts: &[RuleVerdict]) -> Vec<RuleView> {
    verdicts
        .iter()
        .map(|v| RuleView {
            rule: v.rule,
            allowed: v.allows(),
            refusal: v.refusal.clone(),
        })
        .collect()
}

/// The grant the flags describe, as the operator would read it.
pub fn grant(namespace: &str, args: &Args) -> Result<UploadGrant, Error> {
    let mut spec = serde_json::json!({
        "bucket": args.bucket, "key": args.key, "method": args.method, "ttl": args.ttl,
    });
    if let Some(issuer) = &args.issuer {
        spec["issuerRef"] = serde_json::json!({"name": issuer});
    }
    if let Some(n) = args.content_length {
        spec["contentLength"] = serde_json::json!(n);
    }
    if let (Some(parts), Some(size)) = (args.parts, &args.part_size) {
        spec["multipart"] = serde_json::json!({"parts": parts, "partSize": size_value(size)});
    }
    if let Some(range) = &args.content_length_range {
        let (min, max) = range.split_once(':').ok_or_else(|| {
            Error::Invalid(format!("--content-length-range {range:?} is not MIN:MAX"))
        })?;
        spec["contentLengthRange"] =
            serde_json::json!({"min": size_value(min), "max": size_value(max)});
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "grants.io/v1alpha1", "kind": "UploadGrant",
        "metadata": {"name": args.name, "namespace": namespace},
        "spec": spec,
    }))
    .map_err(|e| Error::Invalid(format!("the flags do not make a grant: {e}")))
}

/// A size flag as the spec takes it: a number of bytes, or a quantity.
fn size_value(s: &str) -> serde_json::Value {
    match s.parse::<i64>() {
        Ok(n) => serde_json::json!(n),
        Err(_) => serde_json::json!(s),
    }
}

/// One issuer's verdict on the grant: the operator's admission, unchanged.
pub fn verdict(
    grant: &UploadGrant,
    name: &str,
    issuer: Option<&ClusterGrantIssuer>,
    labels: &BTreeMap<String, String>,
    propagation: Duration,
) -> IssuerVerdict {
    let admission = Admission {
        grant,
        issuer_name: Some(name),
        issuer,
        namespace_labels: labels,
        propagation,
    };
    match admit(&admission) {
        Ok(a) => IssuerVerdict {
            issuer: name.to_owned(),
            allowed: true,
            reason: "Allowed".into(),
            message: format!("ClusterGrantIssuer {name:?} allows it by allow[{}]", a.rule),
            rule: Some(a.rule),
            rules: rules(&a.verdicts),
        },
        Err(r) => IssuerVerdict {
            issuer: name.to_owned(),
            allowed: false,
            reason: r.reason.as_str().into(),
            message: r.message,
            rule: None,
            rules: rules(&r.verdicts),
        },
    }
}

/// The text answer: a verdict line per issuer, then each rule's.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    if let Some(note) = &report.note {
        out += &format!("{note}\n");
    }
    for v in &report.issuers {
        // With every rule's refusal listed below, the head need not repeat them.
        let message = match (v.allowed, v.rules.is_empty()) {
            (false, false) => format!("ClusterGrantIssuer {:?}: no allow rule matches", v.issuer),
            _ => v.message.clone(),
        };
        let head = match v.allowed {
            true => "ALLOWED".to_owned(),
            false => format!("DENIED ({})", v.reason),
        };
        out += &format!("{head}: {message}\n");
        for r in &v.rules {
            let what = r.refusal.as_deref().unwrap_or("allows it");
            out += &format!("  allow[{}]: {what}\n", r.rule);
        }
    }
    out
}

async fn namespace_labels(conn: &Conn) -> Result<BTreeMap<String, String>, Error> {
    let ns = Api::<Namespace>::all(conn.client.clone())
        .get_opt(&conn.namespace)
        .await?
        .ok_or_else(|| Error::NotFound(format!("namespace {:?} not found", conn.namespace)))?;
    Ok(ns.labels().clone())
}

pub async fn run(conn: &Conn, args: Args) -> Result<Outcome, Error> {
    let grant = grant(&conn.namespace, &args)?;
    let labels = namespace_labels(conn).await?;
    let issuers: Api<ClusterGrantIssuer> = Api::all(conn.client.clone());
    let budget = args.propagation_budget;
    let (verdicts, note) = match args.issuer.as_ref().or(args.default_issuer.as_ref()) {
        Some(name) => {
            let issuer = issuers.get_opt(name).await?;
            (
                vec![verdict(&grant, name, issuer.as_ref(), &labels, budget)],
                None,
            )
        }
        None => {
            let all = issuers.list(&ListParams::default()).await?.items;
            let each = all
                .iter()
                .map(|i| verdict(&grant, &i.name_any(), Some(i), &labels, budget))
                .collect();
            let note = "No --issuer or --default-issuer: the grant needs spec.issuerRef (or an \
                        operator default). Every ClusterGrantIssuer's verdict:";
            (each, Some(note.to_owned()))
        }
    };
    let report = Report {
        namespace: conn.namespace.clone(),
        name: args.name.clone(),
        allowed: verdicts.iter().any(|v| v.allowed),
        note,
        issuers: verdicts,
    };
    match render(args.output, &report)? {
        Some(text) => print!("{text}"),
        None if report.issuers.is_empty() => println!("DENIED: there is no ClusterGrantIssuer"),
        None => print!("{}", render_text(&report)),
    }
    Ok(match report.allowed {
        true => Outcome::Success,
        false => Outcome::Negative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::limits::DEFAULT_PROPAGATION_BUDGET;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let base = ["check", "--bucket", "reports", "--key", "team/a.csv"];
        Wrap::parse_from(base.iter().chain(extra)).args
    }

    fn check(extra: &[&str], rules: serde_json::Value) -> IssuerVerdict {
        let a = args(extra);
        let g = grant("team", &a).expect("a grant");
        let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        verdict(
            &g,
            "default",
            Some(&crate::fixtures::issuer("default", rules)),
            &labels,
            a.propagation_budget,
        )
    }

    #[test]
    fn flags_default_like_the_crd_and_the_operator() {
        let a = args(&[]);
        assert_eq!(
            (a.method, a.ttl.as_str(), a.name.as_str()),
            (Method::Put, "1h", "check")
        );
        assert_eq!(a.propagation_budget, DEFAULT_PROPAGATION_BUDGET);
        assert_eq!(args(&["--method", "get"]).method, Method::Get);
    }

    #[test]
    fn a_post_check_takes_its_size_range() {
        let rules = serde_json::json!([{"buckets": ["reports"], "maxContentLength": "1Mi"}]);
        let unbounded = check(&["--method", "POST"], rules.clone());
        assert!(!unbounded.allowed, "{unbounded:?}");
        assert!(
            unbounded.message.contains("contentLengthRange"),
            "{unbounded:?}"
        );
        let bounded = check(
            &["--method", "post", "--content-length-range", "1:1Mi"],
            rules.clone(),
        );
        assert!(bounded.allowed, "{bounded:?}");
        let big = check(
            &["--method", "POST", "--content-length-range", "0:2Mi"],
            rules,
        );
        assert!(!big.allowed, "{big:?}");
        let a = args(&["--method", "POST", "--content-length-range", "nope"]);
        assert!(grant("team", &a).is_err());
    }

    #[test]
    fn a_multipart_check_takes_its_parts_and_size() {
        let rules = |max_parts: u32| {
            serde_json::json!([{"buckets": ["reports"], "multipart": true,
                "maxParts": max_parts, "maxContentLength": "1Gi"}])
        };
        let flags = ["--parts", "100", "--part-size", "8Mi"];
        let allowed = check(&flags, rules(100));
        assert!(allowed.allowed, "{allowed:?}");
        let too_many = check(&flags, rules(10));
        assert!(!too_many.allowed, "{too_many:?}");
        assert!(too_many.message.contains("maxParts 10"), "{too_many:?}");
        // 200 × 8Mi is more than the rule's 1Gi.
        let too_big = check(&["--parts", "200", "--part-size", "8Mi"], rules(1000));
        assert!(!too_big.allowed, "{too_big:?}");
        let without_multipart = check(&flags, serde_json::json!([{"buckets": ["reports"]}]));
        assert!(!without_multipart.allowed, "{without_multipart:?}");
        // One without the other is a usage error.
        let half = Wrap::try_parse_from(["check", "--bucket", "b", "--key", "k", "--parts", "3"]);
        assert!(half.is_err());
    }

    #[test]
    fn an_allowed_grant_names_its_rule() {
        let rules = serde_json::json!([{"buckets": ["x"]}, {"buckets": ["reports"], "keyPrefixes": ["{namespace}/"]}]);
        let v = check(&[], rules);
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.rule, Some(1));
        let text = render_text(&Report {
            namespace: "team".into(),
            name: "check".into(),
            allowed: true,
            note: None,
            issuers: vec![v],
        });
        assert!(text.starts_with("ALLOWED: ClusterGrantIssuer \"default\" allows it by allow[1]"));
        assert!(
            text.contains("  allow[0]: bucket \"reports\" is not one of [\"x\"]"),
            "{text}"
        );
        assert!(text.contains("  allow[1]: allows it"), "{text}");
    }

    #[test]
    fn a_denied_grant_says_why_each_rule_refuses() {
        let rules = serde_json::json!([{"buckets": ["reports"], "methods": ["GET"]},
            {"buckets": ["reports"], "maxContentLength": "1Ki"}]);
        let v = check(&["--content-length", "2048"], rules);
        assert_eq!((v.allowed, v.reason.as_str()), (false, "Forbidden"));
        let refusals: Vec<_> = v.rules.iter().filter_map(|r| r.refusal.clone()).collect();
        assert!(refusals[0].contains("method PUT"), "{refusals:?}");
        assert!(
            refusals[1].contains("larger than maxContentLength"),
            "{refusals:?}"
        );
    }

    #[test]
    fn an_invalid_spec_is_invalid_before_any_rule() {
        let v = check(
            &["--ttl", "2m"],
            serde_json::json!([{"buckets": ["reports"]}]),
        );
        assert_eq!((v.allowed, v.reason.as_str()), (false, "InvalidSpec"));
        assert!(v.message.contains("propagation budget"), "{}", v.message);
        let zero = check(
            &["--ttl", "2m", "--propagation-budget", "0s"],
            serde_json::json!([{"buckets": ["reports"]}]),
        );
        assert!(zero.allowed, "{zero:?}");
    }

    #[test]
    fn a_missing_issuer_is_issuer_not_found() {
        let a = args(&["--issuer", "gone"]);
        let g = grant("team", &a).expect("a grant");
        let v = verdict(&g, "gone", None, &BTreeMap::new(), a.propagation_budget);
        assert_eq!(v.reason, "IssuerNotFound");
    }
}
