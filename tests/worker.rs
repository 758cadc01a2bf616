//! The manager side of the lease protocol with handlers that misbehave: one that ignores
//! cancellation and finishes anyway, one that panics. Real master, real worker, over gRPC.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use weir_proto::v1;
use weir_tests::*;
use weir_worker::generic::Generic;
use weir_worker::{StepError, StepHandler, TaskContext};

/// Runs `sleep` steps to the end even when told to stop: work that cannot be interrupted.
struct Stubborn;

#[async_trait]
impl StepHandler for Stubborn {
    fn kinds(&self) -> &'static [&'static str] {
        &["sleep"]
    }
    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let d = weir_core::catalog::sleep_duration(task.config.as_ref()).map_err(|e| StepError::permanent("bad", e))?;
        tokio::time::sleep(d).await;
        Ok(json!({"finished_anyway": task.cancel.is_cancelled()}))
    }
}

/// Panics on `noop`: a bug in a handler.
struct Panics;

#[async_trait]
impl StepHandler for Panics {
    fn kinds(&self) -> &'static [&'static str] {
        &["noop"]
    }
    async fn run(&self, _task: &TaskContext) -> Result<Value, StepError> {
        panic!("index out of bounds in a handler");
    }
}

async fn wait_running(jobs: &mut v1::job_service_client::JobServiceClient<tonic::transport::Channel>, id: &str) {
    for _ in 0..200 {
        if tasks(jobs, id).await.iter().any(|t| t.state == v1::TaskState::Running as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the task never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_finished_after_a_cancel_is_reported_and_compensated() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let m = InProcMaster::start(&store.url).await;
    let (stop, w) = start_worker(&m, vec![Arc::new(Generic), Arc::new(Stubborn)], 1);
    let mut jobs = m.jobs();
    let mut a = step("a", "sleep", "api", &[]);
    a.config_json = json!({"duration": "1500ms"}).to_string();
    a.timeouts = Some(v1::StepTimeouts { heartbeat: dur(600), ..Default::default() });
    a.compensation = Some(v1::CompensationSpec { kind: "noop".into(), ..Default::default() });
    let id = submit(&mut jobs, job("stubborn", vec![a])).await;
    wait_running(&mut jobs, &id).await;
    jobs.cancel_job(v1::CancelJobRequest { job_id: id.clone(), reason: "changed my mind".into() })
        .await
        .expect("cancel");
    let job = wait_finished(&mut jobs, &id, Duration::from_secs(15)).await;
    assert_eq!(job.state, v1::JobState::Compensated as i32, "the step's effect happened, so it was undone: {job:?}");
    let t = tasks(&mut jobs, &id).await;
    let a = t.iter().find(|t| t.step_id == "a").expect("a");
    assert_eq!(a.state, v1::TaskState::Compensated as i32);
    assert!(a.output_json.contains("\"finished_anyway\":true"), "{}", a.output_json);
    stop.cancel();
    w.await.expect("worker stops");
    m.stop().await;
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_attempt_and_the_worker_goes_on() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let m = InProcMaster::start(&store.url).await;
    let (stop, w) = start_worker(&m, vec![Arc::new(Generic), Arc::new(Panics)], 1);
    let mut jobs = m.jobs();
    let mut a = step("a", "noop", "api", &[]);
    a.retry = Some(v1::RetryPolicy { max_attempts: 2, initial_interval: dur(50), ..Default::default() });
    let id = submit(&mut jobs, job("panics", vec![a])).await;
    let failed = wait_finished(&mut jobs, &id, Duration::from_secs(15)).await;
    assert_eq!(failed.state, v1::JobState::Failed as i32);
    let t = tasks(&mut jobs, &id).await.remove(0);
    assert_eq!((t.attempt, t.error_kind.as_str()), (2, "handler_panic"), "{t:?}");
    assert!(t.error_message.contains("index out of bounds"), "{}", t.error_message);
    // The one slot of this worker is free again.
    let mut s = step("b", "sleep", "api", &[]);
    s.config_json = json!({"duration": "10ms"}).to_string();
    let next = submit(&mut jobs, job("after", vec![s])).await;
    let after = wait_finished(&mut jobs, &next, Duration::from_secs(15)).await;
    assert_eq!(after.state, v1::JobState::Succeeded as i32);
    stop.cancel();
    w.await.expect("worker stops");
    m.stop().await;
    store.cleanup().await;
}
