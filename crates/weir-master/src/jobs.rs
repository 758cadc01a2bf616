//! `JobService`: what clients call to submit, inspect and steer jobs.
//!
//! Reads go to the store (every reply of a write comes after its commit, so the store is
//! never behind what a client was told); writes go through the scheduler.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;
use weir_auth::{Principal, Role, Scope};
use weir_core::audit::{AuditRecord, Outcome};
use weir_core::events::header;
use weir_core::model::{EventRecord, JobRecord};
use weir_core::trace::TraceParent;
use weir_core::validate::{check_name, ValidJob};
use weir_proto::convert;
use weir_proto::v1::{self, job_service_server::JobService};
use weir_store::{Cursor, JobFilter};

use weir_runtime::auth::caller;

use crate::scheduler::Audit;
use crate::status::{self, invalid, parse_id};
use crate::Shared;

/// Default and largest page of ListJobs.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;
/// Events read from the store per query while a watcher catches up.
const HISTORY_PAGE: u32 = 1000;

/// The JobService implementation.
pub struct Jobs(pub(crate) Arc<Shared>);

impl Jobs {
    async fn job(&self, id: Uuid) -> Result<JobRecord, Status> {
        stored_job(&self.0, id).await
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Jobs {
    #[tracing::instrument(name = "submit_job", skip_all, fields(trace_id))]
    async fn submit_job(&self, req: Request<v1::SubmitJobRequest>) -> Result<Response<v1::SubmitJobResponse>, Status> {
        self.0.check_ready()?;
        let who = caller(&req);
        let mut audit = record(&req, &who, "SubmitJob");
        let parent = req.metadata().get(header::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_string);
        match self.submit_as(&who, &mut audit, parent, req.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            Err(status) => Err(self.0.refused(audit, status).await),
        }
    }

    async fn get_job(&self, req: Request<v1::GetJobRequest>) -> Result<Response<v1::GetJobResponse>, Status> {
        let who = caller(&req);
        let audit = record(&req, &who, "GetJob");
        let id = parse_id("job_id", &req.into_inner().job_id)?;
        let job = self.visible(&who, audit, id).await?;
        Ok(Response::new(v1::GetJobResponse { job: Some(convert::job(&job)) }))
    }

    async fn list_jobs(&self, req: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsResponse>, Status> {
        let who = caller(&req);
        let mut audit = record(&req, &who, "ListJobs");
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => return Err(invalid(format!("page_size {n} is over the limit of {MAX_PAGE}"))),
            n => n,
        };
        let state = match r.state {
            0 => None,
            n => Some(convert::job_state_from_wire(n).ok_or_else(|| invalid(format!("unknown job state {n}")))?),
        };
        let after =
            if r.page_token.is_empty() { None } else { Some(Cursor::from_token(&r.page_token).map_err(invalid)?) };
        for (k, v) in &r.labels {
            check_name("label key", k, 63).map_err(status::spec)?;
            if v.contains('\0') {
                return Err(invalid(format!("label {k:?} value contains a NUL character")));
            }
        }
        for (what, v) in [("namespace", &r.namespace), ("name", &r.name)] {
            if v.contains('\0') {
                return Err(invalid(format!("{what} filter contains a NUL character")));
            }
        }
        if !r.namespace.is_empty() && !who.may(&r.namespace, Role::Read) {
            audit.namespace = r.namespace.clone();
            let status = Status::permission_denied(format!(
                "{} may not read namespace {:?} (needs {}:read)",
                who.subject, r.namespace, r.namespace
            ));
            return Err(self.0.refused(audit, status).await);
        }
        let within = match who.grants.scope(Role::Read) {
            Scope::All => None,
            Scope::Only(set) => Some(set.into_iter().collect()),
        };
        let filter = JobFilter {
            namespace: (!r.namespace.is_empty()).then_some(r.namespace),
            within,
            state,
            name: (!r.name.is_empty()).then_some(r.name),
            labels: r.labels.into_iter().collect(),
        };
        let page = self.0.store.list_jobs(&filter, limit, after).await.map_err(status::store)?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: page.jobs.iter().map(convert::job).collect(),
            next_page_token: page.next.map(Cursor::to_token).unwrap_or_default(),
        }))
    }

    async fn get_job_tasks(
        &self,
        req: Request<v1::GetJobTasksRequest>,
    ) -> Result<Response<v1::GetJobTasksResponse>, Status> {
        let who = caller(&req);
        let audit = record(&req, &who, "GetJobTasks");
        let id = parse_id("job_id", &req.into_inner().job_id)?;
        let job = self.visible(&who, audit, id).await?;
        let mut tasks = self.0.store.job_tasks(id).await.map_err(status::store)?;
        // Steps in dependency order, compensation tasks after them.
        let order = |step: &str| job.spec.steps.iter().position(|s| s.id == step).unwrap_or(usize::MAX);
        tasks.sort_by_key(|t| (t.compensates.is_some(), order(t.compensates.as_deref().unwrap_or(&t.step_id))));
        Ok(Response::new(v1::GetJobTasksResponse { tasks: tasks.iter().map(convert::task).collect() }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, req: Request<v1::WatchJobRequest>) -> Result<Response<WatchStream>, Status> {
        let who = caller(&req);
        let audit = record(&req, &who, "WatchJob");
        let r = req.into_inner();
        let id = parse_id("job_id", &r.job_id)?;
        // Subscribe before reading history, so nothing falls between the two.
        let live = self.0.scheduler.subscribe();
        self.visible(&who, audit, id).await?;
        let (tx, rx) = mpsc::channel(256);
        let shared = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = watch(shared, id, r.from_seq.max(1), live, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause_job(&self, req: Request<v1::PauseJobRequest>) -> Result<Response<v1::PauseJobResponse>, Status> {
        self.0.check_ready()?;
        let (id, audit) = self.steering(&req, "PauseJob", &req.get_ref().job_id).await?;
        if let Err(e) = self.0.scheduler.pause(id, audit).await {
            return Err(self.refusal(e, id).await);
        }
        Ok(Response::new(v1::PauseJobResponse { job: Some(convert::job(&self.job(id).await?)) }))
    }

    async fn resume_job(&self, req: Request<v1::ResumeJobRequest>) -> Result<Response<v1::ResumeJobResponse>, Status> {
        self.0.check_ready()?;
        let (id, audit) = self.steering(&req, "ResumeJob", &req.get_ref().job_id).await?;
        if let Err(e) = self.0.scheduler.resume(id, audit).await {
            return Err(self.refusal(e, id).await);
        }
        Ok(Response::new(v1::ResumeJobResponse { job: Some(convert::job(&self.job(id).await?)) }))
    }

    async fn cancel_job(&self, req: Request<v1::CancelJobRequest>) -> Result<Response<v1::CancelJobResponse>, Status> {
        self.0.check_ready()?;
        let (id, audit) = self.steering(&req, "CancelJob", &req.get_ref().job_id).await?;
        if let Err(e) = self.0.scheduler.cancel(id, req.into_inner().reason, audit).await {
            return Err(self.refusal(e, id).await);
        }
        tracing::info!(job_id = %id, "job cancelled");
        Ok(Response::new(v1::CancelJobResponse { job: Some(convert::job(&self.job(id).await?)) }))
    }

    async fn retry_job(&self, req: Request<v1::RetryJobRequest>) -> Result<Response<v1::RetryJobResponse>, Status> {
        self.0.check_ready()?;
        let (id, audit) = self.steering(&req, "RetryJob", &req.get_ref().job_id).await?;
        let stored = self.0.store.load_job(id).await.map_err(status::store)?;
        if stored.is_none() {
            return Err(Status::not_found(format!("job {id} not found")));
        }
        self.0.scheduler.retry(id, stored, audit).await.map_err(status::sched)?;
        tracing::info!(job_id = %id, "job retried");
        Ok(Response::new(v1::RetryJobResponse { job: Some(convert::job(&self.job(id).await?)) }))
    }
}

/// The audit record of a call, with the caller, its address and its trace.
pub(crate) fn record<T>(req: &Request<T>, who: &Principal, action: &str) -> AuditRecord {
    let mut r = AuditRecord::new(crate::now_ms(), &who.subject, action);
    r.trace_id = req
        .metadata()
        .get(header::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceParent>().ok())
        .map(|t| t.trace_id_hex())
        .unwrap_or_default();
    r.peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
    r
}

impl Jobs {
    async fn submit_as(
        &self,
        who: &Principal,
        audit: &mut AuditRecord,
        parent: Option<String>,
        req: v1::SubmitJobRequest,
    ) -> Result<v1::SubmitJobResponse, Status> {
        if let Some(limits) = &self.0.limits {
            if let Err(wait) = limits.check(&who.subject) {
                let mut status = Status::resource_exhausted(format!(
                    "{} is over its submission limit ({}); retry in {:.1}s",
                    who.subject,
                    self.0.config.submission_limit,
                    wait.as_secs_f64()
                ));
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                if let Ok(v) = ms.to_string().parse() {
                    status.metadata_mut().insert(RETRY_AFTER_MS, v);
                }
                return Err(status);
            }
        }
        let wire = req.spec.ok_or_else(|| invalid("spec is required"))?;
        let mut spec = convert::spec_from_wire(&wire).map_err(invalid)?;
        if spec.namespace.is_empty() {
            spec.namespace = weir_core::validate::DEFAULT_NAMESPACE.to_string();
        }
        audit.namespace = spec.namespace.clone();
        audit.target = spec.name.clone();
        if !who.may(&spec.namespace, Role::Write) {
            return Err(Status::permission_denied(format!(
                "{} may not submit jobs to namespace {:?} (needs {}:write)",
                who.subject, spec.namespace, spec.namespace
            )));
        }
        self.bind_recovery(&mut spec, who).await?;
        let mut valid = crate::connections::validate(&self.0, spec).await?;
        valid.trace_parent = Some(trace_for(parent.as_deref()));
        let (job, created) = submit(&self.0, valid, Some(Box::new(audit.clone()))).await?;
        Ok(v1::SubmitJobResponse { job: Some(convert::job(&job)), created })
    }

    /// The job, if the caller may read its namespace; another namespace's job is not
    /// found (its existence does not leak), and the refusal is audited.
    async fn visible(&self, who: &Principal, mut audit: AuditRecord, id: Uuid) -> Result<JobRecord, Status> {
        let job = self.job(id).await?;
        if who.may(&job.spec.namespace, Role::Read) {
            return Ok(job);
        }
        audit.namespace = job.spec.namespace.clone();
        audit.target = id.to_string();
        let shown = Status::not_found(format!("job {id} not found"));
        let why = format!("{} may not read namespace {:?}", who.subject, job.spec.namespace);
        self.0.audit(audit.with_outcome(Outcome::Denied, "NOT_FOUND", &why)).await;
        Err(shown)
    }

    /// The job a steering call names and its audit record, if the caller may write in its
    /// namespace: NOT_FOUND without read, PERMISSION_DENIED with read only (both audited).
    async fn steering<T>(&self, req: &Request<T>, action: &str, job_id: &str) -> Result<(Uuid, Audit), Status> {
        let who = caller(req);
        let mut audit = record(req, &who, action);
        let id = parse_id("job_id", job_id)?;
        audit.target = id.to_string();
        let job = self.visible(&who, audit.clone(), id).await?;
        audit.namespace = job.spec.namespace.clone();
        if !who.may(&job.spec.namespace, Role::Write) {
            let status = Status::permission_denied(format!(
                "{} may not change jobs of namespace {:?} (needs {}:write)",
                who.subject, job.spec.namespace, job.spec.namespace
            ));
            return Err(self.0.refused(audit, status).await);
        }
        Ok((id, Some(Box::new(audit))))
    }
}

/// Metadata of a RESOURCE_EXHAUSTED answer: milliseconds until a retry may succeed.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The trace a submission joins: the caller's (a `traceparent` it sent) or a new one, with
/// a fresh span for this submission. The trace id goes on the current span for the logs.
pub(crate) fn trace_for(parent: Option<&str>) -> String {
    // With trace export on, the submission's own span (a child of the caller's) is the
    // job's parent, so the job's work and events hang under the call that asked for it.
    // (A trigger's parent is the event's trace, not the current span's: that one wins.)
    let parsed = parent.and_then(|p| p.parse::<TraceParent>().ok());
    let current = weir_runtime::telemetry::current_trace();
    if let Some(c) = current.filter(|c| parsed.is_none_or(|p| p.trace_id == c.trace_id)) {
        tracing::Span::current().record("trace_id", c.trace_id_hex());
        return c.to_string();
    }
    let span = (Uuid::new_v4().as_u128() & u128::from(u64::MAX)) as u64;
    let t = match parsed {
        Some(p) => p.child(span),
        None => TraceParent::new(Uuid::new_v4().as_u128(), span),
    };
    tracing::Span::current().record("trace_id", t.trace_id_hex());
    t.to_string()
}

/// Submits a validated job, or finds the one with the same namespace/name/run id (in the
/// store, or in memory if it was submitted a moment ago). Used by SubmitJob and triggers.
/// The sandbox is checked here, for both.
pub(crate) async fn submit(shared: &Shared, valid: ValidJob, audit: Audit) -> Result<(JobRecord, bool), Status> {
    let s = &valid.spec;
    shared.sandbox.check_job(s).map_err(|r| invalid(r.to_string()))?;
    if !s.run_id.is_empty() {
        if let Some(id) = shared.store.find_job(&s.namespace, &s.name, &s.run_id).await.map_err(status::store)? {
            if let Some(mut a) = audit {
                a.target = id.to_string();
                shared.audit(*a).await;
            }
            return Ok((stored_job(shared, id).await?, false));
        }
    }
    let commit = tracing::info_span!("commit", otel.name = "commit job");
    let (id, created) = shared.scheduler.submit(valid, audit).instrument(commit).await.map_err(status::sched)?;
    tracing::info!(job_id = %id, created, "job submitted");
    Ok((stored_job(shared, id).await?, created))
}

async fn stored_job(shared: &Shared, id: Uuid) -> Result<JobRecord, Status> {
    shared
        .store
        .get_job(id)
        .await
        .map_err(status::store)?
        .ok_or_else(|| Status::not_found(format!("job {id} not found")))
}

impl Jobs {
    /// A `resilient_fetch` naming a failed job (`params.job_id`) takes that job's resource
    /// and sinks, and what its steps ended as, into its parameters before it is expanded
    /// (`weir_core::api::recovery::bind_failed_job`). The failed job must be in the same
    /// namespace; another namespace's is not found.
    async fn bind_recovery(&self, spec: &mut weir_core::spec::JobSpec, who: &Principal) -> Result<(), Status> {
        if spec.template.as_deref() != Some("resilient_fetch") {
            return Ok(());
        }
        let Some(params) = spec.params.as_mut() else { return Ok(()) };
        let Some(job_id) = params.get("job_id") else { return Ok(()) };
        let id = parse_id("params.job_id", job_id.as_str().unwrap_or_default())?;
        let job = self.job(id).await?;
        if job.spec.namespace != spec.namespace || !who.may(&job.spec.namespace, Role::Read) {
            return Err(Status::not_found(format!("job {id} not found")));
        }
        let tasks = self.0.store.job_tasks(id).await.map_err(status::store)?;
        let failed: Vec<weir_core::api::recovery::FailedTask<'_>> = tasks
            .iter()
            .filter(|t| t.compensates.is_none())
            .map(|t| weir_core::api::recovery::FailedTask {
                step: &t.step_id,
                kind: &t.kind,
                state: t.state.as_str(),
                error: t.error_message.as_deref(),
                output: t.output.as_deref(),
            })
            .collect();
        weir_core::api::recovery::bind_failed_job(
            params,
            &id.to_string(),
            &job.spec.name,
            job.state.as_str(),
            &job.spec.steps,
            &failed,
        )
        .map_err(invalid)
    }

    /// A finished job is no longer in the engine: say what state it is in, or that it does
    /// not exist at all.
    async fn refusal(&self, e: crate::scheduler::SchedError, id: Uuid) -> Status {
        match e {
            crate::scheduler::SchedError::Engine(weir_core::engine::EngineError::JobNotFound(_)) => {
                match self.0.store.get_job(id).await {
                    Ok(Some(job)) => Status::failed_precondition(format!(
                        "job {id} is {}; only unfinished jobs can be paused, resumed or cancelled",
                        job.state
                    )),
                    Ok(None) => Status::not_found(format!("job {id} not found")),
                    Err(e) => status::store(e),
                }
            }
            other => status::sched(other),
        }
    }
}

fn ends_stream(e: &EventRecord) -> bool {
    e.task_id.is_none() && e.job_state.is_terminal()
}

/// Streams a job's history from `from`, then live events, until the job finishes.
async fn watch(
    shared: Arc<Shared>,
    id: Uuid,
    from: u64,
    mut live: broadcast::Receiver<crate::scheduler::EventBatch>,
    tx: &mpsc::Sender<Result<v1::WatchJobResponse, Status>>,
) -> Result<(), Status> {
    let mut next = from;
    // Catch up from the store; also used after falling behind the live feed.
    let catch_up = |next: u64| {
        let shared = shared.clone();
        async move { shared.store.events(id, next, HISTORY_PAGE).await.map_err(status::store) }
    };
    let mut finished = false;
    loop {
        let page = catch_up(next).await?;
        let more = page.len() == HISTORY_PAGE as usize;
        for e in page {
            next = e.seq + 1;
            // A terminal event ends the stream only if it is the newest (a retry may follow it).
            finished = ends_stream(&e);
            if tx.send(Ok(v1::WatchJobResponse { event: Some(convert::event(&e)) })).await.is_err() {
                return Ok(());
            }
        }
        if !more {
            break;
        }
    }
    if finished {
        return Ok(());
    }
    loop {
        let batch = tokio::select! {
            b = live.recv() => b,
            _ = tx.closed() => return Ok(()),
        };
        match batch {
            Ok(batch) => {
                for e in batch.iter().filter(|e| e.job_id == id) {
                    if e.seq < next {
                        continue;
                    }
                    if e.seq > next {
                        // A gap means we missed something: read it from the store.
                        for old in catch_up(next).await?.into_iter().filter(|o| o.seq < e.seq) {
                            if tx.send(Ok(v1::WatchJobResponse { event: Some(convert::event(&old)) })).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    next = e.seq + 1;
                    if tx.send(Ok(v1::WatchJobResponse { event: Some(convert::event(e)) })).await.is_err() {
                        return Ok(());
                    }
                    if ends_stream(e) {
                        return Ok(());
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for e in catch_up(next).await? {
                    next = e.seq + 1;
                    let end = ends_stream(&e);
                    if tx.send(Ok(v1::WatchJobResponse { event: Some(convert::event(&e)) })).await.is_err() || end {
                        return Ok(());
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Status::unavailable("the master is stopping"));
            }
        }
    }
}
