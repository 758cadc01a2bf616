//! The stream manager: consumes Kafka, RabbitMQ and NATS streams into bounded buffers and checkpoints them.
//!
//! Today it serves the `stream` queue with the generic step kinds only (`noop`, `sleep`,
//! `fail`), which prove the engine; its domain kinds arrive with its own issue, as new
//! [`weir_worker::StepHandler`]s added to [`spec`].

use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;

/// What this manager runs.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(ManagerSpec {
        name: "stream-manager",
        binary: "weir-stream-manager",
        queue: Queue::Stream,
        quotas: weir_worker::quota::Quotas::default(),
        notices: weir_worker::notice::Notices::default(),
        handlers: vec![Arc::new(Generic)],
        background: vec![],
    })
}
