//! `ScheduleService`: create, change, pause, delete, list and describe schedules, trigger
//! one now, backfill a range. Every change is committed (with its audit record and its
//! `weir.schedules` event) before the answer; the [`crate::clock`] fires the slots.
//!
//! Changing a schedule needs write on its namespace (a schedule submits jobs there);
//! reading it needs read. Without read, a namespace's schedules are not found.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_auth::{Principal, Role, Scope};
use weir_core::audit::{AuditRecord, Outcome};
use weir_core::events::{rfc3339, schedule_event, schedule_message};
use weir_core::schedule::{Schedule, ScheduleRecord, ScheduleSpec, ScheduleState, Slot, MAX_PER_NAMESPACE};
use weir_proto::convert;
use weir_proto::v1::{self, schedule_service_server::ScheduleService};
use weir_runtime::auth::caller;

use crate::clock::{self, Entry, Key};
use crate::scheduler::ScheduleCommit;
use crate::status::{self, invalid};
use crate::{now_ms, Shared};

/// Jobs a backfill starts per commit.
const BACKFILL_CHUNK: usize = 500;
/// Fire times `describe` shows.
const NEXT_FIRES: usize = 10;

/// The ScheduleService implementation.
pub struct Schedules(pub(crate) Arc<Shared>);

/// A schedule for the wire, with its next fire times.
fn view(e: &Entry) -> v1::Schedule {
    let st = &e.record.state;
    let fires: Vec<i64> = if st.paused {
        Vec::new()
    } else {
        e.schedule.upcoming(st.cursor_ms, NEXT_FIRES).into_iter().map(|t| e.schedule.fire_ms(t)).collect()
    };
    convert::schedule(&e.record, &fires)
}

fn key_of(namespace: &str, name: &str) -> Result<Key, Status> {
    let ns = if namespace.is_empty() { weir_core::validate::DEFAULT_NAMESPACE } else { namespace };
    weir_core::validate::check_name("namespace", ns, 64).map_err(|e| invalid(e.0))?;
    weir_core::validate::check_name("schedule name", name, 64).map_err(|e| invalid(e.0))?;
    Ok((ns.to_string(), name.to_string()))
}

impl Schedules {
    /// Refuses (and audits) a caller without `role` on `namespace`; without read, the
    /// schedule is not found.
    async fn require(&self, who: &Principal, audit: &AuditRecord, key: &Key, role: Role) -> Result<(), Status> {
        let namespace = &key.0;
        if who.may(namespace, role) {
            return Ok(());
        }
        if who.may(namespace, Role::Read) {
            let status = Status::permission_denied(format!(
                "{} may not change the schedules of namespace {namespace:?} (needs {namespace}:write)",
                who.subject
            ));
            return Err(self.0.refused(audit.clone(), status).await);
        }
        let why = format!("{} may not read namespace {namespace:?}", who.subject);
        self.0.audit(audit.clone().with_outcome(Outcome::Denied, "NOT_FOUND", &why)).await;
        Err(Status::not_found(format!("schedule {:?} not found in namespace {namespace:?}", key.1)))
    }

    /// The start of every call on one schedule: this master leads, the caller and the audit
    /// record of `action`, the schedule's key — once the caller holds `role` on its namespace.
    async fn admit<T>(
        &self,
        req: &Request<T>,
        action: &str,
        (namespace, name): (&str, &str),
        role: Role,
    ) -> Result<(Principal, AuditRecord, Key), Status> {
        self.0.check_ready()?;
        let who = caller(req);
        let mut audit = crate::jobs::record(req, &who, action);
        let key = key_of(namespace, name)?;
        (audit.namespace, audit.target) = key.clone();
        self.require(&who, &audit, &key, role).await?;
        Ok((who, audit, key))
    }

    /// [`Self::locked`], a refusal audited.
    async fn locked_for(&self, key: &Key, audit: &AuditRecord) -> Result<tokio::sync::OwnedMutexGuard<Entry>, Status> {
        match self.locked(key).await {
            Ok(g) => Ok(g),
            Err(status) => Err(self.0.refused(audit.clone(), status).await),
        }
    }

    /// The schedule's entry, locked — not found if it is gone (or was deleted while this
    /// call waited for it).
    async fn locked(&self, key: &Key) -> Result<tokio::sync::OwnedMutexGuard<Entry>, Status> {
        let missing = || Status::not_found(format!("schedule {:?} not found in namespace {:?}", key.1, key.0));
        let entry = self.0.schedules.get(key).ok_or_else(missing)?;
        let g = entry.lock_owned().await;
        if g.deleted {
            return Err(missing());
        }
        Ok(g)
    }

    /// A spec from the wire, checked, with the job of its next slot checked as any
    /// submission is.
    async fn checked(&self, wire: Option<v1::ScheduleSpec>) -> Result<Schedule, Status> {
        let wire = wire.ok_or_else(|| invalid("spec is required"))?;
        let spec: ScheduleSpec = convert::schedule_spec_from_wire(&wire).map_err(invalid)?;
        let name = spec.name.clone();
        let schedule = Schedule::new(spec).map_err(|e| invalid(format!("schedule {name:?}: {e}")))?;
        let next = schedule.next_slot(now_ms()).or_else(|| schedule.upcoming(0, 1).first().copied()).unwrap_or(0);
        let job = schedule.job_for(Slot::scheduled(next)).map_err(|e| invalid(format!("schedule {name:?}: {e}")))?;
        clock::prepare(&self.0, job).await.map_err(|e| e.status(&format!("schedule {name:?}: job")))?;
        Ok(schedule)
    }

    /// Commits a change of one schedule's record (no job starts) and updates the clock.
    async fn change(
        &self,
        key: &Key,
        g: &mut Entry,
        record: ScheduleRecord,
        kind: &str,
        detail: serde_json::Value,
        audit: AuditRecord,
    ) -> Result<(), Status> {
        let message = schedule_message(kind, &key.0, &key.1, detail, now_ms());
        let commit = ScheduleCommit {
            key: key.clone(),
            record: Some(record),
            delete: false,
            starts: Vec::new(),
            cancels: Vec::new(),
            messages: vec![message],
            audit: Some(Box::new(audit)),
        };
        let result = self.0.scheduler.schedule(commit).await.map_err(status::sched);
        match clock::settle(&self.0, key, g, result).await {
            Some(_) => Ok(()),
            None => Err(Status::unavailable("the change could not be committed; try again")),
        }
    }
}

fn described(s: &Schedule, paused: bool, by: &str) -> serde_json::Value {
    serde_json::json!({
        "cron": s.spec.cron,
        "time_zone": s.spec.time_zone,
        "overlap": s.spec.overlap.as_str(),
        "paused": paused,
        "by": by,
    })
}

#[tonic::async_trait]
impl ScheduleService for Schedules {
    async fn create_schedule(
        &self,
        req: Request<v1::CreateScheduleRequest>,
    ) -> Result<Response<v1::CreateScheduleResponse>, Status> {
        let wire = req.get_ref().spec.as_ref();
        let named = (wire.map_or("", |s| s.namespace.as_str()), wire.map_or("", |s| s.name.as_str()));
        let (who, audit, key) = self.admit(&req, "CreateSchedule", named, Role::Write).await?;
        let r = req.into_inner();
        let schedule = match self.checked(r.spec).await {
            Ok(s) => s,
            Err(status) => return Err(self.0.refused(audit, status).await),
        };
        if self.0.schedules.count(&key.0) >= MAX_PER_NAMESPACE {
            let status = Status::resource_exhausted(format!(
                "namespace {:?} holds {MAX_PER_NAMESPACE} schedules, the most it may",
                key.0
            ));
            return Err(self.0.refused(audit, status).await);
        }
        let now = now_ms();
        let record = ScheduleRecord {
            spec: schedule.spec.clone(),
            state: ScheduleState::new(now, r.paused, r.note),
            created_ms: now,
            updated_ms: now,
            updated_by: who.subject.clone(),
        };
        let detail = described(&schedule, r.paused, &who.subject);
        let exists = || Status::already_exists(format!("schedule {:?} already exists in namespace {:?}", key.1, key.0));
        let entry = Arc::new(tokio::sync::Mutex::new(Entry { schedule, record: record.clone(), deleted: false }));
        let mut g = entry.clone().lock_owned().await;
        if !self.0.schedules.insert_new(key.clone(), entry) {
            return Err(self.0.refused(audit, exists()).await);
        }
        if let Err(status) = self.change(&key, &mut g, record, schedule_event::CREATED, detail, audit).await {
            g.deleted = true;
            self.0.schedules.remove(&key);
            return Err(status);
        }
        tracing::info!(namespace = %key.0, name = %key.1, by = %who.subject, "schedule created");
        Ok(Response::new(v1::CreateScheduleResponse { schedule: Some(view(&g)) }))
    }

    async fn update_schedule(
        &self,
        req: Request<v1::UpdateScheduleRequest>,
    ) -> Result<Response<v1::UpdateScheduleResponse>, Status> {
        let wire = req.get_ref().spec.as_ref();
        let named = (wire.map_or("", |s| s.namespace.as_str()), wire.map_or("", |s| s.name.as_str()));
        let (who, audit, key) = self.admit(&req, "UpdateSchedule", named, Role::Write).await?;
        let r = req.into_inner();
        let schedule = match self.checked(r.spec).await {
            Ok(s) => s,
            Err(status) => return Err(self.0.refused(audit, status).await),
        };
        let mut g = self.locked_for(&key, &audit).await?;
        let mut record = g.record.clone();
        let old = &g.schedule.spec;
        if (old.cron.as_str(), old.time_zone.as_str(), &old.start)
            != (schedule.spec.cron.as_str(), schedule.spec.time_zone.as_str(), &schedule.spec.start)
        {
            // New times: slots are counted from now, not caught up from the old ones.
            record.state.cursor_ms = record.state.cursor_ms.max(now_ms());
        }
        record.spec = schedule.spec.clone();
        record.updated_ms = now_ms();
        record.updated_by = who.subject.clone();
        let detail = described(&schedule, record.state.paused, &who.subject);
        let previous = std::mem::replace(&mut g.schedule, schedule);
        if let Err(status) = self.change(&key, &mut g, record, schedule_event::UPDATED, detail, audit).await {
            g.schedule = previous;
            return Err(status);
        }
        tracing::info!(namespace = %key.0, name = %key.1, by = %who.subject, "schedule updated");
        Ok(Response::new(v1::UpdateScheduleResponse { schedule: Some(view(&g)) }))
    }

    async fn pause_schedule(
        &self,
        req: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::PauseScheduleResponse>, Status> {
        let r = self.set_paused(req.map(|r| (r.namespace, r.name, r.note)), true).await?;
        Ok(Response::new(v1::PauseScheduleResponse { schedule: Some(r) }))
    }

    async fn unpause_schedule(
        &self,
        req: Request<v1::UnpauseScheduleRequest>,
    ) -> Result<Response<v1::UnpauseScheduleResponse>, Status> {
        let r = self.set_paused(req.map(|r| (r.namespace, r.name, r.note)), false).await?;
        Ok(Response::new(v1::UnpauseScheduleResponse { schedule: Some(r) }))
    }

    async fn delete_schedule(
        &self,
        req: Request<v1::DeleteScheduleRequest>,
    ) -> Result<Response<v1::DeleteScheduleResponse>, Status> {
        let named = (req.get_ref().namespace.as_str(), req.get_ref().name.as_str());
        let (who, audit, key) = self.admit(&req, "DeleteSchedule", named, Role::Write).await?;
        // One the clock could not load (its stored spec no longer checks) can be deleted too.
        let mut g = if self.0.schedules.is_unloaded(&key) { None } else { Some(self.locked_for(&key, &audit).await?) };
        let message =
            schedule_message(schedule_event::DELETED, &key.0, &key.1, serde_json::json!({"by": who.subject}), now_ms());
        let commit = ScheduleCommit {
            key: key.clone(),
            record: None,
            delete: true,
            starts: Vec::new(),
            cancels: Vec::new(),
            messages: vec![message],
            audit: Some(Box::new(audit)),
        };
        self.0.scheduler.schedule(commit).await.map_err(status::sched)?;
        if let Some(g) = g.as_mut() {
            g.deleted = true;
        }
        self.0.schedules.remove(&key);
        tracing::info!(namespace = %key.0, name = %key.1, by = %who.subject, "schedule deleted");
        Ok(Response::new(v1::DeleteScheduleResponse {}))
    }

    async fn list_schedules(
        &self,
        req: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        self.0.check_ready()?;
        let who = caller(&req);
        let audit = crate::jobs::record(&req, &who, "ListSchedules");
        let r = req.into_inner();
        let entries = if r.namespace.is_empty() {
            match who.grants.scope(Role::Read) {
                Scope::All => self.0.schedules.list(|_| true),
                Scope::Only(set) => self.0.schedules.list(|ns| set.contains(ns)),
            }
        } else {
            weir_core::validate::check_name("namespace", &r.namespace, 64).map_err(|e| invalid(e.0))?;
            if !who.may(&r.namespace, Role::Read) {
                let mut audit = audit;
                audit.namespace = r.namespace.clone();
                let why = format!("{} may not read namespace {:?}", who.subject, r.namespace);
                self.0.audit(audit.with_outcome(Outcome::Denied, "NOT_FOUND", &why)).await;
                return Err(Status::not_found(format!(
                    "namespace {:?} has no schedules {} may see",
                    r.namespace, who.subject
                )));
            }
            self.0.schedules.list(|ns| ns == r.namespace)
        };
        let mut schedules = Vec::with_capacity(entries.len());
        for e in entries {
            schedules.push(view(&*e.lock().await));
        }
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn describe_schedule(
        &self,
        req: Request<v1::DescribeScheduleRequest>,
    ) -> Result<Response<v1::DescribeScheduleResponse>, Status> {
        let named = (req.get_ref().namespace.as_str(), req.get_ref().name.as_str());
        let (_, _, key) = self.admit(&req, "DescribeSchedule", named, Role::Read).await?;
        let g = self.locked(&key).await?;
        Ok(Response::new(v1::DescribeScheduleResponse { schedule: Some(view(&g)) }))
    }

    async fn trigger_schedule(
        &self,
        req: Request<v1::TriggerScheduleRequest>,
    ) -> Result<Response<v1::TriggerScheduleResponse>, Status> {
        let named = (req.get_ref().namespace.as_str(), req.get_ref().name.as_str());
        let (who, audit, key) = self.admit(&req, "TriggerSchedule", named, Role::Write).await?;
        let mut g = self.locked_for(&key, &audit).await?;
        let now = now_ms();
        let slot = Slot::manual(now);
        let mut state = g.record.state.clone();
        state.running = clock::still_running(&self.0, &state.running).await;
        // Slots already waiting go first.
        let busy = !state.running.is_empty() || !state.buffered.is_empty();
        let mut decisions = Vec::new();
        state.offer(&g.schedule, slot, busy, now, &mut decisions);
        let mut record = g.record.clone();
        record.state = state;
        let result = clock::commit(&self.0, &g.schedule, record, decisions, Vec::new(), Some(Box::new(audit))).await;
        clock::settle(&self.0, &key, &mut g, result)
            .await
            .ok_or_else(|| Status::unavailable("the run could not be committed; try again"))?;
        // What became of the slot, as the schedule remembers it (started — new or found
        // again —, waiting, or skipped with the reason).
        let run = g.record.state.recent.iter().rev().find(|r| r.slot == slot);
        let outcome = run.map_or("skipped", |r| r.outcome.as_str());
        let job_id = run.and_then(|r| r.job_id).map(|id| id.to_string());
        tracing::info!(namespace = %key.0, name = %key.1, outcome, by = %who.subject, "schedule triggered");
        Ok(Response::new(v1::TriggerScheduleResponse {
            schedule: Some(view(&g)),
            outcome: outcome.into(),
            job_id: job_id.unwrap_or_default(),
        }))
    }

    async fn backfill_schedule(
        &self,
        req: Request<v1::BackfillScheduleRequest>,
    ) -> Result<Response<v1::BackfillScheduleResponse>, Status> {
        let named = (req.get_ref().namespace.as_str(), req.get_ref().name.as_str());
        let (who, audit, key) = self.admit(&req, "BackfillSchedule", named, Role::Write).await?;
        let r = req.into_inner();
        let now = now_ms();
        let range = match (&r.start, &r.end) {
            (Some(_), Some(e)) if convert::millis(e) > now => Err(invalid(format!(
                "the backfill's end {} is in the future; a backfill covers past slots (the schedule fires the rest)",
                rfc3339(convert::millis(e))
            ))),
            (Some(s), Some(e)) => Ok((convert::millis(s), convert::millis(e))),
            _ => Err(invalid("a backfill needs start and end")),
        };
        let g = self.locked_for(&key, &audit).await?;
        let slots = match range.and_then(|(s, e)| {
            g.schedule.slots_between(s, e, self.0.config.schedule_max_backfill).map_err(invalid).map(|v| (s, e, v))
        }) {
            Ok(v) => v,
            Err(status) => return Err(self.0.refused(audit, status).await),
        };
        let (start, end, slots) = slots;
        // Each slot's job, or the one it already has.
        let mut ids: Vec<(Slot, uuid::Uuid)> = Vec::new();
        let mut fresh: Vec<(Slot, weir_core::validate::ValidJob)> = Vec::new();
        for t in &slots {
            let slot = Slot::scheduled(*t);
            match clock::job(&self.0, &g.schedule, slot).await {
                Ok(clock::Prepared::Exists(id)) => ids.push((slot, id)),
                Ok(clock::Prepared::New(job)) => fresh.push((slot, *job)),
                Err(e) => {
                    let status = e.status(&format!("the job of slot {}", rfc3339(*t)));
                    return Err(self.0.refused(audit, status).await);
                }
            }
        }
        let existing = ids.len();
        let mut started = 0usize;
        let mut audit = Some(Box::new(audit));
        loop {
            let chunk: Vec<_> = fresh.drain(..fresh.len().min(BACKFILL_CHUNK)).collect();
            let last = fresh.is_empty();
            let messages = if last {
                vec![schedule_message(
                    schedule_event::BACKFILLED,
                    &key.0,
                    &key.1,
                    serde_json::json!({
                        "start": rfc3339(start), "end": rfc3339(end), "slots": slots.len(),
                        "started": started + chunk.len(), "existing": existing, "by": who.subject,
                    }),
                    now_ms(),
                )]
            } else {
                Vec::new()
            };
            // The audit record goes with the last commit, which makes the backfill whole.
            let commit = ScheduleCommit {
                key: key.clone(),
                record: None,
                delete: false,
                starts: chunk,
                cancels: Vec::new(),
                messages,
                audit: if last { audit.take() } else { None },
            };
            let done = self.0.scheduler.schedule(commit).await.map_err(status::sched)?;
            for (slot, id, created) in done.jobs {
                started += usize::from(created);
                ids.push((slot, id));
            }
            if last {
                break;
            }
        }
        ids.sort_by_key(|(slot, _)| slot.time_ms);
        tracing::info!(namespace = %key.0, name = %key.1, slots = slots.len(), started, existing, by = %who.subject, "schedule backfilled");
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Response::new(v1::BackfillScheduleResponse {
            slots: n(slots.len()),
            started: n(started),
            existing: n(slots.len() - started),
            job_ids: ids.into_iter().map(|(_, id)| id.to_string()).collect(),
        }))
    }
}

impl Schedules {
    async fn set_paused(&self, req: Request<(String, String, String)>, paused: bool) -> Result<v1::Schedule, Status> {
        let action = if paused { "PauseSchedule" } else { "UnpauseSchedule" };
        let named = (req.get_ref().0.as_str(), req.get_ref().1.as_str());
        let (who, audit, key) = self.admit(&req, action, named, Role::Write).await?;
        let (_, _, note) = req.into_inner();
        let mut g = self.locked_for(&key, &audit).await?;
        let mut record = g.record.clone();
        record.state.set_paused(paused, note.clone(), now_ms());
        record.updated_ms = now_ms();
        record.updated_by = who.subject.clone();
        let kind = if paused { schedule_event::PAUSED } else { schedule_event::UNPAUSED };
        let detail = serde_json::json!({"note": note, "by": who.subject});
        self.change(&key, &mut g, record, kind, detail, audit).await?;
        tracing::info!(namespace = %key.0, name = %key.1, paused, by = %who.subject, "schedule paused or unpaused");
        Ok(view(&g))
    }
}
