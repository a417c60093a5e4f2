//! The chart's alerts and dashboard, checked with promtool (Debian's, cached
//! by tools/testenv/build.sh) and helm from the component cache; no cluster.
//!
//! - The PrometheusRule's groups parse (`promtool check rules`), and every
//!   alert passes its unit tests in tests/fixtures/alerts (`promtool test
//!   rules`), each with a case where it fires and one where it does not.
//! - Every query of the dashboard parses (each becomes a recording rule for
//!   `promtool check rules`).
//! - Alerts and panels name only metrics the operator exports, as its own
//!   registry lists them (`metrics::exported_names`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod support;

use support::TestResult;

const CHART: &str = "charts/upload-grant-operator";
const FIXTURES: &str = "tests/fixtures/alerts";
/// The release the fixtures' series are labelled for: the default selector
/// is job="<fullname>-metrics",namespace="<release namespace>".
const RELEASE: &str = "r";
const NAMESPACE: &str = "ugo";
const JOB: &str = "r-upload-grant-operator-metrics";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A cached tool's path (tools/testenv/tool.sh builds it first if needed;
/// once per process, as build.sh is not safe to run twice at once).
fn tool(name: &'static str) -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    let cell = match name {
        "helm" => &HELM,
        _ => &PROMTOOL,
    };
    cell.get_or_init(|| {
        let out = Command::new(repo_root().join("tools/testenv/tool.sh"))
            .arg(name)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tools/testenv/tool.sh {name}: {e}"));
        assert!(out.status.success(), "tools/testenv/tool.sh {name} failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Runs `cmd` in the repository: its standard output, or an error with
/// everything it printed.
fn run(mut cmd: Command) -> TestResult<String> {
    let out = cmd.current_dir(repo_root()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(stdout)
}

/// The chart rendered with the PrometheusRule and the dashboard on.
fn rendered() -> TestResult<Vec<serde_json::Value>> {
    let mut helm = Command::new(tool("helm"));
    helm.args(["template", RELEASE, CHART, "-n", NAMESPACE])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .args(["--set", "metrics.dashboard.enabled=true"]);
    support::yaml_documents(&run(helm)?)
}

fn the<'a>(docs: &'a [serde_json::Value], kind: &str) -> TestResult<&'a serde_json::Value> {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind.next().ok_or(format!("no {kind} rendered"))?;
    assert!(of_kind.next().is_none(), "more than one {kind}");
    Ok(doc)
}

/// Runs promtool in `dir`; a failure fails the test with what it printed.
fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names a PromQL expression reads: every identifier that is not
/// a function or aggregation (followed by `(`), a keyword, a label name
/// inside `{…}` or a grouping list (`by (…)`, `on (…)`, …), a string, a
/// number or a duration.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, modifiers and aggregations (which PromQL's lexer reads as
    // keywords, also when `by (…)` comes before their parenthesis).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "start",
        "end",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // The index after the string literal that opens at `from - 1`.
    let after_string = |from: usize, quote: char| {
        let mut j = from;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    // The index after `close`, skipping string literals on the way.
    let skip_to = |from: usize, close: char| {
        let mut j = from;
        while j < chars.len() && chars[j] != close {
            j = match chars[j] {
                q @ ('"' | '\'' | '`') => after_string(j + 1, q),
                _ => j + 1,
            };
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '"' | '\'' | '`' => i = after_string(i + 1, c),
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (5m, 1h30m, 1e3).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if GROUPING.contains(&word.as_str()) {
                    if call {
                        i = skip_to(next + 1, ')');
                    }
                } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let cases: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (
            r#"absent(upload_grant_leader{job="a}",ns=~"b\"c.*"} == 1)"#,
            &["upload_grant_leader"],
        ),
        (
            r#"label_replace(m, "dst", "$1", "src", "(not_a_metric)")"#,
            &["m"],
        ),
        (
            "sum by (job, category) (rate(x_total{category!=\"fenced\"}[10m])) > 0.1",
            &["x_total"],
        ),
        (
            "histogram_quantile(0.99, sum without (pod) (rate(h_bucket[5m])))",
            &["h_bucket"],
        ),
        (
            "a / on (job) group_left (reason) b offset 1h and bool c or d unless e",
            &["a", "b", "c", "d", "e"],
        ),
        ("time() - min(t > 0) + 1e3 * Inf", &["t"]),
        ("sum by (reason) (g) + count without (pod) (h)", &["g", "h"]),
    ];
    for (expr, want) in cases {
        let got: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(got, *want, "{expr}");
    }
}

/// Each name in `names` must be one the operator exports.
fn assert_exported(what: &str, names: &BTreeSet<String>) {
    let exported = upload_grant_operator::metrics::exported_names();
    for name in names {
        assert!(
            exported.contains(name),
            "{what} names {name}, which the operator does not export; it exports {exported:?}"
        );
    }
}

/// The alert tests of tests/fixtures/alerts, by alert: how many cases
/// expect it to fire and how many expect it not to.
fn fixture_cases(files: &[PathBuf]) -> TestResult<BTreeMap<String, (usize, usize)>> {
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for file in files {
        let doc: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(file)?)?;
        let tests = doc["tests"].as_array().cloned().unwrap_or_default();
        for case in tests
            .iter()
            .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        {
            let name = case["alertname"].as_str().unwrap_or_default().to_owned();
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let entry = cases.entry(name).or_default();
            if fires {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    Ok(cases)
}

#[test]
fn every_alert_parses_and_passes_its_promtool_tests() -> TestResult {
    let docs = rendered()?;
    let rule = the(&docs, "PrometheusRule")?;
    assert_eq!(
        rule["metadata"]["namespace"], NAMESPACE,
        "the rule lives with the release"
    );
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_norway::to_string(&rule["spec"])?)?;
    promtool(&["check", "rules", "rules.yaml"], dir.path());

    let alerts: Vec<&serde_json::Value> = rule["spec"]["groups"]
        .as_array()
        .ok_or("no rule groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let names: BTreeSet<String> = alerts
        .iter()
        .filter_map(|a| a["alert"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names.len(),
        7,
        "the alerts docs/src/operations.md documents: {names:?}"
    );
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap_or_default();
        let expr = alert["expr"].as_str().ok_or(format!("{name}: no expr"))?;
        assert!(
            expr.contains(&format!("job=\"{JOB}\",namespace=\"{NAMESPACE}\"")),
            "{name} reads the release's metrics only: {expr}"
        );
        assert_exported(name, &metric_names(expr));
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description", "runbook_url"] {
            assert!(
                alert["annotations"][annotation]
                    .as_str()
                    .is_some_and(|a| !a.is_empty()),
                "{name}: no {annotation}"
            );
        }
    }

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(FIXTURES))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    for file in &files {
        let name = file.file_name().ok_or("a fixture without a name")?;
        std::fs::copy(file, dir.path().join(name))?;
        args.push(name.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    promtool(&args, dir.path());

    let cases = fixture_cases(&files)?;
    for name in &names {
        let (fires, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(
            fires > 0 && quiet > 0,
            "{name} needs a case where it fires ({fires}) and one where it does not ({quiet})"
        );
    }
    for tested in cases.keys() {
        assert!(
            names.contains(tested),
            "a test of {tested}, which no rule defines"
        );
    }
    Ok(())
}

/// The queries of a dashboard's panels, rows' panels included.
fn panel_queries(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.to_owned(), expr.to_owned()));
            }
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_queries(nested, out);
        }
    }
}

#[test]
fn the_dashboard_queries_parse_and_name_only_exported_metrics() -> TestResult {
    let docs = rendered()?;
    let map = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == "r-upload-grant-operator-dashboard"
        })
        .ok_or("no dashboard ConfigMap")?;
    assert_eq!(
        map["metadata"]["labels"]["grafana_dashboard"], "1",
        "the Grafana sidecar's label"
    );
    let data = map["data"].as_object().ok_or("no data")?;
    assert_eq!(data.len(), 1, "one dashboard");
    let json = data
        .values()
        .next()
        .and_then(|v| v.as_str())
        .ok_or("no JSON")?;
    let dashboard: serde_json::Value = serde_json::from_str(json)?;
    let mut queries = Vec::new();
    panel_queries(
        dashboard["panels"].as_array().ok_or("no panels")?,
        &mut queries,
    );
    assert!(queries.len() >= 10, "{} queries", queries.len());

    // Grafana's variables, as a Prometheus would see them.
    let substitute = |expr: &str| expr.replace("$__rate_interval", "5m").replace("$job", JOB);
    let mut rules = Vec::new();
    let mut read = BTreeSet::new();
    for (i, (title, expr)) in queries.iter().enumerate() {
        let expr = substitute(expr);
        assert!(
            !expr.contains('$'),
            "{title}: an unknown variable in {expr}"
        );
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: reads no metric: {expr}");
        assert_exported(title, &names);
        read.extend(names);
        rules.push(serde_json::json!({"record": format!("dashboard_query_{i}"), "expr": expr}));
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.split(',').next())
                .ok_or(format!("variable query {query}"))?;
            assert_exported("a dashboard variable", &metric_names(inner));
        }
    }
    // What the dashboard is for: grants by state, renewals and their slack,
    // requests against the bound, errors by category, credential expiry.
    for metric in [
        "upload_grant_grants",
        "upload_grant_issued_total",
        "upload_grant_renewal_slack_seconds",
        "upload_grant_renewals_at_risk",
        "upload_grant_kube_api_requests_total",
        "upload_grant_kube_api_qps_bound",
        "upload_grant_reconcile_failures_total",
        "upload_grant_credentials_expiry_timestamp_seconds",
    ] {
        assert!(read.contains(metric), "no panel shows {metric}");
    }

    let dir = tempfile::tempdir()?;
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        serde_norway::to_string(&file)?,
    )?;
    promtool(&["check", "rules", "dashboard.yaml"], dir.path());
    Ok(())
}

#[test]
fn alerts_and_dashboard_are_off_by_default() -> TestResult {
    let yaml = run({
        let mut helm = Command::new(tool("helm"));
        helm.args(["template", RELEASE, CHART, "-n", NAMESPACE]);
        helm
    })?;
    assert!(!yaml.contains("kind: PrometheusRule"));
    assert!(!yaml.contains("grafana_dashboard"));
    Ok(())
}
