//! Google Pub/Sub: a subscription read with StreamingPull (gRPC), flow-controlled by the
//! stream's outstanding messages and bytes, each message acknowledged on the stream only
//! after the sinks committed it. Pub/Sub has no replayable positions: a flush's input is
//! named by the lease and a per-lease counter, and a message Pub/Sub redelivers (its ack
//! deadline passed, the stream broke, the owner died) is dropped by its `message_id`
//! ([`crate::dedupe`]). `endpoint` points at the emulator (plaintext `http://…`); Google's
//! own (`https://pubsub.googleapis.com`, the default) takes an OAuth access token by
//! reference (`<PREFIX>_TOKEN`).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    AcknowledgeRequest, GetSubscriptionRequest, ModifyAckDeadlineRequest, ReceivedMessage, StreamingPullRequest,
    StreamingPullResponse,
};
use serde_json::{json, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use weir_core::stream::{Bound, SourceSpec, StreamStep};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::source::{Delivery, Event, Lane, Source};

/// Google's endpoint, when the step names none.
const GOOGLE: &str = "https://pubsub.googleapis.com";
/// How long the stream waits for a message before it counts the subscription as drained
/// (for `until: now`: Pub/Sub does not tell what a subscription holds).
const IDLE: Duration = Duration::from_millis(500);
/// Ack ids per acknowledging request (Pub/Sub takes up to 10 MB a request).
const ACKS_PER_REQUEST: usize = 2500;
/// How long a closing stream waits for the server to end it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The most messages outstanding on the stream.
const MAX_OUTSTANDING: u64 = 100_000;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StepError {
    crate::source::unavailable("pubsub", what, e)
}

/// Adds the access token to every call, when there is one.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = SubscriberClient<InterceptedService<Channel, Bearer>>;

/// A Pub/Sub source, connected.
pub struct Pubsub {
    client: Client,
    subscription: String,
    lanes: Vec<Lane>,
    /// `weir-<task>.<fence>`, for the server's view of the stream.
    client_id: String,
    requests: Option<tokio::sync::mpsc::Sender<StreamingPullRequest>>,
    responses: Option<tonic::Streaming<StreamingPullResponse>>,
    received: VecDeque<ReceivedMessage>,
    /// Positions are this lease's count of deliveries.
    seq: i64,
    unacked: BTreeMap<i64, String>,
    max_outstanding: u64,
    max_bytes: u64,
    ack_deadline: i32,
}

impl Pubsub {
    /// Connects and checks the subscription (a wrong endpoint, token or name fails here).
    pub async fn connect(step: &StreamStep, task: &TaskContext, budget: &Budget) -> Result<Pubsub, StepError> {
        let SourceSpec::Pubsub { project, subscription, endpoint, credentials } = &step.source else {
            return Err(StepError::permanent("bad_config", "not a pubsub source"));
        };
        let url = endpoint.clone().unwrap_or_else(|| GOOGLE.to_string());
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| StepError::permanent("bad_config", format!("source.endpoint {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(10));
        if url.starts_with("https://") {
            ep = ep.tls_config(ClientTlsConfig::new().with_native_roots()).map_err(|e| unavailable(&url, e))?;
        }
        let channel = ep.connect().await.map_err(|e| unavailable(&url, e))?;
        let token = match credentials {
            Some(c) => Some(
                format!("Bearer {}", crate::source::secrets(c, &["token"], &[])?["token"])
                    .parse()
                    .map_err(|_| StepError::permanent("bad_config", "source.credentials: the token is not ASCII"))?,
            ),
            None => None,
        };
        let mut client = SubscriberClient::with_interceptor(channel, Bearer(token));
        let name = format!("projects/{project}/subscriptions/{subscription}");
        client.get_subscription(GetSubscriptionRequest { subscription: name.clone() }).await.map_err(|s| {
            match s.code() {
                tonic::Code::NotFound | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    StepError::permanent("bad_config", format!("pubsub subscription {name}: {}", s.message()))
                }
                _ => unavailable(&format!("subscription {name}"), s.message()),
            }
        })?;
        Ok(Pubsub {
            client,
            subscription: name,
            lanes: vec![Lane { name: subscription.clone(), index: 0 }],
            client_id: format!("weir-{}.{}", task.task_id, task.fence),
            requests: None,
            responses: None,
            received: VecDeque::new(),
            seq: 0,
            unacked: BTreeMap::new(),
            max_outstanding: step.flush.records().min(MAX_OUTSTANDING),
            max_bytes: budget.client_share(),
            // A message stays ours through a slow flush: three intervals, 1–10 minutes.
            ack_deadline: (step.flush.interval().as_secs() * 3).clamp(60, 600) as i32,
        })
    }
}

#[async_trait]
impl Source for Pubsub {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    fn replayable(&self) -> bool {
        false
    }

    fn window(&self) -> Option<u64> {
        Some(self.max_outstanding)
    }

    fn details(&self) -> Value {
        json!({"subscription": self.subscription})
    }

    async fn start(&mut self, _landed: &BTreeMap<usize, i64>, _from: Option<&Bound>) -> Result<(), StepError> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(StreamingPullRequest {
            subscription: self.subscription.clone(),
            stream_ack_deadline_seconds: self.ack_deadline,
            client_id: self.client_id.clone(),
            max_outstanding_messages: self.max_outstanding as i64,
            max_outstanding_bytes: self.max_bytes as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("stream", e))?;
        let responses = self
            .client
            .streaming_pull(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| unavailable(&format!("streaming pull {}", self.subscription), s.message()))?
            .into_inner();
        self.requests = Some(tx);
        self.responses = Some(responses);
        Ok(())
    }

    async fn next(&mut self) -> Result<Event, StepError> {
        loop {
            if let Some(r) = self.received.pop_front() {
                let Some(m) = r.message else { continue };
                self.seq += 1;
                self.unacked.insert(self.seq, r.ack_id);
                return Ok(Event::Message(Delivery {
                    lane: 0,
                    position: self.seq,
                    id: Some(m.message_id),
                    redelivered: r.delivery_attempt > 1,
                    time_ms: m.publish_time.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
                    payload: m.data,
                }));
            }
            let Some(responses) = self.responses.as_mut() else {
                return Err(unavailable("stream", "not started"));
            };
            match tokio::time::timeout(IDLE, responses.message()).await {
                Ok(Ok(Some(r))) => self.received.extend(r.received_messages),
                Ok(Ok(None)) => return Err(unavailable("stream", "closed by the server")),
                Ok(Err(s)) => return Err(unavailable("stream", s.message())),
                Err(_) => return Ok(Event::End(vec![0])),
            }
        }
    }

    async fn commit(&mut self, upto: &BTreeMap<usize, i64>) -> Result<(), StepError> {
        let Some(upto) = upto.get(&0) else { return Ok(()) };
        let acks = crate::source::take_upto(&mut self.unacked, *upto);
        // Down the stream, which releases its flow control (the emulator counts only
        // those), then unary, confirmed before the flush counts as committed (one sent
        // down the stream could be lost with it).
        if let Some(tx) = &self.requests {
            for chunk in acks.chunks(ACKS_PER_REQUEST) {
                let _ = tx.send(StreamingPullRequest { ack_ids: chunk.to_vec(), ..Default::default() }).await;
            }
        }
        for chunk in acks.chunks(ACKS_PER_REQUEST) {
            let req = AcknowledgeRequest { subscription: self.subscription.clone(), ack_ids: chunk.to_vec() };
            self.client.acknowledge(req).await.map_err(|s| unavailable("ack", s.message()))?;
        }
        Ok(())
    }

    /// Half-closes the stream and reads it to its end (or for [`CLOSE_WAIT`]), then hands
    /// back (deadline 0) what was received and not taken: a dropped stream can hold
    /// messages out of reach until their ack deadline.
    async fn close(&mut self) {
        self.requests = None;
        if let Some(mut responses) = self.responses.take() {
            let until = tokio::time::Instant::now() + CLOSE_WAIT;
            while let Ok(Ok(Some(r))) = tokio::time::timeout_at(until, responses.message()).await {
                self.received.extend(r.received_messages);
            }
        }
        let mut back: Vec<String> = self.received.drain(..).map(|r| r.ack_id).collect();
        back.extend(std::mem::take(&mut self.unacked).into_values());
        for chunk in back.chunks(ACKS_PER_REQUEST) {
            let req = ModifyAckDeadlineRequest {
                subscription: self.subscription.clone(),
                ack_ids: chunk.to_vec(),
                ack_deadline_seconds: 0,
            };
            if let Err(s) = self.client.modify_ack_deadline(req).await {
                tracing::info!(error = %s.message(), "pubsub: could not hand messages back; they return after their deadline");
            }
        }
    }
}
