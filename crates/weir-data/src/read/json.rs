//! NDJSON (one object per line) and JSON (one array of objects, or one object), through
//! `serde_json`. Each object is a row; its keys are the columns (those of the first chunk,
//! in the order first seen); scalars become text for [`crate::typing`], nested values
//! become JSON text. In NDJSON a line that is not a JSON object is rejected and reading
//! goes on; in a JSON array a syntax error leaves the rest unreadable, so it fails the
//! input with the position named.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{parse_reject, Chunk, Source, Stream, TextColumns};
use crate::{DataError, Reject};

/// Turns objects into text columns; the columns are fixed by the first chunk.
pub(crate) struct ObjectRows {
    columns: Option<TextColumns>,
    pub(crate) late: BTreeSet<String>,
    capacity: usize,
}

impl ObjectRows {
    pub(crate) fn new(capacity: usize) -> Self {
        ObjectRows { columns: None, late: BTreeSet::new(), capacity }
    }

    /// The chunk of what a read produced, or `None` at the end (a reader that produced
    /// nothing still gives one empty chunk first, so its columns are known).
    pub(crate) fn emit(
        &mut self,
        objects: Vec<(u64, Map<String, Value>)>,
        rejects: Vec<Reject>,
    ) -> Result<Option<Chunk>, DataError> {
        if objects.is_empty() && rejects.is_empty() && self.columns.is_some() {
            return Ok(None);
        }
        self.chunk(objects, rejects).map(Some)
    }

    /// Makes a chunk of `objects` (row number, object).
    fn chunk(&mut self, objects: Vec<(u64, Map<String, Value>)>, rejects: Vec<Reject>) -> Result<Chunk, DataError> {
        let cols = self.columns.get_or_insert_with(|| {
            let mut names: Vec<String> = Vec::new();
            for (_, o) in &objects {
                for k in o.keys() {
                    if !names.contains(k) {
                        names.push(k.clone());
                    }
                }
            }
            TextColumns::new(names, self.capacity)
        });
        let mut texts: Vec<Option<String>> = Vec::with_capacity(cols.names().len());
        for (row, o) in &objects {
            texts.clear();
            texts.extend(cols.names().iter().map(|n| o.get(n).and_then(text)));
            for k in o.keys() {
                if !cols.names().contains(k) && self.late.len() < 1000 {
                    self.late.insert(k.clone());
                }
            }
            cols.push(*row, texts.iter().map(|t| t.as_deref()));
        }
        cols.finish(rejects)
    }
}

/// A JSON value as the text a column holds.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

pub(crate) struct NdjsonSource {
    lines: BufReader<Stream>,
    rows: ObjectRows,
    batch_rows: usize,
    line: Vec<u8>,
    record: u64,
    done: bool,
}

impl NdjsonSource {
    pub(crate) fn new(stream: Stream, batch_rows: usize) -> Self {
        NdjsonSource {
            lines: BufReader::with_capacity(1 << 20, stream),
            rows: ObjectRows::new(batch_rows),
            batch_rows,
            line: Vec::new(),
            record: 0,
            done: false,
        }
    }
}

impl Source for NdjsonSource {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError> {
        if self.done {
            return Ok(None);
        }
        let mut objects = Vec::new();
        let mut rejects = Vec::new();
        while objects.len() < self.batch_rows {
            self.line.clear();
            let n = self
                .lines
                .read_until(b'\n', &mut self.line)
                .map_err(|e| DataError::Io { path: "ndjson input".into(), source: e })?;
            if n == 0 {
                self.done = true;
                break;
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.record += 1;
            match serde_json::from_slice::<Value>(&self.line) {
                Ok(Value::Object(o)) => objects.push((self.record, o)),
                Ok(other) => rejects.push(parse_reject(
                    self.record,
                    format!("line is JSON {} where a JSON object was expected", kind_of(&other)),
                    other.to_string(),
                )),
                Err(e) => rejects.push(parse_reject(
                    self.record,
                    format!("line is not JSON: {e}"),
                    String::from_utf8_lossy(&self.line).trim_end().to_string(),
                )),
            }
        }
        self.rows.emit(objects, rejects)
    }

    fn late_columns(&self) -> Vec<String> {
        self.rows.late.iter().cloned().collect()
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the parsing thread sends: an element, or why the document cannot be read on.
type Item = Result<Value, String>;

pub(crate) struct JsonArraySource {
    elements: Receiver<Item>,
    rows: ObjectRows,
    batch_rows: usize,
    record: u64,
    done: bool,
}

impl JsonArraySource {
    /// Parses on a thread of its own, handing elements over a channel of `batch_rows`
    /// slots: the array streams in bounded memory instead of being loaded whole.
    pub(crate) fn new(stream: Stream, batch_rows: usize) -> Self {
        let (tx, rx) = sync_channel(batch_rows);
        std::thread::spawn(move || {
            let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, stream));
            let result = de.deserialize_any(Elements(&tx)).and_then(|()| de.end());
            if let Err(e) = result {
                let _ = tx.send(Err(e.to_string()));
            }
        });
        JsonArraySource { elements: rx, rows: ObjectRows::new(batch_rows), batch_rows, record: 0, done: false }
    }
}

struct Elements<'a>(&'a SyncSender<Item>);

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of objects, or one object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            if self.0.send(Ok(v)).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        let _ = self.0.send(Ok(v));
        Ok(())
    }
}

impl Source for JsonArraySource {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError> {
        if self.done {
            return Ok(None);
        }
        let mut objects = Vec::new();
        let mut rejects = Vec::new();
        while objects.len() < self.batch_rows {
            match self.elements.recv() {
                Err(_) => {
                    self.done = true;
                    break;
                }
                Ok(Err(e)) => {
                    return Err(DataError::Format(format!(
                        "json: {e}; the {} elements before it were read, the rest cannot be",
                        self.record
                    )))
                }
                Ok(Ok(v)) => {
                    self.record += 1;
                    match v {
                        Value::Object(o) => objects.push((self.record, o)),
                        other => rejects.push(parse_reject(
                            self.record,
                            format!("element is JSON {} where a JSON object was expected", kind_of(&other)),
                            other.to_string(),
                        )),
                    }
                }
            }
        }
        self.rows.emit(objects, rejects)
    }

    fn late_columns(&self) -> Vec<String> {
        self.rows.late.iter().cloned().collect()
    }
}
