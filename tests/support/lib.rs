//! Test support: stores on both backends, a master in this process or as a real process,
//! real binaries on free loopback ports, and small builders for job specs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use weir_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
use weir_store::testing::TestSchema;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh store for one test.
pub struct StoreFixture {
    pub url: String,
    schema: Option<TestSchema>,
    _dir: tempfile::TempDir,
}

impl StoreFixture {
    pub async fn new(backend: Backend) -> StoreFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Postgres => {
                let schema = TestSchema::create().await.expect("PostgreSQL on 127.0.0.1:5432 (make test starts it)");
                StoreFixture { url: schema.url.clone(), schema: Some(schema), _dir: dir }
            }
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("weir.db").display());
                StoreFixture { url, schema: None, _dir: dir }
            }
        }
    }

    /// Opens the store directly, to check what was persisted.
    pub async fn open(&self) -> std::sync::Arc<dyn weir_store::Store> {
        weir_store::open(&self.url).await.expect("open store")
    }

    pub async fn cleanup(self) {
        if let Some(s) = self.schema {
            s.drop().await.expect("drop schema");
        }
    }
}

/// A master running inside the test process.
pub struct InProcMaster {
    pub url: String,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), weir_master::MasterError>>,
}

impl InProcMaster {
    pub async fn start(store_url: &str) -> InProcMaster {
        Self::start_with_bus(store_url, None, weir_master::config::EventsConfig::default()).await
    }

    /// A master publishing to `bus`, with these event settings (trigger rules, batch size).
    pub async fn start_with_bus(
        store_url: &str,
        bus: Option<std::sync::Arc<dyn weir_bus::Bus>>,
        events: weir_master::config::EventsConfig,
    ) -> InProcMaster {
        let m = Self::start_configured(store_url, bus, |c| c.events = events).await;
        m.wait_ready().await;
        m
    }

    /// A master with its settings changed by `configure` (security, sandbox); the caller
    /// waits for it to lead (its probe may need a token).
    pub async fn start_configured(
        store_url: &str,
        bus: Option<std::sync::Arc<dyn weir_bus::Bus>>,
        configure: impl FnOnce(&mut weir_master::MasterConfig),
    ) -> InProcMaster {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = weir_master::MasterConfig::new(&addr.to_string(), store_url);
        config.heartbeat_interval = Duration::from_millis(200);
        configure(&mut config);
        let scheme = if config.tls.tls_cert.is_some() { "https" } else { "http" };
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(weir_master::serve_with_bus(config, listener, bus, cancel.clone()));
        InProcMaster { url: format!("{scheme}://{addr}"), cancel, handle }
    }

    async fn wait_ready(&self) {
        wait_master(&self.url).await
    }

    pub fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(channel(&self.url))
    }

    pub fn workers(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(channel(&self.url))
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.expect("join").expect("master stopped cleanly");
    }
}

/// A real Kafka-protocol broker (tansu, in-memory storage) on a loopback port, started by
/// the test and killed when dropped. `scripts/ensure-tansu.sh` (run by `make test`)
/// installs it; `WEIR_TANSU_BIN` points elsewhere.
pub struct Tansu {
    pub brokers: String,
    port: u16,
    child: Option<Child>,
    /// `memory://tansu/`, or `s3://<bucket>/` with the S3 server's settings in `env`.
    storage: String,
    env: Vec<(String, String)>,
}

impl Tansu {
    fn binary() -> PathBuf {
        if let Some(p) = std::env::var_os("WEIR_TANSU_BIN") {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let p = home.join(".cache/weir/tools/bin/tansu");
        assert!(p.exists(), "{} missing: run scripts/ensure-tansu.sh (make test does)", p.display());
        p
    }

    pub async fn start() -> Tansu {
        Self::start_with("memory://tansu/", vec![]).await
    }

    /// A broker keeping its topics in `bucket` of a (moto) S3 server, so they outlive a
    /// restart.
    pub async fn start_on_s3(s3: &Moto, bucket: &str) -> Tansu {
        s3.create_bucket(bucket).await;
        let env = [
            ("AWS_ENDPOINT", s3.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ];
        Self::start_with(&format!("s3://{bucket}/"), env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .await
    }

    async fn start_with(storage: &str, env: Vec<(String, String)>) -> Tansu {
        let port = free_port();
        let mut t = Tansu { brokers: format!("127.0.0.1:{port}"), port, child: None, storage: storage.into(), env };
        t.launch().await;
        t
    }

    async fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(Self::binary());
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .stdin(Stdio::null());
        if std::env::var_os("WEIR_TEST_SHOW_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        self.child = Some(cmd.spawn().expect("start tansu"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&self.brokers).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening on {}", self.brokers);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the broker (kill -9): everything it held in memory is gone (on S3, its topics
    /// stay).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }

    /// A bus client for this broker.
    pub fn bus(&self) -> std::sync::Arc<dyn weir_bus::Bus> {
        let mut cfg = weir_bus::KafkaConfig::plaintext(&self.brokers);
        cfg.client_id = "weir-test".into();
        // WEIR_TEST_KAFKA_DEBUG=cgrp,protocol shows librdkafka's view when a test is puzzling.
        if let Ok(d) = std::env::var("WEIR_TEST_KAFKA_DEBUG") {
            cfg.properties.push(("debug".into(), d));
        }
        std::sync::Arc::new(weir_bus::KafkaBus::new(cfg).expect("kafka client"))
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Tansu {
    /// A consumer outside any group's commits, and how many partitions `topic` has.
    fn reader(&self, topic: &str) -> (rdkafka::consumer::BaseConsumer, i32) {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "weir-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("kafka consumer");
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let parts = md.topics().first().map(|t| t.partitions().len() as i32).unwrap_or(0);
        (consumer, parts)
    }

    /// Every message `topic` holds now, partition by partition in order (read from each
    /// partition's start to its high watermark, outside any consumer group).
    pub fn read_topic(&self, topic: &str) -> Vec<TopicMessage> {
        use rdkafka::consumer::Consumer;
        use rdkafka::message::{Headers, Message};
        tokio::task::block_in_place(|| {
            let (consumer, parts) = self.reader(topic);
            let mut tpl = rdkafka::TopicPartitionList::new();
            let mut ends = std::collections::BTreeMap::new();
            for p in 0..parts {
                let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
                if high > low {
                    tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(low)).expect("partition");
                    ends.insert(p, high);
                }
            }
            let mut out = Vec::new();
            if ends.is_empty() {
                return out;
            }
            consumer.assign(&tpl).expect("assign");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut last = Instant::now();
            // Past the watermarks until nothing comes for a second: tansu answers a
            // watermark short of a partition's last batch.
            while !ends.is_empty() || last.elapsed() < Duration::from_secs(1) {
                assert!(Instant::now() < deadline, "reading {topic} back: partitions {ends:?} not read to their end");
                let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
                let m = m.expect("message");
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&m.partition());
                }
                out.push(TopicMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            out
        })
    }

    /// The sum of `topic`'s partitions' high watermarks now: how far it has grown (cheap;
    /// tansu's may be short of a partition's last batch).
    pub fn topic_ends(&self, topic: &str) -> i64 {
        use rdkafka::consumer::Consumer;
        tokio::task::block_in_place(|| {
            let (consumer, parts) = self.reader(topic);
            (0..parts)
                .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map(|(_, h)| h).unwrap_or(0))
                .sum()
        })
    }
}

/// A client channel that connects on first use.
pub fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string()).expect("endpoint").connect_lazy()
}

/// Path of a workspace binary (built by `make test` before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built; run `cargo build --workspace --bins` (make test does)", path.display());
    path
}

/// A free loopback port (bound and released; fine on loopback for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A real process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// A program that is not Weir's (a test peer), by path, its output hidden unless
    /// `WEIR_TEST_SHOW_LOGS` is set.
    pub fn spawn_path(path: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(path);
        cmd.args(args).kill_on_drop(true).stdin(Stdio::null());
        if std::env::var_os("WEIR_TEST_SHOW_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()));
        Proc { name: path.display().to_string(), child }
    }

    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args).kill_on_drop(true).stdin(Stdio::null());
        if std::env::var_os("WEIR_TEST_SHOW_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd.env("RUST_LOG", "info");
        // As `weir dev` allows: the temporary directory (every test's files) and this one.
        let local = weir_runtime::security::SandboxArgs::local().allowed_paths.join(",");
        cmd.env("WEIR_ALLOWED_PATHS", local);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name: name.to_string(), child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill").args([sig, &self.pid().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {sig} {} failed", self.name);
    }

    /// kill -9 and reap.
    pub async fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("-TERM");
        tokio::time::timeout(within, self.child.wait()).await.expect("exits after SIGTERM").expect("wait")
    }
}

/// A step for specs built in tests.
pub fn step(id: &str, kind: &str, queue: &str, deps: &[&str]) -> v1::StepSpec {
    v1::StepSpec {
        id: id.into(),
        kind: kind.into(),
        queue: queue.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

/// A job spec.
pub fn job(name: &str, steps: Vec<v1::StepSpec>) -> v1::JobSpec {
    v1::JobSpec { namespace: "test".into(), name: name.into(), steps, ..Default::default() }
}

/// A wire duration.
pub fn dur(ms: u64) -> Option<prost_types::Duration> {
    Some(weir_proto::convert::duration(Duration::from_millis(ms)))
}

/// Submits a job and returns its id.
pub async fn submit(jobs: &mut JobServiceClient<Channel>, spec: v1::JobSpec) -> String {
    let r = jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.expect("submit").into_inner();
    r.job.expect("job").id
}

/// A finished job's whole history (WatchJob from the start; it ends after the terminal event).
pub async fn events(jobs: &mut JobServiceClient<Channel>, id: &str) -> Vec<v1::JobEvent> {
    let mut watch =
        jobs.watch_job(v1::WatchJobRequest { job_id: id.into(), from_seq: 0 }).await.expect("watch").into_inner();
    let mut out = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("history in time")
    {
        out.extend(m.event);
    }
    out
}

/// Polls until the job is finished (or the timeout passes) and returns it.
pub async fn wait_finished(jobs: &mut JobServiceClient<Channel>, id: &str, timeout: Duration) -> v1::Job {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = jobs.get_job(v1::GetJobRequest { job_id: id.into() }).await {
            let job = r.into_inner().job.expect("job");
            let state = weir_proto::convert::job_state_from_wire(job.state);
            if state.is_some_and(|s| s.is_terminal()) {
                return job;
            }
            if Instant::now() >= deadline {
                let ts = jobs.get_job_tasks(v1::GetJobTasksRequest { job_id: id.into() }).await;
                let ts: Vec<String> = ts
                    .map(|r| r.into_inner().tasks)
                    .unwrap_or_default()
                    .iter()
                    .map(|t| format!("{} state {} attempt {} {}", t.step_id, t.state, t.attempt, t.error_message))
                    .collect();
                panic!("job {id} still {state:?} after {timeout:?}; its tasks: {ts:?}");
            }
        } else {
            assert!(Instant::now() < deadline, "master unreachable for {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's tasks.
pub async fn tasks(jobs: &mut JobServiceClient<Channel>, id: &str) -> Vec<v1::Task> {
    jobs.get_job_tasks(v1::GetJobTasksRequest { job_id: id.into() }).await.expect("tasks").into_inner().tasks
}

/// Acquire as a test-driven worker.
pub async fn acquire(w: &mut WorkerServiceClient<Channel>, queue: &str, max: u32, wait_ms: u64) -> Vec<v1::TaskLease> {
    let req =
        v1::AcquireTasksRequest { worker_id: "tester".into(), queue: queue.into(), max_tasks: max, wait: dur(wait_ms) };
    w.acquire_tasks(req).await.expect("acquire").into_inner().leases
}

/// Complete as a test-driven worker.
pub async fn complete(w: &mut WorkerServiceClient<Channel>, l: &v1::TaskLease) -> Result<(), tonic::Status> {
    let req = v1::CompleteTaskRequest {
        worker_id: "tester".into(),
        task_id: l.task_id.clone(),
        fence_token: l.fence_token,
        output_json: format!("{{\"step\":\"{}\"}}", l.step_id),
    };
    w.complete_task(req).await.map(|_| ())
}

/// Fail as a test-driven worker.
pub async fn fail(w: &mut WorkerServiceClient<Channel>, l: &v1::TaskLease, kind: &str, retryable: bool) -> bool {
    let req = v1::FailTaskRequest {
        worker_id: "tester".into(),
        task_id: l.task_id.clone(),
        fence_token: l.fence_token,
        error_kind: kind.into(),
        message: "test failure".into(),
        retryable,
        details_json: String::new(),
    };
    w.fail_task(req).await.expect("fail").into_inner().will_retry
}

/// The step ids of leases, sorted.
pub fn steps(leases: &[v1::TaskLease]) -> Vec<String> {
    let mut v: Vec<String> = leases.iter().map(|l| l.step_id.clone()).collect();
    v.sort();
    v
}

/// Runs in-process workers for every queue (the managers' real code) until dropped.
pub struct InProcManagers {
    cancel: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcManagers {
    pub fn start(master_url: &str) -> InProcManagers {
        let cancel = CancellationToken::new();
        let specs: [fn() -> Result<weir_worker::manager::ManagerSpec, String>; 4] =
            [weir_api_manager::spec, weir_file_manager::spec, weir_batch_manager::spec, weir_stream_manager::spec];
        let handles = specs
            .into_iter()
            .map(|spec| {
                let spec = spec().expect("manager settings");
                let args = weir_worker::manager::ManagerArgs {
                    concurrency: Some(8),
                    poll_wait: Duration::from_secs(5),
                    drain_timeout: Duration::from_secs(1),
                    worker_id: Some(format!("{}-inproc", spec.name)),
                    ..weir_worker::manager::ManagerArgs::local(master_url)
                };
                let c = cancel.clone();
                tokio::spawn(async move {
                    weir_worker::manager::run(spec, args, c).await.expect("manager runs");
                })
            })
            .collect();
        InProcManagers { cancel, handles }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        for h in self.handles {
            h.await.expect("manager task");
        }
    }
}

/// The test venv's Python (`scripts/ensure-python-peer.sh`, run by `make test`).
pub fn python() -> PathBuf {
    let venv = std::env::var("WEIR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weir/venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} missing: run scripts/ensure-python-peer.sh (make test does)", python.display());
    python
}

/// Waits until something accepts connections on a loopback port.
pub async fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a test peer that will listen on `port`: quiet unless `WEIR_TEST_SHOW_LOGS` is
/// set, killed when dropped; returns once it accepts connections.
async fn start_peer(mut cmd: Command, port: u16, what: &str) -> Child {
    cmd.kill_on_drop(true);
    if std::env::var_os("WEIR_TEST_SHOW_LOGS").is_none() {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    wait_port(port, what).await;
    child
}

/// Credentials by reference for one test: sets `<PREFIX>_<KEY>` for each pair under a
/// fresh prefix and returns the prefix (`credentials: {env: PREFIX}`).
pub fn credentials_env(pairs: &[(&str, &str)]) -> String {
    let prefix = format!("JOB_TEST_CREDS_{}", uuid::Uuid::new_v4().simple());
    for (k, v) in pairs {
        std::env::set_var(format!("{prefix}_{k}"), v);
    }
    prefix
}

/// Opens a location spec as the managers would.
pub fn open_location(spec: &serde_json::Value) -> weir_storage::Location {
    let spec: weir_core::files::LocationSpec = serde_json::from_value(spec.clone()).expect("a location spec");
    weir_storage::Location::open(&spec).expect("opens")
}

/// A real S3-compatible server (moto, from PyPI) on a loopback port, killed when dropped.
pub struct Moto {
    pub endpoint: String,
    port: u16,
    _child: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
        let child = start_peer(cmd, port, "moto").await;
        Moto { endpoint: format!("http://127.0.0.1:{port}"), port, _child: child }
    }

    /// A location spec for `uri` on this server, with (any) keys given by reference.
    pub fn location(&self, uri: &str) -> serde_json::Value {
        let creds = credentials_env(&[("ACCESS_KEY_ID", "test"), ("SECRET_ACCESS_KEY", "test")]);
        serde_json::json!({"uri": uri, "endpoint": self.endpoint, "credentials": {"env": creds}})
    }

    /// Creates a bucket (a plain S3 PUT; moto does not check signatures).
    pub async fn create_bucket(&self, bucket: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect moto");
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).await.expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    }
}

/// A real SFTP server: Debian's OpenSSH `sshd` on a loopback port, with a host key and a
/// client key made for the test; killed when dropped.
pub struct Sshd {
    pub port: u16,
    pub key_file: PathBuf,
    pub user: String,
    _dir: tempfile::TempDir,
    _child: Child,
}

impl Sshd {
    pub async fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        for (name, comment) in [("host_key", "host"), ("client_key", "client")] {
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(d.join(name))
                .status()
                .expect("ssh-keygen");
            assert!(st.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n\
             Subsystem sftp internal-sftp\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("config");
        std::fs::create_dir_all("/run/sshd").ok();
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config"));
        let child = start_peer(cmd, port, "sshd (scripts/ensure-build-deps.sh --with-test-tools installs it)").await;
        Sshd { port, key_file: d.join("client_key"), user, _dir: dir, _child: child }
    }
}

/// A manager running in this process with the given spec until the token fires.
pub fn run_manager(
    spec: weir_worker::manager::ManagerSpec,
    master_url: &str,
    worker_id: &str,
    listen: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let args = weir_worker::manager::ManagerArgs {
        listen: listen.to_string(),
        concurrency: Some(8),
        poll_wait: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
        worker_id: Some(worker_id.to_string()),
        ..weir_worker::manager::ManagerArgs::local(master_url)
    };
    let c = cancel.clone();
    let h = tokio::spawn(async move {
        weir_worker::manager::run(spec, args, c).await.expect("manager runs");
    });
    (cancel, h)
}

/// The value of the sample `series` (name and labels as written, in order) in
/// Prometheus' text format, if present.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Debian's `promtool`, unpacked by `scripts/ensure-prometheus.sh` (make test runs it).
pub fn promtool() -> PathBuf {
    let p =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weir/tools/prometheus/usr/bin/promtool");
    assert!(p.exists(), "{} missing: run scripts/ensure-prometheus.sh (make test does)", p.display());
    p
}

/// A real Prometheus server (Debian's, unpacked by `scripts/ensure-prometheus.sh`) scraping
/// `targets` every second, on a free loopback port, with its data in a temporary folder;
/// killed when dropped.
pub struct Prometheus {
    pub url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// `targets`: `(job, host:port)` pairs.
    pub async fn start(targets: &[(&str, String)]) -> Prometheus {
        let bin = promtool().with_file_name("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = String::from("global: {scrape_interval: 1s, scrape_timeout: 900ms}\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs: [{{targets: ['{addr}']}}]\n"));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("config");
        let port = free_port();
        let proc = Proc::spawn_path(
            &bin,
            &[
                &format!("--config.file={}", file.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ],
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{url}/-/ready")).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus { url, _proc: proc, _dir: dir }
    }

    /// An instant query's result vector: each sample's labels and value.
    pub async fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let at = url::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", expr)]).expect("url");
        let body = reqwest::get(at.as_str()).await.expect("query").text().await.expect("body");
        let r: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
        assert_eq!(r["status"], "success", "{expr}: {r}");
        r["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["metric"].clone(), s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)))
            .collect()
    }
}

/// The real `weir-master` binary on a free loopback port; returns its URL and process.
pub fn spawn_master(store_url: &str) -> (String, Proc) {
    let port = free_port();
    let master = Proc::spawn(
        "weir-master",
        &["--listen", &format!("127.0.0.1:{port}"), "--heartbeat-interval", "200ms"],
        &[("WEIR_STORE_URL", store_url)],
    );
    (format!("http://127.0.0.1:{port}"), master)
}

/// A real FTP server (pyftpdlib, from PyPI) serving `dir` on a loopback port to
/// `weir`/`secret`, killed when dropped.
pub struct Ftp {
    pub port: u16,
    _child: Child,
}

impl Ftp {
    pub async fn start(dir: &std::path::Path) -> Ftp {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.args([
            "-m",
            "pyftpdlib",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "weir",
            "-P",
            "secret",
            "-w",
            "-d",
        ])
        .arg(dir);
        Ftp { port, _child: start_peer(cmd, port, "pyftpdlib").await }
    }
}

/// Azurite's well-known development account (public, in Microsoft's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Its key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A real Azure Blob endpoint: Azurite (from npm, `scripts/ensure-azurite.sh`) on a
/// loopback port, killed when dropped.
pub struct Azurite {
    pub endpoint: String,
    _dir: tempfile::TempDir,
    _child: Child,
}

impl Azurite {
    pub async fn start() -> Azurite {
        let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
        let dir_env = std::env::var("WEIR_AZURITE_DIR").map(PathBuf::from).unwrap_or(home.join(".cache/weir/azurite"));
        let bin = dir_env.join("node_modules/.bin/azurite-blob");
        assert!(bin.exists(), "{} missing: run scripts/ensure-azurite.sh (make test does)", bin.display());
        let data = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
            .args(["--loose", "--disableTelemetry", "--location"])
            .arg(data.path());
        let child = start_peer(cmd, port, "azurite").await;
        Azurite { endpoint: format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"), _dir: data, _child: child }
    }

    /// A location spec for `uri` on this server, with the account's keys by reference.
    pub fn location(&self, uri: &str) -> serde_json::Value {
        let creds = credentials_env(&[("ACCOUNT_NAME", AZURITE_ACCOUNT), ("ACCOUNT_KEY", AZURITE_KEY)]);
        serde_json::json!({"uri": uri, "endpoint": self.endpoint, "credentials": {"env": creds}})
    }

    /// Runs a few lines of Azure's own Python client; `client` is the service client,
    /// `sys.argv[2:]` the arguments; returns what it prints.
    async fn client(&self, script: &str, args: &[&str]) -> String {
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
            self.endpoint
        );
        let script = format!(
            "import sys\nfrom azure.storage.blob import BlobServiceClient\nclient = BlobServiceClient.from_connection_string(sys.argv[1])\n{script}\n"
        );
        let out = Command::new(python()).arg("-c").arg(script).arg(&conn).args(args).output().await.expect("python");
        assert!(out.status.success(), "azure client: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a container with Azure's own Python client.
    pub async fn create_container(&self, name: &str) {
        self.client("client.create_container(sys.argv[2])", &[name]).await;
    }

    /// Takes an infinite lease on a blob: Azure then refuses every write to it that does
    /// not carry the lease id. Returns the lease id.
    pub async fn lease(&self, container: &str, blob: &str) -> String {
        self.client("print(client.get_blob_client(sys.argv[2], sys.argv[3]).acquire_lease(-1).id)", &[container, blob])
            .await
    }

    /// Releases a lease taken by [`Azurite::lease`].
    pub async fn break_lease(&self, container: &str, blob: &str, lease: &str) {
        self.client(
            "from azure.storage.blob import BlobLeaseClient\nBlobLeaseClient(client.get_blob_client(sys.argv[2], sys.argv[3]), sys.argv[4]).release()",
            &[container, blob, lease],
        )
        .await;
    }
}

/// Every row of the Parquet files under `prefix` in `loc` (those readers see: not under
/// `_`-folders) as "a|b|c" lines, sorted; `scratch` is where they are downloaded.
pub async fn dataset_rows(loc: &weir_storage::Location, prefix: &str, scratch: &std::path::Path) -> Vec<String> {
    use arrow_cast::display::{ArrayFormatter, FormatOptions};
    let all = loc.list(&weir_storage::Patterns::new(&["**/*.parquet".into()]).expect("glob")).await.expect("list");
    let files: Vec<String> = all
        .into_iter()
        .map(|f| f.path)
        .filter(|p| p.starts_with(&format!("{prefix}/")) && !p.split('/').any(|seg| seg.starts_with('_')))
        .collect();
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let local = scratch.join(format!("read-{}-{i}.parquet", uuid::Uuid::new_v4().simple()));
        loc.download(f, &local, 1 << 20).await.expect("download");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&local).expect("open"),
        )
        .expect("parquet")
        .build()
        .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let fmts: Vec<_> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).expect("fmt"))
                .collect();
            for r in 0..b.num_rows() {
                out.push(fmts.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join("|"));
            }
        }
        let _ = std::fs::remove_file(&local);
    }
    out.sort();
    out
}

/// A GCS JSON-API server (gcp-storage-emulator, from PyPI) on a loopback port, in memory,
/// with one bucket; killed when dropped. It accepts any bearer token.
pub struct GcsEmulator {
    pub endpoint: String,
    _child: Child,
}

impl GcsEmulator {
    pub async fn start(bucket: &str) -> GcsEmulator {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", &port.to_string()]).args([
            "--in-memory",
            "--default-bucket",
            bucket,
            "--quiet",
        ]);
        let child = start_peer(cmd, port, "gcp-storage-emulator").await;
        GcsEmulator { endpoint: format!("http://127.0.0.1:{port}"), _child: child }
    }

    /// A location spec for `uri` on this server, with (any) token given by reference.
    pub fn location(&self, uri: &str) -> serde_json::Value {
        let creds = credentials_env(&[("TOKEN", "emulator-accepts-any-token")]);
        serde_json::json!({"uri": uri, "endpoint": self.endpoint, "credentials": {"env": creds}})
    }
}

/// WireMock's standalone server (the npm registry's `wiremock` package, its jar run on
/// the machine's Java; `scripts/ensure-wiremock.sh`) on a loopback port, scripted through
/// its admin API; killed when dropped.
pub struct WireMock {
    /// Where tests send requests: `http://…`, or `https://…` for [`WireMock::start_https`].
    pub url: String,
    /// The admin API, always plain HTTP.
    admin_url: String,
    admin: reqwest::Client,
    _child: Child,
}

/// A server's TLS identity for [`WireMock::start_https`]: a PKCS#12 keystore and its password.
pub struct Keystore<'a> {
    pub path: &'a Path,
    pub password: &'a str,
}

impl WireMock {
    pub async fn start() -> WireMock {
        WireMock::launch(None, &[]).await
    }

    /// WireMock serving HTTPS with `keystore` (its admin API stays on plain HTTP);
    /// `jvm` adds JVM options, e.g. `-Djava.security.properties=<file>` with
    /// `jdk.tls.disabledAlgorithms` for a server that speaks only an older TLS.
    pub async fn start_https(keystore: Keystore<'_>, jvm: &[&str]) -> WireMock {
        WireMock::launch(Some(keystore), jvm).await
    }

    async fn launch(tls: Option<Keystore<'_>>, jvm: &[&str]) -> WireMock {
        let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
        let dir = std::env::var("WEIR_WIREMOCK_DIR").map(PathBuf::from).unwrap_or(home.join(".cache/weir/wiremock"));
        let jar = dir.join("node_modules/wiremock/build/wiremock-standalone-3.13.2.jar");
        assert!(jar.exists(), "{} missing: run scripts/ensure-wiremock.sh (make test does)", jar.display());
        let port = free_port();
        let mut cmd = Command::new("java");
        cmd.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]).args(jvm).arg("-jar").arg(&jar).args([
            "--port",
            &port.to_string(),
            "--bind-address",
            "127.0.0.1",
            "--disable-banner",
        ]);
        let admin_url = format!("http://127.0.0.1:{port}");
        let mut url = admin_url.clone();
        if let Some(k) = &tls {
            let https = free_port();
            cmd.arg("--https-port").arg(https.to_string()).arg("--https-keystore").arg(k.path).args([
                "--keystore-type",
                "PKCS12",
                "--keystore-password",
                k.password,
                "--key-manager-password",
                k.password,
            ]);
            url = format!("https://127.0.0.1:{https}");
        }
        let child = start_peer(cmd, port, "wiremock").await;
        let w = WireMock { url, admin_url, admin: reqwest::Client::new(), _child: child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.admin.get(format!("{}/__admin/health", w.admin_url)).send().await.map(|r| r.status().is_success()).ok()
            != Some(true)
        {
            assert!(Instant::now() < deadline, "wiremock never became healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w
    }

    /// The plain-HTTP port, which serves the stubs too (and the admin API).
    pub fn http_url(&self) -> &str {
        &self.admin_url
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut r = self.admin.request(method, format!("{}/__admin/{path}", self.admin_url));
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.expect("wiremock admin");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("admin body");
        assert!(status.is_success(), "wiremock admin {path}: {status} {}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    /// Adds a stub mapping (WireMock's JSON: `{"request": …, "response": …}`).
    pub async fn stub(&self, mapping: serde_json::Value) {
        self.admin(reqwest::Method::POST, "mappings", Some(mapping)).await;
    }

    /// How many requests matched `pattern` (WireMock's request pattern JSON).
    pub async fn count(&self, pattern: serde_json::Value) -> u64 {
        self.admin(reqwest::Method::POST, "requests/count", Some(pattern)).await["count"].as_u64().unwrap_or(0)
    }

    /// Every request the server saw, oldest first: (method, url, logged time in ms).
    pub async fn requests(&self) -> Vec<(String, String, i64)> {
        let all = self.admin(reqwest::Method::GET, "requests", None).await;
        let mut out: Vec<(String, String, i64)> = all["requests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let q = &r["request"];
                        (
                            q["method"].as_str().unwrap_or("").to_string(),
                            q["url"].as_str().unwrap_or("").to_string(),
                            q["loggedDate"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|r| r.2);
        out
    }
}

/// Waits until the master at `url` serves worker calls (it leads and has loaded its state).
pub async fn wait_master(url: &str) {
    let mut w = WorkerServiceClient::new(channel(url));
    let deadline = Instant::now() + Duration::from_secs(30);
    while w
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "probe".into(),
            tasks: vec![],
            draining: false,
            quotas: vec![],
            notices: vec![],
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "master {url} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A test CA and a server certificate it signed (for `127.0.0.1` and `localhost`), made
/// with OpenSSL: the CA as PEM, the server's key and chain as a PKCS#12 keystore (what
/// WireMock's Jetty reads), and the CA's SHA-256 fingerprint.
pub struct Pki {
    pub ca_pem: PathBuf,
    pub ca_sha256: String,
    pub keystore: PathBuf,
    pub password: String,
    /// The server's certificate chain and key as PEM (what Weir's services read).
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate the CA signed (CN `weir-client`, clientAuth) and its key.
    pub client_pem: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
        use openssl::x509::{X509NameBuilder, X509};
        let key = || PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("key");
        let name = |cn: &str| {
            let mut n = X509NameBuilder::new().expect("name");
            n.append_entry_by_text("CN", cn).expect("cn");
            n.build()
        };
        let cert = |serial: u32| {
            let mut b = X509::builder().expect("builder");
            b.set_version(2).expect("v3");
            b.set_serial_number(&BigNum::from_u32(serial).expect("bn").to_asn1_integer().expect("serial"))
                .expect("serial");
            b.set_not_before(&Asn1Time::days_from_now(0).expect("t")).expect("not before");
            b.set_not_after(&Asn1Time::days_from_now(2).expect("t")).expect("not after");
            b
        };
        let (ca_key, server_key) = (key(), key());
        let mut ca = cert(1);
        ca.set_subject_name(&name("Weir Test CA")).expect("subject");
        ca.set_issuer_name(&name("Weir Test CA")).expect("issuer");
        ca.set_pubkey(&ca_key).expect("pubkey");
        ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc")).expect("ext");
        ca.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().expect("ku")).expect("ext");
        ca.sign(&ca_key, MessageDigest::sha256()).expect("sign");
        let ca = ca.build();
        let mut server = cert(2);
        server.set_subject_name(&name("127.0.0.1")).expect("subject");
        server.set_issuer_name(ca.subject_name()).expect("issuer");
        server.set_pubkey(&server_key).expect("pubkey");
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&server.x509v3_context(Some(&ca), None))
            .expect("san");
        server.append_extension(san).expect("ext");
        server.sign(&ca_key, MessageDigest::sha256()).expect("sign");
        let server = server.build();
        let password = "weir-test".to_string();
        let mut chain = openssl::stack::Stack::new().expect("stack");
        chain.push(ca.clone()).expect("push");
        let p12 = openssl::pkcs12::Pkcs12::builder()
            .name("server")
            .pkey(&server_key)
            .cert(&server)
            .ca(chain)
            .build2(&password)
            .expect("pkcs12");
        let keystore = dir.join("server.p12");
        std::fs::write(&keystore, p12.to_der().expect("der")).expect("keystore");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.to_pem().expect("pem")).expect("ca");
        let fp = ca.digest(MessageDigest::sha256()).expect("digest");
        let ca_sha256 = format!("sha256:{}", fp.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let client_key = key();
        let mut client = cert(3);
        client.set_subject_name(&name("weir-client")).expect("subject");
        client.set_issuer_name(ca.subject_name()).expect("issuer");
        client.set_pubkey(&client_key).expect("pubkey");
        client.append_extension(ExtendedKeyUsage::new().client_auth().build().expect("eku")).expect("ext");
        client.sign(&ca_key, MessageDigest::sha256()).expect("sign");
        let client = client.build();
        let pem = |file: &str, bytes: Vec<u8>| {
            let p = dir.join(file);
            std::fs::write(&p, bytes).expect("pem");
            p
        };
        Pki {
            ca_pem,
            ca_sha256,
            keystore,
            password,
            server_pem: pem("server.pem", [server.to_pem().expect("pem"), ca.to_pem().expect("pem")].concat()),
            server_key: pem("server.key", server_key.private_key_to_pem_pkcs8().expect("pem")),
            client_pem: pem("client.pem", client.to_pem().expect("pem")),
            client_key: pem("client.key", client_key.private_key_to_pem_pkcs8().expect("pem")),
        }
    }

    pub fn keystore(&self) -> Keystore<'_> {
        Keystore { path: &self.keystore, password: &self.password }
    }
}

/// Runs the `weir` CLI against the master at `url`.
pub fn weir_cli(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("weir")).args(args).env("WEIR_MASTER_URL", url).output().expect("run weir")
}

/// `weir --json submit <file>`, again until the master answers (it may still be starting):
/// the job's id.
pub async fn cli_submit(url: &str, file: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = weir_cli(url, &["--json", "submit", file.to_str().unwrap_or_default()]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            return v["id"].as_str().expect("id").to_string();
        }
        assert!(Instant::now() < deadline, "submit: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every batch of the Parquet files directly in `lake` (a dataset's files, not its
/// `_weir` bookkeeping), read with `decryption` when they are encrypted.
pub fn read_lake(
    lake: &Path,
    decryption: Option<&std::sync::Arc<parquet::encryption::decrypt::FileDecryptionProperties>>,
) -> Result<Vec<arrow_array::RecordBatch>, String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(lake).map_err(|e| e.to_string())?.flatten() {
        if e.path().extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let f = std::fs::File::open(e.path()).map_err(|e| e.to_string())?;
        let mut opts = parquet::arrow::arrow_reader::ArrowReaderOptions::new();
        if let Some(d) = decryption {
            opts = opts.with_file_decryption_properties(d.clone());
        }
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new_with_options(f, opts)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        for b in r {
            out.push(b.map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// Rows of every Parquet file in `lake` (none while it does not exist).
pub fn lake_rows(lake: &Path) -> usize {
    if !lake.exists() {
        return 0;
    }
    read_lake(lake, None).expect("the lake reads").iter().map(|b| b.num_rows()).sum()
}

/// A fresh in-memory JetStream stream `weir_test_<uuid>` on the NATS server of this
/// machine, taking the subjects `<name>.>`: its name and a JetStream context.
pub async fn nats_stream() -> (String, async_nats::jetstream::Context) {
    let name = format!("weir_test_{}", uuid::Uuid::new_v4().simple());
    let client = async_nats::connect("nats://127.0.0.1:4222").await.expect("the NATS server on this machine");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("a JetStream stream");
    (name, js)
}

/// Publishes `{"id": i}` for each id to `<stream>.orders`, each stored before the next.
pub async fn nats_publish(js: &async_nats::jetstream::Context, stream: &str, ids: std::ops::Range<i64>) {
    for i in ids {
        let body = serde_json::json!({"id": i}).to_string();
        js.publish(format!("{stream}.orders"), body.into()).await.expect("publish").await.expect("stored");
    }
}

/// The Google Cloud SDK's Pub/Sub emulator (Java) on a loopback port, killed when dropped.
pub struct PubsubEmulator {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _child: tokio::process::Child,
}

impl PubsubEmulator {
    pub async fn start() -> PubsubEmulator {
        let bin = std::env::var("WEIR_PUBSUB_EMULATOR")
            .unwrap_or_else(|_| "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator".into());
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--host=127.0.0.1", &format!("--port={port}")]).kill_on_drop(true).stdin(Stdio::null());
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child =
            cmd.spawn().unwrap_or_else(|e| panic!("{bin}: {e} (scripts/ensure-pubsub-emulator.sh checks for it)"));
        wait_port(port, "the Pub/Sub emulator").await;
        PubsubEmulator { url: format!("http://127.0.0.1:{port}"), _child: child }
    }

    /// Creates `topic` and a subscription `subscription` to it in `project`.
    pub async fn subscription(&self, project: &str, topic: &str, subscription: &str) {
        use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
            publisher_client::PublisherClient, subscriber_client::SubscriberClient, Subscription, Topic,
        };
        let ch =
            tonic::transport::Endpoint::from_shared(self.url.clone()).expect("url").connect().await.expect("emulator");
        let topic = format!("projects/{project}/topics/{topic}");
        PublisherClient::new(ch.clone())
            .create_topic(Topic { name: topic.clone(), ..Default::default() })
            .await
            .expect("topic");
        let s = Subscription {
            name: format!("projects/{project}/subscriptions/{subscription}"),
            topic,
            ack_deadline_seconds: 60,
            ..Default::default()
        };
        SubscriberClient::new(ch).create_subscription(s).await.expect("subscription");
    }

    /// Publishes `bodies` to `topic`; each message's id is Pub/Sub's.
    pub async fn publish(&self, project: &str, topic: &str, bodies: Vec<Vec<u8>>) {
        use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
            publisher_client::PublisherClient, PublishRequest, PubsubMessage,
        };
        let ch =
            tonic::transport::Endpoint::from_shared(self.url.clone()).expect("url").connect().await.expect("emulator");
        let mut p = PublisherClient::new(ch);
        for chunk in bodies.chunks(500) {
            let messages = chunk.iter().map(|b| PubsubMessage { data: b.clone(), ..Default::default() }).collect();
            p.publish(PublishRequest { topic: format!("projects/{project}/topics/{topic}"), messages })
                .await
                .expect("publish");
        }
    }
}

/// kinesalite, an Amazon Kinesis emulator (the npm registry's `kinesalite`, on Node.js;
/// `scripts/ensure-kinesalite.sh`), in memory on a loopback port; killed when dropped.
/// Streams become active at once and reshard at once.
pub struct Kinesalite {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub client: aws_sdk_kinesis::Client,
    _child: Child,
}

impl Kinesalite {
    pub async fn start() -> Kinesalite {
        let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
        let dir =
            std::env::var("WEIR_KINESALITE_DIR").map(PathBuf::from).unwrap_or(home.join(".cache/weir/kinesalite"));
        let bin = dir.join("node_modules/.bin/kinesalite");
        assert!(bin.exists(), "{} missing: run scripts/ensure-kinesalite.sh (make test does)", bin.display());
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--createStreamMs", "0", "--deleteStreamMs", "0"]);
        cmd.args(["--updateStreamMs", "0", "--shardLimit", "50"]);
        let child = start_peer(cmd, port, "kinesalite").await;
        let url = format!("http://127.0.0.1:{port}");
        let creds = aws_credential_types::Credentials::new("test", "test", None, None, "test");
        let client = weir_stream_manager::sources::kinesis::client("us-east-1", Some(&url), creds);
        Kinesalite { url, client, _child: child }
    }

    /// Creates `stream` with `shards` shards and waits until it is active.
    pub async fn stream(&self, stream: &str, shards: i32) {
        self.client.create_stream().stream_name(stream).shard_count(shards).send().await.expect("create stream");
        self.active(stream).await;
    }

    async fn active(&self, stream: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.client.describe_stream_summary().stream_name(stream).send().await.expect("describe");
            let status = d.stream_description_summary().map(|s| s.stream_status().as_str().to_string());
            if status.as_deref() == Some("ACTIVE") {
                return;
            }
            assert!(Instant::now() < deadline, "stream {stream} never became active ({status:?})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts `bodies` into `stream`, each under partition key `key(i)`, in batches of 500.
    pub async fn put(&self, stream: &str, bodies: &[Vec<u8>], key: impl Fn(usize) -> String) {
        use aws_sdk_kinesis::{primitives::Blob, types::PutRecordsRequestEntry};
        for (n, chunk) in bodies.chunks(500).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(b.clone()))
                        .partition_key(key(n * 500 + i))
                        .build()
                        .expect("entry")
                })
                .collect();
            let out =
                self.client.put_records().stream_name(stream).set_records(Some(entries)).send().await.expect("put");
            assert_eq!(out.failed_record_count(), Some(0), "every record put");
        }
    }

    /// Splits `shard` of `stream` at the middle of its hash key range; the stream's two
    /// new shards take the records put from then on.
    pub async fn split(&self, stream: &str, shard: &str) {
        let shards = self.client.list_shards().stream_name(stream).send().await.expect("shards");
        let s = shards.shards().iter().find(|s| s.shard_id() == shard).expect("the shard");
        let range = s.hash_key_range().expect("hash key range");
        let key = |k: &str| k.parse::<u128>().expect("a 128-bit hash key");
        let middle = key(range.starting_hash_key()) / 2 + key(range.ending_hash_key()) / 2;
        self.client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard)
            .new_starting_hash_key(middle.to_string())
            .send()
            .await
            .expect("split");
        self.active(stream).await;
    }
}

/// What pyarrow and DuckDB read of a dataset, as a user's tools would (see
/// `tests/python/read_dataset.py`): `{"path": …}` on disk, or an S3 prefix with its
/// `endpoint`, `key` and `secret`.
pub async fn read_dataset(spec: serde_json::Value) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_dataset.py");
    let out = Command::new(python()).arg(script).arg(spec.to_string()).output().await.expect("python");
    assert!(out.status.success(), "reading {spec}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("reader's JSON")
}

/// A real worker (the managers' lease loop) on the `api` queue of `m`, running `handlers`
/// with `concurrency` tasks at once; cancel the token to stop it, then await the handle.
pub fn start_worker(
    m: &InProcMaster,
    handlers: Vec<std::sync::Arc<dyn weir_worker::StepHandler>>,
    concurrency: u32,
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let cfg = weir_worker::WorkerConfig {
        master_url: m.url.clone(),
        queue: weir_core::catalog::Queue::Api,
        worker_id: format!("test-worker-{}", uuid::Uuid::new_v4().simple()),
        concurrency,
        poll_wait: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(1),
        security: Default::default(),
        sandbox: std::sync::Arc::new(weir_core::sandbox::Policy::allow_all()),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let worker = weir_worker::Worker::new(cfg, handlers).expect("worker");
    let c = cancel.clone();
    (cancel, tokio::spawn(async move { worker.run(c).await.expect("worker runs") }))
}
