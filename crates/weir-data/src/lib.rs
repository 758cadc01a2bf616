//! Weir's data plane: turns a file of any supported format into typed, checked rows in a
//! sink, with every row accounted for.
//!
//! The path one input takes ([`pipeline::convert`]):
//!
//! 1. [`detect`] names the compression and the format from the first bytes and the name.
//! 2. A [`read::Source`] streams the file in bounded chunks: text formats (CSV/TSV, JSON,
//!    NDJSON, XML) as text columns, Parquet as its own types. A row that cannot be read
//!    (ragged CSV, broken JSON) is a [`Reject`], never an abort.
//!    With `classify`, [`classify`] labels the columns holding personal data and masks
//!    or hashes them here, before anything else sees the rows.
//! 3. [`typing`] fixes the schema (declared, or inferred from the first chunk) and casts
//!    each column with arrow's kernels; a value that does not fit rejects its row.
//! 4. [`quality`] applies the step's rules; rows that break one are rejected with the rule.
//!    With `dedupe`, [`dedupe`] drops the rows whose key a sink already holds.
//! 5. Valid rows go to the sinks ([`sink`]): Parquet files committed atomically per input
//!    and fenced, so a retried or stale task never duplicates data; rejected rows go to a
//!    quarantine Parquet file with the rule and reason ([`quarantine`]).
//!
//! Memory is bounded by the chunk size, never by the file size. CPU work is synchronous
//! (callers run it on a blocking thread); landing is async.

pub mod classify;
pub mod dedupe;
pub mod detect;
pub mod pipeline;
pub mod quality;
pub mod quarantine;
pub mod read;
pub mod sink;
pub mod typing;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Errors that stop an input. Row-level problems are [`Reject`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The input could not be read.
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The input is not in a format Weir can read, or not the declared one.
    #[error("{0}")]
    Format(String),
    /// The step's config cannot be applied to this data (a rule names a missing column,
    /// a pattern does not compile).
    #[error("config: {0}")]
    Config(String),
    /// The declared schema does not fit the input.
    #[error("schema: {0}")]
    Schema(String),
    /// A dataset rule (required columns, minimum rows, freshness) or a threshold failed.
    #[error("quality: {0}")]
    Quality(String),
    /// The sink refused the write because a newer lease already wrote this input.
    #[error("stale write refused: {0}")]
    StaleFence(String),
    /// A sink failed.
    #[error("sink: {0}")]
    Sink(String),
    /// The work was stopped (task cancelled, lease lost, batch timed out).
    #[error("stopped before the input was finished; nothing was committed")]
    Cancelled,
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

impl DataError {
    /// Whether another attempt may succeed (I/O and sinks) or not (bad input, bad schema, rules).
    pub fn is_retryable(&self) -> bool {
        matches!(self, DataError::Io { .. } | DataError::Sink(_) | DataError::Cancelled)
    }

    /// A short machine-readable kind, used as the step's error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DataError::Io { .. } => "io",
            DataError::Format(_) => "bad_format",
            DataError::Config(_) => "bad_config",
            DataError::Schema(_) => "bad_schema",
            DataError::Quality(_) => "quality_failed",
            DataError::StaleFence(_) => "stale_fence",
            DataError::Sink(_) => "sink_failed",
            DataError::Cancelled => "cancelled",
            DataError::Arrow(_) | DataError::Parquet(_) => "bad_data",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What is wrong with one row, if anything: (rule, reason).
pub type Problem = Option<(&'static str, String)>;

/// A row that did not make it, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// 1-based record number in the input (header not counted).
    pub row: u64,
    /// What it broke: `parse`, `type`, `schema` (a column a sink's contract quarantines),
    /// `not_null`, `unique`, `range`, `pattern`, `allowed`.
    pub rule: String,
    /// A sentence naming the column and the value.
    pub reason: String,
    /// The row as read, as JSON text (or the raw line where it could not be split).
    pub record: String,
}

/// What happened to one input: `rows_read = rows_written + rows_quarantined +
/// rows_duplicate`, always (duplicates only with `dedupe`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    /// The input as named in the step.
    pub input: String,
    /// Detected or declared format, e.g. "csv.gz".
    pub format: String,
    /// Bytes read from the input (compressed size).
    pub bytes_read: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    /// Rows not written because a sink already held their key, or an earlier row of the
    /// step had it (`dedupe`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows_duplicate: u64,
    /// Quarantined rows by rule.
    pub quarantined_by_rule: BTreeMap<String, u64>,
    /// The schema written, as `name: type` pairs.
    pub schema: Vec<(String, String)>,
    /// Columns in the input that the declared schema did not name (dropped).
    pub ignored_columns: Vec<String>,
    /// Input columns no sink keeps (`schema_contract.columns: discard_value`), and why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub discarded_columns: BTreeMap<String, String>,
    /// Values that did not fit their column and were written as null
    /// (`schema_contract.data_type: discard_value`), per column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub discarded_values: BTreeMap<String, u64>,
    /// The staged Parquet file holding the valid rows, for the next step.
    pub output: Option<String>,
    /// The quarantine Parquet file, when any row was rejected.
    pub quarantine: Option<String>,
    /// Files written by Parquet sinks.
    pub sink_files: Vec<String>,
    /// Rows loaded into each PostgreSQL table.
    pub tables: BTreeMap<String, u64>,
    /// Per Kafka topic sink: how many of the input's rows the topic holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, u64>,
    /// The schema versions this input's writes created, by sink.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schema_versions: BTreeMap<String, u32>,
    /// Columns labelled as personal data (`classify`), and what was done to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classified: Vec<classify::Classified>,
    /// The sinks' writes, prepared and not yet landed ([`sink::landing`]).
    #[serde(skip)]
    pub pending: Vec<sink::Pending>,
    /// The written columns the input has values for (a PostgreSQL load copies only these).
    #[serde(skip)]
    pub copy_columns: Vec<String>,
}

impl FileReport {
    /// Checks the accounting identity; a broken one is a bug and fails the input loudly.
    pub fn check_accounting(&self) -> Result<(), DataError> {
        if self.rows_read != self.rows_written + self.rows_quarantined + self.rows_duplicate {
            return Err(DataError::Sink(format!(
                "accounting broken for {}: read {} != written {} + quarantined {} + duplicate {}",
                self.input, self.rows_read, self.rows_written, self.rows_quarantined, self.rows_duplicate
            )));
        }
        Ok(())
    }
}
