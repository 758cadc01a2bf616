//! Prometheus metrics: the master's `/metrics` after real jobs ran through a manager — the
//! series a finished job must have produced, with the values the jobs imply.

use std::time::Duration;

use serde_json::json;
use weir_proto::v1;
use weir_tests::{free_port, job, run_manager, step, submit, wait_finished, Backend, InProcMaster, StoreFixture};

/// The value of the sample `name{labels}` (labels as written, in order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// What `promtool check metrics` says of `text` (empty: nothing).
fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(weir_tests::promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn scrape(url: &str) -> String {
    let r = reqwest::get(url).await.expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    r.text().await.expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masters_metrics_count_the_jobs_tasks_calls_and_commits_that_ran() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let port = free_port();
    let master = InProcMaster::start_configured(&store.url, None, |c| {
        c.metrics.metrics_listen = format!("127.0.0.1:{port}");
    })
    .await;
    weir_tests::wait_master(&master.url).await;
    let (stop, manager) = run_manager(weir_batch_manager::spec().expect("spec"), &master.url, "batch-metrics", "");
    let mut jobs = master.jobs();
    let ns = |mut s: v1::JobSpec| {
        s.namespace = "metrics".into();
        s
    };
    let ok =
        submit(&mut jobs, ns(job("chain", vec![step("a", "noop", "batch", &[]), step("b", "noop", "batch", &["a"])])))
            .await;
    let mut bad = step("boom", "fail", "batch", &[]);
    bad.config_json = json!({"retryable": false}).to_string();
    let failed = submit(&mut jobs, ns(job("broken", vec![bad]))).await;
    for id in [&ok, &failed] {
        wait_finished(&mut jobs, id, Duration::from_secs(30)).await;
    }
    let refused = jobs.submit_job(v1::SubmitJobRequest { spec: Some(ns(job("empty", vec![]))) }).await;
    assert_eq!(refused.expect_err("no steps").code(), tonic::Code::InvalidArgument);
    // The queue gauges are read off the engine once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let text = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    assert_eq!(v(r#"weir_jobs_created_total{namespace="metrics",template="none"}"#), 2.0);
    assert_eq!(v(r#"weir_jobs_finished_total{namespace="metrics",template="none",state="succeeded"}"#), 1.0);
    assert_eq!(v(r#"weir_jobs_finished_total{namespace="metrics",template="none",state="failed"}"#), 1.0);
    assert_eq!(v(r#"weir_job_duration_seconds_count{namespace="metrics",template="none",state="succeeded"}"#), 1.0);
    assert_eq!(v(r#"weir_task_duration_seconds_count{queue="batch",kind="noop",state="succeeded"}"#), 2.0);
    assert_eq!(v(r#"weir_task_duration_seconds_count{queue="batch",kind="fail",state="failed"}"#), 1.0);
    assert_eq!(v(r#"weir_task_schedule_to_start_seconds_count{queue="batch"}"#), 3.0);
    assert_eq!(v(r#"weir_queue_depth{queue="batch"}"#), 0.0);
    assert_eq!(v(r#"weir_queue_backlog_age_seconds{queue="api"}"#), 0.0);
    assert!(v("weir_store_commit_duration_seconds_count") >= 3.0);
    assert_eq!(v(r#"weir_grpc_server_requests_total{service="weir.v1.JobService",method="SubmitJob",code="OK"}"#), 2.0);
    assert_eq!(
        v(
            r#"weir_grpc_server_requests_total{service="weir.v1.JobService",method="SubmitJob",code="INVALID_ARGUMENT"}"#
        ),
        1.0
    );
    assert!(
        v(r#"weir_grpc_server_requests_total{service="weir.v1.WorkerService",method="CompleteTask",code="OK"}"#) >= 2.0
    );
    // Prometheus' own linter finds nothing against its naming conventions.
    let lint = promtool_check(&text);
    assert!(lint.is_empty(), "promtool check metrics:\n{lint}");
    // No label holds a job or task id.
    for id in [&ok, &failed] {
        assert!(!text.contains(id.as_str()), "a job id in the labels");
    }
    let missing = reqwest::get(format!("http://127.0.0.1:{port}/other")).await.expect("GET");
    assert_eq!(missing.status(), 404);

    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}
