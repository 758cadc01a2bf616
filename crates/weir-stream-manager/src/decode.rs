//! How a message becomes one record of a flush, in the step's format: a JSON object or
//! one CSV line goes as it came; an Avro datum is decoded with the step's schema into a
//! JSON object. A message that does not decode goes to the step's dead-letter destination
//! with the reason, with its source coordinates (see [`crate::run`]); without one, a JSON
//! or CSV message goes into the flush, where the converter quarantines it, and an Avro
//! one goes there as a line naming the reason and holding its bytes (base64), quarantined
//! in the same way.

use std::borrow::Cow;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use base64::Engine;
use serde::de::IgnoredAny;
use weir_core::stream::MessageFormat;
use weir_worker::StepError;

/// The step's format, ready to decode.
pub enum Decoder {
    Json,
    Csv { columns: usize },
    Avro { schema: Box<Schema>, confluent: bool },
}

impl Decoder {
    /// Reads an Avro schema from its file; a missing or bad file fails the step, naming it.
    pub fn new(format: &MessageFormat) -> Result<Decoder, StepError> {
        Ok(match format {
            MessageFormat::Json => Decoder::Json,
            MessageFormat::Csv { columns } => Decoder::Csv { columns: columns.len() },
            MessageFormat::Avro { schema_file, confluent } => {
                let bad =
                    |e: String| StepError::permanent("bad_config", format!("format.schema_file {schema_file}: {e}"));
                let text = std::fs::read_to_string(schema_file).map_err(|e| bad(e.to_string()))?;
                let schema = Schema::parse_str(&text).map_err(|e| bad(e.to_string()))?;
                if !matches!(schema, Schema::Record(_)) {
                    return Err(bad("the schema must be a record (each message one row)".into()));
                }
                Decoder::Avro { schema: Box::new(schema), confluent: *confluent }
            }
        })
    }

    /// Whether every message must be decoded to go into a flush (not only checked).
    pub fn transforms(&self) -> bool {
        matches!(self, Decoder::Avro { .. })
    }

    /// The record as it goes into the flush, or why the message does not decode.
    pub fn decode<'a>(&self, payload: &'a [u8]) -> Result<Cow<'a, [u8]>, String> {
        match self {
            Decoder::Json => {
                match payload.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') => {}
                    Some(_) => return Err("not a JSON object".into()),
                    None => return Err("empty message".into()),
                }
                serde_json::from_slice::<IgnoredAny>(payload).map_err(|e| format!("not JSON: {e}"))?;
                Ok(Cow::Borrowed(payload))
            }
            Decoder::Csv { columns } => {
                let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(payload);
                let mut records = r.records();
                let first = records.next().ok_or("empty message")?.map_err(|e| format!("not CSV: {e}"))?;
                if records.next().is_some() {
                    return Err("more than one CSV line in one message".into());
                }
                if first.len() != *columns {
                    return Err(format!("{} fields, the columns are {columns}", first.len()));
                }
                Ok(Cow::Borrowed(payload))
            }
            Decoder::Avro { schema, confluent } => {
                let mut body = payload;
                if *confluent {
                    match payload {
                        [0, _, _, _, _, rest @ ..] => body = rest,
                        _ => return Err("no Confluent header (a zero byte, then a 4-byte schema id)".into()),
                    }
                }
                let value = GenericDatumReader::builder(schema)
                    .build()
                    .and_then(|r| r.read_value(&mut body))
                    .map_err(|e| format!("not Avro of the schema: {e}"))?;
                if !body.is_empty() {
                    return Err(format!("not Avro of the schema: {} bytes after the record", body.len()));
                }
                let json = serde_json::Value::try_from(value).map_err(|e| format!("Avro value as JSON: {e}"))?;
                Ok(Cow::Owned(json.to_string().into_bytes()))
            }
        }
    }

    /// The line a message that does not decode goes into the flush as, without a
    /// dead-letter destination (the converter quarantines it with this text).
    pub fn undecodable(&self, payload: &[u8], reason: &str) -> Vec<u8> {
        match self {
            Decoder::Avro { .. } => format!(
                "undecodable Avro message ({reason}): {}",
                base64::engine::general_purpose::STANDARD.encode(payload)
            )
            .into_bytes(),
            _ => payload.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_object_decodes_and_anything_else_says_why_not() {
        let json = Decoder::Json;
        assert!(json.decode(br#" {"id": 1, "v": [1, 2]}"#).is_ok());
        assert!(json.decode(b"{not json").unwrap_err().starts_with("not JSON"));
        assert_eq!(json.decode(b"[1]"), Err("not a JSON object".into()));
        assert_eq!(json.decode(b"  "), Err("empty message".into()));
        assert!(json.decode(br#"{"a": 1} trailing"#).is_err());
        let csv = Decoder::Csv { columns: 2 };
        assert!(csv.decode(b"1,\"a, b\"").is_ok());
        assert_eq!(csv.decode(b"1,2,3"), Err("3 fields, the columns are 2".into()));
    }

    #[test]
    fn an_avro_datum_becomes_a_json_object_and_bad_bytes_say_why() {
        let text = r#"{"type": "record", "name": "order", "fields": [
            {"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"]}]}"#;
        let schema = Schema::parse_str(text).expect("schema");
        let mut record = apache_avro::types::Record::new(&schema).expect("record");
        record.put("id", 42i64);
        record.put("note", apache_avro::types::Value::Union(1, Box::new("rush".into())));
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(record))
            .expect("datum");
        let raw = Decoder::Avro { schema: Box::new(schema.clone()), confluent: false };
        let row: serde_json::Value = serde_json::from_slice(&raw.decode(&datum).expect("decodes")).expect("json");
        assert_eq!(row, serde_json::json!({"id": 42, "note": "rush"}));
        let framed = Decoder::Avro { schema: Box::new(schema), confluent: true };
        let mut with_header = vec![0, 0, 0, 0, 7];
        with_header.extend(&datum);
        assert!(framed.decode(&with_header).is_ok());
        assert!(framed.decode(&datum).unwrap_err().contains("no Confluent header"));
        // id 1, then a union branch the schema does not have.
        assert!(raw.decode(b"\x02\x09").unwrap_err().starts_with("not Avro of the schema"));
        let mut longer = datum.clone();
        longer.push(9);
        assert!(raw.decode(&longer).unwrap_err().contains("1 bytes after the record"));
        let line = String::from_utf8(raw.undecodable(b"\x01", "bad")).expect("text");
        assert_eq!(line, "undecodable Avro message (bad): AQ==");
    }
}
