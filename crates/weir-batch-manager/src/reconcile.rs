//! The `reconcile` kind: the bulk-file template's batch validation. It reads the reports
//! of the steps it depends on (fetch, convert, store) and checks that every fetched file
//! was converted and every converted row stored, per file, and the batch's quarantine
//! share; the logic is `weir_core::dataset::reconcile`.

use async_trait::async_trait;
use serde_json::Value;
use weir_core::dataset::{reconcile, ReconcileStep};
use weir_worker::{StepError, StepHandler, TaskContext};

/// Runs `reconcile`.
pub struct Reconcile {
    /// Where upstream reports by reference are read from.
    pub staging: weir_worker::staging::Staging,
}

#[async_trait]
impl StepHandler for Reconcile {
    fn kinds(&self) -> &'static [&'static str] {
        &["reconcile"]
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let limits = ReconcileStep::parse(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        let reports = weir_worker::report::upstream(task, &self.staging).await?;
        let r = reconcile(&reports, &limits).map_err(|e| StepError::permanent("reconcile_failed", e))?;
        serde_json::to_value(r).map_err(|e| StepError::permanent("internal", e.to_string()))
    }
}
