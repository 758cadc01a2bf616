//! Structured logs through `tracing`: `RUST_LOG` filters (default `info`), and
//! `--log-format json` (`WEIR_LOG_FORMAT=json`) switches to one JSON object per line.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

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

/// Logging settings shared by every binary.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber once; later calls are no-ops (tests start many services).
pub fn init(args: &TelemetryArgs) -> Result<(), RuntimeError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("already") => Ok(()),
        Err(e) => Err(RuntimeError::Telemetry(e.to_string())),
    }
}
