//! The manager side of the lease protocol, shared by the four managers.
//!
//! A manager is a [`Worker`] with a queue and a set of [`StepHandler`]s. The worker
//! registers with the master, long-polls for leases with at most `concurrency` tasks in
//! flight, heartbeats all of them in one call, stops a task when the master says it was
//! cancelled or its lease was lost, reports results with the lease's fence token (a busy
//! worker's successes coalesced into one call: `completions`), and on
//! shutdown stops taking work, lets running tasks finish for a grace period, and hands the
//! rest back. [`quota`] keeps its share of the fleet-wide limits over the same heartbeat,
//! and [`notice`] carries status changes for the master to publish; [`watermark`] reads
//! where an incremental resource stands.
//! [`generic`] holds the engine-proving kinds (`noop`, `sleep`, `fail`);
//! [`manager`] is the `main` every manager binary shares; [`metrics`] counts the tasks it runs.

mod completions;
pub mod generic;
pub mod manager;
pub mod metrics;
pub mod notice;
pub mod quota;
pub mod report;
pub mod sandbox;
pub mod staging;
pub mod store;
pub mod watermark;
mod worker;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use worker::{Readiness, Worker, WorkerConfig};

/// What a step handler gets: the lease, and a token cancelled when it must stop.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task_id: Uuid,
    pub job_id: Uuid,
    pub step_id: String,
    pub kind: String,
    pub config: Option<Value>,
    pub attempt: u32,
    pub fence: u64,
    pub compensation: bool,
    /// Outputs of the steps it depends on (step id → JSON text).
    pub inputs: Vec<(String, String)>,
    pub namespace: String,
    pub job_name: String,
    pub heartbeat_timeout: Duration,
    /// Cancelled when the job is cancelled, the lease is lost, or the worker shuts down.
    pub cancel: CancellationToken,
    /// The master's worker service, for what a step reads from the master while it runs
    /// ([`watermark`]); none in unit tests.
    pub master: Option<weir_proto::v1::worker_service_client::WorkerServiceClient<weir_runtime::grpc::AuthedChannel>>,
    /// The manager's sandbox policy (checked before the task ran; [`TaskContext::guard`]
    /// holds what it finds while running to it too).
    pub sandbox: std::sync::Arc<weir_core::sandbox::Policy>,
}

/// Where the managers keep data on local disk unless `WEIR_DATA_DIR` says otherwise.
pub const DEFAULT_DATA_DIR: &str = ".weir/data";
/// The data dir's area for staged data and step reports (swept after a retention).
pub const STAGING: &str = "staging";
/// The data dir's area for quarantined rows and files (never swept).
pub const QUARANTINE: &str = "quarantine";

impl TaskContext {
    /// This task's folder in an area of the data dir: `<root>/<area>/<job>/<step>`.
    pub fn folder(&self, root: &std::path::Path, area: &str) -> std::path::PathBuf {
        root.join(area).join(self.job_id.to_string()).join(&self.step_id)
    }

    /// What this task may reach of what it learns as it runs (next pages, redirects).
    pub fn guard(&self) -> sandbox::Guard {
        sandbox::Guard::new(self.sandbox.clone(), &self.namespace)
    }

    /// A context for unit tests of step code: a fresh job, step `step_id`, no inputs.
    pub fn for_test(step_id: &str) -> TaskContext {
        TaskContext {
            task_id: Uuid::new_v4(),
            job_id: Uuid::new_v4(),
            step_id: step_id.into(),
            kind: "noop".into(),
            config: None,
            attempt: 1,
            fence: 1,
            compensation: false,
            inputs: vec![],
            namespace: "test".into(),
            job_name: "test".into(),
            heartbeat_timeout: Duration::from_secs(30),
            cancel: CancellationToken::new(),
            master: None,
            sandbox: std::sync::Arc::new(weir_core::sandbox::Policy::allow_all()),
        }
    }
}

/// Why a step failed: `kind` is matched against the retry policy's non-retryable kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StepError {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
}

impl StepError {
    /// A failure worth another attempt.
    pub fn retryable(kind: &str, message: impl Into<String>) -> Self {
        StepError { kind: kind.into(), message: message.into(), retryable: true }
    }
    /// A failure no retry can fix (bad input, bad config).
    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        StepError { kind: kind.into(), message: message.into(), retryable: false }
    }
}

/// Runs step kinds. One implementation per family of kinds, one file each.
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    /// The kinds this handler runs.
    fn kinds(&self) -> &'static [&'static str];
    /// Runs one attempt; returns the step's output (a JSON object).
    async fn run(&self, task: &TaskContext) -> Result<Value, StepError>;
}

/// Errors of the worker machinery (not of steps).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Runtime(#[from] weir_runtime::RuntimeError),
    #[error("master call failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("bad setting: {0}")]
    Config(String),
}
