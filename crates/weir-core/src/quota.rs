//! Fleet-wide rate limits: one limit shared by every worker that draws on it, divided into
//! shares that the master hands each worker over the heartbeat.
//!
//! Each worker says, per key (an API), the limit it is configured with, what it used since
//! its last heartbeat and whether its share held it back. The master divides the limit
//! max-min fairly over the live holders: a holder that uses little gets what it uses with
//! headroom, the saturated ones split the rest, and what nobody needs is spread over all.
//! Grants never add up to more than the limit: a holder's share grows only into what the
//! others have already given back (they give it back at their own next heartbeat), and a
//! master that has just started hands out nothing beyond what the workers say they hold
//! until every holder of the previous master has had time to report. A holder silent for
//! the time-to-live is dropped, so a dead worker's share comes back within one heartbeat
//! timeout; a worker stops using a share it could not renew within the same time. The burst
//! is divided in proportion to the shares. With every worker's bucket at most its share and
//! its part of the burst, the requests of all workers in any window of `t` minutes stay
//! within `limit × t + burst`.

use std::collections::BTreeMap;

use crate::Millis;

/// A holder that used this fraction of its share or less is given its use plus headroom.
const HEADROOM: f64 = 1.25;
/// A share changes only when it moves by more than this fraction of the limit, so a
/// worker's bucket is not rebuilt for noise.
const HYSTERESIS: f64 = 0.02;

/// A worker's use of one shared limit (one heartbeat's worth).
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    pub key: String,
    /// The limit as this worker is configured; the smallest across holders holds.
    pub per_minute: f64,
    pub burst: u32,
    /// Used per minute since its last heartbeat.
    pub used_per_minute: f64,
    /// Its share held it back.
    pub saturated: bool,
    /// The share it holds now (0 if none).
    pub holding_per_minute: f64,
    /// The server said to wait until then, for everyone.
    pub hold_until: Option<Millis>,
}

/// A worker's share of one limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub key: String,
    pub per_minute: f64,
    pub burst: u32,
    pub hold_until: Option<Millis>,
    /// Smaller than its fair share until others give theirs back: ask again soon.
    pub growing: bool,
}

/// One limit as the master sees it, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaView {
    pub key: String,
    pub per_minute: f64,
    pub burst: u32,
    pub hold_until: Option<Millis>,
    /// (worker, share per minute, burst, used per minute, saturated), by worker.
    pub shares: Vec<(String, f64, u32, f64, bool)>,
}

#[derive(Debug, Clone)]
struct Holder {
    per_minute: f64,
    burst: u32,
    used: f64,
    saturated: bool,
    granted: f64,
    seen: Millis,
}

#[derive(Debug, Default, Clone)]
struct Pool {
    holders: BTreeMap<String, Holder>,
    hold_until: Option<Millis>,
}

impl Pool {
    /// The limit in force: the smallest any live holder is configured with.
    fn limit(&self) -> (f64, u32) {
        let per_minute = self.holders.values().map(|h| h.per_minute).fold(f64::INFINITY, f64::min);
        let burst = self.holders.values().map(|h| h.burst).min().unwrap_or(0);
        (if per_minute.is_finite() { per_minute } else { 0.0 }, burst)
    }

    /// Each holder's fair share (adding up to the limit), by water-filling over what they want.
    fn targets(&self, limit: f64) -> BTreeMap<&str, f64> {
        let n = self.holders.len().max(1) as f64;
        let mut wants: Vec<(&str, f64)> = self
            .holders
            .iter()
            .map(|(w, h)| {
                let want = if h.saturated { f64::INFINITY } else { (h.used * HEADROOM).max(limit / (10.0 * n)) };
                (w.as_str(), want)
            })
            .collect();
        wants.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (mut left, mut out) = (limit, BTreeMap::new());
        let count = wants.len();
        for (i, (w, want)) in wants.into_iter().enumerate() {
            let give = want.min(left / (count - i) as f64);
            left -= give;
            out.insert(w, give);
        }
        // What nobody wants now is spread over all, so a holder can grow before it asks.
        if left > 0.0 {
            for v in out.values_mut() {
                *v += left / n;
            }
        }
        out
    }
}

fn burst_of(share: f64, limit: f64, burst: u32) -> u32 {
    if limit <= 0.0 || share <= 0.0 {
        return 0;
    }
    ((f64::from(burst) * share / limit).floor() as u32).max(1)
}

/// The master's table of shared limits (soft state, rebuilt from heartbeats after a restart).
#[derive(Debug, Clone)]
pub struct Quotas {
    pools: BTreeMap<String, Pool>,
    /// Until then, a share grows no further than what its worker says it holds.
    warm_until: Millis,
}

impl Quotas {
    /// A table on a master that starts leading at `now` and, for `warm` (a share's
    /// lifetime, when there may have been a leader before), hands out no more than the
    /// workers say they hold.
    pub fn new(now: Millis, warm: Millis) -> Quotas {
        Quotas { pools: BTreeMap::new(), warm_until: now + warm }
    }

    /// Drops holders silent since `now - ttl`, and empty pools.
    fn prune(&mut self, now: Millis, ttl: Millis) {
        for p in self.pools.values_mut() {
            p.holders.retain(|_, h| h.seen >= now - ttl);
            if p.hold_until.is_some_and(|t| t <= now) {
                p.hold_until = None;
            }
        }
        self.pools.retain(|_, p| !p.holders.is_empty());
    }

    /// A worker's heartbeat: records its demands, drops its shares of keys it no longer
    /// names, and answers each demand with its share.
    pub fn heartbeat(&mut self, worker: &str, demands: &[Demand], now: Millis, ttl: Millis) -> Vec<Grant> {
        self.prune(now, ttl);
        for (key, p) in self.pools.iter_mut() {
            if !demands.iter().any(|d| &d.key == key) {
                p.holders.remove(worker);
            }
        }
        self.pools.retain(|_, p| !p.holders.is_empty());
        let warm = now < self.warm_until;
        let mut grants = Vec::with_capacity(demands.len());
        for d in demands {
            let pool = self.pools.entry(d.key.clone()).or_default();
            let known = pool.holders.get(worker).map(|h| h.granted);
            // A worker new to this master holds what the previous one gave it.
            let granted = known.unwrap_or(d.holding_per_minute.max(0.0));
            pool.holders.insert(
                worker.to_string(),
                Holder {
                    per_minute: d.per_minute.max(0.0),
                    burst: d.burst,
                    used: d.used_per_minute.max(0.0),
                    saturated: d.saturated,
                    granted,
                    seen: now,
                },
            );
            if let Some(t) = d.hold_until.filter(|t| *t > now) {
                pool.hold_until = Some(pool.hold_until.map_or(t, |h| h.max(t)));
            }
            let (limit, burst) = pool.limit();
            let target = pool.targets(limit).get(worker).copied().unwrap_or(0.0);
            let others: f64 = pool.holders.iter().filter(|(w, _)| w.as_str() != worker).map(|(_, h)| h.granted).sum();
            let mut room = (limit - others).max(0.0);
            if warm {
                room = room.min(granted);
            }
            let mut share = target.min(room);
            if (share - granted).abs() <= limit * HYSTERESIS && granted <= room {
                share = granted;
            }
            if let Some(h) = pool.holders.get_mut(worker) {
                h.granted = share;
            }
            grants.push(Grant {
                key: d.key.clone(),
                per_minute: share,
                burst: burst_of(share, limit, burst),
                hold_until: pool.hold_until,
                growing: share + limit * HYSTERESIS < target,
            });
        }
        grants
    }

    /// A worker said goodbye: its shares are free at once.
    pub fn forget(&mut self, worker: &str) {
        for p in self.pools.values_mut() {
            p.holders.remove(worker);
        }
        self.pools.retain(|_, p| !p.holders.is_empty());
    }

    /// Every limit and its live holders' shares.
    pub fn view(&mut self, now: Millis, ttl: Millis) -> Vec<QuotaView> {
        self.prune(now, ttl);
        self.pools
            .iter()
            .map(|(key, p)| {
                let (limit, burst) = p.limit();
                QuotaView {
                    key: key.clone(),
                    per_minute: limit,
                    burst,
                    hold_until: p.hold_until,
                    shares: p
                        .holders
                        .iter()
                        .map(|(w, h)| (w.clone(), h.granted, burst_of(h.granted, limit, burst), h.used, h.saturated))
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Millis = 15_000;

    fn busy(key: &str, limit: f64, holding: f64) -> Demand {
        Demand {
            key: key.into(),
            per_minute: limit,
            burst: 30,
            used_per_minute: holding,
            saturated: true,
            holding_per_minute: holding,
            hold_until: None,
        }
    }

    fn total(q: &mut Quotas, now: Millis) -> f64 {
        q.view(now, TTL).iter().flat_map(|v| v.shares.iter().map(|s| s.1)).sum()
    }

    /// Heartbeats of `workers`, each saturated at what it holds, `rounds` times.
    fn rounds(q: &mut Quotas, workers: &[&str], held: &mut BTreeMap<String, f64>, now: &mut Millis, n: usize) {
        for _ in 0..n {
            for w in workers {
                *now += 1000;
                let g = q.heartbeat(w, &[busy("api/a", 600.0, held.get(*w).copied().unwrap_or(0.0))], *now, TTL);
                held.insert(w.to_string(), g[0].per_minute);
                assert!(total(q, *now) <= 600.0 + 1e-6, "over the limit: {held:?}");
            }
        }
    }

    #[test]
    fn busy_workers_share_the_limit_evenly_and_never_together_exceed_it() {
        let mut q = Quotas::new(0, TTL);
        let (mut now, mut held) = (TTL, BTreeMap::new());
        rounds(&mut q, &["a"], &mut held, &mut now, 1);
        assert_eq!(held["a"], 600.0, "alone, a worker has it all");
        rounds(&mut q, &["a", "b", "c"], &mut held, &mut now, 3);
        for w in ["a", "b", "c"] {
            assert!((held[w] - 200.0).abs() < 600.0 * HYSTERESIS + 1e-6, "{held:?}");
        }
        let bursts: u32 = q.view(now, TTL)[0].shares.iter().map(|s| s.2).sum();
        assert!(bursts <= 30, "bursts {bursts}");
    }

    #[test]
    fn a_light_user_keeps_what_it_uses_and_the_busy_ones_split_the_rest() {
        let mut q = Quotas::new(0, TTL);
        let mut now = TTL;
        let light = |used: f64, holding: f64| Demand {
            saturated: false,
            used_per_minute: used,
            ..busy("api/a", 600.0, holding)
        };
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..4 {
            now += 1000;
            a = q.heartbeat("a", &[light(40.0, a)], now, TTL)[0].per_minute;
            b = q.heartbeat("b", &[busy("api/a", 600.0, b)], now, TTL)[0].per_minute;
        }
        assert!((a - 50.0).abs() < 1e-6 && (b - 550.0).abs() < 1e-6, "a {a}, b {b}");
    }

    #[test]
    fn a_silent_workers_share_comes_back_after_the_ttl_and_a_goodbye_at_once() {
        let mut q = Quotas::new(0, TTL);
        let (mut now, mut held) = (TTL, BTreeMap::new());
        rounds(&mut q, &["a", "b", "c"], &mut held, &mut now, 3);
        // c falls silent: a and b reach the whole limit once its entry expires.
        let silent_since = now;
        rounds(&mut q, &["a", "b"], &mut held, &mut now, 6);
        assert!(now - silent_since < TTL, "still within the TTL");
        assert!(held["a"] + held["b"] <= 600.0 - held["c"] + 1e-6);
        rounds(&mut q, &["a", "b"], &mut held, &mut now, 6);
        assert!(now - silent_since > TTL);
        assert!((held["a"] + held["b"] - 600.0).abs() < 1e-6, "{held:?}");
        assert_eq!(q.view(now, TTL)[0].shares.len(), 2);
        q.forget("b");
        rounds(&mut q, &["a"], &mut held, &mut now, 1);
        assert_eq!(held["a"], 600.0);
    }

    #[test]
    fn a_new_master_hands_out_no_more_than_workers_hold_until_all_have_reported() {
        let mut q = Quotas::new(0, TTL);
        // a and b each hold 300 from the previous master; a reports first.
        let a = q.heartbeat("a", &[busy("api/a", 600.0, 300.0)], 1000, TTL)[0].per_minute;
        assert_eq!(a, 300.0, "no growth while b has not reported");
        let c = q.heartbeat("c", &[busy("api/a", 600.0, 0.0)], 1500, TTL)[0].clone();
        assert_eq!((c.per_minute, c.growing), (0.0, true));
        let b = q.heartbeat("b", &[busy("api/a", 600.0, 300.0)], 2000, TTL)[0].per_minute;
        assert_eq!(b, 200.0, "b gives back down to its fair share at once");
        // After the warm-up, shares move to a third each as a and b give back.
        let (mut now, mut held) = (TTL, BTreeMap::from([("a".into(), a), ("b".into(), b), ("c".into(), 0.0)]));
        rounds(&mut q, &["a", "b", "c"], &mut held, &mut now, 3);
        assert!(held.values().all(|v| (v - 200.0).abs() < 600.0 * HYSTERESIS + 1e-6), "{held:?}");
    }

    #[test]
    fn the_smallest_configured_limit_holds_and_a_hold_reaches_every_worker() {
        let mut q = Quotas::new(0, TTL);
        q.heartbeat("a", &[busy("api/a", 600.0, 0.0)], TTL, TTL);
        let held = Demand { hold_until: Some(TTL + 5000), ..busy("api/a", 300.0, 0.0) };
        q.heartbeat("b", &[held], TTL + 10, TTL);
        let g = q.heartbeat("a", &[busy("api/a", 600.0, 600.0)], TTL + 20, TTL);
        assert_eq!(g[0].hold_until, Some(TTL + 5000));
        assert_eq!(q.view(TTL + 20, TTL)[0].per_minute, 300.0);
        assert!(total(&mut q, TTL + 20) <= 300.0 + 1e-6);
        let g = q.heartbeat("a", &[busy("api/a", 600.0, 300.0)], TTL + 6000, TTL);
        assert_eq!(g[0].hold_until, None, "a hold ends");
    }

    #[test]
    fn a_key_no_longer_named_is_given_back() {
        let mut q = Quotas::new(0, TTL);
        q.heartbeat("a", &[busy("api/a", 600.0, 0.0), busy("api/b", 60.0, 0.0)], TTL, TTL);
        q.heartbeat("a", &[busy("api/b", 60.0, 60.0)], TTL + 1, TTL);
        let keys: Vec<String> = q.view(TTL + 1, TTL).into_iter().map(|v| v.key).collect();
        assert_eq!(keys, ["api/b"]);
    }
}
