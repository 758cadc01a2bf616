//! The outbox relay: publishes committed events to the bus, in commit order.
//!
//! Two tables are the outbox: `weir_events` (job histories) and `weir_messages` (events
//! outside any job, such as worker status), each with its own relay position. The
//! scheduler writes each event in the transaction of the change it reports. The relay (running only on the leading master, so two replicas do
//! not both publish) reads what was committed after its position, publishes the batch,
//! waits for every acknowledgement, then stores the new position (fenced by the leader
//! epoch). If the bus is down, it retries the same batch with backoff while the master
//! keeps working and events pile up durably; they go out in order once it is back. A
//! crash between publish and position update re-publishes a batch with the same event
//! ids, which consumers de-duplicate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use weir_bus::{Bus, Message, TopicSpec};
use weir_core::events::{self, header, CONTENT_TYPE};
use weir_core::model::OutboxEvent;
use weir_store::{Store, StoreError};

use crate::scheduler::EventBatch;

/// The bus message of one committed event.
pub fn message(o: &OutboxEvent) -> Message {
    to_bus(events::job_event(o))
}

fn to_bus(out: events::Outgoing) -> Message {
    let mut m = Message::new(out.topic, &out.key, out.event.encode()).header(header::CONTENT_TYPE, CONTENT_TYPE);
    if let Some(tp) = out.traceparent {
        m = m.header(header::TRACEPARENT, tp);
    }
    m
}

/// The topics Weir creates at start, with the configured layout.
pub fn topic_specs(partitions: i32, replication: i32) -> Vec<TopicSpec> {
    events::topic::ALL.iter().map(|t| TopicSpec { name: t.to_string(), partitions, replication }).collect()
}

/// Settings of a relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most events per publish.
    pub batch: u32,
    pub topics: Vec<TopicSpec>,
}

/// Where the relay stands in its two sources: job events and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    events: i64,
    messages: i64,
}

/// Runs until `cancel` fires. Returns an error only if leadership was lost.
pub async fn run(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    epoch: i64,
    settings: RelaySettings,
    mut wake: broadcast::Receiver<EventBatch>,
    cancel: CancellationToken,
) -> Result<(), StoreError> {
    // The in-process bus lives and dies with the process, so its position is not kept.
    let durable = bus.kind() != "memory";
    let names = Names::of(bus.kind());
    let Some(mut pos) = retry(&cancel, "read the relay position", || start_position(&*store, &names, durable)).await
    else {
        return Ok(());
    };
    if durable {
        store.set_relay_position(epoch, &names.events, pos.events).await?;
        store.set_relay_position(epoch, &names.messages, pos.messages).await?;
    }
    if retry(&cancel, "create topics", || bus.ensure_topics(&settings.topics)).await.is_none() {
        return Ok(());
    }
    tracing::info!(bus = bus.kind(), events = pos.events, messages = pos.messages, "event relay running");
    loop {
        let read = tokio::select! {
            r = read_batch(&*store, pos, settings.batch) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        let Read { batch, next, oldest, more } = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot read the outbox; retrying");
                if pause(&cancel, Duration::from_millis(500)).await {
                    return Ok(());
                }
                continue;
            }
        };
        let metrics = &crate::metrics::MASTER;
        if batch.is_empty() {
            metrics.relay_lag.set(0.0);
            metrics.outbox_backlog.set(0);
            // Nothing new: wait for the next commit (or a second, in case a wake was missed).
            tokio::select! {
                _ = wake.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return Ok(()),
            }
            continue;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                r = bus.publish(&batch) => r,
                _ = cancel.cancelled() => return Ok(()),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), "publish failed; events stay queued in the outbox");
                    // A broker that came back empty (or a topic deleted by hand) needs the
                    // topics again; creating existing ones is a no-op.
                    if let Err(e) = bus.ensure_topics(&settings.topics).await {
                        tracing::debug!(error = %e, "topics not ensured yet");
                    }
                    if pause(&cancel, delay).await {
                        return Ok(());
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if durable {
            for (name, old, new) in
                [(&names.events, pos.events, next.events), (&names.messages, pos.messages, next.messages)]
            {
                if new == old {
                    continue;
                }
                match store.set_relay_position(epoch, name, new).await {
                    Ok(()) => {}
                    Err(e @ StoreError::Fenced { .. }) => return Err(e),
                    // Not fatal: after a restart this batch is published again, with the same ids.
                    Err(e) => tracing::warn!(error = %e, "cannot store the relay position"),
                }
            }
        }
        metrics.relay_published.inc_by(batch.len() as u64);
        if let Some(at) = oldest {
            metrics.relay_lag.set((crate::now_ms() - at).max(0) as f64 / 1000.0);
        }
        // A page that was not full held every event there was: only after a full one is the
        // store asked how many wait.
        if !more {
            metrics.outbox_backlog.set(0);
        } else if let Ok(tail) = store.outbox_tail().await {
            metrics.outbox_backlog.set((tail - next.events).max(0));
        }
        pos = next;
    }
}

/// The relay position names of one bus.
struct Names {
    events: String,
    messages: String,
}

/// The suffix that tells a bus's messages position from its events position.
const MESSAGES_SUFFIX: &str = ":messages";

impl Names {
    fn of(kind: &str) -> Names {
        Names { events: kind.to_string(), messages: format!("{kind}{MESSAGES_SUFFIX}") }
    }
}

/// How far every relay that ever ran on this store has published, as (job events,
/// messages): what the retention purge may delete is at or behind both. `None` where no
/// relay keeps a position (no durable bus ever ran): nothing waits to be published, and a
/// first relay starts at the tail.
pub(crate) fn published(positions: &[(String, i64)]) -> (Option<i64>, Option<i64>) {
    let lowest = |messages: bool| {
        positions.iter().filter(|(name, _)| name.ends_with(MESSAGES_SUFFIX) == messages).map(|(_, p)| *p).min()
    };
    (lowest(false), lowest(true))
}

/// The next batch from both sources, and the position after it.
/// What the relay read: the batch, where it will stand after it, when the batch's oldest
/// event was committed, and whether job events were left behind it (a full page).
struct Read {
    batch: Vec<Message>,
    next: Position,
    oldest: Option<weir_core::Millis>,
    more: bool,
}

async fn read_batch(store: &dyn Store, pos: Position, limit: u32) -> Result<Read, StoreError> {
    let events = store.outbox_after(pos.events, limit).await?;
    let messages = store.messages_after(pos.messages, limit).await?;
    let oldest = events.iter().map(|e| e.event.time_ms).chain(messages.iter().map(|(_, m)| m.time_ms)).min();
    let more = events.len() as u64 >= u64::from(limit);
    let next = Position {
        events: events.last().map_or(pos.events, |e| e.id),
        messages: messages.last().map_or(pos.messages, |m| m.0),
    };
    let mut batch: Vec<Message> = events.iter().map(message).collect();
    batch.extend(messages.iter().map(|(id, m)| to_bus(events::message_event(*id, m))));
    Ok(Read { batch, next, oldest, more })
}

async fn start_position(store: &dyn Store, names: &Names, durable: bool) -> Result<Position, StoreError> {
    let (e, m) = if durable {
        (store.relay_position(&names.events).await?, store.relay_position(&names.messages).await?)
    } else {
        (None, None)
    };
    // First start on this bus (or an in-process one): from now on, not the whole history.
    Ok(Position {
        events: match e {
            Some(p) => p,
            None => store.outbox_tail().await?,
        },
        messages: match m {
            Some(p) => p,
            None => store.messages_tail().await?,
        },
    })
}

/// Sleeps; true if cancelled meanwhile.
pub(crate) async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}

/// Runs `f` until it succeeds, backing off; `None` if cancelled first.
async fn retry<T, E: std::fmt::Display, F, Fut>(cancel: &CancellationToken, what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, "relay cannot {what} yet; retrying"),
        }
        if pause(cancel, delay).await {
            return None;
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_waits_for_the_slowest_relay_of_each_source() {
        assert_eq!(published(&[]), (None, None));
        let names = Names::of("kafka");
        let positions = vec![
            (names.events.clone(), 90),
            (names.messages.clone(), 7),
            (Names::of("kafka-eu").events, 40),
            (Names::of("kafka-eu").messages, 12),
        ];
        assert_eq!(published(&positions), (Some(40), Some(7)));
        assert_eq!(published(&positions[..1]), (Some(90), None));
    }
}
