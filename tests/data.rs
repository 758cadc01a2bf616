//! The batch manager's data kinds through the master: a job converts a CSV, checks it and
//! stores it in a Parquet dataset and a PostgreSQL table; its task outputs account for
//! every row, and both sinks are read back.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use weir_batch_manager::BatchSettings;
use weir_proto::v1;
use weir_store::testing::TestSchema;
use weir_tests::{job, step, submit, tasks, wait_finished, Backend, InProcMaster, StoreFixture};

fn with_config(mut s: v1::StepSpec, config: Value) -> v1::StepSpec {
    s.config_json = config.to_string();
    s
}

#[tokio::test]
async fn a_csv_job_converts_checks_and_stores_with_every_row_accounted_for() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let sink_db = TestSchema::create().await.expect("postgres");
    let url_env = format!("JOB_TEST_SINK_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&url_env, &sink_db.url);
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("orders.csv");
    std::fs::write(&input, "id,customer,amount,placed\n1,ada,12.5,2026-11-20\n2,bob,-3,2026-11-20\n3,cy,7,2026-11-21\nbroken\n4,,9,2026-11-21\n")
        .expect("input");
    let dataset = dir.path().join("orders");

    let cancel = CancellationToken::new();
    let settings = BatchSettings { data_dir: dir.path().join("data"), ..BatchSettings::default() };
    let args = weir_worker::manager::ManagerArgs {
        concurrency: Some(4),
        poll_wait: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
        worker_id: Some("batch-test".into()),
        ..weir_worker::manager::ManagerArgs::local(&master.url)
    };
    let manager =
        tokio::spawn(weir_worker::manager::run(weir_batch_manager::spec_with(settings), args, cancel.clone()));

    let spec = job(
        "orders",
        vec![
            with_config(step("convert", "convert", "batch", &[]), json!({"inputs": [input.display().to_string()]})),
            with_config(
                step("quality", "quality", "batch", &["convert"]),
                json!({"rules": {"ranges": {"amount": {"min": 0}}, "not_null": ["customer"]}}),
            ),
            with_config(
                step("store", "store", "batch", &["quality"]),
                json!({"sinks": [
                    {"type": "parquet", "path": dataset.display().to_string(), "partition_by": "placed"},
                    {"type": "postgres", "url_env": url_env, "table": "orders", "create": true, "key": ["id"]}
                ]}),
            ),
        ],
    );
    let mut jobs = master.jobs();
    let id = submit(&mut jobs, spec).await;
    let done = wait_finished(&mut jobs, &id, Duration::from_secs(60)).await;
    let ts = tasks(&mut jobs, &id).await;
    let out = |s: &str| -> Value {
        let t = ts.iter().find(|t| t.step_id == s).expect("task");
        serde_json::from_str(&t.output_json).unwrap_or_else(|_| panic!("{s}: {} {}", t.error_message, t.output_json))
    };
    assert_eq!(weir_proto::convert::job_state_from_wire(done.state).map(|s| s.as_str()), Some("succeeded"));
    let counts = |v: &Value| (v["rows_read"].as_u64(), v["rows_written"].as_u64(), v["rows_quarantined"].as_u64());
    assert_eq!(counts(&out("convert")), (Some(5), Some(4), Some(1)), "the short row is quarantined");
    assert_eq!(counts(&out("quality")), (Some(4), Some(2), Some(2)), "a negative amount and a missing customer");
    assert_eq!(counts(&out("store")), (Some(2), Some(2), Some(0)));
    // The same rows, as Prometheus reads them (the manager runs in this process).
    let m = weir_runtime::metrics::encode();
    for (kind, outcome, n) in
        [("convert", "read", 5), ("convert", "quarantined", 1), ("quality", "written", 2), ("store", "written", 2)]
    {
        let series = format!(r#"weir_batch_rows_total{{kind="{kind}",outcome="{outcome}"}} {n}"#);
        assert!(m.lines().any(|l| l == series), "{series} not in:\n{m}");
    }
    assert_eq!(out("store")["files"][0]["input"], json!(input.display().to_string()), "identity kept along the chain");
    assert_eq!(out("store")["files"][0]["tables"]["orders"], json!(2));
    let quarantine = out("quality")["files"][0]["quarantine"].as_str().expect("quarantine file").to_string();
    assert!(std::path::Path::new(&quarantine).exists());

    let mut pg = PgConnection::connect(&sink_db.url).await.expect("connect");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT concat_ws('|', id, customer, amount, placed) FROM orders ORDER BY id")
            .fetch_all(&mut pg)
            .await
            .expect("read back");
    assert_eq!(rows, vec!["1|ada|12.5|2026-11-20", "3|cy|7|2026-11-21"]);
    let parts: Vec<String> = out("store")["files"][0]["sink_files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().unwrap_or("").replace(&dataset.display().to_string(), ""))
        .collect();
    assert_eq!(parts.len(), 2);
    assert!(parts[0].starts_with("/placed=2026-11-20/") && parts[1].starts_with("/placed=2026-11-21/"), "{parts:?}");

    // A bad config is refused at the door, naming the problem.
    let bad = job("bad", vec![with_config(step("s", "store", "batch", &[]), json!({"sinks": []}))]);
    let err = jobs.submit_job(v1::SubmitJobRequest { spec: Some(bad) }).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("store needs at least one sink"), "{}", err.message());

    // A step with no inputs fails for good with the reason, not retried.
    let none = job("none", vec![step("c", "convert", "batch", &[])]);
    let id = submit(&mut jobs, none).await;
    let done = wait_finished(&mut jobs, &id, Duration::from_secs(30)).await;
    let t = &tasks(&mut jobs, &id).await[0];
    assert_eq!(weir_proto::convert::job_state_from_wire(done.state).map(|s| s.as_str()), Some("failed"));
    assert!(t.error_message.contains("no input files"), "{}", t.error_message);
    assert_eq!(t.attempt, 1);

    cancel.cancel();
    manager.await.expect("join").expect("manager");
    drop(pg);
    master.stop().await;
    sink_db.drop().await.expect("drop");
    store.cleanup().await;
}
