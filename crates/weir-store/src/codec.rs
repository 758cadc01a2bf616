//! Reading stored rows back into records, the same way for both backends: every query
//! selects ids and JSON as text and integers as 64-bit, so one decoder serves both.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::Row;
use uuid::Uuid;
use weir_core::files::SeenFile;
use weir_core::model::{
    event_type, ClaimedFile, DatasetVersion, EventRecord, FileRecord, JobRecord, JobState, OutboxEvent, OutboxMessage,
    TaskCounts, TaskRecord, TaskState,
};
use weir_core::spec::JobSpec;

use crate::StoreError;

/// Column reads both backends support, with errors that name the column.
pub(crate) trait Cols {
    fn text(&self, c: &str) -> Result<String, StoreError>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, c: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, c: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, c: &str) -> Result<bool, StoreError>;
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, c: &str) -> Result<String, StoreError> {
                Ok(self.try_get::<String, _>(c)?)
            }
            fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get::<Option<String>, _>(c)?)
            }
            fn int(&self, c: &str) -> Result<i64, StoreError> {
                Ok(self.try_get::<i64, _>(c)?)
            }
            fn opt_int(&self, c: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get::<Option<i64>, _>(c)?)
            }
            fn flag(&self, c: &str) -> Result<bool, StoreError> {
                Ok(self.try_get::<bool, _>(c)?)
            }
        }
    };
}
impl_cols!(sqlx::postgres::PgRow);
impl_cols!(sqlx::sqlite::SqliteRow);

fn parse<T: FromStr<Err = String>>(what: &str, s: &str) -> Result<T, StoreError> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn uuid(what: &str, s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

fn count(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Columns of a job, as every job query selects them.
pub(crate) const JOB_COLUMNS: &str = "id, spec, state, error, ending, created_ms, updated_ms, finished_ms, \
     deadline_ms, last_seq, tasks_total, tasks_succeeded, tasks_failed, tasks_running, trace_parent";

/// Columns of a task, as every task query selects them.
pub(crate) const TASK_COLUMNS: &str = "id, job_id, step_id, kind, queue, depends_on, compensates, state, attempt, \
     fence, worker, lease_expires_ms, ready_ms, retry_at_ms, started_ms, finished_ms, error_kind, error_message, \
     output, cancel_requested";

/// Columns of an event, as every event query selects them.
pub(crate) const EVENT_COLUMNS: &str = "job_id, seq, type, time_ms, task_id, step_id, job_state, task_state, message";

pub(crate) fn job(r: &impl Cols) -> Result<JobRecord, StoreError> {
    let spec: JobSpec =
        serde_json::from_str(&r.text("spec")?).map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))?;
    Ok(JobRecord {
        id: uuid("job id", &r.text("id")?)?,
        spec: Arc::new(spec),
        state: parse("job state", &r.text("state")?)?,
        error: r.opt_text("error")?,
        ending: r.opt_text("ending")?.map(|s| parse::<JobState>("job ending", &s)).transpose()?,
        created_ms: r.int("created_ms")?,
        updated_ms: r.int("updated_ms")?,
        finished_ms: r.opt_int("finished_ms")?,
        deadline_ms: r.opt_int("deadline_ms")?,
        last_seq: u64::try_from(r.int("last_seq")?).unwrap_or_default(),
        counts: TaskCounts {
            total: count(r.int("tasks_total")?),
            succeeded: count(r.int("tasks_succeeded")?),
            failed: count(r.int("tasks_failed")?),
            running: count(r.int("tasks_running")?),
        },
        trace_parent: r.opt_text("trace_parent")?,
    })
}

pub(crate) fn task(r: &impl Cols) -> Result<TaskRecord, StoreError> {
    let depends_on: Vec<String> = serde_json::from_str(&r.text("depends_on")?)
        .map_err(|e| StoreError::Corrupt(format!("task depends_on: {e}")))?;
    Ok(TaskRecord {
        id: uuid("task id", &r.text("id")?)?,
        job_id: uuid("job id", &r.text("job_id")?)?,
        step_id: r.text("step_id")?,
        kind: r.text("kind")?,
        queue: r.text("queue")?,
        depends_on,
        compensates: r.opt_text("compensates")?,
        state: parse::<TaskState>("task state", &r.text("state")?)?,
        attempt: count(r.int("attempt")?),
        fence: u64::try_from(r.int("fence")?).unwrap_or_default(),
        worker: r.opt_text("worker")?,
        lease_expires_ms: r.opt_int("lease_expires_ms")?,
        ready_ms: r.opt_int("ready_ms")?,
        retry_at_ms: r.opt_int("retry_at_ms")?,
        started_ms: r.opt_int("started_ms")?,
        finished_ms: r.opt_int("finished_ms")?,
        error_kind: r.opt_text("error_kind")?,
        error_message: r.opt_text("error_message")?,
        output: r.opt_text("output")?,
        cancel_requested: r.flag("cancel_requested")?,
    })
}

pub(crate) fn event(r: &impl Cols) -> Result<EventRecord, StoreError> {
    let kind = r.text("type")?;
    Ok(EventRecord {
        job_id: uuid("job id", &r.text("job_id")?)?,
        seq: u64::try_from(r.int("seq")?).unwrap_or_default(),
        kind: event_type::intern(&kind).ok_or_else(|| StoreError::Corrupt(format!("unknown event type {kind:?}")))?,
        time_ms: r.int("time_ms")?,
        task_id: r.opt_text("task_id")?.map(|s| uuid("task id", &s)).transpose()?,
        step_id: r.opt_text("step_id")?,
        job_state: parse("event job state", &r.text("job_state")?)?,
        task_state: r.opt_text("task_state")?.map(|s| parse::<TaskState>("event task state", &s)).transpose()?,
        message: r.opt_text("message")?,
    })
}

/// An event with what the relay needs of its job (see each store's `outbox_after`).
pub(crate) fn outbox_event(r: &impl Cols) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        id: r.int("outbox_id")?,
        event: event(r)?,
        namespace: r.text("namespace")?,
        job_name: r.text("job_name")?,
        trace_parent: r.opt_text("trace_parent")?,
    })
}

/// A message as the relay reads it.
pub(crate) fn message(r: &impl Cols) -> Result<(i64, OutboxMessage), StoreError> {
    let data = serde_json::from_str(&r.text("data")?).map_err(|e| StoreError::Corrupt(format!("message data: {e}")))?;
    Ok((
        r.int("id")?,
        OutboxMessage {
            topic: r.text("topic")?,
            key: r.text("key")?,
            kind: r.text("type")?,
            subject: r.text("subject")?,
            time_ms: r.int("time_ms")?,
            data,
        },
    ))
}

/// Columns of a message.
pub(crate) const MESSAGE_COLUMNS: &str = "id, topic, key, type, subject, time_ms, data";

/// The spec as stored (JSON text).
pub(crate) fn spec_json(j: &JobRecord) -> String {
    serde_json::to_string(&*j.spec).unwrap_or_else(|_| "{}".into())
}

/// The labels as stored (a JSON object), for filtering.
pub(crate) fn labels_json(j: &JobRecord) -> String {
    serde_json::to_string(&j.spec.labels).unwrap_or_else(|_| "{}".into())
}

/// Dependencies as stored (a JSON array).
pub(crate) fn deps_json(t: &TaskRecord) -> String {
    serde_json::to_string(&t.depends_on).unwrap_or_else(|_| "[]".into())
}

/// A JSON object of the label filter, for containment queries.
pub(crate) fn label_filter_json(labels: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

/// Turns `limit + 1` fetched jobs into a page and the cursor of the next one.
pub(crate) fn page(mut jobs: Vec<JobRecord>, limit: u32) -> Result<crate::JobPage, StoreError> {
    let limit = limit as usize;
    let next = if jobs.len() > limit {
        jobs.truncate(limit);
        jobs.last().map(|j| crate::Cursor { created_ms: j.created_ms, id: j.id })
    } else {
        None
    };
    Ok(crate::JobPage { jobs, next })
}

/// A claimed file version (columns: path, size, modified_ms, etag, generation).
pub(crate) fn claimed_file(r: &impl Cols) -> Result<ClaimedFile, StoreError> {
    Ok(ClaimedFile { file: seen_file(r)?, generation: u32::try_from(r.int("generation")?).unwrap_or(0) })
}

fn seen_file(r: &impl Cols) -> Result<SeenFile, StoreError> {
    Ok(SeenFile {
        path: r.text("path")?,
        size: u64::try_from(r.int("size")?).unwrap_or(0),
        modified_ms: r.int("modified_ms")?,
        etag: r.opt_text("etag")?,
    })
}

/// A file of the inventory.
pub(crate) fn file_record(r: &impl Cols) -> Result<FileRecord, StoreError> {
    Ok(FileRecord {
        watch: r.text("watch")?,
        file: seen_file(r)?,
        generation: u32::try_from(r.int("generation")?).unwrap_or(0),
        state: r.text("state")?,
        job_id: r.opt_text("job_id")?,
        first_seen_ms: r.int("first_seen_ms")?,
        changed_ms: r.int("changed_ms")?,
    })
}

/// Columns of a dataset version, as every catalogue query selects them.
pub(crate) const DATASET_COLUMNS: &str = "dataset, version, kind, schema, changes, origin, recorded_ms";

/// A dataset version's JSON columns: schema, changes, origin.
pub(crate) fn dataset_json(v: &DatasetVersion) -> Result<[String; 3], StoreError> {
    let enc = |r: serde_json::Result<String>| r.map_err(|e| StoreError::Corrupt(format!("dataset version: {e}")));
    Ok([
        enc(serde_json::to_string(&v.version.schema))?,
        enc(serde_json::to_string(&v.version.changes))?,
        enc(serde_json::to_string(&v.version.origin))?,
    ])
}

pub(crate) fn dataset_version(r: &impl Cols) -> Result<DatasetVersion, StoreError> {
    let json = |c: &str| -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&r.text(c)?).map_err(|e| StoreError::Corrupt(format!("dataset version {c}: {e}")))
    };
    let bad = |e: serde_json::Error| StoreError::Corrupt(format!("dataset version: {e}"));
    Ok(DatasetVersion {
        dataset: r.text("dataset")?,
        kind: r.text("kind")?,
        version: weir_core::dataset::schema::Version {
            version: count(r.int("version")?),
            schema: serde_json::from_value(json("schema")?).map_err(bad)?,
            changes: serde_json::from_value(json("changes")?).map_err(bad)?,
            origin: serde_json::from_value(json("origin")?).map_err(bad)?,
        },
        recorded_ms: r.int("recorded_ms")?,
    })
}

pub(crate) const WATERMARK_COLUMNS: &str = "namespace, key, mark, job_id, updated_ms";

pub(crate) fn mark_json(m: &weir_core::watermark::Mark) -> Result<String, StoreError> {
    serde_json::to_string(m).map_err(|e| StoreError::Corrupt(format!("watermark: {e}")))
}

pub(crate) fn watermark(r: &impl Cols) -> Result<weir_core::watermark::Watermark, StoreError> {
    Ok(weir_core::watermark::Watermark {
        namespace: r.text("namespace")?,
        key: r.text("key")?,
        mark: serde_json::from_str(&r.text("mark")?)
            .map_err(|e| StoreError::Corrupt(format!("watermark mark: {e}")))?,
        job_id: uuid("watermark job_id", &r.text("job_id")?)?,
        updated_ms: r.int("updated_ms")?,
    })
}

pub(crate) const AUDIT_COLUMNS: &str =
    "id, at_ms, subject, namespace, action, target, outcome, code, message, trace_id, peer";

pub(crate) fn audit(r: &impl Cols) -> Result<weir_core::audit::AuditRecord, StoreError> {
    Ok(weir_core::audit::AuditRecord {
        id: uuid("audit id", &r.text("id")?)?,
        at_ms: r.int("at_ms")?,
        subject: r.text("subject")?,
        namespace: r.text("namespace")?,
        action: r.text("action")?,
        target: r.text("target")?,
        outcome: r.text("outcome")?.parse().map_err(StoreError::Corrupt)?,
        code: r.text("code")?,
        message: r.text("message")?,
        trace_id: r.text("trace_id")?,
        peer: r.text("peer")?,
    })
}

/// The `AND …` conditions of an audit listing shared by both backends (the page cursor,
/// stored differently by each, is the caller's).
pub(crate) fn audit_conditions<'a, DB>(q: &mut sqlx::QueryBuilder<'a, DB>, f: &weir_core::audit::AuditFilter)
where
    DB: sqlx::Database,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    for (col, v) in [("subject", &f.subject), ("namespace", &f.namespace), ("action", &f.action)] {
        if let Some(v) = v {
            q.push(format!(" AND {col} = ")).push_bind(v.clone());
        }
    }
    if let Some(o) = f.outcome {
        q.push(" AND outcome = ").push_bind(o.as_str().to_string());
    }
    if let Some(t) = f.since_ms {
        q.push(" AND at_ms >= ").push_bind(t);
    }
}

pub(crate) const CONNECTION_COLUMNS: &str = "namespace, name, description, config, updated_ms, updated_by";

pub(crate) fn connection(r: &impl Cols) -> Result<weir_core::connection::Connection, StoreError> {
    Ok(weir_core::connection::Connection {
        namespace: r.text("namespace")?,
        name: r.text("name")?,
        description: r.text("description")?,
        config: serde_json::from_str(&r.text("config")?)
            .map_err(|e| StoreError::Corrupt(format!("connection config: {e}")))?,
        updated_ms: r.int("updated_ms")?,
        updated_by: r.text("updated_by")?,
    })
}

pub(crate) const SCHEDULE_COLUMNS: &str = "namespace, name, spec, state, created_ms, updated_ms, updated_by";

pub(crate) fn schedule(r: &impl Cols) -> Result<weir_core::schedule::ScheduleRecord, StoreError> {
    let (namespace, name) = (r.text("namespace")?, r.text("name")?);
    let corrupt =
        |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("schedule {namespace}/{name} {what}: {e}"));
    Ok(weir_core::schedule::ScheduleRecord {
        spec: serde_json::from_str(&r.text("spec")?).map_err(|e| corrupt("spec", e))?,
        state: serde_json::from_str(&r.text("state")?).map_err(|e| corrupt("state", e))?,
        created_ms: r.int("created_ms")?,
        updated_ms: r.int("updated_ms")?,
        updated_by: r.text("updated_by")?,
    })
}

/// A schedule's spec and state as stored (JSON text).
pub(crate) fn schedule_json(r: &weir_core::schedule::ScheduleRecord) -> Result<(String, String), StoreError> {
    let bad = |e: serde_json::Error| StoreError::Corrupt(format!("schedule {}/{}: {e}", r.spec.namespace, r.spec.name));
    Ok((serde_json::to_string(&r.spec).map_err(bad)?, serde_json::to_string(&r.state).map_err(bad)?))
}
