//! The api manager: pulls from HTTP APIs: pagination, auth, rate limits, backoff, fallback sources.
//!
//! Today it serves the `api` queue with the generic step kinds only (`noop`, `sleep`,
//! `fail`), which prove the engine; its domain kinds arrive with its own issue, as new
//! [`weir_worker::StepHandler`]s added to [`spec`].

use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;

/// What this manager runs.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(ManagerSpec {
        name: "api-manager",
        binary: "weir-api-manager",
        queue: Queue::Api,
        handlers: vec![Arc::new(Generic)],
        background: vec![],
    })
}
