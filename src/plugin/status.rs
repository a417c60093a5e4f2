//! `kubectl grant status`: what each grant's Ready condition, times and
//! Secret say, as a table or as a stable JSON/YAML structure.

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::output::{Format, relative, render, table};
use super::{Conn, Error, Outcome, secret_name};
use crate::api::condition::ready_condition;
use crate::api::{Size, UploadGrant};

/// How many of a grant's events `status NAME` shows.
const RECENT_EVENTS: usize = 5;

/// Show grants: Ready, reason, when the URL expires and renews.
///
/// Exits 3 if any grant shown is not Ready.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One grant: also its Ready condition in full, its times, URL
    /// fingerprint and recent events.
    pub name: Option<String>,
    /// Grants in every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// The structure of `-o json|yaml`: `{"grants": [GrantView…]}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub grants: Vec<GrantView>,
}

/// One grant as `status` shows it. Times are RFC 3339; absent ones are null.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    pub namespace: String,
    pub name: String,
    pub method: String,
    pub bucket: String,
    pub key: String,
    /// spec.issuerRef.name; null when the operator's default issuer is used.
    pub issuer: Option<String>,
    pub secret: String,
    pub ready: Option<ReadyView>,
    pub issued_at: Option<String>,
    pub expires_at: Option<String>,
    pub refresh_at: Option<String>,
    pub url_fingerprint: Option<String>,
    /// Multipart grants: the parts asked for and the upload they belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipart: Option<MultipartView>,
    /// Only for one named grant: its recent events, newest last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

/// A multipart grant's upload.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MultipartView {
    pub parts: u32,
    /// As the spec says it: bytes, or a quantity like 64Mi.
    pub part_size: String,
    /// S3's id of the upload; null until the operator has started it.
    pub upload_id: Option<String>,
}

impl MultipartView {
    /// "3 parts of 64Mi".
    fn describe(&self) -> String {
        format!("{} parts of {}", self.parts, self.part_size)
    }
}

/// The Ready condition, in full.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReadyView {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    pub time: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
}

impl GrantView {
    pub fn is_ready(&self) -> bool {
        self.ready.as_ref().is_some_and(|r| r.status == "True")
    }
}

pub fn view(grant: &UploadGrant) -> GrantView {
    let status = grant.status.as_ref();
    let time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| t.0.to_string())
    };
    GrantView {
        namespace: grant.namespace().unwrap_or_default(),
        name: grant.name_any(),
        method: grant.spec.method.to_string(),
        bucket: grant.spec.bucket.clone(),
        key: grant.spec.key.clone(),
        issuer: grant.spec.issuer_ref.as_ref().map(|r| r.name.clone()),
        secret: secret_name(grant),
        ready: ready_condition(status).map(|c| ReadyView {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: c.observed_generation,
            last_transition_time: c.last_transition_time.0.to_string(),
        }),
        issued_at: time(status.and_then(|s| s.issued_at.as_ref())),
        expires_at: time(status.and_then(|s| s.expires_at.as_ref())),
        refresh_at: time(status.and_then(|s| s.refresh_at.as_ref())),
        url_fingerprint: status.and_then(|s| s.url_fingerprint.clone()),
        multipart: grant.spec.multipart.as_ref().map(|m| MultipartView {
            parts: m.parts,
            part_size: match &m.part_size {
                Size::Bytes(n) => n.to_string(),
                Size::Quantity(q) => q.clone(),
            },
            upload_id: status.and_then(|s| s.upload_id.clone()),
        }),
        events: None,
    }
}

/// The table: one row per grant, NAMESPACE first with `-A`.
pub fn render_table(grants: &[GrantView], with_namespace: bool, now: jiff::Timestamp) -> String {
    let mut headers = vec![
        "NAME",
        "METHOD",
        "BUCKET/KEY",
        "READY",
        "REASON",
        "EXPIRES IN",
        "RENEWS IN",
        "ISSUER",
        "SECRET",
    ];
    if with_namespace {
        headers.insert(0, "NAMESPACE");
    }
    let at = |t: &Option<String>| relative(now, t.as_deref().and_then(|t| t.parse().ok()));
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            let ready = g.ready.as_ref();
            let mut row = vec![
                g.name.clone(),
                match &g.multipart {
                    Some(m) => format!("{} ({})", g.method, m.describe()),
                    None => g.method.clone(),
                },
                format!("{}/{}", g.bucket, g.key),
                ready.map_or("-".into(), |r| r.status.clone()),
                ready.map_or("-".into(), |r| r.reason.clone()),
                at(&g.expires_at),
                at(&g.refresh_at),
                g.issuer.clone().unwrap_or_else(|| "(default)".into()),
                g.secret.clone(),
            ];
            if with_namespace {
                row.insert(0, g.namespace.clone());
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// The rest of `status NAME`: the condition, times and events.
pub fn render_detail(g: &GrantView, now: jiff::Timestamp) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = String::new();
    match &g.ready {
        Some(r) => {
            let generation = r.observed_generation.map_or("-".into(), |n| n.to_string());
            out += &format!(
                "Ready:           {} ({}), observedGeneration {generation}, since {}\n",
                r.status, r.reason, r.last_transition_time
            );
            out += &format!("Message:         {}\n", r.message);
        }
        None => out += "Ready:           - (the operator has not reported on this grant)\n",
    }
    out += &format!("Issued at:       {}\n", or_dash(&g.issued_at));
    out += &format!("Expires at:      {}\n", or_dash(&g.expires_at));
    out += &format!("Refresh at:      {}\n", or_dash(&g.refresh_at));
    out += &format!("URL fingerprint: {}\n", or_dash(&g.url_fingerprint));
    if let Some(m) = &g.multipart {
        let id = m.upload_id.as_deref().unwrap_or("- (not started yet)");
        out += &format!("Upload:          {id}, {}\n", m.describe());
    }
    let events = g.events.as_deref().unwrap_or_default();
    if events.is_empty() {
        out += "Events:          none\n";
        return out;
    }
    out += "Events (newest last):\n";
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let age = relative(now, e.time.as_deref().and_then(|t| t.parse().ok()));
            let age = age.strip_suffix(" ago").unwrap_or(&age).to_owned();
            vec![age, e.type_.clone(), e.reason.clone(), e.note.clone()]
        })
        .collect();
    for line in table(&["AGE", "TYPE", "REASON", "NOTE"], &rows).lines() {
        out += &format!("  {line}\n");
    }
    out
}

/// An event's own time, else when it was last seen or made.
fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.event_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The grant's last few events, newest last; events of an earlier grant of
/// the same name are left out.
pub fn recent_events(mut events: Vec<Event>, uid: Option<&str>) -> Vec<EventView> {
    events.retain(|e| {
        let regarding = e.regarding.as_ref();
        let same = |r: &&k8s_openapi::api::core::v1::ObjectReference| {
            uid.is_none() || r.uid.is_none() || r.uid.as_deref() == uid
        };
        regarding.filter(same).is_some()
    });
    events.sort_by_key(event_time);
    let skip = events.len().saturating_sub(RECENT_EVENTS);
    events
        .into_iter()
        .skip(skip)
        .map(|e| EventView {
            time: event_time(&e).map(|t| t.to_string()),
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
        })
        .collect()
}

async fn events_of(conn: &Conn, grant: &UploadGrant) -> Result<Vec<EventView>, Error> {
    let api: Api<Event> = conn.api();
    let selector = format!(
        "regarding.name={},regarding.kind=UploadGrant",
        grant.name_any()
    );
    let list = api.list(&ListParams::default().fields(&selector)).await?;
    Ok(recent_events(list.items, grant.metadata.uid.as_deref()))
}

/// The grants to show: the named one with its events, else every grant in
/// the namespace (or all namespaces), sorted.
async fn load(conn: &Conn, args: &Args) -> Result<Vec<GrantView>, Error> {
    if let Some(name) = &args.name {
        let grant = conn.grant(name).await?;
        let mut v = view(&grant);
        v.events = Some(events_of(conn, &grant).await?);
        return Ok(vec![v]);
    }
    let api: Api<UploadGrant> = match args.all_namespaces {
        true => Api::all(conn.client.clone()),
        false => conn.api(),
    };
    let mut list = api.list(&ListParams::default()).await?.items;
    list.sort_by_key(|g| (g.namespace(), g.name_any()));
    Ok(list.iter().map(view).collect())
}

pub async fn run(conn: &Conn, args: Args) -> Result<Outcome, Error> {
    let now = jiff::Timestamp::now();
    let report = Report {
        grants: load(conn, &args).await?,
    };
    let outcome = match report.grants.iter().all(GrantView::is_ready) {
        true => Outcome::Success,
        false => Outcome::Negative,
    };
    if let Some(text) = render(args.output, &report)? {
        print!("{text}");
    } else if report.grants.is_empty() {
        let scope = match args.all_namespaces {
            true => "any namespace".to_owned(),
            false => format!("namespace {:?}", conn.namespace),
        };
        eprintln!("No UploadGrants found in {scope}.");
    } else {
        print!("{}", render_table(&report.grants, args.all_namespaces, now));
        if let (Some(_), [one]) = (&args.name, report.grants.as_slice()) {
            print!("{}", render_detail(one, now));
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base grant as "nightly" in "team", issued and Ready.
    fn grant() -> UploadGrant {
        crate::fixtures::grant_with(serde_json::json!({
            "metadata": {"name": "nightly", "namespace": "team", "uid": null},
            "spec": {"key": "team/a.csv", "issuerRef": {"name": "default"}},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                    "message": "URL valid", "observedGeneration": 2,
                    "lastTransitionTime": "2027-01-15T08:00:00Z"}],
                "secretName": "nightly", "expiresAt": "2027-01-15T09:00:00Z",
                "refreshAt": "2027-01-15T08:40:00Z", "issuedAt": "2027-01-15T08:00:00Z",
                "urlFingerprint": "sha256:0123456789abcdef",
            },
        }))
    }

    fn now() -> jiff::Timestamp {
        "2027-01-15T08:18:00Z".parse().expect("a time")
    }

    #[test]
    fn a_grant_becomes_one_row_with_relative_times() {
        let v = view(&grant());
        assert!(v.is_ready());
        let text = render_table(&[v], false, now());
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        assert!(
            header.starts_with("NAME      METHOD   BUCKET/KEY"),
            "{header}"
        );
        let row: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "nightly",
                "PUT",
                "reports/team/a.csv",
                "True",
                "Issued",
                "42m",
                "22m",
                "default",
                "nightly"
            ]
        );
    }

    #[test]
    fn all_namespaces_adds_the_namespace_column() {
        let text = render_table(&[view(&grant())], true, now());
        assert!(text.starts_with("NAMESPACE   NAME"), "{text}");
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("team ")));
    }

    #[test]
    fn a_grant_without_status_is_not_ready_and_shows_dashes() {
        let mut g = grant();
        g.status = None;
        let v = view(&g);
        assert!(!v.is_ready());
        let text = render_table(std::slice::from_ref(&v), false, now());
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(&row[3..7], ["-", "-", "-", "-"]);
        assert!(render_detail(&v, now()).contains("has not reported"));
    }

    #[test]
    fn a_multipart_grant_shows_its_parts_and_upload() {
        let mut g = grant();
        g.spec.multipart = Some(crate::api::Multipart {
            parts: 3,
            part_size: Size::Quantity("64Mi".into()),
        });
        let started = |id: Option<&str>| {
            let mut g = g.clone();
            if let Some(status) = g.status.as_mut() {
                status.upload_id = id.map(str::to_owned);
            }
            view(&g)
        };
        let v = started(Some("u-123"));
        let row = render_table(std::slice::from_ref(&v), false, now());
        assert!(row.contains("PUT (3 parts of 64Mi)"), "{row}");
        let detail = render_detail(&v, now());
        assert!(
            detail.contains("Upload:          u-123, 3 parts of 64Mi"),
            "{detail}"
        );
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(
            json["multipart"],
            serde_json::json!({"parts": 3, "partSize": "64Mi", "uploadId": "u-123"})
        );
        let waiting = render_detail(&started(None), now());
        assert!(waiting.contains("- (not started yet)"), "{waiting}");
        // Other grants keep their JSON as it was.
        assert!(
            serde_json::to_value(view(&grant()))
                .expect("json")
                .get("multipart")
                .is_none()
        );
    }

    #[test]
    fn the_json_structure_is_stable() {
        let json = serde_json::to_value(Report {
            grants: vec![view(&grant())],
        })
        .expect("json");
        assert_eq!(
            json["grants"][0],
            serde_json::json!({
                "namespace": "team", "name": "nightly", "method": "PUT", "bucket": "reports",
                "key": "team/a.csv", "issuer": "default", "secret": "nightly",
                "ready": {"status": "True", "reason": "Issued", "message": "URL valid",
                    "observedGeneration": 2, "lastTransitionTime": "2027-01-15T08:00:00Z"},
                "issuedAt": "2027-01-15T08:00:00Z", "expiresAt": "2027-01-15T09:00:00Z",
                "refreshAt": "2027-01-15T08:40:00Z", "urlFingerprint": "sha256:0123456789abcdef",
            })
        );
    }

    fn event(name: &str, uid: &str, reason: &str, at: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "eventTime": at, "type": "Normal", "reason": reason, "note": reason,
            "regarding": {"kind": "UploadGrant", "name": "nightly", "uid": uid},
        }))
        .expect("fixture event")
    }

    #[test]
    fn recent_events_are_the_grants_own_newest_last() {
        let mut events: Vec<Event> = (0..7)
            .map(|i| {
                let at = format!("2027-01-15T08:0{i}:00.000000Z");
                event(&format!("e{i}"), "u", &format!("R{i}"), &at)
            })
            .collect();
        events.reverse();
        events.push(event(
            "old",
            "other-uid",
            "Old",
            "2027-01-15T08:09:00.000000Z",
        ));
        let shown: Vec<String> = recent_events(events, Some("u"))
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(shown, ["R2", "R3", "R4", "R5", "R6"]);
    }

    #[test]
    fn the_detail_shows_condition_times_and_events() {
        let mut v = view(&grant());
        v.events = Some(vec![EventView {
            time: Some("2027-01-15T08:00:00Z".into()),
            type_: "Normal".into(),
            reason: "Issued".into(),
            note: "URL issued".into(),
        }]);
        let text = render_detail(&v, now());
        for want in [
            "Ready:           True (Issued), observedGeneration 2, since 2027-01-15T08:00:00Z",
            "Message:         URL valid",
            "URL fingerprint: sha256:0123456789abcdef",
            "AGE   TYPE     REASON   NOTE",
            "18m   Normal   Issued   URL issued",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
