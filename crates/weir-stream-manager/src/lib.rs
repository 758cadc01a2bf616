//! The stream manager: consumes streams into the step's sinks.
//!
//! It serves the `stream` queue: the generic kinds, and `consume` ([`consume`]). One loop
//! ([`run`]) serves every source: a source is one file under [`sources`] implementing
//! [`source::Source`]: Kafka, NATS JetStream, RabbitMQ, Amazon Kinesis and Google Pub/Sub.
//! The loop buffers each lane's records under the manager's memory budget ([`budget`]),
//! flushes them through the data plane ([`land`]) as inputs named by their range
//! ([`positions`]) — so a replay reproduces them and a restart resumes after what the
//! sinks hold — or, for a source that does not replay, drops redeliveries by message id
//! ([`dedupe`]). [`status`] tracks what each stream does (`weir streams`, events) and
//! [`metrics`] exports it to Prometheus.

pub mod budget;
pub mod consume;
pub mod decode;
pub mod dedupe;
pub mod land;
pub mod metrics;
pub mod positions;
pub mod run;
pub mod source;
pub mod status;
pub mod sources {
    //! One module per stream source.
    pub mod kafka;
    pub mod kinesis;
    pub mod nats;
    pub mod pubsub;
    pub mod rabbitmq;
}

use std::path::PathBuf;
use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;

/// The stream manager's own settings.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `WEIR_DATA_DIR` (default `.weir/data`): flush scratch and the quarantine.
    pub data_dir: PathBuf,
    /// `WEIR_STREAM_BUDGET` (default `1GiB`): the memory all streams may buffer.
    pub budget: u64,
    /// `WEIR_MAX_STREAMS` (default 100): the streams the manager runs at once (its tasks,
    /// unless `WEIR_WORKER_CONCURRENCY` says otherwise), the budget's client share split
    /// over them.
    pub max_streams: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            data_dir: PathBuf::from(weir_worker::DEFAULT_DATA_DIR),
            budget: budget::DEFAULT_BUDGET,
            max_streams: budget::DEFAULT_MAX_STREAMS,
        }
    }
}

impl StreamSettings {
    /// Reads the settings from the environment; a bad value is named.
    pub fn from_env() -> Result<Self, String> {
        let mut s = StreamSettings::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(d) = var("WEIR_DATA_DIR") {
            s.data_dir = PathBuf::from(d);
        }
        if let Some(b) = var("WEIR_STREAM_BUDGET") {
            s.budget = b
                .trim()
                .parse::<bytesize::ByteSize>()
                .map_err(|e| format!("WEIR_STREAM_BUDGET={b:?} is not a size such as 1GiB: {e}"))?
                .as_u64();
            if s.budget == 0 {
                return Err("WEIR_STREAM_BUDGET must be more than 0".into());
            }
        }
        if let Some(n) = var("WEIR_MAX_STREAMS") {
            s.max_streams = n
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("WEIR_MAX_STREAMS={n:?} is not a positive number"))?;
        }
        Ok(s)
    }
}

/// What this manager runs, with settings from the environment.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(spec_with(StreamSettings::from_env()?))
}

/// What this manager runs, with the given settings.
pub fn spec_with(settings: StreamSettings) -> ManagerSpec {
    let notices = weir_worker::notice::Notices::default();
    let budget = Arc::new(budget::Budget::new(settings.budget, settings.max_streams));
    let registry = status::Registry::new(budget.clone(), notices.clone());
    ManagerSpec {
        name: "stream-manager",
        binary: "weir-stream-manager",
        queue: Queue::Stream,
        // One task a stream: the manager runs as many as its budget is shared over.
        concurrency: settings.max_streams as u32,
        quotas: weir_worker::quota::Quotas::default(),
        notices,
        handlers: vec![Arc::new(Generic), Arc::new(consume::Consume::new(settings, budget, registry.clone()))],
        background: vec![Arc::new(status::Streams::new(registry))],
    }
}
