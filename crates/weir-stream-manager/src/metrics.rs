//! The stream manager's metrics: each stream's records and bytes read and its lag (what
//! the source holds past the last position read, summed over the lanes whose lag is
//! known), and the replica's buffered bytes. A stream is `<namespace>/<job>/<step>`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use weir_runtime::metrics::register;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

/// The families.
pub struct Streams {
    pub records: Family<StreamLabels, Counter>,
    pub bytes: Family<StreamLabels, Counter>,
    pub lag: Family<StreamLabels, Gauge>,
    pub buffered_bytes: Gauge,
    /// Stream names come from jobs: bounded.
    pub names: weir_runtime::metrics::Bounded,
}

/// The process's stream metrics, registered on first use.
pub static STREAMS: LazyLock<Streams> = LazyLock::new(|| {
    let s = Streams {
        records: Family::default(),
        bytes: Family::default(),
        lag: Family::default(),
        buffered_bytes: Gauge::default(),
        names: weir_runtime::metrics::Bounded::new(),
    };
    register("stream_records", "Records a stream read from its source", s.records.clone());
    register("stream_read_bytes", "Bytes a stream read from its source", s.bytes.clone());
    register("stream_lag_records", "Records the source holds past what the stream read", s.lag.clone());
    register("stream_buffered_bytes", "Bytes this replica's streams hold unflushed", s.buffered_bytes.clone());
    s
});
