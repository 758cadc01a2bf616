//! A circuit breaker per API: after consecutive failures, or a failure ratio over a window
//! of recent requests, the API is left alone for a cooldown; then one probe request is let
//! through (half-open), and its outcome closes the circuit or opens it again.
//!
//! Pure: it takes `now` and returns the transitions, so the manager can log them, show them
//! and publish them, and every rule is tested without a clock.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failures that open it (0: never on a run alone).
    pub consecutive_failures: u32,
    /// The failure ratio over `window` that opens it (0: never on a ratio)…
    pub failure_ratio: f64,
    /// …counted once the window holds at least this many requests.
    pub min_requests: u32,
    #[serde(with = "crate::duration::required")]
    pub window: Duration,
    /// How long it stays open before a probe.
    #[serde(with = "crate::duration::required")]
    pub cooldown: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }
}

impl CircuitConfig {
    /// The error names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err(format!("circuit.failure_ratio must be between 0 and 1, got {}", self.failure_ratio));
        }
        if self.cooldown.is_zero() {
            return Err("circuit.cooldown must be more than 0s".into());
        }
        if self.failure_ratio > 0.0 && (self.window.is_zero() || self.min_requests == 0) {
            return Err("circuit.window and circuit.min_requests must be more than 0 with a failure_ratio".into());
        }
        Ok(())
    }
}

/// Where a circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// A change of state, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
    pub reason: String,
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The probe of a half-open circuit: report its outcome.
    Probe,
    /// Open until then.
    No {
        until: Millis,
    },
}

/// One API's circuit.
#[derive(Debug, Clone)]
pub struct Circuit {
    config: CircuitConfig,
    state: CircuitState,
    consecutive: u32,
    /// (when, failed) of the requests in the window.
    recent: VecDeque<(Millis, bool)>,
    open_until: Millis,
    probing: bool,
    /// Why it last opened.
    reason: String,
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX / 4)
}

impl Circuit {
    pub fn new(config: CircuitConfig) -> Circuit {
        Circuit {
            config,
            state: CircuitState::Closed,
            consecutive: 0,
            recent: VecDeque::new(),
            open_until: 0,
            probing: false,
            reason: String::new(),
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Why it last opened (empty if it never did).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When an open circuit lets its probe through.
    pub fn open_until(&self) -> Option<Millis> {
        (self.state == CircuitState::Open).then_some(self.open_until)
    }

    /// Whether a request may go at `now`; an open circuit past its cooldown half-opens.
    pub fn admit(&mut self, now: Millis) -> (Admit, Option<Transition>) {
        match self.state {
            CircuitState::Closed => (Admit::Yes, None),
            CircuitState::Open if now < self.open_until => (Admit::No { until: self.open_until }, None),
            CircuitState::Open => {
                self.probing = true;
                let t = self.change(CircuitState::HalfOpen, "the cooldown is over: one probe request".into());
                (Admit::Probe, t)
            }
            // One probe at a time; the others wait for its outcome as if open.
            CircuitState::HalfOpen if self.probing => (Admit::No { until: now + 1000 }, None),
            CircuitState::HalfOpen => {
                self.probing = true;
                (Admit::Probe, None)
            }
        }
    }

    /// A request's outcome (a 5xx, timeout or connection error is a failure; any answer
    /// the API gave on purpose, 4xx and 429 included, is not).
    pub fn record(&mut self, now: Millis, failed: bool, what: &str) -> Option<Transition> {
        let window = ms(self.config.window);
        self.recent.push_back((now, failed));
        while self.recent.front().is_some_and(|(t, _)| *t <= now - window) {
            self.recent.pop_front();
        }
        if self.state == CircuitState::HalfOpen {
            self.probing = false;
            return if failed {
                self.open(now, format!("the probe failed: {what}"))
            } else {
                self.consecutive = 0;
                self.recent.clear();
                self.change(CircuitState::Closed, "the probe succeeded".into())
            };
        }
        if !failed {
            self.consecutive = 0;
            return None;
        }
        self.consecutive += 1;
        if self.state != CircuitState::Closed {
            return None;
        }
        let c = &self.config;
        if c.consecutive_failures > 0 && self.consecutive >= c.consecutive_failures {
            return self.open(now, format!("{} failures in a row, the last: {what}", self.consecutive));
        }
        let n = self.recent.len();
        let failures = self.recent.iter().filter(|(_, f)| *f).count();
        if c.failure_ratio > 0.0 && n >= c.min_requests as usize && failures as f64 >= c.failure_ratio * n as f64 {
            let secs = c.window.as_secs();
            return self.open(now, format!("{failures} of the last {n} requests in {secs}s failed, the last: {what}"));
        }
        None
    }

    fn open(&mut self, now: Millis, reason: String) -> Option<Transition> {
        self.open_until = now + ms(self.config.cooldown);
        self.reason.clone_from(&reason);
        self.change(CircuitState::Open, reason)
    }

    fn change(&mut self, to: CircuitState, reason: String) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        (from != to).then_some(Transition { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig { min_requests: 10, ..CircuitConfig::default() }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_probe_closes_it() {
        let mut c = Circuit::new(config());
        for i in 0..4 {
            assert_eq!(c.record(i, true, "500"), None);
        }
        assert_eq!(c.record(5, false, "ok"), None, "a success ends the run");
        for i in 10..14 {
            c.record(i, true, "500");
        }
        let t = c.record(14, true, "http://x answered 503").expect("opens");
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Open));
        assert!(t.reason.contains("5 failures in a row") && t.reason.contains("503"), "{}", t.reason);
        assert_eq!(c.reason(), t.reason);
        assert_eq!(c.admit(1000).0, Admit::No { until: 30_014 });
        let (a, t) = c.admit(30_014);
        assert_eq!((a, t.map(|t| t.to)), (Admit::Probe, Some(CircuitState::HalfOpen)));
        assert_eq!(c.admit(30_015).0, Admit::No { until: 31_015 }, "one probe at a time");
        let t = c.record(30_100, false, "ok").expect("closes");
        assert_eq!(t.to, CircuitState::Closed);
        assert_eq!(c.admit(30_101).0, Admit::Yes);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_another_cooldown() {
        let mut c = Circuit::new(config());
        for i in 0..5 {
            c.record(i, true, "timeout");
        }
        c.admit(40_000);
        let t = c.record(40_010, true, "timeout").expect("opens again");
        assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
        assert_eq!(c.open_until(), Some(70_010));
    }

    #[test]
    fn a_failure_ratio_over_the_window_opens_it_once_enough_requests_were_seen() {
        let mut c = Circuit::new(config());
        // Alternate: never 5 in a row, but half of them fail.
        let mut opened = None;
        for i in 0..20 {
            if let Some(t) = c.record(i * 100, i % 2 == 1, "500") {
                opened = Some((i, t));
                break;
            }
        }
        let (i, t) = opened.expect("opens on the ratio");
        assert_eq!(i, 9, "at the 10th request, the minimum");
        assert!(t.reason.contains("5 of the last 10"), "{}", t.reason);
        // Old requests leave the window.
        let mut c = Circuit::new(config());
        for i in 0..9 {
            c.record(i, true, "500");
            c.record(i, false, "ok");
        }
        assert_eq!(c.record(120_000, true, "500"), None, "the window holds one request now");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = CircuitConfig { failure_ratio: 1.5, ..config() };
        assert!(bad.check().expect_err("ratio").contains("failure_ratio"));
        let bad = CircuitConfig { cooldown: Duration::ZERO, ..config() };
        assert!(bad.check().expect_err("cooldown").contains("cooldown"));
        assert!(config().check().is_ok());
    }
}
