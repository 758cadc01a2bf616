//! `weir-bench limits`: the engine at its limits (issue 15's figures).
//!
//! Each figure is printed beside the tool a user would pick instead, run in the same
//! sitting: Restate (`bench/restate_chain.mjs`) for chained steps, graphile-worker
//! (`bench/graphile_drain.mjs`) for independent no-op tasks.
//!
//! 1. Step-to-step latency at idle: `--chain-jobs` jobs of `--chain-steps` chained no-op steps, this
//!    process playing the worker with a long poll always parked (as a manager keeps one):
//!    for each step, the time from its CompleteTask call to the next step's lease arriving
//!    (p50/p99 over `--chain-jobs` jobs).
//! 2. Chained-steps throughput: 1, 10 and 1,000 such jobs at once, run by the four real
//!    manager processes (the steps take turns over the four queues): steps/s and the
//!    master's CPU share.
//! 3. Independent no-op tasks drained by the real managers (as `weir-bench` does), then the
//!    same number of no-op jobs drained by graphile-worker, batched and not. While the
//!    managers drain, an urgent one-step job (priority above the backlog's) is submitted
//!    every 20 ms: submit-to-first-lease while draining, from the submit call to the
//!    lease's start as the master stamped it (milliseconds, one clock).
//! 4. A backlog past the master's memory budget: `--backlog-jobs` jobs of `--backlog-steps`
//!    independent no-op steps submitted at once with `WEIR_RESIDENT_TASKS` set to
//!    `--resident-tasks`, then drained by the real managers: submit and drain rates, and the
//!    master's resident memory idle before, at its peak, and idle after the drain.
//! 5. The store: its size per million finished tasks kept (PostgreSQL's own figure for
//!    tables, indexes and TOAST), then a long run with a short retention — rounds of
//!    `--tasks` tasks, the store's size after each — which stays flat when the purge keeps up.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use weir_proto::v1;

use crate::{complete, cpu_seconds, noop, percentile, poll, Args, Master, QUEUES};

#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// Steps of each chained job.
    #[arg(long, default_value_t = 100)]
    chain_steps: usize,
    /// Chained jobs run one after another for the idle latency.
    #[arg(long, default_value_t = 5)]
    chain_jobs: usize,
    /// Concurrent chained jobs for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,10,1000")]
    chain_concurrency: Vec<usize>,
    /// Rounds of the retention run.
    #[arg(long, default_value_t = 6)]
    retention_rounds: usize,
    /// Jobs of the backlog run (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    backlog_jobs: usize,
    /// Independent steps of each backlog job.
    #[arg(long, default_value_t = 100)]
    backlog_steps: usize,
    /// The master's memory budget in the backlog run (WEIR_RESIDENT_TASKS; the master's
    /// default).
    #[arg(long, default_value_t = 100_000)]
    resident_tasks: usize,
}

pub async fn run(limits: &LimitsArgs, args: &Args) -> anyhow::Result<()> {
    let m = Master::start(None).await?;
    chain_latency(&m, limits).await?;
    for &n in &limits.chain_concurrency {
        chain_throughput(&m, limits, n, args.concurrency).await?;
    }
    m.stop().await?;
    // The same chains in Restate (its server and SDK from npm).
    let concurrency: Vec<String> = limits.chain_concurrency.iter().map(|n| n.to_string()).collect();
    peer(
        "restate_chain.mjs",
        &[
            "--steps",
            &limits.chain_steps.to_string(),
            "--latency-jobs",
            &limits.chain_jobs.to_string(),
            "--concurrency",
            &concurrency.join(","),
        ],
    )
    .await?;

    let m = Master::start(None).await?;
    crate::engine(&m, args, "store_", true).await?;
    // The same number of no-op jobs drained by graphile-worker on the same PostgreSQL.
    peer(
        "graphile_drain.mjs",
        &["--jobs", &args.tasks.to_string(), "--database-url", &weir_store::testing::server_url()],
    )
    .await?;
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM weir_tasks").fetch_one(&m.pool).await?;
    let mb = store_mb(&m).await?;
    println!("store_mb_per_million_tasks_kept={:.0} MB", mb / tasks.max(1) as f64 * 1e6);
    m.stop().await?;

    if limits.backlog_jobs > 0 {
        backlog(limits, args).await?;
    }
    retention(limits, args).await
}

/// A backlog of `--backlog-jobs` × `--backlog-steps` tasks past the memory budget, submitted
/// then drained; the master's memory sampled throughout.
async fn backlog(limits: &LimitsArgs, args: &Args) -> anyhow::Result<()> {
    let env = [("WEIR_RESIDENT_TASKS", limits.resident_tasks.to_string())];
    let m = Master::start_env(&env).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = crate::rss_mb(m.pid);
    let (n, steps) = (limits.backlog_jobs, limits.backlog_steps);
    println!("backlog_tasks={} tasks", n * steps);
    println!("backlog_resident_tasks_budget={} tasks", limits.resident_tasks);
    println!("backlog_master_rss_idle_before={idle:.0} MB");
    let peak = std::sync::Arc::new(std::sync::Mutex::new(idle));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), sampling.clone(), m.pid);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let now = crate::rss_mb(pid);
                {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for j in 0..n {
        let mut c = m.jobs.clone();
        let steps = (0..steps).map(|s| noop(format!("s{s}"), QUEUES[s % QUEUES.len()])).collect();
        let spec = v1::JobSpec { name: format!("backlog-{j}"), steps, ..Default::default() };
        pending.spawn(async move { c.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.map(|_| ()) });
        while pending.len() >= 16 {
            pending.join_next().await.context("join")???;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    let submit_secs = t0.elapsed().as_secs_f64();
    println!("backlog_submit_tasks_per_sec={:.0} tasks/s", (n * steps) as f64 / submit_secs);
    println!("backlog_master_rss_queued={:.0} MB", crate::rss_mb(m.pid));
    let managers = m.managers(args.concurrency)?;
    let cpu0 = cpu_seconds(m.pid);
    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(3 * 3600);
    while m.succeeded("backlog-").await? < n {
        if Instant::now() > deadline {
            bail!("the backlog did not drain in 3 hours");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs = t1.elapsed().as_secs_f64();
    println!("backlog_drain_tasks_per_sec={:.0} tasks/s", (n * steps) as f64 / secs);
    println!("backlog_drain_master_cpu={:.0} % of a core", (cpu_seconds(m.pid) - cpu0) / secs * 100.0);
    sampling.cancel();
    sampler.await?;
    println!("backlog_master_rss_peak={:.0} MB", *peak.lock().unwrap_or_else(|e| e.into_inner()));
    drop(managers);
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("backlog_master_rss_idle_after={:.0} MB", crate::rss_mb(m.pid));
    m.stop().await
}

/// Submits an urgent one-step job every 20 ms until `stop`, then prints how long each took
/// from its submit call to its first lease (read from the store once all were leased).
pub(crate) async fn first_lease_while_draining(
    m: &Master,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut jobs = m.jobs.clone();
    let mut sent: Vec<(uuid::Uuid, i64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let i = sent.len();
        let spec = v1::JobSpec {
            name: format!("probe-{i}"),
            priority: 100,
            steps: vec![noop("a".into(), QUEUES[i % QUEUES.len()])],
            ..Default::default()
        };
        let t0 = crate::now_ms();
        let job = jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await?.into_inner().job;
        let id = job.context("SubmitJob answered no job")?.id;
        sent.push((uuid::Uuid::parse_str(&id)?, t0));
    }
    let ids: Vec<uuid::Uuid> = sent.iter().map(|(id, _)| *id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let started: Vec<(uuid::Uuid, i64)> = loop {
        let rows: Vec<(uuid::Uuid, Option<i64>)> =
            sqlx::query_as("SELECT job_id, started_ms FROM weir_tasks WHERE job_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&m.pool)
                .await?;
        // A probe that ran and finished keeps its start time.
        let leased: Vec<(uuid::Uuid, i64)> = rows.into_iter().filter_map(|(j, s)| Some((j, s?))).collect();
        if leased.len() == ids.len() {
            break leased;
        }
        if Instant::now() > deadline {
            bail!("{} of {} urgent jobs were not leased within a minute", ids.len() - leased.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at: std::collections::HashMap<uuid::Uuid, i64> = started.into_iter().collect();
    let mut samples: Vec<f64> = sent.iter().filter_map(|(id, t0)| Some((at.get(id)? - t0) as f64)).collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    println!("draining_urgent_jobs={} jobs", samples.len());
    println!("draining_submit_to_first_lease_p50={:.0} ms", percentile(&samples, 0.50));
    println!("draining_submit_to_first_lease_p99={:.0} ms", percentile(&samples, 0.99));
    Ok(())
}

/// Runs a Node.js peer from `bench/` (installed by scripts/ensure-bench-node.sh) and
/// passes on its `name=value unit` lines.
pub(crate) async fn peer(script: &str, script_args: &[&str]) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench").join(script);
    let out = tokio::process::Command::new("node")
        .arg(&path)
        .args(script_args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("run node {script} (make bench installs Node.js peers)"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("{script} failed ({})", out.status);
    }
    Ok(())
}

fn chain(name: String, steps: usize) -> v1::JobSpec {
    let steps = (0..steps)
        .map(|s| {
            let mut step = noop(format!("s{s}"), QUEUES[s % QUEUES.len()]);
            if s > 0 {
                step.depends_on = vec![format!("s{}", s - 1)];
            }
            step
        })
        .collect();
    v1::JobSpec { name, steps, ..Default::default() }
}

async fn chain_latency(m: &Master, limits: &LimitsArgs) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    let mut jobs = m.jobs.clone();
    let mut steps_done = 0;
    for j in 0..limits.chain_jobs {
        let first = poll(m, QUEUES[0]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        jobs.submit_job(v1::SubmitJobRequest { spec: Some(chain(format!("chain-{j}"), limits.chain_steps)) }).await?;
        let (_, mut lease) = first.await??;
        for s in 1..=limits.chain_steps {
            // The next step's poll is parked before this one completes, as in a manager.
            let next = (s < limits.chain_steps).then(|| poll(m, QUEUES[s % QUEUES.len()]));
            tokio::time::sleep(Duration::from_millis(2)).await;
            let t0 = Instant::now();
            complete(m, &lease).await?;
            steps_done += 1;
            let Some(next) = next else { break };
            let (t1, l) = next.await??;
            samples.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
            lease = l;
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!("chain_steps_measured={steps_done} steps");
    println!("step_to_step_p50={:.2} ms", percentile(&samples, 0.50));
    println!("step_to_step_p99={:.2} ms", percentile(&samples, 0.99));
    Ok(())
}

async fn chain_throughput(m: &Master, limits: &LimitsArgs, n: usize, concurrency: u32) -> anyhow::Result<()> {
    let prefix = format!("chain{n}-");
    let managers = m.managers(concurrency)?;
    // Let the managers register and park their polls before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = cpu_seconds(m.pid);
    let t0 = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for j in 0..n {
        let mut c = m.jobs.clone();
        let spec = chain(format!("{prefix}{j}"), limits.chain_steps);
        pending.spawn(async move { c.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.map(|_| ()) });
        while pending.len() >= 16 {
            pending.join_next().await.context("join")???;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    while m.succeeded(&prefix).await? < n {
        if Instant::now() > deadline {
            bail!("{n} chained jobs did not finish in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let steps = (n * limits.chain_steps) as f64;
    println!("chain_{n}_jobs_steps_per_sec={:.0} steps/s", steps / secs);
    println!("chain_{n}_jobs_master_cpu={:.0} % of a core", (cpu_seconds(m.pid) - cpu0) / secs * 100.0);
    drop(managers);
    Ok(())
}

/// The schema's tables with their indexes and TOAST, in MB.
async fn store_mb(m: &Master) -> anyhow::Result<f64> {
    let bytes: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'",
    )
    .fetch_one(&m.pool)
    .await?;
    Ok(bytes as f64 / 1e6)
}

/// Rounds of `--tasks` no-op tasks with a two-second retention and a purge each second:
/// the store's size after each round (once the purge has run) stays flat.
async fn retention(limits: &LimitsArgs, args: &Args) -> anyhow::Result<()> {
    let env = [("WEIR_RETENTION", "2s".to_string()), ("WEIR_PURGE_INTERVAL", "1s".to_string())];
    let m = Master::start_env(&env).await?;
    let mut sizes = Vec::new();
    for round in 1..=limits.retention_rounds {
        crate::engine(&m, args, &format!("retention_{round}_"), false).await?;
        // Past the retention and one more sweep.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mb = store_mb(&m).await?;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM weir_tasks").fetch_one(&m.pool).await?;
        println!("retention_round_{round}_store_mb={mb:.1} MB");
        println!("retention_round_{round}_tasks_left={left} tasks");
        sizes.push(mb);
    }
    if let (Some(first), Some(last)) = (sizes.first(), sizes.last()) {
        println!("retention_store_change_first_to_last_round={:+.1} %", (last - first) / first * 100.0);
    }
    println!("retention_tasks_run={} tasks", args.tasks * limits.retention_rounds);
    m.stop().await
}
