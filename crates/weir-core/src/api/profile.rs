//! What a deployment says about each API, shared by every job that calls it: its rate
//! limit and burst (held across every API-manager replica) and its circuit breaker. Read
//! by the API manager from the file `WEIR_APIS` names (YAML or JSON):
//!
//! ```yaml
//! apis:
//!   shop:
//!     rate: 600/min          # or 10/s; 0 = unlimited
//!     burst: 50
//!     circuit: {consecutive_failures: 5, failure_ratio: 0.5, min_requests: 20, window: 60s, cooldown: 30s}
//!     health: {url: https://api.shop.example/health, interval: 30s, timeout: 5s}
//!     sessions: {max_idle: 10, idle_timeout: 30m}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::circuit::CircuitConfig;

/// Default most idle connections kept per API host.
pub const DEFAULT_MAX_IDLE: u32 = 10;
/// Default time an idle connection is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// An API's pooled connections: at most `max_idle` idle ones per host, each closed after
/// `idle_timeout` unused.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    #[serde(default = "max_idle")]
    pub max_idle: u32,
    #[serde(default = "idle_timeout", with = "crate::duration::required")]
    pub idle_timeout: Duration,
}

fn max_idle() -> u32 {
    DEFAULT_MAX_IDLE
}
fn idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { max_idle: DEFAULT_MAX_IDLE, idle_timeout: DEFAULT_IDLE_TIMEOUT }
    }
}

/// Default time between health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Default limit of one health check.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// One API's settings; what is left out takes the manager's defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiProfile {
    /// `600/min`, `10/s` or a number per minute.
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub circuit: Option<CircuitConfig>,
    /// An endpoint checked continuously; its outcome feeds the circuit.
    pub health: Option<HealthCheck>,
    /// Its pooled connections.
    pub sessions: Option<Sessions>,
}

/// An API's health endpoint: a GET answered with a 2xx within `timeout` is healthy. A
/// failed check counts as a failed request of the circuit; a passing one after an open
/// circuit's cooldown is its probe (so the circuit closes without risking a real request).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub url: String,
    #[serde(default, with = "crate::duration::option")]
    pub interval: Option<Duration>,
    #[serde(default, with = "crate::duration::option")]
    pub timeout: Option<Duration>,
}

impl HealthCheck {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL)
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT)
    }
}

/// Every API's settings, by API name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiProfiles {
    #[serde(default)]
    pub apis: BTreeMap<String, ApiProfile>,
}

impl ApiProfiles {
    /// Reads and checks a profiles file's text; the error names the API and the field.
    pub fn parse(text: &str) -> Result<ApiProfiles, String> {
        let p: ApiProfiles = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        for (name, api) in &p.apis {
            crate::validate::check_name("api", name, 128).map_err(|e| e.to_string())?;
            if let Some(r) = &api.rate {
                parse_rate(&format!("apis.{name}.rate"), r)?;
            }
            if let Some(c) = &api.circuit {
                c.check().map_err(|e| format!("apis.{name}.{e}"))?;
            }
            if let Some(h) = &api.health {
                super::check_url(&format!("apis.{name}.health.url"), &h.url)?;
                if h.interval() < Duration::from_secs(1) || h.timeout().is_zero() {
                    return Err(format!("apis.{name}.health: interval must be at least 1s and timeout more than 0s"));
                }
            }
        }
        Ok(p)
    }
}

/// A rate: `N/min`, `N/s` or a bare number per minute; the error names `what`.
pub fn parse_rate(what: &str, v: &str) -> Result<u32, String> {
    let v = v.trim();
    let (n, unit) = match v.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (v, "min"),
    };
    let bad = || format!("{what} must be like 100/min or 5/s, got {v:?}");
    let n: u32 = n.parse().map_err(|_| bad())?;
    match unit {
        "min" | "m" => Ok(n),
        "s" | "sec" => n.checked_mul(60).ok_or_else(|| format!("{what} is too large")),
        "h" | "hour" => Ok(n.div_ceil(60)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_read_and_bad_ones_are_named() {
        let p = ApiProfiles::parse(
            "apis:\n  shop: {rate: 10/s, burst: 50, circuit: {consecutive_failures: 3, cooldown: 5s}}\n  gh: {rate: 5000/h}\n",
        )
        .expect("profiles");
        assert_eq!(parse_rate("r", p.apis["shop"].rate.as_deref().unwrap_or_default()), Ok(600));
        let c = p.apis["shop"].circuit.expect("circuit");
        assert_eq!((c.consecutive_failures, c.cooldown.as_secs(), c.min_requests), (3, 5, 20));
        assert_eq!(parse_rate("r", "5000/h"), Ok(84));
        let h = ApiProfiles::parse("apis: {shop: {health: {url: 'https://h/health', interval: 10s}}}").expect("health");
        let h = h.apis["shop"].health.clone().expect("health");
        let p = ApiProfiles::parse("apis: {shop: {sessions: {max_idle: 2}}}").expect("sessions");
        assert_eq!(p.apis["shop"].sessions, Some(Sessions { max_idle: 2, idle_timeout: DEFAULT_IDLE_TIMEOUT }));
        assert_eq!((h.interval(), h.timeout()), (Duration::from_secs(10), DEFAULT_HEALTH_TIMEOUT));
        for (text, names) in [
            ("apis: {shop: {rate: fast}}", "apis.shop.rate"),
            ("apis: {shop: {circuit: {failure_ratio: 2}}}", "apis.shop.circuit.failure_ratio"),
            ("apis: {shop: {limit: 5}}", "limit"),
            ("apis: {'a b': {}}", "a b"),
            ("apis: {shop: {health: {url: 'ftp://h'}}}", "apis.shop.health.url"),
            ("apis: {shop: {health: {url: 'https://h', interval: 10ms}}}", "apis.shop.health"),
        ] {
            let e = ApiProfiles::parse(text).expect_err(text);
            assert!(e.contains(names), "{text}: {e}");
        }
    }
}
