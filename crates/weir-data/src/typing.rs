//! The schema an input is written with, and the cast of each chunk into it.
//!
//! Two stages. [`InputSchema`] types the input on its own: text formats arrive as text
//! columns, and each gets the declared type (bound by name, or by position for a
//! headerless file) or one inferred from the first chunk the way pyarrow's CSV reader
//! infers it — the first of int64, boolean, float64, date, timestamp that every value
//! fits, null markers aside, else string. [`Target`] then binds those columns to a
//! [`WritePlan`] (the sinks' agreed schema, see `weir_core::dataset::contract`) and casts
//! each chunk with arrow's kernels: a value that does not fit rejects its row, becomes
//! null or refuses the input, as the sinks' contracts say; a null marker is a null. The
//! parsers are arrow-cast's, for inference and conversion alike, so what inference
//! accepts the cast accepts.
//!
//! Types of typed inputs (Parquet) are normalized to Weir's column types: integers to
//! int64, floats and decimals to float64, any timestamp to µs UTC, anything else to text.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_cast::parse::Parser;
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use weir_core::dataset::contract::{InputColumn, Misfit, WritePlan};
use weir_core::dataset::schema::{Schema, EXACT_FLOAT_INT};
use weir_core::dataset::{ColumnSpec, ColumnType, NULL_MARKERS};

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

/// The column type an Arrow type is normalized to.
pub fn column_type(t: &DataType) -> ColumnType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnType::Int64,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => ColumnType::Float64,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Date32 | DataType::Date64 => ColumnType::Date,
        DataType::Timestamp(_, _) => ColumnType::Timestamp,
        DataType::Dictionary(_, v) => column_type(v),
        _ => ColumnType::String,
    }
}

/// The Arrow schema of a sink's schema.
pub fn arrow_schema(s: &Schema) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        s.columns.iter().map(|c| Field::new(&c.name, arrow_type(c.kind), c.nullable)).collect::<Vec<_>>(),
    ))
}

/// A column type's name for an Arrow type, for reports.
pub fn type_name(t: &DataType) -> String {
    column_type(t).as_str().to_string()
}

/// Type candidates, in pyarrow's order of preference.
const INT: u8 = 1;
const BOOL: u8 = 2;
const FLOAT: u8 = 4;
const DATE: u8 = 8;
const TIMESTAMP: u8 = 16;
const ORDER: [(u8, ColumnType); 5] = [
    (INT, ColumnType::Int64),
    (BOOL, ColumnType::Boolean),
    (FLOAT, ColumnType::Float64),
    (DATE, ColumnType::Date),
    (TIMESTAMP, ColumnType::Timestamp),
];

/// The types one text value fits, as a set of candidates.
fn fits(v: &str) -> u8 {
    let t = v.trim_ascii();
    if t.is_empty() {
        return 0;
    }
    let b = t.as_bytes();
    // pyarrow reads a leading `+` as a float, not an integer.
    if b[0] != b'+' && Int64Type::parse(t).is_some() {
        return INT | FLOAT | if t == "0" || t == "1" { BOOL } else { 0 };
    }
    if matches!(t, "true" | "True" | "TRUE" | "false" | "False" | "FALSE") {
        return BOOL;
    }
    // A number has digits, or is an infinity (NaN is a null marker, or text).
    let unsigned = t.trim_start_matches(['+', '-']);
    let infinite = unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity");
    if (infinite || b.iter().any(u8::is_ascii_digit)) && Float64Type::parse(t).is_some() {
        return FLOAT;
    }
    // Dates and timestamps start with an ISO date (pyarrow reads no other layout).
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return 0;
    }
    if b.len() == 10 {
        return if Date32Type::parse(t).is_some() { DATE | TIMESTAMP } else { 0 };
    }
    // The cast to timestamps does not trim, so neither does its inference.
    match UTC.as_ref() {
        Some(utc) if v.len() == t.len() && arrow_cast::parse::string_to_datetime(utc, t).is_ok() => TIMESTAMP,
        _ => 0,
    }
}

/// UTC as arrow's time zone type (always parses; `None` would only skip timestamp inference).
static UTC: std::sync::LazyLock<Option<arrow_array::timezone::Tz>> = std::sync::LazyLock::new(|| "+00:00".parse().ok());

/// The narrowest type one text value fits on its own.
pub fn infer_value(v: &str) -> ColumnType {
    let m = fits(v);
    ORDER.iter().find(|(bit, _)| m & bit != 0).map_or(ColumnType::String, |(_, t)| *t)
}

/// The type of a text column from its values: the first candidate every value that is
/// not null (or a null marker in `nulls`) fits; string when none, or when all are null.
pub fn infer_column(values: &StringArray, nulls: &Nulls) -> ColumnType {
    let mut mask = INT | BOOL | FLOAT | DATE | TIMESTAMP;
    let mut any = false;
    for v in values.iter().flatten() {
        if nulls.is_marker(v) {
            continue;
        }
        any = true;
        mask &= fits(v);
        if mask == 0 {
            break;
        }
    }
    if !any {
        return ColumnType::String;
    }
    ORDER.iter().find(|(bit, _)| mask & bit != 0).map_or(ColumnType::String, |(_, t)| *t)
}

/// The text values read as null in one column.
#[derive(Debug, Clone)]
pub struct Nulls {
    markers: Arc<[String]>,
    /// Whether they are null in a text column too (a list the step gave), or only in
    /// columns of other types (the defaults).
    in_text: bool,
}

impl Nulls {
    /// pyarrow's defaults, null in every column that is not text.
    pub fn defaults() -> Nulls {
        Nulls { markers: NULL_MARKERS.iter().map(|s| s.to_string()).collect(), in_text: false }
    }

    /// A list the step gave: null in every column, text included.
    pub fn given(values: &[String]) -> Nulls {
        Nulls { markers: values.iter().cloned().collect(), in_text: true }
    }

    /// The column's list, else the step's, else the defaults.
    pub fn resolve(column: Option<&[String]>, step: Option<&[String]>) -> Nulls {
        column.or(step).map_or_else(Nulls::defaults, Nulls::given)
    }

    pub fn is_marker(&self, v: &str) -> bool {
        self.markers.iter().any(|m| m == v)
    }
}

/// One column of the input, typed on its own.
#[derive(Debug, Clone)]
pub struct InputField {
    pub name: String,
    pub kind: ColumnType,
    pub nullable: bool,
    /// Index of the column in the chunks as read.
    pub source: usize,
    pub nulls: Nulls,
}

/// The input's columns, typed as declared or inferred from its first chunk.
#[derive(Debug, Clone)]
pub struct InputSchema {
    pub fields: Vec<InputField>,
    /// Input columns the declared schema did not name.
    pub ignored: Vec<String>,
}

impl InputSchema {
    /// Types the input from the declared schema or its first chunk.
    ///
    /// `positional`: the input's names are generated (`column_1`...), so declared columns
    /// bind by position. `step_nulls`: the step's `format.null_values`, if given.
    pub fn resolve(
        declared: Option<&[ColumnSpec]>,
        first: &RecordBatch,
        positional: bool,
        step_nulls: Option<&[String]>,
    ) -> Result<InputSchema, DataError> {
        let input = first.schema();
        let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
        let Some(declared) = declared else {
            let nulls = Nulls::resolve(None, step_nulls);
            let fields = input
                .fields()
                .iter()
                .zip(first.columns())
                .enumerate()
                .map(|(source, (f, col))| {
                    let kind = match col.as_any().downcast_ref::<StringArray>() {
                        Some(s) => infer_column(s, &nulls),
                        None => column_type(f.data_type()),
                    };
                    InputField { name: f.name().clone(), kind, nullable: true, source, nulls: nulls.clone() }
                })
                .collect();
            return Ok(InputSchema { fields, ignored: vec![] });
        };
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
            fields.push(InputField {
                name: c.name.clone(),
                kind: c.kind,
                nullable: c.nullable,
                source,
                nulls: Nulls::resolve(c.null_values.as_deref(), step_nulls),
            });
        }
        let ignored = names
            .iter()
            .enumerate()
            .filter(|(i, _)| !fields.iter().any(|c| c.source == *i))
            .map(|(_, n)| n.to_string())
            .collect();
        Ok(InputSchema { fields, ignored })
    }

    /// The columns as the schema planner sees them.
    pub fn columns(&self) -> Vec<InputColumn> {
        self.fields.iter().map(|f| InputColumn { name: f.name.clone(), kind: f.kind, nullable: f.nullable }).collect()
    }
}

/// One column of the target schema and how its values are made.
#[derive(Debug, Clone)]
struct TargetColumn {
    /// Index of the input column (as read) holding its values; `None`: all null.
    source: Option<usize>,
    nullable: bool,
    misfit: Misfit,
    misfit_by: String,
    nulls: Nulls,
    /// Values must also fit float64 exactly (a sink holds this int64 column as float64).
    exact_float: bool,
}

/// The schema an input is written with, bound to the input's columns.
#[derive(Debug, Clone)]
pub struct Target {
    schema: SchemaRef,
    columns: Vec<TargetColumn>,
    /// Input columns (as read) whose non-null values quarantine their row, and why.
    present: Vec<(usize, Nulls, String)>,
    /// Input columns the declared schema did not name.
    pub ignored: Vec<String>,
}

/// Values a `discard_value` contract turned to null, per column.
pub type Discarded = BTreeMap<String, u64>;

impl Target {
    /// The target of an input with no sink to reconcile with: its own columns.
    pub fn resolve(
        declared: Option<&[ColumnSpec]>,
        first: &RecordBatch,
        positional: bool,
    ) -> Result<Target, DataError> {
        let input = InputSchema::resolve(declared, first, positional, None)?;
        Ok(Target::new(&input, &WritePlan::of_input(&input.columns())))
    }

    /// Binds a write plan (made from `input.columns()`) to the input's columns.
    pub fn new(input: &InputSchema, plan: &WritePlan) -> Target {
        let mut fields = Vec::with_capacity(plan.columns.len());
        let mut columns = Vec::with_capacity(plan.columns.len());
        for w in &plan.columns {
            let from = w.input.and_then(|i| input.fields.get(i));
            fields.push(Field::new(&w.name, arrow_type(w.kind), w.nullable));
            columns.push(TargetColumn {
                source: from.map(|f| f.source),
                nullable: w.nullable,
                misfit: w.misfit,
                misfit_by: w.misfit_by.clone(),
                nulls: from.map_or_else(Nulls::defaults, |f| f.nulls.clone()),
                exact_float: w.kind == ColumnType::Int64 && w.also.contains(&ColumnType::Float64),
            });
        }
        let present = plan
            .quarantine_if_present
            .iter()
            .filter_map(|(i, why)| input.fields.get(*i).map(|f| (f.source, f.nulls.clone(), why.clone())))
            .collect();
        Target { schema: Arc::new(ArrowSchema::new(fields)), columns, present, ignored: input.ignored.clone() }
    }

    /// Each target column's name and the index of the input column it is read from.
    pub fn sources(&self) -> impl Iterator<Item = (&str, usize)> {
        self.schema.fields().iter().zip(&self.columns).filter_map(|(f, c)| c.source.map(|s| (f.name().as_str(), s)))
    }

    /// The schema written.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Casts a chunk. Returns the typed batch with every row, and for each row the first
    /// problem found (`None` = fine), as (rule, reason).
    pub fn apply(&self, chunk: &RecordBatch) -> Result<(RecordBatch, Vec<Problem>), DataError> {
        self.apply_counting(chunk, &mut Discarded::new())
    }

    /// As [`Target::apply`], counting the values a `discard_value` contract made null.
    pub fn apply_counting(
        &self,
        chunk: &RecordBatch,
        discarded: &mut Discarded,
    ) -> Result<(RecordBatch, Vec<Problem>), DataError> {
        let rows = chunk.num_rows();
        let mut problems: Vec<Problem> = vec![None; rows];
        let mut out: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (c, field) in self.columns.iter().zip(self.schema.fields()) {
            let Some(source) = c.source else {
                out.push(new_null_array(field.data_type(), rows));
                continue;
            };
            let Some(input) = chunk.columns().get(source) else {
                return Err(DataError::Schema(format!(
                    "column {:?} vanished from the input after the first chunk",
                    field.name()
                )));
            };
            let input = &as_text_if_string(input)?;
            let mut typed = cast_to(input, field.data_type())?;
            let text = input.as_any().downcast_ref::<StringArray>();
            // Values that did not make it through the cast (or that a text marker made
            // NaN) are nulls when they are null markers, misfits otherwise. A list the step
            // or the column gave is looked up for every value, whatever the type.
            let text_markers = c.nulls.in_text && text.is_some();
            let mut misfits: Vec<usize> = Vec::new();
            let mut to_null: Vec<usize> = Vec::new();
            if typed.null_count() > input.null_count() || has_nan(&typed) || text_markers {
                for i in 0..rows {
                    if !input.is_valid(i) {
                        continue;
                    }
                    let failed = typed.is_null(i);
                    if !(failed || text_markers || is_nan_at(&typed, i)) {
                        continue;
                    }
                    if text.is_some_and(|t| c.nulls.is_marker(t.value(i))) {
                        to_null.push(i);
                    } else if failed {
                        misfits.push(i);
                    }
                }
            }
            misfits.extend(lossy(input, &typed, c.exact_float)?);
            misfits.sort_unstable();
            misfits.dedup();
            if !misfits.is_empty() {
                let shown = ArrayFormatter::try_new(input.as_ref(), &FormatOptions::default())?;
                let what = |i: usize| {
                    format!(
                        "column {:?}: {:?} is not a {}",
                        field.name(),
                        shown.value(i).to_string(),
                        type_name(field.data_type())
                    )
                };
                match c.misfit {
                    Misfit::Refuse => {
                        return Err(DataError::Schema(format!(
                            "{}, and {} refuses values that do not fit",
                            what(misfits[0]),
                            c.misfit_by
                        )))
                    }
                    Misfit::Quarantine => {
                        for &i in &misfits {
                            if problems[i].is_none() {
                                problems[i] = Some(("type", what(i)));
                            }
                        }
                    }
                    Misfit::Discard => {
                        *discarded.entry(field.name().clone()).or_default() += misfits.len() as u64;
                    }
                }
                to_null.extend(&misfits);
            }
            if !to_null.is_empty() {
                typed = null_at(&typed, &to_null)?;
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
        for (source, nulls, why) in &self.present {
            let Some(col) = chunk.columns().get(*source) else { continue };
            let text = col.as_any().downcast_ref::<StringArray>();
            for (i, p) in problems.iter_mut().enumerate() {
                if p.is_none() && col.is_valid(i) && !text.is_some_and(|t| nulls.is_marker(t.value(i))) {
                    *p = Some(("schema", why.clone()));
                }
            }
        }
        // Nullability is enforced row by row above; the batch itself may still hold the
        // nulls of rows about to be quarantined, so it is built on a nullable schema.
        let loose = Arc::new(ArrowSchema::new(
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

fn has_nan(a: &ArrayRef) -> bool {
    a.as_primitive_opt::<Float64Type>().is_some_and(|f| f.values().iter().any(|v| v.is_nan()))
}

fn is_nan_at(a: &ArrayRef, i: usize) -> bool {
    a.as_primitive_opt::<Float64Type>().is_some_and(|f| f.value(i).is_nan())
}

/// Any string encoding (large, view, dictionary) as plain text, so null markers and
/// parsing treat them alike.
fn as_text_if_string(a: &ArrayRef) -> Result<ArrayRef, DataError> {
    let stringy = match a.data_type() {
        DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        _ => false,
    };
    Ok(if stringy { cast_with_options(a, &DataType::Utf8, &CastOptions::default())? } else { a.clone() })
}

/// `a` cast to `to`, safely (a value that does not fit becomes null). A zoned timestamp
/// becomes a date in UTC (arrow would take its own zone, and could not name one like
/// `UTC` without chrono-tz).
fn cast_to(a: &ArrayRef, to: &DataType) -> Result<ArrayRef, DataError> {
    let safe = CastOptions { safe: true, ..Default::default() };
    if a.data_type() == to {
        return Ok(a.clone());
    }
    if matches!((a.data_type(), to), (DataType::Timestamp(_, _), DataType::Date32)) {
        let utc = cast_with_options(a, &arrow_type(ColumnType::Timestamp), &safe)?;
        return Ok(cast_with_options(&utc, to, &safe)?);
    }
    Ok(cast_with_options(a, to, &safe)?)
}

/// The rows whose typed value lost something against a typed input: a fraction or an
/// out-of-range value made an integer (from a float or a decimal), a time of day dropped
/// by a date, an integer too large for float64 to hold exactly (made a float64, or, with
/// `exact_float`, kept an int64 a sink holds as float64).
fn lossy(input: &ArrayRef, typed: &ArrayRef, exact_float: bool) -> Result<Vec<usize>, DataError> {
    let mut out = Vec::new();
    let exact = |v: i64| v.unsigned_abs() <= EXACT_FLOAT_INT as u64;
    match (input.data_type(), typed.data_type()) {
        (
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..),
            DataType::Int64,
        ) => {
            let f = cast_with_options(input, &DataType::Float64, &CastOptions::default())?;
            let (f, t) = (f.as_primitive::<Float64Type>(), typed.as_primitive::<Int64Type>());
            out.extend((0..f.len()).filter(|&i| f.is_valid(i) && t.is_valid(i) && t.value(i) as f64 != f.value(i)));
        }
        (t, DataType::Float64) if t.is_integer() => {
            let n = cast_with_options(input, &DataType::Int64, &CastOptions { safe: true, ..Default::default() })?;
            let n = n.as_primitive::<Int64Type>();
            // A UInt64 beyond int64 is null here: too large as well.
            out.extend((0..n.len()).filter(|&i| input.is_valid(i) && (n.is_null(i) || !exact(n.value(i)))));
        }
        (DataType::Timestamp(_, _), DataType::Date32) => {
            let us = cast_with_options(input, &arrow_type(ColumnType::Timestamp), &CastOptions::default())?;
            let us = us.as_primitive::<TimestampMicrosecondType>();
            out.extend((0..us.len()).filter(|&i| us.is_valid(i) && us.value(i).rem_euclid(86_400_000_000) != 0));
        }
        _ => {}
    }
    if exact_float {
        if let Some(t) = typed.as_primitive_opt::<Int64Type>() {
            out.extend((0..t.len()).filter(|&i| t.is_valid(i) && !exact(t.value(i))));
        }
    }
    Ok(out)
}

/// `a` with the values at `rows` made null.
fn null_at(a: &ArrayRef, rows: &[usize]) -> Result<ArrayRef, DataError> {
    let mut mask = vec![false; a.len()];
    for &i in rows {
        mask[i] = true;
    }
    Ok(arrow_select::nullif::nullif(a, &BooleanArray::from(mask))?)
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

/// A batch of the written schema as one sink holds it: its columns (by name), each cast
/// to the sink's type where it is wider (a lossless coercion, checked when typing).
pub fn project(batch: &RecordBatch, to: &SchemaRef) -> Result<RecordBatch, DataError> {
    if batch.schema().fields() == to.fields() {
        return Ok(batch.clone());
    }
    let from = batch.schema();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(to.fields().len());
    for f in to.fields() {
        let col = match from.index_of(f.name()) {
            Ok(i) => batch.column(i).clone(),
            Err(_) => new_null_array(f.data_type(), batch.num_rows()),
        };
        cols.push(if col.data_type() == f.data_type() {
            col
        } else {
            cast_with_options(&col, f.data_type(), &CastOptions::default())?
        });
    }
    Ok(RecordBatch::try_new_with_options(
        to.clone(),
        cols,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
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

/// A batch of text columns, for tests.
#[cfg(test)]
pub(crate) fn text_batch(cols: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
    let fields: Vec<Field> = cols.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, true)).collect();
    let arrays: Vec<ArrayRef> = cols.iter().map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef).collect();
    RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays).expect("batch")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use weir_core::dataset::contract::{ColumnPolicy, SchemaContract, SinkView, TypePolicy};

    use crate::typing::text_batch as text;

    #[test]
    fn values_and_columns_infer_as_pyarrow_infers_them() {
        use ColumnType::*;
        for (v, t) in [
            ("42", Int64),
            ("-7", Int64),
            (" 42", Int64),
            ("+5", Float64),
            ("2.5", Float64),
            ("1e3", Float64),
            ("inf", Float64),
            ("-Infinity", Float64),
            ("99999999999999999999", Float64),
            ("TRUE", Boolean),
            ("tRUE", String),
            ("yes", String),
            ("2026-11-23", Date),
            ("2026-11-23T07:00:00Z", Timestamp),
            ("2026-11-23 07:00:00.123", Timestamp),
            // pyarrow reads a time without seconds; arrow's cast does not, so Weir keeps it as text.
            ("2026-11-23 07:00", String),
            ("2026-13-45", String),
            ("2026-1-5", String),
            ("0x1F", String),
            ("abc", String),
            ("Zürich", String),
        ] {
            assert_eq!(infer_value(v), t, "{v}");
        }
        let d = Nulls::defaults();
        let col = |v: Vec<Option<&str>>| infer_column(&StringArray::from(v), &d);
        assert_eq!(col(vec![Some("1"), None, Some("2.5")]), Float64);
        assert_eq!(col(vec![Some("1.5"), Some("NA"), Some("N/A"), Some("nan"), Some("#N/A")]), Float64);
        assert_eq!(col(vec![Some("2026-01-01"), Some("2026-01-01T00:00:00")]), Timestamp);
        assert_eq!(col(vec![Some("true"), Some("1"), Some("0")]), Boolean);
        assert_eq!(col(vec![Some("0"), Some("1")]), Int64);
        assert_eq!(col(vec![Some("1"), Some("x")]), String);
        assert_eq!(col(vec![None, None]), String);
        assert_eq!(col(vec![Some("NA"), Some("NaN")]), String, "all null: text");
    }

    #[test]
    fn null_markers_are_null_in_typed_columns_and_text_in_text_columns() {
        let first = text(&[
            ("amount", vec![Some("1.5"), Some("NA"), Some("NaN"), Some("-nan"), Some("2")]),
            ("country", vec![Some("NA"), Some("DE"), Some("FR"), None, Some("N/A")]),
        ]);
        let t = Target::resolve(None, &first, false).expect("target");
        assert_eq!(t.schema().field(0).data_type(), &DataType::Float64);
        let (batch, problems) = t.apply(&first).expect("apply");
        assert!(problems.iter().all(Option::is_none), "{problems:?}");
        let amount = batch.column(0).as_primitive::<Float64Type>();
        assert_eq!(amount.iter().collect::<Vec<_>>(), vec![Some(1.5), None, None, None, Some(2.0)]);
        let country = batch.column(1).as_string::<i32>();
        assert_eq!(country.iter().collect::<Vec<_>>(), vec![Some("NA"), Some("DE"), Some("FR"), None, Some("N/A")]);
        // A list the step gives is null in text too, and replaces the defaults.
        let input = InputSchema::resolve(None, &first, false, Some(&["NA".to_string()])).expect("input");
        let t = Target::new(&input, &WritePlan::of_input(&input.columns()));
        assert_eq!(t.schema().field(0).data_type(), &DataType::Utf8, "NaN is text now: the column is text");
        let (batch, _) = t.apply(&first).expect("apply");
        assert_eq!(
            batch.column(1).as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![None, Some("DE"), Some("FR"), None, Some("N/A")]
        );
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

    fn against(first: &RecordBatch, sink: &Schema, columns: ColumnPolicy, data_type: TypePolicy) -> Target {
        let input = InputSchema::resolve(None, first, false, None).expect("input");
        let view = SinkView {
            name: "parquet /lake",
            current: Some(sink),
            contract: SchemaContract { columns, data_type },
            partition_by: None,
        };
        Target::new(&input, &WritePlan::for_sinks(&[view], &input.columns()).expect("plan"))
    }

    #[test]
    fn a_dataset_types_the_input_and_its_contract_decides_misfits() {
        let ds = Schema {
            columns: vec![
                weir_core::dataset::schema::Column { name: "id".into(), kind: ColumnType::Int64, nullable: true },
                weir_core::dataset::schema::Column { name: "amount".into(), kind: ColumnType::Float64, nullable: true },
            ],
            partition: None,
        };
        let day3 = text(&[
            ("id", vec![Some("1"), Some("2"), Some("3")]),
            ("amount", vec![Some("5"), Some("x5"), Some("NA")]),
            ("note", vec![None, Some("hi"), None]),
        ]);
        let t = against(&day3, &ds, ColumnPolicy::Quarantine, TypePolicy::Quarantine);
        assert_eq!(t.schema().fields().len(), 2, "note is not written");
        let (batch, problems) = t.apply(&day3).expect("apply");
        assert_eq!(
            batch.column(1).as_primitive::<Float64Type>().iter().collect::<Vec<_>>(),
            vec![Some(5.0), None, None]
        );
        assert_eq!(problems[0], None);
        assert_eq!(
            problems[1].as_ref().map(|p| (p.0, p.1.as_str())),
            Some(("type", "column \"amount\": \"x5\" is not a float64"))
        );
        assert!(problems[2].is_none(), "NA is a null");
        // With the type problem fixed, the new column's value quarantines the row.
        let ok = text(&[("id", vec![Some("2")]), ("amount", vec![Some("1")]), ("note", vec![Some("hi")])]);
        let (_, problems) = t.apply(&ok).expect("apply");
        assert_eq!(problems[0].as_ref().map(|p| p.0), Some("schema"));

        let t = against(&day3, &ds, ColumnPolicy::DiscardValue, TypePolicy::DiscardValue);
        let mut discarded = Discarded::new();
        let (_, problems) = t.apply_counting(&day3, &mut discarded).expect("apply");
        assert!(problems.iter().all(Option::is_none));
        assert_eq!(discarded.get("amount"), Some(&1));

        let t = against(&day3, &ds, ColumnPolicy::Evolve, TypePolicy::Freeze);
        let e = t.apply(&day3).expect_err("refused");
        assert!(e.to_string().contains("\"x5\" is not a float64") && e.to_string().contains("freeze"), "{e}");

        let t = against(&day3, &ds, ColumnPolicy::Evolve, TypePolicy::Widen);
        assert_eq!(t.schema().field(1).data_type(), &DataType::Utf8, "widened to text");
        assert_eq!(t.schema().field(2).name(), "note", "evolved");
    }

    #[test]
    fn typed_inputs_coerce_only_without_loss() {
        use arrow_array::{Float64Array, TimestampMicrosecondArray};
        let batch = RecordBatch::try_from_iter(vec![
            ("n", Arc::new(Float64Array::from(vec![Some(5.0), Some(5.5), None])) as ArrayRef),
            ("t", Arc::new(TimestampMicrosecondArray::from(vec![Some(0), Some(1), Some(86_400_000_000)])) as ArrayRef),
        ])
        .expect("batch");
        let ds = Schema {
            columns: vec![
                weir_core::dataset::schema::Column { name: "n".into(), kind: ColumnType::Int64, nullable: true },
                weir_core::dataset::schema::Column { name: "t".into(), kind: ColumnType::Date, nullable: true },
            ],
            partition: None,
        };
        let t = against(&batch, &ds, ColumnPolicy::Evolve, TypePolicy::Quarantine);
        let (typed, problems) = t.apply(&batch).expect("apply");
        assert_eq!(
            problems.iter().map(|p| p.as_ref().map(|p| p.0)).collect::<Vec<_>>(),
            vec![None, Some("type"), None]
        );
        assert_eq!(typed.column(0).as_primitive::<Int64Type>().value(0), 5);
        assert_eq!(typed.column(1).as_primitive::<Date32Type>().value(2), 1);
    }

    /// One text column `c` declared as `kind` with its own null marker, typed.
    fn with_own_nulls(values: &[Option<&str>], kind: ColumnType, marker: &str) -> RecordBatch {
        let b = text(&[("c", values.to_vec())]);
        let decl =
            vec![ColumnSpec { name: "c".into(), kind, nullable: true, null_values: Some(vec![marker.to_string()]) }];
        Target::resolve(Some(&decl), &b, false).expect("binds").apply(&b).expect("apply").0
    }

    fn one_column(name: &str, kind: ColumnType) -> Schema {
        Schema {
            columns: vec![weir_core::dataset::schema::Column { name: name.into(), kind, nullable: true }],
            partition: None,
        }
    }

    #[test]
    fn decimals_large_integers_and_zoned_timestamps_coerce_without_loss_or_not_at_all() {
        use arrow_array::{Decimal128Array, Int64Array, TimestampMicrosecondArray};
        let dec = Decimal128Array::from(vec![Some(550), Some(600)]).with_precision_and_scale(10, 2).expect("decimal");
        let b = RecordBatch::try_from_iter(vec![("n", Arc::new(dec) as ArrayRef)]).expect("batch");
        let t = against(&b, &one_column("n", ColumnType::Int64), ColumnPolicy::Evolve, TypePolicy::Quarantine);
        let (typed, problems) = t.apply(&b).expect("apply");
        assert_eq!(
            problems.iter().map(|p| p.as_ref().map(|p| p.0)).collect::<Vec<_>>(),
            vec![Some("type"), None],
            "5.50 is not an int64"
        );
        assert_eq!(typed.column(0).as_primitive::<Int64Type>().value(1), 6);

        let big = Int64Array::from(vec![Some(1 << 53), Some((1 << 53) + 1)]);
        let b = RecordBatch::try_from_iter(vec![("n", Arc::new(big) as ArrayRef)]).expect("batch");
        let t = against(&b, &one_column("n", ColumnType::Float64), ColumnPolicy::Evolve, TypePolicy::Quarantine);
        let (_, problems) = t.apply(&b).expect("apply");
        assert_eq!(
            problems.iter().map(|p| p.as_ref().map(|p| p.0)).collect::<Vec<_>>(),
            vec![None, Some("type")],
            "2^53+1 is not exact in float64"
        );

        // Midnight UTC in a -05:00 column is that UTC day, not the day before.
        let ts = TimestampMicrosecondArray::from(vec![Some(20_454 * 86_400_000_000)]).with_timezone("-05:00");
        let b = RecordBatch::try_from_iter(vec![("d", Arc::new(ts) as ArrayRef)]).expect("batch");
        let t = against(&b, &one_column("d", ColumnType::Date), ColumnPolicy::Evolve, TypePolicy::Quarantine);
        let (typed, problems) = t.apply(&b).expect("apply");
        assert!(problems[0].is_none(), "{problems:?}");
        assert_eq!(typed.column(0).as_primitive::<Date32Type>().value(0), 20_454);
    }

    #[test]
    fn markers_apply_to_every_string_encoding_and_a_given_list_to_values_that_parse() {
        use arrow_array::LargeStringArray;
        let large = LargeStringArray::from(vec![Some("1.5"), Some("NA")]);
        let b = RecordBatch::try_from_iter(vec![("amount", Arc::new(large) as ArrayRef)]).expect("batch");
        let t = against(&b, &one_column("amount", ColumnType::Float64), ColumnPolicy::Evolve, TypePolicy::Freeze);
        let (typed, problems) = t.apply(&b).expect("NA is a null, not a misfit");
        assert!(problems.iter().all(Option::is_none));
        assert!(typed.column(0).is_null(1));

        let typed = with_own_nulls(&[Some("7"), Some("-1")], ColumnType::Int64, "-1");
        assert_eq!(typed.column(0).as_primitive::<Int64Type>().iter().collect::<Vec<_>>(), vec![Some(7), None]);
    }

    #[test]
    fn declared_schema_binds_by_name_or_position_and_names_misfits() {
        let first = text(&[("ID", vec![Some("1")]), ("extra", vec![Some("x")]), ("when", vec![None])]);
        let decl = vec![
            ColumnSpec { name: "when".into(), kind: ColumnType::Timestamp, nullable: false, null_values: None },
            ColumnSpec { name: "id".into(), kind: ColumnType::Int64, nullable: true, null_values: None },
        ];
        let t = Target::resolve(Some(&decl), &first, false).expect("binds");
        assert_eq!(t.ignored, vec!["extra"]);
        let (_, problems) = t.apply(&first).expect("apply");
        assert_eq!(problems[0].as_ref().map(|p| p.0), Some("not_null"));

        let missing =
            vec![ColumnSpec { name: "price".into(), kind: ColumnType::Float64, nullable: true, null_values: None }];
        let e = Target::resolve(Some(&missing), &first, false).expect_err("missing");
        assert!(e.to_string().contains("\"price\"") && e.to_string().contains("ID, extra, when"), "{e}");

        let t = Target::resolve(Some(&decl), &first, true).expect("positional");
        assert_eq!(t.schema().field(0).name(), "when");
        let (_, problems) = t.apply(&first).expect("apply");
        assert_eq!(problems[0].as_ref().map(|p| p.0), Some("type"), "\"1\" is not a timestamp");

        // A column's own null markers apply to it whatever its type.
        let typed = with_own_nulls(&[Some("-"), Some("A")], ColumnType::String, "-");
        assert_eq!(typed.column(0).as_string::<i32>().iter().collect::<Vec<_>>(), vec![None, Some("A")]);
    }

    #[test]
    fn rows_render_as_json() {
        let b = text(&[("a", vec![Some("x\"y")]), ("b", vec![None])]);
        assert_eq!(render_row(&b, 0), r#"{"a":"x\"y","b":null}"#);
    }
}
