//! Least privilege, from the issuers: the rules that allow more than they
//! name (`risks`, shown in issuer status and at `kubectl apply`), and the
//! AWS policies that allow the operator's role no more than the rules do
//! (`iam`, printed by `upload-grant-operator policy`).

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
    #[error("{path}: not ClusterGrantIssuer YAML: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("listing ClusterGrantIssuers: {0}")]
    Kube(#[from] kube::Error),
    #[error("no ClusterGrantIssuer found{0}")]
    Empty(String),
}

/// The issuers in `files` (YAML, several documents each; other kinds are
/// skipped), or else every issuer in the cluster; only `names` if given.
pub async fn load(
    files: &[PathBuf],
    names: &[String],
) -> Result<Vec<ClusterGrantIssuer>, LoadError> {
    let mut issuers = if files.is_empty() {
        let client = Client::try_default().await.map_err(LoadError::Kube)?;
        Api::<ClusterGrantIssuer>::all(client)
            .list(&ListParams::default())
            .await?
            .items
    } else {
        let mut found = Vec::new();
        for path in files {
            found.extend(from_file(path)?);
        }
        found
    };
    if !names.is_empty() {
        issuers.retain(|i| i.metadata.name.as_ref().is_some_and(|n| names.contains(n)));
    }
    if issuers.is_empty() {
        let which = if names.is_empty() {
            String::new()
        } else {
            format!(" named {names:?}")
        };
        return Err(LoadError::Empty(which));
    }
    Ok(issuers)
}

fn from_file(path: &std::path::Path) -> Result<Vec<ClusterGrantIssuer>, LoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::File {
        path: shown.clone(),
        source,
    })?;
    let mut issuers = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|source| LoadError::Parse {
                path: shown.clone(),
                source,
            })?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("ClusterGrantIssuer") {
            continue;
        }
        let issuer = serde_yaml::from_value(value).map_err(|source| LoadError::Parse {
            path: shown.clone(),
            source,
        })?;
        issuers.push(issuer);
    }
    Ok(issuers)
}
