//! The quarantine dataset: one row per rejected row, with where it came from, the rule it
//! broke and why, and the row as read. A Parquet dataset like any other (committed per
//! input, fenced), so `duckdb -c "select rule, count(*) from '<dir>/*.parquet' group by 1"`
//! answers what went wrong.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::sink::parquet::DatasetWriter;
use crate::sink::WriteFence;
use crate::{DataError, Reject};

/// The quarantine's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("input", DataType::Utf8, false),
        Field::new("row", DataType::UInt64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
    ]))
}

/// Collects one input's rejects and writes them in batches.
pub struct Quarantine {
    input: String,
    writer: Option<DatasetWriter>,
    pending: Vec<Reject>,
    root: std::path::PathBuf,
    key: String,
    fence: WriteFence,
    rows: u64,
}

impl Quarantine {
    pub fn new(root: &Path, input: &str, key: &str, fence: &WriteFence) -> Self {
        Quarantine {
            input: input.to_string(),
            writer: None,
            pending: Vec::new(),
            root: root.to_path_buf(),
            key: key.to_string(),
            fence: fence.clone(),
            rows: 0,
        }
    }

    /// Adds rejects; writes them out once enough have gathered.
    pub fn add(&mut self, rejects: impl IntoIterator<Item = Reject>) -> Result<(), DataError> {
        self.pending.extend(rejects);
        if self.pending.len() >= 4096 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rejects = std::mem::take(&mut self.pending);
        self.rows += rejects.len() as u64;
        let n = rejects.len();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.input.as_str(); n])),
            Arc::new(UInt64Array::from(rejects.iter().map(|r| r.row).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.record.as_str()).collect::<Vec<_>>())),
        ];
        let batch = RecordBatch::try_new(schema(), cols)?;
        if self.writer.is_none() {
            self.writer = Some(DatasetWriter::create(&self.root, &self.key, &self.fence, &schema(), None, 3)?);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch)?;
        }
        Ok(())
    }

    /// Rows quarantined so far.
    pub fn rows(&self) -> u64 {
        self.rows + self.pending.len() as u64
    }

    /// Commits the quarantine file; returns its path, or `None` if nothing was rejected
    /// (an earlier attempt's quarantine for the same input is then removed).
    pub fn commit(mut self) -> Result<Option<String>, DataError> {
        self.flush()?;
        match self.writer.take() {
            Some(w) => Ok(w.commit()?.into_iter().next().map(|p| p.display().to_string())),
            // An earlier attempt left rejects for this input: an empty write clears them.
            None if DatasetWriter::committed(&self.root, &self.key) => {
                let w = DatasetWriter::create(&self.root, &self.key, &self.fence, &schema(), None, 3)?;
                w.commit()?;
                Ok(None)
            }
            // Nothing rejected, now or before: nothing to write (the common case, and the
            // hot one when thousands of small files pass).
            None => Ok(None),
        }
    }

    /// Drops everything written.
    pub fn abort(mut self) {
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}
