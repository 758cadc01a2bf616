//! An API's circuit breaker in this manager ([`weir_core::api::circuit`]), one per API
//! name whatever credentials its steps use (and one per fallback), with each change logged
//! and reported for `weir.apis`; fed by requests and by the API's health checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weir_core::api::circuit::{Admit, Circuit, CircuitConfig, CircuitState, Transition};
use weir_core::events::api_event;
use weir_runtime::now_ms;
use weir_worker::notice::Notices;

use crate::error::CollectError;

pub struct Breaker {
    api: String,
    circuit: Mutex<Circuit>,
    /// Where its changes go (the master publishes them on `weir.apis`).
    notices: Notices,
}

impl Breaker {
    pub fn new(api: &str, config: CircuitConfig, notices: Notices) -> Breaker {
        crate::metrics::APIS.circuit(api, CircuitState::Closed);
        Breaker { api: api.into(), circuit: Mutex::new(Circuit::new(config)), notices }
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses at once while the circuit is open, naming why it opened.
    pub fn admit(&self) -> Result<(), CollectError> {
        let mut c = self.circuit();
        let (admit, change) = c.admit(now_ms());
        if let Some(t) = change {
            self.changed(&t, None);
        }
        match admit {
            Admit::No { until } => {
                let secs = (until - now_ms()).max(0) as f64 / 1000.0;
                Err(CollectError::CircuitOpen(format!(
                    "api {}: the circuit is open for another {secs:.1}s: {}",
                    self.api,
                    c.reason()
                )))
            }
            Admit::Yes | Admit::Probe => Ok(()),
        }
    }

    /// A health check's outcome: a failure counts as a failed request; a pass while the
    /// circuit may probe (an open one past its cooldown, or half-open) is the probe. While
    /// an open circuit cools down, or a request probes, checks only report health.
    pub fn health(&self, ok: bool, what: &str) {
        let mut c = self.circuit();
        let (admit, change) = c.admit(now_ms());
        if let Some(t) = change {
            self.changed(&t, None);
        }
        if matches!(admit, Admit::No { .. }) {
            return;
        }
        if let Some(t) = c.record(now_ms(), !ok, what) {
            self.changed(&t, c.open_until());
        }
    }

    /// Whether the circuit is open: requests are refused until its cooldown ends.
    pub fn is_open(&self) -> bool {
        self.circuit().state() == CircuitState::Open
    }

    /// Why it opened (or last changed).
    pub fn reason(&self) -> String {
        self.circuit().reason().to_string()
    }

    /// A request's outcome: `sick` for a 5xx, a timeout, a reset or a body cut short.
    pub fn outcome(&self, sick: bool, what: &str) {
        let mut c = self.circuit();
        if let Some(t) = c.record(now_ms(), sick, what) {
            self.changed(&t, c.open_until());
        }
    }

    /// Logs a change of the circuit and reports it for `weir.apis`.
    fn changed(&self, t: &Transition, open_until: Option<i64>) {
        crate::metrics::APIS.circuit(&self.api, t.to);
        let kind = match t.to {
            CircuitState::Open => api_event::CIRCUIT_OPENED,
            CircuitState::HalfOpen => api_event::CIRCUIT_HALF_OPEN,
            CircuitState::Closed => api_event::CIRCUIT_CLOSED,
        };
        if t.to == CircuitState::Open {
            tracing::warn!(api = %self.api, from = t.from.as_str(), reason = %t.reason, "circuit opened");
        } else {
            tracing::info!(api = %self.api, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "circuit");
        }
        let mut data = serde_json::json!({"from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason});
        if let Some(u) = open_until {
            data["open_until"] = weir_core::events::rfc3339(u).into();
        }
        self.notices.push(kind, &self.api, data, now_ms());
    }
}

/// This manager's breakers, by circuit name (an API's, or `<api>#<n>` for a fallback):
/// the collections and the health checks share them.
#[derive(Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Arc<Breaker>>>,
    notices: Notices,
}

impl Breakers {
    pub fn new(notices: Notices) -> Breakers {
        Breakers { map: Mutex::default(), notices }
    }

    /// The breaker of `circuit`, made with `config` on first use.
    pub fn get(&self, circuit: &str, config: CircuitConfig) -> Arc<Breaker> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(circuit.to_string())
            .or_insert_with(|| Arc::new(Breaker::new(circuit, config, self.notices.clone())))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn health_checks_open_a_circuit_and_probe_it_closed() {
        let config = CircuitConfig {
            consecutive_failures: 2,
            failure_ratio: 0.0,
            cooldown: Duration::from_millis(50),
            ..CircuitConfig::default()
        };
        let notices = Notices::default();
        let b = Breakers::new(notices.clone()).get("shop", config);
        b.health(false, "health check: 500");
        assert!(!b.is_open());
        b.health(false, "health check: 500");
        assert!(b.is_open() && b.reason().contains("health check"), "{}", b.reason());
        b.health(true, "health check: 200");
        assert!(b.is_open(), "a pass during the cooldown only reports health");
        std::thread::sleep(Duration::from_millis(60));
        b.health(true, "health check: 200");
        assert!(!b.is_open(), "after the cooldown the passing check is the probe");
        let kinds: Vec<String> = notices.take().into_iter().map(|n| n.r#type).collect();
        assert_eq!(kinds, vec![api_event::CIRCUIT_OPENED, api_event::CIRCUIT_HALF_OPEN, api_event::CIRCUIT_CLOSED]);
    }
}
