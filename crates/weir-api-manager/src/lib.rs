//! The api manager: pulls from HTTP APIs.
//!
//! It serves the `api` queue: the generic kinds, and `collect` ([`collect`]), which
//! requests a resource page by page ([`paginate`]), authenticated ([`auth`]), within this
//! manager's rate limits and what the server says ([`client`]), and leaves the records it
//! selects ([`records`]) in staging ([`output`]) for the batch kinds.

pub mod auth;
pub mod client;
pub mod collect;
pub mod error;
pub mod output;
pub mod paginate;
pub mod records;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;
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
    /// `WEIR_API_LIMITS` (`shop=600/min:50,github=80/s`): an API's own limit and burst.
    pub api_rates: BTreeMap<String, Rate>,
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
            api_rates: BTreeMap::new(),
            global_rate: Rate { per_minute: 1000, burst: 200 },
        }
    }
}

/// A rate: `N/min`, `N/s` or a bare number per minute.
fn per_minute(k: &str, v: &str) -> Result<u32, String> {
    let v = v.trim();
    let (n, unit) = match v.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (v, "min"),
    };
    let n: u32 = n.parse().map_err(|_| format!("{k} must be like 100/min or 5/s, got {v:?}"))?;
    match unit {
        "min" | "m" => Ok(n),
        "s" | "sec" => n.checked_mul(60).ok_or_else(|| format!("{k} is too large")),
        _ => Err(format!("{k} must be like 100/min or 5/s, got {v:?}")),
    }
}

/// `name=rate[:burst]`, separated by commas or spaces.
fn limits(k: &str, v: &str, burst: u32) -> Result<BTreeMap<String, Rate>, String> {
    let mut out = BTreeMap::new();
    for item in v.split([',', ' ']).map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, limit)) = item.split_once('=') else {
            return Err(format!("{k}: {item:?} must be like shop=600/min or shop=10/s:50"));
        };
        let (rate, b) = match limit.rsplit_once(':') {
            Some((r, b)) => {
                let b = b.trim().parse().map_err(|_| format!("{k}: the burst of {name:?} must be a whole number"))?;
                (r, b)
            }
            None => (limit, burst),
        };
        let name = name.trim();
        weir_core::validate::check_name(&format!("{k} api"), name, 128).map_err(|e| e.to_string())?;
        out.insert(name.to_string(), Rate { per_minute: per_minute(&format!("{k} {name}"), rate)?, burst: b });
    }
    Ok(out)
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
            s.api_rate.per_minute = per_minute("WEIR_API_RATE", &v)?;
        }
        if let Some(v) = get("WEIR_API_GLOBAL_RATE") {
            s.global_rate.per_minute = per_minute("WEIR_API_GLOBAL_RATE", &v)?;
        }
        if let Some(v) = get("WEIR_API_BURST") {
            let b: u32 = v.trim().parse().map_err(|_| format!("WEIR_API_BURST must be a whole number, got {v:?}"))?;
            s.api_rate.burst = b;
            s.global_rate.burst = b;
        }
        if let Some(v) = get("WEIR_API_LIMITS") {
            s.api_rates = limits("WEIR_API_LIMITS", &v, s.api_rate.burst)?;
        }
        s.staging = weir_worker::staging::location_from(get(weir_worker::staging::STAGING_LOCATION_ENV))?;
        Ok(s)
    }

    /// The limit of one API: its own, else the default.
    pub fn rate_of(&self, api: &str) -> Rate {
        self.api_rates.get(api).copied().unwrap_or(self.api_rate)
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
    let quotas = Quotas::shared();
    ManagerSpec {
        name: "api-manager",
        binary: "weir-api-manager",
        queue: Queue::Api,
        handlers: vec![Arc::new(Generic), Arc::new(collect::Collect::new(settings, quotas.clone()))],
        background: vec![],
        quotas,
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
        let s = ApiSettings::from_lookup(env(&[("WEIR_API_LIMITS", "shop=10/s:50, github=5000/min")])).expect("limits");
        assert_eq!(s.rate_of("shop"), Rate { per_minute: 600, burst: 50 });
        assert_eq!(s.rate_of("github"), Rate { per_minute: 5000, burst: 200 });
        assert_eq!(s.rate_of("other"), s.api_rate);
        for bad in ["shop", "shop=fast", "shop=10/s:x"] {
            let e = ApiSettings::from_lookup(|k| (k == "WEIR_API_LIMITS").then(|| bad.to_string())).expect_err(bad);
            assert!(e.contains("WEIR_API_LIMITS"), "{e}");
        }
    }
}
