//! Least privilege, from the issuers: the rules that allow more than they
//! name (`risks`, shown in issuer status and at `kubectl apply`), and the
//! AWS policies that allow the operator's role no more than the rules do
//! (`iam`, printed by `upload-grant-operator policy`), for the namespaces
//! the rules apply to.

pub mod iam;
pub mod risks;

use std::path::PathBuf;

use kube::api::ListParams;
use kube::{Api, Client};
use serde::Deserialize;

use crate::api::ClusterGrantIssuer;

/// Why the issuers could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not ClusterGrantIssuer or Namespace YAML: {source}")]
    Parse {
        path: String,
        source: serde_norway::Error,
    },
    #[error("listing ClusterGrantIssuers: {0}")]
    Kube(#[from] kube::Error),
    #[error("listing Namespaces: {0}")]
    Namespaces(kube::Error),
    #[error("no ClusterGrantIssuer found{0}")]
    Empty(String),
    #[error(
        "--namespaces is for issuers read with -f: with the cluster's issuers, the namespaces are read from the cluster too"
    )]
    NamespacesWithoutFiles,
}

/// What `policy` reads: the issuers, and the namespaces their rules may
/// apply to (None: not known, only with `-f`).
#[derive(Debug, Clone)]
pub struct Input {
    pub issuers: Vec<ClusterGrantIssuer>,
    pub namespaces: Option<Vec<iam::Namespace>>,
}

/// The issuers in `files` (YAML, several documents each, `kind: List`
/// included; other kinds are skipped), or else every issuer in the cluster;
/// only `names` if given. With `namespaces`, also the namespaces: the
/// cluster's, or the Namespace objects in `files` and the names `listed`
/// (labels unknown); None when the files give neither.
pub async fn load(
    files: &[PathBuf],
    names: &[String],
    listed: &[String],
    namespaces: bool,
) -> Result<Input, LoadError> {
    let mut input = if files.is_empty() {
        if !listed.is_empty() {
            return Err(LoadError::NamespacesWithoutFiles);
        }
        let client = Client::try_default().await.map_err(LoadError::Kube)?;
        let issuers = Api::<ClusterGrantIssuer>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let namespaces = if namespaces {
            let list = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
                .list(&ListParams::default())
                .await
                .map_err(LoadError::Namespaces)?;
            Some(list.items.iter().filter_map(namespace).collect())
        } else {
            None
        };
        Input {
            issuers,
            namespaces,
        }
    } else {
        let mut found = Found::default();
        for path in files {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::File {
                path: shown.clone(),
                source,
            })?;
            found.extend(parse(&text, &shown)?);
        }
        Input {
            issuers: found.issuers,
            namespaces: namespaces
                .then(|| with_listed(found.namespaces, listed))
                .flatten(),
        }
    };
    if !names.is_empty() {
        input
            .issuers
            .retain(|i| i.metadata.name.as_ref().is_some_and(|n| names.contains(n)));
    }
    if input.issuers.is_empty() {
        let which = if names.is_empty() {
            String::new()
        } else {
            format!(" named {names:?}")
        };
        return Err(LoadError::Empty(which));
    }
    Ok(input)
}

/// The namespaces from the files, and the names listed that they do not
/// describe (labels unknown); None when there are neither.
fn with_listed(mut found: Vec<iam::Namespace>, listed: &[String]) -> Option<Vec<iam::Namespace>> {
    for name in listed {
        if !found.iter().any(|n| &n.name == name) {
            found.push(iam::Namespace {
                name: name.clone(),
                labels: None,
            });
        }
    }
    if found.is_empty() {
        return None;
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Some(found)
}

/// A Namespace object as the policy sees it; None without a name.
fn namespace(ns: &k8s_openapi::api::core::v1::Namespace) -> Option<iam::Namespace> {
    Some(iam::Namespace {
        name: ns.metadata.name.clone()?,
        labels: Some(ns.metadata.labels.clone().unwrap_or_default()),
    })
}

/// The issuers and namespaces in the files.
#[derive(Debug, Default)]
struct Found {
    issuers: Vec<ClusterGrantIssuer>,
    namespaces: Vec<iam::Namespace>,
}

impl Found {
    fn extend(&mut self, other: Found) {
        self.issuers.extend(other.issuers);
        self.namespaces.extend(other.namespaces);
    }
}

/// The ClusterGrantIssuers and Namespaces in one file's YAML documents, and
/// in the items of `kind: List` documents (as `kubectl get -o yaml` writes).
fn parse(text: &str, shown: &str) -> Result<Found, LoadError> {
    let error = |source| LoadError::Parse {
        path: shown.to_owned(),
        source,
    };
    let mut found = Found::default();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(document).map_err(error)?;
        let objects = match value.get("items").and_then(|i| i.as_sequence()) {
            Some(items)
                if value
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                items.clone()
            }
            _ => vec![value],
        };
        for object in objects {
            match object.get("kind").and_then(|k| k.as_str()) {
                Some("ClusterGrantIssuer") => {
                    found
                        .issuers
                        .push(serde_norway::from_value(object).map_err(error)?);
                }
                Some("Namespace") => {
                    let ns: k8s_openapi::api::core::v1::Namespace =
                        serde_norway::from_value(object).map_err(error)?;
                    found.namespaces.extend(namespace(&ns));
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(found: &Found) -> (Vec<String>, Vec<(String, Option<usize>)>) {
        (
            found
                .issuers
                .iter()
                .filter_map(|i| i.metadata.name.clone())
                .collect(),
            found
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.as_ref().map(BTreeMap::len)))
                .collect(),
        )
    }

    use std::collections::BTreeMap;

    const ISSUER: &str = "apiVersion: grants.io/v1alpha1
kind: ClusterGrantIssuer
metadata: {name: a}
spec: {s3: {region: eu-west-1}, allow: [{buckets: [b]}]}
";

    #[test]
    fn files_give_issuers_and_namespaces_and_skip_the_rest() {
        let text = format!(
            "{ISSUER}---
apiVersion: v1
kind: Namespace
metadata: {{name: team-a, labels: {{team: a, kubernetes.io/metadata.name: team-a}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: other}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {{name: team-b}}
- apiVersion: grants.io/v1alpha1
  kind: ClusterGrantIssuer
  metadata: {{name: b}}
  spec: {{s3: {{region: eu-west-1}}}}
"
        );
        let found = parse(&text, "f.yaml").expect("parses");
        assert_eq!(
            names(&found),
            (
                vec!["a".to_owned(), "b".to_owned()],
                vec![
                    ("team-a".to_owned(), Some(2)),
                    ("team-b".to_owned(), Some(0))
                ]
            )
        );
        let bad = parse("kind: ClusterGrantIssuer\nspec: 3\n", "bad.yaml").expect_err("no spec");
        assert!(bad.to_string().starts_with("bad.yaml: "), "{bad}");
    }

    #[test]
    fn listed_names_add_namespaces_whose_labels_are_unknown() {
        let known = |name: &str| iam::Namespace {
            name: name.to_owned(),
            labels: Some(BTreeMap::from([("team".to_owned(), name.to_owned())])),
        };
        let listed = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(with_listed(Vec::new(), &[]), None, "nothing known");
        let got = with_listed(vec![known("b")], &listed(&["c", "b", "a"])).unwrap_or_default();
        let shown: Vec<(&str, bool)> = got
            .iter()
            .map(|n| (n.name.as_str(), n.labels.is_some()))
            .collect();
        assert_eq!(shown, [("a", false), ("b", true), ("c", false)]);
    }
}
