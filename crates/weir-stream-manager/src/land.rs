//! One flush of one partition's range into the step's sinks, through the data plane:
//! the records (NDJSON, one per message) are converted, checked, typed against each
//! sink's schema and landed in all sinks or none (`weir_data::sink::landing`), named by
//! their range (see [`crate::positions`]) and fenced by the task's lease.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use weir_core::dataset::schema::Origin;
use weir_core::dataset::{DataStep, FormatKind, FormatSpec, SinkSpec};
use weir_core::stream::StreamStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::landing::{Pools, Sinks};
use weir_data::sink::WriteFence;
use weir_data::{DataError, FileReport};
use weir_worker::{StepError, TaskContext};

/// The step's sinks, opened once per stream.
pub struct Landing {
    step: Arc<DataStep>,
    sinks: Sinks,
    scratch: PathBuf,
    quarantine: PathBuf,
    fence: WriteFence,
    task: TaskContext,
}

/// A data-plane error as the step's error: its kind, and whether a retry may pass.
pub fn step_error(e: &DataError) -> StepError {
    StepError { kind: e.kind().into(), message: e.to_string(), retryable: e.is_retryable() }
}

impl Landing {
    /// Opens the sinks (a bad one fails the step at once) with a scratch folder for flushes.
    pub async fn open(
        stream: &StreamStep,
        task: &TaskContext,
        data_dir: &Path,
        pools: &Pools,
    ) -> Result<Landing, StepError> {
        let step = DataStep {
            sinks: stream.sinks.clone(),
            schema: stream.schema.clone(),
            rules: stream.rules.clone(),
            format: Some(FormatSpec { kind: Some(FormatKind::Ndjson), ..Default::default() }),
            ..Default::default()
        };
        let sinks = Sinks::open(&step, pools).await.map_err(|e| step_error(&e))?;
        let scratch = task.folder(data_dir, weir_worker::STAGING).join(format!("attempt-{}", task.fence));
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(|e| StepError::retryable("staging", format!("creating {}: {e}", scratch.display())))?;
        Ok(Landing {
            step: Arc::new(step),
            sinks,
            quarantine: task.folder(data_dir, weir_worker::QUARANTINE),
            scratch,
            fence: WriteFence { task: task.task_id.to_string(), fence: task.fence },
            task: task.clone(),
        })
    }

    /// Lands `records` (NDJSON) as the input `identity`.
    pub async fn land(&self, identity: &str, records: Vec<u8>) -> Result<FileReport, StepError> {
        let key = weir_data::sink::input_key(identity);
        let path = self.scratch.join(format!("{key}.ndjson"));
        tokio::fs::write(&path, &records)
            .await
            .map_err(|e| StepError::retryable("staging", format!("writing {}: {e}", path.display())))?;
        let states = self.sinks.states().await.map_err(|e| step_error(&e))?;
        let has_pg = self.step.sinks.iter().any(|s| matches!(s, SinkSpec::Postgres { .. }));
        let plan = Plan {
            step: self.step.clone(),
            sinks: Arc::new(states),
            staging: has_pg.then(|| self.scratch.join("staged")),
            quarantine: self.quarantine.clone(),
            outgoing: self.scratch.join("outgoing"),
            fence: self.fence.clone(),
            now_micros: weir_runtime::now_ms() * 1000,
            cancel: Arc::new(AtomicBool::new(false)),
            dedupe: None,
        };
        let input = Input { path: path.clone(), identity: identity.to_string() };
        let mut report = tokio::task::spawn_blocking(move || convert(&input, &plan))
            .await
            .map_err(|e| StepError::retryable("crashed", e.to_string()))?
            .map_err(|e| step_error(&e))?;
        let origin = Origin {
            job_id: self.task.job_id.to_string(),
            task_id: self.task.task_id.to_string(),
            step_id: self.task.step_id.clone(),
            input: identity.to_string(),
            time_ms: weir_runtime::now_ms(),
        };
        self.sinks.land(&mut report, &self.fence, &origin).await.map_err(|e| step_error(&e))?;
        let _ = tokio::fs::remove_file(&path).await;
        if let Some(o) = &report.output {
            let _ = tokio::fs::remove_file(o).await;
        }
        Ok(report)
    }
}
