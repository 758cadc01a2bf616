//! The master's Prometheus metrics, read off what each commit changed ([`Master::observe`])
//! and off the engine's queues now and then ([`Master::queues`]): jobs created and
//! finished by namespace and template, job and task durations, schedule-to-start, retries,
//! expired leases, compensations, queue depth and backlog age, and the store's commit
//! latency and size. Registered once per process in [`weir_runtime::metrics`].

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use weir_core::catalog::Queue;
use weir_core::engine::Changes;
use weir_core::model::{event_type as ev, JobRecord, TaskRecord};
use weir_core::Millis;
use weir_runtime::metrics::{register, seconds_histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub namespace: String,
    /// The template's name, or `none` for a job of its own steps.
    pub template: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobEndLabels {
    pub namespace: String,
    pub template: String,
    /// succeeded, failed, cancelled or compensated.
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub queue: String,
    pub kind: String,
    /// succeeded or failed.
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurgeLabels {
    /// jobs, tasks, events, messages or audit.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The master's families.
pub struct Master {
    pub jobs_created: Family<JobLabels, Counter>,
    pub jobs_finished: Family<JobEndLabels, Counter>,
    pub job_duration: Histograms<JobEndLabels>,
    pub task_duration: Histograms<TaskLabels>,
    pub schedule_to_start: Histograms<QueueLabels>,
    pub retries: Family<QueueLabels, Counter>,
    pub leases_expired: Family<QueueLabels, Counter>,
    pub compensations: Family<NamespaceLabels, Counter>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    pub backlog_age: Family<QueueLabels, Gauge<f64, AtomicU64>>,
    pub commit_duration: Histogram,
    pub commit_records: Histogram,
    pub relay_published: Counter,
    pub relay_lag: Gauge<f64, AtomicU64>,
    pub outbox_backlog: Gauge,
    pub purged: Family<PurgeLabels, Counter>,
    pub resident_tasks: Gauge,
    pub parked: Gauge,
    pub pages_read: Counter,
    /// Namespaces come from jobs (any name, without auth): bounded.
    pub namespaces: weir_runtime::metrics::Bounded,
}

/// The process's master metrics, registered on first use.
pub static MASTER: LazyLock<Master> = LazyLock::new(|| {
    let m = Master {
        jobs_created: Family::default(),
        jobs_finished: Family::default(),
        job_duration: Family::new_with_constructor(seconds_histogram),
        task_duration: Family::new_with_constructor(seconds_histogram),
        schedule_to_start: Family::new_with_constructor(seconds_histogram),
        retries: Family::default(),
        leases_expired: Family::default(),
        compensations: Family::default(),
        queue_depth: Family::default(),
        backlog_age: Family::default(),
        commit_duration: seconds_histogram(),
        commit_records: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
        relay_published: Counter::default(),
        relay_lag: Gauge::default(),
        outbox_backlog: Gauge::default(),
        purged: Family::default(),
        resident_tasks: Gauge::default(),
        parked: Gauge::default(),
        pages_read: Counter::default(),
        namespaces: weir_runtime::metrics::Bounded::new(),
    };
    register("jobs_created", "Jobs created, by namespace and template", m.jobs_created.clone());
    register("jobs_finished", "Jobs finished, by namespace, template and final state", m.jobs_finished.clone());
    register("job_duration_seconds", "From a job's creation to its end", m.job_duration.clone());
    register("task_duration_seconds", "From a task attempt's lease to its result", m.task_duration.clone());
    register(
        "task_schedule_to_start_seconds",
        "From a task becoming ready to a manager leasing it",
        m.schedule_to_start.clone(),
    );
    register("task_retries", "Task attempts that failed and will be tried again", m.retries.clone());
    register(
        "leases_expired",
        "Leases a manager stopped renewing (its task goes back to ready)",
        m.leases_expired.clone(),
    );
    register("compensations", "Jobs that began compensating", m.compensations.clone());
    register("queue_depth", "Tasks ready and waiting for a manager", m.queue_depth.clone());
    register("queue_backlog_age_seconds", "How long the longest-waiting ready task has waited", m.backlog_age.clone());
    register("store_commit_duration_seconds", "One group commit to the store", m.commit_duration.clone());
    register("store_commit_records", "Jobs, tasks, events and messages written per commit", m.commit_records.clone());
    register("relay_published_events", "Events the outbox relay published to the bus", m.relay_published.clone());
    register(
        "relay_lag_seconds",
        "How long the oldest event of the relay's last batch waited in the outbox (0 when idle)",
        m.relay_lag.clone(),
    );
    register("outbox_backlog_events", "Job events committed and not yet published", m.outbox_backlog.clone());
    register(
        "purged_records",
        "Rows the retention purge deleted, by kind (jobs, tasks, events, messages, audit)",
        m.purged.clone(),
    );
    register(
        "engine_resident_tasks",
        "Tasks the engine holds in memory (WEIR_RESIDENT_TASKS bounds it)",
        m.resident_tasks.clone(),
    );
    register(
        "engine_parked",
        "1 while pending jobs wait in the store for room in memory (the backlog is past the budget)",
        m.parked.clone(),
    );
    register("engine_pages_read", "Pages of parked jobs read back from the store", m.pages_read.clone());
    m
});

fn seconds(ms: Millis) -> f64 {
    ms.max(0) as f64 / 1000.0
}

fn template(j: &JobRecord) -> String {
    j.spec.template.clone().unwrap_or_else(|| "none".into())
}

impl Master {
    /// Counts what a commit that took `took` changed.
    pub fn observe(&self, c: &Changes, took: Duration) {
        self.commit_duration.observe(took.as_secs_f64());
        let records = c.new_jobs.len() + c.jobs.len() + c.tasks.len() + c.events.len() + c.messages.len();
        self.commit_records.observe(records as f64);
        for j in &c.new_jobs {
            self.jobs_created
                .get_or_create(&JobLabels {
                    namespace: self.namespaces.label(&j.spec.namespace),
                    template: template(j),
                })
                .inc();
        }
        if c.events.is_empty() {
            return;
        }
        let jobs: HashMap<_, &JobRecord> = c.new_jobs.iter().chain(&c.jobs).map(|j| (j.id, j)).collect();
        let tasks: HashMap<_, &TaskRecord> = c.tasks.iter().map(|t| (t.id, t)).collect();
        let task = |e: &weir_core::model::EventRecord| e.task_id.and_then(|id| tasks.get(&id).copied());
        for e in &c.events {
            match e.kind {
                ev::JOB_SUCCEEDED | ev::JOB_FAILED | ev::JOB_CANCELLED | ev::JOB_COMPENSATED => {
                    let Some(j) = jobs.get(&e.job_id) else { continue };
                    let labels = JobEndLabels {
                        namespace: self.namespaces.label(&j.spec.namespace),
                        template: template(j),
                        state: e.job_state.as_str().to_string(),
                    };
                    self.jobs_finished.get_or_create(&labels).inc();
                    self.job_duration.get_or_create(&labels).observe(seconds(e.time_ms - j.created_ms));
                }
                ev::JOB_COMPENSATING => {
                    if let Some(j) = jobs.get(&e.job_id) {
                        self.compensations
                            .get_or_create(&NamespaceLabels { namespace: self.namespaces.label(&j.spec.namespace) })
                            .inc();
                    }
                }
                ev::TASK_ASSIGNED => {
                    if let Some(t) = task(e) {
                        if let (Some(ready), Some(started)) = (t.ready_ms, t.started_ms) {
                            let q = QueueLabels { queue: t.queue.clone() };
                            self.schedule_to_start.get_or_create(&q).observe(seconds(started - ready));
                        }
                    }
                }
                ev::TASK_SUCCEEDED | ev::TASK_FAILED => {
                    if let Some(t) = task(e) {
                        if let Some(started) = t.started_ms {
                            let labels = TaskLabels {
                                queue: t.queue.clone(),
                                kind: t.kind.clone(),
                                state: if e.kind == ev::TASK_SUCCEEDED { "succeeded" } else { "failed" }.into(),
                            };
                            self.task_duration.get_or_create(&labels).observe(seconds(e.time_ms - started));
                        }
                    }
                }
                ev::TASK_RETRY_SCHEDULED => {
                    if let Some(t) = task(e) {
                        self.retries.get_or_create(&QueueLabels { queue: t.queue.clone() }).inc();
                    }
                }
                ev::TASK_LEASE_EXPIRED => {
                    if let Some(t) = task(e) {
                        self.leases_expired.get_or_create(&QueueLabels { queue: t.queue.clone() }).inc();
                    }
                }
                _ => {}
            }
        }
    }

    /// What the engine holds in memory, and whether jobs wait parked in the store.
    pub fn memory(&self, engine: &weir_core::engine::Engine) {
        self.resident_tasks.set(i64::try_from(engine.tasks_in_memory()).unwrap_or(i64::MAX));
        self.parked.set(i64::from(engine.parked().is_some()));
    }

    /// Sets each queue's depth and backlog age from the engine's `ready_stats` at `now`
    /// (a queue with nothing ready reads 0).
    pub fn queues(&self, stats: &[(String, usize, Option<Millis>)], now: Millis) {
        for q in Queue::ALL {
            let (depth, oldest) =
                stats.iter().find(|(name, _, _)| name == q.as_str()).map_or((0, None), |(_, n, o)| (*n, *o));
            let labels = QueueLabels { queue: q.as_str().to_string() };
            self.queue_depth.get_or_create(&labels).set(i64::try_from(depth).unwrap_or(i64::MAX));
            self.backlog_age.get_or_create(&labels).set(oldest.map_or(0.0, |o| seconds(now - o)));
        }
    }
}
