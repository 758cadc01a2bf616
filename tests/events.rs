//! The event bus end to end: the outbox relay, the event catalogue, triggers and the
//! dead-letter topic — each against a real Kafka-protocol broker (tansu, started here)
//! and against the in-process bus, which must behave the same.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use weir_bus::{Bus, BusError, Delivery, MemoryBus, Message, TopicSpec};
use weir_core::events::{header, topic, CloudEvent};
use weir_master::config::EventsConfig;
use weir_proto::v1;
use weir_tests::*;

/// Every message on `topics` for a fresh consumer group, read until `enough` says so.
async fn read_until(
    bus: &Arc<dyn Bus>,
    topics: &[&str],
    within: Duration,
    mut enough: impl FnMut(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let group = format!("test-{}", uuid::Uuid::new_v4().simple());
    let deadline = Instant::now() + within;
    // The master creates the topics when it starts; until then there is nothing to read.
    let mut sub = loop {
        match bus.subscribe(&group, topics).await {
            Ok(s) => break s,
            Err(BusError::UnknownTopic(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("subscribe: {e}"),
        }
    };
    let mut got = Vec::new();
    while !enough(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Ok(d)) => got.push(d),
            Ok(Err(BusError::UnknownTopic(_))) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Err(e)) => panic!("consumer error: {e}"),
            Err(_) => break,
        }
    }
    got
}

fn event_of(d: &Delivery) -> CloudEvent {
    CloudEvent::decode(&d.message.payload).expect("every message is a CloudEvent")
}

/// The bus under test, and the broker behind it if any.
struct Rig {
    bus: Arc<dyn Bus>,
    broker: Option<Tansu>,
}

impl Rig {
    async fn memory() -> Rig {
        Rig { bus: Arc::new(MemoryBus::default()), broker: None }
    }
    async fn kafka() -> Rig {
        let broker = Tansu::start().await;
        Rig { bus: broker.bus(), broker: Some(broker) }
    }
}

// ----- the bus contract ------------------------------------------------------------------

async fn keyed_order_and_group_offsets(rig: Rig) {
    let bus = rig.bus.clone();
    let t = TopicSpec { name: "conformance".into(), partitions: 3, replication: 1 };
    bus.ensure_topics(std::slice::from_ref(&t)).await.expect("create");
    bus.ensure_topics(&[t]).await.expect("creating again is fine");
    // One publish per message: tansu 0.6 serves no records to a fetch that starts inside a
    // stored batch, which real Kafka does; committing at batch edges keeps the test about us.
    for i in 0..60 {
        let m = Message::new("conformance", &format!("k{}", i % 3), format!("{i}").into_bytes());
        bus.publish(&[m]).await.expect("publish");
    }
    let err = bus.publish(&[Message::new("no-such-topic", "k", b"x".to_vec())]).await;
    if rig.broker.is_none() {
        assert!(err.is_err(), "the in-process bus refuses unknown topics");
    }

    let group = "conformance-group";
    let mut sub = bus.subscribe(group, &["conformance"]).await.expect("subscribe");
    let mut first = Vec::new();
    for _ in 0..30 {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("in time").expect("next");
        sub.commit(&d).await.expect("commit");
        first.push(d);
    }
    let mut rest = Vec::new();
    for _ in 0..30 {
        rest.push(tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("in time").expect("next"));
    }
    drop(sub);
    let all: Vec<&Delivery> = first.iter().chain(&rest).collect();
    let mut per_key: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    for d in &all {
        let n: u32 = String::from_utf8_lossy(&d.message.payload).parse().expect("number");
        per_key.entry(d.message.key.clone().unwrap_or_default()).or_default().push(n);
    }
    assert_eq!(per_key.len(), 3);
    for (k, ns) in &per_key {
        assert_eq!(ns.len(), 20, "key {k:?}");
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "key {k:?} kept its order: {ns:?}");
    }
    // A new member of the group starts after what was committed: the 30 not committed.
    let mut again = bus.subscribe(group, &["conformance"]).await.expect("subscribe again");
    let mut seen = HashSet::new();
    while seen.len() < 30 {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(30), again.next()).await else {
            panic!("only {} of the 30 uncommitted messages read again: {seen:?}", seen.len())
        };
        let d = d.expect("next");
        seen.insert(String::from_utf8_lossy(&d.message.payload).to_string());
    }
    let committed: HashSet<String> =
        first.iter().map(|d| String::from_utf8_lossy(&d.message.payload).to_string()).collect();
    assert!(seen.is_disjoint(&committed), "nothing committed is read again");
}

// ----- lifecycle events ------------------------------------------------------------------

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Three jobs that together make every lifecycle event happen; returns their ids.
async fn run_every_lifecycle(m: &InProcMaster) -> Vec<String> {
    let (mut jobs, mut w) = (m.jobs(), m.workers());
    // 1. Succeeds after one retry; submitted inside a caller's trace.
    let mut b = step("b", "noop", "api", &["a"]);
    b.retry = Some(v1::RetryPolicy { max_attempts: 2, initial_interval: dur(50), ..Default::default() });
    let mut req =
        tonic::Request::new(v1::SubmitJobRequest { spec: Some(job("happy", vec![step("a", "noop", "api", &[]), b])) });
    req.metadata_mut().insert("traceparent", MetadataValue::from_static(TRACE));
    let happy = jobs.submit_job(req).await.expect("submit").into_inner().job.expect("job").id;
    let a = acquire(&mut w, "api", 1, 1000).await.remove(0);
    complete(&mut w, &a).await.expect("complete");
    let b = acquire(&mut w, "api", 1, 1000).await.remove(0);
    assert!(fail(&mut w, &b, "io", true).await, "retry scheduled");
    let b = acquire(&mut w, "api", 1, 2000).await.remove(0);
    complete(&mut w, &b).await.expect("complete");

    // 2. Fails, and its one done step is compensated.
    let mut a = step("a", "noop", "api", &[]);
    a.compensation = Some(v1::CompensationSpec { kind: "noop".into(), queue: "batch".into(), ..Default::default() });
    let mut b = step("b", "noop", "api", &["a"]);
    b.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
    let saga = submit(&mut jobs, job("saga", vec![a, b])).await;
    let a = acquire(&mut w, "api", 1, 1000).await.remove(0);
    complete(&mut w, &a).await.expect("complete");
    let b = acquire(&mut w, "api", 1, 1000).await.remove(0);
    assert!(!fail(&mut w, &b, "bad_input", false).await);
    let undo = acquire(&mut w, "batch", 1, 1000).await.remove(0);
    complete(&mut w, &undo).await.expect("complete");

    // 3. Paused, resumed, loses a lease, then is cancelled.
    let mut a = step("a", "noop", "file", &[]);
    a.timeouts = Some(v1::StepTimeouts { heartbeat: dur(300), ..Default::default() });
    let steer = submit(&mut jobs, job("steer", vec![a])).await;
    jobs.pause_job(v1::PauseJobRequest { job_id: steer.clone() }).await.expect("pause");
    jobs.resume_job(v1::ResumeJobRequest { job_id: steer.clone() }).await.expect("resume");
    let _silent = acquire(&mut w, "file", 1, 1000).await.remove(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tasks(&mut jobs, &steer).await[0].state == v1::TaskState::Running as i32 {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    jobs.cancel_job(v1::CancelJobRequest { job_id: steer.clone(), reason: "enough".into() }).await.expect("cancel");

    // 4. Fails outright: nothing to compensate.
    let mut a = step("a", "noop", "stream", &[]);
    a.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
    let broken = submit(&mut jobs, job("broken", vec![a])).await;
    let a = acquire(&mut w, "stream", 1, 1000).await.remove(0);
    assert!(!fail(&mut w, &a, "bad_input", false).await);

    for id in [&happy, &saga, &steer, &broken] {
        wait_finished(&mut jobs, id, Duration::from_secs(10)).await;
    }
    vec![happy, saga, steer, broken]
}

async fn lifecycle_events_arrive_once_in_order(rig: Rig) {
    let store = StoreFixture::new(Backend::Postgres).await;
    let m = InProcMaster::start_with_bus(&store.url, Some(rig.bus.clone()), EventsConfig::default()).await;
    let ids = run_every_lifecycle(&m).await;
    let history = store.open().await;
    let mut expected: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for id in &ids {
        let uuid = id.parse().expect("uuid");
        let evs = history.events(uuid, 1, 10_000).await.expect("history");
        expected.insert(id.clone(), evs.iter().map(|e| (e.seq, e.kind.to_string())).collect());
    }
    let total: usize = expected.values().map(Vec::len).sum();
    let mine = |d: &Delivery| event_of(d).subject.is_some_and(|s| expected.contains_key(&s));
    let got = read_until(&rig.bus, &[topic::JOBS, topic::TASKS], Duration::from_secs(30), |g| {
        g.iter().filter(|d| mine(d)).count() >= total
    })
    .await;
    let got: Vec<&Delivery> = got.iter().filter(|d| mine(d)).collect();

    let mut ids_seen = HashSet::new();
    let mut per_job: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut traces: HashMap<String, HashSet<String>> = HashMap::new();
    for d in &got {
        let e = event_of(d);
        assert!(ids_seen.insert(e.id.clone()), "event {} published once", e.id);
        let job_id = e.subject.clone().expect("subject is the job id");
        assert_eq!(d.message.key.as_deref(), Some(job_id.as_bytes()), "keyed by job id");
        assert_eq!(d.message.header_text(header::CONTENT_TYPE), Some(weir_core::events::CONTENT_TYPE));
        let data = e.data.clone().expect("data");
        assert_eq!(data["job_id"], Value::String(job_id.clone()));
        let is_task = e.ty.starts_with("dev.weir.task.");
        assert_eq!(d.message.topic, if is_task { topic::TASKS } else { topic::JOBS }, "{}", e.ty);
        assert_eq!(data.get("task_id").is_some(), is_task);
        assert_eq!((e.specversion.as_str(), e.source.as_str()), ("1.0", weir_core::events::MASTER_SOURCE));
        assert!(e.time.as_deref().is_some_and(|t| t.ends_with('Z')), "RFC 3339 time");
        let tp = d.message.header_text(header::TRACEPARENT).expect("traceparent header").to_string();
        traces.entry(job_id.clone()).or_default().insert(tp.split('-').nth(1).unwrap_or_default().to_string());
        per_job.entry(job_id).or_default().push((data["seq"].as_u64().expect("seq"), e.ty.clone()));
    }
    assert_eq!(got.len(), total, "every event arrived, none twice");
    for (job, want) in &expected {
        let mut have = per_job.remove(job).unwrap_or_default();
        // Order holds per topic; merged by seq they are the job's history exactly.
        for t in ["dev.weir.job.", "dev.weir.task."] {
            let seqs: Vec<u64> = have.iter().filter(|(_, ty)| ty.starts_with(t)).map(|(s, _)| *s).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{job}: {t}* in order: {seqs:?}");
        }
        have.sort();
        assert_eq!(&have, want, "{job}: the published events are its history");
        assert_eq!(traces[job].len(), 1, "one trace per job");
    }
    assert!(traces[&ids[0]].contains("0af7651916cd43dd8448eb211c80319c"), "the caller's trace goes on: {traces:?}");
    let types: HashSet<String> = expected.values().flatten().map(|(_, t)| t.clone()).collect();
    for t in
        ["created", "started", "paused", "resumed", "cancelled", "succeeded", "failed", "compensating", "compensated"]
    {
        assert!(types.contains(&format!("dev.weir.job.{t}")), "job.{t} happened: {types:?}");
    }
    for t in ["ready", "assigned", "succeeded", "failed", "retry_scheduled", "lease_expired"] {
        assert!(types.contains(&format!("dev.weir.task.{t}")), "task.{t} happened: {types:?}");
    }
    if let Some(broker) = &rig.broker {
        kcat_reads(&broker.brokers, &ids[0]);
    }
    m.stop().await;
    store.cleanup().await;
}

/// What an operator would type: `kcat -C -t weir.jobs`.
///
/// Debian 12's kcat links librdkafka 2.0.2, which misreads the ApiVersions v3 reply of tansu
/// 0.6 (Apache Kafka is fine). So kcat runs here on the librdkafka 2.12 that rdkafka-sys
/// built for Weir, which cargo puts on the test's library path.
fn kcat_reads(brokers: &str, job: &str) {
    let lib = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .find(|d| std::path::Path::new(d).join("librdkafka.so.1").exists())
        .map(str::to_string)
        .expect("the librdkafka.so.1 built by rdkafka-sys is on the test's library path");
    let out = std::process::Command::new("kcat")
        .args(["-C", "-b", brokers, "-t", topic::JOBS, "-o", "beginning", "-e", "-q"])
        .env("LD_LIBRARY_PATH", lib)
        .output()
        .expect("kcat is installed (make test installs Debian's kcat)");
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let types: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["subject"] == job)
        .map(|v| v["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("dev.weir.job.created"), "{text}");
    assert_eq!(types.last().map(String::as_str), Some("dev.weir.job.succeeded"), "{text}");
}

// ----- triggers --------------------------------------------------------------------------

fn trigger(id: &str, ty: &str, data: Value) -> Message {
    let e = json!({"specversion": "1.0", "id": id, "source": "weir://tests", "type": ty, "data": data});
    Message::new(topic::TRIGGERS, id, e.to_string().into_bytes())
}

async fn triggers_start_one_job_per_event(rig: Rig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("triggers.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - name: archive-arrived\n    on: dev.weir.file.discovered\n    namespace: files\n    \
         job_name: ingest-archive\n    template: bulk_file\n    params: { source: $data.path }\n",
    )
    .expect("write rules");
    let events = EventsConfig { triggers_file: Some(rules), ..Default::default() };
    let store = StoreFixture::new(Backend::Sqlite).await;
    let m = InProcMaster::start_with_bus(&store.url, Some(rig.bus.clone()), events).await;
    // The master creates the topics; wait until it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    let good = trigger("file-1", "dev.weir.file.discovered", json!({"path": "/in/a.zip"}));
    while rig.bus.publish(std::slice::from_ref(&good)).await.is_err() {
        assert!(Instant::now() < deadline, "the trigger topic never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let poison = Message::new(topic::TRIGGERS, "junk", b"{not json".to_vec());
    let unknown = trigger("x-1", "dev.example.unknown", json!({}));
    let bad_job = trigger("file-2", "dev.weir.file.discovered", json!({"other": 1}));
    // Redelivered: the same event again, and once more after the others.
    rig.bus.publish(&[good.clone(), poison, unknown, bad_job, good.clone()]).await.expect("publish");

    let dlq = read_until(&rig.bus, &[topic::DLQ], Duration::from_secs(30), |g| g.len() >= 3).await;
    let reasons: Vec<String> =
        dlq.iter().map(|d| d.message.header_text(header::DLQ_REASON).unwrap_or_default().to_string()).collect();
    assert_eq!(dlq.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not a CloudEvent")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("no trigger rule for event type \"dev.example.unknown\"")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("has no data.path")), "{reasons:?}");
    for d in &dlq {
        assert_eq!(d.message.header_text(header::DLQ_TOPIC), Some(topic::TRIGGERS));
        assert!(d.message.header_text(header::DLQ_OFFSET).is_some_and(|o| o.parse::<i64>().is_ok()));
    }
    assert!(dlq.iter().any(|d| d.message.payload == b"{not json"), "the poison message is kept as it was");

    // The good event started exactly one job, even though it came three times.
    let mut jobs = m.jobs();
    let filter = v1::ListJobsRequest {
        labels: [(weir_core::trigger::LABEL_EVENT_ID.to_string(), "file-1".to_string())].into(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let l = jobs.list_jobs(filter.clone()).await.expect("list").into_inner().jobs;
        if !l.is_empty() || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list.len(), 1, "one job per event: {list:?}");
    let spec = list[0].spec.clone().expect("spec");
    assert_eq!(
        (spec.namespace.as_str(), spec.name.as_str(), spec.template.as_str()),
        ("files", "ingest-archive", "bulk_file")
    );
    assert!(spec.params_json.contains("/in/a.zip"), "{}", spec.params_json);
    // Redelivery after everything settled still creates nothing new.
    rig.bus.publish(&[good]).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(jobs.list_jobs(filter).await.expect("list").into_inner().jobs.len(), 1);
    m.stop().await;
    store.cleanup().await;
}

// ----- worker status ---------------------------------------------------------------------

async fn worker_status_is_published(rig: Rig) {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let m = InProcMaster::start_with_bus(&store.url, Some(rig.bus.clone()), EventsConfig::default()).await;
    // A real worker joins, drains on shutdown and says goodbye.
    let cfg = weir_worker::WorkerConfig {
        master_url: m.url.clone(),
        queue: weir_core::catalog::Queue::File,
        worker_id: "status-worker".into(),
        concurrency: 1,
        poll_wait: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(1),
        security: Default::default(),
        sandbox: Arc::new(weir_core::sandbox::Policy::allow_all()),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = weir_worker::Worker::new(cfg, vec![Arc::new(weir_worker::generic::Generic)]).expect("worker");
    let running = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    running.await.expect("join").expect("worker stops cleanly");
    // Another registers and falls silent (no heartbeats, as if its process died).
    let reg = v1::RegisterWorkerRequest {
        worker_id: "silent-worker".into(),
        queue: "api".into(),
        capacity: 4,
        version: "test".into(),
        kinds: vec![],
    };
    m.workers().register_worker(reg).await.expect("register");

    let got = read_until(&rig.bus, &[topic::WORKERS], Duration::from_secs(30), |g| g.len() >= 5).await;
    let mut per_worker: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for d in &got {
        let e = event_of(d);
        let key = String::from_utf8_lossy(d.message.key.as_deref().unwrap_or_default()).to_string();
        assert_eq!(e.subject.as_deref(), Some(key.as_str()), "keyed by worker id");
        per_worker.entry(key).or_default().push((e.ty.clone(), e.data.clone().unwrap_or_default()));
    }
    let types = |w: &str| per_worker.get(w).map(|v| v.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>());
    assert_eq!(
        types("status-worker"),
        Some(vec!["dev.weir.worker.joined", "dev.weir.worker.draining", "dev.weir.worker.gone"]),
        "{per_worker:?}"
    );
    assert_eq!(types("silent-worker"), Some(vec!["dev.weir.worker.joined", "dev.weir.worker.gone"]), "{per_worker:?}");
    let reason = |w: &str| per_worker[w].last().map(|(_, d)| d["reason"].as_str().unwrap_or_default().to_string());
    assert_eq!(reason("status-worker").as_deref(), Some("deregistered"));
    assert_eq!(reason("silent-worker").as_deref(), Some("silent"));
    assert_eq!(per_worker["status-worker"][0].1["queue"], "file");
    m.stop().await;
    store.cleanup().await;
}

macro_rules! on_both_buses {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Rig::memory().await).await; })+
        }
        mod kafka {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Rig::kafka().await).await; })+
        }
    };
}

on_both_buses!(
    keyed_order_and_group_offsets,
    lifecycle_events_arrive_once_in_order,
    triggers_start_one_job_per_event,
    worker_status_is_published,
);

// ----- Kafka down ------------------------------------------------------------------------

/// The broker dies mid-run: the master keeps working, events wait in the outbox, and once
/// a broker is back every one of them is published, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing() {
    let mut rig = Rig::kafka().await;
    let store = StoreFixture::new(Backend::Postgres).await;
    let m = InProcMaster::start_with_bus(&store.url, Some(rig.bus.clone()), EventsConfig::default()).await;
    let managers = InProcManagers::start(&m.url);
    let mut jobs = m.jobs();
    let chain = || job("outage", vec![step("a", "noop", "api", &[]), step("b", "noop", "file", &["a"])]);
    let before = submit(&mut jobs, chain()).await;
    wait_finished(&mut jobs, &before, Duration::from_secs(10)).await;
    let seen = read_until(&rig.bus, &[topic::JOBS], Duration::from_secs(30), |g| {
        g.iter().any(|d| event_of(d).ty == "dev.weir.job.succeeded" && event_of(d).subject.as_deref() == Some(&before))
    })
    .await;
    assert!(!seen.is_empty(), "events flow before the outage");

    rig.broker.as_mut().expect("broker").kill().await;
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(submit(&mut jobs, chain()).await);
    }
    for id in &during {
        let j = wait_finished(&mut jobs, id, Duration::from_secs(20)).await;
        assert_eq!(j.state, v1::JobState::Succeeded as i32, "the master works on without Kafka");
    }
    // The broker comes back empty (in-memory storage): everything since the outage must
    // be published again from the outbox.
    rig.broker.as_mut().expect("broker").restart().await;
    let history = store.open().await;
    let mut want = 0;
    for id in &during {
        want += history.events(id.parse().expect("uuid"), 1, 10_000).await.expect("history").len();
    }
    let mine: HashSet<&String> = during.iter().collect();
    let got = read_until(&rig.bus, &[topic::JOBS, topic::TASKS], Duration::from_secs(60), |g| {
        g.iter().filter(|d| event_of(d).subject.is_some_and(|s| mine.contains(&s))).count() >= want
    })
    .await;
    let mut per_job: HashMap<String, Vec<u64>> = HashMap::new();
    let mut unique = HashSet::new();
    for d in &got {
        let e = event_of(d);
        if let Some(s) = e.subject.clone().filter(|s| mine.contains(s)) {
            if unique.insert(e.id.clone()) && d.message.topic == topic::JOBS {
                per_job.entry(s).or_default().push(e.data.as_ref().and_then(|d| d["seq"].as_u64()).unwrap_or(0));
            }
        }
    }
    assert_eq!(unique.len(), want, "every event of the outage was published after it");
    for (job, seqs) in per_job {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{job}: in order after the outage: {seqs:?}");
    }
    managers.stop().await;
    m.stop().await;
    store.cleanup().await;
}
