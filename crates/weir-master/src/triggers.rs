//! Event-driven jobs: the master consumes `weir.triggers`, turns each event into a job by
//! the trigger rules (`weir_core::trigger`), and commits the offset only once the job
//! exists. The job's run id comes from the event's id, so a redelivered event finds the
//! job it already started. An event that cannot start a job (undecodable, no rule, an
//! invalid job) goes to `weir.dlq` with the reason in headers, and the partition moves on.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_bus::{Bus, Delivery, Message};
use weir_core::events::{header, topic, CloudEvent};
use weir_core::trigger::TriggerRules;

use crate::Shared;

/// The consumer group of the masters (one leader consumes at a time).
pub const GROUP: &str = "weir-master";

/// What became of one trigger message.
#[derive(Debug)]
enum Outcome {
    /// A job exists for it (new or found again).
    Job,
    /// It can never start a job: to the dead-letter topic with this reason.
    Poison(String),
    /// The master could not take it now: try the same message again.
    Retry(String),
}

/// Consumes triggers until `cancel` fires.
pub(crate) async fn run(shared: Arc<Shared>, bus: Arc<dyn Bus>, rules: Arc<TriggerRules>, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    let mut sub = loop {
        match bus.subscribe(GROUP, &[topic::TRIGGERS]).await {
            Ok(s) => break s,
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to triggers yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    tracing::info!(rules = rules.rules.len(), "consuming triggers");
    loop {
        let d = tokio::select! {
            d = sub.next() => d,
            _ = cancel.cancelled() => return,
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "trigger consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut delay = Duration::from_millis(100);
        loop {
            let done = match handle(&shared, &rules, &d.message).await {
                Outcome::Job => true,
                Outcome::Poison(reason) => {
                    tracing::warn!(partition = d.partition, offset = d.offset, %reason, "trigger dead-lettered");
                    match bus.publish(&[dead_letter(&d, &reason)]).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot dead-letter a trigger yet; retrying");
                            false
                        }
                    }
                }
                Outcome::Retry(why) => {
                    tracing::warn!(%why, "trigger not taken yet; retrying the same message");
                    false
                }
            };
            if done {
                if let Err(e) = sub.commit(&d).await {
                    // Redelivery is harmless: the job is found again by its run id.
                    tracing::warn!(error = %e, "cannot commit a trigger offset");
                }
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

async fn handle(shared: &Shared, rules: &TriggerRules, m: &Message) -> Outcome {
    let event = match CloudEvent::decode(&m.payload) {
        Ok(e) => e,
        Err(e) => return Outcome::Poison(e),
    };
    let spec = match rules.job_for(&event) {
        Ok(s) => s,
        Err(e) => return Outcome::Poison(e),
    };
    let mut valid = match crate::connections::validate(shared, spec).await {
        Ok(v) => v,
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            return Outcome::Poison(format!("the job for event {:?} is invalid: {}", event.id, s.message()))
        }
        Err(s) => return Outcome::Retry(s.message().to_string()),
    };
    // The event's trace (header first, then the CloudEvents tracing extension) goes on.
    let parent = m
        .header_text(header::TRACEPARENT)
        .map(str::to_string)
        .or_else(|| event.extensions.get("traceparent").and_then(|v| v.as_str()).map(str::to_string));
    // A span of its own (in the event's trace, if it has one), so that with trace export
    // on the job's trace is one the sampler decided on, not a made-up root.
    let span = tracing::info_span!("trigger", otel.name = "trigger job", event_type = %event.ty);
    if let Some(p) = &parent {
        weir_runtime::telemetry::set_parent(&span, p);
    }
    valid.trace_parent = Some(span.in_scope(|| crate::jobs::trace_for(parent.as_deref())));
    match crate::jobs::submit(shared, valid, None).await {
        Ok((job, created)) => {
            tracing::info!(job_id = %job.id, created, event_id = %event.id, event_type = %event.ty, "trigger handled");
            Outcome::Job
        }
        Err(s) if s.code() == tonic::Code::InvalidArgument => Outcome::Poison(s.message().to_string()),
        Err(s) => Outcome::Retry(s.message().to_string()),
    }
}

/// The dead-letter copy of a message: same key, body and headers, plus where it came from
/// and why it was set aside.
fn dead_letter(d: &Delivery, reason: &str) -> Message {
    let mut m = d.message.clone();
    m.topic = topic::DLQ.to_string();
    m.header(header::DLQ_REASON, reason)
        .header(header::DLQ_TOPIC, d.message.topic.as_str())
        .header(header::DLQ_PARTITION, d.partition.to_string())
        .header(header::DLQ_OFFSET, d.offset.to_string())
}
