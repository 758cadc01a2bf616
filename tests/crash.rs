//! The master is a separate process, killed with SIGKILL at arbitrary moments while real
//! manager processes run jobs, and restarted on the same store. Every accepted job must
//! finish, and every task's result must be applied exactly once.

use std::collections::HashMap;
use std::time::Duration;

use weir_core::model::event_type;
use weir_proto::v1;
use weir_tests::*;

fn start_master(port: u16, store_url: &str) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    Proc::spawn("weir-master", &["--listen", &addr, "--store-url", store_url, "--heartbeat-interval", "200ms"], &[])
}

fn crash_job(i: usize) -> v1::JobSpec {
    let sleep = |id: &str, queue: &str, ms: u64, deps: &[&str]| {
        let mut s = step(id, "sleep", queue, deps);
        s.config_json = format!("{{\"duration\":\"{ms}ms\"}}");
        s
    };
    job(
        &format!("crash-{i}"),
        vec![
            sleep("fetch", "api", 40, &[]),
            step("list", "noop", "file", &[]),
            sleep("left", "api", 30, &["fetch"]),
            sleep("right", "file", 30, &["list"]),
            step("join", "noop", "api", &["left", "right"]),
            sleep("store", "file", 20, &["join"]),
        ],
    )
}

async fn master_killed_mid_run(backend: Backend) {
    let store = StoreFixture::new(backend).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut master = start_master(port, &store.url);
    wait_master(&url).await;
    let env = [("WEIR_MASTER_URL", url.as_str()), ("WEIR_WORKER_CONCURRENCY", "8"), ("WEIR_POLL_WAIT", "2s")];
    let _api = Proc::spawn("weir-api-manager", &[], &env);
    let _file = Proc::spawn("weir-file-manager", &[], &env);

    let mut jobs = v1::job_service_client::JobServiceClient::new(channel(&url));
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(submit(&mut jobs, crash_job(i)).await);
    }
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(250 + 150 * round)).await;
        master.kill9().await;
        master = start_master(port, &store.url);
        wait_master(&url).await;
    }
    for id in &ids {
        let job = wait_finished(&mut jobs, id, Duration::from_secs(120)).await;
        assert_eq!(job.state, v1::JobState::Succeeded as i32, "job {id}: {}", job.error);
    }
    drop(master);

    // Every task's result applied exactly once, per the durable history.
    let s = store.open().await;
    for id in &ids {
        let job_id = uuid::Uuid::parse_str(id).expect("id");
        let events = s.events(job_id, 1, 100_000).await.expect("events");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "history of {id} has no gaps");
        let mut succeeded: HashMap<uuid::Uuid, usize> = HashMap::new();
        for e in events.iter().filter(|e| e.kind == event_type::TASK_SUCCEEDED) {
            *succeeded.entry(e.task_id.expect("task id")).or_default() += 1;
        }
        let tasks = s.job_tasks(job_id).await.expect("tasks");
        assert_eq!(tasks.len(), 6);
        for t in tasks {
            assert_eq!(succeeded.get(&t.id), Some(&1), "task {} of {id} applied exactly once", t.step_id);
        }
    }
    drop(s);
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_run_postgres() {
    master_killed_mid_run(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_run_sqlite() {
    master_killed_mid_run(Backend::Sqlite).await;
}
