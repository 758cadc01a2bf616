//! Kafka through rdkafka: an idempotent producer (`acks=all`), topic creation through the
//! admin API, and consumer groups with offsets committed by the caller.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::{Bus, BusError, Delivery, Message, Subscription, TopicSpec};

/// Security protocols librdkafka speaks.
pub const SECURITY_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// How to reach the brokers. The password never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    /// One of [`SECURITY_PROTOCOLS`].
    pub security_protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a `sasl_*` protocol).
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// CA bundle for `ssl`/`sasl_ssl`.
    pub ssl_ca_location: Option<String>,
    pub client_id: String,
    /// How long a message may wait for acknowledgement before the publish fails (and is
    /// retried by the relay).
    pub message_timeout: Duration,
    /// Further librdkafka properties, applied last (e.g. `debug=cgrp`).
    pub properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "<redacted>"))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("client_id", &self.client_id)
            .field("properties", &self.properties.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaConfig {
    /// Plain-text access to `brokers`.
    pub fn plaintext(brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            client_id: "weir".into(),
            message_timeout: Duration::from_secs(10),
            properties: Vec::new(),
        }
    }

    /// The librdkafka settings shared by every client (brokers, TLS, SASL), after checking
    /// they fit together; a consumer or producer adds its own.
    pub fn client(&self) -> Result<ClientConfig, BusError> {
        if self.brokers.trim().is_empty() {
            return Err(BusError::Config("no brokers given".into()));
        }
        let proto = self.security_protocol.to_ascii_lowercase();
        if !SECURITY_PROTOCOLS.contains(&proto.as_str()) {
            return Err(BusError::Config(format!(
                "security protocol {:?} is not one of {}",
                self.security_protocol,
                SECURITY_PROTOCOLS.join(", ")
            )));
        }
        let sasl = proto.starts_with("sasl_");
        if sasl && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
            return Err(BusError::Config(format!("{proto} needs a SASL username and password")));
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", &proto)
            .set("client.id", &self.client_id)
            .set("log_level", "4");
        if sasl {
            c.set("sasl.mechanism", self.sasl_mechanism.as_deref().unwrap_or("PLAIN"));
            if let (Some(u), Some(p)) = (&self.sasl_username, &self.sasl_password) {
                c.set("sasl.username", u).set("sasl.password", p);
            }
        }
        if let Some(ca) = &self.ssl_ca_location {
            c.set("ssl.ca.location", ca);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        Ok(c)
    }
}

fn unavailable(e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            BusError::UnknownTopic(e.to_string())
        }
        _ => BusError::Unavailable(e.to_string()),
    }
}

/// See the module docs.
pub struct KafkaBus {
    cfg: KafkaConfig,
    /// Replaced after a failed publish (see [`KafkaBus::renew`]).
    producer: Mutex<Arc<FutureProducer>>,
}

impl KafkaBus {
    /// Creates the clients; connections are made lazily, so this works with the broker down.
    pub fn new(cfg: KafkaConfig) -> Result<KafkaBus, BusError> {
        let producer = Self::producer(&cfg)?;
        Ok(KafkaBus { cfg, producer: Mutex::new(Arc::new(producer)) })
    }

    fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, BusError> {
        let mut c = cfg.client()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", cfg.message_timeout.as_millis().to_string());
        c.create().map_err(|e| BusError::Config(format!("cannot create a Kafka producer: {e}")))
    }

    fn current(&self) -> Arc<FutureProducer> {
        self.producer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After a failed publish, starts over with a fresh producer: a broker that lost the
    /// idempotent producer's state (a restart, a fail-over) answers UNKNOWN_PRODUCER_ID to
    /// the old one forever, and a new producer id costs one round trip.
    fn renew(&self, used: &Arc<FutureProducer>) {
        if let Some((code, why)) = used.client().fatal_error() {
            tracing::warn!(?code, %why, "Kafka producer hit a fatal error");
        }
        let Ok(fresh) = Self::producer(&self.cfg) else { return };
        let old = {
            let mut slot = self.producer.lock().unwrap_or_else(|p| p.into_inner());
            if !Arc::ptr_eq(&slot, used) {
                return;
            }
            std::mem::replace(&mut *slot, Arc::new(fresh))
        };
        // Dropping purges and flushes for up to half a second: not on an async thread.
        tokio::task::spawn_blocking(move || drop(old));
    }
}

#[async_trait]
impl Bus for KafkaBus {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> =
            self.cfg.client()?.create().map_err(|e| BusError::Config(format!("cannot create a Kafka admin: {e}")))?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics(&new, &opts).await.map_err(unavailable)?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = %name, "topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("cannot create topic {name}: {code}"))),
            }
        }
        Ok(())
    }

    async fn publish(&self, batch: &[Message]) -> Result<(), BusError> {
        let producer = self.current();
        let mut pending = Vec::with_capacity(batch.len());
        for m in batch {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            let mut record = FutureRecord::to(&m.topic).payload(&m.payload).headers(headers);
            if let Some(k) = &m.key {
                record = record.key(k);
            }
            // Enqueue everything first so the batch shares round trips; then wait for acks.
            match producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => return Err(unavailable(e)),
            }
        }
        let mut failure = None;
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failure = failure.or(Some(unavailable(e))),
                Err(_) => failure = failure.or(Some(BusError::Unavailable("the producer was dropped".into()))),
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                self.renew(&producer);
                Err(e)
            }
        }
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, BusError> {
        let mut c = self.cfg.client()?;
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Notice topics created after subscribing (the master creates them at start).
            .set("topic.metadata.refresh.interval.ms", "2000")
            // A consumer that died (a master that lost leadership) is replaced within seconds.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "15000");
        let consumer: StreamConsumer =
            c.create().map_err(|e| BusError::Config(format!("cannot create a Kafka consumer: {e}")))?;
        consumer.subscribe(topics).map_err(unavailable)?;
        Ok(Box::new(KafkaSubscription { consumer: Arc::new(consumer) }))
    }
}

struct KafkaSubscription {
    consumer: Arc<StreamConsumer>,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let m = self.consumer.recv().await.map_err(unavailable)?;
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        Ok(Delivery {
            message: Message {
                topic: m.topic().to_string(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            },
            partition: m.partition(),
            offset: m.offset(),
        })
    }

    async fn commit(&mut self, d: &Delivery) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&d.message.topic, d.partition, Offset::Offset(d.offset + 1)).map_err(unavailable)?;
        // A synchronous commit (confirmed by the group coordinator), off the async threads.
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| BusError::Unavailable(format!("commit task failed: {e}")))?
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_secrets_kept_out_of_logs() {
        let mut c = KafkaConfig::plaintext("127.0.0.1:9092");
        assert!(c.client().is_ok());
        c.security_protocol = "carrier-pigeon".into();
        assert!(matches!(c.client(), Err(BusError::Config(m)) if m.contains("not one of")));
        c.security_protocol = "SASL_SSL".into();
        assert!(matches!(c.client(), Err(BusError::Config(m)) if m.contains("username and password")));
        c.sasl_username = Some("weir".into());
        c.sasl_password = Some("hunter2".into());
        assert!(c.client().is_ok());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
