//! The lease loop: register, acquire (long poll), run, heartbeat, report, hand back.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tracing::Instrument;
use uuid::Uuid;
use weir_core::catalog::Queue;
use weir_proto::convert;
use weir_proto::v1::{self, worker_service_client::WorkerServiceClient};
use weir_runtime::grpc::AuthedChannel as Channel;

use crate::completions::{report, Completions};
use crate::notice::Notices;
use crate::quota::Quotas;
use crate::{StepHandler, TaskContext, WorkerError};

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// e.g. `http://127.0.0.1:50051`.
    pub master_url: String,
    pub queue: Queue,
    /// Unique per process.
    pub worker_id: String,
    /// Most tasks in flight.
    pub concurrency: u32,
    /// Longest long poll.
    pub poll_wait: Duration,
    /// On shutdown, how long running tasks may finish before they are handed back.
    pub drain_timeout: Duration,
    /// The token and TLS of calls to the master.
    pub security: weir_runtime::security::ClientSecurity,
    /// What a task may touch, checked again here before it runs (the master checked it at
    /// submission): a task outside it fails without being run.
    pub sandbox: Arc<weir_core::sandbox::Policy>,
}

/// Why a running task's token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The master cancelled the job: a finished step is still reported (so it can be
    /// compensated); an unfinished one is handed back and settles as cancelled.
    Cancelled,
    /// The lease is gone: report nothing.
    Lost,
    /// This worker is shutting down: a finished step is reported, an unfinished one handed
    /// back for another worker.
    Shutdown,
}

struct InFlight {
    heartbeat_timeout: Duration,
    token: CancellationToken,
    stop: Option<Stop>,
}

/// In-flight tasks by (task id, fence): a late run of an old lease and the new lease of the
/// same task are two entries.
type Table = Arc<Mutex<HashMap<(Uuid, u64), InFlight>>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<(Uuid, u64), InFlight>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker: see the crate docs.
pub struct Worker {
    cfg: WorkerConfig,
    client: WorkerServiceClient<Channel>,
    handlers: HashMap<&'static str, Arc<dyn StepHandler>>,
    table: Table,
    quotas: Quotas,
    notices: Notices,
    ready: Readiness,
}

/// Whether the worker is in touch with the master: true once it registered and while its
/// calls to the master succeed, false while they fail (a manager's readiness probe).
#[derive(Clone, Default)]
pub struct Readiness(Arc<tokio::sync::watch::Sender<bool>>);

impl Readiness {
    /// Changes it (waking watchers only on a change).
    pub fn set(&self, ready: bool) {
        self.0.send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// Follows its changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// Who heartbeats: the worker's id and its readiness.
struct Me {
    id: String,
    ready: Readiness,
}

impl Worker {
    /// A worker for `cfg` running `handlers`.
    pub fn new(cfg: WorkerConfig, handlers: Vec<Arc<dyn StepHandler>>) -> Result<Worker, WorkerError> {
        if cfg.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        let channel = weir_runtime::grpc::channel(&cfg.master_url, &cfg.security)?;
        let mut by_kind = HashMap::new();
        for h in handlers {
            for k in h.kinds() {
                by_kind.insert(*k, h.clone());
            }
        }
        Ok(Worker {
            cfg,
            client: WorkerServiceClient::new(channel),
            handlers: by_kind,
            table: Arc::default(),
            quotas: Quotas::local(),
            notices: Notices::default(),
            ready: Readiness::default(),
        })
    }

    /// Reports whether the worker is in touch with the master to `ready`.
    pub fn with_readiness(mut self, ready: Readiness) -> Worker {
        self.ready = ready;
        self
    }

    /// Carries `notices` to the master on this worker's heartbeats.
    pub fn with_notices(mut self, notices: Notices) -> Worker {
        self.notices = notices;
        self
    }

    /// Shares the fleet-wide limits of `quotas` over this worker's heartbeats.
    pub fn with_quotas(mut self, quotas: Quotas) -> Worker {
        self.quotas = quotas;
        self
    }

    /// Runs until `cancel` fires, then drains and deregisters.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let interval = match self.register(&cancel).await? {
            Some(i) => i,
            None => return Ok(()),
        };
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency as usize));
        let hb_stop = CancellationToken::new();
        let hb = tokio::spawn(heartbeats(
            self.client.clone(),
            Me { id: self.cfg.worker_id.clone(), ready: self.ready.clone() },
            self.table.clone(),
            self.quotas.clone(),
            self.notices.clone(),
            interval,
            hb_stop.clone(),
        ));
        tracing::info!(worker = %self.cfg.worker_id, queue = %self.cfg.queue, "taking work");
        let completions = Completions::start(self.client.clone(), self.cfg.worker_id.clone());
        self.acquire_loop(&cancel, &permits, &tracker, &completions).await;

        // Shutdown: no new work; running tasks get the grace period, then are handed back.
        tracker.close();
        let mut client = self.client.clone();
        let draining = v1::HeartbeatRequest {
            worker_id: self.cfg.worker_id.clone(),
            tasks: vec![],
            draining: true,
            quotas: vec![],
            notices: vec![],
        };
        if let Err(s) = client.heartbeat(draining).await {
            // Normal when the master stops at the same time (`weir dev`): it is not an error.
            tracing::info!(error = %s.message(), "could not tell the master this worker is draining");
        }
        if tokio::time::timeout(self.cfg.drain_timeout, tracker.wait()).await.is_err() {
            let left: Vec<CancellationToken> = lock(&self.table)
                .values_mut()
                .map(|f| {
                    f.stop.get_or_insert(Stop::Shutdown);
                    f.token.clone()
                })
                .collect();
            tracing::info!(tasks = left.len(), "grace period over; handing leases back");
            left.iter().for_each(CancellationToken::cancel);
            tracker.wait().await;
        }
        hb_stop.cancel();
        let _ = hb.await;
        let _ = client.deregister_worker(v1::DeregisterWorkerRequest { worker_id: self.cfg.worker_id.clone() }).await;
        tracing::info!(worker = %self.cfg.worker_id, "stopped");
        Ok(())
    }

    /// Registers, retrying while the master is unreachable. `None` if cancelled first.
    async fn register(&self, cancel: &CancellationToken) -> Result<Option<Duration>, WorkerError> {
        let mut client = self.client.clone();
        let mut delay = Duration::from_millis(100);
        loop {
            let req = v1::RegisterWorkerRequest {
                worker_id: self.cfg.worker_id.clone(),
                queue: self.cfg.queue.as_str().to_string(),
                capacity: self.cfg.concurrency,
                version: env!("CARGO_PKG_VERSION").to_string(),
                kinds: self.handlers.keys().map(|k| k.to_string()).collect(),
            };
            match client.register_worker(req).await {
                Ok(r) => {
                    self.ready.set(true);
                    let i = r.into_inner().heartbeat_interval.map(|d| convert::from_duration("heartbeat_interval", &d));
                    return Ok(Some(i.and_then(Result::ok).unwrap_or(Duration::from_secs(5))));
                }
                Err(s) if s.code() == Code::InvalidArgument => return Err(s.into()),
                Err(s) => {
                    self.ready.set(false);
                    tracing::warn!(error = %s.message(), "master not reachable yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Ok(None),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn acquire_loop(
        &self,
        cancel: &CancellationToken,
        permits: &Arc<Semaphore>,
        tracker: &TaskTracker,
        completions: &Completions,
    ) {
        let mut client = self.client.clone();
        let mut delay = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = cancel.cancelled() => return,
            };
            let mut held = vec![first];
            while let Ok(p) = permits.clone().try_acquire_owned() {
                held.push(p);
            }
            let req = v1::AcquireTasksRequest {
                worker_id: self.cfg.worker_id.clone(),
                queue: self.cfg.queue.as_str().to_string(),
                max_tasks: held.len() as u32,
                wait: Some(convert::duration(self.cfg.poll_wait)),
            };
            let leases = tokio::select! {
                r = client.acquire_tasks(req) => r,
                _ = cancel.cancelled() => return,
            };
            let leases = match leases {
                Ok(r) => {
                    self.ready.set(true);
                    delay = Duration::from_millis(100);
                    r.into_inner().leases
                }
                Err(s) => {
                    self.ready.set(false);
                    tracing::warn!(code = ?s.code(), error = %s.message(), "acquire failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            for lease in leases {
                let Some(permit) = held.pop() else { break };
                let Some(ctx) = self.context(&lease) else {
                    tracing::error!(task_id = %lease.task_id, "master sent a malformed lease");
                    continue;
                };
                let handler = self.handlers.get(ctx.kind.as_str()).cloned();
                let (client, table, worker) = (self.client.clone(), self.table.clone(), self.cfg.worker_id.clone());
                let completions = completions.clone();
                let queue = self.cfg.queue;
                let span = tracing::info_span!(
                    "run_task",
                    otel.name = %format!("{} {}", queue.as_str(), ctx.kind),
                    task_id = %ctx.task_id,
                    job_id = %ctx.job_id,
                    step = %ctx.step_id,
                    kind = %ctx.kind,
                    attempt = ctx.attempt,
                );
                // The work is a span of the job's trace (when traces are exported).
                weir_runtime::telemetry::set_parent(&span, &lease.traceparent);
                tracker.spawn(
                    async move {
                        execute(client, &completions, table, worker, handler, queue, ctx).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }

    fn context(&self, l: &v1::TaskLease) -> Option<TaskContext> {
        let task_id = Uuid::parse_str(&l.task_id).ok()?;
        let heartbeat_timeout = l
            .heartbeat_timeout
            .as_ref()
            .and_then(|d| convert::from_duration("heartbeat_timeout", d).ok())
            .unwrap_or(weir_core::spec::DEFAULT_HEARTBEAT);
        let token = CancellationToken::new();
        lock(&self.table)
            .insert((task_id, l.fence_token), InFlight { heartbeat_timeout, token: token.clone(), stop: None });
        Some(TaskContext {
            task_id,
            job_id: Uuid::parse_str(&l.job_id).ok()?,
            step_id: l.step_id.clone(),
            kind: l.kind.clone(),
            config: if l.config_json.is_empty() { None } else { serde_json::from_str(&l.config_json).ok() },
            attempt: l.attempt,
            fence: l.fence_token,
            compensation: l.compensation,
            inputs: l.inputs_json.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            namespace: l.namespace.clone(),
            job_name: l.job_name.clone(),
            heartbeat_timeout,
            cancel: token,
            master: Some(self.client.clone()),
            sandbox: self.cfg.sandbox.clone(),
        })
    }
}

/// Runs one task and reports its outcome with the lease's fence token (in the task's
/// `run_task` span, made by the caller).
async fn execute(
    client: WorkerServiceClient<Channel>,
    completions: &Completions,
    table: Table,
    worker: String,
    handler: Option<Arc<dyn crate::StepHandler>>,
    queue: weir_core::catalog::Queue,
    ctx: TaskContext,
) {
    let metrics = &crate::metrics::WORKER;
    // Counted down when this future ends, however it ends.
    let _running = crate::metrics::InFlight::start(queue.as_str());
    let started = std::time::Instant::now();
    let outside = crate::sandbox::check(&ctx.sandbox, queue, &ctx).err();
    let result = match &handler {
        _ if outside.is_some() => {
            let why = outside.unwrap_or_default();
            tracing::warn!(error = %why, "task refused by the sandbox");
            Err(crate::StepError::permanent(weir_core::sandbox::REFUSED_KIND, why))
        }
        // A panicking handler fails its attempt instead of leaving a lease heartbeating forever.
        Some(h) => match AssertUnwindSafe(h.run(&ctx)).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                tracing::error!(panic = %what, "step handler panicked");
                Err(crate::StepError::retryable("handler_panic", format!("the step handler panicked: {what}")))
            }
        },
        None => Err(crate::StepError::permanent(
            "unknown_kind",
            format!("no handler for kind {:?} on this worker", ctx.kind),
        )),
    };
    let stop = lock(&table).remove(&(ctx.task_id, ctx.fence)).and_then(|f| f.stop);
    let outcome = match (&stop, &result) {
        (Some(Stop::Lost), _) => "lost",
        (Some(Stop::Cancelled) | Some(Stop::Shutdown), Err(_)) => "released",
        (_, Ok(_)) => "succeeded",
        (_, Err(_)) => "failed",
    };
    let labels =
        crate::metrics::TaskLabels { queue: queue.as_str().into(), kind: ctx.kind.clone(), outcome: outcome.into() };
    metrics.tasks.get_or_create(&labels).inc();
    metrics.run_time.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let (task_id, fence_token) = (ctx.task_id.to_string(), ctx.fence);
    match (stop, result) {
        (Some(Stop::Lost), _) => tracing::warn!("lease lost; result dropped"),
        (Some(Stop::Cancelled) | Some(Stop::Shutdown), Err(_)) => {
            let req =
                v1::ReleaseTasksRequest { worker_id: worker, tasks: vec![v1::TaskHeartbeat { task_id, fence_token }] };
            report(|| {
                let (mut c, r) = (client.clone(), req.clone());
                async move { c.release_tasks(r).await }
            })
            .await;
        }
        (_, Ok(output)) => {
            let req =
                v1::CompleteTaskRequest { worker_id: worker, task_id, fence_token, output_json: output.to_string() };
            completions.complete(req).await;
        }
        (None, Err(e)) => {
            tracing::info!(error = %e, "step failed");
            let req = v1::FailTaskRequest {
                worker_id: worker,
                task_id,
                fence_token,
                error_kind: e.kind,
                message: e.message,
                retryable: e.retryable,
                details_json: String::new(),
            };
            report(|| {
                let (mut c, r) = (client.clone(), req.clone());
                async move { c.fail_task(r).await }
            })
            .await;
        }
    }
}

/// Heartbeats every in-flight task in one call, often enough for the shortest timeout.
async fn heartbeats(
    mut client: WorkerServiceClient<Channel>,
    me: Me,
    table: Table,
    quotas: Quotas,
    notices: Notices,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let (tasks, wait) = {
            let t = lock(&table);
            let shortest = t.values().map(|f| f.heartbeat_timeout / 3).min().unwrap_or(interval);
            let tasks: Vec<v1::TaskHeartbeat> = t
                .iter()
                // A task told to stop is still renewed until it reports; a lost one is not.
                .filter(|(_, f)| f.stop != Some(Stop::Lost))
                .map(|((id, fence), _)| v1::TaskHeartbeat { task_id: id.to_string(), fence_token: *fence })
                .collect();
            (tasks, interval.min(shortest).max(Duration::from_millis(50)))
        };
        // Sent even with nothing in flight: it is also the worker's liveness signal.
        let mut wait = wait;
        {
            let asked = std::time::Instant::now();
            let sent = notices.take();
            let req = v1::HeartbeatRequest {
                worker_id: me.id.clone(),
                tasks,
                draining: false,
                quotas: quotas.demands(),
                notices: sent.clone(),
            };
            match client.heartbeat(req).await {
                Ok(r) => {
                    me.ready.set(true);
                    let r = r.into_inner();
                    if quotas.apply(&r.quotas, asked) {
                        wait = wait.min(interval / 5);
                    }
                    let mut t = lock(&table);
                    for s in r.tasks {
                        let Ok(id) = Uuid::parse_str(&s.task_id) else { continue };
                        let stop = match v1::LeaseStatus::try_from(s.status) {
                            Ok(v1::LeaseStatus::Cancelled) => Stop::Cancelled,
                            Ok(v1::LeaseStatus::Lost) => Stop::Lost,
                            _ => continue,
                        };
                        if let Some(f) = t.get_mut(&(id, s.fence_token)) {
                            if f.stop != Some(stop) {
                                tracing::info!(task_id = %id, ?stop, "stopping task");
                                f.stop = Some(stop);
                                f.token.cancel();
                            }
                        }
                    }
                }
                Err(s) => {
                    me.ready.set(false);
                    tracing::warn!(error = %s.message(), "heartbeat failed");
                    // Refused as invalid, they would be refused again.
                    if s.code() != Code::InvalidArgument {
                        notices.put_back(sent);
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = quotas.woken() => {}
            _ = stop.cancelled() => return,
        }
    }
}
