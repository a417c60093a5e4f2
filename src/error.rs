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
    #[error("multipart upload: {0}")]
    Multipart(#[from] crate::uploads::MultipartError),
}

impl Error {
    /// Every label `category()` returns. The failure metric registers each at
    /// 0 from the start, so a 0 read from /metrics is a real 0.
    pub const CATEGORIES: &[&str] = &[
        "kube_api",
        "credentials",
        "signing",
        "build",
        "invalid_object",
        "finalizer",
        "fenced",
        "multipart",
    ];

    /// A short, fixed label for metrics; one of `CATEGORIES`.
    pub fn category(&self) -> &'static str {
        match self {
            // A write this replica did not send: it may have lost the lease.
            Error::Kube(e) if crate::fence::is_fenced(e) => "fenced",
            Error::Kube(_) => "kube_api",
            Error::Credentials(_) => "credentials",
            Error::Signing(_) => "signing",
            Error::IncompleteObject => "invalid_object",
            Error::Serialize(_) => "build",
            Error::Finalizer(_) => "finalizer",
            Error::Multipart(_) => "multipart",
        }
    }
}

impl Error {
    /// The apiserver refused the request to slow its client down (HTTP 429:
    /// API Priority and Fairness, or a max-in-flight limit). That says
    /// nothing about the grant; the dispatcher pauses instead of backing the
    /// grant off.
    pub fn is_throttled(&self) -> bool {
        match self {
            Error::Kube(e) | Error::Finalizer(e) => {
                matches!(e, kube::Error::Api(s) if s.code == 429)
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{CredentialsError, SigningError};

    /// One error of each variant.
    fn one_of_each() -> Vec<Error> {
        let every = vec![
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Kube(kube::Error::Service(Box::new(crate::fence::Fenced))),
            Error::Credentials(CredentialsError("expired".into())),
            Error::Signing(SigningError("no region".into())),
            Error::IncompleteObject,
            Error::Serialize(serde_json::Error::io(std::io::Error::other("broken pipe"))),
            Error::Finalizer(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Multipart(crate::uploads::MultipartError::S3("AccessDenied".into())),
        ];
        // A new variant stops this match compiling: add one of it above.
        for e in &every {
            match e {
                Error::Kube(_)
                | Error::Credentials(_)
                | Error::Signing(_)
                | Error::IncompleteObject
                | Error::Serialize(_)
                | Error::Finalizer(_)
                | Error::Multipart(_) => {}
            }
        }
        every
    }

    #[test]
    fn only_an_apiserver_429_is_throttling() {
        let status = |code: u16| {
            kube::Error::Api(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "message": "", "reason": "TooManyRequests", "code": code
                }))
                .expect("a Status"),
            )
        };
        assert!(Error::Kube(status(429)).is_throttled());
        assert!(Error::Finalizer(status(429)).is_throttled());
        assert!(!Error::Kube(status(503)).is_throttled());
        assert!(!Error::Kube(status(409)).is_throttled());
        for e in one_of_each() {
            assert!(!e.is_throttled(), "{e}");
        }
    }

    #[test]
    fn every_category_is_listed_and_every_listed_one_is_used() {
        let used: Vec<&str> = one_of_each().iter().map(Error::category).collect();
        for category in &used {
            assert!(
                Error::CATEGORIES.contains(category),
                "{category} is missing from Error::CATEGORIES"
            );
        }
        for listed in Error::CATEGORIES {
            assert!(used.contains(listed), "no variant has category {listed}");
        }
    }
}
