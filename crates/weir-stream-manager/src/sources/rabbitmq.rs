//! RabbitMQ (AMQP 0-9-1, lapin): a queue consumed with manual acknowledgements and a
//! prefetch. Delivery tags are the positions of one channel only, so a flush's input is
//! named by the lease and the tags (unique, never replayed); a message the broker
//! redelivers after a crash between landing and acknowledging is dropped by its id
//! ([`crate::dedupe`]). Acknowledgements go out (`multiple`) only after the sinks
//! committed; the prefetch bounds what is unacknowledged, so not reading is the pause.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{json, Value};
use weir_core::stream::{Bound, SourceSpec, StreamStep};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::source::{Delivery, Event, Lane, Source};

/// How long a consumer waits for a delivery before asking whether the queue is empty.
const IDLE: Duration = Duration::from_millis(500);

fn unavailable(what: &str, e: impl std::fmt::Display) -> StepError {
    crate::source::unavailable("rabbitmq", what, e)
}

/// A RabbitMQ source, connected.
pub struct Rabbitmq {
    _connection: Connection,
    channel: Channel,
    queue: String,
    tag: String,
    lanes: Vec<Lane>,
    prefetch: u16,
    consumer: Option<Consumer>,
}

/// The default prefetch: the stream's share of the budget at about 1 KiB a message.
fn default_prefetch(budget: &Budget) -> u16 {
    (budget.client_share() / 1024).clamp(100, u64::from(u16::MAX)) as u16
}

impl Rabbitmq {
    /// Connects and checks the queue (a wrong URL, credential or queue fails here).
    pub async fn connect(step: &StreamStep, task: &TaskContext, budget: &Budget) -> Result<Rabbitmq, StepError> {
        let SourceSpec::Rabbitmq { url_env, queue, prefetch } = &step.source else {
            return Err(StepError::permanent("bad_config", "not a rabbitmq source"));
        };
        let url = std::env::var(url_env).map_err(|_| {
            StepError::permanent("bad_config", format!("source.url_env: {url_env} is not set on the stream manager"))
        })?;
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .map_err(|e| unavailable(&format!("connecting ({url_env})"), e))?;
        let channel = connection.create_channel().await.map_err(|e| unavailable("channel", e))?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("queue {queue}"), e))?;
        let prefetch = prefetch.unwrap_or_else(|| default_prefetch(budget));
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| unavailable("qos", e))?;
        Ok(Rabbitmq {
            _connection: connection,
            channel,
            queue: queue.clone(),
            tag: format!("weir-{}.{}", task.task_id, task.fence),
            lanes: vec![Lane { name: queue.clone(), index: 0 }],
            prefetch,
            consumer: None,
        })
    }

    /// The messages ready in the queue now.
    async fn ready(&self) -> Result<u32, StepError> {
        let q = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("queue {}", self.queue), e))?;
        Ok(q.message_count())
    }
}

#[async_trait]
impl Source for Rabbitmq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    fn replayable(&self) -> bool {
        false
    }

    fn window(&self) -> Option<u64> {
        Some(u64::from(self.prefetch))
    }

    fn details(&self) -> Value {
        json!({"prefetch": self.prefetch})
    }

    async fn start(&mut self, _landed: &BTreeMap<usize, i64>, _from: Option<&Bound>) -> Result<(), StepError> {
        let c = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("consuming {}", self.queue), e))?;
        self.consumer = Some(c);
        Ok(())
    }

    async fn next(&mut self) -> Result<Event, StepError> {
        loop {
            let Some(consumer) = self.consumer.as_mut() else {
                return Err(unavailable("consumer", "not started"));
            };
            match tokio::time::timeout(IDLE, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    return Ok(Event::Message(Delivery {
                        lane: 0,
                        position: d.delivery_tag as i64,
                        id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                        redelivered: d.redelivered,
                        time_ms: d.properties.timestamp().map(|s| (s as i64).saturating_mul(1000)),
                        payload: d.data,
                    }))
                }
                Ok(Some(Err(e))) => return Err(unavailable("delivery", e)),
                Ok(None) => return Err(unavailable("consumer", "cancelled by the broker")),
                Err(_) => {
                    if self.ready().await? == 0 {
                        return Ok(Event::End(vec![0]));
                    }
                }
            }
        }
    }

    async fn lag(&mut self, _positions: &[i64]) -> Result<Vec<Option<i64>>, StepError> {
        Ok(vec![Some(i64::from(self.ready().await?))])
    }

    async fn commit(&mut self, upto: &BTreeMap<usize, i64>) -> Result<(), StepError> {
        let Some(tag) = upto.get(&0) else { return Ok(()) };
        self.channel.basic_ack(*tag as u64, BasicAckOptions { multiple: true }).await.map_err(|e| unavailable("ack", e))
    }
}
