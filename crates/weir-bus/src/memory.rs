//! An in-process bus for the one-command mode: topics with partitions, keyed placement,
//! consumer groups with committed offsets. It lives as long as the process (the store is
//! what is durable; the relay starts at the newest event when the process starts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Bus, BusError, Delivery, Message, Subscription, TopicSpec};

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<Vec<Message>>>,
    /// Committed offset (next to read) per (group, topic, partition).
    committed: HashMap<(String, String, i32), i64>,
}

/// See the module docs.
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    /// Bumped on every publish, to wake subscribers.
    published: watch::Sender<u64>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus { state: Arc::default(), published: watch::channel(0).0 }
    }
}

impl MemoryBus {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The partition of a key: the same key always lands on the same partition.
pub(crate) fn partition_of(key: Option<&[u8]>, partitions: usize, round_robin: u64) -> usize {
    let n = partitions.max(1) as u64;
    let h = match key {
        // FNV-1a: stable across processes and versions.
        Some(k) => k.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)),
        None => round_robin,
    };
    (h % n) as usize
}

#[async_trait]
impl Bus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let mut s = self.lock();
        for t in topics {
            if t.partitions < 1 {
                return Err(BusError::Config(format!("topic {} needs at least one partition", t.name)));
            }
            s.topics.entry(t.name.clone()).or_insert_with(|| vec![Vec::new(); t.partitions as usize]);
        }
        Ok(())
    }

    async fn publish(&self, batch: &[Message]) -> Result<(), BusError> {
        {
            let mut s = self.lock();
            if let Some(m) = batch.iter().find(|m| !s.topics.contains_key(&m.topic)) {
                return Err(BusError::UnknownTopic(m.topic.clone()));
            }
            for (i, m) in batch.iter().enumerate() {
                if let Some(parts) = s.topics.get_mut(&m.topic) {
                    let p = partition_of(m.key.as_deref(), parts.len(), i as u64);
                    parts[p].push(m.clone());
                }
            }
        }
        self.published.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>, BusError> {
        let s = self.lock();
        let mut positions = Vec::new();
        for t in topics {
            let parts = s.topics.get(*t).ok_or_else(|| BusError::UnknownTopic(t.to_string()))?;
            for p in 0..parts.len() as i32 {
                let at = s.committed.get(&(group.to_string(), t.to_string(), p)).copied().unwrap_or(0);
                positions.push((t.to_string(), p, at));
            }
        }
        Ok(Box::new(MemorySubscription {
            bus: self.clone(),
            group: group.to_string(),
            positions,
            next_slot: 0,
            wake: self.published.subscribe(),
        }))
    }
}

struct MemorySubscription {
    bus: MemoryBus,
    group: String,
    /// (topic, partition, next offset to read).
    positions: Vec<(String, i32, i64)>,
    /// Where the round-robin over partitions goes on, so none starves.
    next_slot: usize,
    wake: watch::Receiver<u64>,
}

impl MemorySubscription {
    fn poll(&mut self) -> Option<Delivery> {
        let s = self.bus.lock();
        let n = self.positions.len();
        for i in 0..n {
            let slot = (self.next_slot + i) % n;
            let (topic, p, at) = &mut self.positions[slot];
            let msg = s.topics.get(topic.as_str()).and_then(|parts| parts.get(*p as usize)?.get(*at as usize));
            if let Some(m) = msg {
                let d = Delivery { message: m.clone(), partition: *p, offset: *at };
                *at += 1;
                self.next_slot = (slot + 1) % n;
                return Some(d);
            }
        }
        None
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Mark the current version seen before looking, so a publish in between wakes us.
            self.wake.borrow_and_update();
            if let Some(d) = self.poll() {
                return Ok(d);
            }
            self.wake.changed().await.map_err(|_| BusError::Unavailable("the in-process bus was dropped".into()))?;
        }
    }

    async fn commit(&mut self, d: &Delivery) -> Result<(), BusError> {
        let mut s = self.bus.lock();
        let key = (self.group.clone(), d.message.topic.clone(), d.partition);
        let at = s.committed.entry(key).or_insert(0);
        *at = (*at).max(d.offset + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_on_the_same_partition() {
        let p = partition_of(Some(b"job-1"), 6, 0);
        assert!((0..100).all(|i| partition_of(Some(b"job-1"), 6, i) == p));
        let spread: std::collections::HashSet<usize> =
            (0..100).map(|i| partition_of(Some(format!("job-{i}").as_bytes()), 6, 0)).collect();
        assert!(spread.len() > 3, "keys spread over partitions: {spread:?}");
    }
}
