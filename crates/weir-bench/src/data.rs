//! `weir-bench data`: Weir's conversion path against pyarrow and DuckDB on the same
//! generated files, one core each.
//!
//! 1. Generates a trades CSV (`--csv-mb`, default 500 MiB; cached under
//!    `~/.cache/weir/bench`) and converts it to zstd (level 1) Parquet three ways, each in
//!    a process of its own on one thread: Weir's pipeline (schema inferred, every row
//!    typed and accounted for, reconciled with the schema of the Parquet dataset it lands
//!    in, committed; and, for the cost of that, the same conversion to a staged file
//!    only), pyarrow's streaming CSV reader and Parquet writer, and
//!    DuckDB's `COPY ... TO parquet`. Prints MB/s per core (input MiB over the process's
//!    user+system CPU seconds) and wall-clock MB/s, the best of `--rounds` interleaved runs.
//! 2. Converts a larger file (`--big-mb`, default 2048) with Weir and prints its peak
//!    resident memory: bounded memory, whatever the file size.
//! 3. Bulk ingestion end to end: `--small-files` (default 10,000) small CSVs in a local
//!    folder, one `bulk_file` job through the real master (PostgreSQL), file manager and
//!    batch manager processes into a Parquet dataset; files per second from submission to
//!    the job's success.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use weir_core::dataset::DataStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::landing::{land_local, Sinks};
use weir_data::sink::WriteFence;

/// Settings of the data benchmark.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Size of the CSV converted side by side.
    #[arg(long, default_value_t = 500)]
    csv_mb: u64,
    /// Size of the CSV whose conversion's peak memory is measured.
    #[arg(long, default_value_t = 2048)]
    big_mb: u64,
    /// Runs of each conversion (interleaved); the best of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small files ingested end to end by the bulk-file template.
    #[arg(long, default_value_t = 10_000)]
    small_files: usize,
    /// The Python with pyarrow and DuckDB (scripts/ensure-bench-peer.sh installs it).
    #[arg(long, env = "WEIR_BENCH_PYTHON")]
    python: Option<PathBuf>,
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var("HOME").context("HOME not set")?;
    let d = PathBuf::from(home).join(".cache/weir/bench");
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Writes a deterministic trades CSV of at least `mb` MiB (kept for the next run).
fn trades_csv(mb: u64) -> anyhow::Result<PathBuf> {
    let path = cache_dir()?.join(format!("trades-{mb}mb.csv"));
    let want = mb << 20;
    if path.metadata().map(|m| m.len() >= want).unwrap_or(false) {
        return Ok(path);
    }
    let tmp = path.with_extension("csv.tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    w.write_all(b"trade_id,ts,symbol,side,price,qty,venue,trader\n")?;
    let venues = ["XNAS", "XNYS", "ARCX", "BATS", "IEXG", "EDGX", "XLON", "XETR"];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut written, mut i) = (0u64, 0u64);
    let mut line = String::with_capacity(128);
    while written < want {
        let r = next();
        let ms = (i * 7) % 86_400_000;
        line.clear();
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "{i},2026-11-20T{:02}:{:02}:{:02}.{:03}Z,SYM{:03},{},{}.{:02},{},{},T{:05}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            r % 500,
            if r & 1 == 0 { "B" } else { "S" },
            10 + (r >> 8) % 990,
            (r >> 20) % 100,
            1 + (r >> 28) % 5000,
            venues[((r >> 40) % 8) as usize],
            (r >> 44) % 20_000
        );
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
        i += 1;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Process CPU seconds (user + system) from /proc/self/stat (100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the comm.
    (tick(11) + tick(12)) / 100.0
}

/// The child: converts one file with Weir's pipeline into the Parquet dataset
/// `<out>/lake` (zstd level 1, like the others), reconciled with the dataset's schema and
/// committed, and prints its own figures. The dataset stays for the next run, which
/// replaces this input's rows. With `staged`, the file is converted to a staged Parquet
/// file only, as the step before a sink does: no schema to reconcile, nothing to land.
pub fn convert_one(input: &Path, out: &Path, staged: bool) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(out.join("quarantine"));
    let _ = std::fs::remove_dir_all(out.join("staged"));
    let lake = out.join("lake");
    let step = match staged {
        true => DataStep::parse("convert", None),
        false => DataStep::parse(
            "store",
            Some(&serde_json::json!({"sinks": [{"type": "parquet", "path": lake.display().to_string(), "zstd_level": 1}]})),
        ),
    }
    .map_err(anyhow::Error::msg)?;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let sinks = Sinks::open_local(&step)?;
    let plan = Plan {
        sinks: Arc::new(sinks.local_states()?),
        step: Arc::new(step),
        staging: staged.then(|| out.join("staged")),
        quarantine: out.join("quarantine"),
        outgoing: out.join("outgoing"),
        fence: WriteFence { task: "bench".into(), fence: 1 },
        now_micros: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        dedupe: None,
    };
    let mut r = convert(&Input { path: input.to_path_buf(), identity: input.display().to_string() }, &plan)?;
    land_local(&sinks, &mut r, &Default::default())?;
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let written = r.sink_files.first().or(r.output.as_ref());
    let out_mb = written.and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len() as f64 / 1048576.0);
    println!(
        "seconds={wall:.3} cpu_seconds={cpu:.3} peak_rss_mb={:.1} rows={} quarantined={} parquet_mb={:.1}",
        super::peak_rss_mb(std::process::id()),
        r.rows_read,
        r.rows_quarantined,
        out_mb.unwrap_or(0.0)
    );
    Ok(())
}

/// The first 1,000 lines of a CSV, in a file beside it.
fn csv_head(csv: &Path) -> anyhow::Result<PathBuf> {
    use std::io::BufRead;
    let head = csv.with_extension("head.csv");
    let lines: Vec<String> =
        std::io::BufReader::new(std::fs::File::open(csv)?).lines().take(1000).collect::<Result<_, _>>()?;
    std::fs::write(&head, lines.join("\n") + "\n")?;
    Ok(head)
}

/// `key=value` pairs of a child's last line.
fn figures(out: &std::process::Output, who: &str) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    if !out.status.success() {
        bail!("{who} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no figures printed")?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect())
}

pub async fn run(args: &DataArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let work = cache_dir()?.join("out");
    let csv = trades_csv(args.csv_mb)?;
    let mb = csv.metadata()?.len() as f64 / 1048576.0;
    println!("csv_input_mb={mb:.0} MB");

    let home = std::env::var("HOME").unwrap_or_default();
    let python =
        args.python.clone().unwrap_or_else(|| PathBuf::from(format!("{home}/.cache/weir/bench-venv/bin/python")));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/convert.py");
    type Figures = std::collections::HashMap<String, f64>;
    let per_core = |f: &Figures| mb / f["cpu_seconds"].max(0.001);
    let wall = |f: &Figures| mb / f["seconds"].max(0.001);
    // Weir lands in a dataset that already has a schema, so every measured run
    // reconciles with it: a small first input creates it.
    let _ = std::fs::remove_dir_all(work.join("weir"));
    let seed = csv_head(&csv)?;
    figures(&Command::new(&me).arg("convert-one").arg(&seed).arg(work.join("weir")).output()?, "weir seed")?;
    // Each tool three times, interleaved, keeping its best run: this shared 2-core
    // machine's neighbours make single runs vary by 15-30%.
    let mut best: Vec<(&str, Figures)> = Vec::new();
    for _round in 0..args.rounds {
        for tool in ["weir", "weir_staged", "pyarrow", "duckdb"] {
            let f = if tool == "weir" {
                figures(
                    &Command::new(&me).arg("convert-one").arg(&csv).arg(work.join("weir")).output()?,
                    "weir convert",
                )?
            } else if tool == "weir_staged" {
                figures(
                    &Command::new(&me).arg("convert-one").arg("--staged").arg(&csv).arg(work.join("weir")).output()?,
                    "weir convert (staged)",
                )?
            } else {
                let out = work.join(format!("{tool}.parquet"));
                let _ = std::fs::remove_file(&out);
                figures(&Command::new(&python).arg(&script).arg(tool).arg(&csv).arg(&out).output()?, tool)?
            };
            match best.iter_mut().find(|(t, _)| *t == tool) {
                Some((_, b)) if per_core(b) >= per_core(&f) => {}
                Some((_, b)) => *b = f,
                None => best.push((tool, f)),
            }
        }
    }
    for (tool, f) in &best {
        if *tool == "weir" {
            println!("csv_rows={} rows", f["rows"]);
        }
        println!("csv_to_parquet_{tool}_mb_per_s_per_core={:.1} MB/s", per_core(f));
        println!("csv_to_parquet_{tool}_wall_mb_per_s={:.1} MB/s", wall(f));
        println!("csv_to_parquet_{tool}_peak_rss={:.1} MB", f["peak_rss_mb"]);
    }
    let weir_best = best.iter().find(|(t, _)| *t == "weir").map(|(_, f)| per_core(f)).unwrap_or(0.0);
    for (tool, f) in best.iter().filter(|(t, _)| !t.starts_with("weir")) {
        println!("weir_vs_{tool}_per_core={:.2} x", weir_best / per_core(f));
    }
    if let Some((_, staged)) = best.iter().find(|(t, _)| *t == "weir_staged") {
        // What reconciling with the dataset's schema and landing in it cost, per core.
        println!("landing_cost_vs_staged={:+.1} %", (weir_best / per_core(staged) - 1.0) * 100.0);
    }

    let big = trades_csv(args.big_mb)?;
    let big_mb = big.metadata()?.len() as f64 / 1048576.0;
    let f = figures(
        &Command::new(&me).arg("convert-one").arg(&big).arg(work.join("weir-big")).output()?,
        "weir convert (big)",
    )?;
    println!("big_csv_input_mb={big_mb:.0} MB");
    println!("big_csv_weir_peak_rss={:.1} MB", f["peak_rss_mb"]);
    println!("big_csv_weir_mb_per_s_per_core={:.1} MB/s", big_mb / f["cpu_seconds"].max(0.001));
    let _ = std::fs::remove_dir_all(&work);
    small_files(args.small_files).await
}

/// `n` small CSV files (kept for the next run).
fn small_csvs(n: usize) -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?.join(format!("small-{n}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    for i in 0..n {
        let mut body = String::from("id,sensor,reading,at\n");
        for r in 0..20 {
            body.push_str(&format!("{},{},{}.{},2026-11-2{}T10:00:{:02}Z\n", i * 20 + r, i % 97, r, i % 10, i % 3, r));
        }
        std::fs::write(dir.join(format!("reading-{i:05}.csv")), body)?;
    }
    std::fs::write(&done, b"")?;
    Ok(dir)
}

/// One bulk_file job over `n` small files through the real processes.
async fn small_files(n: usize) -> anyhow::Result<()> {
    use weir_proto::v1::job_service_client::JobServiceClient;
    let folder = small_csvs(n)?;
    let work = tempfile_dir("bulk")?;
    let master = super::Master::start(None).await?;
    let data = work.join("data").display().to_string();
    let env = [("WEIR_MASTER_URL", master.url.as_str()), ("WEIR_POLL_WAIT", "1s"), ("WEIR_DATA_DIR", data.as_str())];
    let _managers = ["file", "batch"]
        .iter()
        .map(|q| super::spawn(&format!("weir-{q}-manager"), &[], &env))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lake = work.join("lake");
    let channel = weir_runtime::grpc::channel(&master.url, &weir_runtime::security::ClientSecurity::none())?;
    let mut jobs = JobServiceClient::new(channel);
    let t0 = Instant::now();
    let id = super::submit(
        &mut jobs,
        serde_json::json!({
            "namespace": "bench", "name": "small-files", "template": "bulk_file",
            "params": {"location": {"uri": format!("file://{}", folder.display())}, "patterns": ["*.csv"],
                       "parallelism": 4, "sinks": [{"type": "parquet", "path": lake.display().to_string()}]}
        }),
    )
    .await?;
    super::wait(&mut jobs, &id).await.context("the bulk job")?;
    let secs = t0.elapsed().as_secs_f64();
    println!("small_files={n} files");
    println!("small_files_seconds={secs:.1} s");
    println!("small_files_per_sec={:.0} files/s", n as f64 / secs);
    master.stop().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn tempfile_dir(name: &str) -> anyhow::Result<PathBuf> {
    let d = cache_dir()?.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
