//! `weir-bench streams`: the stream manager against the consumer a user would write.
//!
//! 1. Kafka → Parquet: `--records` JSON records of about 200 bytes preloaded into a topic
//!    of the tansu broker; one `consume` job (`until: now`) through the real master and
//!    `weir-stream-manager` processes into a Parquet dataset, and a plain Python consumer
//!    (`bench/kafka_parquet.py`: confluent-kafka + pyarrow, 100,000 records a file) on the
//!    same topic. Prints records/s and MB/s (wall clock, and per core: over the process's
//!    user+system CPU seconds) and peak RSS for each.
//! 2. Kafka → PostgreSQL: the same topic into a table (COPY, positions in the same
//!    transaction).
//!    Then Kafka → a Kafka topic, read back: every record once.
//! 3. Latency: records produced at `--latency-rate`/s for `--latency-seconds` into a
//!    continuous stream flushing every `--latency-flush-ms` (20) into PostgreSQL, and a
//!    plain consumer of the same topic (the broker's own share); for each record, the time
//!    from its production to this process seeing it in the table (p50/p99).
//! 4. A stalled sink: the table locked while the topic is consumed, under the default
//!    budget (1 GiB) and under `--stall-budget` MiB (smaller than the backlog); the
//!    manager's peak RSS against each, then every record landed once the lock goes.
//! 5. RabbitMQ → Parquet and NATS JetStream → Parquet throughput, `--records` each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use weir_bus::{Bus, KafkaBus, KafkaConfig, Message, TopicSpec};

use crate::{cpu_seconds, lake_rows, now_ms, peak_rss_mb, percentile, spawn, submit, wait, Broker, Master};

/// Settings of the stream benchmark.
#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    /// Records preloaded for each throughput run.
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    /// Records per second produced in the latency run.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// The latency run's flush interval, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_flush_ms: u64,
    /// The manager's budget while its sink is stalled, in MiB.
    #[arg(long, default_value_t = 64)]
    stall_budget: u64,
    /// The Python with confluent-kafka and pyarrow (scripts/ensure-bench-peer.sh installs it).
    #[arg(long, env = "WEIR_BENCH_PYTHON")]
    python: Option<PathBuf>,
}

/// One record of about 200 bytes.
fn record(i: u64) -> Vec<u8> {
    let symbol = ["AAPL", "MSFT", "NVDA", "AMZN"][(i % 4) as usize];
    json!({
        "id": i, "ts": 1_790_000_000_000u64 + i, "symbol": symbol,
        "price": 100.0 + (i % 1000) as f64 / 7.0, "qty": i % 500, "side": if i.is_multiple_of(2) { "buy" } else { "sell" },
        "venue": "XNAS", "note": "a fill reported by the exchange gateway for the account's order book, settled T+1",
    })
    .to_string()
    .into_bytes()
}

/// What one run took.
struct Run {
    records: u64,
    bytes: u64,
    wall: f64,
    cpu: f64,
    rss_mb: f64,
}

impl Run {
    fn print(&self, name: &str) {
        let mb = self.bytes as f64 / (1 << 20) as f64;
        println!("stream_{name}_records={} records", self.records);
        println!("stream_{name}_seconds={:.2} s", self.wall);
        println!("stream_{name}_records_per_s={:.0} records/s", self.records as f64 / self.wall);
        println!("stream_{name}_mb_per_s={:.1} MB/s", mb / self.wall);
        println!("stream_{name}_cpu_seconds={:.2} s", self.cpu);
        println!("stream_{name}_records_per_s_per_core={:.0} records/s", self.records as f64 / self.cpu.max(0.001));
        println!("stream_{name}_mb_per_s_per_core={:.1} MB/s", mb / self.cpu.max(0.001));
        println!("stream_{name}_peak_rss={:.0} MB", self.rss_mb);
    }
}

/// A `weir-stream-manager` process for one run.
struct Manager {
    child: tokio::process::Child,
    pid: u32,
}

impl Manager {
    fn start(m: &Master, work: &Path, extra: &[(&str, &str)]) -> anyhow::Result<Manager> {
        let data = work.join("data").display().to_string();
        let mut env = vec![
            ("WEIR_MASTER_URL", m.url.as_str()),
            ("WEIR_DATA_DIR", data.as_str()),
            ("WEIR_POLL_WAIT", "1s"),
            ("BENCH_PG_URL", m.schema.url.as_str()),
        ];
        env.extend_from_slice(extra);
        let child = spawn("weir-stream-manager", &[], &env)?;
        let pid = child.id().context("manager pid")?;
        // Its start (and first poll for work) is not the stream's time.
        std::thread::sleep(Duration::from_secs(1));
        Ok(Manager { child, pid })
    }
}

/// Runs one `consume` job to its end in a fresh manager (with `env` besides the usual);
/// the manager's figures.
async fn weir(
    m: &Master,
    work: &Path,
    config: Value,
    records: u64,
    bytes: u64,
    env: &[(&str, &str)],
) -> anyhow::Result<Run> {
    let manager = Manager::start(m, work, env)?;
    let mut jobs = m.jobs.clone();
    let spec = json!({"name": format!("bench-{}", uuid_ish()), "steps": [{"id": "consume", "kind": "consume", "queue": "stream", "config": config}]});
    let cpu0 = cpu_seconds(manager.pid);
    let t0 = Instant::now();
    let id = submit(&mut jobs, spec).await?;
    wait(&mut jobs, &id).await?;
    let wall = t0.elapsed().as_secs_f64();
    let run = Run { records, bytes, wall, cpu: cpu_seconds(manager.pid) - cpu0, rss_mb: peak_rss_mb(manager.pid) };
    drop(manager.child);
    Ok(run)
}

fn uuid_ish() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos())
}

/// Preloads `n` records into `topic`; their bytes.
async fn preload(bus: &Arc<dyn Bus>, topic: &str, n: u64) -> anyhow::Result<u64> {
    let mut bytes = 0;
    let mut i = 0;
    while i < n {
        let batch: Vec<Message> = (i..(i + 10_000).min(n))
            .map(|j| {
                let r = record(j);
                bytes += r.len() as u64;
                Message::new(topic, &format!("k{}", j % 16), r)
            })
            .collect();
        bus.publish(&batch).await?;
        i += 10_000;
    }
    Ok(bytes)
}

async fn kafka(args: &StreamArgs, python: &Path, work: &Path) -> anyhow::Result<()> {
    let broker = Broker::start()?;
    broker.wait().await?;
    let bus: Arc<dyn Bus> = Arc::new(KafkaBus::new(KafkaConfig::plaintext(&broker.brokers))?);
    bus.ensure_topics(&[TopicSpec { name: "trades".into(), partitions: 1, replication: 1 }]).await?;
    let t0 = Instant::now();
    let bytes = preload(&bus, "trades", args.records).await?;
    println!("stream_records={} records", args.records);
    println!("stream_mb={:.1} MiB", bytes as f64 / (1 << 20) as f64);
    println!("stream_preload_seconds={:.1} s", t0.elapsed().as_secs_f64());
    let m = Master::start(None).await?;

    // Kafka → Parquet: Weir, then the Python consumer.
    let lake = work.join("lake");
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["trades"], "group": "bench-weir"},
                        "until": "now", "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let w = weir(&m, work, config, args.records, bytes, &[]).await?;
    let rows = lake_rows(&lake);
    if rows != args.records {
        bail!("Weir landed {rows} rows of {} records", args.records);
    }
    w.print("kafka_parquet_weir");
    let out = work.join("py");
    let o = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/kafka_parquet.py"))
        .args([&broker.brokers, "trades", &out.display().to_string()])
        .output()
        .context("the Python consumer (scripts/ensure-bench-peer.sh installs confluent-kafka and pyarrow)")?;
    if !o.status.success() {
        bail!("the Python consumer failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: Value = serde_json::from_slice(&o.stdout)?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let py = Run {
        records: f("records") as u64,
        bytes,
        wall: f("seconds"),
        cpu: f("cpu_seconds"),
        rss_mb: f("peak_rss_mb"),
    };
    if py.records != args.records {
        bail!("the Python consumer read {} records of {}", py.records, args.records);
    }
    py.print("kafka_parquet_python");
    println!("stream_weir_vs_python_per_core={:.1} x", py.cpu / w.cpu.max(0.001));
    println!("stream_weir_vs_python_wall={:.1} x", py.wall / w.wall.max(0.001));

    // Kafka → PostgreSQL.
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["trades"], "group": "bench-weir-pg"},
                        "until": "now", "sinks": [{"type": "postgres", "url_env": "BENCH_PG_URL", "table": "trades", "create": true}]});
    let pg = weir(&m, work, config, args.records, bytes, &[]).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM trades").fetch_one(&m.pool).await?;
    if n as u64 != args.records {
        bail!("Weir loaded {n} rows of {} records", args.records);
    }
    pg.print("kafka_postgres_weir");

    // Kafka → a Kafka topic (JSON messages keyed by id, the topic its own ledger), read
    // back: every record once.
    bus.ensure_topics(&[TopicSpec { name: "trades.clean".into(), partitions: 1, replication: 1 }]).await?;
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["trades"], "group": "bench-weir-topic"},
                        "until": "now", "sinks": [{"type": "kafka", "brokers": broker.brokers, "topic": "trades.clean", "key": "id"}]});
    let kt = weir(&m, work, config, args.records, bytes, &[]).await?;
    let held = read_back(&bus, "trades.clean", args.records).await?;
    if held != args.records {
        bail!("the topic holds {held} distinct records of {}", args.records);
    }
    kt.print("kafka_topic_weir");

    latency(args, &m, &broker, &bus, work).await?;
    stalled(args, &m, &broker, work, bytes).await?;
    m.stop().await
}

/// Reads `topic` from its start until `n` distinct ids came (or nothing more for 10 s):
/// how many distinct ids it holds; a repeated id is an error.
async fn read_back(bus: &Arc<dyn Bus>, topic: &str, n: u64) -> anyhow::Result<u64> {
    let mut sub = bus.subscribe(&format!("bench-read-{}", uuid_ish()), &[topic]).await?;
    let mut seen = vec![false; n as usize];
    let mut distinct = 0u64;
    while distinct < n {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await else { break };
        let v: Value = serde_json::from_slice(&d?.message.payload)?;
        let id = v["id"].as_u64().context("a message without an id")?;
        match seen.get_mut(id as usize) {
            Some(s) if !*s => {
                *s = true;
                distinct += 1;
            }
            Some(_) => bail!("record {id} is in {topic} twice"),
            None => bail!("record {id} is not one produced"),
        }
    }
    Ok(distinct)
}

/// Produce-to-visible latency in PostgreSQL at a steady rate.
async fn latency(
    args: &StreamArgs,
    m: &Master,
    broker: &Broker,
    bus: &Arc<dyn Bus>,
    work: &Path,
) -> anyhow::Result<()> {
    bus.ensure_topics(&[TopicSpec { name: "ticks".into(), partitions: 1, replication: 1 }]).await?;
    let manager = Manager::start(m, work, &[])?;
    let mut jobs = m.jobs.clone();
    let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["ticks"]},
                        "flush": {"interval": format!("{}ms", args.latency_flush_ms)},
                        "schema": [{"name": "id", "type": "int64"}, {"name": "produced_at", "type": "int64"}, {"name": "note", "type": "string"}],
                        "sinks": [{"type": "postgres", "url_env": "BENCH_PG_URL", "table": "ticks", "create": true}]});
    let spec = json!({"name": "bench-latency", "steps": [{"id": "consume", "kind": "consume", "queue": "stream", "config": config}]});
    let id = submit(&mut jobs, spec).await?;
    let total = args.latency_rate * args.latency_seconds;
    // The broker's own share: a plain consumer of the same topic (fetches held at most
    // 5 ms), each record's time from production to its arrival.
    let mut direct = KafkaConfig::plaintext(&broker.brokers);
    direct.properties.push(("fetch.wait.max.ms".into(), "5".into()));
    let mut sub = KafkaBus::new(direct)?.subscribe(&format!("bench-direct-{}", uuid_ish()), &["ticks"]).await?;
    let direct = tokio::spawn(async move {
        let mut lat: Vec<f64> = Vec::with_capacity(total as usize);
        while (lat.len() as u64) < total {
            let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(60), sub.next()).await else { break };
            let at = serde_json::from_slice::<Value>(&d.message.payload).ok().and_then(|v| v["produced_at"].as_i64());
            lat.push((now_ms() - at.unwrap_or_default()) as f64);
        }
        lat
    });
    // Time for the manager to lease the stream and connect: startup is not latency.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let producer = {
        let (bus, rate) = (bus.clone(), args.latency_rate);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                // Every 10 ms, what the rate allows by now.
                let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                let batch: Vec<Message> = (sent..due)
                    .map(|i| {
                        let body = json!({"id": i, "produced_at": now_ms(), "note": "a tick from the feed handler of the venue"});
                        Message::new("ticks", "k", body.to_string().into_bytes())
                    })
                    .collect();
                if !batch.is_empty() {
                    bus.publish(&batch).await?;
                }
                sent = due;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut seen: i64 = -1;
    let mut lat: Vec<f64> = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(args.latency_seconds + 60);
    while (seen + 1) < total as i64 && Instant::now() < deadline {
        // The table appears with the first flush: an error until then.
        let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT id, produced_at FROM ticks WHERE id > $1 ORDER BY id")
            .bind(seen)
            .fetch_all(&m.pool)
            .await
            .unwrap_or_default();
        let now = now_ms();
        for (id, at) in rows {
            lat.push((now - at) as f64);
            seen = seen.max(id);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    producer.await??;
    jobs.cancel_job(weir_proto::v1::CancelJobRequest { job_id: id, reason: "bench over".into() }).await?;
    drop(manager.child);
    if lat.len() as u64 != total {
        bail!("{} of {total} records became visible", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    let mut broker_lat = direct.await?;
    broker_lat.sort_by(f64::total_cmp);
    println!("stream_latency_rate={} records/s", args.latency_rate);
    println!("stream_latency_flush_interval={} ms", args.latency_flush_ms);
    println!("stream_latency_p50={:.0} ms", percentile(&lat, 0.5));
    println!("stream_latency_p99={:.0} ms", percentile(&lat, 0.99));
    println!("stream_latency_broker_records={} records", broker_lat.len());
    println!("stream_latency_broker_p50={:.0} ms", percentile(&broker_lat, 0.5));
    println!("stream_latency_broker_p99={:.0} ms", percentile(&broker_lat, 0.99));
    Ok(())
}

/// The manager's memory while its only sink is locked: under the default budget (1 GiB),
/// and under `--stall-budget`, smaller than the backlog.
async fn stalled(args: &StreamArgs, m: &Master, broker: &Broker, work: &Path, bytes: u64) -> anyhow::Result<()> {
    println!("stream_stalled_backlog={:.0} MiB", bytes as f64 / (1 << 20) as f64);
    for (name, budget_mib) in [("default", 1024), ("small", args.stall_budget)] {
        let table = format!("stalled_{name}");
        sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} (LIKE trades)")).execute(&m.pool).await?;
        let mut lock = m.pool.begin().await?;
        sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).execute(&mut *lock).await?;
        let budget = format!("{budget_mib}MiB");
        let manager = Manager::start(m, work, &[("WEIR_STREAM_BUDGET", budget.as_str())])?;
        let mut jobs = m.jobs.clone();
        let config = json!({"source": {"type": "kafka", "brokers": broker.brokers, "topics": ["trades"], "group": format!("bench-{table}")},
                            "until": "now", "flush": {"max_records": 10_000_000, "max_bytes": 1u64 << 40},
                            "sinks": [{"type": "postgres", "url_env": "BENCH_PG_URL", "table": table}]});
        let spec = json!({"name": format!("bench-{table}"), "steps": [{"id": "consume", "kind": "consume", "queue": "stream", "config": config}]});
        let id = submit(&mut jobs, spec).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stalled_rss = peak_rss_mb(manager.pid);
        lock.rollback().await?;
        wait(&mut jobs, &id).await?;
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&m.pool).await?;
        if n as u64 != args.records {
            bail!("{n} of {} records landed after the stall", args.records);
        }
        println!("stream_stalled_{name}_budget={budget_mib} MiB");
        println!("stream_stalled_{name}_peak_rss={stalled_rss:.0} MB");
        drop(manager.child);
    }
    Ok(())
}

/// RabbitMQ → Parquet and NATS → Parquet.
async fn brokers(args: &StreamArgs, work: &Path) -> anyhow::Result<()> {
    let m = Master::start(None).await?;
    // RabbitMQ: a queue of its own, published with confirms.
    let queue = format!("weir_bench_{}", uuid_ish());
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("RabbitMQ on 127.0.0.1:5672")?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(queue.as_str().into(), Default::default(), Default::default()).await?;
    ch.confirm_select(Default::default()).await?;
    let mut bytes = 0u64;
    for chunk in (0..args.records).collect::<Vec<_>>().chunks(5000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for i in chunk {
            let body = record(*i);
            bytes += body.len() as u64;
            let props = lapin::BasicProperties::default().with_message_id(format!("m{i}").into());
            confirms.push(ch.basic_publish("".into(), queue.as_str().into(), Default::default(), &body, props).await?);
        }
        for c in confirms {
            c.await?;
        }
    }
    let lake = work.join("rabbit");
    let config = json!({"source": {"type": "rabbitmq", "url_env": "BENCH_AMQP_URL", "queue": queue, "prefetch": 20_000},
                        "until": "now", "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let r = weir(&m, work, config, args.records, bytes, &[("BENCH_AMQP_URL", url)]).await?;
    let rows = lake_rows(&lake);
    if rows != args.records {
        bail!("Weir landed {rows} rows of {} RabbitMQ messages", args.records);
    }
    r.print("rabbitmq_parquet_weir");
    let _ = ch.queue_delete(queue.as_str().into(), Default::default()).await;

    // NATS JetStream: a stream of its own, publishes pipelined.
    let name = format!("WEIR_BENCH_{}", uuid_ish());
    let js = async_nats::jetstream::new(
        async_nats::connect("nats://127.0.0.1:4222").await.context("NATS on 127.0.0.1:4222")?,
    );
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    for chunk in (0..args.records).collect::<Vec<_>>().chunks(5000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for i in chunk {
            acks.push(js.publish(format!("{name}.trades"), record(*i).into()).await?);
        }
        for a in acks {
            a.await?;
        }
    }
    let lake = work.join("nats");
    let config = json!({"source": {"type": "nats", "servers": "nats://127.0.0.1:4222", "stream": name, "consumer": "bench"},
                        "until": "now", "sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let r = weir(&m, work, config, args.records, bytes, &[]).await?;
    let rows = lake_rows(&lake);
    if rows != args.records {
        bail!("Weir landed {rows} rows of {} NATS messages", args.records);
    }
    r.print("nats_parquet_weir");
    let _ = js.delete_stream(&name).await;
    m.stop().await
}

pub async fn run(args: &StreamArgs) -> anyhow::Result<()> {
    let home = std::env::var("HOME").unwrap_or_default();
    let python =
        args.python.clone().unwrap_or_else(|| PathBuf::from(format!("{home}/.cache/weir/bench-venv/bin/python")));
    let work = tempfile_dir()?;
    kafka(args, &python, &work).await?;
    brokers(args, &work).await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("weir-bench-streams-{}", uuid_ish()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
