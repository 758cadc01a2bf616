//! A sink's schema and its history: the columns a dataset or table holds, how a value of
//! one type becomes another without loss, and the record of versions kept with the sink
//! (a Parquet dataset's `_weir/schema.json`, a PostgreSQL table's `weir_sink_schemas`).
//!
//! Pure data; the contracts that decide how an input changes a schema are in
//! [`super::contract`], the sinks that store it in `weir-data`.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// The column types Weir writes; each maps to one Arrow, Parquet and PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Boolean,
    /// A calendar date (`2026-11-23`).
    Date,
    /// A point in time, stored in microseconds UTC (`2026-11-23T07:00:00Z`; no zone = UTC).
    Timestamp,
}

impl ColumnType {
    /// The name used in configs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }

    /// Whether values of `self` become values of `to` without loss — the coercion table:
    /// int64 → float64 (for magnitudes up to 2^53, checked per value), date → timestamp
    /// (midnight UTC), anything → string (its text). Everything else is not a coercion.
    pub fn coerces_to(self, to: ColumnType) -> bool {
        use ColumnType::*;
        self == to || to == String || matches!((self, to), (Int64, Float64) | (Date, Timestamp))
    }

    /// The narrowest type that both types' values fit (the widening a `widen` contract
    /// may apply): int64 + float64 = float64, date + timestamp = timestamp, else string.
    pub fn join(self, other: ColumnType) -> ColumnType {
        if self.coerces_to(other) {
            other
        } else if other.coerces_to(self) {
            self
        } else {
            ColumnType::String
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest integer magnitude a float64 holds exactly: int64 values beyond it do not
/// coerce to float64 without loss.
pub const EXACT_FLOAT_INT: i64 = 1 << 53;

/// One column of a sink's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// How a Parquet dataset is split into folders: by `column`, in folders named
/// `<folder>=<value>`. The folder key is the column's own name when the folder holds the
/// column's value, and `<column>_date` for a timestamp column split by its date, so no
/// reader takes a folder's date for the timestamp itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub column: String,
    pub folder: String,
}

impl Partition {
    /// The partitioning of a new dataset by `column` of type `kind`.
    pub fn new(column: &str, kind: ColumnType) -> Partition {
        let folder = if kind == ColumnType::Timestamp { format!("{column}_date") } else { column.to_string() };
        Partition { column: column.to_string(), folder }
    }
}

/// The columns a sink holds, in order, and for a Parquet dataset its partitioning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partition>,
}

impl Schema {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `name: type` pairs, for messages and reports.
    pub fn describe(&self) -> String {
        self.columns.iter().map(|c| format!("{}: {}", c.name, c.kind)).collect::<Vec<_>>().join(", ")
    }
}

/// What one version changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The sink's first version.
    Created,
    /// Recorded from a sink that existed before Weir kept its history, or that was
    /// changed outside Weir (a PostgreSQL table altered by hand).
    Adopted,
    /// A new nullable column (contract `columns: evolve`).
    Added {
        column: String,
        #[serde(rename = "type")]
        kind: ColumnType,
    },
    /// A column's type widened (contract `data_type: widen`).
    Widened { column: String, from: ColumnType, to: ColumnType },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created => f.write_str("created"),
            Change::Adopted => f.write_str("adopted"),
            Change::Added { column, kind } => write!(f, "added {column} ({kind})"),
            Change::Widened { column, from, to } => write!(f, "widened {column} from {from} to {to}"),
        }
    }
}

/// Who made a version: the job, task and step, and the input whose write changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub job_id: String,
    pub task_id: String,
    pub step_id: String,
    pub input: String,
    pub time_ms: Millis,
}

/// One version of a sink's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, ...: grows by one with every change.
    pub version: u32,
    #[serde(flatten)]
    pub schema: Schema,
    pub changes: Vec<Change>,
    pub origin: Origin,
}

/// Every version of a sink's schema, oldest first: what `_weir/schema.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    pub versions: Vec<Version>,
}

impl History {
    /// The newest version.
    pub fn current(&self) -> Option<&Version> {
        self.versions.last()
    }

    /// Appends a version with `schema` made by `changes`; returns its number.
    pub fn push(&mut self, schema: Schema, changes: Vec<Change>, origin: Origin) -> u32 {
        let version = self.current().map_or(1, |v| v.version + 1);
        self.versions.push(Version { version, schema, changes, origin });
        version
    }
}

#[cfg(test)]
mod tests {
    use super::ColumnType::*;
    use super::*;

    #[test]
    fn coercions_follow_the_documented_table() {
        let all = [String, Int64, Float64, Boolean, Date, Timestamp];
        let mut lossless = vec![];
        for from in all {
            for to in all {
                if from != to && from.coerces_to(to) {
                    lossless.push(format!("{from}->{to}"));
                }
            }
        }
        assert_eq!(
            lossless,
            [
                "int64->string",
                "int64->float64",
                "float64->string",
                "boolean->string",
                "date->string",
                "date->timestamp",
                "timestamp->string"
            ]
        );
        assert_eq!(Int64.join(Float64), Float64);
        assert_eq!(Float64.join(Int64), Float64);
        assert_eq!(Date.join(Timestamp), Timestamp);
        assert_eq!(Int64.join(Date), String);
        assert_eq!(Boolean.join(Boolean), Boolean);
    }

    #[test]
    fn history_numbers_versions_and_reads_back() {
        let mut h = History::default();
        let s = Schema { columns: vec![Column { name: "id".into(), kind: Int64, nullable: true }], partition: None };
        assert_eq!(h.push(s.clone(), vec![Change::Created], Origin::default()), 1);
        let mut s2 = s.clone();
        s2.columns.push(Column { name: "currency".into(), kind: String, nullable: true });
        let added = Change::Added { column: "currency".into(), kind: String };
        assert_eq!(h.push(s2, vec![added.clone()], Origin::default()), 2);
        let text = serde_json::to_string(&h).expect("json");
        assert!(text.contains(r#""change":"added","column":"currency","type":"string""#), "{text}");
        let back: History = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, h);
        assert_eq!(back.current().map(|v| v.schema.describe()), Some("id: int64, currency: string".into()));
        assert_eq!(added.to_string(), "added currency (string)");
        assert_eq!(Partition::new("ts", Timestamp).folder, "ts_date");
        assert_eq!(Partition::new("placed", Date).folder, "placed");
    }
}
