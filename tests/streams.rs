//! The stream manager's `consume` from Kafka (the tansu broker, on a loopback port) into a
//! Parquet dataset through the master: every produced record in the dataset once, a
//! message that is not JSON quarantined with its reason while the partitions go on, a run
//! again reading nothing twice, and a restart after a crash between landing and
//! committing resuming after what the dataset holds, not what the broker committed.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weir_bus::{Message, TopicSpec};
use weir_proto::v1;
use weir_tests::*;

fn lake_ids(lake: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(lake).expect("lake").flatten() {
        if e.path().extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let f = std::fs::File::open(e.path()).expect("open");
        for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .expect("parquet")
            .build()
            .expect("reader")
        {
            let b = b.expect("batch");
            let col = b.column(b.schema().index_of("id").expect("id"));
            let col = arrow_cast::cast(col, &arrow_schema::DataType::Int64).expect("int");
            let col = col.as_any().downcast_ref::<arrow_array::Int64Array>().expect("ints");
            ids.extend(col.iter().flatten());
        }
    }
    ids.sort_unstable();
    ids
}

async fn produce(bus: &std::sync::Arc<dyn weir_bus::Bus>, ids: std::ops::Range<i64>) {
    let batch: Vec<Message> = ids
        .map(|i| {
            Message::new(
                "orders",
                &format!("k{}", i % 7),
                json!({"id": i, "amount": i as f64 * 1.5}).to_string().into_bytes(),
            )
        })
        .collect();
    bus.publish(&batch).await.expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_land_once_and_a_rerun_or_a_restart_reads_nothing_twice() {
    let broker = Tansu::start().await;
    let bus = broker.bus();
    bus.ensure_topics(&[TopicSpec { name: "orders".into(), partitions: 3, replication: 1 }]).await.expect("topic");
    produce(&bus, 0..300).await;
    bus.publish(&[Message::new("orders", "k1", b"{not json".to_vec())]).await.expect("poison");
    let dir = tempfile::tempdir().expect("tmp");
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let settings = weir_stream_manager::StreamSettings { data_dir: dir.path().join("data") };
    let (stop, manager) = run_manager(weir_stream_manager::spec_with(settings), &master.url, "stream-1", "");
    let lake = dir.path().join("lake");
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["orders"]},
                        "until": "now", "flush": {"max_records": 50, "interval": "1s"},
                        "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let mut jc = master.jobs();
    let run = |name: &str| {
        let mut s = step("consume", "consume", "stream", &[]);
        s.config_json = config.to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        job(name, vec![s])
    };
    let output = |ts: &[v1::Task]| -> Value {
        serde_json::from_str(&ts[0].output_json).unwrap_or(json!({"error": ts[0].error_message}))
    };

    let id = submit(&mut jc, run("orders")).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
    let ts = tasks(&mut jc, &id).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}", ts[0].error_message);
    let o = output(&ts);
    assert_eq!(
        (o["records"].as_u64(), o["rows_written"].as_u64(), o["rows_quarantined"].as_u64()),
        (Some(301), Some(300), Some(1)),
        "{o}"
    );
    assert_eq!(lake_ids(&lake), (0..300).collect::<Vec<_>>(), "every record once");

    // The same stream again: nothing new, nothing twice.
    let id = submit(&mut jc, v1::JobSpec { run_id: "2".into(), ..run("orders") }).await;
    wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
    assert_eq!(output(&tasks(&mut jc, &id).await)["records"].as_u64(), Some(0));

    // More records, and the broker's committed offsets lost (another group): the
    // dataset's positions say where to go on.
    produce(&bus, 300..450).await;
    let mut other = config.clone();
    other["source"]["group"] = json!("a-group-that-never-committed");
    let mut s = step("consume", "consume", "stream", &[]);
    s.config_json = other.to_string();
    let id = submit(&mut jc, job("orders-restarted", vec![s])).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
    let ts = tasks(&mut jc, &id).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}", ts[0].error_message);
    assert_eq!(output(&ts)["records"].as_u64(), Some(150), "{}", output(&ts));
    assert_eq!(lake_ids(&lake), (0..450).collect::<Vec<_>>(), "every record once");

    // A source type not served yet is refused at submission, naming it.
    let mut nats = step("consume", "consume", "stream", &[]);
    nats.config_json =
        json!({"source": {"type": "nats", "servers": "nats://127.0.0.1:4222", "stream": "s", "consumer": "c"},
                              "sinks": [{"type": "parquet", "path": "/tmp/x"}]})
        .to_string();
    let e = jc.submit_job(v1::SubmitJobRequest { spec: Some(job("nats", vec![nats])) }).await.expect_err("refused");
    assert!(e.message().contains("source type nats is not served yet"), "{}", e.message());
    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}
