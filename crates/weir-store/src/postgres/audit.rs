//! The audit trail on PostgreSQL: `weir_audit`, appended in the commit of what each
//! record reports, read newest first, purged past its retention.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::{QueryBuilder, Transaction};
use uuid::Uuid;
use weir_core::audit::{AuditFilter, AuditRecord};
use weir_core::Millis;

use crate::codec::{self, AUDIT_COLUMNS};
use crate::StoreError;

/// Appends `records` in one statement.
pub(super) async fn append(tx: &mut Transaction<'_, Postgres>, records: &[AuditRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&AuditRecord) -> String| records.iter().map(f).collect::<Vec<String>>();
    sqlx::query(
        "INSERT INTO weir_audit (id, at_ms, subject, namespace, action, target, outcome, code, message, trace_id, peer) \
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::text[], $11::text[])",
    )
    .bind(records.iter().map(|r| r.id).collect::<Vec<Uuid>>())
    .bind(records.iter().map(|r| r.at_ms).collect::<Vec<i64>>())
    .bind(col(|r| r.subject.clone()))
    .bind(col(|r| r.namespace.clone()))
    .bind(col(|r| r.action.clone()))
    .bind(col(|r| r.target.clone()))
    .bind(col(|r| r.outcome.as_str().to_string()))
    .bind(col(|r| r.code.clone()))
    .bind(col(|r| r.message.clone()))
    .bind(col(|r| r.trace_id.clone()))
    .bind(col(|r| r.peer.clone()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn list(pool: &PgPool, f: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let cols = AUDIT_COLUMNS.replacen("id,", "id::text AS id,", 1);
    let mut q = QueryBuilder::new(format!("SELECT {cols} FROM weir_audit WHERE TRUE"));
    codec::audit_conditions(&mut q, f);
    if let Some(id) = f.before {
        q.push(" AND id < ").push_bind(id);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
    q.build().fetch_all(pool).await?.iter().map(codec::audit).collect()
}

pub(super) async fn purge(pool: &PgPool, before: Millis) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM weir_audit WHERE at_ms < $1").bind(before).execute(pool).await?.rows_affected())
}
