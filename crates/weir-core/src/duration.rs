//! Durations in specs are written the way people write them ("250ms", "30s", "5m").

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses "30s", "1m 30s", "250ms"; a bare number is taken as seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("bad duration {text:?}: must be a non-negative number of seconds"));
        }
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {text:?}: too long"));
    }
    humantime::parse_duration(t).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// Formats a duration the way [`parse`] reads it back.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `serde(with = ...)` helper for `Option<Duration>` written as text.
pub mod option {
    use super::*;

    /// Writes `Some(d)` as text, `None` as null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads text or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(f64),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
            Some(Raw::Secs(s)) => parse(&s.to_string()).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// `serde(with = ...)` helper for a `Duration` written as text (or seconds).
pub mod required {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::option::deserialize(d)?.ok_or_else(|| serde::de::Error::custom("a duration is required, like 30s"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_and_plain_numbers() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse("1e20").is_err_and(|e| e.contains("too long")), "a huge number is an error, not a panic");
        assert!(parse("soon").unwrap_err().contains("soon"));
        assert!(parse("-1").is_err());
        assert_eq!(parse(&format(Duration::from_millis(1500))), Ok(Duration::from_millis(1500)));
    }
}
