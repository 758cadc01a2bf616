//! `dedupe`: a row is written only if no sink of the step holds its key yet and no earlier
//! row of the step had it — what a reconstruction needs to merge recovered records with
//! what already landed, without duplicates.
//!
//! The keys a sink holds are read when the step starts from its committed files (local
//! Parquet datasets; a PostgreSQL sink keeps one row per key by upserting on it), except
//! the files of the step's own inputs: a retry rewrites those, so their keys must not
//! count as landed. Keys are the key columns' values as text, so `7` and `"7"` are one key.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use weir_core::dataset::{DataStep, SinkSpec};

use crate::sink::local::LocalDataset;
use crate::DataError;

/// The keys seen so far: those the sinks held at the start, then every row written.
#[derive(Debug)]
pub struct Seen {
    key: Vec<String>,
    keys: Mutex<HashSet<String>>,
    /// How many keys the sinks held at the start.
    pub landed: usize,
}

/// The key of each row: its key columns' values as text, joined.
fn row_keys(batch: &RecordBatch, key: &[String]) -> Result<Vec<String>, DataError> {
    let schema = batch.schema();
    let mut fmts = Vec::with_capacity(key.len());
    for k in key {
        let i = schema
            .index_of(k)
            .map_err(|_| DataError::Config(format!("dedupe.key names column {k:?}, which the data does not have")))?;
        fmts.push((batch.column(i).clone(), i));
    }
    let opts = FormatOptions::default();
    let formatters =
        fmts.iter().map(|(c, _)| ArrayFormatter::try_new(c.as_ref(), &opts)).collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|r| {
            let mut s = String::new();
            for (i, f) in formatters.iter().enumerate() {
                if i > 0 {
                    s.push('\u{1f}');
                }
                if !fmts[i].0.is_null(r) {
                    s.push_str(&f.value(r).to_string());
                }
            }
            s
        })
        .collect())
}

impl Seen {
    /// The keys the step's sinks hold, leaving out the files of `own` input keys; `None`
    /// without `dedupe`.
    pub fn load(step: &DataStep, own: &HashSet<String>) -> Result<Option<Seen>, DataError> {
        let Some(d) = &step.dedupe else { return Ok(None) };
        let mut keys = HashSet::new();
        for s in &step.sinks {
            sink_keys(s, &d.key, own, &mut |k| {
                keys.insert(k);
            })?;
        }
        let landed = keys.len();
        Ok(Some(Seen { key: d.key.clone(), keys: Mutex::new(keys), landed }))
    }

    /// Which rows are new (`true`); their keys count as seen from now on.
    pub fn admit(&self, batch: &RecordBatch) -> Result<BooleanArray, DataError> {
        let keys = row_keys(batch, &self.key)?;
        let mut seen = self.keys.lock().map_err(|_| DataError::Sink("dedupe: key set poisoned".into()))?;
        Ok(keys.into_iter().map(|k| Some(seen.insert(k))).collect())
    }
}

/// Feeds `each` the key of every row a local Parquet sink holds, leaving out the files of
/// the `skip` input keys (other sinks hold nothing to read here).
pub fn sink_keys(
    sink: &SinkSpec,
    key: &[String],
    skip: &HashSet<String>,
    each: &mut dyn FnMut(String),
) -> Result<(), DataError> {
    let SinkSpec::Parquet { path, location: None, encryption, .. } = sink else { return Ok(()) };
    let decryption = match encryption {
        Some(e) => Some(crate::sink::encryption::decryption(e)?),
        None => None,
    };
    for (input, file) in LocalDataset::new(Path::new(path)).files_by_input()? {
        if skip.contains(&input) {
            continue;
        }
        let open = std::fs::File::open(&file).map_err(|e| DataError::io(&file, e))?;
        let mut opts = ArrowReaderOptions::new();
        if let Some(d) = &decryption {
            opts = opts.with_file_decryption_properties(d.clone());
        }
        let b = ParquetRecordBatchReaderBuilder::try_new_with_options(open, opts)?;
        let fields = b.schema().fields().clone();
        let indices: Vec<usize> = key.iter().filter_map(|k| fields.iter().position(|f| f.name() == k)).collect();
        if indices.len() != key.len() {
            return Err(DataError::Config(format!("key {key:?}: {} lacks a key column", file.display())));
        }
        let mask = ProjectionMask::roots(b.parquet_schema(), indices);
        for batch in b.with_projection(mask).build()? {
            for k in row_keys(&batch?, key)? {
                each(k);
            }
        }
    }
    Ok(())
}

/// What a sink holds by key: its rows, its distinct keys, and a key held twice if any.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KeyCount {
    pub rows: u64,
    pub distinct: u64,
    pub duplicate: Option<String>,
}

/// Counts a local Parquet sink's rows and distinct keys.
pub fn count_keys(sink: &SinkSpec, key: &[String]) -> Result<KeyCount, DataError> {
    let mut seen = HashSet::new();
    let mut c = KeyCount::default();
    sink_keys(sink, key, &HashSet::new(), &mut |k| {
        c.rows += 1;
        if !seen.insert(k.clone()) && c.duplicate.is_none() {
            c.duplicate = Some(k.replace('\u{1f}', ", "));
        }
    })?;
    c.distinct = seen.len() as u64;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_key_is_admitted_once_and_compound_keys_keep_their_parts_apart() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("part", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(1), Some(2), Some(1), None])) as ArrayRef,
                Arc::new(StringArray::from(vec![Some("a"), Some("a"), Some("a"), Some("b"), Some("a")])) as ArrayRef,
            ],
        )
        .expect("batch");
        let seen = Seen { key: vec!["id".into(), "part".into()], keys: Mutex::new(HashSet::new()), landed: 0 };
        let got: Vec<bool> = seen.admit(&batch).expect("admit").iter().map(|b| b.unwrap_or(false)).collect();
        assert_eq!(got, vec![true, false, true, true, true]);
        let again: Vec<bool> = seen.admit(&batch).expect("admit").iter().map(|b| b.unwrap_or(false)).collect();
        assert_eq!(again, vec![false; 5]);
        let bad = Seen { key: vec!["nope".into()], keys: Mutex::new(HashSet::new()), landed: 0 };
        assert!(bad.admit(&batch).expect_err("no column").to_string().contains("nope"));
    }
}
