//! Incremental collection in the manager: each record's cursor judged against the mark the
//! last successful run stored ([`weir_core::watermark::Tracker`]), and the next mark
//! proposed in the step's output for the master to store when the job succeeds.

use serde_json::{json, Value};
use serde_json_path::JsonPath;
use sha2::{Digest, Sha256};
use weir_core::api::{IncrementalSpec, OnMissingCursor};
use weir_core::watermark::{Mark, Seen, Tracker};

use crate::error::CollectError;
use crate::paginate;

/// One collection's incremental state.
pub struct Incremental {
    path: JsonPath,
    shown_path: String,
    on_missing: OnMissingCursor,
    tracker: Tracker,
    key: String,
    /// Records at or before the stored mark, skipped.
    pub skipped: u64,
    /// Records without a cursor value, kept (`on_missing: include`).
    pub missing: u64,
}

/// A record's fingerprint: the first 64 bits of the SHA-256 of its JSON, in hex.
pub fn fingerprint(r: &Value) -> String {
    weir_storage::hex(&Sha256::digest(serde_json::to_vec(r).unwrap_or_default())[..8])
}

/// A cursor value as `{cursor}` sends it: text as it is, a number as written.
pub fn as_param(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Incremental {
    /// Starts from `from`, the stored mark of `key` (none before the first success).
    pub fn new(spec: &IncrementalSpec, key: String, from: Option<Mark>) -> Result<Incremental, CollectError> {
        Ok(Incremental {
            path: paginate::json_path("incremental.cursor_path", &spec.cursor_path)?,
            shown_path: spec.cursor_path.clone(),
            on_missing: spec.on_missing,
            tracker: Tracker::new(from),
            key,
            skipped: 0,
            missing: 0,
        })
    }

    /// Whether to keep a record of the page at `url`.
    pub fn keep(&mut self, r: &Value, url: &str) -> Result<bool, CollectError> {
        let Some(v) = paginate::select(&self.path, Some(r)) else {
            return match self.on_missing {
                OnMissingCursor::Include => {
                    self.missing += 1;
                    Ok(true)
                }
                OnMissingCursor::Fail => {
                    let shown = weir_core::text::shorten(r.to_string(), 200);
                    Err(CollectError::BadPage(format!(
                        "{url}: a record has no cursor at incremental.cursor_path {:?} (set on_missing: include \
                         to keep such records): {shown}",
                        self.shown_path
                    )))
                }
            };
        };
        if !(v.is_string() || v.is_number()) {
            return Err(CollectError::BadPage(format!(
                "{url}: a record's cursor at {:?} is {v}, not a number or text",
                self.shown_path
            )));
        }
        if let Some(h) = self.tracker.high() {
            if weir_core::watermark::compare(v, &h.value).is_none() {
                return Err(CollectError::BadPage(format!(
                    "{url}: a record's cursor at {:?} is {v}, of another type than the {} before it",
                    self.shown_path, h.value
                )));
            }
        }
        let v = v.clone();
        match self.tracker.see(&v, || fingerprint(r)) {
            Seen::New => Ok(true),
            Seen::Before => {
                self.skipped += 1;
                Ok(false)
            }
        }
    }

    /// The next mark, as the step's output proposes it under [`OUTPUT_KEY`].
    pub fn proposal(&self) -> Option<Value> {
        let m = self.tracker.mark()?;
        Some(json!({"key": self.key, "value": m.value, "boundary": m.boundary}))
    }

    /// What a checkpoint keeps of it.
    pub fn state(&self) -> Value {
        json!({"tracker": self.tracker, "skipped": self.skipped, "missing": self.missing})
    }

    /// Goes on from a checkpoint's state (one it cannot read leaves it as it is).
    pub fn restore(&mut self, state: &Value) -> bool {
        let Ok(tracker) = serde_json::from_value::<Tracker>(state["tracker"].clone()) else { return false };
        self.tracker = tracker;
        self.skipped = state["skipped"].as_u64().unwrap_or(0);
        self.missing = state["missing"].as_u64().unwrap_or(0);
        true
    }

    /// Records at the new mark beyond what its boundary keeps: the next run may collect
    /// them again.
    pub fn overflow(&self) -> u64 {
        self.tracker.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(on_missing: OnMissingCursor) -> IncrementalSpec {
        IncrementalSpec { cursor_path: "$.meta.updated".into(), initial: None, name: None, on_missing }
    }

    #[test]
    fn records_are_judged_by_their_cursor_and_the_mark_proposed() {
        let from = Mark {
            value: json!("2026-11-01T00:00:00Z"),
            boundary: vec![fingerprint(&json!({"id": 1, "meta": {"updated": "2026-11-01T00:00:00Z"}}))],
        };
        let mut i = Incremental::new(&spec(OnMissingCursor::Fail), "orders/collect".into(), Some(from)).expect("new");
        let rec = |id: i64, t: &str| json!({"id": id, "meta": {"updated": t}});
        assert!(!i.keep(&rec(0, "2026-10-31T00:00:00Z"), "u").expect("old"));
        assert!(!i.keep(&rec(1, "2026-11-01T00:00:00Z"), "u").expect("at the mark, collected"));
        assert!(i.keep(&rec(2, "2026-11-01T00:00:00Z"), "u").expect("at the mark, new"));
        assert!(i.keep(&rec(3, "2026-11-02T00:00:00Z"), "u").expect("after"));
        assert_eq!(i.skipped, 2);
        let p = i.proposal().expect("a proposal");
        assert_eq!((p["key"].as_str(), p["value"].as_str()), (Some("orders/collect"), Some("2026-11-02T00:00:00Z")));
        assert_eq!(p["boundary"], json!([fingerprint(&rec(3, "2026-11-02T00:00:00Z"))]));
        let e = i.keep(&json!({"id": 4}), "https://api.test/o").expect_err("no cursor");
        assert!(e.to_string().contains("no cursor at incremental.cursor_path \"$.meta.updated\""), "{e}");
        assert!(i
            .keep(&json!({"meta": {"updated": [1]}}), "u")
            .expect_err("a list")
            .to_string()
            .contains("not a number or text"));
        let mut lax = Incremental::new(&spec(OnMissingCursor::Include), "k".into(), None).expect("new");
        assert!(lax.keep(&json!({"id": 4}), "u").expect("kept"));
        assert_eq!((lax.missing, lax.proposal()), (1, None));
        assert_eq!((as_param(&json!("a b")), as_param(&json!(12))), ("a b".to_string(), "12".to_string()));
    }
}
