//! Success reports, coalesced. A busy worker finishes tasks faster than one report call
//! per task can carry them: every report waits in one queue, and one sender sends what has
//! gathered while its previous call was out — one `CompleteTask` when it is a single report
//! (an idle worker's, so a chain's next step waits for nothing, and the master's span joins
//! the task's trace), one `CompleteTasks` of up to [`MAX_BATCH`] otherwise. Each task's
//! future resolves when its own report was answered, so a task holds its slot until then
//! exactly as with single calls.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tracing::Instrument;
use weir_proto::v1::{self, worker_service_client::WorkerServiceClient};
use weir_runtime::grpc::AuthedChannel as Channel;

/// Most reports in one call (the master's limit).
pub(crate) const MAX_BATCH: usize = 1000;

/// Attempts of a report while the master is unavailable, before it is abandoned (the lease
/// then expires and the task runs again).
const ATTEMPTS: usize = 30;

struct Report {
    req: v1::CompleteTaskRequest,
    /// The task's span, for a report sent alone.
    span: tracing::Span,
    done: oneshot::Sender<()>,
}

/// The queue of a worker's success reports; cheap to clone.
#[derive(Clone)]
pub(crate) struct Completions(mpsc::UnboundedSender<Report>);

impl Completions {
    /// Starts the sender; it ends when every clone of the returned queue is dropped.
    pub(crate) fn start(client: WorkerServiceClient<Channel>, worker: String) -> Completions {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(client, worker, rx));
        Completions(tx)
    }

    /// Reports a success; returns when the master answered it (or it was abandoned).
    pub(crate) async fn complete(&self, req: v1::CompleteTaskRequest) {
        let (done, answered) = oneshot::channel();
        if self.0.send(Report { req, span: tracing::Span::current(), done }).is_ok() {
            let _ = answered.await;
        }
    }
}

async fn send_loop(mut client: WorkerServiceClient<Channel>, worker: String, mut rx: mpsc::UnboundedReceiver<Report>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // A master older than CompleteTasks gets single calls.
    let mut batches = true;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() == 1 || !batches {
            for r in batch.drain(..) {
                let span = r.span.clone();
                single(&mut client, r.req).instrument(span).await;
                let _ = r.done.send(());
            }
            continue;
        }
        let reports: Vec<Report> = std::mem::take(&mut batch);
        if !several(&mut client, &worker, &reports).await {
            batches = false;
            tracing::info!("the master does not take batched reports; sending them one by one");
            for r in &reports {
                single(&mut client, r.req.clone()).instrument(r.span.clone()).await;
            }
        }
        reports.into_iter().for_each(|r| {
            let _ = r.done.send(());
        });
    }
}

/// Whether a code says "try again": the master is restarting, failing over or busy.
fn transient(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::DeadlineExceeded)
}

fn backoff(delay: &mut Duration) -> tokio::time::Sleep {
    let sleep = tokio::time::sleep(*delay);
    *delay = (*delay * 2).min(Duration::from_secs(2));
    sleep
}

/// One `CompleteTask` call, retried while the master is unavailable (reports are idempotent).
async fn single(client: &mut WorkerServiceClient<Channel>, req: v1::CompleteTaskRequest) {
    let mut delay = Duration::from_millis(50);
    for _ in 0..ATTEMPTS {
        match client.complete_task(req.clone()).await {
            Ok(_) => return,
            Err(s) if transient(s.code()) => backoff(&mut delay).await,
            Err(s) => {
                tracing::warn!(code = ?s.code(), error = %s.message(), "report refused");
                return;
            }
        }
    }
    tracing::error!("master unavailable; report abandoned (the lease will expire and the task retry)");
}

/// `CompleteTasks` calls until every report was answered (those answered "unavailable" are
/// sent again). False when the master does not know the method: nothing was reported.
async fn several(client: &mut WorkerServiceClient<Channel>, worker: &str, reports: &[Report]) -> bool {
    let mut left: Vec<&v1::CompleteTaskRequest> = reports.iter().map(|r| &r.req).collect();
    let mut delay = Duration::from_millis(50);
    for _ in 0..ATTEMPTS {
        let req = v1::CompleteTasksRequest {
            worker_id: worker.to_string(),
            tasks: left.iter().map(|r| (*r).clone()).collect(),
        };
        match client.complete_tasks(req).await {
            Ok(r) => {
                let outcomes = r.into_inner().outcomes;
                let mut again = Vec::new();
                for (i, report) in left.iter().enumerate() {
                    // A missing answer is as good as "unavailable": sent again.
                    let (code, message) =
                        outcomes.get(i).map_or((Code::Unavailable, ""), |o| (Code::from(o.code), o.message.as_str()));
                    if transient(code) {
                        again.push(*report);
                    } else if code != Code::Ok {
                        tracing::warn!(task_id = %report.task_id, ?code, error = %message, "report refused");
                    }
                }
                if again.is_empty() {
                    return true;
                }
                left = again;
            }
            Err(s) if s.code() == Code::Unimplemented => return false,
            Err(s) if transient(s.code()) => {}
            Err(s) => {
                tracing::warn!(code = ?s.code(), error = %s.message(), reports = left.len(), "reports refused");
                return true;
            }
        }
        backoff(&mut delay).await;
    }
    tracing::error!(
        reports = left.len(),
        "master unavailable; reports abandoned (the leases will expire and the tasks retry)"
    );
    true
}
