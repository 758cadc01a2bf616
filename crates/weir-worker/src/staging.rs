//! Where a step leaves data for the next ones: the data dir (`WEIR_DATA_DIR`, which the
//! file and batch managers then share: one machine, or one volume), or, with
//! `WEIR_STAGING_LOCATION`, an object store every manager reaches, so that no two
//! managers need a common disk. Local disk stays each manager's working area: a step
//! downloads the staged files it reads and uploads the ones it leaves.
//!
//! Staged objects are named `<job>/<step>/<name>` below the location and reported by
//! URI (`s3://stage/<job>/<step>/<name>`); a path that is not below the staging location
//! is a local one. The file manager's sweep removes staged objects older than the
//! retention, as it does local staged files.

use std::path::{Path, PathBuf};

use weir_core::files::LocationSpec;
use weir_storage::{Location, StorageError};

use crate::{StepError, TaskContext, STAGING};

/// The setting naming the staging object store: a location as JSON (`{"uri":
/// "s3://stage", "endpoint": …, "credentials": {"env": "STAGE"}}`) or a bare URI.
pub const STAGING_LOCATION_ENV: &str = "WEIR_STAGING_LOCATION";

/// Upload and download chunk size for staged files.
const CHUNK: usize = 8 * 1024 * 1024;

/// Reads [`STAGING_LOCATION_ENV`]; `None` when unset (staging on the data dir).
pub fn location_from_env() -> Result<Option<Location>, String> {
    location_from(std::env::var(STAGING_LOCATION_ENV).ok())
}

/// Opens the staging location a [`STAGING_LOCATION_ENV`] value names.
pub fn location_from(raw: Option<String>) -> Result<Option<Location>, String> {
    let raw = match raw {
        Some(v) if !v.trim().is_empty() => v,
        _ => return Ok(None),
    };
    let spec: LocationSpec = if raw.trim_start().starts_with('{') {
        serde_json::from_str(&raw).map_err(|e| format!("{STAGING_LOCATION_ENV}: not a location: {e}"))?
    } else {
        LocationSpec { uri: raw.trim().to_string(), ..Default::default() }
    };
    Location::open(&spec).map(Some).map_err(|e| format!("{STAGING_LOCATION_ENV}: {e}"))
}

fn storage(what: &str, e: StorageError) -> StepError {
    let retryable = e.is_retryable();
    StepError { kind: "staging".into(), message: format!("{what}: {e}"), retryable }
}

/// A manager's view of staging.
#[derive(Debug, Clone)]
pub struct Staging {
    /// The data dir: the local working area (and all of staging without `remote`).
    root: PathBuf,
    remote: Option<Location>,
}

impl Staging {
    pub fn new(root: &Path, remote: Option<Location>) -> Staging {
        Staging { root: root.to_path_buf(), remote }
    }

    /// The staging object store, if there is one.
    pub fn remote(&self) -> Option<&Location> {
        self.remote.as_ref()
    }

    /// The task's local folder in staging: where it writes before leaving files.
    pub fn dir(&self, task: &TaskContext) -> PathBuf {
        task.folder(&self.root, STAGING)
    }

    fn key(task: &TaskContext, name: &str) -> String {
        format!("{}/{}/{}", task.job_id, task.step_id, name.trim_start_matches('/'))
    }

    /// The object key of a reported path, if it is a staged object.
    fn remote_key<'a>(&self, reported: &'a str) -> Option<(&Location, &'a str)> {
        let loc = self.remote.as_ref()?;
        let key = reported.strip_prefix(loc.uri().trim_end_matches('/'))?.strip_prefix('/')?;
        Some((loc, key))
    }

    /// Leaves a local file for the next steps under `name`: uploaded to the staging store
    /// (and removed here), or left where it is. Returns the path to report.
    pub async fn leave(&self, task: &TaskContext, local: &Path, name: &str) -> Result<String, StepError> {
        let Some(loc) = &self.remote else {
            return Ok(local.display().to_string());
        };
        let key = Self::key(task, name);
        loc.upload(local, &key, CHUNK).await.map_err(|e| storage("uploading a staged file", e))?;
        let _ = tokio::fs::remove_file(local).await;
        Ok(format!("{}/{key}", loc.uri().trim_end_matches('/')))
    }

    /// A reported path as a local file: staged objects are downloaded into `dir`, local
    /// paths are returned as they are.
    pub async fn take(&self, reported: &str, dir: &Path) -> Result<PathBuf, StepError> {
        let Some((loc, key)) = self.remote_key(reported) else {
            return Ok(PathBuf::from(reported));
        };
        let dest = dir.join(key);
        loc.download(key, &dest, CHUNK).await.map_err(|e| storage("downloading a staged file", e))?;
        Ok(dest)
    }

    /// Stores a step report; returns the reference to put in the output.
    pub async fn put_report(&self, task: &TaskContext, text: String) -> Result<String, StepError> {
        let name = "_report.json";
        match &self.remote {
            Some(loc) => {
                let key = Self::key(task, name);
                loc.put(&key, text.into_bytes()).await.map_err(|e| storage("writing the step report", e))?;
                Ok(format!("{}/{key}", loc.uri().trim_end_matches('/')))
            }
            None => {
                let dir = self.dir(task);
                let io = |e: std::io::Error| {
                    StepError::retryable("io", format!("writing the step report in {}: {e}", dir.display()))
                };
                tokio::fs::create_dir_all(&dir).await.map_err(io)?;
                let (path, tmp) = (dir.join(name), dir.join(format!(".{name}.tmp")));
                tokio::fs::write(&tmp, text).await.map_err(io)?;
                tokio::fs::rename(&tmp, &path).await.map_err(io)?;
                Ok(path.display().to_string())
            }
        }
    }

    /// Reads a step report by its reference.
    pub async fn read_report(&self, reference: &str) -> Result<String, StepError> {
        if let Some((loc, key)) = self.remote_key(reference) {
            return match loc.read_small(key, u32::MAX as u64).await {
                Ok(Some(body)) => String::from_utf8(body).map_err(|_| {
                    StepError::permanent("bad_input", format!("the upstream report {reference} is not UTF-8"))
                }),
                Ok(None) => Err(StepError::retryable(
                    "staging",
                    format!("the upstream step's report {reference} is gone (swept after WEIR_STAGING_RETENTION?)"),
                )),
                Err(e) => Err(storage("reading the upstream step's report", e)),
            };
        }
        tokio::fs::read_to_string(reference).await.map_err(|e| {
            StepError::retryable(
                "io",
                format!(
                    "reading the upstream step's report {reference}: {e} (do the managers share WEIR_DATA_DIR, or set {STAGING_LOCATION_ENV}?)"
                ),
            )
        })
    }

    /// Removes staged objects older than `max_age_ms`; returns how many. A no-op without
    /// a staging store.
    pub async fn sweep(&self, now_ms: i64, max_age_ms: i64) -> Result<usize, StorageError> {
        let Some(loc) = &self.remote else { return Ok(0) };
        let all = loc.list(&weir_storage::Patterns::new(&["**/*".to_string()])?).await?;
        let mut n = 0;
        for f in all.iter().filter(|f| f.modified_ms > 0 && now_ms - f.modified_ms > max_age_ms) {
            loc.delete(&f.path).await?;
            n += 1;
        }
        Ok(n)
    }
}
