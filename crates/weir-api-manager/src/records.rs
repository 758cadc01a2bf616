//! The records of one page: selected with an RFC 9535 JSONPath from a JSON page (each
//! selected value a record, an array's items each one), a line each of an NDJSON page,
//! the rows of a CSV page. A record that is not an object becomes `{"value": …}`, so every
//! record is a row of columns for the converter.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::error::CollectError;

/// A JSON page: the document and its records.
pub fn json(body: &[u8], path: &JsonPath, url: &str) -> Result<(Value, Vec<Value>), CollectError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        CollectError::BadPage(format!("{url}: the page is not JSON ({e}; at line {}, column {})", e.line(), e.column()))
    })?;
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

/// An NDJSON page: one record a non-empty line.
pub fn ndjson(body: &[u8], url: &str) -> Result<Vec<Value>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| CollectError::BadPage(format!("{url}: line {} of the page is not JSON: {e}", i + 1)))?;
        out.push(row(&v));
    }
    Ok(out)
}

/// The number of rows of a CSV page (its header aside).
pub fn csv_rows(body: &[u8], url: &str) -> Result<u64, CollectError> {
    let mut r = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(body);
    let mut n = 0;
    let mut rec = csv::ByteRecord::new();
    loop {
        match r.read_byte_record(&mut rec) {
            Ok(true) => n += 1,
            Ok(false) => return Ok(n),
            Err(e) => return Err(CollectError::BadPage(format!("{url}: the page is not CSV: {e}"))),
        }
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
        assert_eq!(ndjson(b"{\"a\":1}\n\n{\"a\":2}\r\n", "u").expect("lines").len(), 2);
        assert!(ndjson(b"{\"a\":1}\n{oops\n", "u").expect_err("bad line").to_string().contains("line 2"));
        assert_eq!(csv_rows(b"id,v\n1,a\n2,b\n", "u").expect("rows"), 2);
    }
}
