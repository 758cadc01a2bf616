//! Child resources: the records of a parent `collect` step (one the child depends on),
//! read back from its staged files one at a time — NDJSON lines, or a CSV file's rows as
//! text fields — so the child runs once per parent record with memory bounded by the
//! number collected at once, however many parents there are.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use weir_core::api::ParentSpec;
use weir_worker::staging::Staging;
use weir_worker::TaskContext;

use crate::error::CollectError;

/// Parent records, in the order the parent staged them.
pub type Records = mpsc::Receiver<Result<Value, CollectError>>;

/// Opens the parent step's staged files (downloaded into `dir` from a staging store) and
/// streams their records, at most `ahead` read ahead of the child.
pub async fn open(
    task: &TaskContext,
    staging: &Staging,
    spec: &ParentSpec,
    dir: &Path,
    ahead: usize,
) -> Result<Records, CollectError> {
    let Some((_, output)) = task.inputs.iter().find(|(s, _)| s == &spec.step) else {
        return Err(CollectError::Config(format!(
            "parent.step {:?} is not among this step's inputs: add it to depends_on",
            spec.step
        )));
    };
    let report = weir_worker::report::resolve(output, staging).await.map_err(CollectError::from)?;
    let Some(files) = report.get("files").and_then(Value::as_array) else {
        return Err(CollectError::Config(format!(
            "parent.step {:?} reported no staged files: is it a collect step?",
            spec.step
        )));
    };
    let mut local: Vec<PathBuf> = Vec::with_capacity(files.len());
    for f in files {
        let Some(p) = f.get("path").and_then(Value::as_str) else { continue };
        local.push(staging.take(p, dir).await.map_err(CollectError::from)?);
    }
    let (tx, rx) = mpsc::channel(ahead.max(1));
    tokio::task::spawn_blocking(move || {
        for path in local {
            if let Err(e) = read(&path, &tx) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    });
    Ok(rx)
}

/// Sends one staged file's records; stops quietly when the child stopped listening.
fn read(path: &Path, tx: &mpsc::Sender<Result<Value, CollectError>>) -> Result<(), CollectError> {
    let bad = |e: String| CollectError::Staging(format!("reading the parent's {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let reader = std::io::BufReader::new(file);
    if path.extension().is_some_and(|x| x == "csv") {
        let mut r = csv::Reader::from_reader(reader);
        let header = r.headers().map_err(|e| bad(e.to_string()))?.clone();
        for row in r.records() {
            let row = row.map_err(|e| bad(e.to_string()))?;
            let rec: Map<String, Value> =
                header.iter().zip(row.iter()).map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
            if tx.blocking_send(Ok(Value::Object(rec))).is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
    for line in reader.lines() {
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if tx.blocking_send(Ok(rec)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The parent fields a child record carries: `(column, value)` for each of
/// `parent.include` the parent record has.
pub fn included(spec: &ParentSpec, parent: &Value) -> Vec<(String, Value)> {
    spec.include
        .iter()
        .filter_map(|f| {
            let mut at = parent;
            for part in f.split('.') {
                at = at.get(part)?;
            }
            Some((spec.column(f), at.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_parents_staged_records_stream_back_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = dir.path().join("part-00001.ndjson");
        std::fs::write(&a, "{\"id\":1,\"org\":{\"name\":\"acme\"}}\n\n{\"id\":2}\n").expect("write");
        let b = dir.path().join("part-00002.csv");
        std::fs::write(&b, "id,name\n3,c\n").expect("write");
        let mut task = TaskContext::for_test("orders");
        let files = json!({"files": [{"path": a.display().to_string()}, {"path": b.display().to_string()}]});
        task.inputs = vec![("users".into(), files.to_string())];
        let staging = Staging::new(dir.path(), None);
        let spec = ParentSpec { step: "users".into(), include: vec!["id".into(), "org.name".into()], parallel: None };
        let mut rx = open(&task, &staging, &spec, dir.path(), 1).await.expect("open");
        let mut got = vec![];
        while let Some(r) = rx.recv().await {
            got.push(r.expect("a record"));
        }
        assert_eq!(
            got,
            vec![json!({"id": 1, "org": {"name": "acme"}}), json!({"id": 2}), json!({"id": "3", "name": "c"})]
        );
        assert_eq!(
            included(&spec, &got[0]),
            vec![("_users_id".to_string(), json!(1)), ("_users_org_name".to_string(), json!("acme"))]
        );
        let other = ParentSpec { step: "nope".into(), ..spec };
        let e = open(&task, &staging, &other, dir.path(), 1).await.expect_err("not an input");
        assert!(e.to_string().contains("parent.step \"nope\" is not among this step's inputs"), "{e}");
    }
}
