//! Resumable collection. A collection (other than a child resource's, whose parents run
//! in parallel) checkpoints as it goes — after a staged file fills, and at least every
//! [`EVERY`] — with its next request, its counts and its incremental state, once its
//! staged files are fsynced. A later attempt of the same task (after a crash, a SIGKILL, a
//! lost lease) with the same config and cursor goes on from the newest checkpoint an
//! earlier attempt left: the pages before it are not requested again and their records are
//! not staged twice.
//!
//! Checkpoints are files in the task's staging folder (`checkpoint-<fence>.json`, written
//! whole and renamed into place), on this manager's `WEIR_DATA_DIR`: a replica that
//! shares that disk (the same one restarted, or a shared volume) resumes, another starts
//! over. An attempt only reads checkpoints of lower fences, so a stale attempt that is
//! still writing cannot hand a newer one its state.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::collect::Tally;
use crate::error::CollectError;
use crate::output::Part;

/// Longest time between checkpoints while pages keep coming.
pub const EVERY: Duration = Duration::from_secs(10);

/// Most requested URLs a checkpoint keeps for loop detection.
pub const MAX_SAVED_URLS: usize = 10_000;

/// What a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub fence: u64,
    /// The fingerprint of the config and cursor it was made with.
    pub config: String,
    /// The next request, and the source it goes to.
    pub next: String,
    pub source: usize,
    /// The staged files so far, with their sizes when sealed.
    pub parts: Vec<(Part, u64)>,
    /// Every URL requested (a page leading back to one is still refused).
    pub seen: Vec<String>,
    /// The counts so far.
    pub(crate) tally: Tally,
    pub incremental: Option<Value>,
}

/// One attempt's checkpoints.
pub struct Checkpoints {
    dir: PathBuf,
    fence: u64,
    config: String,
    /// When it last wrote, and how many staged files it held then.
    last: Mutex<(Instant, usize)>,
}

/// The fingerprint of what a collection is: its config and the cursor it starts from.
pub fn fingerprint(config: &str, cursor: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(config.as_bytes());
    h.update([0]);
    h.update(cursor.unwrap_or("").as_bytes());
    weir_storage::hex(&h.finalize()[..16])
}

fn io(p: &Path, e: std::io::Error) -> CollectError {
    CollectError::Staging(format!("checkpoint {}: {e}", p.display()))
}

impl Checkpoints {
    /// The checkpoints of the attempt with `fence`, in the task's staging folder `dir`.
    pub fn new(dir: &Path, fence: u64, config: String) -> Checkpoints {
        Checkpoints { dir: dir.to_path_buf(), fence, config, last: Mutex::new((Instant::now(), 0)) }
    }

    fn path(&self, fence: u64) -> PathBuf {
        self.dir.join(format!("checkpoint-{fence}.json"))
    }

    /// The newest checkpoint an earlier attempt left for the same config, if any.
    pub fn latest(&self) -> Option<Saved> {
        let saved = newest_below(&self.dir, self.fence)?;
        (saved.config == self.config).then_some(saved)
    }

    /// Whether to checkpoint now, with `filled` staged files full so far.
    pub fn due(&self, filled: usize) -> bool {
        let (at, files) = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        filled > files || at.elapsed() >= EVERY
    }

    /// Writes a checkpoint of this attempt whole (a crash leaves the previous one), made
    /// with `filled` staged files full.
    pub fn write(&self, mut saved: Saved, filled: usize) -> Result<(), CollectError> {
        saved.fence = self.fence;
        saved.config = self.config.clone();
        let path = self.path(self.fence);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(&saved).map_err(|e| CollectError::Staging(format!("checkpoint: {e}")))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
            f.write_all(&text).map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), filled);
        Ok(())
    }

    /// Removes this attempt's checkpoints and the earlier ones (the collection finished);
    /// a newer attempt's are left alone.
    pub fn clear(&self) {
        if let Ok(d) = std::fs::read_dir(&self.dir) {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let fence = name
                    .strip_prefix("checkpoint-")
                    .and_then(|r| r.split('.').next())
                    .and_then(|f| f.parse::<u64>().ok());
                if fence.is_some_and(|f| f <= self.fence) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The newest checkpoint in a task's staging folder below `fence`, whatever config made
/// it.
fn newest_below(dir: &Path, fence: u64) -> Option<Saved> {
    let mut fences: Vec<u64> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("checkpoint-")?.strip_suffix(".json")?.parse().ok()
        })
        .filter(|f| *f < fence)
        .collect();
    fences.sort_unstable();
    let f = *fences.last()?;
    let saved: Saved = serde_json::from_slice(&std::fs::read(dir.join(format!("checkpoint-{f}.json"))).ok()?).ok()?;
    (saved.fence == f).then_some(saved)
}

/// The newest checkpoint another job's task left in its staging folder `dir` (a recovery
/// adopts what a failed collection fetched).
pub fn newest(dir: &Path) -> Option<Saved> {
    newest_below(dir, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(fence: u64, config: &str) -> Saved {
        Saved {
            fence,
            config: config.into(),
            next: "https://api.test/o?page=3".into(),
            source: 0,
            parts: vec![],
            seen: vec!["https://api.test/o?page=2".into()],
            tally: Tally::default(),
            incremental: None,
        }
    }

    #[test]
    fn a_later_attempt_reads_the_newest_earlier_checkpoint_of_its_config() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = fingerprint("{\"api\":\"a\"}", Some("2026"));
        assert_ne!(c, fingerprint("{\"api\":\"a\"}", None), "another cursor is another collection");
        let first = Checkpoints::new(dir.path(), 1, c.clone());
        assert!(first.due(1) && !first.due(0), "a staged file closed since the start");
        first.write(saved(0, ""), 1).expect("write");
        assert!(!first.due(1), "nothing filled since, and not long ago");
        let second = Checkpoints::new(dir.path(), 2, c.clone());
        assert_eq!(second.latest(), Some(saved(1, &c)));
        second.write(saved(0, ""), 0).expect("write");
        assert_eq!(first.latest(), None, "an attempt never reads its own or a newer one's");
        assert_eq!(Checkpoints::new(dir.path(), 3, c.clone()).latest().map(|s| s.fence), Some(2));
        assert_eq!(Checkpoints::new(dir.path(), 3, "other".into()).latest(), None, "another config starts over");
        first.clear();
        assert_eq!(
            Checkpoints::new(dir.path(), 3, c.clone()).latest().map(|s| s.fence),
            Some(2),
            "a stale attempt leaves newer ones"
        );
        second.clear();
        assert_eq!(Checkpoints::new(dir.path(), 3, c).latest(), None);
    }
}
