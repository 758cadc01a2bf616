//! Incremental collection's watermarks on SQLite: `weir_watermarks`, advanced in the
//! commit of the job that succeeded, never moved back.

use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::Transaction;
use weir_core::watermark::{self, Watermark};

use crate::codec::{self, WATERMARK_COLUMNS};
use crate::StoreError;

/// Writes each watermark that moves its mark forward (SQLite holds one writer at a time).
pub(super) async fn advance(tx: &mut Transaction<'_, Sqlite>, marks: &[Watermark]) -> Result<(), StoreError> {
    for w in marks {
        let row =
            sqlx::query(&format!("SELECT {WATERMARK_COLUMNS} FROM weir_watermarks WHERE namespace = ? AND key = ?"))
                .bind(&w.namespace)
                .bind(&w.key)
                .fetch_optional(&mut **tx)
                .await?;
        let stored = row.as_ref().map(codec::watermark).transpose()?;
        if !watermark::advances(stored.as_ref().map(|s| &s.mark), &w.mark) {
            tracing::warn!(namespace = %w.namespace, key = %w.key, "a watermark behind the stored one is not written");
            continue;
        }
        sqlx::query(
            "INSERT INTO weir_watermarks (namespace, key, mark, job_id, updated_ms) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (namespace, key) DO UPDATE SET mark = EXCLUDED.mark, job_id = EXCLUDED.job_id, \
             updated_ms = EXCLUDED.updated_ms",
        )
        .bind(&w.namespace)
        .bind(&w.key)
        .bind(codec::mark_json(&w.mark)?)
        .bind(w.job_id.to_string())
        .bind(w.updated_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub(super) async fn get(pool: &SqlitePool, namespace: &str, key: &str) -> Result<Option<Watermark>, StoreError> {
    sqlx::query(&format!("SELECT {WATERMARK_COLUMNS} FROM weir_watermarks WHERE namespace = ? AND key = ?"))
        .bind(namespace)
        .bind(key)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(codec::watermark)
        .transpose()
}

pub(super) async fn list(pool: &SqlitePool, namespace: &str, limit: u32) -> Result<Vec<Watermark>, StoreError> {
    sqlx::query(&format!(
        "SELECT {WATERMARK_COLUMNS} FROM weir_watermarks WHERE namespace = ?1 OR ?1 = '' ORDER BY namespace, key \
         LIMIT ?2"
    ))
    .bind(namespace)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(codec::watermark)
    .collect()
}
