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

    /// Another job's step's local folder in staging (a recovery reads a failed job's).
    pub fn dir_of(&self, job_id: &str, step_id: &str) -> PathBuf {
        self.root.join(STAGING).join(job_id).join(step_id)
    }

    fn key(task: &TaskContext, name: &str) -> String {
        format!("{}/{}/{}", task.job_id, task.step_id, name.trim_start_matches('/'))
    }

    /// The object key of a reported path, if it is a staged object.
    fn remote_key<'a>(&self, reported: &'a str) -> Option<(&Location, &'a str)> {
        let loc = self.remote.as_ref()?;
        Some((loc, loc.path_of(reported)?))
    }

    /// A reported path this manager cannot read: a URI not on its staging store.
    fn foreign(&self, reported: &str) -> Option<StepError> {
        if !reported.contains("://") || self.remote_key(reported).is_some() {
            return None;
        }
        let ours = self.remote.as_ref().map_or("none (the data dir)".to_string(), |l| l.uri().to_string());
        Some(StepError::permanent(
            "bad_input",
            format!(
                "{reported} is not on this manager's staging ({ours}): do the file and batch managers set the same {STAGING_LOCATION_ENV}?"
            ),
        ))
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
        Ok(loc.uri_of(&key))
    }

    /// A reported path as a local file: staged objects are downloaded into `dir`, local
    /// paths are returned as they are.
    pub async fn take(&self, reported: &str, dir: &Path) -> Result<PathBuf, StepError> {
        if let Some(e) = self.foreign(reported) {
            return Err(e);
        }
        let Some((loc, key)) = self.remote_key(reported) else {
            return Ok(PathBuf::from(reported));
        };
        // The key becomes a path below `dir`: it may not climb out or start over at `/`.
        if !weir_core::files::is_safe_relative(key) {
            return Err(StepError::permanent("bad_input", format!("refusing the staged path {reported:?}")));
        }
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
                Ok(loc.uri_of(&key))
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
        if let Some(e) = self.foreign(reference) {
            return Err(e);
        }
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

    /// Removes the staged objects of each job none of whose objects is younger than
    /// `max_age_ms` (so a running job's early files stay); returns how many went. Only
    /// keys shaped `<job uuid>/<step>/…` are touched. A no-op without a staging store.
    pub async fn sweep(&self, now_ms: i64, max_age_ms: i64) -> Result<usize, StorageError> {
        let Some(loc) = &self.remote else { return Ok(0) };
        let all = loc.list(&weir_storage::Patterns::new(&["*/*/**".to_string()])?).await?;
        let mut jobs: std::collections::BTreeMap<&str, (i64, Vec<&str>)> = Default::default();
        for f in &all {
            let Some((job, _)) = f.path.split_once('/') else { continue };
            if uuid::Uuid::parse_str(job).is_err() {
                continue;
            }
            let entry = jobs.entry(job).or_insert((0, vec![]));
            entry.0 = entry.0.max(f.modified_ms);
            entry.1.push(&f.path);
        }
        let mut n = 0;
        for (_, (newest, paths)) in jobs {
            if newest > 0 && now_ms - newest > max_age_ms {
                for p in paths {
                    loc.delete(p).await?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Staging on a "store" that is a local folder, through the same object interface.
    fn staging(dir: &Path) -> (Staging, String) {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).expect("mkdir");
        let uri = format!("file://{}", store.display());
        let loc = Location::open(&LocationSpec { uri: uri.clone(), ..Default::default() }).expect("open");
        (Staging::new(&dir.join("data"), Some(loc)), uri)
    }

    #[tokio::test]
    async fn staged_files_round_trip_and_bad_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (staging, uri) = staging(dir.path());
        let task = TaskContext::for_test("fetch");
        let local = dir.path().join("a.csv");
        std::fs::write(&local, "id\n1\n").expect("write");
        let reported = staging.leave(&task, &local, "sub/a.csv").await.expect("leave");
        assert_eq!(reported, format!("{uri}/{}/fetch/sub/a.csv", task.job_id));
        assert!(!local.exists(), "moved, not copied");
        let back = staging.take(&reported, &dir.path().join("in")).await.expect("take");
        assert_eq!(std::fs::read_to_string(back).expect("read"), "id\n1\n");

        for bad in [format!("{uri}//etc/passwd"), format!("{uri}/j/../../x")] {
            let e = staging.take(&bad, &dir.path().join("in")).await.expect_err("refused");
            assert!(!e.retryable && e.message.contains("refusing"), "{bad}: {e:?}");
        }
        let e = staging.take("s3://elsewhere/j/s/a.csv", dir.path()).await.expect_err("foreign");
        assert!(e.message.contains(STAGING_LOCATION_ENV), "{e:?}");
        let local_only = Staging::new(dir.path(), None);
        assert!(local_only.take(&reported, dir.path()).await.expect_err("no store").message.contains("none"));
    }

    #[tokio::test]
    async fn the_sweep_removes_whole_old_jobs_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tmp");
        let (staging, _) = staging(dir.path());
        let loc = staging.remote().expect("store").clone();
        let job = uuid::Uuid::new_v4();
        loc.put(&format!("{job}/fetch/a.csv"), b"x".to_vec()).await.expect("put");
        loc.put(&format!("{job}/convert/a.parquet"), b"x".to_vec()).await.expect("put");
        loc.put("lake/keep.parquet", b"x".to_vec()).await.expect("put");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
        let hour = 3_600_000;
        assert_eq!(staging.sweep(now, hour).await.expect("sweep"), 0, "a young job stays");
        assert_eq!(staging.sweep(now + 2 * hour, hour).await.expect("sweep"), 2, "an old job goes whole");
        assert!(loc.stat("lake/keep.parquet").await.is_ok(), "not a job's key: never touched");
    }
}
