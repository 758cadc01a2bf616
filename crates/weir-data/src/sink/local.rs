//! A Parquet dataset on local disk as a sink: its schema read (or adopted) before a
//! write, and each input committed under the dataset's lock with the schema reconciled —
//! reversible until finalized, so a step's other sinks can still refuse the input.
//!
//! A commit, holding `_weir/lock`: checks the input's manifest fence; merges the write's
//! planned schema onto the dataset's current one ([`merge`]), casting the write's files
//! if a concurrent writer widened a column; records a new version in `_weir/schema.json`
//! (and `_common_metadata`) when the schema changes, rewriting the dataset's other files
//! when a `widen` contract widened a column; moves the input's previous files into
//! `_weir/undo/`; moves the new files into place and writes the manifest.
//! [`LocalCommit::undo`] puts the previous files and manifest back, and takes the version
//! the commit recorded back if no other input's files were committed under it (a widening
//! stays: the dataset's files were rewritten for it); finalizing removes them.

use std::fs;
use std::path::{Path, PathBuf};

use weir_core::dataset::contract::{merge, SinkPlan};
use weir_core::dataset::schema::{Change, Column, History, Origin, Schema};

use super::history::{self, COMMON_METADATA, HISTORY};
use super::parquet::{file_path, locked, manifest, read_manifest, write_atomic, Manifest, Prepared};
use super::WriteFence;
use crate::typing::{arrow_schema, column_type};
use crate::DataError;

/// zstd level of files rewritten by a widening.
const REWRITE_ZSTD_LEVEL: i32 = 3;

/// Whether a data file is named as Weir names them: `<input key>.parquet`, the key
/// ending in `-` and 12 hex digits.
fn weirs(p: &Path) -> bool {
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    stem.rsplit_once('-').is_some_and(|(_, h)| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A local Parquet dataset.
#[derive(Debug, Clone)]
pub struct LocalDataset {
    root: PathBuf,
    /// The sink in messages.
    name: String,
}

impl LocalDataset {
    pub fn new(root: &Path) -> LocalDataset {
        LocalDataset { root: root.to_path_buf(), name: format!("parquet dataset {}", root.display()) }
    }

    /// The dataset's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dataset's URI (`file://` and its absolute path).
    pub fn uri(&self) -> String {
        let abs = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}", abs.display())
    }

    /// The dataset's schema history: as recorded, or adopted from the files of a dataset
    /// written before Weir kept one (not written until the next commit), or empty.
    pub fn history(&self) -> Result<History, DataError> {
        let path = self.root.join(HISTORY);
        match fs::read(&path) {
            Ok(b) => return history::decode(&b, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io(&path, e)),
        }
        let mut files = Vec::new();
        for m in self.manifests()? {
            files.extend(m.1.files.iter().map(|f| (f.clone(), self.root.join(f))));
        }
        let mut h = History::default();
        if let Some(s) = history::adopt(&files)? {
            h.push(s, vec![Change::Adopted], Origin::default());
        }
        Ok(h)
    }

    /// The keys of the inputs committed to the dataset (its manifests' names), unread.
    pub fn input_keys(&self) -> Result<Vec<String>, DataError> {
        let dir = self.root.join("_weir").join("inputs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(DataError::io(&dir, e)),
        };
        let mut keys = Vec::new();
        for e in entries {
            let p = e.map_err(|e| DataError::io(&dir, e))?.path();
            if let Some(k) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) {
                keys.push(k.to_string());
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The committed data files, by the input key that wrote them (the manifest's name).
    pub fn files_by_input(&self) -> Result<Vec<(String, PathBuf)>, DataError> {
        let mut out = Vec::new();
        for (key, m) in self.manifests()? {
            out.extend(m.files.iter().map(|f| (key.clone(), self.root.join(f))));
        }
        Ok(out)
    }

    /// A task's newest lease fences every input it writes into the dataset, not only the
    /// one it replaces: a stale attempt — a stream's former owner, flushing a range the new
    /// owner never wrote — cannot commit once a newer one has. The newest fence per task
    /// is kept in `_weir/fences/<task>`, raised under the dataset's lock.
    fn check_task_fence(&self, fence: &WriteFence) -> Result<(), DataError> {
        let safe: String = fence.task.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
        let path = self.root.join("_weir").join("fences").join(safe);
        let newest = match fs::read_to_string(&path) {
            Ok(t) => t.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(DataError::io(&path, e)),
        };
        match newest {
            Some(n) if fence.fence < n => Err(DataError::StaleFence(format!(
                "{}: task {} committed with lease {n} already; this attempt holds lease {}",
                self.name, fence.task, fence.fence
            ))),
            Some(n) if fence.fence == n => Ok(()),
            _ => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
                }
                write_atomic(&path, fence.fence.to_string().as_bytes(), true)
            }
        }
    }

    /// Raises the task's fence to this lease before it writes anything: a stream's new
    /// owner claims the dataset before it reads where to resume, so a former owner's late
    /// flush — a range the new owner will read again — is refused from then on, not only
    /// once the new owner has committed.
    /// It also removes data files no manifest names: a writer killed between moving its
    /// files into place and writing its manifest leaves them, and a stream whose next
    /// owner names its ranges differently (a queue's) would otherwise leave them to any
    /// reader of the folder as duplicates.
    pub fn claim(&self, fence: &WriteFence) -> Result<(), DataError> {
        locked(&self.root, || {
            self.check_task_fence(fence)?;
            self.sweep_orphans()
        })
    }

    /// Removes the `.parquet` files outside `_weir/` that Weir wrote (named by an input
    /// key) and no manifest names, under the dataset's lock (no commit is between its
    /// files and its manifest then). Files of a folder Weir adopted are left alone.
    fn sweep_orphans(&self) -> Result<(), DataError> {
        let named: std::collections::HashSet<PathBuf> = self.files_by_input()?.into_iter().map(|(_, f)| f).collect();
        let mut dirs = vec![self.root.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n != "_weir") {
                        dirs.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "parquet") && weirs(&p) && !named.contains(&p) {
                    tracing::warn!(file = %p.display(), "removing a data file no manifest names (a writer died mid-commit)");
                    fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
                }
            }
        }
        Ok(())
    }

    /// The identities of the committed inputs that recorded one (written since they are).
    pub fn input_identities(&self) -> Result<Vec<String>, DataError> {
        Ok(self.manifests()?.into_iter().filter_map(|(_, m)| m.input).collect())
    }

    /// Every committed input's manifest: (its input key, the manifest), in key order.
    fn manifests(&self) -> Result<Vec<(String, Manifest)>, DataError> {
        let mut out = Vec::new();
        for key in self.input_keys()? {
            if let Some(m) = read_manifest(&manifest(&self.root, &key))? {
                out.push((key, m));
            }
        }
        Ok(out)
    }

    /// Commits a prepared write as `plan` says; `origin` goes into any new version.
    pub fn commit(&self, p: Prepared, plan: &SinkPlan, origin: &Origin) -> Result<LocalCommit, DataError> {
        let result = locked(&self.root, || self.commit_locked(&p, plan, origin));
        let _ = fs::remove_dir_all(&p.scratch);
        result
    }

    fn commit_locked(&self, p: &Prepared, plan: &SinkPlan, origin: &Origin) -> Result<LocalCommit, DataError> {
        let manifest_file = manifest(&self.root, &p.key);
        let previous = read_manifest(&manifest_file)?;
        if let Some(prev) = &previous {
            p.fence.may_replace(&prev.writer).map_err(DataError::StaleFence)?;
        }
        self.check_task_fence(&p.fence)?;
        let undo = self.root.join("_weir").join("undo").join(format!("{}.{}.{}", p.key, p.fence.task, p.fence.fence));

        // The schema: this write's plan on top of what the dataset holds now.
        let mut h = self.history()?;
        let adopted = !self.root.join(HISTORY).exists() && !h.versions.is_empty();
        let wrote = Schema {
            columns: p
                .schema
                .fields()
                .iter()
                .map(|f| Column { name: f.name().clone(), kind: column_type(f.data_type()), nullable: f.is_nullable() })
                .collect(),
            partition: plan.schema.partition.clone(),
        };
        let merged = merge(h.current().map(|v| &v.schema), plan, &wrote, &self.name).map_err(DataError::Sink)?;
        if !merged.conform.is_empty() {
            let mut to = wrote.clone();
            for (name, kind) in &merged.conform {
                if let Some(c) = to.columns.iter_mut().find(|c| &c.name == name) {
                    c.kind = *kind;
                }
            }
            for (_, local) in &p.files {
                history::conform(local, &arrow_schema(&to), REWRITE_ZSTD_LEVEL)?;
            }
        }
        let widened: Vec<(&String, weir_core::dataset::ColumnType)> = merged
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Widened { column, to, .. } => Some((column, *to)),
                _ => None,
            })
            .collect();
        if !widened.is_empty() {
            // Every committed file, this input's previous ones too (an undo brings them
            // back, and they must hold the wider type as well).
            self.widen_files(&widened)?;
        }
        // A first write with no columns (an empty input) records nothing.
        let changed = (h.versions.is_empty() && !merged.schema.columns.is_empty()) || !merged.changes.is_empty();
        let history_file = self.root.join(HISTORY);
        // A commit taken back takes its version back too, unless it widened columns (the
        // dataset's files were rewritten for it, and that stands).
        let schema_undo = match changed && widened.is_empty() {
            true => Some(match fs::read(&history_file) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(DataError::io(&history_file, e)),
            }),
            false => None,
        };
        if changed {
            let changes = if h.versions.is_empty() { vec![Change::Created] } else { merged.changes.clone() };
            h.push(merged.schema.clone(), changes, origin.clone());
        }
        let version = h.current().map(|v| v.version);
        if changed || adopted {
            write_atomic(&history_file, &history::encode(&h)?, true)?;
            if let Some(v) = h.current() {
                write_atomic(&self.root.join(COMMON_METADATA), &history::common_metadata(&v.schema)?, true)?;
            }
        }

        // The data: the previous files aside, the new ones in place, the manifest.
        let name = format!("{}.parquet", p.key);
        let files: Vec<String> = p.files.iter().map(|(folder, _)| file_path(folder, &name)).collect();
        if let Some(prev) = &previous {
            // Only an undo needs it, and a crash makes it garbage: no fsync.
            let body = serde_json::to_vec(prev).map_err(|e| DataError::Sink(e.to_string()))?;
            write_atomic(&undo.join("manifest.json"), &body, false)?;
            for old in &prev.files {
                move_file(&self.root.join(old), &undo.join(old))?;
            }
        }
        let mut out = Vec::with_capacity(files.len());
        for ((_, local), rel) in p.files.iter().zip(&files) {
            let to = self.root.join(rel);
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
            }
            // The new files must be there: a missing one is an error, not a skip.
            fs::rename(local, &to).map_err(|e| DataError::io(local, e))?;
            out.push(to);
        }
        let m = Manifest {
            writer: p.fence.clone(),
            files: files.clone(),
            rows: p.rows,
            schema_version: version,
            pending: false,
            stale: vec![],
            previous: None,
            previous_rows: None,
            input: Some(origin.input.clone()),
        };
        let body = serde_json::to_vec(&m).map_err(|e| DataError::Sink(e.to_string()))?;
        write_atomic(&manifest_file, &body, true)?;
        // Only now, with this commit in place: what earlier attempts for the input left.
        self.clear_undo(&p.key, &undo)?;
        Ok(LocalCommit {
            root: self.root.clone(),
            key: p.key.clone(),
            fence: p.fence.clone(),
            undo,
            files,
            committed: out,
            version: changed.then_some(version).flatten(),
            schema_undo: schema_undo.and_then(|before| version.map(|v| (v, before))),
        })
    }

    /// Removes what earlier attempts for `key` left in `_weir/undo/` (a crash between
    /// their commit and its finalizing, or a write this one replaced: their undo can no
    /// longer apply), all but `keep`.
    fn clear_undo(&self, key: &str, keep: &Path) -> Result<(), DataError> {
        let dir = self.root.join("_weir").join("undo");
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
        for e in entries.flatten() {
            if e.path() != keep && e.file_name().to_string_lossy().starts_with(&format!("{key}.")) {
                fs::remove_dir_all(e.path()).map_err(|err| DataError::io(&e.path(), err))?;
            }
        }
        Ok(())
    }

    /// Rewrites every committed file with `widened` columns cast to their new types, so
    /// no two files of the dataset disagree on a column's type.
    fn widen_files(&self, widened: &[(&String, weir_core::dataset::ColumnType)]) -> Result<(), DataError> {
        for (_, m) in self.manifests()? {
            for rel in &m.files {
                let local = self.root.join(rel);
                let mut s = history::file_schema(&local)?;
                let mut touched = false;
                for c in &mut s.columns {
                    if let Some((_, to)) = widened.iter().find(|(n, _)| **n == c.name) {
                        c.kind = *to;
                        touched = true;
                    }
                }
                if touched {
                    history::conform(&local, &arrow_schema(&s), REWRITE_ZSTD_LEVEL)?;
                }
            }
        }
        Ok(())
    }
}

fn move_file(from: &Path, to: &Path) -> Result<(), DataError> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(to, e)),
    }
}

/// An input committed to a local dataset, until it is finalized or undone.
#[derive(Debug)]
pub struct LocalCommit {
    root: PathBuf,
    key: String,
    fence: WriteFence,
    undo: PathBuf,
    /// The committed files, relative to the root.
    files: Vec<String>,
    committed: Vec<PathBuf>,
    /// The version this commit created, if it changed the schema.
    pub version: Option<u32>,
    /// That version and the history file before it (`None`: there was none), to put
    /// back if the commit is undone.
    schema_undo: Option<(u32, Option<Vec<u8>>)>,
}

impl LocalCommit {
    /// The committed files.
    pub fn files(&self) -> &[PathBuf] {
        &self.committed
    }

    /// Keeps the commit: drops the previous files set aside.
    pub fn finalize(self) {
        let _ = fs::remove_dir_all(&self.undo);
    }

    /// Takes the commit back: the input's previous files and manifest return (or, if it
    /// had none, it has none again). Nothing happens if a newer write replaced it since.
    pub fn undo(self) -> Result<(), DataError> {
        let root = self.root.clone();
        locked(&root, || {
            let manifest_file = manifest(&self.root, &self.key);
            let now = read_manifest(&manifest_file)?;
            if now.as_ref().is_none_or(|m| m.writer != self.fence || m.files != self.files) {
                let _ = fs::remove_dir_all(&self.undo);
                return Ok(());
            }
            for rel in &self.files {
                remove_if_there(&self.root.join(rel))?;
            }
            // The input's previous files (or none) come back; the manifest keeps this
            // write's fence as the newest seen, so an older lease still cannot write.
            let prev = read_manifest(&self.undo.join("manifest.json"))?;
            for rel in prev.iter().flat_map(|m| &m.files) {
                move_file(&self.undo.join(rel), &self.root.join(rel))?;
            }
            let back = Manifest {
                writer: self.fence.clone(),
                files: prev.as_ref().map(|m| m.files.clone()).unwrap_or_default(),
                rows: prev.as_ref().map_or(0, |m| m.rows),
                schema_version: prev.as_ref().and_then(|m| m.schema_version),
                pending: false,
                stale: vec![],
                previous: None,
                previous_rows: None,
                input: prev.as_ref().and_then(|m| m.input.clone()),
            };
            let body = serde_json::to_vec(&back).map_err(|e| DataError::Sink(e.to_string()))?;
            write_atomic(&manifest_file, &body, true)?;
            let _ = fs::remove_dir_all(&self.undo);
            self.undo_schema()
        })
    }

    /// Puts the schema history back as it was, if this commit's version is still the
    /// newest and no other input's files were committed under it (they may hold its new
    /// columns); otherwise it stays, nullable and harmless.
    fn undo_schema(&self) -> Result<(), DataError> {
        let Some((version, before)) = &self.schema_undo else { return Ok(()) };
        let history_file = self.root.join(HISTORY);
        let ds = LocalDataset::new(&self.root);
        let now = ds.history()?;
        if now.current().map(|v| v.version) != Some(*version) {
            return Ok(());
        }
        let relied_on = ds.manifests()?.iter().any(|(_, m)| m.schema_version.is_some_and(|v| v >= *version));
        if relied_on {
            return Ok(());
        }
        let meta = self.root.join(COMMON_METADATA);
        match before {
            Some(b) => {
                write_atomic(&history_file, b, true)?;
                match history::decode(b, &history_file.display().to_string())?.current() {
                    Some(v) => write_atomic(&meta, &history::common_metadata(&v.schema)?, true)?,
                    None => remove_if_there(&meta)?,
                }
            }
            None => {
                remove_if_there(&history_file)?;
                remove_if_there(&meta)?;
            }
        }
        Ok(())
    }
}

fn remove_if_there(p: &Path) -> Result<(), DataError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(p, e)),
    }
}
