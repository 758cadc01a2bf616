//! The ingestion master: the only writer of job and task state.
//!
//! - [`config`]: its settings (flags, `WEIR_*` environment variables).
//! - [`scheduler`]: one task owns the [`weir_core::engine::Engine`]; gRPC handlers send it
//!   commands, it applies a whole batch of them, commits the changed records in one
//!   transaction (group commit), and only then answers — so every reply is durable.
//! - [`jobs`]: `JobService` for clients; [`workers`]: `WorkerService` for managers.
//! - [`status`]: the one place errors become gRPC statuses.
//! - [`relay`]: publishes committed events (the outbox) to the bus, in commit order.
//! - [`triggers`]: consumes `weir.triggers` and starts a job per event.
//! - [`schedules`]: `ScheduleService` (cron schedules); [`clock`] fires their slots.
//! - [`audit`]: the audit trail: refusals and changes written in commits, `AuditService`.
//! - [`retention`]: the purge of finished jobs, relayed messages and old audit records.
//! - [`paging`]: the memory budget's reads — the engine at start, parked jobs read back.
//! - [`metrics`]: the master's Prometheus metrics, read off each commit.
//! - [`connections`]: named connections (`ConnectionService`) and their expansion into
//!   the jobs that name them.
//!
//! Every call passes the runtime's guard ([`weir_runtime::auth`]); handlers then check the
//! caller's role on the job's namespace ([`access`] says what each method needs first).
//!
//! [`serve`] wires them together: open the store, become leader, load unfinished jobs,
//! serve until the cancellation token fires.

pub mod audit;
mod clock;
pub mod config;
pub mod connections;
pub mod jobs;
mod memory;
pub mod metrics;
pub mod paging;
pub mod relay;
pub mod retention;
pub mod scheduler;
pub mod schedules;
pub mod status;
pub mod triggers;
pub mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_bus::{Bus, KafkaBus};
use weir_core::engine::EngineConfig;
use weir_proto::v1::audit_service_server::AuditServiceServer;
use weir_proto::v1::connection_service_server::ConnectionServiceServer;
use weir_proto::v1::job_service_server::JobServiceServer;
use weir_proto::v1::schedule_service_server::ScheduleServiceServer;
use weir_proto::v1::worker_service_server::WorkerServiceServer;
use weir_store::{Store, StoreError};

pub use config::MasterConfig;

/// Why the master stopped.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] weir_runtime::RuntimeError),
    #[error("the gRPC server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("bad setting: {0}")]
    Config(String),
}

/// What the gRPC handlers share.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub scheduler: scheduler::Handle,
    pub ready: AtomicBool,
    pub registry: workers::Registry,
    /// Fleet-wide rate limits: each worker's share, handed out over the heartbeat.
    pub quotas: std::sync::Mutex<weir_core::quota::Quotas>,
    /// Each worker's last reported circuit per API.
    pub circuits: workers::Circuits,
    pub config: MasterConfig,
    /// Submissions per caller.
    pub limits: Option<weir_auth::KeyedLimits>,
    /// What jobs may touch.
    pub sandbox: weir_core::sandbox::Policy,
    /// Every schedule, while this master leads (filled at the start of leadership).
    pub schedules: clock::Book,
}

impl Shared {
    pub fn check_ready(&self) -> Result<(), tonic::Status> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(tonic::Status::unavailable("the master is not leading yet (starting, or waiting for leadership)"))
        }
    }
}

/// Milliseconds since the epoch, the engine's clock.
pub use weir_runtime::now_ms;

/// Runs the master on `listener` until `cancel` fires (or leadership is lost), publishing
/// to Kafka if the config names brokers.
pub async fn serve(config: MasterConfig, listener: TcpListener, cancel: CancellationToken) -> Result<(), MasterError> {
    let bus: Option<Arc<dyn Bus>> = match config.events.kafka(&config.id).map_err(MasterError::Config)? {
        Some(k) => Some(Arc::new(KafkaBus::new(k).map_err(|e| MasterError::Config(e.to_string()))?)),
        None => None,
    };
    serve_with_bus(config, listener, bus, cancel).await
}

/// [`serve`] with the bus given (the one-command mode passes its in-process bus).
pub async fn serve_with_bus(
    config: MasterConfig,
    listener: TcpListener,
    bus: Option<Arc<dyn Bus>>,
    cancel: CancellationToken,
) -> Result<(), MasterError> {
    let store = weir_store::open(&config.store_url).await?;
    serve_with_store(config, listener, bus, store, cancel).await
}

/// [`serve_with_bus`] on a store already open: the one-command mode shares its embedded
/// store with the file manager's inventory (one SQLite file has one owner process).
pub async fn serve_with_store(
    config: MasterConfig,
    listener: TcpListener,
    bus: Option<Arc<dyn Bus>>,
    store: Arc<dyn weir_store::Store>,
    cancel: CancellationToken,
) -> Result<(), MasterError> {
    let rules = Arc::new(config.events.rules().map_err(MasterError::Config)?);
    if bus.is_none() && !rules.is_empty() {
        return Err(MasterError::Config("trigger rules are set but no event bus is (set WEIR_KAFKA_BROKERS)".into()));
    }
    tracing::info!(backend = store.backend(), "store open");
    config.metrics.start(cancel.clone()).await?;
    let sandbox = config.sandbox.policy()?;
    let limits = config.limits().map_err(|e| MasterError::Config(format!("WEIR_SUBMISSION_LIMIT: {e}")))?;
    let retention = config.retention().map_err(MasterError::Config)?;
    let security =
        weir_runtime::security::ServerSecurity::from_args(&config.auth, &config.tls, Arc::new(access)).await?;
    let (scheduler, inbox) = scheduler::Handle::new(config.max_batch);
    let shared = Arc::new(Shared {
        store: store.clone(),
        scheduler,
        ready: AtomicBool::new(false),
        registry: workers::Registry::default(),
        quotas: std::sync::Mutex::new(weir_core::quota::Quotas::new(now_ms(), workers::quota_ttl(&config))),
        circuits: workers::Circuits::default(),
        config: config.clone(),
        limits,
        sandbox,
        schedules: clock::Book::default(),
    });
    let refusals = weir_runtime::auth::Throttled::wrap(
        Arc::new(audit::AuditRefusals(shared.clone())),
        &config.audit_refusals_per_peer,
    )
    .map_err(|e| MasterError::Config(format!("WEIR_AUDIT_REFUSALS_PER_PEER: {e}")))?;
    let security =
        weir_runtime::security::ServerSecurity { guard: security.guard.with_refusals(refusals), tls: security.tls };
    let (reporter, mut routes) = weir_runtime::grpc::base_routes()?;
    reporter.set_not_serving::<JobServiceServer<jobs::Jobs>>().await;
    reporter.set_not_serving::<WorkerServiceServer<workers::Workers>>().await;
    routes
        .add_service(JobServiceServer::new(jobs::Jobs(shared.clone())))
        .add_service(WorkerServiceServer::new(workers::Workers(shared.clone())))
        .add_service(AuditServiceServer::new(audit::Audit(shared.clone())))
        .add_service(ConnectionServiceServer::new(connections::Connections(shared.clone())))
        .add_service(ScheduleServiceServer::new(schedules::Schedules(shared.clone())));
    let server_cancel = cancel.child_token();
    let server = tokio::spawn(weir_runtime::grpc::serve(listener, routes.routes(), security, server_cancel.clone()));

    let epoch = tokio::select! {
        e = store.acquire_leadership(&config.id, now_ms()) => e?,
        _ = cancel.cancelled() => {
            server_cancel.cancel();
            server.await??;
            return Ok(());
        }
    };
    let engine = paging::load(store.as_ref(), engine_config(&config)).await?;
    shared.schedules.load(store.schedules("", u32::MAX).await?);
    tracing::info!(
        epoch,
        jobs = engine.jobs_in_memory(),
        tasks = engine.tasks_in_memory(),
        parked = engine.parked().is_some(),
        "leading; unfinished work loaded"
    );
    // Shares a previous leader handed out are unknown here: start a fresh table that warms
    // up for one share lifetime — unless this is the store's first leader, with none before.
    let warm = if epoch <= 1 { 0 } else { workers::quota_ttl(&config) };
    *shared.quotas.lock().unwrap_or_else(|p| p.into_inner()) = weir_core::quota::Quotas::new(now_ms(), warm);
    shared.ready.store(true, Ordering::Release);
    reporter.set_serving::<JobServiceServer<jobs::Jobs>>().await;
    reporter.set_serving::<WorkerServiceServer<workers::Workers>>().await;

    // The relay and the trigger consumer run only while this master leads.
    let side_cancel = cancel.child_token();
    let mut side = Vec::new();
    if let Some(bus) = &bus {
        let settings = relay::RelaySettings {
            batch: config.events.relay_batch.max(1),
            topics: relay::topic_specs(config.events.kafka_partitions, config.events.kafka_replication),
        };
        let wake = shared.scheduler.subscribe();
        let (store, relay_bus, c, stop) = (store.clone(), bus.clone(), side_cancel.clone(), cancel.clone());
        side.push(tokio::spawn(async move {
            if let Err(e) = relay::run(store, relay_bus, epoch, settings, wake, c).await {
                tracing::error!(error = %e, "event relay stopped: leadership lost");
                stop.cancel();
            }
        }));
        if !rules.is_empty() {
            side.push(tokio::spawn(triggers::run(shared.clone(), bus.clone(), rules.clone(), side_cancel.clone())));
        }
    }
    side.push(tokio::spawn(workers::sweep(shared.clone(), side_cancel.clone())));
    side.push(tokio::spawn(clock::run(shared.clone(), side_cancel.clone())));
    side.push(tokio::spawn(retention::statistics(store.clone(), side_cancel.clone())));
    let (purge_shared, c, stop) = (shared.clone(), side_cancel.clone(), cancel.clone());
    side.push(tokio::spawn(async move {
        if let Err(e) = retention::run(purge_shared, retention, epoch, c).await {
            tracing::error!(error = %e, "retention purge stopped: leadership lost");
            stop.cancel();
        }
    }));

    let result =
        scheduler::run(engine, store, epoch, inbox, shared.scheduler.events(), cancel.clone(), config.max_batch).await;
    shared.ready.store(false, Ordering::Release);
    side_cancel.cancel();
    for s in side {
        s.await?;
    }
    server_cancel.cancel();
    server.await??;
    result.map_err(MasterError::from)
}

/// The engine settings a master config implies.
pub fn engine_config(config: &MasterConfig) -> EngineConfig {
    EngineConfig {
        queue_limits: config.queue_limits.iter().cloned().collect(),
        resident_tasks: (config.resident_tasks > 0).then_some(config.resident_tasks),
    }
}

/// What each of the master's methods needs before its handler runs: the lease protocol
/// needs the worker role on every namespace, the fleet views read on every namespace;
/// the rest need a valid token, and their handlers check the job's namespace.
pub fn access(path: &str) -> weir_runtime::auth::Access {
    use weir_auth::Role;
    use weir_runtime::auth::Access;
    let Some(rest) = path.strip_prefix("/weir.v1.WorkerService/") else { return Access::Authenticated };
    match rest {
        "RegisterWorker" | "AcquireTasks" | "Heartbeat" | "CompleteTask" | "CompleteTasks" | "FailTask"
        | "ReleaseTasks" | "DeregisterWorker" => Access::Everywhere(Role::Worker),
        "ListWorkers" | "ListQuotas" => Access::Everywhere(Role::Read),
        // GetWatermark and ListWatermarks check the namespace they name.
        _ => Access::Authenticated,
    }
}
