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

/// How `ids` differ from 0..n: (rows, distinct, the first duplicate, the first missing).
fn once(ids: &[i64], n: i64) -> (usize, usize, Option<i64>, Option<i64>) {
    let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    let dup = ids.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    (ids.len(), distinct.len(), dup, (0..n).find(|i| !distinct.contains(i)))
}

fn lake_ids(lake: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for b in read_lake(lake, None).expect("the lake reads") {
        let col = arrow_cast::cast(b.column(b.schema().index_of("id").expect("id")), &arrow_schema::DataType::Int64)
            .expect("int");
        ids.extend(col.as_any().downcast_ref::<arrow_array::Int64Array>().expect("ints").iter().flatten());
    }
    ids.sort_unstable();
    ids
}

/// A dataset's rows as JSON objects of their values' text.
fn lake_records(lake: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for b in read_lake(lake, None).expect("the lake reads") {
        let opts = arrow_cast::display::FormatOptions::default();
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &opts).expect("formats"))
            .collect();
        for i in 0..b.num_rows() {
            let row: serde_json::Map<String, Value> = b
                .schema()
                .fields()
                .iter()
                .zip(&cols)
                .map(|(f, c)| (f.name().clone(), json!(c.value(i).to_string())))
                .collect();
            out.push(Value::Object(row));
        }
    }
    out
}

/// A tansu broker with `topics` (name, partitions) made, and a bus client for it.
async fn broker_with(topics: &[(&str, i32)]) -> (Tansu, std::sync::Arc<dyn weir_bus::Bus>) {
    let broker = Tansu::start().await;
    let bus = broker.bus();
    let specs: Vec<TopicSpec> =
        topics.iter().map(|(t, p)| TopicSpec { name: t.to_string(), partitions: *p, replication: 1 }).collect();
    bus.ensure_topics(&specs).await.expect("topics");
    (broker, bus)
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
    let (broker, bus) = broker_with(&[("orders", 3)]).await;
    produce(&bus, 0..300).await;
    bus.publish(&[Message::new("orders", "k1", b"{not json".to_vec())]).await.expect("poison");
    let dir = tempfile::tempdir().expect("tmp");
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let settings = weir_stream_manager::StreamSettings { data_dir: dir.path().join("data"), ..Default::default() };
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
    assert_eq!(once(&lake_ids(&lake), 300), (300, 300, None, None), "every record once");

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
    assert_eq!(once(&lake_ids(&lake), 450), (450, 450, None, None), "every record once");

    // A position a source does not have is refused at submission, naming the field.
    let mut kinesis = step("consume", "consume", "stream", &[]);
    kinesis.config_json = json!({"source": {"type": "kinesis", "stream": "s"}, "from": {"offsets": {"s/0": 5}},
                                 "sinks": [{"type": "parquet", "path": "/tmp/x"}]})
    .to_string();
    let e =
        jc.submit_job(v1::SubmitJobRequest { spec: Some(job("kinesis", vec![kinesis])) }).await.expect_err("refused");
    assert!(e.message().contains("from.offsets: kinesis positions are sequence numbers"), "{}", e.message());
    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}

/// The real `weir-stream-manager` killed with SIGKILL in the middle of a stream: after the
/// lease expires another manager takes the stream over, resumes after what the dataset
/// holds, and every produced record is in the dataset exactly once.
///
/// One partition, produced in batches of 100 and flushed every 100 records: tansu 0.6
/// answers a fetch from an offset inside a record batch with the batches after it, so a
/// consumer resuming mid-batch would never see the batch's tail (a broker bug Kafka does
/// not have); aligned, every resume starts at a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_manager_killed_mid_stream_is_taken_over_with_every_record_once() {
    let (broker, bus) = broker_with(&[("orders", 1)]).await;
    let n = 6_000;
    for chunk in (0..n).step_by(100) {
        produce(&bus, chunk..chunk + 100).await;
    }
    let store = StoreFixture::new(Backend::Sqlite).await;
    let source = json!({"type": "kafka", "brokers": broker.brokers, "topics": ["orders"]});
    killed_mid_stream(&store, source, &[], n).await;
    store.cleanup().await;
}

/// Where a stream under test lands: a Parquet dataset in the test's folder, or a topic.
enum Target<'a> {
    Lake,
    Topic(&'a Tansu, &'a str),
}

impl Target<'_> {
    fn sink(&self, lake: &Path) -> Value {
        match self {
            Target::Lake => json!({"type": "parquet", "path": lake.display().to_string()}),
            Target::Topic(b, t) => json!({"type": "kafka", "brokers": b.brokers, "topic": t, "key": "id"}),
        }
    }

    /// About how many flushes (of 100) landed so far.
    fn flushes(&self, lake: &Path) -> usize {
        match self {
            Target::Lake => std::fs::read_dir(lake.join("_weir").join("inputs")).map(|d| d.count()).unwrap_or(0),
            Target::Topic(b, t) => (b.topic_ends(t) / 100) as usize,
        }
    }

    /// The ids landed, sorted.
    fn ids(&self, lake: &Path) -> Vec<i64> {
        match self {
            Target::Lake => lake_ids(lake),
            Target::Topic(b, t) => topic_ids(b, t),
        }
    }
}

/// The `id` of every message in `topic`, sorted.
fn topic_ids(broker: &Tansu, topic: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = broker
        .read_topic(topic)
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).expect("JSON")["id"].as_i64().expect("an id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Runs a stream of `source` (until now, flushes of 100) on the real `weir-stream-manager`,
/// SIGKILLs it once five flushes landed and starts another: the job succeeds on a later
/// attempt with every one of the `n` records in the dataset once. The task's id.
async fn killed_mid_stream(store: &StoreFixture, source: Value, env: &[(&str, &str)], n: i64) -> String {
    killed_mid_stream_into(store, source, env, n, Target::Lake).await
}

/// [`killed_mid_stream`] into a dataset or a topic.
async fn killed_mid_stream_into(
    store: &StoreFixture,
    source: Value,
    env: &[(&str, &str)],
    n: i64,
    into: Target<'_>,
) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let (url, _master) = spawn_master(&store.url);
    let data = dir.path().join("data").display().to_string();
    let mut env = env.to_vec();
    env.extend([("WEIR_MASTER_URL", url.as_str()), ("WEIR_POLL_WAIT", "1s"), ("WEIR_DATA_DIR", data.as_str())]);
    let first = Proc::spawn("weir-stream-manager", &[], &env);
    wait_master(&url).await;
    let lake = dir.path().join("lake");
    let mut s = step("consume", "consume", "stream", &[]);
    s.config_json = json!({"source": source, "until": "now", "flush": {"max_records": 100, "interval": "10s"},
                           "sinks": [into.sink(&lake)]})
    .to_string();
    s.timeouts = Some(v1::StepTimeouts { heartbeat: dur(2000), ..Default::default() });
    let mut jc = v1::job_service_client::JobServiceClient::new(channel(&url));
    let id = submit(&mut jc, job("orders", vec![s])).await;
    // Some flushes landed, not all: then SIGKILL.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while into.flushes(&lake) < 5 {
        assert!(std::time::Instant::now() < deadline, "the stream never landed a flush");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill9().await;
    let landed_before = into.ids(&lake).len();
    let _second = Proc::spawn("weir-stream-manager", &[], &env);
    let done = wait_finished(&mut jc, &id, Duration::from_secs(120)).await;
    let ts = tasks(&mut jc, &id).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}", ts[0].error_message);
    assert!(ts[0].attempt >= 2, "taken over by another attempt");
    assert!(landed_before < n as usize, "killed mid-stream ({landed_before} of {n} landed)");
    assert_eq!(once(&into.ids(&lake), n), (n as usize, n as usize, None, None), "every record once");
    ts[0].id.clone()
}

/// A stream manager in process with its master, for the tests below.
struct Rig {
    dir: tempfile::TempDir,
    store: StoreFixture,
    master: InProcMaster,
    stop: tokio_util::sync::CancellationToken,
    manager: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start(settings: impl FnOnce(&mut weir_stream_manager::StreamSettings)) -> Rig {
        Self::start_listening(settings, "").await
    }

    /// With the manager's own gRPC service (`StreamService`) on `listen`.
    async fn start_listening(settings: impl FnOnce(&mut weir_stream_manager::StreamSettings), listen: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let store = StoreFixture::new(Backend::Sqlite).await;
        let master = InProcMaster::start(&store.url).await;
        let mut s = weir_stream_manager::StreamSettings { data_dir: dir.path().join("data"), ..Default::default() };
        settings(&mut s);
        let (stop, manager) = run_manager(weir_stream_manager::spec_with(s), &master.url, "stream-1", listen);
        Rig { dir, store, master, stop, manager }
    }

    fn lake(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a continuous `consume` step of `source` into dataset `lake` (flushes of
    /// `max_records` or every 300 ms) that retries through an outage; the job's id.
    async fn stream(&self, name: &str, source: Value, lake: &Path, max_records: u64) -> String {
        let mut s = step("consume", "consume", "stream", &[]);
        s.config_json = json!({"source": source, "flush": {"max_records": max_records, "interval": "300ms"},
                               "sinks": [{"type": "parquet", "path": lake.display().to_string()}]})
        .to_string();
        s.retry = Some(v1::RetryPolicy {
            max_attempts: 20,
            initial_interval: dur(200),
            max_interval: dur(1000),
            ..Default::default()
        });
        submit(&mut self.master.jobs(), job(name, vec![s])).await
    }

    /// Runs one `consume` step to its end: whether it succeeded, and its output (or error).
    async fn consume(&self, name: &str, config: &Value) -> (bool, Value) {
        let mut jc = self.master.jobs();
        let mut s = step("consume", "consume", "stream", &[]);
        s.config_json = config.to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        let id = submit(&mut jc, job(name, vec![s])).await;
        let done = wait_finished(&mut jc, &id, Duration::from_secs(90)).await;
        let ts = tasks(&mut jc, &id).await;
        let out = serde_json::from_str(&ts[0].output_json).unwrap_or(json!({"error": ts[0].error_message}));
        (done.state == v1::JobState::Succeeded as i32, out)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.manager.await.expect("manager stops");
        self.master.stop().await;
        self.store.cleanup().await;
    }
}

/// Waits until dataset `lake` holds `n` rows (up to 60 s: messages a lost connection
/// held may come back only after the broker's ack wait).
async fn wait_landed(lake: &Path, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let count = || if lake.join("_weir").exists() { lake_ids(lake).len() } else { 0 };
    while count() < n {
        assert!(std::time::Instant::now() < deadline, "{} of {n} landed", count());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counts(o: &Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    (o["records"].as_u64(), o["rows_written"].as_u64(), o["rows_quarantined"].as_u64())
}

/// NATS JetStream (the server on this machine) into a dataset: every message once, a
/// poison message quarantined, a rerun reading nothing, and a new consumer resuming after
/// the dataset's positions; a stream that does not exist fails the step, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_records_land_once_and_a_new_consumer_resumes_after_the_dataset() {
    let (name, js) = nats_stream().await;
    let publish = |ids: std::ops::Range<i64>| {
        let (js, subject) = (js.clone(), format!("{name}.orders"));
        async move {
            for i in ids {
                let body = json!({"id": i, "amount": i as f64 * 1.5}).to_string();
                js.publish(subject.clone(), body.into()).await.expect("publish").await.expect("stored");
            }
        }
    };
    publish(0..250).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let between = weir_core::events::rfc3339(now_ms);
    tokio::time::sleep(Duration::from_millis(50)).await;
    js.publish(format!("{name}.orders"), "{not json".into()).await.expect("publish").await.expect("stored");
    publish(250..500).await;

    let rig = Rig::start(|_| {}).await;
    let lake = rig.lake("lake");
    let config = |consumer: &str| {
        json!({"source": {"type": "nats", "servers": "nats://127.0.0.1:4222", "stream": name, "consumer": consumer},
               "until": "now", "flush": {"max_records": 100, "interval": "1s"},
               "sinks": [{"type": "parquet", "path": lake.display().to_string()}]})
    };
    let (ok, o) = rig.consume("orders", &config("c1")).await;
    assert!(ok, "{o}");
    assert_eq!(counts(&o), (Some(501), Some(500), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 500), (500, 500, None, None), "every record once");

    let (ok, o) = rig.consume("orders-again", &config("c1")).await;
    assert!(ok && o["records"].as_u64() == Some(0), "acknowledged messages are not read again: {o}");

    // A consumer that never acknowledged anything: the dataset says where to go on.
    publish(500..600).await;
    let (ok, o) = rig.consume("orders-new-consumer", &config("c2")).await;
    assert!(ok, "{o}");
    assert_eq!(o["records"].as_u64(), Some(100), "{o}");
    assert_eq!(once(&lake_ids(&lake), 600), (600, 600, None, None), "every record once");

    // Backfills into other datasets: a range of sequences (the end exclusive), and
    // everything up to a time.
    let range_lake = rig.lake("range");
    let mut range = config("range");
    range["sinks"][0]["path"] = json!(range_lake.display().to_string());
    range["from"] = json!({"offsets": {format!("{name}/0"): 101}});
    range["until"] = json!({"offsets": {format!("{name}/0"): 201}});
    let (ok, o) = rig.consume("orders-range", &range).await;
    assert!(ok && o["records"].as_u64() == Some(100), "{o}");
    assert_eq!(lake_ids(&range_lake), (100..200).collect::<Vec<i64>>(), "sequences 101..=200");
    let time_lake = rig.lake("until-time");
    let mut upto = config("upto");
    upto["sinks"][0]["path"] = json!(time_lake.display().to_string());
    upto["until"] = json!({"time": between});
    let (ok, o) = rig.consume("orders-until", &upto).await;
    assert!(ok && o["records"].as_u64() == Some(250), "{o}");
    assert_eq!(once(&lake_ids(&time_lake), 250), (250, 250, None, None), "what was published before the time");

    let mut missing = config("c1");
    missing["source"]["stream"] = json!("no_such_stream");
    let (ok, o) = rig.consume("missing", &missing).await;
    assert!(!ok && o["error"].as_str().is_some_and(|e| e.contains("stream no_such_stream")), "{o}");
    let _ = js.delete_stream(&name).await;
    rig.stop().await;
}

/// RabbitMQ (the broker on this machine) into a dataset with manual acknowledgements:
/// every message once; a publisher's resent messages dropped by their id against the
/// ids landed before; an unset URL variable fails the step, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_records_land_once_and_resent_messages_are_dropped_by_id() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let queue = format!("weir_test_{}", uuid::Uuid::new_v4().simple());
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("the RabbitMQ broker on this machine");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), Default::default()).await.expect("queue");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let publish = |ids: std::ops::Range<i64>| {
        let (ch, queue) = (ch.clone(), queue.clone());
        async move {
            for i in ids {
                let body = json!({"id": i, "amount": i as f64 * 1.5}).to_string();
                let props = lapin::BasicProperties::default().with_message_id(format!("m{i}").into());
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("confirmed");
            }
        }
    };
    publish(0..400).await;
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"{not json",
        Default::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmed");

    let url_env = credentials_env(&[("URL", url)]) + "_URL";
    let rig = Rig::start(|_| {}).await;
    let lake = rig.lake("lake");
    let dead = rig.lake("dead");
    let config = json!({"source": {"type": "rabbitmq", "url_env": url_env, "queue": queue, "prefetch": 150},
                        "until": "now", "flush": {"max_records": 100, "interval": "1s"},
                        "dead_letter": {"type": "parquet", "path": dead.display().to_string()},
                        "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let (ok, o) = rig.consume("orders", &config).await;
    assert!(ok, "{o}");
    assert_eq!((counts(&o), o["dead_letters"].as_u64()), ((Some(401), Some(400), Some(0)), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 400), (400, 400, None, None), "every record once");
    // The poison message in the dead-letter dataset, with where it came from and why.
    let letters = lake_records(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(
        (l["source"].as_str(), l["lane"].as_str(), l["message"].as_str()),
        (Some("rabbitmq"), Some(format!("{queue}/0").as_str()), Some("{not json")),
        "{l}"
    );
    assert!(l["reason"].as_str().is_some_and(|r| r.starts_with("not JSON")) && l["position"] == "401", "{l}");

    // The publisher resends 300..400 (say, after a lost confirm) and goes on.
    publish(300..450).await;
    let (ok, o) = rig.consume("orders-again", &config).await;
    assert!(ok, "{o}");
    assert_eq!(
        (o["records"].as_u64(), o["duplicates"].as_u64(), o["rows_written"].as_u64()),
        (Some(150), Some(100), Some(50)),
        "{o}"
    );
    assert_eq!(once(&lake_ids(&lake), 450), (450, 450, None, None), "every record once");
    let q = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .expect("queue");
    assert_eq!(q.message_count(), 0, "every message acknowledged, the duplicates too");

    let mut unset = config.clone();
    unset["source"]["url_env"] = json!("JOB_TEST_NO_SUCH_URL");
    let (ok, o) = rig.consume("unset", &unset).await;
    assert!(!ok && o["error"].as_str().is_some_and(|e| e.contains("JOB_TEST_NO_SUCH_URL")), "{o}");
    let _ = ch.queue_delete(queue.as_str().into(), Default::default()).await;
    rig.stop().await;
}

/// A manager whose memory budget is far smaller than the backlog: the stream flushes
/// under the budget's pressure instead of buffering the backlog, the buffers never pass
/// the budget, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_budget_is_landed_under_the_budget() {
    let (broker, bus) = broker_with(&[("orders", 2)]).await;
    let n = 20_000;
    for chunk in (0..n).step_by(1000) {
        produce(&bus, chunk..chunk + 1000).await;
    }
    let budget = 256 << 10;
    let rig = Rig::start(|s| s.budget = budget).await;
    let lake = rig.lake("lake");
    // Flushes on size and time set far beyond the backlog: only the budget flushes.
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["orders"]},
                        "until": "now", "flush": {"max_records": 1_000_000, "interval": "10m"},
                        "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let (ok, o) = rig.consume("orders", &config).await;
    assert!(ok, "{o}");
    assert_eq!(counts(&o), (Some(n as u64), Some(n as u64), Some(0)), "{o}");
    assert!(o["pressure_flushes"].as_u64() > Some(0), "flushed under pressure: {o}");
    let peak = o["budget"]["peak"].as_u64().expect("peak");
    assert!(peak <= budget, "buffers peaked at {peak} bytes, over the budget of {budget}: {o}");
    assert_eq!(once(&lake_ids(&lake), n), (n as usize, n as usize, None, None), "every record once");
    rig.stop().await;
}

/// A continuous stream seen through the stream manager's own service (what `weir streams`
/// shows): its records, each lane's landed position and lag; cancelled, it flushes what
/// it holds before it stops, so nothing read is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stream_shows_its_lanes_and_lag_and_a_cancel_flushes_what_it_holds() {
    let (name, js) = nats_stream().await;
    nats_publish(&js, &name, 0..120).await;
    let port = free_port();
    let rig = Rig::start_listening(|_| {}, &format!("127.0.0.1:{port}")).await;
    let lake = rig.lake("lake");
    // Flushes every 100 records, or after an hour: the last 20 wait in the buffer.
    let config = json!({"source": {"type": "nats", "servers": "nats://127.0.0.1:4222", "stream": name, "consumer": "live"},
                        "flush": {"max_records": 100, "interval": "1h"},
                        "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let mut jc = rig.master.jobs();
    let mut s = step("consume", "consume", "stream", &[]);
    s.config_json = config.to_string();
    let id = submit(&mut jc, job("live", vec![s])).await;
    let mut streams = v1::stream_service_client::StreamServiceClient::new(channel(&format!("http://127.0.0.1:{port}")));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let r = streams.list_streams(v1::ListStreamsRequest {}).await.map(|r| r.into_inner());
        if let Some(s) = r.ok().and_then(|r| r.streams.into_iter().next()) {
            if s.records == 120 && s.lanes.first().is_some_and(|l| l.lag == 0) {
                break s;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the stream never showed its 120 records and no lag");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (seen.source.as_str(), seen.job_id.as_str(), seen.buffered_records),
        ("nats", id.as_str(), 20),
        "{seen:?}"
    );
    let lane = &seen.lanes[0];
    assert_eq!((lane.name.as_str(), lane.position, lane.landed), (name.as_str(), 120, 100), "{lane:?}");
    assert!(seen.last_checkpoint.is_some(), "{seen:?}");
    assert_eq!(once(&lake_ids(&lake), 100), (100, 100, None, None), "the first flush only");
    // The same, as Prometheus reads it (the manager runs in this process).
    let metrics = weir_runtime::metrics::encode();
    for series in [
        r#"weir_stream_records_total{stream="test/live/consume"} 120"#,
        r#"weir_stream_lag_records{stream="test/live/consume"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} not in:\n{metrics}");
    }

    jc.cancel_job(v1::CancelJobRequest { job_id: id.clone(), reason: "enough".into() }).await.expect("cancel");
    wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
    // The stream leaves the list once its final flush is through.
    let after = loop {
        let r = streams.list_streams(v1::ListStreamsRequest {}).await.expect("list").into_inner();
        if r.streams.is_empty() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(30), "the stream never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after.buffered_bytes, 0, "{after:?}");
    let metrics = weir_runtime::metrics::encode();
    assert!(!metrics.contains(r#"weir_stream_lag_records{stream="test/live/consume"}"#), "a stopped stream has no lag");
    assert!(metrics.lines().any(|l| l == "weir_stream_buffered_bytes 0"), "{metrics}");
    assert_eq!(once(&lake_ids(&lake), 120), (120, 120, None, None), "the buffered 20 flushed on cancel");
    let _ = js.delete_stream(&name).await;
    rig.stop().await;
}

/// Kafka into a PostgreSQL table: each flush's rows and its range are committed in one
/// transaction, so a consumer group that never committed resumes after what the table
/// holds, and no row is there twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_postgres_resumes_after_what_the_table_holds() {
    let (broker, bus) = broker_with(&[("orders", 2)]).await;
    produce(&bus, 0..200).await;
    let sink_db = weir_store::testing::TestSchema::create().await.expect("PostgreSQL on 127.0.0.1:5432");
    let url_env = credentials_env(&[("URL", &sink_db.url)]) + "_URL";
    let rig = Rig::start(|_| {}).await;
    let config = |group: &str| {
        json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["orders"], "group": group},
               "until": "now", "flush": {"max_records": 50, "interval": "1s"},
               "sinks": [{"type": "postgres", "url_env": url_env, "table": "orders", "create": true}]})
    };
    let (ok, o) = rig.consume("orders", &config("g1")).await;
    assert!(ok && o["rows_written"].as_u64() == Some(200), "{o}");
    produce(&bus, 200..300).await;
    let (ok, o) = rig.consume("orders-new-group", &config("a-group-that-never-committed")).await;
    assert!(ok && o["records"].as_u64() == Some(100), "the table's positions say where to go on: {o}");
    let pool = sqlx::PgPool::connect(&sink_db.url).await.expect("sink db");
    let (rows, distinct, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id), max(id) FROM orders")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!((rows, distinct, max), (300, 300, 299), "every record once");
    pool.close().await;
    rig.stop().await;
    sink_db.drop().await.expect("drop");
}

/// The real `weir-stream-manager` killed with SIGKILL while consuming a RabbitMQ queue:
/// the broker hands the unacknowledged messages to the next owner, which drops those
/// whose flush had landed (the ledger of ids) and lands the rest — every message once;
/// the takeover is reported on `weir.streams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_stream_killed_mid_stream_is_taken_over_with_every_message_once() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let queue = format!("weir_test_{}", uuid::Uuid::new_v4().simple());
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), Default::default()).await.expect("queue");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let n = 5_000;
    let mut confirms = Vec::new();
    for i in 0..n {
        let body = json!({"id": i}).to_string();
        let props = lapin::BasicProperties::default().with_message_id(format!("m{i}").into());
        confirms.push(
            ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), body.as_bytes(), props)
                .await
                .expect("publish"),
        );
    }
    for c in confirms {
        c.await.expect("confirmed");
    }
    let store = StoreFixture::new(Backend::Postgres).await;
    let source = json!({"type": "rabbitmq", "url_env": "JOB_TEST_AMQP_URL", "queue": queue, "prefetch": 300});
    let task_id = killed_mid_stream(&store, source, &[("JOB_TEST_AMQP_URL", url)], n).await;
    // The takeover, on `weir.streams` through the master's outbox.
    let outbox = store.open().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rebalanced = loop {
        let all = outbox.messages_after(0, 10_000).await.expect("outbox");
        let found: Vec<_> = all.into_iter().map(|m| m.1).filter(|m| m.kind == "dev.weir.stream.rebalanced").collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let e = rebalanced.first().expect("a rebalanced event");
    assert_eq!((e.topic.as_str(), e.key.as_str()), ("weir.streams", task_id.as_str()), "{:?}", e.data);
    assert!(e.data["attempt"].as_u64() >= Some(2) && e.data["source"] == "rabbitmq", "{}", e.data);
    let _ = ch.queue_delete(queue.as_str().into(), Default::default()).await;
    store.cleanup().await;
}

/// Two continuous streams on one stream manager; a second replica joins and the first
/// leaves (shut down as on a deploy): the leaving one flushes what it holds and hands its
/// leases back, the other resumes both streams after what their datasets hold, and every
/// message published before, during and after the move is landed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_move_to_another_replica_when_one_leaves_with_every_message_once() {
    let (a, js) = nats_stream().await;
    let (b, _) = nats_stream().await;
    let names = vec![a, b];
    let publish = |ids: std::ops::Range<i64>| {
        let (js, names) = (js.clone(), names.clone());
        async move {
            for name in &names {
                nats_publish(&js, name, ids.clone()).await;
            }
        }
    };
    publish(0..200).await;
    let dir = tempfile::tempdir().expect("tmp");
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let manager = |id: &str, port: u16| {
        let s = weir_stream_manager::StreamSettings { data_dir: dir.path().join(id), ..Default::default() };
        run_manager(weir_stream_manager::spec_with(s), &master.url, id, &format!("127.0.0.1:{port}"))
    };
    let running = |port: u16| async move {
        let mut c = v1::stream_service_client::StreamServiceClient::new(channel(&format!("http://127.0.0.1:{port}")));
        c.list_streams(v1::ListStreamsRequest {}).await.map(|r| r.into_inner().streams).unwrap_or_default()
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (stop_a, a) = manager("stream-a", port_a);
    let mut jc = master.jobs();
    let mut ids = Vec::new();
    for name in &names {
        let mut s = step("consume", "consume", "stream", &[]);
        s.config_json =
            json!({"source": {"type": "nats", "servers": "nats://127.0.0.1:4222", "stream": name, "consumer": "weir"},
                               "flush": {"max_records": 50, "interval": "500ms"},
                               "sinks": [{"type": "parquet", "path": dir.path().join(name).display().to_string()}]})
            .to_string();
        ids.push(submit(&mut jc, job(name, vec![s])).await);
    }
    let until = |what: &'static str, port: u16, n: usize, records: u64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = running(port).await;
            if s.len() == n && s.iter().all(|s| s.records >= records) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until("the first replica runs both streams", port_a, 2, 200).await;
    let (stop_b, b) = manager("stream-b", port_b);
    publish(200..300).await;
    until("the first replica reads what came meanwhile", port_a, 2, 300).await;
    // A deploy: the first replica leaves.
    stop_a.cancel();
    a.await.expect("the first replica stops");
    publish(300..400).await;
    let moved = until("the second replica took both streams over", port_b, 2, 1).await;
    assert!(moved.iter().all(|s| s.fence > 1), "resumed under new leases: {moved:?}");
    // Everything landed: the moved streams flush on their interval.
    for name in &names {
        let lake = dir.path().join(name);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while lake_ids(&lake).len() < 400 {
            assert!(std::time::Instant::now() < deadline, "{name}: {} of 400 landed", lake_ids(&lake).len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(once(&lake_ids(&lake), 400), (400, 400, None, None), "{name}: every message once");
    }
    for id in &ids {
        jc.cancel_job(v1::CancelJobRequest { job_id: id.clone(), reason: "done".into() }).await.expect("cancel");
    }
    stop_b.cancel();
    b.await.expect("the second replica stops");
    for name in &names {
        let _ = js.delete_stream(name).await;
    }
    master.stop().await;
    store.cleanup().await;
}

/// CSV lines as messages: typed like a CSV file under the given columns; a line with the
/// wrong number of fields goes to the dead-letter dataset and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_messages_land_typed_and_a_malformed_line_is_a_dead_letter() {
    let (broker, bus) = broker_with(&[("fills", 1)]).await;
    let mut batch: Vec<Message> =
        (0..100).map(|i| Message::new("fills", "k", format!("{i},\"AAPL, Inc\",{}.5", i * 2).into_bytes())).collect();
    batch.insert(40, Message::new("fills", "k", b"40,AAPL,1.0,extra".to_vec()));
    bus.publish(&batch).await.expect("publish");
    let rig = Rig::start(|_| {}).await;
    let (lake, dead) = (rig.lake("fills"), rig.lake("fills-dead"));
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["fills"]},
                        "format": {"type": "csv", "columns": ["id", "name", "price"]}, "until": "now",
                        "dead_letter": {"type": "parquet", "path": dead.display().to_string()},
                        "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let (ok, o) = rig.consume("fills", &config).await;
    assert!(ok, "{o}");
    assert_eq!((counts(&o), o["dead_letters"].as_u64()), ((Some(101), Some(100), Some(0)), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 100), (100, 100, None, None), "every line once");
    let batches = read_lake(&lake, None).expect("lake");
    let schema = batches[0].schema();
    let types: Vec<String> = schema.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
    assert_eq!(types, ["id:Int64", "name:Utf8", "price:Float64"], "typed as a CSV file would be");
    let letters = lake_records(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0]["position"].as_str(), letters[0]["reason"].as_str()),
        (Some("40"), Some("4 fields, the columns are 3"))
    );
    rig.stop().await;
}

/// Google Pub/Sub (the Cloud SDK's emulator) into a dataset with StreamingPull: every
/// message once, a poison one to the dead-letter dataset, a second run reading only what
/// came since (everything acknowledged), and a subscription that does not exist named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_messages_land_once_through_streaming_pull() {
    let emulator = PubsubEmulator::start().await;
    emulator.subscription("weir-test", "orders", "weir-orders").await;
    let bodies = |ids: std::ops::Range<i64>| ids.map(|i| json!({"id": i}).to_string().into_bytes()).collect::<Vec<_>>();
    let mut first = bodies(0..300);
    first.insert(120, b"{not json".to_vec());
    emulator.publish("weir-test", "orders", first).await;
    let rig = Rig::start(|_| {}).await;
    let (lake, dead) = (rig.lake("lake"), rig.lake("dead"));
    let config = |subscription: &str| {
        json!({"source": {"type": "pubsub", "project": "weir-test", "subscription": subscription, "endpoint": emulator.url},
               "until": "now", "flush": {"max_records": 100, "interval": "1s"},
               "dead_letter": {"type": "parquet", "path": dead.display().to_string()},
               "sinks": [{"type": "parquet", "path": lake.display().to_string()}]})
    };
    let (ok, o) = rig.consume("orders", &config("weir-orders")).await;
    assert!(ok, "{o}");
    assert_eq!((counts(&o), o["dead_letters"].as_u64()), ((Some(301), Some(300), Some(0)), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 300), (300, 300, None, None), "every message once");
    assert_eq!(lake_records(&dead)[0]["message"], "{not json");

    emulator.publish("weir-test", "orders", bodies(300..400)).await;
    let (ok, o) = rig.consume("orders-again", &config("weir-orders")).await;
    assert!(ok && o["records"].as_u64() == Some(100), "only what came since: {o}");
    assert_eq!(once(&lake_ids(&lake), 400), (400, 400, None, None), "every message once");

    let (ok, o) = rig.consume("missing", &config("no-such-subscription")).await;
    assert!(!ok && o["error"].as_str().is_some_and(|e| e.contains("subscriptions/no-such-subscription")), "{o}");
    rig.stop().await;
}

/// The broker restarted mid-stream: a NATS server of the test's own (JetStream on disk) is
/// stopped while a continuous stream reads from it and started again on the same port and
/// store; the stream fails over to a retry (or reconnects) and every message published
/// before, during and after the outage lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restarted_mid_stream_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let store_dir = dir.path().join("js").display().to_string();
    let server = || {
        let mut c = tokio::process::Command::new("nats-server");
        c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", &store_dir])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().expect("nats-server (scripts/ensure-brokers.sh installs it)")
    };
    let url = format!("nats://127.0.0.1:{port}");
    let mut nats = server();
    wait_port(port, "the test's NATS server").await;
    let connect = || async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));
        js
    };
    let js = connect().await;
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "orders".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    nats_publish(&js, "orders", 0..300).await;

    let rig = Rig::start(|_| {}).await;
    let lake = rig.lake("lake");
    let source = json!({"type": "nats", "servers": url, "stream": "orders", "consumer": "weir"});
    let id = rig.stream("orders", source, &lake, 50).await;
    wait_landed(&lake, 300).await;
    // The outage: the server goes, and comes back on the same port and store.
    nats.kill().await.expect("stop the server");
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats = server();
    wait_port(port, "the restarted NATS server").await;
    let js = connect().await;
    nats_publish(&js, "orders", 300..600).await;
    wait_landed(&lake, 600).await;
    assert_eq!(once(&lake_ids(&lake), 600), (600, 600, None, None), "every message once");
    rig.master.jobs().cancel_job(v1::CancelJobRequest { job_id: id, reason: "done".into() }).await.expect("cancel");
    rig.stop().await;
    drop(nats);
}

/// Dead letters into a Kafka topic of the source's brokers: the message as it came, its
/// coordinates and the reason in `weir-dlq-*` headers; the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letters_go_to_a_topic_with_their_coordinates() {
    let (broker, bus) = broker_with(&[("raw", 1), ("raw.dead", 1)]).await;
    let mut batch: Vec<Message> =
        (0..20).map(|i| Message::new("raw", "k", json!({"id": i}).to_string().into_bytes())).collect();
    batch.insert(7, Message::new("raw", "k", b"[1, 2]".to_vec()));
    bus.publish(&batch).await.expect("publish");
    let rig = Rig::start(|_| {}).await;
    let lake = rig.lake("raw");
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["raw"]}, "until": "now",
                        "dead_letter": {"type": "kafka", "topic": "raw.dead"},
                        "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let (ok, o) = rig.consume("raw", &config).await;
    assert!(ok, "{o}");
    assert_eq!((counts(&o), o["dead_letters"].as_u64()), ((Some(21), Some(20), Some(0)), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 20), (20, 20, None, None), "every record once");
    let mut sub = bus.subscribe("dead-reader", &["raw.dead"]).await.expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("a dead letter").expect("next");
    let h =
        |k: &str| d.message.headers.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(d.message.payload, b"[1, 2]");
    assert_eq!(
        (h("weir-dlq-reason"), h("weir-dlq-topic"), h("weir-dlq-partition"), h("weir-dlq-offset")),
        (Some("not a JSON object".into()), Some("raw".into()), Some("0".into()), Some("7".into()))
    );
    rig.stop().await;
}

/// Amazon Kinesis (kinesalite, on a loopback port) into a dataset and a PostgreSQL table:
/// every record once, a poison record a dead letter; then the stream resharded (a shard
/// split in two) and more records put: a second run reads the closed parent after what
/// the sinks hold, then its children, and lands only what is new. A run with the table
/// alone resumes from the sequence numbers the table recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_records_land_once_across_a_reshard_and_resume_after_the_sinks() {
    let kinesis = Kinesalite::start().await;
    kinesis.stream("orders", 2).await;
    let bodies = |ids: std::ops::Range<i64>| ids.map(|i| json!({"id": i}).to_string().into_bytes()).collect::<Vec<_>>();
    let mut first = bodies(0..300);
    first.insert(150, b"{not json".to_vec());
    kinesis.put("orders", &first, |i| format!("k{}", i % 13)).await;
    let sink_db = weir_store::testing::TestSchema::create().await.expect("PostgreSQL on 127.0.0.1:5432");
    let url_env = credentials_env(&[("URL", &sink_db.url)]) + "_URL";
    let rig = Rig::start(|_| {}).await;
    let (lake, dead) = (rig.lake("lake"), rig.lake("dead"));
    let table = json!({"type": "postgres", "url_env": url_env, "table": "orders", "create": true});
    let config = |sinks: Value| {
        json!({"source": {"type": "kinesis", "stream": "orders", "endpoint": kinesis.url},
               "until": "now", "flush": {"max_records": 100, "interval": "1s"},
               "dead_letter": {"type": "parquet", "path": dead.display().to_string()},
               "sinks": sinks})
    };
    let both = json!([{"type": "parquet", "path": lake.display().to_string()}, table]);
    let (ok, o) = rig.consume("orders", &config(both.clone())).await;
    assert!(ok, "{o}");
    assert_eq!((counts(&o), o["dead_letters"].as_u64()), ((Some(301), Some(300), Some(0)), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 300), (300, 300, None, None), "every record once");
    let letter = &lake_records(&dead)[0];
    assert_eq!(letter["message"], "{not json");
    assert!(letter["id"].as_str().is_some_and(|s| s.len() > 20), "the dead letter's sequence number: {letter}");

    kinesis.split("orders", "shardId-000000000000").await;
    kinesis.put("orders", &bodies(300..600), |i| format!("k{}", i % 13)).await;
    let (ok, o) = rig.consume("orders-resharded", &config(both)).await;
    assert!(ok && o["records"].as_u64() == Some(300), "only what came since: {o}");
    assert_eq!(o["closed_shards"], json!(["shardId-000000000000"]), "{o}");
    assert_eq!(once(&lake_ids(&lake), 600), (600, 600, None, None), "every record once");

    kinesis.put("orders", &bodies(600..700), |i| format!("k{}", i % 13)).await;
    let (ok, o) = rig.consume("orders-table", &config(json!([table]))).await;
    assert!(ok && o["records"].as_u64() == Some(100), "the table's sequence numbers say where to go on: {o}");
    let pool = sqlx::PgPool::connect(&sink_db.url).await.expect("sink db");
    let (rows, distinct, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id), max(id) FROM orders")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!((rows, distinct, max), (700, 700, 699), "every record once");
    pool.close().await;

    // A backfill from a time, on a stream of its own: arrival times a second apart on
    // either side of `since`. (kinesalite never answers AT_TIMESTAMP on a shard with no
    // record after the time, so its one shard has some.)
    kinesis.stream("recent", 1).await;
    kinesis.put("recent", &bodies(0..50), |i| format!("k{i}")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    kinesis.put("recent", &bodies(50..80), |i| format!("k{i}")).await;
    let window = rig.lake("window");
    let mut backfill = config(json!([{"type": "parquet", "path": window.display().to_string()}]));
    backfill["source"]["stream"] = json!("recent");
    backfill["from"] = json!({"time": since.to_string()});
    let (ok, o) = rig.consume("recent-since", &backfill).await;
    assert!(ok, "{o}");
    let got = lake_ids(&window);
    assert_eq!((got.first(), got.len()), (Some(&50), 30), "from a time: only what arrived since");

    let mut missing = config(json!([{"type": "parquet", "path": rig.lake("never").display().to_string()}]));
    missing["source"]["stream"] = json!("no-such-stream");
    let (ok, o) = rig.consume("missing", &missing).await;
    assert!(
        !ok && o["error"].as_str().is_some_and(|e| e.contains("kinesis stream no-such-stream does not exist")),
        "{o}"
    );
    rig.stop().await;
    sink_db.drop().await.expect("drop");
}

/// The real `weir-stream-manager` killed with SIGKILL while reading a Kinesis stream:
/// the next owner resumes each shard after the sequence numbers the dataset recorded,
/// and every record is in it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_stream_killed_mid_stream_is_taken_over_with_every_record_once() {
    let kinesis = Kinesalite::start().await;
    kinesis.stream("orders", 2).await;
    let n = 3_000;
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| json!({"id": i}).to_string().into_bytes()).collect();
    kinesis.put("orders", &bodies, |i| format!("k{i}")).await;
    let store = StoreFixture::new(Backend::Sqlite).await;
    let source = json!({"type": "kinesis", "stream": "orders", "endpoint": kinesis.url});
    killed_mid_stream(&store, source, &[], n).await;
    store.cleanup().await;
}

/// Avro messages (the Confluent wire format, the writer's schema in a file) from Kafka:
/// each datum lands as a typed row, one that is not of the schema is a dead letter with
/// the reason, and a schema file that is not there fails the step, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_messages_land_as_typed_rows_and_a_bad_datum_is_a_dead_letter() {
    use apache_avro::types::{Record, Value as Avro};
    let (broker, bus) = broker_with(&[("payments", 1)]).await;
    let rig = Rig::start(|_| {}).await;
    let schema_file = rig.lake("payment.avsc");
    let text = r#"{"type": "record", "name": "payment", "fields": [
        {"name": "id", "type": "long"}, {"name": "amount", "type": "double"},
        {"name": "currency", "type": {"type": "enum", "name": "currency", "symbols": ["EUR", "USD"]}},
        {"name": "note", "type": ["null", "string"], "default": null}]}"#;
    std::fs::write(&schema_file, text).expect("schema file");
    let schema = apache_avro::Schema::parse_str(text).expect("schema");
    let mut batch: Vec<Message> = (0..200i64)
        .map(|i| {
            let mut r = Record::new(&schema).expect("record");
            r.put("id", i);
            r.put("amount", i as f64 * 2.5);
            r.put("currency", Avro::Enum((i % 2) as u32, if i % 2 == 0 { "EUR" } else { "USD" }.into()));
            let note = if i % 10 == 0 {
                Avro::Union(1, Box::new(Avro::String(format!("n{i}"))))
            } else {
                Avro::Union(0, Box::new(Avro::Null))
            };
            r.put("note", note);
            let mut framed = vec![0u8, 0, 0, 0, 1];
            let w = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().expect("writer");
            framed.extend(w.write_value_to_vec(r).expect("datum"));
            Message::new("payments", "k", framed)
        })
        .collect();
    batch.insert(70, Message::new("payments", "k", vec![0, 0, 0, 0, 1, 0x02]));
    bus.publish(&batch).await.expect("publish");
    let (lake, dead) = (rig.lake("payments"), rig.lake("payments-dead"));
    let config = |schema_file: &Path| {
        json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["payments"]},
               "format": {"type": "avro", "schema_file": schema_file.display().to_string(), "confluent": true},
               "until": "now", "dead_letter": {"type": "parquet", "path": dead.display().to_string()},
               "sinks": [{"type": "parquet", "path": lake.display().to_string()}]})
    };
    let (ok, o) = rig.consume("payments", &config(&schema_file)).await;
    assert!(ok, "{o}");
    assert_eq!((counts(&o), o["dead_letters"].as_u64()), ((Some(201), Some(200), Some(0)), Some(1)), "{o}");
    assert_eq!(once(&lake_ids(&lake), 200), (200, 200, None, None), "every datum once");
    let batches = read_lake(&lake, None).expect("lake");
    let types: Vec<String> =
        batches[0].schema().fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
    assert_eq!(types, ["id:Int64", "amount:Float64", "currency:Utf8", "note:Utf8"], "typed from the datums");
    let rows = lake_records(&lake);
    let ten = rows.iter().find(|r| r["id"] == "10").expect("row 10");
    let amount = ten["amount"].as_str().and_then(|a| a.parse::<f64>().ok());
    assert_eq!((amount, &ten["currency"], &ten["note"]), (Some(25.0), &json!("EUR"), &json!("n10")), "{ten}");
    let letters = lake_records(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0]["reason"].as_str().is_some_and(|r| r.starts_with("not Avro of the schema")), "{letters:?}");

    let (ok, o) = rig.consume("payments-no-schema", &config(&rig.lake("missing.avsc"))).await;
    assert!(
        !ok && o["error"].as_str().is_some_and(|e| e.contains("format.schema_file") && e.contains("missing.avsc")),
        "{o}"
    );
    rig.stop().await;
}

/// The Kafka broker restarted mid-stream: tansu keeping its topics on a (moto) S3 server
/// is killed while a continuous stream reads from it and started again on the same port
/// and bucket; the stream reconnects (or fails over to a retry) and every record produced
/// before and after the outage lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_restarted_mid_stream_loses_and_doubles_nothing() {
    let s3 = Moto::start().await;
    let mut broker = Tansu::start_on_s3(&s3, "tansu").await;
    let bus = broker.bus();
    bus.ensure_topics(&[TopicSpec { name: "orders".into(), partitions: 1, replication: 1 }]).await.expect("topic");
    for chunk in (0..300).step_by(100) {
        produce(&bus, chunk..chunk + 100).await;
    }
    let rig = Rig::start(|_| {}).await;
    let lake = rig.lake("lake");
    let source = json!({"type": "kafka", "brokers": broker.brokers, "topics": ["orders"]});
    let id = rig.stream("orders", source, &lake, 100).await;
    wait_landed(&lake, 300).await;
    broker.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await;
    let bus = broker.bus();
    // The broker kept its topic: a new group reads the records produced before, from 0.
    let mut check = bus.subscribe("restart-check", &["orders"]).await.expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(30), check.next()).await.expect("a record").expect("delivery");
    let record: Value = serde_json::from_slice(&first.message.payload).expect("json");
    assert_eq!((first.offset, &record["id"]), (0, &json!(0)), "the topic outlived the restart");
    for chunk in (300..600).step_by(100) {
        produce(&bus, chunk..chunk + 100).await;
    }
    wait_landed(&lake, 600).await;
    assert_eq!(once(&lake_ids(&lake), 600), (600, 600, None, None), "every record once");
    rig.master.jobs().cancel_job(v1::CancelJobRequest { job_id: id, reason: "done".into() }).await.expect("cancel");
    rig.stop().await;
}

/// Kafka into a Parquet dataset on an object store (the moto S3 server): a consumer group
/// that never committed resumes after the ranges the bucket's manifests hold, and a
/// user's reader (pyarrow) sees every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_an_s3_dataset_resumes_after_what_the_bucket_holds() {
    let (broker, bus) = broker_with(&[("orders", 2)]).await;
    produce(&bus, 0..200).await;
    let moto = Moto::start().await;
    moto.create_bucket("lake").await;
    let rig = Rig::start(|_| {}).await;
    let config = |group: &str| {
        json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["orders"], "group": group},
               "until": "now", "flush": {"max_records": 50, "interval": "1s"},
               "sinks": [{"type": "parquet", "path": "orders", "location": moto.location("s3://lake")}]})
    };
    let (ok, o) = rig.consume("orders", &config("g1")).await;
    assert!(ok && o["rows_written"].as_u64() == Some(200), "{o}");
    produce(&bus, 200..300).await;
    let (ok, o) = rig.consume("orders-new-group", &config("a-group-that-never-committed")).await;
    assert!(ok && o["records"].as_u64() == Some(100), "the bucket's positions say where to go on: {o}");
    let read =
        read_dataset(json!({"path": "s3://lake/orders", "endpoint": moto.endpoint, "key": "test", "secret": "test"}))
            .await;
    let schema = read["pyarrow"]["schema"].as_array().expect("schema").clone();
    let at = schema.iter().position(|f| f[0] == "id").expect("an id column");
    let mut ids: Vec<i64> = read["pyarrow"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[at].as_str().and_then(|v| v.parse().ok()).expect("an id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(once(&ids, 300), (300, 300, None, None), "every record once");
    rig.stop().await;
}

/// One Kafka stream split over two steps by partition — each a leased task any replica
/// may run — into one dataset: each step reads only its partitions, both land together,
/// and every record is in the dataset once; a partition the topic does not have is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_stream_split_by_partition_over_two_tasks_lands_every_record_once() {
    let (broker, bus) = broker_with(&[("orders", 2)]).await;
    produce(&bus, 0..400).await;
    let rig = Rig::start(|_| {}).await;
    let lake = rig.lake("lake");
    let part = |id: &str, partitions: Value| {
        let mut s = step(id, "consume", "stream", &[]);
        s.config_json = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["orders"],
                                          "partitions": partitions},
                               "until": "now", "flush": {"max_records": 50, "interval": "1s"},
                               "sinks": [{"type": "parquet", "path": lake.display().to_string()}]})
        .to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        s
    };
    let mut jc = rig.master.jobs();
    let id = submit(&mut jc, job("orders", vec![part("p0", json!([0])), part("p1", json!([1]))])).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(90)).await;
    let ts = tasks(&mut jc, &id).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{ts:?}");
    let mut total = 0;
    for t in &ts {
        let o: Value = serde_json::from_str(&t.output_json).expect("output");
        let lanes: Vec<&String> = o["lanes"].as_object().expect("lanes").keys().collect();
        let want = if t.step_id == "p0" { "orders/0" } else { "orders/1" };
        assert_eq!(lanes, [want], "{} reads only its partition: {o}", t.step_id);
        total += o["records"].as_u64().unwrap_or(0);
    }
    assert_eq!(total, 400);
    assert_eq!(once(&lake_ids(&lake), 400), (400, 400, None, None), "every record once");

    let (ok, o) = rig
        .consume("orders-p7", &serde_json::from_str::<Value>(&part("p7", json!([7])).config_json).expect("json"))
        .await;
    assert!(
        !ok && o["error"].as_str().is_some_and(|e| e.contains("source.partitions: no partition 7 in orders")),
        "{o}"
    );
    rig.stop().await;
}

/// A Kafka topic as the sink, SIGKILLed mid-stream (the real stream manager): after the
/// takeover the topic holds every record once, read back from the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_into_a_kafka_topic_killed_mid_stream_holds_every_record_once() {
    let (broker, bus) = broker_with(&[("orders", 1), ("orders.clean", 2)]).await;
    let n = 6_000;
    for chunk in (0..n).step_by(100) {
        produce(&bus, chunk..chunk + 100).await;
    }
    let store = StoreFixture::new(Backend::Sqlite).await;
    let source = json!({"type": "kafka", "brokers": broker.brokers, "topics": ["orders"]});
    killed_mid_stream_into(&store, source, &[], n, Target::Topic(&broker, "orders.clean")).await;
    let msgs = broker.read_topic("orders.clean");
    let m = msgs.iter().find(|m| m.key.as_deref() == Some("42")).expect("record 42 keyed by its id");
    assert_eq!(serde_json::from_slice::<Value>(&m.payload).expect("JSON"), json!({"id": 42, "amount": 63.0}));
    assert!(m.headers.get("weir-input").is_some_and(|i| i.starts_with("kafka://orders/p0_")), "{:?}", m.headers);
    store.cleanup().await;
}

/// Writes `ids` as a staged Parquet file (an `id` column), as the pipeline stages a flush.
fn staged(dir: &Path, ids: std::ops::Range<i64>) -> std::path::PathBuf {
    use std::sync::Arc;
    let schema =
        Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false)]));
    let path = dir.join(format!("staged-{}-{}.parquet", ids.start, ids.end));
    let batch = arrow_array::RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow_array::Int64Array::from_iter_values(ids))],
    )
    .expect("batch");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).expect("file"), schema, None)
        .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    path
}

/// The Kafka topic sink's own protocol against the broker: a flush a crash cut short
/// (its first messages in the topic, the rest not) is completed by the next owner's
/// replay — whose flushes end elsewhere — without a record twice; a whole input landed
/// again produces nothing; a topic that does not exist is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_topic_sink_completes_a_flush_a_crash_cut_short_without_a_record_twice() {
    use weir_data::sink::kafka::{partition_of, KafkaTopic};
    use weir_data::sink::WriteFence;
    let (broker, _) = broker_with(&[("clean", 3)]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let spec: weir_core::dataset::SinkSpec =
        serde_json::from_value(json!({"type": "kafka", "brokers": broker.brokers, "topic": "clean", "key": "id"}))
            .expect("spec");
    let fence = |f| WriteFence { task: "t1".into(), fence: f };
    let first = KafkaTopic::open(&spec).await.expect("open");
    first.claim().await.expect("claim");
    let whole = "kafka://orders/p0_0-9";
    assert_eq!(first.land(Some(&staged(dir.path(), 0..10)), whole, &fence(1)).await.expect("land"), 10);
    // A crash in the middle of the next flush (rows 10..30): its first 7 messages are in.
    let cut = "kafka://orders/p0_10-29";
    let partition = partition_of("kafka://orders/p0", 3);
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &broker.brokers).create().expect("producer");
    for i in 10..17i64 {
        let (key, payload, row) = (i.to_string(), json!({"id": i}).to_string(), (i - 10).to_string());
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (k, v) in [("weir-input", cut), ("weir-row", row.as_str()), ("weir-rows", "20"), ("weir-fence", "1")] {
            headers = headers.insert(rdkafka::message::Header { key: k, value: Some(v) });
        }
        let record = rdkafka::producer::FutureRecord::to("clean")
            .partition(partition)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce");
    }

    // The next owner reads where the lane stands: the first input whole, the second not.
    let next = KafkaTopic::open(&spec).await.expect("open");
    next.claim().await.expect("claim");
    assert_eq!(next.input_identities().await.expect("inputs"), vec![whole.to_string()]);
    // The replay starts where the cut flush did but flushes 5 rows (all in already), then
    // 15 (2 in already); the whole input landed again produces nothing.
    for (ids, identity) in [(10..15, "kafka://orders/p0_10-14"), (15..30, "kafka://orders/p0_15-29"), (0..10, whole)] {
        let rows = ids.end - ids.start;
        let landed = next.land(Some(&staged(dir.path(), ids)), identity, &fence(2)).await.expect("land");
        assert_eq!(landed, rows as u64, "{identity}");
    }
    let msgs = broker.read_topic("clean");
    let ids: Vec<i64> = msgs
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).expect("JSON")["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, (0..30).collect::<Vec<_>>(), "each record once, in order");
    assert!(msgs.iter().all(|m| m.partition == partition), "one lane, one partition");
    let last = msgs.last().expect("messages");
    assert_eq!(
        (last.headers["weir-input"].as_str(), last.headers["weir-row"].as_str(), last.headers["weir-fence"].as_str()),
        ("kafka://orders/p0_15-29", "14", "2")
    );
    // A third owner finds the lane whole at 29.
    let third = KafkaTopic::open(&spec).await.expect("open");
    let inputs = third.input_identities().await.expect("inputs");
    assert!(inputs.contains(&"kafka://orders/p0_15-29".to_string()), "{inputs:?}");

    let mut missing = spec.clone();
    if let weir_core::dataset::SinkSpec::Kafka { topic, .. } = &mut missing {
        *topic = "nowhere".into();
    }
    let e = KafkaTopic::open(&missing).await.err().expect("refused").to_string();
    assert!(e.contains("topic nowhere does not exist"), "{e}");
}
