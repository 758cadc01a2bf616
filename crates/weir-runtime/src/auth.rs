//! Authentication on every gRPC call, written once for every service: a tower layer that
//! checks the bearer token (or lets everyone through when authentication is off), puts
//! the caller's [`Principal`] on the request for the handlers' namespace checks, holds each
//! method to the coarse role its service asks for, and reports every refusal to an
//! [`Refusals`] sink (the master's audit trail). The client side, [`Credentials`], sends
//! the token from the environment or a file re-read when it changes.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use weir_auth::{AuthError, Principal, Role, Verifier};
use weir_core::audit::{AuditRecord, Outcome};

/// What a method asks of its caller before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, token or not (health checks).
    Open,
    /// A valid token; the handler checks namespaces itself.
    Authenticated,
    /// A valid token granting this role on every namespace (`*:role`).
    Everywhere(Role),
}

/// Which access each method (`/package.Service/Method`) needs.
pub type AccessRules = Arc<dyn Fn(&str) -> Access + Send + Sync>;

/// Where refused calls are reported (the master writes them to its audit trail; a
/// manager logs them).
pub trait Refusals: Send + Sync {
    /// Records one refusal; the call is answered after this returns.
    fn refused(&self, record: AuditRecord) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Logs refusals (services without a store).
pub struct LogRefusals;

impl Refusals for LogRefusals {
    fn refused(&self, r: AuditRecord) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        tracing::warn!(subject = %r.subject, action = %r.action, peer = %r.peer, code = %r.code, message = %r.message, "call refused");
        Box::pin(async {})
    }
}

/// The default of [`Throttled`]: refusals of one address recorded per second.
pub const DEFAULT_REFUSALS_PER_PEER: &str = "20/s";

/// Most addresses whose left-out refusals are counted at once (then the counts restart).
const MAX_COUNTED_PEERS: usize = 10_000;

/// Refusals past a rate per caller address are counted rather than each recorded, so calls
/// without a token cannot make the store write a row apiece; the next record admitted
/// from that address says how many were left out. A decorator of any [`Refusals`].
pub struct Throttled {
    inner: Arc<dyn Refusals>,
    per_peer: weir_auth::KeyedLimits,
    rate: String,
    left_out: Mutex<std::collections::HashMap<String, u64>>,
}

impl Throttled {
    /// `rate` as `N/s`, `N/min` or `N/h`; "off": no decorator.
    pub fn wrap(inner: Arc<dyn Refusals>, rate: &str) -> Result<Arc<dyn Refusals>, String> {
        if rate.trim() == "off" {
            return Ok(inner);
        }
        let per_peer = weir_auth::KeyedLimits::parse(rate.trim())?;
        Ok(Arc::new(Throttled { inner, per_peer, rate: rate.trim().to_string(), left_out: Mutex::default() }))
    }

    /// The record to write, or none when `r`'s address is over the rate (counted).
    fn admit(&self, mut r: AuditRecord) -> Option<AuditRecord> {
        // The address without its port: a client opens as many ports as it likes.
        let peer = match r.peer.parse::<std::net::SocketAddr>() {
            Ok(a) => a.ip().to_string(),
            Err(_) => r.peer.clone(),
        };
        let mut left_out = self.left_out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.per_peer.check(&peer).is_err() {
            if left_out.len() >= MAX_COUNTED_PEERS && !left_out.contains_key(&peer) {
                tracing::warn!(peers = left_out.len(), "too many refused addresses to count; counts restart");
                left_out.clear();
            }
            *left_out.entry(peer).or_default() += 1;
            return None;
        }
        if let Some(n) = left_out.remove(&peer) {
            r.message = format!("{} (and {n} earlier refusals of {peer} not recorded: over {})", r.message, self.rate);
        }
        Some(r)
    }
}

impl Refusals for Throttled {
    fn refused(&self, record: AuditRecord) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        match self.admit(record) {
            Some(r) => self.inner.refused(r),
            None => Box::pin(async {}),
        }
    }
}

/// The gRPC health service stays open, so probes need no token.
pub const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Who may call a server.
#[derive(Clone)]
pub struct Guard {
    verifier: Option<Arc<Verifier>>,
    rules: AccessRules,
    refusals: Arc<dyn Refusals>,
}

impl Guard {
    /// Authentication off: every caller is [`Principal::unauthenticated`].
    pub fn open() -> Guard {
        Guard { verifier: None, rules: Arc::new(|_| Access::Open), refusals: Arc::new(LogRefusals) }
    }

    /// Tokens checked by `verifier`, methods held to `rules`, refusals reported to `refusals`.
    pub fn new(verifier: Arc<Verifier>, rules: AccessRules, refusals: Arc<dyn Refusals>) -> Guard {
        Guard { verifier: Some(verifier), rules, refusals }
    }

    /// Whether tokens are checked.
    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// Replaces where refusals go (the master's audit trail, once its store is open).
    pub fn with_refusals(mut self, refusals: Arc<dyn Refusals>) -> Guard {
        self.refusals = refusals;
        self
    }

    /// Who `headers` name for `path`, or the status refusing the call (already reported).
    async fn admit(&self, path: &str, headers: &http::HeaderMap, ext: &http::Extensions) -> Result<Principal, Status> {
        let Some(verifier) = &self.verifier else { return Ok(Principal::unauthenticated()) };
        let access = if path.starts_with(HEALTH_PREFIX) { Access::Open } else { (self.rules)(path) };
        if access == Access::Open {
            return Ok(Principal { subject: String::new(), grants: Default::default(), expires_at: None });
        }
        let header = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let principal = match verifier.verify_header(header).await {
            Ok(p) => p,
            Err(e) => {
                let status = unauthenticated(&e);
                self.report(refusal("", path, headers, ext, Outcome::Unauthenticated, &status)).await;
                return Err(status);
            }
        };
        if let Access::Everywhere(role) = access {
            if !principal.grants.allows_everywhere(role) {
                let status = Status::permission_denied(format!(
                    "{} may not call {}: it needs *:{role} (holds {})",
                    principal.subject,
                    method(path),
                    shown(&principal)
                ));
                self.report(refusal(&principal.subject, path, headers, ext, Outcome::Denied, &status)).await;
                return Err(status);
            }
        }
        Ok(principal)
    }

    /// Reports a connection refused in its TLS handshake (no client certificate, or one
    /// no trusted CA signed).
    pub async fn handshake_refused(&self, peer: &str, why: &str) {
        let mut r = AuditRecord::new(crate::now_ms(), "", "TlsHandshake").with_outcome(
            Outcome::Unauthenticated,
            code_name(Code::Unauthenticated),
            why,
        );
        r.peer = peer.to_string();
        self.report(r).await;
    }

    async fn report(&self, record: AuditRecord) {
        self.refusals.refused(record).await;
    }
}

fn shown(p: &Principal) -> String {
    if p.grants.is_empty() {
        "no permissions".to_string()
    } else {
        p.grants.to_string()
    }
}

fn unauthenticated(e: &AuthError) -> Status {
    match e {
        AuthError::Jwks { .. } => {
            tracing::warn!(error = %e, "token check could not fetch the keys");
            Status::unauthenticated(format!("{e}"))
        }
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// The method's name from its path (`/weir.v1.JobService/SubmitJob` → `SubmitJob`).
pub fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The caller's address as tonic's connection info gives it, plain or under TLS.
pub fn peer(ext: &http::Extensions) -> String {
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()))
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// The trace id of the call's `traceparent`, if it sent one.
pub fn trace_id(headers: &http::HeaderMap) -> String {
    headers
        .get(weir_core::events::header::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<weir_core::trace::TraceParent>().ok())
        .map(|t| t.trace_id_hex())
        .unwrap_or_default()
}

/// An audit record of a refused call.
pub fn refusal(
    subject: &str,
    path: &str,
    headers: &http::HeaderMap,
    ext: &http::Extensions,
    outcome: Outcome,
    status: &Status,
) -> AuditRecord {
    let mut r = AuditRecord::new(crate::now_ms(), subject, method(path)).with_outcome(
        outcome,
        code_name(status.code()),
        status.message(),
    );
    r.trace_id = trace_id(headers);
    r.peer = peer(ext);
    r
}

/// The gRPC code's canonical name, as audit records and logs show it.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The outcome an audit record gives a status.
pub fn outcome(c: Code) -> Outcome {
    match c {
        Code::Ok => Outcome::Ok,
        Code::Unauthenticated => Outcome::Unauthenticated,
        Code::PermissionDenied => Outcome::Denied,
        Code::InvalidArgument | Code::OutOfRange => Outcome::Invalid,
        Code::ResourceExhausted => Outcome::Limited,
        _ => Outcome::Failed,
    }
}

/// The caller of a request the guard admitted (an unauthenticated caller's when the
/// request did not pass through a guard, as in tests calling a handler directly).
pub fn caller<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::unauthenticated)
}

/// The tower layer that puts a [`Guard`] in front of a server's routes.
#[derive(Clone)]
pub struct GuardLayer(pub Guard);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, guard: self.0.clone() }
    }
}

/// A service behind a [`Guard`].
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready service is the one to call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            match guard.admit(&path, req.headers(), req.extensions()).await {
                Ok(p) => {
                    req.extensions_mut().insert(p);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Where a client's bearer token comes from.
#[derive(Clone, Default)]
pub struct Credentials(Option<Arc<TokenSource>>);

enum TokenSource {
    Fixed(AsciiMetadataValue),
    /// A mounted token file, re-read when it changes (a rotated service-account token).
    File {
        path: PathBuf,
        held: Mutex<Held>,
    },
}

struct Held {
    value: Option<AsciiMetadataValue>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

/// How often a token file's modification time is looked at.
const TOKEN_FILE_CHECK: Duration = Duration::from_secs(1);

impl Credentials {
    /// No token (authentication off).
    pub fn none() -> Credentials {
        Credentials(None)
    }

    /// A fixed token.
    pub fn token(token: &str) -> Result<Credentials, String> {
        Ok(Credentials(Some(Arc::new(TokenSource::Fixed(bearer(token)?)))))
    }

    /// The token in `path`, read now (so a missing file is named at start) and again
    /// whenever the file changes.
    pub fn file(path: PathBuf) -> Result<Credentials, String> {
        let source = TokenSource::File { path, held: Mutex::new(Held { value: None, modified: None, checked: None }) };
        current(&source)?;
        Ok(Credentials(Some(Arc::new(source))))
    }

    /// Whether a token is sent.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

fn bearer(token: &str) -> Result<AsciiMetadataValue, String> {
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| "the token holds characters a gRPC header cannot carry".to_string())
}

fn current(source: &TokenSource) -> Result<AsciiMetadataValue, String> {
    match source {
        TokenSource::Fixed(v) => Ok(v.clone()),
        TokenSource::File { path, held } => {
            let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(v), Some(t)) = (&h.value, h.checked) {
                if t.elapsed() < TOKEN_FILE_CHECK {
                    return Ok(v.clone());
                }
            }
            h.checked = Some(Instant::now());
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if let (Some(v), true) = (&h.value, modified == h.modified) {
                return Ok(v.clone());
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            let v = bearer(&text).map_err(|e| format!("token file {}: {e}", path.display()))?;
            h.value = Some(v.clone());
            h.modified = modified;
            Ok(v)
        }
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(source) = &self.0 {
            let v = current(source).map_err(Status::unauthenticated)?;
            req.metadata_mut().insert("authorization", v);
        }
        // Every client channel carries the caller's trace (when traces are exported).
        crate::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is given.
    #[derive(Default)]
    struct Kept(Mutex<Vec<AuditRecord>>);

    impl Refusals for Kept {
        fn refused(&self, r: AuditRecord) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            self.0.lock().expect("lock").push(r);
            Box::pin(async {})
        }
    }

    fn from(peer: &str) -> AuditRecord {
        let mut r = AuditRecord::new(1, "", "ListJobs");
        r.peer = peer.into();
        r.message = "no bearer token".into();
        r
    }

    #[tokio::test]
    async fn a_flood_of_refusals_from_one_address_is_counted_not_recorded_one_by_one() {
        let kept = Arc::new(Kept::default());
        let throttled = Throttled::wrap(kept.clone(), "5/min").expect("rate");
        // Any port of the same address is the same caller.
        for port in 0..12 {
            throttled.refused(from(&format!("10.0.0.7:{}", 40000 + port))).await;
        }
        throttled.refused(from("10.0.0.8:1")).await;
        throttled.refused(from("[::1]:9")).await;
        let peers: Vec<String> = kept.0.lock().expect("lock").iter().map(|r| r.peer.clone()).collect();
        assert_eq!(peers.len(), 7, "5 of the flood, then one of each other address: {peers:?}");
        assert_eq!(peers.iter().filter(|p| p.starts_with("10.0.0.7:")).count(), 5);
        assert!(Throttled::wrap(kept.clone(), "off").is_ok());
        assert!(Throttled::wrap(kept, "many").err().unwrap_or_default().contains("100/min"));
    }

    #[test]
    fn the_next_record_admitted_says_how_many_were_left_out() {
        let kept: Arc<dyn Refusals> = Arc::new(Kept::default());
        let t = Throttled {
            inner: kept,
            per_peer: weir_auth::KeyedLimits::parse("2/min").expect("rate"),
            rate: "2/min".into(),
            left_out: Mutex::default(),
        };
        assert!(t.admit(from("10.0.0.7:1")).is_some());
        assert!(t.admit(from("10.0.0.7:2")).is_some());
        assert!(t.admit(from("10.0.0.7:3")).is_none());
        assert!(t.admit(from("10.0.0.7:4")).is_none());
        // Another address is its own bucket, and carries no count.
        let other = t.admit(from("10.0.0.8:1")).expect("admitted");
        assert_eq!(other.message, "no bearer token");
        // Once the address may be recorded again, its record carries the count.
        let fresh = Throttled { per_peer: weir_auth::KeyedLimits::parse("1000/s").expect("rate"), ..t };
        let next = fresh.admit(from("10.0.0.7:5")).expect("admitted");
        assert_eq!(next.message, "no bearer token (and 2 earlier refusals of 10.0.0.7 not recorded: over 2/min)");
        assert!(fresh.admit(from("10.0.0.7:6")).expect("admitted").message.ends_with("token"), "counted once");
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").expect("write");
        let c = Credentials::file(path.clone()).expect("readable");
        let Some(source) = &c.0 else { panic!("a source") };
        assert_eq!(current(source).expect("token"), "Bearer one");
        std::fs::write(&path, "two").expect("write");
        // Set a different modification time, as a mounted secret's swap does.
        let f = std::fs::File::options().write(true).open(&path).expect("open");
        f.set_modified(SystemTime::now() + Duration::from_secs(5)).expect("mtime");
        std::thread::sleep(TOKEN_FILE_CHECK + Duration::from_millis(50));
        assert_eq!(current(source).expect("token"), "Bearer two");
        assert!(Credentials::file(dir.path().join("missing")).err().unwrap_or_default().contains("cannot read"));
    }
}
