//! The production store on PostgreSQL. Each commit is one transaction whatever its size
//! (arrays bound once and expanded with `UNNEST`): the engine's records in one statement
//! (`commit.rs`), which is the whole commit unless it carries messages, watermarks, audit
//! records or connections, written after it in the same transaction.

mod audit;
mod commit;
mod connections;
mod datasets;
mod paging;
mod retention;
mod schedules;
mod watermarks;

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Connection, PgConnection, QueryBuilder, Transaction};
use tokio::sync::Mutex;
use uuid::Uuid;
use weir_core::engine::Changes;
use weir_core::files::SeenFile;
use weir_core::model::{
    ClaimedFile, DatasetVersion, EventRecord, FileRecord, JobRecord, OutboxEvent, OutboxMessage, TaskRecord,
};
use weir_core::watermark::Watermark;
use weir_core::Millis;

use crate::codec::{self, EVENT_COLUMNS, JOB_COLUMNS, MESSAGE_COLUMNS, TASK_COLUMNS};
use crate::migrate::{self, Migration};
use crate::{Cursor, JobFilter, JobPage, Store, StoreError};

/// Advisory lock class that elects the master ("weir" in ASCII); the schema is the key.
const LEADER_LOCK: i32 = 0x7765_6972;
/// Advisory lock class that serializes migrations.
const MIGRATE_LOCK: i32 = 0x7765_6973;
/// Advisory lock taken by every writer of `weir_messages` until its commit, so message
/// ids commit in order and the relay, which reads `id > position`, skips none.
const MESSAGES_LOCK: i64 = 0x7765_6974;

/// `PgStore::analyzed_at` when the server keeps its statistics itself.
const AUTOVACUUM_ON: u64 = u64::MAX - 1;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    /// The session that holds the leader lock, kept open for as long as we lead.
    leader: Mutex<Option<PgConnection>>,
    /// Jobs and schedules this store wrote, and how many it had written at its last
    /// ANALYZE, for [`Store::refresh_statistics`].
    written_rows: std::sync::atomic::AtomicU64,
    analyzed_at: std::sync::atomic::AtomicU64,
}

impl PgStore {
    /// Connects (a small pool: the master batches its writes) and applies migrations.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        Self::connect_with(options, 8).await
    }

    /// Connects with explicit options (tests use this to pick a schema).
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        let store = PgStore {
            pool,
            options,
            leader: Mutex::new(None),
            written_rows: Default::default(),
            analyzed_at: std::sync::atomic::AtomicU64::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let lock = "SELECT pg_advisory_lock($1, hashtext(current_schema()))";
        sqlx::query(lock).bind(MIGRATE_LOCK).execute(&mut *conn).await?;
        let result = self.apply(&mut conn).await;
        let unlock = "SELECT pg_advisory_unlock($1, hashtext(current_schema()))";
        sqlx::query(unlock).bind(MIGRATE_LOCK).execute(&mut *conn).await?;
        result
    }

    async fn apply(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
            migrate::TABLE
        ))
        .execute(&mut *conn)
        .await?;
        let done: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {}", migrate::TABLE)).fetch_all(&mut *conn).await?;
        for m in migrate::POSTGRES.iter().filter(|m| !done.contains(&m.version)) {
            apply_one(conn, m).await.map_err(|source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source,
            })?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        Ok(())
    }
}

async fn apply_one(conn: &mut PgConnection, m: &Migration) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for stmt in migrate::statements(m.sql) {
        sqlx::query(&stmt).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("INSERT INTO {} (version, name, applied_ms) VALUES ($1, $2, $3)", migrate::TABLE))
        .bind(m.version)
        .bind(m.name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Begins a transaction that only the master holding `epoch` may finish.
async fn fenced(pool: &PgPool, epoch: i64) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    let current: i64 =
        sqlx::query_scalar("SELECT epoch FROM weir_leader WHERE id = 1 FOR SHARE").fetch_one(&mut *tx).await?;
    if current != epoch {
        return Err(StoreError::Fenced { mine: epoch, current });
    }
    Ok(tx)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn acquire_leadership(&self, holder: &str, now: Millis) -> Result<i64, StoreError> {
        let mut guard = self.leader.lock().await;
        let mut conn = match guard.take() {
            // Already leader: the lock is re-entrant for this session; just bump the epoch.
            Some(conn) => conn,
            None => {
                let mut conn = PgConnection::connect_with(&self.options).await?;
                // One election per schema, so several deployments can share a database.
                // Blocks until the previous leader's session ends.
                sqlx::query("SELECT pg_advisory_lock($1, hashtext(current_schema()))")
                    .bind(LEADER_LOCK)
                    .execute(&mut conn)
                    .await?;
                conn
            }
        };
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE weir_leader SET epoch = epoch + 1, holder = $1, acquired_ms = $2 WHERE id = 1 RETURNING epoch",
        )
        .bind(holder)
        .bind(now)
        .fetch_one(&mut conn)
        .await?;
        *guard = Some(conn);
        Ok(epoch)
    }

    async fn commit(&self, epoch: i64, c: &Changes) -> Result<(), StoreError> {
        if c.is_empty() {
            return Ok(());
        }
        // Counted before the commit lands (a failed one only brings an ANALYZE forward).
        let written = c.new_jobs.len() + c.schedules.len();
        self.written_rows.fetch_add(written as u64, std::sync::atomic::Ordering::Relaxed);
        // The engine's records (jobs, tasks, events) go in one statement: on the hot path
        // (a chain's next step, a drain) that is the whole commit, one round trip.
        if c.messages.is_empty()
            && c.watermarks.is_empty()
            && c.audit.is_empty()
            && c.connections.is_empty()
            && c.schedules.is_empty()
        {
            let current: i64 = commit::records(epoch, c).fetch_one(&self.pool).await?;
            return if current == epoch { Ok(()) } else { Err(StoreError::Fenced { mine: epoch, current }) };
        }
        let mut tx = fenced(&self.pool, epoch).await?;
        let records = c.new_jobs.len() + c.jobs.len() + c.deleted_tasks.len() + c.tasks.len() + c.events.len();
        if records > 0 {
            commit::records(epoch, c).fetch_one(&mut *tx).await?;
        }
        if !c.messages.is_empty() {
            let m = &c.messages;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MESSAGES_LOCK).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO weir_messages (topic, key, type, subject, time_ms, data) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[])",
            )
            .bind(m.iter().map(|m| m.topic.clone()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.key.clone()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.kind.clone()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.subject.clone()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.time_ms).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.data.to_string()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
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

    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query(&format!("SELECT {} FROM weir_jobs WHERE id = $1", pg_job_cols()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(codec::job)
            .transpose()
    }

    async fn find_job(&self, namespace: &str, name: &str, run_id: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM weir_jobs WHERE namespace = $1 AND name = $2 AND run_id = $3")
            .bind(namespace)
            .bind(name)
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_jobs(&self, f: &JobFilter, limit: u32, after: Option<Cursor>) -> Result<JobPage, StoreError> {
        let mut q = QueryBuilder::new(format!("SELECT {} FROM weir_jobs WHERE TRUE", pg_job_cols()));
        if let Some(ns) = &f.namespace {
            q.push(" AND namespace = ").push_bind(ns.clone());
        }
        if let Some(within) = &f.within {
            q.push(" AND namespace = ANY(").push_bind(within.clone()).push(")");
        }
        if let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(n) = &f.name {
            q.push(" AND name = ").push_bind(n.clone());
        }
        if !f.labels.is_empty() {
            q.push(" AND labels @> ").push_bind(codec::label_filter_json(&f.labels)).push("::jsonb");
        }
        if let Some(c) = after {
            q.push(" AND (created_ms, id) < (").push_bind(c.created_ms).push(", ").push_bind(c.id).push(")");
        }
        q.push(" ORDER BY created_ms DESC, id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        codec::page(rows.iter().map(codec::job).collect::<Result<Vec<_>, _>>()?, limit)
    }

    async fn get_task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        sqlx::query(&format!("SELECT {} FROM weir_tasks WHERE id = $1", pg_task_cols()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(codec::task)
            .transpose()
    }

    async fn job_tasks(&self, id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        sqlx::query(&format!("SELECT {} FROM weir_tasks t WHERE job_id = $1", pg_task_cols()))
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(codec::task)
            .collect()
    }

    async fn events(&self, job_id: Uuid, from_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM weir_events WHERE job_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            pg_event_cols()
        ))
        .bind(job_id)
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
            "SELECT e.id AS outbox_id, e.job_id::text AS job_id, e.seq, e.type, e.time_ms, e.task_id::text AS task_id, \
             e.step_id, e.job_state, e.task_state, e.message, j.namespace, j.name AS job_name, j.trace_parent \
             FROM weir_events e JOIN weir_jobs j ON j.id = e.job_id WHERE e.id > $1 ORDER BY e.id LIMIT $2",
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
        sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM weir_messages WHERE id > $1 ORDER BY id LIMIT $2"))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(codec::message)
            .collect()
    }

    async fn messages_tail(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::int8 FROM weir_messages").fetch_one(&self.pool).await?)
    }

    async fn outbox_tail(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::int8 FROM weir_events").fetch_one(&self.pool).await?)
    }

    async fn relay_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT last_id FROM weir_relay WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_relay_position(&self, epoch: i64, name: &str, last_id: i64) -> Result<(), StoreError> {
        let mut tx = fenced(&self.pool, epoch).await?;
        sqlx::query(
            "INSERT INTO weir_relay (name, last_id) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET last_id = EXCLUDED.last_id",
        )
        .bind(name)
        .bind(last_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_files(&self, watch: &str, files: &[SeenFile], now: Millis) -> Result<Vec<ClaimedFile>, StoreError> {
        if files.is_empty() {
            return Ok(vec![]);
        }
        // Only a row whose fingerprint differs is updated, and only updated or inserted
        // rows are returned: of two replicas listing at once, one claims each version.
        let rows = sqlx::query(
            "INSERT INTO weir_files (watch, path, size, modified_ms, etag, fingerprint, generation, state, \
                                     first_seen_ms, changed_ms) \
             SELECT $1, p, s, m, e, f, 0, 'discovered', $7, $7 \
             FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[]) AS t(p, s, m, e, f) \
             ON CONFLICT (watch, path) DO UPDATE SET size = EXCLUDED.size, modified_ms = EXCLUDED.modified_ms, \
                etag = EXCLUDED.etag, fingerprint = EXCLUDED.fingerprint, state = 'discovered', job_id = NULL, \
                changed_ms = EXCLUDED.changed_ms \
             WHERE weir_files.fingerprint <> EXCLUDED.fingerprint \
             RETURNING path, size, modified_ms, etag, generation",
        )
        .bind(watch)
        .bind(files.iter().map(|f| f.path.clone()).collect::<Vec<_>>())
        .bind(files.iter().map(|f| i(f.size)).collect::<Vec<_>>())
        .bind(files.iter().map(|f| f.modified_ms).collect::<Vec<_>>())
        .bind(files.iter().map(|f| f.etag.clone()).collect::<Vec<_>>())
        .bind(files.iter().map(SeenFile::fingerprint).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(codec::claimed_file).collect()
    }

    async fn pending_files(&self, watch: &str, limit: u32) -> Result<Vec<ClaimedFile>, StoreError> {
        sqlx::query(
            "SELECT path, size, modified_ms, etag, generation FROM weir_files \
             WHERE watch = $1 AND state = 'discovered' ORDER BY changed_ms, path LIMIT $2",
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
            "UPDATE weir_files SET state = 'started', job_id = $5, changed_ms = $6 \
             WHERE watch = $1 AND path = $2 AND fingerprint = $3 AND generation = $4 AND state = 'discovered'",
        )
        .bind(watch)
        .bind(&claimed.file.path)
        .bind(claimed.file.fingerprint())
        .bind(i64::from(claimed.generation))
        .bind(job_id)
        .bind(now)
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
             FROM weir_files WHERE ($1::text IS NULL OR watch = $1) ORDER BY watch, path LIMIT $2",
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
            "UPDATE weir_files SET generation = generation + 1, state = 'discovered', job_id = NULL, changed_ms = $3 \
             WHERE watch = $1 AND path = $2 RETURNING watch, path, size, modified_ms, etag, generation, state, job_id, first_seen_ms, changed_ms",
        )
        .bind(watch)
        .bind(path)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(codec::file_record).transpose()
    }

    async fn claim_poll(&self, watch: &str, holder: &str, now: Millis, interval_ms: i64) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "INSERT INTO weir_watch_polls (watch, next_poll_ms, holder) VALUES ($1, $2, $3) \
             ON CONFLICT (watch) DO UPDATE SET next_poll_ms = EXCLUDED.next_poll_ms, holder = EXCLUDED.holder \
             WHERE weir_watch_polls.next_poll_ms <= $4",
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
        retention::reclaim(&self.pool).await
    }

    async fn refresh_statistics(&self) -> Result<bool, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (written, last) = (self.written_rows.load(Relaxed), self.analyzed_at.load(Relaxed));
        if last == AUTOVACUUM_ON {
            return Ok(false);
        }
        // Autovacuum's own threshold: 50 rows and a tenth of the table (here: of the rows
        // written by the time of the last ANALYZE). Not before: an empty table analyzed is
        // planned as empty while it grows.
        if written.saturating_sub(last) < 50 + last / 10 {
            return Ok(false);
        }
        if retention::autovacuum_on(&self.pool).await? {
            self.analyzed_at.store(AUTOVACUUM_ON, Relaxed);
            return Ok(false);
        }
        sqlx::query("ANALYZE weir_jobs, weir_tasks, weir_schedules").execute(&self.pool).await?;
        self.analyzed_at.store(written, Relaxed);
        Ok(true)
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

/// Writes one message to the outbox of messages, in the caller's transaction; the lock
/// keeps ids in commit order for the relay.
pub(super) async fn insert_message(tx: &mut PgConnection, m: &OutboxMessage) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MESSAGES_LOCK).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO weir_messages (topic, key, type, subject, time_ms, data) VALUES ($1, $2, $3, $4, $5, $6)")
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

fn pg_cast(cols: &str) -> String {
    cols.split(',')
        .map(|c| match c.trim() {
            c @ ("id" | "job_id" | "task_id" | "spec" | "depends_on") => format!("{c}::text AS {c}"),
            c => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

static JOB_COLS: LazyLock<String> = LazyLock::new(|| pg_cast(JOB_COLUMNS));
static TASK_COLS: LazyLock<String> = LazyLock::new(|| pg_cast(TASK_COLUMNS));
static EVENT_COLS: LazyLock<String> = LazyLock::new(|| pg_cast(EVENT_COLUMNS));

fn pg_job_cols() -> &'static str {
    &JOB_COLS
}
fn pg_task_cols() -> &'static str {
    &TASK_COLS
}
fn pg_event_cols() -> &'static str {
    &EVENT_COLS
}
