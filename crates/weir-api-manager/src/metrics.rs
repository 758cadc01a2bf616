//! The API manager's metrics: requests by API and the status the server answered
//! (`error` for no answer: a timeout, a reset, a refused connection; `redirect` for
//! redirects refused or too many), the time requests
//! waited for the rate limits, and each circuit's state (one series per state, 1 for the
//! current one, as kube-state-metrics shows phases). An API is the step's `api` name, or
//! `<api>#<n>` for its n-th fallback.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use weir_core::api::circuit::CircuitState;
use weir_runtime::metrics::{register, seconds_histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub api: String,
    /// The HTTP status code; `error` for no answer, `redirect` for redirects refused or
    /// too many.
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CircuitLabels {
    pub api: String,
    /// closed, open or half_open.
    pub state: String,
}

/// The families.
pub struct Apis {
    pub requests: Family<RequestLabels, Counter>,
    pub rate_limit_wait: Family<ApiLabels, Histogram, fn() -> Histogram>,
    pub circuit: Family<CircuitLabels, Gauge>,
    /// API names come from jobs: bounded.
    pub names: weir_runtime::metrics::Bounded,
}

/// The process's API metrics, registered on first use.
pub static APIS: LazyLock<Apis> = LazyLock::new(|| {
    let a = Apis {
        requests: Family::default(),
        rate_limit_wait: Family::new_with_constructor(seconds_histogram),
        circuit: Family::default(),
        names: weir_runtime::metrics::Bounded::new(),
    };
    register("api_requests", "HTTP requests sent, by API and the status answered (error: none)", a.requests.clone());
    register(
        "api_rate_limit_wait_seconds",
        "How long a request waited for the API's limits (and a server's hold)",
        a.rate_limit_wait.clone(),
    );
    register("api_circuit_state", "Each API's circuit: 1 for its current state", a.circuit.clone());
    a
});

impl Apis {
    /// Counts one request's answer: its status code, `error` or `redirect`.
    pub fn answered(&self, api: &str, status: &str) {
        self.requests.get_or_create(&RequestLabels { api: self.names.label(api), status: status.to_string() }).inc();
    }

    /// Records how long a request to `api` waited for its limits.
    pub fn waited(&self, api: &str, seconds: f64) {
        self.rate_limit_wait.get_or_create(&ApiLabels { api: self.names.label(api) }).observe(seconds);
    }

    /// Sets `api`'s circuit to `now`.
    pub fn circuit(&self, api: &str, now: CircuitState) {
        for s in [CircuitState::Closed, CircuitState::Open, CircuitState::HalfOpen] {
            let labels = CircuitLabels { api: self.names.label(api), state: s.as_str().to_string() };
            self.circuit.get_or_create(&labels).set(i64::from(s == now));
        }
    }
}
