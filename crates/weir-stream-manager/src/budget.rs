//! One memory budget per manager, shared by its streams and counted in bytes of buffered
//! records. Past the pause mark (80 % by default) a stream that holds records flushes
//! them early, and one that holds none stops fetching until the others' flushes bring the
//! budget back under the mark: backpressure, nothing dropped (unless the stream opted
//! into `drop_oldest`). The source clients' own prefetch is sized from the budget too
//! ([`Budget::client_share`]), so consumer lag never becomes memory.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The platform's default budget: 1 GiB.
pub const DEFAULT_BUDGET: u64 = 1 << 30;
/// The share of the budget past which streams stop fetching.
pub const PAUSE_PERCENT: u64 = 80;
/// The platform's default most concurrent streams per manager.
pub const DEFAULT_MAX_STREAMS: usize = 100;
/// The share of the budget the source clients' prefetch queues may hold, in all.
const CLIENT_PERCENT: u64 = 20;

/// A manager's memory budget.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    max_streams: usize,
    used: AtomicU64,
    peak: AtomicU64,
    freed: Notify,
}

impl Budget {
    pub fn new(limit: u64, max_streams: usize) -> Budget {
        Budget {
            limit,
            max_streams: max_streams.max(1),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes buffered now, and the most ever buffered at once.
    pub fn used(&self) -> (u64, u64) {
        (self.used.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }

    /// The mark past which streams stop fetching.
    pub fn pause_mark(&self) -> u64 {
        self.limit / 100 * PAUSE_PERCENT
    }

    /// Whether buffering is past the pause mark.
    pub fn pressed(&self) -> bool {
        self.used.load(Ordering::Relaxed) >= self.pause_mark()
    }

    /// Counts `n` more bytes buffered.
    pub fn take(&self, n: u64) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts `n` bytes flushed or dropped, waking streams waiting for room.
    pub fn give(&self, n: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n)));
        self.freed.notify_waiters();
    }

    /// Waits until buffering is back under the pause mark.
    pub async fn relieved(&self) {
        loop {
            let freed = self.freed.notified();
            if !self.pressed() {
                return;
            }
            // A give() between the check and the wait is not missed: `notified` was
            // created first. The timeout covers a budget freed by a dropped stream.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), freed).await;
        }
    }

    /// What one stream's source client may prefetch, in bytes: the clients' share of the
    /// budget split over the most streams a manager runs, at least 1 MiB.
    pub fn client_share(&self) -> u64 {
        (self.limit / 100 * CLIENT_PERCENT / self.max_streams as u64).max(1 << 20)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_BUDGET, DEFAULT_MAX_STREAMS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_mark_a_stream_waits_until_another_frees_room() {
        let b = std::sync::Arc::new(Budget::new(1000, 2));
        b.take(700);
        assert!(!b.pressed());
        b.take(100);
        assert!(b.pressed(), "800 of 1000 is the 80 % mark");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.relieved().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still past the mark");
        b.give(300);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.expect("woken").expect("joined");
        assert_eq!(b.used(), (500, 800));
        assert_eq!(Budget::new(1 << 30, 100).client_share(), (1 << 30) / 100 * 20 / 100);
    }
}
