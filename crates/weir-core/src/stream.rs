//! What a stream step's config says: the source — Kafka,
//! RabbitMQ, NATS JetStream, Kinesis or Pub/Sub — how its messages read, where the
//! records land, when buffered records are flushed, how long the stream runs and where
//! an undecodable message goes. Pure data and its validation, so a bad description is
//! refused at submission naming the field; the consuming lives in `weir-stream-manager`.
//!
//! The catalogue's `consume` kind takes it ([`StreamStep::parse_served`]): the sources the
//! stream manager serves ([`SERVED`]); any other is refused at submission, naming it.

use serde::{Deserialize, Serialize};

use crate::dataset::{ColumnSpec, Rules, SinkSpec};
use crate::files::CredentialsRef;
use crate::sandbox::Reach;

/// The sources the stream manager serves so far.
pub const SERVED: [&str; 5] = ["kafka", "nats", "rabbitmq", "pubsub", "kinesis"];

/// Default most message ids a source without replayable positions remembers, to drop
/// redeliveries of records already landed.
pub const DEFAULT_DEDUPE_WINDOW: u64 = 100_000;

/// Default flush interval.
pub const DEFAULT_FLUSH_INTERVAL: &str = "10s";
/// Default most records buffered per stream before a flush.
pub const DEFAULT_FLUSH_RECORDS: u64 = 100_000;
/// Default most bytes buffered per stream before a flush.
pub const DEFAULT_FLUSH_BYTES: u64 = 64 << 20;

/// A stream step's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamStep {
    pub source: SourceSpec,
    /// How a message reads (default: one JSON record per message).
    #[serde(default)]
    pub format: MessageFormat,
    /// The declared schema; absent = inferred from the first records, as the converter does.
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
    /// Quality rules, per record; a record that breaks one goes to the quarantine.
    #[serde(default)]
    pub rules: Option<Rules>,
    /// Where records land: Parquet datasets and PostgreSQL tables.
    pub sinks: Vec<SinkSpec>,
    #[serde(default)]
    pub flush: FlushSpec,
    /// Where the stream starts (default: where the sinks' positions say, else the
    /// source's earliest retained message).
    #[serde(default)]
    pub from: Option<Bound>,
    /// Where a bounded stream (a backfill) ends; absent = until cancelled.
    #[serde(default)]
    pub until: Option<Bound>,
    /// An undecodable message: where it goes with its coordinates and the reason.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterSpec>,
    /// What a full buffer does: `block` (default: backpressure, nothing dropped) or
    /// `drop_oldest` (for sources where loss is acceptable; every drop counted).
    #[serde(default)]
    pub overflow: Overflow,
    /// Sources without replayable positions (RabbitMQ, Pub/Sub): how many landed message
    /// ids are remembered to drop redeliveries (default 100,000).
    #[serde(default)]
    pub dedupe_window: Option<u64>,
}

/// A stream source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSpec {
    Kafka {
        /// `host:port[,host:port…]`.
        brokers: String,
        /// Topics, or a `pattern` (a regular expression), one of them.
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        pattern: Option<String>,
        /// The consumer group (default: the job's name).
        #[serde(default)]
        group: Option<String>,
        /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
        #[serde(default)]
        protocol: KafkaProtocol,
        /// SASL: `plain`, `scram-sha-256` or `scram-sha-512`.
        #[serde(default)]
        sasl_mechanism: Option<String>,
        /// SASL `<PREFIX>_USERNAME`/`_PASSWORD`, by reference.
        #[serde(default)]
        credentials: Option<CredentialsRef>,
        /// Only these partitions of the topics: one stream split over several steps,
        /// each a leased task any replica may run (default: every partition).
        #[serde(default)]
        partitions: Option<Vec<i32>>,
    },
    Rabbitmq {
        /// An environment variable holding the `amqp://` URL (it carries the password).
        url_env: String,
        queue: String,
        /// Unacknowledged messages the broker may send (default: from the budget).
        #[serde(default)]
        prefetch: Option<u16>,
    },
    Nats {
        /// `nats://host:port[,…]`.
        servers: String,
        stream: String,
        /// A durable pull consumer's name.
        consumer: String,
        #[serde(default)]
        subject: Option<String>,
        #[serde(default)]
        credentials: Option<CredentialsRef>,
    },
    Kinesis {
        stream: String,
        #[serde(default)]
        region: Option<String>,
        /// A custom endpoint (an emulator).
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        credentials: Option<CredentialsRef>,
    },
    Pubsub {
        project: String,
        subscription: String,
        /// A custom endpoint: the emulator (`http://127.0.0.1:8085`); default Google's.
        #[serde(default)]
        endpoint: Option<String>,
        /// An OAuth access token `<PREFIX>_TOKEN`, by reference.
        #[serde(default)]
        credentials: Option<CredentialsRef>,
    },
}

impl SourceSpec {
    /// The source type's name.
    pub fn name(&self) -> &'static str {
        match self {
            SourceSpec::Kafka { .. } => "kafka",
            SourceSpec::Rabbitmq { .. } => "rabbitmq",
            SourceSpec::Nats { .. } => "nats",
            SourceSpec::Kinesis { .. } => "kinesis",
            SourceSpec::Pubsub { .. } => "pubsub",
        }
    }

    /// Whether its positions replay (a crash resumes from the sink's positions) or it
    /// de-duplicates by message id within a window instead.
    pub fn replayable(&self) -> bool {
        matches!(self, SourceSpec::Kafka { .. } | SourceSpec::Nats { .. } | SourceSpec::Kinesis { .. })
    }
}

/// How Kafka connections are secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

/// Checks how a Kafka client (a source's or a topic sink's) connects: SASL needs a
/// credentials reference and a known mechanism. `field` prefixes the names in errors.
pub(crate) fn check_kafka_access(
    field: &str,
    protocol: KafkaProtocol,
    sasl_mechanism: Option<&str>,
    credentials: Option<&CredentialsRef>,
) -> Result<(), String> {
    let sasl = matches!(protocol, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl);
    if sasl && credentials.is_none() {
        return Err(format!(
            "{field}.credentials: SASL needs a credentials reference (<PREFIX>_USERNAME, <PREFIX>_PASSWORD)"
        ));
    }
    if let Some(m) = sasl_mechanism {
        if !sasl {
            return Err(format!("{field}.sasl_mechanism applies to sasl_plaintext and sasl_ssl"));
        }
        if !["plain", "scram-sha-256", "scram-sha-512"].contains(&m.to_ascii_lowercase().as_str()) {
            return Err(format!("{field}.sasl_mechanism {m:?}: known are plain, scram-sha-256, scram-sha-512"));
        }
    }
    match credentials {
        Some(c) => crate::api::check_credentials(&format!("{field}.credentials"), c),
        None => Ok(()),
    }
}

/// How one message reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum MessageFormat {
    /// A JSON object (or NDJSON lines, each a record).
    #[default]
    Json,
    /// CSV lines with these column names (messages carry no header).
    Csv { columns: Vec<String> },
    /// One Avro datum a message, written with the schema in a file (the `.avsc`, a
    /// record); `confluent`: each message starts with the Confluent wire format's five
    /// bytes (a zero, then the registry's schema id), skipped.
    Avro {
        schema_file: String,
        #[serde(default)]
        confluent: bool,
    },
}

/// When buffered records are written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlushSpec {
    /// At least this often (default 10s).
    pub interval: Option<String>,
    /// At this many records (default 100,000).
    pub max_records: Option<u64>,
    /// At this many bytes (default 64 MiB).
    pub max_bytes: Option<u64>,
}

impl FlushSpec {
    /// The most records buffered per stream before a flush.
    pub fn records(&self) -> u64 {
        self.max_records.unwrap_or(DEFAULT_FLUSH_RECORDS)
    }

    /// The most bytes buffered per stream before a flush.
    pub fn bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(DEFAULT_FLUSH_BYTES)
    }

    /// The interval (checked at submission).
    pub fn interval(&self) -> std::time::Duration {
        crate::duration::parse(self.interval.as_deref().unwrap_or(DEFAULT_FLUSH_INTERVAL))
            .unwrap_or(std::time::Duration::from_secs(10))
    }
}

/// Where a stream starts or ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Bound {
    /// What the source holds when the step starts (`until: now`, a backfill).
    Now,
    /// The earliest retained message (`from` only).
    Earliest,
    /// An RFC 3339 time.
    Time(String),
    /// A position per partition or shard (`"orders/0": 1200`).
    Offsets(std::collections::BTreeMap<String, u64>),
}

/// Where undecodable messages go: a Parquet dataset of (source coordinates, reason,
/// message), or a Kafka topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DeadLetterSpec {
    Parquet { path: String },
    Kafka { topic: String },
}

/// What a full buffer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    #[default]
    Block,
    DropOldest,
}

impl Bound {
    /// A time bound in milliseconds since the epoch (checked at submission).
    pub fn time_ms(&self) -> Option<i64> {
        match self {
            Bound::Time(t) => t.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond()),
            _ => None,
        }
    }

    /// An offsets bound's position for a lane (`"orders/0"`).
    pub fn offset(&self, lane: &str) -> Option<i64> {
        match self {
            Bound::Offsets(m) => m.get(lane).map(|o| *o as i64),
            _ => None,
        }
    }
}

impl StreamStep {
    /// Reads and checks a stream step's config; the error names the field.
    pub fn parse(config: Option<&serde_json::Value>) -> Result<StreamStep, String> {
        let v = config.ok_or("stream config: give source and sinks")?;
        let step: StreamStep = serde_json::from_value(v.clone()).map_err(|e| format!("stream config: {e}"))?;
        step.check().map_err(|e| format!("stream config: {e}"))?;
        Ok(step)
    }

    /// [`parse`](Self::parse), refusing the sources the stream manager does not serve yet.
    pub fn parse_served(config: Option<&serde_json::Value>) -> Result<StreamStep, String> {
        let step = Self::parse(config)?;
        if !SERVED.contains(&step.source.name()) {
            return Err(format!(
                "stream config: source type {} is not served yet (served: {})",
                step.source.name(),
                SERVED.join(", ")
            ));
        }
        if !step.source.replayable() {
            if step.from.is_some() {
                return Err(format!(
                    "stream config: from: {} has no positions to start from; it delivers what its queue holds",
                    step.source.name()
                ));
            }
            if let Some(Bound::Offsets(_)) = step.until {
                return Err(format!(
                    "stream config: until.offsets: {} has no positions; use now or a time",
                    step.source.name()
                ));
            }
        }
        if let SourceSpec::Kinesis { .. } = step.source {
            for (field, b) in [("from", &step.from), ("until", &step.until)] {
                if let Some(Bound::Offsets(_)) = b {
                    return Err(format!(
                        "stream config: {field}.offsets: kinesis positions are sequence numbers; use earliest, now or a time"
                    ));
                }
            }
        }
        if let (Some(DeadLetterSpec::Kafka { .. }), false) =
            (&step.dead_letter, matches!(step.source, SourceSpec::Kafka { .. }))
        {
            return Err("stream config: dead_letter: a kafka topic needs a kafka source (its brokers)".into());
        }
        Ok(step)
    }

    /// What the step reaches: its source (`source.brokers` as `kafka://host:port`,
    /// `source.servers` as `nats://host:port`, a Kinesis `source.stream` as
    /// `kinesis://<stream>`, a Pub/Sub `source.project` as `pubsub://<project>`, a custom
    /// `source.endpoint` as its URL's scheme and host, `source.credentials.file`), an Avro
    /// `format.schema_file`, each of `sinks` ([`SinkSpec::reach`]) and a Parquet
    /// `dead_letter.path` (a Kafka dead letter goes to the source's brokers). A RabbitMQ
    /// source reaches the variable its `url_env` names (the URL is the operator's).
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        match &self.source {
            SourceSpec::Kafka { brokers, credentials, .. } => {
                r.servers("source.brokers", "kafka", brokers);
                crate::sandbox::credentials_ref(&mut r, "source.credentials", credentials.as_ref());
            }
            SourceSpec::Rabbitmq { url_env, .. } => r.env("source.url_env", url_env, false),
            SourceSpec::Nats { servers, credentials, .. } => {
                r.servers("source.servers", "nats", servers);
                crate::sandbox::credentials_ref(&mut r, "source.credentials", credentials.as_ref());
            }
            SourceSpec::Kinesis { stream, endpoint, credentials, .. } => {
                r.push(crate::sandbox::Touch::Endpoint {
                    field: "source.stream".into(),
                    scheme: "kinesis".into(),
                    host: stream.to_ascii_lowercase(),
                    port: None,
                });
                if let Some(e) = endpoint {
                    r.url("source.endpoint", e);
                }
                crate::sandbox::credentials_ref(&mut r, "source.credentials", credentials.as_ref());
            }
            SourceSpec::Pubsub { project, endpoint, credentials, .. } => {
                r.push(crate::sandbox::Touch::Endpoint {
                    field: "source.project".into(),
                    scheme: "pubsub".into(),
                    host: project.to_ascii_lowercase(),
                    port: None,
                });
                if let Some(e) = endpoint {
                    r.url("source.endpoint", e);
                }
                crate::sandbox::credentials_ref(&mut r, "source.credentials", credentials.as_ref());
            }
        }
        if let MessageFormat::Avro { schema_file, .. } = &self.format {
            r.path("format.schema_file", schema_file.clone());
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            r.merge(&format!("sinks[{i}]"), sink.reach());
        }
        if let Some(DeadLetterSpec::Parquet { path }) = &self.dead_letter {
            r.path("dead_letter.path", path.clone());
        }
        r
    }

    fn check(&self) -> Result<(), String> {
        let name = |field: &str, v: &str| -> Result<(), String> {
            if v.trim().is_empty() || v.contains('\0') {
                return Err(format!("{field} must not be empty"));
            }
            Ok(())
        };
        let creds = |field: &str, c: &Option<CredentialsRef>| match c {
            Some(c) => crate::api::check_credentials(field, c),
            None => Ok(()),
        };
        match &self.source {
            SourceSpec::Kafka {
                brokers,
                topics,
                pattern,
                group,
                protocol,
                sasl_mechanism,
                credentials,
                partitions,
            } => {
                if let Some(ps) = partitions {
                    if ps.is_empty() {
                        return Err("source.partitions: name at least one partition, or leave it out for all".into());
                    }
                    if let Some(p) = ps.iter().find(|p| **p < 0) {
                        return Err(format!("source.partitions: {p} is not a partition number"));
                    }
                }
                name("source.brokers", brokers)?;
                match (topics.is_empty(), pattern) {
                    (true, None) => return Err("source: give topics or a pattern".into()),
                    (false, Some(_)) => return Err("source: give topics or a pattern, not both".into()),
                    (_, Some(p)) => {
                        regex::Regex::new(p)
                            .map_err(|e| format!("source.pattern {p:?} is not a regular expression: {e}"))?;
                    }
                    (false, None) => {
                        for t in topics {
                            name("source.topics entry", t)?;
                        }
                    }
                }
                if let Some(g) = group {
                    name("source.group", g)?;
                }
                check_kafka_access("source", *protocol, sasl_mechanism.as_deref(), credentials.as_ref())?;
            }
            SourceSpec::Rabbitmq { url_env, queue, prefetch } => {
                if !crate::validate::is_env_name(url_env) {
                    return Err(format!(
                        "source.url_env must name an environment variable, got {url_env:?} ({})",
                        crate::validate::ENV_NAME_RULE
                    ));
                }
                name("source.queue", queue)?;
                if *prefetch == Some(0) {
                    return Err("source.prefetch must be at least 1".into());
                }
            }
            SourceSpec::Nats { servers, stream, consumer, credentials, .. } => {
                name("source.servers", servers)?;
                name("source.stream", stream)?;
                name("source.consumer", consumer)?;
                creds("source.credentials", credentials)?;
            }
            SourceSpec::Kinesis { stream, credentials, .. } => {
                name("source.stream", stream)?;
                creds("source.credentials", credentials)?;
            }
            SourceSpec::Pubsub { project, subscription, credentials, endpoint } => {
                name("source.project", project)?;
                name("source.subscription", subscription)?;
                if let Some(e) = endpoint {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        return Err(format!(
                            "source.endpoint {e:?}: give http://host:port (the emulator) or https://…"
                        ));
                    }
                }
                creds("source.credentials", credentials)?;
            }
        }
        match &self.format {
            MessageFormat::Csv { columns } if columns.is_empty() => {
                return Err("format.columns: name the CSV columns (messages carry no header)".into())
            }
            MessageFormat::Avro { schema_file, .. } => name("format.schema_file", schema_file)?,
            _ => {}
        }
        if self.sinks.is_empty() {
            return Err("sinks: give at least one (where the records land)".into());
        }
        // The sinks' own rules are the batch kinds': one description, one check.
        let as_batch = crate::dataset::DataStep {
            sinks: self.sinks.clone(),
            schema: self.schema.clone(),
            rules: self.rules.clone(),
            ..Default::default()
        };
        as_batch.check("stream").map_err(|e| e.trim_start_matches("stream config: ").to_string())?;
        if self.sinks.iter().any(|s| matches!(s, SinkSpec::Kafka { .. })) {
            if self.sinks.len() > 1 {
                return Err("sinks: a kafka topic must be the step's only sink (it reads where the stream stands from the topic itself); land the stream elsewhere with a second step".into());
            }
            if !self.source.replayable() {
                return Err(format!(
                    "sinks: a kafka topic completes a flush a crash cut short by replaying it, which {} cannot (it has no positions); land it in a dataset or a table",
                    self.source.name()
                ));
            }
        }
        let interval = self.flush.interval.as_deref().unwrap_or(DEFAULT_FLUSH_INTERVAL);
        let d = crate::duration::parse(interval).map_err(|e| format!("flush.interval: {e}"))?;
        if d.is_zero() {
            return Err("flush.interval must be more than 0s".into());
        }
        for (what, n) in [("flush.max_records", self.flush.max_records), ("flush.max_bytes", self.flush.max_bytes)] {
            if n == Some(0) {
                return Err(format!("{what} must be at least 1"));
            }
        }
        for (field, b) in [("from", &self.from), ("until", &self.until)] {
            match b {
                Some(Bound::Time(t)) => {
                    t.parse::<jiff::Timestamp>()
                        .map_err(|e| format!("{field}.time {t:?} is not an RFC 3339 time: {e}"))?;
                }
                Some(Bound::Now) if field == "from" => {
                    return Err("from: now would skip what the source holds; use earliest, a time or offsets".into())
                }
                Some(Bound::Earliest) if field == "until" => return Err("until: earliest ends before it starts".into()),
                Some(Bound::Offsets(m)) => {
                    if let Some(k) =
                        m.keys().find(|k| k.rsplit_once('/').is_none_or(|(_, i)| i.parse::<i32>().is_err()))
                    {
                        return Err(format!(
                            "{field}.offsets: {k:?} names no lane; write <topic or stream>/<partition> (\"orders/0\")"
                        ));
                    }
                }
                _ => {}
            }
        }
        match (&self.from, &self.until) {
            (Some(Bound::Time(a)), Some(Bound::Time(b))) => {
                let (a, b) = (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>());
                if let (Ok(a), Ok(b)) = (a, b) {
                    if b <= a {
                        return Err(format!("until {b} lies at or before from {a}: the stream would be empty"));
                    }
                }
            }
            (Some(Bound::Offsets(a)), Some(Bound::Offsets(b))) => {
                if let Some((p, end)) = b.iter().find(|(p, end)| a.get(*p).is_some_and(|start| *end <= start)) {
                    return Err(format!("until.offsets.{p} = {end} lies at or before from.offsets.{p} = {}", a[p]));
                }
            }
            _ => {}
        }
        match &self.dead_letter {
            Some(DeadLetterSpec::Parquet { path }) => name("dead_letter", path)?,
            Some(DeadLetterSpec::Kafka { topic }) if !crate::dataset::is_topic_name(topic) => {
                return Err(format!(
                    "dead_letter.topic {topic:?} is not a topic name (1 to 249 of letters, digits, '.', '_', '-')"
                ))
            }
            _ => {}
        }
        if self.dedupe_window == Some(0) {
            return Err("dedupe_window must be at least 1".into());
        }
        if self.overflow == Overflow::DropOldest && self.source.replayable() {
            return Err(format!(
                "overflow: drop_oldest is for sources where loss is acceptable; {} replays, so a full buffer pauses it instead",
                self.source.name()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kafka(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"source": {"type": "kafka", "brokers": "127.0.0.1:9092", "topics": ["orders"]},
                           "sinks": [{"type": "parquet", "path": "/lake/orders"}]});
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    #[test]
    fn a_good_description_reads_with_its_defaults() {
        let s = StreamStep::parse(Some(&kafka(json!({"until": "now", "from": "earliest"})))).expect("valid");
        assert_eq!(
            (s.format.clone(), s.overflow, s.flush.interval()),
            (MessageFormat::Json, Overflow::Block, std::time::Duration::from_secs(10))
        );
        assert_eq!((s.from, s.until), (Some(Bound::Earliest), Some(Bound::Now)));
        assert!(s.source.replayable());
        let rabbit = json!({"source": {"type": "rabbitmq", "url_env": "AMQP_URL", "queue": "q"}, "overflow": "drop_oldest",
                            "format": {"type": "csv", "columns": ["id", "v"]}, "sinks": [{"type": "parquet", "path": "/l"}]});
        assert_eq!(StreamStep::parse(Some(&rabbit)).expect("valid").source.name(), "rabbitmq");
    }

    #[test]
    fn bad_descriptions_are_refused_naming_the_field() {
        let bad = |v: serde_json::Value| StreamStep::parse(Some(&v)).unwrap_err();
        let mut unknown = kafka(json!({}));
        unknown["source"]["type"] = json!("mqtt");
        assert!(bad(unknown).contains("mqtt"));
        let mut sasl = kafka(json!({}));
        sasl["source"]["protocol"] = json!("sasl_ssl");
        assert!(bad(sasl).contains("source.credentials"));
        assert!(bad(kafka(json!({"flush": {"interval": "0s"}}))).contains("flush.interval"));
        assert!(bad(kafka(json!({"flush": {"max_bytes": 0}}))).contains("flush.max_bytes"));
        assert!(bad(kafka(
            json!({"from": {"time": "2026-11-02T00:00:00Z"}, "until": {"time": "2026-11-01T00:00:00Z"}})
        ))
        .contains("at or before"));
        assert!(bad(kafka(json!({"from": {"offsets": {"orders/0": 10}}, "until": {"offsets": {"orders/0": 5}}})))
            .contains("until.offsets.orders/0"));
        assert!(bad(kafka(json!({"until": {"time": "yesterday"}}))).contains("until.time"));
        assert!(bad(kafka(json!({"overflow": "drop_oldest"}))).contains("kafka replays"));
        assert!(bad(kafka(json!({"sinks": []}))).contains("sinks"));
        assert!(bad(kafka(json!({"sinks": [{"type": "parquet", "path": ""}]}))).contains("parquet sink path"));
        let mut both = kafka(json!({}));
        both["source"]["pattern"] = json!("orders.*");
        assert!(bad(both).contains("not both"));
        let mut pattern = kafka(json!({}));
        pattern["source"]["topics"] = json!([]);
        pattern["source"]["pattern"] = json!("(");
        assert!(bad(pattern).contains("source.pattern"));
        assert!(bad(kafka(json!({"format": {"type": "csv", "columns": []}}))).contains("format.columns"));
        for partitions in [json!([]), json!([0, -1])] {
            let mut split = kafka(json!({}));
            split["source"]["partitions"] = partitions;
            assert!(bad(split).contains("source.partitions"));
        }
        assert!(bad(json!({"source": {"type": "rabbitmq", "url_env": "amqp://guest:guest@x", "queue": "q"},
                           "sinks": [{"type": "parquet", "path": "/l"}]}))
        .contains("url_env"));
    }

    #[test]
    fn a_kafka_topic_sink_is_a_replayable_streams_only_sink() {
        let topic = json!({"type": "kafka", "brokers": "127.0.0.1:9092", "topic": "orders.clean", "key": "id"});
        let ok = StreamStep::parse(Some(&kafka(json!({"sinks": [topic.clone()]})))).expect("valid");
        assert!(matches!(&ok.sinks[0], SinkSpec::Kafka { topic, .. } if topic == "orders.clean"));
        let bad = |v: serde_json::Value| StreamStep::parse(Some(&v)).unwrap_err();
        let two = kafka(json!({"sinks": [topic.clone(), {"type": "parquet", "path": "/l"}]}));
        assert!(bad(two).contains("only sink"));
        let rabbit = json!({"source": {"type": "rabbitmq", "url_env": "AMQP_URL", "queue": "q"}, "sinks": [topic]});
        assert!(bad(rabbit).contains("rabbitmq cannot"));
        let named = |t: &str| kafka(json!({"sinks": [{"type": "kafka", "brokers": "b:9092", "topic": t}]}));
        assert!(bad(named("a/b")).contains("kafka sink topic \"a/b\""));
        let sasl =
            kafka(json!({"sinks": [{"type": "kafka", "brokers": "b:9092", "topic": "t", "protocol": "sasl_ssl"}]}));
        assert!(bad(sasl).contains("kafka sink.credentials"));
        let scan = kafka(json!({"sinks": [{"type": "kafka", "brokers": "b:9092", "topic": "t", "resume_scan": 0}]}));
        assert!(bad(scan).contains("resume_scan"));
        assert!(bad(kafka(json!({"dead_letter": {"type": "kafka", "topic": "dead letters"}})))
            .contains("dead_letter.topic"));
        // A batch step lands in datasets and tables.
        let batch = json!({"sinks": [{"type": "kafka", "brokers": "b:9092", "topic": "t"}]});
        let e = crate::dataset::DataStep::parse("store", Some(&batch)).unwrap_err();
        assert!(e.contains("stream step's sink"), "{e}");
    }
}
