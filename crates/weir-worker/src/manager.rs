//! The `main` every manager binary shares: settings, a small gRPC server for health and
//! reflection (Kubernetes probes, `grpcurl`), and the worker loop.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use weir_core::catalog::Queue;

use crate::notice::Notices;
use crate::quota::Quotas;
use crate::{StepHandler, Worker, WorkerConfig, WorkerError};

/// Tasks a manager runs at once by default.
pub const DEFAULT_CONCURRENCY: u32 = 16;

/// Settings every manager takes.
#[derive(Debug, Clone, Args)]
pub struct ManagerArgs {
    /// The master's gRPC address.
    #[arg(long, env = "WEIR_MASTER_URL", default_value = "http://127.0.0.1:50051")]
    pub master_url: String,
    /// Address of this manager's own gRPC server (health, reflection); empty = none.
    #[arg(long = "listen", env = "WEIR_MANAGER_LISTEN", default_value = "")]
    pub listen: String,
    /// Most tasks in flight at once (default: the manager's own, [`ManagerSpec::concurrency`]).
    #[arg(long, env = "WEIR_WORKER_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// Longest long poll for work.
    #[arg(long, env = "WEIR_POLL_WAIT", default_value = "20s", value_parser = weir_core::duration::parse)]
    pub poll_wait: Duration,
    /// On SIGTERM, how long running tasks may finish before their leases are handed back.
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", default_value = "10s", value_parser = weir_core::duration::parse)]
    pub drain_timeout: Duration,
    /// Worker id; defaults to "<manager>-<host>-<pid>-<random>", unique even where every
    /// container's process is pid 1.
    #[arg(long, env = "WEIR_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// What makes one manager different from another.
pub struct ManagerSpec {
    /// e.g. "file-manager".
    pub name: &'static str,
    /// The binary's name, e.g. "weir-file-manager".
    pub binary: &'static str,
    pub queue: Queue,
    /// Most tasks in flight at once unless `WEIR_WORKER_CONCURRENCY` says
    /// ([`DEFAULT_CONCURRENCY`]; a stream manager: its streams).
    pub concurrency: u32,
    pub handlers: Vec<Arc<dyn StepHandler>>,
    /// Work besides leased tasks (the file manager's watches) and domain gRPC services.
    pub background: Vec<Arc<dyn Background>>,
    /// The fleet-wide limits its handlers draw on, shared over the heartbeat.
    pub quotas: Quotas,
    /// Status changes its handlers report, published by the master.
    pub notices: Notices,
}

/// What a [`Background`] runs with.
#[derive(Debug, Clone)]
pub struct BackgroundContext {
    pub master_url: String,
    pub worker_id: String,
    /// Fires on shutdown.
    pub cancel: CancellationToken,
}

/// Work a manager does besides running leased tasks, and the gRPC services it serves
/// for its own domain on the manager's listen address.
#[async_trait::async_trait]
pub trait Background: Send + Sync + 'static {
    /// Runs until `ctx.cancel` fires.
    async fn run(&self, ctx: BackgroundContext);
    /// Adds this work's gRPC services to the manager's server.
    fn add_routes(&self, _routes: &mut tonic::service::RoutesBuilder) {}
}

/// Runs a manager until `cancel` fires.
pub async fn run(spec: ManagerSpec, args: ManagerArgs, cancel: CancellationToken) -> Result<(), WorkerError> {
    let worker_id = args.worker_id.clone().unwrap_or_else(|| default_worker_id(spec.name));
    let server = if args.listen.is_empty() {
        None
    } else {
        let listener = weir_runtime::grpc::bind(&args.listen).await?;
        let (reporter, mut routes) = weir_runtime::grpc::base_routes()?;
        for b in &spec.background {
            b.add_routes(&mut routes);
        }
        reporter.set_service_status("", ServingStatus::Serving).await;
        Some(tokio::spawn(weir_runtime::grpc::serve(listener, routes.routes(), cancel.clone())))
    };
    let cfg = WorkerConfig {
        master_url: args.master_url,
        queue: spec.queue,
        worker_id,
        concurrency: args.concurrency.unwrap_or(spec.concurrency),
        poll_wait: args.poll_wait,
        drain_timeout: args.drain_timeout,
    };
    let ctx = BackgroundContext {
        master_url: cfg.master_url.clone(),
        worker_id: cfg.worker_id.clone(),
        cancel: cancel.clone(),
    };
    let background: Vec<_> = spec
        .background
        .iter()
        .map(|b| {
            let (b, ctx) = (b.clone(), ctx.clone());
            tokio::spawn(async move { b.run(ctx).await })
        })
        .collect();
    Worker::new(cfg, spec.handlers)?.with_quotas(spec.quotas).with_notices(spec.notices).run(cancel).await?;
    for b in background {
        let _ = b.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    Ok(())
}

/// The whole `main` of a manager binary: parse flags, log, run until SIGTERM.
pub fn main(spec: fn() -> Result<ManagerSpec, String>) -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches, Parser};

    /// A Weir manager.
    #[derive(Debug, Parser)]
    #[command(version)]
    struct Cli {
        #[command(flatten)]
        manager: ManagerArgs,
        #[command(flatten)]
        telemetry: weir_runtime::telemetry::TelemetryArgs,
    }

    let spec = spec().map_err(|e| anyhow::anyhow!("bad setting: {e}"))?;
    let about = format!("The Weir {} (queue \"{}\").", spec.name, spec.queue);
    let matches = Cli::command().name(spec.binary).about(about).get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        weir_runtime::telemetry::init(&cli.telemetry)?;
        let cancel = weir_runtime::shutdown::on_signal();
        run(spec, cli.manager, cancel).await?;
        Ok(())
    })
}

/// "<manager>-<host>-<pid>-<4 random hex>": the host (the pod name on Kubernetes) tells
/// operators where it runs, the random part keeps a restarted pid-1 container distinct.
fn default_worker_id(manager: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = &uuid::Uuid::new_v4().simple().to_string()[..4];
    format!("{manager}-{host}-{}-{random}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_worker_ids_differ_between_starts() {
        let (a, b) = (super::default_worker_id("file-manager"), super::default_worker_id("file-manager"));
        assert!(a.starts_with("file-manager-") && a != b, "{a} / {b}");
    }
}
