//! One flush of one partition's range into the step's sinks, through the data plane:
//! the records (NDJSON, one per message) are converted, checked, typed against each
//! sink's schema and landed in all sinks or none (`weir_data::sink::landing`), named by
//! their range (see [`crate::positions`]) and fenced by the task's lease.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use weir_core::dataset::schema::ColumnType;
use weir_core::dataset::schema::Origin;
use weir_core::dataset::{ColumnSpec, DataStep, FormatKind, FormatSpec, SinkSpec};
use weir_core::stream::{MessageFormat, StreamStep};
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
    /// Where converted files wait for a PostgreSQL sink's COPY or a Kafka topic's
    /// messages (none without one).
    staging: Option<PathBuf>,
    quarantine: PathBuf,
    fence: WriteFence,
    task: TaskContext,
    /// Written before the records of each flush (a CSV header).
    header: Option<Vec<u8>>,
}

/// A data-plane error as the step's error: its kind, and whether a retry may pass.
pub fn step_error(e: &DataError) -> StepError {
    StepError { kind: e.kind().into(), message: e.to_string(), retryable: e.is_retryable() }
}

impl Landing {
    /// Opens the stream's sinks (a bad one fails the step at once) with a scratch folder
    /// for flushes.
    pub async fn open(
        stream: &StreamStep,
        task: &TaskContext,
        data_dir: &Path,
        pools: &Pools,
    ) -> Result<Landing, StepError> {
        // JSON messages flush as NDJSON; CSV lines as a CSV file under the columns' header.
        let (format, header) = match &stream.format {
            MessageFormat::Csv { columns } => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(columns)
                    .map_err(|e| StepError::permanent("bad_config", format!("format.columns: {e}")))?;
                let header = w.into_inner().map_err(|e| StepError::permanent("bad_config", e.to_string()))?;
                let spec = FormatSpec {
                    kind: Some(FormatKind::Csv),
                    header: Some(true),
                    delimiter: Some(",".into()),
                    ..Default::default()
                };
                (spec, Some(header))
            }
            _ => (FormatSpec { kind: Some(FormatKind::Ndjson), ..Default::default() }, None),
        };
        let step = DataStep {
            sinks: stream.sinks.clone(),
            schema: stream.schema.clone(),
            rules: stream.rules.clone(),
            format: Some(format),
            ..Default::default()
        };
        let mut landing = Self::open_step(step, task, data_dir, pools, "records").await?;
        landing.header = header;
        Ok(landing)
    }

    /// Opens the dead-letter dataset: a message that does not decode, with its source
    /// coordinates and the reason (see [`crate::run`]).
    pub async fn dead_letters(path: &str, task: &TaskContext, data_dir: &Path) -> Result<Landing, StepError> {
        let col = |name: &str, kind: ColumnType, nullable: bool| ColumnSpec {
            name: name.into(),
            kind,
            nullable,
            null_values: None,
        };
        let step = DataStep {
            sinks: vec![serde_json::from_value(serde_json::json!({"type": "parquet", "path": path}))
                .map_err(|e| StepError::permanent("bad_config", format!("dead_letter: {e}")))?],
            schema: Some(vec![
                col("source", ColumnType::String, false),
                col("lane", ColumnType::String, false),
                col("position", ColumnType::Int64, false),
                col("id", ColumnType::String, true),
                col("reason", ColumnType::String, false),
                col("message", ColumnType::String, false),
                col("received_at", ColumnType::Timestamp, false),
            ]),
            format: Some(FormatSpec { kind: Some(FormatKind::Ndjson), ..Default::default() }),
            ..Default::default()
        };
        Self::open_step(step, task, data_dir, &Pools::default(), "dead").await
    }

    async fn open_step(
        step: DataStep,
        task: &TaskContext,
        data_dir: &Path,
        pools: &Pools,
        scratch: &str,
    ) -> Result<Landing, StepError> {
        let sinks = Sinks::open(&step, pools).await.map_err(|e| step_error(&e))?;
        let scratch = task.folder(data_dir, weir_worker::STAGING).join(format!("attempt-{}-{scratch}", task.fence));
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(|e| StepError::retryable("staging", format!("creating {}: {e}", scratch.display())))?;
        let staged = step.sinks.iter().any(SinkSpec::reads_staged);
        Ok(Landing {
            step: Arc::new(step),
            sinks,
            quarantine: task.folder(data_dir, weir_worker::QUARANTINE),
            staging: staged.then(|| scratch.join("staged")),
            scratch,
            fence: WriteFence { task: task.task_id.to_string(), fence: task.fence },
            task: task.clone(),
            header: None,
        })
    }

    /// Raises the task's fence in every sink before anything is read (see
    /// `Sinks::claim`).
    pub async fn claim(&self) -> Result<(), StepError> {
        self.sinks.claim(&self.fence).await.map_err(|e| step_error(&e))
    }

    /// The input keys each sink holds (`None`: a sink that does not tell yet).
    pub async fn input_keys(&self) -> Result<Vec<Vec<String>>, StepError> {
        Ok(self.sinks.input_keys().await.map_err(|e| step_error(&e))?.into_iter().flatten().collect())
    }

    /// The input identities the sinks recorded (see `Sinks::input_identities`).
    pub async fn input_identities(&self) -> Result<Vec<Vec<String>>, StepError> {
        Ok(self.sinks.input_identities().await.map_err(|e| step_error(&e))?.into_iter().flatten().collect())
    }

    /// Lands `records` (NDJSON) as the input `identity`: one flush of the stream.
    #[tracing::instrument(name = "flush", skip_all, fields(input = %identity, bytes = records.len()))]
    pub async fn land(&self, identity: &str, mut records: Vec<u8>) -> Result<FileReport, StepError> {
        let started = std::time::Instant::now();
        let key = weir_data::sink::input_key(identity);
        let path = match &self.header {
            Some(h) => {
                records.splice(0..0, h.iter().copied());
                self.scratch.join(format!("{key}.csv"))
            }
            None => self.scratch.join(format!("{key}.ndjson")),
        };
        tokio::fs::write(&path, &records)
            .await
            .map_err(|e| StepError::retryable("staging", format!("writing {}: {e}", path.display())))?;
        let states = self.sinks.states().await.map_err(|e| step_error(&e))?;
        let plan = Plan {
            step: self.step.clone(),
            sinks: Arc::new(states),
            staging: self.staging.clone(),
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
        let converted = started.elapsed();
        let origin = Origin {
            job_id: self.task.job_id.to_string(),
            task_id: self.task.task_id.to_string(),
            step_id: self.task.step_id.clone(),
            input: identity.to_string(),
            time_ms: weir_runtime::now_ms(),
        };
        self.sinks.land(&mut report, &self.fence, &origin).await.map_err(|e| step_error(&e))?;
        tracing::debug!(input = %identity, rows = report.rows_written, converted_ms = converted.as_secs_f64() * 1e3,
            landed_ms = started.elapsed().as_secs_f64() * 1e3, "flush landed");
        let _ = tokio::fs::remove_file(&path).await;
        if let Some(o) = &report.output {
            let _ = tokio::fs::remove_file(o).await;
        }
        Ok(report)
    }
}
