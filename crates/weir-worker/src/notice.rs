//! Status changes a worker saw (an API's circuit opening), carried to the master on the
//! next heartbeat, which publishes them through its outbox. A heartbeat that fails keeps
//! them for the next one; at most [`MAX_PENDING`] wait, the oldest dropped beyond.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use weir_proto::v1;

/// Most notices waiting for a heartbeat.
pub const MAX_PENDING: usize = 1000;

/// A worker's notices; cloned handles share them.
#[derive(Clone, Default, Debug)]
pub struct Notices {
    pending: Arc<Mutex<Vec<v1::WorkerNotice>>>,
}

impl Notices {
    /// Queues a notice of `kind` about `subject`, with `data` (a JSON object) at `time_ms`.
    pub fn push(&self, kind: &str, subject: &str, data: Value, time_ms: i64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING {
            tracing::warn!(kind, subject, "too many notices waiting for a heartbeat; dropping the oldest");
            p.remove(0);
        }
        p.push(v1::WorkerNotice { r#type: kind.into(), subject: subject.into(), data_json: data.to_string(), time_ms });
    }

    /// Takes what waits, for a heartbeat.
    pub fn take(&self) -> Vec<v1::WorkerNotice> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back what a failed heartbeat carried, before anything newer.
    pub fn put_back(&self, mut notices: Vec<v1::WorkerNotice>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        notices.append(&mut p);
        let over = notices.len().saturating_sub(MAX_PENDING);
        notices.drain(..over);
        *p = notices;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_wait_in_order_and_come_back_after_a_failed_heartbeat() {
        let n = Notices::default();
        n.push("a", "x", serde_json::json!({}), 1);
        let first = n.take();
        n.push("b", "x", serde_json::json!({}), 2);
        n.put_back(first);
        let kinds: Vec<String> = n.take().into_iter().map(|m| m.r#type).collect();
        assert_eq!(kinds, ["a", "b"]);
        for i in 0..MAX_PENDING + 5 {
            n.push("c", "x", serde_json::json!({}), i as i64);
        }
        let all = n.take();
        assert_eq!((all.len(), all[0].time_ms), (MAX_PENDING, 5));
    }
}
