//! What a stream source is to the stream loop ([`crate::run`]): lanes of ordered positions
//! (Kafka's partitions, a JetStream stream, a RabbitMQ queue), deliveries read one at a
//! time, and an acknowledgement once the sinks hold what was read. Everything else — the
//! buffers, the flushes, the budget, de-duplication, the report — is the loop's, so a new
//! source is one file under `sources/` implementing [`Source`] and a line in
//! [`open`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use weir_core::stream::{Bound, SourceSpec, StreamStep};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::land::Landing;

/// A lane: positions are ordered within it (a partition, a shard, a stream, a queue).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lane {
    /// The topic, stream or queue.
    pub name: String,
    /// The partition or shard number (0 where there is one lane).
    pub index: i32,
}

impl Lane {
    /// How configs, reports and events name it: `orders/2`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.name, self.index)
    }
}

/// One message as the source hands it over.
#[derive(Debug)]
pub struct Delivery {
    /// Index into [`Source::lanes`].
    pub lane: usize,
    /// Its position in the lane: an offset, a stream sequence, a delivery tag.
    pub position: i64,
    /// For sources without replayable positions: what de-duplication keys on.
    pub id: Option<String>,
    /// The broker delivered it before (to a consumer that did not acknowledge it).
    pub redelivered: bool,
    /// When it was produced (ms since the epoch), where the source says (`until: {time}`).
    pub time_ms: Option<i64>,
    pub payload: Vec<u8>,
}

/// What a source reports.
#[derive(Debug)]
pub enum Event {
    Message(Delivery),
    /// These lanes reached the end of what they hold now (for `until: now`).
    End(Vec<usize>),
    /// [`Source::lanes`] grew: lanes that joined while the stream runs (the shards a
    /// Kinesis reshard created), after the ones there were.
    Grew,
}

/// A stream source, connected.
#[async_trait]
pub trait Source: Send {
    /// The source type, for reports and input identities (`kafka`, `nats`, `rabbitmq`).
    fn name(&self) -> &'static str;

    /// Its lanes, fixed once connected.
    fn lanes(&self) -> &[Lane];

    /// Whether positions replay: a restart resumes after the sinks' positions. Otherwise
    /// they count from 1 again in each lease (so a flush is named by its lease too) and
    /// redeliveries are dropped by message id ([`crate::dedupe`]).
    fn replayable(&self) -> bool;

    /// The most messages it delivers unacknowledged (AMQP prefetch, JetStream's max ack
    /// pending), if it stops there: the loop flushes at that many.
    fn window(&self) -> Option<u64> {
        None
    }

    /// What the report says about the source beyond the loop's counts (a consumer group).
    fn details(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Where each lane stands in the sinks: the highest position landed. By default read
    /// from the ranges in the sinks' input keys ([`crate::positions`]); a source whose
    /// positions do not fit a key's name reads the identities the sinks recorded.
    async fn landed(&mut self, landing: &Landing) -> Result<BTreeMap<usize, i64>, StepError> {
        Ok(crate::positions::landed(self.name(), &landing.input_keys().await?, self.lanes()))
    }

    /// The input identity of a flushed range of a lane (positions `first` to `last`): the
    /// same range, the same name. `lease` (`<task>.<fence>`) names the ranges of a source
    /// whose positions do not replay, which count from 1 again in each lease.
    fn identity(&self, lease: &str, lane: usize, first: i64, last: i64) -> String {
        let l = &self.lanes()[lane];
        if self.replayable() {
            crate::positions::identity(self.name(), &l.name, l.index, first, last)
        } else {
            crate::positions::leased_identity(self.name(), &l.name, lease, l.index, first, last)
        }
    }

    /// Starts reading, after `landed` (lane → the last position the sinks hold), or, for
    /// a lane with no position yet (in the sinks or the broker), at `from`.
    async fn start(&mut self, landed: &BTreeMap<usize, i64>, from: Option<&Bound>) -> Result<(), StepError>;

    /// The next event. Cancel-safe: the loop races it with its timers.
    async fn next(&mut self) -> Result<Event, StepError>;

    /// The sinks hold (or the loop dropped) everything delivered up to these positions:
    /// acknowledge or commit them.
    async fn commit(&mut self, upto: &BTreeMap<usize, i64>) -> Result<(), StepError>;

    /// Messages in the source after `positions` (the last read per lane, -1: none), per
    /// lane; `None` where it cannot tell.
    async fn lag(&mut self, positions: &[i64]) -> Result<Vec<Option<i64>>, StepError> {
        Ok(vec![None; positions.len()])
    }

    /// The stream is over (its end, a cancel): hand back what was received and not taken,
    /// so another consumer gets it at once.
    async fn close(&mut self) {}

    /// Stops or resumes fetching (backpressure). A source that fetches only when `next`
    /// asks needs nothing: the loop does not ask while paused, and what the source had
    /// asked for is bounded by its window.
    fn pause(&mut self, _paused: bool) -> Result<(), StepError> {
        Ok(())
    }
}

/// The secrets of a source's credentials reference: every one of `required`, and those
/// of `optional` that are there; the error names the variable or file key that is missing.
pub fn secrets(
    creds: &weir_core::files::CredentialsRef,
    required: &[&str],
    optional: &[&str],
) -> Result<std::collections::HashMap<String, String>, StepError> {
    let keys: Vec<&str> = required.iter().chain(optional).copied().collect();
    weir_storage::require_secrets(creds, &keys, required)
        .map_err(|e| StepError::permanent("bad_config", format!("source.credentials: {e}")))
}

/// A source that did not answer: retryable, naming the source and what was asked.
pub fn unavailable(source: &str, what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::retryable("unavailable", format!("{source} {what}: {e}"))
}

/// Takes the entries at or before `upto` (acknowledgements due once a flush landed).
pub fn take_upto<V>(pending: &mut BTreeMap<i64, V>, upto: i64) -> Vec<V> {
    let rest = pending.split_off(&(upto + 1));
    std::mem::replace(pending, rest).into_values().collect()
}

/// Connects the step's source.
pub async fn open(step: &StreamStep, task: &TaskContext, budget: &Budget) -> Result<Box<dyn Source>, StepError> {
    match &step.source {
        SourceSpec::Kafka { .. } => Ok(Box::new(crate::sources::kafka::Kafka::connect(step, task, budget).await?)),
        SourceSpec::Nats { .. } => Ok(Box::new(crate::sources::nats::Nats::connect(step, task, budget).await?)),
        SourceSpec::Rabbitmq { .. } => {
            Ok(Box::new(crate::sources::rabbitmq::Rabbitmq::connect(step, task, budget).await?))
        }
        SourceSpec::Pubsub { .. } => Ok(Box::new(crate::sources::pubsub::Pubsub::connect(step, task, budget).await?)),
        SourceSpec::Kinesis { .. } => {
            Ok(Box::new(crate::sources::kinesis::Kinesis::connect(step, task, budget).await?))
        }
    }
}
