//! A Parquet dataset's schema on disk: its history of versions in `_weir/schema.json`
//! (Weir's record, read before every write), and `_common_metadata` at the dataset's root,
//! a Parquet file holding only the current schema — the file Spark reads a dataset's
//! schema from, and that pyarrow takes as `ds.dataset(path, schema=pq.read_schema(...))`,
//! so files written before a column was added read as nulls in it.
//!
//! Also what the local and object-store sinks share: reading a committed file's schema
//! (to adopt a dataset written before Weir kept its history) and casting a local file to
//! a wider schema (a `widen` contract, or a write that lost a race to one).

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use weir_core::dataset::schema::{Column, History, Partition, Schema};

use crate::typing::{arrow_schema, column_type, project};
use crate::DataError;

/// Where a dataset's history lives, relative to its root.
pub const HISTORY: &str = "_weir/schema.json";
/// The reader-facing schema file at a dataset's root.
pub const COMMON_METADATA: &str = "_common_metadata";

/// The history as stored.
pub fn encode(h: &History) -> Result<Vec<u8>, DataError> {
    serde_json::to_vec_pretty(h).map_err(|e| DataError::Sink(format!("encoding the schema history: {e}")))
}

/// Reads a stored history; `what` names it in the error.
pub fn decode(bytes: &[u8], what: &str) -> Result<History, DataError> {
    serde_json::from_slice(bytes).map_err(|e| DataError::Config(format!("{what} is not a Weir schema history: {e}")))
}

/// A Parquet file with no rows holding `schema`: the `_common_metadata` of a dataset.
pub fn common_metadata(schema: &Schema) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::new();
    let w = ArrowWriter::try_new(&mut buf, arrow_schema(schema), None)?;
    w.close()?;
    Ok(buf)
}

/// The Weir schema of a Parquet file's own columns (all nullable, types normalized).
pub fn file_schema(path: &Path) -> Result<Schema, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| DataError::Format(format!("{}: not a readable Parquet file: {e}", path.display())))?;
    Ok(Schema {
        columns: b
            .schema()
            .fields()
            .iter()
            .map(|f| Column { name: f.name().clone(), kind: column_type(f.data_type()), nullable: true })
            .collect(),
        partition: None,
    })
}

/// The schema of a dataset written before Weir kept its history, gathered from its
/// committed files' own schemas: every file's columns, which must agree on each column's
/// type; the partitioning from the first file's folder.
#[derive(Debug, Default)]
pub struct Adoption {
    /// The schema so far and the file it was first seen in.
    found: Option<(Schema, String)>,
}

impl Adoption {
    /// Adds one committed file's schema (`rel`: its path in the dataset); the error names
    /// two files that disagree on a column.
    pub fn add(&mut self, rel: &str, s: Schema) -> Result<(), DataError> {
        let Some((have, first)) = &mut self.found else {
            let mut s = s;
            s.partition = rel
                .split_once('/')
                .and_then(|(seg, _)| seg.split_once('='))
                .map(|(k, _)| Partition { column: k.to_string(), folder: k.to_string() });
            self.found = Some((s, rel.to_string()));
            return Ok(());
        };
        for c in s.columns {
            match have.column(&c.name) {
                None => have.columns.push(c),
                Some(h) if h.kind == c.kind => {}
                Some(h) => {
                    return Err(DataError::Schema(format!(
                        "the dataset's files disagree on column {:?}: {first} holds it as {}, {rel} as {}; rewrite or remove one, then run again",
                        c.name, h.kind, c.kind
                    )))
                }
            }
        }
        Ok(())
    }

    /// The adopted schema (`None`: no files).
    pub fn finish(self) -> Option<Schema> {
        self.found.map(|(mut s, _)| {
            if s.partition.as_ref().is_some_and(|p| s.column(&p.column).is_none()) {
                s.partition = None;
            }
            s
        })
    }
}

/// [`Adoption`] of local files: (path relative to the root, local path).
pub fn adopt(files: &[(String, std::path::PathBuf)]) -> Result<Option<Schema>, DataError> {
    let mut a = Adoption::default();
    for (rel, local) in files {
        a.add(rel, file_schema(local)?)?;
    }
    Ok(a.finish())
}

/// Rewrites the local Parquet file at `path` with its columns cast to `to` (a lossless
/// widening), in place: written beside it, then renamed over it.
pub fn conform(path: &Path, to: &SchemaRef, zstd_level: i32) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(8192).build()?;
    let tmp = path.with_extension("conform.tmp");
    let out = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?)).build();
    let mut w = ArrowWriter::try_new(out, to.clone(), Some(props))?;
    let result = (|| -> Result<(), DataError> {
        for batch in reader {
            let batch: RecordBatch = batch?;
            w.write(&project(&batch, to)?)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let out = w.into_inner()?;
    out.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::dataset::schema::{Change, ColumnType, Origin};

    #[test]
    fn a_schema_round_trips_and_reads_as_parquet() {
        let s = Schema {
            columns: vec![
                Column { name: "id".into(), kind: ColumnType::Int64, nullable: false },
                Column { name: "ts".into(), kind: ColumnType::Timestamp, nullable: true },
            ],
            partition: Some(Partition::new("ts", ColumnType::Timestamp)),
        };
        let mut h = History::default();
        h.push(s.clone(), vec![Change::Created], Origin::default());
        assert_eq!(decode(&encode(&h).expect("encode"), "x").expect("decode"), h);
        assert!(decode(b"{}", "lake/_weir/schema.json").is_ok(), "an empty history reads");
        assert!(decode(b"[1]", "lake/_weir/schema.json")
            .expect_err("bad")
            .to_string()
            .contains("lake/_weir/schema.json"));

        let dir = tempfile::tempdir().expect("tmp");
        let meta = dir.path().join(COMMON_METADATA);
        std::fs::write(&meta, common_metadata(&s).expect("meta")).expect("write");
        let read = file_schema(&meta).expect("schema");
        assert_eq!(read.describe(), "id: int64, ts: timestamp");
    }
}
