//! Prometheus metrics: the master's `/metrics` after real jobs ran through a manager — the
//! series a finished job must have produced, with the values the jobs imply.

use std::time::Duration;

use serde_json::json;
use weir_proto::v1;
use weir_tests::{free_port, job, run_manager, step, submit, wait_finished, Backend, InProcMaster, StoreFixture};

use weir_tests::metric_sample as sample;

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
    // The in-process bus of `weir dev`, so the outbox relay runs too.
    let bus: std::sync::Arc<dyn weir_bus::Bus> = std::sync::Arc::new(weir_bus::MemoryBus::default());
    let master = InProcMaster::start_configured(&store.url, Some(bus.clone()), |c| {
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
    // Both jobs finished and left memory; nothing waits parked in the store.
    assert_eq!(v("weir_engine_resident_tasks"), 0.0);
    assert_eq!(v("weir_engine_parked"), 0.0);
    assert!(v("weir_store_commit_duration_seconds_count") >= 3.0);
    // Every job event went out: created, started, each task's events, the end.
    assert!(v("weir_relay_published_events_total") >= 12.0, "{text}");
    assert_eq!(v("weir_outbox_backlog_events"), 0.0);
    assert_eq!(v("weir_relay_lag_seconds"), 0.0, "idle");
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

/// The five binaries, each with `/metrics` on its own port, scraped by a real Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_five_binaries_and_finds_what_a_job_did() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master_port = free_port();
    let master_metrics = format!("127.0.0.1:{}", free_port());
    let url = format!("http://127.0.0.1:{master_port}");
    let _master = weir_tests::Proc::spawn(
        "weir-master",
        &["--listen", &format!("127.0.0.1:{master_port}"), "--heartbeat-interval", "200ms"],
        &[("WEIR_STORE_URL", store.url.as_str()), ("WEIR_METRICS_LISTEN", master_metrics.as_str())],
    );
    let mut targets = vec![("weir-master".to_string(), master_metrics.clone())];
    let mut managers = Vec::new();
    for q in ["api", "file", "batch", "stream"] {
        let addr = format!("127.0.0.1:{}", free_port());
        let env = [("WEIR_MASTER_URL", url.as_str()), ("WEIR_POLL_WAIT", "2s"), ("WEIR_METRICS_LISTEN", addr.as_str())];
        managers.push(weir_tests::Proc::spawn(&format!("weir-{q}-manager"), &[], &env));
        targets.push((format!("weir-{q}-manager"), addr));
    }
    weir_tests::wait_master(&url).await;
    let targets: Vec<(&str, String)> = targets.iter().map(|(j, a)| (j.as_str(), a.clone())).collect();
    let prometheus = weir_tests::Prometheus::start(&targets).await;

    // One job with a step on each manager's queue.
    let mut jobs = v1::job_service_client::JobServiceClient::new(weir_tests::channel(&url));
    let steps = ["api", "file", "batch", "stream"].iter().map(|q| step(q, "noop", q, &[])).collect();
    let id = submit(&mut jobs, job("scraped", steps)).await;
    let done = wait_finished(&mut jobs, &id, Duration::from_secs(60)).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32);

    // What Prometheus holds once it has scraped after the job: every target up, the job
    // finished on the master, each manager's task.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The job names the alert rules expect (deploy/prometheus/weir-alerts.yaml).
        let up = prometheus.query(r#"up{job=~"weir-.*"} == 1"#).await.len();
        let finished = prometheus.query(r#"weir_jobs_finished_total{namespace="test",state="succeeded"}"#).await;
        let tasks = prometheus.query(r#"weir_manager_tasks_total{kind="noop",outcome="succeeded"}"#).await;
        if up == 5 && finished.iter().map(|s| s.1).sum::<f64>() == 1.0 && tasks.len() == 4 {
            // Each manager's series comes from its own scrape target and names its own queue.
            for (labels, value) in &tasks {
                assert_eq!(
                    labels["job"],
                    format!("weir-{}-manager", labels["queue"].as_str().unwrap_or("")),
                    "{labels}"
                );
                assert_eq!(*value, 1.0, "{labels}");
            }
            break;
        }
        if std::time::Instant::now() >= deadline {
            let jobs = prometheus.query(r#"{job="weir-master",__name__=~"weir_jobs.*"}"#).await;
            panic!(
                "prometheus never saw it: up {up}, finished {finished:?}, tasks {tasks:?}; the master's jobs: {jobs:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let calls =
        prometheus.query(r#"sum(weir_grpc_server_requests_total{job="weir-master",method="CompleteTask"})"#).await;
    assert_eq!(calls.first().map(|s| s.1), Some(4.0), "{calls:?}");
    let depth = prometheus.query(r#"weir_queue_depth{job="weir-master"}"#).await;
    assert_eq!(depth.len(), 4, "one series per queue: {depth:?}");
    // Every panel of the Grafana dashboard is valid PromQL against these series (the query
    // helper asserts success), and the gauges' panels already show data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/../deploy/grafana/weir-dashboard.json", env!("CARGO_MANIFEST_DIR")))
            .expect("dashboard"),
    )
    .expect("JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        let expr = panel["targets"][0]["expr"].as_str().expect("expr");
        let found = prometheus.query(expr).await;
        let title = panel["title"].as_str().unwrap_or_default();
        // (A rate needs two samples of a series, which the job's just-born counters lack yet.)
        if ["Ready tasks by queue", "Tasks in flight by queue"].contains(&title) {
            assert!(!found.is_empty(), "panel {title:?} ({expr}) shows nothing");
        }
    }
    drop(managers);
    store.cleanup().await;
}

/// The alert rules in `deploy/prometheus/` are valid and their unit tests pass under
/// Prometheus' own `promtool` (each alert fires when it should, not before its `for`, not
/// under its threshold).
#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let dir = format!("{}/../deploy/prometheus", env!("CARGO_MANIFEST_DIR"));
    for args in [["check", "rules", "weir-alerts.yaml"], ["test", "rules", "weir-alerts.test.yaml"]] {
        let out = std::process::Command::new(weir_tests::promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
