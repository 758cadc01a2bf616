//! Parquet input, through the `parquet` crate's Arrow reader: the file's own types pass
//! through (or are cast to a declared schema by [`crate::typing`]), a row group at a time.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{Chunk, Source};
use crate::DataError;

pub(crate) struct ParquetSource {
    reader: ParquetRecordBatchReader,
    record: u64,
}

impl ParquetSource {
    pub(crate) fn open(path: &Path, batch_rows: usize, bytes: &Arc<AtomicU64>) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| DataError::Format(format!("{}: not a readable Parquet file: {e}", path.display())))?
            .with_batch_size(batch_rows)
            .build()?;
        // Parquet is read by row group, not as a stream: count the file once.
        bytes.fetch_add(len, Ordering::Relaxed);
        Ok(ParquetSource { reader, record: 0 })
    }
}

impl Source for ParquetSource {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError> {
        match self.reader.next() {
            None => Ok(None),
            Some(Err(e)) => Err(DataError::Format(format!("parquet: {e}"))),
            Some(Ok(batch)) => {
                let n = batch.num_rows() as u64;
                let rows = (self.record + 1..=self.record + n).collect();
                self.record += n;
                Ok(Some(Chunk { batch, rows, rejects: vec![] }))
            }
        }
    }
}
