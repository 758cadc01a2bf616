//! `WorkerService`: the lease protocol managers speak, and the registry of live workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use weir_auth::Role;
use weir_core::catalog::Queue;
use weir_core::engine::{EngineError, Failure};
use weir_core::events::{api_event, notice_message, notice_topic, stream_event, worker_event, worker_status};
use weir_core::model::TaskState;
use weir_core::quota::Demand;
use weir_core::validate::{check_name, MAX_CONFIG_BYTES};
use weir_proto::convert;
use weir_proto::v1::{self, worker_service_server::WorkerService};

use crate::scheduler::SchedError;
use crate::status::{self, invalid, parse_id};
use crate::{now_ms, Shared};

/// Longest long poll a worker may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most tasks one acquire call may take.
const MAX_ACQUIRE: u32 = 1000;
/// Most reports one CompleteTasks call may carry.
const MAX_REPORTS: usize = 1000;

/// What the master knows of a worker (in memory: workers re-register after a restart).
#[derive(Debug, Clone)]
struct WorkerInfo {
    queue: String,
    capacity: u32,
    running: u32,
    version: String,
    registered_ms: i64,
    last_seen_ms: i64,
    draining: bool,
}

/// Live workers by id.
#[derive(Default)]
pub struct Registry(Mutex<HashMap<String, WorkerInfo>>);

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, WorkerInfo>) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Notes a sign of life. A worker unknown to this master (it restarted since the worker
    /// registered) is added back when the call names its queue.
    fn seen(&self, worker: &str, queue: Option<&str>, running: Option<u32>) {
        let now = now_ms();
        self.with(|m| match m.get_mut(worker) {
            Some(w) => {
                w.last_seen_ms = now;
                if let Some(r) = running {
                    w.running = r;
                }
            }
            None => {
                if let Some(q) = queue {
                    let info = WorkerInfo {
                        queue: q.to_string(),
                        capacity: 0,
                        running: running.unwrap_or(0),
                        version: String::new(),
                        registered_ms: now,
                        last_seen_ms: now,
                        draining: false,
                    };
                    m.insert(worker.to_string(), info);
                }
            }
        });
    }
}

impl Registry {
    /// Marks a worker draining; true the first time.
    fn start_draining(&self, worker: &str) -> Option<String> {
        self.with(|m| match m.get_mut(worker) {
            Some(w) if !w.draining => {
                w.draining = true;
                Some(w.queue.clone())
            }
            _ => None,
        })
    }

    /// Removes the workers silent since `horizon`; returns them with their queues.
    fn remove_silent(&self, horizon: i64) -> Vec<(String, String)> {
        self.with(|m| {
            let gone: Vec<(String, String)> = m
                .iter()
                .filter(|(_, w)| w.last_seen_ms < horizon)
                .map(|(id, w)| (id.clone(), w.queue.clone()))
                .collect();
            for (id, _) in &gone {
                m.remove(id);
            }
            gone
        })
    }
}

/// How long a worker may be silent before it counts as gone: three heartbeat intervals.
fn silence_limit(interval: Duration) -> i64 {
    3 * i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 4)
}

/// How long a share of a fleet-wide limit lasts without a heartbeat: the silence limit, so
/// a dead worker's share comes back when it counts as gone.
pub(crate) fn quota_ttl(config: &crate::config::MasterConfig) -> i64 {
    silence_limit(config.heartbeat_interval)
}

/// Most shared limits one heartbeat may name.
const MAX_QUOTAS: usize = 1000;

/// A circuit as last reported: (state, reason, since ms), by (api, worker).
type CircuitTable = std::collections::BTreeMap<(String, String), (String, String, i64)>;

/// The last circuit each worker reported per API.
#[derive(Default)]
pub struct Circuits(Mutex<CircuitTable>);

impl Circuits {
    fn with<T>(&self, f: impl FnOnce(&mut CircuitTable) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Notes the circuit changes among a worker's notices.
    fn note(&self, worker: &str, notices: &[weir_core::model::OutboxMessage]) {
        self.with(|m| {
            for n in notices.iter().filter(|n| api_event::CIRCUIT.contains(&n.kind.as_str())) {
                let state = n.data["to"].as_str().unwrap_or_default().to_string();
                let reason = n.data["reason"].as_str().unwrap_or_default().to_string();
                m.insert((n.subject.clone(), worker.to_string()), (state, reason, n.time_ms));
            }
        })
    }

    /// Forgets a worker that is gone.
    fn forget(&self, worker: &str) {
        self.with(|m| m.retain(|(_, w), _| w != worker))
    }
}

/// Most notices one heartbeat may carry.
const MAX_NOTICES: usize = 1000;

/// A worker's notices as outbox messages; only the catalogue's API kinds are accepted.
fn notices(worker: &str, ns: &[v1::WorkerNotice]) -> Result<Vec<weir_core::model::OutboxMessage>, Status> {
    if ns.len() > MAX_NOTICES {
        return Err(invalid(format!("{} notices in one heartbeat, over the limit of {MAX_NOTICES}", ns.len())));
    }
    ns.iter()
        .map(|n| {
            if notice_topic(&n.r#type).is_none() {
                return Err(invalid(format!(
                    "notice type {:?} is not one of {:?} or {:?}",
                    n.r#type,
                    api_event::ALL,
                    stream_event::ALL
                )));
            }
            check_name("notice subject", &n.subject, 128).map_err(status::spec)?;
            if n.data_json.len() > MAX_CONFIG_BYTES {
                return Err(invalid(format!("a notice's data is over the limit of {MAX_CONFIG_BYTES} bytes")));
            }
            let data: serde_json::Value = serde_json::from_str(&n.data_json)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or_else(|| invalid("a notice's data_json must be a JSON object"))?;
            Ok(notice_message(&n.r#type, &n.subject, worker, data, n.time_ms))
        })
        .collect()
}

fn demands(qs: &[v1::QuotaDemand]) -> Result<Vec<Demand>, Status> {
    if qs.len() > MAX_QUOTAS {
        return Err(invalid(format!("{} quotas in one heartbeat, over the limit of {MAX_QUOTAS}", qs.len())));
    }
    qs.iter()
        .map(|q| {
            if q.key.is_empty() || q.key.len() > 256 || q.key.chars().any(char::is_control) {
                return Err(invalid(format!("quota key {:?} must be 1-256 printable characters", q.key)));
            }
            for (what, v) in [
                ("per_minute", q.per_minute),
                ("used_per_minute", q.used_per_minute),
                ("holding", q.holding_per_minute),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(invalid(format!("quota {:?}: {what} must be a number of at least 0", q.key)));
                }
            }
            Ok(Demand {
                key: q.key.clone(),
                per_minute: q.per_minute,
                burst: q.burst,
                used_per_minute: q.used_per_minute,
                saturated: q.saturated,
                holding_per_minute: q.holding_per_minute,
                hold_until: (q.hold_until_ms > 0).then_some(q.hold_until_ms),
            })
        })
        .collect()
}

impl Workers {
    /// A manager refused to run a task outside its sandbox (the job got past the master's
    /// check, e.g. through a symbolic link): that is a refused call as well, audited.
    async fn sandbox_refused(&self, mut audit: weir_core::audit::AuditRecord, task: Uuid, message: &str) {
        audit.target = task.to_string();
        if let Ok(Some(t)) = self.0.store.get_task(task).await {
            if let Ok(Some(job)) = self.0.store.get_job(t.job_id).await {
                audit.namespace = job.spec.namespace.clone();
            }
        }
        let refused = audit.with_outcome(weir_core::audit::Outcome::Invalid, "INVALID_ARGUMENT", message);
        self.0.audit(refused).await;
    }
}

/// Publishes `dev.weir.worker.gone` for workers that stopped heartbeating, every heartbeat
/// interval, until `cancel` fires (runs only while this master leads).
pub(crate) async fn sweep(shared: Arc<Shared>, cancel: tokio_util::sync::CancellationToken) {
    let interval = shared.config.heartbeat_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
        let now = now_ms();
        let gone = shared.registry.remove_silent(now - silence_limit(interval));
        for (id, _) in &gone {
            shared.circuits.forget(id);
        }
        if gone.is_empty() {
            continue;
        }
        let limit = humantime::format_duration(interval * 3).to_string();
        let messages = gone
            .iter()
            .map(|(id, q)| {
                tracing::warn!(worker = %id, queue = %q, "worker fell silent");
                worker_status(worker_event::GONE, id, q, json!({"reason": "silent", "silent_for": limit}), now)
            })
            .collect();
        if let Err(e) = shared.scheduler.publish(messages).await {
            tracing::warn!(error = %e, "cannot record silent workers");
        }
    }
}

/// The WorkerService implementation.
pub struct Workers(pub(crate) Arc<Shared>);

/// Longest error message kept from a failure report; the rest is cut.
const MAX_ERROR_MESSAGE: usize = 8 * 1024;

fn worker_id(s: &str) -> Result<String, Status> {
    if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(invalid("worker_id must be 1-128 characters with no control characters"));
    }
    Ok(s.to_string())
}

/// A failure's message as stored: NUL (which PostgreSQL cannot hold) replaced, length capped
/// on a character boundary. The report is kept rather than refused, so the failure counts.
fn error_message(text: String) -> String {
    let m = if text.contains('\0') { text.replace('\0', "\u{fffd}") } else { text };
    weir_core::text::shorten(m, MAX_ERROR_MESSAGE)
}

fn queue(s: &str) -> Result<String, Status> {
    s.parse::<Queue>().map(|q| q.as_str().to_string()).map_err(invalid)
}

fn lease_refs(items: &[v1::TaskHeartbeat]) -> Result<Vec<(Uuid, u64)>, Status> {
    items.iter().map(|t| Ok((parse_id("task_id", &t.task_id)?, t.fence_token))).collect()
}

fn output(text: &str) -> Result<Option<String>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_CONFIG_BYTES {
        return Err(invalid(format!("output_json is {} bytes, over the limit of {MAX_CONFIG_BYTES}", text.len())));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() => Ok(Some(text.to_string())),
        Ok(_) => Err(invalid("output_json must be a JSON object")),
        Err(e) => Err(invalid(format!("output_json is not valid JSON: {e}"))),
    }
}

impl Workers {
    /// The answer to a success report, given what the engine made of it: a task no longer
    /// in memory may have finished with this very report (a retried call).
    async fn completed(&self, task: Uuid, fence: u64, result: Result<(), SchedError>) -> Result<(), Status> {
        match result {
            Ok(()) => Ok(()),
            Err(SchedError::Engine(EngineError::TaskNotFound(_))) => {
                self.settled(task, fence, &[TaskState::Succeeded, TaskState::Compensated]).await
            }
            Err(e) => Err(status::sched(e)),
        }
    }

    /// A report for a task no longer in memory (its job finished): accepted when it repeats
    /// what is stored under the same fence (a retried call), refused otherwise.
    async fn settled(&self, task: Uuid, fence: u64, done: &[TaskState]) -> Result<(), Status> {
        let stored = self.0.store.get_task(task).await.map_err(status::store)?;
        match stored {
            Some(t) if t.fence == fence && done.contains(&t.state) => Ok(()),
            Some(t) if t.fence != fence => {
                Err(status::engine(EngineError::StaleFence { task, given: fence, current: t.fence }))
            }
            Some(t) => {
                Err(Status::failed_precondition(format!("task {task} is {}; the report does not apply", t.state)))
            }
            None => Err(Status::not_found(format!("task {task} not found"))),
        }
    }
}

#[tonic::async_trait]
impl WorkerService for Workers {
    async fn register_worker(
        &self,
        req: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let r = req.into_inner();
        let id = worker_id(&r.worker_id)?;
        let q = queue(&r.queue)?;
        if r.version.len() > 128 {
            return Err(invalid("version is longer than 128 characters"));
        }
        let now = now_ms();
        tracing::info!(worker = %id, queue = %q, capacity = r.capacity, "worker registered");
        let joined = worker_status(
            worker_event::JOINED,
            &id,
            &q,
            json!({"capacity": r.capacity, "version": r.version, "kinds": r.kinds}),
            now,
        );
        self.0.scheduler.publish(vec![joined]).await.map_err(status::sched)?;
        self.0.registry.with(|m| {
            m.insert(
                id,
                WorkerInfo {
                    queue: q,
                    capacity: r.capacity,
                    running: 0,
                    version: r.version,
                    registered_ms: now,
                    last_seen_ms: now,
                    draining: false,
                },
            )
        });
        Ok(Response::new(v1::RegisterWorkerResponse {
            heartbeat_interval: Some(convert::duration(self.0.config.heartbeat_interval)),
        }))
    }

    // Debug spans: the call's own gRPC span is what a trace shows (one span per call, not two).
    #[tracing::instrument(name = "acquire_tasks", level = "debug", skip_all)]
    async fn acquire_tasks(
        &self,
        req: Request<v1::AcquireTasksRequest>,
    ) -> Result<Response<v1::AcquireTasksResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let worker = worker_id(&r.worker_id)?;
        let q = queue(&r.queue)?;
        let max = match r.max_tasks {
            0 => 1,
            n if n > MAX_ACQUIRE => return Err(invalid(format!("max_tasks {n} is over the limit of {MAX_ACQUIRE}"))),
            n => n,
        };
        let wait = match &r.wait {
            None => Duration::ZERO,
            Some(d) => convert::from_duration("wait", d).map_err(invalid)?,
        };
        if wait > MAX_WAIT {
            return Err(invalid(format!("wait is over the limit of {}s", MAX_WAIT.as_secs())));
        }
        self.0.registry.seen(&worker, Some(&q), None);
        let leases = self.0.scheduler.acquire(q, worker, max, wait).await.map_err(status::sched)?;
        Ok(Response::new(v1::AcquireTasksResponse { leases: leases.iter().map(convert::lease).collect() }))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let worker = worker_id(&r.worker_id)?;
        let leases = lease_refs(&r.tasks)?;
        let demands = demands(&r.quotas)?;
        let notices = notices(&worker, &r.notices)?;
        self.0.registry.seen(&worker, None, Some(leases.len() as u32));
        if r.draining {
            if let Some(q) = self.0.registry.start_draining(&worker) {
                tracing::info!(worker = %worker, "worker draining");
                let held = json!({"running": leases.len()});
                let msg = worker_status(worker_event::DRAINING, &worker, &q, held, now_ms());
                self.0.scheduler.publish(vec![msg]).await.map_err(status::sched)?;
            }
        }
        if !notices.is_empty() {
            self.0.circuits.note(&worker, &notices);
            self.0.scheduler.publish(notices).await.map_err(status::sched)?;
        }
        let statuses = self.0.scheduler.heartbeat(worker.clone(), leases.clone()).await.map_err(status::sched)?;
        // The engine answers each lease in the order asked.
        let tasks =
            leases.iter().zip(statuses).map(|(&(t, fence), (_, s))| convert::lease_status(t, fence, s)).collect();
        let ttl = quota_ttl(&self.0.config);
        let grants =
            self.0.quotas.lock().unwrap_or_else(|p| p.into_inner()).heartbeat(&worker, &demands, now_ms(), ttl);
        let valid_for = convert::duration(Duration::from_millis(u64::try_from(ttl).unwrap_or(0)));
        let quotas = grants
            .into_iter()
            .map(|g| v1::QuotaGrant {
                key: g.key,
                per_minute: g.per_minute,
                burst: g.burst,
                hold_until_ms: g.hold_until.unwrap_or(0),
                valid_for: Some(valid_for),
                growing: g.growing,
            })
            .collect();
        Ok(Response::new(v1::HeartbeatResponse { tasks, quotas }))
    }

    #[tracing::instrument(name = "complete_task", level = "debug", skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn complete_task(
        &self,
        req: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let task = parse_id("task_id", &r.task_id)?;
        let out = output(&r.output_json)?;
        let result = self.0.scheduler.complete(task, r.fence_token, out).await;
        self.completed(task, r.fence_token, result).await?;
        Ok(Response::new(v1::CompleteTaskResponse {}))
    }

    #[tracing::instrument(name = "complete_tasks", level = "debug", skip_all, fields(reports = req.get_ref().tasks.len()))]
    async fn complete_tasks(
        &self,
        req: Request<v1::CompleteTasksRequest>,
    ) -> Result<Response<v1::CompleteTasksResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        if r.tasks.len() > MAX_REPORTS {
            return Err(invalid(format!("{} reports in one call, over the limit of {MAX_REPORTS}", r.tasks.len())));
        }
        // A malformed report is answered on its own; the others go to the engine together.
        let mut answers: Vec<Option<Status>> = Vec::with_capacity(r.tasks.len());
        let mut asked = Vec::with_capacity(r.tasks.len());
        for t in r.tasks {
            match parse_id("task_id", &t.task_id).and_then(|id| Ok((id, output(&t.output_json)?))) {
                Ok((id, out)) => {
                    asked.push((id, t.fence_token, out));
                    answers.push(None);
                }
                Err(s) => answers.push(Some(s)),
            }
        }
        let keys: Vec<(Uuid, u64)> = asked.iter().map(|(id, fence, _)| (*id, *fence)).collect();
        // Each report counts as the CompleteTask call it stands for, so the lease protocol's
        // failure ratio reads the same whether a manager batches or not (the alerts leave
        // CompleteTasks calls themselves out).
        let count = |code| weir_runtime::metrics::count_call("weir.v1.WorkerService", "CompleteTask", code);
        let mut results = match self.0.scheduler.complete_many(asked).await {
            Ok(results) => results.into_iter(),
            Err(e) => {
                let status = status::sched(e);
                answers.iter().for_each(|_| count(status.code()));
                return Err(status);
            }
        };
        let mut keys = keys.into_iter();
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            let status = match answer {
                Some(refused) => refused,
                None => {
                    let (Some((task, fence)), Some(result)) = (keys.next(), results.next()) else {
                        return Err(Status::internal("the engine answered fewer reports than it was given"));
                    };
                    match self.completed(task, fence, result.map_err(SchedError::Engine)).await {
                        Ok(()) => Status::ok(""),
                        Err(s) => s,
                    }
                }
            };
            count(status.code());
            outcomes.push(v1::ReportOutcome { code: status.code() as i32, message: status.message().to_string() });
        }
        Ok(Response::new(v1::CompleteTasksResponse { outcomes }))
    }

    #[tracing::instrument(name = "fail_task", level = "debug", skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn fail_task(&self, req: Request<v1::FailTaskRequest>) -> Result<Response<v1::FailTaskResponse>, Status> {
        self.0.check_ready()?;
        let who = weir_runtime::auth::caller(&req);
        let audit = crate::jobs::record(&req, &who, "RunTask");
        let r = req.into_inner();
        let task = parse_id("task_id", &r.task_id)?;
        if r.error_kind.is_empty() {
            return Err(invalid("error_kind is required (e.g. \"io\", \"bad_input\")"));
        }
        check_name("error_kind", &r.error_kind, 64).map_err(status::spec)?;
        let refused = (r.error_kind == weir_core::sandbox::REFUSED_KIND).then(|| r.message.clone());
        let failure = Failure { kind: r.error_kind, message: error_message(r.message), retryable: r.retryable };
        let will_retry = match self.0.scheduler.fail(task, r.fence_token, failure).await {
            Ok(w) => w,
            Err(SchedError::Engine(EngineError::TaskNotFound(_))) => {
                self.settled(task, r.fence_token, &[TaskState::Failed, TaskState::Cancelled]).await?;
                false
            }
            Err(e) => return Err(status::sched(e)),
        };
        if let Some(why) = refused {
            self.sandbox_refused(audit, task, &why).await;
        }
        Ok(Response::new(v1::FailTaskResponse { will_retry }))
    }

    async fn release_tasks(
        &self,
        req: Request<v1::ReleaseTasksRequest>,
    ) -> Result<Response<v1::ReleaseTasksResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let worker = worker_id(&r.worker_id)?;
        let released = self.0.scheduler.release(worker, lease_refs(&r.tasks)?).await.map_err(status::sched)?;
        Ok(Response::new(v1::ReleaseTasksResponse { released }))
    }

    async fn deregister_worker(
        &self,
        req: Request<v1::DeregisterWorkerRequest>,
    ) -> Result<Response<v1::DeregisterWorkerResponse>, Status> {
        self.0.check_ready()?;
        let worker = worker_id(&req.into_inner().worker_id)?;
        let released = self.0.scheduler.release_worker(worker.clone()).await.map_err(status::sched)?;
        self.0.quotas.lock().unwrap_or_else(|p| p.into_inner()).forget(&worker);
        self.0.circuits.forget(&worker);
        if let Some(w) = self.0.registry.with(|m| m.remove(&worker)) {
            let detail = json!({"reason": "deregistered", "released": released});
            let gone = worker_status(worker_event::GONE, &worker, &w.queue, detail, now_ms());
            self.0.scheduler.publish(vec![gone]).await.map_err(status::sched)?;
        }
        tracing::info!(worker = %worker, released, "worker deregistered");
        Ok(Response::new(v1::DeregisterWorkerResponse { released }))
    }

    async fn list_quotas(
        &self,
        _req: Request<v1::ListQuotasRequest>,
    ) -> Result<Response<v1::ListQuotasResponse>, Status> {
        let ttl = quota_ttl(&self.0.config);
        let views = self.0.quotas.lock().unwrap_or_else(|p| p.into_inner()).view(now_ms(), ttl);
        let quotas = views
            .into_iter()
            .map(|v| v1::Quota {
                key: v.key,
                per_minute: v.per_minute,
                burst: v.burst,
                hold_until_ms: v.hold_until.unwrap_or(0),
                shares: v
                    .shares
                    .into_iter()
                    .map(|(worker_id, per_minute, burst, used_per_minute, saturated)| v1::QuotaShare {
                        worker_id,
                        per_minute,
                        burst,
                        used_per_minute,
                        saturated,
                    })
                    .collect(),
            })
            .collect();
        let circuits = self.0.circuits.with(|m| {
            m.iter()
                .map(|((api, worker), (state, reason, since))| v1::ApiCircuit {
                    api: api.clone(),
                    worker_id: worker.clone(),
                    state: state.clone(),
                    reason: reason.clone(),
                    since: Some(convert::timestamp(*since)),
                })
                .collect()
        });
        Ok(Response::new(v1::ListQuotasResponse { quotas, circuits }))
    }

    async fn get_watermark(
        &self,
        req: Request<v1::GetWatermarkRequest>,
    ) -> Result<Response<v1::GetWatermarkResponse>, Status> {
        let who = weir_runtime::auth::caller(&req);
        let audit = crate::jobs::record(&req, &who, "GetWatermark");
        let r = req.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("key: name the watermark (<job name>/<resource>)"));
        }
        let namespace =
            if r.namespace.is_empty() { weir_core::validate::DEFAULT_NAMESPACE } else { r.namespace.as_str() };
        if !who.grants.allows_everywhere(Role::Worker) && !who.may(namespace, Role::Read) {
            let status = Status::permission_denied(format!("{} may not read namespace {namespace:?}", who.subject));
            return Err(self.0.refused(audit, status).await);
        }
        let w = self.0.store.watermark(namespace, &r.key).await.map_err(status::store)?;
        Ok(Response::new(v1::GetWatermarkResponse { watermark: w.as_ref().map(convert::watermark) }))
    }

    async fn list_watermarks(
        &self,
        req: Request<v1::ListWatermarksRequest>,
    ) -> Result<Response<v1::ListWatermarksResponse>, Status> {
        let who = weir_runtime::auth::caller(&req);
        let audit = crate::jobs::record(&req, &who, "ListWatermarks");
        let r = req.into_inner();
        let allowed = if r.namespace.is_empty() {
            who.grants.allows_everywhere(Role::Read)
        } else {
            who.may(&r.namespace, Role::Read)
        };
        if !allowed {
            let needs = if r.namespace.is_empty() { "*" } else { r.namespace.as_str() };
            let status = Status::permission_denied(format!(
                "{} may not list these watermarks (needs {needs}:read)",
                who.subject
            ));
            return Err(self.0.refused(audit, status).await);
        }
        let limit = if r.limit == 0 { 1000 } else { r.limit.min(10_000) };
        let all = self.0.store.list_watermarks(&r.namespace, limit).await.map_err(status::store)?;
        Ok(Response::new(v1::ListWatermarksResponse { watermarks: all.iter().map(convert::watermark).collect() }))
    }

    async fn list_workers(
        &self,
        _req: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        // Workers silent for three heartbeat intervals are gone (the sweeper removes them).
        let horizon = now_ms() - silence_limit(self.0.config.heartbeat_interval);
        let workers = self.0.registry.with(|m| {
            let mut v: Vec<v1::Worker> = m
                .iter()
                .filter(|(_, w)| w.last_seen_ms >= horizon)
                .map(|(id, w)| v1::Worker {
                    worker_id: id.clone(),
                    queue: w.queue.clone(),
                    capacity: w.capacity,
                    running: w.running,
                    registered_at: Some(convert::timestamp(w.registered_ms)),
                    last_seen_at: Some(convert::timestamp(w.last_seen_ms)),
                    version: w.version.clone(),
                })
                .collect();
            v.sort_by(|a, b| (&a.queue, &a.worker_id).cmp(&(&b.queue, &b.worker_id)));
            v
        });
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_storable() {
        assert_eq!(error_message("a\0b".into()), "a\u{fffd}b");
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let m = error_message(long);
        assert!(m.len() <= MAX_ERROR_MESSAGE + "…".len() && m.ends_with('…'));
        assert!(worker_id("w\0").is_err());
        assert!(worker_id("api-manager-7f3a").is_ok());
    }
}
