//! How requests authenticate: one file per method behind [`Auth`]. Secrets come by
//! reference (`credentials: {env: PREFIX}` or `{file: …}`) and are read when an API is
//! first used; they never reach a report, an event or a log.
//!
//! - [`api_key`] — `<PREFIX>_API_KEY` in a header or a query parameter.
//! - [`basic`] — `<PREFIX>_USERNAME` / `<PREFIX>_PASSWORD`.
//! - [`bearer`] — `<PREFIX>_TOKEN`.
//! - [`oauth2`] — the client-credentials and refresh-token grants, renewed before expiry
//!   and on a 401, once for all concurrent requests of the API.

pub mod api_key;
pub mod basic;
pub mod bearer;
pub mod oauth2;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use weir_core::api::AuthSpec;
use weir_core::files::CredentialsRef;

use crate::error::CollectError;

/// What one request carries to authenticate.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Which credentials these are: a 401 on them asks for a renewal of exactly these.
    pub generation: u64,
    pub headers: Vec<(String, String)>,
    /// Query parameters (an API key in the URL): redacted wherever the URL is shown.
    pub query: Vec<(String, String)>,
}

/// An authentication method.
#[async_trait]
pub trait Auth: Send + Sync {
    /// The credentials for the next request (a token renewed first if it is about to expire).
    async fn credentials(&self) -> Result<Credentials, CollectError>;

    /// A request made with credentials `generation` got a 401: renew them if they are
    /// still the current ones (another request may have renewed them already). Whether
    /// the request is worth trying again.
    async fn renew(&self, _generation: u64) -> Result<bool, CollectError> {
        Ok(false)
    }
}

/// Reads the secrets `keys` of a reference; `required` must all be there.
pub(crate) fn secrets(
    creds: &CredentialsRef,
    keys: &[&str],
    required: &[&str],
    api: &str,
) -> Result<HashMap<String, String>, CollectError> {
    weir_storage::require_secrets(creds, keys, required)
        .map_err(|e| CollectError::Config(format!("api {api}: auth needs credentials: {e}")))
}

/// The method an auth spec names, with its secrets read. `data_dir` keeps what must
/// survive a restart (a rotated refresh token).
pub fn build(
    spec: &AuthSpec,
    api: &str,
    http: &reqwest::Client,
    data_dir: &Path,
) -> Result<Arc<dyn Auth>, CollectError> {
    Ok(match spec {
        AuthSpec::ApiKey { name, location, credentials } => {
            Arc::new(api_key::ApiKey::new(name, *location, credentials, api)?)
        }
        AuthSpec::Basic { credentials } => Arc::new(basic::Basic::new(credentials, api)?),
        AuthSpec::Bearer { credentials } => Arc::new(bearer::Bearer::new(credentials, api)?),
        AuthSpec::Oauth2ClientCredentials { token_url, scopes, credentials } => {
            Arc::new(oauth2::OAuth2::client_credentials(token_url, scopes, credentials, api, http.clone())?)
        }
        AuthSpec::Oauth2RefreshToken { token_url, credentials } => {
            Arc::new(oauth2::OAuth2::refresh_token(token_url, credentials, api, http.clone(), data_dir)?)
        }
    })
}
