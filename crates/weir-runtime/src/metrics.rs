//! Prometheus metrics: one process-wide registry ([`register`]; `weir dev` runs every
//! service in one process, so families are registered once and labelled by queue or
//! service), the gRPC server's own metrics ([`MetricsLayer`]), and `/metrics` over plain
//! HTTP ([`serve`], on `WEIR_METRICS_LISTEN`).
//!
//! Names follow Prometheus' conventions: `weir_` first, the unit in the name, counters
//! ending `_total` (the encoder adds it). Labels are bounded: methods, queues, states —
//! never a job or task id; values that jobs choose (namespaces, API names, streams) pass
//! through a [`Bounded`] set, so no job can grow a family without limit.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http;

use crate::RuntimeError;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

/// Registers `metric` as `name` (without `weir_`, added here) in the process's registry.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    let mut r = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    r.register(format!("weir_{name}"), help, metric);
}

/// The registry in Prometheus' text format (0.0.4, what every scraper and `promtool check
/// metrics` reads).
pub fn encode() -> String {
    let r = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &r) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    out
}

/// How many distinct values a label chosen by jobs takes in one process
/// (`WEIR_METRICS_MAX_LABEL_VALUES`, default 200); later values count as [`Bounded::OTHER`].
pub fn max_label_values() -> usize {
    static MAX: LazyLock<usize> = LazyLock::new(|| {
        std::env::var("WEIR_METRICS_MAX_LABEL_VALUES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(200)
    });
    *MAX
}

/// The values one label has taken: the first [`max_label_values`] are kept as they are,
/// later ones are reported as [`Bounded::OTHER`] (the series a scrape holds, and the
/// registry's memory, stay bounded whatever jobs name).
pub struct Bounded {
    max: usize,
    seen: Mutex<std::collections::HashSet<String>>,
}

impl Bounded {
    /// What a value past the limit is reported as.
    pub const OTHER: &'static str = "_other";

    /// A set taking up to [`max_label_values`] values.
    pub fn new() -> Bounded {
        Bounded::with_max(max_label_values())
    }

    /// A set taking up to `max` values.
    pub fn with_max(max: usize) -> Bounded {
        Bounded { max, seen: Mutex::default() }
    }

    /// `value` if it has been seen or there is room for it, else [`Bounded::OTHER`].
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return value.to_string();
        }
        Bounded::OTHER.to_string()
    }
}

impl Default for Bounded {
    fn default() -> Self {
        Bounded::new()
    }
}

/// A histogram of durations in seconds, 1 ms to about 9 minutes (a family's constructor).
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Address of the `/metrics` endpoint (Prometheus text format), e.g. 0.0.0.0:9464;
    /// empty: none.
    #[arg(long = "metrics-listen", env = "WEIR_METRICS_LISTEN", default_value = "")]
    pub metrics_listen: String,
}

impl MetricsArgs {
    /// Binds the endpoint if one is set and serves it until `cancel`; returns its address.
    pub async fn start(&self, cancel: CancellationToken) -> Result<Option<SocketAddr>, RuntimeError> {
        if self.metrics_listen.trim().is_empty() {
            return Ok(None);
        }
        let listener = crate::grpc::bind(self.metrics_listen.trim()).await?;
        let addr = listener.local_addr().ok();
        tokio::spawn(serve(listener, cancel));
        Ok(addr)
    }
}

/// Most scrapes served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// How long a scraper has to send its request, and to read the answer.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `GET /metrics` (and 404 for anything else) on `listener` until `cancel`: at most
/// [`MAX_CONNECTIONS`] at once, one request each, each within [`SCRAPE_TIMEOUT`], so slow
/// or idle clients cannot hold the process's sockets.
pub async fn serve(listener: TcpListener, cancel: CancellationToken) {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let (status, body) = if req.uri().path() == "/metrics" {
                    (http::StatusCode::OK, encode())
                } else {
                    (http::StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n".to_string())
                };
                let mut resp = http::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
                );
                Ok::<_, std::convert::Infallible>(resp)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_TIMEOUT)
                .keep_alive(false)
                .serve_connection(io, service);
            match tokio::time::timeout(SCRAPE_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!("metrics connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Labels of the gRPC server's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub service: String,
    pub method: String,
    pub code: String,
}

/// The gRPC server's metrics, shared by every server of the process.
pub struct GrpcMetrics {
    pub requests: Family<GrpcLabels, Counter>,
    pub duration: Family<GrpcLabels, Histogram, fn() -> Histogram>,
}

static GRPC: LazyLock<Arc<GrpcMetrics>> = LazyLock::new(|| {
    let m = Arc::new(GrpcMetrics {
        requests: Family::default(),
        duration: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
    });
    register("grpc_server_requests", "gRPC calls answered, by service, method and status code", m.requests.clone());
    register(
        "grpc_server_request_duration_seconds",
        "Time to a gRPC call's response headers, by service, method and status code",
        m.duration.clone(),
    );
    m
});

/// Counts a call answered inside another, as the call it stands for (a report of a batch
/// as the single report call it replaces), with no time.
pub fn count_call(service: &str, method: &str, code: tonic::Code) {
    let labels =
        GrpcLabels { service: service.into(), method: method.into(), code: crate::auth::code_name(code).into() };
    GRPC.requests.get_or_create(&labels).inc();
}

/// Every method Weir's servers serve, `/<service>/<method>`, read from the compiled
/// protos (Weir's and health's) and the reflection services.
static KNOWN: LazyLock<std::collections::HashSet<String>> = LazyLock::new(|| {
    use prost::Message;
    let mut known = std::collections::HashSet::new();
    for set in [weir_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let Ok(files) = prost_types::FileDescriptorSet::decode(set) else { continue };
        for f in &files.file {
            for s in &f.service {
                for m in &s.method {
                    known.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                }
            }
        }
    }
    for v in ["v1", "v1alpha"] {
        known.insert(format!("/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo"));
    }
    known
});

/// The service and method of a gRPC path (`/weir.v1.JobService/SubmitJob`); any path no
/// server serves is `unknown`, so callers (even refused ones) cannot mint labels.
fn route(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((s, m)) if KNOWN.contains(path) => (s.to_string(), m.to_string()),
        _ => ("unknown".into(), "unknown".into()),
    }
}

/// The tower layer that counts and times every call of a server (refusals included).
#[derive(Clone, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

/// A service whose calls are counted and timed.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Measured<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let start = Instant::now();
            let resp = inner.call(req).await?;
            // An error is answered in the headers (trailers-only); a success's status comes
            // in the trailers, after the body: counted as OK.
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or("OK", |c| crate::auth::code_name(tonic::Code::from(c)));
            let (service, method) = route(&path);
            let labels = GrpcLabels { service, method, code: code.to_string() };
            GRPC.requests.get_or_create(&labels).inc();
            GRPC.duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_label_takes_its_first_values_then_other() {
        let b = super::Bounded::with_max(2);
        assert_eq!(b.label("a"), "a");
        assert_eq!(b.label("b"), "b");
        assert_eq!(b.label("c"), super::Bounded::OTHER);
        assert_eq!(b.label("a"), "a", "a value seen before keeps its series");
    }

    use super::*;

    #[test]
    fn a_route_is_its_service_and_method_and_an_unknown_one_mints_no_label() {
        assert_eq!(route("/weir.v1.JobService/SubmitJob"), ("weir.v1.JobService".into(), "SubmitJob".into()));
        assert_eq!(route("/grpc.health.v1.Health/Check"), ("grpc.health.v1.Health".into(), "Check".into()));
        assert_eq!(route("/weir.v1.JobService/Made-up"), ("unknown".into(), "unknown".into()));
        assert_eq!(route("/made.up/Anything"), ("unknown".into(), "unknown".into()));
        assert_eq!(route("/no-method"), ("unknown".into(), "unknown".into()));
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_registry_in_the_text_format() {
        let c: Counter = Counter::default();
        register("test_things", "Things counted by this test", c.clone());
        c.inc_by(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, cancel.clone()));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).await.expect("read");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("# TYPE weir_test_things_total counter"), "{text}");
        assert!(text.contains("\nweir_test_things_total 3\n"), "{text}");
        cancel.cancel();
    }
}
