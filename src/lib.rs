//! upload-grant-operator: issues, renews and revokes S3 presigned URLs as
//! Secrets, for UploadGrants allowed by a ClusterGrantIssuer.

pub mod api;
pub mod controller;
pub mod drain;
pub mod error;
pub mod fence;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod hardening;
pub mod issuer;
pub mod kube_client;
pub mod leader;
pub mod malloc;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod replica;
pub mod server;
pub mod shard;
pub mod signing;
pub mod telemetry;
pub mod uploads;
