//! The batch manager: converts and checks staged data in bounded batches and writes it to sinks.
//!
//! Today it serves the `batch` queue with the generic step kinds only (`noop`, `sleep`,
//! `fail`), which prove the engine; its domain kinds arrive with its own issue, as new
//! [`weir_worker::StepHandler`]s added to [`spec`].

use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;

/// What this manager runs.
pub fn spec() -> ManagerSpec {
    ManagerSpec {
        name: "batch-manager",
        binary: "weir-batch-manager",
        queue: Queue::Batch,
        handlers: vec![Arc::new(Generic)],
    }
}
