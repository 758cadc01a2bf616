//! A single secret by reference — a key, a CA bundle — never the secret itself: a mounted
//! file, or an environment variable holding it. (A backend's several credentials use
//! [`crate::files::CredentialsRef`], a prefix.) Read by `weir_storage::read_secret`.

use serde::{Deserialize, Serialize};

/// Where one secret is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// A file (e.g. a mounted Kubernetes secret), read whole.
    File(String),
    /// An environment variable.
    Env(String),
}

impl SecretRef {
    /// Checks the reference; the error names `field`.
    pub fn check(&self, field: &str) -> Result<(), String> {
        match self {
            SecretRef::File(p) if p.is_empty() || p.contains('\0') => {
                Err(format!("{field}.file must name a file, got {p:?}"))
            }
            SecretRef::Env(e) if !crate::validate::is_env_name(e) => Err(format!(
                "{field}.env must name an environment variable, got {e:?} ({})",
                crate::validate::ENV_NAME_RULE
            )),
            _ => Ok(()),
        }
    }

    /// Where it is read from, for reports and errors (never the content).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::File(p) => format!("file {p}"),
            SecretRef::Env(e) => format!("environment variable {e}"),
        }
    }
}
