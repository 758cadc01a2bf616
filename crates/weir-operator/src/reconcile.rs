//! The operator's decisions, free of I/O: what to ask the master for an object, what
//! status follows from the answer, when to look again, and what a deletion must undo.
//! `controller` does the asking and the writing.

use std::time::Duration;

use kube::ResourceExt;
use tonic::Code;
use weir_proto::v1;

use crate::crd::{Condition, IngestionJob, IngestionJobStatus, TaskCounts};

/// What the master must be asked about an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Not submitted yet: submit this spec (idempotent, its run id is the object's uid).
    Submit(Box<weir_core::spec::JobSpec>),
    /// Submitted: read the job.
    Follow(String),
    /// The object cannot become a job; the message says why.
    Refuse(String),
}

/// What the master answered.
#[derive(Debug, Clone)]
pub enum MasterView {
    /// The job, as submitted or read.
    Job(Box<v1::Job>),
    /// A refusal with its gRPC code and message (an invalid spec, a missing permission).
    Refused(Code, String),
    /// The master could not be reached or failed; worth another try.
    Unreachable(String),
}

/// What deleting an object must do first.
#[derive(Debug, Clone, PartialEq)]
pub enum Cleanup {
    /// Cancel this job.
    Cancel(String),
    /// The status names no job, yet one may have been submitted before the status was
    /// written: find the job with this run id and cancel it.
    FindAndCancel { namespace: String, name: String, run_id: String },
    /// Nothing runs: the job finished, or the object never became one.
    Nothing,
}

/// Job states in which nothing more happens.
pub const TERMINAL: [&str; 4] = ["Succeeded", "Failed", "Cancelled", "Compensated"];
/// The state of an object the master refused.
pub const INVALID: &str = "Invalid";
/// The state of an object whose job the master no longer has (purged after its
/// retention period, or a store that was reset).
pub const LOST: &str = "Lost";
/// The message of a finished job the master purged after its retention period.
pub const PURGED: &str = "the master purged this finished job after its retention period; its outcome is kept here";

/// States after which the operator has nothing more to do.
fn settled(state: &str) -> bool {
    TERMINAL.contains(&state) || state == INVALID || state == LOST
}

/// The Weir job an object stands for: its spec with the object's namespace as the Weir
/// namespace, its name as the job name and its uid as the run id.
pub fn job_spec(obj: &IngestionJob) -> Result<weir_core::spec::JobSpec, String> {
    let uid = obj.uid().ok_or("the object has no uid yet")?;
    let mut value = serde_json::to_value(&obj.spec).map_err(|e| e.to_string())?;
    let fields = value.as_object_mut().ok_or("the spec is not an object")?;
    fields.insert("namespace".into(), obj.namespace().unwrap_or_else(|| "default".into()).into());
    fields.insert("name".into(), obj.name_any().into());
    fields.insert("run_id".into(), uid.into());
    serde_json::from_value(value).map_err(|e| format!("spec: {e}"))
}

/// What to ask the master for `obj`.
pub fn plan(obj: &IngestionJob) -> Plan {
    if let Some(job_id) = obj.status.as_ref().and_then(|s| s.job_id.clone()) {
        return Plan::Follow(job_id);
    }
    // Refused as it stands; an edit (a newer generation) is submitted again: nothing was
    // created, so the uid is still free as the run id.
    let status = obj.status.as_ref();
    if status.and_then(|s| s.state.as_deref()) == Some(INVALID)
        && obj.metadata.generation <= status.and_then(|s| s.observed_generation)
    {
        return Plan::Refuse(status.and_then(|s| s.message.clone()).unwrap_or_default());
    }
    match job_spec(obj) {
        Ok(spec) => Plan::Submit(Box::new(spec)),
        Err(e) => Plan::Refuse(e),
    }
}

/// The status `obj` should have after the master's answer, at time `now` (RFC 3339).
/// Conditions keep their transition time while their status stays.
pub fn status(obj: &IngestionJob, view: &MasterView, now: &str) -> IngestionJobStatus {
    let old = obj.status.clone().unwrap_or_default();
    let mut next = old.clone();
    let cond = |type_: &str, status: &str, reason: &str, message: &str| condition(type_, status, reason, message, now);
    let mut conditions: Vec<Condition> = Vec::new();
    match view {
        MasterView::Job(job) => {
            let state = state_name(job.state);
            next.job_id = Some(job.id.clone());
            next.state = Some(state.to_string());
            next.tasks = Some(TaskCounts {
                total: job.tasks_total,
                succeeded: job.tasks_succeeded,
                failed: job.tasks_failed,
                running: job.tasks_running,
            });
            next.message = (!job.error.is_empty()).then(|| job.error.clone());
            if old.job_id.is_none() {
                next.observed_generation = obj.metadata.generation;
            }
            conditions.push(cond("Submitted", "True", "Accepted", &format!("job {}", job.id)));
            let (complete, failed) = match state {
                "Succeeded" => ("True", "False"),
                "Failed" | "Cancelled" | "Compensated" => ("False", "True"),
                _ => ("Unknown", "Unknown"),
            };
            conditions.push(cond("Complete", complete, state, ""));
            conditions.push(cond("Failed", failed, state, next.message.as_deref().unwrap_or("")));
        }
        // A job that ended and then went from the master (its retention purge): the
        // object keeps the outcome it recorded.
        MasterView::Refused(Code::NotFound, _)
            if old.job_id.is_some() && old.state.as_deref().is_some_and(|s| TERMINAL.contains(&s)) =>
        {
            next.message = Some(PURGED.into());
            return next;
        }
        MasterView::Refused(code, message) => {
            let reason = match code {
                Code::NotFound if old.job_id.is_some() => LOST,
                Code::InvalidArgument | Code::NotFound => "Invalid",
                Code::PermissionDenied | Code::Unauthenticated => "Forbidden",
                Code::ResourceExhausted => "Limited",
                _ => "Refused",
            };
            next.message = Some(message.clone());
            if reason == INVALID {
                next.state = Some(INVALID.into());
                next.observed_generation = obj.metadata.generation;
            } else if reason == LOST {
                next.state = Some(LOST.into());
            }
            // Refused a read of a job it did submit (a permission withdrawn): it was
            // submitted all the same; the message says what is in the way.
            if old.job_id.is_none() || reason == LOST {
                conditions.push(cond("Submitted", "False", reason, message));
            }
        }
        MasterView::Unreachable(message) => {
            next.message = Some(format!("the master is unreachable: {message}"));
            if old.job_id.is_none() {
                conditions.push(cond("Submitted", "Unknown", "MasterUnavailable", message));
            }
        }
    }
    // An edit after submission is not applied; say so rather than ignore it quietly.
    let submitted = next.observed_generation;
    if let (Some(s), Some(g), true) = (submitted, obj.metadata.generation, next.job_id.is_some()) {
        if g > s {
            conditions.push(cond(
                "SpecIgnored",
                "True",
                "SubmittedSpecIsFinal",
                &format!(
                    "the spec changed after it was submitted (generation {g}, submitted {s}); the job runs the \
                     submitted spec: delete this IngestionJob and create a new one to run the new spec"
                ),
            ));
        }
    }
    next.conditions = settle(&old.conditions, conditions, &["Submitted", "Complete", "Failed", "SpecIgnored"]);
    next
}

/// A condition decided at `now`.
pub fn condition(type_: &str, status: &str, reason: &str, message: &str, now: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now.into(),
    }
}

/// The conditions after `decided`: one whose status stays keeps its transition time, one
/// not decided now stays as it was; in `order`.
pub fn settle(old: &[Condition], mut decided: Vec<Condition>, order: &[&str]) -> Vec<Condition> {
    for c in old {
        if !decided.iter().any(|n| n.type_ == c.type_) {
            decided.push(c.clone());
        }
    }
    for c in &mut decided {
        if let Some(prev) = old.iter().find(|p| p.type_ == c.type_ && p.status == c.status) {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
    decided.sort_by_key(|c| order.iter().position(|t| *t == c.type_).unwrap_or(usize::MAX));
    decided
}

/// When to look at the object again: after `resync` while the job can still change or
/// the master could not answer, never (until the object changes) once nothing will.
pub fn requeue(status: &IngestionJobStatus, resync: Duration) -> Option<Duration> {
    match status.state.as_deref() {
        Some(s) if settled(s) => None,
        _ if status.conditions.iter().any(|c| c.type_ == "Submitted" && c.reason == "Forbidden") => {
            // A permission may be granted later; no need to ask often.
            Some(resync * 12)
        }
        _ => Some(resync),
    }
}

/// What a deletion of `obj` must do before the object goes.
pub fn cleanup(obj: &IngestionJob) -> Cleanup {
    let status = obj.status.clone().unwrap_or_default();
    match (&status.job_id, status.state.as_deref()) {
        (_, Some(s)) if settled(s) => Cleanup::Nothing,
        (Some(id), _) => Cleanup::Cancel(id.clone()),
        (None, _) => match obj.uid() {
            Some(run_id) => Cleanup::FindAndCancel {
                namespace: obj.namespace().unwrap_or_else(|| "default".into()),
                name: obj.name_any(),
                run_id,
            },
            None => Cleanup::Nothing,
        },
    }
}

/// A job state's name as the status shows it.
pub fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state).unwrap_or(v1::JobState::Unspecified) {
        v1::JobState::Unspecified => "Unknown",
        v1::JobState::Pending => "Pending",
        v1::JobState::Running => "Running",
        v1::JobState::Paused => "Paused",
        v1::JobState::Succeeded => "Succeeded",
        v1::JobState::Failed => "Failed",
        v1::JobState::Cancelled => "Cancelled",
        v1::JobState::Compensating => "Compensating",
        v1::JobState::Compensated => "Compensated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IngestionJobSpec, Step};

    fn object(status: Option<IngestionJobStatus>) -> IngestionJob {
        let mut obj = IngestionJob::new(
            "orders",
            IngestionJobSpec {
                priority: 5,
                steps: vec![Step {
                    id: "fetch".into(),
                    kind: "noop".into(),
                    queue: "api".into(),
                    ..Default::default()
                }],
                timeout: Some("30m".into()),
                ..Default::default()
            },
        );
        obj.metadata.namespace = Some("finance".into());
        obj.metadata.uid = Some("7f0e6c1a-0000-4000-8000-000000000001".into());
        obj.metadata.generation = Some(1);
        obj.status = status;
        obj
    }

    fn job(state: v1::JobState, error: &str) -> MasterView {
        MasterView::Job(Box::new(v1::Job {
            id: "j-1".into(),
            state: state as i32,
            error: error.into(),
            tasks_total: 3,
            tasks_succeeded: 1,
            tasks_running: 1,
            ..Default::default()
        }))
    }

    fn condition<'a>(s: &'a IngestionJobStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).expect("the condition is there")
    }

    #[test]
    fn an_object_becomes_a_job_named_by_its_metadata() {
        let spec = job_spec(&object(None)).expect("a valid spec");
        assert_eq!(
            (spec.namespace.as_str(), spec.name.as_str(), spec.run_id.as_str()),
            ("finance", "orders", "7f0e6c1a-0000-4000-8000-000000000001")
        );
        assert_eq!(spec.priority, 5);
        assert_eq!(spec.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(spec.steps[0].id, "fetch");
        assert!(matches!(plan(&object(None)), Plan::Submit(_)));
    }

    #[test]
    fn a_spec_the_job_model_refuses_is_refused_by_field() {
        let mut obj = object(None);
        obj.spec.steps[0].retry = Some(serde_json::json!({"max_atempts": 3}));
        match plan(&obj) {
            Plan::Refuse(msg) => assert!(msg.contains("max_atempts"), "{msg}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        obj.spec.steps[0].retry = None;
        obj.spec.timeout = Some("soon".into());
        assert!(matches!(plan(&obj), Plan::Refuse(m) if m.contains("soon")));
        obj.metadata.uid = None;
        obj.spec.timeout = None;
        assert!(matches!(plan(&obj), Plan::Refuse(m) if m.contains("uid")));
    }

    #[test]
    fn a_submitted_object_is_followed_not_submitted_again() {
        let status = IngestionJobStatus { job_id: Some("j-1".into()), ..Default::default() };
        assert_eq!(plan(&object(Some(status))), Plan::Follow("j-1".into()));
    }

    #[test]
    fn the_status_follows_the_job() {
        let obj = object(None);
        let s = status(&obj, &job(v1::JobState::Running, ""), "2026-12-07T10:00:00Z");
        assert_eq!(s.job_id.as_deref(), Some("j-1"));
        assert_eq!(s.state.as_deref(), Some("Running"));
        assert_eq!(s.tasks, Some(TaskCounts { total: 3, succeeded: 1, failed: 0, running: 1 }));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(condition(&s, "Submitted").status, "True");
        assert_eq!(condition(&s, "Complete").status, "Unknown");
        assert_eq!(requeue(&s, Duration::from_secs(5)), Some(Duration::from_secs(5)));

        // Later: succeeded. Submitted keeps its time; Complete turns True now.
        let mut obj = obj;
        obj.metadata.generation = Some(2);
        obj.status = Some(s);
        let done = status(&obj, &job(v1::JobState::Succeeded, ""), "2026-12-07T10:05:00Z");
        assert_eq!(condition(&done, "Submitted").last_transition_time, "2026-12-07T10:00:00Z");
        assert_eq!(condition(&done, "Complete").status, "True");
        assert_eq!(condition(&done, "Complete").last_transition_time, "2026-12-07T10:05:00Z");
        assert_eq!(condition(&done, "Failed").status, "False");
        assert_eq!(done.observed_generation, Some(1), "the submitted generation stays");
        let ignored = condition(&done, "SpecIgnored");
        assert_eq!((ignored.status.as_str(), ignored.reason.as_str()), ("True", "SubmittedSpecIsFinal"));
        assert!(ignored.message.contains("generation 2, submitted 1"), "{}", ignored.message);
        assert_eq!(requeue(&done, Duration::from_secs(5)), None);
        // Nothing changed: the same status, so no write.
        obj.status = Some(done.clone());
        assert_eq!(status(&obj, &job(v1::JobState::Succeeded, ""), "2026-12-07T11:00:00Z"), done);
    }

    #[test]
    fn a_failed_job_says_why() {
        let s = status(&object(None), &job(v1::JobState::Failed, "step fetch: HTTP 500"), "t");
        assert_eq!(s.message.as_deref(), Some("step fetch: HTTP 500"));
        assert_eq!(condition(&s, "Failed").status, "True");
        assert_eq!(condition(&s, "Failed").message, "step fetch: HTTP 500");
        assert_eq!(condition(&s, "Complete").status, "False");
    }

    #[test]
    fn refusals_are_reported_and_only_invalid_specs_are_final() {
        let s =
            status(&object(None), &MasterView::Refused(Code::InvalidArgument, "step fetch: unknown kind".into()), "t");
        assert_eq!(s.state.as_deref(), Some(INVALID));
        assert_eq!(condition(&s, "Submitted").reason, "Invalid");
        assert_eq!(requeue(&s, Duration::from_secs(5)), None);
        assert!(matches!(plan(&object(Some(s))), Plan::Refuse(m) if m.contains("unknown kind")));

        let s = status(&object(None), &MasterView::Refused(Code::PermissionDenied, "needs finance:write".into()), "t");
        assert_eq!(s.state, None);
        assert_eq!(condition(&s, "Submitted").reason, "Forbidden");
        assert_eq!(requeue(&s, Duration::from_secs(5)), Some(Duration::from_secs(60)));
        assert!(matches!(plan(&object(Some(s))), Plan::Submit(_)), "submitted again once allowed");
    }

    #[test]
    fn an_unreachable_master_is_shown_and_retried_without_losing_the_job() {
        let s = status(&object(None), &MasterView::Unreachable("connection refused".into()), "t");
        assert_eq!(condition(&s, "Submitted").status, "Unknown");
        assert_eq!(requeue(&s, Duration::from_secs(5)), Some(Duration::from_secs(5)));

        let running = status(&object(None), &job(v1::JobState::Running, ""), "t");
        let s = status(&object(Some(running)), &MasterView::Unreachable("connection refused".into()), "t2");
        assert_eq!(s.job_id.as_deref(), Some("j-1"));
        assert_eq!(condition(&s, "Submitted").status, "True");
        assert!(s.message.as_deref().is_some_and(|m| m.contains("unreachable")));
    }

    #[test]
    fn an_edited_invalid_object_is_submitted_again() {
        let refused = status(&object(None), &MasterView::Refused(Code::InvalidArgument, "bad kind".into()), "t");
        let mut obj = object(Some(refused));
        assert!(matches!(plan(&obj), Plan::Refuse(_)), "unchanged: refused without asking");
        obj.metadata.generation = Some(2);
        assert!(matches!(plan(&obj), Plan::Submit(_)), "edited: tried again");
    }

    #[test]
    fn a_withdrawn_read_permission_does_not_unsay_the_submission() {
        let running = status(&object(None), &job(v1::JobState::Running, ""), "t");
        let s = status(
            &object(Some(running)),
            &MasterView::Refused(Code::PermissionDenied, "needs finance:read".into()),
            "t2",
        );
        assert_eq!(condition(&s, "Submitted").status, "True");
        assert_eq!(s.message.as_deref(), Some("needs finance:read"));
        assert_eq!(s.state.as_deref(), Some("Running"));
    }

    #[test]
    fn a_job_the_master_no_longer_has_is_lost_not_resubmitted() {
        let running = status(&object(None), &job(v1::JobState::Running, ""), "t");
        let s = status(&object(Some(running)), &MasterView::Refused(Code::NotFound, "no job j-1".into()), "t2");
        assert_eq!(s.state.as_deref(), Some(LOST));
        assert_eq!(s.job_id.as_deref(), Some("j-1"));
        assert_eq!(requeue(&s, Duration::from_secs(5)), None);
        assert_eq!(cleanup(&object(Some(s))), Cleanup::Nothing);
    }

    #[test]
    fn a_finished_job_purged_by_retention_keeps_its_outcome() {
        let done = status(&object(None), &job(v1::JobState::Succeeded, ""), "t");
        let s = status(&object(Some(done.clone())), &MasterView::Refused(Code::NotFound, "no job j-1".into()), "t2");
        assert_eq!(s.state.as_deref(), Some("Succeeded"));
        assert_eq!(s.conditions, done.conditions, "Complete stays True, Submitted stays True");
        assert_eq!(s.message.as_deref(), Some(PURGED));
        assert_eq!(requeue(&s, Duration::from_secs(5)), None);
    }

    #[test]
    fn deleting_cancels_what_may_run() {
        assert_eq!(
            cleanup(&object(None)),
            Cleanup::FindAndCancel {
                namespace: "finance".into(),
                name: "orders".into(),
                run_id: "7f0e6c1a-0000-4000-8000-000000000001".into()
            }
        );
        let running = status(&object(None), &job(v1::JobState::Running, ""), "t");
        assert_eq!(cleanup(&object(Some(running))), Cleanup::Cancel("j-1".into()));
        let done = status(&object(None), &job(v1::JobState::Succeeded, ""), "t");
        assert_eq!(cleanup(&object(Some(done))), Cleanup::Nothing);
        let invalid = status(&object(None), &MasterView::Refused(Code::InvalidArgument, "bad".into()), "t");
        assert_eq!(cleanup(&object(Some(invalid))), Cleanup::Nothing);
    }
}
