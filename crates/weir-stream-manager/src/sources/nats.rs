//! NATS JetStream: a durable pull consumer with explicit acks. The stream's sequence
//! numbers are the positions (one lane: the stream), so a restart resumes after what the
//! sinks hold: a consumer created anew starts there, and an existing one's redeliveries
//! at or before it are acknowledged and skipped. Messages are acknowledged only after the
//! sinks committed them; the consumer's `max_ack_pending` (from the flush size) bounds
//! what is in flight and its batches are sized from the manager's budget.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{json, Value};
use weir_core::stream::{Bound, SourceSpec, StreamStep};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::source::{Delivery, Event, Lane, Source};

/// The most messages a consumer may have unacknowledged (JetStream's own default).
const MAX_ACK_PENDING: u64 = 100_000;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StepError {
    crate::source::unavailable("nats", what, e)
}

/// A JetStream source, connected.
pub struct Nats {
    stream: jetstream::stream::Stream,
    consumer_name: String,
    filter: Option<String>,
    lanes: Vec<Lane>,
    /// Pending acks, by stream sequence.
    unacked: BTreeMap<i64, jetstream::message::Acker>,
    messages: Option<consumer::pull::Stream>,
    consumer: Option<consumer::PullConsumer>,
    /// The highest sequence taken; a redelivery at or before it is not taken again.
    taken: u64,
    /// The sinks hold everything up to here.
    landed: u64,
    /// The consumer had nothing pending after the last message: report the end next.
    end_due: bool,
    max_ack_pending: u64,
    batch_bytes: usize,
    ack_wait: Duration,
}

impl Nats {
    /// Connects and finds the stream (a wrong address, credential or stream fails here).
    pub async fn connect(step: &StreamStep, _task: &TaskContext, budget: &Budget) -> Result<Nats, StepError> {
        let SourceSpec::Nats { servers, stream, consumer, subject, credentials } = &step.source else {
            return Err(StepError::permanent("bad_config", "not a nats source"));
        };
        let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(10));
        if let Some(c) = credentials {
            let mut s = crate::source::secrets(c, &["username", "password"], &[])?;
            options = options
                .user_and_password(s.remove("username").unwrap_or_default(), s.remove("password").unwrap_or_default());
        }
        let addrs: Vec<String> = servers.split(',').map(|s| s.trim().to_string()).collect();
        let client = options.connect(addrs.as_slice()).await.map_err(|e| unavailable(servers, e))?;
        let js = jetstream::new(client);
        let s = js.get_stream(stream).await.map_err(|e| unavailable(&format!("stream {stream}"), e))?;
        Ok(Nats {
            stream: s,
            consumer_name: consumer.clone(),
            filter: subject.clone(),
            lanes: vec![Lane { name: stream.clone(), index: 0 }],
            unacked: BTreeMap::new(),
            messages: None,
            consumer: None,
            taken: 0,
            landed: 0,
            end_due: false,
            max_ack_pending: step.flush.records().min(MAX_ACK_PENDING),
            batch_bytes: budget.client_share() as usize,
            // A message stays ours through a slow flush: three intervals, at least 10 s.
            // Shorter is safe (a redelivery of a message taken is not taken again) and
            // bounds how long messages a lost connection held wait for a new owner.
            ack_wait: (step.flush.interval() * 3).max(Duration::from_secs(10)),
        })
    }
}

#[async_trait]
impl Source for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    fn replayable(&self) -> bool {
        true
    }

    fn window(&self) -> Option<u64> {
        Some(self.max_ack_pending)
    }

    fn details(&self) -> Value {
        json!({"consumer": self.consumer_name})
    }

    async fn start(&mut self, landed: &BTreeMap<usize, i64>, from: Option<&Bound>) -> Result<(), StepError> {
        self.landed = landed.get(&0).map_or(0, |l| *l as u64);
        self.taken = self.landed;
        // Where a consumer created now starts: after the sinks' position, else `from`.
        // An existing consumer keeps its own position (its redeliveries up to the sinks'
        // are skipped in `next`).
        let deliver_policy = match (self.landed, from) {
            (0, Some(b @ Bound::Offsets(_))) => match b.offset(&self.lanes[0].key()) {
                Some(seq) => consumer::DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) as u64 },
                None => consumer::DeliverPolicy::All,
            },
            (0, Some(b @ Bound::Time(_))) => {
                let ms = b.time_ms().unwrap_or_default();
                let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .map_err(|e| StepError::permanent("bad_config", format!("from.time: {e}")))?;
                consumer::DeliverPolicy::ByStartTime { start_time }
            }
            (0, _) => consumer::DeliverPolicy::All,
            (l, _) => consumer::DeliverPolicy::ByStartSequence { start_sequence: l + 1 },
        };
        let config = consumer::pull::Config {
            durable_name: Some(self.consumer_name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending as i64,
            filter_subject: self.filter.clone().unwrap_or_default(),
            ..Default::default()
        };
        let name = self.consumer_name.clone();
        let mut c: consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| unavailable(&format!("consumer {name}"), e))?;
        let pending = c.info().await.map_err(|e| unavailable(&format!("consumer {name}"), e))?.num_pending;
        self.end_due = pending == 0;
        let messages = c
            .stream()
            .max_messages_per_batch(self.max_ack_pending.min(10_000) as usize)
            .max_bytes_per_batch(self.batch_bytes)
            // Pulls expire often, so one lost with a restarted server is replaced within
            // seconds (a long-lived pull would leave the stream silent until it expired).
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| unavailable(&format!("consumer {name}"), e))?;
        self.messages = Some(messages);
        self.consumer = Some(c);
        Ok(())
    }

    async fn lag(&mut self, _positions: &[i64]) -> Result<Vec<Option<i64>>, StepError> {
        let Some(c) = self.consumer.as_mut() else { return Ok(vec![None]) };
        let info = c.info().await.map_err(|e| unavailable("consumer info", e))?;
        Ok(vec![Some(info.num_pending as i64)])
    }

    async fn next(&mut self) -> Result<Event, StepError> {
        loop {
            if self.end_due {
                self.end_due = false;
                return Ok(Event::End(vec![0]));
            }
            let Some(messages) = self.messages.as_mut() else {
                return Err(unavailable("fetch", "not started"));
            };
            let m = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(unavailable("fetch", e)),
                None => return Err(unavailable("fetch", "the consumer's stream ended")),
            };
            let (seq, pending, published) = {
                let info = m.info().map_err(|e| unavailable("message", e))?;
                (info.stream_sequence, info.pending, info.published)
            };
            let (msg, acker) = m.split();
            if seq <= self.taken {
                // A redelivery: of a message landed already (acknowledged now), or of one
                // buffered (acknowledged with its flush, through this delivery's reply).
                if seq <= self.landed {
                    acker.ack().await.map_err(|e| unavailable("ack", e))?;
                } else {
                    self.unacked.insert(seq as i64, acker);
                }
                continue;
            }
            self.taken = seq;
            self.unacked.insert(seq as i64, acker);
            self.end_due = pending == 0;
            return Ok(Event::Message(Delivery {
                lane: 0,
                position: seq as i64,
                id: None,
                redelivered: false,
                time_ms: Some((published.unix_timestamp_nanos() / 1_000_000) as i64),
                payload: msg.payload.to_vec(),
            }));
        }
    }

    async fn commit(&mut self, upto: &BTreeMap<usize, i64>) -> Result<(), StepError> {
        let Some(upto) = upto.get(&0).copied() else { return Ok(()) };
        for acker in crate::source::take_upto(&mut self.unacked, upto) {
            acker.ack().await.map_err(|e| unavailable("ack", e))?;
        }
        self.landed = self.landed.max(upto as u64);
        Ok(())
    }

    /// Hands back (NAK) what was delivered and not landed, so the next owner gets it now,
    /// not after the ack wait.
    async fn close(&mut self) {
        self.messages = None;
        for (_, acker) in std::mem::take(&mut self.unacked) {
            if let Err(e) = acker.ack_with(async_nats::jetstream::AckKind::Nak(None)).await {
                tracing::info!(error = %e, "nats: could not hand a message back; it returns after the ack wait");
                break;
            }
        }
    }
}
