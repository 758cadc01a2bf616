//! XML, through `quick-xml`'s streaming reader. A record is each element named by the
//! step's `format.record` (default: the name of the root's first child). Its attributes
//! and the text of its descendants are the fields, named by their path below the record
//! (`price`, `venue.code`); a field that repeats in one record holds a JSON array of its
//! values. Malformed XML leaves the rest unreadable, so it fails the input with the
//! position named.

use std::io::BufReader;

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

use super::json::ObjectRows;
use super::{Chunk, Source, Stream};
use crate::DataError;

pub(crate) struct XmlSource {
    reader: Reader<BufReader<Stream>>,
    record: Option<String>,
    rows: ObjectRows,
    batch_rows: usize,
    buf: Vec<u8>,
    /// Element names from the root down to the current element.
    path: Vec<String>,
    /// Depth of the open record element in `path`, while inside one.
    in_record: Option<usize>,
    current: Map<String, Value>,
    text: String,
    count: u64,
    done: bool,
}

impl XmlSource {
    pub(crate) fn new(stream: Stream, record: Option<String>, batch_rows: usize) -> Self {
        let reader = Reader::from_reader(BufReader::with_capacity(1 << 20, stream));
        XmlSource {
            reader,
            record,
            rows: ObjectRows::new(batch_rows),
            batch_rows,
            buf: Vec::new(),
            path: Vec::new(),
            in_record: None,
            current: Map::new(),
            text: String::new(),
            count: 0,
            done: false,
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> DataError {
        DataError::Format(format!(
            "xml: {e} at byte {}; the {} records before it were read, the rest cannot be",
            self.reader.buffer_position(),
            self.count
        ))
    }

    /// The field name of the element at the top of `path`, relative to the record.
    fn field_name(&self, depth: usize) -> String {
        self.path[depth + 1..].join(".")
    }

    fn set(&mut self, name: String, value: String) {
        match self.current.get_mut(&name) {
            None => {
                self.current.insert(name, Value::String(value));
            }
            Some(Value::Array(a)) => a.push(Value::String(value)),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, Value::String(value)]);
            }
        }
    }

    fn is_record(&mut self, name: &str) -> bool {
        match &self.record {
            Some(r) => r == name,
            None if self.path.len() == 1 => {
                // The root's first child names the records.
                self.record = Some(name.to_string());
                true
            }
            None => false,
        }
    }

    /// An element opens; `empty` when it also closes (`<a/>`).
    fn open(&mut self, name: String, attrs: Vec<(String, String)>, empty: bool) -> Option<Map<String, Value>> {
        match self.in_record {
            None => {
                if self.is_record(&name) {
                    self.current = Map::new();
                    for (k, v) in attrs {
                        self.set(k, v);
                    }
                    if empty {
                        return Some(std::mem::take(&mut self.current));
                    }
                    self.in_record = Some(self.path.len());
                }
                if !empty {
                    self.path.push(name);
                }
                None
            }
            Some(depth) => {
                self.path.push(name);
                let field = self.field_name(depth);
                for (k, v) in attrs {
                    self.set(format!("{field}.{k}"), v);
                }
                self.text.clear();
                if empty {
                    self.path.pop();
                }
                None
            }
        }
    }

    fn close(&mut self) -> Option<Map<String, Value>> {
        let done = match self.in_record {
            Some(depth) if self.path.len() == depth + 1 => {
                self.in_record = None;
                Some(std::mem::take(&mut self.current))
            }
            Some(depth) => {
                let text = std::mem::take(&mut self.text);
                let trimmed = text.trim();
                if !trimmed.is_empty() {
                    let field = self.field_name(depth);
                    self.set(field, trimmed.to_string());
                }
                None
            }
            None => None,
        };
        self.path.pop();
        done
    }
}

impl Source for XmlSource {
    fn next_chunk(&mut self) -> Result<Option<Chunk>, DataError> {
        if self.done {
            return Ok(None);
        }
        let mut objects = Vec::new();
        while objects.len() < self.batch_rows {
            self.buf.clear();
            let event = self.reader.read_event_into(&mut self.buf);
            let finished = match event {
                Err(e) => {
                    let e = e.to_string();
                    return Err(self.error(e));
                }
                Ok(Event::Eof) => {
                    if !self.path.is_empty() {
                        return Err(self.error(format!("the document ends inside <{}>", self.path.join("><"))));
                    }
                    self.done = true;
                    break;
                }
                Ok(Event::Start(e)) => {
                    let (name, attrs) = element(&e).map_err(|m| self.error(m))?;
                    self.open(name, attrs, false)
                }
                Ok(Event::Empty(e)) => {
                    let (name, attrs) = element(&e).map_err(|m| self.error(m))?;
                    self.open(name, attrs, true)
                }
                Ok(Event::End(_)) => self.close(),
                Ok(Event::Text(t)) => {
                    if self.in_record.is_some() {
                        self.text.push_str(&t.xml10_content());
                    }
                    None
                }
                Ok(Event::CData(c)) => {
                    if self.in_record.is_some() {
                        self.text.push_str(&c.xml10_content());
                    }
                    None
                }
                Ok(Event::GeneralRef(r)) => {
                    if self.in_record.is_some() {
                        let resolved = match r.resolve_char_ref() {
                            Ok(Some(c)) => Ok(c.to_string()),
                            Ok(None) => {
                                let name = r.xml10_content();
                                quick_xml::escape::resolve_predefined_entity(&name)
                                    .map(str::to_string)
                                    .ok_or_else(|| format!("unknown entity &{name};"))
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        match resolved {
                            Ok(text) => self.text.push_str(&text),
                            Err(m) => return Err(self.error(m)),
                        }
                    }
                    None
                }
                Ok(_) => None,
            };
            if let Some(obj) = finished {
                self.count += 1;
                objects.push((self.count, obj));
            }
        }
        self.rows.emit(objects, vec![])
    }

    fn late_columns(&self) -> Vec<String> {
        self.rows.late.iter().cloned().collect()
    }
}

/// An element's local name and attributes (by local name, unescaped).
fn element(e: &quick_xml::events::BytesStart) -> Result<(String, Vec<(String, String)>), String> {
    let name = e.local_name().as_ref().to_string();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|x| x.to_string())?;
        let key = a.key.local_name().as_ref().to_string();
        if key == "xmlns" || a.key.as_ref().starts_with("xmlns:") {
            continue;
        }
        let value = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|x| x.to_string())?.into_owned();
        attrs.push((key, value));
    }
    Ok((name, attrs))
}
