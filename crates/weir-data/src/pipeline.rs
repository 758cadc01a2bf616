//! One input through the whole path: read, type, check, write, account.
//!
//! [`convert`] is synchronous and CPU-bound (callers put it on a blocking thread). It
//! writes the valid rows to a staged Parquet file (when asked) and to every Parquet
//! sink, and the rejected rows to the quarantine; all of them commit only when the input
//! passed its dataset rules. The PostgreSQL sink loads the staged file afterwards
//! ([`crate::sink::postgres`]), and Parquet sinks on object stores are prepared locally
//! and published afterwards ([`crate::sink::object`]): both are async, this is not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_array::BooleanArray;
use weir_core::dataset::{DataStep, SinkSpec};

use crate::quality::{count_by_rule, Quality};
use crate::quarantine::Quarantine;
use crate::read::{self, Chunk, DEFAULT_BATCH_ROWS};
use crate::sink::parquet::DatasetWriter;
use crate::sink::{input_key, WriteFence};
use crate::typing::{keep_rows, render_row, type_name, Target};
use crate::{DataError, FileReport, Reject};

/// zstd level of staged files: fast, they are read once by the next step.
pub const STAGED_ZSTD_LEVEL: i32 = 1;
/// zstd level of Parquet sinks unless the step says otherwise.
pub const SINK_ZSTD_LEVEL: i32 = 3;

/// One input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file to read.
    pub path: PathBuf,
    /// What the input is called where it came from (its source URI or path): its rows
    /// land in files keyed by this name, so a re-run of the same input replaces them.
    pub identity: String,
}

/// Where a step's outputs go and who writes them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub step: Arc<DataStep>,
    /// Directory for the staged Parquet output (`None`: no staged output).
    pub staging: Option<PathBuf>,
    /// Directory of the quarantine dataset.
    pub quarantine: PathBuf,
    /// Local directory where writes bound for object-store sinks are prepared.
    pub outgoing: PathBuf,
    pub fence: WriteFence,
    /// The clock, for freshness rules (µs since the epoch).
    pub now_micros: i64,
    /// Set when the work must stop (task cancelled, lease lost, batch timed out); checked
    /// between chunks, and nothing is committed.
    pub cancel: Arc<AtomicBool>,
}

/// The open writers of one input.
struct Writers {
    staged: Option<DatasetWriter>,
    /// Parquet sinks; `Some(index)` for one on an object store (prepared, not committed).
    sinks: Vec<(Option<usize>, DatasetWriter)>,
}

impl Writers {
    fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<(), DataError> {
        for w in self.staged.iter_mut().chain(self.sinks.iter_mut().map(|(_, w)| w)) {
            w.write(batch)?;
        }
        Ok(())
    }

    fn abort(self) {
        for w in self.staged.into_iter().chain(self.sinks.into_iter().map(|(_, w)| w)) {
            w.abort();
        }
    }

    /// Commits local sinks and prepares object-store ones, into the report.
    fn finish_sinks(sinks: Vec<(Option<usize>, DatasetWriter)>, report: &mut FileReport) -> Result<(), DataError> {
        for (remote, w) in sinks {
            match remote {
                None => report.sink_files.extend(w.commit()?.into_iter().map(|p| p.display().to_string())),
                Some(i) => report.unpublished.push((i, w.prepare()?)),
            }
        }
        Ok(())
    }
}

/// The Parquet sinks of a step: where each is written locally, and its index when it
/// lives on an object store (written under `outgoing`, published by the caller).
fn parquet_sinks<'a>(
    step: &'a DataStep,
    outgoing: &'a Path,
) -> impl Iterator<Item = (PathBuf, Option<usize>, Option<&'a str>, i32)> + 'a {
    step.sinks.iter().enumerate().filter_map(move |(i, s)| match s {
        SinkSpec::Parquet { path, partition_by, zstd_level, location } => {
            let (root, remote) = match location {
                None => (PathBuf::from(path), None),
                Some(_) => (outgoing.join(format!("sink{i}")), Some(i)),
            };
            Some((root, remote, partition_by.as_deref(), zstd_level.unwrap_or(SINK_ZSTD_LEVEL)))
        }
        SinkSpec::Postgres { .. } => None,
    })
}

/// Target columns whose values in the first chunk, as read, are mostly distinct (over a
/// quarter of at least 1,000 rows): Parquet is better off writing them without a dictionary.
fn mostly_distinct(sample: &arrow_array::RecordBatch, target: &Target) -> Vec<String> {
    use arrow_cast::display::{ArrayFormatter, FormatOptions};
    let rows = sample.num_rows();
    if rows < 1000 {
        return vec![];
    }
    let mut out = Vec::new();
    for (name, source) in target.sources() {
        let Some(col) = sample.columns().get(source) else { continue };
        let Ok(fmt) = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()) else { continue };
        let distinct: std::collections::HashSet<String> = (0..rows).map(|i| fmt.value(i).to_string()).collect();
        if distinct.len() * 4 > rows {
            out.push(name.to_string());
        }
    }
    out
}

/// Converts one input as the plan says; the report accounts for every row.
pub fn convert(input: &Input, plan: &Plan) -> Result<FileReport, DataError> {
    let step = plan.step.as_ref();
    let batch_rows = step.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS);
    let mut opened = read::open(&input.path, step.format.as_ref(), batch_rows)?;
    let key = input_key(&input.identity);
    let mut report = FileReport { input: input.identity.clone(), format: opened.format_name(), ..Default::default() };
    let mut quarantine = Quarantine::new(&plan.quarantine, &input.identity, &key, &plan.fence);

    let first = opened.source.next_chunk()?;
    let Some(first) = first else {
        // An empty input: zero rows. Commit empty writes so a re-run clears old rows.
        report.bytes_read = opened.bytes_read.load(Ordering::Relaxed);
        if let Some(rules) = &step.rules {
            if let Some(min) = rules.min_rows.filter(|m| *m > 0) {
                return Err(DataError::Quality(format!("the input is empty, fewer than min_rows {min}")));
            }
            if let Some(f) = &rules.freshness {
                return Err(DataError::Quality(format!(
                    "freshness: the input is empty, so {:?} has no values",
                    f.column
                )));
            }
        }
        let empty = std::sync::Arc::new(arrow_schema::Schema::empty());
        let mut sinks = Vec::new();
        for (root, remote, _, _) in parquet_sinks(step, &plan.outgoing) {
            sinks.push((remote, DatasetWriter::create(&root, &key, &plan.fence, &empty, None, SINK_ZSTD_LEVEL)?));
        }
        Writers::finish_sinks(sinks, &mut report)?;
        quarantine.commit()?;
        return Ok(report);
    };
    let input_columns: Vec<String> = first.batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    let target = Target::resolve(step.schema.as_deref(), &first.batch, opened.source.positional())?;
    let schema = target.schema().clone();
    report.schema = schema.fields().iter().map(|f| (f.name().clone(), type_name(f.data_type()))).collect();
    let mut quality = match &step.rules {
        Some(r) => Some(Quality::new(r, &schema, &input_columns, plan.now_micros)?),
        None => None,
    };
    let plain = mostly_distinct(&first.batch, &target);
    let mut writers = Writers {
        staged: match &plan.staging {
            Some(dir) => Some(
                DatasetWriter::create(dir, &key, &plan.fence, &schema, None, STAGED_ZSTD_LEVEL)?
                    .transient()
                    .without_dictionary(&plain),
            ),
            None => None,
        },
        sinks: Vec::new(),
    };
    for (root, remote, partition_by, level) in parquet_sinks(step, &plan.outgoing) {
        match DatasetWriter::create(&root, &key, &plan.fence, &schema, partition_by, level) {
            Ok(w) => writers.sinks.push((remote, w.without_dictionary(&plain))),
            Err(e) => {
                writers.abort();
                return Err(e);
            }
        }
    }

    let mut run = |chunk: Chunk, writers: &mut Writers, quarantine: &mut Quarantine| -> Result<(), DataError> {
        report.rows_read += (chunk.rows.len() + chunk.rejects.len()) as u64;
        for r in &chunk.rejects {
            *report.quarantined_by_rule.entry(r.rule.clone()).or_default() += 1;
        }
        quarantine.add(chunk.rejects)?;
        if chunk.rows.is_empty() {
            return Ok(());
        }
        let (typed, mut problems) = target.apply(&chunk.batch)?;
        if let Some(q) = quality.as_mut() {
            q.check(&typed, &mut problems)?;
        }
        let bad = problems.iter().filter(|p| p.is_some()).count();
        let valid = if bad == 0 {
            keep_rows(&typed, &BooleanArray::from(vec![true; typed.num_rows()]), &schema)?
        } else {
            count_by_rule(&problems, &mut report.quarantined_by_rule);
            let keep = BooleanArray::from(problems.iter().map(Option::is_none).collect::<Vec<_>>());
            let rejects = problems.iter().enumerate().filter_map(|(i, p)| {
                p.as_ref().map(|(rule, reason)| Reject {
                    row: chunk.rows[i],
                    rule: rule.to_string(),
                    reason: reason.clone(),
                    record: render_row(&chunk.batch, i),
                })
            });
            quarantine.add(rejects.collect::<Vec<_>>())?;
            keep_rows(&typed, &keep, &schema)?
        };
        report.rows_written += valid.num_rows() as u64;
        if let Some(q) = quality.as_mut() {
            q.observe_written(&valid);
        }
        writers.write(&valid)
    };

    let mut result = run(first, &mut writers, &mut quarantine);
    while result.is_ok() {
        if plan.cancel.load(Ordering::Relaxed) {
            result = Err(DataError::Cancelled);
            break;
        }
        match opened.source.next_chunk() {
            Ok(Some(chunk)) => result = run(chunk, &mut writers, &mut quarantine),
            Ok(None) => break,
            Err(e) => result = Err(e),
        }
    }
    report.rows_quarantined = quarantine.rows();
    report.bytes_read = opened.bytes_read.load(Ordering::Relaxed);
    report.ignored_columns = target.ignored.clone();
    report.ignored_columns.extend(opened.source.late_columns());
    if let Err(e) = result {
        writers.abort();
        quarantine.abort();
        return Err(e);
    }
    if let Err(e) = report.check_accounting() {
        writers.abort();
        quarantine.abort();
        return Err(e);
    }
    if let Some(Err(e)) = quality.as_ref().map(|q| q.finish(&report)) {
        // The input fails whole; its rejects stay visible in the quarantine for diagnosis.
        writers.abort();
        let at = quarantine.commit()?;
        return Err(match (e, at) {
            (DataError::Quality(m), Some(at)) => DataError::Quality(format!("{m}; rejected rows are in {at}")),
            (e, _) => e,
        });
    }
    report.quarantine = quarantine.commit()?;
    if let Some(w) = writers.staged.take() {
        report.output = w.commit()?.into_iter().next().map(|p| p.display().to_string());
    }
    Writers::finish_sinks(writers.sinks, &mut report)?;
    Ok(report)
}
