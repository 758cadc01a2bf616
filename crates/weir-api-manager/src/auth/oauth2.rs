//! OAuth 2.0 access tokens (RFC 6749): the client-credentials grant
//! (`<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET`) and the refresh-token grant
//! (`<PREFIX>_REFRESH_TOKEN`, and the client's id and secret if the server asks).
//!
//! A token is renewed a minute before it expires, and on a 401 — once for all the API's
//! concurrent requests: they wait on one lock, and a request whose token was already
//! renewed by another just takes the new one. A refresh token the server rotates is
//! written to disk (fsynced) before the new access token is used, so a crash never loses
//! the only valid one; on start the kept one is used unless `<PREFIX>_REFRESH_TOKEN`
//! changed since (a person gave a new one). `invalid_grant` fails without retry and says
//! so; a network error or a 5xx from the token endpoint is retried.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use weir_core::files::CredentialsRef;

use super::basic::basic_header;
use super::{secrets, Auth, Credentials};
use crate::error::CollectError;

/// Renew this long before the token's expiry.
const EARLY: Duration = Duration::from_secs(60);

enum Grant {
    ClientCredentials { scopes: Vec<String> },
    RefreshToken { kept: PathBuf, initial_digest: String },
}

struct Access {
    token: String,
    expires: Option<Instant>,
}

struct State {
    access: Option<Access>,
    generation: u64,
    refresh: Option<String>,
}

pub struct OAuth2 {
    api: String,
    token_url: String,
    client: Option<(String, Option<String>)>,
    grant: Grant,
    http: reqwest::Client,
    state: Mutex<State>,
}

/// What a token endpoint answers.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The refresh token kept on disk, and which configured one it descends from.
#[derive(Serialize, Deserialize)]
struct Kept {
    initial_digest: String,
    refresh_token: String,
}

fn digest(s: &str) -> String {
    weir_storage::hex(&Sha256::digest(s.as_bytes())[..12])
}

impl OAuth2 {
    pub fn client_credentials(
        token_url: &str,
        scopes: &[String],
        c: &CredentialsRef,
        api: &str,
        http: reqwest::Client,
    ) -> Result<OAuth2, CollectError> {
        let s = secrets(c, &["client_id", "client_secret"], &["client_id", "client_secret"], api)?;
        Ok(OAuth2 {
            api: api.into(),
            token_url: token_url.into(),
            client: Some((s["client_id"].clone(), Some(s["client_secret"].clone()))),
            grant: Grant::ClientCredentials { scopes: scopes.to_vec() },
            http,
            state: Mutex::new(State { access: None, generation: 0, refresh: None }),
        })
    }

    pub fn refresh_token(
        token_url: &str,
        c: &CredentialsRef,
        api: &str,
        http: reqwest::Client,
        data_dir: &Path,
    ) -> Result<OAuth2, CollectError> {
        let s = secrets(c, &["refresh_token", "client_id", "client_secret"], &["refresh_token"], api)?;
        let initial = s["refresh_token"].clone();
        let initial_digest = digest(&initial);
        let kept = data_dir.join("tokens").join(format!("{api}-{}.json", digest(&format!("{token_url} {c:?}"))));
        // The kept token descends from this configured one: it is the newer.
        let refresh = read_kept(&kept, &initial_digest).unwrap_or(initial);
        Ok(OAuth2 {
            api: api.into(),
            token_url: token_url.into(),
            client: s.get("client_id").map(|id| (id.clone(), s.get("client_secret").cloned())),
            grant: Grant::RefreshToken { kept, initial_digest },
            http,
            state: Mutex::new(State { access: None, generation: 0, refresh: Some(refresh) }),
        })
    }

    /// Asks the token endpoint for a new access token (and keeps a rotated refresh token).
    async fn fetch(&self, state: &mut State) -> Result<(), CollectError> {
        let mut form: Vec<(&str, String)> = Vec::new();
        match &self.grant {
            Grant::ClientCredentials { scopes } => {
                form.push(("grant_type", "client_credentials".into()));
                if !scopes.is_empty() {
                    form.push(("scope", scopes.join(" ")));
                }
            }
            Grant::RefreshToken { kept, initial_digest } => {
                // Another manager on this data dir (a shared volume) may have rotated it since.
                if let Some(newer) = read_kept(kept, initial_digest) {
                    state.refresh = Some(newer);
                }
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", state.refresh.clone().unwrap_or_default()));
            }
        }
        let mut req = self.http.post(&self.token_url).form(&form);
        if let Some((id, secret)) = &self.client {
            req = req.header("authorization", basic_header(id, secret.as_deref().unwrap_or("")));
        }
        let what = format!("api {}: the token endpoint {}", self.api, self.token_url);
        let resp = req.send().await.map_err(|e| CollectError::Transient(format!("{what}: {e}")))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| CollectError::Transient(format!("{what}: {e}")))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(CollectError::Transient(format!("{what} answered {status}")));
        }
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        let Some(t) = parsed else {
            return Err(CollectError::Auth(format!(
                "{what} answered {status} with a body that is not a token response"
            )));
        };
        if let Some(err) = &t.error {
            let detail = t.error_description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
            let hint = match (err.as_str(), &self.grant) {
                ("invalid_grant", Grant::RefreshToken { .. }) => {
                    "; the refresh token is no longer valid: give a new one in the credentials' REFRESH_TOKEN"
                }
                ("invalid_client", _) => "; check the client id and secret",
                _ => "",
            };
            return Err(CollectError::Auth(format!("{what} refused the grant ({err}{detail}){hint}")));
        }
        if !status.is_success() {
            return Err(CollectError::Auth(format!("{what} answered {status}")));
        }
        let Some(token) = t.access_token else {
            return Err(CollectError::Auth(format!("{what} answered without an access_token")));
        };
        if let (Some(rotated), Grant::RefreshToken { kept, initial_digest }) = (&t.refresh_token, &self.grant) {
            if state.refresh.as_deref() != Some(rotated.as_str()) {
                // Kept on disk before the new access token is used: the old refresh token
                // may already be void.
                keep(kept, &Kept { initial_digest: initial_digest.clone(), refresh_token: rotated.clone() }).map_err(
                    |e| CollectError::Transient(format!("api {}: keeping a rotated refresh token: {e}", self.api)),
                )?;
                state.refresh = Some(rotated.clone());
            }
        }
        let expires = t.expires_in.map(|s| Instant::now() + Duration::from_secs(s));
        state.access = Some(Access { token, expires });
        state.generation += 1;
        tracing::info!(api = %self.api, generation = state.generation, "access token renewed");
        Ok(())
    }
}

/// The kept refresh token, if it descends from the configured one (`initial_digest`).
fn read_kept(path: &Path, initial_digest: &str) -> Option<String> {
    let k: Kept = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (k.initial_digest == initial_digest).then_some(k.refresh_token)
}

/// Writes the kept refresh token atomically and durably, readable by this user only.
fn keep(path: &Path, k: &Kept) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec(k).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Auth for OAuth2 {
    async fn credentials(&self) -> Result<Credentials, CollectError> {
        let mut state = self.state.lock().await;
        let fresh = state.access.as_ref().is_some_and(|a| a.expires.is_none_or(|e| e > Instant::now() + EARLY));
        if !fresh {
            self.fetch(&mut state).await?;
        }
        let token = state.access.as_ref().map(|a| a.token.clone()).unwrap_or_default();
        Ok(Credentials {
            generation: state.generation,
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
            query: vec![],
        })
    }

    async fn renew(&self, generation: u64) -> Result<bool, CollectError> {
        let mut state = self.state.lock().await;
        if state.generation == generation {
            self.fetch(&mut state).await?;
        }
        Ok(true)
    }
}
