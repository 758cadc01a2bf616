//! The `main` every manager binary shares: settings, a small gRPC server for health and
//! reflection (Kubernetes probes, `grpcurl`), and the worker loop.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use weir_auth::Role;
use weir_core::catalog::Queue;
use weir_runtime::auth::Access;
use weir_runtime::security::{AuthArgs, ClientSecurity, SandboxArgs, ServerSecurity, TlsArgs, TokenArgs};

use crate::notice::Notices;

/// The health-protocol service a manager reports SERVING while it is in touch with the
/// master (Kubernetes' readiness probe asks for it; liveness asks for the server, "").
pub const READY_SERVICE: &str = "ready";
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
    /// How callers of this manager's own services are checked.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The token this manager sends to the master (it needs `*:worker`; a file manager
    /// whose watches submit jobs also needs write on their namespaces).
    #[command(flatten)]
    pub token: TokenArgs,
    /// TLS: this manager's certificate serves its own services and is presented to the
    /// master; the CA checks both ways.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// What tasks may touch, checked again before each runs.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Where `/metrics` is served.
    #[command(flatten)]
    pub metrics: weir_runtime::metrics::MetricsArgs,
}

impl ManagerArgs {
    /// Settings for a manager of the master at `master_url` on this machine: no server of
    /// its own, plaintext, no token, the local sandbox (`weir dev`, tests).
    pub fn local(master_url: &str) -> ManagerArgs {
        ManagerArgs {
            master_url: master_url.to_string(),
            listen: String::new(),
            concurrency: None,
            poll_wait: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
            worker_id: None,
            auth: AuthArgs::default(),
            token: TokenArgs::default(),
            tls: TlsArgs::default(),
            sandbox: SandboxArgs::local(),
            metrics: Default::default(),
        }
    }
}

/// What a manager's own methods need: its views (`List…`, `Get…`, `Describe…`) read on
/// every namespace, anything that changes state (a re-drive) admin on every namespace —
/// they show fleet-wide state, not one namespace's.
pub fn access(path: &str) -> Access {
    if path.starts_with("/grpc.reflection.") {
        return Access::Authenticated;
    }
    let method = weir_runtime::auth::method(path);
    if ["List", "Get", "Describe", "Watch"].iter().any(|p| method.starts_with(p)) {
        Access::Everywhere(Role::Read)
    } else {
        Access::Everywhere(Role::Admin)
    }
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
    /// The token and TLS of calls to the master.
    pub security: ClientSecurity,
    /// What this manager may touch (background work such as watches is checked too).
    pub sandbox: std::sync::Arc<weir_core::sandbox::Policy>,
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
    let security = ClientSecurity::from_args(&args.token, &args.tls)?;
    let sandbox = Arc::new(args.sandbox.policy()?);
    args.metrics.start(cancel.clone()).await?;
    let ready = crate::Readiness::default();
    let server = if args.listen.is_empty() {
        None
    } else {
        let listener = weir_runtime::grpc::bind(&args.listen).await?;
        let (reporter, mut routes) = weir_runtime::grpc::base_routes()?;
        for b in &spec.background {
            b.add_routes(&mut routes);
        }
        reporter.set_service_status("", ServingStatus::Serving).await;
        reporter.set_service_status(READY_SERVICE, ServingStatus::NotServing).await;
        // Ready while the worker is in touch with the master.
        let mut watch = ready.watch();
        tokio::spawn(async move {
            loop {
                let now = if *watch.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
                reporter.set_service_status(READY_SERVICE, now).await;
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
        let server_security = ServerSecurity::from_args(&args.auth, &args.tls, Arc::new(access)).await?;
        Some(tokio::spawn(weir_runtime::grpc::serve(listener, routes.routes(), server_security, cancel.clone())))
    };
    let cfg = WorkerConfig {
        master_url: args.master_url,
        queue: spec.queue,
        worker_id,
        concurrency: args.concurrency.unwrap_or(spec.concurrency),
        poll_wait: args.poll_wait,
        drain_timeout: args.drain_timeout,
        security: security.clone(),
        sandbox,
    };
    let ctx = BackgroundContext {
        master_url: cfg.master_url.clone(),
        worker_id: cfg.worker_id.clone(),
        cancel: cancel.clone(),
        security,
        sandbox: cfg.sandbox.clone(),
    };
    let background: Vec<_> = spec
        .background
        .iter()
        .map(|b| {
            let (b, ctx) = (b.clone(), ctx.clone());
            tokio::spawn(async move { b.run(ctx).await })
        })
        .collect();
    Worker::new(cfg, spec.handlers)?
        .with_quotas(spec.quotas)
        .with_notices(spec.notices)
        .with_readiness(ready)
        .run(cancel)
        .await?;
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
        let telemetry = weir_runtime::telemetry::init(spec.binary, &cli.telemetry)?;
        let cancel = weir_runtime::shutdown::on_signal();
        let ran = run(spec, cli.manager, cancel).await;
        telemetry.shutdown().await;
        ran?;
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
