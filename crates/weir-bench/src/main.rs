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
//!    those tasks through gRPC with durable state (tasks/s end to end).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use weir_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};

#[derive(Debug, Parser)]
#[command(name = "weir-bench", about = "Weir engine benchmark (prints name=value unit lines)")]
struct Args {
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
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!("{} not built (make bench builds it)", p.display());
    }
    Ok(p)
}

fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let mut c = Command::new(bin(name)?);
    c.args(args).kill_on_drop(true).stdout(Stdio::null()).stderr(Stdio::null()).env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    Ok(c.spawn()?)
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
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
    let schema = weir_store::testing::TestSchema::create().await.context("PostgreSQL for the benchmark")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let master = spawn("weir-master", &["--listen", &format!("127.0.0.1:{port}")], &[("WEIR_STORE_URL", &schema.url)])?;
    let master_pid = master.id().context("master pid")?;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect_lazy();
    let mut jobs = JobServiceClient::new(channel.clone());
    let mut workers = WorkerServiceClient::new(channel.clone());
    wait_ready(&mut workers).await?;
    println!("machine_cores={} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));

    // 1. Idle latency, measured by this process acting as the worker.
    let mut samples = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let mut w = workers.clone();
        let poll = tokio::spawn(async move {
            let req = v1::AcquireTasksRequest {
                worker_id: "bench".into(),
                queue: "api".into(),
                max_tasks: 1,
                wait: Some(weir_proto::convert::duration(Duration::from_secs(10))),
            };
            let r = w.acquire_tasks(req).await;
            (Instant::now(), r)
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let spec = v1::JobSpec { name: format!("lat-{i}"), steps: vec![noop("a".into(), "api")], ..Default::default() };
        let t0 = Instant::now();
        jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await?;
        let (t1, leased) = poll.await?;
        let lease = leased?.into_inner().leases.pop().context("no lease within 10s")?;
        samples.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        let done = v1::CompleteTaskRequest {
            worker_id: "bench".into(),
            task_id: lease.task_id,
            fence_token: lease.fence_token,
            output_json: String::new(),
        };
        workers.complete_task(done).await?;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!("submit_to_first_lease_p50={:.2} ms", percentile(&samples, 0.50));
    println!("submit_to_first_lease_p99={:.2} ms", percentile(&samples, 0.99));

    // 2. Queue the tasks with no worker running.
    let queues = ["api", "file", "batch", "stream"];
    let n_jobs = args.tasks.div_ceil(args.steps_per_job);
    let t0 = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for j in 0..n_jobs {
        let steps = (0..args.steps_per_job).map(|s| noop(format!("s{s}"), queues[s % 4])).collect();
        let spec = v1::JobSpec { name: format!("bench-{j}"), steps, ..Default::default() };
        let mut c = jobs.clone();
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
    println!("submit_jobs_per_sec={:.0} jobs/s", n_jobs as f64 / secs);
    println!("submit_tasks_per_sec={:.0} tasks/s", queued as f64 / secs);
    println!("queued_tasks={queued} tasks");
    println!("master_peak_rss_with_queued_tasks={:.1} MB", peak_rss_mb(master_pid));

    // 3. Real managers drain the queue.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&schema.url).await?;
    let conc = args.concurrency.to_string();
    let env = [("WEIR_MASTER_URL", url.as_str()), ("WEIR_WORKER_CONCURRENCY", conc.as_str()), ("WEIR_POLL_WAIT", "1s")];
    let t0 = Instant::now();
    let mut managers = Vec::new();
    for q in queues {
        managers.push(spawn(&format!("weir-{q}-manager"), &[], &env)?);
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM weir_jobs WHERE state = 'succeeded' AND name LIKE 'bench-%'")
                .fetch_one(&pool)
                .await?;
        if done as usize >= n_jobs {
            break;
        }
        if Instant::now() > deadline {
            bail!("drain did not finish in 30 minutes ({done}/{n_jobs} jobs)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("throughput_noop_tasks_per_sec={:.0} tasks/s", queued as f64 / secs);
    println!("drain_seconds={secs:.1} s");
    println!("master_peak_rss={:.1} MB", peak_rss_mb(master_pid));
    drop(managers);
    drop(master);
    pool.close().await;
    schema.drop().await?;
    Ok(())
}

async fn wait_ready(w: &mut WorkerServiceClient<Channel>) -> anyhow::Result<()> {
    for _ in 0..600 {
        if w.heartbeat(v1::HeartbeatRequest { worker_id: "bench".into(), tasks: vec![] }).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("master did not become ready")
}
