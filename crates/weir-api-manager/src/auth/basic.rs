//! HTTP basic auth: `<PREFIX>_USERNAME` and `<PREFIX>_PASSWORD`.

use async_trait::async_trait;
use base64::Engine;
use weir_core::files::CredentialsRef;

use super::{secrets, Auth, Credentials};
use crate::error::CollectError;

pub struct Basic {
    header: String,
}

/// The `Authorization` value of basic auth.
pub(crate) fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

impl Basic {
    pub fn new(c: &CredentialsRef, api: &str) -> Result<Basic, CollectError> {
        let s = secrets(c, &["username", "password"], &["username", "password"], api)?;
        Ok(Basic { header: basic_header(&s["username"], &s["password"]) })
    }
}

#[async_trait]
impl Auth for Basic {
    async fn credentials(&self) -> Result<Credentials, CollectError> {
        Ok(Credentials { headers: vec![("authorization".into(), self.header.clone())], ..Default::default() })
    }
}
