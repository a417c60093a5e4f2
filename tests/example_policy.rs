//! The example issuer admits every example grant, for a namespace labelled
//! as the Quickstart labels it, and draws no risk warning: a newcomer who
//! applies examples/ gets URLs, not Forbidden.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use upload_grant_operator::api::{ClusterGrantIssuer, UploadGrant};
use upload_grant_operator::controller::decide::{Admission, admit};
use upload_grant_operator::policy::risks::risks;

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_example_issuers_draw_no_warning() {
    for file in ["issuer.yaml", "issuer-s3-compatible.yaml"] {
        let issuer: ClusterGrantIssuer = example(file);
        let found: Vec<String> = risks(&issuer.spec).iter().map(|r| r.to_string()).collect();
        assert!(found.is_empty(), "{file}: {found:?}");
    }
}

#[test]
fn the_example_issuer_admits_every_example_grant() {
    let issuer: ClusterGrantIssuer = example("issuer.yaml");
    let labels = BTreeMap::from([("team".to_owned(), "analytics".to_owned())]);
    let unlabelled = BTreeMap::new();
    for file in [
        "grant-put.yaml",
        "grant-get.yaml",
        "grant-post.yaml",
        "grant-multipart.yaml",
    ] {
        let grant: UploadGrant = example(file);
        let admission = |namespace_labels| Admission {
            grant: &grant,
            issuer_name: Some("default"),
            issuer: Some(&issuer),
            namespace_labels,
            propagation: Duration::from_secs(120),
        };
        if let Err(refused) = admit(&admission(&labels)) {
            panic!("{file}: {}", refused.message);
        }
        // The label is what admits it: the Quickstart must set it.
        assert!(admit(&admission(&unlabelled)).is_err(), "{file}");
    }
}
