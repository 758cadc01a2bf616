//! The records of one page: selected with an RFC 9535 JSONPath from a JSON page (each
//! selected value a record, an array's items each one), a line each of an NDJSON page.
//! A record that is not an object becomes `{"value": …}`, so every record is a row of
//! columns for the converter. (A CSV page's rows are copied by [`crate::output`].)
//!
//! A path of member names from the root — `$`, `$.data`, `$['a'].b`, ending in `[*]` or
//! not — streams: the page is parsed as it is read, each record handed on as it ends,
//! and only the rest of the document (its `next`, `has_more`, `total`…) is kept for the
//! paginator, so a page of any size passes in bounded memory. Any other path (filters,
//! recursive descent, indices) needs the page whole, up to `max_page_bytes`.

use std::fmt;
use std::io::BufRead;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::error::CollectError;

/// Where a JSON page's records are.
#[derive(Debug, Clone)]
pub enum Selector {
    /// Member names from the root; `each`: the path ends in a wildcard.
    Members { names: Vec<String>, each: bool },
    /// Any other path, evaluated on the whole page.
    Query(JsonPath),
}

impl Selector {
    pub fn parse(path: &str) -> Result<Selector, CollectError> {
        let query = JsonPath::parse(path).map_err(|e| CollectError::Config(format!("records {path:?}: {e}")))?;
        Ok(match members(path) {
            Some((names, each)) => Selector::Members { names, each },
            None => Selector::Query(query),
        })
    }

    /// Whether a page streams through (else it is read whole).
    pub fn streams(&self) -> bool {
        matches!(self, Selector::Members { .. })
    }
}

/// `$` then `.name`, `['name']` or `["name"]` segments, maybe a final `[*]` or `.*`.
fn members(path: &str) -> Option<(Vec<String>, bool)> {
    let mut rest = path.trim().strip_prefix('$')?;
    let mut names = Vec::new();
    loop {
        if rest.is_empty() {
            return Some((names, false));
        }
        if rest == "[*]" || rest == ".*" {
            return Some((names, true));
        }
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(|c: char| !(c.is_alphanumeric() || c == '_' || !c.is_ascii())).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            names.push(name.to_string());
            rest = &r[end..];
        } else if let Some(q) =
            rest.strip_prefix("['").map(|r| (r, "']")).or(rest.strip_prefix("[\"").map(|r| (r, "\"]")))
        {
            let (r, close) = q;
            let end = r.find(close)?;
            let name = &r[..end];
            if name.contains(['\\', '\'', '"']) {
                return None;
            }
            names.push(name.to_string());
            rest = &r[end + 2..];
        } else {
            return None;
        }
    }
}

/// A JSON page read whole: the document and its records.
pub fn json(body: &[u8], path: &JsonPath, url: &str) -> Result<(Value, Vec<Value>), CollectError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| not_json(url, &e))?;
    let mut out = Vec::new();
    for v in path.query(&doc).all() {
        match v {
            Value::Array(items) => out.extend(items.iter().map(row)),
            Value::Null => {}
            other => out.push(row(other)),
        }
    }
    Ok((doc, out))
}

/// A JSON page streamed: each record to `emit` as it ends; returns the document without
/// the records (for the paginator) and how many there were.
pub fn json_stream(
    body: impl std::io::Read,
    names: &[String],
    each: bool,
    url: &str,
    emit: &mut dyn FnMut(&Value) -> Result<(), CollectError>,
) -> Result<(Value, u64), CollectError> {
    let mut de = serde_json::Deserializer::from_reader(body);
    let mut sink = Sink { emit, failed: None, n: 0 };
    let walked = Walk { names, each, sink: &mut sink }.deserialize(&mut de).and_then(|doc| de.end().map(|()| doc));
    match (walked, sink.failed) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(not_json(url, &e)),
        (Ok(doc), None) => Ok((doc, sink.n)),
    }
}

fn not_json(url: &str, e: &serde_json::Error) -> CollectError {
    CollectError::BadPage(format!("{url}: the page is not JSON ({e})"))
}

/// Where streamed records go; `failed` keeps the sink's own error (the parser's is a
/// placeholder then).
struct Sink<'a> {
    emit: &'a mut dyn FnMut(&Value) -> Result<(), CollectError>,
    failed: Option<CollectError>,
    n: u64,
}

impl Sink<'_> {
    fn record<E: de::Error>(&mut self, v: &Value) -> Result<(), E> {
        self.n += 1;
        let r = match v {
            Value::Object(_) => (self.emit)(v),
            other => (self.emit)(&row(other)),
        };
        r.map_err(|e| {
            self.failed = Some(e);
            E::custom("stopped")
        })
    }

    /// A value a wildcard selected: an array's items each, null nothing, else itself.
    fn selected<E: de::Error>(&mut self, v: &Value) -> Result<(), E> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| self.record(i)),
            Value::Null => Ok(()),
            other => self.record(other),
        }
    }
}

/// The document at one depth of the path: above the records, members are kept (the
/// one on the path walked into); at the records, they are handed on, not kept.
struct Walk<'s, 'a> {
    names: &'s [String],
    each: bool,
    sink: &'s mut Sink<'a>,
}

impl Walk<'_, '_> {
    fn scalar<E: de::Error>(self, v: Value) -> Result<Value, E> {
        if !self.names.is_empty() {
            return Ok(v);
        }
        if !self.each && !v.is_null() {
            self.sink.record(&v)?;
        }
        Ok(Value::Null)
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.scalar(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.scalar(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.scalar(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.scalar(v.into())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.scalar(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.scalar(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if !self.names.is_empty() {
            // A member name on an array selects nothing: the array is kept as it is.
            return Value::deserialize(de::value::SeqAccessDeserializer::new(seq));
        }
        while let Some(item) = seq.next_element::<Value>()? {
            if self.each {
                self.sink.selected(&item)?;
            } else {
                self.sink.record(&item)?;
            }
        }
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        match self.names.split_first() {
            None if !self.each => {
                let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                self.sink.record(&v)?;
                Ok(Value::Null)
            }
            None => {
                while let Some((_, v)) = map.next_entry::<de::IgnoredAny, Value>()? {
                    self.sink.selected(&v)?;
                }
                Ok(Value::Null)
            }
            Some((first, rest)) => {
                let mut kept = Map::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v = if &k == first {
                        map.next_value_seed(Walk { names: rest, each: self.each, sink: &mut *self.sink })?
                    } else {
                        map.next_value::<Value>()?
                    };
                    kept.insert(k, v);
                }
                Ok(Value::Object(kept))
            }
        }
    }
}

/// An NDJSON page: one record a non-empty line, each to `emit`; returns how many.
pub fn ndjson(
    mut body: impl BufRead,
    url: &str,
    emit: &mut dyn FnMut(&Value) -> Result<(), CollectError>,
) -> Result<u64, CollectError> {
    let mut line = Vec::new();
    let (mut n, mut i) = (0u64, 0u64);
    loop {
        line.clear();
        let read = body
            .read_until(b'\n', &mut line)
            .map_err(|e| CollectError::Staging(format!("reading the page of {url}: {e}")))?;
        if read == 0 {
            return Ok(n);
        }
        i += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(&line)
            .map_err(|e| CollectError::BadPage(format!("{url}: line {i} of the page is not JSON: {e}")))?;
        emit(&row(&v))?;
        n += 1;
    }
}

fn row(v: &Value) -> Value {
    match v {
        Value::Object(_) => v.clone(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other.clone());
            Value::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn streamed(body: &[u8], path: &str) -> Result<(Value, Vec<Value>), CollectError> {
        let Selector::Members { names, each } = Selector::parse(path)? else { panic!("{path} does not stream") };
        let mut out = Vec::new();
        let (doc, n) = json_stream(body, &names, each, "u", &mut |v| {
            out.push(v.clone());
            Ok(())
        })?;
        assert_eq!(n, out.len() as u64);
        Ok((doc, out))
    }

    #[test]
    fn records_are_selected_and_bad_pages_named() {
        let p = |s: &str| JsonPath::parse(s).expect("path");
        let body = br#"{"data": [{"id": 1}, {"id": 2}], "meta": {"next": "x"}}"#;
        let (_, r) = json(body, &p("$.data[*]"), "u").expect("records");
        assert_eq!(r, vec![json!({"id": 1}), json!({"id": 2})]);
        let (_, r) = json(body, &p("$.data"), "u").expect("an array's items");
        assert_eq!(r.len(), 2);
        let (_, r) = json(b"[1, 2]", &p("$"), "u").expect("scalars");
        assert_eq!(r, vec![json!({"value": 1}), json!({"value": 2})]);
        let (_, r) = json(br#"{"id": 9}"#, &p("$"), "u").expect("one object");
        assert_eq!(r, vec![json!({"id": 9})]);
        let e = json(b"{\"data\": [1,", &p("$"), "https://api.test/p?page=3").expect_err("truncated");
        assert!(e.to_string().contains("https://api.test/p?page=3") && e.to_string().contains("not JSON"), "{e}");
        let mut n = 0;
        let count = &mut |_: &Value| {
            n += 1;
            Ok(())
        };
        assert_eq!(ndjson(&b"{\"a\":1}\n\n{\"a\":2}\r\n"[..], "u", count).expect("lines"), 2);
        let e = ndjson(&b"{\"a\":1}\n{oops\n"[..], "u", &mut |_| Ok(())).expect_err("bad line");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn only_member_paths_stream() {
        for s in ["$", "$.data", "$.data[*]", "$['a b'].c.*", "$[\"x\"][*]", "$.é_1"] {
            assert!(Selector::parse(s).expect("path").streams(), "{s}");
        }
        for s in ["$..id", "$.data[0]", "$.data[?@.id > 1]", "$.a[*].b", "$['a\\'b']", "$[0]"] {
            assert!(!Selector::parse(s).expect("path").streams(), "{s}");
        }
        assert!(Selector::parse("$.data[?").is_err());
        assert!(Selector::parse("$.1a").is_err());
    }

    #[test]
    fn a_streamed_page_selects_what_the_whole_page_does() {
        let pages: [&[u8]; 6] = [
            br#"{"data": [{"id": 1}, 2, null, [3, 4]], "meta": {"next": "n", "more": true}, "data2": 1}"#,
            br#"{"meta": {"next": null}, "data": {"id": 7, "v": [1]}}"#,
            br#"[{"id": 1}, {"id": 2}]"#,
            br#"{"data": null}"#,
            br#"{"other": [1], "data": "text"}"#,
            br#"{"data": {"a": [1, 2], "b": {"id": 3}, "c": null}}"#,
        ];
        for page in pages {
            for path in ["$", "$.data", "$.data[*]", "$.data.*", "$['data']", "$.meta.next", "$.missing"] {
                let (whole_doc, whole) = json(page, &JsonPath::parse(path).expect("path"), "u").expect("whole");
                let (doc, got) = streamed(page, path).expect("streamed");
                assert_eq!(got, whole, "{path} on {}", String::from_utf8_lossy(page));
                // What is kept is the document less its records: the paginator reads it.
                if path == "$.data" || path == "$.data[*]" {
                    let mut expect = whole_doc.clone();
                    if let Some(o) = expect.as_object_mut().filter(|o| o.contains_key("data")) {
                        o.insert("data".into(), Value::Null);
                    }
                    assert_eq!(doc, expect, "{path}");
                }
            }
        }
    }

    #[test]
    fn streaming_names_a_bad_page_and_stops_on_a_sink_error() {
        let e = streamed(b"{\"data\": [{\"id\": 1}, {\"id\":", "$.data[*]").expect_err("cut");
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e = streamed(b"{\"data\": []} trailing", "$.data[*]").expect_err("trailing");
        assert!(e.to_string().contains("trailing characters"), "{e}");
        let Selector::Members { names, each } = Selector::parse("$.data").expect("path") else { panic!() };
        let e = json_stream(&b"{\"data\": [1, 2, 3]}"[..], &names, each, "u", &mut |_| {
            Err(CollectError::Staging("disk full".into()))
        })
        .expect_err("sink fails");
        assert!(e.to_string().contains("disk full"), "{e}");
    }
}
