//! The engine through the master's gRPC API, on PostgreSQL and on the embedded store.
//! The test itself plays the worker where it needs exact control over leases.

use std::time::{Duration, Instant};

use weir_proto::v1::{self, LeaseStatus};
use weir_tests::*;

async fn idempotent_submit(m: &InProcMaster) {
    let mut jobs = m.jobs();
    let mut spec = job("idem", vec![step("a", "noop", "api", &[])]);
    spec.run_id = "2026-11-22".into();
    let first = jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec.clone()) }).await.expect("submit").into_inner();
    let again = jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.expect("submit").into_inner();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.job.expect("job").id, again.job.expect("job").id);
    let list = jobs.list_jobs(v1::ListJobsRequest { name: "idem".into(), ..Default::default() }).await.expect("list");
    assert_eq!(list.into_inner().jobs.len(), 1);
}

async fn dag_order_and_parallel_branches(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let spec = job(
        "diamond",
        vec![
            step("a", "noop", "api", &[]),
            step("b", "noop", "api", &["a"]),
            step("c", "noop", "api", &["a"]),
            step("d", "noop", "api", &["b", "c"]),
        ],
    );
    let id = submit(&mut jobs, spec).await;
    let mut watch =
        jobs.watch_job(v1::WatchJobRequest { job_id: id.clone(), from_seq: 0 }).await.expect("watch").into_inner();
    let l = acquire(&mut w, "api", 10, 0).await;
    assert_eq!(steps(&l), vec!["a"]);
    assert!(acquire(&mut w, "api", 10, 0).await.is_empty(), "b and c wait for a");
    complete(&mut w, &l[0]).await.expect("complete a");
    let bc = acquire(&mut w, "api", 10, 0).await;
    assert_eq!(steps(&bc), vec!["b", "c"], "independent branches are leased together");
    complete(&mut w, &bc[0]).await.expect("complete");
    assert!(acquire(&mut w, "api", 10, 0).await.is_empty(), "d waits for both branches");
    complete(&mut w, &bc[1]).await.expect("complete");
    let d = acquire(&mut w, "api", 10, 0).await;
    assert_eq!(steps(&d), vec!["d"]);
    assert_eq!(d[0].inputs_json.len(), 2, "d sees both branches' outputs");
    complete(&mut w, &d[0]).await.expect("complete d");
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(10)).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32);
    // The watch saw the whole history in order and ended after the job did.
    let mut seen = Vec::new();
    while let Some(msg) = watch.message().await.expect("stream") {
        seen.push(msg.event.expect("event"));
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(seen.last().map(|e| e.r#type.as_str()), Some("dev.weir.job.succeeded"));
    let done: Vec<&str> =
        seen.iter().filter(|e| e.r#type == "dev.weir.task.succeeded").map(|e| e.step_id.as_str()).collect();
    assert_eq!(done.first(), Some(&"a"));
    assert_eq!(done.last(), Some(&"d"));
}

async fn priority_then_oldest(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let low1 = submit(&mut jobs, job("low1", vec![step("a", "noop", "file", &[])])).await;
    let mut hi = job("high", vec![step("a", "noop", "file", &[])]);
    hi.priority = 10;
    let high = submit(&mut jobs, hi).await;
    let low2 = submit(&mut jobs, job("low2", vec![step("a", "noop", "file", &[])])).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let l = acquire(&mut w, "file", 1, 0).await;
        order.push(l[0].job_id.clone());
        complete(&mut w, &l[0]).await.expect("complete");
    }
    assert_eq!(order, vec![high, low1, low2]);
}

async fn retries_back_off(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let mut s = step("flaky", "noop", "batch", &[]);
    s.retry = Some(v1::RetryPolicy {
        max_attempts: 3,
        initial_interval: dur(400),
        no_jitter: true,
        non_retryable_error_kinds: vec!["bad_input".into()],
        ..Default::default()
    });
    let id = submit(&mut jobs, job("retry", vec![s])).await;
    let first = acquire(&mut w, "batch", 1, 0).await.remove(0);
    assert_eq!((first.attempt, first.fence_token), (1, 1));
    let failed_at = Instant::now();
    assert!(fail(&mut w, &first, "io", true).await, "a retry is scheduled");
    assert!(acquire(&mut w, "batch", 1, 0).await.is_empty(), "not before the backoff");
    let second = acquire(&mut w, "batch", 1, 5000).await.remove(0);
    assert!(failed_at.elapsed() >= Duration::from_millis(350), "the backoff was honoured");
    assert_eq!((second.attempt, second.fence_token), (2, 2));
    assert!(!fail(&mut w, &second, "bad_input", true).await, "non-retryable kinds are not retried");
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(5)).await;
    assert_eq!(job.state, v1::JobState::Failed as i32);
    assert!(job.error.contains("bad_input"), "{}", job.error);
    // RetryJob runs it again from the failed step.
    let r = jobs.retry_job(v1::RetryJobRequest { job_id: id.clone() }).await.expect("retry").into_inner();
    assert_eq!(r.job.expect("job").state, v1::JobState::Running as i32);
    let third = acquire(&mut w, "batch", 1, 2000).await.remove(0);
    assert_eq!((third.attempt, third.fence_token), (1, 3));
    complete(&mut w, &third).await.expect("complete");
    assert_eq!(wait_finished(&mut jobs, &id, Duration::from_secs(5)).await.state, v1::JobState::Succeeded as i32);
}

async fn lease_expiry_and_stale_fence(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let mut s = step("slow", "noop", "stream", &[]);
    s.timeouts = Some(v1::StepTimeouts { heartbeat: dur(1500), ..Default::default() });
    s.retry = Some(v1::RetryPolicy { initial_interval: dur(100), no_jitter: true, ..Default::default() });
    let id = submit(&mut jobs, job("lease", vec![s])).await;
    let first = acquire(&mut w, "stream", 1, 0).await.remove(0);
    // Heartbeats keep it alive past its timeout...
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hb = v1::HeartbeatRequest {
            draining: false,
            quotas: vec![],
            notices: vec![],
            worker_id: "tester".into(),
            tasks: vec![v1::TaskHeartbeat { task_id: first.task_id.clone(), fence_token: 1 }],
        };
        let r = w.heartbeat(hb).await.expect("heartbeat").into_inner();
        assert_eq!(r.tasks[0].status, LeaseStatus::Active as i32);
    }
    // ...silence loses it, and the task is leased again with a new fence.
    let second = acquire(&mut w, "stream", 1, 5000).await.remove(0);
    assert_eq!(second.task_id, first.task_id);
    assert_eq!(second.fence_token, 2);
    let stale = complete(&mut w, &first).await.expect_err("stale fence refused");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    assert!(stale.message().contains("stale fence"), "{}", stale.message());
    let hb = v1::HeartbeatRequest {
        draining: false,
        quotas: vec![],
        notices: vec![],
        worker_id: "tester".into(),
        tasks: vec![v1::TaskHeartbeat { task_id: first.task_id.clone(), fence_token: 1 }],
    };
    assert_eq!(w.heartbeat(hb).await.expect("hb").into_inner().tasks[0].status, LeaseStatus::Lost as i32);
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert_eq!((t.state, t.fence_token), (v1::TaskState::Running as i32, 2), "the stale report changed nothing");
    complete(&mut w, &second).await.expect("current fence accepted");
    complete(&mut w, &second).await.expect("a repeated report is harmless");
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(5)).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32);
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert_eq!(t.attempt, 2);
}

/// A CompleteTasks call (a busy manager's coalesced successes) answers each report as
/// CompleteTask would: a stale fence, a malformed id and an unknown task are refused on
/// their own, the others applied; a repeated report is harmless.
async fn batched_reports_are_answered_one_by_one(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let steps = (0..4).map(|i| step(&format!("s{i}"), "noop", "file", &[])).collect();
    let id = submit(&mut jobs, job("batched", steps)).await;
    let leases = acquire(&mut w, "file", 4, 2000).await;
    assert_eq!(leases.len(), 4);
    let report = |l: &v1::TaskLease, fence: u64| v1::CompleteTaskRequest {
        worker_id: "tester".into(),
        task_id: l.task_id.clone(),
        fence_token: fence,
        output_json: format!("{{\"step\":\"{}\"}}", l.step_id),
    };
    let mut malformed = report(&leases[0], 1);
    malformed.task_id = "not-an-id".into();
    let mut unknown = report(&leases[0], 1);
    unknown.task_id = uuid::Uuid::now_v7().to_string();
    let first = vec![
        report(&leases[0], leases[0].fence_token),
        report(&leases[1], leases[1].fence_token + 7),
        malformed,
        unknown,
        report(&leases[2], leases[2].fence_token),
    ];
    let req = v1::CompleteTasksRequest { worker_id: "tester".into(), tasks: first };
    let outcomes = w.complete_tasks(req).await.expect("batch answered").into_inner().outcomes;
    let codes: Vec<tonic::Code> = outcomes.iter().map(|o| tonic::Code::from(o.code)).collect();
    use tonic::Code::*;
    assert_eq!(codes, vec![Ok, FailedPrecondition, InvalidArgument, NotFound, Ok], "{outcomes:?}");
    assert!(outcomes[1].message.contains("stale fence"), "{}", outcomes[1].message);
    assert!(outcomes[2].message.contains("task_id"), "{}", outcomes[2].message);
    let running = tasks(&mut jobs, &id).await.into_iter().filter(|t| t.state == v1::TaskState::Running as i32);
    assert_eq!(running.count(), 2, "the refused reports changed nothing");
    // The rest, with a repeat of one already applied.
    let second = vec![
        report(&leases[1], leases[1].fence_token),
        report(&leases[3], leases[3].fence_token),
        report(&leases[0], leases[0].fence_token),
    ];
    let req = v1::CompleteTasksRequest { worker_id: "tester".into(), tasks: second };
    let outcomes = w.complete_tasks(req).await.expect("batch answered").into_inner().outcomes;
    assert!(outcomes.iter().all(|o| o.code == 0), "{outcomes:?}");
    let done = wait_finished(&mut jobs, &id, Duration::from_secs(5)).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32);
    let outputs: Vec<String> = tasks(&mut jobs, &id).await.into_iter().map(|t| t.output_json).collect();
    assert!(outputs.iter().enumerate().all(|(i, o)| o.contains(&format!("s{i}"))), "{outputs:?}");
    // More than a call may carry is refused whole.
    let many = (0..1001).map(|_| report(&leases[0], 1)).collect();
    let refused = w.complete_tasks(v1::CompleteTasksRequest { worker_id: "tester".into(), tasks: many }).await;
    assert_eq!(refused.expect_err("too many").code(), InvalidArgument);
}

async fn pause_and_resume(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let id = submit(&mut jobs, job("pause", vec![step("a", "noop", "api", &[]), step("b", "noop", "api", &[])])).await;
    let a = acquire(&mut w, "api", 1, 0).await.remove(0);
    let r = jobs.pause_job(v1::PauseJobRequest { job_id: id.clone() }).await.expect("pause").into_inner();
    assert_eq!(r.job.expect("job").state, v1::JobState::Paused as i32);
    assert!(acquire(&mut w, "api", 10, 300).await.is_empty(), "nothing is leased while paused");
    complete(&mut w, &a).await.expect("running tasks finish while paused");
    jobs.resume_job(v1::ResumeJobRequest { job_id: id.clone() }).await.expect("resume");
    let b = acquire(&mut w, "api", 10, 1000).await;
    assert_eq!(steps(&b), vec!["b"]);
    complete(&mut w, &b[0]).await.expect("complete");
    assert_eq!(wait_finished(&mut jobs, &id, Duration::from_secs(5)).await.state, v1::JobState::Succeeded as i32);
    let err = jobs.pause_job(v1::PauseJobRequest { job_id: id }).await.expect_err("finished jobs do not pause");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

async fn cancel_reaches_running_tasks(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let id =
        submit(&mut jobs, job("cancel", vec![step("a", "noop", "file", &[]), step("b", "noop", "file", &["a"])])).await;
    let a = acquire(&mut w, "file", 1, 0).await.remove(0);
    let r = jobs
        .cancel_job(v1::CancelJobRequest { job_id: id.clone(), reason: "wrong input".into() })
        .await
        .expect("cancel");
    assert_eq!(r.into_inner().job.expect("job").state, v1::JobState::Cancelled as i32);
    let hb = v1::HeartbeatRequest {
        draining: false,
        quotas: vec![],
        notices: vec![],
        worker_id: "tester".into(),
        tasks: vec![v1::TaskHeartbeat { task_id: a.task_id.clone(), fence_token: a.fence_token }],
    };
    let status = w.heartbeat(hb).await.expect("hb").into_inner().tasks[0].status;
    assert_eq!(status, LeaseStatus::Cancelled as i32, "the running task is told through its heartbeat");
    let rel = v1::ReleaseTasksRequest {
        worker_id: "tester".into(),
        tasks: vec![v1::TaskHeartbeat { task_id: a.task_id.clone(), fence_token: a.fence_token }],
    };
    assert_eq!(w.release_tasks(rel).await.expect("release").into_inner().released, 1);
    assert!(acquire(&mut w, "file", 10, 200).await.is_empty(), "nothing new starts");
    let t = tasks(&mut jobs, &id).await;
    assert!(t.iter().all(|t| t.state == v1::TaskState::Cancelled as i32), "{t:?}");
    let job = jobs.get_job(v1::GetJobRequest { job_id: id }).await.expect("get").into_inner().job.expect("job");
    assert_eq!(job.error, "wrong input");
}

async fn compensation_in_reverse_order(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let comp = |id: &str, deps: &[&str]| {
        let mut s = step(id, "noop", "api", deps);
        s.compensation =
            Some(v1::CompensationSpec { kind: "noop".into(), queue: "batch".into(), ..Default::default() });
        s
    };
    let mut c = step("c", "noop", "api", &["b"]);
    c.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
    let id = submit(&mut jobs, job("saga", vec![comp("a", &[]), comp("b", &["a"]), c])).await;
    for _ in 0..2 {
        let l = acquire(&mut w, "api", 1, 1000).await.remove(0);
        complete(&mut w, &l).await.expect("complete");
    }
    let c = acquire(&mut w, "api", 1, 1000).await.remove(0);
    assert!(!fail(&mut w, &c, "io", true).await);
    let first = acquire(&mut w, "batch", 10, 1000).await;
    assert_eq!(steps(&first), vec!["compensate:b"], "b is undone before a");
    assert!(first[0].compensation);
    complete(&mut w, &first[0]).await.expect("complete");
    let second = acquire(&mut w, "batch", 10, 1000).await;
    assert_eq!(steps(&second), vec!["compensate:a"]);
    complete(&mut w, &second[0]).await.expect("complete");
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(5)).await;
    assert_eq!(job.state, v1::JobState::Compensated as i32);
    assert!(job.error.contains("step \"c\" failed"), "{}", job.error);
    let t = tasks(&mut jobs, &id).await;
    let states: Vec<(String, i32)> = t.iter().map(|t| (t.step_id.clone(), t.state)).collect();
    assert!(states.contains(&("a".into(), v1::TaskState::Compensated as i32)), "{states:?}");
    assert!(states.contains(&("b".into(), v1::TaskState::Compensated as i32)), "{states:?}");
}

async fn invalid_specs_are_refused_whole(m: &InProcMaster) {
    let mut jobs = m.jobs();
    let mut cases: Vec<(v1::JobSpec, &str)> = vec![
        (job("empty", vec![]), "no steps"),
        (job("cycle", vec![step("a", "noop", "api", &["b"]), step("b", "noop", "api", &["a"])]), "cycle"),
        (job("unknown-dep", vec![step("a", "noop", "api", &["zz"])]), "unknown step \"zz\""),
        (job("dup", vec![step("a", "noop", "api", &[]), step("a", "noop", "api", &[])]), "duplicate step id"),
        (job("queue", vec![step("a", "noop", "ftp", &[])]), "unknown queue"),
        (job("kind", vec![step("a", "teleport", "api", &[])]), "unknown kind"),
    ];
    let mut big = step("a", "noop", "api", &[]);
    big.config_json = format!("{{\"blob\":\"{}\"}}", "x".repeat(70 * 1024));
    cases.push((job("big", vec![big]), "over the limit"));
    let mut bad_json = step("a", "noop", "api", &[]);
    bad_json.config_json = "{oops".into();
    cases.push((job("json", vec![bad_json]), "not valid JSON"));
    let mut neg = job("neg", vec![step("a", "noop", "api", &[])]);
    neg.timeout = Some(prost_types::Duration { seconds: -5, nanos: 0 });
    cases.push((neg, "bad duration"));
    let mut zero = step("a", "noop", "api", &[]);
    zero.timeouts = Some(v1::StepTimeouts { start_to_close: dur(0), ..Default::default() });
    cases.push((job("zero", vec![zero]), "greater than zero"));
    let mut tpl = job("tpl", vec![]);
    tpl.template = "nope".into();
    cases.push((tpl, "unknown template"));
    for (spec, needle) in cases {
        let name = spec.name.clone();
        let err = jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.expect_err(&name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(err.message().contains(needle), "{name}: {:?} should mention {needle:?}", err.message());
    }
    let err = jobs.submit_job(v1::SubmitJobRequest { spec: None }).await.expect_err("no spec");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let all = jobs.list_jobs(v1::ListJobsRequest::default()).await.expect("list").into_inner();
    assert!(all.jobs.is_empty(), "nothing half-created");
    let bad_id = jobs.get_job(v1::GetJobRequest { job_id: "nope".into() }).await.expect_err("bad id");
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    let missing = jobs.get_job(v1::GetJobRequest { job_id: uuid::Uuid::nil().to_string() }).await.expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

async fn refusals_name_the_problem(m: &InProcMaster) {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = jobs.pause_job(v1::PauseJobRequest { job_id: unknown.clone() }).await.expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e =
        jobs.cancel_job(v1::CancelJobRequest { job_id: unknown, reason: String::new() }).await.expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let done = submit(&mut jobs, job("done", vec![step("a", "noop", "api", &[])])).await;
    let l = acquire(&mut w, "api", 1, 1000).await.remove(0);
    complete(&mut w, &l).await.expect("complete");
    wait_finished(&mut jobs, &done, Duration::from_secs(5)).await;
    let e = jobs.resume_job(v1::ResumeJobRequest { job_id: done.clone() }).await.expect_err("finished");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("is succeeded"), "{}", e.message());
    let e = jobs.retry_job(v1::RetryJobRequest { job_id: done }).await.expect_err("succeeded jobs are not retried");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    let bad_key = v1::ListJobsRequest { labels: [("no spaces".into(), "x".into())].into(), ..Default::default() };
    let e = jobs.list_jobs(bad_key).await.expect_err("bad label key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("label key"), "{}", e.message());

    // PostgreSQL cannot store NUL: it is refused at the door, not in a commit that would
    // take other clients' changes down with it.
    let mut nul = job("nul", vec![step("a", "noop", "api", &[])]);
    nul.labels.insert("team".into(), "a\u{0}b".into());
    let e = jobs.submit_job(v1::SubmitJobRequest { spec: Some(nul) }).await.expect_err("NUL label");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("NUL"), "{}", e.message());

    // A failure report is kept even when its message has a NUL or runs long.
    let mut once = step("a", "noop", "api", &[]);
    once.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
    let id = submit(&mut jobs, job("nul-message", vec![once])).await;
    let l = acquire(&mut w, "api", 1, 1000).await.remove(0);
    let req = v1::FailTaskRequest {
        worker_id: "tester".into(),
        task_id: l.task_id.clone(),
        fence_token: l.fence_token,
        error_kind: "io".into(),
        message: format!("bad\u{0}byte {}", "x".repeat(100_000)),
        retryable: true,
        details_json: String::new(),
    };
    assert!(!w.fail_task(req).await.expect("stored").into_inner().will_retry);
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(5)).await;
    assert_eq!(job.state, v1::JobState::Failed as i32);
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert!(
        t.error_message.starts_with("io: bad\u{fffd}byte") && t.error_message.len() < 10_000,
        "{}",
        t.error_message.len()
    );
    let req = v1::FailTaskRequest { error_kind: "not a kind".into(), ..Default::default() };
    assert_eq!(w.fail_task(req).await.expect_err("bad kind").code(), tonic::Code::InvalidArgument);
}

async fn templates_run_on_their_queues(m: &InProcMaster) {
    let managers = InProcManagers::start(&m.url);
    let mut jobs = m.jobs();
    for t in weir_core::template::TEMPLATES {
        let mut spec = job(&format!("tpl-{t}"), vec![]);
        spec.template = t.into();
        let id = submit(&mut jobs, spec).await;
        let job = wait_finished(&mut jobs, &id, Duration::from_secs(30)).await;
        assert_eq!(job.state, v1::JobState::Succeeded as i32, "{t}: {}", job.error);
        for task in tasks(&mut jobs, &id).await {
            assert!(
                task.worker_id.starts_with(&format!("{}-manager", task.queue)),
                "{t}: {} ran on {}",
                task.step_id,
                task.worker_id
            );
        }
    }
    managers.stop().await;
}

async fn list_filters_and_pages(m: &InProcMaster) {
    let mut jobs = m.jobs();
    for i in 0..5 {
        let mut spec = job(&format!("list{i}"), vec![step("a", "noop", "api", &[])]);
        spec.labels.insert("parity".into(), if i % 2 == 0 { "even" } else { "odd" }.into());
        submit(&mut jobs, spec).await;
    }
    let mut token = String::new();
    let mut names = Vec::new();
    loop {
        let r = jobs
            .list_jobs(v1::ListJobsRequest { page_size: 2, page_token: token, ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        names.extend(r.jobs.iter().map(|j| j.spec.clone().unwrap_or_default().name));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(names, vec!["list4", "list3", "list2", "list1", "list0"]);
    let even = jobs
        .list_jobs(v1::ListJobsRequest {
            labels: [("parity".to_string(), "even".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(even.into_inner().jobs.len(), 3);
    let bad = jobs.list_jobs(v1::ListJobsRequest { page_token: "garbage".into(), ..Default::default() }).await;
    assert_eq!(bad.expect_err("bad token").code(), tonic::Code::InvalidArgument);
}

macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = super::StoreFixture::new(super::Backend::Postgres).await;
                let m = super::InProcMaster::start(&store.url).await;
                super::$name(&m).await;
                m.stop().await;
                store.cleanup().await;
            })+
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = super::StoreFixture::new(super::Backend::Sqlite).await;
                let m = super::InProcMaster::start(&store.url).await;
                super::$name(&m).await;
                m.stop().await;
                store.cleanup().await;
            })+
        }
    };
}

on_both_stores!(
    batched_reports_are_answered_one_by_one,
    idempotent_submit,
    dag_order_and_parallel_branches,
    priority_then_oldest,
    retries_back_off,
    lease_expiry_and_stale_fence,
    pause_and_resume,
    cancel_reaches_running_tasks,
    compensation_in_reverse_order,
    invalid_specs_are_refused_whole,
    templates_run_on_their_queues,
    list_filters_and_pages,
    refusals_name_the_problem,
);

/// Stopping the master and starting another on the same store keeps jobs and running leases.
async fn restart(backend: Backend) {
    let store = StoreFixture::new(backend).await;
    let m = InProcMaster::start(&store.url).await;
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let id =
        submit(&mut jobs, job("restart", vec![step("a", "noop", "api", &[]), step("b", "noop", "api", &["a"])])).await;
    let a = acquire(&mut w, "api", 1, 0).await.remove(0);
    m.stop().await;
    let m = InProcMaster::start(&store.url).await;
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    complete(&mut w, &a).await.expect("the lease survived the restart");
    let b = acquire(&mut w, "api", 1, 2000).await.remove(0);
    complete(&mut w, &b).await.expect("complete");
    assert_eq!(wait_finished(&mut jobs, &id, Duration::from_secs(5)).await.state, v1::JobState::Succeeded as i32);
    m.stop().await;
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_postgres() {
    restart(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_sqlite() {
    restart(Backend::Sqlite).await;
}

/// Retention end to end: a finished job past its namespace's retention is purged with its
/// tasks and history (and its run id may run again); another namespace's longer retention
/// keeps its job; an unfinished job is never purged.
async fn retention_purges_finished_jobs(backend: Backend) {
    let store = StoreFixture::new(backend).await;
    let m = InProcMaster::start_configured(&store.url, None, |c| {
        c.retention = "1s".into();
        c.retention_namespaces = vec!["keep=1h".into()];
        c.purge_interval = Duration::from_millis(200);
    })
    .await;
    wait_master(&m.url).await;
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let with = |ns: &str, name: &str| {
        let mut spec = job(name, vec![step("a", "noop", "api", &[])]);
        spec.namespace = ns.into();
        spec.run_id = "2026-12-07".into();
        spec
    };
    let short = submit(&mut jobs, with("team", "short")).await;
    let kept = submit(&mut jobs, with("keep", "kept")).await;
    for l in acquire(&mut w, "api", 10, 1000).await {
        complete(&mut w, &l).await.expect("complete");
    }
    wait_finished(&mut jobs, &short, Duration::from_secs(5)).await;
    wait_finished(&mut jobs, &kept, Duration::from_secs(5)).await;
    let open = submit(&mut jobs, job("open", vec![step("a", "noop", "file", &[])])).await;
    let reader = jobs.clone();
    let get = |id: &str| {
        let mut jobs = reader.clone();
        let id = id.to_string();
        async move { jobs.get_job(v1::GetJobRequest { job_id: id }).await.map(|r| r.into_inner()) }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match get(&short).await {
            Err(s) if s.code() == tonic::Code::NotFound => break,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("the finished job was not purged within 15 s: {other:?}"),
        }
    }
    let tasks = jobs.get_job_tasks(v1::GetJobTasksRequest { job_id: short.clone() }).await;
    assert_eq!(tasks.expect_err("its tasks went with it").code(), tonic::Code::NotFound);
    assert!(get(&kept).await.is_ok(), "namespace keep keeps its job for an hour");
    assert!(get(&open).await.is_ok(), "an unfinished job is never purged");
    // Past retention the run id is free: the same submission starts a new job.
    let again = jobs.submit_job(v1::SubmitJobRequest { spec: Some(with("team", "short")) }).await.expect("submit");
    let again = again.into_inner();
    assert!(again.created, "a new job after the old one was purged");
    assert_ne!(again.job.expect("job").id, short);
    // Within retention it is still the same job.
    let kept_again = jobs.submit_job(v1::SubmitJobRequest { spec: Some(with("keep", "kept")) }).await.expect("submit");
    assert!(!kept_again.into_inner().created);
    m.stop().await;
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_jobs_postgres() {
    retention_purges_finished_jobs(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_jobs_sqlite() {
    retention_purges_finished_jobs(Backend::Sqlite).await;
}

/// The memory budget end to end: with room for 10 tasks, a backlog of 40 jobs waits in
/// the store and is still served highest priority first, then oldest — across a restart;
/// a parked job can be paused, resumed and cancelled, and its run id still finds it.
async fn a_backlog_past_the_memory_budget_waits_in_the_store(backend: Backend) {
    let store = StoreFixture::new(backend).await;
    let budget = |c: &mut weir_master::MasterConfig| c.resident_tasks = 10;
    let m = InProcMaster::start_configured(&store.url, None, budget).await;
    wait_master(&m.url).await;
    let mut jobs = m.jobs();
    let mut submitted = Vec::new();
    for i in 0..40 {
        let mut spec = job(&format!("backlog-{i}"), vec![step("a", "noop", "file", &[])]);
        spec.priority = if i % 4 == 3 { 5 } else { 0 };
        spec.run_id = format!("run-{i}");
        submitted.push((spec.priority, submit(&mut jobs, spec).await));
    }
    let (paused, cancelled) = (submitted[30].1.clone(), submitted[33].1.clone());
    jobs.pause_job(v1::PauseJobRequest { job_id: paused.clone() }).await.expect("a parked job pauses");
    let cancel = v1::CancelJobRequest { job_id: cancelled.clone(), reason: "not needed".into() };
    jobs.cancel_job(cancel).await.expect("a parked job is cancelled");
    let mut again = job("backlog-35", vec![step("a", "noop", "file", &[])]);
    again.run_id = "run-35".into();
    let resubmitted = jobs.submit_job(v1::SubmitJobRequest { spec: Some(again) }).await.expect("submit").into_inner();
    assert!(!resubmitted.created, "the run id finds the parked job");
    assert_eq!(resubmitted.job.expect("job").id, submitted[35].1);

    m.stop().await;
    let m = InProcMaster::start_configured(&store.url, None, budget).await;
    wait_master(&m.url).await;
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    let get = |id: &str| v1::GetJobRequest { job_id: id.to_string() };
    let state = jobs.get_job(get(&paused)).await.expect("get").into_inner().job.expect("job").state;
    assert_eq!(state, v1::JobState::Paused as i32);
    let mut served = Vec::new();
    loop {
        let leases = acquire(&mut w, "file", 1, 300).await;
        let Some(l) = leases.first() else { break };
        served.push(l.job_id.clone());
        complete(&mut w, l).await.expect("complete");
    }
    let mut expected: Vec<(i32, String)> =
        submitted.iter().filter(|(_, id)| *id != paused && *id != cancelled).cloned().collect();
    // Highest priority first, then in the order submitted (a stable sort keeps it).
    expected.sort_by_key(|(p, _)| -p);
    assert_eq!(served, expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
    jobs.resume_job(v1::ResumeJobRequest { job_id: paused.clone() }).await.expect("resume");
    let l = acquire(&mut w, "file", 1, 2000).await;
    assert_eq!(l.iter().map(|l| l.job_id.clone()).collect::<Vec<_>>(), vec![paused.clone()]);
    complete(&mut w, &l[0]).await.expect("complete");
    for (_, id) in &submitted {
        let end = wait_finished(&mut jobs, id, Duration::from_secs(5)).await.state;
        let want = if *id == cancelled { v1::JobState::Cancelled } else { v1::JobState::Succeeded };
        assert_eq!(end, want as i32, "job {id}");
    }
    m.stop().await;
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_memory_budget_waits_in_the_store_postgres() {
    a_backlog_past_the_memory_budget_waits_in_the_store(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_memory_budget_waits_in_the_store_sqlite() {
    a_backlog_past_the_memory_budget_waits_in_the_store(Backend::Sqlite).await;
}
