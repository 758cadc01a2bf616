//! Retention on PostgreSQL: finished jobs past their namespace's retention (with their
//! tasks and history) and relayed outbox messages, deleted a bounded batch per transaction.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::QueryBuilder;
use uuid::Uuid;
use weir_core::retention::{Scope, Sweep};
use weir_core::Millis;

use super::fenced;
use crate::{Purged, StoreError};

pub(super) async fn positions(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as("SELECT name, last_id FROM weir_relay ORDER BY name").fetch_all(pool).await?)
}

/// The purgeable jobs of `sweep`, oldest finished first (see [`crate::Store::purge_jobs`]),
/// among `only` when given.
fn purgeable<'a>(
    sweep: &Sweep,
    published: Option<i64>,
    limit: u32,
    only: Option<&[Uuid]>,
) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new("SELECT j.id FROM weir_jobs j WHERE j.finished_ms < ");
    q.push_bind(sweep.before).push(" AND j.state = ANY(").push_bind(crate::final_states()).push(")");
    match &sweep.scope {
        Scope::Namespace(ns) => q.push(" AND j.namespace = ").push_bind(ns.clone()),
        Scope::AllBut(except) if except.is_empty() => &mut q,
        Scope::AllBut(except) => q.push(" AND NOT (j.namespace = ANY(").push_bind(except.clone()).push("))"),
    };
    if let Some(ids) = only {
        q.push(" AND j.id = ANY(").push_bind(ids.to_vec()).push(")");
    }
    // A job with a task still leased is marked on its row (migration 0012).
    q.push(" AND NOT j.lingering");
    if let Some(p) = published {
        q.push(" AND NOT EXISTS (SELECT 1 FROM weir_events e WHERE e.job_id = j.id AND e.id > ").push_bind(p).push(")");
    }
    q.push(" ORDER BY j.finished_ms LIMIT ").push_bind(i64::from(limit));
    q
}

pub(super) async fn candidates(
    pool: &PgPool,
    sweep: &Sweep,
    published: Option<i64>,
    limit: u32,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(purgeable(sweep, published, limit, None).build_query_scalar().fetch_all(pool).await?)
}

pub(super) async fn jobs(
    pool: &PgPool,
    epoch: i64,
    sweep: &Sweep,
    published: Option<i64>,
    limit: u32,
    only: Option<&[Uuid]>,
) -> Result<Purged, StoreError> {
    let mut tx = fenced(pool, epoch).await?;
    let mut q = purgeable(sweep, published, limit, only);
    // SKIP LOCKED: a job a commit is writing right now waits for the next sweep.
    q.push(" FOR UPDATE SKIP LOCKED");
    let ids: Vec<Uuid> = q.build_query_scalar().fetch_all(&mut *tx).await?;
    if ids.is_empty() {
        return Ok(Purged::default());
    }
    let events = sqlx::query("DELETE FROM weir_events WHERE job_id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
    let tasks = sqlx::query("DELETE FROM weir_tasks WHERE job_id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM weir_jobs WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Purged { jobs: ids, tasks: tasks.rows_affected(), events: events.rows_affected() })
}

pub(super) async fn messages(
    pool: &PgPool,
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

/// The tables the purge deletes from.
const PURGED_TABLES: [&str; 5] = ["weir_events", "weir_tasks", "weir_jobs", "weir_messages", "weir_audit"];

/// Whether the server vacuums and analyzes on its own.
pub(super) async fn autovacuum_on(pool: &PgPool) -> Result<bool, StoreError> {
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')").fetch_one(pool).await?;
    Ok(autovacuum == "on")
}

pub(super) async fn reclaim(pool: &PgPool) -> Result<bool, StoreError> {
    if autovacuum_on(pool).await? {
        return Ok(false);
    }
    for table in PURGED_TABLES {
        // Outside a transaction (VACUUM cannot run in one); the schema is the pool's.
        sqlx::raw_sql(&format!("VACUUM {table}")).execute(pool).await?;
    }
    Ok(true)
}
