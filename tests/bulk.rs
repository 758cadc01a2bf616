//! Files to datasets through the five real binaries: the bulk-file template ingesting a
//! folder end to end with the `weir` CLI, and a batch manager killed with SIGKILL in the
//! middle of loading PostgreSQL leaving no duplicate rows after the retry.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use weir_proto::v1;
use weir_tests::*;

struct Platform {
    url: String,
    _master: Proc,
    managers: Vec<Proc>,
}

fn manager(name: &str, url: &str, data: &Path, sink_url: &str) -> Proc {
    let data = data.display().to_string();
    let env = [
        ("WEIR_MASTER_URL", url),
        ("WEIR_POLL_WAIT", "1s"),
        ("WEIR_DRAIN_TIMEOUT", "500ms"),
        ("WEIR_DATA_DIR", data.as_str()),
        ("JOB_TEST_SINK_URL", sink_url),
    ];
    Proc::spawn(&format!("weir-{name}-manager"), &[], &env)
}

async fn start(store_url: &str, data: &Path, queues: &[&str]) -> Platform {
    let (url, master) = spawn_master(store_url);
    let managers = queues.iter().map(|q| manager(q, &url, data, store_url)).collect();
    Platform { url, _master: master, managers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_file_template_ingests_a_folder_through_five_binaries() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().expect("tmp");
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(inbox.join("2026/11")).expect("mkdir");
    let mut expected_rows = 0;
    for i in 0..6 {
        let mut csv = String::from("order_id,customer,amount,placed\n");
        for r in 0..50 {
            csv.push_str(&format!("{},{},{}.5,2026-11-2{}\n", i * 1000 + r, ["ada", "bob", "Zoë"][r % 3], r, i % 3));
            expected_rows += 1;
        }
        let name = if i % 2 == 0 { format!("orders-{i}.csv") } else { format!("2026/11/orders-{i}.csv") };
        std::fs::write(inbox.join(name), csv).expect("write");
    }
    // One file with rows that break the rules: quarantined, counted, not loaded.
    std::fs::write(
        inbox.join("orders-bad.csv"),
        "order_id,customer,amount,placed\n9001,eve,-1,2026-11-20\n9002,,3,2026-11-20\nbroken\n",
    )
    .expect("bad");
    let lake = dir.path().join("lake");
    let spec = json!({
        "namespace": "bulk", "name": "orders", "template": "bulk_file",
        "params": {
            "location": {"uri": format!("file://{}", inbox.display())},
            "patterns": ["**/*.csv"], "parallelism": 3,
            "rules": {"ranges": {"amount": {"min": 0}}, "not_null": ["customer"]},
            "sinks": [{"type": "parquet", "path": lake.display().to_string(), "partition_by": "placed"},
                      {"type": "postgres", "url_env": "JOB_TEST_SINK_URL", "table": "orders", "create": true, "key": ["order_id"]}],
            "max_quarantined_ratio": 0.05
        }
    });
    let spec_file = dir.path().join("orders.json");
    std::fs::write(&spec_file, spec.to_string()).expect("spec");

    let p = start(&store.url, &dir.path().join("data"), &["api", "file", "batch", "stream"]).await;
    let id = cli_submit(&p.url, &spec_file).await;
    let watch = weir_cli(&p.url, &["watch", &id]);
    let got = weir_cli(&p.url, &["get", &id]);
    let shown = String::from_utf8_lossy(&got.stdout).to_string();
    assert!(watch.status.success(), "the job succeeds: {shown}");

    // `weir get` shows each file's accounting.
    assert!(shown.contains("QUARANTINED") && shown.contains("orders-bad.csv"), "{shown}");
    let json_out = weir_cli(&p.url, &["--json", "get", &id]);
    let job: Value = serde_json::from_slice(&json_out.stdout).expect("json");
    let task =
        |s: &str| job["tasks"].as_array().and_then(|t| t.iter().find(|t| t["step_id"] == s)).cloned().expect("task");
    let fetched: u64 = (1..=3).map(|i| task(&format!("process_{i}"))["output"]["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(fetched, 7, "the three branches fetched disjoint shards covering every file");
    let summary = &task("batch_validation")["output"];
    assert_eq!(summary["files_fetched"], 7);
    assert_eq!(summary["rows_read"], expected_rows + 3);
    assert_eq!(summary["rows_written"], expected_rows);
    assert_eq!(summary["rows_quarantined"], 3);

    let mut pg = PgConnection::connect(&store.url).await.expect("pg");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut pg).await.expect("count");
    assert_eq!(n, expected_rows as i64);
    let zoe: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer = 'Zoë'").fetch_one(&mut pg).await.expect("zoe");
    assert_eq!(zoe, 6 * 16);
    let parts: Vec<_> = std::fs::read_dir(&lake)
        .expect("lake")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    for d in ["placed=2026-11-20", "placed=2026-11-21", "placed=2026-11-22"] {
        assert!(parts.iter().any(|p| p == d), "{d} in {parts:?}");
    }
    drop(pg);
    drop(p);
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_manager_killed_mid_load_leaves_no_duplicate_rows() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let input = dir.path().join("events.csv");
    let rows = 600_000u64;
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input).expect("create"));
        writeln!(w, "id,kind,value,at").expect("header");
        for i in 0..rows {
            writeln!(w, "{i},k{},{}.25,2026-11-20T10:{:02}:{:02}Z", i % 7, i, (i / 60) % 60, i % 60).expect("row");
        }
    }
    let mut p = start(&store.url, &data, &["batch"]).await;
    let mut jobs = v1::job_service_client::JobServiceClient::new(channel(&p.url));
    let mut s = step("load", "convert", "batch", &[]);
    s.config_json = json!({"inputs": [input.display().to_string()],
                           "sinks": [{"type": "postgres", "url_env": "JOB_TEST_SINK_URL", "table": "events", "create": true}]})
    .to_string();
    s.timeouts = Some(v1::StepTimeouts { heartbeat: dur(2000), ..Default::default() });
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        match jobs.submit_job(v1::SubmitJobRequest { spec: Some(job("load", vec![s.clone()])) }).await {
            Ok(r) => break r.into_inner().job.expect("job").id,
            Err(e) => assert!(Instant::now() < deadline, "submit: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Kill the batch manager while its COPY into PostgreSQL is under way.
    let mut pg = PgConnection::connect(&store.url).await.expect("pg");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let copying: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%events%' AND state = 'active'",
        )
        .fetch_one(&mut pg)
        .await
        .expect("activity");
        if copying > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the load never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = p.managers.remove(0);
    victim.kill9().await;
    let before: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut pg).await.ok();
    assert!(before.unwrap_or(0) == 0, "a killed load commits nothing: {before:?}");

    // A replacement takes the task once the lease expires and loads it once.
    let _replacement = manager("batch", &p.url, &data, &store.url);
    let done = wait_finished(&mut jobs, &id, Duration::from_secs(180)).await;
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}", t.error_message);
    assert!(t.fence_token >= 2, "the task was leased again");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut pg).await.expect("count");
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT id) FROM events").fetch_one(&mut pg).await.expect("distinct");
    assert_eq!((n, distinct), (rows as i64, rows as i64), "every row once");
    drop(pg);
    store.cleanup().await;
}
