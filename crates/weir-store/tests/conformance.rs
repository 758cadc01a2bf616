//! One conformance suite, run against PostgreSQL (a fresh schema per test) and the
//! embedded SQLite store (a fresh file per test). The engine produces the changes, so the
//! stores are exercised with exactly what the master writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;
use weir_core::engine::{Changes, Engine, EngineConfig, Failure};
use weir_core::model::{event_type as ev, JobRecord, JobState, TaskRecord, TaskState};
use weir_core::spec::{CompensationSpec, JobSpec, RetryPolicy, StepSpec};
use weir_core::validate::validate;
use weir_store::testing::TestSchema;
use weir_store::{Cursor, JobFilter, Store, StoreError};

/// A store under test and what must be cleaned up after it.
struct Subject {
    store: Arc<dyn Store>,
    schema: Option<TestSchema>,
    _dir: Option<tempfile::TempDir>,
}

impl Subject {
    async fn postgres() -> Subject {
        let schema = TestSchema::create().await.expect("PostgreSQL reachable for tests");
        let store = weir_store::open(&schema.url).await.expect("open postgres store");
        Subject { store, schema: Some(schema), _dir: None }
    }
    async fn sqlite() -> Subject {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("weir.db").display());
        let store = weir_store::open(&url).await.expect("open sqlite store");
        Subject { store, schema: None, _dir: Some(dir) }
    }
    async fn finish(self) {
        drop(self.store);
        if let Some(s) = self.schema {
            s.drop().await.expect("drop schema");
        }
    }
}

/// The engine and the store, committing after every step like the master does.
struct Rig {
    engine: Engine,
    store: Arc<dyn Store>,
    epoch: i64,
}

impl Rig {
    async fn new(store: Arc<dyn Store>) -> Rig {
        let epoch = store.acquire_leadership("test", 0).await.expect("leadership");
        let mut n = 0u128;
        let ids = Box::new(move || {
            n += 1;
            Uuid::from_u128((7u128 << 100) + n)
        });
        Rig { engine: Engine::new(EngineConfig::default(), ids), store, epoch }
    }
    async fn commit(&mut self, now: i64) {
        let c = self.engine.take_changes(now);
        self.store.commit(self.epoch, &c).await.expect("commit");
    }
    async fn submit(&mut self, spec: JobSpec, now: i64) -> Uuid {
        let (id, _) = self.engine.submit(validate(spec).expect("valid"), now);
        self.commit(now).await;
        id
    }
    async fn run_one(&mut self, queue: &str, now: i64) -> Uuid {
        let l = self.engine.acquire(queue, "w", 1, now).remove(0);
        self.engine.complete(l.task_id, l.fence, Some("{\"rows\":1}".into()), now).expect("complete");
        self.commit(now).await;
        l.task_id
    }
}

fn step(id: &str, deps: &[&str]) -> StepSpec {
    StepSpec {
        id: id.into(),
        kind: "noop".into(),
        queue: "api".into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

fn spec(ns: &str, name: &str, labels: &[(&str, &str)], steps: Vec<StepSpec>) -> JobSpec {
    JobSpec {
        namespace: ns.into(),
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        steps,
        ..Default::default()
    }
}

fn by_id(tasks: Vec<TaskRecord>) -> HashMap<Uuid, TaskRecord> {
    tasks.into_iter().map(|t| (t.id, t)).collect()
}

async fn round_trip(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let a = rig.submit(spec("ns", "a", &[("team", "x")], vec![step("one", &[]), step("two", &["one"])]), 10).await;
    let b = rig.submit(spec("ns", "b", &[], vec![step("solo", &[])]), 11).await;
    rig.run_one("api", 12).await;
    let leased = rig.engine.acquire("api", "w", 1, 13);
    rig.commit(13).await;
    let (jobs, tasks) = s.load_unfinished().await.expect("load");
    assert_eq!(jobs.len(), 2);
    let tasks = by_id(tasks);
    for id in [a, b] {
        let stored = jobs.iter().find(|j| j.id == id).expect("job stored");
        assert_eq!(stored, rig.engine.job(id).expect("in memory"), "job {id} reads back as written");
        for t in rig.engine.job_tasks(id).expect("tasks") {
            assert_eq!(&tasks[&t.id], t, "task reads back as written");
        }
    }
    assert_eq!(tasks[&leased[0].task_id].state, TaskState::Running);
    let events = s.events(a, 1, 1000).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(events[0].kind, ev::JOB_CREATED);
    assert_eq!(s.events(a, 3, 2).await.expect("events").iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    // Finished jobs are not loaded at start but remain readable.
    let l = &leased[0];
    rig.engine.complete(l.task_id, l.fence, None, 14).expect("complete");
    rig.commit(14).await;
    let (jobs, _) = s.load_unfinished().await.expect("load");
    let done_id = if jobs.iter().any(|j| j.id == a) { b } else { a };
    assert!(!jobs.iter().any(|j| j.id == done_id));
    let (job, tasks) = s.load_job(done_id).await.expect("load job").expect("exists");
    assert_eq!(job.state, JobState::Succeeded);
    assert!(tasks.iter().all(|t| t.state == TaskState::Succeeded));
    assert_eq!(s.get_job(Uuid::nil()).await.expect("get"), None);
    let t = &tasks[0];
    assert_eq!(s.get_task(t.id).await.expect("get task").as_ref(), Some(t));
    assert_eq!(s.get_task(Uuid::nil()).await.expect("get task"), None);
}

async fn finished_jobs_with_leased_tasks_are_loaded(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let id = rig.submit(spec("ns", "split", &[], vec![step("a", &[]), step("b", &[])]), 1).await;
    let l = rig.engine.acquire("api", "w", 2, 2);
    let failure = Failure { kind: "bad_input".into(), message: "no".into(), retryable: false };
    rig.engine.fail(l[0].task_id, l[0].fence, failure, 3).expect("fail");
    rig.commit(3).await;
    let (jobs, tasks) = s.load_unfinished().await.expect("load");
    assert_eq!(jobs.iter().map(|j| (j.id, j.state)).collect::<Vec<_>>(), vec![(id, JobState::Failed)]);
    let running = tasks.iter().find(|t| t.id == l[1].task_id).expect("the leased task is loaded");
    assert_eq!(running.state, TaskState::Running, "a late report of it must still find it after a restart");
    rig.engine.complete(l[1].task_id, l[1].fence, None, 4).expect("late report");
    rig.commit(4).await;
    assert!(s.load_unfinished().await.expect("load").0.is_empty(), "nothing leased any more");
}

async fn outbox_reads_in_commit_order(s: Arc<dyn Store>) {
    assert_eq!(s.outbox_tail().await.expect("tail"), 0);
    let mut rig = Rig::new(s.clone()).await;
    let mut traced = validate(spec("ns", "traced", &[], vec![step("a", &[])])).expect("valid");
    traced.trace_parent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let a = rig.engine.submit(traced, 1).0;
    rig.commit(1).await;
    let b = rig.submit(spec("ns", "plain", &[], vec![step("b", &[])]), 2).await;
    rig.run_one("api", 3).await;
    let all = s.outbox_after(0, 1000).await.expect("outbox");
    let ids: Vec<i64> = all.iter().map(|o| o.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "commit order: {ids:?}");
    assert_eq!(s.outbox_tail().await.expect("tail"), *ids.last().expect("some"));
    let first = &all[0];
    assert_eq!((first.event.job_id, first.event.kind, first.job_name.as_str()), (a, ev::JOB_CREATED, "traced"));
    assert_eq!(first.namespace, "ns");
    assert!(first.trace_parent.as_deref().is_some_and(|t| t.starts_with("00-0af76519")));
    assert!(all.iter().filter(|o| o.event.job_id == b).all(|o| o.trace_parent.is_none() && o.job_name == "plain"));
    for job in [a, b] {
        let history = s.events(job, 1, 1000).await.expect("events");
        let outbox: Vec<_> = all.iter().filter(|o| o.event.job_id == job).map(|o| o.event.clone()).collect();
        assert_eq!(outbox, history, "the outbox is the history, in order");
    }
    let page = s.outbox_after(ids[1], 2).await.expect("page");
    assert_eq!(page.iter().map(|o| o.id).collect::<Vec<_>>(), ids[2..4].to_vec());

    assert_eq!(s.relay_position("kafka").await.expect("position"), None);
    s.set_relay_position(rig.epoch, "kafka", ids[3]).await.expect("set");
    s.set_relay_position(rig.epoch, "kafka", ids[4]).await.expect("move");
    assert_eq!(s.relay_position("kafka").await.expect("position"), Some(ids[4]));
    let newer = s.acquire_leadership("other", 5).await.expect("take over");
    assert!(matches!(s.set_relay_position(rig.epoch, "kafka", ids[5]).await, Err(StoreError::Fenced { .. })));
    s.set_relay_position(newer, "kafka", ids[5]).await.expect("the new leader moves it");

    // Messages outside any job ride the same commits.
    assert_eq!(s.messages_tail().await.expect("tail"), 0);
    let msg = |w: &str| weir_core::events::worker_status("dev.weir.worker.joined", w, "api", serde_json::json!({}), 9);
    let changes = Changes { messages: vec![msg("w1"), msg("w2")], ..Default::default() };
    s.commit(newer, &changes).await.expect("commit messages");
    let stored = s.messages_after(0, 10).await.expect("messages");
    assert_eq!(stored.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(), changes.messages);
    assert!(stored[0].0 < stored[1].0);
    assert_eq!(s.messages_tail().await.expect("tail"), stored[1].0);
    assert_eq!(s.messages_after(stored[0].0, 10).await.expect("after").len(), 1);
}

async fn keys_and_listing(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let ns = if i % 2 == 0 { "even" } else { "odd" };
        let mut sp = spec(ns, &format!("job{i}"), &[("i", &i.to_string()), ("team", "data.eng")], vec![step("a", &[])]);
        sp.run_id = format!("run-{i}");
        ids.push(rig.submit(sp, 100 + i).await);
    }
    assert_eq!(s.find_job("odd", "job1", "run-1").await.expect("find"), Some(ids[1]));
    assert_eq!(s.find_job("odd", "job1", "run-9").await.expect("find"), None);
    // Pages of two, newest first, covering everything once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_jobs(&JobFilter::default(), 2, after).await.expect("list");
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(c) => after = Some(Cursor::from_token(&c.to_token()).expect("token")),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let f = JobFilter { namespace: Some("even".into()), ..Default::default() };
    assert_eq!(s.list_jobs(&f, 50, None).await.expect("list").jobs.len(), 3);
    let f = JobFilter { labels: BTreeMap::from([("i".into(), "3".into())]), ..Default::default() };
    let jobs: Vec<Uuid> = s.list_jobs(&f, 50, None).await.expect("list").jobs.iter().map(|j| j.id).collect();
    assert_eq!(jobs, vec![ids[3]]);
    let f = JobFilter {
        labels: BTreeMap::from([("team".into(), "data.eng".into()), ("i".into(), "0".into())]),
        ..Default::default()
    };
    assert_eq!(s.list_jobs(&f, 50, None).await.expect("list").jobs.len(), 1);
    let f = JobFilter { name: Some("job2".into()), state: Some(JobState::Pending), ..Default::default() };
    assert_eq!(s.list_jobs(&f, 50, None).await.expect("list").jobs.len(), 1);
    let f = JobFilter { state: Some(JobState::Succeeded), ..Default::default() };
    assert!(s.list_jobs(&f, 50, None).await.expect("list").jobs.is_empty());
}

async fn retry_deletes_old_compensation(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let mut a = step("a", &[]);
    a.compensation = Some(CompensationSpec { kind: "noop".into(), ..Default::default() });
    let mut b = step("b", &["a"]);
    b.retry = Some(RetryPolicy { max_attempts: 1, ..Default::default() });
    let id = rig.submit(spec("ns", "comp", &[], vec![a, b]), 1).await;
    rig.run_one("api", 2).await;
    let l = rig.engine.acquire("api", "w", 1, 3).remove(0);
    let f = Failure { kind: "io".into(), message: "down".into(), retryable: true };
    rig.engine.fail(l.task_id, l.fence, f, 3).expect("fail");
    rig.commit(3).await;
    rig.run_one("api", 4).await; // the compensation of a
    let (job, tasks) = s.load_job(id).await.expect("load").expect("exists");
    assert_eq!(job.state, JobState::Compensated);
    assert_eq!(tasks.len(), 3);
    rig.engine.load(vec![job], tasks, 5);
    rig.engine.retry(id, 5).expect("retry");
    rig.commit(5).await;
    let tasks = s.job_tasks(id).await.expect("tasks");
    assert_eq!(tasks.len(), 2, "the old round's compensation task is gone");
    assert!(tasks.iter().all(|t| t.compensates.is_none()));
}

async fn stale_epoch_is_fenced(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let old = rig.epoch;
    let new = s.acquire_leadership("successor", 1).await.expect("leadership");
    assert!(new > old);
    rig.engine.submit(validate(spec("ns", "late", &[], vec![step("a", &[])])).expect("valid"), 2);
    let c = rig.engine.take_changes(2);
    match s.commit(old, &c).await {
        Err(StoreError::Fenced { mine, current }) => assert_eq!((mine, current), (old, new)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(s.load_unfinished().await.expect("load").0.is_empty(), "nothing of the fenced commit landed");
    s.commit(new, &c).await.expect("current epoch commits");
    assert_eq!(s.load_unfinished().await.expect("load").0.len(), 1);
}

async fn large_batches(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let steps: Vec<StepSpec> = (0..2000).map(|i| step(&format!("s{i}"), &[])).collect();
    let id = rig.submit(spec("ns", "wide", &[], steps), 1).await;
    let leases = rig.engine.acquire("api", "w", 5000, 2);
    for l in &leases {
        rig.engine.complete(l.task_id, l.fence, None, 3).expect("complete");
    }
    rig.commit(3).await;
    let job: JobRecord = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.counts.succeeded, 2000);
    assert_eq!(s.events(id, 1, 100_000).await.expect("events").len() as u64, job.last_seq);
}

async fn file_inventory_claims_each_version_once(s: Arc<dyn Store>) {
    use weir_core::files::SeenFile;
    use weir_core::model::OutboxMessage;
    let f = |p: &str, size: u64| SeenFile { path: p.into(), size, modified_ms: 7, etag: Some("e".into()) };
    let claimed = s.claim_files("w", &[f("a.csv", 1), f("b.csv", 2)], 100).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.file.path.as_str()).collect::<Vec<_>>(), vec!["a.csv", "b.csv"]);
    // Seen again unchanged: nothing new. Changed: claimed again. Another watch: its own.
    assert!(s.claim_files("w", &[f("a.csv", 1), f("b.csv", 2)], 101).await.expect("again").is_empty());
    let changed = s.claim_files("w", &[f("a.csv", 1), f("b.csv", 3)], 102).await.expect("changed");
    assert_eq!(changed.iter().map(|c| (c.file.path.as_str(), c.file.size)).collect::<Vec<_>>(), vec![("b.csv", 3)]);
    assert_eq!(s.claim_files("other", &[f("a.csv", 1)], 103).await.expect("other").len(), 1);

    // Two claimers at once over the same listing: each version goes to exactly one.
    let listing: Vec<SeenFile> = (0..200).map(|i| f(&format!("batch/{i:03}.csv"), 10)).collect();
    let (a, b) = tokio::join!(s.claim_files("w", &listing, 104), s.claim_files("w", &listing, 104));
    assert_eq!(a.expect("a").len() + b.expect("b").len(), 200);

    let pending = s.pending_files("w", 1000).await.expect("pending");
    assert_eq!(pending.len(), 202);
    let event = |p: &str| OutboxMessage {
        topic: "weir.files".into(),
        key: "w".into(),
        kind: "dev.weir.file.discovered".into(),
        subject: p.into(),
        time_ms: 105,
        data: serde_json::json!({"path": p}),
    };
    let tail = s.messages_tail().await.expect("tail");
    let a = pending.iter().find(|c| c.file.path == "a.csv").expect("a pending");
    assert!(s.mark_file_started("w", a, "job-1", &event("a.csv"), 105).await.expect("mark"));
    assert!(!s.mark_file_started("w", a, "job-1", &event("a.csv"), 106).await.expect("twice"), "marked once");
    let msgs = s.messages_after(tail, 10).await.expect("messages");
    assert_eq!(msgs.len(), 1, "one discovery event per version");
    assert_eq!(msgs[0].1.subject, "a.csv");

    // A stale claim (the file changed since) cannot be marked.
    let old_b = pending.iter().find(|c| c.file.path == "b.csv").expect("b");
    assert_eq!(old_b.file.size, 3);
    let mut stale = old_b.clone();
    stale.file.size = 2;
    assert!(!s.mark_file_started("w", &stale, "job-x", &event("b.csv"), 107).await.expect("stale"));

    // A re-drive makes a started file pending again under a new generation.
    let again = s.redrive_file("w", "a.csv", 108).await.expect("redrive").expect("known file");
    assert_eq!((again.generation, again.file.size), (1, 1));
    assert!(s.redrive_file("w", "nope.csv", 108).await.expect("unknown").is_none());
    let listed = s.list_files(Some("w"), 10).await.expect("list");
    let row = listed.iter().find(|r| r.file.path == "a.csv").expect("row");
    assert_eq!((row.state.as_str(), row.generation, row.job_id.as_deref()), ("discovered", 1, None));
    assert_eq!(row.first_seen_ms, 100);
    assert_eq!(s.list_files(None, 1000).await.expect("all").len(), 203);

    // One poller per interval.
    assert!(s.claim_poll("w", "r1", 1_000, 500).await.expect("first"));
    assert!(!s.claim_poll("w", "r2", 1_200, 500).await.expect("not due"));
    assert!(s.claim_poll("w", "r2", 1_500, 500).await.expect("due"));
}

async fn dataset_versions_are_recorded_once_with_their_event(s: Arc<dyn Store>) {
    use weir_core::dataset::schema::{Change, Column, ColumnType, Origin, Schema, Version};
    use weir_core::model::DatasetVersion;
    let col = |n: &str, k| Column { name: n.into(), kind: k, nullable: true };
    let v = |dataset: &str, n: u32, cols: Vec<Column>, changes: Vec<Change>| DatasetVersion {
        dataset: dataset.into(),
        kind: "parquet".into(),
        version: Version {
            version: n,
            schema: Schema { columns: cols, partition: None },
            changes,
            origin: Origin {
                job_id: "j".into(),
                task_id: "t".into(),
                step_id: "store".into(),
                input: "day1.csv".into(),
                time_ms: 5,
            },
        },
        recorded_ms: 10 + i64::from(n),
    };
    let v1 = v("file:///lake/a", 1, vec![col("id", ColumnType::Int64)], vec![Change::Created]);
    let v2 = v(
        "file:///lake/a",
        2,
        vec![col("id", ColumnType::Int64), col("currency", ColumnType::String)],
        vec![Change::Added { column: "currency".into(), kind: ColumnType::String }],
    );
    let other = v("postgres://h:5432/db/t", 1, vec![col("x", ColumnType::Date)], vec![Change::Adopted]);
    let tail = s.messages_tail().await.expect("tail");
    assert_eq!(s.record_dataset_versions(std::slice::from_ref(&v1)).await.expect("v1"), 1);
    // Recording the whole history again adds only what is new, with one event each.
    assert_eq!(s.record_dataset_versions(&[v1.clone(), v2.clone(), other.clone()]).await.expect("again"), 2);
    assert_eq!(s.record_dataset_versions(std::slice::from_ref(&v2)).await.expect("once more"), 0);
    let msgs = s.messages_after(tail, 10).await.expect("messages");
    assert_eq!(msgs.len(), 3, "one event per version");
    assert_eq!(msgs[1].1.kind, "dev.weir.dataset.schema_changed");
    assert_eq!((msgs[1].1.topic.as_str(), msgs[1].1.key.as_str()), ("weir.datasets", "file:///lake/a"));
    assert_eq!(msgs[1].1.data["version"], 2);
    assert_eq!(msgs[1].1.data["changes"][0]["column"], "currency");
    assert_eq!(s.dataset_versions("file:///lake/a").await.expect("history"), vec![v1, v2.clone()]);
    assert_eq!(s.list_datasets(10).await.expect("list"), vec![v2, other]);
    assert!(s.dataset_versions("nope").await.expect("none").is_empty());
}

/// A job whose one step proposes `value` as the mark of `orders/collect`, run to success.
async fn propose(rig: &mut Rig, run: &str, value: serde_json::Value, now: i64) -> Uuid {
    let mut j = spec("default", "orders", &[], vec![step("collect", &[])]);
    j.run_id = run.into();
    let id = rig.submit(j, now).await;
    let l = rig.engine.acquire("api", "w", 1, now).remove(0);
    let out = serde_json::json!({"watermark": {"key": "orders/collect", "value": value, "boundary": ["f1"]}});
    rig.engine.complete(l.task_id, l.fence, Some(out.to_string()), now).expect("complete");
    rig.commit(now).await;
    id
}

async fn watermarks_advance_with_the_job_and_never_move_back(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    assert_eq!(s.watermark("default", "orders/collect").await.expect("read"), None);
    let first = propose(&mut rig, "r1", serde_json::json!("2026-11-02T00:00:00Z"), 10).await;
    let w = s.watermark("default", "orders/collect").await.expect("read").expect("stored with the job");
    assert_eq!((w.mark.value.as_str(), w.mark.boundary.len(), w.job_id), (Some("2026-11-02T00:00:00Z"), 1, first));
    // A run that started earlier and ended later proposes an older mark: it is not written.
    propose(&mut rig, "r2", serde_json::json!("2026-11-02T01:00:00+02:00"), 20).await;
    let w = s.watermark("default", "orders/collect").await.expect("read").expect("kept");
    assert_eq!(w.job_id, first, "an older mark is not written");
    let third = propose(&mut rig, "r3", serde_json::json!("2026-11-03T00:00:00Z"), 30).await;
    let all = s.list_watermarks("", 10).await.expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].job_id, all[0].updated_ms), (third, 30));
    assert!(s.list_watermarks("other", 10).await.expect("list").is_empty());
}

async fn audit_records_land_with_their_commit_newest_first_and_past_retention_go(s: Arc<dyn Store>) {
    use weir_core::audit::{AuditFilter, AuditRecord, Outcome};
    let epoch = s.acquire_leadership("test", 0).await.expect("leadership");
    let rec = |i: u128, subject: &str, ns: &str, outcome: Outcome| {
        let mut r = AuditRecord::new(1_000 + i as i64, subject, "SubmitJob").with_outcome(outcome, "X", "why");
        // UUIDv7-like: the order of the ids is the order of the records.
        r.id = Uuid::from_u128((1u128 << 100) + i);
        r.namespace = ns.into();
        r.target = format!("job-{i}");
        r
    };
    let all = vec![
        rec(0, "ada", "finance", Outcome::Ok),
        rec(1, "bob", "marketing", Outcome::Denied),
        rec(2, "", "", Outcome::Unauthenticated),
        rec(3, "ada", "finance", Outcome::Limited),
        rec(4, "ada", "marketing", Outcome::Denied),
    ];
    s.commit(epoch, &Changes { audit: all.clone(), ..Default::default() }).await.expect("commit");
    let got = s.audit(&AuditFilter::default(), 100).await.expect("list");
    let mut newest_first = all.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first, "every field kept, newest first");
    let ids = |f: AuditFilter, limit: u32| {
        let s = s.clone();
        async move { s.audit(&f, limit).await.expect("list").iter().map(|r| r.target.clone()).collect::<Vec<_>>() }
    };
    assert_eq!(
        ids(AuditFilter { subject: Some("ada".into()), ..Default::default() }, 100).await,
        ["job-4", "job-3", "job-0"]
    );
    assert_eq!(
        ids(AuditFilter { namespace: Some("marketing".into()), ..Default::default() }, 100).await,
        ["job-4", "job-1"]
    );
    assert_eq!(
        ids(AuditFilter { outcome: Some(Outcome::Denied), ..Default::default() }, 100).await,
        ["job-4", "job-1"]
    );
    assert_eq!(ids(AuditFilter { since_ms: Some(1_003), ..Default::default() }, 100).await, ["job-4", "job-3"]);
    // Pages: the last id of one page is where the next starts.
    assert_eq!(ids(AuditFilter::default(), 2).await, ["job-4", "job-3"]);
    assert_eq!(ids(AuditFilter { before: Some(all[3].id), ..Default::default() }, 2).await, ["job-2", "job-1"]);
    // The same record twice is refused (append-only: a record is written once).
    assert!(s.commit(epoch, &Changes { audit: vec![all[0].clone()], ..Default::default() }).await.is_err());
    // Retention: what is older goes, the rest stays.
    assert_eq!(s.purge_audit(1_002).await.expect("purge"), 2);
    assert_eq!(ids(AuditFilter::default(), 100).await, ["job-4", "job-3", "job-2"]);
}

async fn connections_are_put_replaced_and_deleted_with_their_commit(s: Arc<dyn Store>) {
    use weir_core::connection::{Connection, ConnectionChange};
    let epoch = s.acquire_leadership("test", 0).await.expect("leadership");
    let conn = |ns: &str, name: &str, uri: &str, at: i64| Connection {
        namespace: ns.into(),
        name: name.into(),
        description: format!("{name} of {ns}"),
        config: serde_json::json!({"uri": uri, "credentials": {"env": "FINANCE_S3_"}}),
        updated_ms: at,
        updated_by: "ada".into(),
    };
    let put = |c: Connection| Changes { connections: vec![ConnectionChange::Put(c)], ..Default::default() };
    s.commit(epoch, &put(conn("finance", "lake", "s3://a", 1))).await.expect("put");
    s.commit(epoch, &put(conn("finance", "archive", "s3://b", 2))).await.expect("put");
    s.commit(epoch, &put(conn("ops", "lake", "s3://c", 3))).await.expect("put");
    let finance = s.connections("finance", 100).await.expect("list");
    assert_eq!(finance, vec![conn("finance", "archive", "s3://b", 2), conn("finance", "lake", "s3://a", 1)]);
    // A put of the same name replaces it, whole.
    s.commit(epoch, &put(conn("finance", "lake", "s3://z", 4))).await.expect("replace");
    let lake = s.connections("finance", 100).await.expect("list").into_iter().find(|c| c.name == "lake");
    assert_eq!(lake, Some(conn("finance", "lake", "s3://z", 4)));
    let delete = Changes {
        connections: vec![ConnectionChange::Delete { namespace: "finance".into(), name: "lake".into() }],
        ..Default::default()
    };
    s.commit(epoch, &delete).await.expect("delete");
    let names = |v: Vec<Connection>| v.into_iter().map(|c| format!("{}/{}", c.namespace, c.name)).collect::<Vec<_>>();
    assert_eq!(names(s.connections("", 100).await.expect("all")), ["finance/archive", "ops/lake"]);
    assert_eq!(names(s.connections("", 1).await.expect("one")), ["finance/archive"]);
    // A stale leader writes no connection.
    let next = s.acquire_leadership("successor", 1).await.expect("takeover");
    assert!(next > epoch);
    assert!(s.commit(epoch, &put(conn("ops", "late", "s3://d", 5))).await.is_err());
    assert_eq!(names(s.connections("ops", 100).await.expect("ops")), ["ops/lake"]);
}

async fn schedules_are_written_with_the_jobs_their_slots_start(s: Arc<dyn Store>) {
    use weir_core::schedule::{Schedule, ScheduleChange, ScheduleRecord, ScheduleSpec, ScheduleState, Slot};
    let mut rig = Rig::new(s.clone()).await;
    let record = |ns: &str, name: &str, cron: &str, state: ScheduleState, at: i64| {
        let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
            "namespace": ns, "name": name, "cron": cron, "time_zone": "Europe/Berlin",
            "job": {"steps": [{"id": "a", "kind": "noop", "queue": "api"}]},
        }))
        .expect("spec");
        let spec = Schedule::new(spec).expect("valid").spec;
        ScheduleRecord { spec, state, created_ms: 1, updated_ms: at, updated_by: "ada".into() }
    };
    let put = |r: ScheduleRecord| ScheduleChange::Put(Box::new(r));
    // Created, and in a later batch changed twice: the last change is what is kept.
    let hourly = record("shop", "orders", "0 * * * *", ScheduleState::new(1_000, false, String::new()), 1);
    s.commit(rig.epoch, &Changes { schedules: vec![put(hourly.clone())], ..Default::default() }).await.expect("create");
    s.commit(
        rig.epoch,
        &Changes {
            schedules: vec![put(record("ops", "sweep", "@daily", ScheduleState::default(), 2))],
            ..Default::default()
        },
    )
    .await
    .expect("create");
    assert_eq!(s.schedule("shop", "orders").await.expect("get"), Some(hourly.clone()));

    // A slot fires: its job and the advanced state land in one commit.
    let schedule = Schedule::new(hourly.spec.clone()).expect("valid");
    let slot = Slot::scheduled(3_600_000);
    let (job, _) = rig.engine.submit(validate(schedule.job_for(slot).expect("job")).expect("valid"), 5);
    let mut fired = hourly.clone();
    fired.state.cursor_ms = slot.time_ms;
    fired.state.started(slot, job, 5);
    let mut paused = fired.clone();
    paused.state.set_paused(true, "supplier outage".into(), 6);
    paused.updated_ms = 6;
    let mut c = rig.engine.take_changes(5);
    c.schedules = vec![put(fired), put(paused.clone())];
    s.commit(rig.epoch, &c).await.expect("fire");
    assert_eq!(s.schedule("shop", "orders").await.expect("get"), Some(paused.clone()));
    let run = s.find_job("shop", "orders", &schedule.run_id(slot)).await.expect("find");
    assert_eq!(run, Some(job), "the slot's job is found by its run id");

    let names = |v: Vec<ScheduleRecord>| {
        v.into_iter().map(|r| format!("{}/{}", r.spec.namespace, r.spec.name)).collect::<Vec<_>>()
    };
    assert_eq!(names(s.schedules("", 100).await.expect("all")), ["ops/sweep", "shop/orders"]);
    assert_eq!(names(s.schedules("shop", 100).await.expect("shop")), ["shop/orders"]);
    assert_eq!(names(s.schedules("", 1).await.expect("one")), ["ops/sweep"]);
    // Put then deleted in one batch: gone.
    let gone = vec![put(paused.clone()), ScheduleChange::Delete { namespace: "shop".into(), name: "orders".into() }];
    s.commit(rig.epoch, &Changes { schedules: gone, ..Default::default() }).await.expect("delete");
    assert_eq!(s.schedule("shop", "orders").await.expect("get"), None);
    // A stale leader writes no schedule.
    let next = s.acquire_leadership("successor", 1).await.expect("takeover");
    assert!(next > rig.epoch);
    let late = Changes { schedules: vec![put(hourly)], ..Default::default() };
    assert!(s.commit(rig.epoch, &late).await.is_err());
    assert_eq!(names(s.schedules("", 100).await.expect("all")), ["ops/sweep"]);
}

async fn purge_takes_finished_published_jobs_past_retention_and_relayed_messages(s: Arc<dyn Store>) {
    use weir_core::model::OutboxMessage;
    use weir_core::retention::{Scope, Sweep};
    let mut rig = Rig::new(s.clone()).await;
    let one = |ns: &str, name: &str| spec(ns, name, &[], vec![step("a", &[])]);
    // Finished in this order: finance's at 10, then team's old one at 10, team's new one at 50.
    let finance = rig.submit(one("finance", "old"), 1).await;
    rig.run_one("api", 10).await;
    let old = rig.submit(one("team", "old"), 1).await;
    rig.run_one("api", 10).await;
    let new = rig.submit(one("team", "new"), 40).await;
    rig.run_one("api", 50).await;
    // Failed at 10 while its other task is still leased: a late report must find it.
    let leased = rig.submit(spec("team", "leased", &[], vec![step("a", &[]), step("b", &[])]), 2).await;
    let l = rig.engine.acquire("api", "w", 2, 3);
    let failure = Failure { kind: "bad_input".into(), message: "no".into(), retryable: false };
    rig.engine.fail(l[0].task_id, l[0].fence, failure, 10).expect("fail");
    rig.commit(10).await;
    let pending = rig.submit(one("team", "pending"), 1).await;
    let outbox = s.outbox_after(0, 10_000).await.expect("outbox");
    let last_event = |job: Uuid| outbox.iter().filter(|e| e.event.job_id == job).map(|e| e.id).max().expect("events");
    let old_events = outbox.iter().filter(|e| e.event.job_id == old).count() as u64;
    let gone = |id: Uuid| {
        let s = s.clone();
        async move {
            s.get_job(id).await.expect("get").is_none()
                && s.job_tasks(id).await.expect("tasks").is_empty()
                && s.events(id, 0, 100).await.expect("events").is_empty()
        }
    };
    let team = |before| Sweep { scope: Scope::AllBut(vec!["finance".into()]), before };
    let epoch = rig.epoch;
    let old_run = s.get_job(old).await.expect("get").expect("stored").spec.run_id.clone();
    assert_eq!(s.find_job("team", "old", &old_run).await.expect("find"), Some(old));

    // Published only up to finance's last event: team's old job waits for the relay.
    let p = s.purge_jobs(epoch, &team(20), Some(last_event(finance)), 100, None).await.expect("purge");
    assert_eq!(p, weir_store::Purged::default());
    // Everything published: only the old finished team job goes, whole.
    let p = s.purge_jobs(epoch, &team(20), None, 100, None).await.expect("purge");
    assert_eq!(p, weir_store::Purged { jobs: vec![old], tasks: 1, events: old_events });
    assert!(gone(old).await, "the job, its task and its history are gone");
    assert!(s.find_job("team", "old", &old_run).await.expect("find").is_none(), "its run id is free again");
    for kept in [finance, new, leased, pending] {
        assert!(s.get_job(kept).await.expect("get").is_some(), "{kept} is kept");
    }
    // A later cutoff takes the newer one; never a job with a leased task or an unfinished one.
    assert_eq!(s.purgeable_jobs(&team(1_000), None, 100).await.expect("candidates"), [new]);
    let only = |ids: &[Uuid]| ids.to_vec();
    let none = s.purge_jobs(epoch, &team(1_000), None, 100, Some(&only(&[leased, pending]))).await.expect("purge");
    assert!(none.jobs.is_empty(), "only among the given jobs, and never unfinished or leased ones");
    let p = s.purge_jobs(epoch, &team(1_000), None, 100, Some(&only(&[new, pending]))).await.expect("purge");
    assert_eq!(p.jobs, [new]);
    assert!(gone(new).await);
    assert!(!gone(leased).await && !gone(pending).await);
    // Finance's own sweep, a batch of one at a time.
    let mut finance_only = Sweep { scope: Scope::Namespace("finance".into()), before: 5 };
    assert!(
        s.purge_jobs(epoch, &finance_only, None, 1, None).await.expect("purge").jobs.is_empty(),
        "finished after 5"
    );
    finance_only.before = 20;
    assert_eq!(
        s.purge_jobs(epoch, &finance_only, Some(last_event(finance)), 1, None).await.expect("purge").jobs,
        [finance]
    );
    assert!(gone(finance).await);
    // Once its lease ends, the failed job goes too.
    rig.engine.complete(l[1].task_id, l[1].fence, None, 11).expect("late report");
    rig.commit(11).await;
    assert_eq!(s.purge_jobs(epoch, &team(1_000), None, 100, None).await.expect("purge").jobs, [leased]);
    assert!(gone(leased).await && !gone(pending).await);

    // Messages: relayed ones go; without a relay, old ones.
    let msg = |t: i64| OutboxMessage {
        topic: "weir.workers".into(),
        key: "w".into(),
        kind: "dev.weir.worker.joined".into(),
        subject: "w".into(),
        time_ms: t,
        data: serde_json::json!({}),
    };
    s.commit(epoch, &Changes { messages: vec![msg(5), msg(6), msg(100)], ..Default::default() }).await.expect("msgs");
    let ids: Vec<i64> = s.messages_after(0, 100).await.expect("messages").iter().map(|m| m.0).collect();
    assert_eq!(s.purge_messages(epoch, Some(ids[0]), 1_000, 100).await.expect("purge"), 1);
    assert_eq!(s.purge_messages(epoch, None, 50, 100).await.expect("purge"), 1);
    assert_eq!(s.messages_after(0, 100).await.expect("messages").iter().map(|m| m.0).collect::<Vec<_>>(), [ids[2]]);

    // Space freed by the purge is reusable: SQLite reuses freed pages by itself, PostgreSQL
    // vacuums here only where autovacuum is off.
    let vacuumed = s.reclaim().await.expect("reclaim");
    assert!(s.backend() == "postgres" || !vacuumed);

    s.set_relay_position(epoch, "kafka", 7).await.expect("position");
    s.set_relay_position(epoch, "kafka:messages", 3).await.expect("position");
    assert_eq!(s.relay_positions().await.expect("positions"), [("kafka".into(), 7), ("kafka:messages".into(), 3)]);
    // A deposed master deletes nothing.
    let next = s.acquire_leadership("successor", 1).await.expect("takeover");
    let fenced = s.purge_jobs(epoch, &team(i64::MAX), None, 100, None).await;
    assert!(matches!(fenced, Err(StoreError::Fenced { .. })), "{fenced:?}");
    assert!(matches!(s.purge_messages(epoch, None, i64::MAX, 100).await, Err(StoreError::Fenced { .. })));
    assert!(s.purge_messages(next, None, i64::MAX, 100).await.expect("purge") == 1);
}

/// The memory budget's reads: pending jobs page in best-ranked first (priority, then
/// age), from where the last page ended, within a task budget; started ones load apart.
async fn pending_jobs_page_in_by_priority_then_age(s: Arc<dyn Store>) {
    let mut rig = Rig::new(s.clone()).await;
    let named = |name: &str, priority: i32, steps: Vec<StepSpec>| {
        let mut j = spec("ns", name, &[], steps);
        j.priority = priority;
        j
    };
    let started = named("started", 9, vec![step("a", &[])]);
    let started = rig.submit(started, 0).await;
    rig.engine.acquire("api", "w", 1, 0);
    rig.commit(0).await;
    let mut expect = Vec::new();
    for (t, (name, prio, steps)) in
        [("p0-1", 0, 1), ("p0-2", 0, 1), ("p0-3", 0, 2), ("p5", 5, 1), ("low", -1, 1)].into_iter().enumerate()
    {
        let steps = (0..steps).map(|i| step(&format!("s{i}"), &[])).collect();
        let mut j = named(name, prio, steps);
        if name == "low" {
            j.timeout = Some(std::time::Duration::from_millis(100));
        }
        let id = rig.submit(j, t as i64 + 1).await;
        expect.push((std::cmp::Reverse(prio), t as i64 + 1, id));
    }
    expect.sort();
    let order: Vec<Uuid> = expect.iter().map(|e| e.2).collect();
    let (jobs, tasks) = s.load_started().await.expect("started");
    assert_eq!((jobs.len(), jobs[0].id, tasks.len()), (1, started, 1), "only the started job");

    let ids = |p: &weir_store::PendingPage| {
        let mut v: Vec<Uuid> = p.jobs.iter().map(|j| j.id).collect();
        v.sort_by_key(|id| order.iter().position(|o| o == id));
        v
    };
    let all = s.load_pending(None, 100, 100).await.expect("page");
    assert_eq!((ids(&all), all.next, all.tasks.len()), (order.clone(), None, 6));
    let first = s.load_pending(None, 2, 100).await.expect("page");
    assert_eq!(ids(&first), order[..2]);
    let next = first.next.expect("more left");
    assert_eq!(next.id, order[2]);
    let rest = s.load_pending(Some(next), 100, 100).await.expect("page");
    assert_eq!((ids(&rest), rest.next), (order[2..].to_vec(), None), "the next page starts where the first ended");
    let third = s.load_pending(Some(next), 1, 100).await.expect("page");
    assert_eq!(ids(&third), order[2..3]);
    let from_fourth = third.next.expect("more left");
    assert_eq!(from_fourth.id, order[3]);
    let two = s.load_pending(Some(from_fourth), 100, 2).await.expect("page");
    assert_eq!(ids(&two), order[3..4], "the two-step job fills a room of two");
    assert!(two.tasks.iter().all(|t| t.job_id == order[3]) && two.tasks.len() == 2);
    assert_eq!(two.next.map(|r| r.id), Some(order[4]));
    let tight = s.load_pending(Some(from_fourth), 100, 0).await.expect("page");
    assert_eq!(ids(&tight), order[3..4], "at least one job, whatever the room");
    let none = s.load_pending(None, 0, 100).await.expect("page");
    assert_eq!((none.jobs.len(), none.next.map(|r| r.id)), (0, Some(order[0])), "where the backlog starts");

    let low = order[4];
    assert_eq!(s.overdue_pending(next, 100, 10).await.expect("overdue"), Vec::<Uuid>::new());
    assert_eq!(s.overdue_pending(next, 105, 10).await.expect("overdue"), vec![low], "its deadline passed");
    let past_it = weir_core::engine::JobRank { priority: -2, created_ms: 0, id: Uuid::nil() };
    assert_eq!(s.overdue_pending(past_it, 105, 10).await.expect("overdue"), Vec::<Uuid>::new(), "ranked before `from`");
    let mut all = s.load_unfinished().await.expect("all").0.iter().map(|j| j.id).collect::<Vec<_>>();
    all.sort();
    let mut want = [order.clone(), vec![started]].concat();
    want.sort();
    assert_eq!(all, want);
}

macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(#[tokio::test] async fn $name() { let s = super::Subject::postgres().await; super::$name(s.store.clone()).await; s.finish().await; })+
        }
        mod sqlite {
            $(#[tokio::test] async fn $name() { let s = super::Subject::sqlite().await; super::$name(s.store.clone()).await; s.finish().await; })+
        }
    };
}

conformance!(
    round_trip,
    finished_jobs_with_leased_tasks_are_loaded,
    outbox_reads_in_commit_order,
    keys_and_listing,
    retry_deletes_old_compensation,
    stale_epoch_is_fenced,
    large_batches,
    file_inventory_claims_each_version_once,
    dataset_versions_are_recorded_once_with_their_event,
    watermarks_advance_with_the_job_and_never_move_back,
    audit_records_land_with_their_commit_newest_first_and_past_retention_go,
    connections_are_put_replaced_and_deleted_with_their_commit,
    schedules_are_written_with_the_jobs_their_slots_start,
    purge_takes_finished_published_jobs_past_retention_and_relayed_messages,
    pending_jobs_page_in_by_priority_then_age
);

/// PostgreSQL only (SQLite's trigger is the same rule): an audit row cannot be changed.
#[tokio::test]
async fn postgres_audit_rows_cannot_be_updated() {
    let subject = Subject::postgres().await;
    let epoch = subject.store.acquire_leadership("test", 0).await.expect("leadership");
    let r = weir_core::audit::AuditRecord::new(1, "ada", "SubmitJob");
    subject.store.commit(epoch, &Changes { audit: vec![r], ..Default::default() }).await.expect("commit");
    let url = subject.schema.as_ref().map(|s| s.url.clone()).expect("schema");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.expect("connect");
    let e = sqlx::query("UPDATE weir_audit SET outcome = 'ok', subject = 'someone-else'")
        .execute(&pool)
        .await
        .expect_err("append-only");
    assert!(e.to_string().contains("append-only"), "{e}");
    pool.close().await;
    subject.finish().await;
}

/// PostgreSQL only: a second master blocks until the first one's session ends.
#[tokio::test]
async fn postgres_second_master_waits_for_the_first() {
    let schema = TestSchema::create().await.expect("schema");
    let first = weir_store::open(&schema.url).await.expect("open");
    let e1 = first.acquire_leadership("first", 0).await.expect("lead");
    let second = weir_store::open(&schema.url).await.expect("open");
    let waiting = tokio::spawn(async move { second.acquire_leadership("second", 1).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second master must wait");
    drop(first);
    let e2 = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("takes over once the first is gone")
        .expect("join")
        .expect("lead");
    assert_eq!(e2, e1 + 1);
    schema.drop().await.expect("drop");
}

/// PostgreSQL only: a store that grew from empty keeps its key lookups on the unique index.
/// With autovacuum off (as on this project's test machines) the store runs the ANALYZE;
/// without statistics the planner takes the namespace's newest-first index for a run-id
/// lookup and reads every job of the namespace.
#[tokio::test]
async fn postgres_run_id_lookups_stay_on_the_unique_index_as_the_store_grows() {
    let schema = TestSchema::create().await.expect("schema");
    let store = weir_store::open(&schema.url).await.expect("open");
    let pool = sqlx::PgPool::connect(&schema.url).await.expect("pool");
    let autovacuum: String =
        sqlx::query_scalar("SELECT current_setting('autovacuum')").fetch_one(&pool).await.expect("setting");
    let mut rig = Rig::new(store.clone()).await;
    for i in 0..200 {
        let mut s = spec("bench", &format!("s{i}"), &[], vec![step("a", &[])]);
        s.run_id = format!("s{i}.20260101T000000Z");
        rig.engine.submit(validate(s).expect("valid"), i);
    }
    rig.commit(200).await;
    let ran = store.refresh_statistics().await.expect("refresh");
    assert_eq!(ran, autovacuum == "off", "an ANALYZE exactly when the server does not run its own");
    assert!(!store.refresh_statistics().await.expect("again"), "not again before enough new jobs");
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM weir_jobs WHERE namespace = 'bench' AND name = 's7' AND run_id = 's7.20260101T000000Z'",
    )
    .fetch_all(&pool)
    .await
    .expect("explain");
    // Where the server analyzes on its own, the plan waits for its autovacuum worker.
    if ran {
        assert!(plan.iter().any(|l| l.contains("weir_jobs_namespace_name_run_id_key")), "{plan:?}");
    }
    assert!(store.find_job("bench", "s7", "s7.20260101T000000Z").await.expect("find").is_some());
    pool.close().await;
    drop(rig);
    drop(store);
    schema.drop().await.expect("drop");
}
