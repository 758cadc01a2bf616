//! The event catalogue: topics, their keys, and the CloudEvents 1.0 envelope (JSON
//! structured mode) every event on the bus travels in. The README's catalogue is written
//! from this file; change both together.
//!
//! | topic           | key       | what                                                  |
//! |-----------------|-----------|-------------------------------------------------------|
//! | `weir.jobs`     | job id    | job lifecycle (`dev.weir.job.*`)                      |
//! | `weir.tasks`    | job id    | task lifecycle (`dev.weir.task.*`)                    |
//! | `weir.workers`  | worker id | workers joining, draining, gone (`dev.weir.worker.*`) |
//! | `weir.triggers` | any       | events that start jobs (consumed by the master)       |
//! | `weir.dlq`      | as read   | triggers that could not be used, reason in headers    |
//! | `weir.files`    | watch     | files a watch discovered (`dev.weir.file.discovered`)  |
//! | `weir.datasets` | dataset   | a dataset's or table's schema changed (`dev.weir.dataset.schema_changed`) |
//! | `weir.audit`    | subject   | a mutating or refused call (`dev.weir.audit.recorded`) |
//!
//! Keying by job id puts every event of one job on one partition of its topic, in order.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::model::{OutboxEvent, OutboxMessage};
use crate::trace::{stable_span_id, TraceParent};
use crate::Millis;

/// Topic names, in one place.
pub mod topic {
    pub const JOBS: &str = "weir.jobs";
    pub const TASKS: &str = "weir.tasks";
    pub const WORKERS: &str = "weir.workers";
    pub const TRIGGERS: &str = "weir.triggers";
    pub const DLQ: &str = "weir.dlq";
    /// Files the file manager discovered (key: the watch).
    pub const FILES: &str = "weir.files";
    /// Schema changes of datasets and tables (key: the dataset).
    pub const DATASETS: &str = "weir.datasets";
    /// The APIs the API managers call: circuits opened and closed.
    pub const APIS: &str = "weir.apis";
    /// The streams the stream managers consume: lag, stalls, takeovers (key: the task).
    pub const STREAMS: &str = "weir.streams";
    /// Audited calls: mutations and refusals (key: the caller's subject).
    pub const AUDIT: &str = "weir.audit";
    /// Schedules: created, changed, and what became of each slot (key: namespace/name).
    pub const SCHEDULES: &str = "weir.schedules";
    /// Every topic Weir creates at start.
    pub const ALL: [&str; 11] = [JOBS, TASKS, WORKERS, TRIGGERS, DLQ, FILES, DATASETS, APIS, STREAMS, AUDIT, SCHEDULES];
}

/// Header names, in one place.
pub mod header {
    /// W3C trace context of the job the event is about.
    pub const TRACEPARENT: &str = "traceparent";
    pub const CONTENT_TYPE: &str = "content-type";
    /// Why a message went to the dead-letter topic.
    pub const DLQ_REASON: &str = "weir-dlq-reason";
    /// Where it was read from: topic, partition, offset.
    pub const DLQ_TOPIC: &str = "weir-dlq-topic";
    pub const DLQ_PARTITION: &str = "weir-dlq-partition";
    pub const DLQ_OFFSET: &str = "weir-dlq-offset";
}

/// The only CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";
/// `source` of the events the master publishes.
pub const MASTER_SOURCE: &str = "weir://master";
/// `content-type` header of structured-mode messages.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";
/// Largest trigger message the master reads.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One CloudEvent, as carried in a message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// Unique per source; the same event published twice has the same id.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Extension attributes (e.g. `traceparent` of the Distributed Tracing extension).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

impl CloudEvent {
    /// Reads a structured-mode message body, checking the attributes the spec requires.
    pub fn decode(body: &[u8]) -> Result<CloudEvent, String> {
        if body.len() > MAX_EVENT_BYTES {
            return Err(format!("event is {} bytes, over the limit of {MAX_EVENT_BYTES}", body.len()));
        }
        let e: CloudEvent = serde_json::from_slice(body).map_err(|e| format!("not a CloudEvent in JSON: {e}"))?;
        if e.specversion != SPEC_VERSION {
            return Err(format!("specversion {:?} is not supported (only {SPEC_VERSION})", e.specversion));
        }
        for (name, v) in [("id", &e.id), ("source", &e.source), ("type", &e.ty)] {
            if v.is_empty() {
                return Err(format!("CloudEvent attribute {name} is empty"));
            }
        }
        Ok(e)
    }

    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event ready for the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: &'static str,
    pub key: String,
    pub event: CloudEvent,
    /// For the `traceparent` header.
    pub traceparent: Option<String>,
}

/// RFC 3339 time with milliseconds, UTC.
pub fn rfc3339(ms: Millis) -> String {
    use std::fmt::Write as _;
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let mut out = String::new();
    // Past the year 9999 humantime refuses to format: say the number instead of panicking.
    if write!(out, "{}", humantime::format_rfc3339_millis(t)).is_err() {
        return format!("{ms} ms after the epoch");
    }
    out
}

/// Worker status types (topic `weir.workers`, keyed by worker id).
pub mod worker_event {
    /// Registered with the master.
    pub const JOINED: &str = "dev.weir.worker.joined";
    /// Stopped taking work; finishing or handing back what it holds.
    pub const DRAINING: &str = "dev.weir.worker.draining";
    /// Said goodbye, or fell silent (data.reason tells which).
    pub const GONE: &str = "dev.weir.worker.gone";
}

/// A worker status change, for the outbox. `detail` fields are merged into `data`.
pub fn worker_status(kind: &str, worker: &str, queue: &str, detail: Value, now: Millis) -> OutboxMessage {
    let mut data = Map::new();
    data.insert("worker_id".into(), json!(worker));
    data.insert("queue".into(), json!(queue));
    if let Value::Object(d) = detail {
        data.extend(d);
    }
    OutboxMessage {
        topic: topic::WORKERS.into(),
        key: worker.into(),
        kind: kind.into(),
        subject: worker.into(),
        time_ms: now,
        data: Value::Object(data),
    }
}

/// API status types (topic `weir.apis`, keyed by API name), reported by the API managers
/// over the heartbeat; the master publishes only these kinds for them.
pub mod api_event {
    /// Failures opened the API's circuit in a manager: it is left alone for a cooldown.
    pub const CIRCUIT_OPENED: &str = "dev.weir.api.circuit_opened";
    /// The cooldown is over: one probe request goes.
    pub const CIRCUIT_HALF_OPEN: &str = "dev.weir.api.circuit_half_open";
    /// The probe succeeded: the API is called again.
    pub const CIRCUIT_CLOSED: &str = "dev.weir.api.circuit_closed";
    /// The API's health endpoint answered differently than before (data: healthy, status).
    pub const HEALTH_CHANGED: &str = "dev.weir.api.health_changed";
    /// A collection continued from a fallback source (data: job_id, step_id, source, reason).
    pub const DEGRADED: &str = "dev.weir.api.degraded";
    /// The circuit's changes.
    pub const CIRCUIT: [&str; 3] = [CIRCUIT_OPENED, CIRCUIT_HALF_OPEN, CIRCUIT_CLOSED];
    pub const ALL: [&str; 5] = [CIRCUIT_OPENED, CIRCUIT_HALF_OPEN, CIRCUIT_CLOSED, HEALTH_CHANGED, DEGRADED];
}

/// Stream status types (topic `weir.streams`, keyed by the stream's task id), reported
/// by the stream managers over the heartbeat.
pub mod stream_event {
    /// Each lane's position and lag, periodically (data: lanes, records_per_second).
    pub const LAG: &str = "dev.weir.stream.lag";
    /// Messages wait in the source but none were read for a while (data: lanes, paused).
    pub const STALLED: &str = "dev.weir.stream.stalled";
    /// Another owner took the stream's lanes over and resumed them (data: attempt, lanes).
    pub const REBALANCED: &str = "dev.weir.stream.rebalanced";
    pub const ALL: [&str; 3] = [LAG, STALLED, REBALANCED];
}

/// The topic a worker's notice of `kind` goes to, if it is one workers may report.
pub fn notice_topic(kind: &str) -> Option<&'static str> {
    if api_event::ALL.contains(&kind) {
        Some(topic::APIS)
    } else if stream_event::ALL.contains(&kind) {
        Some(topic::STREAMS)
    } else {
        None
    }
}

/// A status change a worker reported about an API (`subject`: its name) or a stream (its
/// task id), for the outbox. `detail` fields are merged into `data`, after the subject
/// (`api` or `task_id`) and `worker_id`.
pub fn notice_message(kind: &str, subject: &str, worker: &str, detail: Value, time_ms: Millis) -> OutboxMessage {
    let mut data = Map::new();
    if let Value::Object(d) = detail {
        data.extend(d);
    }
    let topic = notice_topic(kind).unwrap_or(topic::APIS);
    data.insert(if topic == topic::STREAMS { "task_id" } else { "api" }.into(), json!(subject));
    data.insert("worker_id".into(), json!(worker));
    OutboxMessage {
        topic: topic.into(),
        key: subject.into(),
        kind: kind.into(),
        subject: subject.into(),
        time_ms,
        data: Value::Object(data),
    }
}

/// Schedule event types (topic `weir.schedules`, keyed by `namespace/name`).
pub mod schedule_event {
    pub const CREATED: &str = "dev.weir.schedule.created";
    pub const UPDATED: &str = "dev.weir.schedule.updated";
    pub const PAUSED: &str = "dev.weir.schedule.paused";
    pub const UNPAUSED: &str = "dev.weir.schedule.unpaused";
    pub const DELETED: &str = "dev.weir.schedule.deleted";
    /// A slot's job was started (`job_id`, `run_id`, `slot`).
    pub const STARTED: &str = "dev.weir.schedule.started";
    /// A slot waits for the schedule's running jobs to end.
    pub const BUFFERED: &str = "dev.weir.schedule.buffered";
    /// A slot did not run (`reason`).
    pub const SKIPPED: &str = "dev.weir.schedule.skipped";
    /// Slots later than the catch-up window after an outage (`first`, `last`, `count`).
    pub const MISSED: &str = "dev.weir.schedule.missed";
    /// Runs of the schedule cancelled by a newer slot (cancel_other, terminate_other).
    pub const CANCELLED_RUNS: &str = "dev.weir.schedule.cancelled_runs";
    /// A range was backfilled (`start`, `end`, `slots`, `started`, `existing`).
    pub const BACKFILLED: &str = "dev.weir.schedule.backfilled";
}

/// An event about a schedule, for the outbox: `detail` fields after `namespace` and `schedule`.
pub fn schedule_message(kind: &str, namespace: &str, name: &str, detail: Value, time_ms: Millis) -> OutboxMessage {
    let mut data = Map::new();
    data.insert("namespace".into(), json!(namespace));
    data.insert("schedule".into(), json!(name));
    if let Value::Object(d) = detail {
        data.extend(d);
    }
    OutboxMessage {
        topic: topic::SCHEDULES.into(),
        key: format!("{namespace}/{name}"),
        kind: kind.into(),
        subject: name.into(),
        time_ms,
        data: Value::Object(data),
    }
}

/// A dataset's schema changed (topic `weir.datasets`, keyed by the dataset).
pub const SCHEMA_CHANGED: &str = "dev.weir.dataset.schema_changed";

/// The event of one new version of a dataset's or table's schema, for the outbox.
pub fn schema_changed(v: &crate::model::DatasetVersion) -> OutboxMessage {
    let o = &v.version.origin;
    OutboxMessage {
        topic: topic::DATASETS.into(),
        key: v.dataset.clone(),
        kind: SCHEMA_CHANGED.into(),
        subject: v.dataset.clone(),
        time_ms: v.recorded_ms,
        data: json!({
            "dataset": v.dataset,
            "sink": v.kind,
            "version": v.version.version,
            "columns": v.version.schema.columns,
            "partition": v.version.schema.partition,
            "changes": v.version.changes,
            "job_id": o.job_id,
            "task_id": o.task_id,
            "step_id": o.step_id,
            "input": o.input,
        }),
    }
}

/// The CloudEvent of an outbox message; `id` (its outbox position) makes the event id
/// stable when it is published again.
pub fn message_event(id: i64, m: &OutboxMessage) -> Outgoing {
    Outgoing {
        topic: topic::ALL.iter().copied().find(|t| *t == m.topic).unwrap_or(topic::WORKERS),
        key: m.key.clone(),
        event: CloudEvent {
            specversion: SPEC_VERSION.into(),
            id: format!("m:{id}"),
            source: MASTER_SOURCE.into(),
            ty: m.kind.clone(),
            subject: Some(m.subject.clone()),
            time: Some(rfc3339(m.time_ms)),
            datacontenttype: Some("application/json".into()),
            data: Some(m.data.clone()),
            extensions: BTreeMap::new(),
        },
        traceparent: None,
    }
}

/// The CloudEvent of one entry of a job's history. Its id (`<job id>:<seq>`) is stable,
/// so a re-published event is recognisably the same one.
pub fn job_event(o: &OutboxEvent) -> Outgoing {
    let e = &o.event;
    let id = format!("{}:{}", e.job_id, e.seq);
    let mut data = Map::new();
    data.insert("job_id".into(), json!(e.job_id));
    data.insert("namespace".into(), json!(o.namespace));
    data.insert("job_name".into(), json!(o.job_name));
    data.insert("seq".into(), json!(e.seq));
    data.insert("job_state".into(), json!(e.job_state.as_str()));
    if let Some(t) = e.task_id {
        data.insert("task_id".into(), json!(t));
    }
    if let Some(s) = &e.step_id {
        data.insert("step_id".into(), json!(s));
    }
    if let Some(s) = e.task_state {
        data.insert("task_state".into(), json!(s.as_str()));
    }
    if let Some(m) = &e.message {
        data.insert("message".into(), json!(m));
    }
    // Each event is a span of the job's trace; its id is derived so re-publishing is stable.
    let traceparent =
        o.trace_parent.as_deref().and_then(|t| t.parse::<TraceParent>().ok()).map(|t| t.child(stable_span_id(&id)));
    let mut extensions = BTreeMap::new();
    if let Some(t) = &traceparent {
        extensions.insert("traceparent".to_string(), json!(t.to_string()));
    }
    let topic = if e.task_id.is_some() { topic::TASKS } else { topic::JOBS };
    Outgoing {
        topic,
        key: e.job_id.to_string(),
        event: CloudEvent {
            specversion: SPEC_VERSION.into(),
            id,
            source: MASTER_SOURCE.into(),
            ty: e.kind.to_string(),
            subject: Some(e.job_id.to_string()),
            time: Some(rfc3339(e.time_ms)),
            datacontenttype: Some("application/json".into()),
            data: Some(Value::Object(data)),
            extensions,
        },
        traceparent: traceparent.map(|t| t.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::model::{event_type as ev, EventRecord, JobState, TaskState};

    fn outbox(task: bool) -> OutboxEvent {
        OutboxEvent {
            id: 42,
            event: EventRecord {
                job_id: Uuid::from_u128(7),
                seq: 3,
                kind: if task { ev::TASK_ASSIGNED } else { ev::JOB_STARTED },
                time_ms: 1_795_400_000_123,
                task_id: task.then(|| Uuid::from_u128(9)),
                step_id: task.then(|| "collect".to_string()),
                job_state: JobState::Running,
                task_state: task.then_some(TaskState::Running),
                message: task.then(|| "api-manager-1".to_string()),
            },
            namespace: "team-a".into(),
            job_name: "nightly".into(),
            trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        }
    }

    #[test]
    fn job_and_task_events_follow_the_catalogue() {
        let j = job_event(&outbox(false));
        assert_eq!((j.topic, j.key.as_str()), (topic::JOBS, "00000000-0000-0000-0000-000000000007"));
        let body: Value = serde_json::from_slice(&j.event.encode()).expect("json");
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["type"], "dev.weir.job.started");
        assert_eq!(body["id"], "00000000-0000-0000-0000-000000000007:3");
        assert_eq!(body["subject"], "00000000-0000-0000-0000-000000000007");
        assert_eq!(body["time"], "2026-11-23T02:13:20.123Z");
        assert_eq!(body["data"]["job_state"], "running");
        assert!(body["data"].get("task_id").is_none());
        let tp = j.traceparent.expect("traceparent");
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "same trace: {tp}");
        assert_eq!(body["traceparent"], tp.as_str());

        let t = job_event(&outbox(true));
        assert_eq!(t.topic, topic::TASKS);
        assert_eq!(t.key, j.key, "every event of a job has the job's key");
        let d = t.event.data.clone().expect("data");
        assert_eq!((d["step_id"].as_str(), d["task_state"].as_str()), (Some("collect"), Some("running")));
        assert_eq!(job_event(&outbox(true)), t, "the same event encodes the same way every time");
        assert_eq!(CloudEvent::decode(&t.event.encode()), Ok(t.event));
    }

    #[test]
    fn worker_status_is_keyed_by_worker() {
        let m = worker_status(worker_event::GONE, "api-manager-h-1-ab12", "api", json!({"reason": "silent"}), 0);
        let o = message_event(17, &m);
        assert_eq!((o.topic, o.key.as_str(), o.event.id.as_str()), (topic::WORKERS, "api-manager-h-1-ab12", "m:17"));
        let d = o.event.data.expect("data");
        assert_eq!((d["queue"].as_str(), d["reason"].as_str()), (Some("api"), Some("silent")));
        assert_eq!(o.event.ty, "dev.weir.worker.gone");
    }

    #[test]
    fn a_schema_change_is_keyed_by_its_dataset() {
        use crate::dataset::schema::{Change, Column, ColumnType, Origin, Schema, Version};
        let v = crate::model::DatasetVersion {
            dataset: "s3://lake/orders".into(),
            kind: "parquet".into(),
            version: Version {
                version: 2,
                schema: Schema {
                    columns: vec![Column { name: "currency".into(), kind: ColumnType::String, nullable: true }],
                    partition: None,
                },
                changes: vec![Change::Added { column: "currency".into(), kind: ColumnType::String }],
                origin: Origin { input: "day2.csv".into(), ..Default::default() },
            },
            recorded_ms: 0,
        };
        let o = message_event(3, &schema_changed(&v));
        assert_eq!(
            (o.topic, o.key.as_str(), o.event.ty.as_str()),
            (topic::DATASETS, "s3://lake/orders", SCHEMA_CHANGED)
        );
        let d = o.event.data.expect("data");
        assert_eq!((d["version"].as_u64(), d["input"].as_str()), (Some(2), Some("day2.csv")));
        assert_eq!(d["changes"][0], json!({"change": "added", "column": "currency", "type": "string"}));
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let err = |b: &[u8]| CloudEvent::decode(b).expect_err("refused");
        assert!(err(b"not json").contains("not a CloudEvent"));
        assert!(err(br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#).contains("specversion"));
        assert!(err(br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#).contains("id is empty"));
        assert!(err(br#"{"specversion":"1.0","source":"s","type":"t"}"#).contains("missing field `id`"));
        let ok = CloudEvent::decode(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","x":1}"#).expect("ok");
        assert_eq!(ok.extensions.get("x"), Some(&json!(1)));
    }
}
