//! What stops a collection, and how the step reports it.

use weir_worker::StepError;

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The config cannot work (a credential not set, a URL that does not resolve).
    #[error("{0}")]
    Config(String),
    /// The API refused the credentials, or would not give a token (`invalid_grant`).
    #[error("{0}")]
    Auth(String),
    /// The API answered with a status no retry changes (a 4xx other than 401/429).
    #[error("{0}")]
    Refused(String),
    /// A page Weir cannot read: not JSON, too large, a pagination that loops.
    #[error("{0}")]
    BadPage(String),
    /// The network, the server or a rate limit: another attempt may pass.
    #[error("{0}")]
    Transient(String),
    /// The API's circuit is open: it failed too often lately and is left alone for a while.
    #[error("{0}")]
    CircuitOpen(String),
    /// A URL or a connection the step's security policy does not allow (plain HTTP, a
    /// host not on the list, an old TLS version, a certificate not pinned).
    #[error("{0}")]
    Insecure(String),
    /// A URL the server gave (a next page, a redirect) outside the namespace's sandbox.
    #[error("{0}")]
    Sandbox(String),
    /// Writing the records to staging failed.
    #[error("{0}")]
    Staging(String),
    /// The task was cancelled or its lease lost.
    #[error("stopped before the collection finished; its files were not reported")]
    Cancelled,
}

impl CollectError {
    /// The step's error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CollectError::Config(_) => "bad_config",
            CollectError::Auth(_) => "auth_failed",
            CollectError::Refused(_) => "http_error",
            CollectError::BadPage(_) => "bad_format",
            CollectError::Transient(_) => "unavailable",
            CollectError::CircuitOpen(_) => "circuit_open",
            CollectError::Insecure(_) => "insecure",
            CollectError::Sandbox(_) => weir_core::sandbox::REFUSED_KIND,
            CollectError::Staging(_) => "staging",
            CollectError::Cancelled => "cancelled",
        }
    }

    /// Whether another attempt of the step may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CollectError::Transient(_)
                | CollectError::CircuitOpen(_)
                | CollectError::Staging(_)
                | CollectError::Cancelled
        )
    }
}

impl From<StepError> for CollectError {
    /// A step-level failure met while collecting (the master unreachable, staging).
    fn from(e: StepError) -> CollectError {
        if e.retryable {
            CollectError::Transient(e.message)
        } else {
            CollectError::Config(e.message)
        }
    }
}

impl From<CollectError> for StepError {
    fn from(e: CollectError) -> StepError {
        StepError { kind: e.kind().into(), message: e.to_string(), retryable: e.is_retryable() }
    }
}
