//! A Parquet dataset on an object store (S3, Azure Blob, GCS), committed per input with
//! conditional writes of the input's manifest — there is no lock to take on a bucket.
//!
//! Layout: as on local disk ([`super::parquet`]), except that each write's files carry
//! its attempt's tag and a nonce: `<prefix>/[<column>=<value>/]<input key>.<tag>-<nonce>.parquet`.
//! Names never reused are what keep a stale writer from overwriting a newer write's file
//! (it can only add its own, which it deletes when its commit is refused) and a late
//! delete of stale files from hitting a committed one.
//!
//! [`publish`] takes a write prepared on local disk and:
//! 1. **claims** the input: reads `_weir/inputs/<key>.json` with its ETag, refuses an
//!    older fence, and writes the manifest back *only if unchanged* (If-Match on the ETag,
//!    the generation on GCS, If-None-Match for the first write) as `pending`, naming its files and, under
//!    `stale`, every file earlier attempts may have left;
//! 2. **uploads** its files (multipart for big ones);
//! 3. **commits**: the manifest, still this claim (checked by ETag), loses `pending`;
//! 4. deletes the stale files and clears the list.
//!
//! Any crash leaves a manifest naming every file that may exist, so the next attempt
//! cleans up. Readers that list the prefix may, while a re-run of an input commits, see
//! its old and new files side by side for the moment between steps 2 and 4; readers that
//! need exact snapshots take each manifest's `files`, or, while it is `pending`, its
//! `previous` files (the last committed write's, still in place until the commit).

use std::path::Path;

pub use weir_storage::Location;
use weir_storage::{Expect, StorageError};

use super::parquet::{manifest_path, Manifest, Prepared};
use crate::DataError;

/// Upload chunk (and multipart part) size.
pub const UPLOAD_CHUNK: usize = 8 * 1024 * 1024;

/// How often a claim or commit is retried when another writer changed the manifest.
const CAS_ATTEMPTS: usize = 8;

/// A storage error as a data error: retryable ones as sink failures (retried), the rest
/// (refused credentials, bad config) as config errors (not retried).
fn storage(e: StorageError) -> DataError {
    if e.is_retryable() {
        DataError::Sink(e.to_string())
    } else {
        DataError::Config(e.to_string())
    }
}

fn join(prefix: &str, rel: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// Opens a sink's location and checks it can take fenced commits.
pub fn open(spec: &weir_core::files::LocationSpec) -> Result<Location, DataError> {
    let loc = Location::open(spec).map_err(storage)?;
    if !loc.conditional_writes() {
        return Err(DataError::Config(format!(
            "parquet sink location {}: the backend does not offer conditional writes, which a fenced commit needs",
            loc.uri()
        )));
    }
    Ok(loc)
}

async fn read(loc: &Location, path: &str) -> Result<Option<(Manifest, String)>, DataError> {
    for _ in 0..CAS_ATTEMPTS {
        match loc.read_versioned(path).await {
            Ok(None) => return Ok(None),
            Ok(Some((body, version))) => {
                let m = serde_json::from_slice(&body)
                    .map_err(|e| DataError::Config(format!("{}/{path} is not a Weir manifest: {e}", loc.uri())))?;
                return Ok(Some((m, version)));
            }
            // Deleted between its stat and its read: look again.
            Err(StorageError::Conflict { .. }) => continue,
            Err(e) => return Err(storage(e)),
        }
    }
    Err(DataError::Sink(format!("{}/{path}: changing too fast to read", loc.uri())))
}

async fn write(loc: &Location, path: &str, m: &Manifest, expect: &Expect) -> Result<bool, DataError> {
    let body = serde_json::to_vec(m).map_err(|e| DataError::Sink(e.to_string()))?;
    match loc.put_if(path, body, expect).await {
        Ok(()) => Ok(true),
        Err(StorageError::Conflict { .. }) => Ok(false),
        Err(e) => Err(storage(e)),
    }
}

/// Publishes a prepared write to the dataset at `prefix` in `loc`; returns the committed
/// objects' URIs. The local scratch files are removed whatever happens.
pub async fn publish(loc: &Location, prefix: &str, p: Prepared) -> Result<Vec<String>, DataError> {
    let result = publish_inner(loc, prefix, &p).await;
    let _ = tokio::fs::remove_dir_all(&p.scratch).await;
    result
}

async fn publish_inner(loc: &Location, prefix: &str, p: &Prepared) -> Result<Vec<String>, DataError> {
    // The attempt's tag and a nonce per call: a name listed as stale by any writer is
    // never written again, so a late delete can never hit a committed file.
    let tag = format!("{}-{}", p.fence.tag(), &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let mine: Vec<String> = p
        .files
        .iter()
        .map(|(folder, _)| {
            let name = format!("{}.{tag}.parquet", p.key);
            if folder.is_empty() {
                name
            } else {
                format!("{folder}/{name}")
            }
        })
        .collect();
    let manifest = join(prefix, &manifest_path(&p.key));
    let mut claim = Manifest {
        writer: p.fence.clone(),
        files: mine.clone(),
        rows: p.rows,
        pending: true,
        stale: vec![],
        previous: None,
    };

    // 1. Claim.
    let mut claimed = false;
    for _ in 0..CAS_ATTEMPTS {
        let prev = read(loc, &manifest).await?;
        let expect = match &prev {
            None => Expect::Absent,
            Some((m, etag)) => {
                p.fence.may_replace(&m.writer).map_err(DataError::StaleFence)?;
                let mut stale: Vec<String> =
                    m.stale.iter().chain(&m.files).filter(|f| !mine.contains(f)).cloned().collect();
                stale.sort();
                stale.dedup();
                claim.stale = stale;
                // Until this commits, the input's rows are the last committed write's.
                claim.previous = if m.pending { m.previous.clone() } else { Some(m.files.clone()) };
                Expect::Version(etag.clone())
            }
        };
        if write(loc, &manifest, &claim, &expect).await? {
            claimed = true;
            break;
        }
    }
    if !claimed {
        return Err(DataError::Sink(format!("{}/{manifest}: too many concurrent writers of this input", loc.uri())));
    }

    // 2. Upload; on failure remove what got there (the claim names it for the next
    // writer too, should this fail).
    for ((_, local), rel) in p.files.iter().zip(&mine) {
        if let Err(e) = upload(loc, local, &join(prefix, rel)).await {
            for rel in &mine {
                let _ = loc.delete(&join(prefix, rel)).await;
            }
            return Err(e);
        }
    }

    // 3. Commit, if the claim still stands.
    let mut done = claim.clone();
    done.pending = false;
    done.previous = None;
    let mut committed = false;
    for _ in 0..CAS_ATTEMPTS {
        let Some((now, etag)) = read(loc, &manifest).await? else {
            return Err(DataError::Sink(format!("{}/{manifest} vanished while this write committed", loc.uri())));
        };
        if now == done {
            committed = true; // our earlier commit landed though its reply was lost
            break;
        }
        if now.writer != p.fence || now.files != mine {
            // Superseded: the newer claim lists our files as stale; remove them now.
            for rel in &mine {
                let _ = loc.delete(&join(prefix, rel)).await;
            }
            return Err(match p.fence.may_replace(&now.writer) {
                Err(m) => DataError::StaleFence(m),
                Ok(()) => DataError::Sink(format!(
                    "another write of this input (task {}) took it over; this one will be retried",
                    now.writer.task
                )),
            });
        }
        done.stale = now.stale.clone();
        if write(loc, &manifest, &done, &Expect::Version(etag)).await? {
            committed = true;
            break;
        }
    }
    if !committed {
        return Err(DataError::Sink(format!("{}/{manifest}: too many concurrent writers of this input", loc.uri())));
    }

    // 4. Clean up what earlier attempts left; a failure here leaves the list for the next.
    if !done.stale.is_empty() {
        let mut cleaned = true;
        for rel in &done.stale {
            cleaned &= loc.delete(&join(prefix, rel)).await.is_ok();
        }
        if cleaned {
            if let Ok(Some((now, etag))) = read(loc, &manifest).await {
                if now == done {
                    let mut tidy = done.clone();
                    tidy.stale.clear();
                    let _ = write(loc, &manifest, &tidy, &Expect::Version(etag)).await;
                }
            }
        }
    }
    Ok(mine.iter().map(|rel| format!("{}/{}", loc.uri().trim_end_matches('/'), join(prefix, rel))).collect())
}

async fn upload(loc: &Location, local: &Path, path: &str) -> Result<(), DataError> {
    loc.upload(local, path, UPLOAD_CHUNK).await.map(|_| ()).map_err(storage)
}
