//! How the CLI shows things: tables and a live progress view for people, JSON for scripts.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use weir_proto::convert;
use weir_proto::v1;

/// "running", "succeeded", … for a wire job state.
pub fn job_state(v: i32) -> String {
    convert::job_state_from_wire(v).map(|s| s.to_string()).unwrap_or_else(|| "unknown".into())
}

fn task_state(v: i32) -> String {
    v1::TaskState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn time(ts: &Option<prost_types::Timestamp>) -> String {
    match ts {
        Some(t) => {
            let ms = convert::millis(t);
            let secs = ms.div_euclid(1000);
            let (d, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            format!("{} {:02}:{:02}:{:02}", weir_core::calendar::date(d), s / 3600, s % 3600 / 60, s % 60)
        }
        None => "-".into(),
    }
}

/// A table of jobs.
pub fn job_table(jobs: &[v1::Job]) {
    println!("{:<36}  {:<12}  {:<24}  {:<12}  {:>9}  CREATED", "JOB", "STATE", "NAME", "NAMESPACE", "TASKS");
    for j in jobs {
        let spec = j.spec.clone().unwrap_or_default();
        println!(
            "{:<36}  {:<12}  {:<24}  {:<12}  {:>9}  {}",
            j.id,
            job_state(j.state),
            spec.name,
            spec.namespace,
            format!("{}/{}", j.tasks_succeeded, j.tasks_total),
            time(&j.created_at)
        );
    }
}

/// One job and its tasks.
pub fn job_detail(j: &v1::Job, tasks: &[v1::Task]) {
    let spec = j.spec.clone().unwrap_or_default();
    println!("job        {}", j.id);
    println!("name       {}/{} (run {})", spec.namespace, spec.name, spec.run_id);
    println!("state      {}", job_state(j.state));
    if !j.error.is_empty() {
        println!("error      {}", j.error);
    }
    println!(
        "tasks      {} succeeded, {} failed, {} running, {} in all",
        j.tasks_succeeded, j.tasks_failed, j.tasks_running, j.tasks_total
    );
    println!("created    {}", time(&j.created_at));
    println!("finished   {}", time(&j.finished_at));
    println!();
    println!(
        "{:<28}  {:<8}  {:<6}  {:<12}  {:>7}  {:>5}  {:<24}  ERROR",
        "STEP", "KIND", "QUEUE", "STATE", "ATTEMPT", "FENCE", "WORKER"
    );
    for t in tasks {
        println!(
            "{:<28}  {:<8}  {:<6}  {:<12}  {:>7}  {:>5}  {:<24}  {}",
            t.step_id,
            t.kind,
            t.queue,
            task_state(t.state),
            t.attempt,
            t.fence_token,
            t.worker_id,
            t.error_message
        );
    }
    collections(tasks);
    file_accounting(tasks);
}

/// What each `collect` step fetched, and whether every collected record reached the data
/// steps: collected = the converters' rows read (= written + quarantined, per file below).
fn collections(tasks: &[v1::Task]) {
    let outputs: Vec<(&v1::Task, Value)> =
        tasks.iter().filter_map(|t| serde_json::from_str::<Value>(&t.output_json).ok().map(|o| (t, o))).collect();
    let collected: Vec<&(&v1::Task, Value)> =
        outputs.iter().filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some("collect")).collect();
    if collected.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16}  {:>8}  {:>12}  {:>9}  {:>8}  {:>14}  FROM",
        "COLLECTED", "PAGES", "RECORDS", "REQUESTS", "RETRIED", "BYTES"
    );
    let n = |o: &Value, k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut records = 0;
    for (t, o) in &collected {
        records += n(o, "records");
        let from = if o.get("degraded").is_some() { "degraded: see the job's events" } else { "the primary" };
        println!(
            "{:<16}  {:>8}  {:>12}  {:>9}  {:>8}  {:>14}  {from}",
            t.step_id,
            n(o, "pages"),
            n(o, "records"),
            n(o, "requests"),
            n(o, "retried"),
            n(o, "bytes")
        );
    }
    let converted: Vec<&Value> =
        outputs.iter().filter(|(t, _)| t.kind == "convert").filter_map(|(_, o)| o.get("rows_read")).collect();
    if !converted.is_empty() {
        let read: u64 = converted.iter().filter_map(|v| v.as_u64()).sum();
        let verdict = if read == records { "every collected record was converted" } else { "records missing" };
        println!("{records} records collected, {read} read by convert: {verdict}");
    }
}

/// Per-file row accounting of the data steps: read = written + quarantined.
fn file_accounting(tasks: &[v1::Task]) {
    let mut header = false;
    for t in tasks {
        let Ok(mut out) = serde_json::from_str::<Value>(&t.output_json) else { continue };
        // A large report is a file beside the staged data; read it if this machine can.
        if let Some(path) = out.get("report").and_then(Value::as_str) {
            match std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
                Some(full) => out = full,
                None => {
                    println!("{:<16}  per-file report in {path}", t.step_id);
                    continue;
                }
            }
        }
        let Some(files) = out.get("files").and_then(Value::as_array) else { continue };
        for f in files.iter().filter(|f| f.get("rows_read").is_some()) {
            if !header {
                println!();
                println!("{:<16}  {:>12}  {:>12}  {:>12}  FILE", "STEP", "READ", "WRITTEN", "QUARANTINED");
                header = true;
            }
            let n = |k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
            println!(
                "{:<16}  {:>12}  {:>12}  {:>12}  {}",
                t.step_id,
                n("rows_read"),
                n("rows_written"),
                n("rows_quarantined"),
                f.get("input").and_then(Value::as_str).unwrap_or("?")
            );
        }
    }
}

/// The inventory of the file manager's watches.
pub fn inventory_table(files: &[v1::InventoryFile]) {
    println!("{:<16}  {:<10}  {:>4}  {:>12}  {:<36}  PATH", "WATCH", "STATE", "GEN", "SIZE", "JOB");
    for f in files {
        println!("{:<16}  {:<10}  {:>4}  {:>12}  {:<36}  {}", f.watch, f.state, f.generation, f.size, f.job_id, f.path);
    }
}

/// Each dataset with its current schema version.
pub fn dataset_table(all: &[v1::DatasetVersion]) {
    println!("{:<8}  {:>7}  {:<24}  {:>7}  DATASET", "KIND", "VERSION", "CHANGED", "COLUMNS");
    for d in all {
        println!(
            "{:<8}  {:>7}  {:<24}  {:>7}  {}",
            d.kind,
            d.version,
            time(&d.recorded_at),
            d.columns.len(),
            d.dataset
        );
    }
}

fn columns(v: &v1::DatasetVersion) -> String {
    v.columns
        .iter()
        .map(|c| format!("{}: {}{}", c.name, c.r#type, if c.nullable { "" } else { " not null" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every version of one dataset: what changed, who changed it, its columns.
pub fn dataset_history(versions: &[v1::DatasetVersion]) {
    if let Some(v) = versions.first() {
        println!("{} ({})", v.dataset, v.kind);
    }
    for v in versions {
        println!();
        println!("version {}  {}  {}", v.version, time(&v.recorded_at), v.changes.join("; "));
        if !v.job_id.is_empty() {
            println!("  by job {} step {} input {}", v.job_id, v.step_id, v.input);
        }
        if !v.partition_column.is_empty() {
            println!("  partitioned by {} (folders {}=…)", v.partition_column, v.partition_folder);
        }
        println!("  {}", columns(v));
    }
}

/// A dataset version as JSON.
pub fn dataset_value(v: &v1::DatasetVersion) -> Value {
    json!({
        "dataset": v.dataset, "kind": v.kind, "version": v.version,
        "columns": v.columns.iter().map(|c| json!({"name": c.name, "type": c.r#type, "nullable": c.nullable})).collect::<Vec<_>>(),
        "partition_column": v.partition_column, "partition_folder": v.partition_folder,
        "changes": v.changes, "job_id": v.job_id, "task_id": v.task_id, "step_id": v.step_id, "input": v.input,
        "recorded_at": time(&v.recorded_at),
    })
}

fn lag(v: i64) -> String {
    if v < 0 {
        "?".into()
    } else {
        v.to_string()
    }
}

/// A stream manager's streams, a line per lane under each.
pub fn streams_table(r: &v1::ListStreamsResponse) {
    println!("budget {} bytes, {} buffered now, {} at most", r.budget_bytes, r.buffered_bytes, r.peak_bytes);
    println!(
        "{:<36}  {:<9}  {:<8}  {:>10}  {:>9}  {:>10}  {:<24}  JOB/STEP",
        "TASK", "SOURCE", "STATE", "RECORDS", "REC/S", "BUFFERED", "CHECKPOINT"
    );
    for s in &r.streams {
        println!(
            "{:<36}  {:<9}  {:<8}  {:>10}  {:>9.0}  {:>10}  {:<24}  {}/{}",
            s.task_id,
            s.source,
            s.state,
            s.records,
            s.records_per_second,
            s.buffered_records,
            time(&s.last_checkpoint),
            s.job_name,
            s.step_id
        );
        for l in &s.lanes {
            println!("    {}/{}  position {}  landed {}  lag {}", l.name, l.index, l.position, l.landed, lag(l.lag));
        }
    }
}

/// A stream manager's streams as JSON.
pub fn streams_value(r: &v1::ListStreamsResponse) -> Value {
    let streams: Vec<Value> = r
        .streams
        .iter()
        .map(|s| {
            json!({
                "job_id": s.job_id, "task_id": s.task_id, "step_id": s.step_id, "namespace": s.namespace,
                "job_name": s.job_name, "source": s.source, "fence": s.fence, "state": s.state,
                "records": s.records, "bytes": s.bytes, "records_per_second": s.records_per_second,
                "bytes_per_second": s.bytes_per_second, "buffered_records": s.buffered_records,
                "buffered_bytes": s.buffered_bytes, "flushes": s.flushes, "duplicates": s.duplicates,
                "dead_letters": s.dead_letters, "dropped": s.dropped, "started": time(&s.started),
                "last_checkpoint": time(&s.last_checkpoint),
                "lanes": s.lanes.iter().map(|l| json!({"name": l.name, "index": l.index, "position": l.position, "landed": l.landed, "lag": l.lag})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"budget_bytes": r.budget_bytes, "buffered_bytes": r.buffered_bytes, "peak_bytes": r.peak_bytes, "streams": streams})
}

/// A table of workers.
pub fn worker_table(ws: &[v1::Worker], json: bool) {
    if json {
        for w in ws {
            println!(
                "{}",
                json!({"worker_id": w.worker_id, "queue": w.queue, "capacity": w.capacity, "running": w.running,
                       "registered_at": time(&w.registered_at), "last_seen_at": time(&w.last_seen_at),
                       "version": w.version})
            );
        }
        return;
    }
    println!("{:<32}  {:<7}  {:>8}  {:>7}  LAST SEEN", "WORKER", "QUEUE", "CAPACITY", "RUNNING");
    for w in ws {
        println!("{:<32}  {:<7}  {:>8}  {:>7}  {}", w.worker_id, w.queue, w.capacity, w.running, time(&w.last_seen_at));
    }
}

/// The fleet-wide limits (`api/<name>`, `api/*` for all APIs) and each replica's share.
/// Incremental collection's watermarks, one a line (or one JSON object a line).
pub fn watermark_table(ws: &[v1::Watermark], json: bool) {
    let mark = |w: &v1::Watermark| -> (String, usize) {
        let m: Value = serde_json::from_str(&w.mark_json).unwrap_or(Value::Null);
        let value = match &m["value"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (value, m["boundary"].as_array().map_or(0, Vec::len))
    };
    if json {
        for w in ws {
            let m: Value = serde_json::from_str(&w.mark_json).unwrap_or(Value::Null);
            println!(
                "{}",
                json!({"namespace": w.namespace, "key": w.key, "value": m["value"], "at_mark": mark(w).1,
                       "job_id": w.job_id, "updated_at": time(&w.updated_at)})
            );
        }
        return;
    }
    if ws.is_empty() {
        println!("no watermark yet (an incremental collect stores one when its job succeeds)");
        return;
    }
    println!("{:<12}  {:<40}  {:<28}  {:>7}  {:<20}  JOB", "NAMESPACE", "KEY", "MARK", "AT MARK", "UPDATED");
    for w in ws {
        let (value, at) = mark(w);
        println!(
            "{:<12}  {:<40}  {:<28}  {:>7}  {:<20}  {}",
            w.namespace,
            w.key,
            value,
            at,
            time(&w.updated_at),
            w.job_id
        );
    }
}

pub fn quota_table(qs: &[v1::Quota], circuits: &[v1::ApiCircuit], json: bool) {
    if json {
        for c in circuits {
            println!(
                "{}",
                json!({"api": c.api, "worker_id": c.worker_id, "circuit": c.state, "reason": c.reason, "since": time(&c.since)})
            );
        }
        for q in qs {
            let shares: Vec<Value> = q
                .shares
                .iter()
                .map(|s| {
                    json!({"worker_id": s.worker_id, "per_minute": s.per_minute, "burst": s.burst,
                                "used_per_minute": s.used_per_minute, "saturated": s.saturated})
                })
                .collect();
            let hold = (q.hold_until_ms > 0).then(|| weir_core::events::rfc3339(q.hold_until_ms));
            println!(
                "{}",
                json!({"key": q.key, "per_minute": q.per_minute, "burst": q.burst, "hold_until": hold, "shares": shares})
            );
        }
        return;
    }
    if !circuits.is_empty() {
        println!("{:<24}  {:<36}  {:<9}  {:<20}  REASON", "API", "REPLICA", "CIRCUIT", "SINCE");
        for c in circuits {
            println!("{:<24}  {:<36}  {:<9}  {:<20}  {}", c.api, c.worker_id, c.state, time(&c.since), c.reason);
        }
        println!();
    }
    if qs.is_empty() {
        println!("no API limit in use (a limit appears once an API manager calls an API)");
        return;
    }
    println!("{:<24}  {:>9}  {:>6}  {:<36}  {:>9}  {:>9}", "LIMIT", "PER MIN", "BURST", "REPLICA", "SHARE", "USED");
    for q in qs {
        let name = if q.key == "api/*" { "all APIs".to_string() } else { q.key.trim_start_matches("api/").to_string() };
        let hold = if q.hold_until_ms > 0 {
            format!("  held until {}", weir_core::events::rfc3339(q.hold_until_ms))
        } else {
            String::new()
        };
        println!("{:<24}  {:>9.0}  {:>6}{hold}", name, q.per_minute, q.burst);
        for s in &q.shares {
            let full = if s.saturated { " (wants more)" } else { "" };
            println!(
                "{:<24}  {:>9}  {:>6}  {:<36}  {:>9.1}  {:>9.1}{full}",
                "", "", s.burst, s.worker_id, s.per_minute, s.used_per_minute
            );
        }
    }
}

fn job_value(j: &v1::Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    json!({
        "id": j.id, "namespace": spec.namespace, "name": spec.name, "run_id": spec.run_id,
        "state": job_state(j.state), "error": j.error, "priority": spec.priority, "labels": spec.labels,
        "tasks_total": j.tasks_total, "tasks_succeeded": j.tasks_succeeded, "tasks_failed": j.tasks_failed,
        "tasks_running": j.tasks_running, "last_event_seq": j.last_event_seq,
    })
}

fn task_value(t: &v1::Task) -> Value {
    json!({
        "id": t.id, "step_id": t.step_id, "kind": t.kind, "queue": t.queue, "state": task_state(t.state),
        "attempt": t.attempt, "fence_token": t.fence_token, "worker_id": t.worker_id,
        "error_kind": t.error_kind, "error_message": t.error_message, "compensates": t.compensates,
        "output": serde_json::from_str::<Value>(&t.output_json).unwrap_or(Value::Null),
    })
}

/// A job as JSON.
pub fn json_job(j: &v1::Job) {
    println!("{}", job_value(j));
}

/// A job with its tasks as JSON.
pub fn json_job_tasks(j: &v1::Job, tasks: &[v1::Task]) {
    let mut v = job_value(j);
    v["tasks"] = Value::Array(tasks.iter().map(task_value).collect());
    println!("{v}");
}

/// A page of jobs as JSON.
pub fn json_list(r: &v1::ListJobsResponse) {
    let jobs: Vec<Value> = r.jobs.iter().map(job_value).collect();
    println!("{}", json!({"jobs": jobs, "next_page_token": r.next_page_token}));
}

/// The live view of `weir watch`.
pub struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
}

impl Progress {
    pub fn new(job: &v1::Job, json: bool) -> Progress {
        let name = job.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(u64::from(job.tasks_total));
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name);
            bar
        });
        Progress { bar, json }
    }

    pub fn event(&mut self, e: &v1::JobEvent) {
        let what = e.r#type.trim_start_matches("dev.weir.");
        let line = if e.step_id.is_empty() {
            format!("{what} {}", e.message)
        } else {
            format!("{what} {} {}", e.step_id, e.message)
        };
        if self.json {
            println!(
                "{}",
                json!({"seq": e.seq, "type": e.r#type, "step_id": e.step_id, "job_state": job_state(e.job_state), "message": e.message})
            );
        } else if let Some(bar) = &self.bar {
            if e.r#type == "dev.weir.task.succeeded" {
                bar.inc(1);
                if bar.position() > bar.length().unwrap_or(0) {
                    bar.set_length(bar.position());
                }
            }
            bar.set_message(line.trim_end().to_string());
        } else {
            println!("#{:<4} {}", e.seq, line.trim_end());
        }
    }

    pub fn finish(self, job: &v1::Job) {
        if let Some(bar) = self.bar {
            bar.finish_with_message(job_state(job.state));
        }
        if !self.json {
            let err = if job.error.is_empty() { String::new() } else { format!(": {}", job.error) };
            println!("job {} {}{err}", job.id, job_state(job.state));
        }
    }
}

/// The audit trail, newest first.
pub fn audit_table(records: &[v1::AuditRecord]) {
    println!(
        "{:<24}  {:<16}  {:<12}  {:<14}  {:<15}  {:<36}  MESSAGE",
        "TIME", "SUBJECT", "NAMESPACE", "ACTION", "OUTCOME", "TARGET"
    );
    for a in records {
        println!(
            "{:<24}  {:<16}  {:<12}  {:<14}  {:<15}  {:<36}  {}",
            time(&a.at),
            if a.subject.is_empty() { "-" } else { &a.subject },
            a.namespace,
            a.action,
            a.outcome,
            a.target,
            a.message
        );
    }
}

/// One audit record as JSON.
pub fn audit_value(a: &v1::AuditRecord) -> Value {
    serde_json::json!({"id": a.id, "at": time(&a.at), "subject": a.subject, "namespace": a.namespace,
        "action": a.action, "target": a.target, "outcome": a.outcome, "code": a.code, "message": a.message,
        "trace_id": a.trace_id, "peer": a.peer})
}

/// Named connections, one a line, their config as JSON.
pub fn connection_table(connections: &[v1::Connection]) {
    println!("{:<12}  {:<20}  {:<24}  {:<16}  {:<30}  CONFIG", "NAMESPACE", "NAME", "UPDATED", "BY", "DESCRIPTION");
    for c in connections {
        println!(
            "{:<12}  {:<20}  {:<24}  {:<16}  {:<30}  {}",
            c.namespace,
            c.name,
            time(&c.updated),
            c.updated_by,
            c.description,
            c.config_json
        );
    }
}

/// One named connection as JSON (its config as an object).
pub fn connection_value(c: &v1::Connection) -> Value {
    let config = serde_json::from_str::<Value>(&c.config_json).unwrap_or_else(|_| Value::String(c.config_json.clone()));
    serde_json::json!({"namespace": c.namespace, "name": c.name, "description": c.description, "config": config,
        "updated": time(&c.updated), "updated_by": c.updated_by})
}

fn overlap(v: i32) -> String {
    v1::OverlapPolicy::try_from(v)
        .map(|p| p.as_str_name().trim_start_matches("OVERLAP_POLICY_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

/// Schedules as a table: when each fires next, and how its slots went.
pub fn schedule_table(schedules: &[v1::Schedule]) {
    println!(
        "{:<12}  {:<24}  {:<16}  {:<18}  {:<14}  {:<20}  {:>7}  {:>7}  {:>6}",
        "NAMESPACE", "NAME", "CRON", "TIME ZONE", "OVERLAP", "NEXT (UTC)", "STARTED", "SKIPPED", "MISSED"
    );
    let empty = v1::ScheduleSpec::default();
    for s in schedules {
        let spec = s.spec.as_ref().unwrap_or(&empty);
        let next = if s.paused { "paused".to_string() } else { time(&s.next_fires.first().cloned()) };
        println!(
            "{:<12}  {:<24}  {:<16}  {:<18}  {:<14}  {:<20}  {:>7}  {:>7}  {:>6}",
            spec.namespace,
            spec.name,
            spec.cron,
            spec.time_zone,
            overlap(spec.overlap),
            next,
            s.started,
            s.skipped,
            s.missed
        );
    }
}

/// One schedule, whole: spec, next fire times, recent runs.
pub fn schedule_detail(s: &v1::Schedule) {
    let empty = v1::ScheduleSpec::default();
    let spec = s.spec.as_ref().unwrap_or(&empty);
    println!("schedule     {}/{}", spec.namespace, spec.name);
    if !spec.description.is_empty() {
        println!("description  {}", spec.description);
    }
    println!("cron         {}  ({})", spec.cron, spec.time_zone);
    println!("overlap      {}", overlap(spec.overlap));
    if s.paused {
        println!("paused       {}", if s.note.is_empty() { "yes" } else { &s.note });
    }
    println!("slots        {} started, {} skipped, {} missed; {} waiting", s.started, s.skipped, s.missed, s.waiting);
    if !s.running_job_ids.is_empty() {
        println!("running      {}", s.running_job_ids.join(", "));
    }
    println!("next (UTC)");
    for t in &s.next_fires {
        println!("  {}", time(&Some(*t)));
    }
    if !s.recent_runs.is_empty() {
        println!("recent runs (UTC)");
        for r in &s.recent_runs {
            let what = if r.manual { "manual" } else { "slot" };
            println!("  {} {what:<6} {:<8} {} {}", time(&r.slot), r.outcome, r.job_id, r.reason);
        }
    }
}

/// One schedule as JSON.
pub fn schedule_value(s: &v1::Schedule) -> Value {
    let empty = v1::ScheduleSpec::default();
    let spec = s.spec.as_ref().unwrap_or(&empty);
    json!({
        "namespace": spec.namespace, "name": spec.name, "description": spec.description,
        "cron": spec.cron, "time_zone": spec.time_zone, "overlap": overlap(spec.overlap),
        "paused": s.paused, "note": s.note,
        "next_fires": s.next_fires.iter().map(|t| time(&Some(*t))).collect::<Vec<_>>(),
        "started": s.started, "skipped": s.skipped, "missed": s.missed, "waiting": s.waiting,
        "running_job_ids": s.running_job_ids,
        "recent_runs": s.recent_runs.iter().map(|r| json!({
            "slot": time(&r.slot), "manual": r.manual, "outcome": r.outcome, "job_id": r.job_id, "reason": r.reason,
        })).collect::<Vec<_>>(),
    })
}
