//! The stream loop, the same for every source: read deliveries into one buffer per lane,
//! flush every lane's buffer through the data plane on size, on the interval, when the
//! source's unacknowledged window is full, or under the budget's pressure; acknowledge
//! the source only after the sinks committed; end at `until: now` or when cancelled,
//! after a final flush.
//!
//! Before reading, the stream claims its sinks with its lease (a former owner's late flush
//! is refused from then on) and asks them where it stands: a replayable source resumes
//! after the highest landed position per lane ([`crate::positions`]); any other keeps a
//! ledger of landed message ids and drops redeliveries ([`crate::dedupe`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_bus::{Bus, KafkaBus, Message};
use weir_core::dataset::SinkSpec;
use weir_core::events::header;
use weir_core::stream::{Bound, DeadLetterSpec, Overflow, StreamStep, DEFAULT_DEDUPE_WINDOW};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::decode::Decoder;
use crate::dedupe::{self, Dedupe};
use crate::land::Landing;
use crate::source::{Delivery, Event, Source};
use crate::status::{Counts, Registry, Tracker};

/// How long a bounded stream waits for more after every lane reported its end.
pub const END_QUIET: Duration = Duration::from_secs(1);
/// How long a cancelled stream may take for its final flush.
const FINAL_FLUSH: Duration = Duration::from_secs(30);

/// One lane's records not yet flushed: NDJSON, with each record's end and position.
#[derive(Default)]
struct Buffer {
    records: Vec<u8>,
    /// Bytes at the front dropped by `drop_oldest`, not yet compacted away.
    head: usize,
    marks: VecDeque<(usize, i64)>,
    /// The records' de-duplication keys, in order (sources that do not replay).
    ids: VecDeque<String>,
}

impl Buffer {
    fn push(&mut self, position: i64, payload: &[u8]) -> u64 {
        // One record a line: a message's own line breaks would split it.
        self.records.extend(payload.iter().map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }));
        self.records.push(b'\n');
        self.marks.push_back((self.records.len(), position));
        payload.len() as u64 + 1
    }

    fn count(&self) -> usize {
        self.marks.len()
    }

    /// Drops the oldest record; the bytes freed.
    fn drop_oldest(&mut self) -> u64 {
        let Some((end, _)) = self.marks.pop_front() else { return 0 };
        self.ids.pop_front();
        let freed = (end - self.head) as u64;
        self.head = end;
        if self.head > self.records.len() / 2 {
            self.records.drain(..self.head);
            self.marks.iter_mut().for_each(|m| m.0 -= self.head);
            self.head = 0;
        }
        freed
    }

    /// What it holds, leaving it empty.
    fn take(&mut self) -> Option<Taken> {
        let (first, last) = (self.marks.front()?.1, self.marks.back()?.1);
        let mut records = std::mem::take(&mut self.records);
        records.drain(..self.head);
        let (bytes, count) = (records.len() as u64, self.marks.len() as u64);
        let ids = std::mem::take(&mut self.ids).into();
        *self = Buffer::default();
        Some(Taken { records, first, last, ids, bytes, count })
    }
}

/// A buffer's records for a flush.
struct Taken {
    records: Vec<u8>,
    first: i64,
    last: i64,
    ids: Vec<String>,
    bytes: u64,
    count: u64,
}

/// Where undecodable messages go.
enum Dead {
    /// A Parquet dataset, one buffer per lane.
    Parquet(Box<Landing>, Vec<Buffer>),
    /// A Kafka topic of the source's brokers, through the event bus's client: the message
    /// as it came, its coordinates and the reason in headers.
    Kafka { bus: Box<KafkaBus>, topic: String, pending: Vec<Message> },
}

/// What a stream did, for its report.
#[derive(Default)]
struct Tally {
    records: u64,
    bytes: u64,
    flushes: u64,
    pressure_flushes: u64,
    rows_written: u64,
    rows_quarantined: u64,
    duplicates: u64,
    dropped: u64,
    dead_letters: u64,
    paused: u64,
    paused_ms: u64,
    /// lane → (first position landed, last position landed).
    lanes: BTreeMap<usize, (i64, i64)>,
}

/// A stream's state between deliveries.
struct Stream<'a> {
    step: &'a StreamStep,
    landing: &'a Landing,
    budget: &'a Budget,
    source: Box<dyn Source>,
    buffers: Vec<Buffer>,
    /// Records and bytes buffered over every lane.
    buffered: (u64, u64),
    /// The last position delivered per lane, not acknowledged yet.
    seen: BTreeMap<usize, i64>,
    dedupe: Option<Dedupe>,
    /// Checks (and for Avro, decodes) each message.
    decoder: Decoder,
    /// Where undecodable messages go, when the step names it.
    dead: Option<Dead>,
    /// `<task>.<fence>`: names the flushes of a source whose positions do not replay.
    lease: String,
    tally: Tally,
    /// The last position read per lane (-1: none yet).
    positions: Vec<i64>,
    tracker: Tracker,
}

/// Consumes the step's stream until cancelled, or until its `until` bound.
pub async fn run(
    task: &TaskContext,
    step: &StreamStep,
    landing: &Landing,
    budget: &Budget,
    registry: &Registry,
    data_dir: &Path,
) -> Result<Value, StepError> {
    let decoder = Decoder::new(&step.format)?;
    let mut source = crate::source::open(step, task, budget).await?;
    landing.claim().await?;
    let lanes = source.lanes().to_vec();
    let mut dedupe = None;
    let landed = if source.replayable() {
        source.landed(landing).await?
    } else {
        let keys: BTreeSet<String> = landing.input_keys().await?.into_iter().flatten().collect();
        let dir = ledger_dir(step, data_dir, source.name(), &lanes[0].name);
        let window = step.dedupe_window.unwrap_or(DEFAULT_DEDUPE_WINDOW) as usize;
        dedupe = Some(Dedupe::open(&dir, window, &keys).map_err(|e| StepError::retryable("staging", e))?);
        BTreeMap::new()
    };
    let dead = match &step.dead_letter {
        Some(DeadLetterSpec::Parquet { path }) => Some(Dead::Parquet(
            Box::new(Landing::dead_letters(path, task, data_dir).await?),
            lanes.iter().map(|_| Buffer::default()).collect(),
        )),
        Some(DeadLetterSpec::Kafka { topic }) => {
            let bus = KafkaBus::new(crate::sources::kafka::client_settings(step)?)
                .map_err(|e| StepError::retryable("unavailable", format!("kafka dead-letter producer: {e}")))?;
            Some(Dead::Kafka { bus: Box::new(bus), topic: topic.clone(), pending: Vec::new() })
        }
        None => None,
    };
    source.start(&landed, step.from.as_ref()).await?;
    let tracker = Tracker::start(registry, task, source.name(), &lanes, &landed);
    let mut s = Stream {
        step,
        landing,
        budget,
        buffers: lanes.iter().map(|_| Buffer::default()).collect(),
        source,
        buffered: (0, 0),
        seen: BTreeMap::new(),
        dedupe,
        decoder,
        dead,
        lease: format!("{}.{}", task.task_id, task.fence),
        tally: Tally::default(),
        positions: vec![-1; lanes.len()],
        tracker,
    };
    let result = s.consume(task).await;
    s.source.close().await;
    // Lanes may have joined while it ran (the shards of a Kinesis reshard).
    let lanes = s.source.lanes().to_vec();
    // Whatever ended the stream, its buffers leave the budget.
    budget.give(s.buffered.1);
    result?;
    let t = &s.tally;
    let lanes: serde_json::Map<String, Value> =
        t.lanes.iter().map(|(l, (first, last))| (lanes[*l].key(), json!({"first": first, "last": last}))).collect();
    let mut out = json!({
        "kind": "consume", "source": s.source.name(),
        "records": t.records, "bytes": t.bytes, "flushes": t.flushes, "pressure_flushes": t.pressure_flushes,
        "rows_written": t.rows_written, "rows_quarantined": t.rows_quarantined,
        "duplicates": t.duplicates, "dropped": t.dropped, "dead_letters": t.dead_letters,
        "paused": t.paused, "paused_ms": t.paused_ms,
        "budget": {"limit": budget.limit(), "peak": budget.used().1},
        "lanes": lanes,
    });
    if let (Some(o), Value::Object(extra)) = (out.as_object_mut(), s.source.details()) {
        o.extend(extra);
    }
    Ok(out)
}

/// Where a non-replayable stream keeps its ledger of landed ids: beside the data, in its
/// first local dataset (so another replica sharing the disk finds it), else in this
/// manager's data dir.
fn ledger_dir(step: &StreamStep, data_dir: &Path, source: &str, lane: &str) -> PathBuf {
    let name = format!("{source}-{}", weir_data::sink::safe_name(lane));
    let local = step.sinks.iter().find_map(|s| match s {
        SinkSpec::Parquet { path, location: None, .. } => Some(path),
        _ => None,
    });
    match local {
        Some(root) => Path::new(root).join("_weir").join("streams").join(name),
        None => data_dir.join("streams").join(name),
    }
}

/// Whether a delivery lies beyond the stream's `until`: at or after its time, or at or
/// after its lane's offset (an end is exclusive).
fn beyond(until: &Bound, lane: &crate::source::Lane, d: &Delivery) -> bool {
    match until {
        Bound::Time(_) => d.time_ms.zip(until.time_ms()).is_some_and(|(t, end)| t >= end),
        Bound::Offsets(_) => until.offset(&lane.key()).is_some_and(|end| d.position >= end),
        Bound::Now | Bound::Earliest => false,
    }
}

impl Stream<'_> {
    async fn consume(&mut self, task: &TaskContext) -> Result<(), StepError> {
        let (max_records, max_bytes) = (self.step.flush.records(), self.step.flush.bytes());
        // A source that stops delivering at a number of unacknowledged messages is
        // flushed at that number, or it would wait for the interval.
        let max_records = self.source.window().map_or(max_records, |w| max_records.min(w));
        let interval = self.step.flush.interval();
        let until = self.step.until.clone();
        let bounded = until.is_some();
        // A bounded stream is through once every lane is past its bound, or reported its
        // end and nothing more came for [`END_QUIET`]: the ends a broker reports are not
        // trusted alone (tansu reports a partition's end short of its last batch, then
        // delivers it). A backfill never waits for records that are not there yet.
        let mut at_end: BTreeSet<usize> = BTreeSet::new();
        let mut past: BTreeSet<usize> = BTreeSet::new();
        let mut last_record = Instant::now();
        let done = |lanes: usize, at_end: &BTreeSet<usize>, past: &BTreeSet<usize>, last_record: Instant| {
            bounded
                && (0..lanes).all(|l| past.contains(&l) || at_end.contains(&l))
                && (at_end.is_subset(past) || last_record.elapsed() >= END_QUIET)
        };
        let mut flushed_at = Instant::now();
        loop {
            if done(self.buffers.len(), &at_end, &past, last_record) {
                break;
            }
            if self.budget.pressed() {
                self.relieve(task).await?;
            }
            let mut wait = interval.saturating_sub(flushed_at.elapsed()).max(Duration::from_millis(1));
            if bounded {
                wait = wait.min(END_QUIET);
            }
            // The status stays fresh while nothing arrives.
            wait = wait.min(crate::status::REFRESH);
            let event = tokio::select! {
                _ = task.cancel.cancelled() => {
                    // A final flush and acknowledgement, so the next owner starts after
                    // them (refused by the fence if the lease has moved on already).
                    let _ = tokio::time::timeout(FINAL_FLUSH, self.flush()).await;
                    return Err(StepError::retryable("cancelled", "stopped: the task was cancelled or its lease lost"));
                }
                e = tokio::time::timeout(wait, self.source.next()) => e,
            };
            match event {
                Ok(Ok(Event::Message(d))) => {
                    if past.contains(&d.lane) {
                        // Beyond the bound: neither taken nor acknowledged.
                    } else if until.as_ref().is_some_and(|u| beyond(u, &self.source.lanes()[d.lane], &d)) {
                        past.insert(d.lane);
                    } else {
                        at_end.remove(&d.lane);
                        last_record = Instant::now();
                        self.take(d);
                    }
                }
                Ok(Ok(Event::End(ls))) => at_end.extend(ls),
                Ok(Ok(Event::Grew)) => self.grow(),
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
            self.report("reading", false).await;
            let (count, bytes) = self.buffered;
            let due = flushed_at.elapsed() >= interval;
            if (count > 0
                && (count >= max_records
                    || bytes >= max_bytes
                    || due
                    || done(self.buffers.len(), &at_end, &past, last_record)))
                || (due && !self.seen.is_empty())
            {
                // The interval counts from each flush's start, so a record waits about one
                // interval and one landing, not an interval after the landing; but a
                // landing slower than the interval leaves at least half an interval of
                // reading before the next, or flushes would shrink to a record each.
                let started = Instant::now();
                self.flush().await?;
                flushed_at = Instant::now().checked_sub(interval / 2).map_or(started, |t| started.max(t));
            } else if due {
                flushed_at = Instant::now();
            }
        }
        self.flush().await
    }

    /// Makes room for the lanes that joined the source.
    fn grow(&mut self) {
        let lanes = self.source.lanes();
        self.buffers.resize_with(lanes.len(), Buffer::default);
        self.positions.resize(lanes.len(), -1);
        if let Some(Dead::Parquet(_, buffers)) = &mut self.dead {
            buffers.resize_with(lanes.len(), Buffer::default);
        }
        self.tracker.grow(lanes);
    }

    /// Buffers a delivery, unless it is a duplicate; one that does not decode goes to the
    /// dead letters, if the step names them.
    fn take(&mut self, d: Delivery) {
        let Delivery { lane, position, id, redelivered, payload, .. } = d;
        self.seen.insert(lane, position);
        self.positions[lane] = position;
        self.tally.records += 1;
        self.tally.bytes += payload.len() as u64;
        let decoded = match self.dead.is_some() || self.decoder.transforms() {
            true => self.decoder.decode(&payload),
            false => Ok(std::borrow::Cow::Borrowed(payload.as_slice())),
        };
        let record = match (decoded, &mut self.dead) {
            (Ok(record), _) => record,
            (Err(reason), None) => std::borrow::Cow::Owned(self.decoder.undecodable(&payload, &reason)),
            (Err(reason), Some(dead)) => {
                let l = &self.source.lanes()[lane];
                let n = match dead {
                    Dead::Parquet(_, buffers) => {
                        let line = json!({
                            "source": self.source.name(), "lane": l.key(),
                            "position": position, "id": id, "reason": reason,
                            "message": String::from_utf8_lossy(&payload),
                            "received_at": weir_core::events::rfc3339(weir_runtime::now_ms()),
                        })
                        .to_string();
                        buffers[lane].push(position, line.as_bytes())
                    }
                    Dead::Kafka { topic, pending, .. } => {
                        let n = payload.len() as u64;
                        pending.push(
                            Message::new(topic, &l.key(), payload)
                                .header(header::DLQ_REASON, reason)
                                .header(header::DLQ_TOPIC, l.name.as_str())
                                .header(header::DLQ_PARTITION, l.index.to_string())
                                .header(header::DLQ_OFFSET, position.to_string()),
                        );
                        n
                    }
                };
                self.buffered.1 += n;
                self.budget.take(n);
                self.tally.dead_letters += 1;
                return;
            }
        };
        if let Some(dd) = &mut self.dedupe {
            let key = dedupe::key(id.as_deref(), &payload);
            if (id.is_some() || redelivered) && dd.seen(&key) {
                self.tally.duplicates += 1;
                return;
            }
            dd.buffer(&key);
            self.buffers[lane].ids.push_back(key);
        }
        let n = self.buffers[lane].push(position, &record);
        self.buffered.0 += 1;
        self.buffered.1 += n;
        self.budget.take(n);
    }

    /// Past the budget's pause mark: flush what this stream holds, drop its oldest records
    /// if it opted into that, or stop fetching until other streams' flushes make room.
    async fn relieve(&mut self, task: &TaskContext) -> Result<(), StepError> {
        if self.step.overflow == Overflow::DropOldest && self.buffered.0 > 0 {
            while self.budget.pressed() && self.buffered.0 > 0 {
                let Some(b) = self.buffers.iter_mut().filter(|b| b.count() > 0).max_by_key(|b| b.records.len()) else {
                    break;
                };
                let freed = b.drop_oldest();
                self.buffered.0 -= 1;
                self.buffered.1 -= freed;
                self.budget.give(freed);
                self.tally.dropped += 1;
            }
            return Ok(());
        }
        if self.buffered.1 > 0 {
            self.tally.pressure_flushes += 1;
            return self.flush().await;
        }
        let started = Instant::now();
        self.tally.paused += 1;
        self.source.pause(true)?;
        self.report("paused", true).await;
        loop {
            tokio::select! {
                _ = task.cancel.cancelled() => break,
                _ = self.budget.relieved() => break,
                // Paused, the stream still reports (a long pause is a stall).
                _ = tokio::time::sleep(crate::status::REFRESH) => self.report("paused", false).await,
            }
        }
        self.source.pause(false)?;
        self.tally.paused_ms += started.elapsed().as_millis() as u64;
        Ok(())
    }

    /// Lands every lane's dead letters, then its records, then acknowledges everything
    /// delivered. Dead letters go first: a crash between the two replays both (a dead
    /// letter may then be recorded twice), never loses one.
    async fn flush(&mut self) -> Result<(), StepError> {
        match &mut self.dead {
            Some(Dead::Parquet(landing, buffers)) => {
                for (lane, buf) in buffers.iter_mut().enumerate() {
                    let Some(t) = buf.take() else { continue };
                    let identity = format!("{}/dead", self.source.identity(&self.lease, lane, t.first, t.last));
                    let landed = landing.land(&identity, t.records).await;
                    self.buffered.1 -= t.bytes;
                    self.budget.give(t.bytes);
                    landed?;
                }
            }
            Some(Dead::Kafka { bus, topic, pending }) if !pending.is_empty() => {
                let letters = std::mem::take(pending);
                let bytes: u64 = letters.iter().map(|m| m.payload.len() as u64).sum();
                self.buffered.1 -= bytes;
                self.budget.give(bytes);
                bus.publish(&letters)
                    .await
                    .map_err(|e| StepError::retryable("unavailable", format!("kafka dead letters to {topic}: {e}")))?;
            }
            _ => {}
        }
        for lane in 0..self.buffers.len() {
            let Some(t) = self.buffers[lane].take() else { continue };
            let (first, last) = (t.first, t.last);
            let identity = self.source.identity(&self.lease, lane, first, last);
            if let Some(dd) = &mut self.dedupe {
                dd.intend(&weir_data::sink::input_key(&identity), t.ids)
                    .map_err(|e| StepError::retryable("staging", e))?;
            }
            let landed = self.landing.land(&identity, t.records).await;
            self.buffered.0 -= t.count;
            self.buffered.1 -= t.bytes;
            self.budget.give(t.bytes);
            let report = landed?;
            self.tally.rows_written += report.rows_written;
            self.tally.rows_quarantined += report.rows_quarantined;
            self.tally.flushes += 1;
            self.tally.lanes.entry(lane).or_insert((first, last)).1 = last;
        }
        if !self.seen.is_empty() {
            self.source.commit(&self.seen).await?;
            self.tracker.checkpoint(&self.seen);
            self.seen.clear();
        }
        Ok(())
    }

    /// Refreshes the stream's status when due, and asks the source for its lag.
    async fn report(&mut self, state: &str, now: bool) {
        if !now && !self.tracker.due() {
            return;
        }
        let t = &self.tally;
        let counts = Counts {
            records: t.records,
            bytes: t.bytes,
            flushes: t.flushes,
            duplicates: t.duplicates,
            dead_letters: t.dead_letters,
            dropped: t.dropped,
            buffered_records: self.buffered.0,
            buffered_bytes: self.buffered.1,
        };
        self.tracker.refresh(counts, state, &self.positions);
        if self.tracker.lag_due() {
            match self.source.lag(&self.positions).await {
                Ok(lag) => self.tracker.lag(&lag, state == "paused"),
                Err(e) => tracing::debug!(error = %e.message, "the source did not tell its lag"),
            }
        }
    }
}
