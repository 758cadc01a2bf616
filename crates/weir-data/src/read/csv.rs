//! CSV and TSV, through the `csv` crate (quoting, embedded newlines, CRLF). A row with
//! more or fewer fields than the header, or with bytes that are not UTF-8, is rejected
//! with its record number; the rest of the file reads on.

use csv::{ByteRecord, StringRecord};

use super::{parse_reject, unique_names, Chunk, Source, Stream, TextColumns};
use crate::detect::CsvDialect;
use crate::{DataError, Reject};

pub(crate) struct CsvSource {
    reader: csv::Reader<Stream>,
    dialect: CsvDialect,
    batch_rows: usize,
    nulls: Vec<String>,
    /// The common case (only the empty string reads as null), checked without compares.
    empty_is_null_only: bool,
    columns: Option<TextColumns>,
    /// A first data row read while naming the columns of a headerless file.
    pending: Option<ByteRecord>,
    record: u64,
    done: bool,
    /// Whether a chunk was given out: a header-only file still yields one empty chunk,
    /// so its columns are known.
    emitted: bool,
}

impl CsvSource {
    pub(crate) fn new(stream: Stream, dialect: CsvDialect, batch_rows: usize, nulls: Vec<String>) -> Self {
        let reader = csv::ReaderBuilder::new()
            .delimiter(dialect.delimiter)
            .quote(dialect.quote)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(stream);
        let empty_is_null_only = nulls.len() == 1 && nulls[0].is_empty();
        CsvSource {
            reader,
            dialect,
            batch_rows,
            nulls,
            empty_is_null_only,
            columns: None,
            pending: None,
            record: 0,
            done: false,
            emitted: false,
        }
    }

    fn read(&mut self, rec: &mut ByteRecord) -> Result<bool, DataError> {
        if let Some(p) = self.pending.take() {
            *rec = p;
            return Ok(true);
        }
        self.reader.read_byte_record(rec).map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(e) => DataError::Io { path: "csv input".into(), source: e },
            other => DataError::Format(format!("csv: {other:?}")),
        })
    }

    /// Names the columns from the header, or `column_N` from the first row's width.
    fn start(&mut self) -> Result<bool, DataError> {
        let mut first = ByteRecord::new();
        if !self.read(&mut first)? {
            return Ok(false);
        }
        let names = if self.dialect.header {
            unique_names(first.iter().map(|f| String::from_utf8_lossy(f).trim_start_matches('\u{feff}').to_string()))
        } else {
            let n = first.len();
            self.pending = Some(first);
            (1..=n).map(|i| format!("column_{i}")).collect()
        };
        self.columns = Some(TextColumns::new(names, self.batch_rows));
        Ok(true)
    }
}

impl Source for CsvSource {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError> {
        if self.done {
            return Ok(None);
        }
        if self.columns.is_none() && !self.start()? {
            self.done = true;
            return Ok(None);
        }
        let mut rec = ByteRecord::new();
        let mut rejects: Vec<Reject> = Vec::new();
        let mut read_any = false;
        loop {
            let full = self.columns.as_ref().is_some_and(|c| c.len() >= self.batch_rows);
            if full || !self.read(&mut rec)? {
                if !full {
                    self.done = true;
                }
                break;
            }
            read_any = true;
            self.record += 1;
            let row = self.record;
            let Some(cols) = self.columns.as_mut() else { break };
            let width = cols.names().len();
            if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) && width > 1 {
                // A blank line: not a record.
                self.record -= 1;
                continue;
            }
            let srec = match StringRecord::from_byte_record(std::mem::take(&mut rec)) {
                Ok(s) => s,
                Err(e) => {
                    let raw = e.into_byte_record();
                    rejects.push(parse_reject(
                        row,
                        "the row is not valid UTF-8",
                        raw_line(&raw, self.dialect.delimiter),
                    ));
                    continue;
                }
            };
            if srec.len() != width {
                rejects.push(parse_reject(
                    row,
                    format!("the row has {} fields, the file has {width} columns", srec.len()),
                    raw_line_str(&srec, self.dialect.delimiter),
                ));
                rec = srec.into_byte_record();
                continue;
            }
            let nulls = &self.nulls;
            if self.empty_is_null_only {
                cols.push(row, srec.iter().map(|f| (!f.is_empty()).then_some(f)));
            } else {
                cols.push(row, srec.iter().map(|f| if nulls.iter().any(|n| n == f) { None } else { Some(f) }));
            }
            rec = srec.into_byte_record();
        }
        let Some(cols) = self.columns.as_mut() else { return Ok(None) };
        if !read_any && cols.len() == 0 && rejects.is_empty() && self.emitted {
            return Ok(None);
        }
        self.emitted = true;
        cols.finish(rejects).map(Some)
    }

    fn positional(&self) -> bool {
        !self.dialect.header
    }
}

fn raw_line(rec: &ByteRecord, delimiter: u8) -> String {
    let parts: Vec<String> = rec.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    parts.join(&(delimiter as char).to_string())
}

fn raw_line_str(rec: &StringRecord, delimiter: u8) -> String {
    rec.iter().collect::<Vec<_>>().join(&(delimiter as char).to_string())
}
