//! One input through the whole path: read, type, check, write, account.
//!
//! [`convert`] is synchronous and CPU-bound (callers put it on a blocking thread). It
//! types the input once for all of the step's sinks (reconciled with each sink's schema,
//! see [`crate::typing`]), writes the valid rows to a staged Parquet file (when asked)
//! and prepares every Parquet sink's files, and writes the rejected rows to the
//! quarantine — but commits no sink: [`crate::sink::landing`] lands the prepared writes
//! (and loads PostgreSQL from the staged file) in all sinks or in none. Nothing is
//! prepared unless the input passed its dataset rules.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_array::BooleanArray;
use weir_core::dataset::contract::{SinkPlan, SinkView, WritePlan};
use weir_core::dataset::{DataStep, SinkSpec};

use crate::classify::{labels_of, with_labels, Classifier};
use crate::quality::{count_by_rule, Quality};
use crate::quarantine::Quarantine;
use crate::read::{self, Chunk, DEFAULT_BATCH_ROWS};
use crate::sink::parquet::DatasetWriter;
use crate::sink::{input_key, Pending, SinkState, WriteFence};
use crate::typing::{arrow_schema, keep_rows, project, render_row, type_name, InputSchema, Target};
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
    /// Each of the step's sinks as it stands (its schema now), in the step's order:
    /// [`crate::sink::landing::Sinks::states`] reads them.
    pub sinks: Arc<Vec<SinkState>>,
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
    /// With `dedupe`: the keys landed or written so far ([`crate::dedupe`]).
    pub dedupe: Option<Arc<crate::dedupe::Seen>>,
}

/// One Parquet sink's writer: the sink's index, its schema, its files.
struct SinkWriter {
    index: usize,
    schema: arrow_schema::SchemaRef,
    writer: DatasetWriter,
}

/// The open writers of one input.
struct Writers {
    staged: Option<DatasetWriter>,
    sinks: Vec<SinkWriter>,
}

impl Writers {
    fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<(), DataError> {
        if let Some(w) = self.staged.as_mut() {
            w.write(batch)?;
        }
        for s in &mut self.sinks {
            s.writer.write(&project(batch, &s.schema)?)?;
        }
        Ok(())
    }

    fn abort(self) {
        for w in self.staged.into_iter().chain(self.sinks.into_iter().map(|s| s.writer)) {
            w.abort();
        }
    }
}

/// Where a Parquet sink's files are prepared: in the dataset's own `_weir/tmp` for a
/// local one (moved into place on commit), under `outgoing` for an object store.
fn sink_root(spec: &SinkSpec, index: usize, outgoing: &Path) -> Option<(PathBuf, i32, bool)> {
    match spec {
        SinkSpec::Parquet { path, zstd_level, location, .. } => {
            let level = zstd_level.unwrap_or(SINK_ZSTD_LEVEL);
            Some(match location {
                None => (PathBuf::from(path), level, true),
                Some(_) => (outgoing.join(format!("sink{index}")), level, false),
            })
        }
        SinkSpec::Postgres { .. } | SinkSpec::Kafka { .. } => None,
    }
}

/// A Parquet sink's writer for one input: durable or not, encrypted if the sink says so.
fn sink_writer(
    spec: &SinkSpec,
    (root, level, durable): (PathBuf, i32, bool),
    key: &str,
    fence: &WriteFence,
    schema: &arrow_schema::SchemaRef,
    partition: Option<&weir_core::dataset::schema::Partition>,
) -> Result<DatasetWriter, DataError> {
    let encryption = match spec {
        SinkSpec::Parquet { encryption: Some(e), .. } => Some(crate::sink::encryption::properties(e)?),
        _ => None,
    };
    let w = DatasetWriter::create(&root, key, fence, schema, partition, level)?.encrypted(encryption);
    Ok(if durable { w } else { w.transient() })
}

/// How each sink of the step takes an input with these columns.
fn write_plan(step: &DataStep, states: &[SinkState], input: &InputSchema) -> Result<WritePlan, DataError> {
    if step.sinks.is_empty() {
        return Ok(WritePlan::of_input(&input.columns()));
    }
    if states.len() != step.sinks.len() {
        return Err(DataError::Config(format!(
            "the step has {} sinks but {} were read before converting",
            step.sinks.len(),
            states.len()
        )));
    }
    let views: Vec<SinkView> = step
        .sinks
        .iter()
        .zip(states)
        .map(|(spec, st)| {
            let (contract, partition_by) = match spec {
                SinkSpec::Parquet { schema_contract, partition_by, .. } => (*schema_contract, partition_by.as_deref()),
                SinkSpec::Postgres { schema_contract, .. } => (*schema_contract, None),
                // A topic holds no schema: each input's records go as they are typed.
                SinkSpec::Kafka { .. } => (weir_core::dataset::SchemaContract::default(), None),
            };
            SinkView { name: &st.name, current: st.current.as_ref(), contract, partition_by }
        })
        .collect();
    let plan = WritePlan::for_sinks(&views, &input.columns()).map_err(DataError::Schema)?;
    // PostgreSQL cuts identifiers at 63 bytes: a longer column name would land under
    // another name (and two could become one).
    for ((spec, st), p) in step.sinks.iter().zip(states).zip(&plan.sinks) {
        if !matches!(spec, SinkSpec::Postgres { .. }) {
            continue;
        }
        if let Some(c) = p.schema.columns.iter().find(|c| c.name.len() > 63 || c.name.contains('\0')) {
            return Err(DataError::Schema(format!(
                "{}: column name {:?} is longer than PostgreSQL's 63 bytes (or holds NUL); rename it, or declare a schema that leaves it out",
                st.name, c.name
            )));
        }
    }
    Ok(plan)
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

/// Converts one input as the plan says; the report accounts for every row and carries
/// the sinks' prepared writes ([`FileReport::pending`]).
pub fn convert(input: &Input, plan: &Plan) -> Result<FileReport, DataError> {
    let step = plan.step.as_ref();
    let batch_rows = step.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS);
    let mut opened = read::open(&input.path, step.format.as_ref(), batch_rows)?;
    let key = input_key(&input.identity);
    let mut report = FileReport { input: input.identity.clone(), format: opened.format_name(), ..Default::default() };
    let mut quarantine = Quarantine::new(&plan.quarantine, &input.identity, &key, &plan.fence);

    let mut first = opened.source.next_chunk()?;
    // A chunk with no rows and nothing rejected (a header-only file) tells no types: if
    // nothing follows, the input has no rows, and no sink's schema is made from it.
    while first.as_ref().is_some_and(|c| c.rows.is_empty() && c.rejects.is_empty()) {
        match opened.source.next_chunk()? {
            Some(next) => first = Some(next),
            None => {
                first = None;
                break;
            }
        }
    }
    let Some(first) = first else {
        // An empty input: zero rows. Empty writes replace the input's old rows in the
        // Parquet sinks; no sink's schema changes.
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
        for (i, spec) in step.sinks.iter().enumerate() {
            let current = plan.sinks.get(i).and_then(|s| s.current.clone()).unwrap_or_default();
            let plan_i = SinkPlan { schema: current, changes: vec![], discarded: vec![] };
            let write = match sink_root(spec, i, &plan.outgoing) {
                Some(at) => {
                    Some(sink_writer(spec, at, &key, &plan.fence, &arrow_schema(&plan_i.schema), None)?.prepare()?)
                }
                None => None,
            };
            // Parquet sinks get an empty write; PostgreSQL tables delete the input's rows.
            report.pending.push(Pending { index: i, plan: plan_i, write });
        }
        quarantine.commit()?;
        return Ok(report);
    };
    // Personal data is labelled, and masked or hashed, before anything else sees the rows.
    let classifier = match &step.classify {
        Some(spec) => Some(Classifier::new(spec, &first.batch)?),
        None => None,
    };
    let classified = |chunk: Chunk| -> Result<Chunk, DataError> {
        match &classifier {
            Some(c) => Ok(Chunk { batch: c.apply(&chunk.batch)?, ..chunk }),
            None => Ok(chunk),
        }
    };
    let mut labels = labels_of(&first.batch.schema());
    if let Some(c) = &classifier {
        labels.extend(c.labels());
        report.classified = c.columns().to_vec();
    }
    let first = classified(first)?;
    let input_columns: Vec<String> = first.batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    let step_nulls = step.format.as_ref().and_then(|f| f.null_values.as_deref());
    let typed_input =
        InputSchema::resolve(step.schema.as_deref(), &first.batch, opened.source.positional(), step_nulls)?;
    let wplan = write_plan(step, &plan.sinks, &typed_input)?;
    let target = Target::new(&typed_input, &wplan);
    let schema = with_labels(target.schema(), &labels);
    report.schema = schema.fields().iter().map(|f| (f.name().clone(), type_name(f.data_type()))).collect();
    report.discarded_columns = wplan.discarded.iter().cloned().collect();
    report.copy_columns = wplan.columns.iter().filter(|c| c.input.is_some()).map(|c| c.name.clone()).collect();
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
    for (i, spec) in step.sinks.iter().enumerate() {
        let Some(at) = sink_root(spec, i, &plan.outgoing) else { continue };
        let sink_schema = &wplan.sinks[i].schema;
        let arrow = with_labels(&arrow_schema(sink_schema), &labels);
        match sink_writer(spec, at, &key, &plan.fence, &arrow, sink_schema.partition.as_ref()) {
            Ok(w) => {
                writers.sinks.push(SinkWriter { index: i, schema: arrow, writer: w.without_dictionary(&plain) });
            }
            Err(e) => {
                writers.abort();
                return Err(e);
            }
        }
    }

    let mut discarded = crate::typing::Discarded::new();
    let mut run = |chunk: Chunk, writers: &mut Writers, quarantine: &mut Quarantine| -> Result<(), DataError> {
        report.rows_read += (chunk.rows.len() + chunk.rejects.len()) as u64;
        for r in &chunk.rejects {
            *report.quarantined_by_rule.entry(r.rule.clone()).or_default() += 1;
        }
        quarantine.add(chunk.rejects)?;
        if chunk.rows.is_empty() {
            return Ok(());
        }
        let (typed, mut problems) = target.apply_counting(&chunk.batch, &mut discarded)?;
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
        let valid = match &plan.dedupe {
            Some(seen) => {
                let new = seen.admit(&valid)?;
                let kept = arrow_select::filter::filter_record_batch(&valid, &new)?;
                report.rows_duplicate += (valid.num_rows() - kept.num_rows()) as u64;
                kept
            }
            None => valid,
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
            Ok(Some(chunk)) => result = classified(chunk).and_then(|c| run(c, &mut writers, &mut quarantine)),
            Ok(None) => break,
            Err(e) => result = Err(e),
        }
    }
    report.discarded_values = discarded;
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
    let mut plans: Vec<Option<SinkPlan>> = wplan.sinks.into_iter().map(Some).collect();
    let mut sinks = writers.sinks.into_iter();
    while let Some(s) = sinks.next() {
        let write = match s.writer.prepare() {
            Ok(w) => w,
            Err(e) => {
                // Nothing of this input lands: what was prepared goes.
                for p in report.pending.drain(..) {
                    if let Some(w) = p.write {
                        let _ = std::fs::remove_dir_all(&w.scratch);
                    }
                }
                sinks.for_each(|s| s.writer.abort());
                return Err(e);
            }
        };
        if let Some(p) = plans.get_mut(s.index).and_then(Option::take) {
            report.pending.push(Pending { index: s.index, plan: p, write: Some(write) });
        }
    }
    for (i, p) in plans.into_iter().enumerate() {
        if let Some(p) = p.filter(|_| step.sinks.get(i).is_some_and(SinkSpec::reads_staged)) {
            report.pending.push(Pending { index: i, plan: p, write: None });
        }
    }
    report.pending.sort_by_key(|p| p.index);
    Ok(report)
}
