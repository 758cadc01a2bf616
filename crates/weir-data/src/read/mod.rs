//! Streaming readers: each [`Source`] yields an input in [`Chunk`]s of at most
//! `batch_rows` rows, so memory is bounded by the chunk, not the file.
//!
//! One file per format. Text formats build text columns through [`TextColumns`] and leave
//! typing to [`crate::typing`]; a row that cannot be read at all becomes a [`Reject`] with
//! rule `parse`, and reading goes on.

mod csv;
mod json;
mod parquet;
mod xml;

use std::fs::File;
use std::io::{BufReader, Chain, Cursor, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use weir_core::dataset::{Compression, FormatSpec};

use crate::detect::{self, Format};
use crate::{DataError, Reject};

/// Rows per chunk unless the step says otherwise.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// A piece of an input.
#[derive(Debug)]
pub struct Chunk {
    /// The rows that could be read, as text columns (or the file's own types).
    pub batch: RecordBatch,
    /// The 1-based record number of each row of `batch`.
    pub rows: Vec<u64>,
    /// Rows that could not be read.
    pub rejects: Vec<Reject>,
}

/// A streaming reader of one input.
pub trait Source: Send {
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError>;
    /// Whether the column names were generated (headerless CSV), so a declared schema
    /// binds by position.
    fn positional(&self) -> bool {
        false
    }
    /// Input columns seen after the first chunk that it did not have (ignored).
    fn late_columns(&self) -> Vec<String> {
        vec![]
    }
}

/// An empty input: no rows, no columns, whatever its format.
struct Empty;

impl Source for Empty {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError> {
        Ok(None)
    }
}

/// An opened input: its source, what it was detected as, and a counter of bytes read.
pub struct Opened {
    pub source: Box<dyn Source>,
    pub format: Format,
    pub compression: Compression,
    pub bytes_read: Arc<AtomicU64>,
}

impl Opened {
    /// The format's name with its compression, e.g. "csv.gz".
    pub fn format_name(&self) -> String {
        match self.compression {
            Compression::None => self.format.name().to_string(),
            Compression::Gzip => format!("{}.gz", self.format.name()),
            Compression::Zstd => format!("{}.zst", self.format.name()),
        }
    }
}

/// Counts the bytes read from the file (compressed), for throughput figures.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The decompressed stream with its sniffed head put back in front.
pub(crate) type Stream = Chain<Cursor<Vec<u8>>, Box<dyn Read + Send>>;

/// Opens `path`, detects what it is, and returns a streaming source for it.
pub fn open(path: &Path, spec: Option<&FormatSpec>, batch_rows: usize) -> Result<Opened, DataError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let io = |e| DataError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut file, &mut magic).map_err(io)?;
    let compression = detect::compression(&name, &magic[..got], spec.and_then(|s| s.compression));
    let bytes_read = Arc::new(AtomicU64::new(0));

    // Parquet needs random access: it is read from the file itself.
    if compression == Compression::None && &magic[..got] == b"PAR1" && spec.and_then(|s| s.kind).is_none() {
        let source = parquet::ParquetSource::open(path, batch_rows, &bytes_read)?;
        return Ok(Opened { source: Box::new(source), format: Format::Parquet, compression, bytes_read });
    }

    let file = File::open(path).map_err(io)?;
    let counted = Counted { inner: file, count: bytes_read.clone() };
    let mut stream: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, counted)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, counted))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(counted).map_err(io)?),
    };
    let mut head = vec![0u8; detect::SNIFF_BYTES];
    let n = read_up_to(&mut stream, &mut head)
        .map_err(|e| DataError::Format(format!("{name}: cannot decompress as {compression:?}: {e}")))?;
    head.truncate(n);
    let format = detect::format(&name, &head, spec)?;
    if n == 0 {
        return Ok(Opened { source: Box::new(Empty), format, compression, bytes_read });
    }
    let nulls: Vec<String> = spec.and_then(|s| s.null_values.clone()).unwrap_or_else(|| vec![String::new()]);
    let stream: Stream = Cursor::new(head).chain(stream);
    let source: Box<dyn Source> = match &format {
        Format::Csv(d) => Box::new(csv::CsvSource::new(stream, *d, batch_rows, nulls)),
        Format::Ndjson => Box::new(json::NdjsonSource::new(stream, batch_rows)),
        Format::Json => Box::new(json::JsonArraySource::new(stream, batch_rows)),
        Format::Xml { record } => Box::new(xml::XmlSource::new(stream, record.clone(), batch_rows)),
        Format::Parquet => {
            if compression != Compression::None {
                return Err(DataError::Format(format!(
                    "{name}: Parquet inside {compression:?} is not read; Parquet compresses its own pages"
                )));
            }
            Box::new(parquet::ParquetSource::open(path, batch_rows, &bytes_read)?)
        }
    };
    Ok(Opened { source, format, compression, bytes_read })
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Builds text columns row by row, for the text formats.
pub(crate) struct TextColumns {
    names: Vec<String>,
    builders: Vec<StringBuilder>,
    rows: Vec<u64>,
}

impl TextColumns {
    pub(crate) fn new(names: Vec<String>, capacity: usize) -> Self {
        let builders = names.iter().map(|_| StringBuilder::with_capacity(capacity, capacity * 8)).collect();
        TextColumns { names, builders, rows: Vec::with_capacity(capacity) }
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Adds one row; `values` yields one entry per column, in order.
    pub(crate) fn push<'a>(&mut self, row: u64, values: impl Iterator<Item = Option<&'a str>>) {
        for (b, v) in self.builders.iter_mut().zip(values) {
            b.append_option(v);
        }
        self.rows.push(row);
    }

    /// The rows so far as a chunk; the builder is left empty, ready for the next.
    pub(crate) fn finish(&mut self, rejects: Vec<Reject>) -> Result<Chunk, DataError> {
        let fields: Vec<Field> = self.names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            arrays,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(self.rows.len())),
        )?;
        Ok(Chunk { batch, rows: std::mem::take(&mut self.rows), rejects })
    }
}

/// Column names made unique and non-empty: blanks become `column_N`, repeats get `_2`, `_3`.
pub(crate) fn unique_names(raw: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, n) in raw.enumerate() {
        let base = if n.trim().is_empty() { format!("column_{}", i + 1) } else { n.trim().to_string() };
        let mut name = base.clone();
        let mut k = 2;
        while out.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        out.push(name);
    }
    out
}

/// A reject for a row that could not be read.
pub(crate) fn parse_reject(row: u64, reason: impl Into<String>, record: impl Into<String>) -> Reject {
    let record = weir_core::text::shorten(record.into(), 4096);
    Reject { row, rule: "parse".into(), reason: reason.into(), record }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_made_unique() {
        let n = super::unique_names(["a", "", "a", " b "].into_iter().map(String::from));
        assert_eq!(n, vec!["a", "column_2", "a_2", "b"]);
    }
}
