//! The job spec a client submits: a DAG of steps, or a template with parameters.
//!
//! The same structure is read from YAML/JSON files by the CLI, converted from protobuf by the
//! master, and stored as JSON with the job, so there is one definition of every field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a client asks Weir to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Tenant or team; defaults to "default".
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    /// With namespace and name, makes submission idempotent. Defaults to a fresh id.
    #[serde(default)]
    pub run_id: String,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whole-job limit, counted from submission (or from a retry).
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSpec>,
    /// A built-in template name; see [`crate::template`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Parameters of the template (a JSON object); with steps, they fill the configs'
    /// `{params.…}` placeholders at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// One node of the DAG.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub id: String,
    pub kind: String,
    pub queue: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Kind-specific settings (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<StepTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationSpec>,
}

/// How failed attempts are retried; absent fields take [`RetryPolicy::DEFAULT`]'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(with = "crate::duration::option")]
    pub initial_interval: Option<Duration>,
    pub backoff_coefficient: f64,
    #[serde(with = "crate::duration::option")]
    pub max_interval: Option<Duration>,
    pub jitter: f64,
    pub non_retryable_error_kinds: Vec<String>,
}

impl RetryPolicy {
    /// Three attempts, 1 s doubling to at most 60 s, ±20 % jitter.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_interval: Some(Duration::from_secs(1)),
        backoff_coefficient: 2.0,
        max_interval: Some(Duration::from_secs(60)),
        jitter: 0.2,
        non_retryable_error_kinds: Vec::new(),
    };
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Time limits of each attempt of a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepTimeouts {
    /// Longest wait in the ready queue; the task fails (not retried) when it runs out.
    #[serde(with = "crate::duration::option")]
    pub schedule_to_start: Option<Duration>,
    /// Longest single attempt; default [`DEFAULT_START_TO_CLOSE`].
    #[serde(with = "crate::duration::option")]
    pub start_to_close: Option<Duration>,
    /// Longest silence between heartbeats; default [`DEFAULT_HEARTBEAT`].
    #[serde(with = "crate::duration::option")]
    pub heartbeat: Option<Duration>,
}

/// Default longest single attempt.
pub const DEFAULT_START_TO_CLOSE: Duration = Duration::from_secs(600);
/// Default longest silence between heartbeats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

impl StepTimeouts {
    /// The attempt limit in force.
    pub fn start_to_close(&self) -> Duration {
        self.start_to_close.unwrap_or(DEFAULT_START_TO_CLOSE)
    }
    /// The heartbeat limit in force.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat.unwrap_or(DEFAULT_HEARTBEAT)
    }
}

/// The step that undoes a succeeded step when the job fails or is cancelled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationSpec {
    pub kind: String,
    /// Defaults to the compensated step's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}
