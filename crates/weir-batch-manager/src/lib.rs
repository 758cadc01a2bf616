//! The batch manager: converts and checks staged data in bounded batches and writes it to
//! sinks.
//!
//! It serves the `batch` queue: the generic kinds, and the data kinds `convert`,
//! `quality` and `store` ([`steps::DataSteps`]), whose work is `weir-data`'s pipeline.
//! A step's input files are grouped into [`batches`] of bounded size; at most
//! `WEIR_BATCH_SLOTS` batches run at once across all tasks, each under a timeout. Every
//! schema version its sinks record is copied into the dataset catalogue, with a
//! `dev.weir.dataset.schema_changed` event; its own gRPC service ([`service`]) shows it.
//! [`metrics`] counts rows, files and bytes.

pub mod batches;
pub mod metrics;
pub mod reconcile;
pub mod service;
pub mod steps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_core::catalog::Queue;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;
use weir_worker::store::LazyStore;

/// Where the dataset catalogue lives unless `WEIR_DATASETS_STORE_URL` says otherwise.
pub const DEFAULT_CATALOGUE: &str = "sqlite://.weir/datasets.db";

/// The batch manager's own settings, from the environment (flags of every manager are in
/// `weir_worker::manager::ManagerArgs`).
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// `WEIR_DATA_DIR` (default `.weir/data`): staged files under `staging/`, the
    /// quarantine under `quarantine/`.
    pub data_dir: PathBuf,
    /// `WEIR_BATCH_MAX_BYTES` (default 1 GiB): most input bytes in one batch.
    pub max_batch_bytes: u64,
    /// `WEIR_BATCH_MAX_FILES` (default 256): most files in one batch, so many small files
    /// spread over the slots (and cores).
    pub max_batch_files: usize,
    /// `WEIR_BATCH_SLOTS` (default 20): most batches running at once.
    pub slots: usize,
    /// `WEIR_BATCH_TIMEOUT` (default 5m): longest one batch may run.
    pub batch_timeout: Duration,
    /// `WEIR_STAGING_LOCATION`: staging on an object store the file manager writes too;
    /// `None` = the data dir, which the file manager must then share.
    pub staging: Option<weir_storage::Location>,
    /// `WEIR_DATASETS_STORE_URL` (default `sqlite://.weir/datasets.db`; PostgreSQL in
    /// production, the master's database so its relay publishes the catalogue's events):
    /// the dataset catalogue.
    pub catalogue: LazyStore,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            data_dir: PathBuf::from(weir_worker::DEFAULT_DATA_DIR),
            max_batch_bytes: 1 << 30,
            max_batch_files: 256,
            slots: 20,
            batch_timeout: Duration::from_secs(300),
            staging: None,
            catalogue: LazyStore::url(DEFAULT_CATALOGUE),
        }
    }
}

impl BatchSettings {
    /// Reads the settings; the error names the setting and what is wrong with it.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Staging as this manager sees it.
    pub fn staging(&self) -> weir_worker::staging::Staging {
        weir_worker::staging::Staging::new(&self.data_dir, self.staging.clone())
    }

    /// Reads the settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut s = BatchSettings::default();
        if let Some(d) = get("WEIR_DATA_DIR").filter(|d| !d.is_empty()) {
            s.data_dir = PathBuf::from(d);
        }
        let number = |k: &str, min: u64| -> Result<Option<u64>, String> {
            match get(k) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    _ => Err(format!("{k} must be a whole number of at least {min}, got {v:?}")),
                },
            }
        };
        if let Some(n) = number("WEIR_BATCH_MAX_BYTES", 1)? {
            s.max_batch_bytes = n;
        }
        if let Some(n) = number("WEIR_BATCH_MAX_FILES", 1)? {
            s.max_batch_files = n as usize;
        }
        if let Some(n) = number("WEIR_BATCH_SLOTS", 1)? {
            s.slots = n as usize;
        }
        if let Some(v) = get("WEIR_BATCH_TIMEOUT") {
            s.batch_timeout = weir_core::duration::parse(&v).map_err(|e| format!("WEIR_BATCH_TIMEOUT: {e}"))?;
        }
        s.staging = weir_worker::staging::location_from(get(weir_worker::staging::STAGING_LOCATION_ENV))?;
        if let Some(url) = get("WEIR_DATASETS_STORE_URL").filter(|u| !u.is_empty()) {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite://")) {
                return Err(format!("WEIR_DATASETS_STORE_URL must be postgres://… or sqlite://…, got {url:?}"));
            }
            s.catalogue = LazyStore::url(&url);
        }
        Ok(s)
    }
}

/// What this manager runs, with settings from the environment.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(spec_with(BatchSettings::from_env()?))
}

/// What this manager runs, with the given settings.
pub fn spec_with(settings: BatchSettings) -> ManagerSpec {
    ManagerSpec {
        name: "batch-manager",
        binary: "weir-batch-manager",
        queue: Queue::Batch,
        concurrency: weir_worker::manager::DEFAULT_CONCURRENCY,
        quotas: weir_worker::quota::Quotas::default(),
        notices: weir_worker::notice::Notices::default(),
        handlers: vec![
            Arc::new(Generic),
            Arc::new(reconcile::Reconcile { staging: settings.staging() }),
            Arc::new(steps::DataSteps::new(settings.clone())),
        ],
        background: vec![Arc::new(service::Datasets::new(settings.catalogue))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_and_bad_ones_are_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let s = BatchSettings::from_lookup(env(&[("WEIR_BATCH_SLOTS", "4"), ("WEIR_BATCH_TIMEOUT", "30s")]))
            .expect("valid");
        assert_eq!((s.slots, s.batch_timeout, s.max_batch_bytes), (4, Duration::from_secs(30), 1 << 30));
        let e = BatchSettings::from_lookup(env(&[("WEIR_BATCH_SLOTS", "0")])).expect_err("zero slots");
        assert!(e.contains("WEIR_BATCH_SLOTS"), "{e}");
        let e = BatchSettings::from_lookup(env(&[("WEIR_BATCH_TIMEOUT", "soon")])).expect_err("bad duration");
        assert!(e.contains("WEIR_BATCH_TIMEOUT"), "{e}");
    }
}
