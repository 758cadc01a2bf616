//! Whether a message decodes in the step's format (a JSON object, or one CSV line with the
//! columns' number of fields), checked as it arrives when the step
//! names a dead-letter destination: a message that does not goes there with the reason,
//! instead of into the flush (where the converter would quarantine it without its source
//! coordinates).

use serde::de::IgnoredAny;
use weir_core::stream::MessageFormat;

/// `Ok` when `payload` is one record in `format`; the reason otherwise.
pub fn check(format: &MessageFormat, payload: &[u8]) -> Result<(), String> {
    match format {
        MessageFormat::Json => {
            match payload.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => {}
                Some(_) => return Err("not a JSON object".into()),
                None => return Err("empty message".into()),
            }
            serde_json::from_slice::<IgnoredAny>(payload).map(|_| ()).map_err(|e| format!("not JSON: {e}"))
        }
        MessageFormat::Csv { columns } => {
            let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(payload);
            let mut records = r.records();
            let first = records.next().ok_or("empty message")?.map_err(|e| format!("not CSV: {e}"))?;
            if records.next().is_some() {
                return Err("more than one CSV line in one message".into());
            }
            if first.len() != columns.len() {
                return Err(format!("{} fields, the columns are {}", first.len(), columns.len()));
            }
            Ok(())
        }
        // Refused at submission until served.
        MessageFormat::Avro { .. } => Err("Avro messages are not decoded yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_object_decodes_and_anything_else_says_why_not() {
        assert_eq!(check(&MessageFormat::Json, br#" {"id": 1, "v": [1, 2]}"#), Ok(()));
        assert!(check(&MessageFormat::Json, b"{not json").unwrap_err().starts_with("not JSON"));
        assert_eq!(check(&MessageFormat::Json, b"[1]"), Err("not a JSON object".into()));
        assert_eq!(check(&MessageFormat::Json, b"  "), Err("empty message".into()));
        assert!(check(&MessageFormat::Json, br#"{"a": 1} trailing"#).is_err());
        let csv = MessageFormat::Csv { columns: vec!["id".into(), "v".into()] };
        assert_eq!(check(&csv, b"1,\"a, b\""), Ok(()));
        assert_eq!(check(&csv, b"1,2,3"), Err("3 fields, the columns are 2".into()));
    }
}
