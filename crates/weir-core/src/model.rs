//! Records of jobs, tasks and events: what the engine keeps in memory and the stores persist.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use uuid::Uuid;

use crate::spec::JobSpec;
use crate::Millis;

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The name stored in the database and shown to people.
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$var),)+ _ => Err(format!("unknown {} {s:?}", stringify!($name))) }
            }
        }
    };
}

text_enum!(
    /// Lifecycle of a job.
    JobState {
        /// Accepted; nothing leased yet.
        Pending = "pending",
        /// At least one task was leased.
        Running = "running",
        /// Nothing new is leased.
        Paused = "paused",
        /// Every step succeeded.
        Succeeded = "succeeded",
        /// A step failed for good (or compensation failed).
        Failed = "failed",
        /// Cancelled with nothing to compensate.
        Cancelled = "cancelled",
        /// Undoing succeeded steps.
        Compensating = "compensating",
        /// Failed or cancelled, and every succeeded step was undone.
        Compensated = "compensated",
    }
);

impl JobState {
    /// No further change happens without a retry.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Compensated)
    }
}

text_enum!(
    /// Lifecycle of a task.
    TaskState {
        /// Waiting for dependencies.
        Pending = "pending",
        /// Queued for a worker.
        Ready = "ready",
        /// Leased to a worker.
        Running = "running",
        /// Waiting out a retry backoff.
        Backoff = "backoff",
        /// Done.
        Succeeded = "succeeded",
        /// Failed for good.
        Failed = "failed",
        /// Will not run.
        Cancelled = "cancelled",
        /// Succeeded, then undone.
        Compensated = "compensated",
    }
);

impl TaskState {
    /// No further change happens without a retry.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Compensated)
    }
}

/// A job as persisted: its normalized spec and its dynamic state.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    /// Normalized spec (template expanded); shared because it never changes.
    pub spec: Arc<JobSpec>,
    pub state: JobState,
    /// Why it failed, was cancelled or compensated.
    pub error: Option<String>,
    pub created_ms: Millis,
    pub updated_ms: Millis,
    pub finished_ms: Option<Millis>,
    /// When the job times out (submission or retry + timeout).
    pub deadline_ms: Option<Millis>,
    /// Sequence number of the newest event.
    pub last_seq: u64,
    /// Set once the job decided to fail or be cancelled and compensation is owed:
    /// the outcome to report ("failed" or "cancelled") while compensating.
    pub ending: Option<JobState>,
    /// Task counts, refreshed whenever the record is handed out for commit.
    pub counts: TaskCounts,
    /// W3C `traceparent` of the call that submitted it (set once, never updated).
    pub trace_parent: Option<String>,
}

/// Per-job task counts shown to people.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub running: u32,
}

/// One task as persisted. Static fields (kind, queue, deps) are copied from the spec so a
/// task reads on its own; the step's config stays in the job spec.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: Uuid,
    pub job_id: Uuid,
    pub step_id: String,
    pub kind: String,
    pub queue: String,
    pub depends_on: Vec<String>,
    /// For a compensation task: the step it undoes.
    pub compensates: Option<String>,
    pub state: TaskState,
    /// Attempts started.
    pub attempt: u32,
    /// Token of the newest lease.
    pub fence: u64,
    pub worker: Option<String>,
    pub lease_expires_ms: Option<Millis>,
    /// When it last became ready (orders the queue, starts schedule-to-start).
    pub ready_ms: Option<Millis>,
    /// When its backoff ends.
    pub retry_at_ms: Option<Millis>,
    pub started_ms: Option<Millis>,
    pub finished_ms: Option<Millis>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub output: Option<String>,
    /// The job was told to stop while this task ran; the worker is told on heartbeat.
    pub cancel_requested: bool,
}

/// One entry of a job's history.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub job_id: Uuid,
    pub seq: u64,
    /// Reverse-DNS type from [`event_type`].
    pub kind: &'static str,
    pub time_ms: Millis,
    pub task_id: Option<Uuid>,
    pub step_id: Option<String>,
    pub job_state: JobState,
    pub task_state: Option<TaskState>,
    pub message: Option<String>,
}

/// An event outside any job's history (worker status; the managers' domain events), for
/// the bus. Written in the commit of what it reports, relayed like job events.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: String,
    /// CloudEvent type, e.g. `dev.weir.worker.joined`.
    pub kind: String,
    pub subject: String,
    pub time_ms: Millis,
    pub data: serde_json::Value,
}

/// A committed history entry as the outbox relay reads it, with what the bus message
/// needs from its job.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Position in commit order (the relay's cursor).
    pub id: i64,
    pub event: EventRecord,
    pub namespace: String,
    pub job_name: String,
    pub trace_parent: Option<String>,
}

/// The event types, in one place (the catalogue in the README is copied from here).
pub mod event_type {
    /// A job was accepted.
    pub const JOB_CREATED: &str = "dev.weir.job.created";
    /// A job's first task was leased.
    pub const JOB_STARTED: &str = "dev.weir.job.started";
    pub const JOB_PAUSED: &str = "dev.weir.job.paused";
    pub const JOB_RESUMED: &str = "dev.weir.job.resumed";
    pub const JOB_CANCELLED: &str = "dev.weir.job.cancelled";
    pub const JOB_SUCCEEDED: &str = "dev.weir.job.succeeded";
    pub const JOB_FAILED: &str = "dev.weir.job.failed";
    pub const JOB_COMPENSATING: &str = "dev.weir.job.compensating";
    pub const JOB_COMPENSATED: &str = "dev.weir.job.compensated";
    /// A failed, cancelled or compensated job was started again.
    pub const JOB_RETRIED: &str = "dev.weir.job.retried";
    pub const TASK_READY: &str = "dev.weir.task.ready";
    /// Leased to the worker named in the message.
    pub const TASK_ASSIGNED: &str = "dev.weir.task.assigned";
    pub const TASK_SUCCEEDED: &str = "dev.weir.task.succeeded";
    pub const TASK_FAILED: &str = "dev.weir.task.failed";
    pub const TASK_RETRY_SCHEDULED: &str = "dev.weir.task.retry_scheduled";
    pub const TASK_LEASE_EXPIRED: &str = "dev.weir.task.lease_expired";
    /// A worker handed the lease back unfinished.
    pub const TASK_RELEASED: &str = "dev.weir.task.released";
    pub const TASK_CANCELLED: &str = "dev.weir.task.cancelled";
    pub const TASK_COMPENSATED: &str = "dev.weir.task.compensated";
    /// A task succeeded but not from its primary source (a fallback): the message says
    /// which, from its output's `degraded`.
    pub const TASK_DEGRADED: &str = "dev.weir.task.degraded";

    /// Every type, for stores that read them back by name.
    pub const ALL: &[&str] = &[
        JOB_CREATED,
        JOB_STARTED,
        JOB_PAUSED,
        JOB_RESUMED,
        JOB_CANCELLED,
        JOB_SUCCEEDED,
        JOB_FAILED,
        JOB_COMPENSATING,
        JOB_COMPENSATED,
        JOB_RETRIED,
        TASK_READY,
        TASK_ASSIGNED,
        TASK_SUCCEEDED,
        TASK_FAILED,
        TASK_RETRY_SCHEDULED,
        TASK_LEASE_EXPIRED,
        TASK_RELEASED,
        TASK_CANCELLED,
        TASK_COMPENSATED,
        TASK_DEGRADED,
    ];

    /// The static name of a stored type, if it is one of ours.
    pub fn intern(s: &str) -> Option<&'static str> {
        ALL.iter().copied().find(|t| *t == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(*s));
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(*s));
        }
        assert!("gone".parse::<JobState>().is_err());
        assert_eq!(event_type::intern("dev.weir.job.created"), Some(event_type::JOB_CREATED));
    }
}

/// A file version the inventory handed to this caller: new, changed, or re-driven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedFile {
    pub file: crate::files::SeenFile,
    /// Grows on every re-drive, so the same version can start a new job.
    pub generation: u32,
}

/// One version of a dataset's or table's schema, as the dataset catalogue keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetVersion {
    /// The sink: `file:///lake/trades`, `s3://lake/trades`, `postgres://host:5432/db/public.t`.
    pub dataset: String,
    /// `parquet` or `postgres`.
    pub kind: String,
    pub version: crate::dataset::schema::Version,
    /// When the catalogue learnt of it.
    pub recorded_ms: Millis,
}

/// A file as the inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub watch: String,
    pub file: crate::files::SeenFile,
    pub generation: u32,
    /// `discovered` (claimed, job not started yet) or `started`.
    pub state: String,
    pub job_id: Option<String>,
    pub first_seen_ms: Millis,
    pub changed_ms: Millis,
}
