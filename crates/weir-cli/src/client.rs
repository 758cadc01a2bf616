//! The client verbs: each is one or two gRPC calls and a rendering.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use weir_core::spec::JobSpec;
use weir_proto::convert;
use weir_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
use weir_runtime::grpc::AuthedChannel as Channel;
use weir_runtime::security::ClientSecurity;

use crate::render;

/// Filters of `weir jobs`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    namespace: Option<String>,
    /// pending, running, paused, succeeded, failed, cancelled, compensating, compensated.
    #[arg(long)]
    state: Option<String>,
    /// Exact job name.
    #[arg(long)]
    name: Option<String>,
    /// key=value; repeat for several (all must match).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Jobs per page.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Continue from a previous page's token.
    #[arg(long)]
    page_token: Option<String>,
}

/// A connection to the master.
pub struct Client {
    jobs: JobServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
    audit: v1::audit_service_client::AuditServiceClient<Channel>,
    connections: v1::connection_service_client::ConnectionServiceClient<Channel>,
    pub(crate) schedules: v1::schedule_service_client::ScheduleServiceClient<Channel>,
    pub(crate) json: bool,
}

/// `weir connections`: a namespace's named connections.
#[derive(Debug, clap::Subcommand)]
pub enum ConnectionsCommand {
    /// The connections of a namespace (default: every namespace you may read).
    List {
        #[arg(long, short = 'n', default_value = "")]
        namespace: String,
    },
    /// One connection, its config whole.
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Create or replace a connection (needs admin on the namespace).
    Put {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
        /// The step config it stands for, as YAML or JSON ("-": standard input); credentials
        /// by reference ({env: PREFIX} or {file: /path}), never their values.
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a connection (needs admin; jobs already submitted keep their config).
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

/// Filters of `weir audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this caller (a token's subject).
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// Only this call, e.g. SubmitJob.
    #[arg(long)]
    action: Option<String>,
    /// ok, unauthenticated, denied, invalid, limited or failed.
    #[arg(long)]
    outcome: Option<String>,
    /// Only records of this recent past, e.g. 1h.
    #[arg(long)]
    since: Option<String>,
    /// Records per page.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long)]
    page_token: Option<String>,
}

/// `weir token`: what to sign.
#[derive(Debug, Args)]
pub struct TokenMint {
    /// The token's subject (who it names).
    #[arg(long)]
    subject: String,
    /// `namespace:role` grants ("finance:write,*:read"); roles: read, write, admin, worker.
    #[arg(long, value_delimiter = ',')]
    permissions: Vec<String>,
    /// How long it is valid.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// The shared secret (at least 32 bytes).
    #[arg(long = "auth-hs256-secret", env = "WEIR_AUTH_HS256_SECRET", hide_env_values = true)]
    secret: String,
    /// `iss`, if the master requires one.
    #[arg(long = "auth-issuer", env = "WEIR_AUTH_ISSUER")]
    issuer: Option<String>,
    /// `aud`, if the master requires one.
    #[arg(long = "auth-audience", env = "WEIR_AUTH_AUDIENCE")]
    audience: Option<String>,
}

/// Prints a signed token.
pub fn mint(args: TokenMint) -> anyhow::Result<()> {
    let grants = weir_auth::Grants::parse(args.permissions.iter().map(String::as_str)).map_err(anyhow::Error::msg)?;
    let ttl = weir_core::duration::parse(&args.ttl).map_err(|e| anyhow::anyhow!("--ttl {:?}: {e}", args.ttl))?;
    if args.secret.len() < 32 {
        bail!("the HS256 secret has {} bytes; give at least 32", args.secret.len());
    }
    let token = weir_auth::token::mint(
        args.secret.as_bytes(),
        &args.subject,
        &grants,
        ttl,
        args.issuer.as_deref(),
        args.audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}

/// Turns a gRPC error into a message a person can act on.
pub(crate) fn explain(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => {
            anyhow::anyhow!("master unavailable ({}). Is `weir dev` or weir-master running? ", s.message())
        }
        code => anyhow::anyhow!("{:?}: {}", code, s.message()),
    }
}

/// Reads a job spec from YAML or JSON; errors carry the file name and position.
pub fn read_spec(path: &Path) -> anyhow::Result<JobSpec> {
    read_yaml(path, "a valid job spec")
}

/// Reads YAML or JSON from a file, or standard input for `-`; an error says the file is
/// not `what`, with the parser's position.
pub(crate) fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not {what}", path.display()))
}

impl Client {
    pub fn connect(url: &str, json: bool, security: &ClientSecurity) -> anyhow::Result<Client> {
        let ch = weir_runtime::grpc::channel(url, security)?;
        Ok(Client {
            jobs: JobServiceClient::new(ch.clone()),
            workers: WorkerServiceClient::new(ch.clone()),
            audit: v1::audit_service_client::AuditServiceClient::new(ch.clone()),
            connections: v1::connection_service_client::ConnectionServiceClient::new(ch.clone()),
            schedules: v1::schedule_service_client::ScheduleServiceClient::new(ch),
            json,
        })
    }

    /// `weir connections …`.
    pub async fn connections(&mut self, command: ConnectionsCommand) -> anyhow::Result<()> {
        let shown = match command {
            ConnectionsCommand::List { namespace } => {
                let r = self.connections.list_connections(v1::ListConnectionsRequest { namespace }).await;
                r.map_err(explain)?.into_inner().connections
            }
            ConnectionsCommand::Get { name, namespace } => {
                let r = self.connections.get_connection(v1::GetConnectionRequest { namespace, name }).await;
                r.map_err(explain)?.into_inner().connection.into_iter().collect()
            }
            ConnectionsCommand::Put { name, namespace, config, description } => {
                let value: serde_json::Value = read_yaml(&config, "YAML or JSON")?;
                let wire = v1::Connection {
                    namespace,
                    name,
                    description,
                    config_json: value.to_string(),
                    ..Default::default()
                };
                let r = self.connections.put_connection(v1::PutConnectionRequest { connection: Some(wire) }).await;
                let r = r.map_err(explain)?.into_inner();
                if !self.json {
                    let c = r.connection.as_ref().context("master returned no connection")?;
                    let verb = if r.created { "created" } else { "replaced" };
                    println!("connection {}/{} {verb}", c.namespace, c.name);
                    return Ok(());
                }
                r.connection.into_iter().collect()
            }
            ConnectionsCommand::Delete { name, namespace } => {
                let req = v1::DeleteConnectionRequest { namespace: namespace.clone(), name: name.clone() };
                self.connections.delete_connection(req).await.map_err(explain)?;
                if !self.json {
                    println!("connection {namespace}/{name} deleted");
                }
                return Ok(());
            }
        };
        if self.json {
            for c in &shown {
                println!("{}", render::connection_value(c));
            }
        } else {
            render::connection_table(&shown);
        }
        Ok(())
    }

    /// `weir audit`: one page of the audit trail.
    pub async fn audit(&mut self, args: AuditArgs) -> anyhow::Result<()> {
        if let Some(o) = &args.outcome {
            o.parse::<weir_core::audit::Outcome>().map_err(anyhow::Error::msg)?;
        }
        let since = match &args.since {
            None => None,
            Some(s) => {
                let ago = weir_core::duration::parse(s).map_err(|e| anyhow::anyhow!("--since {s:?}: {e}"))?;
                let at = weir_runtime::now_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
                Some(convert::timestamp(at))
            }
        };
        let req = v1::ListAuditRequest {
            subject: args.subject.unwrap_or_default(),
            namespace: args.namespace.unwrap_or_default(),
            action: args.action.unwrap_or_default(),
            outcome: args.outcome.unwrap_or_default(),
            since,
            page_size: args.limit,
            page_token: args.page_token.unwrap_or_default(),
        };
        let r = self.audit.list_audit(req).await.map_err(explain)?.into_inner();
        if self.json {
            for a in &r.records {
                println!("{}", render::audit_value(a));
            }
        } else {
            render::audit_table(&r.records);
            if !r.next_page_token.is_empty() {
                println!("more: --page-token {}", r.next_page_token);
            }
        }
        Ok(())
    }

    pub async fn submit(&mut self, file: &Path) -> anyhow::Result<String> {
        let spec = read_spec(file)?;
        let r = self
            .jobs
            .submit_job(v1::SubmitJobRequest { spec: Some(convert::spec_to_wire(&spec)) })
            .await
            .map_err(explain)?;
        let r = r.into_inner();
        let job = r.job.context("master returned no job")?;
        if self.json {
            render::json_job(&job);
        } else if r.created {
            println!("submitted job {} ({} tasks)", job.id, job.tasks_total);
        } else {
            println!("job {} already exists for this run_id; not submitted again", job.id);
        }
        Ok(job.id)
    }

    async fn fetch(&mut self, id: &str) -> anyhow::Result<(v1::Job, Vec<v1::Task>)> {
        let job = self.jobs.get_job(v1::GetJobRequest { job_id: id.into() }).await.map_err(explain)?.into_inner().job;
        let tasks = self.jobs.get_job_tasks(v1::GetJobTasksRequest { job_id: id.into() }).await.map_err(explain)?;
        Ok((job.context("master returned no job")?, tasks.into_inner().tasks))
    }

    pub async fn get(&mut self, id: &str) -> anyhow::Result<()> {
        let (job, tasks) = self.fetch(id).await?;
        if self.json {
            render::json_job_tasks(&job, &tasks);
        } else {
            render::job_detail(&job, &tasks);
        }
        Ok(())
    }

    pub async fn list(&mut self, a: ListArgs) -> anyhow::Result<()> {
        let state = match a.state {
            None => 0,
            Some(s) => {
                let st: weir_core::model::JobState = s.parse().map_err(anyhow::Error::msg)?;
                convert::job_state(st) as i32
            }
        };
        let mut labels = std::collections::HashMap::new();
        for l in a.labels {
            let Some((k, v)) = l.split_once('=') else { bail!("--label {l:?} must look like key=value") };
            labels.insert(k.to_string(), v.to_string());
        }
        let req = v1::ListJobsRequest {
            namespace: a.namespace.unwrap_or_default(),
            state,
            name: a.name.unwrap_or_default(),
            labels,
            page_size: a.limit,
            page_token: a.page_token.unwrap_or_default(),
        };
        let r = self.jobs.list_jobs(req).await.map_err(explain)?.into_inner();
        if self.json {
            render::json_list(&r);
        } else {
            render::job_table(&r.jobs);
            if !r.next_page_token.is_empty() {
                println!("more: weir jobs --page-token {}", r.next_page_token);
            }
        }
        Ok(())
    }

    pub async fn pause(&mut self, id: &str) -> anyhow::Result<()> {
        let r = self.jobs.pause_job(v1::PauseJobRequest { job_id: id.into() }).await.map_err(explain)?;
        self.say(r.into_inner().job)
    }

    pub async fn resume(&mut self, id: &str) -> anyhow::Result<()> {
        let r = self.jobs.resume_job(v1::ResumeJobRequest { job_id: id.into() }).await.map_err(explain)?;
        self.say(r.into_inner().job)
    }

    pub async fn cancel(&mut self, id: &str, reason: String) -> anyhow::Result<()> {
        let r = self.jobs.cancel_job(v1::CancelJobRequest { job_id: id.into(), reason }).await.map_err(explain)?;
        self.say(r.into_inner().job)
    }

    pub async fn retry(&mut self, id: &str) -> anyhow::Result<()> {
        let r = self.jobs.retry_job(v1::RetryJobRequest { job_id: id.into() }).await.map_err(explain)?;
        self.say(r.into_inner().job)
    }

    fn say(&self, job: Option<v1::Job>) -> anyhow::Result<()> {
        let job = job.context("master returned no job")?;
        if self.json {
            render::json_job(&job);
        } else {
            println!("job {} is {}", job.id, render::job_state(job.state));
        }
        Ok(())
    }

    pub async fn workers(&mut self) -> anyhow::Result<()> {
        let r = self.workers.list_workers(v1::ListWorkersRequest {}).await.map_err(explain)?.into_inner();
        render::worker_table(&r.workers, self.json);
        Ok(())
    }

    pub async fn apis(&mut self) -> anyhow::Result<()> {
        let r = self.workers.list_quotas(v1::ListQuotasRequest {}).await.map_err(explain)?.into_inner();
        render::quota_table(&r.quotas, &r.circuits, self.json);
        Ok(())
    }

    pub async fn watermarks(&mut self, namespace: &str) -> anyhow::Result<()> {
        let req = v1::ListWatermarksRequest { namespace: namespace.into(), limit: 0 };
        let r = self.workers.list_watermarks(req).await.map_err(explain)?.into_inner();
        render::watermark_table(&r.watermarks, self.json);
        Ok(())
    }

    /// Follows a job until it finishes: a progress bar on a terminal, one line per event otherwise.
    pub async fn watch(&mut self, id: &str) -> anyhow::Result<ExitCode> {
        let (job, _) = self.fetch(id).await?;
        let mut stream = self
            .jobs
            .watch_job(v1::WatchJobRequest { job_id: id.into(), from_seq: 1 })
            .await
            .map_err(explain)?
            .into_inner();
        let mut view = render::Progress::new(&job, self.json);
        let mut last = job.state;
        while let Some(msg) = stream.message().await.map_err(explain)? {
            if let Some(e) = msg.event {
                view.event(&e);
                if e.task_id.is_empty() {
                    last = e.job_state;
                }
            }
        }
        let (job, _) = self.fetch(id).await?;
        view.finish(&job);
        let done = job.state == v1::JobState::Succeeded as i32 || last == v1::JobState::Succeeded as i32;
        Ok(if done { ExitCode::SUCCESS } else { ExitCode::from(2) })
    }
}

/// A connection to the file manager's own service.
pub struct FilesClient {
    files: v1::file_service_client::FileServiceClient<Channel>,
    json: bool,
}

/// A manager's own service's error, with what to check when it is not there.
fn explain_manager(s: tonic::Status, manager: &str, dev_addr: &str) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow::anyhow!(
            "{manager} unavailable ({}). Is it running with WEIR_MANAGER_LISTEN (weir dev: {dev_addr})?",
            s.message()
        ),
        code => anyhow::anyhow!("{:?}: {}", code, s.message()),
    }
}

fn explain_files(s: tonic::Status) -> anyhow::Error {
    explain_manager(s, "file manager", "127.0.0.1:50052")
}

impl FilesClient {
    pub fn connect(url: &str, json: bool, security: &ClientSecurity) -> anyhow::Result<FilesClient> {
        let channel = weir_runtime::grpc::channel(url, security)?;
        Ok(FilesClient { files: v1::file_service_client::FileServiceClient::new(channel), json })
    }

    pub async fn list(&mut self, watch: Option<String>, limit: u32) -> anyhow::Result<()> {
        let req = v1::ListFilesRequest { watch: watch.unwrap_or_default(), limit };
        let files = self.files.list_files(req).await.map_err(explain_files)?.into_inner().files;
        if self.json {
            for f in &files {
                println!(
                    "{}",
                    serde_json::json!({"watch": f.watch, "path": f.path, "size": f.size, "generation": f.generation,
                                       "state": f.state, "job_id": f.job_id, "etag": f.etag, "modified_ms": f.modified_ms})
                );
            }
        } else {
            render::inventory_table(&files);
        }
        Ok(())
    }

    pub async fn redrive(&mut self, watch: &str, path: &str) -> anyhow::Result<()> {
        let req = v1::RedriveFileRequest { watch: watch.into(), path: path.into() };
        let r = self.files.redrive_file(req).await.map_err(explain_files)?.into_inner();
        let g = r.file.map(|f| f.generation).unwrap_or_default();
        println!("re-driven: {watch} {path} (generation {g}); its new job starts at the watch's next round");
        Ok(())
    }
}

/// A connection to the batch manager's dataset catalogue.
pub struct DatasetsClient {
    datasets: v1::dataset_service_client::DatasetServiceClient<Channel>,
    json: bool,
}

fn explain_datasets(s: tonic::Status) -> anyhow::Error {
    explain_manager(s, "batch manager", "127.0.0.1:50053")
}

impl DatasetsClient {
    pub fn connect(url: &str, json: bool, security: &ClientSecurity) -> anyhow::Result<DatasetsClient> {
        let channel = weir_runtime::grpc::channel(url, security)?;
        Ok(DatasetsClient { datasets: v1::dataset_service_client::DatasetServiceClient::new(channel), json })
    }

    pub async fn list(&mut self, limit: u32) -> anyhow::Result<()> {
        let req = v1::ListDatasetsRequest { limit };
        let all = self.datasets.list_datasets(req).await.map_err(explain_datasets)?.into_inner().datasets;
        if self.json {
            for d in &all {
                println!("{}", render::dataset_value(d));
            }
        } else {
            render::dataset_table(&all);
        }
        Ok(())
    }

    pub async fn history(&mut self, dataset: &str) -> anyhow::Result<()> {
        let req = v1::GetDatasetHistoryRequest { dataset: dataset.into() };
        let versions = self.datasets.get_dataset_history(req).await.map_err(explain_datasets)?.into_inner().versions;
        if self.json {
            for v in &versions {
                println!("{}", render::dataset_value(v));
            }
        } else {
            render::dataset_history(&versions);
        }
        Ok(())
    }
}

/// What a stream manager's streams are doing (`weir streams`).
pub async fn streams(url: &str, json: bool, security: &ClientSecurity) -> anyhow::Result<()> {
    let channel = weir_runtime::grpc::channel(url, security)?;
    let mut c = v1::stream_service_client::StreamServiceClient::new(channel);
    let r = c
        .list_streams(v1::ListStreamsRequest {})
        .await
        .map_err(|s| explain_manager(s, "stream manager", "127.0.0.1:50054"))?
        .into_inner();
    if json {
        println!("{}", render::streams_value(&r));
    } else {
        render::streams_table(&r);
    }
    Ok(())
}
