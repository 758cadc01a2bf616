//! A PostgreSQL table, loaded with COPY from a staged Parquet file, in one transaction.
//!
//! Idempotent per input and fenced: the target database keeps `weir_sink_loads` (which
//! task and fence last loaded which input into which table), locked row by row while a
//! load runs. A load whose fence is older than the recorded one of the same task is
//! refused. With a `key`, rows are upserted on it (a re-load overwrites); without one,
//! the table carries a `_weir_input` column and a re-load first deletes the rows the
//! input loaded before. Either way a retried task never duplicates rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::{Connection, PgConnection, Row};

use super::WriteFence;
use crate::DataError;

/// The column that ties rows to their input when the table has no key.
pub const INPUT_COLUMN: &str = "_weir_input";

/// Where and how to load.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// `table` or `schema.table` (checked as identifiers by the step config).
    pub table: String,
    pub create: bool,
    pub key: Vec<String>,
}

/// A database error: bad SQL, a missing table or column, bad data or a constraint
/// (SQLSTATE classes 22, 23, 42) is the config's or the data's fault and permanent;
/// anything else (connection, timeout, serialization) may pass on a retry.
fn sink_err(e: sqlx::Error) -> DataError {
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

/// The PostgreSQL type of a column, or why it cannot be loaded.
fn pg_type(f: &Field) -> Result<&'static str, DataError> {
    Ok(match f.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Int64 => "bigint",
        DataType::Int32 => "integer",
        DataType::Int16 => "smallint",
        DataType::Float64 => "double precision",
        DataType::Float32 => "real",
        DataType::Boolean => "boolean",
        DataType::Date32 => "date",
        DataType::Timestamp(_, Some(_)) => "timestamptz",
        DataType::Timestamp(_, None) => "timestamp",
        other => {
            return Err(DataError::Config(format!(
            "column {:?} is {other}, which the postgres sink does not load; declare it in the schema as a scalar type",
            f.name()
        )))
        }
    })
}

/// Loads the staged Parquet file of input `key` into `target`; returns the rows loaded.
pub async fn load(
    conn: &mut PgConnection,
    target: &PgTarget,
    staged: &Path,
    key: &str,
    fence: &WriteFence,
) -> Result<u64, DataError> {
    let file = std::fs::File::open(staged).map_err(|e| DataError::io(staged, e))?;
    let schema: SchemaRef = ParquetRecordBatchReaderBuilder::try_new(file)?.schema().clone();
    let cols: Vec<(String, &'static str)> =
        schema.fields().iter().map(|f| Ok((f.name().clone(), pg_type(f)?))).collect::<Result<_, DataError>>()?;
    if let Some(k) = target.key.iter().find(|k| !cols.iter().any(|(c, _)| c == *k)) {
        return Err(DataError::Config(format!("postgres sink key column {k:?} is not in the data")));
    }
    let table = quote_table(&target.table);

    let mut tx = conn.begin().await.map_err(sink_err)?;
    // One creator of the bookkeeping table at a time, in this database.
    sqlx::query("SELECT pg_advisory_xact_lock(7415925461)").execute(&mut *tx).await.map_err(sink_err)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS weir_sink_loads (
            target text NOT NULL, input_key text NOT NULL, task text NOT NULL, fence bigint NOT NULL,
            rows bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target, input_key))",
    )
    .execute(&mut *tx)
    .await
    .map_err(sink_err)?;
    if target.create {
        let mut defs: Vec<String> = cols.iter().map(|(c, t)| format!("{} {t}", quote_ident(c))).collect();
        if target.key.is_empty() {
            defs.push(format!("{} text NOT NULL", quote_ident(INPUT_COLUMN)));
        } else {
            let k: Vec<String> = target.key.iter().map(|k| quote_ident(k)).collect();
            defs.push(format!("PRIMARY KEY ({})", k.join(", ")));
        }
        sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} ({})", defs.join(", ")))
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
    }
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *tx)
        .await
        .map_err(sink_err)?;
    if !exists {
        return Err(DataError::Config(format!(
            "table {} does not exist: create it, or set create: true in the sink",
            target.table
        )));
    }
    let prev = sqlx::query("SELECT task, fence FROM weir_sink_loads WHERE target = $1 AND input_key = $2 FOR UPDATE")
        .bind(&target.table)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sink_err)?;
    if let Some(row) = prev {
        let prev = WriteFence { task: row.get(0), fence: row.get::<i64, _>(1) as u64 };
        fence.may_replace(&prev).map_err(DataError::StaleFence)?;
    }
    let names: Vec<String> = cols.iter().map(|(c, _)| quote_ident(c)).collect();
    let rows = if target.key.is_empty() {
        // to_regclass resolves the name as the session would (search_path included).
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
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
        let sql = format!(
            "COPY {table} ({}, {}) FROM STDIN (FORMAT csv, NULL '\\N')",
            names.join(", "),
            quote_ident(INPUT_COLUMN)
        );
        copy(&mut tx, &sql, staged.to_path_buf(), Some(key.to_string())).await?
    } else {
        sqlx::query(&format!(
            "CREATE TEMP TABLE weir_stage ON COMMIT DROP AS SELECT {} FROM {table} WITH NO DATA",
            names.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        let n = copy(
            &mut tx,
            &format!("COPY weir_stage ({}) FROM STDIN (FORMAT csv, NULL '\\N')", names.join(", ")),
            staged.to_path_buf(),
            None,
        )
        .await?;
        let keys: Vec<String> = target.key.iter().map(|k| quote_ident(k)).collect();
        let sets: Vec<String> = cols
            .iter()
            .filter(|(c, _)| !target.key.contains(c))
            .map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
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
        n
    };
    sqlx::query(
        "INSERT INTO weir_sink_loads (target, input_key, task, fence, rows) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (target, input_key) DO UPDATE SET task = $3, fence = $4, rows = $5, loaded_at = now()",
    )
    .bind(&target.table)
    .bind(key)
    .bind(&fence.task)
    .bind(fence.fence as i64)
    .bind(rows as i64)
    .execute(&mut *tx)
    .await
    .map_err(sink_err)?;
    tx.commit().await.map_err(sink_err)?;
    Ok(rows)
}

/// Streams the staged file into a COPY as CSV, read and encoded on a blocking thread.
async fn copy(conn: &mut PgConnection, sql: &str, staged: PathBuf, input: Option<String>) -> Result<u64, DataError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, DataError>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let run = || -> Result<(), DataError> {
            let file = std::fs::File::open(&staged).map_err(|e| DataError::io(&staged, e))?;
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(8192).build()? {
                let mut batch = batch?;
                if let Some(k) = &input {
                    batch = with_input_column(&batch, k)?;
                }
                let mut w =
                    arrow_csv::WriterBuilder::new().with_header(false).with_null("\\N".into()).build(Vec::new());
                w.write(&batch)?;
                if tx.blocking_send(Ok(w.into_inner())).is_err() {
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

fn with_input_column(batch: &RecordBatch, key: &str) -> Result<RecordBatch, DataError> {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(INPUT_COLUMN, DataType::Utf8, false));
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec![key; batch.num_rows()])));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}
