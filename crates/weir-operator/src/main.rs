//! `weir-operator`: runs the IngestionJob controller (`weir-operator`), or prints the CRD
//! it serves (`weir-operator crd`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::Api;
use weir_operator::controller::Context;
use weir_operator::crd::{FileWatch, IngestionJob};
use weir_operator::leader::{self, Election};
use weir_proto::v1::job_service_client::JobServiceClient;
use weir_runtime::security::{ClientSecurity, ServerSecurity, TlsArgs, TokenArgs};

/// Weir's Kubernetes operator: IngestionJob objects become jobs on the master.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: OperatorArgs,
    #[command(flatten)]
    telemetry: weir_runtime::telemetry::TelemetryArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the CustomResourceDefinitions (IngestionJob, FileWatch) as YAML, for
    /// `kubectl apply -f -`.
    Crd,
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// The master's gRPC address.
    #[arg(long, env = "WEIR_MASTER_URL", default_value = "http://127.0.0.1:50051")]
    master_url: String,
    /// How often an unfinished job's status is read again.
    #[arg(long, env = "WEIR_OPERATOR_RESYNC", default_value = "5s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Only this namespace's IngestionJobs (a Role suffices); empty: every namespace's.
    #[arg(long, env = "WEIR_OPERATOR_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// The Lease that elects the one replica running the controller.
    #[arg(long, env = "WEIR_OPERATOR_LEASE", default_value = "weir-operator")]
    lease_name: String,
    /// The Lease's namespace (the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's name in the Lease (the pod's name, from the downward API).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// A leader that has not renewed within this is replaced.
    #[arg(long, env = "WEIR_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The ConfigMap (in the operator's namespace) the FileWatches are written into, as
    /// `watches.yaml`; the file managers mount it as WEIR_WATCHES_FILE.
    #[arg(long, env = "WEIR_OPERATOR_WATCHES_CONFIGMAP", default_value = "weir-watches")]
    watches_configmap: String,
    /// Address of the gRPC health service (liveness probes); empty: none.
    #[arg(long = "listen", env = "WEIR_OPERATOR_LISTEN", default_value = "")]
    listen: String,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    metrics: weir_runtime::metrics::MetricsArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", weir_operator::crd::crd_yaml()?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let telemetry = weir_runtime::telemetry::init("weir-operator", &cli.telemetry)?;
        let ran = run(cli.args).await;
        telemetry.shutdown().await;
        ran
    })
}

async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let cancel = weir_runtime::shutdown::on_signal();
    if args.resync.is_zero() {
        anyhow::bail!("WEIR_OPERATOR_RESYNC must be more than zero");
    }
    if args.lease_duration < Duration::from_secs(3) {
        anyhow::bail!("WEIR_OPERATOR_LEASE_DURATION must be at least 3s");
    }
    let security = ClientSecurity::from_args(&args.token, &args.tls)?;
    let master = JobServiceClient::new(weir_runtime::grpc::channel(&args.master_url, &security)?);
    let kube = kube::Client::try_default()
        .await
        .context("no Kubernetes API to talk to (in a pod, the service account's; elsewhere, KUBECONFIG)")?;
    args.metrics.start(cancel.clone()).await?;
    if !args.listen.is_empty() {
        let (_health, routes) = weir_runtime::grpc::base_routes()?;
        let listener = weir_runtime::grpc::bind(&args.listen).await?;
        tokio::spawn(weir_runtime::grpc::serve(listener, routes.routes(), ServerSecurity::open(), cancel.clone()));
    }
    let scope = (!args.watch_namespace.is_empty()).then(|| args.watch_namespace.clone());
    let (jobs, watches): (Api<IngestionJob>, Api<FileWatch>) = match &scope {
        None => (Api::all(kube.clone()), Api::all(kube.clone())),
        Some(ns) => (Api::namespaced(kube.clone(), ns), Api::namespaced(kube.clone(), ns)),
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()));
    let election = Election {
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone(),
        identity,
        duration: args.lease_duration,
        grace: args.lease_duration / 3,
    };
    let ctx = Arc::new(Context {
        kube,
        master,
        resync: args.resync,
        scope,
        watches: (args.lease_namespace.clone(), args.watches_configmap.clone()),
        publishing: Default::default(),
    });
    leader::run(election, jobs, watches, ctx, cancel).await?;
    Ok(())
}
