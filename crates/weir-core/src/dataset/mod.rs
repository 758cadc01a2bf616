//! What a batch step's config says: the input format, the schema, the quality rules and
//! the sinks. Pure data and its validation, so the master refuses a bad config at
//! submission and the batch manager reads the same struct; the work itself lives in
//! `weir-data`.
//!
//! The batch kinds (see [`crate::catalog`]):
//! - `convert`: reads files of any supported format into typed rows; rows that do not fit
//!   the schema are quarantined; applies `rules` if given; writes the rows to `sinks`
//!   (default: a staged Parquet file for the next step).
//! - `quality`: the same, for staged data, with `rules` required.
//! - `store`: the same, with `sinks` required.
//! - `classify`: the same, labelling the columns that hold personal data (and masking or
//!   hashing them if asked) before anything is written ([`classify`]).
//!
//! Each takes its input files from `inputs`, or, when that is empty, from the `files`
//! that the steps it depends on reported.
//!
//! [`schema`] holds what a sink's schema is and how its versions are recorded;
//! [`contract`] how an input is reconciled with it (pure, so the planner is tested in
//! microseconds).

pub mod classify;
pub mod contract;
pub mod schema;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sandbox::Reach;

pub use contract::SchemaContract;
pub use schema::ColumnType;

/// The text values read as null unless a step says otherwise: pyarrow's CSV reader's
/// defaults, so a numeric column holding `NA` types as pyarrow and DuckDB type it. They
/// make a null in every column that is not text; a text column keeps them as written
/// (as pyarrow does: a country code `NA` stays Namibia) — except the empty field, which
/// is null everywhere.
pub const NULL_MARKERS: [&str; 17] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "N/A", "NA", "NULL",
    "NaN", "n/a", "nan", "null",
];

/// Most null markers one list may hold, and their longest.
pub const MAX_NULL_MARKERS: usize = 64;
const MAX_NULL_MARKER_BYTES: usize = 64;

/// The longest list of columns, rules or sinks a config may carry.
pub const MAX_ITEMS: usize = 1024;

/// A batch step's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataStep {
    /// Input files (paths or `file://` URIs); empty = the upstream steps' `files`.
    pub inputs: Vec<String>,
    /// The input format; absent = detected from the content and the name.
    pub format: Option<FormatSpec>,
    /// The declared schema; absent = inferred from the first rows.
    pub schema: Option<Vec<ColumnSpec>>,
    /// Quality rules; rows that break one are quarantined with the rule and the reason.
    pub rules: Option<Rules>,
    /// Where rows go; empty = a staged Parquet file for the next step.
    pub sinks: Vec<SinkSpec>,
    /// Rows per Arrow batch while converting (default 8192): bounds memory.
    pub batch_rows: Option<usize>,
    /// Label (and mask or hash) the columns that hold personal data; the `classify`
    /// kind's defaults when absent there.
    pub classify: Option<classify::ClassifySpec>,
    /// Write a row only if no sink holds its key yet and no earlier row of the step had it
    /// (a reconstruction merging recovered records with what landed).
    pub dedupe: Option<DedupeSpec>,
}

/// How `dedupe` tells rows apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSpec {
    /// The columns whose values together identify a record (e.g. `[id]`).
    pub key: Vec<String>,
}

/// How to read the input. Every field is optional: what is not given is detected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FormatSpec {
    /// `csv`, `tsv`, `json` (one array), `ndjson`, `xml` or `parquet`.
    #[serde(rename = "type")]
    pub kind: Option<FormatKind>,
    /// `none`, `gzip` or `zstd`.
    pub compression: Option<Compression>,
    /// CSV: the field delimiter (one ASCII character).
    pub delimiter: Option<String>,
    /// CSV: whether the first row names the columns.
    pub header: Option<bool>,
    /// CSV: the quote character (default `"`).
    pub quote: Option<String>,
    /// XML: the element that holds one record.
    pub record: Option<String>,
    /// Text values read as null in every column, text included (default:
    /// [`NULL_MARKERS`], null in every column that is not text).
    pub null_values: Option<Vec<String>>,
}

/// A file format Weir converts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    Csv,
    Tsv,
    Json,
    Ndjson,
    Xml,
    Parquet,
}

impl FormatKind {
    /// The name used in configs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FormatKind::Csv => "csv",
            FormatKind::Tsv => "tsv",
            FormatKind::Json => "json",
            FormatKind::Ndjson => "ndjson",
            FormatKind::Xml => "xml",
            FormatKind::Parquet => "parquet",
        }
    }
}

/// A compression wrapped around the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Whether nulls are allowed (default true); a null in a non-nullable column is quarantined.
    #[serde(default = "yes")]
    pub nullable: bool,
    /// Text values read as null in this column, whatever its type (overrides the step's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_values: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// Per-job quality rules. Row rules quarantine the rows that break them; dataset rules
/// (`min_rows`, `freshness`) and the thresholds fail the whole input instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Columns the input must have; a missing one fails the input.
    pub required_columns: Vec<String>,
    /// Columns that must not be null.
    pub not_null: Vec<String>,
    /// Columns whose values together must be unique within the input (the first row wins).
    pub unique: Vec<String>,
    /// Inclusive numeric, date or timestamp ranges per column.
    pub ranges: BTreeMap<String, Range>,
    /// Regular expressions a text column must match (whole value).
    pub patterns: BTreeMap<String, String>,
    /// The only values a column may take.
    pub allowed: BTreeMap<String, Vec<Value>>,
    /// Fewer valid rows than this fails the input.
    pub min_rows: Option<u64>,
    /// The newest value of a timestamp column must be at most this old.
    pub freshness: Option<Freshness>,
    /// More quarantined rows than this fails the input.
    pub max_quarantined_rows: Option<u64>,
    /// A larger share of quarantined rows (0.0..=1.0) fails the input.
    pub max_quarantined_ratio: Option<f64>,
}

/// An inclusive range; either end may be open. Numbers, or text for dates and timestamps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Range {
    pub min: Option<Value>,
    pub max: Option<Value>,
}

/// A freshness rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    pub column: String,
    /// e.g. "24h".
    pub max_age: String,
}

/// The backends a Parquet sink may live on besides local disk: those with conditional
/// writes, which its fenced commit needs.
pub const OBJECT_STORES: [&str; 3] = ["s3", "azblob", "gcs"];

/// Where rows land.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSpec {
    /// A Parquet dataset: one deterministic file set per input.
    Parquet {
        /// A local directory; with `location`, the dataset's prefix inside it.
        path: String,
        /// An object store (`s3://`, `azblob://`, `gcs://`) holding the dataset, with its
        /// endpoint and credentials by reference; absent = `path` is on local disk.
        #[serde(default)]
        location: Option<crate::files::LocationSpec>,
        /// Partition by this column's value, or by its date for a date/timestamp column.
        #[serde(default)]
        partition_by: Option<String>,
        /// zstd level 1..=22 (default 3).
        #[serde(default)]
        zstd_level: Option<i32>,
        /// How inputs whose columns or values differ from the dataset's schema land.
        #[serde(default)]
        schema_contract: SchemaContract,
        /// Parquet modular encryption of every file written (AES-GCM), key by reference.
        #[serde(default)]
        encryption: Option<Box<EncryptionSpec>>,
    },
    /// A PostgreSQL table, loaded with COPY.
    Postgres {
        /// Name of an environment variable holding the connection URL (never the URL itself).
        url_env: String,
        /// `table` or `schema.table`.
        table: String,
        /// Create the table from the schema if it does not exist.
        #[serde(default)]
        create: bool,
        /// Upsert on these columns; absent = rows are replaced per input file.
        #[serde(default)]
        key: Vec<String>,
        /// How inputs whose columns or values differ from the table's columns land.
        #[serde(default)]
        schema_contract: SchemaContract,
    },
    /// A Kafka topic (a stream step's only sink): each record one JSON message, each
    /// flush wholly in one partition chosen by its source lane, with headers naming the
    /// flush and the record's place in it, so a restart reads from the topic where the
    /// stream stands and completes a flush a crash cut short instead of writing it again.
    Kafka {
        /// `host:port[,host:port…]`.
        brokers: String,
        /// The topic; it must exist (Weir does not create topics).
        topic: String,
        /// The column whose value is each message's key (default: no key).
        #[serde(default)]
        key: Option<String>,
        /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
        #[serde(default)]
        protocol: crate::stream::KafkaProtocol,
        /// SASL: `plain`, `scram-sha-256` or `scram-sha-512`.
        #[serde(default)]
        sasl_mechanism: Option<String>,
        /// SASL `<PREFIX>_USERNAME`/`_PASSWORD`, by reference.
        #[serde(default)]
        credentials: Option<crate::files::CredentialsRef>,
        /// How many of each partition's last messages a new owner reads to find where
        /// the stream stands (default [`DEFAULT_KAFKA_RESUME_SCAN`]).
        #[serde(default)]
        resume_scan: Option<u64>,
    },
}

impl SinkSpec {
    /// Whether the sink lands from the pipeline's staged output (a PostgreSQL table's
    /// COPY, a Kafka topic's messages) rather than Parquet files of its own.
    pub fn reads_staged(&self) -> bool {
        matches!(self, SinkSpec::Postgres { .. } | SinkSpec::Kafka { .. })
    }
}

impl SinkSpec {
    /// What the sink reaches, fields relative to it: a Parquet `path` (a local directory)
    /// or, with a `location`, the location's (`path` is a prefix inside it, without `..`);
    /// a Kafka topic's `brokers` (scheme `kafka`) and `credentials.file`; the encryption
    /// key files. A PostgreSQL sink reaches the variable its `url_env` names (the URL
    /// itself is the operator's, set on the manager).
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        match self {
            SinkSpec::Parquet { path, location, encryption, .. } => {
                match location {
                    Some(l) => r.merge("location", l.reach()),
                    None => r.path("path", path.clone()),
                }
                if let Some(e) = encryption {
                    crate::sandbox::secret_ref(&mut r, "encryption.key", &e.key);
                    for (col, k) in &e.column_keys {
                        crate::sandbox::secret_ref(&mut r, &format!("encryption.column_keys.{col}"), k);
                    }
                }
            }
            SinkSpec::Postgres { url_env, .. } => r.env("url_env", url_env, false),
            SinkSpec::Kafka { brokers, credentials, .. } => {
                r.servers("brokers", "kafka", brokers);
                crate::sandbox::credentials_ref(&mut r, "credentials", credentials.as_ref());
            }
        }
        r
    }
}

/// Default most messages of each partition a Kafka topic sink's new owner reads back.
pub const DEFAULT_KAFKA_RESUME_SCAN: u64 = 100_000;

/// Whether `name` is a Kafka topic name: 1 to 249 of letters, digits, `.`, `_` and `-`.
pub fn is_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Parquet modular encryption of a dataset's files: every column and the footer under
/// one key (AES-GCM, the Parquet format's `AES_GCM_V1`), or a column's own key for the
/// columns listed, so a reader holding only the footer key sees the other columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSpec {
    /// The footer key (and every column's not listed in `column_keys`): 16, 24 or 32
    /// bytes, written in base64 or hex, by reference.
    pub key: crate::secret::SecretRef,
    /// An identifier stored as the footer key's metadata, so a reader can tell which key
    /// it needs (never the key).
    #[serde(default)]
    pub key_id: Option<String>,
    /// Columns with keys of their own: column → key reference.
    #[serde(default)]
    pub column_keys: BTreeMap<String, crate::secret::SecretRef>,
}

impl EncryptionSpec {
    fn check(&self, field: &str) -> Result<(), String> {
        self.key.check(&format!("{field}.key"))?;
        if let Some(id) = &self.key_id {
            if id.is_empty() || id.len() > 256 || id.contains('\0') {
                return Err(format!("{field}.key_id must be 1 to 256 bytes of text"));
            }
        }
        for (col, k) in &self.column_keys {
            if col.is_empty() {
                return Err(format!("{field}.column_keys: a column name is empty"));
            }
            k.check(&format!("{field}.column_keys.{col}"))?;
        }
        Ok(())
    }
}

impl DataStep {
    /// Reads and checks a batch step's config for `kind`; the error names the problem.
    pub fn parse(kind: &str, config: Option<&Value>) -> Result<DataStep, String> {
        let step: DataStep = match config {
            None => DataStep::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{kind} config: {e}"))?,
        };
        step.check(kind)?;
        Ok(step)
    }

    /// What the step reaches: each of `inputs` (a plain path or a `file://` URI is a
    /// local path; another URI, a staged object on the staging store, is its scheme and
    /// bucket), each of `sinks` ([`SinkSpec::reach`]) and `classify.hash_key.file`.
    /// Without `inputs`, the files upstream steps report are the managers' to check.
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        for (i, input) in self.inputs.iter().enumerate() {
            let field = format!("inputs[{i}]");
            match input.split_once("://") {
                // As the batch manager reads it: the rest is the path.
                Some(("file", rest)) => r.path(field, rest.to_string()),
                Some((scheme, rest)) => r.push(crate::sandbox::Touch::Endpoint {
                    field,
                    scheme: scheme.to_ascii_lowercase(),
                    host: rest.split('/').next().unwrap_or("").to_ascii_lowercase(),
                    port: None,
                }),
                None => r.path(field, input.clone()),
            }
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            r.merge(&format!("sinks[{i}]"), sink.reach());
        }
        if let Some(k) = self.classify.as_ref().and_then(|c| c.hash_key.as_ref()) {
            crate::sandbox::secret_ref(&mut r, "classify.hash_key", k);
        }
        r
    }

    /// Checks this config as `kind`'s (the stream kinds check their sinks, schema and
    /// rules the same way).
    pub(crate) fn check(&self, kind: &str) -> Result<(), String> {
        let bad = |what: String| Err(format!("{kind} config: {what}"));
        for (what, n) in [("inputs", self.inputs.len()), ("sinks", self.sinks.len())] {
            if n > MAX_ITEMS {
                return bad(format!("{what} has {n} entries, at most {MAX_ITEMS}"));
            }
        }
        for i in &self.inputs {
            if i.is_empty() || i.contains('\0') {
                return bad(format!("inputs entry {i:?} is not a path"));
            }
        }
        if let Some(n) = self.batch_rows {
            if !(1..=1_048_576).contains(&n) {
                return bad(format!("batch_rows must be 1..=1048576, got {n}"));
            }
        }
        if let Some(f) = &self.format {
            for (what, c) in [("delimiter", &f.delimiter), ("quote", &f.quote)] {
                if let Some(c) = c {
                    if c.len() != 1 || !c.is_ascii() || c == "\n" || c == "\r" {
                        return bad(format!("format.{what} must be one ASCII character, got {c:?}"));
                    }
                }
            }
            if let Some(r) = &f.record {
                if r.is_empty() || r.contains(['<', '>', ' ', '/']) {
                    return bad(format!("format.record must be an element name, got {r:?}"));
                }
            }
            if let Some(n) = &f.null_values {
                check_null_values(n).map_err(|e| format!("{kind} config: format.null_values {e}"))?;
            }
        }
        if let Some(cols) = &self.schema {
            if cols.is_empty() || cols.len() > MAX_ITEMS {
                return bad(format!("schema must list 1..={MAX_ITEMS} columns, got {}", cols.len()));
            }
            let mut seen = std::collections::HashSet::new();
            for c in cols {
                if c.name.is_empty() || c.name.contains('\0') {
                    return bad(format!("schema column name {:?} is empty or holds NUL", c.name));
                }
                if !seen.insert(c.name.as_str()) {
                    return bad(format!("schema names column {:?} twice", c.name));
                }
                if let Some(n) = &c.null_values {
                    check_null_values(n)
                        .map_err(|e| format!("{kind} config: schema column {:?} null_values {e}", c.name))?;
                }
            }
        }
        if let Some(r) = &self.rules {
            r.check().map_err(|e| format!("{kind} config: rules.{e}"))?;
        }
        for s in &self.sinks {
            match s {
                SinkSpec::Parquet { path, zstd_level, location, schema_contract, encryption, .. } => {
                    if path.is_empty() || path.contains('\0') {
                        return bad(format!("parquet sink path {path:?} is not a path"));
                    }
                    if let Some(e) = encryption {
                        e.check("parquet sink encryption").map_err(|e| format!("{kind} config: {e}"))?;
                    }
                    // widen rewrites the dataset's files under its lock: local, clear datasets only.
                    let cannot_widen = match (location, encryption) {
                        (Some(_), _) => Some("Weir does only on local disk, under the dataset's lock; an object-store dataset cannot take that rewrite atomically"),
                        (None, Some(_)) => Some("Weir does not do for encrypted datasets"),
                        (None, None) => None,
                    };
                    if let (Some(why), contract::TypePolicy::Widen) = (cannot_widen, schema_contract.data_type) {
                        return bad(format!(
                            "parquet sink {path:?}: schema_contract.data_type widen rewrites the dataset's files, which {why} (use quarantine, freeze or discard_value)"
                        ));
                    }
                    if let Some(l) = location {
                        l.check().map_err(|e| format!("{kind} config: parquet sink {e}"))?;
                        if !OBJECT_STORES.contains(&l.scheme()?) {
                            return bad(format!(
                                "parquet sink location must be an object store ({}); for a local directory give only path",
                                OBJECT_STORES.join(", ")
                            ));
                        }
                        if path.split('/').any(|p| p == "..") {
                            return bad(format!(
                                "parquet sink path {path:?} may not climb out of its location with .."
                            ));
                        }
                    }
                    if let Some(l) = zstd_level {
                        if !(1..=22).contains(l) {
                            return bad(format!("parquet sink zstd_level must be 1..=22, got {l}"));
                        }
                    }
                }
                SinkSpec::Kafka { brokers, topic, key, protocol, sasl_mechanism, credentials, resume_scan } => {
                    if kind != "stream" {
                        return bad(format!(
                            "kafka sink {topic:?}: a kafka topic is a stream step's sink; a batch step lands in Parquet datasets and PostgreSQL tables"
                        ));
                    }
                    if brokers.trim().is_empty() || brokers.contains('\0') {
                        return bad("kafka sink brokers must not be empty".into());
                    }
                    if !is_topic_name(topic) {
                        return bad(format!(
                            "kafka sink topic {topic:?} is not a topic name (1 to 249 of letters, digits, '.', '_', '-')"
                        ));
                    }
                    if let Some(k) = key.as_ref().filter(|k| k.is_empty() || k.contains('\0')) {
                        return bad(format!("kafka sink key {k:?} is not a column name"));
                    }
                    if *resume_scan == Some(0) {
                        return bad("kafka sink resume_scan must be at least 1".into());
                    }
                    crate::stream::check_kafka_access(
                        "kafka sink",
                        *protocol,
                        sasl_mechanism.as_deref(),
                        credentials.as_ref(),
                    )
                    .map_err(|e| format!("{kind} config: {e}"))?;
                }
                SinkSpec::Postgres { url_env, table, key, .. } => {
                    if !crate::validate::is_env_name(url_env) {
                        return bad(format!(
                            "postgres sink url_env must name an environment variable, got {url_env:?} ({})",
                            crate::validate::ENV_NAME_RULE
                        ));
                    }
                    let parts: Vec<&str> = table.split('.').collect();
                    if parts.len() > 2 || parts.iter().any(|p| !is_identifier(p)) {
                        return bad(format!("postgres sink table must be `table` or `schema.table` of letters, digits and _, got {table:?}"));
                    }
                    if let Some(k) = key.iter().find(|k| !is_identifier(k)) {
                        return bad(format!("postgres sink key column {k:?} is not a plain column name"));
                    }
                }
            }
        }
        if let Some(c) = &self.classify {
            c.check().map_err(|e| format!("{kind} config: {e}"))?;
        }
        if let Some(d) = &self.dedupe {
            if d.key.is_empty() || d.key.len() > 16 || d.key.iter().any(|k| k.is_empty() || k.contains('\0')) {
                return bad("dedupe.key must name 1 to 16 columns".into());
            }
            for s in &self.sinks {
                match s {
                    SinkSpec::Parquet { location: Some(_), path, .. } => {
                        return bad(format!(
                            "dedupe reads the keys a sink holds from local Parquet datasets; {path:?} is on an object store"
                        ))
                    }
                    SinkSpec::Postgres { key, table, .. } if *key != d.key => {
                        return bad(format!(
                            "dedupe on {:?}: postgres sink {table} must upsert on the same key (key: {:?}) so it keeps one row per key",
                            d.key, d.key
                        ))
                    }
                    _ => {}
                }
            }
        }
        match kind {
            "quality" if self.rules.is_none() => bad("quality needs rules".into()),
            "store" if self.sinks.is_empty() => bad("store needs at least one sink".into()),
            _ => Ok(()),
        }
    }
}

/// A list of null markers: bounded in count and length.
fn check_null_values(values: &[String]) -> Result<(), String> {
    if values.len() > MAX_NULL_MARKERS {
        return Err(format!("lists {} values, at most {MAX_NULL_MARKERS}", values.len()));
    }
    if let Some(v) = values.iter().find(|v| v.len() > MAX_NULL_MARKER_BYTES || v.contains('\0')) {
        return Err(format!("value {v:?} is longer than {MAX_NULL_MARKER_BYTES} bytes or holds NUL"));
    }
    Ok(())
}

impl Rules {
    fn check(&self) -> Result<(), String> {
        if let Some(r) = self.max_quarantined_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("max_quarantined_ratio must be 0.0..=1.0, got {r}"));
            }
        }
        if let Some(f) = &self.freshness {
            crate::duration::parse(&f.max_age).map_err(|e| format!("freshness.max_age: {e}"))?;
        }
        for (col, r) in &self.ranges {
            for v in [&r.min, &r.max].into_iter().flatten() {
                if !(v.is_number() || v.is_string()) {
                    return Err(format!("ranges.{col}: bounds must be numbers or text, got {v}"));
                }
            }
            if r.min.is_none() && r.max.is_none() {
                return Err(format!("ranges.{col}: give min, max or both"));
            }
        }
        for (col, vals) in &self.allowed {
            if vals.is_empty() {
                return Err(format!("allowed.{col}: list at least one value"));
            }
            if let Some(v) = vals.iter().find(|v| v.is_array() || v.is_object()) {
                return Err(format!("allowed.{col}: values must be scalars, got {v}"));
            }
        }
        Ok(())
    }
}

/// A `reconcile` step's config: the batch-level check of the bulk-file template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileStep {
    /// Fail the batch when more than this share (0.0..=1.0) of its rows were quarantined.
    pub max_quarantined_ratio: Option<f64>,
    /// With `sinks`: every local Parquet sink must hold each of these key columns' values
    /// once (a reconstruction's check that it left no duplicate).
    pub key: Vec<String>,
    /// The sinks whose keys `key` checks.
    pub sinks: Vec<SinkSpec>,
}

impl ReconcileStep {
    pub fn parse(config: Option<&Value>) -> Result<Self, String> {
        let s: ReconcileStep = match config {
            None => ReconcileStep::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("reconcile config: {e}"))?,
        };
        if s.max_quarantined_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err("reconcile config: max_quarantined_ratio must be 0.0..=1.0".into());
        }
        if s.key.is_empty() != s.sinks.is_empty() {
            return Err("reconcile config: key and sinks go together (the sinks whose keys are checked)".into());
        }
        Ok(s)
    }

    /// What the step reaches: the `sinks` whose keys it reads.
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        for (i, sink) in self.sinks.iter().enumerate() {
            r.merge(&format!("sinks[{i}]"), sink.reach());
        }
        r
    }
}

/// What a batch amounted to, across its fetch, convert and store reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reconciliation {
    pub files_fetched: u64,
    pub files_quarantined_at_fetch: u64,
    pub files_converted: u64,
    pub files_stored: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    /// Rows a `dedupe` step did not write because their key had landed already.
    pub rows_duplicate: u64,
}

/// Checks that every file fetched was converted and every converted row stored, with
/// `read = written + quarantined (+ duplicate)` per file; the error names the first file that breaks it.
/// `reports` are the upstream steps' outputs (step id, JSON).
pub fn reconcile(reports: &[(String, Value)], limits: &ReconcileStep) -> Result<Reconciliation, String> {
    use std::collections::BTreeMap;
    let mut r = Reconciliation::default();
    let mut fetched: Vec<String> = Vec::new();
    let mut converted: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    let n = |f: &Value, k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
    for (_, out) in reports {
        let files = out.get("files").and_then(Value::as_array).cloned().unwrap_or_default();
        let is_store = out.get("kind").and_then(Value::as_str) == Some("store");
        r.files_quarantined_at_fetch += out.get("quarantined").and_then(Value::as_array).map_or(0, |q| q.len() as u64);
        for f in &files {
            if let (Some(src), true) = (f.get("source").and_then(Value::as_str), f.get("sha256").is_some()) {
                fetched.push(src.to_string());
            } else if let Some(input) = f.get("input").and_then(Value::as_str) {
                let (read, written, quarantined) = (n(f, "rows_read"), n(f, "rows_written"), n(f, "rows_quarantined"));
                let duplicate = n(f, "rows_duplicate");
                if read != written + quarantined + duplicate {
                    return Err(format!(
                        "{input}: read {read} rows but wrote {written}, quarantined {quarantined} and found {duplicate} duplicate"
                    ));
                }
                r.rows_duplicate += duplicate;
                // A store step re-reads staged rows: its writes (and the rows it found had
                // landed already) must match what was converted.
                if is_store {
                    stored.insert(input.to_string(), written + duplicate);
                } else {
                    converted.insert(input.to_string(), (read, written, quarantined));
                }
            }
        }
    }
    r.files_fetched = fetched.len() as u64;
    if let Some(missing) = fetched.iter().find(|s| !converted.contains_key(*s)) {
        return Err(format!("{missing} was fetched but not converted"));
    }
    for (input, (read, written, quarantined)) in &converted {
        r.rows_read += read;
        r.rows_written += written;
        r.rows_quarantined += quarantined;
        match stored.get(input) {
            Some(s) if s == written => {}
            Some(s) => return Err(format!("{input}: converted {written} rows but stored {s}")),
            None if *written > 0 => return Err(format!("{input}: converted {written} rows but stored none")),
            None => {}
        }
    }
    r.files_converted = converted.len() as u64;
    r.files_stored = stored.len() as u64;
    if let Some(max) = limits.max_quarantined_ratio {
        let ratio = if r.rows_read == 0 { 0.0 } else { r.rows_quarantined as f64 / r.rows_read as f64 };
        if ratio > max {
            return Err(format!(
                "{} of {} rows quarantined ({:.2}%), more than max_quarantined_ratio {max}",
                r.rows_quarantined,
                r.rows_read,
                ratio * 100.0
            ));
        }
    }
    Ok(r)
}

/// A plain SQL identifier: letters, digits and `_`, not starting with a digit, at most 63 bytes.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_config_reads() {
        let c = json!({
            "inputs": ["/data/trades.csv.gz"],
            "format": {"type": "csv", "delimiter": ";", "header": true},
            "schema": [{"name": "id", "type": "int64", "nullable": false}, {"name": "ts", "type": "timestamp"}],
            "rules": {"not_null": ["id"], "unique": ["id"], "ranges": {"id": {"min": 1}},
                      "patterns": {"sym": "[A-Z]+"}, "allowed": {"side": ["B", "S"]},
                      "freshness": {"column": "ts", "max_age": "24h"}, "max_quarantined_ratio": 0.1},
            "sinks": [{"type": "parquet", "path": "/out", "partition_by": "ts"},
                      {"type": "postgres", "url_env": "PG_URL", "table": "public.trades", "key": ["id"]}]
        });
        let s = DataStep::parse("convert", Some(&c)).expect("valid");
        assert_eq!(s.format.as_ref().and_then(|f| f.kind), Some(FormatKind::Csv));
        assert_eq!(s.sinks.len(), 2);
        assert!(!s.schema.as_ref().expect("schema")[0].nullable);
    }

    #[test]
    fn a_batch_reconciles_or_names_the_file_that_does_not() {
        let fetch = json!({"files": [{"source": "s3://b/a.csv", "sha256": "x"}, {"source": "s3://b/b.csv", "sha256": "y"}],
                           "quarantined": [{"source": "s3://b/c.csv"}]});
        let convert = json!({"kind": "convert", "files": [
            {"input": "s3://b/a.csv", "rows_read": 10, "rows_written": 8, "rows_quarantined": 2, "sink_files": []},
            {"input": "s3://b/b.csv", "rows_read": 5, "rows_written": 5, "rows_quarantined": 0, "sink_files": []}]});
        let store = json!({"kind": "store", "files": [
            {"input": "s3://b/a.csv", "rows_read": 8, "rows_written": 8, "rows_quarantined": 0, "sink_files": ["/l/a"]},
            {"input": "s3://b/b.csv", "rows_read": 5, "rows_written": 5, "rows_quarantined": 0, "sink_files": ["/l/b"]}]});
        let reports =
            vec![("p1".to_string(), fetch.clone()), ("c".to_string(), convert.clone()), ("s".to_string(), store)];
        let r = reconcile(&reports, &ReconcileStep::default()).expect("reconciles");
        assert_eq!(
            (r.files_fetched, r.files_quarantined_at_fetch, r.rows_read, r.rows_written, r.rows_quarantined),
            (2, 1, 15, 13, 2)
        );
        let e = reconcile(&reports, &ReconcileStep { max_quarantined_ratio: Some(0.1), ..Default::default() })
            .expect_err("ratio");
        assert!(e.contains("13.33%"), "{e}");
        let short = json!({"kind": "store", "files": [{"input": "s3://b/a.csv", "rows_read": 8, "rows_written": 7, "rows_quarantined": 0, "sink_files": ["/l/a"]}]});
        let e = reconcile(&[("c".into(), convert), ("s".into(), short)], &ReconcileStep::default()).expect_err("short");
        assert!(e.contains("a.csv") && e.contains("read 8"), "{e}");
        let e = reconcile(&[("p".into(), fetch)], &ReconcileStep::default()).expect_err("unconverted");
        assert!(e.contains("a.csv was fetched but not converted"), "{e}");
    }

    #[test]
    fn bad_configs_are_named() {
        let err = |kind: &str, c: Value| DataStep::parse(kind, Some(&c)).expect_err("should be refused");
        assert!(err("convert", json!({"bogus": 1})).contains("bogus"));
        assert!(err("convert", json!({"format": {"type": "xlsx"}})).contains("xlsx"));
        assert!(err("convert", json!({"format": {"delimiter": "::"}})).contains("delimiter"));
        assert!(err("convert", json!({"schema": [{"name": "a", "type": "int64"}, {"name": "a", "type": "date"}]}))
            .contains("twice"));
        assert!(err("convert", json!({"schema": [{"name": "a", "type": "money"}]})).contains("money"));
        assert!(err("quality", json!({})).contains("needs rules"));
        assert!(err("store", json!({})).contains("sink"));
        assert!(err("convert", json!({"rules": {"max_quarantined_ratio": 2.0}})).contains("ratio"));
        assert!(err("convert", json!({"rules": {"freshness": {"column": "t", "max_age": "soon"}}})).contains("max_age"));
        assert!(err("convert", json!({"sinks": [{"type": "postgres", "url_env": "X", "table": "a;drop"}]}))
            .contains("table"));
        assert!(err(
            "convert",
            json!({"sinks": [{"type": "postgres", "url_env": "postgres://u:p@h/db", "table": "t"}]})
        )
        .contains("url_env"));
        assert!(err("convert", json!({"sinks": [{"type": "s3"}]})).contains("s3"));
        let lake = |uri: &str, path: &str| json!({"sinks": [{"type": "parquet", "path": path, "location": {"uri": uri, "credentials": {"env": "LAKE"}}}]});
        assert!(err("store", lake("sftp://h/x", "p")).contains("must be an object store (s3, azblob, gcs)"));
        assert!(err("store", lake("s3://u:secret@b", "p")).contains("password"));
        assert!(err("store", lake("s3://b", "a/../../x")).contains(".."));
        assert!(DataStep::parse("store", Some(&lake("s3://b/lake", "trades"))).is_ok());
        let mut widen = lake("s3://b/lake", "trades");
        widen["sinks"][0]["schema_contract"] = json!({"data_type": "widen"});
        assert!(err("store", widen).contains("widen rewrites the dataset's files"));
        let contract =
            |c: Value| json!({"sinks": [{"type": "postgres", "url_env": "X", "table": "t", "schema_contract": c}]});
        assert!(err("store", contract(json!({"columns": "melt"}))).contains("melt"));
        assert!(err("store", contract(json!({"tables": "freeze"}))).contains("tables"));
        assert!(DataStep::parse("store", Some(&contract(json!({"columns": "freeze", "data_type": "widen"})))).is_ok());
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        assert!(err("convert", json!({"format": {"null_values": many}})).contains("at most 64"));
        assert!(err("convert", json!({"schema": [{"name": "a", "type": "int64", "null_values": ["x".repeat(65)]}]}))
            .contains("longer than 64 bytes"));
        assert!(DataStep::parse("convert", None).is_ok());
    }
}
