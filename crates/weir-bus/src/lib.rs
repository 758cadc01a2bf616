//! The event bus behind one interface, [`Bus`]: [`kafka::KafkaBus`] (rdkafka) in
//! production and [`memory::MemoryBus`] in the one-command mode. Both pass the same
//! conformance suite (`tests/events.rs` at the workspace root, against a real
//! Kafka-protocol broker).
//!
//! The bus moves bytes; what goes in them (CloudEvents, topic names, keys) is decided in
//! `weir_core::events`.

use async_trait::async_trait;

pub mod kafka;
pub mod memory;

pub use kafka::{KafkaBus, KafkaConfig};
pub use memory::MemoryBus;

/// What went wrong on the bus. Every variant but [`BusError::Config`] may pass on retry.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker refused or could not be reached; try again later.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    /// A setting is wrong; retrying will not help.
    #[error("event bus misconfigured: {0}")]
    Config(String),
    /// The topic does not exist (create it with [`Bus::ensure_topics`]).
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// Messages with the same key go to the same partition, in order.
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Message {
    /// A message with a text key and no headers.
    pub fn new(topic: &str, key: &str, payload: Vec<u8>) -> Message {
        Message { topic: topic.to_string(), key: Some(key.as_bytes().to_vec()), payload, headers: Vec::new() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Message {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// A header's value as text, if present and UTF-8.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A message read from a subscription, with where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Message,
    pub partition: i32,
    pub offset: i64,
}

/// A topic to create if absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
}

/// Publishing and consuming.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// "kafka" or "memory": names the relay's position, which belongs to one bus.
    fn kind(&self) -> &'static str;

    /// Creates the topics that do not exist yet; existing ones are left as they are.
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError>;

    /// Publishes a batch and returns once every message is acknowledged (by all in-sync
    /// replicas on Kafka). Messages with the same key keep their order. On error some may
    /// have been published: the caller publishes the whole batch again, and consumers
    /// de-duplicate by event id.
    async fn publish(&self, batch: &[Message]) -> Result<(), BusError>;

    /// Joins consumer group `group` on `topics`, from the group's committed offsets (the
    /// earliest message for a new group).
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, BusError>;
}

/// A consumer's side.
#[async_trait]
pub trait Subscription: Send {
    /// The next message; waits until there is one.
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// Marks `d` and everything before it on its partition as done for the group.
    async fn commit(&mut self, d: &Delivery) -> Result<(), BusError>;
}
