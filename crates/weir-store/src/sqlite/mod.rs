//! The embedded store of the one-command mode: one SQLite file on local disk, no server.
//! The file is opened in exclusive locking mode, so one master process owns it; a second
//! process gets "database is locked" instead of a split brain.

mod audit;
mod connections;
mod datasets;
mod paging;
mod retention;
mod schedules;
mod watermarks;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;
use weir_core::engine::Changes;
use weir_core::files::SeenFile;
use weir_core::model::{
    ClaimedFile, DatasetVersion, EventRecord, FileRecord, JobRecord, OutboxEvent, OutboxMessage, TaskRecord,
};
use weir_core::watermark::Watermark;
use weir_core::Millis;

use crate::codec::{self, EVENT_COLUMNS, JOB_COLUMNS, MESSAGE_COLUMNS, TASK_COLUMNS};
use crate::migrate;
use crate::{Cursor, JobFilter, JobPage, Store, StoreError};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
}

/// Begins a transaction that only the master holding `epoch` may finish.
async fn fenced(pool: &SqlitePool, epoch: i64) -> Result<Transaction<'static, Sqlite>, StoreError> {
    let mut tx = pool.begin().await?;
    let current: i64 = sqlx::query_scalar("SELECT epoch FROM weir_leader WHERE id = 1").fetch_one(&mut *tx).await?;
    if current != epoch {
        return Err(StoreError::Fenced { mine: epoch, current });
    }
    Ok(tx)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn id(u: Uuid) -> String {
    u.to_string()
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a process crash (kill -9); FULL adds power-loss safety.
            .synchronous(SqliteSynchronous::Normal)
            .locking_mode(SqliteLockingMode::Exclusive)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // One connection: SQLite has one writer anyway, and exclusive mode needs a single owner.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
            migrate::TABLE
        ))
        .execute(&mut *conn)
        .await?;
        let done: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {}", migrate::TABLE)).fetch_all(&mut *conn).await?;
        for m in migrate::SQLITE.iter().filter(|m| !done.contains(&m.version)) {
            apply_one(&mut conn, m).await.map_err(|source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source,
            })?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        Ok(())
    }
}

async fn apply_one(conn: &mut SqliteConnection, m: &migrate::Migration) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for stmt in migrate::statements(m.sql) {
        sqlx::query(&stmt).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("INSERT INTO {} (version, name, applied_ms) VALUES (?, ?, ?)", migrate::TABLE))
        .bind(m.version)
        .bind(m.name)
        .bind(0i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn acquire_leadership(&self, holder: &str, now: Millis) -> Result<i64, StoreError> {
        // The exclusive file lock already makes this process the only writer.
        Ok(sqlx::query_scalar(
            "UPDATE weir_leader SET epoch = epoch + 1, holder = ?, acquired_ms = ? WHERE id = 1 RETURNING epoch",
        )
        .bind(holder)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn commit(&self, epoch: i64, c: &Changes) -> Result<(), StoreError> {
        if c.is_empty() {
            return Ok(());
        }
        let mut tx = fenced(&self.pool, epoch).await?;
        for j in &c.new_jobs {
            sqlx::query(
                "INSERT INTO weir_jobs (id, namespace, name, run_id, priority, labels, spec, state, error, ending, \
                 created_ms, updated_ms, finished_ms, deadline_ms, last_seq, tasks_total, tasks_succeeded, \
                 tasks_failed, tasks_running, trace_parent) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id(j.id))
            .bind(&j.spec.namespace)
            .bind(&j.spec.name)
            .bind(&j.spec.run_id)
            .bind(i64::from(j.spec.priority))
            .bind(codec::labels_json(j))
            .bind(codec::spec_json(j))
            .bind(j.state.as_str())
            .bind(&j.error)
            .bind(j.ending.map(|e| e.as_str()))
            .bind(j.created_ms)
            .bind(j.updated_ms)
            .bind(j.finished_ms)
            .bind(j.deadline_ms)
            .bind(i(j.last_seq))
            .bind(i64::from(j.counts.total))
            .bind(i64::from(j.counts.succeeded))
            .bind(i64::from(j.counts.failed))
            .bind(i64::from(j.counts.running))
            .bind(&j.trace_parent)
            .execute(&mut *tx)
            .await?;
        }
        for j in &c.jobs {
            sqlx::query(
                "UPDATE weir_jobs SET state = ?, error = ?, ending = ?, updated_ms = ?, finished_ms = ?, \
                 deadline_ms = ?, last_seq = ?, tasks_total = ?, tasks_succeeded = ?, tasks_failed = ?, \
                 tasks_running = ? WHERE id = ?",
            )
            .bind(j.state.as_str())
            .bind(&j.error)
            .bind(j.ending.map(|e| e.as_str()))
            .bind(j.updated_ms)
            .bind(j.finished_ms)
            .bind(j.deadline_ms)
            .bind(i(j.last_seq))
            .bind(i64::from(j.counts.total))
            .bind(i64::from(j.counts.succeeded))
            .bind(i64::from(j.counts.failed))
            .bind(i64::from(j.counts.running))
            .bind(id(j.id))
            .execute(&mut *tx)
            .await?;
        }
        for d in &c.deleted_tasks {
            sqlx::query("DELETE FROM weir_tasks WHERE id = ?").bind(id(*d)).execute(&mut *tx).await?;
        }
        for t in &c.tasks {
            sqlx::query(
                "INSERT INTO weir_tasks (id, job_id, step_id, kind, queue, depends_on, compensates, state, attempt, \
                 fence, worker, lease_expires_ms, ready_ms, retry_at_ms, started_ms, finished_ms, error_kind, \
                 error_message, output, cancel_requested) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt, \
                 fence = excluded.fence, worker = excluded.worker, lease_expires_ms = excluded.lease_expires_ms, \
                 ready_ms = excluded.ready_ms, retry_at_ms = excluded.retry_at_ms, \
                 started_ms = excluded.started_ms, finished_ms = excluded.finished_ms, \
                 error_kind = excluded.error_kind, error_message = excluded.error_message, \
                 output = excluded.output, cancel_requested = excluded.cancel_requested",
            )
            .bind(id(t.id))
            .bind(id(t.job_id))
            .bind(&t.step_id)
            .bind(&t.kind)
            .bind(&t.queue)
            .bind(codec::deps_json(t))
            .bind(&t.compensates)
            .bind(t.state.as_str())
            .bind(i64::from(t.attempt))
            .bind(i(t.fence))
            .bind(&t.worker)
            .bind(t.lease_expires_ms)
            .bind(t.ready_ms)
            .bind(t.retry_at_ms)
            .bind(t.started_ms)
            .bind(t.finished_ms)
            .bind(&t.error_kind)
            .bind(&t.error_message)
            .bind(&t.output)
            .bind(t.cancel_requested)
            .execute(&mut *tx)
            .await?;
        }
        for e in &c.events {
            sqlx::query(
                "INSERT INTO weir_events (job_id, seq, type, time_ms, task_id, step_id, job_state, task_state, message) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id(e.job_id))
            .bind(i(e.seq))
            .bind(e.kind)
            .bind(e.time_ms)
            .bind(e.task_id.map(id))
            .bind(&e.step_id)
            .bind(e.job_state.as_str())
            .bind(e.task_state.map(|s| s.as_str()))
            .bind(&e.message)
            .execute(&mut *tx)
            .await?;
        }
        for m in &c.messages {
            insert_message(&mut tx, m).await?;
        }
        watermarks::advance(&mut tx, &c.watermarks).await?;
        audit::append(&mut tx, &c.audit).await?;
        connections::apply(&mut tx, &c.connections).await?;
        schedules::apply(&mut tx, &c.schedules).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_started(&self) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
        paging::started(&self.pool).await
    }

    async fn pending_ranks(
        &self,
        from: Option<weir_core::engine::JobRank>,
        limit: i64,
    ) -> Result<Vec<(weir_core::engine::JobRank, i64)>, StoreError> {
        paging::ranks(&self.pool, from, limit).await
    }

    async fn load_jobs(&self, ids: &[Uuid]) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
        paging::jobs(&self.pool, ids).await
    }

    async fn overdue_pending(
        &self,
        from: weir_core::engine::JobRank,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        paging::overdue(&self.pool, from, now, limit).await
    }

    async fn get_job(&self, job_id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM weir_jobs WHERE id = ?"))
            .bind(id(job_id))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(codec::job)
            .transpose()
    }

    async fn find_job(&self, namespace: &str, name: &str, run_id: &str) -> Result<Option<Uuid>, StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM weir_jobs WHERE namespace = ? AND name = ? AND run_id = ?")
                .bind(namespace)
                .bind(name)
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        found.map(|s| Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("job id {s:?}: {e}")))).transpose()
    }

    async fn list_jobs(&self, f: &JobFilter, limit: u32, after: Option<Cursor>) -> Result<JobPage, StoreError> {
        let mut q = QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM weir_jobs WHERE 1 = 1"));
        if let Some(ns) = &f.namespace {
            q.push(" AND namespace = ").push_bind(ns.clone());
        }
        if let Some(within) = &f.within {
            q.push(" AND namespace IN (SELECT value FROM json_each(")
                .push_bind(serde_json::to_string(within).unwrap_or_default())
                .push("))");
        }
        if let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(n) = &f.name {
            q.push(" AND name = ").push_bind(n.clone());
        }
        for (k, v) in &f.labels {
            // Label keys are validated to [A-Za-z0-9_.-]; quoting keeps '.' literal in the path.
            q.push(" AND json_extract(labels, ").push_bind(format!("$.\"{k}\"")).push(") = ").push_bind(v.clone());
        }
        if let Some(c) = after {
            q.push(" AND (created_ms, id) < (").push_bind(c.created_ms).push(", ").push_bind(id(c.id)).push(")");
        }
        q.push(" ORDER BY created_ms DESC, id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        codec::page(rows.iter().map(codec::job).collect::<Result<Vec<_>, _>>()?, limit)
    }

    async fn get_task(&self, task_id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM weir_tasks WHERE id = ?"))
            .bind(id(task_id))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(codec::task)
            .transpose()
    }

    async fn job_tasks(&self, job_id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM weir_tasks WHERE job_id = ?"))
            .bind(id(job_id))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(codec::task)
            .collect()
    }

    async fn events(&self, job_id: Uuid, from_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM weir_events WHERE job_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
        ))
        .bind(id(job_id))
        .bind(i(from_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(codec::event)
        .collect()
    }

    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        sqlx::query(
            "SELECT e.id AS outbox_id, e.job_id, e.seq, e.type, e.time_ms, e.task_id, e.step_id, e.job_state, \
             e.task_state, e.message, j.namespace, j.name AS job_name, j.trace_parent \
             FROM weir_events e JOIN weir_jobs j ON j.id = e.job_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(codec::outbox_event)
        .collect()
    }

    async fn messages_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, OutboxMessage)>, StoreError> {
        sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM weir_messages WHERE id > ? ORDER BY id LIMIT ?"))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(codec::message)
            .collect()
    }

    async fn messages_tail(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM weir_messages").fetch_one(&self.pool).await?)
    }

    async fn outbox_tail(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM weir_events").fetch_one(&self.pool).await?)
    }

    async fn relay_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT last_id FROM weir_relay WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_relay_position(&self, epoch: i64, name: &str, last_id: i64) -> Result<(), StoreError> {
        let mut tx = fenced(&self.pool, epoch).await?;
        sqlx::query("INSERT INTO weir_relay (name, last_id) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id")
            .bind(name)
            .bind(last_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_files(&self, watch: &str, files: &[SeenFile], now: Millis) -> Result<Vec<ClaimedFile>, StoreError> {
        // One writer at a time (SQLite); the upsert changes only rows whose fingerprint
        // differs and returns only what it inserted or changed.
        let mut tx = self.pool.begin().await?;
        let mut claimed = Vec::new();
        for f in files {
            let row = sqlx::query(
                "INSERT INTO weir_files (watch, path, size, modified_ms, etag, fingerprint, generation, state, \
                                         first_seen_ms, changed_ms) VALUES (?, ?, ?, ?, ?, ?, 0, 'discovered', ?, ?) \
                 ON CONFLICT (watch, path) DO UPDATE SET size = excluded.size, modified_ms = excluded.modified_ms, \
                    etag = excluded.etag, fingerprint = excluded.fingerprint, state = 'discovered', job_id = NULL, \
                    changed_ms = excluded.changed_ms \
                 WHERE weir_files.fingerprint <> excluded.fingerprint \
                 RETURNING path, size, modified_ms, etag, generation",
            )
            .bind(watch)
            .bind(&f.path)
            .bind(i(f.size))
            .bind(f.modified_ms)
            .bind(&f.etag)
            .bind(f.fingerprint())
            .bind(now)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = row {
                claimed.push(codec::claimed_file(&r)?);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn pending_files(&self, watch: &str, limit: u32) -> Result<Vec<ClaimedFile>, StoreError> {
        sqlx::query(
            "SELECT path, size, modified_ms, etag, generation FROM weir_files \
             WHERE watch = ? AND state = 'discovered' ORDER BY changed_ms, path LIMIT ?",
        )
        .bind(watch)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(codec::claimed_file)
        .collect()
    }

    async fn mark_file_started(
        &self,
        watch: &str,
        claimed: &ClaimedFile,
        job_id: &str,
        event: &OutboxMessage,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE weir_files SET state = 'started', job_id = ?, changed_ms = ? \
             WHERE watch = ? AND path = ? AND fingerprint = ? AND generation = ? AND state = 'discovered'",
        )
        .bind(job_id)
        .bind(now)
        .bind(watch)
        .bind(&claimed.file.path)
        .bind(claimed.file.fingerprint())
        .bind(i64::from(claimed.generation))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(false);
        }
        insert_message(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_files(&self, watch: Option<&str>, limit: u32) -> Result<Vec<FileRecord>, StoreError> {
        sqlx::query(
            "SELECT watch, path, size, modified_ms, etag, generation, state, job_id, first_seen_ms, changed_ms \
             FROM weir_files WHERE (?1 IS NULL OR watch = ?1) ORDER BY watch, path LIMIT ?2",
        )
        .bind(watch)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(codec::file_record)
        .collect()
    }

    async fn redrive_file(&self, watch: &str, path: &str, now: Millis) -> Result<Option<FileRecord>, StoreError> {
        let row = sqlx::query(
            "UPDATE weir_files SET generation = generation + 1, state = 'discovered', job_id = NULL, changed_ms = ? \
             WHERE watch = ? AND path = ? RETURNING watch, path, size, modified_ms, etag, generation, state, job_id, first_seen_ms, changed_ms",
        )
        .bind(now)
        .bind(watch)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(codec::file_record).transpose()
    }

    async fn claim_poll(&self, watch: &str, holder: &str, now: Millis, interval_ms: i64) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "INSERT INTO weir_watch_polls (watch, next_poll_ms, holder) VALUES (?, ?, ?) \
             ON CONFLICT (watch) DO UPDATE SET next_poll_ms = excluded.next_poll_ms, holder = excluded.holder \
             WHERE weir_watch_polls.next_poll_ms <= ?",
        )
        .bind(watch)
        .bind(now + interval_ms)
        .bind(holder)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn record_dataset_versions(&self, versions: &[DatasetVersion]) -> Result<u32, StoreError> {
        datasets::record(&self.pool, versions).await
    }

    async fn dataset_versions(&self, dataset: &str) -> Result<Vec<DatasetVersion>, StoreError> {
        datasets::versions(&self.pool, dataset).await
    }

    async fn list_datasets(&self, limit: u32) -> Result<Vec<DatasetVersion>, StoreError> {
        datasets::list(&self.pool, limit).await
    }

    async fn watermark(&self, namespace: &str, key: &str) -> Result<Option<Watermark>, StoreError> {
        watermarks::get(&self.pool, namespace, key).await
    }

    async fn list_watermarks(&self, namespace: &str, limit: u32) -> Result<Vec<Watermark>, StoreError> {
        watermarks::list(&self.pool, namespace, limit).await
    }

    async fn audit(
        &self,
        filter: &weir_core::audit::AuditFilter,
        limit: u32,
    ) -> Result<Vec<weir_core::audit::AuditRecord>, StoreError> {
        audit::list(&self.pool, filter, limit).await
    }

    async fn purge_audit(&self, before: weir_core::Millis) -> Result<u64, StoreError> {
        audit::purge(&self.pool, before).await
    }

    async fn relay_positions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        retention::positions(&self.pool).await
    }

    async fn purgeable_jobs(
        &self,
        sweep: &weir_core::retention::Sweep,
        published: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        retention::candidates(&self.pool, sweep, published, limit).await
    }

    async fn purge_jobs(
        &self,
        epoch: i64,
        sweep: &weir_core::retention::Sweep,
        published: Option<i64>,
        limit: u32,
        only: Option<&[Uuid]>,
    ) -> Result<crate::Purged, StoreError> {
        retention::jobs(&self.pool, epoch, sweep, published, limit, only).await
    }

    async fn purge_messages(
        &self,
        epoch: i64,
        published: Option<i64>,
        before: Millis,
        limit: u32,
    ) -> Result<u64, StoreError> {
        retention::messages(&self.pool, epoch, published, before, limit).await
    }

    async fn reclaim(&self) -> Result<bool, StoreError> {
        // SQLite reuses the pages a delete frees (its free list); the file keeps its size.
        Ok(false)
    }

    async fn refresh_statistics(&self) -> Result<bool, StoreError> {
        // SQLite's planner takes a unique index for equality on all its columns without
        // statistics.
        Ok(false)
    }

    async fn connections(
        &self,
        namespace: &str,
        limit: u32,
    ) -> Result<Vec<weir_core::connection::Connection>, StoreError> {
        connections::list(&self.pool, namespace, limit).await
    }

    async fn schedules(
        &self,
        namespace: &str,
        limit: u32,
    ) -> Result<Vec<weir_core::schedule::ScheduleRecord>, StoreError> {
        schedules::list(&self.pool, namespace, limit).await
    }

    async fn schedule(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<weir_core::schedule::ScheduleRecord>, StoreError> {
        schedules::get(&self.pool, namespace, name).await
    }
}

/// Writes one message to the outbox of messages, in the caller's transaction.
pub(super) async fn insert_message(tx: &mut SqliteConnection, m: &OutboxMessage) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO weir_messages (topic, key, type, subject, time_ms, data) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&m.topic)
        .bind(&m.key)
        .bind(&m.kind)
        .bind(&m.subject)
        .bind(m.time_ms)
        .bind(m.data.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
