//! The file manager: discovers files on disks, buckets and SFTP, transfers and verifies
//! them.
//!
//! It serves the `file` queue — the generic kinds and `discover`, `fetch`, `archive`
//! ([`steps`]) — and runs the configured watches in the background ([`watcher`]): each
//! poll lists a watch's location, claims the new or changed files in the durable
//! inventory (once across replicas), and starts one job per file version through the
//! master, publishing a `dev.weir.file.discovered` event with it. Its own gRPC service
//! ([`service`]) lists the inventory and re-drives a file. Staged files older than the
//! retention are removed on a schedule ([`cleanup`]). [`metrics`] counts what is fetched.

pub mod cleanup;
pub mod metrics;
pub mod recovery;
pub mod service;
pub mod steps;
pub mod watcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_core::catalog::Queue;
use weir_core::files::Watches;
use weir_worker::generic::Generic;
use weir_worker::manager::ManagerSpec;

/// The file manager's own settings (every manager's flags are in `ManagerArgs`).
#[derive(Clone)]
pub struct FileSettings {
    /// `WEIR_DATA_DIR` (default `.weir/data`): downloads under `staging/`, quarantined
    /// files under `quarantine/files/`.
    pub data_dir: PathBuf,
    /// The watches to run (from `WEIR_WATCHES_FILE`, YAML; none = no watches run).
    pub watches: Watches,
    /// `WEIR_WATCHES_FILE` itself: read again when it changes (a ConfigMap the operator
    /// writes from FileWatch objects, say), so watches come and go without a restart.
    pub watches_file: Option<PathBuf>,
    /// `WEIR_STAGING_RETENTION` (default 24h): staged files older than this are removed.
    pub retention: Duration,
    /// Where the inventory lives.
    pub store: Inventory,
    /// `WEIR_STAGING_LOCATION`: staging on an object store the batch manager reads too;
    /// `None` = the data dir, which the batch manager must then share.
    pub staging: Option<weir_storage::Location>,
}

/// The inventory's store: `WEIR_FILES_STORE_URL` (default `sqlite://.weir/files.db`;
/// PostgreSQL in production, shared by every replica), or the master's in `weir dev`.
pub type Inventory = weir_worker::store::LazyStore;

impl FileSettings {
    /// Reads the settings from the environment; the error names the setting.
    pub fn from_env() -> Result<Self, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let watches_file = get("WEIR_WATCHES_FILE").map(PathBuf::from);
        let watches = match &watches_file {
            None => Watches::default(),
            // Not there yet (an optional ConfigMap not written yet): no watches until it is.
            Some(path) if !path.exists() => Watches::default(),
            Some(path) => read_watches(path)?,
        };
        let retention = match get("WEIR_STAGING_RETENTION") {
            None => Duration::from_secs(24 * 3600),
            Some(v) => weir_core::duration::parse(&v).map_err(|e| format!("WEIR_STAGING_RETENTION: {e}"))?,
        };
        Ok(FileSettings {
            data_dir: PathBuf::from(get("WEIR_DATA_DIR").unwrap_or_else(|| weir_worker::DEFAULT_DATA_DIR.into())),
            watches,
            watches_file,
            retention,
            store: Inventory::url(&get("WEIR_FILES_STORE_URL").unwrap_or_else(|| "sqlite://.weir/files.db".into())),
            staging: weir_worker::staging::location_from_env()?,
        })
    }

    /// Staging as this manager sees it.
    pub fn staging(&self) -> weir_worker::staging::Staging {
        weir_worker::staging::Staging::new(&self.data_dir, self.staging.clone())
    }
}

/// Reads and checks a watches file; the error names the file (as `WEIR_WATCHES_FILE`).
pub fn read_watches(path: &std::path::Path) -> Result<Watches, String> {
    let bad = |e: String| format!("WEIR_WATCHES_FILE {}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // An empty file (a ConfigMap with no FileWatch yet) means no watches.
    if v.is_null() {
        return Ok(Watches::default());
    }
    Watches::from_value(v).map_err(bad)
}

/// Now, in epoch milliseconds (the inventory's time unit).
pub(crate) use weir_runtime::now_ms;

/// What this manager runs, with settings from the environment.
pub fn spec() -> Result<ManagerSpec, String> {
    Ok(spec_with(FileSettings::from_env()?))
}

/// What this manager runs, with the given settings.
pub fn spec_with(settings: FileSettings) -> ManagerSpec {
    ManagerSpec {
        name: "file-manager",
        binary: "weir-file-manager",
        queue: Queue::File,
        concurrency: weir_worker::manager::DEFAULT_CONCURRENCY,
        quotas: weir_worker::quota::Quotas::default(),
        notices: weir_worker::notice::Notices::default(),
        handlers: {
            let files = Arc::new(steps::FileSteps::new(settings.clone()));
            vec![Arc::new(Generic), files.clone(), Arc::new(recovery::Recovery { files })]
        },
        background: vec![
            Arc::new(watcher::Watcher::new(settings.clone())),
            Arc::new(cleanup::Cleanup::new(settings.clone())),
            Arc::new(service::Files::new(settings)),
        ],
    }
}
