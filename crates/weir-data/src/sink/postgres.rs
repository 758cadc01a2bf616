//! A PostgreSQL table, loaded with COPY from a staged Parquet file in a transaction the
//! caller commits (so a step's other sinks can still refuse the input first).
//!
//! The table's own definition is its schema ([`table_schema`]); `weir_sink_schemas` in
//! the same database records its versions, with the job and input that changed it. A
//! load whose plan changes the schema takes a per-table advisory lock, merges its plan
//! onto the columns the table has now and alters the table (`ADD COLUMN`, `ALTER COLUMN
//! … TYPE`) inside the load's transaction: a load that fails changes nothing.
//!
//! Idempotent per input and fenced: `weir_sink_loads` records which task and fence last
//! loaded which input into which table, locked row by row while a load runs. A load whose
//! fence is older than the recorded one of the same task is refused, and so is any load
//! of a task's lease older than the one that claimed the table ([`claim`], a stream's new
//! owner). With a `key`, rows
//! are upserted on it (a re-load overwrites); without one, the table carries a
//! `_weir_input` column and a re-load first deletes the rows the input loaded before.
//! Either way a retried task never duplicates rows. Each load records a nonce, so a
//! commit whose reply was lost can be told apart from one that did not happen
//! ([`committed`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::{Connection, PgConnection, Postgres, Row, Transaction};
use weir_core::dataset::contract::{merge, SinkPlan, WritePlan};
use weir_core::dataset::schema::{Change, Column, ColumnType, History, Origin, Schema, Version};

use super::WriteFence;
use crate::typing::{arrow_schema, column_type};
use crate::DataError;

/// The column that ties rows to their input when the table has no key.
pub const INPUT_COLUMN: &str = "_weir_input";

/// Where and how to load.
#[derive(Debug, Clone)]
pub struct PgTable {
    /// `table` or `schema.table` (checked as identifiers by the step config).
    pub table: String,
    pub create: bool,
    pub key: Vec<String>,
}

impl PgTable {
    /// The sink in messages.
    pub fn name(&self) -> String {
        format!("postgres table {}", self.table)
    }
}

/// A database error: bad SQL, a missing table or column, bad data or a constraint
/// (SQLSTATE classes 22, 23, 42) is the config's or the data's fault and permanent;
/// anything else (connection, timeout, serialization) may pass on a retry.
pub fn sink_err(e: sqlx::Error) -> DataError {
    let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
    match code.as_deref() {
        Some(c) if c.starts_with("22") || c.starts_with("23") || c.starts_with("42") => {
            DataError::Config(format!("postgres: {e}"))
        }
        _ => DataError::Sink(format!("postgres: {e}")),
    }
}

/// A double-quoted SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_table(t: &str) -> String {
    t.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// The PostgreSQL type a column type is created as.
fn pg_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::String => "text",
        ColumnType::Int64 => "bigint",
        ColumnType::Float64 => "double precision",
        ColumnType::Boolean => "boolean",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamptz",
    }
}

/// The column type a PostgreSQL type holds: numbers, booleans, dates and times as
/// themselves, anything else as text (PostgreSQL checks the values on load).
fn of_pg_type(t: &str) -> ColumnType {
    match t {
        "bigint" | "integer" | "smallint" => ColumnType::Int64,
        "double precision" | "real" => ColumnType::Float64,
        t if t.starts_with("numeric") => ColumnType::Float64,
        "boolean" => ColumnType::Boolean,
        "date" => ColumnType::Date,
        t if t.starts_with("timestamp") => ColumnType::Timestamp,
        _ => ColumnType::String,
    }
}

/// Makes the bookkeeping tables if they are not there, in a short transaction of its own
/// (never inside a load's: its lock would serialize every load into the database). Call
/// it before loads on a connection; cheap once they exist.
pub async fn bookkeeping(conn: &mut PgConnection) -> Result<(), DataError> {
    let ready: bool = sqlx::query_scalar(
        "SELECT to_regclass('weir_sink_fences') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute
           WHERE attrelid = to_regclass('weir_sink_loads') AND attname = 'input' AND NOT attisdropped)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(sink_err)?;
    if ready {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(sink_err)?;
    // One creator of the bookkeeping tables at a time, in this database.
    sqlx::query("SELECT pg_advisory_xact_lock(7415925461)").execute(&mut *tx).await.map_err(sink_err)?;
    // One statement at a time: raw_sql's multi-statement future is not Send across awaits.
    for sql in [
        "CREATE TABLE IF NOT EXISTS weir_sink_loads (
            target text NOT NULL, input_key text NOT NULL, task text NOT NULL, fence bigint NOT NULL,
            rows bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target, input_key))",
        "ALTER TABLE weir_sink_loads ADD COLUMN IF NOT EXISTS nonce text",
        "ALTER TABLE weir_sink_loads ADD COLUMN IF NOT EXISTS input text",
        "CREATE TABLE IF NOT EXISTS weir_sink_fences (
            target text NOT NULL, task text NOT NULL, fence bigint NOT NULL, PRIMARY KEY (target, task))",
        "CREATE TABLE IF NOT EXISTS weir_sink_schemas (
            target text NOT NULL, version integer NOT NULL, columns jsonb NOT NULL, changes jsonb NOT NULL,
            origin jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target, version))",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.map_err(sink_err)?;
    }
    tx.commit().await.map_err(sink_err)
}

/// A task's lease claims `table` before the task reads where a stream stands: the task's
/// fence is raised to it (never lowered; an older lease is refused), and from then on a
/// load of a former lease is refused — not only one that replaces an input the new lease
/// wrote. A load running while the claim comes holds the fence's row, so the claim returns
/// after it committed. The bookkeeping tables must exist ([`bookkeeping`]).
pub async fn claim(conn: &mut PgConnection, table: &str, fence: &WriteFence) -> Result<(), DataError> {
    let newest: i64 = sqlx::query_scalar(
        "INSERT INTO weir_sink_fences (target, task, fence) VALUES ($1, $2, $3)
         ON CONFLICT (target, task) DO UPDATE SET fence = GREATEST(weir_sink_fences.fence, EXCLUDED.fence)
         RETURNING fence",
    )
    .bind(table)
    .bind(&fence.task)
    .bind(fence.fence as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(sink_err)?;
    fence.within_claim(&format!("table {table}"), newest as u64)
}

/// The input keys loaded into `table` (none before the first load).
pub async fn input_keys(conn: &mut PgConnection, table: &str) -> Result<Vec<String>, DataError> {
    loaded(conn, table, "input_key").await
}

/// The identities of the inputs loaded into `table` that recorded one (see
/// [`super::landing::Sinks::input_identities`]).
pub async fn input_identities(conn: &mut PgConnection, table: &str) -> Result<Vec<String>, DataError> {
    loaded(conn, table, "input").await
}

/// One column of the loads recorded for `table` (none before the bookkeeping has it).
async fn loaded(conn: &mut PgConnection, table: &str, column: &'static str) -> Result<Vec<String>, DataError> {
    let kept: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
           WHERE attrelid = to_regclass('weir_sink_loads') AND attname = $1 AND NOT attisdropped)",
    )
    .bind(column)
    .fetch_one(&mut *conn)
    .await
    .map_err(sink_err)?;
    if !kept {
        return Ok(vec![]);
    }
    let sql =
        format!("SELECT {column} FROM weir_sink_loads WHERE target = $1 AND {column} IS NOT NULL ORDER BY input_key");
    sqlx::query_scalar(&sql).bind(table).fetch_all(&mut *conn).await.map_err(sink_err)
}

/// The table's columns as a schema (`None`: no such table). `_weir_input` is Weir's
/// own; a column PostgreSQL fills itself (a default, an identity, a generated column)
/// counts as nullable, since a load may leave it out.
pub async fn table_schema(conn: &mut PgConnection, table: &str) -> Result<Option<Schema>, DataError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(quote_table(table))
        .fetch_one(&mut *conn)
        .await
        .map_err(sink_err)?;
    if !exists {
        return Ok(None);
    }
    // to_regclass resolves the name as the session would (search_path included).
    let rows = sqlx::query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull AND NOT a.atthasdef
                AND a.attidentity = '' AND a.attgenerated = ''
           FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(quote_table(table))
    .fetch_all(&mut *conn)
    .await
    .map_err(sink_err)?;
    let columns = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<bool, _>(2)))
        .filter(|(name, _, _)| name != INPUT_COLUMN)
        .map(|(name, ty, required)| Column { name, kind: of_pg_type(&ty), nullable: !required })
        .collect();
    Ok(Some(Schema { columns, partition: None }))
}

/// The versions `weir_sink_schemas` records for `table`, oldest first.
pub async fn history(conn: &mut PgConnection, table: &str) -> Result<History, DataError> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('weir_sink_schemas') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(sink_err)?;
    if !recorded {
        return Ok(History::default());
    }
    let rows = sqlx::query(
        "SELECT version, columns::text, changes::text, origin::text FROM weir_sink_schemas WHERE target = $1 ORDER BY version",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(sink_err)?;
    let mut h = History::default();
    for r in rows {
        let json = |i: usize| -> Result<serde_json::Value, DataError> {
            serde_json::from_str(&r.get::<String, _>(i))
                .map_err(|e| DataError::Config(format!("weir_sink_schemas for {table}: {e}")))
        };
        let bad = |e: serde_json::Error| DataError::Config(format!("weir_sink_schemas for {table}: {e}"));
        h.versions.push(Version {
            version: r.get::<i32, _>(0) as u32,
            schema: Schema { columns: serde_json::from_value(json(1)?).map_err(bad)?, partition: None },
            changes: serde_json::from_value(json(2)?).map_err(bad)?,
            origin: serde_json::from_value(json(3)?).map_err(bad)?,
        });
    }
    Ok(h)
}

/// Records the history's newest version (just pushed) in `weir_sink_schemas`.
async fn record_current(tx: &mut PgConnection, table: &str, h: &History) -> Result<(), DataError> {
    match h.current() {
        Some(v) => record(tx, table, v).await,
        None => Ok(()),
    }
}

async fn record(tx: &mut PgConnection, table: &str, v: &Version) -> Result<(), DataError> {
    let enc = |x: serde_json::Result<String>| x.map_err(|e| DataError::Sink(e.to_string()));
    sqlx::query(
        "INSERT INTO weir_sink_schemas (target, version, columns, changes, origin) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5::jsonb)",
    )
    .bind(table)
    .bind(v.version as i32)
    .bind(enc(serde_json::to_string(&v.schema.columns))?)
    .bind(enc(serde_json::to_string(&v.changes))?)
    .bind(enc(serde_json::to_string(&v.origin))?)
    .execute(&mut *tx)
    .await
    .map_err(sink_err)?;
    Ok(())
}

/// One input's load, as the caller describes it.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    pub target: &'a PgTable,
    /// The staged Parquet file holding the input's rows, typed as the step agreed
    /// (`None`: the input has no rows to load; its earlier rows still go).
    pub staged: Option<&'a Path>,
    pub key: &'a str,
    pub fence: &'a WriteFence,
    /// How this table takes the input.
    pub plan: &'a SinkPlan,
    /// The columns the input brings values for: the others are left to the table
    /// (null, or its default).
    pub columns: &'a [String],
    pub origin: &'a Origin,
    /// Recorded with the load, to tell later whether its commit happened.
    pub nonce: &'a str,
}

/// What a prepared load did.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub rows: u64,
    /// The version the load recorded, if it changed the table's schema.
    pub version: Option<u32>,
}

/// Loads one input in `tx`, changing the table's schema as its plan says; nothing is
/// visible until the caller commits `tx`. The bookkeeping tables must exist
/// ([`bookkeeping`], on the same database first).
pub async fn prepare(tx: &mut PgConnection, load: &Load<'_>) -> Result<Loaded, DataError> {
    let target = load.target;
    let table = quote_table(&target.table);
    sqlx::query("SET LOCAL TIME ZONE 'UTC'").execute(&mut *tx).await.map_err(sink_err)?;
    let mut version = None;
    let now = table_schema(tx, &target.table).await?;
    if load.staged.is_none() && now.is_none() {
        // No rows, and no table holding earlier ones.
        return Ok(Loaded { rows: 0, version: None });
    }
    let recorded = history(tx, &target.table).await?;
    let in_sync = match (&now, recorded.current()) {
        (Some(n), Some(v)) => same_columns(n, &v.schema),
        (None, _) => false,
        (Some(_), None) => false,
    };
    if !load.plan.changes.is_empty() || !in_sync {
        // Schema changes to this table, one load at a time, on a fresh view of the
        // catalog: a lock on the table (plain loads go on beside it; acquiring it also
        // makes this session see what others committed), or, before the table exists, one
        // on its name.
        let mut now = match now {
            Some(_) => lock_for_changes(tx, &table, &target.table).await?,
            None => {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('weir:' || $1, 0))")
                    .bind(&target.table)
                    .execute(&mut *tx)
                    .await
                    .map_err(sink_err)?;
                table_schema(tx, &target.table).await?
            }
        };
        let mut h = history(tx, &target.table).await?;
        if now.is_none() {
            if !target.create {
                return Err(DataError::Config(format!(
                    "table {} does not exist: create it, or set create: true in the sink",
                    target.table
                )));
            }
            let mut defs: Vec<String> = load
                .plan
                .schema
                .columns
                .iter()
                .map(|c| {
                    let null = if c.nullable { "" } else { " NOT NULL" };
                    format!("{} {}{null}", quote_ident(&c.name), pg_type(c.kind))
                })
                .collect();
            if target.key.is_empty() {
                defs.push(format!("{} text NOT NULL", quote_ident(INPUT_COLUMN)));
            } else {
                let k: Vec<String> = target.key.iter().map(|k| quote_ident(k)).collect();
                defs.push(format!("PRIMARY KEY ({})", k.join(", ")));
            }
            sqlx::query("SAVEPOINT weir_create").execute(&mut *tx).await.map_err(sink_err)?;
            match sqlx::query(&format!("CREATE TABLE {table} ({})", defs.join(", "))).execute(&mut *tx).await {
                Ok(_) => {
                    sqlx::query("RELEASE SAVEPOINT weir_create").execute(&mut *tx).await.map_err(sink_err)?;
                    let n = h.push(load.plan.schema.clone(), vec![Change::Created], load.origin.clone());
                    record_current(tx, &target.table, &h).await?;
                    version = Some(n);
                }
                // Made meanwhile by someone the catalog had not shown yet: take it as it is.
                Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P07") => {
                    sqlx::query("ROLLBACK TO SAVEPOINT weir_create").execute(&mut *tx).await.map_err(sink_err)?;
                    now = lock_for_changes(tx, &table, &target.table).await?;
                    h = history(tx, &target.table).await?;
                }
                Err(e) => return Err(sink_err(e)),
            }
        }
        if let (Some(n), None) = (&now, version) {
            if h.current().is_none_or(|v| !same_columns(n, &v.schema)) {
                // Made or altered outside Weir: recorded as found.
                h.push(n.clone(), vec![Change::Adopted], Origin::default());
                record_current(tx, &target.table, &h).await?;
            }
            let merged = merge(Some(n), load.plan, &load.plan.schema, &load.target.name()).map_err(DataError::Sink)?;
            for ch in &merged.changes {
                let sql = match ch {
                    Change::Added { column, kind } => {
                        format!(
                            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}",
                            quote_ident(column),
                            pg_type(*kind)
                        )
                    }
                    Change::Widened { column, to, .. } => format!(
                        "ALTER TABLE {table} ALTER COLUMN {c} TYPE {t} USING {c}::{t}",
                        c = quote_ident(column),
                        t = pg_type(*to)
                    ),
                    Change::Created | Change::Adopted => continue,
                };
                sqlx::query(&sql).execute(&mut *tx).await.map_err(sink_err)?;
            }
            if !merged.changes.is_empty() {
                let n = h.push(merged.schema, merged.changes, load.origin.clone());
                record_current(tx, &target.table, &h).await?;
                version = Some(n);
            }
        }
    }
    if let Some(k) = target.key.iter().find(|k| load.staged.is_some() && !load.columns.contains(k)) {
        return Err(DataError::Config(format!("postgres sink key column {k:?} is not in the data")));
    }
    let prev = sqlx::query("SELECT task, fence FROM weir_sink_loads WHERE target = $1 AND input_key = $2 FOR UPDATE")
        .bind(&target.table)
        .bind(load.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sink_err)?;
    if let Some(row) = prev {
        let prev = WriteFence { task: row.get(0), fence: row.get::<i64, _>(1) as u64 };
        load.fence.may_replace(&prev).map_err(DataError::StaleFence)?;
    }
    // The task's claim (see [`claim`]), held until this load commits: a newer lease's
    // claim waits for it, so the new owner reads its positions after this load.
    let claimed: Option<i64> =
        sqlx::query_scalar("SELECT fence FROM weir_sink_fences WHERE target = $1 AND task = $2 FOR SHARE")
            .bind(&target.table)
            .bind(&load.fence.task)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sink_err)?;
    if let Some(n) = claimed {
        load.fence.within_claim(&target.name(), n as u64)?;
    }
    let cols: Vec<&Column> = load.plan.schema.columns.iter().filter(|c| load.columns.contains(&c.name)).collect();
    let copy_schema = arrow_schema(&Schema { columns: cols.iter().map(|c| (*c).clone()).collect(), partition: None });
    let names: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let rows = if target.key.is_empty() {
        let has_input_col: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped)",
        )
        .bind(&table)
        .bind(INPUT_COLUMN)
        .fetch_one(&mut *tx)
        .await
        .map_err(sink_err)?;
        if !has_input_col {
            return Err(DataError::Config(format!(
                "table {} has no {INPUT_COLUMN} column to replace an input's rows by: declare a key to upsert on, or set create so Weir makes the table",
                target.table
            )));
        }
        sqlx::query(&format!("DELETE FROM {table} WHERE {} = $1", quote_ident(INPUT_COLUMN)))
            .bind(load.key)
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
        let mut all = names.clone();
        all.push(quote_ident(INPUT_COLUMN));
        let sql = format!("COPY {table} ({}) FROM STDIN (FORMAT csv)", all.join(", "));
        match load.staged {
            Some(staged) => copy(tx, &sql, staged.to_path_buf(), copy_schema, Some(load.key.to_string())).await?,
            None => 0,
        }
    } else if let Some(staged) = load.staged {
        sqlx::query(&format!(
            "CREATE TEMP TABLE weir_stage ON COMMIT DROP AS SELECT {} FROM {table} WITH NO DATA",
            names.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        let n = copy(
            tx,
            &format!("COPY weir_stage ({}) FROM STDIN (FORMAT csv)", names.join(", ")),
            staged.to_path_buf(),
            copy_schema,
            None,
        )
        .await?;
        let keys: Vec<String> = target.key.iter().map(|k| quote_ident(k)).collect();
        let sets: Vec<String> = cols
            .iter()
            .filter(|c| !target.key.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
            .collect();
        let action = if sets.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", sets.join(", ")) };
        // DISTINCT ON keeps one row per key, so one statement never touches a row twice
        // (a `unique` rule on the key decides which duplicate is kept).
        sqlx::query(&format!(
            "INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM weir_stage ON CONFLICT ({keys}) DO {action}",
            cols = names.join(", "),
            keys = keys.join(", "),
        ))
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        sqlx::query("DROP TABLE weir_stage").execute(&mut *tx).await.map_err(sink_err)?;
        n
    } else {
        // Keyed rows are upserted, not owned by an input: no rows, nothing to do.
        0
    };
    sqlx::query(
        "INSERT INTO weir_sink_loads (target, input_key, task, fence, rows, nonce, input)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (target, input_key) DO UPDATE SET task = $3, fence = $4, rows = $5, nonce = $6, input = $7,
           loaded_at = now()",
    )
    .bind(&target.table)
    .bind(load.key)
    .bind(&load.fence.task)
    .bind(load.fence.fence as i64)
    .bind(rows as i64)
    .bind(load.nonce)
    .bind(&load.origin.input)
    .execute(&mut *tx)
    .await
    .map_err(sink_err)?;
    Ok(Loaded { rows, version })
}

/// Locks an existing table against other loads' schema changes until the transaction
/// ends (SHARE UPDATE EXCLUSIVE: not against plain loads), and reads its columns as they
/// are now — acquiring a table lock makes the session see what others committed.
async fn lock_for_changes(tx: &mut PgConnection, quoted: &str, table: &str) -> Result<Option<Schema>, DataError> {
    sqlx::query(&format!("LOCK TABLE {quoted} IN SHARE UPDATE EXCLUSIVE MODE"))
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
    table_schema(tx, table).await
}

/// Whether two schemas have the same columns, names and types (nullability aside:
/// PostgreSQL's defaults make a required column optional to a load).
fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.columns.len() == b.columns.len()
        && a.columns.iter().zip(&b.columns).all(|(x, y)| x.name == y.name && x.kind == y.kind)
}

/// Whether the load recorded with `nonce` committed: asked, on another connection,
/// after a commit whose outcome is unknown (the connection died during it). The load's
/// session (`pid`) may still be finishing that commit on the server, so it is ended and
/// waited for first: the answer is then final.
pub async fn committed(
    conn: &mut PgConnection,
    pid: i32,
    table: &str,
    key: &str,
    nonce: &str,
) -> Result<bool, DataError> {
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut *conn).await.map_err(sink_err)?;
    let mut gone = false;
    for _ in 0..100 {
        let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(pid)
            .fetch_one(&mut *conn)
            .await
            .map_err(sink_err)?;
        if !alive {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !gone {
        return Err(DataError::Sink(format!("the load's session {pid} did not end within 10 s")));
    }
    let got: Option<Option<String>> =
        sqlx::query_scalar("SELECT nonce FROM weir_sink_loads WHERE target = $1 AND input_key = $2")
            .bind(table)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(sink_err)?;
    Ok(got.flatten().as_deref() == Some(nonce))
}

/// Loads the staged Parquet file of input `key` into `target` on its own, in one
/// transaction, reconciled against the table with the default contract; returns the
/// rows loaded. For tools and tests: steps go through [`prepare`] with their agreed plan.
pub async fn load(
    conn: &mut PgConnection,
    target: &PgTable,
    staged: &Path,
    key: &str,
    fence: &WriteFence,
) -> Result<u64, DataError> {
    let file = std::fs::File::open(staged).map_err(|e| DataError::io(staged, e))?;
    let schema: SchemaRef = ParquetRecordBatchReaderBuilder::try_new(file)?.schema().clone();
    let input: Vec<weir_core::dataset::contract::InputColumn> = schema
        .fields()
        .iter()
        .map(|f| weir_core::dataset::contract::InputColumn {
            name: f.name().clone(),
            kind: column_type(f.data_type()),
            nullable: true,
        })
        .collect();
    let current = table_schema(conn, &target.table).await?;
    let name = target.name();
    let view = weir_core::dataset::contract::SinkView {
        name: &name,
        current: current.as_ref(),
        contract: Default::default(),
        partition_by: None,
    };
    let plan = WritePlan::for_sinks(&[view], &input).map_err(DataError::Schema)?;
    let columns: Vec<String> = input.iter().map(|c| c.name.clone()).collect();
    bookkeeping(conn).await?;
    let mut tx: Transaction<'_, Postgres> = conn.begin().await.map_err(sink_err)?;
    let nonce = uuid::Uuid::new_v4().to_string();
    let l = Load {
        target,
        staged: Some(staged),
        key,
        fence,
        plan: &plan.sinks[0],
        columns: &columns,
        origin: &Origin::default(),
        nonce: &nonce,
    };
    let loaded = prepare(&mut tx, &l).await?;
    tx.commit().await.map_err(sink_err)?;
    Ok(loaded.rows)
}

/// Streams the staged file into a COPY as CSV (its columns as `schema` says), read and
/// encoded on a blocking thread.
async fn copy(
    conn: &mut PgConnection,
    sql: &str,
    staged: PathBuf,
    schema: SchemaRef,
    input: Option<String>,
) -> Result<u64, DataError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, DataError>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let run = || -> Result<(), DataError> {
            let file = std::fs::File::open(&staged).map_err(|e| DataError::io(&staged, e))?;
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(8192).build()? {
                let mut batch = crate::typing::project(&batch?, &schema)?;
                if let Some(k) = &input {
                    batch = with_input_column(&batch, k)?;
                }
                if tx.blocking_send(Ok(csv_rows(&batch)?)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut copy_in = conn.copy_in_raw(sql).await.map_err(sink_err)?;
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Ok(bytes) => {
                if let Err(e) = copy_in.send(bytes).await {
                    let _ = copy_in.abort("weir: send failed").await;
                    return Err(sink_err(e));
                }
            }
            Err(e) => {
                let _ = copy_in.abort("weir: reading the staged file failed").await;
                return Err(e);
            }
        }
    }
    let _ = producer.await;
    copy_in.finish().await.map_err(sink_err)
}

/// A batch as COPY's CSV: a null is an unquoted empty field, every text value is quoted
/// (so `""` is an empty string and a text `\N` is text), the rest as arrow displays them
/// (numbers, booleans, ISO dates, RFC 3339 timestamps), which PostgreSQL reads.
fn csv_rows(batch: &RecordBatch) -> Result<Vec<u8>, DataError> {
    use arrow_cast::display::{ArrayFormatter, FormatOptions};
    use std::fmt::Write as _;
    let text: Vec<bool> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
        .collect();
    let fmts = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::with_capacity(batch.num_rows() * 64);
    let mut field = String::new();
    for row in 0..batch.num_rows() {
        for (i, (col, fmt)) in batch.columns().iter().zip(&fmts).enumerate() {
            if i > 0 {
                out.push(',');
            }
            if col.is_null(row) {
                continue;
            }
            field.clear();
            let _ = write!(field, "{}", fmt.value(row));
            if text[i] || field.contains([',', '"', '\n', '\r']) {
                out.push('"');
                out.push_str(&field.replace('"', "\"\""));
                out.push('"');
            } else {
                out.push_str(&field);
            }
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}

fn with_input_column(batch: &RecordBatch, key: &str) -> Result<RecordBatch, DataError> {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(INPUT_COLUMN, DataType::Utf8, false));
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec![key; batch.num_rows()])));
    Ok(RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), cols)?)
}
