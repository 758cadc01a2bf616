//! The batch manager's metrics: rows each data step read, wrote, quarantined and dropped
//! as duplicates, and the files and bytes it read — counted when a step's attempt
//! succeeds (a retried attempt's rows count again: they were read again).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use weir_runtime::metrics::register;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowLabels {
    pub kind: String,
    /// read, written, quarantined or duplicate.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// The families.
pub struct Batch {
    pub rows: Family<RowLabels, Counter>,
    pub files: Family<KindLabels, Counter>,
    pub bytes: Family<KindLabels, Counter>,
}

/// The process's batch metrics, registered on first use.
pub static BATCH: LazyLock<Batch> = LazyLock::new(|| {
    let b = Batch { rows: Family::default(), files: Family::default(), bytes: Family::default() };
    register("batch_rows", "Rows a data step read, wrote, quarantined or dropped as duplicates", b.rows.clone());
    register("batch_files", "Input files a data step processed", b.files.clone());
    register("batch_read_bytes", "Bytes of input a data step read", b.bytes.clone());
    b
});

impl Batch {
    /// Counts a successful step's totals.
    pub fn step(&self, kind: &str, rows: [(&str, u64); 4], files: u64, bytes: u64) {
        for (outcome, n) in rows {
            self.rows.get_or_create(&RowLabels { kind: kind.to_string(), outcome: outcome.to_string() }).inc_by(n);
        }
        let k = KindLabels { kind: kind.to_string() };
        self.files.get_or_create(&k).inc_by(files);
        self.bytes.get_or_create(&k).inc_by(bytes);
    }
}
