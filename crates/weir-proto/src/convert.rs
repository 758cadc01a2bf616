//! Conversions between the wire types (`v1`) and the domain (`weir_core`), in one place for
//! the master and every client. Wire → domain conversions fail with a message naming the
//! field, which the master returns as `INVALID_ARGUMENT`.

use std::time::Duration;

use serde_json::Value;
use weir_core::engine::{Lease, LeaseStatus};
use weir_core::model::{EventRecord, JobRecord, JobState, TaskRecord, TaskState};
use weir_core::spec::{self, RetryPolicy};
use weir_core::watermark::{Mark, Watermark};
use weir_core::Millis;

use crate::v1;

/// A wire timestamp from epoch milliseconds.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Epoch milliseconds from a wire timestamp.
pub fn millis(ts: &prost_types::Timestamp) -> Millis {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// A wire duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// A domain duration from the wire; negative or malformed durations are refused by name.
pub fn from_duration(what: &str, d: &prost_types::Duration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!("{what}: bad duration ({}s {}ns)", d.seconds, d.nanos));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn opt_duration(what: &str, d: &Option<prost_types::Duration>) -> Result<Option<Duration>, String> {
    d.as_ref().map(|d| from_duration(what, d)).transpose()
}

fn json(what: &str, text: &str) -> Result<Option<Value>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text).map(Some).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

fn json_text(v: &Option<Value>) -> String {
    v.as_ref().map(Value::to_string).unwrap_or_default()
}

fn retry_from(what: &str, r: &v1::RetryPolicy) -> Result<RetryPolicy, String> {
    let d = RetryPolicy::DEFAULT;
    Ok(RetryPolicy {
        max_attempts: if r.max_attempts == 0 { d.max_attempts } else { r.max_attempts },
        initial_interval: opt_duration(&format!("{what}.initial_interval"), &r.initial_interval)?
            .or(d.initial_interval),
        backoff_coefficient: if r.backoff_coefficient == 0.0 { d.backoff_coefficient } else { r.backoff_coefficient },
        max_interval: opt_duration(&format!("{what}.max_interval"), &r.max_interval)?.or(d.max_interval),
        jitter: if r.no_jitter {
            0.0
        } else if r.jitter == 0.0 {
            d.jitter
        } else {
            r.jitter
        },
        non_retryable_error_kinds: r.non_retryable_error_kinds.clone(),
    })
}

fn retry_to(r: &RetryPolicy) -> v1::RetryPolicy {
    v1::RetryPolicy {
        max_attempts: r.max_attempts,
        initial_interval: r.initial_interval.map(duration),
        backoff_coefficient: r.backoff_coefficient,
        max_interval: r.max_interval.map(duration),
        jitter: r.jitter,
        non_retryable_error_kinds: r.non_retryable_error_kinds.clone(),
        no_jitter: r.jitter == 0.0,
    }
}

/// Wire spec → domain spec.
pub fn spec_from_wire(s: &v1::JobSpec) -> Result<spec::JobSpec, String> {
    let mut steps = Vec::with_capacity(s.steps.len());
    for st in &s.steps {
        let what = format!("step {:?}", st.id);
        let timeouts = match &st.timeouts {
            None => None,
            Some(t) => Some(spec::StepTimeouts {
                schedule_to_start: opt_duration(&format!("{what} timeouts.schedule_to_start"), &t.schedule_to_start)?,
                start_to_close: opt_duration(&format!("{what} timeouts.start_to_close"), &t.start_to_close)?,
                heartbeat: opt_duration(&format!("{what} timeouts.heartbeat"), &t.heartbeat)?,
            }),
        };
        let compensation = match &st.compensation {
            None => None,
            Some(c) => Some(spec::CompensationSpec {
                kind: c.kind.clone(),
                queue: (!c.queue.is_empty()).then(|| c.queue.clone()),
                config: json(&format!("{what} compensation config_json"), &c.config_json)?,
                retry: c.retry.as_ref().map(|r| retry_from(&format!("{what} compensation retry"), r)).transpose()?,
            }),
        };
        steps.push(spec::StepSpec {
            id: st.id.clone(),
            kind: st.kind.clone(),
            queue: st.queue.clone(),
            depends_on: st.depends_on.clone(),
            config: json(&format!("{what} config_json"), &st.config_json)?,
            retry: st.retry.as_ref().map(|r| retry_from(&format!("{what} retry"), r)).transpose()?,
            timeouts,
            compensation,
        });
    }
    Ok(spec::JobSpec {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        run_id: s.run_id.clone(),
        priority: s.priority,
        labels: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        timeout: opt_duration("job timeout", &s.timeout)?,
        steps,
        template: (!s.template.is_empty()).then(|| s.template.clone()),
        params: json("params_json", &s.params_json)?,
    })
}

/// Domain spec → wire spec.
pub fn spec_to_wire(s: &spec::JobSpec) -> v1::JobSpec {
    v1::JobSpec {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        run_id: s.run_id.clone(),
        priority: s.priority,
        labels: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        timeout: s.timeout.map(duration),
        steps: s
            .steps
            .iter()
            .map(|st| v1::StepSpec {
                id: st.id.clone(),
                kind: st.kind.clone(),
                queue: st.queue.clone(),
                depends_on: st.depends_on.clone(),
                config_json: json_text(&st.config),
                retry: st.retry.as_ref().map(retry_to),
                timeouts: st.timeouts.as_ref().map(|t| v1::StepTimeouts {
                    schedule_to_start: t.schedule_to_start.map(duration),
                    start_to_close: t.start_to_close.map(duration),
                    heartbeat: t.heartbeat.map(duration),
                }),
                compensation: st.compensation.as_ref().map(|c| v1::CompensationSpec {
                    kind: c.kind.clone(),
                    queue: c.queue.clone().unwrap_or_default(),
                    config_json: json_text(&c.config),
                    retry: c.retry.as_ref().map(retry_to),
                }),
            })
            .collect(),
        template: s.template.clone().unwrap_or_default(),
        params_json: json_text(&s.params),
    }
}

/// Domain job state → wire enum.
pub fn job_state(s: JobState) -> v1::JobState {
    match s {
        JobState::Pending => v1::JobState::Pending,
        JobState::Running => v1::JobState::Running,
        JobState::Paused => v1::JobState::Paused,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
        JobState::Compensating => v1::JobState::Compensating,
        JobState::Compensated => v1::JobState::Compensated,
    }
}

/// Wire enum → domain job state (`None` for UNSPECIFIED or unknown numbers).
pub fn job_state_from_wire(v: i32) -> Option<JobState> {
    JobState::ALL.iter().copied().find(|s| job_state(*s) as i32 == v)
}

/// Domain task state → wire enum.
pub fn task_state(s: TaskState) -> v1::TaskState {
    match s {
        TaskState::Pending => v1::TaskState::Pending,
        TaskState::Ready => v1::TaskState::Ready,
        TaskState::Running => v1::TaskState::Running,
        TaskState::Backoff => v1::TaskState::Backoff,
        TaskState::Succeeded => v1::TaskState::Succeeded,
        TaskState::Failed => v1::TaskState::Failed,
        TaskState::Cancelled => v1::TaskState::Cancelled,
        TaskState::Compensated => v1::TaskState::Compensated,
    }
}

/// A job for the wire.
pub fn job(j: &JobRecord) -> v1::Job {
    v1::Job {
        id: j.id.to_string(),
        spec: Some(spec_to_wire(&j.spec)),
        state: job_state(j.state) as i32,
        error: j.error.clone().unwrap_or_default(),
        created_at: Some(timestamp(j.created_ms)),
        updated_at: Some(timestamp(j.updated_ms)),
        finished_at: j.finished_ms.map(timestamp),
        tasks_total: j.counts.total,
        tasks_succeeded: j.counts.succeeded,
        tasks_failed: j.counts.failed,
        tasks_running: j.counts.running,
        last_event_seq: j.last_seq,
    }
}

/// A task for the wire.
pub fn task(t: &TaskRecord) -> v1::Task {
    v1::Task {
        id: t.id.to_string(),
        job_id: t.job_id.to_string(),
        step_id: t.step_id.clone(),
        kind: t.kind.clone(),
        queue: t.queue.clone(),
        state: task_state(t.state) as i32,
        attempt: t.attempt,
        fence_token: t.fence,
        worker_id: t.worker.clone().unwrap_or_default(),
        error_kind: t.error_kind.clone().unwrap_or_default(),
        error_message: t.error_message.clone().unwrap_or_default(),
        output_json: t.output.clone().unwrap_or_default(),
        started_at: t.started_ms.map(timestamp),
        finished_at: t.finished_ms.map(timestamp),
        compensation: t.compensates.is_some(),
        compensates: t.compensates.clone().unwrap_or_default(),
        depends_on: t.depends_on.clone(),
        lease_expires_at: t.lease_expires_ms.map(timestamp),
    }
}

/// An event for the wire.
pub fn event(e: &EventRecord) -> v1::JobEvent {
    v1::JobEvent {
        job_id: e.job_id.to_string(),
        seq: e.seq,
        r#type: e.kind.to_string(),
        time: Some(timestamp(e.time_ms)),
        task_id: e.task_id.map(|t| t.to_string()).unwrap_or_default(),
        step_id: e.step_id.clone().unwrap_or_default(),
        job_state: job_state(e.job_state) as i32,
        task_state: e.task_state.map(|s| task_state(s) as i32).unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        data_json: String::new(),
    }
}

/// A lease for the wire.
pub fn lease(l: &Lease) -> v1::TaskLease {
    v1::TaskLease {
        task_id: l.task_id.to_string(),
        job_id: l.job_id.to_string(),
        step_id: l.step_id.clone(),
        kind: l.kind.clone(),
        config_json: json_text(&l.config),
        fence_token: l.fence,
        attempt: l.attempt,
        lease_expires_at: Some(timestamp(l.lease_expires_ms)),
        heartbeat_timeout: Some(duration(l.heartbeat_timeout)),
        compensation: l.compensation,
        inputs_json: l.inputs.iter().cloned().collect(),
        priority: l.priority,
        namespace: l.namespace.clone(),
        job_name: l.job_name.clone(),
        traceparent: l.trace_parent.clone().unwrap_or_default(),
    }
}

/// A lease status for the wire.
pub fn lease_status(task_id: uuid::Uuid, fence: u64, s: LeaseStatus) -> v1::TaskLeaseStatus {
    let (status, expires) = match s {
        LeaseStatus::Active(at) => (v1::LeaseStatus::Active, Some(timestamp(at))),
        LeaseStatus::Cancelled => (v1::LeaseStatus::Cancelled, None),
        LeaseStatus::Lost => (v1::LeaseStatus::Lost, None),
    };
    v1::TaskLeaseStatus {
        task_id: task_id.to_string(),
        status: status as i32,
        lease_expires_at: expires,
        fence_token: fence,
    }
}

/// A stored watermark for the wire.
pub fn watermark(w: &Watermark) -> v1::Watermark {
    v1::Watermark {
        namespace: w.namespace.clone(),
        key: w.key.clone(),
        mark_json: serde_json::to_string(&w.mark).unwrap_or_default(),
        job_id: w.job_id.to_string(),
        updated_at: Some(timestamp(w.updated_ms)),
    }
}

/// An audit record on the wire.
pub fn audit(a: &weir_core::audit::AuditRecord) -> v1::AuditRecord {
    v1::AuditRecord {
        id: a.id.to_string(),
        at: Some(timestamp(a.at_ms)),
        subject: a.subject.clone(),
        namespace: a.namespace.clone(),
        action: a.action.clone(),
        target: a.target.clone(),
        outcome: a.outcome.as_str().to_string(),
        code: a.code.clone(),
        message: a.message.clone(),
        trace_id: a.trace_id.clone(),
        peer: a.peer.clone(),
    }
}

/// A watermark's mark from the wire; the error says what is wrong.
/// A named connection for the wire.
pub fn connection(c: &weir_core::connection::Connection) -> v1::Connection {
    v1::Connection {
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        config_json: c.config.to_string(),
        updated: (c.updated_ms > 0).then(|| timestamp(c.updated_ms)),
        updated_by: c.updated_by.clone(),
    }
}

/// A named connection from the wire (its time and author are the master's to fill).
pub fn connection_from_wire(c: &v1::Connection) -> Result<weir_core::connection::Connection, String> {
    let config = json("config_json", &c.config_json)?.ok_or("config_json is required (a JSON object)")?;
    Ok(weir_core::connection::Connection {
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        config,
        updated_ms: 0,
        updated_by: String::new(),
    })
}

pub fn mark_from_wire(w: &v1::Watermark) -> Result<Mark, String> {
    serde_json::from_str(&w.mark_json).map_err(|e| format!("watermark {}: its mark is not JSON: {e}", w.key))
}

/// An overlap policy for the wire.
pub fn overlap(o: weir_core::schedule::Overlap) -> v1::OverlapPolicy {
    use weir_core::schedule::Overlap;
    match o {
        Overlap::Skip => v1::OverlapPolicy::Skip,
        Overlap::BufferOne => v1::OverlapPolicy::BufferOne,
        Overlap::BufferAll => v1::OverlapPolicy::BufferAll,
        Overlap::AllowAll => v1::OverlapPolicy::AllowAll,
        Overlap::CancelOther => v1::OverlapPolicy::CancelOther,
        Overlap::TerminateOther => v1::OverlapPolicy::TerminateOther,
    }
}

/// An overlap policy from the wire (unspecified is skip).
pub fn overlap_from_wire(v: i32) -> Result<weir_core::schedule::Overlap, String> {
    use weir_core::schedule::Overlap;
    Ok(match v1::OverlapPolicy::try_from(v).map_err(|_| format!("overlap: unknown policy {v}"))? {
        v1::OverlapPolicy::Unspecified | v1::OverlapPolicy::Skip => Overlap::Skip,
        v1::OverlapPolicy::BufferOne => Overlap::BufferOne,
        v1::OverlapPolicy::BufferAll => Overlap::BufferAll,
        v1::OverlapPolicy::AllowAll => Overlap::AllowAll,
        v1::OverlapPolicy::CancelOther => Overlap::CancelOther,
        v1::OverlapPolicy::TerminateOther => Overlap::TerminateOther,
    })
}

/// A schedule spec for the wire; the error names a start or end that is not an RFC 3339
/// time (a spec read from a file; a stored one was checked).
pub fn schedule_spec_to_wire(s: &weir_core::schedule::ScheduleSpec) -> Result<v1::ScheduleSpec, String> {
    let time = |what: &str, t: &Option<String>| {
        t.as_deref().map(|t| weir_core::schedule::parse_time(what, t).map(timestamp)).transpose()
    };
    Ok(v1::ScheduleSpec {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        cron: s.cron.clone(),
        time_zone: s.time_zone.clone(),
        jitter: s.jitter.map(duration),
        start: time("start", &s.start)?,
        end: time("end", &s.end)?,
        overlap: overlap(s.overlap) as i32,
        catchup_window: s.catchup_window.map(duration),
        job: Some(spec_to_wire(&s.job)),
    })
}

/// A schedule spec from the wire; the error names the field.
pub fn schedule_spec_from_wire(s: &v1::ScheduleSpec) -> Result<weir_core::schedule::ScheduleSpec, String> {
    let job = s.job.as_ref().ok_or("job is required (what each slot runs)")?;
    Ok(weir_core::schedule::ScheduleSpec {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        cron: s.cron.clone(),
        time_zone: s.time_zone.clone(),
        jitter: opt_duration("jitter", &s.jitter)?,
        start: s.start.as_ref().map(|t| weir_core::schedule::format_time("start", millis(t))).transpose()?,
        end: s.end.as_ref().map(|t| weir_core::schedule::format_time("end", millis(t))).transpose()?,
        overlap: overlap_from_wire(s.overlap)?,
        catchup_window: opt_duration("catchup_window", &s.catchup_window)?,
        job: spec_from_wire(job).map_err(|e| format!("job: {e}"))?,
    })
}

/// A stored schedule for the wire, with its next fire times (the master computes them).
pub fn schedule(r: &weir_core::schedule::ScheduleRecord, next_fires: &[Millis]) -> v1::Schedule {
    let st = &r.state;
    v1::Schedule {
        spec: schedule_spec_to_wire(&r.spec).ok(),
        paused: st.paused,
        note: st.note.clone(),
        next_fires: next_fires.iter().map(|t| timestamp(*t)).collect(),
        recent_runs: st
            .recent
            .iter()
            .rev()
            .map(|run| v1::ScheduleRun {
                slot: Some(timestamp(run.slot.time_ms)),
                manual: run.slot.manual,
                outcome: run.outcome.as_str().into(),
                job_id: run.job_id.map(|j| j.to_string()).unwrap_or_default(),
                reason: run.reason.clone(),
                at: Some(timestamp(run.at_ms)),
            })
            .collect(),
        started: st.started,
        skipped: st.skipped,
        missed: st.missed,
        running_job_ids: st.running.iter().map(|j| j.to_string()).collect(),
        waiting: u32::try_from(st.buffered.len()).unwrap_or(u32::MAX),
        last_slot: (st.cursor_ms > 0).then(|| timestamp(st.cursor_ms)),
        created_at: Some(timestamp(r.created_ms)),
        updated_at: Some(timestamp(r.updated_ms)),
        updated_by: r.updated_by.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_time_that_is_not_one_is_named_not_dropped() {
        let spec: weir_core::schedule::ScheduleSpec = serde_json::from_value(serde_json::json!({
            "name": "s", "cron": "@daily", "start": "yesterday", "job": {"template": "standard"},
        }))
        .expect("spec");
        let e = schedule_spec_to_wire(&spec).expect_err("bad start");
        assert!(e.contains("start \"yesterday\" is not an RFC 3339 time"), "{e}");
        let ok = weir_core::schedule::ScheduleSpec { start: Some("2026-03-01T00:00:00+01:00".into()), ..spec };
        let wire = schedule_spec_to_wire(&ok).expect("good start");
        assert_eq!(wire.start.map(|t| millis(&t)), Some(1_772_319_600_000));
    }
    use weir_core::validate::validate;

    #[test]
    fn specs_round_trip_through_the_wire() {
        let yaml_like = serde_json::json!({
            "name": "rt", "namespace": "ns", "priority": 5, "labels": {"a": "b"}, "timeout": "1h",
            "steps": [
                {"id": "a", "kind": "sleep", "queue": "file", "config": {"duration": "1s"},
                 "retry": {"max_attempts": 4, "initial_interval": "2s", "jitter": 0.0},
                 "timeouts": {"heartbeat": "5s"},
                 "compensation": {"kind": "noop", "queue": "batch"}},
                {"id": "b", "kind": "noop", "queue": "api", "depends_on": ["a"]}
            ]
        });
        let spec: spec::JobSpec = serde_json::from_value(yaml_like).expect("spec");
        let back = spec_from_wire(&spec_to_wire(&spec)).expect("from wire");
        assert_eq!(back, spec);
        assert!(validate(back).is_ok());
    }

    #[test]
    fn wire_defaults_and_errors() {
        let mut w = v1::JobSpec { name: "x".into(), ..Default::default() };
        w.steps.push(v1::StepSpec {
            id: "a".into(),
            kind: "noop".into(),
            queue: "api".into(),
            retry: Some(v1::RetryPolicy::default()),
            ..Default::default()
        });
        let s = spec_from_wire(&w).expect("defaults");
        assert_eq!(s.steps[0].retry, Some(RetryPolicy::DEFAULT));
        w.steps[0].config_json = "{not json".into();
        assert!(spec_from_wire(&w).unwrap_err().contains("step \"a\" config_json is not valid JSON"));
        w.steps[0].config_json = String::new();
        w.timeout = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert!(spec_from_wire(&w).unwrap_err().contains("job timeout: bad duration"));
        assert_eq!(millis(&timestamp(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(job_state_from_wire(v1::JobState::Paused as i32), Some(JobState::Paused));
        assert_eq!(job_state_from_wire(0), None);
    }
}
