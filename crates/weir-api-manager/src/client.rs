//! An API as the manager holds it — its HTTP client (a pool of at most 10 idle
//! connections, each closed after 30 minutes unused, unless the API's `sessions` say
//! otherwise), its credentials and its rate limits (this manager's
//! share of the fleet-wide buckets, [`weir_worker::quota`]) — and the sending of one
//! request with what the server says honoured:
//!
//! - 429 and 503 wait `Retry-After` (seconds or an HTTP date) before the next try;
//!   `RateLimit-Remaining`/`X-RateLimit-Remaining: 0` holds the API's next request until
//!   the reset; both holds reach every replica through the master;
//! - other 5xx, timeouts, resets and truncated bodies back off exponentially with jitter;
//! - a 401 renews the credentials once (OAuth2) and tries again;
//! - any other 4xx or too many redirects fail for good, naming the URL (its secret
//!   parameters masked) and the status.
//!
//! A body stays in memory up to 8 MiB and is spooled to a file beyond, so a page of any
//! size passes in bounded memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use url::Url;
use weir_core::api::profile::Sessions;
use weir_core::api::security::{SecuritySpec, TlsVersion, UrlPolicy};
use weir_core::spec::RetryPolicy;
use weir_worker::quota::Bucket;
use weir_worker::sandbox::Guard;

use crate::auth::Auth;
use crate::breaker::Breaker;
use crate::error::CollectError;

/// Longest wait a server's `Retry-After` may ask; a longer one fails the attempt (retried
/// by the task's own policy) rather than holding a lease.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(300);

/// Requests per minute and burst of one limit (`per_minute` 0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// An API: its client, credentials and limits, shared by every task that collects from it.
pub struct Api {
    pub name: String,
    pub http: reqwest::Client,
    pub auth: Option<Arc<dyn Auth>>,
    /// This API's bucket, then every API's (either may be off).
    pub limits: Vec<Arc<Bucket>>,
    /// Waits that are this manager's alone (backoff): no request before this.
    hold: Mutex<Option<Instant>>,
    /// This API's circuit breaker in this manager (one per API name).
    breaker: Arc<Breaker>,
    /// Where a step with `security` may send requests: every URL is checked before it is.
    policy: Option<UrlPolicy>,
}

/// An API's client with its sessions (a request's timeout is the step's, set per
/// request), redirects held to the namespace's sandbox (`guard`), and to a step's
/// security policy if it has one ([`crate::security`]): HTTPS only, its TLS version at
/// least, redirects only to allowed hosts, and only the policy's CAs trusted.
pub fn http_client(
    sessions: Sessions,
    security: Option<(&SecuritySpec, &UrlPolicy)>,
    guard: Guard,
) -> Result<reqwest::Client, CollectError> {
    let mut b = reqwest::Client::builder()
        .pool_max_idle_per_host(sessions.max_idle as usize)
        .pool_idle_timeout(sessions.idle_timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")));
    let policy = security.map(|(_, p)| p.clone());
    b = b.redirect(reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let to = attempt.url().as_str().to_string();
        if let Err(why) = guard.url("redirect", &to) {
            return attempt.error(format!("{OUTSIDE_SANDBOX}{why}"));
        }
        match policy.as_ref().map(|p| p.check(&to)) {
            Some(Err(why)) => attempt.error(format!("redirect refused: {why}")),
            _ => attempt.follow(),
        }
    }));
    match security {
        None => {}
        Some((spec, _)) => {
            b = b.https_only(spec.https_only).tls_version_min(match spec.min_tls {
                TlsVersion::Tls12 => reqwest::tls::Version::TLS_1_2,
                TlsVersion::Tls13 => reqwest::tls::Version::TLS_1_3,
            });
            if let Some(roots) = crate::security::trusted_roots(spec)? {
                let certs = roots
                    .iter()
                    .map(|der| reqwest::Certificate::from_der(der))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| CollectError::Config(format!("security.ca: {e}")))?;
                b = b.tls_certs_only(certs);
            }
        }
    }
    b.build().map_err(|e| CollectError::Config(format!("cannot make an HTTP client: {e}")))
}

/// Redirects a request may follow.
pub const MAX_REDIRECTS: usize = 10;

/// How a redirect the sandbox refused is told apart in the client's error.
const OUTSIDE_SANDBOX: &str = "redirect outside the sandbox: ";

/// One request, before credentials.
#[derive(Debug, Clone)]
pub struct Request {
    pub post: bool,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

/// Bodies up to this size stay in memory; larger ones are spooled to disk.
pub const IN_MEMORY: usize = 8 << 20;

/// A page as it came.
pub struct Fetched {
    pub headers: HeaderMap,
    pub body: Body,
}

/// A response body: in memory, or spooled to a file.
pub enum Body {
    Memory(Vec<u8>),
    File { path: PathBuf, len: u64 },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of the body, from the start.
    pub fn reader(&self) -> std::io::Result<Box<dyn std::io::BufRead + '_>> {
        Ok(match self {
            Body::Memory(b) => Box::new(std::io::Cursor::new(b.as_slice())),
            Body::File { path, .. } => Box::new(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?)),
        })
    }

    /// The body whole, if it is at most `max` bytes.
    pub fn bytes(&self, max: u64) -> Result<std::borrow::Cow<'_, [u8]>, u64> {
        if self.len() > max {
            return Err(self.len());
        }
        match self {
            Body::Memory(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Body::File { path, .. } => std::fs::read(path).map(std::borrow::Cow::Owned).map_err(|_| self.len()),
        }
    }
}

impl Drop for Body {
    /// A spooled body's file goes with it.
    fn drop(&mut self) {
        if let Body::File { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Counts of one collection, for its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub retried: u64,
    pub bytes: u64,
}

/// How hard to try one request, and where a large body goes.
#[derive(Debug, Clone)]
pub struct Effort {
    pub max_attempts: u32,
    /// Each attempt's limit, from sending to the last byte.
    pub timeout: Duration,
    /// The file a body over [`IN_MEMORY`] is spooled to.
    pub spool: PathBuf,
    /// What the task may reach: every URL is checked before it is requested (a server's
    /// next-page URL among them).
    pub guard: Guard,
}

/// `url` with its secret query parameters masked, for messages.
pub fn shown(url: &Url, secret: &[String]) -> String {
    if secret.is_empty() || url.query().is_none() {
        return url.to_string();
    }
    let mut u = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if secret.iter().any(|s| s == &k) { "***".to_string() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// What `Retry-After` asks: seconds, or an HTTP date.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// How long until the server's rate-limit window resets, when it says none is left.
fn exhausted_for(h: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let remaining = get("ratelimit-remaining").or_else(|| get("x-ratelimit-remaining"))?;
    if remaining > 0 {
        return None;
    }
    let reset = get("ratelimit-reset").or_else(|| get("x-ratelimit-reset"))?;
    // A large number is an epoch time (GitHub's X-RateLimit-Reset), else seconds to go.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Some(Duration::from_secs(if reset > 1_000_000_000 { reset.saturating_sub(now) } else { reset }))
}

/// The backoff of request attempts: 250 ms doubling to 30 s, ±20 %.
fn backoff(attempt: u32, seed: u128) -> Duration {
    let p = RetryPolicy {
        max_attempts: u32::MAX,
        initial_interval: Some(Duration::from_millis(250)),
        backoff_coefficient: 2.0,
        max_interval: Some(Duration::from_secs(30)),
        jitter: 0.2,
        non_retryable_error_kinds: vec![],
    };
    p.backoff(attempt, seed)
}

impl Api {
    pub fn new(
        name: &str,
        http: reqwest::Client,
        auth: Option<Arc<dyn Auth>>,
        limits: Vec<Arc<Bucket>>,
        breaker: Arc<Breaker>,
        policy: Option<UrlPolicy>,
    ) -> Api {
        Api { name: name.into(), http, auth, limits, hold: Mutex::new(None), breaker, policy }
    }

    /// This API's circuit in this manager.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Waits for this API's turn: the server's hold, then every bucket.
    async fn turn(&self, cancel: &CancellationToken) -> Result<(), CollectError> {
        let hold = *self.hold.lock().await;
        if let Some(until) = hold {
            if let Some(wait) = until.checked_duration_since(Instant::now()) {
                sleep(wait, cancel).await?;
            }
        }
        for l in &self.limits {
            l.acquire(cancel).await.map_err(|_| CollectError::Cancelled)?;
        }
        Ok(())
    }

    /// The server said to wait: every replica holds this API's requests back.
    fn hold_fleet(&self, wait: Duration) {
        let key = crate::quota_key(&self.name);
        for l in self.limits.iter().filter(|l| l.key() == key) {
            l.hold(SystemTime::now() + wait);
        }
    }

    async fn hold_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut h = self.hold.lock().await;
        if h.is_none_or(|t| t < until) {
            *h = Some(until);
        }
    }

    /// Sends one request until it succeeds or fails for good (one span, its retries in it).
    #[tracing::instrument(
        name = "http_request",
        skip_all,
        fields(
            otel.kind = "client",
            api = %self.name,
            http.request.method = if req.post { "POST" } else { "GET" },
            server.address = req.url.host_str().unwrap_or_default(),
            url.path = req.url.path(),
        )
    )]
    pub async fn fetch(
        &self,
        req: &Request,
        effort: &Effort,
        cancel: &CancellationToken,
        stats: &mut Stats,
    ) -> Result<Fetched, CollectError> {
        effort
            .guard
            .url("url", req.url.as_str())
            .map_err(|why| CollectError::Sandbox(format!("api {}: {why}", self.name)))?;
        if let Some(p) = &self.policy {
            p.check(req.url.as_str()).map_err(|why| CollectError::Insecure(format!("api {}: {why}", self.name)))?;
        }
        let mut renewed = false;
        let mut attempt = 0u32;
        let seed = seed_of(req.url.as_str());
        loop {
            attempt += 1;
            let waited = Instant::now();
            self.turn(cancel).await?;
            crate::metrics::APIS.waited(&self.name, waited.elapsed().as_secs_f64());
            self.breaker.admit()?;
            let creds = match &self.auth {
                Some(a) => a.credentials().await?,
                None => Default::default(),
            };
            let secret: Vec<String> = creds.query.iter().map(|(k, _)| k.clone()).collect();
            let mut url = req.url.clone();
            if !creds.query.is_empty() {
                url.query_pairs_mut().extend_pairs(creds.query.iter());
            }
            let shown_url = shown(&url, &secret);
            let mut b = if req.post { self.http.post(url) } else { self.http.get(url) };
            b = b.timeout(effort.timeout);
            for (k, v) in req.headers.iter().chain(&creds.headers) {
                b = b.header(k.as_str(), v.as_str());
            }
            if let Some(body) = &req.body {
                b = b.header("content-type", "application/json").body(body.to_string());
            }
            stats.requests += 1;
            let failure = match b.send().await {
                Err(e) if e.is_redirect() => {
                    crate::metrics::APIS.answered(&self.name, "redirect");
                    let why = cause(&e);
                    if let Some(at) = why.find(OUTSIDE_SANDBOX) {
                        let rest = &why[at + OUTSIDE_SANDBOX.len()..];
                        return Err(CollectError::Sandbox(format!("api {}: {shown_url}: {rest}", self.name)));
                    }
                    return Err(match why.find("redirect refused: ") {
                        Some(at) => CollectError::Insecure(format!("api {}: {shown_url}: {}", self.name, &why[at..])),
                        None => CollectError::Refused(format!("api {}: {shown_url}: too many redirects", self.name)),
                    });
                }
                Err(e) => {
                    crate::metrics::APIS.answered(&self.name, "error");
                    let m = format!("api {}: {shown_url}: {}", self.name, cause(&e));
                    if tls_refused(&m) {
                        // No retry makes a certificate verify or an old protocol new.
                        return Err(CollectError::Insecure(m));
                    }
                    self.breaker.outcome(true, &m);
                    Failure::Retry(m, None)
                }
                Ok(resp) => {
                    let status = resp.status();
                    crate::metrics::APIS.answered(&self.name, status.as_str());
                    if status.as_u16() >= 300 {
                        // Any answer the API gave on purpose is a sign of health; a 5xx is not.
                        self.breaker.outcome(status.is_server_error(), &format!("{shown_url} answered {status}"));
                    }
                    let headers = resp.headers().clone();
                    if let Some(wait) = exhausted_for(&headers) {
                        self.hold_fleet(wait.min(MAX_SERVER_WAIT));
                        self.hold_for(wait.min(MAX_SERVER_WAIT)).await;
                    }
                    match status.as_u16() {
                        200..=299 => match read_body(resp, &effort.spool, &shown_url, cancel).await {
                            Ok(body) => {
                                self.breaker.outcome(false, "");
                                stats.bytes += body.len();
                                return Ok(Fetched { headers, body });
                            }
                            Err(ReadError::Fatal(e)) => return Err(e),
                            Err(ReadError::Retry(m)) => {
                                self.breaker.outcome(true, &m);
                                Failure::Retry(format!("api {}: {m}", self.name), None)
                            }
                        },
                        401 if !renewed && self.auth.is_some() => {
                            renewed = true;
                            let again = match &self.auth {
                                Some(a) => a.renew(creds.generation).await?,
                                None => false,
                            };
                            if !again {
                                return Err(unauthorized(&self.name, &shown_url));
                            }
                            attempt -= 1;
                            continue;
                        }
                        401 => return Err(unauthorized(&self.name, &shown_url)),
                        429 | 503 => {
                            let wait = retry_after(&headers).unwrap_or_else(|| backoff(attempt, seed));
                            // The server is limiting or overloaded: every replica slows down.
                            self.hold_fleet(wait.min(MAX_SERVER_WAIT));
                            Failure::Retry(format!("api {}: {shown_url} answered {status}", self.name), Some(wait))
                        }
                        500..=599 => Failure::Retry(format!("api {}: {shown_url} answered {status}", self.name), None),
                        _ => {
                            let body = resp.bytes().await.unwrap_or_default();
                            let excerpt: String = String::from_utf8_lossy(&body[..body.len().min(200)]).into();
                            return Err(CollectError::Refused(format!(
                                "api {}: {shown_url} answered {status}: {}",
                                self.name,
                                excerpt.trim()
                            )));
                        }
                    }
                }
            };
            let Failure::Retry(message, wait) = failure;
            if attempt >= effort.max_attempts {
                return Err(CollectError::Transient(format!("{message} (after {attempt} attempts)")));
            }
            let wait = wait.unwrap_or_else(|| backoff(attempt, seed));
            if wait > MAX_SERVER_WAIT {
                return Err(CollectError::Transient(format!("{message}; it asks to wait {} s", wait.as_secs())));
            }
            stats.retried += 1;
            tracing::debug!(api = %self.name, attempt, wait_ms = wait.as_millis() as u64, "{message}; retrying");
            if wait > Duration::ZERO {
                self.hold_for(wait).await;
            }
        }
    }
}

enum Failure {
    /// Worth another attempt, after the wait the server asked for (if it did).
    Retry(String, Option<Duration>),
}

enum ReadError {
    Fatal(CollectError),
    Retry(String),
}

fn unauthorized(api: &str, url: &str) -> CollectError {
    CollectError::Auth(format!("api {api}: {url} answered 401 Unauthorized: the credentials were refused"))
}

/// Whether a connection failed because TLS refused it: a certificate that does not
/// verify, a protocol version one side will not speak, TLS to a plain port.
fn tls_refused(message: &str) -> bool {
    [
        "certificate verify failed",
        "alert protocol version",
        "unsupported protocol",
        "wrong version number",
        "no protocols available",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The innermost cause of a client error (reqwest's outer message says little).
fn cause(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    // reqwest names the URL, query and all (an API key there): the caller shows it masked.
    if let Some(u) = e.url() {
        s = s.replace(&format!(" for url ({u})"), "").replace(u.as_str(), "the URL");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

/// Reads a body: in memory up to [`IN_MEMORY`], spooled to `spool` beyond.
async fn read_body(
    mut resp: reqwest::Response,
    spool: &Path,
    url: &str,
    cancel: &CancellationToken,
) -> Result<Body, ReadError> {
    use tokio::io::AsyncWriteExt;
    let mut body = Vec::new();
    let mut file: Option<(tokio::fs::File, u64)> = None;
    let local = |e: std::io::Error| {
        ReadError::Fatal(CollectError::Staging(format!("spooling {url} to {}: {e}", spool.display())))
    };
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c,
            _ = cancel.cancelled() => return Err(ReadError::Fatal(CollectError::Cancelled)),
        };
        match chunk {
            Ok(Some(c)) => match file.as_mut() {
                Some((f, len)) => {
                    f.write_all(&c).await.map_err(local)?;
                    *len += c.len() as u64;
                }
                None if body.len() + c.len() > IN_MEMORY => {
                    if let Some(dir) = spool.parent() {
                        tokio::fs::create_dir_all(dir).await.map_err(local)?;
                    }
                    let mut f = tokio::fs::File::create(spool).await.map_err(local)?;
                    f.write_all(&body).await.map_err(local)?;
                    f.write_all(&c).await.map_err(local)?;
                    file = Some((f, (body.len() + c.len()) as u64));
                    body = Vec::new();
                }
                None => body.extend_from_slice(&c),
            },
            Ok(None) => {
                return match file {
                    Some((mut f, len)) => {
                        f.flush().await.map_err(local)?;
                        Ok(Body::File { path: spool.to_path_buf(), len })
                    }
                    None => Ok(Body::Memory(body)),
                };
            }
            // A body cut short (the connection closed mid-way) is read again.
            Err(e) => return Err(ReadError::Retry(format!("{url}: the body was cut short: {}", cause(&e)))),
        }
    }
}

async fn sleep(d: Duration, cancel: &CancellationToken) -> Result<(), CollectError> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = cancel.cancelled() => Err(CollectError::Cancelled),
    }
}

/// A seed for the jitter, from the URL.
fn seed_of(s: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    let x = h.finish();
    (u128::from(x) << 64) | u128::from(x.rotate_left(29))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_waits_read_in_seconds_or_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", later.parse().expect("header"));
        let d = retry_after(&h).expect("a date");
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28), "{d:?}");
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
        h.insert("x-ratelimit-reset", "12".parse().expect("header"));
        assert_eq!(exhausted_for(&h), Some(Duration::from_secs(12)));
        h.insert("x-ratelimit-remaining", "5".parse().expect("header"));
        assert_eq!(exhausted_for(&h), None);
    }

    #[test]
    fn secret_parameters_are_masked() {
        let u = Url::parse("https://api.test/x?page=2&api_key=s3cret").expect("url");
        assert_eq!(shown(&u, &["api_key".into()]), "https://api.test/x?page=2&api_key=***");
        assert_eq!(shown(&u, &[]), u.to_string());
    }
}
