//! Kafka into the step's sinks. The task owns every partition of its topics (assigned,
//! not group-balanced: ownership is the lease, fenced at every commit); the consumer group
//! only keeps the committed offsets. Each partition starts after the higher of its
//! committed offset and the last position its sinks hold, so a crash between landing and
//! committing replays nothing twice. Records are buffered per partition and flushed on
//! size or interval; offsets are committed only after the sinks have the records. A
//! message that is not JSON is quarantined with its reason by the converter (its line does
//! not parse), and the partition goes on. With `until: now` the stream ends once the
//! consumer has reached the end of every partition (records produced meanwhile may be
//! included); other bounds, and `from`, are not served yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use weir_core::stream::{Bound, SourceSpec, StreamStep, DEFAULT_FLUSH_BYTES, DEFAULT_FLUSH_RECORDS};
use weir_worker::{StepError, TaskContext};

use crate::land::Landing;
use crate::positions::{self, Partition};

/// How long a bounded stream waits for more after every partition reported its end.
const END_QUIET: Duration = Duration::from_secs(1);

/// Broker calls that wait (metadata, watermarks, offsets) give up after this.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

fn broker(e: rdkafka::error::KafkaError) -> StepError {
    StepError::retryable("unavailable", format!("kafka: {e}"))
}

/// One partition's records not yet flushed.
#[derive(Default)]
struct Buffer {
    records: Vec<u8>,
    count: u64,
    first: i64,
    last: i64,
}

/// What a stream did, for its report.
#[derive(Default)]
struct Tally {
    records: u64,
    bytes: u64,
    flushes: u64,
    rows_written: u64,
    rows_quarantined: u64,
    /// partition → (first position taken, last position landed).
    partitions: BTreeMap<Partition, (i64, i64)>,
}

/// Consumes the stream until cancelled, or until its `until` bound.
pub async fn run(task: &TaskContext, step: &StreamStep, landing: &Landing) -> Result<Value, StepError> {
    let SourceSpec::Kafka { brokers, topics, group, .. } = &step.source else {
        return Err(StepError::permanent("bad_config", "not a kafka source"));
    };
    let group = group.clone().unwrap_or_else(|| format!("weir-{}-{}-{}", task.namespace, task.job_name, task.step_id));
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("log_level", "4");
    let consumer: Arc<StreamConsumer> = Arc::new(cfg.create().map_err(broker)?);

    // Every partition of the topics, and where each starts.
    let (c, names, sinks) = (consumer.clone(), topics.clone(), step.sinks.clone());
    let starts = tokio::task::spawn_blocking(move || -> Result<_, StepError> {
        let mut parts: Vec<Partition> = Vec::new();
        for t in &names {
            let md = c.fetch_metadata(Some(t), BROKER_TIMEOUT).map_err(broker)?;
            for mt in md.topics() {
                if let Some(e) = mt.error() {
                    return Err(StepError::retryable("unavailable", format!("kafka topic {t}: {e:?}")));
                }
                parts.extend(mt.partitions().iter().map(|p| (t.clone(), p.id())));
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &parts {
            tpl.add_partition(t, *p);
        }
        let committed = c.committed_offsets(tpl, BROKER_TIMEOUT).map_err(broker)?;
        let landed = positions::landed(&sinks, &parts).map_err(|e| crate::land::step_error(&e))?;
        let mut starts = BTreeMap::new();
        for (t, p) in &parts {
            let (low, _) = c.fetch_watermarks(t, *p, BROKER_TIMEOUT).map_err(broker)?;
            let committed = match committed.find_partition(t, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            let after_landed = landed.get(&(t.clone(), *p)).map_or(low, |l| l + 1);
            starts.insert((t.clone(), *p), committed.max(after_landed).max(low));
        }
        Ok(starts)
    })
    .await
    .map_err(|e| StepError::retryable("crashed", e.to_string()))??;
    let bounded = matches!(step.until, Some(Bound::Now));
    let mut tpl = TopicPartitionList::new();
    for ((t, p), start) in &starts {
        tpl.add_partition_offset(t, *p, Offset::Offset(*start)).map_err(broker)?;
    }
    consumer.assign(&tpl).map_err(broker)?;

    let (max_records, max_bytes) =
        (step.flush.max_records.unwrap_or(DEFAULT_FLUSH_RECORDS), step.flush.max_bytes.unwrap_or(DEFAULT_FLUSH_BYTES));
    let interval = step.flush.interval();
    // A bounded stream is through once the consumer reached the end of every partition
    // (librdkafka's partition EOF) and nothing more came for [`END_QUIET`]. The ends a
    // broker reports are not trusted alone: tansu's in-memory engine reports the last
    // batch's base offset + 1, short of a partition written in batches, both up front
    // (ListOffsets) and in fetches (an early EOF, after which records still come).
    let mut at_end: std::collections::BTreeSet<Partition> = std::collections::BTreeSet::new();
    let mut last_record = Instant::now();
    let done = |at_end: &std::collections::BTreeSet<Partition>, last_record: Instant| {
        bounded && starts.keys().all(|tp| at_end.contains(tp)) && last_record.elapsed() >= END_QUIET
    };
    let mut buffers: BTreeMap<Partition, Buffer> = BTreeMap::new();
    // Records and bytes in the buffers (kept as they fill, not summed per message).
    let mut buffered: (u64, u64) = (0, 0);
    let mut tally = Tally::default();
    let mut flushed_at = Instant::now();
    loop {
        if done(&at_end, last_record) {
            break;
        }
        let mut wait = interval.saturating_sub(flushed_at.elapsed()).max(Duration::from_millis(1));
        if bounded {
            wait = wait.min(END_QUIET);
        }
        let msg = tokio::select! {
            _ = task.cancel.cancelled() => {
                // Unflushed records are not committed: the next owner reads them again.
                return Err(StepError::retryable("cancelled", "stopped: the task was cancelled or its lease lost"));
            }
            m = tokio::time::timeout(wait, consumer.recv()) => m,
        };
        if let Ok(m) = msg {
            let m = match m {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    at_end.extend(starts.keys().filter(|(_, q)| *q == p).cloned());
                    continue;
                }
                Err(e) => return Err(broker(e)),
            };
            let tp = (m.topic().to_string(), m.partition());
            at_end.remove(&tp);
            last_record = Instant::now();
            let buf = buffers.entry(tp.clone()).or_default();
            if buf.count == 0 {
                buf.first = m.offset();
            }
            buf.last = m.offset();
            buf.count += 1;
            let payload = m.payload().unwrap_or_default();
            // One record a line: a message's own line breaks would split it.
            buf.records.extend(payload.iter().map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }));
            buf.records.push(b'\n');
            tally.records += 1;
            tally.bytes += payload.len() as u64;
            buffered.0 += 1;
            buffered.1 += payload.len() as u64 + 1;
        }
        let (count, bytes) = buffered;
        if count > 0
            && (count >= max_records
                || bytes >= max_bytes
                || flushed_at.elapsed() >= interval
                || done(&at_end, last_record))
        {
            flush(&consumer, landing, &mut buffers, &mut tally).await?;
            buffered = (0, 0);
            flushed_at = Instant::now();
        } else if count == 0 && flushed_at.elapsed() >= interval {
            flushed_at = Instant::now();
        }
    }
    flush(&consumer, landing, &mut buffers, &mut tally).await?;
    let partitions: serde_json::Map<String, Value> = tally
        .partitions
        .iter()
        .map(|((t, p), (first, last))| (format!("{t}/{p}"), json!({"first": first, "last": last})))
        .collect();
    Ok(json!({
        "kind": "consume", "source": "kafka", "group": group,
        "records": tally.records, "bytes": tally.bytes, "flushes": tally.flushes,
        "rows_written": tally.rows_written, "rows_quarantined": tally.rows_quarantined,
        "partitions": partitions,
    }))
}

/// Lands every partition's buffer, then commits the offsets after them.
async fn flush(
    consumer: &StreamConsumer,
    landing: &Landing,
    buffers: &mut BTreeMap<Partition, Buffer>,
    tally: &mut Tally,
) -> Result<(), StepError> {
    let mut commit = TopicPartitionList::new();
    for ((t, p), buf) in std::mem::take(buffers) {
        if buf.count == 0 {
            continue;
        }
        let report = landing.land(&positions::identity(&t, p, buf.first, buf.last), buf.records).await?;
        tally.rows_written += report.rows_written;
        tally.rows_quarantined += report.rows_quarantined;
        tally.flushes += 1;
        let e = tally.partitions.entry((t.clone(), p)).or_insert((buf.first, buf.last));
        e.1 = buf.last;
        commit.add_partition_offset(&t, p, Offset::Offset(buf.last + 1)).map_err(broker)?;
    }
    if commit.count() > 0 {
        // Async: the sinks' positions, not the broker's, are what a restart trusts first.
        consumer.commit(&commit, CommitMode::Async).map_err(broker)?;
    }
    Ok(())
}
