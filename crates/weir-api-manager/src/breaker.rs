//! An API's circuit breaker in this manager ([`weir_core::api::circuit`]), one per API
//! name whatever credentials its steps use, with each change logged and reported for
//! `weir.apis`.

use std::sync::Mutex;

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

    /// A request's outcome: `sick` for a 5xx, a timeout, a reset or a body cut short.
    pub fn outcome(&self, sick: bool, what: &str) {
        let mut c = self.circuit();
        if let Some(t) = c.record(now_ms(), sick, what) {
            self.changed(&t, c.open_until());
        }
    }

    /// Logs a change of the circuit and reports it for `weir.apis`.
    fn changed(&self, t: &Transition, open_until: Option<i64>) {
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
