//! Schedules on PostgreSQL: `weir_schedules`, written in the commit of the jobs their
//! slots start (one statement for every write, one for every delete).

use sqlx::postgres::{PgPool, Postgres};
use sqlx::Transaction;
use weir_core::schedule::{ScheduleChange, ScheduleRecord};

use crate::codec::{self, SCHEDULE_COLUMNS};
use crate::StoreError;

pub(super) async fn apply(tx: &mut Transaction<'_, Postgres>, changes: &[ScheduleChange]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let (puts, deletes) = ScheduleChange::last_of_each(changes);
    if !puts.is_empty() {
        let mut json = Vec::with_capacity(puts.len());
        for r in &puts {
            json.push(codec::schedule_json(r)?);
        }
        sqlx::query(&format!(
            "INSERT INTO weir_schedules ({SCHEDULE_COLUMNS}) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[]) \
             ON CONFLICT (namespace, name) DO UPDATE SET spec = EXCLUDED.spec, state = EXCLUDED.state, \
             updated_ms = EXCLUDED.updated_ms, updated_by = EXCLUDED.updated_by"
        ))
        .bind(puts.iter().map(|r| r.spec.namespace.clone()).collect::<Vec<_>>())
        .bind(puts.iter().map(|r| r.spec.name.clone()).collect::<Vec<_>>())
        .bind(json.iter().map(|j| j.0.clone()).collect::<Vec<_>>())
        .bind(json.iter().map(|j| j.1.clone()).collect::<Vec<_>>())
        .bind(puts.iter().map(|r| r.created_ms).collect::<Vec<_>>())
        .bind(puts.iter().map(|r| r.updated_ms).collect::<Vec<_>>())
        .bind(puts.iter().map(|r| r.updated_by.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !deletes.is_empty() {
        sqlx::query(
            "DELETE FROM weir_schedules s USING UNNEST($1::text[], $2::text[]) AS d(namespace, name) \
             WHERE s.namespace = d.namespace AND s.name = d.name",
        )
        .bind(deletes.iter().map(|d| d.0.to_string()).collect::<Vec<_>>())
        .bind(deletes.iter().map(|d| d.1.to_string()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub(super) async fn list(pool: &PgPool, namespace: &str, limit: u32) -> Result<Vec<ScheduleRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM weir_schedules WHERE namespace = $1 OR $1 = '' ORDER BY namespace, name \
         LIMIT $2"
    ))
    .bind(namespace)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(codec::schedule)
    .collect()
}

pub(super) async fn get(pool: &PgPool, namespace: &str, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    sqlx::query(&format!("SELECT {SCHEDULE_COLUMNS} FROM weir_schedules WHERE namespace = $1 AND name = $2"))
        .bind(namespace)
        .bind(name)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(codec::schedule)
        .transpose()
}
