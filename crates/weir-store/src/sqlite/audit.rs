//! The audit trail on SQLite: `weir_audit`, appended in the commit of what each record
//! reports, read newest first, purged past its retention.

use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::{QueryBuilder, Transaction};
use weir_core::audit::{AuditFilter, AuditRecord};
use weir_core::Millis;

use crate::codec::{self, AUDIT_COLUMNS};
use crate::StoreError;

/// Appends `records` (SQLite holds one writer at a time; a row per statement is cheap).
pub(super) async fn append(tx: &mut Transaction<'_, Sqlite>, records: &[AuditRecord]) -> Result<(), StoreError> {
    for r in records {
        sqlx::query(&format!("INSERT INTO weir_audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(r.id.to_string())
            .bind(r.at_ms)
            .bind(&r.subject)
            .bind(&r.namespace)
            .bind(&r.action)
            .bind(&r.target)
            .bind(r.outcome.as_str())
            .bind(&r.code)
            .bind(&r.message)
            .bind(&r.trace_id)
            .bind(&r.peer)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn list(pool: &SqlitePool, f: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let mut q = QueryBuilder::new(format!("SELECT {AUDIT_COLUMNS} FROM weir_audit WHERE 1 = 1"));
    codec::audit_conditions(&mut q, f);
    // UUIDv7 text sorts as its time does.
    if let Some(id) = f.before {
        q.push(" AND id < ").push_bind(id.to_string());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
    q.build().fetch_all(pool).await?.iter().map(codec::audit).collect()
}

pub(super) async fn purge(pool: &SqlitePool, before: Millis) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM weir_audit WHERE at_ms < ?").bind(before).execute(pool).await?.rows_affected())
}
