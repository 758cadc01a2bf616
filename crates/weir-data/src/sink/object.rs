//! A Parquet dataset on an object store (S3, Azure Blob, GCS), committed per input with
//! conditional writes of the input's manifest and of the dataset's schema history —
//! there is no lock to take on a bucket.
//!
//! Layout: as on local disk ([`super::parquet`]), except that each write's files carry
//! its attempt's tag and a nonce: `<prefix>/[<folder>=<value>/]<input key>.<tag>-<nonce>.parquet`.
//! Names never reused are what keep a stale writer from overwriting a newer write's file
//! (it can only add its own, which it deletes when its commit is refused) and a late
//! delete of stale files from hitting a committed one.
//!
//! A write prepared on local disk goes through:
//! 1. [`ObjectDataset::stage`] **claims** the input: reads `_weir/inputs/<key>.json`
//!    with its ETag, refuses an older fence, and writes the manifest back *only if
//!    unchanged* (If-Match on the ETag, the generation on GCS, If-None-Match for the first
//!    write) as `pending`, naming its files and, under `stale`, every file earlier
//!    attempts may have left; then **uploads** its files (multipart for big ones).
//! 2. [`Staged::commit`] records the schema (a conditional write of `_weir/schema.json`,
//!    merged onto what concurrent writers recorded, then `_common_metadata`; a version
//!    recorded stays even if this write fails later, as others may rely on it), and
//!    **commits** the manifest: still this claim (checked by ETag), it loses `pending`.
//! 3. [`ObjectCommit::finalize`] deletes the stale files (the input's previous ones
//!    among them) and clears the list; until then [`ObjectCommit::undo`] can give the
//!    input its previous files back.
//!
//! Any crash leaves a manifest naming every file that may exist, so the next attempt
//! cleans up. Readers that list the prefix may, while a re-run of an input commits, see
//! its old and new files side by side until it is finalized; readers that need exact
//! snapshots take each manifest's `files`, or, while it is `pending`, its `previous`.

use weir_core::dataset::contract::{merge, SinkPlan};
use weir_core::dataset::schema::{Change, Column, History, Origin, Schema};
pub use weir_storage::Location;
use weir_storage::{Expect, Patterns, StorageError};

use super::history::{self, COMMON_METADATA, HISTORY};
use super::parquet::{file_path, manifest_path, Manifest, Prepared};
use super::{safe_name, WriteFence};
use crate::typing::column_type;
use crate::DataError;

/// Upload chunk (and multipart part) size.
pub const UPLOAD_CHUNK: usize = 8 * 1024 * 1024;

/// How often a conditional write is retried when another writer changed the object.
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

/// Reads a small JSON object with its version token; `None` if absent.
async fn read<T: serde::de::DeserializeOwned>(
    loc: &Location,
    path: &str,
    what: &str,
) -> Result<Option<(T, String)>, DataError> {
    for _ in 0..CAS_ATTEMPTS {
        match loc.read_versioned(path).await {
            Ok(None) => return Ok(None),
            Ok(Some((body, version))) => {
                let v = serde_json::from_slice(&body)
                    .map_err(|e| DataError::Config(format!("{} is not a Weir {what}: {e}", loc.uri_of(path))))?;
                return Ok(Some((v, version)));
            }
            // Deleted between its stat and its read: look again.
            Err(StorageError::Conflict { .. }) => continue,
            Err(e) => return Err(storage(e)),
        }
    }
    Err(DataError::Sink(format!("{}: changing too fast to read", loc.uri_of(path))))
}

/// Writes a small object if it is as `expect` says; `false` if another writer got there first.
async fn write(loc: &Location, path: &str, body: Vec<u8>, expect: &Expect) -> Result<bool, DataError> {
    match loc.put_if(path, body, expect).await {
        Ok(()) => Ok(true),
        Err(StorageError::Conflict { .. }) => Ok(false),
        Err(e) => Err(storage(e)),
    }
}

fn body(m: &Manifest) -> Result<Vec<u8>, DataError> {
    serde_json::to_vec(m).map_err(|e| DataError::Sink(e.to_string()))
}

/// The newest lease a task claimed a dataset with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TaskFence {
    fence: u64,
}

/// A Parquet dataset at `prefix` in an object store.
#[derive(Debug, Clone)]
pub struct ObjectDataset {
    loc: Location,
    prefix: String,
    name: String,
}

impl ObjectDataset {
    pub fn new(loc: Location, prefix: &str) -> ObjectDataset {
        let name = format!("parquet dataset {}", loc.uri_of(prefix.trim_matches('/')));
        ObjectDataset { loc, prefix: prefix.to_string(), name }
    }

    /// The dataset's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dataset's URI.
    pub fn uri(&self) -> String {
        self.loc.uri_of(self.prefix.trim_matches('/'))
    }

    fn path(&self, rel: &str) -> String {
        join(&self.prefix, rel)
    }

    /// The dataset's schema history: as recorded, adopted from the footers of the files
    /// of a dataset written before Weir kept one, or empty.
    pub async fn history(&self) -> Result<History, DataError> {
        Ok(self.history_versioned().await?.0)
    }

    /// The history with the version token of `_weir/schema.json` (`None`: not written
    /// yet, the history is adopted or empty).
    async fn history_versioned(&self) -> Result<(History, Option<String>), DataError> {
        if let Some((h, etag)) = read::<History>(&self.loc, &self.path(HISTORY), "schema history").await? {
            return Ok((h, Some(etag)));
        }
        let mut h = History::default();
        if let Some(s) = self.adopt().await? {
            h.push(s, vec![Change::Adopted], Origin::default());
        }
        Ok((h, None))
    }

    /// The schema of the committed files, for a dataset written before Weir kept its
    /// history: each file's footer, read from its end.
    async fn adopt(&self) -> Result<Option<Schema>, DataError> {
        let mut adoption = history::Adoption::default();
        for (_, m) in self.manifests().await? {
            for rel in &m.files {
                adoption.add(rel, self.footer_schema(&self.path(rel)).await?)?;
            }
        }
        Ok(adoption.finish())
    }

    /// The inputs' manifests, by input key.
    async fn manifests(&self) -> Result<Vec<(String, Manifest)>, DataError> {
        let pattern = Patterns::new(&[self.path("_weir/inputs/*.json")]).map_err(storage)?;
        let mut out = Vec::new();
        for f in self.loc.list(&pattern).await.map_err(storage)? {
            let Some((m, _)) = read::<Manifest>(&self.loc, &f.path, "manifest").await? else { continue };
            let key = f.path.rsplit('/').next().and_then(|n| n.strip_suffix(".json")).unwrap_or_default();
            out.push((key.to_string(), m));
        }
        Ok(out)
    }

    /// The committed inputs, by input key, with the identity their writer gave (recorded
    /// at commit since Weir records it). An input claimed by a write not committed yet
    /// counts if an earlier write of it committed (its rows are the claim's `previous`).
    pub async fn inputs(&self) -> Result<Vec<(String, Option<String>)>, DataError> {
        let mut out: Vec<(String, Option<String>)> = self
            .manifests()
            .await?
            .into_iter()
            .filter(|(_, m)| match m.pending {
                // Claimed by a write not committed yet: an earlier write committed.
                true => m.input.is_some() || m.previous.as_ref().is_some_and(|f| !f.is_empty()),
                // A manifest put back after an input's first write failed names neither.
                false => m.input.is_some() || !m.files.is_empty(),
            })
            .map(|(key, m)| (key, m.input))
            .collect();
        out.sort();
        Ok(out)
    }

    fn fence_path(&self, task: &str) -> String {
        self.path(&format!("_weir/fences/{}.json", safe_name(task)))
    }

    /// The newest lease a task claimed the dataset with (see [`Self::claim`]); refuses an
    /// older one.
    async fn check_fence(&self, f: &WriteFence) -> Result<Option<(u64, String)>, DataError> {
        let now = read::<TaskFence>(&self.loc, &self.fence_path(&f.task), "task fence").await?;
        if let Some((t, _)) = &now {
            f.within_claim(&self.name, t.fence)?;
        }
        Ok(now.map(|(t, etag)| (t.fence, etag)))
    }

    /// A task's new lease claims the dataset before it reads where a stream stands, as a
    /// local dataset's claim does: the task's fence is raised to it
    /// (`_weir/fences/<task>.json`, a conditional write), and an input a former lease of
    /// the task has claimed but not committed is given back — its commit is refused, and
    /// any later write of the former lease is refused once it claims its input (the
    /// write checks the fence after claiming, so no write slips between).
    pub async fn claim(&self, f: &WriteFence) -> Result<(), DataError> {
        let path = self.fence_path(&f.task);
        let mut raised = false;
        for _ in 0..CAS_ATTEMPTS {
            let expect = match self.check_fence(f).await? {
                Some((n, _)) if n == f.fence => {
                    raised = true;
                    break;
                }
                Some((_, etag)) => Expect::Version(etag),
                None => Expect::Absent,
            };
            let body = serde_json::to_vec(&TaskFence { fence: f.fence }).map_err(|e| DataError::Sink(e.to_string()))?;
            if write(&self.loc, &path, body, &expect).await? {
                raised = true;
                break;
            }
        }
        if !raised {
            return Err(DataError::Sink(format!("{}: too many concurrent claims", self.loc.uri_of(&path))));
        }
        for (key, m) in self.manifests().await? {
            if m.pending && m.writer.task == f.task && m.writer.fence < f.fence {
                self.take_back(&key, f).await?;
            }
        }
        Ok(())
    }

    /// Puts an input claimed by a former lease back to its last committed write, under
    /// `f`, and deletes the former lease's files.
    async fn take_back(&self, key: &str, f: &WriteFence) -> Result<(), DataError> {
        let path = self.path(&manifest_path(key));
        for _ in 0..CAS_ATTEMPTS {
            let Some((m, etag)) = read::<Manifest>(&self.loc, &path, "manifest").await? else { return Ok(()) };
            if !(m.pending && m.writer.task == f.task && m.writer.fence < f.fence) {
                return Ok(());
            }
            let files = m.previous.clone().unwrap_or_default();
            let mut stale: Vec<String> =
                m.stale.iter().chain(&m.files).filter(|x| !files.contains(x)).cloned().collect();
            stale.sort();
            stale.dedup();
            let back = Manifest {
                writer: f.clone(),
                files,
                rows: m.previous_rows.unwrap_or(0),
                schema_version: m.schema_version,
                pending: false,
                stale,
                previous: None,
                previous_rows: None,
                input: m.input.clone(),
            };
            if write(&self.loc, &path, body(&back)?, &Expect::Version(etag)).await? {
                tracing::info!(dataset = %self.name, input = key, "gave back an input a former lease had claimed");
                for rel in m.files.iter().filter(|x| !back.files.contains(x)) {
                    let _ = self.loc.delete(&self.path(rel)).await;
                }
                return Ok(());
            }
        }
        Err(DataError::Sink(format!("{}: too many concurrent writers of this input", self.loc.uri_of(&path))))
    }

    /// A Parquet object's schema, from its footer.
    async fn footer_schema(&self, path: &str) -> Result<Schema, DataError> {
        let bad = |m: String| DataError::Format(format!("{}: {m}", self.loc.uri_of(path)));
        let (tail, _) = self.loc.read_tail(path, 8).await.map_err(storage)?;
        if tail.len() < 8 || &tail[4..] != b"PAR1" {
            return Err(bad("not a Parquet file".into()));
        }
        let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        let (footer, _) = self.loc.read_tail(path, len + 8).await.map_err(storage)?;
        let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer[..footer.len() - 8])
            .map_err(|e| bad(format!("unreadable footer: {e}")))?;
        let fm = meta.file_metadata();
        let arrow = parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata())
            .map_err(|e| bad(format!("unreadable schema: {e}")))?;
        Ok(Schema {
            columns: arrow
                .fields()
                .iter()
                .map(|f| Column { name: f.name().clone(), kind: column_type(f.data_type()), nullable: true })
                .collect(),
            partition: None,
        })
    }

    /// Claims the input and uploads a prepared write's files. The local scratch files
    /// are removed whatever happens.
    pub async fn stage(&self, p: Prepared) -> Result<Staged, DataError> {
        let result = self.stage_inner(&p).await;
        let _ = tokio::fs::remove_dir_all(&p.scratch).await;
        result
    }

    async fn stage_inner(&self, p: &Prepared) -> Result<Staged, DataError> {
        // The attempt's tag and a nonce per call: a name listed as stale by any writer is
        // never written again, so a late delete can never hit a committed file.
        let tag = format!("{}-{}", p.fence.tag(), &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let name = format!("{}.{tag}.parquet", p.key);
        let mine: Vec<String> = p.files.iter().map(|(folder, _)| file_path(folder, &name)).collect();
        let manifest = self.path(&manifest_path(&p.key));
        let mut claim = Manifest {
            writer: p.fence.clone(),
            files: mine.clone(),
            rows: p.rows,
            schema_version: None,
            pending: true,
            stale: vec![],
            previous: None,
            previous_rows: None,
            input: None,
        };
        let mut previous = None;
        let mut claimed = false;
        for _ in 0..CAS_ATTEMPTS {
            let prev = read::<Manifest>(&self.loc, &manifest, "manifest").await?;
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
                    claim.previous_rows = if m.pending { m.previous_rows } else { Some(m.rows) };
                    claim.input = m.input.clone();
                    Expect::Version(etag.clone())
                }
            };
            if write(&self.loc, &manifest, body(&claim)?, &expect).await? {
                previous = prev.map(|(m, _)| m);
                claimed = true;
                break;
            }
        }
        if !claimed {
            return Err(DataError::Sink(format!(
                "{}: too many concurrent writers of this input",
                self.loc.uri_of(&manifest)
            )));
        }
        let staged = Staged { ds: self.clone(), manifest, claim, previous, wrote: p.schema.clone() };
        // Claimed: a newer lease of the task that claimed the dataset before now finds
        // this claim and gives it back; one that claims later is seen here.
        if let Err(e) = self.check_fence(&p.fence).await {
            staged.abort().await;
            return Err(e);
        }
        for ((_, local), rel) in p.files.iter().zip(&mine) {
            if let Err(e) = self.loc.upload(local, &self.path(rel), UPLOAD_CHUNK).await {
                staged.abort().await;
                return Err(storage(e));
            }
        }
        Ok(staged)
    }

    /// Stages, commits and finalizes a write in one go (a step with this one sink).
    pub async fn publish(&self, p: Prepared, plan: &SinkPlan, origin: &Origin) -> Result<Vec<String>, DataError> {
        let committed = self.stage(p).await?.commit(plan, origin).await?;
        let files = committed.files();
        committed.finalize().await;
        Ok(files)
    }

    /// Records `plan`'s schema changes on top of what the history holds now; returns the
    /// version the write's files hold. A version recorded stays even if the write then
    /// fails: another write may already hold files under it (and nothing on a bucket can
    /// tell), and its new columns are nullable.
    async fn record_schema(&self, plan: &SinkPlan, wrote: &Schema, origin: &Origin) -> Result<Option<u32>, DataError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut h, etag) = self.history_versioned().await?;
            let merged = merge(h.current().map(|v| &v.schema), plan, wrote, &self.name).map_err(DataError::Sink)?;
            if let Some((column, kind)) = merged.conform.first() {
                return Err(DataError::Sink(format!(
                    "{}: column {column:?} became {kind} meanwhile; this write is retried with the new schema",
                    self.name
                )));
            }
            // A first write with no columns (an empty input) records nothing.
            let changed = (h.versions.is_empty() && !merged.schema.columns.is_empty()) || !merged.changes.is_empty();
            if !changed && (etag.is_some() || h.versions.is_empty()) {
                return Ok(h.current().map(|v| v.version));
            }
            if changed {
                let changes = if h.versions.is_empty() { vec![Change::Created] } else { merged.changes };
                h.push(merged.schema, changes, origin.clone());
            }
            let expect = etag.map_or(Expect::Absent, Expect::Version);
            if write(&self.loc, &self.path(HISTORY), history::encode(&h)?, &expect).await? {
                self.write_common_metadata(&h).await;
                return Ok(h.current().map(|v| v.version));
            }
        }
        Err(DataError::Sink(format!("{}: too many concurrent changes of its schema", self.name)))
    }

    /// `_common_metadata` for the history's current schema. A reader's convenience,
    /// derived from the history: a failure leaves the previous one until the next change.
    async fn write_common_metadata(&self, h: &History) {
        let Some(v) = h.current() else { return };
        match history::common_metadata(&v.schema) {
            Ok(b) => {
                if let Err(e) = self.loc.put(&self.path(COMMON_METADATA), b).await {
                    tracing::warn!(dataset = %self.name, error = %e, "could not write _common_metadata");
                }
            }
            Err(e) => tracing::warn!(dataset = %self.name, error = %e, "could not encode _common_metadata"),
        }
    }

    /// Puts the input's manifest back to what it was before `staged` (its previous
    /// files, or none), keeping this write's fence as the newest seen; deletes this
    /// write's files. Nothing happens to a manifest another write took over since.
    async fn restore(&self, staged: &Staged) {
        let mine = &staged.claim.files;
        for _ in 0..CAS_ATTEMPTS {
            let Ok(Some((now, etag))) = read::<Manifest>(&self.loc, &staged.manifest, "manifest").await else { break };
            if now.writer != staged.claim.writer || &now.files != mine {
                break;
            }
            let prev = staged.previous.as_ref();
            let files = prev.map(|m| if m.pending { m.previous.clone().unwrap_or_default() } else { m.files.clone() });
            let files = files.unwrap_or_default();
            let mut stale: Vec<String> = now.stale.iter().filter(|f| !files.contains(f)).cloned().collect();
            stale.extend(mine.iter().cloned());
            let back = Manifest {
                writer: staged.claim.writer.clone(),
                files,
                rows: prev.map_or(0, |m| m.rows),
                schema_version: prev.and_then(|m| m.schema_version),
                pending: false,
                stale,
                previous: None,
                previous_rows: None,
                input: prev.and_then(|m| m.input.clone()),
            };
            let Ok(b) = body(&back) else { break };
            match write(&self.loc, &staged.manifest, b, &Expect::Version(etag)).await {
                Ok(true) => break,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(dataset = %self.name, error = %e, "could not restore an input's manifest");
                    break;
                }
            }
        }
        for rel in mine {
            let _ = self.loc.delete(&self.path(rel)).await;
        }
    }
}

/// A write claimed and uploaded, not committed.
#[derive(Debug)]
pub struct Staged {
    ds: ObjectDataset,
    /// The manifest's path.
    manifest: String,
    claim: Manifest,
    previous: Option<Manifest>,
    wrote: arrow_schema::SchemaRef,
}

impl Staged {
    /// Records the schema and commits the manifest. On failure the claim is given up.
    pub async fn commit(self, plan: &SinkPlan, origin: &Origin) -> Result<ObjectCommit, DataError> {
        match self.commit_inner(plan, origin).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.ds.restore(&self).await;
                Err(e)
            }
        }
    }

    async fn commit_inner(&self, plan: &SinkPlan, origin: &Origin) -> Result<ObjectCommit, DataError> {
        let wrote = Schema {
            columns: self
                .wrote
                .fields()
                .iter()
                .map(|f| Column { name: f.name().clone(), kind: column_type(f.data_type()), nullable: f.is_nullable() })
                .collect(),
            partition: plan.schema.partition.clone(),
        };
        let version = self.ds.record_schema(plan, &wrote, origin).await?;
        let (loc, manifest) = (&self.ds.loc, &self.manifest);
        let mine = &self.claim.files;
        let mut done = self.claim.clone();
        done.pending = false;
        done.previous = None;
        done.previous_rows = None;
        done.schema_version = version;
        done.input = Some(origin.input.clone());
        for _ in 0..CAS_ATTEMPTS {
            let Some((now, etag)) = read::<Manifest>(loc, manifest, "manifest").await? else {
                return Err(DataError::Sink(format!("{} vanished while this write committed", loc.uri_of(manifest))));
            };
            if now == done {
                // Our earlier commit landed though its reply was lost.
                return Ok(self.committed(done, version));
            }
            if now.writer != self.claim.writer || &now.files != mine {
                // Superseded: the newer claim lists our files as stale; remove them now.
                for rel in mine {
                    let _ = loc.delete(&self.ds.path(rel)).await;
                }
                return Err(match self.claim.writer.may_replace(&now.writer) {
                    Err(m) => DataError::StaleFence(m),
                    Ok(()) => DataError::Sink(format!(
                        "another write of this input (task {}) took it over; this one will be retried",
                        now.writer.task
                    )),
                });
            }
            done.stale = now.stale.clone();
            if write(loc, manifest, body(&done)?, &Expect::Version(etag)).await? {
                return Ok(self.committed(done, version));
            }
        }
        Err(DataError::Sink(format!("{}: too many concurrent writers of this input", loc.uri_of(manifest))))
    }

    fn committed(&self, done: Manifest, version: Option<u32>) -> ObjectCommit {
        ObjectCommit {
            staged: Staged {
                ds: self.ds.clone(),
                manifest: self.manifest.clone(),
                claim: done,
                previous: self.previous.clone(),
                wrote: self.wrote.clone(),
            },
            version,
        }
    }

    /// Gives the claim up: the manifest back as it was, this write's files deleted.
    pub async fn abort(&self) {
        self.ds.restore(self).await;
    }
}

/// An input committed to an object-store dataset, until it is finalized or undone.
#[derive(Debug)]
pub struct ObjectCommit {
    staged: Staged,
    /// The schema version the write's files hold.
    pub version: Option<u32>,
}

impl ObjectCommit {
    /// The committed objects' URIs.
    pub fn files(&self) -> Vec<String> {
        self.staged.claim.files.iter().map(|rel| self.staged.ds.loc.uri_of(&self.staged.ds.path(rel))).collect()
    }

    /// Keeps the commit: deletes what the input's earlier writes left and clears the
    /// list (a failure leaves it for the next write of the input).
    pub async fn finalize(self) {
        let (ds, done) = (&self.staged.ds, &self.staged.claim);
        if done.stale.is_empty() {
            return;
        }
        let mut cleaned = true;
        for rel in &done.stale {
            cleaned &= ds.loc.delete(&ds.path(rel)).await.is_ok();
        }
        if cleaned {
            if let Ok(Some((now, etag))) = read::<Manifest>(&ds.loc, &self.staged.manifest, "manifest").await {
                if &now == done {
                    let mut tidy = done.clone();
                    tidy.stale.clear();
                    if let Ok(b) = body(&tidy) {
                        let _ = write(&ds.loc, &self.staged.manifest, b, &Expect::Version(etag)).await;
                    }
                }
            }
        }
    }

    /// Takes the commit back: the input's previous files become its files again (a
    /// schema version it recorded stays, see [`ObjectDataset::record_schema`]).
    pub async fn undo(self) {
        self.staged.ds.restore(&self.staged).await;
    }
}
