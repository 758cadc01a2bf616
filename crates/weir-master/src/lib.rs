//! The ingestion master: the only writer of job and task state.
//!
//! - [`config`]: its settings (flags, `WEIR_*` environment variables).
//! - [`scheduler`]: one task owns the [`weir_core::engine::Engine`]; gRPC handlers send it
//!   commands, it applies a whole batch of them, commits the changed records in one
//!   transaction (group commit), and only then answers — so every reply is durable.
//! - [`jobs`]: `JobService` for clients; [`workers`]: `WorkerService` for managers.
//! - [`status`]: the one place errors become gRPC statuses.
//!
//! [`serve`] wires them together: open the store, become leader, load unfinished jobs,
//! serve until the cancellation token fires.

pub mod config;
pub mod jobs;
pub mod scheduler;
pub mod status;
pub mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_core::engine::{Engine, EngineConfig};
use weir_proto::v1::job_service_server::JobServiceServer;
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
}

/// What the gRPC handlers share.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub scheduler: scheduler::Handle,
    pub ready: AtomicBool,
    pub registry: workers::Registry,
    pub config: MasterConfig,
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
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Runs the master on `listener` until `cancel` fires (or leadership is lost).
pub async fn serve(config: MasterConfig, listener: TcpListener, cancel: CancellationToken) -> Result<(), MasterError> {
    let store = weir_store::open(&config.store_url).await?;
    tracing::info!(backend = store.backend(), "store open");
    let (scheduler, inbox) = scheduler::Handle::new(config.max_batch);
    let shared = Arc::new(Shared {
        store: store.clone(),
        scheduler,
        ready: AtomicBool::new(false),
        registry: workers::Registry::default(),
        config: config.clone(),
    });
    let (reporter, mut routes) = weir_runtime::grpc::base_routes()?;
    reporter.set_not_serving::<JobServiceServer<jobs::Jobs>>().await;
    reporter.set_not_serving::<WorkerServiceServer<workers::Workers>>().await;
    routes
        .add_service(JobServiceServer::new(jobs::Jobs(shared.clone())))
        .add_service(WorkerServiceServer::new(workers::Workers(shared.clone())));
    let server_cancel = cancel.child_token();
    let server = tokio::spawn(weir_runtime::grpc::serve(listener, routes.routes(), server_cancel.clone()));

    let epoch = tokio::select! {
        e = store.acquire_leadership(&config.id, now_ms()) => e?,
        _ = cancel.cancelled() => {
            server_cancel.cancel();
            server.await??;
            return Ok(());
        }
    };
    let (jobs, tasks) = store.load_unfinished().await?;
    tracing::info!(epoch, jobs = jobs.len(), tasks = tasks.len(), "leading; unfinished work loaded");
    let mut engine = Engine::new(engine_config(&config), Box::new(uuid::Uuid::now_v7));
    engine.load(jobs, tasks, now_ms());
    shared.ready.store(true, Ordering::Release);
    reporter.set_serving::<JobServiceServer<jobs::Jobs>>().await;
    reporter.set_serving::<WorkerServiceServer<workers::Workers>>().await;

    let result =
        scheduler::run(engine, store, epoch, inbox, shared.scheduler.events(), cancel.clone(), config.max_batch).await;
    shared.ready.store(false, Ordering::Release);
    server_cancel.cancel();
    server.await??;
    result.map_err(MasterError::from)
}

/// The engine settings a master config implies.
pub fn engine_config(config: &MasterConfig) -> EngineConfig {
    EngineConfig { queue_limits: config.queue_limits.iter().cloned().collect() }
}
