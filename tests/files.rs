//! The file manager against real storage on loopback — local disk, an S3-compatible
//! server (moto) and an SFTP server (OpenSSH's sshd) — with the real master and batch
//! manager: watches start one job per file version across replicas and restarts,
//! downloads are verified, a bad file is quarantined and re-driven once fixed.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_batch_manager::BatchSettings;
use weir_core::files::Watches;
use weir_file_manager::{FileSettings, Inventory};
use weir_proto::v1;
use weir_tests::{
    job, run_manager, step, submit, tasks, wait_finished, Backend, InProcMaster, Moto, Sshd, StoreFixture,
};

fn with_config(mut s: v1::StepSpec, config: Value) -> v1::StepSpec {
    s.config_json = config.to_string();
    s
}

fn file_settings(data: &Path, store_url: &str, watches: Value) -> FileSettings {
    FileSettings {
        data_dir: data.to_path_buf(),
        watches: Watches::from_value(watches).expect("valid watches"),
        watches_file: None,
        retention: Duration::from_secs(3600),
        store: Inventory::url(store_url),
        staging: None,
    }
}

/// A master with one file manager (no watches) and one batch manager, on a fresh store,
/// for tests that submit their own jobs.
struct Rig {
    store: StoreFixture,
    master: InProcMaster,
    managers: Vec<(tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>)>,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start(name: &str) -> Rig {
        Rig::start_with(name, None).await
    }

    /// With a staging store, the two managers get data dirs of their own (no shared disk).
    async fn start_with(name: &str, staging: Option<weir_storage::Location>) -> Rig {
        let store = StoreFixture::new(Backend::Sqlite).await;
        let master = InProcMaster::start(&store.url).await;
        let dir = tempfile::tempdir().expect("tmp");
        let (file_data, batch_data) = match staging {
            None => (dir.path().join("data"), dir.path().join("data")),
            Some(_) => (dir.path().join("file-manager"), dir.path().join("batch-manager")),
        };
        let inventory = format!("sqlite://{}", dir.path().join("files.db").display());
        let files = FileSettings { staging: staging.clone(), ..file_settings(&file_data, &inventory, json!({})) };
        let managers = vec![
            run_manager(weir_file_manager::spec_with(files), &master.url, &format!("files-{name}"), ""),
            run_manager(
                weir_batch_manager::spec_with(BatchSettings {
                    data_dir: batch_data,
                    staging,
                    ..BatchSettings::default()
                }),
                &master.url,
                &format!("batch-{name}"),
                "",
            ),
        ];
        Rig { store, master, managers, dir }
    }

    /// Runs a job to its end; returns its state and each step's output (or error).
    async fn run(
        &self,
        name: &str,
        steps: Vec<v1::StepSpec>,
        timeout: Duration,
    ) -> (&'static str, Vec<(String, Value)>) {
        let mut jc = self.master.jobs();
        let id = submit(&mut jc, job(name, steps)).await;
        let done = wait_finished(&mut jc, &id, timeout).await;
        let outs = tasks(&mut jc, &id)
            .await
            .into_iter()
            .map(|t| {
                let v = serde_json::from_str(&t.output_json).unwrap_or_else(|_| json!({"error": t.error_message}));
                (t.step_id, v)
            })
            .collect();
        (state(&done), outs)
    }

    async fn stop(self) {
        for (c, h) in self.managers {
            c.cancel();
            h.await.expect("stops");
        }
        self.master.stop().await;
        self.store.cleanup().await;
    }
}

fn output<'a>(outs: &'a [(String, Value)], step: &str) -> &'a Value {
    &outs.iter().find(|(s, _)| s == step).expect("step").1
}

/// The job each discovered file starts: fetch it, convert it, store it in `lake`.
fn ingest(lake: &Path) -> Value {
    json!({
        "namespace": "files", "job_name": "ingest",
        "steps": [
            {"id": "fetch", "kind": "fetch", "queue": "file",
             "config": {"location": "$data.location", "paths": ["$data.path"], "verify_attempts": 2}},
            {"id": "convert", "kind": "convert", "queue": "batch", "depends_on": ["fetch"]},
            {"id": "store", "kind": "store", "queue": "batch", "depends_on": ["convert"],
             "config": {"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}}
        ]
    })
}

async fn jobs_in(master: &InProcMaster, namespace: &str) -> Vec<v1::Job> {
    let mut c = master.jobs();
    let r = c
        .list_jobs(v1::ListJobsRequest { namespace: namespace.into(), page_size: 500, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    r.jobs
}

/// Waits until `n` jobs exist in `namespace` and all are finished; returns them.
async fn wait_jobs(master: &InProcMaster, namespace: &str, n: usize, timeout: Duration) -> Vec<v1::Job> {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = jobs_in(master, namespace).await;
        let done =
            jobs.iter().all(|j| weir_proto::convert::job_state_from_wire(j.state).is_some_and(|s| s.is_terminal()));
        if jobs.len() >= n && done {
            return jobs;
        }
        assert!(Instant::now() < deadline, "{} of {n} jobs after {timeout:?} (all finished: {done})", jobs.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn state(j: &v1::Job) -> &'static str {
    weir_proto::convert::job_state_from_wire(j.state).map(|s| s.as_str()).unwrap_or("?")
}

/// Every data file of a Parquet dataset (not Weir's bookkeeping).
fn dataset_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("_weir") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_watch_starts_one_job_per_file_version_across_replicas_and_restarts() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let master = InProcMaster::start(&store.url).await;
    let dir = tempfile::tempdir().expect("tmp");
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(&inbox).expect("mkdir");
    std::fs::write(inbox.join("a.csv"), "id,v\n1,10\n2,20\n").expect("a");
    std::fs::write(inbox.join("b.csv"), "id,v\n3,30\n").expect("b");
    std::fs::write(inbox.join("ignored.txt"), "not a match").expect("txt");
    let lake = dir.path().join("lake");
    let watches = json!({"watches": [{
        "name": "inbox", "location": {"uri": format!("file://{}", inbox.display())},
        "patterns": ["*.csv"], "poll_interval": "1s", "start": ingest(&lake)
    }]});
    let data = dir.path().join("data");
    let batch = run_manager(
        weir_batch_manager::spec_with(BatchSettings { data_dir: data.clone(), ..BatchSettings::default() }),
        &master.url,
        "batch-1",
        "",
    );
    // Two file-manager replicas on one inventory.
    let fm1 = run_manager(
        weir_file_manager::spec_with(file_settings(&data, &store.url, watches.clone())),
        &master.url,
        "files-1",
        "",
    );
    let fm2 = run_manager(
        weir_file_manager::spec_with(file_settings(&data, &store.url, watches.clone())),
        &master.url,
        "files-2",
        "",
    );

    let jobs = wait_jobs(&master, "files", 2, Duration::from_secs(60)).await;
    assert_eq!(jobs.len(), 2, "one job per file, not per replica");
    assert!(jobs.iter().all(|j| state(j) == "succeeded"), "{:?}", jobs.iter().map(state).collect::<Vec<_>>());
    assert_eq!(dataset_files(&lake).len(), 2);

    // A new file and a changed one start a job each; an unchanged one does not.
    std::fs::write(inbox.join("c.csv"), "id,v\n4,40\n").expect("c");
    std::fs::write(inbox.join("a.csv"), "id,v\n1,10\n2,20\n5,50\n").expect("a changed");
    let jobs = wait_jobs(&master, "files", 4, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(jobs_in(&master, "files").await.len(), 4, "nothing new without a change");
    assert!(jobs.iter().all(|j| state(j) == "succeeded"));

    // A replica restarts: it claims nothing it has seen.
    fm1.0.cancel();
    fm1.1.await.expect("fm1 stops");
    let fm1 = run_manager(
        weir_file_manager::spec_with(file_settings(&data, &store.url, watches)),
        &master.url,
        "files-1b",
        "",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(jobs_in(&master, "files").await.len(), 4, "a restart ingests nothing twice");

    // The changed file replaced its rows in the dataset (keyed by its source), so the
    // lake holds each file once: a (3 rows), b (1), c (1).
    assert_eq!(dataset_files(&lake).len(), 3);

    // Each version published one discovery event, in the outbox with its job.
    let s = store.open().await;
    let events: Vec<_> = s
        .messages_after(0, 100)
        .await
        .expect("messages")
        .into_iter()
        .filter(|(_, m)| m.kind == "dev.weir.file.discovered")
        .collect();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|(_, m)| m.topic == "weir.files" && m.key == "inbox" && m.data["job_id"].is_string()));
    let inventory = s.list_files(Some("inbox"), 100).await.expect("inventory");
    assert_eq!(
        inventory.iter().map(|f| (f.file.path.as_str(), f.state.as_str())).collect::<Vec<_>>(),
        vec![("a.csv", "started"), ("b.csv", "started"), ("c.csv", "started")]
    );

    for (c, h) in [fm1, fm2, batch] {
        c.cancel();
        h.await.expect("stops");
    }
    master.stop().await;
    store.cleanup().await;
}

#[tokio::test]
async fn s3_downloads_are_verified_and_a_bad_file_is_quarantined_then_redriven() {
    let moto = Moto::start().await;
    moto.create_bucket("landing").await;
    let location = moto.location("s3://landing/incoming");
    let bucket = weir_tests::open_location(&location);
    let good = b"id,v\n1,10\n";
    let sha = |b: &[u8]| weir_storage::hex(&<sha2::Sha256 as sha2::Digest>::digest(b));
    bucket.put("good.csv", good.to_vec()).await.expect("put");
    bucket.put("good.csv.sha256", format!("{}  good.csv\n", sha(good)).into_bytes()).await.expect("put");
    bucket.put("plain.csv", b"id,v\n2,20\n".to_vec()).await.expect("put");
    bucket.put("bad.csv", b"id,v\n3,30\n".to_vec()).await.expect("put");
    bucket.put("bad.csv.sha256", format!("{}  bad.csv\n", sha(b"something else")).into_bytes()).await.expect("put");

    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let inventory_url = format!("sqlite://{}", dir.path().join("files.db").display());
    let watches = json!({"watches": [{"name": "landing", "location": location, "patterns": ["*.csv"],
                                      "poll_interval": "1s", "start": ingest(&lake)}]});
    let files_port = weir_tests::free_port();
    let fm = run_manager(
        weir_file_manager::spec_with(file_settings(&data, &inventory_url, watches)),
        &master.url,
        "files-s3",
        &format!("127.0.0.1:{files_port}"),
    );
    let batch = run_manager(
        weir_batch_manager::spec_with(BatchSettings { data_dir: data.clone(), ..BatchSettings::default() }),
        &master.url,
        "batch-s3",
        "",
    );

    let jobs = wait_jobs(&master, "files", 3, Duration::from_secs(90)).await;
    let mut jc = master.jobs();
    let mut outcome = Vec::new();
    for j in &jobs {
        let ts = tasks(&mut jc, &j.id).await;
        let fetch = ts.iter().find(|t| t.step_id == "fetch").expect("fetch");
        let out: Value = serde_json::from_str(&fetch.output_json).unwrap_or(Value::Null);
        outcome.push((state(j), out));
    }
    let by = |name: &str| {
        outcome
            .iter()
            .find(|(_, o)| o.to_string().contains(name))
            .unwrap_or_else(|| panic!("no job for {name}: {outcome:?}"))
    };
    let (s, out) = by("good.csv");
    assert_eq!((*s, out["files"][0]["verified_by"].as_str()), ("succeeded", Some("sha256 sidecar")));
    assert_eq!(out["files"][0]["sha256"], json!(sha(good)));
    let (s, out) = by("plain.csv");
    assert_eq!((*s, out["files"][0]["verified_by"].as_str()), ("succeeded", Some("md5")), "the S3 ETag is checked");
    // The bad file: fetched twice, both mismatching, quarantined with its reason; its job
    // fails at convert, which has no input.
    let (s, out) = by("bad.csv");
    assert_eq!(*s, "failed");
    let q = out["quarantined"][0]["quarantined"].as_str().expect("quarantined path").to_string();
    let reason: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{q}.reason.json")).expect("reason file")).expect("json");
    assert_eq!(reason["reason"], "checksum_mismatch");
    assert_eq!(reason["attempts"], 2);
    assert!(reason["detail"].as_str().unwrap_or("").contains("sha256"), "{reason}");

    // Fixed at the source, then re-driven through the file manager's service: a new job.
    bucket.put("bad.csv.sha256", format!("{}  bad.csv\n", sha(b"id,v\n3,30\n")).into_bytes()).await.expect("fix");
    let mut files =
        v1::file_service_client::FileServiceClient::new(weir_tests::channel(&format!("http://127.0.0.1:{files_port}")));
    let r = files
        .redrive_file(v1::RedriveFileRequest { watch: "landing".into(), path: "bad.csv".into() })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(r.file.map(|f| f.generation), Some(1));
    let unknown = files.redrive_file(v1::RedriveFileRequest { watch: "landing".into(), path: "nope.csv".into() }).await;
    assert_eq!(unknown.expect_err("unknown file").code(), tonic::Code::NotFound);
    let jobs = wait_jobs(&master, "files", 4, Duration::from_secs(60)).await;
    assert_eq!(jobs.iter().filter(|j| state(j) == "succeeded").count(), 3);
    let listed = files.list_files(v1::ListFilesRequest { watch: "landing".into(), limit: 0 }).await.expect("list");
    assert_eq!(listed.into_inner().files.len(), 3);
    assert_eq!(dataset_files(&lake).len(), 3);

    for (c, h) in [fm, batch] {
        c.cancel();
        h.await.expect("stops");
    }
    master.stop().await;
    store.cleanup().await;
}

#[tokio::test]
async fn sftp_files_are_discovered_fetched_and_archived() {
    let sshd = Sshd::start().await;
    let remote = tempfile::tempdir().expect("remote");
    std::fs::create_dir_all(remote.path().join("upload")).expect("mkdir");
    std::fs::write(remote.path().join("upload/x.csv"), "id,name\n1,ä\n2,b\n").expect("x");
    std::fs::write(remote.path().join("upload/y.csv"), "id,name\n3,c\n").expect("y");
    let location = json!({
        "uri": format!("sftp://{}@127.0.0.1:{}{}/upload", sshd.user, sshd.port, remote.path().display()),
        "key_file": sshd.key_file.display().to_string(), "known_hosts": "accept"
    });
    let rig = Rig::start("sftp").await;
    let lake = rig.dir.path().join("lake");
    let steps = vec![
        with_config(step("discover", "discover", "file", &[]), json!({"location": location, "patterns": ["*.csv"]})),
        step("fetch", "fetch", "file", &["discover"]),
        step("convert", "convert", "batch", &["fetch"]),
        with_config(
            step("store", "store", "batch", &["convert"]),
            json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}),
        ),
        with_config(step("archive", "archive", "file", &["store"]), json!({"location": location})),
    ];
    let (state, outs) = rig.run("sftp", steps, Duration::from_secs(90)).await;
    assert_eq!(state, "succeeded", "{outs:?}");
    assert_eq!(output(&outs, "discover")["count"], 2);
    assert_eq!(output(&outs, "fetch")["count"], 2);
    assert_eq!(output(&outs, "store")["rows_written"], 3);
    assert_eq!(dataset_files(&lake).len(), 2);
    // Archived on the server: moved under archive/.
    assert!(remote.path().join("upload/archive/x.csv").exists() && !remote.path().join("upload/x.csv").exists());
    assert_eq!(output(&outs, "archive")["archived"].as_array().map(Vec::len), Some(2));
    // The same, as Prometheus reads it (the managers run in this process).
    let m = weir_runtime::metrics::encode();
    let bytes = output(&outs, "fetch")["bytes"].as_u64().expect("bytes");
    for series in [
        r#"weir_files_fetched_total{scheme="sftp"} 2"#.to_string(),
        format!(r#"weir_files_fetched_bytes_total{{scheme="sftp"}} {bytes}"#),
        r#"weir_files_quarantined_total{scheme="sftp"} 0"#.to_string(),
    ] {
        assert!(m.lines().any(|l| l == series), "{series} not in:\n{m}");
    }
    rig.stop().await;
}

/// Writes `n` one-row CSVs under `dir/in`; returns the steps that discover, fetch, convert
/// and store them into the Parquet dataset `lake`.
fn many_files(dir: &Path, n: u64, lake: &Path) -> Vec<v1::StepSpec> {
    let inbox = dir.join("in");
    std::fs::create_dir_all(&inbox).expect("mkdir");
    for i in 0..n {
        std::fs::write(inbox.join(format!("part-{i:04}.csv")), format!("id,v\n{i},{}\n", i * 2)).expect("write");
    }
    let location = json!({"uri": format!("file://{}", inbox.display())});
    vec![
        with_config(step("discover", "discover", "file", &[]), json!({"location": location, "patterns": ["*.csv"]})),
        step("fetch", "fetch", "file", &["discover"]),
        step("convert", "convert", "batch", &["fetch"]),
        with_config(
            step("store", "store", "batch", &["convert"]),
            json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}),
        ),
    ]
}

#[tokio::test]
async fn a_thousand_files_travel_between_steps_by_report_reference() {
    let rig = Rig::start("many").await;
    let lake = rig.dir.path().join("lake");
    let steps = many_files(rig.dir.path(), 1000, &lake);
    let (state, outs) = rig.run("many", steps, Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{outs:?}");
    for (step, out) in &outs {
        assert!(out.to_string().len() < 4096, "{step} output stays small");
        assert!(out["report"].is_string(), "{step}: a reference to its report");
    }
    let stored = output(&outs, "store");
    assert_eq!((stored["rows_read"].as_u64(), stored["rows_written"].as_u64()), (Some(1000), Some(1000)));
    assert_eq!(dataset_files(&lake).len(), 1000);
    rig.stop().await;
}

#[tokio::test]
async fn managers_without_a_shared_disk_pass_files_and_reports_through_a_staging_bucket() {
    let moto = Moto::start().await;
    moto.create_bucket("stage").await;
    let spec = moto.location("s3://stage/weir");
    // Read as the managers read WEIR_STAGING_LOCATION.
    let stage = weir_worker::staging::location_from(Some(spec.to_string())).expect("opens").expect("a location");
    let rig = Rig::start_with("stage", Some(stage.clone())).await;
    let n = 300; // enough for the fetch report to travel by reference
    let lake = rig.dir.path().join("lake");
    let steps = many_files(rig.dir.path(), n, &lake);
    let (state, outs) = rig.run("stage", steps, Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{outs:?}");
    let fetched = output(&outs, "fetch");
    assert!(fetched["report"].as_str().is_some_and(|r| r.starts_with("s3://stage/weir/")), "{fetched}");
    let stored = output(&outs, "store");
    assert_eq!((stored["rows_read"].as_u64(), stored["rows_written"].as_u64()), (Some(n), Some(n)));
    assert_eq!(dataset_files(&lake).len(), n as usize);

    // What the steps left is in the bucket: the downloads, the staged Parquet, the reports.
    let staged = stage.list(&weir_storage::Patterns::new(&["**/*".into()]).expect("glob")).await.expect("list");
    let under = |step: &str, ext: &str| {
        staged.iter().filter(|f| f.path.contains(&format!("/{step}/")) && f.path.ends_with(ext)).count()
    };
    assert_eq!(under("fetch", ".csv"), n as usize);
    assert_eq!(under("convert", ".parquet"), n as usize);
    assert!(under("fetch", "_report.json") == 1 && under("convert", "_report.json") == 1);
    // ...and no manager kept staged data on its own disk.
    let local_files = |d: &Path| {
        walk(&d.join("staging"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "csv" || x == "parquet"))
            .count()
    };
    assert_eq!(local_files(&rig.dir.path().join("file-manager")), 0);
    assert_eq!(walk(&rig.dir.path().join("batch-manager").join("staging")), Vec::<std::path::PathBuf>::new());

    // The sweep removes staged objects past the retention.
    let sweeper = weir_worker::staging::Staging::new(rig.dir.path(), Some(stage.clone()));
    let far_future = i64::MAX / 2;
    assert_eq!(sweeper.sweep(far_future, 24 * 3600 * 1000).await.expect("sweep"), staged.len());
    assert!(stage.list(&weir_storage::Patterns::new(&["**/*".into()]).expect("glob")).await.expect("list").is_empty());
    rig.stop().await;
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn ftp_files_are_discovered_and_fetched_with_a_password_by_reference() {
    let served = tempfile::tempdir().expect("served");
    std::fs::create_dir_all(served.path().join("drop")).expect("mkdir");
    std::fs::write(served.path().join("drop/m.csv"), "id,v\n1,x\n2,y\n").expect("m");
    let ftp = weir_tests::Ftp::start(served.path()).await;
    let prefix = weir_tests::credentials_env(&[("PASSWORD", "secret")]);
    let location = json!({"uri": format!("ftp://weir@127.0.0.1:{}/drop", ftp.port), "credentials": {"env": prefix}});
    let rig = Rig::start("ftp").await;
    let steps = vec![
        with_config(step("discover", "discover", "file", &[]), json!({"location": location, "patterns": ["*.csv"]})),
        step("fetch", "fetch", "file", &["discover"]),
        step("convert", "convert", "batch", &["fetch"]),
    ];
    let (state, outs) = rig.run("ftp", steps, Duration::from_secs(60)).await;
    assert_eq!(state, "succeeded", "{outs:?}");
    assert_eq!(output(&outs, "convert")["rows_written"], 2);
    assert!(!outs.iter().any(|(_, o)| o.to_string().contains("secret")), "the password never appears in outputs");
    rig.stop().await;
}

#[tokio::test]
async fn azure_blob_files_are_fetched_with_keys_from_a_secret_file() {
    let azurite = weir_tests::Azurite::start().await;
    azurite.create_container("landing").await;
    let rig = Rig::start("azure").await;
    let secret = rig.dir.path().join("azure.secret");
    std::fs::write(
        &secret,
        format!(
            "# mounted secret\naccount_name={}\naccount_key={}\n",
            weir_tests::AZURITE_ACCOUNT,
            weir_tests::AZURITE_KEY
        ),
    )
    .expect("secret");
    let location = json!({"uri": "azblob://landing/in", "endpoint": azurite.endpoint,
                          "credentials": {"file": secret.display().to_string()}});
    let blob = weir_tests::open_location(&location);
    blob.put("q.csv", b"id,v\n1,a\n2,b\n3,c\n".to_vec()).await.expect("put");
    blob.put("skip.txt", b"not csv".to_vec()).await.expect("put");
    let steps = vec![
        with_config(step("discover", "discover", "file", &[]), json!({"location": location, "patterns": ["*.csv"]})),
        step("fetch", "fetch", "file", &["discover"]),
        step("convert", "convert", "batch", &["fetch"]),
        with_config(step("archive", "archive", "file", &["convert"]), json!({"location": location, "mode": "copy"})),
    ];
    let (state, outs) = rig.run("azure", steps, Duration::from_secs(60)).await;
    assert_eq!(state, "succeeded", "{outs:?}");
    assert_eq!(output(&outs, "discover")["count"], 1, "only the CSV matches");
    assert_eq!(output(&outs, "convert")["rows_written"], 3);
    assert!(output(&outs, "fetch")["files"][0]["verified_by"].is_string());
    // Copied under archive/, the original kept.
    assert!(blob.stat("archive/q.csv").await.is_ok() && blob.stat("q.csv").await.is_ok());
    rig.stop().await;
}

#[tokio::test]
async fn the_standard_file_template_probes_its_source_first() {
    let moto = Moto::start().await;
    moto.create_bucket("landing").await;
    let rig = Rig::start("probe").await;
    let lake = rig.dir.path().join("lake");
    let spec = |bucket: &str| moto.location(&format!("s3://{bucket}/in"));
    let inbox = weir_storage::Location::open(&serde_json::from_value(spec("landing")).expect("spec")).expect("open");
    inbox.put("t.csv", b"id,v\n1,a\n2,b\n".to_vec()).await.expect("put");
    let run = |bucket: &str, name: &str| {
        let mut j = job(name, vec![]);
        j.template = "standard".into();
        j.params_json = json!({"source": "file", "location": spec(bucket), "patterns": ["*.csv"],
                               "rules": {"not_null": ["id"]},
                               "sinks": [{"type": "parquet", "path": lake.display().to_string()}]})
        .to_string();
        j
    };
    let mut jc = rig.master.jobs();
    let outcome = |id: String| {
        let mut jc = rig.master.jobs();
        async move {
            let done = wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
            let ts = tasks(&mut jc, &id).await;
            (state(&done), ts)
        }
    };

    // A reachable source: the probe answers, the rest of the template runs.
    let (s, ts) = outcome(submit(&mut jc, run("landing", "std-ok")).await).await;
    assert_eq!(s, "succeeded", "{ts:?}");
    let probe: Value = serde_json::from_str(&ts[0].output_json).expect("probe output");
    assert_eq!(
        (ts[0].step_id.as_str(), &probe["reachable"], &probe["first"]),
        ("validate_source", &json!(true), &json!("t.csv"))
    );
    assert_eq!(dataset_files(&lake).len(), 1);

    // A missing bucket: the job fails at its first step, naming the location; nothing else runs.
    let (s, ts) = outcome(submit(&mut jc, run("no-such-bucket", "std-missing")).await).await;
    assert_eq!(s, "failed");
    let first = ts.iter().find(|t| t.step_id == "validate_source").expect("probe task");
    assert!(
        first.error_message.contains("s3://no-such-bucket/in") && first.error_message.contains("does not exist"),
        "{first:?}"
    );
    assert!(ts.iter().filter(|t| t.step_id != "validate_source").all(|t| t.output_json.is_empty()), "{ts:?}");
    rig.stop().await;
}

#[tokio::test]
async fn gcs_files_are_discovered_fetched_and_archived() {
    let gcs = weir_tests::GcsEmulator::start("landing").await;
    let rig = Rig::start("gcs").await;
    let location = gcs.location("gcs://landing/in");
    let bucket = weir_tests::open_location(&location);
    bucket.put("g.csv", b"id,v\n1,a\n2,b\n".to_vec()).await.expect("put");
    bucket.put("sub/h.csv", b"id,v\n3,c\n".to_vec()).await.expect("put");
    let steps = vec![
        with_config(step("discover", "discover", "file", &[]), json!({"location": location, "patterns": ["**/*.csv"]})),
        step("fetch", "fetch", "file", &["discover"]),
        step("convert", "convert", "batch", &["fetch"]),
        with_config(step("archive", "archive", "file", &["convert"]), json!({"location": location})),
    ];
    let (state, outs) = rig.run("gcs", steps, Duration::from_secs(60)).await;
    assert_eq!(state, "succeeded", "{outs:?}");
    assert_eq!(output(&outs, "discover")["count"], 2);
    assert_eq!(output(&outs, "convert")["rows_written"], 3);
    // Moved under archive/.
    assert!(bucket.stat("archive/g.csv").await.is_ok() && bucket.stat("archive/sub/h.csv").await.is_ok());
    assert!(bucket.stat("g.csv").await.is_err());
    rig.stop().await;
}

/// FileWatch objects as the operator writes them (its rendering, as in the ConfigMap),
/// into a watches file that a running file manager reads again: a watch added later
/// starts its jobs without a restart, a broken edit keeps it running, and a watch taken
/// out starts nothing more.
#[tokio::test]
async fn a_running_file_manager_follows_its_watches_file_as_the_operator_writes_it() {
    use weir_operator::crd::{FileWatch, FileWatchSpec};
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let dir = tempfile::tempdir().expect("tmp");
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(&inbox).expect("mkdir");
    std::fs::write(inbox.join("a.csv"), "id,v\n1,10\n").expect("a");
    let lake = dir.path().join("lake");
    let data = dir.path().join("data");
    let watches_file = dir.path().join("watches/watches.yaml");
    // The file is not there yet (the ConfigMap not written): the manager starts anyway.
    let inventory = format!("sqlite://{}", dir.path().join("files.db").display());
    let settings =
        FileSettings { watches_file: Some(watches_file.clone()), ..file_settings(&data, &inventory, json!({})) };
    let files = run_manager(weir_file_manager::spec_with(settings), &master.url, "files-reload", "");
    let batch = run_manager(
        weir_batch_manager::spec_with(BatchSettings { data_dir: data.clone(), ..BatchSettings::default() }),
        &master.url,
        "batch-reload",
        "",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(jobs_in(&master, "files").await.is_empty());

    // The operator's rendering of one FileWatch in namespace "files".
    let mut start = ingest(&lake);
    start.as_object_mut().expect("object").remove("namespace");
    let mut fw = FileWatch::new(
        "inbox",
        FileWatchSpec {
            location: json!({"uri": format!("file://{}", inbox.display())}),
            patterns: vec!["*.csv".into()],
            poll_interval: Some("1s".into()),
            start,
        },
    );
    fw.metadata.namespace = Some("files".into());
    let (text, verdicts) = weir_operator::watches::render(std::slice::from_ref(&fw));
    assert_eq!(verdicts[&("files".to_string(), "inbox".to_string())], Ok("files.inbox".to_string()));
    std::fs::create_dir_all(watches_file.parent().expect("dir")).expect("mkdir");
    std::fs::write(&watches_file, &text).expect("write");
    let jobs = wait_jobs(&master, "files", 1, Duration::from_secs(60)).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(state(&jobs[0]), "succeeded");

    // A broken edit: the watch goes on (a new file, written once the file was read
    // again, still starts its job).
    std::fs::write(&watches_file, "watches: [{name: broken").expect("write");
    tokio::time::sleep(Duration::from_secs(6)).await;
    std::fs::write(inbox.join("b.csv"), "id,v\n2,20\n").expect("b");
    let jobs = wait_jobs(&master, "files", 2, Duration::from_secs(60)).await;
    assert_eq!(jobs.len(), 2);

    // The FileWatch deleted: the operator writes a file without it; nothing more starts.
    let (empty, _) = weir_operator::watches::render(&[]);
    std::fs::write(&watches_file, empty).expect("write");
    tokio::time::sleep(Duration::from_secs(7)).await;
    std::fs::write(inbox.join("c.csv"), "id,v\n3,30\n").expect("c");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(jobs_in(&master, "files").await.len(), 2, "an unwatched location starts nothing");

    for (stop, handle) in [files, batch] {
        stop.cancel();
        handle.await.expect("manager stops");
    }
    master.stop().await;
    store.cleanup().await;
}
