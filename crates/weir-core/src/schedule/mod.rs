//! Scheduled collection: a cron expression in a time zone says when, a job spec says what,
//! and a policy says what becomes of a slot while the previous run is still going.
//!
//! - [`cadence`]: when slots fall (cron + IANA time zone, with the daylight-saving rules).
//! - [`Schedule`]: a checked [`ScheduleSpec`] (what a user writes).
//! - [`ScheduleState`]: what the master keeps of a schedule between slots (the last slot it
//!   handled, slots waiting behind a run, the runs it started) and the planner:
//!   [`ScheduleState::due`] takes `now` and whether a run is going and returns
//!   [`Decision`]s, so every rule (overlap, catch-up, pause, end) is tested without a clock.
//! - [`Schedule::job_for`]: the job of one slot; its run id is the schedule and the slot,
//!   so the same slot (scheduled, caught up or backfilled) never starts twice.
//!
//! A slot's data interval runs from the slot before it to the slot itself (Airflow's data
//! intervals): `$schedule.interval_start` / `$schedule.interval_end` in the job's params or
//! step configs take exactly the window an incremental pull should read.
//!
//! ```yaml
//! name: orders-hourly
//! namespace: shop
//! cron: "0 * * * *"
//! time_zone: Europe/Berlin
//! overlap: buffer_one
//! catchup_window: 6h
//! job:
//!   template: rest_to_parquet
//!   params: { since: $schedule.interval_start, until: $schedule.interval_end }
//! ```

pub mod cadence;

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::spec::JobSpec;
use crate::validate::{check_name, DEFAULT_NAMESPACE};
use crate::Millis;

pub use cadence::{format_time, parse_time, Cadence};

/// Label set on every job a schedule starts: the schedule's name.
pub const LABEL_SCHEDULE: &str = "weir.schedule";
/// Label set on every job a schedule starts: its slot, on the schedule's wall clock.
pub const LABEL_SLOT: &str = "weir.schedule-slot";
/// Slots fired after the master was down, when no older than this (settable per schedule).
pub const DEFAULT_CATCHUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest catch-up window.
pub const MAX_CATCHUP_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest jitter.
pub const MAX_JITTER: Duration = Duration::from_secs(24 * 3600);
/// Slots a `buffer_all` schedule keeps behind a running job; later ones are skipped.
pub const MAX_BUFFERED: usize = 1000;
/// Runs a schedule remembers for `describe`.
pub const RECENT_RUNS: usize = 10;
/// Slots [`ScheduleState::due`] walks in one call (a long outage of a per-second schedule
/// is counted over several calls, not in one long stall).
pub const MAX_SLOTS_PER_CALL: usize = 10_000;
/// Schedules per namespace.
pub const MAX_PER_NAMESPACE: usize = 100_000;
/// A slot this late is still on time, whatever the catch-up window (a master's tick, a
/// commit, a leader change take a moment): Temporal's smallest catch-up window.
pub const ON_TIME: Duration = Duration::from_secs(10);

/// What becomes of a slot while a run the schedule started is still going (Temporal's
/// overlap policies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The slot does not run.
    #[default]
    Skip,
    /// The slot waits for the run to end; at most one waits, later ones are skipped.
    BufferOne,
    /// Every slot waits, in order (up to [`MAX_BUFFERED`]).
    BufferAll,
    /// The slot starts at once, beside the running ones.
    AllowAll,
    /// The running jobs are cancelled; the slot starts once they have ended (a newer slot
    /// replaces an older one still waiting).
    CancelOther,
    /// The running jobs are cancelled and the slot starts at once.
    TerminateOther,
}

impl Overlap {
    /// As written in specs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::BufferAll => "buffer_all",
            Overlap::AllowAll => "allow_all",
            Overlap::CancelOther => "cancel_other",
            Overlap::TerminateOther => "terminate_other",
        }
    }
}

/// What a user writes to create or update a schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Defaults to "default"; the job runs in the same namespace.
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// 5 fields (minute first), 6 (second first), or `@hourly`, `@daily`…
    pub cron: String,
    /// IANA name; defaults to UTC.
    #[serde(default)]
    pub time_zone: String,
    /// Each slot fires up to this much later (the same delay for the same slot on every
    /// master), to spread schedules that share a time.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// No slot before this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// No slot after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(default)]
    pub overlap: Overlap,
    /// After an outage, slots later than this are not fired (counted as missed); 0 fires
    /// none of them (none later than [`ON_TIME`]). Default [`DEFAULT_CATCHUP_WINDOW`].
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub catchup_window: Option<Duration>,
    /// What each slot runs: steps or a template with params; its namespace and run id come
    /// from the schedule, its name defaults to the schedule's.
    #[serde(deserialize_with = "job_name_optional")]
    pub job: JobSpec,
}

/// A schedule's job may leave out its name (it defaults to the schedule's), which a job
/// spec on its own may not.
fn job_name_optional<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JobSpec, D::Error> {
    let mut v = Value::deserialize(d)?;
    if let Value::Object(m) = &mut v {
        m.entry("name").or_insert_with(|| Value::String(String::new()));
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

/// A checked schedule: its spec normalized (namespace, zone and job name filled in) and
/// its cadence parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub cadence: Cadence,
    pub start_ms: Option<Millis>,
    pub end_ms: Option<Millis>,
    pub jitter_ms: Millis,
    pub catchup_ms: Millis,
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl Schedule {
    /// Checks a spec; the error names the field at fault. (The job itself is checked by
    /// the master, as every submission is, on [`Schedule::job_for`]'s output.)
    pub fn new(mut spec: ScheduleSpec) -> Result<Schedule, String> {
        if spec.namespace.is_empty() {
            spec.namespace = DEFAULT_NAMESPACE.to_string();
        }
        check_name("namespace", &spec.namespace, 64).map_err(|e| e.0)?;
        check_name("schedule name", &spec.name, 64).map_err(|e| e.0)?;
        if spec.description.len() > 1024 {
            return Err("a schedule's description may be at most 1024 bytes".into());
        }
        if spec.time_zone.is_empty() {
            spec.time_zone = "UTC".to_string();
        }
        let cadence = Cadence::parse(&spec.cron, &spec.time_zone)?;
        let start_ms = spec.start.as_deref().map(|t| parse_time("start", t)).transpose()?;
        let end_ms = spec.end.as_deref().map(|t| parse_time("end", t)).transpose()?;
        if let (Some(s), Some(e)) = (start_ms, end_ms) {
            if e <= s {
                return Err(format!(
                    "end {:?} is not after start {:?}",
                    spec.end.as_deref().unwrap_or_default(),
                    spec.start.as_deref().unwrap_or_default()
                ));
            }
        }
        let jitter = spec.jitter.unwrap_or_default();
        if jitter > MAX_JITTER {
            return Err(format!("jitter {} is longer than {}", crate::duration::format(jitter), "24h"));
        }
        let catchup = spec.catchup_window.unwrap_or(DEFAULT_CATCHUP_WINDOW);
        if catchup > MAX_CATCHUP_WINDOW {
            return Err(format!("catchup_window {} is longer than 366 days", crate::duration::format(catchup)));
        }
        let job = &mut spec.job;
        if job.namespace.is_empty() {
            job.namespace = spec.namespace.clone();
        } else if job.namespace != spec.namespace {
            return Err(format!(
                "job.namespace {:?} differs from the schedule's namespace {:?}; a schedule runs jobs in its own",
                job.namespace, spec.namespace
            ));
        }
        if job.name.is_empty() {
            job.name = spec.name.clone();
        }
        if !job.run_id.is_empty() {
            return Err("job.run_id must be empty: the schedule names each run after its slot".into());
        }
        let s = Schedule { cadence, start_ms, end_ms, jitter_ms: millis(jitter), catchup_ms: millis(catchup), spec };
        let first = s.cadence.next_after(s.start_ms.map_or(0, |v| v - 1));
        match first {
            Some(f) if s.end_ms.is_none_or(|e| f <= e) => {}
            _ => return Err(format!("cron expression {:?} names no time between start and end", s.spec.cron)),
        }
        // Every `$schedule.…` the job mentions must be known.
        s.job_for(Slot::scheduled(first.unwrap_or_default()))?;
        Ok(s)
    }

    /// The next slot after `ms` within start and end.
    pub fn next_slot(&self, ms: Millis) -> Option<Millis> {
        let from = match self.start_ms {
            Some(s) if s > ms => s - 1,
            _ => ms,
        };
        self.cadence.next_after(from).filter(|t| self.end_ms.is_none_or(|e| *t <= e))
    }

    /// When `slot` fires: the slot plus its jitter, the same on every master.
    pub fn fire_ms(&self, slot: Millis) -> Millis {
        if self.jitter_ms <= 0 {
            return slot;
        }
        let seed =
            Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{}/{}/{slot}", self.spec.namespace, self.spec.name).as_bytes())
                .as_u128();
        slot + (crate::retry::unit_interval(seed) * self.jitter_ms as f64) as Millis
    }

    /// Up to `n` slots after `ms` (for `describe`).
    pub fn upcoming(&self, ms: Millis, n: usize) -> Vec<Millis> {
        let mut out = Vec::with_capacity(n);
        let mut at = ms;
        while let Some(next) = (out.len() < n).then(|| self.next_slot(at)).flatten() {
            out.push(next);
            at = next;
        }
        out
    }

    /// Every slot in `[from, to]`, or an error past `max` slots (a backfill's bound).
    pub fn slots_between(&self, from: Millis, to: Millis, max: usize) -> Result<Vec<Millis>, String> {
        if to < from {
            return Err("the backfill's end is before its start".into());
        }
        let mut out = Vec::new();
        let mut at = from - 1;
        while let Some(next) = self.next_slot(at).filter(|t| *t <= to) {
            if out.len() == max {
                return Err(format!(
                    "the range holds more than {max} slots of {:?}; backfill a shorter range (or raise the master's limit)",
                    self.spec.cron
                ));
            }
            out.push(next);
            at = next;
        }
        Ok(out)
    }

    /// The run id of a slot's job: the schedule and the slot, so the same slot never runs
    /// twice (within the store's retention period).
    pub fn run_id(&self, slot: Slot) -> String {
        let t = jiff::Timestamp::from_millisecond(slot.time_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        if slot.manual {
            format!("{}.manual.{}", self.spec.name, t.strftime("%Y%m%dT%H%M%S%.3fZ"))
        } else {
            format!("{}.{}", self.spec.name, t.strftime("%Y%m%dT%H%M%SZ"))
        }
    }

    /// A slot's data interval: from the slot before it to the slot (for a manual run, from
    /// the last slot before it to the moment it was asked for).
    pub fn interval(&self, slot: Slot) -> (Millis, Millis) {
        let start = self.cadence.previous_before(slot.time_ms).unwrap_or(slot.time_ms);
        (start, slot.time_ms)
    }

    /// The job of one slot: the spec's job with its run id, the schedule's labels, and
    /// every `$schedule.…` string in params and step configs replaced.
    pub fn job_for(&self, slot: Slot) -> Result<JobSpec, String> {
        let (from, to) = self.interval(slot);
        let c = &self.cadence;
        let vars = |name: &str| -> Option<String> {
            Some(match name {
                "name" => self.spec.name.clone(),
                "time" => c.local_time(slot.time_ms),
                "date" => c.local_date(slot.time_ms),
                "interval_start" => c.local_time(from),
                "interval_end" => c.local_time(to),
                "interval_start_date" => c.local_date(from),
                "time_zone" => self.spec.time_zone.clone(),
                _ => return None,
            })
        };
        let mut job = self.spec.job.clone();
        job.run_id = self.run_id(slot);
        job.labels.insert(LABEL_SCHEDULE.into(), self.spec.name.clone());
        job.labels.insert(LABEL_SLOT.into(), c.local_time(slot.time_ms));
        if let Some(p) = &job.params {
            job.params = Some(fill(p, &vars).map_err(|e| format!("job.params: {e}"))?);
        }
        for step in &mut job.steps {
            if let Some(cfg) = &step.config {
                step.config = Some(fill(cfg, &vars).map_err(|e| format!("step {}: {e}", step.id))?);
            }
            if let Some(comp) = step.compensation.as_mut() {
                if let Some(cfg) = &comp.config {
                    comp.config = Some(fill(cfg, &vars).map_err(|e| format!("step {} compensation: {e}", step.id))?);
                }
            }
        }
        Ok(job)
    }
}

/// Replaces every string `$schedule.<var>` by its value; other strings (JSONPath's `$.x`,
/// say) stay as written.
fn fill(v: &Value, vars: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    crate::json::map_strings(v, &|s| match s.strip_prefix("$schedule.") {
        Some(name) => vars(name).map(|v| Some(Value::String(v))).ok_or_else(|| {
            format!(
                "unknown variable $schedule.{name} (use $schedule.time, .date, .interval_start, .interval_end, \
                 .interval_start_date, .name or .time_zone)"
            )
        }),
        None => Ok(None),
    })
}

/// One slot: a time the cron expression names, or the moment a user triggered a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub time_ms: Millis,
    /// Triggered by hand ("trigger now"), not named by the cron expression.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

impl Slot {
    pub fn scheduled(time_ms: Millis) -> Slot {
        Slot { time_ms, manual: false }
    }
    pub fn manual(time_ms: Millis) -> Slot {
        Slot { time_ms, manual: true }
    }
}

/// What became of a slot, as `describe` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Started,
    Buffered,
    Skipped,
}

impl RunOutcome {
    /// As shown on the wire and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Started => "started",
            RunOutcome::Buffered => "buffered",
            RunOutcome::Skipped => "skipped",
        }
    }
}

/// One entry of a schedule's recent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentRun {
    pub slot: Slot,
    pub outcome: RunOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub at_ms: Millis,
}

/// What the master keeps of a schedule between slots (stored with its spec).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    #[serde(default)]
    pub paused: bool,
    /// Why it was paused (or unpaused), as the user said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// The last slot handled (started, buffered, skipped or missed): later slots are to come.
    pub cursor_ms: Millis,
    /// Slots waiting for the running jobs to end, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub buffered: VecDeque<Slot>,
    /// Jobs this schedule started that may still be running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<Uuid>,
    #[serde(default)]
    pub started: u64,
    #[serde(default)]
    pub skipped: u64,
    /// Slots older than the catch-up window when the master got to them.
    #[serde(default)]
    pub missed: u64,
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub recent: VecDeque<RecentRun>,
}

/// What to do about the slots due now, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the slot's job (after cancelling what a preceding [`Decision::Cancel`] names).
    Start(Slot),
    /// The slot waits for the running jobs to end.
    Buffer(Slot),
    /// The slot does not run, for this reason.
    Skip(Slot, &'static str),
    /// Slots older than the catch-up window: counted, not run.
    Missed { first_ms: Millis, last_ms: Millis, count: u64 },
    /// Cancel these jobs (cancel_other, terminate_other).
    Cancel(Vec<Uuid>),
}

/// Why a slot was skipped.
pub mod skip {
    pub const RUNNING: &str = "a run of this schedule was still going (overlap: skip)";
    pub const ONE_WAITING: &str = "a slot was already waiting (overlap: buffer_one)";
    pub const BUFFER_FULL: &str = "the buffer of waiting slots was full (overlap: buffer_all)";
    pub const REPLACED: &str = "a newer slot replaced it (overlap: cancel_other or terminate_other)";
}

impl ScheduleState {
    /// The state of a schedule created at `now`: its first slot is the first after `now`
    /// (or after its start).
    pub fn new(now: Millis, paused: bool, note: String) -> ScheduleState {
        ScheduleState { cursor_ms: now, paused, note, ..Default::default() }
    }

    /// When the next slot fires, if one is to come (not paused, not past the end).
    pub fn next_fire(&self, s: &Schedule) -> Option<Millis> {
        if self.paused {
            return None;
        }
        s.next_slot(self.cursor_ms).map(|slot| s.fire_ms(slot))
    }

    /// The slots due at `now` through the catch-up window and the overlap policy. `busy`:
    /// a job this schedule started is still going. The caller starts, cancels and records
    /// what the decisions say, and stores this state with them.
    pub fn due(&mut self, s: &Schedule, now: Millis, busy: bool) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.paused {
            return out;
        }
        // Missed slots are the oldest: they come first, then the slots on time.
        let mut missed: Option<(Millis, Millis, u64)> = None;
        let mut on_time = Vec::new();
        for _ in 0..MAX_SLOTS_PER_CALL {
            let Some(slot) = s.next_slot(self.cursor_ms) else { break };
            let fire = s.fire_ms(slot);
            if fire > now {
                break;
            }
            self.cursor_ms = slot;
            if now - fire > s.catchup_ms.max(millis(ON_TIME)) {
                missed = Some(match missed {
                    Some((first, _, n)) => (first, slot, n + 1),
                    None => (slot, slot, 1),
                });
            } else {
                on_time.push(Slot::scheduled(slot));
            }
        }
        if let Some((first_ms, last_ms, count)) = missed {
            self.missed += count;
            out.push(Decision::Missed { first_ms, last_ms, count });
        }
        // Under cancel_other and terminate_other only the newest of several slots due at
        // once runs (each would cancel the one before it).
        if matches!(s.spec.overlap, Overlap::CancelOther | Overlap::TerminateOther) && on_time.len() > 1 {
            let newest = on_time.split_off(on_time.len() - 1);
            for older in std::mem::replace(&mut on_time, newest) {
                self.skip(older, skip::REPLACED, now, &mut out);
            }
        }
        let mut busy = busy;
        for slot in on_time {
            self.offer(s, slot, busy, now, &mut out);
            busy = busy || matches!(out.last(), Some(Decision::Start(_)));
        }
        out
    }

    /// One slot through the overlap policy (a scheduled slot from [`Self::due`], or a
    /// manual one).
    pub fn offer(&mut self, s: &Schedule, slot: Slot, busy: bool, now: Millis, out: &mut Vec<Decision>) {
        if !busy || s.spec.overlap == Overlap::AllowAll {
            out.push(Decision::Start(slot));
            return;
        }
        match s.spec.overlap {
            Overlap::Skip => self.skip(slot, skip::RUNNING, now, out),
            Overlap::BufferOne if !self.buffered.is_empty() => self.skip(slot, skip::ONE_WAITING, now, out),
            Overlap::BufferAll if self.buffered.len() >= MAX_BUFFERED => self.skip(slot, skip::BUFFER_FULL, now, out),
            Overlap::BufferOne | Overlap::BufferAll => self.buffer(slot, now, out),
            Overlap::CancelOther => {
                while let Some(older) = self.buffered.pop_front() {
                    self.skip(older, skip::REPLACED, now, out);
                }
                if !self.running.is_empty() {
                    out.push(Decision::Cancel(self.running.clone()));
                }
                self.buffer(slot, now, out);
            }
            Overlap::TerminateOther => {
                if !self.running.is_empty() {
                    out.push(Decision::Cancel(self.running.clone()));
                }
                out.push(Decision::Start(slot));
            }
            Overlap::AllowAll => out.push(Decision::Start(slot)),
        }
    }

    fn skip(&mut self, slot: Slot, why: &'static str, now: Millis, out: &mut Vec<Decision>) {
        self.refused(slot, why.to_string(), now);
        out.push(Decision::Skip(slot, why));
    }

    /// A slot that was to start could not (its job is no longer valid, say): counted and
    /// remembered as skipped, with the reason.
    pub fn refused(&mut self, slot: Slot, reason: String, now: Millis) {
        self.skipped += 1;
        self.remember(RecentRun { slot, outcome: RunOutcome::Skipped, job_id: None, reason, at_ms: now });
    }

    fn buffer(&mut self, slot: Slot, now: Millis, out: &mut Vec<Decision>) {
        self.buffered.push_back(slot);
        self.remember(RecentRun {
            slot,
            outcome: RunOutcome::Buffered,
            job_id: None,
            reason: String::new(),
            at_ms: now,
        });
        out.push(Decision::Buffer(slot));
    }

    /// The running jobs have all ended: they are forgotten, and the oldest waiting slot,
    /// if any, is to start now.
    pub fn idle(&mut self) -> Option<Slot> {
        self.running.clear();
        self.buffered.pop_front()
    }

    /// A slot's job exists (new, or found again by its run id): it counts as running until
    /// the master sees it end.
    pub fn started(&mut self, slot: Slot, job: Uuid, now: Millis) {
        if !self.running.contains(&job) {
            self.running.push(job);
        }
        self.started += 1;
        self.remember(RecentRun {
            slot,
            outcome: RunOutcome::Started,
            job_id: Some(job),
            reason: String::new(),
            at_ms: now,
        });
    }

    /// Pauses (slots pass unfired) or unpauses (from `now` on: slots that passed while
    /// paused are not caught up).
    pub fn set_paused(&mut self, paused: bool, note: String, now: Millis) {
        if self.paused && !paused {
            self.cursor_ms = self.cursor_ms.max(now);
        }
        self.paused = paused;
        self.note = note;
    }

    fn remember(&mut self, run: RecentRun) {
        // A buffered slot that starts replaces its "buffered" entry.
        self.recent.retain(|r| !(r.slot == run.slot && r.outcome == RunOutcome::Buffered));
        self.recent.push_back(run);
        while self.recent.len() > RECENT_RUNS {
            self.recent.pop_front();
        }
    }
}

/// A schedule as stored: its spec, its state, and who changed it last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub spec: ScheduleSpec,
    pub state: ScheduleState,
    pub created_ms: Millis,
    pub updated_ms: Millis,
    pub updated_by: String,
}

/// A schedule written or deleted with a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleChange {
    Put(Box<ScheduleRecord>),
    Delete { namespace: String, name: String },
}

impl ScheduleChange {
    /// The namespace and name it changes.
    pub fn key(&self) -> (&str, &str) {
        match self {
            ScheduleChange::Put(r) => (&r.spec.namespace, &r.spec.name),
            ScheduleChange::Delete { namespace, name } => (namespace, name),
        }
    }

    /// The last change of each schedule in a batch (what the store must end up holding),
    /// split into the records to write and the keys to delete.
    pub fn last_of_each(changes: &[ScheduleChange]) -> (Vec<&ScheduleRecord>, Vec<(&str, &str)>) {
        let mut seen = std::collections::HashSet::new();
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for c in changes.iter().rev() {
            if !seen.insert(c.key()) {
                continue;
            }
            match c {
                ScheduleChange::Put(r) => puts.push(r.as_ref()),
                ScheduleChange::Delete { namespace, name } => deletes.push((namespace.as_str(), name.as_str())),
            }
        }
        (puts, deletes)
    }
}

#[cfg(test)]
mod tests;
