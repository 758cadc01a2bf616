//! `weir-bench api`: the API manager against dlt's `rest_api` source, and its rate limits.
//!
//! 1. Collection: generates `--pages` JSON pages of `--records-per-page` records (nested
//!    objects and lists, a `next` link on each) served by Debian's nginx on loopback; one
//!    `collect` → `convert` → `store` job through the real master, API manager and batch
//!    manager processes (limits off) into a Parquet dataset, and dlt's `rest_api` source
//!    (`bench/dlt_rest_api.py`, nested objects kept as JSON like Weir) into Parquet from the
//!    same pages. Prints requests/s, records/s and MB/s (wall clock and per core: over the
//!    processes' user+system CPU seconds) and peak RSS for each, and the ratio.
//! 2. Rate-limit accuracy: three API-manager replicas share one limit (`--limit`/min,
//!    burst `--burst`) for `--rate-seconds`, collecting far more than it allows; nginx's
//!    access log says what arrived: the aggregate rate from 10 s after the first request
//!    against the limit, and the busiest window (1 s, 10 s, 60 s) of the whole run against
//!    limit × window + burst.
//! 3. The limiter's cost per request: a Weir bucket's `acquire` in a loop, limits not
//!    reached.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use weir_proto::v1::{self, job_service_client::JobServiceClient};

use crate::{cpu_seconds, lake_rows};

/// Settings of the API benchmark.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Pages of the collected resource.
    #[arg(long, default_value_t = 400)]
    pages: u64,
    /// Records on each page.
    #[arg(long, default_value_t = 500)]
    records_per_page: u64,
    /// The shared limit of the accuracy run, per minute.
    #[arg(long, default_value_t = 6000)]
    limit: u32,
    #[arg(long, default_value_t = 100)]
    burst: u32,
    /// Length of the accuracy run (after a 10 s warm-up).
    #[arg(long, default_value_t = 60)]
    rate_seconds: u64,
    /// The Python with dlt (scripts/ensure-bench-peer.sh installs it).
    #[arg(long, env = "WEIR_BENCH_PYTHON")]
    python: Option<PathBuf>,
}

/// Debian's nginx serving a folder on a loopback port, logging each request's time.
struct Nginx {
    _child: Child,
    url: String,
    log: PathBuf,
}

impl Nginx {
    async fn start(root: &Path, work: &Path) -> anyhow::Result<Nginx> {
        let port = crate::free_port()?;
        let conf = work.join("nginx.conf");
        let log = work.join("access.log");
        let tmp = work.join("nginx-tmp");
        std::fs::create_dir_all(&tmp)?;
        let w = work.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 1; user root; pid {w}/nginx.pid; error_log {w}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ log_format t '$msec $request_uri'; access_log {log} t;\n\
                   client_body_temp_path {t}/b; proxy_temp_path {t}/p; fastcgi_temp_path {t}/f;\n\
                   uwsgi_temp_path {t}/u; scgi_temp_path {t}/s; types {{ application/json json; }}\n\
                   keepalive_requests 100000;\n\
                   server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
                log = log.display(),
                t = tmp.display(),
                root = root.display()
            ),
        )?;
        let child = Command::new("nginx")
            .args(["-p", &w.to_string(), "-c", &conf.display().to_string(), "-e", &format!("{w}/error.log")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("nginx (Debian's nginx-light; scripts/ensure-bench-peer.sh installs it)")?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(Nginx { _child: child, url: format!("http://127.0.0.1:{port}"), log });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nginx did not start (see {w}/error.log)")
    }

    /// Request times (seconds since the epoch) of the paths starting with `prefix`.
    fn times(&self, prefix: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut t: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, u)| u.starts_with(prefix))
            .filter_map(|(t, _)| t.parse().ok())
            .collect();
        t.sort_by(f64::total_cmp);
        t
    }
}

/// Writes `pages` pages under `root/<dir>/`, each linking to the next on `base`; returns
/// the records and bytes written.
fn pages(root: &Path, dir: &str, pages: u64, per_page: u64, base: &str) -> anyhow::Result<(u64, u64)> {
    let d = root.join(dir);
    std::fs::create_dir_all(&d)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    for p in 1..=pages {
        let mut w = BufWriter::new(std::fs::File::create(d.join(format!("{p}.json")))?);
        let mut page = String::with_capacity((per_page * 200) as usize);
        page.push_str("{\"data\": [");
        for i in 0..per_page {
            let n = (p - 1) * per_page + i;
            if i > 0 {
                page.push(',');
            }
            page.push_str(&format!(
                "{{\"id\": {n}, \"name\": \"item {n}\", \"price\": {}.25, \"in_stock\": {}, \
                 \"updated_at\": \"2026-11-{:02}T{:02}:{:02}:00Z\", \"tags\": [\"a\", \"b{}\"], \
                 \"owner\": {{\"id\": {}, \"email\": \"u{n}@example.com\"}}}}",
                n % 1000,
                n.is_multiple_of(3),
                1 + n % 28,
                n % 24,
                n % 60,
                n % 7,
                n % 97
            ));
            records += 1;
        }
        let next = if p < pages { format!("\"{base}/{dir}/{}.json\"", p + 1) } else { "null".into() };
        page.push_str(&format!("], \"next\": {next}}}"));
        w.write_all(page.as_bytes())?;
        bytes += page.len() as u64;
    }
    Ok((records, bytes))
}

/// A process's user+system CPU seconds so far (from /proc; Linux clock ticks of 1/100 s).
struct Run {
    wall: f64,
    cpu: f64,
    rss_mb: f64,
    rows: u64,
}

/// One collect → convert → store job through the real processes.
async fn weir(nginx: &Nginx, work: &Path) -> anyhow::Result<Run> {
    let master = super::Master::start(None).await?;
    let data = work.join("weir-data").display().to_string();
    let env = [
        ("WEIR_MASTER_URL", master.url.as_str()),
        ("WEIR_POLL_WAIT", "1s"),
        ("WEIR_DATA_DIR", data.as_str()),
        ("WEIR_API_RATE", "0"),
        ("WEIR_API_GLOBAL_RATE", "0"),
    ];
    let api = super::spawn("weir-api-manager", &[], &env)?;
    let batch = super::spawn("weir-batch-manager", &[], &env)?;
    let pids = [master.pid, api.id().context("pid")?, batch.id().context("pid")?];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let lake = work.join("weir-lake");
    let channel = weir_runtime::grpc::channel(&master.url, &weir_runtime::security::ClientSecurity::none())?;
    let mut jobs = JobServiceClient::new(channel);
    let t0 = Instant::now();
    let id = super::submit(
        &mut jobs,
        serde_json::json!({"namespace": "bench", "name": "api", "steps": [
            {"id": "collect", "kind": "collect", "queue": "api", "config": {
                "api": "bench", "base_url": nginx.url, "path": "/p/1.json", "records": "$.data[*]",
                "paginator": {"type": "next_url", "path": "$.next"}}},
            {"id": "convert", "kind": "convert", "queue": "batch", "depends_on": ["collect"]},
            {"id": "store", "kind": "store", "queue": "batch", "depends_on": ["convert"],
             "config": {"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}}]}),
    )
    .await?;
    super::wait(&mut jobs, &id).await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let rss_mb = super::peak_rss_mb(pids[1]);
    let rows = lake_rows(&lake);
    drop((api, batch));
    master.stop().await?;
    Ok(Run { wall, cpu, rss_mb, rows })
}

/// dlt's rest_api source over the same pages.
fn dlt(python: &Path, nginx: &Nginx, work: &Path) -> anyhow::Result<Run> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/dlt_rest_api.py");
    let out = work.join("dlt-lake");
    let o = std::process::Command::new(python)
        .arg(&script)
        .arg(&nginx.url)
        .arg(&out)
        .arg(work.join("dlt-pipelines"))
        .output()
        .context("running dlt (scripts/ensure-bench-peer.sh installs it)")?;
    if !o.status.success() {
        bail!("dlt failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string();
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("dlt printed {line:?}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Run {
        wall: f("wall_seconds"),
        cpu: f("cpu_seconds"),
        rss_mb: f("peak_rss_mb"),
        rows: v["rows"].as_u64().unwrap_or(0),
    })
}

/// Three replicas under one limit; what nginx saw.
async fn accuracy(args: &ApiArgs, nginx: &Nginx, work: &Path) -> anyhow::Result<()> {
    let master = super::Master::start(None).await?;
    let data = work.join("rate-data").display().to_string();
    let (rate, burst) = (format!("{}/min", args.limit), args.burst.to_string());
    let env = [
        ("WEIR_MASTER_URL", master.url.as_str()),
        ("WEIR_POLL_WAIT", "1s"),
        ("WEIR_DATA_DIR", data.as_str()),
        ("WEIR_API_RATE", rate.as_str()),
        ("WEIR_API_BURST", burst.as_str()),
        ("WEIR_API_GLOBAL_RATE", "0"),
        // Four collections each: every replica busy, as in production.
        ("WEIR_WORKER_CONCURRENCY", "4"),
    ];
    let replicas: Vec<Child> =
        (0..3).map(|_| super::spawn("weir-api-manager", &[], &env)).collect::<anyhow::Result<_>>()?;
    let channel = weir_runtime::grpc::channel(&master.url, &weir_runtime::security::ClientSecurity::none())?;
    let mut jobs = JobServiceClient::new(channel);
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let mut ids = vec![];
    for i in 0..12 {
        ids.push(
            super::submit(
                &mut jobs,
                serde_json::json!({"namespace": "bench", "name": format!("rate-{i}"), "steps": [
                    {"id": "collect", "kind": "collect", "queue": "api", "config": {
                        "api": "limited", "base_url": nginx.url, "path": "/r/1.json", "records": "$.data[*]",
                        "paginator": {"type": "next_url", "path": "$.next"}}}]}),
            )
            .await?,
        );
    }
    let warm = 10.0;
    tokio::time::sleep(Duration::from_secs_f64(warm + args.rate_seconds as f64 + 3.0)).await;
    for id in &ids {
        let _ = jobs.cancel_job(v1::CancelJobRequest { job_id: id.clone(), reason: "benchmark over".into() }).await;
    }
    drop(replicas);
    let times = nginx.times("/r/");
    let first = times.first().copied().unwrap_or(t0);
    println!("api_rate_first_request_after={:.1} s", first - t0);
    // The steady state: from 10 s after the first request (shares converge over heartbeats).
    let (from, to) = (first + warm, first + warm + args.rate_seconds as f64);
    let inside: Vec<f64> = times.iter().copied().filter(|t| *t >= from && *t < to).collect();
    let per_min = inside.len() as f64 * 60.0 / args.rate_seconds as f64;
    println!("api_rate_limit={} req/min", args.limit);
    println!("api_rate_observed={per_min:.0} req/min");
    println!("api_rate_error={:+.2} %", (per_min - args.limit as f64) / args.limit as f64 * 100.0);
    for w in [1.0, 10.0, 60.0] {
        let (mut most, mut start) = (0usize, 0usize);
        for end in 0..times.len() {
            while times[end] - times[start] >= w {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        let allowed = args.limit as f64 * w / 60.0 + args.burst as f64;
        println!("api_rate_busiest_{w:.0}s={most} req (limit x window + burst = {allowed:.0})");
    }
    master.stop().await?;
    Ok(())
}

/// A Weir bucket's cost per request, limits not reached.
async fn limiter_cost() -> anyhow::Result<()> {
    let quotas = weir_worker::quota::Quotas::local();
    let bucket = quotas.bucket("bench", u32::MAX / 2, u32::MAX / 2).context("a bucket")?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let n = 1_000_000u32;
    let t0 = Instant::now();
    for _ in 0..n {
        bucket.acquire(&cancel).await.map_err(|_| anyhow::anyhow!("cancelled"))?;
    }
    println!("api_limiter_ns_per_request={:.0} ns", t0.elapsed().as_nanos() as f64 / f64::from(n));
    Ok(())
}

pub async fn run(args: &ApiArgs) -> anyhow::Result<()> {
    let home = std::env::var("HOME").context("HOME not set")?;
    let python =
        args.python.clone().unwrap_or_else(|| PathBuf::from(format!("{home}/.cache/weir/bench-venv/bin/python")));
    let work = PathBuf::from(&home).join(format!(".cache/weir/bench/api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let www = work.join("www");
    std::fs::create_dir_all(&www)?;
    let nginx = Nginx::start(&www, &work).await?;
    let (records, bytes) = pages(&www, "p", args.pages, args.records_per_page, &nginx.url)?;
    // Tiny pages, many of them, for the rate run: demand far beyond the limit.
    pages(&www, "r", 4000, 1, &nginx.url)?;
    let mb = bytes as f64 / f64::from(1 << 20);
    println!("api_pages={} pages", args.pages);
    println!("api_records={records} records");
    println!("api_mb={mb:.1} MiB");
    let w = weir(&nginx, &work).await?;
    let d = dlt(&python, &nginx, &work)?;
    for (name, r) in [("weir", &w), ("dlt", &d)] {
        if r.rows != records {
            bail!("{name} stored {} rows of {records}", r.rows);
        }
        println!("api_{name}_seconds={:.2} s", r.wall);
        println!("api_{name}_requests_per_s={:.0} req/s", args.pages as f64 / r.wall);
        println!("api_{name}_records_per_s={:.0} records/s", records as f64 / r.wall);
        println!("api_{name}_cpu_seconds={:.2} s", r.cpu);
        println!("api_{name}_records_per_s_per_core={:.0} records/s", records as f64 / r.cpu.max(0.001));
        println!("api_{name}_mb_per_s_per_core={:.1} MB/s", mb / r.cpu.max(0.001));
        println!("api_{name}_peak_rss={:.0} MB", r.rss_mb);
    }
    println!("api_weir_vs_dlt_per_core={:.1} x", d.cpu / w.cpu.max(0.001));
    accuracy(args, &nginx, &work).await?;
    limiter_cost().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
