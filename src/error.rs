//! The errors a reconcile can end with. Each has a bounded category for
//! metrics; none carries a URL or a token.

use crate::signing::{CredentialsError, SigningError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("credentials unavailable: {0}")]
    Credentials(#[from] CredentialsError),
    #[error("signing failed: {0}")]
    Signing(#[from] SigningError),
    #[error("the grant has no name, namespace or uid yet")]
    IncompleteObject,
    #[error("serialising the Secret's headers: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("updating the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
}

impl Error {
    /// A short, fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Credentials(_) => "credentials",
            Error::Signing(_) => "signing",
            Error::IncompleteObject => "invalid_object",
            Error::Serialize(_) => "build",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
