//! `weir-bench`: measures the engine end to end and prints `name=value unit` lines.
//!
//! It starts the real `weir-master` (release build, next to this binary) on a fresh
//! PostgreSQL schema, then:
//! 1. latency: at idle, this process long-polls like a worker while it submits one-step
//!    jobs one at a time; submit-to-first-lease is the time from the SubmitJob call to the
//!    lease arriving (p50/p99);
//! 2. memory: queues `--tasks` no-op tasks (no worker running) and reads the master's
//!    peak resident memory;
//! 3. throughput: starts the four real manager processes and times how fast they drain
//!    those tasks through gRPC with durable state (tasks/s end to end);
//! 4. the same again with events on: a real Kafka-protocol broker (tansu) and the master
//!    publishing every event through the outbox relay — throughput, the change against (3),
//!    and relay events/s until every event of the run is published;
//! 5. the same as (3) with telemetry off and on, alternating three times (fresh schemas): on is
//!    `/metrics` served and scraped each second and every span exported over OTLP to a
//!    receiver on loopback — throughputs and the change;
//! 6. commit-to-publish latency: one-step jobs at a steady event rate with real managers;
//!    for each event, the time from the master stamping it to this process reading it.
//!
//! `weir-bench limits` measures the engine at its limits (see [`limits`]); `weir-bench
//! schedules` cron schedules firing (see [`schedules`]); `weir-bench data`
//! the data path (see [`data`]); `weir-bench api` the
//! API manager (see [`api`]); `weir-bench streams` the stream manager (see [`streams`]).

mod api;
mod data;
mod limits;
mod observe;
mod schedules;
mod secure;
mod streams;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::process::{Child, Command};
use weir_bus::{Bus, KafkaBus, KafkaConfig};
use weir_core::events::{topic, CloudEvent};
use weir_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
use weir_runtime::grpc::AuthedChannel as Channel;
use weir_runtime::security::ClientSecurity;

#[derive(Debug, Parser)]
#[command(name = "weir-bench", about = "Weir engine benchmark (prints name=value unit lines)")]
struct Args {
    #[command(subcommand)]
    what: Option<What>,
    /// No-op tasks to queue and drain.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Steps per job (independent no-op steps spread over the four queues).
    #[arg(long, default_value_t = 100)]
    steps_per_job: usize,
    /// Idle submit-to-lease samples.
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    /// Tasks each manager runs at once.
    #[arg(long, default_value_t = 256)]
    concurrency: u32,
    /// Events per second offered in the commit-to-publish latency run.
    #[arg(long, default_value_t = 1000)]
    event_rate: u32,
    /// Length of that run.
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// CSV → Parquet: Weir against pyarrow and DuckDB, and peak memory on a large file.
    Data(data::DataArgs),
    /// HTTP API → Parquet: the API manager against dlt's rest_api; rate-limit accuracy.
    Api(api::ApiArgs),
    /// Kafka, RabbitMQ and NATS → Parquet/PostgreSQL: the stream manager against a plain
    /// confluent-kafka + pyarrow consumer; latency; memory with a stalled sink.
    Streams(streams::StreamArgs),
    /// The engine at its limits: step-to-step latency, chained-steps throughput, the
    /// store's size per million tasks and under retention.
    Limits(limits::LimitsArgs),
    /// Cron schedules firing every minute: slot-to-job-created latency and the master's
    /// CPU, against graphile-worker's crontab.
    Schedules(schedules::ScheduleArgs),
    /// (internal) Converts one file with Weir's pipeline and prints its figures.
    #[command(hide = true)]
    ConvertOne {
        input: PathBuf,
        out: PathBuf,
        /// Only the staged output, no sink: the conversion without reconciliation or landing.
        #[arg(long)]
        staged: bool,
    },
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!("{} not built (make bench builds it)", p.display());
    }
    Ok(p)
}

/// A free loopback port (bound and released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let mut c = Command::new(bin(name)?);
    c.args(args).kill_on_drop(true);
    // WEIR_BENCH_SHOW_LOGS=1: the processes' logs on stderr, at RUST_LOG's level.
    if std::env::var_os("WEIR_BENCH_SHOW_LOGS").is_some() {
        c.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    } else {
        c.stdout(Stdio::null()).stderr(Stdio::null()).env("RUST_LOG", "warn");
    }
    // The benchmark's files: the temporary and working directories, and its own cache.
    let mut roots = weir_runtime::security::SandboxArgs::local().allowed_paths;
    roots.push(format!("{}/.cache/weir/bench", std::env::var("HOME").unwrap_or_default()));
    c.env("WEIR_ALLOWED_PATHS", roots.join(","));
    for (k, v) in env {
        c.env(k, v);
    }
    Ok(c.spawn()?)
}

fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// A process's resident memory now, in MB.
pub(crate) fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A process's user+system CPU seconds so far.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every PostgreSQL server process (the postmaster and its backends).
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_seconds)
        .sum()
}

/// Rows of the Parquet files under `lake` (Weir's own `_…` folders left out), from their footers.
pub(crate) fn lake_rows(lake: &Path) -> u64 {
    let mut n = 0;
    for e in walk(lake) {
        if e.extension().is_some_and(|x| x == "parquet") && !e.to_string_lossy().contains("/_") {
            if let Ok(r) = std::fs::File::open(&e)
                .map_err(anyhow::Error::from)
                .and_then(|f| parquet::file::reader::SerializedFileReader::new(f).map_err(anyhow::Error::from))
            {
                use parquet::file::reader::FileReader;
                n += r.metadata().file_metadata().num_rows() as u64;
            }
        }
    }
    n
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Submits a job spec (JSON) and returns its id.
pub(crate) async fn submit(jobs: &mut JobServiceClient<Channel>, spec: serde_json::Value) -> anyhow::Result<String> {
    let spec: weir_core::spec::JobSpec = serde_json::from_value(spec)?;
    let job = jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(weir_proto::convert::spec_to_wire(&spec)) })
        .await?
        .into_inner()
        .job
        .context("no job")?;
    Ok(job.id)
}

/// Waits until a job ends; an error unless it succeeded.
pub(crate) async fn wait(jobs: &mut JobServiceClient<Channel>, id: &str) -> anyhow::Result<()> {
    loop {
        let j = jobs.get_job(v1::GetJobRequest { job_id: id.into() }).await?.into_inner().job.context("job")?;
        match weir_proto::convert::job_state_from_wire(j.state) {
            Some(s) if s.is_terminal() => {
                if s.as_str() != "succeeded" {
                    bail!("the job ended {}", s.as_str());
                }
                return Ok(());
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn noop(id: String, queue: &str) -> v1::StepSpec {
    v1::StepSpec { id, kind: "noop".into(), queue: queue.into(), ..Default::default() }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.what {
        Some(What::Data(d)) => {
            println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
            return data::run(d).await;
        }
        Some(What::Api(a)) => {
            println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
            return api::run(a).await;
        }
        Some(What::Streams(s)) => {
            println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
            return streams::run(s).await;
        }
        Some(What::Limits(l)) => {
            println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
            return limits::run(l, &args).await;
        }
        Some(What::Schedules(s)) => {
            println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
            return schedules::run(s, &args).await;
        }
        Some(What::ConvertOne { input, out, staged }) => return data::convert_one(input, out, *staged),
        None => {}
    }
    println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));

    // Events off: the engine alone.
    let m = Master::start(None).await?;
    idle_latency(&m, &args).await?;
    let off = engine(&m, &args, "", false).await?;
    m.stop().await?;

    // Security on: JWT on every call, mTLS between every process and the master.
    let secure = std::sync::Arc::new(secure::Secure::new()?);
    let m = Master::start_with(None, Some(secure), None, &[]).await?;
    let on = engine(&m, &args, "secure_", false).await?;
    println!("throughput_change_with_security={:+.1} %", (on - off) / off * 100.0);
    m.stop().await?;

    // Telemetry on: metrics scraped, every span exported to a receiver on loopback. Off
    // and on alternate three times, each on a fresh schema, so run order (a warming PostgreSQL)
    // weighs on both sides alike; the change is of the sums.
    let python =
        PathBuf::from(format!("{}/.cache/weir/bench-venv/bin/python", std::env::var("HOME").unwrap_or_default()));
    // Two samplings: every trace, and one in ten (deploy/base/config.yaml's suggestion).
    let (mut sum_off, mut sum_all, mut sum_tenth) = (0.0, 0.0, 0.0);
    for round in 1..=3 {
        let m = Master::start(None).await?;
        sum_off += engine(&m, &args, &format!("telemetry_off_{round}_"), false).await?;
        m.stop().await?;
        for (ratio, name, sum) in [(None, "all", &mut sum_all), (Some(0.1), "tenth", &mut sum_tenth)] {
            let observe = Arc::new(observe::Observe::start(&python, ratio).await?);
            let m = Master::start_observed(observe.clone()).await?;
            let label = format!("telemetry_{name}_{round}_");
            *sum += engine(&m, &args, &label, false).await?;
            let (spans, scrapes, cpu) = observe.counts();
            println!("{label}spans_exported={spans} spans");
            println!("{label}scrapes={scrapes} scrapes");
            println!("{label}receiver_cpu={cpu:.1} s");
            m.stop().await?;
        }
    }
    let change = |on: f64| (on - sum_off) / sum_off * 100.0;
    println!("throughput_change_with_telemetry_all_traces={:+.1} %", change(sum_all));
    println!("throughput_change_with_telemetry_tenth_of_traces={:+.1} %", change(sum_tenth));

    // Events on: the same run with every event going through the outbox and the relay into
    // a real Kafka-protocol broker, then commit-to-publish latency at a steady rate.
    let broker = Broker::start()?;
    broker.wait().await?;
    let m = Master::start(Some(&broker.brokers)).await?;
    let on = engine(&m, &args, "events_on_", false).await?;
    println!("throughput_change_with_events={:+.1} %", (on - off) / off * 100.0);
    m.stop().await?;
    drop(broker);

    // A fresh broker and master, so the latency consumer starts on empty topics.
    let broker = Broker::start()?;
    broker.wait().await?;
    let m = Master::start(Some(&broker.brokers)).await?;
    relay_latency(&m, &broker, &args).await?;
    m.stop().await?;
    Ok(())
}

/// The master under test on a fresh schema.
pub(crate) struct Master {
    child: Child,
    pid: u32,
    url: String,
    schema: weir_store::testing::TestSchema,
    jobs: JobServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
    pool: sqlx::PgPool,
    secure: Option<std::sync::Arc<secure::Secure>>,
    observe: Option<Arc<observe::Observe>>,
}

impl Master {
    pub(crate) async fn start(kafka: Option<&str>) -> anyhow::Result<Master> {
        Master::start_with(kafka, None, None, &[]).await
    }

    /// A master with these settings added to its environment.
    pub(crate) async fn start_env(env: &[(&str, String)]) -> anyhow::Result<Master> {
        Master::start_with(None, None, None, env).await
    }

    /// A master, and later its managers, with telemetry on.
    async fn start_observed(observe: Arc<observe::Observe>) -> anyhow::Result<Master> {
        Master::start_with(None, None, Some(observe), &[]).await
    }

    /// A master with tokens and mTLS when `secure` is given, telemetry with `observe`.
    async fn start_with(
        kafka: Option<&str>,
        secure: Option<std::sync::Arc<secure::Secure>>,
        observe: Option<Arc<observe::Observe>>,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Master> {
        let schema = weir_store::testing::TestSchema::create().await.context("PostgreSQL for the benchmark")?;
        let port = free_port()?;
        let scheme = if secure.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let mut env: Vec<(&str, String)> = vec![("WEIR_STORE_URL", schema.url.clone())];
        env.extend(extra.iter().cloned());
        if let Some(k) = kafka {
            env.push(("WEIR_KAFKA_BROKERS", k.to_string()));
        }
        let client = match &secure {
            Some(s) => {
                env.extend(s.master_env());
                s.client()?
            }
            None => ClientSecurity::none(),
        };
        if let Some(o) = &observe {
            env.extend(o.env()?);
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let child = spawn("weir-master", &["--listen", &format!("127.0.0.1:{port}")], &env)?;
        let pid = child.id().context("master pid")?;
        let channel = weir_runtime::grpc::channel(&url, &client)?;
        let mut workers = WorkerServiceClient::new(channel.clone());
        wait_ready(&mut workers).await?;
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&schema.url).await?;
        Ok(Master { child, pid, url, schema, jobs: JobServiceClient::new(channel), workers, pool, secure, observe })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        drop(self.child);
        self.pool.close().await;
        self.schema.drop().await?;
        Ok(())
    }

    fn managers(&self, concurrency: u32) -> anyhow::Result<Vec<Child>> {
        let conc = concurrency.to_string();
        let mut env: Vec<(&str, String)> = vec![
            ("WEIR_MASTER_URL", self.url.clone()),
            ("WEIR_WORKER_CONCURRENCY", conc),
            ("WEIR_POLL_WAIT", "1s".into()),
        ];
        if let Some(s) = &self.secure {
            env.extend(s.manager_env());
        }
        QUEUES
            .iter()
            .map(|q| {
                let mut env = env.clone();
                if let Some(o) = &self.observe {
                    env.extend(o.env()?);
                }
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                spawn(&format!("weir-{q}-manager"), &[], &env)
            })
            .collect()
    }

    /// Transactions committed in the bench's database so far (PostgreSQL's statistics,
    /// which lag by up to half a second; the benchmark's own queries are among them).
    async fn commits(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn succeeded(&self, prefix: &str) -> anyhow::Result<usize> {
        self.count(prefix, "state = 'succeeded'").await
    }

    async fn unfinished(&self, prefix: &str) -> anyhow::Result<usize> {
        self.count(prefix, "state IN ('pending', 'running', 'paused', 'compensating')").await
    }

    /// Jobs named `prefix…` matching `condition`.
    async fn count(&self, prefix: &str, condition: &str) -> anyhow::Result<usize> {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM weir_jobs WHERE {condition} AND name LIKE $1"))
            .bind(format!("{prefix}%"))
            .fetch_one(&self.pool)
            .await?;
        Ok(n as usize)
    }
}

const QUEUES: [&str; 4] = ["api", "file", "batch", "stream"];

/// A long poll on `queue` as worker "bench", already sent when this returns; it ends with
/// the time the lease arrived.
pub(crate) fn poll(m: &Master, queue: &str) -> tokio::task::JoinHandle<anyhow::Result<(Instant, v1::TaskLease)>> {
    let mut w = m.workers.clone();
    let req = v1::AcquireTasksRequest {
        worker_id: "bench".into(),
        queue: queue.into(),
        max_tasks: 1,
        wait: Some(weir_proto::convert::duration(Duration::from_secs(10))),
    };
    tokio::spawn(async move {
        let mut leases = w.acquire_tasks(req).await?.into_inner().leases;
        let at = Instant::now();
        Ok((at, leases.pop().context("no lease within 10 s")?))
    })
}

/// Reports `lease` done as worker "bench".
pub(crate) async fn complete(m: &Master, lease: &v1::TaskLease) -> anyhow::Result<()> {
    let done = v1::CompleteTaskRequest {
        worker_id: "bench".into(),
        task_id: lease.task_id.clone(),
        fence_token: lease.fence_token,
        output_json: String::new(),
    };
    m.workers.clone().complete_task(done).await?;
    Ok(())
}

/// Idle submit-to-first-lease latency, this process acting as the worker.
async fn idle_latency(m: &Master, args: &Args) -> anyhow::Result<()> {
    let mut jobs = m.jobs.clone();
    let mut samples = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let poll = poll(m, "api");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let spec = v1::JobSpec { name: format!("lat-{i}"), steps: vec![noop("a".into(), "api")], ..Default::default() };
        let t0 = Instant::now();
        jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await?;
        let (t1, lease) = poll.await??;
        samples.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        complete(m, &lease).await?;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!("submit_to_first_lease_p50={:.2} ms", percentile(&samples, 0.50));
    println!("submit_to_first_lease_p99={:.2} ms", percentile(&samples, 0.99));
    Ok(())
}

/// Queues `--tasks` no-op tasks with no worker running, then times four real manager
/// processes draining them. Returns tasks/s. With events on, also times the relay until
/// every event of the run is published.
async fn engine(m: &Master, args: &Args, label: &str, probe: bool) -> anyhow::Result<f64> {
    let n_jobs = args.tasks.div_ceil(args.steps_per_job);
    let t0 = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for j in 0..n_jobs {
        let steps = (0..args.steps_per_job).map(|s| noop(format!("s{s}"), QUEUES[s % 4])).collect();
        let spec = v1::JobSpec { name: format!("bench-{j}"), steps, ..Default::default() };
        let mut c = m.jobs.clone();
        pending.spawn(async move { c.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.map(|_| ()) });
        while pending.len() >= 16 {
            pending.join_next().await.context("join")???;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    let queued = n_jobs * args.steps_per_job;
    let secs = t0.elapsed().as_secs_f64();
    if label.is_empty() {
        println!("submit_jobs_per_sec={:.0} jobs/s", n_jobs as f64 / secs);
        println!("submit_tasks_per_sec={:.0} tasks/s", queued as f64 / secs);
        println!("queued_tasks={queued} tasks");
        println!("master_peak_rss_with_queued_tasks={:.1} MB", peak_rss_mb(m.pid));
    }

    let (cpu0, pg0, commits0) = (cpu_seconds(m.pid), postgres_cpu_seconds(), m.commits().await?);
    let t0 = Instant::now();
    let managers = m.managers(args.concurrency)?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let stop_probes = tokio_util::sync::CancellationToken::new();
    let drained = async {
        // Until no job of the run is unfinished: with a short retention (the limits run)
        // the first to succeed are purged before the last.
        while m.unfinished("bench-").await? > 0 {
            if Instant::now() > deadline {
                bail!("drain did not finish in 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_probes.cancel();
        Ok(t0.elapsed())
    };
    let probes = async {
        if probe {
            limits::first_lease_while_draining(m, stop_probes.clone()).await
        } else {
            Ok(())
        }
    };
    let (drained, probed) = tokio::join!(drained, probes);
    let drained = drained?;
    probed?;
    let failed = m.count("bench-", "state <> 'succeeded'").await?;
    if failed > 0 {
        bail!("{failed} jobs of the run did not succeed");
    }
    let secs = drained.as_secs_f64();
    let rate = queued as f64 / secs;
    let (cpu, pg, commits) =
        (cpu_seconds(m.pid) - cpu0, postgres_cpu_seconds() - pg0, m.commits().await?.saturating_sub(commits0));
    println!("{label}throughput_noop_tasks_per_sec={rate:.0} tasks/s");
    println!("{label}drain_seconds={secs:.1} s");
    // Where one master ends: the scheduler is one task, so a master near 100 % of a core is
    // at its ceiling; PostgreSQL's share and the commits show what the store takes.
    println!("{label}drain_master_cpu={:.0} % of a core", cpu / secs * 100.0);
    println!("{label}drain_postgres_cpu={:.0} % of a core", pg / secs * 100.0);
    println!("{label}drain_commits_per_sec={:.0} commits/s", commits as f64 / secs);
    println!("{label}drain_tasks_per_commit={:.0} tasks", queued as f64 / commits.max(1) as f64);
    println!("{label}master_peak_rss={:.1} MB", peak_rss_mb(m.pid));
    drop(managers);
    if label.starts_with("events_on") {
        // The relay started with the run; wait until it has published up to the newest event.
        let tail: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::int8 FROM weir_events").fetch_one(&m.pool).await?;
        let first: i64 =
            sqlx::query_scalar("SELECT COALESCE(MIN(id), 0)::int8 FROM weir_events").fetch_one(&m.pool).await?;
        loop {
            let pos: Option<i64> = sqlx::query_scalar("SELECT last_id FROM weir_relay WHERE name = 'kafka'")
                .fetch_optional(&m.pool)
                .await?;
            if pos.unwrap_or(0) >= tail {
                break;
            }
            if Instant::now() > deadline {
                bail!("the relay did not catch up in 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let events = tail - first + 1;
        println!("relay_events_published={events} events");
        println!("relay_events_per_sec={:.0} events/s", events as f64 / secs);
    }
    Ok(rate)
}

/// Submits one-step jobs at a steady rate (about `--event-rate` events/s: each job makes six
/// events) with real managers running, and measures, for every event of those jobs, the time
/// from the master stamping it (just before its commit) to this process reading it from the
/// broker.
async fn relay_latency(m: &Master, broker: &Broker, args: &Args) -> anyhow::Result<()> {
    // The consumer asks the broker not to hold a fetch back waiting for more data (the
    // default 500 ms would be measured instead of the publish).
    let mut cfg = KafkaConfig::plaintext(&broker.brokers);
    cfg.properties.push(("fetch.wait.max.ms".into(), "5".into()));
    let bus: Arc<dyn Bus> = Arc::new(KafkaBus::new(cfg)?);
    // The master creates the topics when it starts leading.
    let mut sub = loop {
        match bus.subscribe("bench-latency", &[topic::JOBS, topic::TASKS]).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let start_ms = now_ms();
    let managers = m.managers(16)?;
    let jobs_per_sec = (args.event_rate as f64 / 6.0).max(1.0);
    let total_jobs = (jobs_per_sec * args.latency_seconds as f64) as usize;
    let mut c = m.jobs.clone();
    let submitter = tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / jobs_per_sec);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..total_jobs {
            tick.tick().await;
            let spec = v1::JobSpec {
                name: format!("rate-{i}"),
                steps: vec![noop("a".into(), QUEUES[i % 4])],
                ..Default::default()
            };
            c.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await?;
        }
        anyhow::Ok(())
    });
    let mut lat = Vec::new();
    let want = total_jobs * 6;
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(args.latency_seconds + 120);
    while lat.len() < want && Instant::now() < deadline {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else { continue };
        // Before the relay created the topics the consumer reports them unknown: keep reading.
        let Ok(d) = d else { continue };
        let received = now_ms();
        let Ok(e) = CloudEvent::decode(&d.message.payload) else { continue };
        let Some(data) = e.data.as_ref() else { continue };
        let name = data["job_name"].as_str().unwrap_or_default();
        let stamped = e.time.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()).map(system_ms);
        if let (true, Some(at)) = (name.starts_with("rate-"), stamped) {
            if at >= start_ms {
                lat.push((received - at) as f64);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    submitter.await??;
    drop(managers);
    lat.sort_by(|a, b| a.total_cmp(b));
    println!("latency_run_events={} events", lat.len());
    println!("latency_run_event_rate={:.0} events/s", lat.len() as f64 / secs);
    println!("commit_to_publish_p50={:.1} ms", percentile(&lat, 0.50));
    println!("commit_to_publish_p99={:.1} ms", percentile(&lat, 0.99));
    Ok(())
}

fn system_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

pub(crate) fn now_ms() -> i64 {
    system_ms(std::time::SystemTime::now())
}

/// The Kafka-protocol broker (tansu, installed by `scripts/ensure-tansu.sh`).
struct Broker {
    brokers: String,
    _child: Child,
}

impl Broker {
    fn start() -> anyhow::Result<Broker> {
        let home = std::env::var("HOME").unwrap_or_default();
        let bin = std::env::var("WEIR_TANSU_BIN").unwrap_or_else(|_| format!("{home}/.cache/weir/tools/bin/tansu"));
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {bin} (make bench installs it)"))?;
        Ok(Broker { brokers: format!("127.0.0.1:{port}"), _child: child })
    }

    async fn wait(&self) -> anyhow::Result<()> {
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(&self.brokers).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the broker did not start")
    }
}

async fn wait_ready(w: &mut WorkerServiceClient<Channel>) -> anyhow::Result<()> {
    for _ in 0..600 {
        if w.heartbeat(v1::HeartbeatRequest {
            worker_id: "bench".into(),
            tasks: vec![],
            draining: false,
            quotas: vec![],
            notices: vec![],
        })
        .await
        .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("master did not become ready")
}
