//! The `reconcile` kind: the bulk-file template's batch validation. It reads the reports
//! of the steps it depends on (fetch, convert, store) and checks that every fetched file
//! was converted and every converted row stored, per file, and the batch's quarantine
//! share; the logic is `weir_core::dataset::reconcile`. With `key` and `sinks` (the
//! `resilient_fetch` validation) it also checks that each local Parquet sink holds every
//! key once, and reports its rows and distinct keys.

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
        let mut out = serde_json::to_value(r).map_err(|e| StepError::permanent("internal", e.to_string()))?;
        // With a key: each sink holds every key once.
        let mut held = serde_json::Map::new();
        for sink in &limits.sinks {
            let (s, key) = (sink.clone(), limits.key.clone());
            let c = tokio::task::spawn_blocking(move || weir_data::dedupe::count_keys(&s, &key))
                .await
                .map_err(|e| StepError::retryable("crashed", e.to_string()))?
                .map_err(|e| crate::steps::step_error(&e))?;
            let name = match sink {
                weir_core::dataset::SinkSpec::Parquet { path, .. } => path.clone(),
                weir_core::dataset::SinkSpec::Postgres { table, .. } => table.clone(),
                weir_core::dataset::SinkSpec::Kafka { topic, .. } => topic.clone(),
            };
            if let Some(k) = &c.duplicate {
                return Err(StepError::permanent(
                    "reconcile_failed",
                    format!(
                        "{name} holds key {:?} = ({k}) more than once ({} rows, {} distinct keys)",
                        limits.key, c.rows, c.distinct
                    ),
                ));
            }
            held.insert(name, serde_json::json!({"rows": c.rows, "distinct_keys": c.distinct}));
        }
        if !held.is_empty() {
            out["sinks"] = Value::Object(held);
        }
        Ok(out)
    }
}
