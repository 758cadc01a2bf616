//! Paging on PostgreSQL: pending jobs read back best-ranked first, from an index on the
//! rank of pending jobs only (migration 0011), so a page costs the same whatever the backlog.

use sqlx::postgres::PgPool;
use uuid::Uuid;
use weir_core::engine::JobRank;
use weir_core::model::{JobRecord, TaskRecord};
use weir_core::Millis;

use super::{pg_job_cols, pg_task_cols};
use crate::{codec, StoreError};

/// The started jobs recovery loads: unfinished ones past pending, and finished ones with a
/// task still leased — marked on their row here (`lingering`, migration 0012), so no index
/// on task states is needed and task updates stay HOT.
const STARTED_JOB_IDS: &str = "SELECT id FROM weir_jobs WHERE state IN ('running', 'paused', 'compensating') \
     UNION SELECT id FROM weir_jobs WHERE lingering";

type RankRow = (Uuid, i64, i64, i64);

fn rank((id, priority, created_ms, _): &RankRow) -> JobRank {
    JobRank { priority: i32::try_from(*priority).unwrap_or_default(), created_ms: *created_ms, id: *id }
}

/// `(-priority, created_ms, id)` is the rank as one ascending key, the index's.
const RANK: &str = "(-priority, created_ms, id)";
const ORDER: &str = "-priority, created_ms, id";

pub(super) async fn started(pool: &PgPool) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(STARTED_JOB_IDS).fetch_all(pool).await?;
    jobs(pool, &ids).await
}

pub(super) async fn ranks(pool: &PgPool, from: Option<JobRank>, limit: i64) -> Result<Vec<(JobRank, i64)>, StoreError> {
    let head = "SELECT id, priority, created_ms, tasks_total FROM weir_jobs WHERE state = 'pending'";
    let tail = format!("ORDER BY {ORDER} LIMIT $1");
    let rows: Vec<RankRow> = match from {
        None => sqlx::query_as(&format!("{head} {tail}")).bind(limit).fetch_all(pool).await?,
        Some(f) => {
            sqlx::query_as(&format!("{head} AND {RANK} >= ($2, $3, $4) {tail}"))
                .bind(limit)
                .bind(-i64::from(f.priority))
                .bind(f.created_ms)
                .bind(f.id)
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows.iter().map(|r| (rank(r), r.3)).collect())
}

pub(super) async fn jobs(pool: &PgPool, ids: &[Uuid]) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
    let jobs = sqlx::query(&format!("SELECT {} FROM weir_jobs WHERE id = ANY($1)", pg_job_cols()))
        .bind(ids)
        .fetch_all(pool)
        .await?
        .iter()
        .map(codec::job)
        .collect::<Result<Vec<_>, _>>()?;
    let tasks = sqlx::query(&format!("SELECT {} FROM weir_tasks t WHERE t.job_id = ANY($1)", pg_task_cols()))
        .bind(ids)
        .fetch_all(pool)
        .await?
        .iter()
        .map(codec::task)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((jobs, tasks))
}

pub(super) async fn overdue(pool: &PgPool, from: JobRank, now: Millis, limit: u32) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT id FROM weir_jobs WHERE state = 'pending' AND deadline_ms <= $1 AND {RANK} >= ($2, $3, $4) \
         ORDER BY deadline_ms LIMIT $5"
    ))
    .bind(now)
    .bind(-i64::from(from.priority))
    .bind(from.created_ms)
    .bind(from.id)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}
