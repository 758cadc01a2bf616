//! A busy manager's reports: successes that pile up are sent together (CompleteTasks) and
//! each is applied and counted once. Real master, real worker, over gRPC. A test binary of
//! its own: it reads the process's metrics, which no other test may add to.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use weir_proto::v1;
use weir_tests::*;
use weir_worker::{StepError, StepHandler, TaskContext};

/// Finishes `noop` steps only once `n` of them are running: they all end at once.
struct Together(Arc<tokio::sync::Barrier>);

#[async_trait]
impl StepHandler for Together {
    fn kinds(&self) -> &'static [&'static str] {
        &["noop"]
    }
    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        self.0.wait().await;
        Ok(json!({"step": task.step_id}))
    }
}

/// A counter of the worker service's `method` calls answered with `code`, from this
/// process's metrics (the master runs in it): `weir_grpc_server_requests_total` counts
/// reports (a batched one as the call it stands for), the duration histogram's `_count`
/// only calls made.
fn calls(metric: &str, method: &str, code: &str) -> u64 {
    let prefix = format!("{metric}{{service=\"weir.v1.WorkerService\",method=\"{method}\",code=\"{code}\"}} ");
    weir_runtime::metrics::encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_that_finish_together_are_reported_together_and_each_counts_once() {
    const N: usize = 40;
    let store = StoreFixture::new(Backend::Sqlite).await;
    let m = InProcMaster::start(&store.url).await;
    let together = Arc::new(Together(Arc::new(tokio::sync::Barrier::new(N))));
    let (stop, w) = start_worker(&m, vec![together as Arc<dyn StepHandler>], N as u32);
    let mut jobs = m.jobs();
    let steps = (0..N).map(|i| step(&format!("s{i}"), "noop", "api", &[])).collect();
    let id = submit(&mut jobs, job("together", steps)).await;
    let done = wait_finished(&mut jobs, &id, Duration::from_secs(20)).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32);
    let all = tasks(&mut jobs, &id).await;
    assert!(
        all.iter().all(|t| t.state == v1::TaskState::Succeeded as i32 && t.output_json.contains(&t.step_id)),
        "{all:?}"
    );
    // Each success counted once as a CompleteTask (alone or in a batch), and far fewer calls
    // made than tasks reported.
    const REPORTS: &str = "weir_grpc_server_requests_total";
    const CALLS: &str = "weir_grpc_server_request_duration_seconds_count";
    assert_eq!(calls(REPORTS, "CompleteTask", "OK"), N as u64);
    let (alone, batches) = (calls(CALLS, "CompleteTask", "OK"), calls(CALLS, "CompleteTasks", "OK"));
    assert!(batches >= 1 && alone + batches < N as u64 / 2, "{alone} single calls, {batches} batches");
    stop.cancel();
    w.await.expect("worker stops");
    m.stop().await;
    store.cleanup().await;
}
