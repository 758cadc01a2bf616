//! What every Weir binary needs, written once: logging ([`telemetry`]), stopping on
//! SIGTERM/SIGINT ([`shutdown`]), a gRPC server with health and reflection and client
//! channels ([`grpc`]), and their security: tokens checked on every call ([`auth`]), TLS
//! between services with reloadable certificates ([`tls`]), and the settings for both
//! ([`security`]); Prometheus metrics and `/metrics` ([`metrics`]).

pub mod auth;
pub mod grpc;
pub mod metrics;
pub mod security;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// Milliseconds since the Unix epoch, the one clock unit of the engine, the stores and
/// the managers' records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Errors of the runtime helpers.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("bad endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("logging setup failed: {0}")]
    Telemetry(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bad setting: {0}")]
    Config(String),
}
