//! The file kinds: `probe`, `discover`, `fetch` and `archive` (configs in `weir_core::files`).
//!
//! `probe` checks a location answers (root there, listing allowed) so a job fails at its
//! first step, naming the location, rather than after it has started work.
//!
//! `fetch` downloads in parallel (default 10 at once) in chunks (default 10 MiB) into
//! `$WEIR_DATA_DIR/staging/<job>/<step>/`, computing each file's SHA-256. It checks the
//! download against what the source offers — a `<file>.sha256` sidecar, else an S3 ETag
//! that is a plain MD5, else a Content-MD5 — retries a mismatch, and then quarantines the
//! file under `$WEIR_DATA_DIR/quarantine/files/<job>/<step>/` with a `.reason.json` beside
//! it. A verified file is left in staging (`weir_worker::staging`: there, or uploaded to
//! the staging store). Its output lists each staged file with its source, so the batch
//! kinds key their writes by the file's origin.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use weir_core::catalog::FILE_KINDS;
use weir_core::files::{
    ArchiveStep, DiscoverStep, FetchStep, LocationSpec, ProbeStep, DEFAULT_CHUNK_BYTES, DEFAULT_FETCH_CONCURRENCY,
    DEFAULT_VERIFY_ATTEMPTS,
};
use weir_storage::{Location, Patterns, StorageError};
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::{now_ms, FileSettings};

/// Runs the file kinds.
pub struct FileSteps {
    settings: FileSettings,
    staging: weir_worker::staging::Staging,
}

impl FileSteps {
    /// Where fetched files and reports go.
    pub(crate) fn staging(&self) -> &weir_worker::staging::Staging {
        &self.staging
    }

    pub fn new(settings: FileSettings) -> Self {
        FileSteps { staging: settings.staging(), settings }
    }
}

pub(crate) fn storage_error(e: &StorageError) -> StepError {
    let kind = match e {
        StorageError::Config { .. } | StorageError::Pattern { .. } => "bad_config",
        StorageError::NotFound { .. } => "not_found",
        _ => "storage",
    };
    StepError { kind: kind.into(), message: e.to_string(), retryable: e.is_retryable() }
}

fn bad_config(e: String) -> StepError {
    StepError::permanent("bad_config", e)
}

/// The location a step works on: its own, or the one an upstream step reported.
fn location_of(own: Option<&LocationSpec>, upstream: &[(String, Value)]) -> Result<LocationSpec, StepError> {
    if let Some(l) = own {
        return Ok(l.clone());
    }
    for (_, v) in upstream {
        if let Some(l) = v.get("location") {
            return serde_json::from_value(l.clone())
                .map_err(|e| bad_config(format!("an upstream step reported a bad location: {e}")));
        }
    }
    Err(bad_config("no location: set config.location, or depend on a discover step".into()))
}

/// Paths below `location` that upstream steps reported: a `path` beside a `location`
/// (discover), a `source_path` (fetch), or an `input`/`source` URI under the location's
/// (the batch kinds keep the original URI as the input's identity).
pub fn upstream_paths(location: &LocationSpec, upstream: &[(String, Value)]) -> Vec<String> {
    let prefix = format!("{}/", weir_core::files::redact_uri(&location.uri).trim_end_matches('/'));
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, v) in upstream {
        let listed_here = v.get("location").is_some();
        for f in v.get("files").and_then(Value::as_array).into_iter().flatten() {
            let relative = f
                .get("source_path")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| listed_here.then(|| f.get("path").and_then(Value::as_str).map(str::to_string)).flatten())
                .or_else(|| {
                    ["input", "source"]
                        .iter()
                        .filter_map(|k| f.get(*k).and_then(Value::as_str))
                        .find_map(|u| u.strip_prefix(&prefix).map(str::to_string))
                });
            if let Some(p) = relative {
                if seen.insert(p.clone()) {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[async_trait]
impl StepHandler for FileSteps {
    fn kinds(&self) -> &'static [&'static str] {
        &FILE_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        match task.kind.as_str() {
            "probe" => self.probe(task).await,
            "discover" => self.discover(task).await,
            "fetch" => self.fetch(task).await,
            "archive" => self.archive(task).await,
            other => Err(StepError::permanent("unknown_kind", format!("the file manager cannot run {other:?}"))),
        }
    }
}

impl FileSteps {
    async fn probe(&self, task: &TaskContext) -> Result<Value, StepError> {
        let cfg = ProbeStep::parse(task.config.as_ref()).map_err(bad_config)?;
        let loc = Location::open(&cfg.location).map_err(|e| storage_error(&e))?;
        let first = loc.probe().await.map_err(|e| storage_error(&e))?;
        Ok(json!({"location": loc.uri(), "reachable": true, "empty": first.is_none(), "first": first}))
    }

    async fn discover(&self, task: &TaskContext) -> Result<Value, StepError> {
        let cfg = DiscoverStep::parse(task.config.as_ref()).map_err(bad_config)?;
        let loc = Location::open(&cfg.location).map_err(|e| storage_error(&e))?;
        let patterns = Patterns::new(&cfg.patterns).map_err(|e| storage_error(&e))?;
        let listed = loc.list(&patterns).await.map_err(|e| storage_error(&e))?;
        let seen = listed.len();
        let files = match &cfg.watch {
            None => listed,
            Some(w) => {
                let store =
                    self.settings.store.get().await.map_err(|e| StepError::retryable("inventory", e.to_string()))?;
                let claimed = store
                    .claim_files(w, &listed, now_ms())
                    .await
                    .map_err(|e| StepError::retryable("inventory", e.to_string()))?;
                claimed.into_iter().map(|c| c.file).collect()
            }
        };
        let uri = loc.uri().trim_end_matches('/').to_string();
        let files: Vec<Value> = files
            .iter()
            .map(|f| {
                json!({"path": f.path, "source": format!("{uri}/{}", f.path), "size": f.size,
                       "modified_ms": f.modified_ms, "etag": f.etag})
            })
            .collect();
        let report = json!({"location": cfg.location, "seen": seen, "count": files.len(), "files": files});
        weir_worker::report::publish(report, &self.staging, task).await
    }

    async fn fetch(&self, task: &TaskContext) -> Result<Value, StepError> {
        let cfg = FetchStep::parse(task.config.as_ref()).map_err(bad_config)?;
        let upstream = weir_worker::report::upstream(task, &self.staging).await?;
        let spec = location_of(cfg.location.as_ref(), &upstream)?;
        let loc = Location::open(&spec).map_err(|e| storage_error(&e))?;
        let mut paths = if cfg.paths.is_empty() { upstream_paths(&spec, &upstream) } else { cfg.paths.clone() };
        if let Some(shard) = cfg.shard {
            paths.retain(|p| shard.holds(p));
        }
        let chunk = cfg.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES) as usize;
        let attempts = cfg.verify_attempts.unwrap_or(DEFAULT_VERIFY_ATTEMPTS);
        let concurrency = cfg.concurrency.unwrap_or(DEFAULT_FETCH_CONCURRENCY);
        let (files, quarantined) = self.fetch_all(task, &loc, &paths, chunk, attempts, concurrency).await?;
        let bytes: u64 = files.iter().filter_map(|f| f["size"].as_u64()).sum();
        let scheme = crate::metrics::SchemeLabels { scheme: loc.scheme().to_string() };
        let m = &crate::metrics::FILES;
        m.fetched.get_or_create(&scheme).inc_by(files.len() as u64);
        m.bytes.get_or_create(&scheme).inc_by(bytes);
        m.quarantined.get_or_create(&scheme).inc_by(quarantined.len() as u64);
        let report =
            json!({"location": spec, "count": files.len(), "bytes": bytes, "files": files, "quarantined": quarantined});
        weir_worker::report::publish(report, &self.staging, task).await
    }

    /// Downloads `paths` of `loc` into the task's staging, verified, `concurrency` at once:
    /// the fetched files in path order and the quarantined ones (a checksum that kept
    /// mismatching).
    pub(crate) async fn fetch_all(
        &self,
        task: &TaskContext,
        loc: &Location,
        paths: &[String],
        chunk: usize,
        attempts: u32,
        concurrency: usize,
    ) -> Result<(Vec<Value>, Vec<Value>), StepError> {
        let staging = self.staging.dir(task);
        let quarantine = task.folder(&self.settings.data_dir.join(weir_worker::QUARANTINE), "files");
        let uri = loc.uri().trim_end_matches('/').to_string();

        let results: Vec<Result<Value, (String, StorageError)>> = stream::iter(paths.iter().cloned())
            .map(|path| {
                let (loc, staging, quarantine, uri) = ((*loc).clone(), staging.clone(), quarantine.clone(), uri.clone());
                let cancel = task.cancel.clone();
                let shared = &self.staging;
                async move {
                    let one = async {
                        let mut v = fetch_one(&loc, &path, &staging, &quarantine, &uri, chunk, attempts).await?;
                        // Verified: leave it where the next steps read it (the staging store, if any).
                        if let Some(local) = v.get("path").and_then(Value::as_str).map(PathBuf::from) {
                            v["path"] = Value::String(shared.leave(task, &local, &path).await.map_err(|e| {
                                StorageError::Backend {
                                    op: "stage", uri: uri.clone(), path: path.clone(), message: e.message, retryable: e.retryable,
                                }
                            })?);
                        }
                        Ok::<Value, StorageError>(v)
                    };
                    tokio::select! {
                        r = one => r.map_err(|e| (path, e)),
                        _ = cancel.cancelled() => Err((path.clone(), StorageError::Backend {
                            op: "fetch", uri, path, message: "stopped: task cancelled or lease lost".into(), retryable: true,
                        })),
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut files = Vec::new();
        let mut quarantined = Vec::new();
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(v) if v.get("quarantined").is_some() => quarantined.push(v),
                Ok(v) => files.push(v),
                Err(e) => failed.push(e),
            }
        }
        if let Some((path, first)) = failed.first() {
            let mut err = storage_error(first);
            err.retryable = failed.iter().all(|(_, e)| e.is_retryable());
            err.message =
                format!("{} of {} files could not be fetched; first: {path}: {first}", failed.len(), paths.len());
            return Err(err);
        }
        files.sort_by(|a, b| a["source_path"].as_str().cmp(&b["source_path"].as_str()));
        Ok((files, quarantined))
    }

    async fn archive(&self, task: &TaskContext) -> Result<Value, StepError> {
        let cfg = ArchiveStep::parse(task.config.as_ref()).map_err(bad_config)?;
        let upstream = weir_worker::report::upstream(task, &self.staging).await?;
        let spec = location_of(cfg.location.as_ref(), &upstream)?;
        let loc = Location::open(&spec).map_err(|e| storage_error(&e))?;
        let paths = if cfg.paths.is_empty() { upstream_paths(&spec, &upstream) } else { cfg.paths.clone() };
        let prefix = cfg.prefix.clone().unwrap_or_else(|| "archive".into());
        let keep = cfg.mode.as_deref() == Some("copy");
        let mut archived = Vec::new();
        for p in &paths {
            let to = format!("{}/{p}", prefix.trim_end_matches('/'));
            match loc.relocate(p, &to, keep).await {
                Ok(()) => archived.push(json!({"from": p, "to": to})),
                // Already moved by an earlier attempt of this step: done, not an error.
                Err(StorageError::NotFound { .. }) if !keep => {
                    archived.push(json!({"from": p, "to": to, "already": true}))
                }
                Err(e) => return Err(storage_error(&e)),
            }
        }
        let report = json!({"location": spec, "mode": if keep { "copy" } else { "move" }, "count": archived.len(), "archived": archived});
        weir_worker::report::publish(report, &self.staging, task).await
    }
}

/// What the source says the file's digest should be.
async fn expected_digest(loc: &Location, path: &str) -> Result<Option<(&'static str, String)>, StorageError> {
    if let Some(body) = loc.read_small(&format!("{path}.sha256"), 4096).await? {
        let text = String::from_utf8_lossy(&body);
        if let Some(h) =
            text.split_whitespace().next().filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Ok(Some(("sha256", h.to_ascii_lowercase())));
        }
    }
    let (seen, content_md5) = loc.stat(path).await?;
    if loc.scheme() == "s3" {
        // A single-part upload's ETag is the MD5 of the content; multipart ones have a '-'.
        if let Some(e) = seen.etag.filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Ok(Some(("md5", e.to_ascii_lowercase())));
        }
    }
    if let Some(m) = content_md5.and_then(|b| base64_to_hex(&b)) {
        return Ok(Some(("md5", m)));
    }
    Ok(None)
}

/// A base64 Content-MD5 as lower-case hex, if it is an MD5 at all.
fn base64_to_hex(b64: &str) -> Option<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    (raw.len() == 16).then(|| weir_storage::hex(&raw))
}

/// Downloads one file, verifying it; quarantines it when it keeps failing the check.
#[tracing::instrument(name = "transfer", skip_all, fields(uri = %uri, path = %path))]
async fn fetch_one(
    loc: &Location,
    path: &str,
    staging: &Path,
    quarantine: &Path,
    uri: &str,
    chunk: usize,
    attempts: u32,
) -> Result<Value, StorageError> {
    // A listing names paths below the location; one that climbs out would write outside
    // staging, so it is refused whatever the server says.
    if !weir_core::files::is_safe_relative(path) {
        return Err(StorageError::Config { uri: uri.to_string(), message: format!("refusing the path {path:?}") });
    }
    let dest = staging.join(path);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let expected = expected_digest(loc, path).await?;
        let got = loc.download(path, &dest, chunk).await?;
        let (by, ok) = match &expected {
            None => ("none", true),
            Some(("sha256", h)) => ("sha256 sidecar", *h == got.sha256),
            Some((_, h)) => ("md5", *h == got.md5),
        };
        if ok {
            return Ok(json!({
                "source": format!("{uri}/{path}"), "source_path": path, "path": dest.display().to_string(),
                "size": got.size, "sha256": got.sha256, "verified_by": by, "attempts": attempt,
            }));
        }
        last = match expected {
            Some((kind, h)) => format!(
                "checksum mismatch: the source's {kind} is {h}, the download's is {}",
                if kind == "sha256" { &got.sha256 } else { &got.md5 }
            ),
            None => String::new(),
        };
        tracing::warn!(path, attempt, reason = %last, "checksum mismatch; fetching again");
    }
    let to = quarantine.join(path);
    let local = |p: &Path, e: std::io::Error| StorageError::Local { path: p.display().to_string(), source: e };
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| local(dir, e))?;
    }
    tokio::fs::rename(&dest, &to).await.map_err(|e| local(&to, e))?;
    let reason = json!({"source": format!("{uri}/{path}"), "reason": "checksum_mismatch", "detail": last,
                        "attempts": attempts, "quarantined_ms": now_ms()});
    let reason_path = PathBuf::from(format!("{}.reason.json", to.display()));
    tokio::fs::write(&reason_path, reason.to_string()).await.map_err(|e| local(&reason_path, e))?;
    tracing::error!(path, reason = %last, quarantine = %to.display(), "file quarantined");
    Ok(json!({"source": format!("{uri}/{path}"), "source_path": path, "quarantined": to.display().to_string(),
              "reason": "checksum_mismatch", "detail": last}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_come_from_discover_fetch_or_batch_outputs() {
        let loc = LocationSpec { uri: "s3://b/in".into(), ..Default::default() };
        let up = vec![
            ("discover".to_string(), json!({"location": {"uri": "s3://b/in"}, "files": [{"path": "a.csv"}]})),
            ("fetch".to_string(), json!({"files": [{"source_path": "b.csv", "path": "/staging/b.csv"}]})),
            ("store".to_string(), json!({"files": [{"input": "s3://b/in/c.csv"}, {"input": "s3://other/d.csv"}]})),
        ];
        assert_eq!(upstream_paths(&loc, &up), vec!["a.csv", "b.csv", "c.csv"]);
    }

    #[test]
    fn content_md5_decodes() {
        // MD5("hello") = 5d41402abc4b2a76b9719d911017c592
        assert_eq!(base64_to_hex("XUFAKrxLKna5cZ2REBfFkg=="), Some("5d41402abc4b2a76b9719d911017c592".into()));
        assert_eq!(base64_to_hex("bad!"), None);
    }
}
