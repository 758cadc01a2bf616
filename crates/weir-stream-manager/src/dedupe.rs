//! De-duplication for sources whose positions do not replay (RabbitMQ, Pub/Sub): a
//! message the broker redelivers after a crash between landing and acknowledging — or a
//! publisher sent twice — is dropped by its id within a window of the last ids landed
//! (default [`weir_core::stream::DEFAULT_DEDUPE_WINDOW`]).
//!
//! The window is a ledger of flushes, one file per flush naming its ids, written *before*
//! the flush lands and resolved against the sinks at the next start: an entry whose input
//! a sink holds counts, one whose input none holds (the flush never landed) is removed,
//! so the ids count exactly when their records landed. A message without an id is keyed
//! by a hash of its body, and checked only when the broker marks it redelivered (two
//! equal bodies are two records otherwise).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The ledger of one stream's landed ids.
pub struct Dedupe {
    dir: PathBuf,
    window: usize,
    /// Ids landed, in the window, and those buffered now.
    ids: HashSet<String>,
    /// The ledger's entries, oldest first: (file, its ids).
    entries: VecDeque<(PathBuf, Vec<String>)>,
    held: usize,
    seq: u64,
}

/// The key a message is de-duplicated on.
pub fn key(id: Option<&str>, payload: &[u8]) -> String {
    match id {
        Some(id) => format!("id:{id}"),
        None => format!("sha256:{}", weir_storage::hex(&Sha256::digest(payload)[..16])),
    }
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("dedupe ledger {}: {e}", path.display())
}

impl Dedupe {
    /// Opens the ledger in `dir`: entries whose input key is in `landed` are kept, the
    /// others removed.
    pub fn open(dir: &Path, window: usize, landed: &BTreeSet<String>) -> Result<Dedupe, String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ids"))
            .collect();
        files.sort();
        let mut d =
            Dedupe { dir: dir.to_path_buf(), window, ids: HashSet::new(), entries: VecDeque::new(), held: 0, seq: 0 };
        for f in files {
            let name = f.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let (seq, input) = name.split_once('.').unwrap_or(("0", &name));
            d.seq = d.seq.max(seq.parse().unwrap_or(0));
            if !landed.contains(input) {
                std::fs::remove_file(&f).map_err(|e| io(&f, e))?;
                continue;
            }
            let text = std::fs::read_to_string(&f).map_err(|e| io(&f, e))?;
            let ids: Vec<String> =
                serde_json::from_str(&text).map_err(|e| format!("dedupe ledger {}: {e}", f.display()))?;
            d.remember(f, ids);
        }
        d.trim()?;
        Ok(d)
    }

    /// Whether `key` was landed within the window, or is buffered now.
    pub fn seen(&self, key: &str) -> bool {
        self.ids.contains(key)
    }

    /// Counts a buffered message's key as seen (a second copy in the same flush is dropped).
    pub fn buffer(&mut self, key: &str) {
        self.ids.insert(key.to_string());
    }

    /// Before a flush lands as `input_key`: records its ids.
    pub fn intend(&mut self, input_key: &str, ids: Vec<String>) -> Result<(), String> {
        self.seq += 1;
        let path = self.dir.join(format!("{:016}.{input_key}.ids", self.seq));
        let body = serde_json::to_vec(&ids).map_err(|e| e.to_string())?;
        std::fs::write(&path, body).map_err(|e| io(&path, e))?;
        self.remember(path, ids);
        self.trim()
    }

    fn remember(&mut self, path: PathBuf, ids: Vec<String>) {
        self.held += ids.len();
        self.ids.extend(ids.iter().cloned());
        self.entries.push_back((path, ids));
    }

    /// Forgets the oldest entries past the window.
    fn trim(&mut self) -> Result<(), String> {
        while self.held > self.window && self.entries.len() > 1 {
            let Some((path, ids)) = self.entries.pop_front() else { break };
            self.held -= ids.len();
            for id in &ids {
                self.ids.remove(id);
            }
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    /// Ids held in the window.
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_once_their_flush_landed_and_fall_out_of_the_window() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut d = Dedupe::open(dir.path(), 4, &BTreeSet::new()).expect("open");
        d.intend("a", vec![key(Some("1"), b""), key(Some("2"), b"")]).expect("a");
        d.intend("b", vec![key(Some("3"), b"")]).expect("b");
        assert!(d.seen("id:1") && d.seen("id:3"));
        // Only `a` landed: `b`'s ids do not count after a restart.
        let d = Dedupe::open(dir.path(), 4, &BTreeSet::from(["a".to_string()])).expect("reopen");
        assert!(d.seen("id:2") && !d.seen("id:3"));
        let mut d = Dedupe::open(dir.path(), 2, &BTreeSet::from(["a".to_string(), "c".to_string()])).expect("reopen");
        d.intend("c", vec![key(Some("4"), b""), key(Some("5"), b"")]).expect("c");
        assert!(!d.seen("id:1"), "past the window of 2");
        assert_eq!((d.held(), d.seen("id:5")), (2, true));
        assert_ne!(key(None, b"x"), key(None, b"y"));
    }
}
