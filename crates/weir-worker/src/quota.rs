//! A worker's side of the fleet-wide limits ([`weir_core::quota`]): one token bucket
//! ([governor](https://docs.rs/governor)) per key, at the share the master last granted.
//!
//! The heartbeat reports, per key, the limit this worker is configured with, what it used
//! and whether its share held it back, and brings back the new share; a key used for the
//! first time wakes the heartbeat at once. A share is used only while it is valid (the
//! master's time-to-live from when it was asked for): a worker cut off from the master
//! stops rather than overrun a limit the others now share. A bucket whose share changes
//! starts empty, so no change of share adds a burst. A server's "wait until" is kept in the
//! bucket and reported, so every worker of the fleet holds back.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use weir_proto::convert;
use weir_proto::v1;

/// A key not used for this long is no longer named in heartbeats: its share goes back.
const IDLE: Duration = Duration::from_secs(60);

/// The buckets of one worker; cloned handles share them.
#[derive(Clone)]
pub struct Quotas {
    inner: Arc<Inner>,
}

struct Inner {
    /// Buckets at their whole limit, no master asked (a worker alone, unit tests).
    local: bool,
    buckets: Mutex<BTreeMap<String, Arc<Bucket>>>,
    /// Asks the heartbeat loop for a heartbeat now (a key needs its first share).
    wake: Notify,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::shared()
    }
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas").field("local", &self.inner.local).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// A token bucket of `per_minute` with `burst`, empty at the start when `empty`.
fn bucket(per_minute: f64, burst: u32, empty: bool) -> Option<Arc<DefaultDirectRateLimiter>> {
    if !(per_minute.is_finite() && per_minute > 0.0) {
        return None;
    }
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs_f64(60.0 / per_minute).max(Duration::from_nanos(1));
    let limiter = RateLimiter::direct(Quota::with_period(period)?.allow_burst(burst));
    if empty {
        let _ = limiter.check_n(burst);
    }
    Some(Arc::new(limiter))
}

impl Quotas {
    /// Shares from the master, over the heartbeat.
    pub fn shared() -> Quotas {
        Quotas::new(false)
    }

    /// Each bucket at its whole limit, for a worker that shares its limits with no one.
    pub fn local() -> Quotas {
        Quotas::new(true)
    }

    fn new(local: bool) -> Quotas {
        Quotas { inner: Arc::new(Inner { local, buckets: Mutex::default(), wake: Notify::new() }) }
    }

    /// The bucket of `key` at `per_minute` (0: none, unlimited) with `burst`.
    pub fn bucket(&self, key: &str, per_minute: u32, burst: u32) -> Option<Arc<Bucket>> {
        if per_minute == 0 {
            return None;
        }
        let mut buckets = lock(&self.inner.buckets);
        let b = buckets.entry(key.to_string()).or_insert_with(|| {
            let (per_minute, burst) = (f64::from(per_minute), burst.max(1));
            let limiter = if self.inner.local { bucket(per_minute, burst, false) } else { None };
            let (generation, _) = watch::channel(0);
            Arc::new(Bucket {
                key: key.to_string(),
                per_minute,
                burst,
                inner: Arc::downgrade(&self.inner),
                generation,
                state: Mutex::new(State {
                    limiter,
                    share: if self.inner.local { per_minute } else { 0.0 },
                    burst: if self.inner.local { burst } else { 0 },
                    valid_until: None,
                    fleet_hold: None,
                    own_hold: None,
                    used: 0,
                    saturated: false,
                    waiting: 0,
                    last_used: Instant::now(),
                    since: Instant::now(),
                }),
            })
        });
        Some(b.clone())
    }

    /// What the next heartbeat says: each recently used key's use since the last one.
    pub fn demands(&self) -> Vec<v1::QuotaDemand> {
        if self.inner.local {
            return vec![];
        }
        let now = Instant::now();
        let buckets = lock(&self.inner.buckets);
        let mut out = Vec::with_capacity(buckets.len());
        for b in buckets.values() {
            let mut s = lock(&b.state);
            if s.waiting == 0 && now.duration_since(s.last_used) > IDLE {
                // Unused: the share goes back, and the next use asks again.
                if s.limiter.take().is_some() {
                    s.share = 0.0;
                    s.valid_until = None;
                }
                continue;
            }
            let minutes = now.duration_since(s.since).as_secs_f64().max(0.001) / 60.0;
            let own_hold = s.own_hold.filter(|t| *t > SystemTime::now());
            out.push(v1::QuotaDemand {
                key: b.key.clone(),
                per_minute: b.per_minute,
                burst: b.burst,
                used_per_minute: s.used as f64 / minutes,
                saturated: s.saturated || s.waiting > 0,
                holding_per_minute: if s.valid_until.is_some_and(|t| t > now) { s.share } else { 0.0 },
                hold_until_ms: own_hold.map(ms).unwrap_or(0),
            });
            s.used = 0;
            s.saturated = false;
            s.since = now;
        }
        out
    }

    /// Takes the master's answer to a heartbeat sent at `asked`; true when a share is still
    /// growing (the heartbeat comes sooner).
    pub fn apply(&self, grants: &[v1::QuotaGrant], asked: Instant) -> bool {
        let buckets = lock(&self.inner.buckets);
        let mut growing = false;
        for g in grants {
            let Some(b) = buckets.get(&g.key) else { continue };
            let valid_for = g.valid_for.as_ref().and_then(|d| convert::from_duration("valid_for", d).ok());
            {
                let mut s = lock(&b.state);
                if (g.per_minute - s.share).abs() > f64::EPSILON || g.burst != s.burst || s.limiter.is_none() {
                    // A shared bucket starts empty and fills at its share: a full one would add
                    // its burst to what the others already spent of the fleet's (a holder that
                    // had the whole limit alone shrinks while the others start), and the
                    // fleet's requests would pass limit × t + burst.
                    s.limiter = bucket(g.per_minute, g.burst, true);
                    s.share = g.per_minute;
                    s.burst = g.burst;
                }
                s.valid_until = valid_for.map(|d| asked + d);
                s.fleet_hold = (g.hold_until_ms > 0)
                    .then(|| UNIX_EPOCH + Duration::from_millis(u64::try_from(g.hold_until_ms).unwrap_or(0)));
            }
            growing |= g.growing;
            b.generation.send_modify(|n| *n += 1);
        }
        growing
    }

    /// Resolves when a bucket waits for its first share.
    pub async fn woken(&self) {
        self.inner.wake.notified().await;
    }
}

/// One key's bucket, shared by every task of this worker that draws on it.
pub struct Bucket {
    key: String,
    per_minute: f64,
    burst: u32,
    inner: std::sync::Weak<Inner>,
    /// Bumped on every new share, so waiters look again.
    generation: watch::Sender<u64>,
    state: Mutex<State>,
}

struct State {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    share: f64,
    burst: u32,
    /// None: the local whole limit, or no share yet.
    valid_until: Option<Instant>,
    fleet_hold: Option<SystemTime>,
    own_hold: Option<SystemTime>,
    used: u64,
    saturated: bool,
    waiting: u32,
    last_used: Instant,
    since: Instant,
}

/// `acquire` was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl Bucket {
    /// The key, e.g. `api/shop`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits for a token: the hold, then a valid share, then the bucket.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Result<(), Cancelled> {
        let mut changed = self.generation.subscribe();
        loop {
            changed.borrow_and_update();
            let (limiter, hold) = {
                let mut s = lock(&self.state);
                s.last_used = Instant::now();
                let hold = [s.fleet_hold, s.own_hold].into_iter().flatten().max();
                let valid = s.valid_until.is_none_or(|t| t > Instant::now());
                let limiter = s.limiter.clone().filter(|_| valid);
                if limiter.is_none() {
                    s.waiting += 1;
                }
                (limiter, hold.and_then(|t| t.duration_since(SystemTime::now()).ok()))
            };
            if let Some(wait) = hold {
                if limiter.is_none() {
                    lock(&self.state).waiting -= 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = cancel.cancelled() => return Err(Cancelled),
                }
            }
            let Some(limiter) = limiter else {
                if let Some(inner) = self.inner.upgrade() {
                    inner.wake.notify_one();
                }
                let r = tokio::select! {
                    _ = changed.changed() => Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => Ok(()),
                    _ = cancel.cancelled() => Err(Cancelled),
                };
                lock(&self.state).waiting -= 1;
                r?;
                continue;
            };
            if limiter.check().is_ok() {
                lock(&self.state).used += 1;
                return Ok(());
            }
            lock(&self.state).saturated = true;
            tokio::select! {
                _ = limiter.until_ready() => {
                    lock(&self.state).used += 1;
                    return Ok(());
                }
                _ = changed.changed() => continue,
                _ = cancel.cancelled() => return Err(Cancelled),
            }
        }
    }

    /// The server said to wait until `until`: this worker and, through the master, every other.
    pub fn hold(&self, until: SystemTime) {
        let mut s = lock(&self.state);
        if s.own_hold.is_none_or(|t| t < until) {
            s.own_hold = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(key: &str, per_minute: f64, burst: u32) -> v1::QuotaGrant {
        v1::QuotaGrant {
            key: key.into(),
            per_minute,
            burst,
            hold_until_ms: 0,
            valid_for: Some(convert::duration(Duration::from_secs(15))),
            growing: false,
        }
    }

    #[tokio::test]
    async fn a_bucket_waits_for_its_share_then_keeps_to_it() {
        let q = Quotas::shared();
        let b = q.bucket("api/a", 600, 10).expect("bucket");
        let cancel = CancellationToken::new();
        let waiter = {
            let (b, c) = (b.clone(), cancel.clone());
            tokio::spawn(async move { b.acquire(&c).await })
        };
        tokio::time::timeout(Duration::from_secs(1), q.woken()).await.expect("the heartbeat is woken");
        let d = q.demands();
        assert_eq!((d.len(), d[0].saturated, d[0].per_minute), (1, true, 600.0));
        q.apply(&[grant("api/a", 60.0, 2)], Instant::now());
        waiter.await.expect("join").expect("a token once the share came");
        assert!(b.acquire(&cancel).await.is_ok(), "the burst of two");
        let start = Instant::now();
        b.acquire(&cancel).await.expect("third");
        assert!(start.elapsed() >= Duration::from_millis(500), "one a second beyond the burst");
        assert_eq!(q.demands()[0].holding_per_minute, 60.0);
    }

    #[tokio::test]
    async fn an_expired_share_is_not_used_and_a_hold_is_reported() {
        let q = Quotas::shared();
        let b = q.bucket("api/a", 600, 10).expect("bucket");
        q.apply(&[grant("api/a", 600.0, 10)], Instant::now() - Duration::from_secs(16));
        let cancel = CancellationToken::new();
        let r = tokio::time::timeout(Duration::from_millis(300), b.acquire(&cancel)).await;
        assert!(r.is_err(), "a share past its time is not used");
        let until = SystemTime::now() + Duration::from_secs(5);
        b.hold(until);
        let d = q.demands();
        assert_eq!(d[0].hold_until_ms, ms(until));
        assert_eq!(d[0].holding_per_minute, 0.0);
    }

    #[tokio::test]
    async fn local_buckets_need_no_master_and_zero_is_unlimited() {
        let q = Quotas::local();
        assert!(q.bucket("api/a", 0, 10).is_none());
        let b = q.bucket("api/a", 60, 3).expect("bucket");
        let cancel = CancellationToken::new();
        for _ in 0..3 {
            b.acquire(&cancel).await.expect("the burst");
        }
        assert!(q.demands().is_empty());
    }
}
