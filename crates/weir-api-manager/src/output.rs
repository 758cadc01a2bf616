//! Where collected records go: staged files of at most `records_per_file` records each —
//! NDJSON, a record a line, or a CSV page as it came — that the batch kinds convert.
//! Staged files are not fsynced: a re-run of the step collects them again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::CollectError;

/// One staged file and how many records it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub path: PathBuf,
    pub name: String,
    pub records: u64,
}

/// The staged files of one collection.
pub struct Output {
    dir: PathBuf,
    per_file: u64,
    open: Option<(BufWriter<File>, Part)>,
    done: Vec<Part>,
    n: usize,
}

fn io(p: &Path, e: std::io::Error) -> CollectError {
    CollectError::Staging(format!("writing {}: {e}", p.display()))
}

impl Output {
    /// Starts an empty output in `dir` (emptied first: a retry starts over).
    pub fn new(dir: &Path, per_file: u64) -> Result<Output, CollectError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(Output { dir: dir.to_path_buf(), per_file, open: None, done: vec![], n: 0 })
    }

    fn next_name(&mut self, ext: &str) -> (PathBuf, String) {
        self.n += 1;
        let name = format!("part-{:05}.{ext}", self.n);
        (self.dir.join(&name), name)
    }

    /// Adds records, a line each, starting a new file when one is full.
    pub fn records(&mut self, records: &[Value]) -> Result<(), CollectError> {
        for r in records {
            if self.open.as_ref().is_none_or(|(_, p)| p.records >= self.per_file) {
                self.close()?;
                let (path, name) = self.next_name("ndjson");
                let f = File::create(&path).map_err(|e| io(&path, e))?;
                self.open = Some((BufWriter::with_capacity(1 << 20, f), Part { path, name, records: 0 }));
            }
            if let Some((w, p)) = self.open.as_mut() {
                serde_json::to_writer(&mut *w, r)
                    .map_err(|e| CollectError::Staging(format!("encoding a record: {e}")))?;
                w.write_all(b"\n").map_err(|e| io(&p.path, e))?;
                p.records += 1;
            }
        }
        Ok(())
    }

    /// Adds a CSV page as a file of its own.
    pub fn csv_page(&mut self, body: &[u8], rows: u64) -> Result<(), CollectError> {
        self.close()?;
        let (path, name) = self.next_name("csv");
        std::fs::write(&path, body).map_err(|e| io(&path, e))?;
        self.done.push(Part { path, name, records: rows });
        Ok(())
    }

    fn close(&mut self) -> Result<(), CollectError> {
        if let Some((mut w, p)) = self.open.take() {
            w.flush().map_err(|e| io(&p.path, e))?;
            self.done.push(p);
        }
        Ok(())
    }

    /// The files written, in order.
    pub fn finish(mut self) -> Result<Vec<Part>, CollectError> {
        self.close()?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_fill_bounded_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut o = Output::new(&dir.path().join("out"), 2).expect("output");
        o.records(&[json!({"a": 1}), json!({"a": 2}), json!({"a": 3})]).expect("records");
        o.csv_page(b"x\n1\n", 1).expect("csv");
        let parts = o.finish().expect("finish");
        assert_eq!(
            parts.iter().map(|p| (p.name.as_str(), p.records)).collect::<Vec<_>>(),
            vec![("part-00001.ndjson", 2), ("part-00002.ndjson", 1), ("part-00003.csv", 1)]
        );
        assert_eq!(std::fs::read_to_string(&parts[0].path).expect("read"), "{\"a\":1}\n{\"a\":2}\n");
    }
}
