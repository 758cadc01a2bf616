//! `weir-bench schedules`: many cron schedules firing every minute, against graphile-worker's
//! crontab on the same PostgreSQL.
//!
//! Weir: the real `weir-master` on a fresh schema and the four real managers (each slot's
//! job is one no-op step; the schedules keep the default overlap policy, skip, so every
//! slot first looks up whether the previous run ended). `--schedules` schedules `* * * * *`
//! are created over gRPC; then, for `--minutes` whole minutes, each slot's job is read back
//! from the store: slot-to-job-created is the job's creation time (the engine's clock when
//! the slot's commit was built) minus the slot; its p50/p99/max, the jobs against the slots
//! (every slot must have exactly one), and the master's CPU over those minutes, as a share
//! of one core.
//!
//! graphile-worker (`bench/graphile_cron.mjs`): the same number of crontab lines, every
//! minute, on a fresh schema; slot-to-job-created is each job's `created_at` minus its
//! `_cron.ts`, with its process's CPU share.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use weir_proto::v1::{self, schedule_service_client::ScheduleServiceClient};

use crate::{percentile, Args, Master};

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Schedules firing every minute.
    #[arg(long, default_value_t = 10_000)]
    schedules: usize,
    /// Whole minutes measured.
    #[arg(long, default_value_t = 3)]
    minutes: u32,
}

const MINUTE_MS: i64 = 60_000;

pub async fn run(a: &ScheduleArgs, args: &Args) -> anyhow::Result<()> {
    if a.schedules == 0 || a.minutes == 0 {
        bail!("--schedules and --minutes must be at least 1");
    }
    println!("schedules={} schedules", a.schedules);
    println!("schedule_minutes={} minutes", a.minutes);
    let m = Master::start(None).await?;
    let _managers = m.managers(args.concurrency)?;
    let channel = weir_runtime::grpc::channel(&m.url, &weir_runtime::security::ClientSecurity::none())?;
    let client = ScheduleServiceClient::new(channel);
    let started = std::time::Instant::now();
    let created: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..a.schedules)
        .map(|i| {
            let mut c = client.clone();
            async move {
                let spec = v1::ScheduleSpec {
                    namespace: "bench".into(),
                    name: format!("s{i}"),
                    cron: "* * * * *".into(),
                    job: Some(v1::JobSpec {
                        steps: vec![crate::noop("pull".into(), crate::QUEUES[i % crate::QUEUES.len()])],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                c.create_schedule(v1::CreateScheduleRequest { spec: Some(spec), ..Default::default() }).await?;
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in created {
        r.context("create a schedule")?;
    }
    println!("schedules_created_per_second={:.0} schedules/s", a.schedules as f64 / started.elapsed().as_secs_f64());

    // Whole minutes, from the next boundary on.
    let now = weir_runtime::now_ms();
    let first = (now / MINUTE_MS + 1) * MINUTE_MS;
    let last = first + i64::from(a.minutes - 1) * MINUTE_MS;
    sleep_until(first - 1_000).await;
    let cpu0 = crate::cpu_seconds(m.pid);
    let t0 = std::time::Instant::now();
    sleep_until(last + 30_000).await;
    let cpu = crate::cpu_seconds(m.pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();

    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT run_id, created_ms FROM weir_jobs WHERE namespace = 'bench'").fetch_all(&m.pool).await?;
    let mut latencies = Vec::new();
    let mut per_slot = std::collections::HashMap::<i64, usize>::new();
    for (run_id, created_ms) in &rows {
        let slot = slot_of(run_id).with_context(|| format!("run id {run_id:?}"))?;
        if (first..=last).contains(&slot) {
            latencies.push((created_ms - slot) as f64);
            *per_slot.entry(slot).or_default() += 1;
        }
    }
    latencies.sort_by(|x, y| x.total_cmp(y));
    let expected = a.schedules * a.minutes as usize;
    println!("schedule_jobs={} jobs", latencies.len());
    println!("schedule_jobs_expected={expected} jobs");
    if latencies.len() != expected || per_slot.values().any(|n| *n != a.schedules) {
        bail!("{} jobs for {expected} slots: {per_slot:?}", latencies.len());
    }
    println!("schedule_slot_to_job_created_p50={:.0} ms", percentile(&latencies, 0.5));
    println!("schedule_slot_to_job_created_p99={:.0} ms", percentile(&latencies, 0.99));
    println!("schedule_slot_to_job_created_max={:.0} ms", latencies.last().copied().unwrap_or(f64::NAN));
    println!("schedule_master_cpu={:.1} %", cpu / wall * 100.0);
    m.stop().await?;

    crate::limits::peer(
        "graphile_cron.mjs",
        &[
            "--schedules",
            &a.schedules.to_string(),
            "--minutes",
            &a.minutes.to_string(),
            "--database-url",
            &weir_store::testing::server_url(),
        ],
    )
    .await
}

/// The slot a scheduled job's run id names (`<schedule>.<YYYYmmddTHHMMSSZ>`).
fn slot_of(run_id: &str) -> Option<i64> {
    let (_, stamp) = run_id.rsplit_once('.')?;
    let t = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp).ok()?;
    Some(t.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_millisecond())
}

async fn sleep_until(ms: i64) {
    let wait = ms - weir_runtime::now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}
