//! The api manager: pulls from HTTP APIs.
//!
//! It serves the `api` queue: the generic kinds, `probe` and `connect` ([`probe`]), and
//! `collect` ([`collect`]), which
//! requests a resource page by page ([`paginate`]), authenticated ([`auth`]), within this
//! manager's share of the fleet's rate limits and what the server says ([`client`]), past
//! each API's circuit breaker ([`breaker`], fed by its health checks, [`health`]), and leaves the records it selects
//! ([`records`]) in staging ([`output`]) for the batch kinds; once per parent record for a
//! child resource ([`parent`]), only what is new for an incremental one ([`incremental`]),
//! going on after a crash from where the last attempt checkpointed ([`checkpoint`]).
//! A step with a `security` policy is held to it, and `check_security`/`check_tls`
//! check the policy and each host's TLS before a secure collection ([`security`]).
//! `resilient_fetch`'s api steps find what a failed job fetched, pick a source that
//! answers and fetch only what is missing ([`recovery`]). [`metrics`]: requests by status,
//! rate-limit waits, circuits.

pub mod auth;
pub mod breaker;
pub mod checkpoint;
pub mod client;
pub mod collect;
pub mod error;
pub mod health;
pub mod incremental;
pub mod metrics;
pub mod output;
pub mod paginate;
pub mod parent;
pub mod probe;
pub mod records;
pub mod recovery;
pub mod security;

use std::path::PathBuf;
use std::sync::Arc;

use weir_core::api::circuit::CircuitConfig;
use weir_core::api::profile::{parse_rate, ApiProfiles};
use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;
use weir_worker::notice::Notices;
use weir_worker::quota::Quotas;

use crate::client::Rate;

/// The api manager's own settings, from the environment (every manager's flags are in
/// `weir_worker::manager::ManagerArgs`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `WEIR_DATA_DIR` (default `.weir/data`): staged records, kept refresh tokens.
    pub data_dir: PathBuf,
    /// `WEIR_STAGING_LOCATION`: staging on an object store (see the batch manager).
    pub staging: Option<weir_storage::Location>,
    /// `WEIR_API_RATE` (default `100/min`, burst `WEIR_API_BURST`, 200): each API's
    /// requests from every replica together; `0` = unlimited.
    pub api_rate: Rate,
    /// `WEIR_APIS`: a file with each API's own limit, burst and circuit breaker
    /// ([`weir_core::api::profile`]).
    pub profiles: ApiProfiles,
    /// The circuit of an API the file does not set.
    pub circuit: CircuitConfig,
    /// `WEIR_API_GLOBAL_RATE` (default `1000/min`, the same burst): every API's together.
    pub global_rate: Rate,
}

/// The fleet-wide limit of every API's requests together.
pub const GLOBAL_QUOTA_KEY: &str = "api/*";

/// The fleet-wide limit of one API's requests.
pub fn quota_key(api: &str) -> String {
    format!("api/{api}")
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            data_dir: PathBuf::from(weir_worker::DEFAULT_DATA_DIR),
            staging: None,
            api_rate: Rate { per_minute: 100, burst: 200 },
            profiles: ApiProfiles::default(),
            circuit: CircuitConfig::default(),
            global_rate: Rate { per_minute: 1000, burst: 200 },
        }
    }
}

impl ApiSettings {
    /// Reads the settings; the error names the setting.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut s = ApiSettings::default();
        if let Some(d) = get("WEIR_DATA_DIR").filter(|d| !d.is_empty()) {
            s.data_dir = PathBuf::from(d);
        }
        if let Some(v) = get("WEIR_API_RATE") {
            s.api_rate.per_minute = parse_rate("WEIR_API_RATE", &v)?;
        }
        if let Some(v) = get("WEIR_API_GLOBAL_RATE") {
            s.global_rate.per_minute = parse_rate("WEIR_API_GLOBAL_RATE", &v)?;
        }
        if let Some(v) = get("WEIR_API_BURST") {
            let b: u32 = v.trim().parse().map_err(|_| format!("WEIR_API_BURST must be a whole number, got {v:?}"))?;
            s.api_rate.burst = b;
            s.global_rate.burst = b;
        }
        if let Some(path) = get("WEIR_APIS").filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("WEIR_APIS {path}: {e}"))?;
            s.profiles = ApiProfiles::parse(&text).map_err(|e| format!("WEIR_APIS {path}: {e}"))?;
        }
        s.staging = weir_worker::staging::location_from(get(weir_worker::staging::STAGING_LOCATION_ENV))?;
        Ok(s)
    }

    /// The limit of one API: its own, else the default.
    pub fn rate_of(&self, api: &str) -> Rate {
        let p = self.profiles.apis.get(api);
        let rate = p.and_then(|p| p.rate.as_deref()).and_then(|r| parse_rate("rate", r).ok());
        Rate {
            per_minute: rate.unwrap_or(self.api_rate.per_minute),
            burst: p.and_then(|p| p.burst).unwrap_or(self.api_rate.burst),
        }
    }

    /// The pooled connections of one API: its own, else the default.
    pub fn sessions_of(&self, api: &str) -> weir_core::api::profile::Sessions {
        self.profiles.apis.get(api).and_then(|p| p.sessions).unwrap_or_default()
    }

    /// The circuit breaker of one API: its own, else the default.
    pub fn circuit_of(&self, api: &str) -> CircuitConfig {
        self.profiles.apis.get(api).and_then(|p| p.circuit).unwrap_or(self.circuit)
    }

    /// Staging as this manager sees it.
    pub fn staging(&self) -> weir_worker::staging::Staging {
        weir_worker::staging::Staging::new(&self.data_dir, self.staging.clone())
    }
}

/// What this manager runs, with settings from the environment.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(spec_with(ApiSettings::from_env()?))
}

/// What this manager runs, with the given settings.
pub fn spec_with(settings: ApiSettings) -> ManagerSpec {
    let (quotas, notices) = (Quotas::shared(), Notices::default());
    let breakers = Arc::new(breaker::Breakers::new(notices.clone()));
    let health = health::Health::new(settings.clone(), breakers.clone(), notices.clone());
    let collect = Arc::new(collect::Collect::new(settings, quotas.clone(), notices.clone(), breakers));
    let recovery = recovery::Recovery { collect: collect.clone() };
    ManagerSpec {
        name: "api-manager",
        binary: "weir-api-manager",
        queue: Queue::Api,
        concurrency: weir_worker::manager::DEFAULT_CONCURRENCY,
        handlers: vec![Arc::new(Generic), collect, Arc::new(recovery)],
        background: vec![Arc::new(health)],
        quotas,
        notices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_and_bad_ones_are_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let s = ApiSettings::from_lookup(env(&[("WEIR_API_RATE", "5/s"), ("WEIR_API_BURST", "10")])).expect("valid");
        assert_eq!((s.api_rate, s.global_rate.per_minute), (Rate { per_minute: 300, burst: 10 }, 1000));
        let e = ApiSettings::from_lookup(env(&[("WEIR_API_RATE", "fast")])).expect_err("bad");
        assert!(e.contains("WEIR_API_RATE"), "{e}");
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("apis.yaml");
        std::fs::write(&file, "apis:\n  shop: {rate: 10/s, burst: 50, circuit: {consecutive_failures: 2}}\n")
            .expect("write");
        let path = file.display().to_string();
        let s = ApiSettings::from_lookup(|k| (k == "WEIR_APIS").then(|| path.clone())).expect("profiles");
        assert_eq!(s.rate_of("shop"), Rate { per_minute: 600, burst: 50 });
        assert_eq!(s.rate_of("other"), s.api_rate);
        assert_eq!((s.circuit_of("shop").consecutive_failures, s.circuit_of("other").consecutive_failures), (2, 5));
        std::fs::write(&file, "apis: {shop: {rate: fast}}").expect("write");
        let e = ApiSettings::from_lookup(|k| (k == "WEIR_APIS").then(|| path.clone())).expect_err("bad");
        assert!(e.contains("WEIR_APIS") && e.contains("apis.shop.rate"), "{e}");
    }
}
