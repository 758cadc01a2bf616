//! A static bearer token: `<PREFIX>_TOKEN`.

use async_trait::async_trait;
use weir_core::files::CredentialsRef;

use super::{secrets, Auth, Credentials};
use crate::error::CollectError;

pub struct Bearer {
    header: String,
}

impl Bearer {
    pub fn new(c: &CredentialsRef, api: &str) -> Result<Bearer, CollectError> {
        let token = secrets(c, &["token"], &["token"], api)?.remove("token").unwrap_or_default();
        Ok(Bearer { header: format!("Bearer {token}") })
    }
}

#[async_trait]
impl Auth for Bearer {
    async fn credentials(&self) -> Result<Credentials, CollectError> {
        Ok(Credentials { headers: vec![("authorization".into(), self.header.clone())], ..Default::default() })
    }
}
