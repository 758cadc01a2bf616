//! `recover_files`, `resilient_fetch`'s `alternative_files` step: when the recovery
//! strategy chose the resource's files fallback (no API source answered), every file of
//! that location matching its patterns is fetched, verified, into staging, for the
//! reconstruction to merge by key. With another strategy it does nothing and says so.
//! The files are read by the batch kinds, so they hold records as the converter reads them
//! (NDJSON, CSV, a JSON array); an API-shaped export (records under `$.data`) is read by
//! `collect`'s own files fallback instead.

use async_trait::async_trait;
use serde_json::{json, Value};
use weir_core::api::recovery::RecoveryStep;
use weir_core::files::{DEFAULT_CHUNK_BYTES, DEFAULT_FETCH_CONCURRENCY, DEFAULT_VERIFY_ATTEMPTS};
use weir_storage::{Location, Patterns};
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::steps::{storage_error, FileSteps};

/// Runs `recover_files` with the file steps' fetching.
pub struct Recovery {
    pub files: std::sync::Arc<FileSteps>,
}

#[async_trait]
impl StepHandler for Recovery {
    fn kinds(&self) -> &'static [&'static str] {
        &["recover_files"]
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let step = RecoveryStep::parse(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        let staging = self.files.staging();
        let plan = weir_worker::report::upstream_of(task, staging, "recovery_strategy").await?;
        if plan["strategy"] != "files" {
            return Ok(json!({"kind": "recover_files", "strategy": plan["strategy"],
                             "skipped": "another source recovers this", "files": []}));
        }
        let fallback = step.resource.fallbacks.iter().find_map(|f| f.location.as_ref().map(|l| (l, &f.patterns)));
        let Some((spec, patterns)) = fallback else {
            return Err(StepError::permanent(
                "bad_input",
                "the strategy chose files, but the resource has no files fallback",
            ));
        };
        let storage = |e: weir_storage::StorageError| storage_error(&e);
        let loc = Location::open(spec).map_err(storage)?;
        let all = vec!["**/*".to_string()];
        let patterns = Patterns::new(if patterns.is_empty() { &all } else { patterns }).map_err(storage)?;
        let mut paths: Vec<String> = loc.list(&patterns).await.map_err(storage)?.into_iter().map(|f| f.path).collect();
        paths.sort();
        let (files, quarantined) = self
            .files
            .fetch_all(
                task,
                &loc,
                &paths,
                DEFAULT_CHUNK_BYTES as usize,
                DEFAULT_VERIFY_ATTEMPTS,
                DEFAULT_FETCH_CONCURRENCY,
            )
            .await?;
        let report = json!({"kind": "recover_files", "strategy": "files", "location": spec, "count": files.len(),
                            "files": files, "quarantined": quarantined});
        weir_worker::report::publish(report, staging, task).await
    }
}
