//! Quality rules on typed rows. Row rules (not-null, ranges, patterns, allowed values,
//! unique key) mark the rows that break them, with the rule and a reason naming the column
//! and value; dataset rules (required columns, minimum rows, freshness) and the quarantine
//! thresholds are judged once the input is read and fail it whole.
//!
//! Comparisons use arrow's kernels on the column's own type: a range bound is cast to the
//! column's type once (so dates compare as dates), a pattern runs on the text value.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch, Scalar, StringArray};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use regex::Regex;
use serde_json::Value;
use weir_core::dataset::Rules;

use crate::{DataError, FileReport, Problem};

/// The unique-key rule's state: key columns, their row encoder, the keys seen so far.
struct UniqueKey {
    columns: Vec<usize>,
    encoder: RowConverter,
    seen: HashSet<Box<[u8]>>,
}

enum RowRule {
    NotNull(usize),
    Min(usize, Scalar<ArrayRef>, String),
    Max(usize, Scalar<ArrayRef>, String),
    Pattern(usize, Regex, String),
    Allowed(usize, HashSet<String>),
}

/// The rules of one step, bound to one input's schema.
pub struct Quality {
    rules: Rules,
    schema: SchemaRef,
    row_rules: Vec<RowRule>,
    unique: Option<UniqueKey>,
    /// Column index and newest value (µs since epoch) for freshness.
    fresh: Option<(usize, Option<i64>)>,
    now_micros: i64,
}

impl Quality {
    /// Binds `rules` to the schema written. `input_columns` are the input's own column
    /// names, for `required_columns`. `now_micros` is the clock for freshness.
    pub fn new(
        rules: &Rules,
        schema: &SchemaRef,
        input_columns: &[String],
        now_micros: i64,
    ) -> Result<Self, DataError> {
        let missing: Vec<&String> =
            rules.required_columns.iter().filter(|c| !input_columns.iter().any(|i| i == *c)).collect();
        if !missing.is_empty() {
            return Err(DataError::Quality(format!(
                "required columns missing: {} (the input has: {})",
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                input_columns.join(", ")
            )));
        }
        let col = |rule: &str, name: &str| -> Result<usize, DataError> {
            schema.index_of(name).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                DataError::Config(format!(
                    "rules.{rule} names column {name:?}, which the data does not have (columns: {})",
                    names.join(", ")
                ))
            })
        };
        let mut row_rules = Vec::new();
        for c in &rules.not_null {
            row_rules.push(RowRule::NotNull(col("not_null", c)?));
        }
        for (c, r) in &rules.ranges {
            let i = col("ranges", c)?;
            let t = schema.field(i).data_type();
            for (end, bound) in [("min", &r.min), ("max", &r.max)] {
                let Some(b) = bound else { continue };
                let text = match b {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let s = StringArray::from(vec![text.clone()]);
                let v = cast_with_options(&s, t, &CastOptions { safe: false, ..Default::default() }).map_err(|e| {
                    DataError::Config(format!(
                        "rules.ranges.{c}.{end}: {text:?} is not a {}: {e}",
                        crate::typing::type_name(t)
                    ))
                })?;
                let scalar = Scalar::new(v);
                row_rules.push(if end == "min" {
                    RowRule::Min(i, scalar, text)
                } else {
                    RowRule::Max(i, scalar, text)
                });
            }
        }
        for (c, p) in &rules.patterns {
            let i = col("patterns", c)?;
            let re = Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| DataError::Config(format!("rules.patterns.{c}: not a regular expression: {e}")))?;
            row_rules.push(RowRule::Pattern(i, re, p.clone()));
        }
        for (c, vals) in &rules.allowed {
            let i = col("allowed", c)?;
            let set = vals
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            row_rules.push(RowRule::Allowed(i, set));
        }
        let unique = if rules.unique.is_empty() {
            None
        } else {
            let idx = rules.unique.iter().map(|c| col("unique", c)).collect::<Result<Vec<_>, _>>()?;
            let fields = idx.iter().map(|&i| SortField::new(schema.field(i).data_type().clone())).collect();
            Some(UniqueKey { columns: idx, encoder: RowConverter::new(fields)?, seen: HashSet::new() })
        };
        let fresh = match &rules.freshness {
            None => None,
            Some(f) => {
                let i = col("freshness", &f.column)?;
                match schema.field(i).data_type() {
                    DataType::Timestamp(_, _) | DataType::Date32 => Some((i, None)),
                    other => {
                        return Err(DataError::Config(format!(
                            "rules.freshness.column {:?} is {}, not a timestamp or date",
                            f.column,
                            crate::typing::type_name(other)
                        )))
                    }
                }
            }
        };
        Ok(Quality { rules: rules.clone(), schema: schema.clone(), row_rules, unique, fresh, now_micros })
    }

    /// Marks the rows of `batch` that break a row rule, where `problems` has none yet.
    pub fn check(&mut self, batch: &RecordBatch, problems: &mut [Problem]) -> Result<(), DataError> {
        for rule in &self.row_rules {
            match rule {
                RowRule::NotNull(i) => {
                    let c = batch.column(*i);
                    if c.null_count() > 0 {
                        let name = self.schema.field(*i).name();
                        mark(problems, |r| c.is_null(r), |_| ("not_null", format!("column {name:?} is null")));
                    }
                }
                RowRule::Min(i, bound, text) | RowRule::Max(i, bound, text) => {
                    let c = batch.column(*i);
                    let below = matches!(rule, RowRule::Min(..));
                    let out = if below { arrow_ord::cmp::lt(c, bound)? } else { arrow_ord::cmp::gt(c, bound)? };
                    if out.true_count() > 0 {
                        let shown = ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default())?;
                        let name = self.schema.field(*i).name();
                        let word = if below { "below the minimum" } else { "above the maximum" };
                        mark(
                            problems,
                            |r| out.is_valid(r) && out.value(r),
                            |r| ("range", format!("column {name:?}: {} is {word} {text}", shown.value(r))),
                        );
                    }
                }
                RowRule::Pattern(i, re, p) => {
                    let text = as_text(batch.column(*i))?;
                    let name = self.schema.field(*i).name();
                    mark(
                        problems,
                        |r| text.is_valid(r) && !re.is_match(text.value(r)),
                        |r| ("pattern", format!("column {name:?}: {:?} does not match {p:?}", text.value(r))),
                    );
                }
                RowRule::Allowed(i, set) => {
                    let text = as_text(batch.column(*i))?;
                    let name = self.schema.field(*i).name();
                    mark(
                        problems,
                        |r| text.is_valid(r) && !set.contains(text.value(r)),
                        |r| ("allowed", format!("column {name:?}: {:?} is not an allowed value", text.value(r))),
                    );
                }
            }
        }
        if let Some(UniqueKey { columns: idx, encoder: conv, seen }) = &mut self.unique {
            let cols: Vec<ArrayRef> = idx.iter().map(|&i| batch.column(i).clone()).collect();
            let rows = conv.convert_columns(&cols)?;
            let names: Vec<&str> = idx.iter().map(|&i| self.schema.field(i).name().as_str()).collect();
            for (r, p) in problems.iter_mut().enumerate() {
                if p.is_some() {
                    continue;
                }
                if !seen.insert(rows.row(r).as_ref().into()) {
                    let key: Vec<String> = cols
                        .iter()
                        .map(|c| {
                            ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default())
                                .map(|f| f.value(r).to_string())
                                .unwrap_or_default()
                        })
                        .collect();
                    *p = Some(("unique", format!("duplicate key ({}) = ({})", names.join(", "), key.join(", "))));
                }
            }
        }
        Ok(())
    }

    /// Notes rows that were written, for freshness.
    pub fn observe_written(&mut self, batch: &RecordBatch) {
        let Some((i, newest)) = &mut self.fresh else { return };
        let c = batch.column(*i);
        let m = match c.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                c.as_primitive::<TimestampMicrosecondType>().iter().flatten().max()
            }
            DataType::Date32 => {
                c.as_primitive::<Date32Type>().iter().flatten().max().map(|d| d as i64 * 86_400_000_000)
            }
            _ => None,
        };
        if let Some(m) = m {
            *newest = Some(newest.map_or(m, |n| n.max(m)));
        }
    }

    /// Judges the dataset rules and thresholds once the input is read.
    pub fn finish(&self, report: &FileReport) -> Result<(), DataError> {
        let r = &self.rules;
        if let Some(max) = r.max_quarantined_rows {
            if report.rows_quarantined > max {
                return Err(DataError::Quality(format!(
                    "{} rows quarantined, more than max_quarantined_rows {max} ({})",
                    report.rows_quarantined,
                    by_rule(report)
                )));
            }
        }
        if let Some(max) = r.max_quarantined_ratio {
            let ratio =
                if report.rows_read == 0 { 0.0 } else { report.rows_quarantined as f64 / report.rows_read as f64 };
            if ratio > max {
                return Err(DataError::Quality(format!(
                    "{} of {} rows quarantined ({:.2}%), more than max_quarantined_ratio {max} ({})",
                    report.rows_quarantined,
                    report.rows_read,
                    ratio * 100.0,
                    by_rule(report)
                )));
            }
        }
        if let Some(min) = r.min_rows {
            if report.rows_written < min {
                return Err(DataError::Quality(format!(
                    "{} valid rows, fewer than min_rows {min}",
                    report.rows_written
                )));
            }
        }
        if let (Some(f), Some((_, newest))) = (&r.freshness, &self.fresh) {
            let max_age = weir_core::duration::parse(&f.max_age).map_err(DataError::Config)?;
            let limit = self.now_micros - max_age.as_micros() as i64;
            match newest {
                None => return Err(DataError::Quality(format!("freshness: column {:?} has no values", f.column))),
                Some(n) if *n < limit => {
                    return Err(DataError::Quality(format!(
                        "freshness: the newest {:?} is {} old, older than {}",
                        f.column,
                        weir_core::duration::format(std::time::Duration::from_micros((self.now_micros - n) as u64)),
                        f.max_age
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn by_rule(report: &FileReport) -> String {
    let parts: Vec<String> = report.quarantined_by_rule.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    parts.join(", ")
}

/// Sets a problem on each row without one where `hit` holds.
fn mark(problems: &mut [Problem], hit: impl Fn(usize) -> bool, why: impl Fn(usize) -> (&'static str, String)) {
    for (r, p) in problems.iter_mut().enumerate() {
        if p.is_none() && hit(r) {
            *p = Some(why(r));
        }
    }
}

/// A column as text (a cast for non-text columns).
fn as_text(c: &ArrayRef) -> Result<Arc<StringArray>, DataError> {
    let t = if c.data_type() == &DataType::Utf8 { c.clone() } else { arrow_cast::cast(c, &DataType::Utf8)? };
    Ok(Arc::new(t.as_string::<i32>().clone()))
}

/// Counts problems by rule.
pub fn count_by_rule(problems: &[Problem], into: &mut std::collections::BTreeMap<String, u64>) {
    let mut m: HashMap<&str, u64> = HashMap::new();
    for (rule, _) in problems.iter().flatten() {
        *m.entry(rule).or_default() += 1;
    }
    for (k, v) in m {
        *into.entry(k.to_string()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typing::Target;
    use arrow_schema::{Field, Schema};
    use serde_json::json;

    fn typed(cols: &[(&str, Vec<Option<&str>>)], decl: serde_json::Value) -> RecordBatch {
        let fields: Vec<Field> = cols.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> =
            cols.iter().map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef).collect();
        let text = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch");
        let decl: Vec<weir_core::dataset::ColumnSpec> = serde_json::from_value(decl).expect("schema");
        let t = Target::resolve(Some(&decl), &text, false).expect("target");
        t.apply(&text).expect("apply").0
    }

    fn run(rules: serde_json::Value, batch: &RecordBatch) -> Vec<Problem> {
        let rules: Rules = serde_json::from_value(rules).expect("rules");
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut q = Quality::new(&rules, &batch.schema(), &names, 0).expect("binds");
        let mut p = vec![None; batch.num_rows()];
        q.check(batch, &mut p).expect("check");
        p
    }

    fn rules_hit(p: &[Problem]) -> Vec<Option<&str>> {
        p.iter().map(|x| x.as_ref().map(|(r, _)| *r)).collect()
    }

    #[test]
    fn row_rules_mark_the_rows_that_break_them() {
        let b = typed(
            &[
                ("id", vec![Some("1"), Some("2"), Some("2"), Some("4"), None, Some("6")]),
                ("price", vec![Some("10.5"), Some("-1"), Some("3"), Some("3"), Some("3"), Some("3")]),
                ("sym", vec![Some("AAPL"), Some("MSFT"), Some("IBM"), Some("ibm"), Some("X"), Some("ZZZ")]),
                ("day", vec![Some("2026-01-01"); 6]),
            ],
            json!([{"name": "id", "type": "int64"}, {"name": "price", "type": "float64"},
                   {"name": "sym", "type": "string"}, {"name": "day", "type": "date"}]),
        );
        let p = run(
            json!({"not_null": ["id"], "ranges": {"price": {"min": 0}, "day": {"max": "2026-06-30"}},
                   "patterns": {"sym": "[A-Z]+"}, "allowed": {"sym": ["AAPL", "MSFT", "IBM", "X"]}, "unique": ["id"]}),
            &b,
        );
        assert_eq!(rules_hit(&p), vec![None, Some("range"), None, Some("pattern"), Some("not_null"), Some("allowed")]);
        let reason = &p[1].as_ref().expect("range").1;
        assert!(reason.contains("\"price\"") && reason.contains("-1") && reason.contains("minimum 0"), "{reason}");
        let dupes = typed(&[("id", vec![Some("1"), Some("1"), Some("2")])], json!([{"name": "id", "type": "int64"}]));
        let p = run(json!({"unique": ["id"]}), &dupes);
        assert_eq!(rules_hit(&p), vec![None, Some("unique"), None]);
        assert!(p[1].as_ref().expect("dup").1.contains("(id) = (1)"));
    }

    #[test]
    fn dataset_rules_and_thresholds_fail_the_input() {
        let b = typed(&[("ts", vec![Some("2026-11-20T00:00:00Z")])], json!([{"name": "ts", "type": "timestamp"}]));
        let rules: Rules =
            serde_json::from_value(json!({"freshness": {"column": "ts", "max_age": "24h"}, "min_rows": 2,
            "max_quarantined_ratio": 0.5}))
            .expect("rules");
        let now = 1_795_000_000_000_000; // 2026-11-18: the data is fresh
        let mut q = Quality::new(&rules, &b.schema(), &["ts".into()], now).expect("binds");
        q.observe_written(&b);
        let report = FileReport { rows_read: 4, rows_written: 1, rows_quarantined: 3, ..Default::default() };
        assert!(q.finish(&report).expect_err("ratio").to_string().contains("75.00%"));
        let report = FileReport { rows_read: 1, rows_written: 1, ..Default::default() };
        assert!(q.finish(&report).expect_err("min rows").to_string().contains("min_rows 2"));
        let late = Quality::new(&rules, &b.schema(), &["ts".into()], now + 10 * 86_400_000_000);
        let mut late = late.expect("binds");
        late.observe_written(&b);
        let report = FileReport { rows_read: 2, rows_written: 2, ..Default::default() };
        assert!(late.finish(&report).expect_err("stale").to_string().contains("freshness"));
    }

    #[test]
    fn rules_naming_missing_columns_or_bad_patterns_are_config_errors() {
        let b = typed(&[("a", vec![Some("1")])], json!([{"name": "a", "type": "int64"}]));
        let bind = |r: serde_json::Value| {
            let rules: Rules = serde_json::from_value(r).expect("rules");
            Quality::new(&rules, &b.schema(), &["a".into()], 0).err().map(|e| e.to_string())
        };
        assert!(bind(json!({"not_null": ["b"]})).expect("missing").contains("\"b\""));
        assert!(bind(json!({"patterns": {"a": "("}})).expect("regex").contains("regular expression"));
        assert!(bind(json!({"ranges": {"a": {"min": "ten"}}})).expect("bound").contains("ten"));
        assert!(bind(json!({"required_columns": ["a", "z"]})).expect("required").contains("z"));
        assert!(bind(json!({"freshness": {"column": "a", "max_age": "1h"}}))
            .expect("type")
            .contains("not a timestamp"));
    }
}
