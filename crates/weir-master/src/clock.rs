//! The schedules' clock: the leading master holds every schedule in memory (a [`Book`]) and
//! fires each slot when it falls due.
//!
//! A schedule's decisions come from the domain ([`weir_core::schedule::ScheduleState::due`]);
//! here they become one [`ScheduleCommit`]: the slot's job, the runs a newer slot cancels,
//! the schedule's new state and its events, committed together. So a slot is handled exactly
//! once across crashes and failovers: its job exists if and only if the stored state moved
//! past it. One schedule is handled at a time (its entry's lock); many schedules due at the
//! same second are handled side by side, and their commits share the scheduler's batches.
//!
//! A schedule with slots waiting behind a run is woken when that run ends (the committed
//! event feed), and every few seconds besides, in case the feed ran ahead of it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_core::events::{rfc3339, schedule_event, schedule_message};
use weir_core::model::OutboxMessage;
use weir_core::schedule::{Decision, Overlap, Schedule, ScheduleRecord, Slot};
use weir_core::validate::ValidJob;
use weir_core::Millis;

use crate::scheduler::{Audit, ScheduleCommit, ScheduleCommitted};
use crate::{now_ms, Shared};

/// A schedule's namespace and name.
pub(crate) type Key = (String, String);

/// One schedule as the clock holds it.
pub(crate) struct Entry {
    pub schedule: Schedule,
    pub record: ScheduleRecord,
    /// Set (under the entry's lock) when the schedule was deleted: whoever was waiting for
    /// the lock must not write it back.
    pub deleted: bool,
}

/// Schedules handled at once when many fall due together.
const CONCURRENT_FIRES: usize = 1024;
/// How often schedules with waiting slots look at their runs again without being woken.
const WAITING_RECHECK: Duration = Duration::from_secs(5);
/// After a failed commit, the schedule tries again this much later.
const RETRY_MS: Millis = 1_000;

/// (fire time, schedule), earliest first, and each schedule's current fire time.
type Timer = (BTreeSet<(Millis, Key)>, HashMap<Key, Millis>);

/// Every schedule of the store, with when each fires next.
#[derive(Default)]
pub(crate) struct Book {
    entries: std::sync::Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Entry>>>>,
    timer: std::sync::Mutex<Timer>,
    /// Runs of schedules with waiting slots: their end wakes the schedule.
    watching: std::sync::Mutex<HashMap<Uuid, Key>>,
    /// Stored schedules whose spec no longer checks: not fired, but their names are taken
    /// (and they can be deleted).
    unloaded: std::sync::Mutex<std::collections::HashSet<Key>>,
    wake: Notify,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Book {
    /// Fills the book from the store's records (at the start of leadership). A stored spec
    /// that no longer checks (a time zone gone from the database, say) is logged and left
    /// unscheduled.
    pub fn load(&self, records: Vec<ScheduleRecord>) {
        let mut entries = lock(&self.entries);
        entries.clear();
        *lock(&self.timer) = Default::default();
        lock(&self.watching).clear();
        let mut unloaded = lock(&self.unloaded);
        unloaded.clear();
        for r in records {
            let key = (r.spec.namespace.clone(), r.spec.name.clone());
            match Schedule::new(r.spec.clone()) {
                Ok(schedule) => {
                    let next = r.state.next_fire(&schedule);
                    let waiting = !r.state.buffered.is_empty();
                    let entry = Entry { schedule, record: r, deleted: false };
                    entries.insert(key.clone(), Arc::new(tokio::sync::Mutex::new(entry)));
                    // A schedule with waiting slots looks at its runs at once.
                    self.arm(&key, if waiting { Some(0) } else { next });
                }
                Err(e) => {
                    tracing::error!(namespace = %key.0, name = %key.1, error = %e, "stored schedule not valid; not fired");
                    unloaded.insert(key);
                }
            }
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<tokio::sync::Mutex<Entry>>> {
        lock(&self.entries).get(key).cloned()
    }

    /// Adds an entry unless the name is taken (by an entry or a stored schedule that did
    /// not load); returns whether it did.
    pub fn insert_new(&self, key: Key, entry: Arc<tokio::sync::Mutex<Entry>>) -> bool {
        let mut entries = lock(&self.entries);
        if entries.contains_key(&key) || lock(&self.unloaded).contains(&key) {
            return false;
        }
        entries.insert(key, entry);
        true
    }

    /// Whether `key` names a stored schedule that did not load.
    pub fn is_unloaded(&self, key: &Key) -> bool {
        lock(&self.unloaded).contains(key)
    }

    pub fn remove(&self, key: &Key) {
        lock(&self.entries).remove(key);
        lock(&self.unloaded).remove(key);
        lock(&self.watching).retain(|_, k| k != key);
        self.arm(key, None);
    }

    /// Every entry of the namespaces `shown` keeps, by namespace and name.
    pub fn list(&self, shown: impl Fn(&str) -> bool) -> Vec<Arc<tokio::sync::Mutex<Entry>>> {
        let entries = lock(&self.entries);
        let mut keys: Vec<&Key> = entries.keys().filter(|k| shown(&k.0)).collect();
        keys.sort();
        keys.into_iter().filter_map(|k| entries.get(k).cloned()).collect()
    }

    pub fn count(&self, namespace: &str) -> usize {
        lock(&self.entries).keys().filter(|k| k.0 == namespace).count()
    }

    /// Sets when a schedule fires next (`None`: not until something changes).
    pub fn arm(&self, key: &Key, at: Option<Millis>) {
        let mut t = lock(&self.timer);
        let (set, by_key) = &mut *t;
        if let Some(old) = by_key.remove(key) {
            set.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            let earliest = set.first().is_none_or(|(first, _)| at < *first);
            set.insert((at, key.clone()));
            by_key.insert(key.clone(), at);
            if earliest {
                self.wake.notify_one();
            }
        }
    }

    /// The schedules due at `now`, taken off the timer.
    fn take_due(&self, now: Millis) -> Vec<Key> {
        let mut t = lock(&self.timer);
        let (set, by_key) = &mut *t;
        let mut due = Vec::new();
        while let Some((at, _)) = set.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = set.pop_first() {
                by_key.remove(&key);
                due.push(key);
            }
        }
        due
    }

    fn next_due(&self) -> Option<Millis> {
        lock(&self.timer).0.first().map(|(at, _)| *at)
    }

    /// Watches the running jobs of a schedule with waiting slots (and forgets the others').
    fn watch(&self, key: &Key, record: &ScheduleRecord) {
        let mut w = lock(&self.watching);
        w.retain(|_, k| k != key);
        if !record.state.buffered.is_empty() {
            for id in &record.state.running {
                w.insert(*id, key.clone());
            }
        }
    }
}

/// Fires schedules until `cancel` fires (runs only while this master leads).
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let book = &shared.schedules;
    let mut feed = shared.scheduler.subscribe();
    let gate = Arc::new(Semaphore::new(CONCURRENT_FIRES));
    let mut recheck = tokio::time::interval(WAITING_RECHECK);
    loop {
        let now = now_ms();
        for key in book.take_due(now) {
            let Ok(permit) = gate.clone().acquire_owned().await else { return };
            let shared = shared.clone();
            tokio::spawn(async move {
                fire(&shared, &key).await;
                drop(permit);
            });
        }
        let sleep = book.next_due().map_or(Duration::from_secs(60), |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0))
        });
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = book.wake.notified() => {}
            batch = feed.recv() => match batch {
                Ok(events) => {
                    let ended: Vec<Key> = {
                        let mut w = lock(&book.watching);
                        events
                            .iter()
                            .filter(|e| e.job_state.is_terminal())
                            .filter_map(|e| w.remove(&e.job_id))
                            .collect()
                    };
                    for key in ended {
                        book.arm(&key, Some(now_ms()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => wake_waiting(book),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = recheck.tick() => wake_waiting(book),
            _ = cancel.cancelled() => return,
        }
    }
}

/// Every schedule with waiting slots looks at its runs again.
fn wake_waiting(book: &Book) {
    let keys: BTreeSet<Key> = lock(&book.watching).values().cloned().collect();
    for key in keys {
        book.arm(&key, Some(now_ms()));
    }
}

/// Handles what is due of one schedule: waiting slots whose runs ended, slots that fell due.
pub(crate) async fn fire(shared: &Shared, key: &Key) {
    let Some(entry) = shared.schedules.get(key) else { return };
    let mut g = entry.lock().await;
    if g.deleted {
        return;
    }
    let now = now_ms();
    let mut state = g.record.state.clone();
    state.running = if g.schedule.spec.overlap == Overlap::AllowAll {
        Vec::new()
    } else {
        still_running(shared, &state.running).await
    };
    let busy = !state.running.is_empty();
    // Slots due now meet the runs going and the slots already waiting (a newer slot may
    // replace a waiting one); then, if nothing runs and nothing just started, the oldest
    // waiting slot starts. A paused schedule starts nothing, waiting slots included.
    let mut decisions = state.due(&g.schedule, now, busy || !state.buffered.is_empty());
    let started = decisions.iter().any(|d| matches!(d, Decision::Start(_)));
    if !busy && !started && !state.paused {
        if let Some(slot) = state.idle() {
            decisions.push(Decision::Start(slot));
        }
    }
    if decisions.is_empty() && state == g.record.state {
        let next = g.record.state.next_fire(&g.schedule);
        shared.schedules.arm(key, next);
        return;
    }
    let mut record = g.record.clone();
    record.state = state;
    let result = commit(shared, &g.schedule, record, decisions, Vec::new(), None).await;
    settle(shared, key, &mut g, result).await;
}

/// After a commit: the entry takes the record as written (or, if the commit failed, as the
/// store holds it), and the timer its next fire time.
pub(crate) async fn settle(
    shared: &Shared,
    key: &Key,
    g: &mut Entry,
    result: Result<ScheduleCommitted, tonic::Status>,
) -> Option<ScheduleCommitted> {
    match result {
        Ok(done) => {
            if let Some(r) = &done.record {
                g.record = r.clone();
            }
            shared.schedules.watch(key, &g.record);
            let st = &g.record.state;
            // Slots waiting with nothing running (unpaused, or a start refused) start now;
            // behind a run they are woken when it ends (or by the recheck).
            let next = if !st.buffered.is_empty() && st.running.is_empty() && !st.paused {
                Some(now_ms())
            } else {
                st.next_fire(&g.schedule)
            };
            shared.schedules.arm(key, next);
            Some(done)
        }
        Err(status) => {
            tracing::warn!(namespace = %key.0, name = %key.1, error = %status.message(), "schedule not committed; trying again");
            // The commit may have landed or not: the store says which.
            match shared.store.schedule(&key.0, &key.1).await {
                Ok(Some(r)) => {
                    match Schedule::new(r.spec.clone()) {
                        Ok(s) => g.schedule = s,
                        Err(e) => tracing::error!(error = %e, "stored schedule not valid"),
                    }
                    g.record = r;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the schedule back"),
            }
            shared.schedules.arm(key, Some(now_ms() + RETRY_MS));
            None
        }
    }
}

/// Of a schedule's runs, those not ended (a run the store cannot tell about counts as
/// running: better a slot waits or is skipped than runs twice beside it).
pub(crate) async fn still_running(shared: &Shared, runs: &[Uuid]) -> Vec<Uuid> {
    let mut alive = Vec::new();
    for id in runs {
        match shared.store.get_job(*id).await {
            Ok(Some(job)) if job.state.is_terminal() => {}
            Ok(None) => {}
            Ok(Some(_)) => alive.push(*id),
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "cannot read a schedule's run; counted as running");
                alive.push(*id);
            }
        }
    }
    alive
}

/// Why a slot's job is not ready to submit.
pub(crate) enum NotReady {
    /// It will not be (its job no longer checks): the slot is skipped with the reason.
    Refused(String),
    /// The store could not be asked: the slot is tried again later.
    Retry(String),
}

impl NotReady {
    /// As a gRPC status: bad input, or try again.
    pub(crate) fn status(self, what: &str) -> tonic::Status {
        match self {
            NotReady::Refused(m) => crate::status::invalid(format!("{what}: {m}")),
            NotReady::Retry(m) => tonic::Status::unavailable(format!("{what}: {m}")),
        }
    }
}

/// Turns a schedule's decisions into one commit: jobs for the slots that start (each
/// checked as any submission; one that no longer checks is skipped with the reason, and
/// then cancels nothing), the runs to cancel, the events, and the record. A slot whose job
/// cannot be looked up now commits nothing: the schedule tries again.
pub(crate) async fn commit(
    shared: &Shared,
    schedule: &Schedule,
    mut record: ScheduleRecord,
    decisions: Vec<Decision>,
    mut messages: Vec<OutboxMessage>,
    audit: Audit,
) -> Result<ScheduleCommitted, tonic::Status> {
    let (ns, name) = (schedule.spec.namespace.as_str(), schedule.spec.name.as_str());
    let now = now_ms();
    let event = |kind: &str, detail: serde_json::Value| schedule_message(kind, ns, name, detail, now);
    let mut prepared = HashMap::new();
    for d in &decisions {
        if let Decision::Start(slot) = d {
            match job(shared, schedule, *slot).await {
                Err(NotReady::Retry(why)) => return Err(tonic::Status::unavailable(why)),
                other => {
                    prepared.insert(*slot, other);
                }
            }
        }
    }
    let refused = prepared.values().any(|p| matches!(p, Err(NotReady::Refused(_))));
    let mut starts = Vec::new();
    let mut cancels = Vec::new();
    let mut found = Vec::new();
    for d in decisions {
        match d {
            Decision::Start(slot) => match prepared.remove(&slot) {
                Some(Ok(Prepared::New(job))) => starts.push((slot, *job)),
                Some(Ok(Prepared::Exists(id))) => found.push((slot, id)),
                Some(Err(NotReady::Refused(reason) | NotReady::Retry(reason))) => {
                    tracing::warn!(namespace = ns, name, %reason, "a slot's job could not start");
                    record.state.refused(slot, reason.clone(), now);
                    messages.push(event(schedule_event::SKIPPED, slot_detail(slot, &reason)));
                }
                None => {}
            },
            Decision::Buffer(slot) => messages.push(event(schedule_event::BUFFERED, slot_detail(slot, ""))),
            Decision::Skip(slot, why) => messages.push(event(schedule_event::SKIPPED, slot_detail(slot, why))),
            Decision::Missed { first_ms, last_ms, count } => messages.push(event(
                schedule_event::MISSED,
                serde_json::json!({"first": rfc3339(first_ms), "last": rfc3339(last_ms), "count": count}),
            )),
            // A slot that cannot run does not stop the run going.
            Decision::Cancel(_) if refused => {}
            Decision::Cancel(ids) => {
                let why = format!("cancelled by schedule {name}: a newer slot ({})", schedule.spec.overlap.as_str());
                messages.push(event(schedule_event::CANCELLED_RUNS, serde_json::json!({"job_ids": ids})));
                cancels.extend(ids.into_iter().map(|id| (id, why.clone())));
            }
        }
    }
    let key = (ns.to_string(), name.to_string());
    for (slot, id) in found {
        record.state.started(slot, id, now);
        messages.push(started_message(&key, slot, id, &schedule.run_id(slot), false, now));
    }
    let commit = ScheduleCommit { key, record: Some(record), delete: false, starts, cancels, messages, audit };
    shared.scheduler.schedule(commit).await.map_err(crate::status::sched)
}

/// The event of a slot's job started (`created`: new, not found again by its run id).
pub(crate) fn started_message(
    key: &Key,
    slot: Slot,
    job: Uuid,
    run_id: &str,
    created: bool,
    now: Millis,
) -> OutboxMessage {
    let detail = serde_json::json!({
        "slot": rfc3339(slot.time_ms), "manual": slot.manual, "job_id": job, "run_id": run_id, "created": created,
    });
    schedule_message(schedule_event::STARTED, &key.0, &key.1, detail, now)
}

fn slot_detail(slot: Slot, reason: &str) -> serde_json::Value {
    let mut d = serde_json::json!({"slot": rfc3339(slot.time_ms), "manual": slot.manual});
    if !reason.is_empty() {
        d["reason"] = reason.into();
    }
    d
}

/// A slot's job, ready to submit — or the job it already has.
pub(crate) enum Prepared {
    New(Box<ValidJob>),
    Exists(Uuid),
}

/// The job of `slot`, checked as any submission is (connections expanded, the sandbox) —
/// unless its run id already names a job (a backfill's, or a submission's that left the
/// engine's memory): that one is the slot's, and the engine never sees a duplicate key.
pub(crate) async fn job(shared: &Shared, schedule: &Schedule, slot: Slot) -> Result<Prepared, NotReady> {
    let spec = schedule.job_for(slot).map_err(NotReady::Refused)?;
    match shared.store.find_job(&spec.namespace, &spec.name, &spec.run_id).await {
        Ok(Some(id)) => return Ok(Prepared::Exists(id)),
        Ok(None) => {}
        Err(e) => return Err(NotReady::Retry(format!("cannot look the slot's job up: {e}"))),
    }
    prepare(shared, spec).await.map(|j| Prepared::New(Box::new(j)))
}

/// A job spec checked as SubmitJob checks one.
pub(crate) async fn prepare(shared: &Shared, spec: weir_core::spec::JobSpec) -> Result<ValidJob, NotReady> {
    let mut valid = match crate::connections::validate(shared, spec).await {
        Ok(v) => v,
        Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(NotReady::Refused(s.message().into())),
        Err(s) => return Err(NotReady::Retry(s.message().into())),
    };
    shared.sandbox.check_job(&valid.spec).map_err(|r| NotReady::Refused(r.to_string()))?;
    valid.trace_parent = Some(crate::jobs::trace_for(None));
    Ok(valid)
}
