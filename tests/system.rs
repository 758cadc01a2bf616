//! The five real binaries against PostgreSQL: a job of every template, the `weir` CLI,
//! health over the standard protocol, and a manager drained with SIGTERM.

use std::process::Command;
use std::time::Duration;

use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use weir_proto::v1;
use weir_tests::*;

struct Platform {
    url: String,
    master: Proc,
    managers: Vec<(String, Proc, u16)>,
}

fn spawn_manager(name: &str, url: &str, port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("WEIR_MASTER_URL", url),
        ("WEIR_MANAGER_LISTEN", listen.as_str()),
        ("WEIR_POLL_WAIT", "2s"),
        ("WEIR_DRAIN_TIMEOUT", "500ms"),
    ];
    Proc::spawn(&format!("weir-{name}-manager"), &[], &env)
}

async fn start(store_url: &str) -> Platform {
    let (url, master) = spawn_master(store_url);
    let managers = ["api", "file", "batch", "stream"]
        .into_iter()
        .map(|q| {
            let p = free_port();
            (q.to_string(), spawn_manager(q, &url, p), p)
        })
        .collect();
    Platform { url, master, managers }
}

async fn serving(url: &str, service: &str) -> bool {
    let mut h = HealthClient::new(channel(url));
    matches!(
        h.check(HealthCheckRequest { service: service.into() }).await,
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

async fn wait_serving(url: &str, service: &str) {
    for _ in 0..400 {
        if serving(url, service).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never reported {service:?} SERVING");
}

fn weir(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("weir")).args(args).env("WEIR_MASTER_URL", url).output().expect("run weir")
}

fn fixture(name: &str) -> String {
    format!("{}/fixtures/jobs/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_binaries_run_every_template() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let p = start(&store.url).await;
    wait_serving(&p.url, "weir.v1.JobService").await;
    for (_, _, port) in &p.managers {
        wait_serving(&format!("http://127.0.0.1:{port}"), "").await;
    }
    let mut jobs = v1::job_service_client::JobServiceClient::new(channel(&p.url));
    let pids: Vec<(String, u32)> = p.managers.iter().map(|(q, proc, _)| (q.clone(), proc.pid())).collect();

    for t in weir_core::template::TEMPLATES {
        let out = weir(&p.url, &["--json", "submit", &fixture(&format!("template-{t}.yaml"))]);
        assert!(out.status.success(), "weir submit {t}: {}", String::from_utf8_lossy(&out.stderr));
        let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let id = submitted["id"].as_str().expect("id").to_string();
        let watch = weir(&p.url, &["watch", &id]);
        assert!(watch.status.success(), "weir watch {t}: {}", String::from_utf8_lossy(&watch.stdout));
        assert!(String::from_utf8_lossy(&watch.stdout).contains("succeeded"));
        for task in tasks(&mut jobs, &id).await {
            let pid = pids.iter().find(|(q, _)| *q == task.queue).map(|(_, pid)| *pid).expect("queue has a manager");
            assert!(
                ran_on(&task.worker_id, &task.queue, pid),
                "{t}: step {} ran on its queue's manager, not {}",
                task.step_id,
                task.worker_id
            );
        }
        let got = weir(&p.url, &["--json", "get", &id]);
        let got: serde_json::Value = serde_json::from_slice(&got.stdout).expect("json");
        assert_eq!(got["state"], "succeeded");
        assert_eq!(got["tasks"].as_array().map(Vec::len), Some(got["tasks_total"].as_u64().unwrap_or(0) as usize));
    }
    let list = weir(&p.url, &["jobs", "--namespace", "demo"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 1 + weir_core::template::TEMPLATES.len());
    let bad = weir(&p.url, &["submit", &fixture("../../engine.rs")]);
    assert!(!bad.status.success(), "a file that is not a spec is refused");
    let workers = weir(&p.url, &["workers"]);
    assert!(String::from_utf8_lossy(&workers.stdout).contains("stream-manager-"));
    let workers = weir(&p.url, &["--json", "workers"]);
    let queues: std::collections::BTreeSet<String> = String::from_utf8_lossy(&workers.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object a line"))
        .map(|w| w["queue"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(queues.into_iter().collect::<Vec<_>>(), ["api", "batch", "file", "stream"]);
    drop(p);
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leases_back() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let mut p = start(&store.url).await;
    wait_serving(&p.url, "weir.v1.JobService").await;
    let mut jobs = v1::job_service_client::JobServiceClient::new(channel(&p.url));
    let mut long = step("long", "sleep", "stream", &[]);
    long.config_json = r#"{"duration":"3s"}"#.into();
    let id = submit(&mut jobs, job("drain", vec![long])).await;
    let mut running = None;
    for _ in 0..200 {
        let t = tasks(&mut jobs, &id).await.remove(0);
        if t.state == v1::TaskState::Running as i32 {
            running = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = running.expect("the stream manager took the task");
    let idx = p.managers.iter().position(|(q, _, _)| q == "stream").expect("stream manager");
    let (_, stream, _) = p.managers.remove(idx);
    let status = stream.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "the manager stops cleanly on SIGTERM: {status:?}");
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert_eq!(t.state, v1::TaskState::Ready as i32, "the lease was handed back, not left to expire");
    assert_eq!(t.attempt, 0, "a handed-back lease does not count as an attempt");
    let replacement = spawn_manager("stream", &p.url, free_port());
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(30)).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32);
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert_eq!(t.fence_token, first.fence_token + 1);
    assert!(ran_on(&t.worker_id, "stream", replacement.pid()), "{}", t.worker_id);
    drop(replacement);
    drop(p.master);
    store.cleanup().await;
}

/// The proto files work with another language's stock generator: a Python client generated
/// by grpcio-tools submits, watches and works a job against the master unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_generated_from_proto() {
    let venv = std::env::var("WEIR_VENV").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weir/venv")
    });
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} missing: run scripts/ensure-python-peer.sh (make test does)", python.display());
    let out = tempfile::tempdir().expect("tempdir");
    let proto = format!("{}/../proto", env!("CARGO_MANIFEST_DIR"));
    let gen = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I", &proto])
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .args([format!("{proto}/weir/v1/job.proto"), format!("{proto}/weir/v1/master.proto")])
        .output()
        .expect("run grpc_tools.protoc");
    assert!(gen.status.success(), "protoc (python): {}", String::from_utf8_lossy(&gen.stderr));
    let store = StoreFixture::new(Backend::Sqlite).await;
    let m = InProcMaster::start(&store.url).await;
    let script = format!("{}/python/client.py", env!("CARGO_MANIFEST_DIR"));
    let addr = m.url.trim_start_matches("http://").to_string();
    let dir = out.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(dir).arg(addr).output())
        .await
        .expect("join")
        .expect("run python client");
    assert!(run.status.success(), "python client: {}", String::from_utf8_lossy(&run.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json from python");
    assert_eq!(seen["created"], true);
    assert_eq!(seen["created_again"], false);
    assert_eq!(seen["same_id"], true);
    assert!(seen["invalid"].as_str().unwrap_or_default().starts_with("INVALID_ARGUMENT"), "{seen}");
    assert_eq!(seen["done"], serde_json::json!(["a", "b"]));
    assert_eq!(seen["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(seen["last_event"], "dev.weir.job.succeeded");
    assert_eq!(seen["listed"], serde_json::json!([seen["job_id"].clone()]));
    // grpcio-reflection asks v1alpha: the master answers it as well as v1.
    let reflected: Vec<&str> = seen["reflected"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    for service in ["weir.v1.JobService", "weir.v1.WorkerService", "weir.v1.ConnectionService", "grpc.health.v1.Health"]
    {
        assert!(reflected.contains(&service), "{service} not reflected: {reflected:?}");
    }
    assert_eq!(seen["reflected_package"], "weir.v1");
    let mut jobs = m.jobs();
    let t = tasks(&mut jobs, seen["job_id"].as_str().unwrap_or_default()).await;
    assert_eq!(t[1].output_json, r#"{"by":"python"}"#);
    m.stop().await;
    store.cleanup().await;
}

/// Whether a default worker id ("<queue>-manager-<host>-<pid>-<random>") names this process.
fn ran_on(worker_id: &str, queue: &str, pid: u32) -> bool {
    worker_id.starts_with(&format!("{queue}-manager-")) && worker_id.contains(&format!("-{pid}-"))
}

/// A manager is alive on its own but ready only while it is in touch with the master:
/// what Kubernetes' liveness ("") and readiness ("ready") probes ask of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_is_ready_only_while_it_reaches_the_master() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master_port = free_port();
    let master_url = format!("http://127.0.0.1:{master_port}");
    let port = free_port();
    let manager_url = format!("http://127.0.0.1:{port}");
    let _manager = spawn_manager("batch", &master_url, port);
    wait_serving(&manager_url, "").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!serving(&manager_url, "ready").await, "no master yet: not ready");
    let master = Proc::spawn(
        "weir-master",
        &["--listen", &format!("127.0.0.1:{master_port}"), "--heartbeat-interval", "200ms"],
        &[("WEIR_STORE_URL", store.url.as_str())],
    );
    wait_serving(&manager_url, "ready").await;
    drop(master);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while serving(&manager_url, "ready").await {
        assert!(std::time::Instant::now() < deadline, "still ready with the master gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving(&manager_url, "").await, "alive all along");
    store.cleanup().await;
}
