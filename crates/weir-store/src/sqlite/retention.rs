//! Retention on SQLite: the same purge as on PostgreSQL, a bounded batch per transaction
//! (the one connection is shared with commits, so a batch must stay short).

use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;
use weir_core::retention::{Scope, Sweep};
use weir_core::Millis;

use super::fenced;
use crate::{Purged, StoreError};

pub(super) async fn positions(pool: &SqlitePool) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as("SELECT name, last_id FROM weir_relay ORDER BY name").fetch_all(pool).await?)
}

fn list<'a>(q: &mut QueryBuilder<'a, Sqlite>, values: impl IntoIterator<Item = String>) {
    let mut sep = q.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
}

/// The purgeable jobs of `sweep`, oldest finished first (see [`crate::Store::purge_jobs`]),
/// among `only` when given.
fn purgeable<'a>(sweep: &Sweep, published: Option<i64>, limit: u32, only: Option<&[Uuid]>) -> QueryBuilder<'a, Sqlite> {
    let mut q = QueryBuilder::new("SELECT j.id FROM weir_jobs j WHERE j.finished_ms < ");
    q.push_bind(sweep.before).push(" AND j.state IN (");
    list(&mut q, crate::final_states().into_iter().map(String::from));
    q.push(")");
    match &sweep.scope {
        Scope::Namespace(ns) => {
            q.push(" AND j.namespace = ").push_bind(ns.clone());
        }
        Scope::AllBut(except) if except.is_empty() => {}
        Scope::AllBut(except) => {
            q.push(" AND j.namespace NOT IN (");
            list(&mut q, except.iter().cloned());
            q.push(")");
        }
    }
    if let Some(ids) = only {
        q.push(" AND j.id IN (");
        list(&mut q, ids.iter().map(|u| u.to_string()));
        q.push(")");
    }
    q.push(" AND NOT EXISTS (SELECT 1 FROM weir_tasks t WHERE t.job_id = j.id AND t.state = 'running')");
    if let Some(p) = published {
        q.push(" AND NOT EXISTS (SELECT 1 FROM weir_events e WHERE e.job_id = j.id AND e.id > ").push_bind(p).push(")");
    }
    q.push(" ORDER BY j.finished_ms LIMIT ").push_bind(i64::from(limit));
    q
}

fn uuids(ids: &[String]) -> Result<Vec<Uuid>, StoreError> {
    ids.iter().map(|id| Uuid::parse_str(id).map_err(|_| StoreError::Corrupt(format!("job id {id:?}")))).collect()
}

pub(super) async fn candidates(
    pool: &SqlitePool,
    sweep: &Sweep,
    published: Option<i64>,
    limit: u32,
) -> Result<Vec<Uuid>, StoreError> {
    let ids: Vec<String> = purgeable(sweep, published, limit, None).build_query_scalar().fetch_all(pool).await?;
    uuids(&ids)
}

pub(super) async fn jobs(
    pool: &SqlitePool,
    epoch: i64,
    sweep: &Sweep,
    published: Option<i64>,
    limit: u32,
    only: Option<&[Uuid]>,
) -> Result<Purged, StoreError> {
    let mut tx = fenced(pool, epoch).await?;
    let ids: Vec<String> = purgeable(sweep, published, limit, only).build_query_scalar().fetch_all(&mut *tx).await?;
    if ids.is_empty() {
        return Ok(Purged::default());
    }
    let mut purged = Purged { jobs: uuids(&ids)?, ..Default::default() };
    for (table, column) in [("weir_events", "job_id"), ("weir_tasks", "job_id"), ("weir_jobs", "id")] {
        let mut q = QueryBuilder::new(format!("DELETE FROM {table} WHERE {column} IN ("));
        list(&mut q, ids.iter().cloned());
        q.push(")");
        let n = q.build().execute(&mut *tx).await?.rows_affected();
        match table {
            "weir_events" => purged.events = n,
            "weir_tasks" => purged.tasks = n,
            _ => {}
        }
    }
    tx.commit().await?;
    Ok(purged)
}

pub(super) async fn messages(
    pool: &SqlitePool,
    epoch: i64,
    published: Option<i64>,
    before: Millis,
    limit: u32,
) -> Result<u64, StoreError> {
    let mut tx = fenced(pool, epoch).await?;
    let mut q = QueryBuilder::new("DELETE FROM weir_messages WHERE id IN (SELECT id FROM weir_messages WHERE ");
    match published {
        Some(p) => q.push("id <= ").push_bind(p),
        None => q.push("time_ms < ").push_bind(before),
    };
    q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit)).push(")");
    let n = q.build().execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(n)
}
