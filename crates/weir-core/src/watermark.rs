//! Durable high-watermarks of incremental collection.
//!
//! A step that collects incrementally reads where the last stored run ended (its
//! watermark, kept in the master's store under the job's namespace and a key such as
//! `<job name>/<resource>`), collects what lies beyond, and proposes the new high-water
//! mark in its output (`{"watermark": {"key", "value", "boundary"}}`). The master writes a
//! proposal only when the whole job succeeds — its rows stored by the later steps — in
//! the same transaction as the job's success, and never moves a watermark back. So a
//! failed run collects again from the last stored point and a successful one never twice.
//!
//! `boundary` holds the fingerprints of the records whose cursor equals the mark: an API
//! asked for "since the mark" sends them again, and they are known, so they are skipped
//! without losing a record that shares the mark's value and arrived later.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Millis;

/// The key of a watermark proposal in a step's output.
pub const OUTPUT_KEY: &str = "watermark";

/// Most fingerprints kept at a mark; beyond, records that share the mark's value may be
/// collected again by the next run (counted, and said in its report).
pub const MAX_BOUNDARY: usize = 1000;

/// Where an incremental resource stands: the mark and the records at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// The largest cursor value stored.
    pub value: Value,
    /// Fingerprints of the records whose cursor equals `value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundary: Vec<String>,
}

/// A step's proposal, in its output under [`OUTPUT_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub key: String,
    #[serde(flatten)]
    pub mark: Mark,
}

/// A stored watermark.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub namespace: String,
    pub key: String,
    pub mark: Mark,
    /// The job whose success wrote it.
    pub job_id: Uuid,
    pub updated_ms: Millis,
}

/// The proposal in a step's output, if it makes one.
pub fn proposed(output: &str) -> Option<Proposal> {
    // Most outputs propose nothing: skip parsing them.
    if !output.contains("\"watermark\"") {
        return None;
    }
    let v: Value = serde_json::from_str(output).ok()?;
    serde_json::from_value(v.get(OUTPUT_KEY)?.clone()).ok()
}

/// Orders two cursor values: numbers as numbers, RFC 3339 times as instants (whatever
/// their offsets), numbers written as text as numbers, other text as text. `None`: they do
/// not compare (different types).
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => {
            if let (Ok(x), Ok(y)) = (x.parse::<jiff::Timestamp>(), y.parse::<jiff::Timestamp>()) {
                return Some(x.cmp(&y));
            }
            // Big ids and epoch times often come as text: "10" is after "9".
            if let (Ok(a), Ok(b)) = (x.trim().parse::<i128>(), y.trim().parse::<i128>()) {
                return Some(a.cmp(&b));
            }
            if let (Ok(a), Ok(b)) = (x.trim().parse::<f64>(), y.trim().parse::<f64>()) {
                if a.is_finite() && b.is_finite() {
                    return a.partial_cmp(&b);
                }
            }
            Some(x.cmp(y))
        }
        _ => None,
    }
}

/// Whether `new` may replace `stored`: a mark never moves back. One of another type (the
/// cursor field changed) replaces it.
pub fn advances(stored: Option<&Mark>, new: &Mark) -> bool {
    match stored {
        None => true,
        Some(s) => compare(&new.value, &s.value) != Some(Ordering::Less),
    }
}

/// What to do with one record of an incremental collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Beyond the mark, or at it and not collected before: keep it.
    New,
    /// Before the mark, or at it and collected before: skip it.
    Before,
}

/// Tracks an incremental collection: which records are new against the stored mark, and
/// the mark to propose. Serializable, so a collection resumed after a crash goes on with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    from: Option<Mark>,
    high: Option<Mark>,
    /// Records at the high mark past [`MAX_BOUNDARY`].
    pub overflow: u64,
}

impl Tracker {
    /// Starts from the stored mark (none: everything is new).
    pub fn new(from: Option<Mark>) -> Tracker {
        Tracker { from, ..Tracker::default() }
    }

    /// The highest mark seen in this collection.
    pub fn high(&self) -> Option<&Mark> {
        self.high.as_ref()
    }

    /// Judges one record by its cursor value, and moves the high mark. Its fingerprint is
    /// computed only when the record is at a mark (most records are not).
    pub fn see(&mut self, value: &Value, fingerprint: impl Fn() -> String) -> Seen {
        let printed = std::cell::OnceCell::new();
        let fp = || printed.get_or_init(&fingerprint).clone();
        if let Some(f) = &self.from {
            match compare(value, &f.value) {
                Some(Ordering::Less) => return Seen::Before,
                Some(Ordering::Equal) if f.boundary.contains(&fp()) => return Seen::Before,
                _ => {}
            }
        }
        match self.high.as_mut() {
            Some(h) => match compare(value, &h.value) {
                Some(Ordering::Greater) | None => {
                    *h = Mark { value: value.clone(), boundary: vec![fp()] };
                    self.overflow = 0;
                }
                Some(Ordering::Equal) => {
                    if h.boundary.len() < MAX_BOUNDARY {
                        h.boundary.push(fp());
                    } else {
                        self.overflow += 1;
                    }
                }
                Some(Ordering::Less) => {}
            },
            None => self.high = Some(Mark { value: value.clone(), boundary: vec![fp()] }),
        }
        Seen::New
    }

    /// The mark to propose: the highest seen; at the stored mark's value, with its
    /// fingerprints too; none new: the stored one.
    pub fn mark(&self) -> Option<Mark> {
        match (&self.from, &self.high) {
            (from, None) => from.clone(),
            (None, Some(h)) => Some(h.clone()),
            (Some(f), Some(h)) => Some(match compare(&h.value, &f.value) {
                Some(Ordering::Equal) => {
                    let mut boundary = f.boundary.clone();
                    for b in &h.boundary {
                        if boundary.len() < MAX_BOUNDARY && !boundary.contains(b) {
                            boundary.push(b.clone());
                        }
                    }
                    Mark { value: h.value.clone(), boundary }
                }
                Some(Ordering::Less) => f.clone(),
                _ => h.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursor_values_order_by_their_kind() {
        assert_eq!(compare(&json!(9), &json!(10)), Some(Ordering::Less));
        assert_eq!(compare(&json!(1.5), &json!(1)), Some(Ordering::Greater));
        // The same instant in two offsets; text order would say otherwise.
        assert_eq!(compare(&json!("2026-11-01T10:00:00+02:00"), &json!("2026-11-01T08:00:00Z")), Some(Ordering::Equal));
        assert_eq!(compare(&json!("2026-11-01T09:00:00+02:00"), &json!("2026-11-01T08:00:00Z")), Some(Ordering::Less));
        assert_eq!(compare(&json!("b"), &json!("a")), Some(Ordering::Greater));
        assert_eq!(compare(&json!("1"), &json!(1)), None);
        assert_eq!(compare(&json!("10"), &json!("9")), Some(Ordering::Greater), "numbers as text");
        assert_eq!(compare(&json!("1700000000.5"), &json!("1700000000")), Some(Ordering::Greater));
        let m = |v: Value| Mark { value: v, boundary: vec![] };
        assert!(advances(None, &m(json!(1))));
        assert!(advances(Some(&m(json!(1))), &m(json!(2))));
        assert!(advances(Some(&m(json!(2))), &m(json!(2))));
        assert!(!advances(Some(&m(json!(3))), &m(json!(2))), "a mark never moves back");
        assert!(advances(Some(&m(json!(3))), &m(json!("x"))), "a changed cursor type replaces it");
    }

    #[test]
    fn records_at_or_before_the_mark_are_skipped_once_collected() {
        let mut t = Tracker::new(Some(Mark { value: json!(10), boundary: vec!["a".into()] }));
        assert_eq!(t.see(&json!(9), || "z".into()), Seen::Before);
        assert_eq!(t.see(&json!(10), || "a".into()), Seen::Before, "collected at the mark last time");
        assert_eq!(t.see(&json!(10), || "b".into()), Seen::New, "same value, arrived later");
        assert_eq!(t.mark(), Some(Mark { value: json!(10), boundary: vec!["a".into(), "b".into()] }));
        assert_eq!(t.see(&json!(12), || "c".into()), Seen::New);
        assert_eq!(t.see(&json!(11), || "d".into()), Seen::New);
        assert_eq!(t.see(&json!(12), || "e".into()), Seen::New);
        assert_eq!(t.mark(), Some(Mark { value: json!(12), boundary: vec!["c".into(), "e".into()] }));
        let idle = Tracker::new(Some(Mark { value: json!(10), boundary: vec![] }));
        assert_eq!(idle.mark().map(|m| m.value), Some(json!(10)), "nothing new keeps the mark");
        assert_eq!(Tracker::new(None).mark(), None);
    }

    #[test]
    fn proposals_are_read_from_outputs() {
        let out =
            json!({"records": 3, "watermark": {"key": "orders/collect", "value": "2026-11-01", "boundary": ["f"]}});
        let p = proposed(&out.to_string()).expect("a proposal");
        assert_eq!(
            (p.key.as_str(), p.mark.value.clone(), p.mark.boundary.len()),
            ("orders/collect", json!("2026-11-01"), 1)
        );
        assert_eq!(proposed("{\"records\": 3}"), None);
        assert_eq!(proposed("not json \"watermark\""), None);
    }
}
