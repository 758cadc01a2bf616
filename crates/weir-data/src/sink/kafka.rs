//! A Kafka topic as a stream's sink, exactly once without Kafka transactions.
//!
//! Each input (one flush of one source lane) goes wholly to one partition, chosen by its
//! lane ([`lane_of`]), through an idempotent producer: the partition holds a lane's
//! flushes in order and never a message twice within a producer session. Every message
//! carries headers naming its input and its row within it ([`HEADER_INPUT`],
//! [`HEADER_ROW`], [`HEADER_ROWS`]) and the writer's task and fence.
//!
//! The topic is then its own ledger. A new owner ([`KafkaTopic::claim`]) reads the last
//! [`resume_scan`](weir_core::dataset::SinkSpec::Kafka) messages of each partition: an
//! input whose last row is there landed whole (its identity gives the stream's
//! position); a lane whose last message is not its input's last row was cut short by a
//! crash. The stream resumes at that input's first position, and the replayed records'
//! first rows — the ones already in the topic — are skipped, so the topic ends up with
//! each record once. A produce that fails within a lease reads its partition back the
//! same way before the retry.
//!
//! What the broker cannot do without transactions is refuse a stale owner's late
//! produce: its messages carry the older fence in `weir-fence`, so a reader can tell.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};
use weir_bus::KafkaConfig;
use weir_core::dataset::{SinkSpec, DEFAULT_KAFKA_RESUME_SCAN};
use weir_core::files::CredentialsRef;
use weir_core::stream::KafkaProtocol;

use super::WriteFence;
use crate::DataError;

/// The input (flush) a message belongs to.
pub const HEADER_INPUT: &str = "weir-input";
/// The message's row within its input, from 0.
pub const HEADER_ROW: &str = "weir-row";
/// How many rows its input has.
pub const HEADER_ROWS: &str = "weir-rows";
/// The task that wrote it.
pub const HEADER_TASK: &str = "weir-task";
/// The fence token of the lease that wrote it.
pub const HEADER_FENCE: &str = "weir-fence";

/// Broker calls that wait (metadata, watermarks) give up after this.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading a partition's tail back gives up after this.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// A message not acknowledged within this fails its flush (librdkafka's default is 5 min).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Reading a partition's tail back ends once nothing came for this long.
const SCAN_QUIET: Duration = Duration::from_secs(1);

/// Kafka client settings — brokers, TLS, SASL with credentials read from their reference
/// — as the event bus's, which turn them into librdkafka's. `field` names the setting in
/// errors (`source`, `kafka sink`).
pub fn client_settings(
    brokers: &str,
    protocol: KafkaProtocol,
    sasl_mechanism: Option<&str>,
    credentials: Option<&CredentialsRef>,
    field: &str,
) -> Result<KafkaConfig, DataError> {
    let mut cfg = KafkaConfig::plaintext(brokers);
    cfg.security_protocol = match protocol {
        KafkaProtocol::Plaintext => "plaintext",
        KafkaProtocol::Ssl => "ssl",
        KafkaProtocol::SaslPlaintext => "sasl_plaintext",
        KafkaProtocol::SaslSsl => "sasl_ssl",
    }
    .into();
    if matches!(protocol, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl) {
        let c = credentials.ok_or_else(|| DataError::Config(format!("{field}.credentials: SASL needs them")))?;
        let mut s = weir_storage::require_secrets(c, &["username", "password"], &["username", "password"])
            .map_err(|e| DataError::Config(format!("{field}.credentials: {e}")))?;
        cfg.sasl_mechanism = Some(sasl_mechanism.unwrap_or("plain").to_ascii_uppercase());
        cfg.sasl_username = s.remove("username");
        cfg.sasl_password = s.remove("password");
    }
    Ok(cfg)
}

/// The lane an input identity belongs to and the lane's first position in it: the
/// identity without its trailing range (`kafka://orders/p3_100-199` → `kafka://orders/p3`
/// and `100`; `kinesis://s/shard-1/49…-49…` → `kinesis://s/shard-1`). An identity with
/// no range is its own lane.
pub fn lane_of(identity: &str) -> (&str, Option<&str>) {
    let cut = identity.rfind(['_', '/']);
    if let Some(at) = cut {
        let range = &identity[at + 1..];
        if let Some((a, b)) = range.split_once('-') {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            if digits(a) && digits(b) {
                return (&identity[..at], Some(a));
            }
        }
    }
    (identity, None)
}

/// The partition of `lane` in a topic of `partitions`: stable across runs and owners.
pub fn partition_of(lane: &str, partitions: i32) -> i32 {
    let h = Sha256::digest(lane.as_bytes());
    let n = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (n % partitions.max(1) as u64) as i32
}

/// What the topic holds, as read back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ledger {
    /// Inputs whose last row is in the topic.
    pub whole: HashSet<String>,
    /// Per lane, the input a crash cut short: its first position and how many of its
    /// first rows are in the topic.
    pub cut: HashMap<String, Cut>,
}

/// An input only partly in the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub identity: String,
    /// The lane's first position in it (see [`lane_of`]).
    pub first: Option<String>,
    /// Rows 0..present are in the topic.
    pub present: u64,
}

/// One message's headers as read back: input, row, rows.
fn read_headers(m: &impl Message) -> Option<(String, u64, u64)> {
    let h = m.headers()?;
    let (mut input, mut row, mut rows) = (None, None, None);
    for i in 0..h.count() {
        let Some(x) = h.try_get(i) else { continue };
        let text = x.value.and_then(|v| std::str::from_utf8(v).ok());
        match x.key {
            HEADER_INPUT => input = text.map(str::to_string),
            HEADER_ROW => row = text.and_then(|t| t.parse().ok()),
            HEADER_ROWS => rows = text.and_then(|t| t.parse().ok()),
            _ => {}
        }
    }
    Some((input?, row?, rows?))
}

impl Ledger {
    /// Folds messages read back, in each partition's order.
    fn fold(messages: impl IntoIterator<Item = (String, u64, u64)>) -> Ledger {
        let mut whole = HashSet::new();
        let mut last: HashMap<String, (String, u64, u64)> = HashMap::new();
        for (input, row, rows) in messages {
            if row + 1 == rows {
                whole.insert(input.clone());
            }
            last.insert(lane_of(&input).0.to_string(), (input, row, rows));
        }
        let cut = last
            .into_iter()
            .filter(|(_, (_, row, rows))| row + 1 < *rows)
            .map(|(lane, (input, row, _))| {
                let first = lane_of(&input).1.map(str::to_string);
                (lane, Cut { identity: input, first, present: row + 1 })
            })
            .collect();
        Ledger { whole, cut }
    }
}

/// A Kafka topic sink, opened: the producer made and the topic's partitions read.
pub struct KafkaTopic {
    topic: String,
    key: Option<String>,
    settings: KafkaConfig,
    producer: FutureProducer,
    partitions: i32,
    resume_scan: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether the topic was read back since the sink opened.
    read: bool,
    /// Inputs found whole when the topic was read back: a retry of one produces nothing.
    whole: HashSet<String>,
    /// Rows still to skip per lane: the part of a cut input already in the topic.
    skip: HashMap<String, Cut>,
}

fn broker(topic: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Sink(format!("kafka topic {topic}: {e}"))
}

impl KafkaTopic {
    /// Opens the sink `spec` (a [`SinkSpec::Kafka`]): a topic that does not exist fails
    /// here, naming it.
    pub async fn open(spec: &SinkSpec) -> Result<KafkaTopic, DataError> {
        let SinkSpec::Kafka { brokers, topic, key, protocol, sasl_mechanism, credentials, resume_scan } = spec else {
            return Err(DataError::Config("not a kafka sink".into()));
        };
        let mut settings =
            client_settings(brokers, *protocol, sasl_mechanism.as_deref(), credentials.as_ref(), "kafka sink")?;
        settings.client_id = "weir-kafka-sink".into();
        let mut cfg = settings.client().map_err(|e| DataError::Config(format!("kafka sink: {e}")))?;
        // Idempotent: a retried batch never lands twice and a partition keeps the order.
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // A broker that does not acknowledge fails the flush (retried) within this.
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
        let producer: FutureProducer = cfg.create().map_err(|e| broker(topic, e))?;
        let (p, t) = (producer.clone(), topic.clone());
        let partitions = tokio::task::spawn_blocking(move || {
            let md = p.client().fetch_metadata(Some(&t), BROKER_TIMEOUT).map_err(|e| broker(&t, e))?;
            match md.topics().first() {
                Some(m) if m.error().is_none() && !m.partitions().is_empty() => Ok(m.partitions().len() as i32),
                _ => Err(DataError::Config(format!(
                    "kafka sink: topic {t} does not exist on the brokers (Weir does not create it)"
                ))),
            }
        })
        .await
        .map_err(|e| DataError::Sink(format!("kafka sink: {e}")))??;
        Ok(KafkaTopic {
            topic: topic.clone(),
            key: key.clone(),
            settings,
            producer,
            partitions,
            resume_scan: resume_scan.unwrap_or(DEFAULT_KAFKA_RESUME_SCAN),
            state: Mutex::new(State::default()),
        })
    }

    /// The sink in messages.
    pub fn name(&self) -> String {
        format!("kafka topic {}", self.topic)
    }

    /// The topic as a dataset: `kafka://<brokers>/<topic>`.
    pub fn uri(&self) -> String {
        format!("kafka://{}/{}", self.settings.brokers, self.topic)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new owner reads where the stream stands from the topic (see the module docs).
    pub async fn claim(&self) -> Result<(), DataError> {
        let ledger = self.scan((0..self.partitions).collect()).await?;
        let mut st = self.state();
        st.read = true;
        st.skip = ledger.cut;
        st.whole = ledger.whole;
        Ok(())
    }

    /// The inputs whole in the topic, by identity, as last read.
    pub async fn input_identities(&self) -> Result<Vec<String>, DataError> {
        if !self.state().read {
            self.claim().await?;
        }
        Ok(self.state().whole.iter().cloned().collect())
    }

    /// Reads the last `resume_scan` messages of `partitions` back.
    async fn scan(&self, partitions: Vec<i32>) -> Result<Ledger, DataError> {
        let mut cfg = self.settings.client().map_err(|e| DataError::Config(format!("kafka sink: {e}")))?;
        cfg.set("group.id", "weir-kafka-sink-scan")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let (topic, depth) = (self.topic.clone(), self.resume_scan);
        tokio::task::spawn_blocking(move || -> Result<Ledger, DataError> {
            let consumer: BaseConsumer = cfg.create().map_err(|e| broker(&topic, e))?;
            let mut tpl = TopicPartitionList::new();
            // Where each partition's read ends (its high watermark now).
            let mut ends = BTreeMap::new();
            for p in partitions {
                let (low, high) = consumer.fetch_watermarks(&topic, p, BROKER_TIMEOUT).map_err(|e| broker(&topic, e))?;
                let start = low.max(high - depth.min(i64::MAX as u64) as i64);
                if start < high {
                    tpl.add_partition_offset(&topic, p, Offset::Offset(start)).map_err(|e| broker(&topic, e))?;
                    ends.insert(p, high);
                }
            }
            let mut read: BTreeMap<i32, Vec<(String, u64, u64)>> = BTreeMap::new();
            if ends.is_empty() {
                return Ok(Ledger::default());
            }
            consumer.assign(&tpl).map_err(|e| broker(&topic, e))?;
            let deadline = Instant::now() + SCAN_TIMEOUT;
            let mut last = Instant::now();
            // Past each partition's watermark, until nothing more comes: a broker may
            // answer a watermark short of its last batch (tansu does).
            while !ends.is_empty() || last.elapsed() < SCAN_QUIET {
                if Instant::now() > deadline {
                    return Err(DataError::Sink(format!(
                        "kafka topic {topic}: reading partitions {:?} back to find where the stream stands took over {}s",
                        ends.keys().collect::<Vec<_>>(),
                        SCAN_TIMEOUT.as_secs()
                    )));
                }
                let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
                let m = m.map_err(|e| broker(&topic, e))?;
                last = Instant::now();
                let p = m.partition();
                if let Some(h) = read_headers(&m) {
                    read.entry(p).or_default().push(h);
                }
                if ends.get(&p).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&p);
                }
            }
            Ok(Ledger::fold(read.into_values().flatten()))
        })
        .await
        .map_err(|e| DataError::Sink(format!("kafka sink: {e}")))?
    }

    /// Produces the rows of `staged` (the pipeline's Parquet output; `None`: no valid
    /// rows) as the input `identity`, skipping the rows a cut-short earlier attempt
    /// already put in the topic. Returns the rows the topic holds of this input.
    pub async fn land(&self, staged: Option<&Path>, identity: &str, fence: &WriteFence) -> Result<u64, DataError> {
        let Some(staged) = staged else { return Ok(0) };
        let (lane, first) = lane_of(identity);
        let partition = partition_of(lane, self.partitions);
        let (path, key) = (staged.to_path_buf(), self.key.clone());
        let rows = tokio::task::spawn_blocking(move || json_rows(&path, key.as_deref()))
            .await
            .map_err(|e| DataError::Sink(format!("kafka sink: {e}")))??;
        let total = rows.len() as u64;
        let skip = {
            let mut st = self.state();
            if st.whole.contains(identity) {
                return Ok(total);
            }
            match st.skip.remove(lane) {
                // The cut input's first rows — the replay starts where it started — or
                // what is left of them after the lane's earlier inputs took their share
                // (`first: None`), which the lane's next input takes on.
                Some(c) if c.identity == identity || c.first.is_none() || c.first.as_deref() == first => {
                    if c.present > total {
                        st.skip.insert(lane.to_string(), Cut { present: c.present - total, first: None, ..c });
                    }
                    c.present.min(total)
                }
                Some(c) => {
                    tracing::warn!(topic = %self.topic, cut = %c.identity, input = %identity,
                        "the input cut short is not where this lane resumed; producing all rows");
                    0
                }
                None => 0,
            }
        };
        let (task, fence_s, total_s) = (fence.task.clone(), fence.fence.to_string(), total.to_string());
        let mut pending = Vec::with_capacity(rows.len());
        for (row, (key, json)) in rows.iter().enumerate().skip(skip as usize) {
            let row_s = row.to_string();
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header { key: HEADER_INPUT, value: Some(identity) })
                .insert(Header { key: HEADER_ROW, value: Some(&row_s) })
                .insert(Header { key: HEADER_ROWS, value: Some(&total_s) })
                .insert(Header { key: HEADER_TASK, value: Some(&task) })
                .insert(Header { key: HEADER_FENCE, value: Some(&fence_s) });
            let mut record = FutureRecord::to(&self.topic).partition(partition).payload(json).headers(headers);
            if let Some(k) = key {
                record = record.key(k);
            }
            // A full producer queue waits for the oldest deliveries, then tries again.
            loop {
                match self.producer.send_result(record) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((e, r)) => {
                        record = r;
                        if pending.is_empty() {
                            return self.failed(partition, e.to_string(), pending).await;
                        }
                        let mut waiting = std::mem::take(&mut pending).into_iter();
                        while let Some(f) = waiting.next() {
                            if let Err(e) = delivered(f).await {
                                return self.failed(partition, e, waiting.collect()).await;
                            }
                        }
                    }
                }
            }
        }
        let mut pending = pending.into_iter();
        while let Some(f) = pending.next() {
            if let Err(e) = delivered(f).await {
                return self.failed(partition, e, pending.collect()).await;
            }
        }
        Ok(total)
    }

    /// A produce failed: the retry must know what reached the partition, so it is read
    /// back once every message still in flight has its outcome.
    async fn failed(
        &self,
        partition: i32,
        e: String,
        in_flight: Vec<rdkafka::producer::DeliveryFuture>,
    ) -> Result<u64, DataError> {
        for f in in_flight {
            let _ = f.await;
        }
        match self.scan(vec![partition]).await {
            Ok(l) => {
                let mut st = self.state();
                st.whole.extend(l.whole);
                for (lane, c) in l.cut {
                    if partition_of(&lane, self.partitions) == partition {
                        st.skip.insert(lane, c);
                    }
                }
            }
            Err(scan) => tracing::warn!(error = %scan, "could not read the partition back after a failed produce"),
        }
        Err(DataError::Sink(format!("kafka topic {} partition {partition}: {e}", self.topic)))
    }
}

async fn delivered(f: rdkafka::producer::DeliveryFuture) -> Result<(), String> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("the producer went away before the delivery was confirmed".into()),
    }
}

/// A message to be: its key and its JSON body.
type Row = (Option<String>, Vec<u8>);

/// Each row of a staged Parquet file as a JSON object, with its key column's value.
fn json_rows(path: &Path, key: Option<&str>) -> Result<Vec<Row>, DataError> {
    use arrow_cast::display::{ArrayFormatter, FormatOptions};
    let file = std::fs::File::open(path).map_err(|e| DataError::Sink(format!("reading {}: {e}", path.display())))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| DataError::Sink(format!("reading {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| DataError::Sink(format!("reading {}: {e}", path.display())))?;
        let keys = match key {
            Some(k) => {
                let col = batch.column_by_name(k).ok_or_else(|| {
                    DataError::Config(format!("kafka sink key {k:?} is not one of the records' columns"))
                })?;
                let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())
                    .map_err(|e| DataError::Sink(format!("kafka sink key {k:?}: {e}")))?;
                (0..batch.num_rows()).map(|i| col.is_valid(i).then(|| f.value(i).to_string())).collect()
            }
            None => vec![None; batch.num_rows()],
        };
        let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
        w.write(&batch).map_err(|e| DataError::Sink(format!("kafka sink: writing JSON: {e}")))?;
        w.finish().map_err(|e| DataError::Sink(format!("kafka sink: writing JSON: {e}")))?;
        let lines = w.into_inner();
        let json = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        out.extend(keys.into_iter().zip(json.map(<[u8]>::to_vec)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_is_its_identity_without_the_range() {
        assert_eq!(lane_of("kafka://orders/p3_100-199"), ("kafka://orders/p3", Some("100")));
        assert_eq!(lane_of("kinesis://s/shardId-0001/4960-4961"), ("kinesis://s/shardId-0001", Some("4960")));
        assert_eq!(lane_of("nats://s/lease/p0_1-5"), ("nats://s/lease/p0", Some("1")));
        assert_eq!(lane_of("/in/trades_2026.csv"), ("/in/trades_2026.csv", None));
        assert_eq!(lane_of("x_1-a"), ("x_1-a", None));
        let p = partition_of("kafka://orders/p3", 6);
        assert!((0..6).contains(&p));
        assert_eq!(p, partition_of("kafka://orders/p3", 6), "stable");
    }

    #[test]
    fn the_ledger_tells_whole_inputs_from_one_a_crash_cut_short() {
        let m = |i: &str, row, rows| (i.to_string(), row, rows);
        let l = Ledger::fold(vec![
            m("kafka://o/p0_0-2", 0, 3),
            m("kafka://o/p0_0-2", 1, 3),
            m("kafka://o/p0_0-2", 2, 3),
            m("kafka://o/p1_0-1", 0, 2),
            m("kafka://o/p1_0-1", 1, 2),
            m("kafka://o/p0_3-9", 0, 5),
            m("kafka://o/p0_3-9", 1, 5),
        ]);
        assert_eq!(l.whole, HashSet::from(["kafka://o/p0_0-2".to_string(), "kafka://o/p1_0-1".to_string()]));
        assert_eq!(
            l.cut.get("kafka://o/p0"),
            Some(&Cut { identity: "kafka://o/p0_3-9".into(), first: Some("3".into()), present: 2 })
        );
        assert!(!l.cut.contains_key("kafka://o/p1"), "a lane whose last input is whole is not cut");
    }
}
