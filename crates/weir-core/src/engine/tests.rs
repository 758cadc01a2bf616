//! Engine rules, exercised without a clock or a database.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::spec::{CompensationSpec, JobSpec, RetryPolicy, StepSpec, StepTimeouts};
use crate::validate::validate;

/// The engine plus a map standing in for the store, so reloads can be tested.
struct Harness {
    engine: Engine,
    jobs: HashMap<Uuid, JobRecord>,
    tasks: HashMap<Uuid, TaskRecord>,
    events: Vec<EventRecord>,
}

fn counter_ids() -> Box<dyn FnMut() -> Uuid + Send> {
    let mut n = 0u128;
    Box::new(move || {
        n += 1;
        Uuid::from_u128(n)
    })
}

impl Harness {
    fn new() -> Self {
        Self::with(EngineConfig::default())
    }
    fn with(cfg: EngineConfig) -> Self {
        Harness { engine: Engine::new(cfg, counter_ids()), jobs: HashMap::new(), tasks: HashMap::new(), events: vec![] }
    }
    fn commit(&mut self, now: Millis) -> Changes {
        let c = self.engine.take_changes(now);
        for j in c.new_jobs.iter().chain(&c.jobs) {
            self.jobs.insert(j.id, j.clone());
        }
        for t in &c.tasks {
            self.tasks.insert(t.id, t.clone());
        }
        for d in &c.deleted_tasks {
            self.tasks.remove(d);
        }
        self.events.extend(c.events.iter().cloned());
        c
    }
    fn submit(&mut self, spec: JobSpec, now: Millis) -> Uuid {
        let (id, created) = self.engine.submit(validate(spec).expect("valid spec"), now);
        assert!(created);
        self.commit(now);
        id
    }
    fn acquire(&mut self, queue: &str, max: u32, now: Millis) -> Vec<Lease> {
        let l = self.engine.acquire(queue, "w1", max, now);
        self.commit(now);
        l
    }
    fn steps(leases: &[Lease]) -> Vec<&str> {
        let mut v: Vec<&str> = leases.iter().map(|l| l.step_id.as_str()).collect();
        v.sort();
        v
    }
    fn complete(&mut self, l: &Lease, now: Millis) {
        self.engine
            .complete(l.task_id, l.fence, Some(format!("{{\"step\":\"{}\"}}", l.step_id)), now)
            .expect("complete");
        self.commit(now);
    }
    fn state(&self, job: Uuid) -> JobState {
        self.jobs[&job].state
    }
    fn task_state(&self, job: Uuid, step: &str) -> TaskState {
        self.tasks.values().find(|t| t.job_id == job && t.step_id == step).expect("task").state
    }
    fn event_kinds(&self, job: Uuid) -> Vec<&'static str> {
        self.events.iter().filter(|e| e.job_id == job).map(|e| e.kind).collect()
    }
    /// A job's records as the store holds them.
    fn stored(&self, job: Uuid) -> (JobRecord, Vec<TaskRecord>) {
        (self.jobs[&job].clone(), self.tasks.values().filter(|t| t.job_id == job).cloned().collect())
    }
    fn reload(&mut self, now: Millis) {
        let mut e = Engine::new(EngineConfig::default(), counter_ids_from(1_000_000));
        let live: Vec<JobRecord> = self.jobs.values().filter(|j| !j.state.is_terminal()).cloned().collect();
        let ids: Vec<Uuid> = live.iter().map(|j| j.id).collect();
        let tasks = self.tasks.values().filter(|t| ids.contains(&t.job_id)).cloned().collect();
        e.load(live, tasks, now);
        self.engine = e;
    }
}

impl Harness {
    /// Reads parked jobs back the way the store does when the engine asks: pending jobs
    /// from the best parked rank on, in rank order, as many as fit (at least one).
    fn page(&mut self, now: Millis) {
        let Some((from, room)) = self.engine.page_wanted() else { return };
        let mut pending: Vec<&JobRecord> =
            self.jobs.values().filter(|j| j.state == JobState::Pending && JobRank::of(j) >= from).collect();
        pending.sort_by_key(|j| JobRank::of(j));
        let (mut jobs, mut tasks, mut next) = (Vec::new(), Vec::new(), None);
        for j in pending {
            let mine: Vec<TaskRecord> = self.tasks.values().filter(|t| t.job_id == j.id).cloned().collect();
            if !jobs.is_empty() && tasks.len() + mine.len() > room {
                next = Some(JobRank::of(j));
                break;
            }
            jobs.push(j.clone());
            tasks.extend(mine);
        }
        self.engine.page_in(jobs, tasks, next, now);
    }
}

fn counter_ids_from(start: u128) -> Box<dyn FnMut() -> Uuid + Send> {
    let mut n = start;
    Box::new(move || {
        n += 1;
        Uuid::from_u128(n)
    })
}

fn step(id: &str, queue: &str, deps: &[&str]) -> StepSpec {
    StepSpec {
        id: id.into(),
        kind: "noop".into(),
        queue: queue.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

fn job(name: &str, steps: Vec<StepSpec>) -> JobSpec {
    JobSpec { name: name.into(), steps, ..Default::default() }
}

fn fast_retry(max: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: max,
        initial_interval: Some(Duration::from_millis(100)),
        backoff_coefficient: 2.0,
        max_interval: Some(Duration::from_secs(10)),
        jitter: 0.0,
        non_retryable_error_kinds: vec!["bad_input".into()],
    }
}

fn failure(kind: &str, retryable: bool) -> Failure {
    Failure { kind: kind.into(), message: "boom".into(), retryable }
}

#[test]
fn dag_runs_in_order_with_parallel_branches() {
    let mut h = Harness::new();
    let id = h.submit(
        job(
            "d",
            vec![
                step("a", "api", &[]),
                step("b", "api", &["a"]),
                step("c", "api", &["a"]),
                step("d", "batch", &["b", "c"]),
            ],
        ),
        0,
    );
    assert_eq!(h.state(id), JobState::Pending);
    let l = h.acquire("api", 10, 1);
    assert_eq!(Harness::steps(&l), vec!["a"]);
    assert_eq!(h.state(id), JobState::Running);
    assert!(h.acquire("api", 10, 2).is_empty(), "b and c wait for a");
    h.complete(&l[0], 3);
    let l = h.acquire("api", 10, 4);
    assert_eq!(Harness::steps(&l), vec!["b", "c"], "independent branches run in parallel");
    assert!(h.acquire("batch", 10, 4).is_empty());
    h.complete(&l[0], 5);
    assert!(h.acquire("batch", 10, 5).is_empty(), "d waits for both branches");
    h.complete(&l[1], 6);
    let d = h.acquire("batch", 10, 7);
    assert_eq!(Harness::steps(&d), vec!["d"]);
    let mut inputs: Vec<&str> = d[0].inputs.iter().map(|(k, _)| k.as_str()).collect();
    inputs.sort();
    assert_eq!(inputs, vec!["b", "c"], "a task sees its dependencies' outputs");
    h.complete(&d[0], 8);
    assert_eq!(h.state(id), JobState::Succeeded);
    assert_eq!(h.jobs[&id].counts, TaskCounts { total: 4, succeeded: 4, failed: 0, running: 0 });
    let seqs: Vec<u64> = h.events.iter().filter(|e| e.job_id == id).map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "event sequence has no gaps");
    assert_eq!(h.event_kinds(id).last(), Some(&ev::JOB_SUCCEEDED));
    assert_eq!(h.engine.jobs_in_memory(), 0, "finished jobs leave memory");
}

#[test]
fn higher_priority_first_then_oldest() {
    let mut h = Harness::new();
    let low1 = h.submit(job("low1", vec![step("a", "api", &[])]), 0);
    let mut hi = job("hi", vec![step("a", "api", &[])]);
    hi.priority = 10;
    let high = h.submit(hi, 1);
    let low2 = h.submit(job("low2", vec![step("a", "api", &[])]), 2);
    let order: Vec<Uuid> = (0..3).map(|i| h.acquire("api", 1, 3 + i)[0].job_id).collect();
    assert_eq!(order, vec![high, low1, low2]);
}

#[test]
fn queue_limit_holds() {
    let mut cfg = EngineConfig::default();
    cfg.queue_limits.insert("api".into(), 2);
    let mut h = Harness::with(cfg);
    h.submit(job("j", (0..5).map(|i| step(&format!("s{i}"), "api", &[])).collect()), 0);
    let l = h.acquire("api", 10, 1);
    assert_eq!(l.len(), 2);
    assert!(h.acquire("api", 10, 2).is_empty());
    h.complete(&l[0], 3);
    assert_eq!(h.acquire("api", 10, 4).len(), 1);
}

#[test]
fn retries_back_off_then_exhaust() {
    let mut h = Harness::new();
    let mut s = step("a", "api", &[]);
    s.retry = Some(fast_retry(3));
    let id = h.submit(job("r", vec![s]), 0);
    let l = h.acquire("api", 1, 0);
    assert_eq!((l[0].attempt, l[0].fence), (1, 1));
    assert!(h.engine.fail(l[0].task_id, 1, failure("io", true), 1000).expect("fail"));
    h.commit(1000);
    assert_eq!(h.task_state(id, "a"), TaskState::Backoff);
    h.engine.tick(1099);
    assert!(h.acquire("api", 1, 1099).is_empty(), "still backing off");
    h.engine.tick(1100);
    let l = h.acquire("api", 1, 1100);
    assert_eq!((l[0].attempt, l[0].fence), (2, 2));
    assert!(h.engine.fail(l[0].task_id, 2, failure("io", true), 2000).expect("fail"));
    h.engine.tick(2199);
    assert!(h.acquire("api", 1, 2199).is_empty(), "second wait doubles");
    h.engine.tick(2200);
    let l = h.acquire("api", 1, 2200);
    assert!(!h.engine.fail(l[0].task_id, 3, failure("io", true), 3000).expect("fail"));
    h.commit(3000);
    assert_eq!(h.state(id), JobState::Failed);
    assert!(h.jobs[&id].error.as_deref().unwrap_or_default().contains("after 3 attempts"));
}

#[test]
fn non_retryable_kinds_fail_at_once() {
    let mut h = Harness::new();
    let mut s = step("a", "api", &[]);
    s.retry = Some(fast_retry(5));
    let id = h.submit(job("r", vec![s]), 0);
    let l = h.acquire("api", 1, 0);
    assert!(!h.engine.fail(l[0].task_id, 1, failure("bad_input", true), 1).expect("fail"));
    h.commit(1);
    assert_eq!(h.state(id), JobState::Failed);
}

#[test]
fn expired_lease_is_released_and_old_fence_refused() {
    let mut h = Harness::new();
    let mut s = step("a", "api", &[]);
    s.retry = Some(fast_retry(3));
    s.timeouts = Some(StepTimeouts { heartbeat: Some(Duration::from_secs(1)), ..Default::default() });
    let id = h.submit(job("l", vec![s]), 0);
    let first = h.acquire("api", 1, 0).remove(0);
    assert_eq!(first.lease_expires_ms, 1000);
    // A heartbeat at 900 extends the lease to 1900.
    let hb = h.engine.heartbeat("w1", &[(first.task_id, first.fence)], 900);
    assert_eq!(hb, vec![(first.task_id, LeaseStatus::Active(1900))]);
    h.engine.tick(1500);
    assert_eq!(h.engine.task(first.task_id).map(|t| t.state), Some(TaskState::Running));
    h.engine.tick(1900);
    h.commit(1900);
    assert!(h.event_kinds(id).contains(&ev::TASK_LEASE_EXPIRED));
    h.engine.tick(2000);
    let second = h.acquire("api", 1, 2000).remove(0);
    assert_eq!(second.fence, first.fence + 1);
    let before = h.tasks[&first.task_id].clone();
    let err = h.engine.complete(first.task_id, first.fence, None, 2001).expect_err("stale");
    assert!(matches!(err, EngineError::StaleFence { given: 1, current: 2, .. }));
    assert!(h.engine.take_changes(2001).is_empty(), "a stale report changes nothing");
    assert_eq!(h.tasks[&first.task_id], before);
    assert_eq!(h.engine.heartbeat("w1", &[(first.task_id, first.fence)], 2002)[0].1, LeaseStatus::Lost);
    h.complete(&second, 2003);
    assert_eq!(h.state(id), JobState::Succeeded);
}

#[test]
fn a_repeated_report_is_applied_once() {
    let mut h = Harness::new();
    let id = h.submit(job("once", vec![step("a", "api", &[]), step("b", "api", &["a"])]), 0);
    let l = h.acquire("api", 1, 0).remove(0);
    h.complete(&l, 1);
    let events = h.events.len();
    h.engine.complete(l.task_id, l.fence, None, 2).expect("idempotent repeat");
    assert!(h.engine.take_changes(2).is_empty());
    assert_eq!(h.events.len(), events);
    assert_eq!(h.state(id), JobState::Running);
}

#[test]
fn pause_stops_leasing_and_resume_continues() {
    let mut h = Harness::new();
    let id = h.submit(job("p", vec![step("a", "api", &[]), step("b", "api", &[]), step("c", "api", &["a"])]), 0);
    let a = h.acquire("api", 1, 1).remove(0);
    h.engine.pause(id, 2).expect("pause");
    h.commit(2);
    assert_eq!(h.state(id), JobState::Paused);
    assert!(h.acquire("api", 10, 3).is_empty(), "nothing new is leased while paused");
    h.complete(&a, 4);
    assert_eq!(h.task_state(id, "a"), TaskState::Succeeded, "running tasks finish");
    assert!(h.acquire("api", 10, 5).is_empty());
    h.engine.resume(id, 6).expect("resume");
    h.commit(6);
    let l = h.acquire("api", 10, 7);
    assert_eq!(Harness::steps(&l), vec!["b", "c"]);
    for x in &l {
        h.complete(x, 8);
    }
    assert_eq!(h.state(id), JobState::Succeeded);
    assert!(h.engine.resume(id, 9).is_err());
}

#[test]
fn cancel_tells_running_tasks_and_starts_nothing() {
    let mut h = Harness::new();
    let id = h.submit(job("c", vec![step("a", "api", &[]), step("b", "api", &["a"]), step("x", "file", &[])]), 0);
    let a = h.acquire("api", 1, 1).remove(0);
    h.engine.cancel(id, "operator said so", 2).expect("cancel");
    h.commit(2);
    assert_eq!(h.state(id), JobState::Cancelled);
    assert!(h.acquire("file", 10, 3).is_empty(), "nothing new starts");
    assert_eq!(h.engine.heartbeat("w1", &[(a.task_id, a.fence)], 3)[0].1, LeaseStatus::Cancelled);
    assert_eq!(h.engine.jobs_in_memory(), 1, "kept while a lease is out");
    assert_eq!(h.engine.release("w1", &[(a.task_id, a.fence)], 4), 1);
    h.commit(4);
    assert_eq!(h.task_state(id, "a"), TaskState::Cancelled);
    assert_eq!(h.task_state(id, "b"), TaskState::Cancelled);
    assert_eq!(h.engine.jobs_in_memory(), 0);
    assert_eq!(h.jobs[&id].error.as_deref(), Some("operator said so"));
}

fn compensated(id: &str, deps: &[&str]) -> StepSpec {
    let mut s = step(id, "api", deps);
    s.compensation = Some(CompensationSpec { kind: "noop".into(), queue: Some("batch".into()), ..Default::default() });
    s
}

#[test]
fn compensation_runs_in_reverse_dependency_order() {
    let mut h = Harness::new();
    let mut boom = step("c", "api", &["b"]);
    boom.kind = "fail".into();
    let id = h.submit(job("s", vec![compensated("a", &[]), compensated("b", &["a"]), boom]), 0);
    for t in 1..=2 {
        let l = h.acquire("api", 1, t).remove(0);
        h.complete(&l, t);
    }
    let c = h.acquire("api", 1, 3).remove(0);
    h.engine.fail(c.task_id, c.fence, failure("injected", false), 4).expect("fail");
    h.commit(4);
    assert_eq!(h.state(id), JobState::Compensating);
    let first = h.acquire("batch", 10, 5);
    assert_eq!(Harness::steps(&first), vec!["compensate:b"], "b is undone before a");
    assert_eq!(first[0].inputs[0].0, "b", "compensation sees the output it undoes");
    assert!(first[0].compensation);
    h.complete(&first[0], 6);
    let second = h.acquire("batch", 10, 7);
    assert_eq!(Harness::steps(&second), vec!["compensate:a"]);
    h.complete(&second[0], 8);
    assert_eq!(h.state(id), JobState::Compensated);
    assert_eq!(h.task_state(id, "a"), TaskState::Compensated);
    assert_eq!(h.task_state(id, "b"), TaskState::Compensated);
    assert!(h.jobs[&id].error.as_deref().unwrap_or_default().contains("step \"c\" failed"));
}

#[test]
fn failed_compensation_fails_the_job_with_reason() {
    let mut h = Harness::new();
    let mut a = compensated("a", &[]);
    if let Some(c) = a.compensation.as_mut() {
        c.kind = "fail".into();
        c.retry = Some(fast_retry(1));
    }
    let id = h.submit(job("s", vec![a, step("b", "api", &["a"])]), 0);
    let l = h.acquire("api", 1, 1).remove(0);
    h.complete(&l, 1);
    h.engine.cancel(id, "stop", 2).expect("cancel");
    let c = h.acquire("batch", 1, 3).remove(0);
    h.engine.fail(c.task_id, c.fence, failure("injected", true), 4).expect("fail");
    h.commit(4);
    assert_eq!(h.state(id), JobState::Failed);
    let err = h.jobs[&id].error.clone().unwrap_or_default();
    assert!(err.contains("compensation of step \"a\" failed") && err.contains("cancelled: stop"), "{err}");
}

#[test]
fn submit_is_idempotent_on_run_id() {
    let mut h = Harness::new();
    let mut spec = job("i", vec![step("a", "api", &[])]);
    spec.run_id = "2026-11-22".into();
    let (a, created) = h.engine.submit(validate(spec.clone()).expect("valid"), 0);
    assert!(created);
    let (b, again) = h.engine.submit(validate(spec.clone()).expect("valid"), 1);
    assert_eq!((a, again), (b, false));
    let c = h.commit(1);
    assert_eq!((c.new_jobs.len(), c.jobs.len()), (1, 0));
    let l = h.acquire("api", 1, 2).remove(0);
    h.complete(&l, 3);
    let (c2, again) = h.engine.submit(validate(spec.clone()).expect("valid"), 4);
    assert_eq!((c2, again), (a, false), "remembered after the job left memory");
    // Once the retention purge deleted it, the same run id starts a new job.
    h.engine.forget_finished(&[Uuid::from_u128(999), a]);
    let key = validate(spec.clone()).expect("valid").spec;
    assert_eq!(h.engine.find_key(&key.namespace, &key.name, &key.run_id), None);
    let (d, created) = h.engine.submit(validate(spec).expect("valid"), 5);
    assert!(created && d != a, "a new job after the purge");
}

#[test]
fn reload_resumes_with_leases_and_applies_each_result_once() {
    let mut h = Harness::new();
    let id = h.submit(job("k", vec![step("a", "api", &[]), step("b", "api", &[]), step("c", "api", &["a", "b"])]), 0);
    let l = h.acquire("api", 2, 1);
    h.complete(&l[0], 2);
    // The master dies here; the store has what was committed.
    h.reload(100);
    let again = h.acquire("api", 10, 101);
    assert!(again.is_empty(), "the running lease survives the restart");
    h.engine.complete(l[0].task_id, l[0].fence, None, 102).expect("repeat is harmless");
    h.complete(&l[1], 103);
    let c = h.acquire("api", 10, 104);
    assert_eq!(Harness::steps(&c), vec!["c"]);
    h.complete(&c[0], 105);
    assert_eq!(h.state(id), JobState::Succeeded);
    let succeeded = h.events.iter().filter(|e| e.kind == ev::TASK_SUCCEEDED).count();
    assert_eq!(succeeded, 3, "every task applied exactly once");
}

#[test]
fn retry_reruns_only_what_had_not_succeeded() {
    let mut h = Harness::new();
    let mut b = step("b", "api", &["a"]);
    b.retry = Some(fast_retry(1));
    let id = h.submit(job("r", vec![step("a", "api", &[]), b, step("c", "api", &["b"])]), 0);
    let a = h.acquire("api", 1, 1).remove(0);
    h.complete(&a, 1);
    let b = h.acquire("api", 1, 2).remove(0);
    h.engine.fail(b.task_id, b.fence, failure("io", true), 3).expect("fail");
    h.commit(3);
    assert_eq!(h.state(id), JobState::Failed);
    let err = h.engine.retry(id, 4).expect_err("not in memory");
    assert_eq!(err, EngineError::JobNotFound(id));
    let tasks: Vec<TaskRecord> = h.tasks.values().filter(|t| t.job_id == id).cloned().collect();
    h.engine.load(vec![h.jobs[&id].clone()], tasks, 4);
    h.engine.retry(id, 4).expect("retry");
    h.commit(4);
    assert_eq!(h.state(id), JobState::Running);
    let l = h.acquire("api", 10, 5);
    assert_eq!(Harness::steps(&l), vec!["b"], "a had succeeded and is not rerun");
    assert_eq!(l[0].fence, 2, "fences keep growing across retries");
    h.complete(&l[0], 6);
    let c = h.acquire("api", 10, 7).remove(0);
    h.complete(&c, 8);
    assert_eq!(h.state(id), JobState::Succeeded);
}

#[test]
fn job_timeout_and_schedule_to_start() {
    let mut h = Harness::new();
    let mut spec = job("t", vec![step("a", "api", &[])]);
    spec.timeout = Some(Duration::from_secs(5));
    let id = h.submit(spec, 0);
    assert_eq!(h.engine.next_deadline(), Some(5000));
    h.engine.tick(5000);
    h.commit(5000);
    assert_eq!(h.state(id), JobState::Failed);
    assert!(h.jobs[&id].error.as_deref().unwrap_or_default().contains("timed out"));

    let mut s = step("a", "file", &[]);
    s.timeouts = Some(StepTimeouts { schedule_to_start: Some(Duration::from_secs(2)), ..Default::default() });
    let id = h.submit(job("s2s", vec![s]), 10_000);
    h.engine.tick(11_999);
    h.commit(11_999);
    assert_eq!(h.state(id), JobState::Pending);
    h.engine.tick(12_000);
    h.commit(12_000);
    assert_eq!(h.state(id), JobState::Failed);
    assert_eq!(h.task_state(id, "a"), TaskState::Failed);
}

#[test]
fn lease_carries_config_and_job_context() {
    let mut h = Harness::new();
    let mut s = step("a", "api", &[]);
    s.kind = "sleep".into();
    s.config = Some(json!({"duration": "1s"}));
    let mut spec = job("ctx", vec![s]);
    spec.namespace = "team-a".into();
    spec.priority = 3;
    h.submit(spec, 0);
    let l = h.acquire("api", 1, 0).remove(0);
    assert_eq!(l.config, Some(json!({"duration": "1s"})));
    assert_eq!((l.namespace.as_str(), l.job_name.as_str(), l.priority, l.kind.as_str()), ("team-a", "ctx", 3, "sleep"));
}

#[test]
fn retry_after_a_failed_compensation_reruns_the_steps_already_undone() {
    let mut h = Harness::new();
    let mut a = compensated("a", &[]);
    if let Some(c) = a.compensation.as_mut() {
        c.retry = Some(fast_retry(1));
    }
    let mut boom = step("c", "api", &["b"]);
    boom.retry = Some(fast_retry(1));
    let id = h.submit(job("pc", vec![a, compensated("b", &["a"]), boom]), 0);
    for t in 1..=2 {
        let l = h.acquire("api", 1, t).remove(0);
        h.complete(&l, t);
    }
    let c = h.acquire("api", 1, 3).remove(0);
    h.engine.fail(c.task_id, c.fence, failure("io", true), 4).expect("fail");
    h.commit(4);
    let undo_b = h.acquire("batch", 1, 5).remove(0);
    h.complete(&undo_b, 6);
    assert_eq!(h.task_state(id, "b"), TaskState::Compensated, "marked as soon as its compensation succeeded");
    let undo_a = h.acquire("batch", 1, 7).remove(0);
    h.engine.fail(undo_a.task_id, undo_a.fence, failure("io", true), 8).expect("fail");
    h.commit(8);
    assert_eq!(h.state(id), JobState::Failed);
    assert_eq!(h.task_state(id, "a"), TaskState::Succeeded, "a was never undone");
    h.engine.retry_stored(id, Some(h.stored(id)), 9).expect("retry");
    h.commit(9);
    let l = h.acquire("api", 10, 10);
    assert_eq!(Harness::steps(&l), vec!["b"], "b was undone, so it runs again; a still stands");
}

#[test]
fn compensation_waits_only_on_the_nearest_owed_steps() {
    let mut h = Harness::new();
    let chain = vec![
        compensated("a", &[]),
        compensated("b", &["a"]),
        step("c", "api", &["b"]),
        compensated("d", &["c"]),
        step("e", "api", &["d"]),
    ];
    let id = h.submit(job("chain", chain), 0);
    for t in 1..=4 {
        let l = h.acquire("api", 1, t).remove(0);
        h.complete(&l, t);
    }
    let e = h.acquire("api", 1, 5).remove(0);
    h.engine.fail(e.task_id, e.fence, failure("bad_input", false), 6).expect("fail");
    h.commit(6);
    let deps = |step: &str| {
        let t = h.tasks.values().find(|t| t.job_id == id && t.step_id == step).expect("compensation task");
        t.depends_on.clone()
    };
    assert_eq!(deps("compensate:a"), vec!["compensate:b"], "not also compensate:d");
    assert_eq!(deps("compensate:b"), vec!["compensate:d"], "through the step without compensation");
    assert!(deps("compensate:d").is_empty());
    let order: Vec<String> = (7..10)
        .map(|t| {
            let l = h.acquire("batch", 10, t);
            assert_eq!(l.len(), 1, "one at a time along the chain");
            h.complete(&l[0], t);
            l[0].step_id.clone()
        })
        .collect();
    assert_eq!(order, vec!["compensate:d", "compensate:b", "compensate:a"]);
    assert_eq!(h.state(id), JobState::Compensated);
}

#[test]
fn a_refused_retry_of_a_stored_job_leaves_nothing_in_memory() {
    let mut h = Harness::new();
    let id = h.submit(job("done", vec![step("a", "api", &[])]), 0);
    let l = h.acquire("api", 1, 1).remove(0);
    h.complete(&l, 2);
    assert_eq!((h.state(id), h.engine.jobs_in_memory()), (JobState::Succeeded, 0));
    let err = h.engine.retry_stored(id, Some(h.stored(id)), 3).expect_err("succeeded jobs stay");
    assert!(matches!(err, EngineError::WrongState(_)), "{err:?}");
    assert_eq!((h.engine.jobs_in_memory(), h.engine.tasks_in_memory()), (0, 0));
}

#[test]
fn schedule_to_start_survives_a_restart_and_ignores_time_paused() {
    let s2s = |id: &str| {
        let mut s = step(id, "file", &[]);
        s.timeouts = Some(StepTimeouts { schedule_to_start: Some(Duration::from_secs(2)), ..Default::default() });
        s
    };
    let mut h = Harness::new();
    let reloaded = h.submit(job("restart", vec![s2s("a")]), 10_000);
    h.reload(11_000);
    h.engine.tick(12_000);
    h.commit(12_000);
    assert_eq!(h.state(reloaded), JobState::Failed, "the timer is armed again after a restart");

    let paused = h.submit(job("paused", vec![s2s("a")]), 20_000);
    h.engine.pause(paused, 20_500).expect("pause");
    h.engine.resume(paused, 25_000).expect("resume");
    h.commit(25_000);
    h.engine.tick(25_000);
    h.commit(25_000);
    assert_eq!(h.state(paused), JobState::Running, "five seconds paused do not count");
    h.engine.tick(27_000);
    h.commit(27_000);
    assert_eq!(h.state(paused), JobState::Failed);
}

#[test]
fn watermarks_are_proposed_only_when_the_job_succeeds() {
    let mut h = Harness::new();
    let run = |h: &mut Harness, name: &str, store_fails: bool, now: Millis| -> Vec<Watermark> {
        let id = h.submit(job(name, vec![step("collect", "api", &[]), step("store", "batch", &["collect"])]), now);
        let c = h.acquire("api", 1, now);
        let out = json!({"records": 2, "watermark": {"key": format!("{name}/collect"), "value": 7, "boundary": ["f"]}});
        h.engine.complete(c[0].task_id, c[0].fence, Some(out.to_string()), now).expect("complete");
        assert!(h.commit(now).watermarks.is_empty(), "nothing is stored yet");
        let s = h.acquire("batch", 1, now);
        if store_fails {
            h.engine.fail(s[0].task_id, s[0].fence, failure("io", false), now).expect("fail");
        } else {
            h.engine.complete(s[0].task_id, s[0].fence, None, now).expect("complete");
        }
        let w = h.commit(now).watermarks;
        assert_eq!(h.state(id), if store_fails { JobState::Failed } else { JobState::Succeeded });
        w
    };
    assert!(run(&mut h, "failed", true, 100).is_empty(), "a failed job proposes nothing");
    let w = run(&mut h, "orders", false, 200);
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].key.as_str(), w[0].mark.value.clone(), w[0].updated_ms), ("orders/collect", json!(7), 200));
    assert_eq!(w[0].namespace, h.jobs[&w[0].job_id].spec.namespace);
}

#[test]
fn ready_stats_give_each_queues_depth_and_its_longest_wait() {
    let mut h = Harness::new();
    h.submit(job("a", vec![step("x", "api", &[]), step("y", "api", &[]), step("z", "batch", &[])]), 1_000);
    h.submit(job("b", vec![step("x", "api", &[])]), 5_000);
    assert_eq!(
        h.engine.ready_stats(),
        vec![("api".to_string(), 3, Some(1_000)), ("batch".to_string(), 1, Some(1_000))]
    );
    let leased = h.acquire("batch", 1, 6_000);
    assert_eq!(leased.len(), 1);
    let batch: Vec<_> = h.engine.ready_stats().into_iter().filter(|(q, _, _)| q == "batch").collect();
    assert!(batch.iter().all(|(_, n, oldest)| *n == 0 && oldest.is_none()), "{batch:?}");
}

fn budget(tasks: usize) -> EngineConfig {
    EngineConfig { resident_tasks: Some(tasks), ..Default::default() }
}

#[test]
fn a_backlog_past_the_budget_is_parked_and_served_in_priority_then_age_order() {
    let mut h = Harness::with(budget(8));
    let mut expected = Vec::new();
    for i in 0..20i64 {
        let mut spec = job(&format!("j{i}"), vec![step("a", "api", &[])]);
        spec.priority = (i % 3) as i32;
        let id = h.submit(spec, i);
        expected.push((Reverse((i % 3) as i32), i, id));
        assert!(h.engine.tasks_in_memory() <= 8, "memory holds {} tasks", h.engine.tasks_in_memory());
    }
    assert!(h.engine.parked().is_some(), "twelve jobs wait in the store");
    // An urgent job arriving late goes ahead of everything that has not started.
    let mut urgent = job("urgent", vec![step("a", "api", &[])]);
    urgent.priority = 9;
    let id = h.submit(urgent, 100);
    expected.push((Reverse(9), 100, id));
    expected.sort();
    let mut served = Vec::new();
    let mut now = 200;
    loop {
        h.page(now);
        let leases = h.acquire("api", 1, now);
        let Some(l) = leases.first() else { break };
        served.push(l.job_id);
        h.complete(l, now);
        assert!(h.engine.tasks_in_memory() <= 8, "memory holds {} tasks", h.engine.tasks_in_memory());
        now += 1;
    }
    let order: Vec<Uuid> = expected.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(served, order, "served in priority-then-age order across parking");
    assert!(h.jobs.values().all(|j| j.state == JobState::Succeeded), "every job ran");
    assert_eq!(h.engine.parked(), None);
    assert_eq!(h.engine.tasks_in_memory(), 0);
}

#[test]
fn chained_jobs_bigger_than_half_the_budget_drain_within_it() {
    let mut h = Harness::with(budget(250));
    let steps =
        |n: usize| {
            (0..n)
                .map(|i| {
                    if i == 0 {
                        step("s0", "api", &[])
                    } else {
                        step(&format!("s{i}"), "api", &[&format!("s{}", i - 1)])
                    }
                })
                .collect::<Vec<_>>()
        };
    for i in 0..10 {
        h.submit(job(&format!("chain{i}"), steps(100)), i);
    }
    assert_eq!(h.engine.tasks_in_memory(), 200, "two jobs of 100 steps fit in 250");
    let mut now = 100;
    let mut most = 0;
    loop {
        h.page(now);
        let leases = h.acquire("api", 10, now);
        if leases.is_empty() {
            break;
        }
        for l in &leases {
            h.complete(l, now);
        }
        most = most.max(h.engine.tasks_in_memory());
        now += 1;
    }
    assert!(most <= 250, "memory held {most} tasks");
    assert_eq!(h.jobs.values().filter(|j| j.state == JobState::Succeeded).count(), 10);
    assert_eq!(h.tasks.values().filter(|t| t.state == TaskState::Succeeded).count(), 1000);
}

#[test]
fn a_parked_job_keeps_its_run_id_and_its_timers_go_with_it() {
    let mut h = Harness::with(budget(1));
    let timed = |name: &str| {
        let mut s = job(name, vec![step("a", "api", &[])]);
        s.run_id = format!("{name}-run");
        s.timeout = Some(Duration::from_secs(60));
        s
    };
    h.submit(timed("first"), 0);
    let parked = h.submit(timed("second"), 1);
    assert!(h.engine.job(parked).is_none(), "the second job waits in the store");
    let ns = validate(timed("second")).expect("valid").spec.namespace;
    assert_eq!(h.engine.find_key(&ns, "second", "second-run"), Some(parked), "a resubmission finds it");
    let (again, created) = h.engine.submit(validate(timed("second")).expect("valid"), 2);
    assert_eq!((again, created), (parked, false));
    // Past both deadlines only the job held in memory times out; the parked one is
    // judged when it is read back.
    h.engine.tick(120_000);
    h.commit(120_000);
    assert_eq!(h.state(parked), JobState::Pending);
    h.page(120_000);
    h.engine.tick(120_000);
    h.commit(120_000);
    assert_eq!(h.state(parked), JobState::Failed, "read back past its deadline, it times out");
}

#[test]
fn a_job_queued_behind_parked_ones_is_parked_even_if_they_are_all_read_back_first() {
    let mut h = Harness::with(budget(8));
    let wide = |name: &str, n: usize| job(name, (0..n).map(|i| step(&format!("s{i}"), "api", &[])).collect());
    let a = h.submit(wide("a", 5), 0);
    let b = h.submit(wide("b", 5), 1);
    assert!(h.engine.job(b).is_none(), "b waits in the store");
    let leases = h.acquire("api", 10, 2);
    assert!(leases.iter().all(|l| l.job_id == a) && leases.len() == 5);
    for l in &leases {
        h.complete(l, 2);
    }
    // c arrives behind b; before c's commit the master reads every parked job back.
    let (c, _) = h.engine.submit(validate(wide("c", 1)).expect("valid"), 3);
    h.page(3);
    assert_eq!(h.engine.parked(), None, "b was read back and nothing else is stored");
    h.commit(3);
    assert!(h.engine.job(c).is_none() && h.engine.parked().is_some(), "c is parked at its commit");
    let mut served = Vec::new();
    for now in 4..20 {
        h.page(now);
        if let Some(l) = h.acquire("api", 1, now).first() {
            served.push(l.job_id);
            h.complete(l, now);
        }
    }
    assert_eq!(served, vec![b, b, b, b, b, c]);
}
