//! The data kinds `convert`, `quality`, `store` and `classify`: one handler, four configurations of
//! `weir-data`'s pipeline (see `weir_core::dataset`).
//!
//! Inputs come from `config.inputs`, or from the `files` the upstream steps reported
//! (a data step's `output`, a file step's `path`), keeping each file's original identity
//! so every step keys its writes by the same name. Files are grouped into bounded
//! batches; each batch takes a slot, runs on a blocking thread, and is stopped when the
//! task is cancelled, its lease is lost or the batch times out (nothing of an unfinished
//! file is committed). The output reports every file: rows read = written + quarantined.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use weir_core::catalog::BATCH_KINDS;
use weir_core::dataset::schema::Origin;
use weir_core::dataset::{DataStep, SinkSpec};
use weir_core::model::DatasetVersion;
use weir_data::pipeline::{self, Input, Plan};
use weir_data::sink::landing::{Pools, Sinks};
use weir_data::sink::WriteFence;
use weir_data::{DataError, FileReport};
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::{batches, BatchSettings};

/// Runs the data kinds.
pub struct DataSteps {
    settings: BatchSettings,
    staging: weir_worker::staging::Staging,
    slots: Arc<Semaphore>,
    /// The PostgreSQL sinks' pools, one per `url_env`.
    pools: Pools,
}

impl DataSteps {
    pub fn new(settings: BatchSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.slots));
        DataSteps { staging: settings.staging(), settings, slots, pools: Pools::default() }
    }
}

/// A data-plane error as the step's error: its kind, and whether a retry may pass.
pub(crate) fn step_error(e: &DataError) -> StepError {
    StepError { kind: e.kind().into(), message: e.to_string(), retryable: e.is_retryable() }
}

/// The files a step reads: its config's, or those its upstream steps reported (their
/// outputs resolved, see `weir_worker::report`).
pub fn gather_inputs(step: &DataStep, upstream: &[(String, Value)]) -> Result<Vec<Input>, StepError> {
    if !step.inputs.is_empty() {
        return Ok(step
            .inputs
            .iter()
            .map(|i| {
                let path = i.strip_prefix("file://").unwrap_or(i);
                Input { path: PathBuf::from(path), identity: i.clone() }
            })
            .collect());
    }
    let mut out = Vec::new();
    for (from, v) in upstream {
        let Some(files) = v.get("files").and_then(Value::as_array) else { continue };
        for f in files {
            let path = f.get("output").or_else(|| f.get("path")).and_then(Value::as_str);
            let Some(path) = path else { continue };
            let identity = f.get("input").or_else(|| f.get("source")).and_then(Value::as_str).unwrap_or(path);
            if path.is_empty() {
                return Err(StepError::permanent(
                    "bad_input",
                    format!("step {from} reported a file with an empty path"),
                ));
            }
            out.push(Input { path: PathBuf::from(path), identity: identity.to_string() });
        }
    }
    Ok(out)
}

#[async_trait]
impl StepHandler for DataSteps {
    fn kinds(&self) -> &'static [&'static str] {
        &BATCH_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let result = self.run_step(task).await;
        // This attempt's scratch goes (another attempt of the step, after a lost lease,
        // has its own).
        let _ = tokio::fs::remove_dir_all(self.scratch(task)).await;
        result
    }
}

impl DataSteps {
    /// This attempt's local working folder: downloaded inputs, writes bound for object
    /// stores and, with a staging store, staged output before it is uploaded.
    fn scratch(&self, task: &TaskContext) -> PathBuf {
        self.staging.dir(task).join(format!("attempt-{}", task.fence))
    }

    async fn run_step(&self, task: &TaskContext) -> Result<Value, StepError> {
        let mut step =
            DataStep::parse(&task.kind, task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        if task.kind == "classify" && step.classify.is_none() {
            step.classify = Some(Default::default());
        }
        let step = Arc::new(step);
        // Every sink opened and its schema read before any work: a bad one fails the step at once.
        let sinks = Sinks::open(&step, &self.pools).await.map_err(|e| step_error(&e))?;
        let states = sinks.states().await.map_err(|e| step_error(&e))?;
        let upstream = weir_worker::report::upstream(task, &self.staging).await?;
        let mut inputs = gather_inputs(&step, &upstream)?;
        if inputs.is_empty() {
            return Err(StepError::permanent(
                "no_input",
                format!(
                    "{} has no input files: list them in config.inputs, or depend on a step that reports files",
                    task.kind
                ),
            ));
        }
        // Staged inputs on the staging store are read from a local copy.
        let incoming = self.scratch(task).join("incoming");
        let reported: Vec<String> = inputs.iter().map(|i| i.path.to_string_lossy().into_owned()).collect();
        let taken: Vec<Result<PathBuf, StepError>> = futures_util::stream::iter(reported)
            .map(|r| {
                let (staging, incoming) = (&self.staging, &incoming);
                async move { staging.take(&r, incoming).await }
            })
            .buffered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
        for (input, path) in inputs.iter_mut().zip(taken) {
            input.path = path?;
        }
        let staged = step.sinks.iter().any(SinkSpec::reads_staged);
        // Staged output is written where the next steps read it, or, with a staging
        // store, in scratch until it is uploaded.
        let staged_dir = match self.staging.remote() {
            Some(_) => self.scratch(task).join("staged"),
            None => self.staging.dir(task),
        };
        let staging = (task.kind != "store" || staged).then_some(staged_dir);
        let cancel = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (token, flag) = (task.cancel.clone(), cancel.clone());
            tokio::spawn(async move {
                token.cancelled().await;
                flag.store(true, Ordering::Relaxed);
            })
        };
        // With dedupe, the keys the sinks hold already (but not this step's own inputs').
        let dedupe = {
            let own: std::collections::HashSet<String> =
                inputs.iter().map(|i| weir_data::sink::input_key(&i.identity)).collect();
            let step = step.clone();
            tokio::task::spawn_blocking(move || weir_data::dedupe::Seen::load(&step, &own))
                .await
                .map_err(|e| StepError::retryable("crashed", format!("reading the sinks' keys: {e}")))?
                .map_err(|e| step_error(&e))?
        };
        if let Some(seen) = &dedupe {
            tracing::info!(keys = seen.landed, "keys the sinks hold already");
        }
        let plan = Plan {
            step: step.clone(),
            sinks: Arc::new(states),
            staging,
            quarantine: task.folder(&self.settings.data_dir, weir_worker::QUARANTINE),
            outgoing: self.scratch(task).join("outgoing"),
            fence: WriteFence { task: task.task_id.to_string(), fence: task.fence },
            now_micros: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0),
            cancel: cancel.clone(),
            dedupe: dedupe.map(Arc::new),
        };
        let sizes: Vec<u64> = inputs.iter().map(|i| std::fs::metadata(&i.path).map(|m| m.len()).unwrap_or(0)).collect();
        let groups = batches::plan(&sizes, self.settings.max_batch_bytes, self.settings.max_batch_files);
        let n_batches = groups.len();

        let mut running = tokio::task::JoinSet::new();
        // Each file's conversion is a span of the task's (its trace, when exported).
        let task_span = tracing::Span::current();
        for (b, group) in groups.into_iter().enumerate() {
            let files: Vec<(usize, Input)> = group.into_iter().map(|i| (i, inputs[i].clone())).collect();
            let (plan, slots, timeout) = (plan.clone(), self.slots.clone(), self.settings.batch_timeout);
            let parent = task_span.clone();
            running.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return vec![];
                };
                let stop = plan.cancel.clone();
                let work = tokio::task::spawn_blocking(move || {
                    files
                        .into_iter()
                        .map(|(i, input)| {
                            let span = tracing::info_span!(parent: &parent, "convert", input = %input.identity);
                            (i, span.in_scope(|| pipeline::convert(&input, &plan)), input)
                        })
                        .collect::<Vec<_>>()
                });
                match tokio::time::timeout(timeout, work).await {
                    Ok(Ok(done)) => done,
                    Ok(Err(join)) => vec![(
                        usize::MAX,
                        Err(DataError::Sink(format!("batch {b} crashed: {join}"))),
                        Input { path: PathBuf::new(), identity: format!("batch {b}") },
                    )],
                    Err(_) => {
                        stop.store(true, Ordering::Relaxed);
                        vec![(
                            usize::MAX,
                            Err(DataError::Sink(format!(
                            "batch {b} ran longer than WEIR_BATCH_TIMEOUT {}; its unfinished file was not committed",
                            weir_core::duration::format(timeout)
                        ))),
                            Input { path: PathBuf::new(), identity: format!("batch {b}") },
                        )]
                    }
                }
            });
        }
        let mut results: Vec<(usize, Result<FileReport, DataError>, Input)> = Vec::new();
        while let Some(done) = running.join_next().await {
            if let Ok(done) = done {
                results.extend(done);
            }
        }
        watcher.abort();
        results.sort_by_key(|(i, _, _)| *i);

        // Land each file in all sinks or none, a few files at once, in order.
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let settled: Vec<(Input, Result<FileReport, DataError>, Option<DataError>)> =
            futures_util::stream::iter(results)
                .map(|(_, result, input)| self.settle(task, &sinks, &plan.fence, now_ms, result, input))
                .buffered(PUBLISH_CONCURRENCY)
                .collect()
                .await;
        let mut reports = Vec::new();
        let mut failures: Vec<(String, DataError)> = Vec::new();
        for (input, result, late) in settled {
            match result {
                Ok(report) => reports.push(report),
                Err(e) => failures.push((input.identity.clone(), e)),
            }
            if let Some(e) = late {
                failures.push((input.identity.clone(), e));
            }
        }
        // Whatever landed, its sinks' schema versions go to the catalogue (a retry after a
        // crash here records what this attempt did not).
        if !step.sinks.is_empty() {
            if let Err(e) = self.record_versions(&sinks).await {
                failures.push(("the dataset catalogue".into(), e));
            }
        }
        if cancel.load(Ordering::Relaxed) && failures.iter().any(|(_, e)| matches!(e, DataError::Cancelled)) {
            return Err(StepError::retryable("cancelled", "stopped: the task was cancelled or its lease lost"));
        }
        if let Some((_, first)) = failures.first() {
            let mut err = step_error(first);
            err.retryable = failures.iter().all(|(_, e)| e.is_retryable());
            let listed: Vec<String> = failures.iter().take(5).map(|(f, e)| format!("{f}: {e}")).collect();
            err.message = format!(
                "{} of {} files failed ({} more not shown): {}",
                failures.len(),
                inputs.len(),
                failures.len().saturating_sub(5),
                listed.join("; ")
            );
            return Err(err);
        }
        let sum = |f: fn(&FileReport) -> u64| reports.iter().map(f).sum::<u64>();
        // Every labelled column of the step, whichever input it was found in.
        let mut classified = std::collections::BTreeMap::new();
        for c in reports.iter().flat_map(|r| &r.classified) {
            classified.entry(c.column.clone()).or_insert_with(|| json!({"class": c.class, "action": c.action}));
        }
        crate::metrics::BATCH.step(
            &task.kind,
            [
                ("read", sum(|r| r.rows_read)),
                ("written", sum(|r| r.rows_written)),
                ("quarantined", sum(|r| r.rows_quarantined)),
                ("duplicate", sum(|r| r.rows_duplicate)),
            ],
            reports.len() as u64,
            sum(|r| r.bytes_read),
        );
        let mut report = json!({
            "kind": task.kind,
            "rows_read": sum(|r| r.rows_read),
            "rows_written": sum(|r| r.rows_written),
            "rows_quarantined": sum(|r| r.rows_quarantined),
            "rows_duplicate": sum(|r| r.rows_duplicate),
            "bytes_read": sum(|r| r.bytes_read),
            "batches": n_batches,
            "files": reports,
        });
        if !classified.is_empty() {
            report["classified"] = json!(classified);
        }
        weir_worker::report::publish(report, &self.staging, task).await
    }
}

/// Files whose sink writes (object-store publishes, PostgreSQL loads) run at once.
const PUBLISH_CONCURRENCY: usize = 8;

impl DataSteps {
    /// Lands one converted file in the step's sinks and leaves its staged output for the
    /// next steps; the second error is the landing's.
    async fn settle(
        &self,
        task: &TaskContext,
        sinks: &Sinks,
        fence: &WriteFence,
        now_ms: i64,
        result: Result<FileReport, DataError>,
        input: Input,
    ) -> (Input, Result<FileReport, DataError>, Option<DataError>) {
        let Ok(mut report) = result else { return (input, result, None) };
        let origin = Origin {
            job_id: task.job_id.to_string(),
            task_id: task.task_id.to_string(),
            step_id: task.step_id.clone(),
            input: input.identity.clone(),
            time_ms: now_ms,
        };
        let done = match sinks.land(&mut report, fence, &origin).await {
            Ok(()) => self.leave_output(task, &mut report).await,
            Err(e) => Err(e),
        };
        (input, Ok(report), done.err())
    }

    /// Copies every schema version the step's sinks hold into the dataset catalogue; the
    /// versions it has already are left alone, each new one gets its event.
    async fn record_versions(&self, sinks: &Sinks) -> Result<(), DataError> {
        let store =
            self.settings.catalogue.get().await.map_err(|e| DataError::Sink(format!("dataset catalogue: {e}")))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for (id, history) in sinks.histories().await? {
            let versions: Vec<DatasetVersion> = history
                .versions
                .into_iter()
                .map(|version| DatasetVersion {
                    dataset: id.dataset.clone(),
                    kind: id.kind.into(),
                    version,
                    recorded_ms: now,
                })
                .collect();
            let new = store
                .record_dataset_versions(&versions)
                .await
                .map_err(|e| DataError::Sink(format!("dataset catalogue: {e}")))?;
            if new > 0 {
                tracing::info!(dataset = %id.dataset, new, "schema versions recorded");
            }
        }
        Ok(())
    }

    /// Leaves a file's staged output for the next steps (on the staging store, if any).
    async fn leave_output(&self, task: &TaskContext, report: &mut FileReport) -> Result<(), DataError> {
        let Some(local) = report.output.clone() else { return Ok(()) };
        let local = PathBuf::from(local);
        let name = local.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let left = self.staging.leave(task, &local, &name).await.map_err(|e| {
            if e.retryable {
                DataError::Sink(e.message)
            } else {
                DataError::Config(e.message)
            }
        })?;
        report.output = Some(left);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_come_from_config_or_upstream_reports() {
        let step = DataStep { inputs: vec!["file:///in/a.csv".into()], ..Default::default() };
        let got = gather_inputs(&step, &[]).expect("inputs");
        assert_eq!((got[0].path.to_str(), got[0].identity.as_str()), (Some("/in/a.csv"), "file:///in/a.csv"));

        let upstream = vec![
            (
                "convert".to_string(),
                json!({"files": [{"input": "s3://b/a.csv", "output": "/st/a.parquet"}, {"input": "x", "output": null}]}),
            ),
            ("fetch".to_string(), json!({"files": [{"source": "sftp://h/b.csv", "path": "/st/b.csv"}]})),
            ("noop".to_string(), json!({})),
        ];
        let got = gather_inputs(&DataStep::default(), &upstream).expect("inputs");
        let pairs: Vec<(&str, &str)> =
            got.iter().map(|i| (i.path.to_str().unwrap_or(""), i.identity.as_str())).collect();
        assert_eq!(pairs, vec![("/st/a.parquet", "s3://b/a.csv"), ("/st/b.csv", "sftp://h/b.csv")]);
    }
}
