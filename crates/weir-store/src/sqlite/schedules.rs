//! Schedules on SQLite: `weir_schedules`, written in the commit of the jobs their slots
//! start.

use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::Transaction;
use weir_core::schedule::{ScheduleChange, ScheduleRecord};

use crate::codec::{self, SCHEDULE_COLUMNS};
use crate::StoreError;

pub(super) async fn apply(tx: &mut Transaction<'_, Sqlite>, changes: &[ScheduleChange]) -> Result<(), StoreError> {
    let (puts, deletes) = ScheduleChange::last_of_each(changes);
    for r in puts {
        let (spec, state) = codec::schedule_json(r)?;
        sqlx::query(&format!(
            "INSERT INTO weir_schedules ({SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (namespace, name) DO UPDATE SET spec = EXCLUDED.spec, state = EXCLUDED.state, \
             updated_ms = EXCLUDED.updated_ms, updated_by = EXCLUDED.updated_by"
        ))
        .bind(&r.spec.namespace)
        .bind(&r.spec.name)
        .bind(spec)
        .bind(state)
        .bind(r.created_ms)
        .bind(r.updated_ms)
        .bind(&r.updated_by)
        .execute(&mut **tx)
        .await?;
    }
    for (namespace, name) in deletes {
        sqlx::query("DELETE FROM weir_schedules WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn list(pool: &SqlitePool, namespace: &str, limit: u32) -> Result<Vec<ScheduleRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM weir_schedules WHERE namespace = ?1 OR ?1 = '' ORDER BY namespace, name \
         LIMIT ?2"
    ))
    .bind(namespace)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(codec::schedule)
    .collect()
}

pub(super) async fn get(pool: &SqlitePool, namespace: &str, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    sqlx::query(&format!("SELECT {SCHEDULE_COLUMNS} FROM weir_schedules WHERE namespace = ? AND name = ?"))
        .bind(namespace)
        .bind(name)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(codec::schedule)
        .transpose()
}
