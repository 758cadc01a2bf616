//! The file manager: discovers files on disks, buckets and SFTP, transfers and verifies them.
//!
//! Today it serves the `file` queue with the generic step kinds only (`noop`, `sleep`,
//! `fail`), which prove the engine; its domain kinds arrive with its own issue, as new
//! [`weir_worker::StepHandler`]s added to [`spec`].

use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;

/// What this manager runs.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(ManagerSpec {
        name: "file-manager",
        binary: "weir-file-manager",
        queue: Queue::File,
        handlers: vec![Arc::new(Generic)],
    })
}
