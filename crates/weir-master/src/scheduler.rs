//! The scheduler task: the single owner of the engine.
//!
//! Handlers send [`Command`]s through a [`Handle`]. The task takes every command waiting
//! (up to `max_batch`), applies them to the engine in order, fires due timers, serves
//! long-polling workers, then commits all resulting changes in one transaction and only
//! then replies. Many commands therefore share one commit, which is how the master turns
//! a database that commits a few thousand transactions per second into many more task
//! state changes per second.
//!
//! Commits are pipelined: while one is on its way to the store the task goes on applying
//! commands, and what they changed leaves in the next commit the moment the first lands.
//! Commits still land one at a time and in order, and no reply leaves before the commit
//! of what it answers (and of everything before it) is durable. If a commit fails,
//! everyone in it and everyone applied after it is told UNAVAILABLE and the engine is
//! rebuilt from the store; if leadership was lost, the master stops.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_core::audit::AuditRecord;
use weir_core::engine::{Changes, Engine, EngineError, Failure, Lease, LeaseStatus};
use weir_core::model::{EventRecord, JobRecord, OutboxMessage, TaskRecord};
use weir_core::validate::ValidJob;
use weir_core::Millis;
use weir_store::{Store, StoreError};

use crate::now_ms;

/// Why a command got no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The change could not be made durable (or the master is stopping): try again.
    #[error("{0}")]
    Unavailable(String),
}

type Reply<T> = oneshot::Sender<Result<T, SchedError>>;

/// What handlers ask of the engine.
pub(crate) enum Command {
    Submit(Box<ValidJob>, Audit, Reply<(Uuid, bool)>),
    Pause(Uuid, Audit, Reply<()>),
    Resume(Uuid, Audit, Reply<()>),
    Cancel(Uuid, String, Audit, Reply<()>),
    /// Retry; carries the stored job in case it already left memory.
    Retry(Uuid, Option<Box<(JobRecord, Vec<TaskRecord>)>>, Audit, Reply<()>),
    Acquire {
        queue: String,
        worker: String,
        max: u32,
        wait: Duration,
        reply: Reply<Vec<Lease>>,
    },
    Heartbeat {
        worker: String,
        leases: Vec<(Uuid, u64)>,
        reply: Reply<Vec<(Uuid, LeaseStatus)>>,
    },
    Complete {
        task: Uuid,
        fence: u64,
        output: Option<String>,
        reply: Reply<()>,
    },
    /// Many success reports (a CompleteTasks call), each answered on its own.
    CompleteMany {
        reports: Vec<(Uuid, u64, Option<String>)>,
        reply: Reply<Vec<Result<(), EngineError>>>,
    },
    Fail {
        task: Uuid,
        fence: u64,
        failure: Failure,
        reply: Reply<bool>,
    },
    Release {
        worker: String,
        leases: Vec<(Uuid, u64)>,
        reply: Reply<u32>,
    },
    ReleaseWorker {
        worker: String,
        reply: Reply<u32>,
    },
    /// Events outside any job (worker status), written with the next commit.
    Publish(Vec<OutboxMessage>, Reply<()>),
    /// Audit records of refused calls, written with the next commit.
    Audit(Vec<AuditRecord>, Reply<()>),
    /// A named connection put or deleted, written with its audit record.
    Connection(Box<(weir_core::connection::ConnectionChange, AuditRecord)>, Reply<()>),
    /// A schedule written (or deleted) with the jobs its slots start and the runs they
    /// cancel, in one commit.
    Schedule(Box<ScheduleCommit>, Reply<ScheduleCommitted>),
    /// Jobs the retention purge is about to delete: those the engine does not hold are
    /// claimed (a retry of one is refused until it is forgotten) and returned.
    Claim(Vec<Uuid>, Reply<Vec<Uuid>>),
    /// Jobs the retention purge claimed (and deleted, or not): their keys are free again.
    Forget(Vec<Uuid>, Reply<()>),
}

/// The audit record of a client's call, completed with its outcome and written in the
/// commit of what the call changed.
pub(crate) type Audit = Option<Box<AuditRecord>>;

/// What a schedule's slots (or a call on a schedule) change, committed together: the jobs
/// start, the runs are cancelled, and the schedule is written with the started jobs in its
/// state — so a slot is handled exactly once, whatever crashes when.
pub(crate) struct ScheduleCommit {
    /// The schedule's namespace and name.
    pub key: (String, String),
    /// The schedule's record after the decisions (its `running` list is completed here
    /// with the jobs started, and rid of the runs cancelled here that ended); `None`
    /// leaves the record as it is (a backfill's jobs are not its runs) or, with `delete`,
    /// deletes it.
    pub record: Option<weir_core::schedule::ScheduleRecord>,
    pub delete: bool,
    /// Jobs to start, each for its slot.
    pub starts: Vec<(weir_core::schedule::Slot, ValidJob)>,
    /// Runs to cancel, with the reason.
    pub cancels: Vec<(Uuid, String)>,
    pub messages: Vec<OutboxMessage>,
    pub audit: Audit,
}

/// What a schedule commit did: the record as written, and each start's job and whether it
/// is new (not found again by its run id).
pub(crate) struct ScheduleCommitted {
    pub record: Option<weir_core::schedule::ScheduleRecord>,
    pub jobs: Vec<(weir_core::schedule::Slot, Uuid, bool)>,
}

/// Committed events, for WatchJob streams.
pub type EventBatch = Arc<Vec<EventRecord>>;

/// The handlers' side of the scheduler.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<EventBatch>,
}

/// The scheduler's side of the channel.
pub struct Inbox(mpsc::Receiver<Command>);

impl Handle {
    /// A handle and the inbox [`run`] reads from.
    pub fn new(max_batch: usize) -> (Handle, Inbox) {
        let (tx, rx) = mpsc::channel(max_batch.max(64) * 4);
        let (events, _) = broadcast::channel(EVENT_FEED_BATCHES);
        (Handle { tx, events }, Inbox(rx))
    }

    /// The live event feed (committed events only).
    pub fn events(&self) -> broadcast::Sender<EventBatch> {
        self.events.clone()
    }

    /// Subscribes to committed events.
    pub fn subscribe(&self) -> broadcast::Receiver<EventBatch> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SchedError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| SchedError::Unavailable("the master is stopping".into()))?;
        rx.await.map_err(|_| SchedError::Unavailable("the master is stopping".into()))?
    }

    pub(crate) async fn submit(&self, job: ValidJob, audit: Audit) -> Result<(Uuid, bool), SchedError> {
        self.ask(|r| Command::Submit(Box::new(job), audit, r)).await
    }
    pub(crate) async fn pause(&self, id: Uuid, audit: Audit) -> Result<(), SchedError> {
        self.ask(|r| Command::Pause(id, audit, r)).await
    }
    pub(crate) async fn resume(&self, id: Uuid, audit: Audit) -> Result<(), SchedError> {
        self.ask(|r| Command::Resume(id, audit, r)).await
    }
    pub(crate) async fn cancel(&self, id: Uuid, reason: String, audit: Audit) -> Result<(), SchedError> {
        self.ask(|r| Command::Cancel(id, reason, audit, r)).await
    }
    pub(crate) async fn retry(
        &self,
        id: Uuid,
        stored: Option<(JobRecord, Vec<TaskRecord>)>,
        audit: Audit,
    ) -> Result<(), SchedError> {
        self.ask(|r| Command::Retry(id, stored.map(Box::new), audit, r)).await
    }
    /// Makes audit records of refused calls durable (and published on `weir.audit`).
    pub(crate) async fn audit(&self, records: Vec<AuditRecord>) -> Result<(), SchedError> {
        self.ask(|reply| Command::Audit(records, reply)).await
    }
    /// Writes a schedule with what its slots start and cancel, durable when this returns.
    pub(crate) async fn schedule(&self, commit: ScheduleCommit) -> Result<ScheduleCommitted, SchedError> {
        self.ask(|reply| Command::Schedule(Box::new(commit), reply)).await
    }
    /// Puts or deletes a named connection, durable with its audit record when this returns.
    pub(crate) async fn connection(
        &self,
        change: weir_core::connection::ConnectionChange,
        audit: AuditRecord,
    ) -> Result<(), SchedError> {
        self.ask(|reply| Command::Connection(Box::new((change, audit)), reply)).await
    }
    pub(crate) async fn acquire(
        &self,
        queue: String,
        worker: String,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Lease>, SchedError> {
        self.ask(|reply| Command::Acquire { queue, worker, max, wait, reply }).await
    }
    pub(crate) async fn heartbeat(
        &self,
        worker: String,
        leases: Vec<(Uuid, u64)>,
    ) -> Result<Vec<(Uuid, LeaseStatus)>, SchedError> {
        self.ask(|reply| Command::Heartbeat { worker, leases, reply }).await
    }
    pub(crate) async fn complete(&self, task: Uuid, fence: u64, output: Option<String>) -> Result<(), SchedError> {
        self.ask(|reply| Command::Complete { task, fence, output, reply }).await
    }
    pub(crate) async fn complete_many(
        &self,
        reports: Vec<(Uuid, u64, Option<String>)>,
    ) -> Result<Vec<Result<(), EngineError>>, SchedError> {
        self.ask(|reply| Command::CompleteMany { reports, reply }).await
    }
    pub(crate) async fn fail(&self, task: Uuid, fence: u64, failure: Failure) -> Result<bool, SchedError> {
        self.ask(|reply| Command::Fail { task, fence, failure, reply }).await
    }
    pub(crate) async fn release(&self, worker: String, leases: Vec<(Uuid, u64)>) -> Result<u32, SchedError> {
        self.ask(|reply| Command::Release { worker, leases, reply }).await
    }
    pub(crate) async fn release_worker(&self, worker: String) -> Result<u32, SchedError> {
        self.ask(|reply| Command::ReleaseWorker { worker, reply }).await
    }
    /// Claims finished jobs for the purge: the returned ones are not in memory, and no
    /// retry of them is taken until [`Handle::forget`].
    pub(crate) async fn claim(&self, jobs: Vec<Uuid>) -> Result<Vec<Uuid>, SchedError> {
        self.ask(|reply| Command::Claim(jobs, reply)).await
    }
    /// Forgets purged jobs' keys, so their run ids start new jobs.
    pub(crate) async fn forget(&self, jobs: Vec<Uuid>) -> Result<(), SchedError> {
        self.ask(|reply| Command::Forget(jobs, reply)).await
    }
    /// Makes `messages` durable in the outbox (the relay publishes them).
    pub(crate) async fn publish(&self, messages: Vec<OutboxMessage>) -> Result<(), SchedError> {
        self.ask(|reply| Command::Publish(messages, reply)).await
    }
}

/// A reply held until the batch commits: called with `None` on success or the reason.
type Pending = Box<dyn FnOnce(Option<&str>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, value: Result<T, SchedError>) -> Pending {
    Box::new(move |failed| {
        let _ = reply.send(match failed {
            None => value,
            Some(why) => Err(SchedError::Unavailable(why.to_string())),
        });
    })
}

/// A worker parked in a long poll.
struct Waiter {
    worker: String,
    max: u32,
    deadline: i64,
    reply: Reply<Vec<Lease>>,
}

struct Scheduler {
    engine: Engine,
    store: Arc<dyn Store>,
    epoch: i64,
    waiters: HashMap<String, VecDeque<Waiter>>,
    events: broadcast::Sender<EventBatch>,
    /// Messages to write with the next commit.
    messages: Vec<OutboxMessage>,
    /// Audit records to write with the next commit.
    audit: Vec<AuditRecord>,
    /// Connection changes to write with the next commit.
    connections: Vec<weir_core::connection::ConnectionChange>,
    /// Schedule changes to write with the next commit.
    schedules: Vec<weir_core::schedule::ScheduleChange>,
    /// Jobs the retention purge claimed: while it may be deleting them (`None`), and for
    /// [`PURGED_MEMORY_MS`] after (when they were forgotten), a retry of one is refused —
    /// a retry call reads the stored job before it reaches the engine.
    purging: HashMap<Uuid, Option<Millis>>,
    /// Commands steering a job that may be parked: applied once it is read back, with no
    /// commit on its way (see [`crate::paging`]).
    deferred: Vec<Command>,
    /// When the store was last asked for parked jobs past their deadline.
    overdue_seen: Millis,
    /// After a failed page read: when to try again, and the wait that led there (doubling
    /// to [`PAGE_RETRY_MAX_MS`], so a store that is down is not asked every 5 ms).
    page_retry: (Millis, Millis),
}

/// Longest wait between page reads while the store fails them.
const PAGE_RETRY_MAX_MS: Millis = 5_000;

/// Committed event batches the live feed keeps for slow watchers. The feed holds the
/// last this many batches until they are overwritten, so it is memory a drain leaves behind
/// (4,096 held about 80 MB after a million tasks); a watcher that falls further behind
/// reads the rest from the store, and the relay only uses the feed as a wake-up.
const EVENT_FEED_BATCHES: usize = 256;

/// How long a purged job's id stays refused for retries after the purge.
const PURGED_MEMORY_MS: Millis = 60_000;

/// How often the queue-depth and backlog-age gauges are read off the engine.
const QUEUE_STATS_EVERY_MS: Millis = 1_000;

/// Runs the scheduler until `cancel` fires. Returns an error only when the store refused
/// this master (leadership lost), which must stop the process.
pub async fn run(
    engine: Engine,
    store: Arc<dyn Store>,
    epoch: i64,
    inbox: Inbox,
    events: broadcast::Sender<EventBatch>,
    cancel: CancellationToken,
    max_batch: usize,
) -> Result<(), StoreError> {
    let mut s = Scheduler {
        engine,
        store,
        epoch,
        waiters: HashMap::new(),
        events,
        messages: Vec::new(),
        audit: Vec::new(),
        connections: Vec::new(),
        schedules: Vec::new(),
        purging: Default::default(),
        deferred: Vec::new(),
        overdue_seen: 0,
        page_retry: (0, 0),
    };
    let mut rx = inbox.0;
    let mut batch: Vec<Command> = Vec::with_capacity(max_batch);
    let mut queues_seen: Millis = 0;
    let mut trim = crate::memory::Trim::default();
    // The commit on its way to the store, and the replies of everything applied since it
    // left: those wait for the next commit, which leaves as soon as this one lands.
    let mut inflight: Option<InFlight> = None;
    let mut waiting: Vec<Pending> = Vec::new();
    loop {
        let wake = s.next_wake();
        let woke = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            landed = landing(&mut inflight) => Some(landed),
            // With a commit out, at most one more batch waits for the next: callers feel
            // the store's pace, and a commit stays about `max_batch` commands.
            n = rx.recv_many(&mut batch, max_batch), if inflight.is_none() || waiting.len() < max_batch => {
                if n == 0 { break } else { None }
            }
            _ = tokio::time::sleep(wake) => None,
        };
        if let Some(landed) = woke {
            let replies = inflight.take().map(|done| done.replies).unwrap_or_default();
            match s.landed(replies, landed, &mut waiting) {
                Ok(true) => {}
                Ok(false) => s.reload().await,
                Err(fenced) => {
                    cancel.cancel();
                    return Err(fenced);
                }
            }
        }
        let now = now_ms();
        for cmd in batch.drain(..) {
            s.apply(cmd, now, &mut waiting);
        }
        s.engine.tick(now);
        if now - queues_seen >= QUEUE_STATS_EVERY_MS {
            crate::metrics::MASTER.queues(&s.engine.ready_stats(), now);
            crate::metrics::MASTER.memory(&s.engine);
            if trim.due(s.engine.tasks_in_memory()) {
                crate::memory::give_back();
            }
            queues_seen = now;
        }
        s.serve_waiters(now, &mut waiting);
        if inflight.is_none() {
            s.page(now, &mut waiting).await;
            inflight = s.dispatch(now, &mut waiting);
        }
    }
    // What is on its way lands first, so its callers learn the truth; what was applied
    // after it is answered "unavailable".
    let mut fenced = None;
    if let Some(done) = inflight.take() {
        let landed = done.commit.await.map_err(|e| format!("the commit task ended: {e}"));
        fenced = s.landed(done.replies, landed, &mut waiting).err();
    }
    let stopping = "the master is stopping; try again";
    for cmd in std::mem::take(&mut s.deferred) {
        s.refuse(cmd, stopping);
    }
    waiting.into_iter().for_each(|r| r(Some(stopping)));
    // Parked workers get an empty answer rather than a dropped call.
    for (_, q) in s.waiters.drain() {
        for w in q {
            let _ = w.reply.send(Ok(Vec::new()));
        }
    }
    fenced.map_or(Ok(()), Err)
}

/// A commit on its way to the store, and the replies that wait for it.
struct InFlight {
    commit: tokio::task::JoinHandle<Committed>,
    replies: Vec<Pending>,
}

/// A commit's changes, what came of it, and how long it took.
type Committed = (Changes, Result<(), StoreError>, Duration);

/// The in-flight commit's outcome when it lands; never, with none in flight.
async fn landing(inflight: &mut Option<InFlight>) -> Result<Committed, String> {
    match inflight {
        Some(f) => (&mut f.commit).await.map_err(|e| format!("the commit task ended: {e}")),
        None => std::future::pending().await,
    }
}

impl Scheduler {
    /// Sends what the engine changed since the last commit to the store (on a task of its
    /// own, so the engine goes on meanwhile) with the replies waiting for it; with nothing
    /// changed, answers them at once.
    fn dispatch(&mut self, now: Millis, waiting: &mut Vec<Pending>) -> Option<InFlight> {
        let mut changes = self.engine.take_changes(now);
        changes.messages.append(&mut self.messages);
        changes.messages.extend(self.audit.iter().map(AuditRecord::message));
        changes.audit.append(&mut self.audit);
        changes.connections.append(&mut self.connections);
        changes.schedules.append(&mut self.schedules);
        if changes.is_empty() {
            waiting.drain(..).for_each(|r| r(None));
            return None;
        }
        let (store, epoch) = (self.store.clone(), self.epoch);
        let commit = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = store.commit(epoch, &changes).await;
            (changes, result, started.elapsed())
        });
        Some(InFlight { commit, replies: std::mem::take(waiting) })
    }

    /// Answers the callers of a commit that landed. A failed one fails everything applied
    /// after it too (it was applied on top) and returns false: the engine must be rebuilt
    /// from the store. A store that refused this master's epoch is the error.
    fn landed(
        &mut self,
        replies: Vec<Pending>,
        landed: Result<Committed, String>,
        waiting: &mut Vec<Pending>,
    ) -> Result<bool, StoreError> {
        let failure = match landed {
            Ok((changes, Ok(()), took)) => {
                crate::metrics::MASTER.observe(&changes, took);
                replies.into_iter().for_each(|r| r(None));
                if !changes.events.is_empty() || !changes.messages.is_empty() {
                    // Also wakes the relay, which reads what was committed from the store.
                    let _ = self.events.send(Arc::new(changes.events));
                }
                return Ok(true);
            }
            Ok((_, Err(e), _)) => Err(e),
            Err(ended) => Ok(ended),
        };
        let why = match &failure {
            Err(e) => format!("could not commit: {e}; nothing was changed, try again"),
            Ok(ended) => format!("{ended}; try again"),
        };
        tracing::error!(error = %why, "commit failed");
        replies.into_iter().chain(waiting.drain(..)).for_each(|r| r(Some(&why)));
        self.messages.clear();
        self.audit.clear();
        self.connections.clear();
        self.schedules.clear();
        match failure {
            Err(e @ StoreError::Fenced { .. }) => Err(e),
            _ => Ok(false),
        }
    }

    fn next_wake(&self) -> Duration {
        let now = now_ms();
        if self.engine.page_wanted().is_some() {
            // Room for parked jobs: read the next page soon (later after a failed read).
            let wait = (self.page_retry.0 - now).max(5);
            return Duration::from_millis(u64::try_from(wait).unwrap_or(5));
        }
        let waiter = self.waiters.values().flat_map(|q| q.iter().map(|w| w.deadline)).min();
        let at = [self.engine.next_deadline(), waiter].into_iter().flatten().min();
        match at {
            Some(at) => Duration::from_millis(u64::try_from((at - now).max(0)).unwrap_or(0)),
            None => Duration::from_secs(3600),
        }
        // Idle or not, the queue gauges are read off the engine each second.
        .min(Duration::from_millis(QUEUE_STATS_EVERY_MS as u64))
    }

    fn apply(&mut self, cmd: Command, now: Millis, replies: &mut Vec<Pending>) {
        if let Some(id) = steered(&cmd) {
            if self.engine.job(id).is_none() && self.engine.parked().is_some() {
                self.deferred.push(cmd);
                return;
            }
        }
        self.apply_now(cmd, now, replies);
    }

    /// With nothing on its way to the store: reads back the jobs deferred commands steer
    /// and parked jobs past their deadline, applies those commands, then reads a page of
    /// parked jobs if the engine has room. A failed read is tried again next time.
    async fn page(&mut self, now: Millis, waiting: &mut Vec<Pending>) {
        if self.engine.parked().is_none() && self.deferred.is_empty() {
            return;
        }
        let store = self.store.clone();
        let mut ids: Vec<Uuid> = self.deferred.iter().filter_map(steered).collect();
        if now - self.overdue_seen >= crate::paging::OVERDUE_EVERY_MS {
            self.overdue_seen = now;
            match crate::paging::overdue(self.engine.parked(), store.as_ref(), now).await {
                Ok(mut due) => ids.append(&mut due),
                Err(e) => tracing::warn!(error = %e, "cannot look for parked jobs past their deadline"),
            }
        }
        if !ids.is_empty() {
            let fetched = crate::paging::fetch(&mut self.engine, store.as_ref(), &ids).await;
            let deferred = std::mem::take(&mut self.deferred);
            match fetched {
                Ok(()) => deferred.into_iter().for_each(|cmd| self.apply_now(cmd, now, waiting)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read parked jobs back");
                    let why = format!("could not read the job from the store: {e}; try again");
                    deferred.into_iter().for_each(|cmd| self.refuse(cmd, &why));
                }
            }
            // Jobs read back past their deadline time out in this commit.
            self.engine.tick(now);
        }
        if now < self.page_retry.0 {
            return;
        }
        match crate::paging::page(&mut self.engine, store.as_ref()).await {
            Ok(read) => {
                self.page_retry = (0, 0);
                if read {
                    self.serve_waiters(now, waiting);
                }
            }
            Err(e) => {
                let wait = (self.page_retry.1 * 2).clamp(100, PAGE_RETRY_MAX_MS);
                self.page_retry = (now + wait, wait);
                tracing::warn!(error = %e, retry_in_ms = wait, "cannot read parked jobs back");
            }
        }
    }

    /// Answers a steering command "unavailable" without applying it.
    fn refuse(&mut self, cmd: Command, why: &str) {
        let res = Err(SchedError::Unavailable(why.to_string()));
        let (audit, reply) = match cmd {
            Command::Pause(_, a, r) | Command::Resume(_, a, r) | Command::Cancel(_, _, a, r) => (a, r),
            _ => return,
        };
        self.note(audit, &res, None);
        let _ = reply.send(res);
    }

    fn apply_now(&mut self, cmd: Command, now: Millis, replies: &mut Vec<Pending>) {
        let e = &mut self.engine;
        match cmd {
            Command::Submit(job, audit, r) => {
                let (id, created) = e.submit(*job, now);
                self.note(audit, &Ok(()), Some(id));
                replies.push(pending(r, Ok((id, created))));
            }
            Command::Pause(id, audit, r) => {
                let res = e.pause(id, now).map_err(Into::into);
                self.note(audit, &res, None);
                replies.push(pending(r, res));
            }
            Command::Resume(id, audit, r) => {
                let res = e.resume(id, now).map_err(Into::into);
                self.note(audit, &res, None);
                replies.push(pending(r, res));
            }
            Command::Cancel(id, why, audit, r) => {
                let res = e.cancel(id, &why, now).map_err(Into::into);
                self.note(audit, &res, None);
                replies.push(pending(r, res));
            }
            Command::Retry(id, stored, audit, r) => {
                // Being purged: as good as gone (the store may no longer have it).
                let res = if self.purging.contains_key(&id) {
                    Err(EngineError::JobNotFound(id).into())
                } else {
                    e.retry_stored(id, stored.map(|b| *b), now).map_err(Into::into)
                };
                self.note(audit, &res, None);
                replies.push(pending(r, res));
            }
            Command::Acquire { queue, worker, max, wait, reply } => {
                let leases = e.acquire(&queue, &worker, max, now);
                if leases.is_empty() && !wait.is_zero() {
                    let deadline = now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                    self.waiters.entry(queue).or_default().push_back(Waiter { worker, max, deadline, reply });
                } else {
                    replies.push(pending(reply, Ok(leases)));
                }
            }
            Command::Heartbeat { worker, leases, reply } => {
                replies.push(pending(reply, Ok(e.heartbeat(&worker, &leases, now))));
            }
            Command::Complete { task, fence, output, reply } => {
                replies.push(pending(reply, e.complete(task, fence, output, now).map_err(Into::into)));
            }
            Command::CompleteMany { reports, reply } => {
                let results = reports.into_iter().map(|(task, fence, output)| e.complete(task, fence, output, now));
                replies.push(pending(reply, Ok(results.collect())));
            }
            Command::Fail { task, fence, failure, reply } => {
                replies.push(pending(reply, e.fail(task, fence, failure, now).map_err(Into::into)));
            }
            Command::Release { worker, leases, reply } => {
                replies.push(pending(reply, Ok(e.release(&worker, &leases, now))));
            }
            Command::ReleaseWorker { worker, reply } => {
                replies.push(pending(reply, Ok(e.release_worker(&worker, now))));
            }
            Command::Publish(mut messages, reply) => {
                self.messages.append(&mut messages);
                replies.push(pending(reply, Ok(())));
            }
            Command::Audit(records, reply) => {
                self.audit.extend(records.into_iter().map(AuditRecord::cleaned));
                replies.push(pending(reply, Ok(())));
            }
            // Claims and forgets change nothing stored: answered at once, so a failing
            // commit cannot leave a claim behind that its purge never learned of.
            Command::Claim(mut jobs, reply) => {
                jobs.retain(|id| e.job(*id).is_none());
                self.purging.extend(jobs.iter().map(|id| (*id, None)));
                if let Err(Ok(jobs)) = reply.send(Ok(jobs)) {
                    // The purge is gone: nothing will be deleted.
                    for id in &jobs {
                        self.purging.remove(id);
                    }
                }
            }
            Command::Forget(jobs, reply) => {
                e.forget_finished(&jobs);
                self.purging.retain(|_, at| at.is_none_or(|at| now - at < PURGED_MEMORY_MS));
                self.purging.extend(jobs.into_iter().map(|id| (id, Some(now))));
                let _ = reply.send(Ok(()));
            }
            Command::Connection(change, reply) => {
                let (change, audit) = *change;
                self.connections.push(change);
                self.audit.push(audit.cleaned());
                replies.push(pending(reply, Ok(())));
            }
            Command::Schedule(commit, reply) => {
                let c = *commit;
                let mut record = c.record;
                for (id, why) in &c.cancels {
                    // A run that already ended (or left memory) has nothing to cancel.
                    if let Err(err) = e.cancel(*id, why, now) {
                        tracing::debug!(job_id = %id, error = %err, "schedule: run not cancelled");
                    }
                    // One the cancel ended (nothing of it was running) is no longer a run:
                    // a slot waiting behind it starts without waiting for an event.
                    if e.job(*id).is_some_and(|j| j.state.is_terminal()) {
                        if let Some(r) = record.as_mut() {
                            r.state.running.retain(|run| run != id);
                        }
                    }
                }
                let mut jobs = Vec::with_capacity(c.starts.len());
                for (slot, job) in c.starts {
                    let run_id = job.spec.run_id.clone();
                    let (id, created) = e.submit(job, now);
                    if let Some(r) = record.as_mut() {
                        r.state.started(slot, id, now);
                    }
                    self.messages.push(crate::clock::started_message(&c.key, slot, id, &run_id, created, now));
                    jobs.push((slot, id, created));
                }
                match &record {
                    Some(r) => self.schedules.push(weir_core::schedule::ScheduleChange::Put(Box::new(r.clone()))),
                    None if c.delete => self
                        .schedules
                        .push(weir_core::schedule::ScheduleChange::Delete { namespace: c.key.0, name: c.key.1 }),
                    None => {}
                }
                self.messages.extend(c.messages);
                self.note(c.audit, &Ok(()), None);
                replies.push(pending(reply, Ok(ScheduleCommitted { record, jobs })));
            }
        }
    }

    /// Completes a call's audit record with what came of it (and the job it created).
    fn note(&mut self, audit: Audit, result: &Result<(), SchedError>, created: Option<Uuid>) {
        let Some(mut a) = audit else { return };
        if let Some(id) = created {
            a.target = id.to_string();
        }
        if let Err(e) = result {
            let status = crate::status::sched(e.clone());
            *a = (*a).with_outcome(
                weir_runtime::auth::outcome(status.code()),
                weir_runtime::auth::code_name(status.code()),
                status.message(),
            );
        }
        self.audit.push((*a).cleaned());
    }

    /// Hands newly ready tasks to parked workers, oldest waiter first; answers expired waits.
    fn serve_waiters(&mut self, now: i64, replies: &mut Vec<Pending>) {
        for (queue, q) in self.waiters.iter_mut() {
            while self.engine.has_ready(queue) {
                let Some(w) = q.pop_front() else { break };
                if w.reply.is_closed() {
                    continue;
                }
                let leases = self.engine.acquire(queue, &w.worker, w.max, now);
                replies.push(pending(w.reply, Ok(leases)));
            }
            while let Some(pos) = q.iter().position(|w| w.deadline <= now || w.reply.is_closed()) {
                if let Some(w) = q.remove(pos) {
                    replies.push(pending(w.reply, Ok(Vec::new())));
                }
            }
        }
        self.waiters.retain(|_, q| !q.is_empty());
    }

    /// After a failed commit memory may be ahead of the store: rebuild it from the store.
    async fn reload(&mut self) {
        let mut delay = Duration::from_millis(100);
        loop {
            match crate::paging::load(self.store.as_ref(), self.engine_config()).await {
                Ok(engine) => {
                    self.engine = engine;
                    tracing::warn!("engine rebuilt from the store after a failed commit");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload state; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn engine_config(&self) -> weir_core::engine::EngineConfig {
        self.engine.config().clone()
    }
}

/// The job a pause, resume or cancel steers (such a job may be parked in the store).
fn steered(cmd: &Command) -> Option<Uuid> {
    match cmd {
        Command::Pause(id, ..) | Command::Resume(id, ..) | Command::Cancel(id, ..) => Some(*id),
        _ => None,
    }
}
