//! The master's state machine: jobs, their tasks, leases, timers, retries and compensation.
//!
//! The engine owns the in-memory state of every unfinished job. Each operation takes `now`
//! and mutates that state; [`Engine::take_changes`] then hands back exactly the job and task
//! records that changed and the events that were appended, for the caller to commit in one
//! transaction before it answers anyone. After a crash, [`Engine::load`] rebuilds the same
//! state from the stored records. Finished jobs leave memory once nothing of theirs is leased.
//!
//! Memory is bounded by [`EngineConfig::resident_tasks`]: past it, the jobs that have not
//! started and rank lowest in the ready queue's order ([`JobRank`]) are *parked* — dropped
//! from memory once their records are taken for commit, kept in the store — and *paged
//! in* again, best first, when room frees up ([`Engine::page_wanted`], [`Engine::page_in`]).
//! Every job held in memory that has not started ranks ahead of every parked job, so the
//! ready queue's order over the whole backlog is kept; the engine remembers only the best
//! parked rank, never the parked jobs themselves.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::model::{
    event_type as ev, EventRecord, JobRecord, JobState, OutboxMessage, TaskCounts, TaskRecord, TaskState,
};
use crate::retry::RetryDecision;
use crate::spec::{JobSpec, RetryPolicy, StepSpec, StepTimeouts};
use crate::validate::ValidJob;
use crate::watermark::{self, Watermark};
use crate::Millis;

/// Why an operation was refused. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    #[error("task {0} not found (unknown, or its job finished)")]
    TaskNotFound(Uuid),
    #[error("stale fence token {given} for task {task}: the current lease has token {current}")]
    StaleFence { task: Uuid, given: u64, current: u64 },
    /// The job or task is not in a state that allows the operation.
    #[error("{0}")]
    WrongState(String),
}

/// Prefix of a compensation task's step id; step ids cannot contain ':', so none collide.
pub const COMPENSATION_PREFIX: &str = "compensate:";

/// How long a finished job's key stays remembered for idempotent submission after it left
/// memory (the master also checks the store, this covers the race in between).
pub const RECENT_KEY_TTL_MS: Millis = 10 * 60 * 1000;

/// Settings of the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Most tasks running at once per queue; absent = unlimited.
    pub queue_limits: HashMap<String, u32>,
    /// Most tasks held in memory before jobs that have not started are parked in the
    /// store; absent = unlimited. Started jobs always stay, so it can be exceeded by them.
    pub resident_tasks: Option<usize>,
}

/// Paging reads parked jobs back once memory holds fewer than this share of the budget
/// (in quarters), so a job is not parked and paged in over and over at the boundary.
const PAGE_IN_BELOW_QUARTERS: usize = 3;

/// Where a job stands in the ready queue's order: highest priority first, then oldest,
/// then by id (ids are unique, so no two jobs share a rank). Lower sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobRank {
    pub priority: i32,
    pub created_ms: Millis,
    pub id: Uuid,
}

impl JobRank {
    /// The rank of a job record.
    pub fn of(rec: &JobRecord) -> Self {
        JobRank { priority: rec.spec.priority, created_ms: rec.created_ms, id: rec.id }
    }
}

impl Ord for JobRank {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (Reverse(self.priority), self.created_ms, self.id).cmp(&(Reverse(o.priority), o.created_ms, o.id))
    }
}

impl PartialOrd for JobRank {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub task_id: Uuid,
    pub job_id: Uuid,
    pub step_id: String,
    pub kind: String,
    pub config: Option<Value>,
    pub fence: u64,
    pub attempt: u32,
    pub lease_expires_ms: Millis,
    pub heartbeat_timeout: Duration,
    pub compensation: bool,
    /// Outputs of the steps it depends on (for a compensation task: of the step it undoes).
    pub inputs: Vec<(String, String)>,
    pub priority: i32,
    pub namespace: String,
    pub job_name: String,
    /// The job's W3C `traceparent`, so the work joins the job's trace.
    pub trace_parent: Option<String>,
}

/// What a heartbeat tells a worker about one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Keep going; the lease now runs until the given time.
    Active(Millis),
    /// Stop: the job is ending. Report the result if the work is done anyway, else hand
    /// the task back; the lease is renewed meanwhile.
    Cancelled,
    /// Stop: the lease expired or moved on; reports will be refused.
    Lost,
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
}

/// The records an operation batch changed, to be committed together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Jobs submitted in this batch (insert with their spec).
    pub new_jobs: Vec<JobRecord>,
    /// Jobs whose state changed (update; the spec never changes).
    pub jobs: Vec<JobRecord>,
    pub tasks: Vec<TaskRecord>,
    /// Tasks removed (compensation tasks of an earlier round, on retry).
    pub deleted_tasks: Vec<Uuid>,
    pub events: Vec<EventRecord>,
    /// Events outside any job (added by the master, never by the engine).
    pub messages: Vec<OutboxMessage>,
    /// Watermarks proposed by the steps of jobs that succeeded in this batch (the store
    /// writes each unless it would move a mark back).
    pub watermarks: Vec<Watermark>,
    /// Audited calls (added by the master, never by the engine), written with what they did.
    pub audit: Vec<crate::audit::AuditRecord>,
    /// Named connections an admin put or deleted (added by the master).
    pub connections: Vec<crate::connection::ConnectionChange>,
    /// Schedules created, changed (a slot handled) or deleted (added by the master), written
    /// with the jobs their slots started.
    pub schedules: Vec<crate::schedule::ScheduleChange>,
}

impl Changes {
    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.new_jobs.is_empty()
            && self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.deleted_tasks.is_empty()
            && self.events.is_empty()
            && self.messages.is_empty()
            && self.watermarks.is_empty()
            && self.audit.is_empty()
            && self.connections.is_empty()
            && self.schedules.is_empty()
    }
}

type JobKey = (String, String, String);

/// See [`Engine::survey`].
struct Survey {
    failed: Option<Uuid>,
    all_done: bool,
    promote: Vec<Uuid>,
}

struct JobEntry {
    rec: JobRecord,
    /// Task id per step id (forward and compensation tasks).
    by_step: HashMap<String, Uuid>,
    /// Forward tasks in dependency order.
    forward: Vec<Uuid>,
    /// Step ids that depend on each step id.
    children: HashMap<String, Vec<String>>,
    /// Compensation tasks of the current round.
    compensation: Vec<Uuid>,
    /// Step index per step id, for reading the spec.
    step_index: HashMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A backoff ends.
    Retry(Uuid),
    /// A lease may have expired (the task's lease_expires_ms says for sure).
    Lease(Uuid, u64),
    /// A ready task may have waited too long.
    ScheduleToStart(Uuid),
    /// A job may have run out of time.
    JobDeadline(Uuid),
}

/// Order of the ready queue: highest priority, then oldest, then arrival.
type ReadyKey = (Reverse<i32>, Millis, u64, Uuid);

/// The engine. See the module docs.
pub struct Engine {
    cfg: EngineConfig,
    new_id: Box<dyn FnMut() -> Uuid + Send>,
    jobs: HashMap<Uuid, JobEntry>,
    tasks: HashMap<Uuid, TaskRecord>,
    ready: HashMap<String, BTreeSet<ReadyKey>>,
    ready_keys: HashMap<Uuid, (String, ReadyKey)>,
    running: HashMap<String, u32>,
    timers: BTreeSet<(Millis, Timer)>,
    keys: HashMap<JobKey, Uuid>,
    recent: VecDeque<(Millis, JobKey)>,
    recent_keys: HashMap<JobKey, Uuid>,
    seq: u64,
    dirty_jobs: HashSet<Uuid>,
    new_jobs: HashSet<Uuid>,
    dirty_tasks: HashSet<Uuid>,
    deleted_tasks: Vec<Uuid>,
    events: Vec<EventRecord>,
    watermarks: Vec<Watermark>,
    /// Jobs in memory that have not started (state pending), in rank order.
    pending: BTreeSet<JobRank>,
    /// The best rank among parked jobs; none parked when absent.
    parked: Option<JobRank>,
    /// New jobs ranked behind a parked one, parked at the next commit.
    parking: Vec<JobRank>,
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn key_of(spec: &JobSpec) -> JobKey {
    (spec.namespace.clone(), spec.name.clone(), spec.run_id.clone())
}

impl Engine {
    /// An empty engine; `new_id` supplies ids for new jobs and tasks (UUIDv7 in the master,
    /// a counter in tests).
    pub fn new(cfg: EngineConfig, new_id: Box<dyn FnMut() -> Uuid + Send>) -> Self {
        Engine {
            cfg,
            new_id,
            jobs: HashMap::new(),
            tasks: HashMap::new(),
            ready: HashMap::new(),
            ready_keys: HashMap::new(),
            running: HashMap::new(),
            timers: BTreeSet::new(),
            keys: HashMap::new(),
            recent: VecDeque::new(),
            recent_keys: HashMap::new(),
            seq: 0,
            dirty_jobs: HashSet::new(),
            new_jobs: HashSet::new(),
            dirty_tasks: HashSet::new(),
            deleted_tasks: Vec::new(),
            events: Vec::new(),
            watermarks: Vec::new(),
            pending: BTreeSet::new(),
            parked: None,
            parking: Vec::new(),
        }
    }

    // ----- reading -------------------------------------------------------------------

    /// The settings the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Number of unfinished jobs held in memory.
    pub fn jobs_in_memory(&self) -> usize {
        self.jobs.len()
    }

    /// Number of tasks held in memory.
    pub fn tasks_in_memory(&self) -> usize {
        self.tasks.len()
    }

    /// The best rank among jobs parked in the store, if any are.
    pub fn parked(&self) -> Option<JobRank> {
        self.parked
    }

    /// The job if it is in memory.
    pub fn job(&self, id: Uuid) -> Option<&JobRecord> {
        self.jobs.get(&id).map(|e| &e.rec)
    }

    /// The tasks of a job in memory, forward tasks in dependency order, then compensation.
    pub fn job_tasks(&self, id: Uuid) -> Option<Vec<&TaskRecord>> {
        let e = self.jobs.get(&id)?;
        Some(e.forward.iter().chain(&e.compensation).filter_map(|t| self.tasks.get(t)).collect())
    }

    /// A task if it is in memory.
    pub fn task(&self, id: Uuid) -> Option<&TaskRecord> {
        self.tasks.get(&id)
    }

    /// The id of an unfinished or recently finished job with this namespace/name/run id.
    pub fn find_key(&self, namespace: &str, name: &str, run_id: &str) -> Option<Uuid> {
        let k = (namespace.to_string(), name.to_string(), run_id.to_string());
        self.keys.get(&k).or_else(|| self.recent_keys.get(&k)).copied()
    }

    /// Whether tasks are ready in `queue` (and the queue limit allows another lease).
    pub fn has_ready(&self, queue: &str) -> bool {
        self.ready.get(queue).is_some_and(|s| !s.is_empty()) && self.queue_room(queue) > 0
    }

    /// Each queue's ready tasks: how many, and when the longest-waiting became ready (for
    /// the backlog-age metric; a walk of the queue, so call it now and then, not per task).
    pub fn ready_stats(&self) -> Vec<(String, usize, Option<Millis>)> {
        let mut out: Vec<_> = self
            .ready
            .iter()
            .map(|(q, set)| (q.clone(), set.len(), set.iter().map(|(_, at, _, _)| *at).min()))
            .collect();
        out.sort();
        out
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Task counts of a job in memory.
    pub fn counts(&self, id: Uuid) -> Option<TaskCounts> {
        let e = self.jobs.get(&id)?;
        Some(counts_of(e.forward.iter().chain(&e.compensation).filter_map(|t| self.tasks.get(t))))
    }

    // ----- loading -------------------------------------------------------------------

    /// Puts stored records back in memory (at start, or to retry a finished job).
    /// Leases get a grace of one heartbeat timeout from `now`, since heartbeats are not stored.
    pub fn load(&mut self, jobs: Vec<JobRecord>, tasks: Vec<TaskRecord>, now: Millis) {
        let mut by_job: HashMap<Uuid, Vec<TaskRecord>> = HashMap::new();
        for t in tasks {
            by_job.entry(t.job_id).or_default().push(t);
        }
        for job in jobs {
            let id = job.id;
            let tasks = by_job.remove(&id).unwrap_or_default();
            self.insert_job(job, tasks, now);
        }
    }

    /// When parked jobs should be read back: the best parked rank and how many tasks fit.
    /// Nothing is due while memory holds more than three quarters of its budget.
    pub fn page_wanted(&self) -> Option<(JobRank, usize)> {
        let from = self.parked?;
        let budget = self.cfg.resident_tasks.unwrap_or(usize::MAX);
        let resident = self.tasks.len();
        (resident <= budget / 4 * PAGE_IN_BELOW_QUARTERS).then(|| (from, budget - resident))
    }

    /// Takes parked jobs read from the store back in: the best-ranked pending jobs from
    /// the best parked rank on, in order, and `next`, the rank of the first pending job
    /// not read (absent: none is left). At start, `next` of the first page says what the
    /// store holds beyond it.
    pub fn page_in(&mut self, jobs: Vec<JobRecord>, tasks: Vec<TaskRecord>, next: Option<JobRank>, now: Millis) {
        let mut jobs: Vec<JobRecord> = jobs.into_iter().filter(|j| !self.jobs.contains_key(&j.id)).collect();
        // Ready tasks of the same priority and age queue in rank order.
        jobs.sort_by_key(JobRank::of);
        self.load(jobs, tasks, now);
        self.parked = next;
    }

    fn insert_job(&mut self, rec: JobRecord, tasks: Vec<TaskRecord>, now: Millis) {
        let id = rec.id;
        if rec.state == JobState::Pending {
            self.pending.insert(JobRank::of(&rec));
        }
        let step_index: HashMap<String, usize> =
            rec.spec.steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for s in &rec.spec.steps {
            for d in &s.depends_on {
                children.entry(d.clone()).or_default().push(s.id.clone());
            }
        }
        let mut entry = JobEntry {
            rec,
            by_step: HashMap::new(),
            forward: Vec::new(),
            children,
            compensation: Vec::new(),
            step_index,
        };
        let mut forward: Vec<(usize, Uuid)> = Vec::new();
        for t in tasks {
            entry.by_step.insert(t.step_id.clone(), t.id);
            if t.compensates.is_some() {
                entry.compensation.push(t.id);
            } else {
                forward.push((entry.step_index.get(&t.step_id).copied().unwrap_or(usize::MAX), t.id));
            }
            self.tasks.insert(t.id, t);
        }
        forward.sort();
        entry.forward = forward.into_iter().map(|(_, t)| t).collect();
        self.keys.insert(key_of(&entry.rec.spec), id);
        if let Some(d) = entry.rec.deadline_ms {
            if !entry.rec.state.is_terminal() {
                self.timers.insert((d, Timer::JobDeadline(id)));
            }
        }
        let paused = entry.rec.state == JobState::Paused;
        let task_ids: Vec<Uuid> = entry.forward.iter().chain(&entry.compensation).copied().collect();
        self.jobs.insert(id, entry);
        for tid in task_ids {
            let Some(t) = self.tasks.get(&tid).cloned() else { continue };
            match t.state {
                TaskState::Ready if !paused => {
                    self.enqueue(tid);
                    self.arm_schedule_to_start(tid);
                }
                TaskState::Running => {
                    *self.running.entry(t.queue.clone()).or_default() += 1;
                    let hb = ms(self.timeouts_of(&t).heartbeat());
                    let expires = t.lease_expires_ms.unwrap_or(now).max(now + hb);
                    if let Some(tm) = self.tasks.get_mut(&tid) {
                        tm.lease_expires_ms = Some(expires);
                    }
                    self.timers.insert((expires, Timer::Lease(tid, t.fence)));
                }
                TaskState::Backoff => {
                    self.timers.insert((t.retry_at_ms.unwrap_or(now), Timer::Retry(tid)));
                }
                _ => {}
            }
        }
    }

    // ----- submission ----------------------------------------------------------------

    /// Accepts a validated job. Returns the job id and whether it was created (false: the
    /// namespace/name/run_id named an existing job, which is left as it is).
    pub fn submit(&mut self, job: ValidJob, now: Millis) -> (Uuid, bool) {
        let mut spec = job.spec;
        if !spec.run_id.is_empty() {
            if let Some(id) = self.find_key(&spec.namespace, &spec.name, &spec.run_id) {
                return (id, false);
            }
        }
        let id = (self.new_id)();
        if spec.run_id.is_empty() {
            spec.run_id = id.to_string();
        }
        let deadline_ms = spec.timeout.map(|t| now.saturating_add(ms(t)));
        let rec = JobRecord {
            id,
            spec: Arc::new(spec),
            state: JobState::Pending,
            error: None,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
            deadline_ms,
            last_seq: 0,
            ending: None,
            counts: TaskCounts::default(),
            trace_parent: job.trace_parent,
        };
        let mut tasks = Vec::with_capacity(rec.spec.steps.len());
        for s in &rec.spec.steps {
            tasks.push(new_task((self.new_id)(), id, &s.id, &s.kind, &s.queue, s.depends_on.clone(), None));
        }
        let tids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
        self.insert_job(rec, tasks, now);
        self.dirty_tasks.extend(tids.iter().copied());
        self.new_jobs.insert(id);
        self.emit(id, ev::JOB_CREATED, None, None, now);
        self.reconcile(id, now);
        let rank = self.jobs.get(&id).map(|e| JobRank::of(&e.rec));
        if let Some(rank) = rank.filter(|r| self.parked.is_some_and(|p| *r > p)) {
            // Older work waits in the store: this job queues behind it, parked at the commit.
            for tid in tids {
                self.dequeue(tid);
            }
            self.parking.push(rank);
        }
        (id, true)
    }

    // ----- leasing -------------------------------------------------------------------

    fn queue_room(&self, queue: &str) -> u32 {
        match self.cfg.queue_limits.get(queue) {
            Some(&limit) => limit.saturating_sub(self.running.get(queue).copied().unwrap_or(0)),
            None => u32::MAX,
        }
    }

    /// Leases up to `max` ready tasks of `queue` to `worker`, highest priority first, then oldest.
    pub fn acquire(&mut self, queue: &str, worker: &str, max: u32, now: Millis) -> Vec<Lease> {
        let n = max.min(self.queue_room(queue));
        let mut out = Vec::new();
        while out.len() < n as usize {
            let Some(key) = self.ready.get_mut(queue).and_then(|s| s.pop_first()) else { break };
            let tid = key.3;
            self.ready_keys.remove(&tid);
            if let Some(lease) = self.lease(tid, worker, now) {
                out.push(lease);
            }
        }
        out
    }

    fn lease(&mut self, tid: Uuid, worker: &str, now: Millis) -> Option<Lease> {
        let t = self.tasks.get(&tid)?;
        if t.state != TaskState::Ready {
            return None;
        }
        let timeouts = self.timeouts_of(t);
        let job_id = t.job_id;
        let expires = now + ms(timeouts.heartbeat()).min(ms(timeouts.start_to_close()));
        let t = self.tasks.get_mut(&tid)?;
        t.state = TaskState::Running;
        t.attempt += 1;
        t.fence += 1;
        t.worker = Some(worker.to_string());
        t.started_ms = Some(now);
        t.finished_ms = None;
        t.lease_expires_ms = Some(expires);
        let (fence, queue) = (t.fence, t.queue.clone());
        *self.running.entry(queue).or_default() += 1;
        self.timers.insert((expires, Timer::Lease(tid, fence)));
        self.dirty_tasks.insert(tid);
        if self.jobs.get(&job_id).is_some_and(|j| j.rec.state == JobState::Pending) {
            self.set_job_state(job_id, JobState::Running, ev::JOB_STARTED, None, now);
        }
        self.emit(job_id, ev::TASK_ASSIGNED, Some(tid), Some(worker.to_string()), now);
        self.lease_view(tid)
    }

    fn lease_view(&self, tid: Uuid) -> Option<Lease> {
        let t = self.tasks.get(&tid)?;
        let e = self.jobs.get(&t.job_id)?;
        let step = step_spec(e, t)?;
        let (config, inputs) = match &t.compensates {
            Some(orig) => {
                let c = step.compensation.as_ref().and_then(|c| c.config.clone());
                let out = e.by_step.get(orig).and_then(|o| self.tasks.get(o)).and_then(|o| o.output.clone());
                (c, out.map(|o| vec![(orig.clone(), o)]).unwrap_or_default())
            }
            None => {
                let inputs = t
                    .depends_on
                    .iter()
                    .filter_map(|d| {
                        let o = self.tasks.get(e.by_step.get(d)?)?.output.clone()?;
                        Some((d.clone(), o))
                    })
                    .collect();
                (step.config.clone(), inputs)
            }
        };
        Some(Lease {
            task_id: tid,
            job_id: t.job_id,
            step_id: t.step_id.clone(),
            kind: t.kind.clone(),
            config,
            fence: t.fence,
            attempt: t.attempt,
            lease_expires_ms: t.lease_expires_ms.unwrap_or_default(),
            heartbeat_timeout: self.timeouts_of(t).heartbeat(),
            compensation: t.compensates.is_some(),
            inputs,
            priority: e.rec.spec.priority,
            namespace: e.rec.spec.namespace.clone(),
            job_name: e.rec.spec.name.clone(),
            trace_parent: e.rec.trace_parent.clone(),
        })
    }

    /// Renews leases held by `worker`. Heartbeats are kept in memory only; after a restart
    /// every lease gets a fresh heartbeat window (see [`Engine::load`]).
    pub fn heartbeat(&mut self, worker: &str, leases: &[(Uuid, u64)], now: Millis) -> Vec<(Uuid, LeaseStatus)> {
        leases
            .iter()
            .map(|&(tid, fence)| {
                let status = match self.tasks.get(&tid) {
                    Some(t)
                        if t.state == TaskState::Running && t.fence == fence && t.worker.as_deref() == Some(worker) =>
                    {
                        // A task asked to stop is still renewed: its worker is winding it
                        // down and will report or hand it back (start-to-close still caps it).
                        let to = self.timeouts_of(t);
                        let cap = t.started_ms.unwrap_or(now) + ms(to.start_to_close());
                        let expires = (now + ms(to.heartbeat())).min(cap);
                        let cancelled = t.cancel_requested;
                        if let Some(t) = self.tasks.get_mut(&tid) {
                            t.lease_expires_ms = Some(expires);
                        }
                        if cancelled {
                            LeaseStatus::Cancelled
                        } else {
                            LeaseStatus::Active(expires)
                        }
                    }
                    _ => LeaseStatus::Lost,
                };
                (tid, status)
            })
            .collect()
    }

    /// Checks a report's fence. `Ok(true)`: the task is running under this fence;
    /// `Ok(false)`: this exact report was already applied (a retried call), change nothing.
    fn check_report(&self, tid: Uuid, fence: u64, done: &[TaskState]) -> Result<bool, EngineError> {
        let t = self.tasks.get(&tid).ok_or(EngineError::TaskNotFound(tid))?;
        if fence != t.fence {
            return Err(EngineError::StaleFence { task: tid, given: fence, current: t.fence });
        }
        match t.state {
            TaskState::Running => Ok(true),
            s if done.contains(&s) => Ok(false),
            s => Err(EngineError::WrongState(format!("task {tid} is {s}, not running"))),
        }
    }

    fn end_attempt(&mut self, tid: Uuid) -> Option<&mut TaskRecord> {
        let t = self.tasks.get_mut(&tid)?;
        if t.state == TaskState::Running {
            if let Some(n) = self.running.get_mut(&t.queue) {
                *n = n.saturating_sub(1);
            }
        }
        t.lease_expires_ms = None;
        self.dirty_tasks.insert(tid);
        Some(t)
    }

    /// A worker reports success. A stale fence is refused and changes nothing.
    pub fn complete(&mut self, tid: Uuid, fence: u64, output: Option<String>, now: Millis) -> Result<(), EngineError> {
        if !self.check_report(tid, fence, &[TaskState::Succeeded, TaskState::Compensated])? {
            return Ok(());
        }
        let Some(t) = self.end_attempt(tid) else { return Err(EngineError::TaskNotFound(tid)) };
        t.state = TaskState::Succeeded;
        t.finished_ms = Some(now);
        t.output = Some(output.unwrap_or_else(|| "{}".to_string()));
        t.error_kind = None;
        t.error_message = None;
        let (job_id, undoes) = (t.job_id, t.compensates.clone());
        let degraded = t.output.as_deref().and_then(degraded);
        self.emit(job_id, ev::TASK_SUCCEEDED, Some(tid), None, now);
        if let Some(why) = degraded {
            self.emit(job_id, ev::TASK_DEGRADED, Some(tid), Some(why), now);
        }
        if let Some(step) = undoes {
            // Marked at once, so a retry after a later compensation fails runs this step again.
            self.mark_compensated(job_id, &step, now);
        }
        self.reconcile(job_id, now);
        Ok(())
    }

    /// A worker reports failure; returns whether another attempt is scheduled.
    pub fn fail(&mut self, tid: Uuid, fence: u64, failure: Failure, now: Millis) -> Result<bool, EngineError> {
        if !self.check_report(tid, fence, &[TaskState::Failed, TaskState::Backoff, TaskState::Cancelled])? {
            return Ok(self.tasks.get(&tid).is_some_and(|t| t.state == TaskState::Backoff));
        }
        self.end_attempt(tid);
        Ok(self.after_failed_attempt(tid, failure, now))
    }

    fn after_failed_attempt(&mut self, tid: Uuid, failure: Failure, now: Millis) -> bool {
        let Some(t) = self.tasks.get(&tid) else { return false };
        let job_id = t.job_id;
        let decision = if t.cancel_requested {
            None
        } else {
            let seed = tid.as_u128();
            Some(self.retry_of(t).decide(t.attempt, &failure.kind, failure.retryable, seed))
        };
        let Some(t) = self.tasks.get_mut(&tid) else { return false };
        self.dirty_tasks.insert(tid);
        t.error_kind = Some(failure.kind.clone());
        t.error_message = Some(failure.message.clone());
        t.finished_ms = Some(now);
        let will_retry = match decision {
            None => {
                t.state = TaskState::Cancelled;
                self.emit(job_id, ev::TASK_CANCELLED, Some(tid), Some(failure.message), now);
                false
            }
            Some(RetryDecision::RetryAfter(wait)) => {
                let at = now + ms(wait);
                t.state = TaskState::Backoff;
                t.retry_at_ms = Some(at);
                self.timers.insert((at, Timer::Retry(tid)));
                let msg = format!("{}: {} (retry in {})", failure.kind, failure.message, crate::duration::format(wait));
                self.emit(job_id, ev::TASK_RETRY_SCHEDULED, Some(tid), Some(msg), now);
                true
            }
            Some(RetryDecision::NonRetryable) | Some(RetryDecision::Exhausted) => {
                t.state = TaskState::Failed;
                let why = if matches!(decision, Some(RetryDecision::Exhausted)) {
                    format!("{}: {} (after {} attempts)", failure.kind, failure.message, t.attempt)
                } else {
                    format!("{}: {} (not retryable)", failure.kind, failure.message)
                };
                t.error_message = Some(why.clone());
                self.emit(job_id, ev::TASK_FAILED, Some(tid), Some(why), now);
                false
            }
        };
        self.reconcile(job_id, now);
        will_retry
    }

    /// A worker hands leases back unfinished; those tasks are ready again at once and the
    /// attempt does not count. Returns how many were released.
    pub fn release(&mut self, worker: &str, leases: &[(Uuid, u64)], now: Millis) -> u32 {
        let mut n = 0;
        for &(tid, fence) in leases {
            let ok = self.tasks.get(&tid).is_some_and(|t| {
                t.state == TaskState::Running && t.fence == fence && t.worker.as_deref() == Some(worker)
            });
            if ok {
                self.release_one(tid, now);
                n += 1;
            }
        }
        n
    }

    /// Releases every lease `worker` holds (it said goodbye).
    pub fn release_worker(&mut self, worker: &str, now: Millis) -> u32 {
        let held: Vec<(Uuid, u64)> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running && t.worker.as_deref() == Some(worker))
            .map(|t| (t.id, t.fence))
            .collect();
        self.release(worker, &held, now)
    }

    fn release_one(&mut self, tid: Uuid, now: Millis) {
        let Some(t) = self.end_attempt(tid) else { return };
        t.attempt = t.attempt.saturating_sub(1);
        t.worker = None;
        let (job_id, cancel) = (t.job_id, t.cancel_requested);
        self.emit(job_id, ev::TASK_RELEASED, Some(tid), None, now);
        if cancel {
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.state = TaskState::Cancelled;
                t.finished_ms = Some(now);
            }
            self.emit(job_id, ev::TASK_CANCELLED, Some(tid), None, now);
            self.reconcile(job_id, now);
        } else {
            self.make_ready(tid, now);
        }
    }

    // ----- steering ------------------------------------------------------------------

    fn job_state(&self, id: Uuid) -> Result<JobState, EngineError> {
        self.jobs.get(&id).map(|e| e.rec.state).ok_or(EngineError::JobNotFound(id))
    }

    /// Stops leasing the job's tasks; running ones finish.
    pub fn pause(&mut self, id: Uuid, now: Millis) -> Result<(), EngineError> {
        match self.job_state(id)? {
            JobState::Paused => return Ok(()),
            JobState::Pending | JobState::Running => {}
            s => return Err(EngineError::WrongState(format!("job {id} is {s}; only pending or running jobs pause"))),
        }
        for tid in self.job_task_ids(id) {
            self.dequeue(tid);
        }
        self.set_job_state(id, JobState::Paused, ev::JOB_PAUSED, None, now);
        Ok(())
    }

    /// Leases the job's tasks again.
    pub fn resume(&mut self, id: Uuid, now: Millis) -> Result<(), EngineError> {
        match self.job_state(id)? {
            JobState::Paused => {}
            s if s == JobState::Running || s == JobState::Pending => return Ok(()),
            s => return Err(EngineError::WrongState(format!("job {id} is {s}; only paused jobs resume"))),
        }
        self.set_job_state(id, JobState::Running, ev::JOB_RESUMED, None, now);
        for tid in self.job_task_ids(id) {
            let Some(t) = self.tasks.get_mut(&tid) else { continue };
            if t.state == TaskState::Ready {
                // Time spent paused does not count against schedule-to-start.
                t.ready_ms = Some(now);
                self.dirty_tasks.insert(tid);
                self.enqueue(tid);
                self.arm_schedule_to_start(tid);
            }
        }
        Ok(())
    }

    /// Cancels the job: nothing new starts, running tasks are told on their next heartbeat,
    /// and succeeded steps with a compensation are undone.
    pub fn cancel(&mut self, id: Uuid, reason: &str, now: Millis) -> Result<(), EngineError> {
        match self.job_state(id)? {
            JobState::Pending | JobState::Running | JobState::Paused => {}
            s => return Err(EngineError::WrongState(format!("job {id} is {s}; it cannot be cancelled"))),
        }
        let reason = if reason.is_empty() { "cancelled by request".to_string() } else { reason.to_string() };
        self.begin_ending(id, JobState::Cancelled, reason, now);
        Ok(())
    }

    /// Runs a failed, cancelled or compensated job again from the steps that had not
    /// succeeded. The job must be in memory (see [`Engine::load`]).
    pub fn retry(&mut self, id: Uuid, now: Millis) -> Result<(), EngineError> {
        match self.job_state(id)? {
            JobState::Failed | JobState::Cancelled | JobState::Compensated => {}
            s => {
                return Err(EngineError::WrongState(format!(
                    "job {id} is {s}; only failed, cancelled or compensated jobs are retried"
                )))
            }
        }
        let ids = self.job_task_ids(id);
        if ids.iter().any(|t| self.tasks.get(t).is_some_and(|t| t.state == TaskState::Running)) {
            return Err(EngineError::WrongState(format!(
                "job {id} still has tasks running from before; retry once they have stopped"
            )));
        }
        let Some(e) = self.jobs.get_mut(&id) else { return Err(EngineError::JobNotFound(id)) };
        let old_comp = std::mem::take(&mut e.compensation);
        for c in &old_comp {
            if let Some(t) = self.tasks.remove(c) {
                e.by_step.remove(&t.step_id);
            }
            self.dirty_tasks.remove(c);
        }
        self.deleted_tasks.extend(old_comp);
        let forward = e.forward.clone();
        e.rec.deadline_ms = e.rec.spec.timeout.map(|t| now.saturating_add(ms(t)));
        e.rec.error = None;
        e.rec.finished_ms = None;
        e.rec.ending = None;
        if let Some(d) = e.rec.deadline_ms {
            self.timers.insert((d, Timer::JobDeadline(id)));
        }
        for tid in forward {
            if let Some(t) = self.tasks.get_mut(&tid) {
                if t.state != TaskState::Succeeded {
                    t.state = TaskState::Pending;
                    t.attempt = 0;
                    t.worker = None;
                    t.error_kind = None;
                    t.error_message = None;
                    t.output = None;
                    t.started_ms = None;
                    t.finished_ms = None;
                    t.retry_at_ms = None;
                    t.ready_ms = None;
                    t.cancel_requested = false;
                    self.dirty_tasks.insert(tid);
                }
            }
        }
        self.set_job_state(id, JobState::Running, ev::JOB_RETRIED, None, now);
        self.reconcile(id, now);
        Ok(())
    }

    /// Retries a job that may have left memory: `stored` (its records from the store) is
    /// loaded if the job is not in memory, and dropped again if the retry is refused.
    pub fn retry_stored(
        &mut self,
        id: Uuid,
        stored: Option<(JobRecord, Vec<TaskRecord>)>,
        now: Millis,
    ) -> Result<(), EngineError> {
        let loaded = match stored {
            Some((job, tasks)) if !self.jobs.contains_key(&id) => {
                self.insert_job(job, tasks, now);
                true
            }
            _ => false,
        };
        let r = self.retry(id, now);
        if r.is_err() && loaded {
            self.evict_if_done(id, now);
        }
        r
    }

    // ----- time ----------------------------------------------------------------------

    /// Fires every timer due at `now`: backoffs end, leases expire, waits and jobs time out.
    pub fn tick(&mut self, now: Millis) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Retry(tid) => {
                    // A timer from an earlier backoff of the same task may still be queued.
                    let due = |t: &TaskRecord| t.state == TaskState::Backoff && t.retry_at_ms.is_none_or(|r| r <= now);
                    if self.tasks.get(&tid).is_some_and(due) {
                        self.make_ready(tid, now);
                    }
                }
                Timer::Lease(tid, fence) => {
                    let Some(t) = self.tasks.get(&tid) else { continue };
                    if t.state != TaskState::Running || t.fence != fence {
                        continue;
                    }
                    let expires = t.lease_expires_ms.unwrap_or(at);
                    if expires > now {
                        self.timers.insert((expires, Timer::Lease(tid, fence)));
                        continue;
                    }
                    let (job_id, worker) = (t.job_id, t.worker.clone().unwrap_or_default());
                    self.end_attempt(tid);
                    self.emit(job_id, ev::TASK_LEASE_EXPIRED, Some(tid), Some(worker.clone()), now);
                    let failure = Failure {
                        kind: "lease_expired".into(),
                        message: format!("worker {worker} missed its heartbeat or start-to-close deadline"),
                        retryable: true,
                    };
                    self.after_failed_attempt(tid, failure, now);
                }
                Timer::ScheduleToStart(tid) => {
                    let Some(t) = self.tasks.get(&tid) else { continue };
                    let paused = self.jobs.get(&t.job_id).is_some_and(|j| j.rec.state == JobState::Paused);
                    let Some(limit) = self.timeouts_of(t).schedule_to_start else { continue };
                    let waited = now - t.ready_ms.unwrap_or(now);
                    if t.state != TaskState::Ready || paused || waited < ms(limit) {
                        continue;
                    }
                    self.dequeue(tid);
                    let failure = Failure {
                        kind: "schedule_to_start_timeout".into(),
                        message: format!("no worker took it within {}", crate::duration::format(limit)),
                        retryable: false,
                    };
                    self.after_failed_attempt(tid, failure, now);
                }
                Timer::JobDeadline(id) => {
                    let Some(e) = self.jobs.get(&id) else { continue };
                    let due = e.rec.deadline_ms.is_some_and(|d| d <= now);
                    let live = matches!(e.rec.state, JobState::Pending | JobState::Running | JobState::Paused);
                    if due && live {
                        let limit = e.rec.spec.timeout.map(crate::duration::format).unwrap_or_default();
                        self.begin_ending(id, JobState::Failed, format!("job timed out after {limit}"), now);
                    }
                }
            }
        }
    }

    // ----- committing ----------------------------------------------------------------

    /// Hands over everything changed since the last call, then drops finished jobs that
    /// hold no lease from memory.
    pub fn take_changes(&mut self, now: Millis) -> Changes {
        let mut touched: HashSet<Uuid> = std::mem::take(&mut self.dirty_jobs);
        let tasks: Vec<TaskRecord> =
            std::mem::take(&mut self.dirty_tasks).into_iter().filter_map(|t| self.tasks.get(&t).cloned()).collect();
        touched.extend(tasks.iter().map(|t| t.job_id));
        let new_ids = std::mem::take(&mut self.new_jobs);
        let mut jobs = Vec::with_capacity(touched.len());
        let mut new_jobs = Vec::with_capacity(new_ids.len());
        for id in &touched {
            let Some(counts) = self.counts(*id) else { continue };
            if let Some(e) = self.jobs.get_mut(id) {
                e.rec.counts = counts;
                if new_ids.contains(id) {
                    new_jobs.push(e.rec.clone());
                } else {
                    jobs.push(e.rec.clone());
                }
            }
        }
        let changes = Changes {
            new_jobs,
            jobs,
            tasks,
            deleted_tasks: std::mem::take(&mut self.deleted_tasks),
            events: std::mem::take(&mut self.events),
            messages: Vec::new(),
            watermarks: std::mem::take(&mut self.watermarks),
            audit: Vec::new(),
            connections: Vec::new(),
            schedules: Vec::new(),
        };
        for id in touched {
            self.evict_if_done(id, now);
        }
        self.shed(now);
        self.shrink();
        while let Some((at, _)) = self.recent.front() {
            if now - *at < RECENT_KEY_TTL_MS {
                break;
            }
            if let Some((_, k)) = self.recent.pop_front() {
                self.recent_keys.remove(&k);
            }
        }
        changes
    }

    /// Forgets the keys of finished jobs that were deleted from the store (the retention
    /// purge): the same namespace/name/run id then starts a new job.
    pub fn forget_finished(&mut self, purged: &[Uuid]) {
        let purged: HashSet<&Uuid> = purged.iter().collect();
        self.recent_keys.retain(|_, id| !purged.contains(id));
    }

    fn evict_if_done(&mut self, id: Uuid, now: Millis) {
        let Some(e) = self.jobs.get(&id) else { return };
        if !e.rec.state.is_terminal() {
            return;
        }
        if e.forward
            .iter()
            .chain(&e.compensation)
            .any(|t| self.tasks.get(t).is_some_and(|t| t.state == TaskState::Running))
        {
            return;
        }
        self.drop_job(id, now);
    }

    /// Drops a job and its tasks from memory; its key is remembered for a while, since the
    /// store may not have it yet when a resubmission asks.
    fn drop_job(&mut self, id: Uuid, now: Millis) -> Option<JobEntry> {
        let e = self.jobs.remove(&id)?;
        for t in e.forward.iter().chain(&e.compensation) {
            self.dequeue(*t);
            self.tasks.remove(t);
        }
        let key = key_of(&e.rec.spec);
        self.keys.remove(&key);
        self.recent_keys.insert(key.clone(), id);
        self.recent.push_back((now, key));
        Some(e)
    }

    /// Parks what memory should not hold, once its records are taken for commit: every
    /// pending job ranked behind the best parked one (it would jump the queue), then the
    /// lowest-ranked pending jobs while more tasks than the budget are in memory.
    fn shed(&mut self, now: Millis) {
        for rank in std::mem::take(&mut self.parking) {
            // Unless a pause or cancel in the same batch took it out of pending.
            if self.pending.contains(&rank) {
                self.park(rank, now);
            }
        }
        while let Some(&last) = self.pending.last() {
            let behind = self.parked.is_some_and(|p| last > p);
            let over = self.cfg.resident_tasks.is_some_and(|b| self.tasks.len() > b);
            if !behind && !over {
                break;
            }
            self.park(last, now);
        }
    }

    fn park(&mut self, rank: JobRank, now: Millis) {
        self.pending.remove(&rank);
        // Its timers would only find it gone: they go with it rather than when due.
        for timer in self.timers_of(rank.id) {
            self.timers.remove(&timer);
        }
        self.drop_job(rank.id, now);
        self.parked = Some(self.parked.map_or(rank, |p| p.min(rank)));
    }

    /// The timers a job that has not started may have armed: its deadline, and the
    /// schedule-to-start limits of its ready tasks.
    fn timers_of(&self, id: Uuid) -> Vec<(Millis, Timer)> {
        let Some(e) = self.jobs.get(&id) else { return Vec::new() };
        let mut out: Vec<_> = e.rec.deadline_ms.map(|d| (d, Timer::JobDeadline(id))).into_iter().collect();
        for t in e.forward.iter().filter_map(|t| self.tasks.get(t)) {
            if let (Some(limit), Some(since)) = (self.timeouts_of(t).schedule_to_start, t.ready_ms) {
                out.push((since + ms(limit), Timer::ScheduleToStart(t.id)));
            }
        }
        out
    }

    /// Gives back the memory of maps that held far more than they do now (after a drain).
    fn shrink(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 4096 && m.capacity() > 4 * m.len() {
                m.shrink_to_fit();
            }
        }
        shrink(&mut self.tasks);
        shrink(&mut self.jobs);
        shrink(&mut self.ready_keys);
        shrink(&mut self.keys);
        shrink(&mut self.recent_keys);
    }

    // ----- the rules -----------------------------------------------------------------

    fn job_task_ids(&self, id: Uuid) -> Vec<Uuid> {
        self.jobs.get(&id).map(|e| e.forward.iter().chain(&e.compensation).copied().collect()).unwrap_or_default()
    }

    fn step_of(&self, t: &TaskRecord) -> Option<&StepSpec> {
        step_spec(self.jobs.get(&t.job_id)?, t)
    }

    fn retry_of(&self, t: &TaskRecord) -> RetryPolicy {
        let step = self.step_of(t);
        let r = match &t.compensates {
            Some(_) => step.and_then(|s| s.compensation.as_ref()).and_then(|c| c.retry.clone()),
            None => step.and_then(|s| s.retry.clone()),
        };
        r.unwrap_or_default()
    }

    fn timeouts_of(&self, t: &TaskRecord) -> StepTimeouts {
        self.step_of(t).and_then(|s| s.timeouts.clone()).unwrap_or_default()
    }

    fn enqueue(&mut self, tid: Uuid) {
        let Some(t) = self.tasks.get(&tid) else { return };
        let prio = self.jobs.get(&t.job_id).map(|e| e.rec.spec.priority).unwrap_or_default();
        self.seq += 1;
        let key = (Reverse(prio), t.ready_ms.unwrap_or_default(), self.seq, tid);
        let queue = t.queue.clone();
        self.ready.entry(queue.clone()).or_default().insert(key);
        self.ready_keys.insert(tid, (queue, key));
    }

    fn dequeue(&mut self, tid: Uuid) {
        if let Some((q, key)) = self.ready_keys.remove(&tid) {
            if let Some(s) = self.ready.get_mut(&q) {
                s.remove(&key);
            }
        }
    }

    /// Arms the schedule-to-start timer of a ready task, counted from its `ready_ms`.
    fn arm_schedule_to_start(&mut self, tid: Uuid) {
        let Some(t) = self.tasks.get(&tid) else { return };
        if let (Some(limit), Some(since)) = (self.timeouts_of(t).schedule_to_start, t.ready_ms) {
            self.timers.insert((since + ms(limit), Timer::ScheduleToStart(tid)));
        }
    }

    fn make_ready(&mut self, tid: Uuid, now: Millis) {
        let Some(t) = self.tasks.get_mut(&tid) else { return };
        t.state = TaskState::Ready;
        t.ready_ms = Some(now);
        t.retry_at_ms = None;
        t.worker = None;
        let job_id = t.job_id;
        self.dirty_tasks.insert(tid);
        let paused = self.jobs.get(&job_id).is_some_and(|e| e.rec.state == JobState::Paused);
        if !paused {
            self.enqueue(tid);
        }
        self.arm_schedule_to_start(tid);
        self.emit(job_id, ev::TASK_READY, Some(tid), None, now);
    }

    fn deps_done(&self, e: &JobEntry, t: &TaskRecord) -> bool {
        t.depends_on.iter().all(|d| {
            e.by_step.get(d).and_then(|id| self.tasks.get(id)).is_some_and(|d| d.state == TaskState::Succeeded)
        })
    }

    /// Where a set of tasks stands: the first one in a failed state, whether all succeeded,
    /// and which pending ones have their dependencies met.
    fn survey(&self, e: &JobEntry, ids: &[Uuid], failed_states: &[TaskState]) -> Survey {
        let mut s = Survey { failed: None, all_done: true, promote: Vec::new() };
        for tid in ids {
            let Some(t) = self.tasks.get(tid) else { continue };
            match t.state {
                TaskState::Succeeded => {}
                st if failed_states.contains(&st) => {
                    s.failed.get_or_insert(*tid);
                }
                TaskState::Pending => {
                    s.all_done = false;
                    if self.deps_done(e, t) {
                        s.promote.push(*tid);
                    }
                }
                _ => s.all_done = false,
            }
        }
        s
    }

    /// Cancels the tasks that have not started and asks the running ones to stop (they
    /// are told on their next heartbeat).
    fn stop_tasks(&mut self, job: Uuid, ids: &[Uuid], now: Millis) {
        for tid in ids {
            let Some(t) = self.tasks.get_mut(tid) else { continue };
            match t.state {
                TaskState::Pending | TaskState::Ready | TaskState::Backoff => {
                    t.state = TaskState::Cancelled;
                    t.finished_ms = Some(now);
                    self.dirty_tasks.insert(*tid);
                    self.dequeue(*tid);
                    self.emit(job, ev::TASK_CANCELLED, Some(*tid), None, now);
                }
                TaskState::Running => {
                    t.cancel_requested = true;
                    self.dirty_tasks.insert(*tid);
                }
                _ => {}
            }
        }
    }

    /// Moves a job forward after any of its tasks changed.
    fn reconcile(&mut self, id: Uuid, now: Millis) {
        let Some(e) = self.jobs.get(&id) else { return };
        match e.rec.state {
            JobState::Pending | JobState::Running | JobState::Paused => {
                let s = self.survey(e, &e.forward, &[TaskState::Failed]);
                if let Some(f) = s.failed.and_then(|f| self.tasks.get(&f)) {
                    let why = format!("step {:?} failed: {}", f.step_id, f.error_message.clone().unwrap_or_default());
                    self.begin_ending(id, JobState::Failed, why, now);
                } else if s.all_done {
                    self.propose_watermarks(id, now);
                    self.finish(id, JobState::Succeeded, ev::JOB_SUCCEEDED, None, now);
                } else {
                    for tid in s.promote {
                        self.make_ready(tid, now);
                    }
                }
            }
            JobState::Compensating => self.reconcile_compensation(id, now),
            _ => {}
        }
    }

    /// A job succeeded: the watermarks its steps proposed are committed with it.
    fn propose_watermarks(&mut self, id: Uuid, now: Millis) {
        let Some(e) = self.jobs.get(&id) else { return };
        for t in e.forward.iter().filter_map(|t| self.tasks.get(t)) {
            if let Some(p) = t.output.as_deref().and_then(watermark::proposed) {
                self.watermarks.push(Watermark {
                    namespace: e.rec.spec.namespace.clone(),
                    key: p.key,
                    mark: p.mark,
                    job_id: id,
                    updated_ms: now,
                });
            }
        }
    }

    fn begin_ending(&mut self, id: Uuid, outcome: JobState, reason: String, now: Millis) {
        let Some(e) = self.jobs.get(&id) else { return };
        let forward = e.forward.clone();
        // Compensation is owed for succeeded steps, and for running ones that may yet succeed.
        let owed = forward.iter().filter_map(|t| self.tasks.get(t)).any(|t| {
            matches!(t.state, TaskState::Succeeded | TaskState::Running)
                && self.step_of(t).is_some_and(|s| s.compensation.is_some())
        });
        self.stop_tasks(id, &forward, now);
        if owed {
            if let Some(e) = self.jobs.get_mut(&id) {
                e.rec.ending = Some(outcome);
                e.rec.error = Some(reason.clone());
            }
            self.set_job_state(id, JobState::Compensating, ev::JOB_COMPENSATING, Some(reason), now);
            self.reconcile_compensation(id, now);
        } else {
            let kind = if outcome == JobState::Cancelled { ev::JOB_CANCELLED } else { ev::JOB_FAILED };
            self.finish(id, outcome, kind, Some(reason), now);
        }
    }

    fn reconcile_compensation(&mut self, id: Uuid, now: Millis) {
        let Some(e) = self.jobs.get(&id) else { return };
        let forward_running =
            e.forward.iter().any(|t| self.tasks.get(t).is_some_and(|t| t.state == TaskState::Running));
        if forward_running {
            return;
        }
        let outcome = e.rec.ending.unwrap_or(JobState::Failed);
        let original = e.rec.error.clone().unwrap_or_default();
        if e.compensation.is_empty() && self.plan_compensation(id) == 0 {
            let kind = if outcome == JobState::Cancelled { ev::JOB_CANCELLED } else { ev::JOB_FAILED };
            self.finish(id, outcome, kind, Some(original), now);
            return;
        }
        let Some(e) = self.jobs.get(&id) else { return };
        let comp = e.compensation.clone();
        let s = self.survey(e, &comp, &[TaskState::Failed, TaskState::Cancelled]);
        if let Some(f) = s.failed.and_then(|f| self.tasks.get(&f)) {
            let why = format!(
                "compensation of step {:?} failed: {}; the job had {}: {original}",
                f.compensates.clone().unwrap_or_default(),
                f.error_message.clone().unwrap_or_default(),
                outcome
            );
            self.stop_tasks(id, &comp, now);
            self.finish(id, JobState::Failed, ev::JOB_FAILED, Some(why), now);
        } else if s.all_done {
            self.finish(id, JobState::Compensated, ev::JOB_COMPENSATED, Some(original), now);
        } else {
            for tid in s.promote {
                self.make_ready(tid, now);
            }
        }
    }

    /// Marks a forward step as undone by its compensation.
    fn mark_compensated(&mut self, job: Uuid, step: &str, now: Millis) {
        let Some(&tid) = self.jobs.get(&job).and_then(|e| e.by_step.get(step)) else { return };
        let Some(t) = self.tasks.get_mut(&tid) else { return };
        if t.state == TaskState::Succeeded {
            t.state = TaskState::Compensated;
            self.dirty_tasks.insert(tid);
            self.emit(job, ev::TASK_COMPENSATED, Some(tid), None, now);
        }
    }

    /// Creates a compensation task for every succeeded step that has one; a step's
    /// compensation waits for the compensations of every step that depended on it.
    fn plan_compensation(&mut self, id: Uuid) -> usize {
        let Some(e) = self.jobs.get(&id) else { return 0 };
        let owed: Vec<(String, usize)> = e
            .forward
            .iter()
            .filter_map(|t| self.tasks.get(t))
            .filter(|t| t.state == TaskState::Succeeded)
            .filter_map(|t| {
                let i = *e.step_index.get(&t.step_id)?;
                e.rec.spec.steps[i].compensation.as_ref().map(|_| (t.step_id.clone(), i))
            })
            .collect();
        let owed_set: HashSet<&str> = owed.iter().map(|(s, _)| s.as_str()).collect();
        let mut new_tasks = Vec::new();
        for (step_id, i) in &owed {
            let step = &e.rec.spec.steps[*i];
            let Some(c) = &step.compensation else { continue };
            // Every owed step downstream of this one must be undone first. Waiting on the
            // nearest ones is enough: each of those waits on the owed steps below it.
            let mut deps = Vec::new();
            let mut seen = HashSet::new();
            let mut stack: Vec<&str> =
                e.children.get(step_id).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
            while let Some(s) = stack.pop() {
                if !seen.insert(s) {
                    continue;
                }
                if owed_set.contains(s) {
                    deps.push(format!("{COMPENSATION_PREFIX}{s}"));
                } else if let Some(ch) = e.children.get(s) {
                    stack.extend(ch.iter().map(String::as_str));
                }
            }
            deps.sort();
            let queue = c.queue.clone().unwrap_or_else(|| step.queue.clone());
            let comp_id = format!("{COMPENSATION_PREFIX}{step_id}");
            new_tasks.push((comp_id, c.kind.clone(), queue, deps, step_id.clone()));
        }
        let n = new_tasks.len();
        let mut created = Vec::new();
        for (comp_id, kind, queue, deps, of) in new_tasks {
            let tid = (self.new_id)();
            created.push(new_task(tid, id, &comp_id, &kind, &queue, deps, Some(of)));
        }
        if let Some(e) = self.jobs.get_mut(&id) {
            for t in created {
                e.by_step.insert(t.step_id.clone(), t.id);
                e.compensation.push(t.id);
                self.dirty_tasks.insert(t.id);
                self.tasks.insert(t.id, t);
            }
        }
        n
    }

    fn set_job_state(&mut self, id: Uuid, state: JobState, kind: &'static str, msg: Option<String>, now: Millis) {
        if let Some(e) = self.jobs.get_mut(&id) {
            if e.rec.state == JobState::Pending && state != JobState::Pending {
                self.pending.remove(&JobRank::of(&e.rec));
            }
            e.rec.state = state;
            e.rec.updated_ms = now;
        }
        self.emit(id, kind, None, msg, now);
    }

    fn finish(&mut self, id: Uuid, state: JobState, kind: &'static str, error: Option<String>, now: Millis) {
        if let Some(e) = self.jobs.get_mut(&id) {
            e.rec.finished_ms = Some(now);
            e.rec.error = error.clone();
            e.rec.ending = None;
        }
        self.set_job_state(id, state, kind, error, now);
    }

    fn emit(&mut self, job_id: Uuid, kind: &'static str, task: Option<Uuid>, message: Option<String>, now: Millis) {
        let Some(e) = self.jobs.get_mut(&job_id) else { return };
        e.rec.last_seq += 1;
        e.rec.updated_ms = now;
        let t = task.and_then(|t| self.tasks.get(&t));
        self.events.push(EventRecord {
            job_id,
            seq: e.rec.last_seq,
            kind,
            time_ms: now,
            task_id: task,
            step_id: t.map(|t| t.step_id.clone()),
            job_state: e.rec.state,
            task_state: t.map(|t| t.state),
            message,
        });
        self.dirty_jobs.insert(job_id);
    }
}

/// The key of an output that says the step ran from a fallback source: its text is the
/// `dev.weir.task.degraded` event's message.
pub const DEGRADED_KEY: &str = "degraded";

/// What an output's `degraded` says, if it has one.
fn degraded(output: &str) -> Option<String> {
    if !output.contains("\"degraded\"") {
        return None;
    }
    let v: Value = serde_json::from_str(output).ok()?;
    v.get(DEGRADED_KEY)?.as_str().map(str::to_string)
}

fn step_spec<'a>(e: &'a JobEntry, t: &TaskRecord) -> Option<&'a StepSpec> {
    let step_id = t.compensates.as_deref().unwrap_or(&t.step_id);
    e.step_index.get(step_id).map(|&i| &e.rec.spec.steps[i])
}

/// Counts tasks by state for display.
pub fn counts_of<'a>(tasks: impl Iterator<Item = &'a TaskRecord>) -> TaskCounts {
    let mut c = TaskCounts::default();
    for t in tasks {
        c.total += 1;
        match t.state {
            TaskState::Succeeded | TaskState::Compensated => c.succeeded += 1,
            TaskState::Failed => c.failed += 1,
            TaskState::Running => c.running += 1,
            _ => {}
        }
    }
    c
}

fn new_task(
    id: Uuid,
    job_id: Uuid,
    step_id: &str,
    kind: &str,
    queue: &str,
    depends_on: Vec<String>,
    compensates: Option<String>,
) -> TaskRecord {
    TaskRecord {
        id,
        job_id,
        step_id: step_id.to_string(),
        kind: kind.to_string(),
        queue: queue.to_string(),
        depends_on,
        compensates,
        state: TaskState::Pending,
        attempt: 0,
        fence: 0,
        worker: None,
        lease_expires_ms: None,
        ready_ms: None,
        retry_at_ms: None,
        started_ms: None,
        finished_ms: None,
        error_kind: None,
        error_message: None,
        output: None,
        cancel_requested: false,
    }
}

#[cfg(test)]
mod tests;
