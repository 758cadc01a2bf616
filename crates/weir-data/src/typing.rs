//! The schema an input is written with, and the cast of each chunk into it.
//!
//! Text formats arrive as text columns. The target schema is the declared one (mapped to
//! the input's columns by name, or by position for a headerless file) or one inferred
//! from the first chunk: per column the narrowest of boolean, int64, float64, date,
//! timestamp that every value fits, else string. Each column is then cast with arrow's
//! kernels; a value that does not fit, or a null where the schema forbids one, rejects
//! its row with the column and the value named. Parsing rules are arrow-cast's, for
//! inference and conversion alike, so what inference accepts the cast accepts.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use weir_core::dataset::{ColumnSpec, ColumnType};

use crate::{DataError, Problem};

/// The Arrow type a column type is written as.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        // An offset, not a zone name: zone names need chrono-tz, and UTC is all Weir writes.
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
    }
}

/// A column type's name for an Arrow type, for reports ("string" for anything else).
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// The narrowest type one text value fits.
pub fn infer_value(v: &str) -> ColumnType {
    let v = v.trim();
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        ColumnType::Boolean
    } else if v.parse::<i64>().is_ok() {
        ColumnType::Int64
    } else if is_decimal(v) {
        ColumnType::Float64
    } else if is_date(v) {
        ColumnType::Date
    } else if v.get(..10).is_some_and(is_date) && fits(v, ColumnType::Timestamp) {
        ColumnType::Timestamp
    } else {
        ColumnType::String
    }
}

/// A plain decimal number (not "inf" or "NaN", which Rust's parser also takes: those
/// are text in a data file unless declared).
fn is_decimal(v: &str) -> bool {
    v.bytes().any(|b| b.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && v.parse::<f64>().is_ok()
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10 && b[4] == b'-' && b[7] == b'-' && fits(v, ColumnType::Date)
}

/// Whether arrow's cast takes `v` as `t`.
fn fits(v: &str, t: ColumnType) -> bool {
    let a = StringArray::from(vec![v]);
    cast_with_options(&a, &arrow_type(t), &CastOptions { safe: true, ..Default::default() })
        .map(|c| c.is_valid(0))
        .unwrap_or(false)
}

/// Widens two inferred types to one both fit.
fn widen(a: ColumnType, b: ColumnType) -> ColumnType {
    use ColumnType::*;
    match (a, b) {
        (x, y) if x == y => x,
        (Int64, Float64) | (Float64, Int64) => Float64,
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        _ => String,
    }
}

/// The type of a text column from its non-null values (all null: string).
pub fn infer_column(values: &StringArray) -> ColumnType {
    let mut t: Option<ColumnType> = None;
    for v in values.iter().flatten() {
        let vt = infer_value(v);
        t = Some(match t {
            None => vt,
            Some(prev) => widen(prev, vt),
        });
        if t == Some(ColumnType::String) {
            break;
        }
    }
    t.unwrap_or(ColumnType::String)
}

/// One column of the target schema and where its values come from.
#[derive(Debug, Clone)]
struct TargetColumn {
    source: usize,
    nullable: bool,
}

/// The schema an input is written with, bound to the input's columns.
#[derive(Debug, Clone)]
pub struct Target {
    schema: SchemaRef,
    columns: Vec<TargetColumn>,
    /// Input columns the declared schema did not name.
    pub ignored: Vec<String>,
}

impl Target {
    /// Fixes the target from the declared schema or the first chunk.
    ///
    /// `positional`: the input's names are generated (`column_1`...), so declared columns
    /// bind by position.
    pub fn resolve(
        declared: Option<&[ColumnSpec]>,
        first: &RecordBatch,
        positional: bool,
    ) -> Result<Target, DataError> {
        let input = first.schema();
        let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
        let Some(declared) = declared else {
            let fields: Vec<Field> = input
                .fields()
                .iter()
                .zip(first.columns())
                .map(|(f, col)| {
                    let t = match col.as_any().downcast_ref::<StringArray>() {
                        Some(s) => arrow_type(infer_column(s)),
                        None => f.data_type().clone(),
                    };
                    Field::new(f.name(), t, true)
                })
                .collect();
            let columns = (0..fields.len()).map(|source| TargetColumn { source, nullable: true }).collect();
            return Ok(Target { schema: Arc::new(Schema::new(fields)), columns, ignored: vec![] });
        };
        let mut columns = Vec::with_capacity(declared.len());
        let mut fields = Vec::with_capacity(declared.len());
        for (i, c) in declared.iter().enumerate() {
            let source = if positional {
                (i < names.len()).then_some(i)
            } else {
                names.iter().position(|n| *n == c.name).or_else(|| {
                    let mut ci = names.iter().enumerate().filter(|(_, n)| n.eq_ignore_ascii_case(&c.name));
                    match (ci.next(), ci.next()) {
                        (Some((i, _)), None) => Some(i),
                        _ => None,
                    }
                })
            };
            let Some(source) = source else {
                return Err(DataError::Schema(if positional {
                    format!(
                        "declared column {:?} is column {} but the input has only {} columns",
                        c.name,
                        i + 1,
                        names.len()
                    )
                } else {
                    format!("declared column {:?} is not in the input (its columns: {})", c.name, names.join(", "))
                }));
            };
            let from = input.field(source).data_type();
            let to = arrow_type(c.kind);
            if !arrow_cast::can_cast_types(from, &to) {
                return Err(DataError::Schema(format!(
                    "column {:?} is {from} in the input and cannot become {}",
                    c.name,
                    c.kind.as_str()
                )));
            }
            columns.push(TargetColumn { source, nullable: c.nullable });
            fields.push(Field::new(&c.name, to, c.nullable));
        }
        let ignored = names
            .iter()
            .enumerate()
            .filter(|(i, _)| !columns.iter().any(|c| c.source == *i))
            .map(|(_, n)| n.to_string())
            .collect();
        Ok(Target { schema: Arc::new(Schema::new(fields)), columns, ignored })
    }

    /// Each target column's name and the index of the input column it is read from.
    pub fn sources(&self) -> impl Iterator<Item = (&str, usize)> {
        self.schema.fields().iter().zip(&self.columns).map(|(f, c)| (f.name().as_str(), c.source))
    }

    /// The schema written.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Casts a chunk. Returns the typed batch with every row, and for each row the first
    /// problem found (`None` = fine), as (rule, reason).
    pub fn apply(&self, chunk: &RecordBatch) -> Result<(RecordBatch, Vec<Problem>), DataError> {
        let rows = chunk.num_rows();
        let mut problems: Vec<Problem> = vec![None; rows];
        let mut out: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        let safe = CastOptions { safe: true, ..Default::default() };
        for (c, field) in self.columns.iter().zip(self.schema.fields()) {
            let Some(input) = chunk.columns().get(c.source) else {
                return Err(DataError::Schema(format!(
                    "column {:?} vanished from the input after the first chunk",
                    field.name()
                )));
            };
            let typed = if input.data_type() == field.data_type() {
                input.clone()
            } else {
                cast_with_options(input, field.data_type(), &safe)?
            };
            if typed.null_count() > input.null_count() {
                let shown = ArrayFormatter::try_new(input.as_ref(), &FormatOptions::default())?;
                for (i, p) in problems.iter_mut().enumerate() {
                    if p.is_none() && input.is_valid(i) && typed.is_null(i) {
                        *p = Some((
                            "type",
                            format!(
                                "column {:?}: {:?} is not a {}",
                                field.name(),
                                shown.value(i).to_string(),
                                type_name(field.data_type())
                            ),
                        ));
                    }
                }
            }
            if !c.nullable && typed.null_count() > 0 {
                for (i, p) in problems.iter_mut().enumerate() {
                    if p.is_none() && typed.is_null(i) {
                        *p = Some(("not_null", format!("column {:?} is null but declared not nullable", field.name())));
                    }
                }
            }
            out.push(typed);
        }
        // Nullability is enforced row by row above; the batch itself may still hold the
        // nulls of rows about to be quarantined, so it is built on a nullable schema.
        let loose = Arc::new(Schema::new(
            self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new_with_options(
            loose,
            out,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok((batch, problems))
    }
}

/// Keeps the rows where `keep` is true, and gives the batch `schema` (whose stricter
/// nullability the kept rows satisfy).
pub fn keep_rows(batch: &RecordBatch, keep: &BooleanArray, schema: &SchemaRef) -> Result<RecordBatch, DataError> {
    let kept = arrow_select::filter::filter_record_batch(batch, keep)?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        kept.columns().to_vec(),
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(kept.num_rows())),
    )?)
}

/// One row as a JSON object of displayed values, for the quarantine.
pub fn render_row(batch: &RecordBatch, row: usize) -> String {
    let mut obj = serde_json::Map::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let v = if col.is_null(row) {
            serde_json::Value::Null
        } else {
            match ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()) {
                Ok(fmt) => serde_json::Value::String(fmt.value(row).to_string()),
                Err(_) => serde_json::Value::Null,
            }
        };
        obj.insert(f.name().clone(), v);
    }
    serde_json::Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;

    fn text(cols: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
        let fields: Vec<Field> = cols.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> =
            cols.iter().map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch")
    }

    #[test]
    fn values_and_columns_infer() {
        use ColumnType::*;
        for (v, t) in [
            ("42", Int64),
            ("-7", Int64),
            ("2.5", Float64),
            ("1e3", Float64),
            ("TRUE", Boolean),
            ("2026-11-23", Date),
            ("2026-11-23T07:00:00Z", Timestamp),
            ("2026-11-23 07:00:00.123", Timestamp),
            ("NaN", String),
            ("inf", String),
            ("2026-13-45", String),
            ("abc", String),
            ("Zürich", String),
        ] {
            assert_eq!(infer_value(v), t, "{v}");
        }
        let col = |v: Vec<Option<&str>>| infer_column(&StringArray::from(v));
        assert_eq!(col(vec![Some("1"), None, Some("2.5")]), Float64);
        assert_eq!(col(vec![Some("2026-01-01"), Some("2026-01-01T00:00:00")]), Timestamp);
        assert_eq!(col(vec![Some("1"), Some("x")]), String);
        assert_eq!(col(vec![None, None]), String);
    }

    #[test]
    fn inferred_cast_rejects_what_does_not_fit() {
        let first = text(&[("id", vec![Some("1"), Some("2")]), ("name", vec![Some("a"), None])]);
        let t = Target::resolve(None, &first, false).expect("target");
        assert_eq!(t.schema().field(0).data_type(), &DataType::Int64);
        let later = text(&[("id", vec![Some("3"), Some("x4")]), ("name", vec![Some("c"), Some("d")])]);
        let (batch, problems) = t.apply(&later).expect("apply");
        assert!(problems[0].is_none());
        let (rule, reason) = problems[1].clone().expect("rejected");
        assert_eq!(rule, "type");
        assert!(reason.contains("\"id\"") && reason.contains("x4") && reason.contains("int64"), "{reason}");
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 3);
    }

    #[test]
    fn declared_schema_binds_by_name_or_position_and_names_misfits() {
        let first = text(&[("ID", vec![Some("1")]), ("extra", vec![Some("x")]), ("when", vec![None])]);
        let decl = vec![
            ColumnSpec { name: "when".into(), kind: ColumnType::Timestamp, nullable: false },
            ColumnSpec { name: "id".into(), kind: ColumnType::Int64, nullable: true },
        ];
        let t = Target::resolve(Some(&decl), &first, false).expect("binds");
        assert_eq!(t.ignored, vec!["extra"]);
        let (_, problems) = t.apply(&first).expect("apply");
        assert_eq!(problems[0].as_ref().map(|p| p.0), Some("not_null"));

        let missing = vec![ColumnSpec { name: "price".into(), kind: ColumnType::Float64, nullable: true }];
        let e = Target::resolve(Some(&missing), &first, false).expect_err("missing");
        assert!(e.to_string().contains("\"price\"") && e.to_string().contains("ID, extra, when"), "{e}");

        let t = Target::resolve(Some(&decl), &first, true).expect("positional");
        assert_eq!(t.schema().field(0).name(), "when");
        let (_, problems) = t.apply(&first).expect("apply");
        assert_eq!(problems[0].as_ref().map(|p| p.0), Some("type"), "\"1\" is not a timestamp");
    }

    #[test]
    fn rows_render_as_json() {
        let b = text(&[("a", vec![Some("x\"y")]), ("b", vec![None])]);
        assert_eq!(render_row(&b, 0), r#"{"a":"x\"y","b":null}"#);
    }
}
