//! Parquet datasets on an object store (a real S3-compatible server, moto, on loopback):
//! the batch manager lands rows there and a re-run replaces them; stale, concurrent and
//! crashed writers of one input leave exactly one copy of its rows, which the manifests
//! name.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use weir_batch_manager::BatchSettings;
use weir_core::dataset::DataStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::object;
use weir_data::sink::WriteFence;
use weir_data::DataError;
use weir_proto::v1;
use weir_storage::{Location, Patterns};
use weir_tests::{job, run_manager, step, submit, tasks, wait_finished, Backend, InProcMaster, Moto, StoreFixture};

/// A bucket on a fresh moto (or GCS emulator) server, with credentials under a unique
/// env prefix.
struct Bucket {
    _server: Box<dyn std::any::Any>,
    spec: Value,
    loc: Location,
}

impl Bucket {
    async fn start(name: &str) -> Bucket {
        let moto = Moto::start().await;
        moto.create_bucket(name).await;
        let spec = moto.location(&format!("s3://{name}"));
        Bucket { loc: weir_tests::open_location(&spec), spec, _server: Box::new(moto) }
    }

    async fn gcs(name: &str) -> Bucket {
        let gcs = weir_tests::GcsEmulator::start(name).await;
        let spec = gcs.location(&format!("gcs://{name}"));
        Bucket { loc: weir_tests::open_location(&spec), spec, _server: Box::new(gcs) }
    }

    /// The sink's view of the bucket: opened and checked for conditional writes.
    fn sink(&self) -> Location {
        object::open(&serde_json::from_value(self.spec.clone()).expect("spec")).expect("conditional writes")
    }

    /// The dataset's data files, by path.
    async fn files(&self, prefix: &str) -> Vec<String> {
        let all = self.loc.list(&Patterns::new(&["**/*.parquet".into()]).expect("glob")).await.expect("list");
        all.into_iter().map(|f| f.path).filter(|p| p.starts_with(&format!("{prefix}/"))).collect()
    }

    /// Every row of the dataset as "a|b|c" lines, sorted.
    async fn rows(&self, prefix: &str, scratch: &Path) -> Vec<String> {
        weir_tests::dataset_rows(&self.loc, prefix, scratch).await
    }

    /// Every input manifest of the dataset.
    async fn manifests(&self, prefix: &str) -> Vec<Value> {
        let all = self.loc.list(&Patterns::new(&[format!("{prefix}/_weir/inputs/*.json")]).expect("glob")).await;
        let mut out = Vec::new();
        for f in all.expect("list") {
            let body = self.loc.read_small(&f.path, 1 << 20).await.expect("read").expect("exists");
            out.push(serde_json::from_slice(&body).expect("manifest json"));
        }
        out
    }
}

const TRADES: &str = "id,day,price\n1,2026-11-01,10.5\n2,2026-11-01,11\n3,2026-11-02,9.25\n";
const EXPECTED: [&str; 3] = ["1|2026-11-01|10.5", "2|2026-11-01|11.0", "3|2026-11-02|9.25"];

#[tokio::test]
async fn a_store_step_lands_a_partitioned_dataset_on_s3_and_a_rerun_replaces_it() {
    let bucket = Bucket::start("lake").await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("trades.csv");
    std::fs::write(&input, TRADES).expect("input");
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").expect("empty input");

    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let (stop, handle) = run_manager(
        weir_batch_manager::spec_with(BatchSettings { data_dir: dir.path().join("data"), ..BatchSettings::default() }),
        &master.url,
        "batch-lake",
        "",
    );
    let store_step = || {
        let mut s = step("store", "store", "batch", &[]);
        s.config_json = json!({
            "inputs": [input.display().to_string(), empty.display().to_string()],
            "sinks": [{"type": "parquet", "path": "trades", "partition_by": "day", "location": bucket.spec}]
        })
        .to_string();
        s
    };
    let mut jc = master.jobs();
    let mut runs: Vec<Vec<String>> = Vec::new();
    for run in 0..2 {
        let id = submit(&mut jc, job(&format!("lake-{run}"), vec![store_step()])).await;
        let done = wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
        let t = tasks(&mut jc, &id).await.remove(0);
        assert_eq!(
            weir_proto::convert::job_state_from_wire(done.state).map(|s| s.as_str()),
            Some("succeeded"),
            "{t:?}"
        );
        let out: Value = serde_json::from_str(&t.output_json).expect("output");
        assert_eq!((out["rows_read"].as_u64(), out["rows_written"].as_u64()), (Some(3), Some(3)));
        let mut reported: Vec<String> = out["files"][0]["sink_files"]
            .as_array()
            .expect("sink files")
            .iter()
            .map(|f| f.as_str().unwrap_or("").to_string())
            .collect();
        reported.sort();
        assert!(reported.iter().all(|f| f.starts_with("s3://lake/trades/day=2026-11-0")), "{reported:?}");

        // Exactly one copy of the rows, in one file per day, named by the report.
        let files = bucket.files("trades").await;
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files.iter().map(|f| format!("s3://lake/{f}")).collect::<Vec<_>>(), reported);
        assert_eq!(bucket.rows("trades", dir.path()).await, EXPECTED);
        runs.push(files);
    }
    assert_ne!(runs[0], runs[1], "each attempt writes its own names; the re-run's replaced the first run's");

    // Two manifests (the empty input has one, with no files), both committed and tidy.
    let manifests = bucket.manifests("trades").await;
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    for m in &manifests {
        assert!(m.get("pending").is_none() && m.get("stale").is_none(), "{m}");
    }
    let named: usize = manifests.iter().map(|m| m["files"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(named, 2);

    // A sink on a backend without conditional writes is refused at submission.
    let mut bad = step("store", "store", "batch", &[]);
    bad.config_json = json!({"inputs": ["/x.csv"], "sinks": [{"type": "parquet", "path": "p",
        "location": {"uri": "sftp://h/x"}}]})
    .to_string();
    let err =
        jc.submit_job(v1::SubmitJobRequest { spec: Some(job("bad-sink", vec![bad])) }).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("must be an object store"), "{}", err.message());

    stop.cancel();
    handle.await.expect("stops");
    master.stop().await;
    store.cleanup().await;
}

/// Converts `input` as task `task` under `fence`, into dataset `ds` partitioned by day;
/// returns the write prepared for the object store.
fn prepare(dir: &Path, input: &Path, bucket: &Bucket, task: &str, fence: u64) -> Write {
    prepare_into(
        dir,
        input,
        json!({"type": "parquet", "path": "ds", "partition_by": "day", "location": bucket.spec}),
        task,
        fence,
    )
}

/// A write prepared for an object-store dataset, with its sink's plan.
struct Write {
    prepared: weir_data::sink::parquet::Prepared,
    plan: weir_core::dataset::contract::SinkPlan,
    /// The input's identity, recorded with its commit.
    origin: weir_core::dataset::schema::Origin,
}

/// Stages, commits and finalizes a prepared write to dataset `prefix`.
async fn publish(loc: &Location, prefix: &str, w: Write) -> Result<Vec<String>, DataError> {
    object::ObjectDataset::new(loc.clone(), prefix).publish(w.prepared, &w.plan, &w.origin).await
}

fn prepare_into(dir: &Path, input: &Path, sink: Value, task: &str, fence: u64) -> Write {
    let step = json!({"sinks": [sink]});
    // The sink as if never written: the commit merges onto whatever the dataset holds.
    let plan = Plan {
        sinks: Arc::new(vec![weir_data::sink::SinkState::default()]),
        step: Arc::new(DataStep::parse("store", Some(&step)).expect("valid step")),
        staging: None,
        quarantine: dir.join("quarantine"),
        outgoing: dir.join(format!("outgoing-{task}-{fence}")),
        fence: WriteFence { task: task.into(), fence },
        now_micros: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        dedupe: None,
    };
    let name = input.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let identity = format!("s3://landing/{name}");
    let origin = weir_core::dataset::schema::Origin { input: identity.clone(), ..Default::default() };
    let mut report = convert(&Input { path: input.to_path_buf(), identity }, &plan).expect("convert");
    assert_eq!(report.pending.len(), 1);
    let p = report.pending.remove(0);
    Write { prepared: p.write.expect("a Parquet write"), plan: p.plan, origin }
}

#[tokio::test]
async fn stale_concurrent_and_crashed_writers_of_one_input_leave_one_copy() {
    let bucket = Bucket::start("fenced").await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("trades.csv");
    std::fs::write(&input, TRADES).expect("input");
    let loc = bucket.sink();

    // Lease 2 of task A commits; lease 1's late write is refused and leaves nothing.
    let newer = prepare(dir.path(), &input, &bucket, "task-a", 2);
    let older = prepare(dir.path(), &input, &bucket, "task-a", 1);
    let (older_scratch, newer_scratch) = (older.prepared.scratch.clone(), newer.prepared.scratch.clone());
    let committed = publish(&loc, "ds", newer).await.expect("newer lease commits");
    assert_eq!(committed.len(), 2);
    let e = publish(&loc, "ds", older).await.expect_err("stale");
    assert!(matches!(e, DataError::StaleFence(_)), "{e}");
    assert!(!older_scratch.exists() && !newer_scratch.exists(), "local scratch removed either way");
    let after_a = bucket.files("ds").await;
    assert_eq!(after_a.len(), 2);
    assert_eq!(bucket.rows("ds", dir.path()).await, EXPECTED);

    // Tasks B and C write the same input at once: the one whose claim is taken over
    // removes its files; one copy remains, the one the manifest names.
    let b = prepare(dir.path(), &input, &bucket, "task-b", 1);
    let c = prepare(dir.path(), &input, &bucket, "task-c", 1);
    let (rb, rc) = tokio::join!(publish(&loc, "ds", b), publish(&loc, "ds", c));
    assert!(rb.is_ok() || rc.is_ok(), "one of them commits: {rb:?} {rc:?}");
    for r in [&rb, &rc] {
        if let Err(e) = r {
            assert!(matches!(e, DataError::Sink(m) if m.contains("took it over")), "{e}");
        }
    }
    let files = bucket.files("ds").await;
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(bucket.rows("ds", dir.path()).await, EXPECTED);
    let m = bucket.manifests("ds").await.remove(0);
    let mut named: Vec<String> =
        m["files"].as_array().expect("files").iter().map(|f| format!("ds/{}", f.as_str().unwrap_or(""))).collect();
    named.sort();
    assert_eq!(named, files);

    // Task D fails mid-upload: its claim is made, its first file uploaded, the second
    // missing. It gives the claim up: the manifest names the committed files again, D's
    // uploaded file is removed and listed as stale.
    let committed: Vec<String> = {
        let m = bucket.manifests("ds").await.remove(0);
        m["files"].as_array().expect("files").iter().map(|f| f.as_str().unwrap_or("").to_string()).collect()
    };
    let d = prepare(dir.path(), &input, &bucket, "task-d", 1);
    std::fs::remove_file(&d.prepared.files[1].1).expect("lose the second file");
    let e = publish(&loc, "ds", d).await.expect_err("upload fails");
    assert!(matches!(e, DataError::Sink(_)), "{e}");
    let m = bucket.manifests("ds").await.remove(0);
    assert!(m.get("pending").is_none(), "the claim is given up: {m}");
    assert_eq!(m["files"], json!(committed), "{m}");
    assert_eq!(m["writer"]["task"], "task-d", "the newest fence seen stays recorded: {m}");
    assert_eq!(bucket.files("ds").await.len(), 2, "D's uploaded file removed");
    assert_eq!(bucket.rows("ds", dir.path()).await, EXPECTED);

    // Had D died before removing it, its uploaded file would be an orphan the manifest
    // names as stale: put one there, as a crash would leave it.
    let orphan = m["stale"]
        .as_array()
        .expect("stale")
        .iter()
        .filter_map(Value::as_str)
        .find(|f| f.contains("day=2026-11-01"))
        .expect("D's first file is listed as stale")
        .to_string();
    bucket
        .loc
        .put(&format!("ds/{orphan}"), std::fs::read(&bucket_file(&bucket, "ds", dir.path()).await).expect("copy"))
        .await
        .expect("orphan");
    assert_eq!(bucket.files("ds").await.len(), 3);

    // Task E re-runs the input: the orphan and the old files are gone, one copy remains.
    let e_write = prepare(dir.path(), &input, &bucket, "task-e", 1);
    let got = publish(&loc, "ds", e_write).await.expect("E commits");
    let files = bucket.files("ds").await;
    assert_eq!(files.iter().map(|f| format!("s3://fenced/{f}")).collect::<Vec<_>>(), {
        let mut g = got.clone();
        g.sort();
        g
    });
    assert_eq!(bucket.rows("ds", dir.path()).await, EXPECTED);
    let m = bucket.manifests("ds").await.remove(0);
    assert!(m.get("pending").is_none() && m.get("stale").is_none(), "{m}");
}

/// A local copy of one data file of the dataset (any one).
async fn bucket_file(bucket: &Bucket, prefix: &str, scratch: &Path) -> std::path::PathBuf {
    let f = bucket.files(prefix).await.remove(0);
    let local = scratch.join("one.parquet");
    bucket.loc.download(&f, &local, 1 << 20).await.expect("download");
    local
}

#[tokio::test]
async fn a_file_larger_than_one_part_is_uploaded_in_parts_and_reads_back_whole() {
    let bucket = Bucket::start("big").await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("hashes.csv");
    // 400,000 rows of incompressible hex: a Parquet file over the 8 MiB part size.
    let mut csv = String::from("id,hash\n");
    let mut expected = Vec::with_capacity(400_000);
    for i in 0..400_000u32 {
        let h = weir_storage::hex(&<sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes()));
        csv.push_str(&format!("{i},{h}\n"));
        expected.push(format!("{i}|{h}"));
    }
    std::fs::write(&input, csv).expect("input");
    expected.sort();
    let sink = json!({"type": "parquet", "path": "hashes", "location": bucket.spec});
    let prepared = prepare_into(dir.path(), &input, sink, "task-big", 1);
    let local_size = std::fs::metadata(&prepared.prepared.files[0].1).expect("prepared file").len();
    assert!(local_size > object::UPLOAD_CHUNK as u64, "{local_size} bytes: not enough for two parts");
    let loc = bucket.sink();
    publish(&loc, "hashes", prepared).await.expect("publish");
    let files = bucket.files("hashes").await;
    assert_eq!(files.len(), 1);
    let (stat, _) = bucket.loc.stat(&files[0]).await.expect("stat");
    assert_eq!(stat.size, local_size, "the object is the whole file");
    assert_eq!(bucket.rows("hashes", dir.path()).await, expected);
}

#[tokio::test]
async fn a_gcs_dataset_commits_on_object_generations() {
    // The emulator does not enforce generation preconditions, so this shows the protocol
    // runs on GCS's version tokens; the races are tested on S3 above.
    let bucket = Bucket::gcs("lake").await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("trades.csv");
    std::fs::write(&input, TRADES).expect("input");
    let loc = bucket.sink();
    for task in ["task-a", "task-b"] {
        let write = prepare(dir.path(), &input, &bucket, task, 1);
        publish(&loc, "ds", write).await.expect("publish");
        assert_eq!(bucket.files("ds").await.len(), 2);
        assert_eq!(bucket.rows("ds", dir.path()).await, EXPECTED);
    }
    let m = bucket.manifests("ds").await.remove(0);
    assert_eq!(m["writer"]["task"], "task-b");
    assert!(m.get("pending").is_none() && m.get("stale").is_none(), "{m}");
}

/// A stream's new lease claims an object-store dataset before it reads where it stands:
/// from then on the former lease can commit nothing — neither the input it had claimed
/// and uploaded when the claim came, nor a range the new lease never writes — while the
/// new lease and other tasks write as before.
#[tokio::test]
async fn a_former_lease_commits_nothing_once_a_new_lease_claims_the_dataset() {
    let bucket = Bucket::start("claimed").await;
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    std::fs::write(&a, TRADES).expect("input a");
    std::fs::write(&b, TRADES).expect("input b");
    let loc = bucket.sink();
    let ds = object::ObjectDataset::new(loc.clone(), "ds");
    let old = WriteFence { task: "stream".into(), fence: 1 };
    ds.claim(&old).await.expect("lease 1 claims");

    // Lease 1 has claimed input a and uploaded its files, not committed, when lease 2
    // claims the dataset.
    let in_flight = prepare(dir.path(), &a, &bucket, "stream", 1);
    let staged = ds.stage(in_flight.prepared).await.expect("staged");
    assert_eq!(bucket.files("ds").await.len(), 2, "lease 1's files are up");
    ds.claim(&WriteFence { task: "stream".into(), fence: 2 }).await.expect("lease 2 claims");
    assert!(ds.inputs().await.expect("inputs").is_empty(), "nothing committed");
    let e = staged.commit(&in_flight.plan, &in_flight.origin).await.expect_err("refused");
    assert!(matches!(e, DataError::StaleFence(_) | DataError::Sink(_)), "{e}");
    let e = publish(&loc, "ds", prepare(dir.path(), &b, &bucket, "stream", 1)).await.expect_err("refused");
    assert!(matches!(e, DataError::StaleFence(_)), "{e}");
    assert_eq!(bucket.files("ds").await, Vec::<String>::new(), "nothing of lease 1 stays");

    // Lease 2 writes both inputs; another task's write is not fenced by this task.
    for input in [&a, &b] {
        publish(&loc, "ds", prepare(dir.path(), input, &bucket, "stream", 2)).await.expect("lease 2 commits");
    }
    publish(&loc, "other", prepare(dir.path(), &a, &bucket, "another-task", 1)).await.expect("another task");
    let inputs = ds.inputs().await.expect("inputs");
    let identities: Vec<Option<&str>> = inputs.iter().map(|(_, i)| i.as_deref()).collect();
    assert_eq!(identities, [Some("s3://landing/a.csv"), Some("s3://landing/b.csv")]);
}
