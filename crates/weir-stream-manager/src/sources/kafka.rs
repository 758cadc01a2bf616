//! Kafka. The task owns every partition of its topics (assigned, not group-balanced:
//! ownership is the lease, fenced at every commit); the consumer group only keeps the
//! committed offsets. Each partition starts after the higher of its committed offset and
//! the last position its sinks hold, so a crash between landing and committing replays
//! nothing twice. librdkafka's prefetch queue is sized from the manager's budget, and a
//! paused stream pauses its partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use weir_bus::KafkaConfig;
use weir_core::stream::{Bound, SourceSpec, StreamStep};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::source::{Delivery, Event, Lane, Source};

/// Broker calls that wait (metadata, watermarks, offsets) give up after this.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

fn broker(e: rdkafka::error::KafkaError) -> StepError {
    StepError::retryable("unavailable", format!("kafka: {e}"))
}

/// A Kafka source, connected.
pub struct Kafka {
    consumer: std::sync::Arc<StreamConsumer>,
    group: String,
    lanes: Vec<Lane>,
    /// Where each lane started.
    starts: Vec<i64>,
}

impl Kafka {
    /// Connects and reads the topics' partitions.
    pub async fn connect(step: &StreamStep, task: &TaskContext, budget: &Budget) -> Result<Kafka, StepError> {
        let SourceSpec::Kafka { topics, pattern, group, partitions, .. } = &step.source else {
            return Err(StepError::permanent("bad_config", "not a kafka source"));
        };
        let group =
            group.clone().unwrap_or_else(|| format!("weir-{}-{}-{}", task.namespace, task.job_name, task.step_id));
        let share = budget.client_share();
        let mut cfg = client_settings(step)?.client().map_err(|e| StepError::permanent("bad_config", e.to_string()))?;
        cfg.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            // The prefetch queue is this stream's share of the budget, not librdkafka's
            // default of 64 MiB per consumer: lag stays in the broker.
            .set("queued.max.messages.kbytes", (share / 1024).to_string())
            .set("fetch.max.bytes", share.min(50 << 20).to_string())
            .set("max.partition.fetch.bytes", share.min(1 << 20).to_string())
            // With a queue this small it fills often: fetch again soon after it drains
            // (librdkafka waits a whole second by default, which would set the pace).
            .set("fetch.queue.backoff.ms", "10")
            // A fetch the broker holds back returns within a tenth of the flush interval
            // (5 to 100 ms), not librdkafka's 500 ms: tansu holds every fetch to the limit,
            // so this wait is part of every record's latency.
            .set("fetch.wait.max.ms", (step.flush.interval().as_millis() as u64 / 10).clamp(5, 100).to_string());
        let consumer: std::sync::Arc<StreamConsumer> = std::sync::Arc::new(cfg.create().map_err(broker)?);
        let (c, names, pattern) = (consumer.clone(), topics.clone(), pattern.clone());
        let lanes = tokio::task::spawn_blocking(move || -> Result<Vec<Lane>, StepError> {
            // A pattern names the topics that match it now (a topic created later joins at
            // the stream's next start).
            let md;
            let topics: Vec<_> = match &pattern {
                Some(p) => {
                    let re = pattern_regex(p)?;
                    md = c.fetch_metadata(None, BROKER_TIMEOUT).map_err(broker)?;
                    md.topics().iter().filter(|t| re.is_match(t.name())).collect()
                }
                None => {
                    let mut all = Vec::new();
                    for t in &names {
                        let md = c.fetch_metadata(Some(t), BROKER_TIMEOUT).map_err(broker)?;
                        for mt in md.topics() {
                            if let Some(e) = mt.error() {
                                return Err(StepError::retryable("unavailable", format!("kafka topic {t}: {e:?}")));
                            }
                            all.extend(mt.partitions().iter().map(|p| Lane { name: t.clone(), index: p.id() }));
                        }
                    }
                    return Ok(all);
                }
            };
            let mut lanes: Vec<Lane> = topics
                .iter()
                .filter(|t| t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| Lane { name: t.name().to_string(), index: p.id() }))
                .collect();
            lanes.sort();
            if lanes.is_empty() {
                return Err(StepError::retryable(
                    "unavailable",
                    format!("kafka: no topic matches the pattern {:?} yet", pattern.unwrap_or_default()),
                ));
            }
            Ok(lanes)
        })
        .await
        .map_err(|e| StepError::retryable("crashed", e.to_string()))??;
        let lanes = match partitions {
            Some(only) => only_partitions(lanes, only)?,
            None => lanes,
        };
        Ok(Kafka { consumer, group, lanes, starts: vec![] })
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for l in &self.lanes {
            tpl.add_partition(&l.name, l.index);
        }
        tpl
    }
}

/// The lanes of `only`'s partitions; a partition no topic has is named.
fn only_partitions(lanes: Vec<Lane>, only: &[i32]) -> Result<Vec<Lane>, StepError> {
    if let Some(p) = only.iter().find(|p| !lanes.iter().any(|l| l.index == **p)) {
        let topics: std::collections::BTreeSet<&str> = lanes.iter().map(|l| l.name.as_str()).collect();
        return Err(StepError::permanent(
            "bad_config",
            format!("source.partitions: no partition {p} in {}", topics.into_iter().collect::<Vec<_>>().join(", ")),
        ));
    }
    Ok(lanes.into_iter().filter(|l| only.contains(&l.index)).collect())
}

/// The pattern as a regular expression (checked at submission).
fn pattern_regex(p: &str) -> Result<regex::Regex, StepError> {
    regex::Regex::new(p).map_err(|e| StepError::permanent("bad_config", format!("source.pattern: {e}")))
}

/// A Kafka source's brokers, TLS and SASL (credentials read from their reference) as the
/// event bus's client settings, which turn them into librdkafka's: the consumer here and
/// the dead-letter producer ([`crate::run`]) use them.
pub fn client_settings(step: &StreamStep) -> Result<KafkaConfig, StepError> {
    let SourceSpec::Kafka { brokers, protocol, sasl_mechanism, credentials, .. } = &step.source else {
        return Err(StepError::permanent("bad_config", "not a kafka source"));
    };
    let mut cfg = weir_data::sink::kafka::client_settings(
        brokers,
        *protocol,
        sasl_mechanism.as_deref(),
        credentials.as_ref(),
        "source",
    )
    .map_err(|e| crate::land::step_error(&e))?;
    cfg.client_id = "weir-stream-manager".into();
    Ok(cfg)
}

#[async_trait]
impl Source for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    fn replayable(&self) -> bool {
        true
    }

    fn details(&self) -> Value {
        json!({"group": self.group})
    }

    async fn start(&mut self, landed: &BTreeMap<usize, i64>, from: Option<&Bound>) -> Result<(), StepError> {
        let (c, lanes, tpl, landed) = (self.consumer.clone(), self.lanes.clone(), self.assignment(), landed.clone());
        let from = from.cloned();
        let (starts, firsts) =
            tokio::task::spawn_blocking(move || -> Result<(TopicPartitionList, Vec<i64>), StepError> {
                let committed = c.committed_offsets(tpl, BROKER_TIMEOUT).map_err(broker)?;
                // `from: {time}`: each partition's first offset at or after the time.
                let by_time = match from.as_ref().and_then(Bound::time_ms) {
                    Some(ms) => {
                        let mut at = TopicPartitionList::new();
                        for l in &lanes {
                            at.add_partition_offset(&l.name, l.index, Offset::Offset(ms)).map_err(broker)?;
                        }
                        Some(c.offsets_for_times(at, BROKER_TIMEOUT).map_err(broker)?)
                    }
                    None => None,
                };
                let (mut starts, mut firsts) = (TopicPartitionList::new(), Vec::new());
                for (i, l) in lanes.iter().enumerate() {
                    let (low, high) = c.fetch_watermarks(&l.name, l.index, BROKER_TIMEOUT).map_err(broker)?;
                    let committed = match committed.find_partition(&l.name, l.index).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    };
                    let start = match (landed.get(&i), committed) {
                        // The sinks' position first, the broker's if it is further.
                        (Some(l), c) => (l + 1).max(c.unwrap_or(low)),
                        (None, Some(c)) => c,
                        // Nothing read yet: where `from` says (default the earliest).
                        (None, None) => match (&from, &by_time) {
                            (Some(b @ Bound::Offsets(_)), _) => b.offset(&l.key()).unwrap_or(low),
                            (_, Some(t)) => match t.find_partition(&l.name, l.index).map(|e| e.offset()) {
                                Some(Offset::Offset(o)) => o,
                                // No message at or after the time: from the end.
                                _ => high,
                            },
                            _ => low,
                        },
                    }
                    .max(low);
                    starts.add_partition_offset(&l.name, l.index, Offset::Offset(start)).map_err(broker)?;
                    firsts.push(start);
                }
                Ok((starts, firsts))
            })
            .await
            .map_err(|e| StepError::retryable("crashed", e.to_string()))??;
        self.starts = firsts;
        self.consumer.assign(&starts).map_err(broker)
    }

    async fn lag(&mut self, positions: &[i64]) -> Result<Vec<Option<i64>>, StepError> {
        let (c, lanes) = (self.consumer.clone(), self.lanes.clone());
        let next: Vec<i64> = positions.iter().zip(&self.starts).map(|(p, s)| (p + 1).max(*s)).collect();
        tokio::task::spawn_blocking(move || {
            lanes
                .iter()
                .zip(next)
                .map(|(l, next)| {
                    let (_, high) = c.fetch_watermarks(&l.name, l.index, Duration::from_secs(2)).ok()?;
                    Some((high - next).max(0))
                })
                .collect()
        })
        .await
        .map_err(|e| StepError::retryable("crashed", e.to_string()))
    }

    async fn next(&mut self) -> Result<Event, StepError> {
        match self.consumer.recv().await {
            Ok(m) => {
                let lane = self.lanes.iter().position(|l| l.index == m.partition() && l.name == m.topic()).ok_or_else(
                    || {
                        StepError::retryable(
                            "unavailable",
                            format!("kafka: a message from {}/{} not assigned", m.topic(), m.partition()),
                        )
                    },
                )?;
                Ok(Event::Message(Delivery {
                    lane,
                    position: m.offset(),
                    id: None,
                    redelivered: false,
                    time_ms: m.timestamp().to_millis(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }))
            }
            // librdkafka names only the partition: every topic's partition of that number.
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                Ok(Event::End(self.lanes.iter().enumerate().filter(|(_, l)| l.index == p).map(|(i, _)| i).collect()))
            }
            Err(e) => Err(broker(e)),
        }
    }

    async fn commit(&mut self, upto: &BTreeMap<usize, i64>) -> Result<(), StepError> {
        let mut tpl = TopicPartitionList::new();
        for (lane, last) in upto {
            let l = &self.lanes[*lane];
            tpl.add_partition_offset(&l.name, l.index, Offset::Offset(last + 1)).map_err(broker)?;
        }
        // Async: the sinks' positions, not the broker's, are what a restart trusts first.
        self.consumer.commit(&tpl, CommitMode::Async).map_err(broker)
    }

    fn pause(&mut self, paused: bool) -> Result<(), StepError> {
        let tpl = self.assignment();
        if paused {
            self.consumer.pause(&tpl).map_err(broker)
        } else {
            self.consumer.resume(&tpl).map_err(broker)
        }
    }
}
