//! Paging on SQLite: the same reads as on PostgreSQL (see `postgres/paging.rs`), with
//! ids as text and id lists passed as a JSON array.

use sqlx::sqlite::SqlitePool;
use uuid::Uuid;
use weir_core::engine::JobRank;
use weir_core::model::{JobRecord, TaskRecord};
use weir_core::Millis;

use crate::codec::{self, JOB_COLUMNS, TASK_COLUMNS};
use crate::StoreError;

/// The started jobs recovery loads: unfinished ones past pending, and finished ones whose
/// tasks still hold a lease (a late report of such a task must find it). Pending jobs are
/// paged in.
const STARTED_JOB_IDS: &str = "SELECT id FROM weir_jobs WHERE state IN ('running', 'paused', 'compensating') \
     UNION SELECT job_id FROM weir_tasks WHERE state = 'running'";

type RankRow = (String, i64, i64, i64);

fn parse(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("job id {s:?}: {e}")))
}

/// `(-priority, created_ms, id)` is the rank as one ascending key (ids sort as text the
/// way UUIDs sort as bytes).
const RANK: &str = "(-priority, created_ms, id)";
const ORDER: &str = "-priority, created_ms, id";

pub(super) async fn started(pool: &SqlitePool) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(STARTED_JOB_IDS).fetch_all(pool).await?;
    jobs(pool, &ids.iter().map(|s| parse(s)).collect::<Result<Vec<_>, _>>()?).await
}

pub(super) async fn ranks(
    pool: &SqlitePool,
    from: Option<JobRank>,
    limit: i64,
) -> Result<Vec<(JobRank, i64)>, StoreError> {
    let head = "SELECT id, priority, created_ms, tasks_total FROM weir_jobs WHERE state = 'pending'";
    let tail = format!("ORDER BY {ORDER} LIMIT ?");
    let rows: Vec<RankRow> = match from {
        None => sqlx::query_as(&format!("{head} {tail}")).bind(limit).fetch_all(pool).await?,
        Some(f) => {
            sqlx::query_as(&format!("{head} AND {RANK} >= (?, ?, ?) {tail}"))
                .bind(-i64::from(f.priority))
                .bind(f.created_ms)
                .bind(f.id.to_string())
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
    };
    rows.iter()
        .map(|(id, priority, created_ms, total)| {
            let priority = i32::try_from(*priority).unwrap_or_default();
            Ok((JobRank { priority, created_ms: *created_ms, id: parse(id)? }, *total))
        })
        .collect()
}

pub(super) async fn jobs(pool: &SqlitePool, ids: &[Uuid]) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
    let list = serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(format!("job ids: {e}")))?;
    let jobs =
        sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM weir_jobs WHERE id IN (SELECT value FROM json_each(?))"))
            .bind(&list)
            .fetch_all(pool)
            .await?
            .iter()
            .map(codec::job)
            .collect::<Result<Vec<_>, _>>()?;
    let tasks =
        sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM weir_tasks WHERE job_id IN (SELECT value FROM json_each(?))"))
            .bind(&list)
            .fetch_all(pool)
            .await?
            .iter()
            .map(codec::task)
            .collect::<Result<Vec<_>, _>>()?;
    Ok((jobs, tasks))
}

pub(super) async fn overdue(
    pool: &SqlitePool,
    from: JobRank,
    now: Millis,
    limit: u32,
) -> Result<Vec<Uuid>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM weir_jobs WHERE state = 'pending' AND deadline_ms <= ? AND {RANK} >= (?, ?, ?) \
         ORDER BY deadline_ms LIMIT ?"
    ))
    .bind(now)
    .bind(-i64::from(from.priority))
    .bind(from.created_ms)
    .bind(from.id.to_string())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    ids.iter().map(|s| parse(s)).collect()
}
