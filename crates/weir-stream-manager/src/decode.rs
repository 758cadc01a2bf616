//! Whether a message decodes in the step's format, checked as it arrives when the step
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
        // Refused at submission until served.
        other => Err(format!("{other:?} messages are not decoded yet")),
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
    }
}
