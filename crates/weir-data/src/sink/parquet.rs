//! A Parquet dataset in a local directory, written per input.
//!
//! Layout: `<root>/[<folder>=<value>/]<input key>.parquet`, one file per input and
//! partition (Hive-style partition folders that DuckDB, pyarrow and Spark read), plus
//! Weir's bookkeeping under `<root>/_weir/` (which those readers skip): a manifest per
//! input naming its files and the fence that wrote them, the schema's history, a lock,
//! and temporary files.
//!
//! A write goes to `_weir/tmp/` first. [`DatasetWriter::commit`] (staged data, the
//! quarantine) then takes the dataset's lock, checks the manifest's fence, removes the
//! files of the previous write of the same input, moves the new files into place and
//! writes the manifest; sinks go through [`super::local`] instead, which also reconciles
//! the dataset's schema and can undo the commit until it is finalized. A crash before the
//! manifest is written leaves files a retry overwrites by name; no reader ever sees half
//! a file, and no input's rows are ever in the dataset twice.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use weir_core::dataset::schema::Partition;

use super::WriteFence;
use crate::DataError;

/// Most partitions one input may write: a guard against partitioning by a unique column.
pub const MAX_PARTITIONS: usize = 1000;

/// Rows per row group: bounds the writer's memory per open file.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The manifest of one input's committed write (local and object-store datasets alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub writer: WriteFence,
    /// Paths relative to the dataset root.
    pub files: Vec<String>,
    pub rows: u64,
    /// The version of the dataset's schema the files were written with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// Object stores: claimed, its files not yet all uploaded (see [`super::object`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// Object stores: files earlier attempts may have left, to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<String>,
    /// Object stores, while `pending`: the files of the last committed write, which hold
    /// the input's rows until this write commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Vec<String>>,
    /// Object stores, while `pending`: the rows of `previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_rows: Option<u64>,
    /// The input's identity as the writer named it (a stream's range of positions that
    /// do not fit a file name, e.g. Kinesis sequence numbers): see
    /// [`super::landing::Sinks::input_identities`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

/// A data file's path in a dataset: `name` in partition folder `folder` ("" = none).
pub(crate) fn file_path(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

/// Where the manifest of input `key` lives, relative to the dataset root.
pub(crate) fn manifest_path(key: &str) -> String {
    format!("_weir/inputs/{key}.json")
}

/// One input's write, closed and ready to publish to an object store
/// ([`crate::sink::object::publish`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub key: String,
    pub fence: WriteFence,
    pub rows: u64,
    /// The schema the files hold.
    pub schema: SchemaRef,
    /// Partition folder ("" = none) → the local file holding its rows.
    pub files: Vec<(String, PathBuf)>,
    /// The local scratch directory to remove once published (or given up).
    pub scratch: PathBuf,
}

/// Writes one input's rows into a dataset; nothing is visible until [`commit`](Self::commit).
pub struct DatasetWriter {
    root: PathBuf,
    key: String,
    fence: WriteFence,
    schema: SchemaRef,
    /// The partition column's index and folder key.
    partition: Option<(usize, String)>,
    props: WriterProperties,
    tmp: PathBuf,
    /// Partition folder ("" = none) → its open writer.
    open: BTreeMap<String, ArrowWriter<File>>,
    rows: u64,
    /// Whether commits reach the disk before they count (sinks); staged files, which a
    /// re-run of their step reproduces, skip the fsyncs.
    durable: bool,
}

impl DatasetWriter {
    /// Starts a write of input `key` into the dataset at `root`.
    pub fn create(
        root: &Path,
        key: &str,
        fence: &WriteFence,
        schema: &SchemaRef,
        partition: Option<&Partition>,
        zstd_level: i32,
    ) -> Result<Self, DataError> {
        let partition = match partition {
            None => None,
            Some(p) => Some((
                schema.index_of(&p.column).map_err(|_| {
                    DataError::Config(format!(
                        "parquet sink partition_by names column {:?}, which the data does not have",
                        p.column
                    ))
                })?,
                p.folder.clone(),
            )),
        };
        let tmp = root.join("_weir").join("tmp").join(format!("{key}.{}.{}", fence.task, fence.fence));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let level = ZstdLevel::try_new(zstd_level)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        Ok(DatasetWriter {
            root: root.to_path_buf(),
            key: key.to_string(),
            fence: fence.clone(),
            schema: schema.clone(),
            partition,
            props,
            tmp,
            open: BTreeMap::new(),
            rows: 0,
            durable: true,
        })
    }

    /// Skips the fsyncs: for staged data that a re-run of its step reproduces.
    pub fn transient(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Writes these columns without dictionary encoding: for columns whose values are
    /// mostly distinct (ids, timestamps, prices) a dictionary only costs time — parquet
    /// would fill it and then fall back to plain encoding in every row group.
    pub fn without_dictionary(mut self, columns: &[String]) -> Self {
        if columns.is_empty() {
            return self;
        }
        let mut b = self.props.clone().into_builder();
        for c in columns {
            b = b.set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(c.as_str()), false);
        }
        self.props = b.build();
        self
    }

    /// Encrypts every file written (Parquet modular encryption, [`super::encryption`]).
    pub fn encrypted(
        mut self,
        props: Option<std::sync::Arc<parquet::encryption::encrypt::FileEncryptionProperties>>,
    ) -> Self {
        if let Some(p) = props {
            self.props = self.props.clone().into_builder().with_file_encryption_properties(p).build();
        }
        self
    }

    /// Adds rows (split by partition).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        let Some((col, name)) = self.partition.clone() else {
            return self.write_to(String::new(), batch);
        };
        let values = partition_values(batch.column(col))?;
        let mut distinct: Vec<&String> = values.iter().collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() == 1 {
            return self.write_to(format!("{name}={}", distinct[0]), batch);
        }
        for v in distinct {
            let mask = BooleanArray::from(values.iter().map(|x| x == v).collect::<Vec<_>>());
            let part = arrow_select::filter::filter_record_batch(batch, &mask)?;
            self.write_to(format!("{name}={v}"), &part)?;
        }
        Ok(())
    }

    fn write_to(&mut self, folder: String, batch: &RecordBatch) -> Result<(), DataError> {
        if !self.open.contains_key(&folder) {
            if self.open.len() >= MAX_PARTITIONS {
                return Err(DataError::Config(format!(
                    "more than {MAX_PARTITIONS} partitions in one input: partition by a column with fewer values"
                )));
            }
            let path = self.tmp_file(&folder);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
            }
            let file = File::create(&path).map_err(|e| DataError::io(&path, e))?;
            let w = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))?;
            self.open.insert(folder.clone(), w);
        }
        if let Some(w) = self.open.get_mut(&folder) {
            w.write(batch)?;
        }
        Ok(())
    }

    pub(crate) fn tmp_file(&self, folder: &str) -> PathBuf {
        self.tmp.join(folder).join(format!("{}.parquet", self.key))
    }

    /// Whether input `key` has a committed write in the dataset at `root`.
    pub(crate) fn committed(root: &Path, key: &str) -> bool {
        manifest(root, key).exists()
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Makes the write visible, replacing the previous write of the same input; refuses a
    /// stale fence. Returns the committed files.
    pub fn commit(mut self) -> Result<Vec<PathBuf>, DataError> {
        let mut written = Vec::new();
        for (folder, w) in std::mem::take(&mut self.open) {
            let file = w.into_inner()?;
            if self.durable {
                file.sync_all().map_err(|e| DataError::io(&self.tmp, e))?;
            }
            written.push(folder);
        }
        let result = locked(&self.root, || self.commit_locked(&written));
        let _ = fs::remove_dir_all(&self.tmp);
        result
    }

    fn commit_locked(&self, folders: &[String]) -> Result<Vec<PathBuf>, DataError> {
        let inputs = self.root.join("_weir").join("inputs");
        fs::create_dir_all(&inputs).map_err(|e| DataError::io(&inputs, e))?;
        let manifest_path = manifest(&self.root, &self.key);
        let previous = read_manifest(&manifest_path)?;
        let files: Vec<String> = folders.iter().map(|f| file_path(f, &format!("{}.parquet", self.key))).collect();
        if let Some(prev) = &previous {
            self.fence.may_replace(&prev.writer).map_err(DataError::StaleFence)?;
            for old in prev.files.iter().filter(|f| !files.contains(f)) {
                let p = self.root.join(old);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DataError::io(&p, e)),
                }
            }
        }
        let mut out = Vec::with_capacity(folders.len());
        for (folder, rel) in folders.iter().zip(&files) {
            let to = self.root.join(rel);
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
            }
            let from = self.tmp_file(folder);
            fs::rename(&from, &to).map_err(|e| DataError::io(&to, e))?;
            out.push(to);
        }
        let manifest = Manifest {
            writer: self.fence.clone(),
            files,
            rows: self.rows,
            schema_version: None,
            pending: false,
            stale: vec![],
            previous: None,
            previous_rows: None,
            input: None,
        };
        let body = serde_json::to_vec(&manifest).map_err(|e| DataError::Sink(e.to_string()))?;
        write_atomic(&manifest_path, &body, self.durable)?;
        Ok(out)
    }

    /// Closes the files without committing them: a sink commits them with the dataset's
    /// schema ([`crate::sink::local`], [`crate::sink::object`]). Durable writers fsync them.
    pub fn prepare(mut self) -> Result<Prepared, DataError> {
        let mut files = Vec::new();
        for (folder, w) in std::mem::take(&mut self.open) {
            let file = w.into_inner()?;
            if self.durable {
                file.sync_all().map_err(|e| DataError::io(&self.tmp, e))?;
            }
            let local = self.tmp_file(&folder);
            files.push((folder, local));
        }
        Ok(Prepared {
            key: self.key.clone(),
            fence: self.fence.clone(),
            rows: self.rows,
            schema: self.schema.clone(),
            files,
            scratch: self.tmp.clone(),
        })
    }

    /// Drops the write; nothing becomes visible.
    pub fn abort(self) {
        let tmp = self.tmp.clone();
        drop(self.open);
        let _ = fs::remove_dir_all(tmp);
    }
}

/// Runs `f` holding the lock of the dataset at `root` (a file lock on `_weir/lock`: one
/// committer at a time, across processes).
pub(crate) fn locked<T>(root: &Path, f: impl FnOnce() -> Result<T, DataError>) -> Result<T, DataError> {
    let meta = root.join("_weir");
    fs::create_dir_all(&meta).map_err(|e| DataError::io(&meta, e))?;
    let lock_path = meta.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DataError::io(&lock_path, e))?;
    lock.lock().map_err(|e| DataError::io(&lock_path, e))?;
    let result = f();
    let _ = lock.unlock();
    result
}

/// Writes `body` to `path` atomically (beside it, then renamed), fsynced when `durable`.
pub(crate) fn write_atomic(path: &Path, body: &[u8], durable: bool) -> Result<(), DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    std::io::Write::write_all(&mut &f, body).map_err(|e| DataError::io(&tmp, e))?;
    if durable {
        f.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
    if durable {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads an input's manifest at `path`, if there is one.
pub(crate) fn read_manifest(path: &Path) -> Result<Option<Manifest>, DataError> {
    match fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(path, e)),
    }
}

pub(crate) fn manifest(root: &Path, key: &str) -> PathBuf {
    root.join(manifest_path(key))
}

/// Each row's partition folder value: the date for dates and timestamps, else the value
/// as text with path-unsafe characters percent-encoded; null is `__null__`.
fn partition_values(col: &dyn Array) -> Result<Vec<String>, DataError> {
    let n = col.len();
    let mut out = Vec::with_capacity(n);
    match col.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let a = col.as_primitive::<TimestampMicrosecondType>();
            for i in 0..n {
                out.push(if a.is_null(i) {
                    "__null__".into()
                } else {
                    day(a.value(i).div_euclid(86_400_000_000) as i32)
                });
            }
        }
        DataType::Date32 => {
            let a = col.as_primitive::<Date32Type>();
            for i in 0..n {
                out.push(if a.is_null(i) { "__null__".into() } else { day(a.value(i)) });
            }
        }
        _ => {
            let f = ArrayFormatter::try_new(col, &FormatOptions::default())?;
            for i in 0..n {
                out.push(if col.is_null(i) { "__null__".into() } else { escape(&f.value(i).to_string()) });
            }
        }
    }
    Ok(out)
}

fn day(days: i32) -> String {
    weir_core::calendar::date(i64::from(days))
}

fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
            s.push(c);
        } else {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                s.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    match s.as_str() {
        "" => "__empty__".into(),
        "." | ".." => s.replace('.', "%2E"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_escapes() {
        assert_eq!(day(20_415), "2025-11-23");
        assert_eq!(escape("a/b"), "a%2Fb");
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(escape(""), "__empty__");
        assert_eq!(escape("Zürich"), "Zürich");
    }
}
