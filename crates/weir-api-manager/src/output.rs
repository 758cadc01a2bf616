//! Where collected records go: staged files of at most `records_per_file` records each —
//! NDJSON, a record a line, or a CSV page's rows under its header — that the batch kinds
//! convert.
//! Staged files are fsynced only when a resumable collection checkpoints ([`Output::seal`]):
//! otherwise a re-run of the step collects them again.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::CollectError;

/// One staged file and how many records it holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub path: PathBuf,
    pub name: String,
    pub records: u64,
    /// The source its records came from (0: the primary, then the fallbacks in order).
    pub source: usize,
}

/// The staged files of one collection.
pub struct Output {
    dir: PathBuf,
    per_file: u64,
    open: Option<(BufWriter<File>, Part)>,
    done: Vec<Part>,
    n: usize,
    /// The source of the records added now; a file holds one source's records.
    source: usize,
    /// Closed files made durable so far.
    synced: usize,
}

fn io(p: &Path, e: std::io::Error) -> CollectError {
    CollectError::Staging(format!("writing {}: {e}", p.display()))
}

fn csv_io(p: &Path, e: csv::Error) -> CollectError {
    CollectError::Staging(format!("writing {}: {e}", p.display()))
}

fn finish_csv(mut w: csv::Writer<File>, p: Part) -> Result<Part, CollectError> {
    w.flush().map_err(|e| io(&p.path, e))?;
    Ok(p)
}

impl Output {
    /// Starts an empty output in `dir` (emptied first: a retry starts over).
    pub fn new(dir: &Path, per_file: u64) -> Result<Output, CollectError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(Output { dir: dir.to_path_buf(), per_file, open: None, done: vec![], n: 0, source: 0, synced: 0 })
    }

    /// Records from now on come from `source`: a file of another source's is closed.
    pub fn source(&mut self, source: usize) -> Result<(), CollectError> {
        if source != self.source {
            self.close()?;
            self.source = source;
        }
        Ok(())
    }

    fn next_name(&mut self, ext: &str) -> (PathBuf, String) {
        self.n += 1;
        let name = format!("part-{:05}.{ext}", self.n);
        (self.dir.join(&name), name)
    }

    /// Adds a record, a line, starting a new file when one is full.
    pub fn record(&mut self, r: &Value) -> Result<(), CollectError> {
        if self.open.as_ref().is_none_or(|(_, p)| p.records >= self.per_file) {
            self.close()?;
            let (path, name) = self.next_name("ndjson");
            let f = File::create(&path).map_err(|e| io(&path, e))?;
            self.open =
                Some((BufWriter::with_capacity(1 << 20, f), Part { path, name, records: 0, source: self.source }));
        }
        if let Some((w, p)) = self.open.as_mut() {
            serde_json::to_writer(&mut *w, r).map_err(|e| CollectError::Staging(format!("encoding a record: {e}")))?;
            w.write_all(b"\n").map_err(|e| io(&p.path, e))?;
            p.records += 1;
        }
        Ok(())
    }

    /// Copies a CSV page's rows into files of their own (its header on each), at most
    /// `records_per_file` rows a file; returns how many rows. A row whose fields do not
    /// match the header's is a bad page.
    pub fn csv(&mut self, page: impl Read, url: &str) -> Result<u64, CollectError> {
        self.close()?;
        let bad = |e: csv::Error| CollectError::BadPage(format!("{url}: the page is not CSV: {e}"));
        let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(page);
        let header = r.byte_headers().map_err(bad)?.clone();
        let mut open: Option<(csv::Writer<File>, Part)> = None;
        let mut rec = csv::ByteRecord::new();
        let mut n = 0;
        while r.read_byte_record(&mut rec).map_err(bad)? {
            if open.as_ref().is_none_or(|(_, p)| p.records >= self.per_file) {
                if let Some((w, p)) = open.take() {
                    self.done.push(finish_csv(w, p)?);
                }
                let (path, name) = self.next_name("csv");
                let mut w = csv::Writer::from_path(&path).map_err(|e| csv_io(&path, e))?;
                w.write_byte_record(&header).map_err(|e| csv_io(&path, e))?;
                open = Some((w, Part { path, name, records: 0, source: self.source }));
            }
            if let Some((w, p)) = open.as_mut() {
                w.write_byte_record(&rec).map_err(|e| csv_io(&p.path, e))?;
                p.records += 1;
                n += 1;
            }
        }
        if let Some((w, p)) = open {
            self.done.push(finish_csv(w, p)?);
        }
        Ok(n)
    }

    fn close(&mut self) -> Result<(), CollectError> {
        if let Some((mut w, p)) = self.open.take() {
            w.flush().map_err(|e| io(&p.path, e))?;
            self.done.push(p);
        }
        Ok(())
    }

    /// How many files are full: closed, or open with `records_per_file` records.
    pub fn filled(&self) -> usize {
        self.done.len() + usize::from(self.open.as_ref().is_some_and(|(_, p)| p.records >= self.per_file))
    }

    /// Makes every file durable (fsynced), the open one included without closing it:
    /// what a checkpoint lists, each with its size now. The last may be the open one.
    pub fn seal(&mut self) -> Result<Vec<(Part, u64)>, CollectError> {
        for p in &self.done[self.synced..] {
            File::open(&p.path).and_then(|f| f.sync_all()).map_err(|e| io(&p.path, e))?;
        }
        self.synced = self.done.len();
        let mut out = self
            .done
            .iter()
            .map(|p| std::fs::metadata(&p.path).map(|m| (p.clone(), m.len())).map_err(|e| io(&p.path, e)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((w, p)) = self.open.as_mut() {
            w.flush().map_err(|e| io(&p.path, e))?;
            w.get_ref().sync_all().map_err(|e| io(&p.path, e))?;
            let len = w.get_ref().metadata().map_err(|e| io(&p.path, e))?.len();
            out.push((p.clone(), len));
        }
        Ok(out)
    }

    /// Starts an output in `dir` that goes on from the files an earlier attempt sealed
    /// (moved into it; the last one, which may have been open, cut back to its sealed size
    /// and written on), or `None` if one of them is gone or not the size it was sealed at.
    pub fn resume(dir: &Path, per_file: u64, sealed: &[(Part, u64)]) -> Result<Option<Output>, CollectError> {
        let size = |p: &Part| std::fs::metadata(&p.path).map(|m| m.len()).ok();
        let n = sealed.len();
        let intact = sealed.iter().enumerate().all(|(i, (p, len))| match size(p) {
            // What the last one got after the checkpoint belongs to pages fetched again.
            Some(s) if i + 1 == n => s >= *len,
            Some(s) => s == *len,
            None => false,
        });
        if !intact {
            return Ok(None);
        }
        let mut out = Output::new(dir, per_file)?;
        for (i, (p, len)) in sealed.iter().enumerate() {
            let to = dir.join(&p.name);
            std::fs::rename(&p.path, &to).map_err(|e| io(&p.path, e))?;
            let part = Part { path: to.clone(), ..p.clone() };
            if i + 1 == n && p.name.ends_with(".ndjson") {
                let f = std::fs::OpenOptions::new().write(true).open(&to).map_err(|e| io(&to, e))?;
                f.set_len(*len).map_err(|e| io(&to, e))?;
                let f = std::fs::OpenOptions::new().append(true).open(&to).map_err(|e| io(&to, e))?;
                out.open = Some((BufWriter::with_capacity(1 << 20, f), part));
            } else {
                out.done.push(part);
            }
        }
        out.n = n;
        out.synced = out.done.len();
        out.source = sealed.last().map_or(0, |(p, _)| p.source);
        Ok(Some(out))
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
        for a in 1..=3 {
            o.record(&json!({"a": a})).expect("record");
        }
        o.source(0).expect("the same source keeps the file open");
        assert_eq!(o.csv(&b"x,y\n1,\"a,b\"\n2,c\n3,d\n"[..], "u").expect("csv"), 3);
        assert_eq!(o.csv(&b"x\n"[..], "u").expect("a header alone"), 0);
        let parts = o.finish().expect("finish");
        assert_eq!(
            parts.iter().map(|p| (p.name.as_str(), p.records)).collect::<Vec<_>>(),
            vec![("part-00001.ndjson", 2), ("part-00002.ndjson", 1), ("part-00003.csv", 2), ("part-00004.csv", 1)]
        );
        let read = |i: usize| std::fs::read_to_string(&parts[i].path).expect("read");
        assert_eq!(read(0), "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(read(2), "x,y\n1,\"a,b\"\n2,c\n");
        assert_eq!(read(3), "x,y\n3,d\n");
        let mut o = Output::new(&dir.path().join("sources"), 10).expect("output");
        o.record(&json!({"a": 1})).expect("record");
        o.source(2).expect("switch");
        o.record(&json!({"a": 2})).expect("record");
        let parts = o.finish().expect("finish");
        assert_eq!(parts.iter().map(|p| (p.records, p.source)).collect::<Vec<_>>(), vec![(1, 0), (1, 2)]);
        // Sealed files carry on in a later attempt's output; a changed one does not.
        let mut a = Output::new(&dir.path().join("attempt-1"), 2).expect("output");
        for i in 1..=3 {
            a.record(&json!({"i": i})).expect("record");
        }
        let sealed = a.seal().expect("seal");
        assert_eq!(sealed.iter().map(|(p, _)| p.records).collect::<Vec<_>>(), vec![2, 1]);
        // What it wrote after the checkpoint is dropped: those pages are fetched again.
        a.record(&json!({"i": 99})).expect("record");
        a.seal().expect("flushed");
        let mut b = Output::resume(&dir.path().join("attempt-2"), 2, &sealed).expect("resume").expect("resumes");
        b.record(&json!({"i": 4})).expect("record");
        b.record(&json!({"i": 5})).expect("record");
        let parts = b.finish().expect("finish");
        assert_eq!(
            parts.iter().map(|p| (p.name.as_str(), p.records)).collect::<Vec<_>>(),
            vec![("part-00001.ndjson", 2), ("part-00002.ndjson", 2), ("part-00003.ndjson", 1)],
            "the open file goes on filling"
        );
        assert_eq!(std::fs::read_to_string(&parts[1].path).expect("read"), "{\"i\":3}\n{\"i\":4}\n");
        assert!(Output::resume(&dir.path().join("attempt-3"), 2, &sealed).expect("resume").is_none(), "moved away");
        let e = o_bad(dir.path());
        assert!(e.contains("not CSV"), "{e}");
    }

    fn o_bad(dir: &Path) -> String {
        let mut o = Output::new(&dir.join("bad"), 2).expect("output");
        o.csv(&b"x,y\n1,2\n3\n"[..], "https://api.test/x.csv").expect_err("a short row").to_string()
    }
}
