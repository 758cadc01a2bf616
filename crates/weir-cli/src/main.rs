//! `weir`: the command line for Weir.
//!
//! Client verbs talk to the master over gRPC (`--master`, `WEIR_MASTER_URL`); `weir dev`
//! runs the master and the four managers in this process with an embedded store.

mod client;
mod dev;
mod render;
mod schedules;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Weir: durable, rate-controlled data ingestion.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// The master's gRPC address.
    #[arg(long, global = true, env = "WEIR_MASTER_URL", default_value = "http://127.0.0.1:50051")]
    master: String,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The token sent with every call (`WEIR_TOKEN` or `WEIR_TOKEN_FILE`).
    #[command(flatten)]
    token: weir_runtime::security::TokenArgs,
    /// TLS to the services (`WEIR_TLS_CA`, and a client certificate under mTLS).
    #[command(flatten)]
    tls: weir_runtime::security::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform in this process: master, four managers, embedded store.
    Dev(Box<dev::DevArgs>),
    /// Submit a job from a YAML or JSON file.
    Submit {
        /// The job spec file ("-" for standard input).
        file: PathBuf,
        /// Then watch it until it finishes.
        #[arg(long)]
        watch: bool,
    },
    /// Follow a job live until it finishes (exit code 0 only if it succeeded).
    Watch {
        job_id: String,
    },
    /// List jobs, newest first.
    Jobs(client::ListArgs),
    /// Show one job and its tasks.
    Get {
        job_id: String,
    },
    /// Stop leasing a job's tasks (running ones finish).
    Pause {
        job_id: String,
    },
    /// Continue a paused job.
    Resume {
        job_id: String,
    },
    /// Cancel a job; succeeded steps with a compensation are undone.
    Cancel {
        job_id: String,
        /// Why, recorded on the job.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Run a failed, cancelled or compensated job again from the steps that had not succeeded.
    Retry {
        job_id: String,
        /// Then watch it until it finishes.
        #[arg(long)]
        watch: bool,
    },
    /// List the workers the master knows.
    Workers,
    /// The fleet-wide API limits and each API-manager replica's share of them.
    Apis,
    /// Incremental collection's watermarks: where each resource's next run starts.
    Watermarks {
        /// Only this namespace's (default: every namespace's).
        #[arg(long, default_value = "")]
        namespace: String,
    },
    /// The file manager's watches: list what they have seen, re-drive a file.
    Files {
        /// The file manager's gRPC address.
        #[arg(long, env = "WEIR_FILES_URL", default_value = "http://127.0.0.1:50052")]
        files_url: String,
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// The dataset catalogue: every dataset and table, and its schema's versions.
    Datasets {
        /// The batch manager's gRPC address.
        #[arg(long, env = "WEIR_DATASETS_URL", default_value = "http://127.0.0.1:50053")]
        datasets_url: String,
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// The streams a stream manager runs: each lane's position, lag and what is buffered.
    Streams {
        /// The stream manager's gRPC address.
        #[arg(long, env = "WEIR_STREAMS_URL", default_value = "http://127.0.0.1:50054")]
        streams_url: String,
    },
    /// The audit trail: mutating and refused calls, newest first (needs admin).
    Audit(client::AuditArgs),
    /// Named connections: locations, APIs and sinks an admin defines per namespace, which
    /// jobs name with `{$connection: <name>}`.
    Connections {
        #[command(subcommand)]
        command: client::ConnectionsCommand,
    },
    /// Sign a token with the HS256 secret (`WEIR_AUTH_HS256_SECRET`), for setups without
    /// an identity provider.
    /// Cron schedules: each slot runs a job, in a time zone, with an overlap policy,
    /// catch-up after an outage, backfill of a past range.
    Schedules {
        #[command(subcommand)]
        command: schedules::SchedulesCommand,
    },
    Token(client::TokenMint),
}

#[derive(Debug, Subcommand)]
enum DatasetsCommand {
    /// Each dataset and table with its current schema version.
    List {
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Every version of one dataset's schema: what changed, the job and input that changed it.
    History {
        /// As `weir datasets list` names it (file:///lake/trades, s3://lake/trades, postgres://host:5432/db/table).
        dataset: String,
    },
}

#[derive(Debug, Subcommand)]
enum FilesCommand {
    /// Every file the watches have seen, with its version and the job it started.
    List {
        /// Only this watch.
        #[arg(long)]
        watch: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Ingest a file again (a new job), e.g. once what quarantined it is fixed.
    Redrive { watch: String, path: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(traced(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a client verb in a span of its own, exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set, so a job's trace starts at the command that submitted it. (`weir dev` sets up its
/// own telemetry.)
async fn traced(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use tracing::Instrument;
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|e| !e.trim().is_empty());
    if matches!(cli.command, Command::Dev(_)) || !exporting {
        return run(cli).await;
    }
    let telemetry = weir_runtime::telemetry::init("weir-cli", &Default::default())?;
    let debug = format!("{:?}", cli.command);
    let verb = debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("command").to_lowercase();
    let span = tracing::info_span!("weir", otel.name = %format!("weir {verb}"), otel.kind = "client");
    let result = run(cli).instrument(span).await;
    telemetry.shutdown().await;
    result
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    let json = cli.json;
    let security = weir_runtime::security::ClientSecurity::from_args(&cli.token, &cli.tls)?;
    let c = || client::Client::connect(&cli.master, json, &security);
    match cli.command {
        Command::Dev(args) => dev::run(*args).await.map(|_| ok),
        Command::Submit { file, watch } => {
            let id = c()?.submit(&file).await?;
            if watch {
                c()?.watch(&id).await
            } else {
                Ok(ok)
            }
        }
        Command::Watch { job_id } => c()?.watch(&job_id).await,
        Command::Jobs(args) => c()?.list(args).await.map(|_| ok),
        Command::Get { job_id } => c()?.get(&job_id).await.map(|_| ok),
        Command::Pause { job_id } => c()?.pause(&job_id).await.map(|_| ok),
        Command::Resume { job_id } => c()?.resume(&job_id).await.map(|_| ok),
        Command::Cancel { job_id, reason } => c()?.cancel(&job_id, reason).await.map(|_| ok),
        Command::Retry { job_id, watch } => {
            c()?.retry(&job_id).await?;
            if watch {
                c()?.watch(&job_id).await
            } else {
                Ok(ok)
            }
        }
        Command::Workers => c()?.workers().await.map(|_| ok),
        Command::Apis => c()?.apis().await.map(|_| ok),
        Command::Watermarks { namespace } => c()?.watermarks(&namespace).await.map(|_| ok),
        Command::Files { files_url, command } => {
            let mut files = client::FilesClient::connect(&files_url, json, &security)?;
            match command {
                FilesCommand::List { watch, limit } => files.list(watch, limit).await.map(|_| ok),
                FilesCommand::Redrive { watch, path } => files.redrive(&watch, &path).await.map(|_| ok),
            }
        }
        Command::Datasets { datasets_url, command } => {
            let mut d = client::DatasetsClient::connect(&datasets_url, json, &security)?;
            match command {
                DatasetsCommand::List { limit } => d.list(limit).await.map(|_| ok),
                DatasetsCommand::History { dataset } => d.history(&dataset).await.map(|_| ok),
            }
        }
        Command::Streams { streams_url } => client::streams(&streams_url, json, &security).await.map(|_| ok),
        Command::Audit(args) => c()?.audit(args).await.map(|_| ok),
        Command::Connections { command } => c()?.connections(command).await.map(|_| ok),
        Command::Schedules { command } => c()?.schedules(command).await.map(|_| ok),
        Command::Token(args) => client::mint(args).map(|_| ok),
    }
}
