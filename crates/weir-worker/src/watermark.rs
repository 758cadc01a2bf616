//! Where an incremental resource stands, read from the master when a step starts: the
//! mark the last successful job stored (see `weir_core::watermark`). A step proposes the
//! next one in its output; the master stores it only when the whole job succeeds.

use weir_core::watermark::Mark;
use weir_proto::v1;

use crate::{StepError, TaskContext};

/// The watermark of `key` in the task's namespace; none if no job has stored one.
pub async fn stored(task: &TaskContext, key: &str) -> Result<Option<Mark>, StepError> {
    let Some(mut master) = task.master.clone() else {
        return Err(StepError::permanent("no_master", "incremental collection needs the master's store"));
    };
    let req = v1::GetWatermarkRequest { namespace: task.namespace.clone(), key: key.to_string() };
    let w = match master.get_watermark(req).await {
        Ok(r) => r.into_inner().watermark,
        // The master may be restarting or failing over: the task's retry waits for it.
        Err(s) => {
            return Err(StepError::retryable("master_unavailable", format!("reading watermark {key}: {}", s.message())))
        }
    };
    w.as_ref()
        .map(weir_proto::convert::mark_from_wire)
        .transpose()
        .map_err(|e| StepError::permanent("bad_watermark", e))
}
