//! OpenTelemetry traces end to end: the real `weir` CLI, `weir-master` and
//! `weir-batch-manager` export over OTLP/gRPC to a real receiver on loopback (oteltest's
//! GrpcSink, from PyPI), with the events on a real Kafka-protocol broker (tansu). One job
//! is one trace: the CLI's command, the master's SubmitJob and its commit, the manager's
//! lease, task and conversion, its calls back to the master, and the events' `traceparent`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_proto::v1;
use weir_tests::{free_port, python, wait_finished, wait_port, Backend, Proc, StoreFixture, Tansu};

/// A trace receiver writing the spans it gets to a file, one JSON object per line.
struct Receiver {
    endpoint: String,
    spans: std::path::PathBuf,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start() -> Receiver {
        let dir = tempfile::tempdir().expect("tmp");
        let spans = dir.path().join("spans.jsonl");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/otlp_sink.py");
        let proc = Proc::spawn_path(
            &python(),
            &[script.to_str().expect("path"), &port.to_string(), spans.to_str().expect("path")],
        );
        wait_port(port, "the OTLP receiver").await;
        Receiver { endpoint: format!("http://127.0.0.1:{port}"), spans, _proc: proc, _dir: dir }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_from_the_cli_through_the_master_a_manager_and_its_events() {
    let receiver = Receiver::start().await;
    let tansu = Tansu::start().await;
    let store = StoreFixture::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tmp");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        // Export every 200 ms rather than 5 s, so the test need not wait.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env = vec![("WEIR_STORE_URL", store.url.as_str()), ("WEIR_KAFKA_BROKERS", tansu.brokers.as_str())];
    env.extend(otel);
    let _master =
        Proc::spawn("weir-master", &["--listen", &format!("127.0.0.1:{port}"), "--heartbeat-interval", "200ms"], &env);
    let mut env = vec![("WEIR_MASTER_URL", url.as_str()), ("WEIR_POLL_WAIT", "2s")];
    env.extend(otel);
    let _manager = Proc::spawn("weir-batch-manager", &[], &env);
    weir_tests::wait_master(&url).await;

    // A job that converts a small CSV file, submitted with the CLI.
    let csv = dir.path().join("orders.csv");
    std::fs::write(&csv, "id,amount\n1,9.5\n2,3.25\n").expect("write");
    let spec = dir.path().join("job.yaml");
    std::fs::write(
        &spec,
        format!(
            "namespace: traced\nname: orders\nsteps:\n  - {{id: convert, kind: convert, queue: batch, config: {{inputs: [{}]}}}}\n",
            csv.display()
        ),
    )
    .expect("write");
    let out = tokio::process::Command::new(weir_tests::bin("weir"))
        .args(["--master", &url, "--json", "submit", spec.to_str().expect("path")])
        .envs(otel)
        .output()
        .await
        .expect("weir runs");
    assert!(out.status.success(), "weir submit: {}", String::from_utf8_lossy(&out.stderr));
    let submitted: Value = serde_json::from_slice(&out.stdout).expect("the job as JSON");
    let job_id = submitted["id"].as_str().expect("job id").to_string();
    let mut jobs = v1::job_service_client::JobServiceClient::new(weir_tests::channel(&url));
    let done = wait_finished(&mut jobs, &job_id, Duration::from_secs(60)).await;
    assert_eq!(done.state(), v1::JobState::Succeeded, "{}", done.error);

    // The CLI's span starts the trace; wait until every service's spans of it arrived.
    let wanted: BTreeSet<&str> = ["weir-cli", "weir-master", "weir-batch-manager"].into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (trace, names) = loop {
        let spans = receiver.spans();
        let trace = spans
            .iter()
            .find(|s| s["service"] == "weir-cli" && s["parent_span_id"] == "")
            .and_then(|s| s["trace_id"].as_str())
            .map(str::to_string);
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in spans.iter().filter(|s| trace.is_some() && s["trace_id"].as_str() == trace.as_deref()) {
            let service = s["service"].as_str().unwrap_or_default().to_string();
            names.entry(service).or_default().insert(s["name"].as_str().unwrap_or_default().to_string());
        }
        let complete = wanted.iter().all(|w| names.contains_key(*w))
            && names.get("weir-batch-manager").is_some_and(|n| n.contains("convert"))
            && names.get("weir-master").is_some_and(|n| n.contains("weir.v1.WorkerService/CompleteTask"));
        if let (Some(trace), true) = (trace.clone(), complete) {
            break (trace, names);
        }
        assert!(Instant::now() < deadline, "the trace never came together: {names:?} ({} spans)", spans.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // What each service did in the job's trace.
    let master = &names["weir-master"];
    for n in ["weir.v1.JobService/SubmitJob", "submit_job", "commit job", "weir.v1.WorkerService/CompleteTask"] {
        assert!(master.contains(n), "the master's spans lack {n}: {master:?}");
    }
    let manager = &names["weir-batch-manager"];
    for n in ["batch convert", "convert"] {
        assert!(manager.contains(n), "the manager's spans lack {n}: {manager:?}");
    }
    assert!(names["weir-cli"].contains("weir submit"), "{names:?}");
    // Resource attributes name the service.
    let spans = receiver.spans();
    let master_span = spans.iter().find(|s| s["service"] == "weir-master").expect("a master span");
    assert_eq!(master_span["resource"]["service.namespace"], "weir");

    // The job's events on Kafka carry the same trace.
    let events = tansu.read_topic(weir_core::events::topic::JOBS);
    let ours: Vec<_> = events.iter().filter(|m| m.key.as_deref() == Some(job_id.as_str())).collect();
    assert!(!ours.is_empty(), "no events of the job on {}", weir_core::events::topic::JOBS);
    for m in ours {
        let tp = m.headers.get("traceparent").expect("a traceparent header");
        let parsed: weir_core::trace::TraceParent = tp.parse().expect("a valid traceparent");
        assert_eq!(parsed.trace_id_hex(), trace, "the event belongs to the job's trace");
    }
    store.cleanup().await;
}
