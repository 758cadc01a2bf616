//! An API key (`<PREFIX>_API_KEY`) in a header or a query parameter.

use async_trait::async_trait;
use weir_core::api::KeyLocation;
use weir_core::files::CredentialsRef;

use super::{secrets, Auth, Credentials};
use crate::error::CollectError;

pub struct ApiKey {
    creds: Credentials,
}

impl ApiKey {
    pub fn new(name: &str, location: KeyLocation, c: &CredentialsRef, api: &str) -> Result<ApiKey, CollectError> {
        let key = secrets(c, &["api_key"], &["api_key"], api)?.remove("api_key").unwrap_or_default();
        let pair = vec![(name.to_string(), key)];
        let creds = match location {
            KeyLocation::Header => Credentials { headers: pair, ..Default::default() },
            KeyLocation::Query => Credentials { query: pair, ..Default::default() },
        };
        Ok(ApiKey { creds })
    }
}

#[async_trait]
impl Auth for ApiKey {
    async fn credentials(&self) -> Result<Credentials, CollectError> {
        Ok(self.creds.clone())
    }
}
