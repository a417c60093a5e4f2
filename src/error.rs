//! The errors a reconcile can end with. Each has a bounded category for
//! metrics; none carries a URL or a token.

use crate::controller::build::BuildError;
use crate::signing::{CredentialsError, SigningError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("credentials unavailable: {0}")]
    Credentials(#[from] CredentialsError),
    #[error("signing failed: {0}")]
    Signing(#[from] SigningError),
    #[error("building the Secret: {0}")]
    Build(#[from] BuildError),
    #[error("the grant has no namespace")]
    NoNamespace,
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
            Error::Build(_) => "build",
            Error::NoNamespace => "invalid_object",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
