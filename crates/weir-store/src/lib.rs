//! Weir's persistence: one [`Store`] trait with two implementations —
//! [`postgres::PgStore`] for production and [`sqlite::SqliteStore`], the embedded store of
//! the one-command mode — and one conformance suite (`tests/conformance.rs`) run on both.
//!
//! The master is the only writer: its engine hands over each batch of changed records and
//! the store writes them in one transaction ([`Store::commit`]; on PostgreSQL the engine's
//! records are one statement). The retention purge deletes what is past its period in
//! bounded, fenced batches ([`Store::purge_jobs`]). Reads serve the API (lists, tasks,
//! event history), recovery ([`Store::load_unfinished`]) and the master's memory budget,
//! which pages pending jobs in best-ranked first ([`Store::load_pending`]).
//! Migrations live in `migrations/<backend>/` at the top of the repo; [`migrate`] applies them.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;
use weir_core::audit::{AuditFilter, AuditRecord};
use weir_core::engine::{Changes, JobRank};
use weir_core::files::SeenFile;
use weir_core::model::{
    ClaimedFile, DatasetVersion, EventRecord, FileRecord, JobRecord, JobState, OutboxEvent, OutboxMessage, TaskRecord,
};
use weir_core::retention::Sweep;
use weir_core::watermark::Watermark;
use weir_core::Millis;

mod codec;
pub mod migrate;
pub mod postgres;
pub mod sqlite;

/// Pending jobs read back into memory, best-ranked first (see [`Store::load_pending`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingPage {
    pub jobs: Vec<JobRecord>,
    pub tasks: Vec<TaskRecord>,
    /// The rank of the first pending job not read; none when all were.
    pub next: Option<JobRank>,
}

/// Which of the pending jobs a page takes, given their ranks and task counts in rank
/// order (one more than `max_jobs` when there are more): as many as fit in `max_tasks`
/// but at least one, and the rank of the first one left.
fn page_cut(ranked: &[(JobRank, i64)], max_jobs: usize, max_tasks: usize) -> (Vec<Uuid>, Option<JobRank>) {
    let mut taken = Vec::new();
    let mut tasks = 0usize;
    for (rank, n) in ranked {
        let n = usize::try_from(*n).unwrap_or(0);
        if taken.len() >= max_jobs || (!taken.is_empty() && tasks + n > max_tasks) {
            return (taken, Some(*rank));
        }
        tasks += n;
        taken.push(rank.id);
    }
    (taken, None)
}

/// A SQL LIMIT for "up to `n`, and one more to see whether more are left".
fn limit_and_one(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX - 1).saturating_add(1)
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Another master took over; this one must stop writing.
    #[error("leadership lost: this master holds epoch {mine}, the store is at epoch {current}")]
    Fenced { mine: i64, current: i64 },
    /// A stored value could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration { version: i64, name: &'static str, source: sqlx::Error },
    #[error("bad store URL {0:?}: use postgres://… or sqlite://path")]
    BadUrl(String),
}

impl StoreError {
    /// Whether trying again may succeed: not for a value the database refuses (SQLSTATE
    /// classes 22 "data exception" and 23 "integrity constraint violation").
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                !db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
            }
            StoreError::Database(_) | StoreError::Fenced { .. } => true,
            _ => false,
        }
    }
}

/// Filters of a job listing; `None`/empty means any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub namespace: Option<String>,
    /// Only these namespaces (the caller's scope); `None` = any.
    pub within: Option<Vec<String>>,
    pub state: Option<JobState>,
    pub name: Option<String>,
    /// Every pair must be among the job's labels.
    pub labels: BTreeMap<String, String>,
}

/// Position in the newest-first job listing: the last job of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_ms: Millis,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque page token for clients.
    pub fn to_token(self) -> String {
        format!("{}.{}", self.created_ms, self.id.simple())
    }

    /// Reads a page token; the error names the problem.
    pub fn from_token(token: &str) -> Result<Cursor, String> {
        let bad = || format!("bad page token {token:?}");
        let (ms, id) = token.split_once('.').ok_or_else(bad)?;
        Ok(Cursor { created_ms: ms.parse().map_err(|_| bad())?, id: Uuid::parse_str(id).map_err(|_| bad())? })
    }
}

/// One page of jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// The master's durable state. See the crate docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "postgres" or "sqlite", for logs.
    fn backend(&self) -> &'static str;

    /// Becomes the only writer: waits until no other master holds leadership, then bumps
    /// and returns the epoch that every later [`Store::commit`] is fenced with.
    async fn acquire_leadership(&self, holder: &str, now: Millis) -> Result<i64, StoreError>;

    /// Writes one batch of engine changes atomically, if `epoch` is still current.
    async fn commit(&self, epoch: i64, changes: &Changes) -> Result<(), StoreError>;

    /// Every job not yet finished, and every finished job with a task still leased, with
    /// their tasks (recovery at start: a late report of such a task must find it).
    async fn load_unfinished(&self) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError> {
        let (mut jobs, mut tasks) = self.load_started().await?;
        let mut pending = self.load_pending(None, usize::MAX, usize::MAX).await?;
        jobs.append(&mut pending.jobs);
        tasks.append(&mut pending.tasks);
        Ok((jobs, tasks))
    }

    /// What [`Store::load_unfinished`] loads but pending jobs: those that started (or were
    /// steered) and are not finished, and finished ones with a task still leased.
    async fn load_started(&self) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError>;

    /// Pending jobs ranked at or after `from` (all, without it), best first in the ready
    /// queue's order (priority, then age, then id), with their tasks: at most `max_jobs`
    /// jobs and, past the first job, `max_tasks` tasks. The master's memory budget reads
    /// the backlog this way, a page at a time.
    async fn load_pending(
        &self,
        from: Option<JobRank>,
        max_jobs: usize,
        max_tasks: usize,
    ) -> Result<PendingPage, StoreError> {
        let ranked = self.pending_ranks(from, limit_and_one(max_jobs)).await?;
        let (ids, next) = page_cut(&ranked, max_jobs, max_tasks);
        if ids.is_empty() {
            return Ok(PendingPage { next, ..Default::default() });
        }
        let (jobs, tasks) = self.load_jobs(&ids).await?;
        Ok(PendingPage { jobs, tasks, next })
    }

    /// The ranks and task counts of pending jobs ranked at or after `from` (all, without
    /// it), best first, at most `limit`.
    async fn pending_ranks(&self, from: Option<JobRank>, limit: i64) -> Result<Vec<(JobRank, i64)>, StoreError>;

    /// These jobs (those that exist) with their tasks.
    async fn load_jobs(&self, ids: &[Uuid]) -> Result<(Vec<JobRecord>, Vec<TaskRecord>), StoreError>;

    /// Pending jobs ranked at or after `from` whose deadline passed by `now`, at most
    /// `limit`: parked jobs that must be read back to time out.
    async fn overdue_pending(&self, from: JobRank, now: Millis, limit: u32) -> Result<Vec<Uuid>, StoreError>;

    /// One job with its tasks, in any state.
    async fn load_job(&self, id: Uuid) -> Result<Option<(JobRecord, Vec<TaskRecord>)>, StoreError> {
        let Some(job) = self.get_job(id).await? else { return Ok(None) };
        Ok(Some((job, self.job_tasks(id).await?)))
    }

    /// One job.
    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;

    /// The job with this namespace/name/run id, if any.
    async fn find_job(&self, namespace: &str, name: &str, run_id: &str) -> Result<Option<Uuid>, StoreError>;

    /// Jobs newest first, `limit` at most, after `after`.
    async fn list_jobs(&self, filter: &JobFilter, limit: u32, after: Option<Cursor>) -> Result<JobPage, StoreError>;

    /// One task, in any state.
    async fn get_task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError>;

    /// A job's tasks, in no particular order.
    async fn job_tasks(&self, id: Uuid) -> Result<Vec<TaskRecord>, StoreError>;

    /// A job's events with `seq >= from_seq`, oldest first, `limit` at most.
    async fn events(&self, job_id: Uuid, from_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;

    /// Committed events after outbox position `after`, in commit order, `limit` at most,
    /// with their job's namespace, name and trace (the relay's read).
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The newest outbox position (0 when nothing was ever written).
    async fn outbox_tail(&self) -> Result<i64, StoreError>;

    /// Committed messages (events outside any job) after position `after`, in commit order.
    async fn messages_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, OutboxMessage)>, StoreError>;

    /// The newest message position (0 when none was ever written).
    async fn messages_tail(&self) -> Result<i64, StoreError>;

    /// Where relay `name` stopped, if it ever ran.
    async fn relay_position(&self, name: &str) -> Result<Option<i64>, StoreError>;

    /// Records that relay `name` published everything up to `last_id`. Refused with
    /// [`StoreError::Fenced`] unless `epoch` is current, so a deposed master cannot move it.
    async fn set_relay_position(&self, epoch: i64, name: &str, last_id: i64) -> Result<(), StoreError>;

    // The file manager's inventory (the master never touches it).

    /// Records what a listing of `watch` saw and returns the file versions this caller
    /// claimed: new paths and paths whose fingerprint changed. Concurrent callers never
    /// claim the same version twice.
    async fn claim_files(&self, watch: &str, files: &[SeenFile], now: Millis) -> Result<Vec<ClaimedFile>, StoreError>;

    /// Claimed versions of `watch` whose job has not been started yet (oldest first).
    async fn pending_files(&self, watch: &str, limit: u32) -> Result<Vec<ClaimedFile>, StoreError>;

    /// Marks a claimed version's job as started and writes its discovery event, in one
    /// transaction. `false` (and nothing written) if the version is no longer pending.
    async fn mark_file_started(
        &self,
        watch: &str,
        claimed: &ClaimedFile,
        job_id: &str,
        event: &OutboxMessage,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// The inventory, optionally of one watch, by path.
    async fn list_files(&self, watch: Option<&str>, limit: u32) -> Result<Vec<FileRecord>, StoreError>;

    /// Makes a known file pending again under a new generation, so it starts a new job;
    /// returns it as it now stands.
    async fn redrive_file(&self, watch: &str, path: &str, now: Millis) -> Result<Option<FileRecord>, StoreError>;

    /// Takes the next poll of `watch` if it is due (or never taken): only one replica lists
    /// a watch per interval.
    async fn claim_poll(&self, watch: &str, holder: &str, now: Millis, interval_ms: i64) -> Result<bool, StoreError>;

    // The dataset catalogue (the batch managers write it, the master never touches it).

    /// Records the versions of a dataset's schema the catalogue does not have yet, each
    /// with its `dev.weir.dataset.schema_changed` event, in one transaction; returns how
    /// many were new. Versions already recorded are left as they are.
    async fn record_dataset_versions(&self, versions: &[DatasetVersion]) -> Result<u32, StoreError>;

    /// Every recorded version of `dataset`, oldest first.
    async fn dataset_versions(&self, dataset: &str) -> Result<Vec<DatasetVersion>, StoreError>;

    /// The newest version of each dataset, by dataset.
    async fn list_datasets(&self, limit: u32) -> Result<Vec<DatasetVersion>, StoreError>;

    // Incremental collection's watermarks (written by `commit`, with the job's success).

    /// The watermark of `key` in `namespace`, if a job has stored one.
    async fn watermark(&self, namespace: &str, key: &str) -> Result<Option<Watermark>, StoreError>;

    /// The watermarks of a namespace (every namespace's for `""`), by namespace and key.
    async fn list_watermarks(&self, namespace: &str, limit: u32) -> Result<Vec<Watermark>, StoreError>;

    /// Audit records matching `filter`, newest first (written by [`Store::commit`]).
    async fn audit(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes the audit records older than `before` (the retention sweep); returns how many.
    async fn purge_audit(&self, before: Millis) -> Result<u64, StoreError>;

    // Retention (see `weir_core::retention`): the master's purge, in bounded batches, each
    // in its own transaction fenced like a commit.

    /// Every relay's position, by name (what the purge may delete is behind them).
    async fn relay_positions(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// At most `limit` jobs [`Store::purge_jobs`] would delete now, oldest finished first
    /// (the master's purge has the engine claim them before deleting).
    async fn purgeable_jobs(&self, sweep: &Sweep, published: Option<i64>, limit: u32) -> Result<Vec<Uuid>, StoreError>;

    /// Deletes at most `limit` jobs of `sweep` (oldest finished first), among `only` when
    /// given, with their tasks and events: jobs in a final state that finished before
    /// `sweep.before`, with no task still leased and, when `published` is given, no event
    /// after it (not yet relayed). Refused with [`StoreError::Fenced`] unless `epoch` is
    /// current.
    async fn purge_jobs(
        &self,
        epoch: i64,
        sweep: &Sweep,
        published: Option<i64>,
        limit: u32,
        only: Option<&[Uuid]>,
    ) -> Result<Purged, StoreError>;

    /// Deletes at most `limit` outbox messages, oldest first: those at or behind
    /// `published` (relayed), or with no relay (`None`) those written before `before`.
    /// Fenced like [`Store::purge_jobs`]; returns how many.
    async fn purge_messages(
        &self,
        epoch: i64,
        published: Option<i64>,
        before: Millis,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// After a purge deleted rows: makes their space reusable where the database would not
    /// do it on its own — on PostgreSQL with autovacuum off, a plain `VACUUM` (no lock that
    /// blocks writes) of the purged tables. Returns whether it ran one.
    async fn reclaim(&self) -> Result<bool, StoreError>;

    /// Keeps the planner's statistics current where the database would not on its own
    /// (PostgreSQL with autovacuum off): `ANALYZE` of the jobs, tasks and schedules once
    /// enough jobs and schedules were written since the last one (autovacuum's threshold). Without it a
    /// table that grew from empty is planned as empty, and a key lookup (a submission's run
    /// id) scans every job of its namespace. Returns whether it ran one.
    async fn refresh_statistics(&self) -> Result<bool, StoreError>;

    /// The named connections of `namespace` (every namespace's for `""`), by namespace and
    /// name (written by [`Store::commit`]).
    async fn connections(
        &self,
        namespace: &str,
        limit: u32,
    ) -> Result<Vec<weir_core::connection::Connection>, StoreError>;

    /// The schedules of `namespace` (every namespace's for `""`), by namespace and name
    /// (written by [`Store::commit`]).
    async fn schedules(
        &self,
        namespace: &str,
        limit: u32,
    ) -> Result<Vec<weir_core::schedule::ScheduleRecord>, StoreError>;

    /// One schedule.
    async fn schedule(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<weir_core::schedule::ScheduleRecord>, StoreError>;
}

/// What one purge batch deleted: the jobs (the engine forgets their keys), and how many
/// tasks and events went with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub jobs: Vec<Uuid>,
    pub tasks: u64,
    pub events: u64,
}

/// The job states a purge may delete, as stored.
pub(crate) fn final_states() -> Vec<&'static str> {
    JobState::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.as_str()).collect()
}

/// Opens the store a URL names — `postgres://…` or `sqlite://path/to/weir.db` — and
/// applies pending migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(std::path::Path::new(path)).await?))
    } else {
        Err(StoreError::BadUrl(url.to_string()))
    }
}

pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(n: u128) -> JobRank {
        JobRank { priority: 0, created_ms: 0, id: Uuid::from_u128(n) }
    }

    #[test]
    fn a_page_takes_what_fits_but_at_least_one_job() {
        let ranked = [(rank(1), 3), (rank(2), 3), (rank(3), 3)];
        assert_eq!(page_cut(&ranked, 10, 7), (vec![rank(1).id, rank(2).id], Some(rank(3))));
        assert_eq!(page_cut(&ranked, 10, 1), (vec![rank(1).id], Some(rank(2))), "one job even past the room");
        assert_eq!(page_cut(&ranked, 2, 100), (vec![rank(1).id, rank(2).id], Some(rank(3))), "at most max_jobs");
        assert_eq!(page_cut(&ranked, 10, 100), (vec![rank(1).id, rank(2).id, rank(3).id], None), "all read");
        assert_eq!(page_cut(&ranked, 0, 100), (vec![], Some(rank(1))), "none read: where the backlog starts");
        assert_eq!(limit_and_one(usize::MAX), i64::MAX);
    }
}
