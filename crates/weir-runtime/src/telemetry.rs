//! Structured logs and traces through `tracing`.
//!
//! Logs: `RUST_LOG` filters (default `info`); `--log-format json` (`WEIR_LOG_FORMAT=json`)
//! writes one JSON object per line.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set (e.g. `http://collector:4317`), spans are
//! exported over OTLP/gRPC with the service's name (`OTEL_SERVICE_NAME` overrides it) and
//! `OTEL_RESOURCE_ATTRIBUTES`; sampling follows `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on; e.g.
//! `parentbased_traceidratio` and `0.1` keeps one trace in ten). W3C `traceparent` carries
//! the trace across gRPC calls ([`inject`], [`extract`]), task leases and Kafka events.
//! Without the endpoint nothing of this runs: no spans per call, no propagation.

use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use weir_core::trace::TraceParent;

use crate::RuntimeError;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging settings shared by every binary (tracing's are OpenTelemetry's own `OTEL_*`
/// variables, read by the SDK).
#[derive(Debug, Clone, Args, Default)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Whether a W3C `traceparent` says its trace is sampled (flags bit 0); a malformed one
/// is not.
pub fn sampled(traceparent: &str) -> bool {
    traceparent.parse::<TraceParent>().is_ok_and(|t| t.flags & 1 == 1)
}

/// Whether this process exports traces (set once, by [`init`]).
static TRACING: OnceLock<bool> = OnceLock::new();

/// True when spans are exported: only then are spans made per call and contexts carried.
pub fn tracing_enabled() -> bool {
    TRACING.get().copied().unwrap_or(false)
}

/// The trace exporter of a process; [`Telemetry::shutdown`] sends what is buffered.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (on a blocking thread: the
    /// SDK's flush waits for the export).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "the trace exporter did not shut down cleanly");
            }
        }
    }
}

/// Installs the global subscriber once (later calls are no-ops: tests and `weir dev` start
/// many services in one process), with trace export for `service` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call it inside the Tokio runtime: the exporter's
/// gRPC channel lives there.
pub fn init(service: &str, args: &TelemetryArgs) -> Result<Telemetry, RuntimeError> {
    if TRACING.get().is_some() {
        return Ok(Telemetry { provider: None });
    }
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let provider = if endpoint.trim().is_empty() { None } else { Some(provider(service)?) };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match args.log_format {
        LogFormat::Text => fmt.with_filter(filter()).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_filter(filter()).boxed(),
    };
    // Spans go to the exporter from `info` on whatever RUST_LOG says about log lines;
    // without source locations and thread ids, which every span would otherwise carry,
    // and without work at every poll of a future in a span (busy/idle times, activating
    // the OpenTelemetry context: Weir reads a span's context from the span itself).
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("weir"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    match tracing_subscriber::registry().with(logs).with(traces).try_init() {
        Ok(()) => {
            let _ = TRACING.set(provider.is_some());
            if provider.is_some() {
                tracing::debug!(%endpoint, service, "exporting traces over OTLP");
            }
            Ok(Telemetry { provider })
        }
        Err(e) if e.to_string().contains("already") => Ok(Telemetry { provider: None }),
        Err(e) => Err(RuntimeError::Telemetry(e.to_string())),
    }
}

fn provider(service: &str) -> Result<SdkTracerProvider, RuntimeError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| RuntimeError::Telemetry(format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}")))?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.namespace", "weir"))
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |s| s.is_empty()) {
        resource = resource.with_service_name(service.to_string());
    }
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG), read by the SDK's builder.
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// The current span's trace context, when traces are exported and the span is part of
/// one (Weir's own [`TraceParent`], which every hop — calls, leases, events — carries).
pub fn current_trace() -> Option<TraceParent> {
    if !tracing_enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Makes `span` a child of the W3C `traceparent` given (a lease's, an event's), when traces
/// are exported; a malformed one is ignored.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !tracing_enabled() {
        return;
    }
    let Ok(t) = traceparent.parse::<TraceParent>() else { return };
    let remote = SpanContext::new(
        TraceId::from_bytes(t.trace_id.to_be_bytes()),
        SpanId::from_bytes(t.span_id.to_be_bytes()),
        TraceFlags::new(t.flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata, when traces are
/// exported and the caller did not set one itself.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if metadata.contains_key("traceparent") {
        return;
    }
    if let Some(t) = current_trace() {
        if let Ok(v) = t.to_string().parse() {
            metadata.insert("traceparent", v);
        }
    }
}

/// Services whose calls without a caller's trace start none: a manager's polls and
/// heartbeats are not worth a trace each, its reports carry the task's.
const UNTRACED_ROOTS: [&str; 1] = ["weir.v1.WorkerService"];

/// The span a gRPC server runs one call in: named after the method, a child of the
/// caller's `traceparent` if it sent one. Without trace export, no span at all.
pub fn server_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    if !tracing_enabled() {
        return tracing::Span::none();
    }
    let parent = request.headers().get("traceparent").and_then(|v| v.to_str().ok());
    let path = request.uri().path();
    if parent.is_none() && UNTRACED_ROOTS.iter().any(|s| path.trim_start_matches('/').starts_with(s)) {
        return tracing::Span::none();
    }
    // A call in a trace the sampler dropped: its span would be dropped too.
    if parent.is_some_and(|p| !sampled(p)) {
        return tracing::Span::none();
    }
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    if let Some(tp) = parent {
        set_parent(&span, tp);
    }
    span
}
