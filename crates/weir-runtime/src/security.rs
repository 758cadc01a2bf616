//! The security settings every binary shares, as flags and `WEIR_*` variables: how a
//! server checks its callers ([`AuthArgs`]), the token a client sends ([`TokenArgs`]) and
//! TLS between services ([`TlsArgs`]). `weir dev` leaves all of them off: plaintext on
//! loopback, every caller allowed everything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use weir_auth::{Jwks, TokenRules, Verifier};

use crate::auth::{AccessRules, Credentials, Guard, LogRefusals};
use crate::tls::{ClientTls, ServerTls, TlsFiles};
use crate::RuntimeError;

fn duration(s: &str) -> Result<Duration, String> {
    weir_core::duration::parse(s)
}

/// How a server checks its callers.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Check a JWT bearer token on every call. Off, every caller may do everything: only
    /// for a platform on loopback.
    #[arg(long = "auth", env = "WEIR_AUTH")]
    pub enabled: bool,
    /// HS256 shared secret, at least 32 bytes (from the environment: a Kubernetes secret).
    #[arg(long = "auth-hs256-secret", env = "WEIR_AUTH_HS256_SECRET", hide_env_values = true)]
    pub hs256_secret: Option<String>,
    /// A file holding the HS256 secret (a mounted secret).
    #[arg(long = "auth-hs256-secret-file", env = "WEIR_AUTH_HS256_SECRET_FILE")]
    pub hs256_secret_file: Option<PathBuf>,
    /// JWKS URLs whose keys sign RS*/PS*/ES*/EdDSA tokens ("url,url").
    #[arg(long = "auth-jwks-url", env = "WEIR_AUTH_JWKS_URLS", value_delimiter = ',')]
    pub jwks_urls: Vec<String>,
    /// The issuer (`iss`) tokens must name.
    #[arg(long = "auth-issuer", env = "WEIR_AUTH_ISSUER")]
    pub issuer: Option<String>,
    /// The audience (`aud`) tokens must name.
    #[arg(long = "auth-audience", env = "WEIR_AUTH_AUDIENCE")]
    pub audience: Option<String>,
    /// The claim listing `namespace:role` permissions.
    #[arg(long = "auth-permissions-claim", env = "WEIR_AUTH_PERMISSIONS_CLAIM", default_value = weir_auth::token::DEFAULT_PERMISSIONS_CLAIM)]
    pub permissions_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long = "auth-leeway", env = "WEIR_AUTH_LEEWAY", default_value = "30s", value_parser = duration)]
    pub leeway: Duration,
    /// How often the JWKS keys are fetched again (an unknown `kid` also fetches them,
    /// at most once per 10 s).
    #[arg(long = "auth-jwks-refresh", env = "WEIR_AUTH_JWKS_REFRESH", default_value = "5m", value_parser = duration)]
    pub jwks_refresh: Duration,
}

impl Default for AuthArgs {
    fn default() -> Self {
        AuthArgs {
            enabled: false,
            hs256_secret: None,
            hs256_secret_file: None,
            jwks_urls: Vec::new(),
            issuer: None,
            audience: None,
            permissions_claim: weir_auth::token::DEFAULT_PERMISSIONS_CLAIM.into(),
            leeway: weir_auth::token::DEFAULT_LEEWAY,
            jwks_refresh: Duration::from_secs(300),
        }
    }
}

/// Fewest seconds between two JWKS fetches an unknown key id causes.
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(10);

impl AuthArgs {
    /// The token checker these settings describe (`None` when authentication is off). The
    /// JWKS keys are fetched before this returns, so a wrong URL is named at start.
    pub async fn verifier(&self) -> Result<Option<Arc<Verifier>>, RuntimeError> {
        if !self.enabled {
            return Ok(None);
        }
        let secret = match (&self.hs256_secret, &self.hs256_secret_file) {
            (Some(s), _) => Some(s.as_bytes().to_vec()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        RuntimeError::Config(format!("cannot read WEIR_AUTH_HS256_SECRET_FILE {}: {e}", f.display()))
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .as_bytes()
                    .to_vec(),
            ),
            (None, None) => None,
        };
        let jwks = if self.jwks_urls.is_empty() {
            None
        } else {
            let j = Arc::new(Jwks::new(self.jwks_urls.clone(), JWKS_MIN_INTERVAL).map_err(config)?);
            let n = j.refresh().await.map_err(config)?;
            tracing::info!(keys = n, urls = ?self.jwks_urls, "JWKS keys loaded");
            if self.audience.is_none() {
                tracing::warn!(
                    "WEIR_AUTH_AUDIENCE is not set: any token the identity provider signs, for any application, is \
                     accepted; set the audience Weir's tokens carry"
                );
            }
            j.spawn_refresh(self.jwks_refresh.max(Duration::from_secs(1)));
            Some(j)
        };
        let rules = TokenRules {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway,
            permissions_claim: self.permissions_claim.clone(),
        };
        if secret.is_none() && jwks.is_none() {
            return Err(RuntimeError::Config(
                "WEIR_AUTH is on: give WEIR_AUTH_HS256_SECRET(_FILE) or WEIR_AUTH_JWKS_URLS".into(),
            ));
        }
        Ok(Some(Arc::new(Verifier::new(rules, secret.as_deref(), jwks).map_err(config)?)))
    }

    /// A guard for a server whose methods need `rules` (refusals logged until the caller
    /// gives a better sink with [`Guard::with_refusals`]).
    pub async fn guard(&self, rules: AccessRules) -> Result<Guard, RuntimeError> {
        Ok(match self.verifier().await? {
            Some(v) => Guard::new(v, rules, Arc::new(LogRefusals)),
            None => Guard::open(),
        })
    }
}

fn config(e: weir_auth::AuthError) -> RuntimeError {
    RuntimeError::Config(e.to_string())
}

/// The token a client sends.
#[derive(Debug, Clone, Default, Args)]
pub struct TokenArgs {
    /// A JWT sent as `authorization: Bearer …` on every call (from the environment).
    #[arg(long = "token", env = "WEIR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the JWT (a mounted, rotated token): read again when it changes.
    #[arg(long = "token-file", env = "WEIR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The credentials these settings describe (none without a token).
    pub fn credentials(&self) -> Result<Credentials, RuntimeError> {
        match (&self.token, &self.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Credentials::token(t).map_err(RuntimeError::Config),
            (_, Some(f)) => Credentials::file(f.clone()).map_err(RuntimeError::Config),
            _ => Ok(Credentials::none()),
        }
    }
}

/// TLS between services: a server presents `cert` and, with `ca`, requires client
/// certificates signed by it; a client checks servers against `ca` and presents `cert`.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate chain this process presents.
    #[arg(long = "tls-cert", env = "WEIR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long = "tls-key", env = "WEIR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle of the peers: clients without a certificate it signed are refused.
    #[arg(long = "tls-ca", env = "WEIR_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> TlsFiles {
        TlsFiles { cert: self.tls_cert.clone(), key: self.tls_key.clone(), ca: self.tls_ca.clone() }
    }

    /// The server side: `None` without a certificate (plaintext).
    pub fn server(&self) -> Result<Option<Arc<ServerTls>>, RuntimeError> {
        if self.tls_cert.is_none() && self.tls_key.is_none() {
            if self.tls_ca.is_some() {
                return Err(RuntimeError::Config(
                    "WEIR_TLS_CA is set but WEIR_TLS_CERT and WEIR_TLS_KEY are not".into(),
                ));
            }
            return Ok(None);
        }
        ServerTls::server(self.files()).map(Some)
    }

    /// The client side: `None` without a CA (plaintext).
    pub fn client(&self) -> Result<Option<Arc<ClientTls>>, RuntimeError> {
        if self.tls_ca.is_none() {
            return Ok(None);
        }
        ClientTls::client(self.files()).map(Some)
    }
}

/// What a client needs to call a service: a token and TLS.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    pub credentials: Credentials,
    pub tls: Option<Arc<ClientTls>>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("ClientSecurity")
            .field("token", &self.credentials.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ClientSecurity {
    /// Plaintext, no token (`weir dev`).
    pub fn none() -> ClientSecurity {
        ClientSecurity::default()
    }

    /// From a client's settings, naming what is wrong.
    pub fn from_args(token: &TokenArgs, tls: &TlsArgs) -> Result<ClientSecurity, RuntimeError> {
        Ok(ClientSecurity { credentials: token.credentials()?, tls: tls.client()? })
    }
}

/// What a server needs: its guard and its TLS.
#[derive(Clone)]
pub struct ServerSecurity {
    pub guard: Guard,
    pub tls: Option<Arc<ServerTls>>,
}

impl ServerSecurity {
    /// Plaintext, every caller allowed (`weir dev`).
    pub fn open() -> ServerSecurity {
        ServerSecurity { guard: Guard::open(), tls: None }
    }

    /// From a server's settings, its methods held to `rules`.
    pub async fn from_args(auth: &AuthArgs, tls: &TlsArgs, rules: AccessRules) -> Result<ServerSecurity, RuntimeError> {
        Ok(ServerSecurity { guard: auth.guard(rules).await?, tls: tls.server()? })
    }
}

/// What jobs may touch: local paths under roots, remote hosts matching patterns, per
/// namespace (see `weir_core::sandbox`). Checked by the master at submission and by each
/// manager again before a task runs.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// A sandbox policy file (YAML): `namespaces: {"*": {paths: [...], hosts: [...], env: [...]}, team: {...}}`.
    #[arg(long = "sandbox-file", env = "WEIR_SANDBOX_FILE")]
    pub sandbox_file: Option<PathBuf>,
    /// Directories every namespace's jobs may read and write under ("dir,dir"); none by
    /// default, so a job naming a local path is refused until an operator allows one.
    #[arg(long = "allowed-paths", env = "WEIR_ALLOWED_PATHS", value_delimiter = ',')]
    pub allowed_paths: Vec<String>,
    /// Hosts every namespace's jobs may reach ("s3://bucket,https://*.example.com"; `*` = any).
    #[arg(long = "allowed-hosts", env = "WEIR_ALLOWED_HOSTS", value_delimiter = ',', default_value = "*")]
    pub allowed_hosts: Vec<String>,
    /// The managers' environment variables every namespace's jobs may read credentials and
    /// URLs from ("TEAM_*,SHARED_PG_URL"; `*` = any but Weir's own `WEIR_…`).
    #[arg(long = "allowed-env", env = "WEIR_ALLOWED_ENV", value_delimiter = ',', default_value = "*")]
    pub allowed_env: Vec<String>,
}

impl Default for SandboxArgs {
    fn default() -> Self {
        SandboxArgs {
            sandbox_file: None,
            allowed_paths: Vec::new(),
            allowed_hosts: vec!["*".into()],
            allowed_env: vec!["*".into()],
        }
    }
}

impl SandboxArgs {
    /// The one-machine default (`weir dev`, tests): the working directory and the system's
    /// temporary directory, any host.
    pub fn local() -> SandboxArgs {
        let mut paths = vec![std::env::temp_dir().display().to_string()];
        if let Ok(cwd) = std::env::current_dir() {
            paths.push(cwd.display().to_string());
        }
        SandboxArgs { allowed_paths: paths, ..SandboxArgs::default() }
    }

    /// The policy these settings describe, naming what is wrong.
    pub fn policy(&self) -> Result<weir_core::sandbox::Policy, RuntimeError> {
        let bad = |e: String| RuntimeError::Config(format!("sandbox: {e}"));
        match &self.sandbox_file {
            Some(f) => {
                if !self.allowed_paths.is_empty() {
                    return Err(bad("give WEIR_SANDBOX_FILE or WEIR_ALLOWED_PATHS, not both".into()));
                }
                let text = std::fs::read_to_string(f).map_err(|e| bad(format!("cannot read {}: {e}", f.display())))?;
                let value: serde_json::Value =
                    serde_yaml_ng::from_str(&text).map_err(|e| bad(format!("{}: {e}", f.display())))?;
                weir_core::sandbox::Policy::from_value(value).map_err(|e| bad(format!("{}: {e}", f.display())))
            }
            None => weir_core::sandbox::Policy::with_default(
                self.allowed_paths.clone(),
                self.allowed_hosts.clone(),
                self.allowed_env.clone(),
            )
            .map_err(bad),
        }
    }
}
