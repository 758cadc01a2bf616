//! The stream manager: consumes streams into the step's sinks (issue #12, in progress).
//!
//! It serves the `stream` queue: the generic kinds, and `consume` ([`consume`]) from
//! Kafka ([`sources::kafka`]), flushing each partition's records through the data plane
//! ([`land`]) as inputs named by their range ([`positions`]), so a replay reproduces them
//! and a restart resumes after what the sinks hold. RabbitMQ, NATS JetStream, Kinesis and
//! Pub/Sub are refused at submission until they land here, one file each under
//! [`sources`].

pub mod consume;
pub mod land;
pub mod positions;
pub mod sources {
    //! One module per stream source.
    pub mod kafka;
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
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings { data_dir: PathBuf::from(weir_worker::DEFAULT_DATA_DIR) }
    }
}

impl StreamSettings {
    /// Reads the settings from the environment.
    pub fn from_env() -> Self {
        let mut s = StreamSettings::default();
        if let Some(d) = std::env::var("WEIR_DATA_DIR").ok().filter(|d| !d.is_empty()) {
            s.data_dir = PathBuf::from(d);
        }
        s
    }
}

/// What this manager runs, with settings from the environment.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(spec_with(StreamSettings::from_env()))
}

/// What this manager runs, with the given settings.
pub fn spec_with(settings: StreamSettings) -> ManagerSpec {
    ManagerSpec {
        name: "stream-manager",
        binary: "weir-stream-manager",
        queue: Queue::Stream,
        quotas: weir_worker::quota::Quotas::default(),
        notices: weir_worker::notice::Notices::default(),
        handlers: vec![Arc::new(Generic), Arc::new(consume::Consume::new(settings))],
        background: vec![],
    }
}
