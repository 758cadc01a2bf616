//! Success reports, coalesced. A busy worker finishes tasks faster than one report call
//! per task can carry them: every report waits in one queue, and one sender sends what has
//! gathered while its previous call was out — one `CompleteTask` when it is a single report
//! (an idle worker's, so a chain's next step waits for nothing, and the master's span joins
//! the task's trace), one `CompleteTasks` of up to [`MAX_BATCH`] reports and
//! [`MAX_BATCH_BYTES`] of outputs otherwise. Each task's future resolves when its own
//! report was answered, so a task holds its slot until then exactly as with single calls.

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
    let mut taken = Vec::with_capacity(MAX_BATCH);
    // A master older than CompleteTasks gets single calls.
    let mut batches = true;
    while rx.recv_many(&mut taken, MAX_BATCH).await > 0 {
        for chunk in chunks(std::mem::take(&mut taken)) {
            let unsent = if batches && chunk.len() > 1 {
                match several(&mut client, &worker, chunk).await {
                    Sent::All => continue,
                    Sent::Unknown(chunk) => {
                        batches = false;
                        tracing::info!("the master does not take batched reports; sending them one by one");
                        chunk
                    }
                    Sent::Refused(chunk) => chunk,
                }
            } else {
                chunk
            };
            // One call each, all at once (as each task would have sent its own).
            futures_util::future::join_all(unsent.into_iter().map(|r| {
                let client = &client;
                async move {
                    single(client, r.req).instrument(r.span).await;
                    let _ = r.done.send(());
                }
            }))
            .await;
        }
    }
}

/// Most bytes of outputs in one call, well inside the master's 4 MiB message limit.
const MAX_BATCH_BYTES: usize = 3 << 20;

/// The reports in calls of at most [`MAX_BATCH_BYTES`] of outputs each.
fn chunks(reports: Vec<Report>) -> Vec<Vec<Report>> {
    let mut out: Vec<Vec<Report>> = Vec::new();
    let mut bytes = 0;
    for r in reports {
        let size = r.req.output_json.len() + r.req.task_id.len() + 16;
        match out.last_mut() {
            Some(last) if bytes + size <= MAX_BATCH_BYTES => last.push(r),
            _ => {
                bytes = 0;
                out.push(vec![r]);
            }
        }
        bytes += size;
    }
    out
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

/// One `CompleteTask` call, retried while the master is unavailable.
async fn single(client: &WorkerServiceClient<Channel>, req: v1::CompleteTaskRequest) {
    report(|| {
        let (mut c, r) = (client.clone(), req.clone());
        async move { c.complete_task(r).await }
    })
    .await;
}

/// Sends a report, retrying while the master is unavailable (reports are idempotent).
pub(crate) async fn report<T, F, Fut>(mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    for _ in 0..ATTEMPTS {
        match call().await {
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

/// What came of a batch.
enum Sent {
    /// Every report was answered (or abandoned after the master stayed unavailable).
    All,
    /// The master does not know CompleteTasks: these are still to be sent.
    Unknown(Vec<Report>),
    /// The call as a whole was refused (not for being unavailable): these are still to be
    /// sent, one by one, for an answer each.
    Refused(Vec<Report>),
}

/// `CompleteTasks` calls until every report was answered; a report's task is told as soon
/// as its own answer is final, and those answered "unavailable" are sent again.
async fn several(client: &mut WorkerServiceClient<Channel>, worker: &str, reports: Vec<Report>) -> Sent {
    let mut left = reports;
    let mut delay = Duration::from_millis(50);
    for _ in 0..ATTEMPTS {
        let tasks = left.iter().map(|r| r.req.clone()).collect();
        match client.complete_tasks(v1::CompleteTasksRequest { worker_id: worker.to_string(), tasks }).await {
            Ok(r) => {
                let outcomes = r.into_inner().outcomes;
                let mut again = Vec::new();
                for (i, report) in left.into_iter().enumerate() {
                    // A missing answer is as good as "unavailable": sent again.
                    let (code, message) =
                        outcomes.get(i).map_or((Code::Unavailable, ""), |o| (Code::from(o.code), o.message.as_str()));
                    if transient(code) {
                        again.push(report);
                        continue;
                    }
                    if code != Code::Ok {
                        tracing::warn!(task_id = %report.req.task_id, ?code, error = %message, "report refused");
                    }
                    let _ = report.done.send(());
                }
                if again.is_empty() {
                    return Sent::All;
                }
                left = again;
            }
            Err(s) if s.code() == Code::Unimplemented => return Sent::Unknown(left),
            Err(s) if transient(s.code()) => {}
            Err(s) => {
                tracing::warn!(code = ?s.code(), error = %s.message(), reports = left.len(), "batch refused; reporting one by one");
                return Sent::Refused(left);
            }
        }
        backoff(&mut delay).await;
    }
    tracing::error!(
        reports = left.len(),
        "master unavailable; reports abandoned (the leases will expire and the tasks retry)"
    );
    left.into_iter().for_each(|r| {
        let _ = r.done.send(());
    });
    Sent::All
}
