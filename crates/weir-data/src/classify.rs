//! Personal data in an input's columns, found and labelled (and masked or hashed) before
//! anything is written: the `classify` kind, with the detectors and masks of
//! [`weir_core::dataset::classify`].
//!
//! A column's class is decided once per input from its first chunk, the way its type is
//! inferred. Masking and hashing replace the values in the rows as read, before typing,
//! so no other step, sink or quarantine record ever holds the clear value. Labels travel
//! with the columns: each labelled column carries [`LABEL_KEY`] in its field metadata
//! (and the schema carries them all, as JSON), in the staged file and in every Parquet
//! sink's files, and a later step reading a labelled file keeps its labels.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use weir_core::dataset::classify::{decide, mask, ClassifySpec, Detector, PiiAction, DEFAULT_MIN_RATIO, LABEL_KEY};

use crate::DataError;

/// One labelled column, and what it was decided from: a report entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    pub column: String,
    pub class: String,
    pub action: PiiAction,
    /// `values` (the detectors) or `config` (named in `classify.columns`).
    pub by: String,
    /// Of the first chunk's non-empty values: how many fit the class, and how many there were.
    pub matched: u64,
    pub sampled: u64,
}

/// An input's classification, decided from its first chunk.
pub struct Classifier {
    columns: Vec<Classified>,
    key: Option<Vec<u8>>,
}

/// Each value of a column as text (`None` for null), whatever its type.
fn texts(col: &dyn Array) -> Result<Vec<Option<String>>, DataError> {
    if let Some(s) = col.as_any().downcast_ref::<StringArray>() {
        return Ok(s.iter().map(|v| v.map(str::to_string)).collect());
    }
    let fmt = ArrayFormatter::try_new(col, &FormatOptions::default())?;
    Ok((0..col.len()).map(|i| (!col.is_null(i)).then(|| fmt.value(i).to_string())).collect())
}

impl Classifier {
    /// Decides the columns of an input from its first rows.
    pub fn new(spec: &ClassifySpec, sample: &RecordBatch) -> Result<Classifier, DataError> {
        let detector = Detector::new(spec).map_err(DataError::Config)?;
        let schema = sample.schema();
        if let Some(c) = spec.columns.keys().find(|c| schema.index_of(c).is_err()) {
            return Err(DataError::Config(format!("classify.columns names {c:?}, which the input does not have")));
        }
        let min_ratio = spec.min_ratio.unwrap_or(DEFAULT_MIN_RATIO);
        let mut columns = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            let values = texts(sample.column(i).as_ref())?;
            let non_empty: Vec<&str> = values.iter().flatten().map(|v| v.trim()).filter(|v| !v.is_empty()).collect();
            let decided = match spec.columns.get(field.name()) {
                Some(class) => Some((class.clone(), "config", non_empty.len() as u64)),
                None => {
                    // Counted in the detector's order, which decides between classes a
                    // column fits equally.
                    let mut counts: Vec<(String, u64)> = detector.names().map(|c| (c.to_string(), 0)).collect();
                    for v in &non_empty {
                        for c in detector.classes(v) {
                            if let Some((_, n)) = counts.iter_mut().find(|(k, _)| k == c) {
                                *n += 1;
                            }
                        }
                    }
                    decide(&counts, non_empty.len() as u64, min_ratio).map(|(c, n)| (c, "values", n))
                }
            };
            if let Some((class, by, matched)) = decided {
                columns.push(Classified {
                    column: field.name().clone(),
                    action: spec.action(&class),
                    class,
                    by: by.to_string(),
                    matched,
                    sampled: non_empty.len() as u64,
                });
            }
        }
        let key = if columns.iter().any(|c| c.action == PiiAction::Hash) {
            let r = spec.hash_key.as_ref().ok_or_else(|| DataError::Config("classify: hash needs hash_key".into()))?;
            Some(weir_storage::read_secret(r).map_err(|e| DataError::Config(format!("classify.hash_key: {e}")))?)
        } else {
            None
        };
        Ok(Classifier { columns, key })
    }

    /// What was decided, for the report.
    pub fn columns(&self) -> &[Classified] {
        &self.columns
    }

    /// Column → class.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.columns.iter().map(|c| (c.column.clone(), c.class.clone())).collect()
    }

    /// The rows with masked and hashed columns replaced (as text).
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, DataError> {
        let changing: Vec<&Classified> = self.columns.iter().filter(|c| c.action != PiiAction::Label).collect();
        if changing.is_empty() {
            return Ok(batch.clone());
        }
        let schema = batch.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        for c in changing {
            let Ok(i) = schema.index_of(&c.column) else { continue };
            let values = texts(batch.column(i).as_ref())?;
            let out: StringArray = values
                .iter()
                .map(|v| {
                    v.as_deref().map(|v| match c.action {
                        PiiAction::Hash => self.hash(v),
                        _ => mask(&c.class, v),
                    })
                })
                .collect();
            cols[i] = Arc::new(out);
            fields[i] = Field::new(&c.column, DataType::Utf8, true);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            cols,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?)
    }

    /// HMAC-SHA-256 of a value under the step's key, hex.
    fn hash(&self, value: &str) -> String {
        let key = self.key.as_deref().unwrap_or_default();
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return String::new() };
        mac.update(value.trim().as_bytes());
        weir_storage::hex(&mac.finalize().into_bytes())
    }
}

/// The labels a schema's columns carry.
pub fn labels_of(schema: &Schema) -> BTreeMap<String, String> {
    schema.fields().iter().filter_map(|f| f.metadata().get(LABEL_KEY).map(|l| (f.name().clone(), l.clone()))).collect()
}

/// `schema` with `labels` on its columns (those it has) and, as JSON, on itself.
pub fn with_labels(schema: &SchemaRef, labels: &BTreeMap<String, String>) -> SchemaRef {
    let mine: BTreeMap<&String, &String> = labels.iter().filter(|(c, _)| schema.index_of(c).is_ok()).collect();
    if mine.is_empty() {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match mine.get(f.name()) {
            Some(l) => {
                let mut m = f.metadata().clone();
                m.insert(LABEL_KEY.to_string(), (*l).clone());
                f.as_ref().clone().with_metadata(m)
            }
            None => f.as_ref().clone(),
        })
        .collect();
    let mut meta = schema.metadata().clone();
    meta.insert(LABEL_KEY.to_string(), serde_json::to_string(&mine).unwrap_or_default());
    Arc::new(Schema::new_with_metadata(fields, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::typing::text_batch as batch;

    #[test]
    fn columns_are_classified_from_their_values_and_masked_before_anything_is_written() {
        let b = batch(&[
            ("id", vec![Some("1"), Some("2"), Some("3"), Some("4"), Some("5")]),
            ("mail", vec![Some("ada@example.com"), Some("bob@example.org"), None, Some(""), Some("cy@example.net")]),
            (
                "card",
                vec![
                    Some("4111 1111 1111 1111"),
                    Some("5500 0000 0000 0004"),
                    Some("4012888888881881"),
                    Some("378282246310005"),
                    Some("not a card"),
                ],
            ),
            ("note", vec![Some("call +49 30 1234567"), Some("x"), Some("y"), Some("z"), Some("w")]),
        ]);
        let spec: ClassifySpec =
            serde_json::from_value(serde_json::json!({"actions": {"card": "mask"}})).expect("spec");
        let c = Classifier::new(&spec, &b).expect("classifier");
        let got: Vec<(&str, &str, &str, u64, u64)> = c
            .columns()
            .iter()
            .map(|c| (c.column.as_str(), c.class.as_str(), c.action.as_str(), c.matched, c.sampled))
            .collect();
        assert_eq!(got, vec![("mail", "email", "label", 3, 3), ("card", "card", "mask", 4, 5)]);
        let out = c.apply(&b).expect("apply");
        let cards = out.column(2).as_any().downcast_ref::<StringArray>().expect("text");
        assert_eq!(cards.value(0), "**** **** **** 1111");
        assert_eq!(cards.value(4), "*** * card");
        // Labels go on the schema and come back from it.
        let labelled = with_labels(&out.schema(), &c.labels());
        assert_eq!(labels_of(&labelled), c.labels());
        assert!(labelled.metadata()[LABEL_KEY].contains("email"));
    }

    #[test]
    fn hashing_is_keyed_and_a_named_column_must_exist() {
        std::env::set_var("JOB_TEST_CLASSIFY_KEY", "k1");
        let b = batch(&[("phone", vec![Some("+49 30 1234567"), Some("+1 212 555 0123")])]);
        let spec: ClassifySpec = serde_json::from_value(serde_json::json!({
            "actions": {"phone": "hash"}, "hash_key": {"env": "JOB_TEST_CLASSIFY_KEY"}
        }))
        .expect("spec");
        let out = Classifier::new(&spec, &b).expect("c").apply(&b).expect("apply");
        let h = out.column(0).as_any().downcast_ref::<StringArray>().expect("text").value(0).to_string();
        assert_eq!(h.len(), 64);
        assert!(!h.contains("1234567"));
        std::env::set_var("JOB_TEST_CLASSIFY_KEY", "k2");
        let again = Classifier::new(&spec, &b).expect("c").apply(&b).expect("apply");
        assert_ne!(again.column(0).as_any().downcast_ref::<StringArray>().expect("text").value(0), h);
        let named: ClassifySpec = serde_json::from_value(serde_json::json!({"columns": {"nope": "x"}})).expect("spec");
        let Err(e) = Classifier::new(&named, &b) else { panic!("a missing named column is an error") };
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
