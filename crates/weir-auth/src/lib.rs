//! Who is calling Weir, and what they may do. No gRPC here: the runtime's server layer
//! calls [`Verifier::verify`] and puts the [`Principal`] on the request; each service
//! asks it for a [`Role`] on a namespace.
//!
//! - [`grant`]: roles on namespaces (`finance:write`, `*:read`, `*:worker`).
//! - [`token`]: JWT bearer tokens checked with `jsonwebtoken` — HS256 with a shared
//!   secret, RS/ES/EdDSA with keys from JWKS URLs ([`jwks`], cached by `kid`, refreshed in
//!   the background and when an unknown `kid` arrives) — and their claims mapped to grants.
//! - [`limit`]: how many submissions one subject may make per minute.

pub mod grant;
pub mod jwks;
pub mod limit;
pub mod token;

pub use grant::{Grant, Grants, Role, Scope};
pub use jwks::Jwks;
pub use limit::KeyedLimits;
pub use token::{TokenRules, Verifier};

/// Who made a call, as the token said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject (`sub`), e.g. a user or a service account.
    pub subject: String,
    pub grants: Grants,
    /// When the token expires (seconds since the epoch); `None` when authentication is off.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// The caller when authentication is off (`weir dev` on loopback): every role on every
    /// namespace.
    pub fn unauthenticated() -> Principal {
        Principal { subject: ANONYMOUS.to_string(), grants: Grants::everything(), expires_at: None }
    }

    /// Whether the caller holds `role` on `namespace`.
    pub fn may(&self, namespace: &str, role: Role) -> bool {
        self.grants.allows(namespace, role)
    }
}

/// The subject of calls made while authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// Why a caller is not who they say (every variant is UNAUTHENTICATED on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `authorization: Bearer <JWT>`")]
    MissingToken,
    #[error("the authorization header is not `Bearer <JWT>`")]
    NotBearer,
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("token refused: no key with id {0:?} in the configured JWKS")]
    UnknownKey(String),
    #[error("cannot fetch the signing keys from {url}: {reason}")]
    Jwks { url: String, reason: String },
    #[error("bad auth setting: {0}")]
    Config(String),
}
