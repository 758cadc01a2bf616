//! The generic step kinds every queue runs. They prove the engine (ordering, retries,
//! leases, cancellation, compensation); they are not ingestion. See `weir_core::catalog`.

use async_trait::async_trait;
use serde_json::{json, Value};
use weir_core::catalog;

use crate::{StepError, StepHandler, TaskContext};

/// Runs `noop`, `sleep` and `fail`.
pub struct Generic;

#[async_trait]
impl StepHandler for Generic {
    fn kinds(&self) -> &'static [&'static str] {
        &catalog::GENERIC_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        match task.kind.as_str() {
            "noop" => Ok(json!({})),
            "sleep" => {
                let d =
                    catalog::sleep_duration(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
                tokio::select! {
                    _ = tokio::time::sleep(d) => Ok(json!({"slept_ms": d.as_millis() as u64})),
                    _ = task.cancel.cancelled() => Err(StepError::retryable("cancelled", "stopped while sleeping")),
                }
            }
            "fail" => {
                let f =
                    catalog::fail_config(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
                match f.attempts {
                    Some(n) if task.attempt > n => Ok(json!({"failed_attempts": n})),
                    _ => Err(StepError { kind: f.error_kind, message: f.message, retryable: f.retryable }),
                }
            }
            other => Err(StepError::permanent("unknown_kind", format!("this worker cannot run kind {other:?}"))),
        }
    }
}
