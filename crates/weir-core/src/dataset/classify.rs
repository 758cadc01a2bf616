//! Classification of personal data (the `classify` batch kind, `secure_api`'s
//! `classification` step): which columns hold e-mail addresses, phone numbers, card
//! numbers, IBANs or a user's own patterns, decided from their values; each such column
//! is labelled in the schema's metadata and, if asked, masked or hashed before anything
//! is written.
//!
//! Pure: the detectors, the column decision and masking live here and are tested in
//! microseconds; `weir-data` applies them to the rows (and does the keyed hashing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// The built-in detectors, in the order they are tried.
pub const DETECTORS: [&str; 4] = ["card", "iban", "email", "phone"];

/// Default share of a column's non-empty values that must match a class.
pub const DEFAULT_MIN_RATIO: f64 = 0.8;

/// The field-metadata key a column's class is written under in Parquet (and Arrow)
/// schemas; the schema-level key holds every column's, as a JSON object.
pub const LABEL_KEY: &str = "weir.classification";

/// What the `classify` kind is told (`classify` in a batch step's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifySpec {
    /// Built-in detectors to run (default all: card, iban, email, phone).
    #[serde(default = "all_detectors")]
    pub detect: Vec<String>,
    /// A class of the user's own: its name → a regular expression a whole value matches.
    #[serde(default)]
    pub patterns: BTreeMap<String, String>,
    /// Columns labelled whatever their values: column → class.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// What happens to a class's values: `label` (default: kept, the column labelled),
    /// `mask` (all but the last four characters, an e-mail's first letter and domain) or
    /// `hash` (HMAC-SHA-256 with `hash_key`, hex: joins still work, values do not show).
    #[serde(default)]
    pub actions: BTreeMap<String, PiiAction>,
    /// Share of a column's non-empty values (in the first rows read) that must match a
    /// class for the column to be labelled (default 0.8).
    #[serde(default)]
    pub min_ratio: Option<f64>,
    /// The key of `hash`, by reference (an unkeyed hash of a phone or card number is
    /// undone by hashing every possible one).
    #[serde(default)]
    pub hash_key: Option<SecretRef>,
}

impl Default for ClassifySpec {
    fn default() -> Self {
        ClassifySpec {
            detect: all_detectors(),
            patterns: BTreeMap::new(),
            columns: BTreeMap::new(),
            actions: BTreeMap::new(),
            min_ratio: None,
            hash_key: None,
        }
    }
}

fn all_detectors() -> Vec<String> {
    DETECTORS.iter().map(|d| d.to_string()).collect()
}

/// What is done to a classified column's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiAction {
    #[default]
    Label,
    Mask,
    Hash,
}

impl PiiAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiAction::Label => "label",
            PiiAction::Mask => "mask",
            PiiAction::Hash => "hash",
        }
    }
}

/// Most user patterns and labelled columns.
pub const MAX_CLASSES: usize = 64;

impl ClassifySpec {
    /// Checks the config; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(d) = self.detect.iter().find(|d| !DETECTORS.contains(&d.as_str())) {
            return Err(format!("classify.detect: unknown detector {d:?} (known: {})", DETECTORS.join(", ")));
        }
        if self.patterns.len() > MAX_CLASSES || self.columns.len() > MAX_CLASSES {
            return Err(format!("classify: at most {MAX_CLASSES} patterns and {MAX_CLASSES} columns"));
        }
        for (class, re) in &self.patterns {
            check_class_name(&format!("classify.patterns.{class}"), class)?;
            if DETECTORS.contains(&class.as_str()) {
                return Err(format!(
                    "classify.patterns.{class}: {class:?} is a built-in detector; name the pattern otherwise"
                ));
            }
            regex::Regex::new(&anchored(re))
                .map_err(|e| format!("classify.patterns.{class}: {re:?} is not a regular expression: {e}"))?;
        }
        for (col, class) in &self.columns {
            check_class_name(&format!("classify.columns.{col}"), class)?;
        }
        let known = |c: &str| {
            self.detect.iter().any(|d| d == c) || self.patterns.contains_key(c) || self.columns.values().any(|v| v == c)
        };
        for (class, action) in &self.actions {
            if !known(class) {
                return Err(format!(
                    "classify.actions.{class}: no detector, pattern or column gives the class {class:?}"
                ));
            }
            if *action == PiiAction::Hash && self.hash_key.is_none() {
                return Err(format!(
                    "classify.actions.{class}: hash needs classify.hash_key (an unkeyed hash of a phone or card number is undone by hashing every possible one)"
                ));
            }
        }
        if let Some(r) = self.min_ratio {
            if !(r > 0.0 && r <= 1.0) {
                return Err(format!("classify.min_ratio must be in (0, 1], got {r}"));
            }
        }
        if let Some(k) = &self.hash_key {
            k.check("classify.hash_key")?;
        }
        Ok(())
    }

    /// The action for `class`.
    pub fn action(&self, class: &str) -> PiiAction {
        self.actions.get(class).copied().unwrap_or_default()
    }
}

fn check_class_name(field: &str, class: &str) -> Result<(), String> {
    if class.is_empty() || class.len() > 64 || !class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{field}: a class name is letters, digits and _, got {class:?}"));
    }
    Ok(())
}

/// A user pattern matched against a whole value.
pub fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

/// Decides columns from their values: build once per input, feed it values, read the
/// labels.
pub struct Detector {
    detect: Vec<String>,
    patterns: Vec<(String, regex::Regex)>,
}

impl Detector {
    /// From a checked spec.
    pub fn new(spec: &ClassifySpec) -> Result<Detector, String> {
        let patterns = spec
            .patterns
            .iter()
            .map(|(c, re)| regex::Regex::new(&anchored(re)).map(|r| (c.clone(), r)).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Detector { detect: spec.detect.clone(), patterns })
    }

    /// Every class it tells, in the order a tie is decided: the user's patterns, then the
    /// built-ins.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.patterns.iter().map(|(c, _)| c.as_str()).chain(self.detect.iter().map(String::as_str))
    }

    /// Every class `value` fits: the user's patterns first, then the built-ins in order.
    pub fn classes<'a>(&'a self, value: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let v = value.trim();
        let users = self.patterns.iter().filter(move |(_, r)| r.is_match(v)).map(|(c, _)| c.as_str());
        let builtins = self.detect.iter().map(String::as_str).filter(move |d| builtin(d, v));
        users.chain(builtins)
    }
}

fn builtin(detector: &str, v: &str) -> bool {
    match detector {
        "card" => is_card(v),
        "iban" => is_iban(v),
        "email" => is_email(v),
        "phone" => is_phone(v),
        _ => false,
    }
}

/// The class of a column from counts of its values' classes: the first (in detector
/// order) that at least `min_ratio` of its `non_empty` values fit.
pub fn decide(counts: &[(String, u64)], non_empty: u64, min_ratio: f64) -> Option<(String, u64)> {
    if non_empty == 0 {
        return None;
    }
    counts.iter().find(|(_, n)| *n as f64 >= min_ratio * non_empty as f64).map(|(c, n)| (c.clone(), *n))
}

/// A payment card number: 13 to 19 digits (spaces and dashes allowed between) passing
/// the Luhn check.
pub fn is_card(v: &str) -> bool {
    if !v.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-') {
        return false;
    }
    let digits: Vec<u32> = v.chars().filter_map(|c| c.to_digit(10)).collect();
    (13..=19).contains(&digits.len()) && luhn(&digits)
}

/// The Luhn checksum (ISO/IEC 7812).
pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IBAN (ISO 13616): country code, check digits, 11–30 letters and digits (spaces
/// allowed), whose mod-97 check (ISO 7064) gives 1.
pub fn is_iban(v: &str) -> bool {
    let s: String = v.chars().filter(|c| *c != ' ').collect::<String>().to_ascii_uppercase();
    let b = s.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b[4..].iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let mut rem: u32 = 0;
    for c in b[4..].iter().chain(&b[..4]) {
        let n = if c.is_ascii_digit() { u32::from(c - b'0') } else { u32::from(c - b'A') + 10 };
        rem = if n >= 10 { (rem * 100 + n) % 97 } else { (rem * 10 + n) % 97 };
    }
    rem == 1
}

/// An e-mail address: one `@`, a local part without spaces, a domain of dotted labels
/// ending in two or more letters.
pub fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else { return false };
    if local.is_empty() || local.len() > 64 || domain.contains('@') || v.chars().any(char::is_whitespace) {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels.last().is_some_and(|t| t.len() >= 2 && t.chars().all(|c| c.is_ascii_alphabetic()))
}

/// A phone number as people write them: international (`+` and 8–15 digits, spaces,
/// dashes, dots or parentheses between) or North American (`(212) 555-0123`,
/// `212-555-0123`, `212.555.0123`). Bare digit strings are not taken for phone numbers
/// (they are as often ids), nor are dates.
pub fn is_phone(v: &str) -> bool {
    if !v.chars().all(|c| c.is_ascii_digit() || " -.()+".contains(c)) {
        return false;
    }
    let digits = v.chars().filter(char::is_ascii_digit).count();
    if let Some(rest) = v.strip_prefix('+') {
        return !rest.contains('+') && (8..=15).contains(&digits) && rest.starts_with(|c: char| c.is_ascii_digit());
    }
    if v.contains('+') || digits != 10 {
        return false;
    }
    // (212) 555-0123, 212-555-0123, 212.555.0123, 212 555 0123
    let groups: Vec<&str> = v.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [3, 3, 4]
}

/// A value masked: an e-mail keeps its first character and domain (`a***@example.com`);
/// anything else keeps its last four letters or digits and its separators
/// (`**** **** **** 1111`).
pub fn mask(class: &str, value: &str) -> String {
    if class == "email" {
        if let Some((local, domain)) = value.split_once('@') {
            let first: String = local.chars().take(1).collect();
            return format!("{first}***@{domain}");
        }
    }
    let total = value.chars().filter(char::is_ascii_alphanumeric).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_ascii_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen + 4 > total {
                c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectors_take_what_they_should_and_not_what_they_should_not() {
        for v in ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "4012888888881881"] {
            assert!(is_card(v), "{v}");
        }
        for v in ["4111 1111 1111 1112", "1234", "41111111111111111111", "4111x1111111111111"] {
            assert!(!is_card(v), "{v}");
        }
        for v in ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "fr1420041010050500013m02606"] {
            assert!(is_iban(v), "{v}");
        }
        for v in ["DE89 3704 0044 0532 0130 01", "DE8937040044", "1289370400440532013000"] {
            assert!(!is_iban(v), "{v}");
        }
        for v in ["ada@example.com", "a.b+c@mail.example.co.uk"] {
            assert!(is_email(v), "{v}");
        }
        for v in ["ada@example", "ada example@x.com", "@example.com", "a@b@c.com", "a@example.c0m"] {
            assert!(!is_email(v), "{v}");
        }
        for v in ["+49 30 1234567", "+1 (212) 555-0123", "(212) 555-0123", "212-555-0123", "212.555.0123"] {
            assert!(is_phone(v), "{v}");
        }
        for v in ["2125550123", "2026-11-23", "12.05.2026", "+12", "1+2125550123", "212-5550-123"] {
            assert!(!is_phone(v), "{v}");
        }
    }

    #[test]
    fn a_column_takes_the_first_class_most_of_its_values_fit() {
        let spec = ClassifySpec {
            patterns: [("employee_id".to_string(), "E-[0-9]{6}".to_string())].into(),
            ..Default::default()
        };
        spec.check().expect("valid");
        let d = Detector::new(&spec).expect("detector");
        assert_eq!(d.classes("E-004211").collect::<Vec<_>>(), vec!["employee_id"]);
        assert_eq!(d.classes(" 4111111111111111 ").collect::<Vec<_>>(), vec!["card"]);
        assert_eq!(d.classes("hello").count(), 0);
        let counts = vec![("card".to_string(), 7), ("phone".to_string(), 9)];
        assert_eq!(decide(&counts, 10, 0.8), Some(("phone".into(), 9)));
        assert_eq!(decide(&counts, 10, 0.7), Some(("card".into(), 7)));
        assert_eq!(decide(&counts, 12, 0.8), None);
        assert_eq!(decide(&counts, 0, 0.8), None);
    }

    #[test]
    fn masks_keep_only_what_identifies_nobody() {
        assert_eq!(mask("card", "4111 1111 1111 1111"), "**** **** **** 1111");
        assert_eq!(mask("email", "ada@example.com"), "a***@example.com");
        assert_eq!(mask("phone", "+49 30 1234567"), "+** ** ***4567");
        assert_eq!(mask("x", "abc"), "abc");
    }

    #[test]
    fn bad_configs_are_named() {
        let bad = |v: serde_json::Value| {
            let s: ClassifySpec = serde_json::from_value(v).expect("shape");
            s.check().unwrap_err()
        };
        assert!(bad(serde_json::json!({"detect": ["ssn"]})).contains("ssn"));
        assert!(bad(serde_json::json!({"patterns": {"x": "("}})).contains("patterns.x"));
        assert!(bad(serde_json::json!({"patterns": {"card": "x"}})).contains("built-in"));
        assert!(bad(serde_json::json!({"actions": {"card": "hash"}})).contains("hash_key"));
        assert!(bad(serde_json::json!({"actions": {"ssn": "mask"}})).contains("ssn"));
        assert!(bad(serde_json::json!({"min_ratio": 0})).contains("min_ratio"));
        assert!(bad(serde_json::json!({"columns": {"a": "no spaces"}})).contains("columns.a"));
        let ok: ClassifySpec = serde_json::from_value(serde_json::json!({
            "actions": {"card": "hash", "email": "mask"}, "hash_key": {"env": "PII_KEY"},
            "columns": {"name": "person_name"}
        }))
        .expect("shape");
        ok.check().expect("valid");
        assert_eq!((ok.action("card"), ok.action("phone")), (PiiAction::Hash, PiiAction::Label));
    }
}
