//! How often one caller may do something: a token bucket per key (governor's keyed
//! limiter) — submissions per subject, so one runaway script cannot crowd out a team;
//! recorded refusals per peer address.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The platform's default: 100 submissions per minute per subject.
pub const DEFAULT_SUBMISSION_LIMIT: &str = "100/min";

/// Calls per key (a subject, a peer address).
pub struct KeyedLimits {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl KeyedLimits {
    /// `n` per `per`, with a burst of `n`.
    pub fn new(n: NonZeroU32, per: Duration) -> Result<KeyedLimits, String> {
        let quota = Quota::with_period(per / n.get())
            .ok_or_else(|| format!("limit {n} per {per:?} is too fine"))?
            .allow_burst(n);
        Ok(KeyedLimits {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// Parses `N/s`, `N/min` or `N/h` (e.g. `100/min`), naming what is wrong.
    pub fn parse(s: &str) -> Result<KeyedLimits, String> {
        let (n, unit) = s.split_once('/').ok_or_else(|| format!("limit {s:?} must look like 100/min"))?;
        let n: u32 = n.trim().parse().map_err(|_| format!("limit {s:?}: {n:?} is not a whole number"))?;
        let n = NonZeroU32::new(n).ok_or_else(|| format!("limit {s:?} must be at least 1"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            u => return Err(format!("limit {s:?}: unknown unit {u:?} (s, min or h)")),
        };
        KeyedLimits::new(n, per)
    }

    /// Takes one call of `key`'s, or says how long until the next is allowed.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        // Forget keys whose buckets are full again, now and then, so the map stays small.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&key.to_string()).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subject_has_its_own_bucket() {
        let l = KeyedLimits::parse("3/min").expect("valid");
        for _ in 0..3 {
            assert!(l.check("ada").is_ok());
        }
        let wait = l.check("ada").expect_err("over the limit");
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(l.check("grace").is_ok());
    }

    #[test]
    fn bad_limits_are_named() {
        assert!(KeyedLimits::parse("100").err().unwrap_or_default().contains("100/min"));
        assert!(KeyedLimits::parse("0/min").err().unwrap_or_default().contains("at least 1"));
        assert!(KeyedLimits::parse("5/week").err().unwrap_or_default().contains("unknown unit"));
    }
}
