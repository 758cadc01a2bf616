//! Exponential backoff with jitter. The jitter is derived from the task id and attempt, so
//! the same failure always waits the same time: tests are exact and replays agree.

use std::time::Duration;

use crate::spec::RetryPolicy;

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Give up: the error kind is non-retryable or the worker said so.
    NonRetryable,
    /// Give up: every allowed attempt was used.
    Exhausted,
}

impl RetryPolicy {
    /// Decides the fate of attempt number `attempt` (1-based) that failed with `error_kind`.
    pub fn decide(&self, attempt: u32, error_kind: &str, retryable: bool, seed: u128) -> RetryDecision {
        if !retryable || self.non_retryable_error_kinds.iter().any(|k| k == error_kind) {
            return RetryDecision::NonRetryable;
        }
        if attempt >= self.max_attempts.max(1) {
            return RetryDecision::Exhausted;
        }
        RetryDecision::RetryAfter(self.backoff(attempt, seed))
    }

    /// The wait after failed attempt `attempt` (1-based): initial × coefficient^(attempt-1),
    /// capped at max_interval, then spread by ±jitter.
    pub fn backoff(&self, attempt: u32, seed: u128) -> Duration {
        let initial = self.initial_interval.unwrap_or(Duration::from_secs(1)).as_secs_f64();
        let max = self.max_interval.unwrap_or(Duration::from_secs(60)).as_secs_f64();
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = (initial * self.backoff_coefficient.max(1.0).powi(exp)).min(max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let unit = unit_interval(seed ^ u128::from(attempt));
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// A number in [0, 1) from a seed (splitmix64 over both halves).
pub(crate) fn unit_interval(seed: u128) -> f64 {
    let mut x = (seed as u64) ^ ((seed >> 64) as u64).rotate_left(17);
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_interval: Some(Duration::from_millis(100)),
            backoff_coefficient: 2.0,
            max_interval: Some(Duration::from_millis(500)),
            jitter,
            non_retryable_error_kinds: vec!["bad_input".into()],
        }
    }

    #[test]
    fn backoff_grows_and_caps_without_jitter() {
        let p = policy(0.0);
        let waits: Vec<u128> = (1..=5).map(|a| p.backoff(a, 7).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_in_band_and_is_deterministic() {
        let p = policy(0.5);
        for seed in 0..200u128 {
            let w = p.backoff(2, seed).as_secs_f64();
            assert!((0.1 - 1e-9..=0.3 + 1e-9).contains(&w), "{w}");
            assert_eq!(p.backoff(2, seed), p.backoff(2, seed));
        }
        let distinct: std::collections::HashSet<u128> = (0..50u128).map(|s| p.backoff(2, s).as_micros()).collect();
        assert!(distinct.len() > 40, "jitter should spread waits");
    }

    #[test]
    fn decisions() {
        let p = policy(0.0);
        assert_eq!(p.decide(1, "io", true, 0), RetryDecision::RetryAfter(Duration::from_millis(100)));
        assert_eq!(p.decide(1, "bad_input", true, 0), RetryDecision::NonRetryable);
        assert_eq!(p.decide(1, "io", false, 0), RetryDecision::NonRetryable);
        assert_eq!(p.decide(5, "io", true, 0), RetryDecision::Exhausted);
    }
}
