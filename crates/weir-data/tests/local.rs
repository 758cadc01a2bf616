//! A local Parquet dataset as a sink, driven as the landing drives it: commits that are
//! taken back keep the dataset consistent (its files, manifests and schema), and an input
//! with no rows makes no schema.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::json;
use weir_core::dataset::DataStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::history;
use weir_data::sink::landing::Sinks;
use weir_data::sink::local::{LocalCommit, LocalDataset};
use weir_data::sink::WriteFence;

fn step(lake: &Path, contract: serde_json::Value) -> DataStep {
    DataStep::parse("store", Some(&json!({"sinks": [{"type": "parquet", "path": lake, "schema_contract": contract}]})))
        .expect("step")
}

/// Converts `body` as input `name` for `lake` and commits it (not finalized).
fn commit(dir: &Path, lake: &Path, contract: serde_json::Value, name: &str, body: &str, task: &str) -> LocalCommit {
    let input = dir.join(name);
    std::fs::write(&input, body).expect("input");
    let step = step(lake, contract);
    let plan = Plan {
        sinks: Arc::new(Sinks::open_local(&step).expect("sinks").local_states().expect("states")),
        step: Arc::new(step),
        staging: None,
        quarantine: dir.join("q"),
        outgoing: dir.join("out"),
        fence: WriteFence { task: task.into(), fence: 1 },
        now_micros: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        dedupe: None,
    };
    let mut r = convert(&Input { path: input, identity: name.into() }, &plan).expect("convert");
    let p = r.pending.remove(0);
    LocalDataset::new(lake).commit(p.write.expect("a write"), &p.plan, &Default::default()).expect("commit")
}

fn current(lake: &Path) -> String {
    LocalDataset::new(lake).history().expect("history").current().map(|v| v.schema.describe()).unwrap_or_default()
}

fn data_files(lake: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(lake)
        .expect("lake")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    out
}

#[test]
fn an_input_with_no_rows_makes_no_schema() {
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path().join("lake");
    commit(dir.path(), &lake, json!({}), "holiday.csv", "id,amount\n", "t").finalize();
    assert!(!lake.join(history::HISTORY).exists(), "a header-only file types nothing");
    commit(dir.path(), &lake, json!({}), "day1.csv", "id,amount\n1,2.5\n", "t").finalize();
    assert_eq!(current(&lake), "id: int64, amount: float64");
}

#[test]
fn an_undone_commit_takes_its_version_back_unless_another_input_holds_files_under_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path().join("lake");
    commit(dir.path(), &lake, json!({}), "day1.csv", "id,name\n1,a\n", "t1").finalize();

    // Alone, an undone commit takes its new column back.
    let a = commit(dir.path(), &lake, json!({}), "a.csv", "id,name,currency\n2,b,EUR\n", "t2");
    assert_eq!(current(&lake), "id: int64, name: string, currency: string");
    a.undo().expect("undo");
    assert_eq!(current(&lake), "id: int64, name: string");
    assert_eq!(data_files(&lake).len(), 1, "only day 1's file");

    // Another input committed under the new version: it stays when the first is undone.
    let a = commit(dir.path(), &lake, json!({}), "a.csv", "id,name,currency\n2,b,EUR\n", "t3");
    commit(dir.path(), &lake, json!({}), "b.csv", "id,name,currency\n3,c,USD\n", "t3").finalize();
    a.undo().expect("undo");
    assert_eq!(current(&lake), "id: int64, name: string, currency: string", "b's file holds currency");
    assert_eq!(data_files(&lake).len(), 2);
}

#[test]
fn an_undone_widening_leaves_every_file_of_the_wider_type() {
    let dir = tempfile::tempdir().expect("tmp");
    let lake = dir.path().join("lake");
    let widen = json!({"data_type": "widen"});
    commit(dir.path(), &lake, widen.clone(), "a.csv", "id,n\n1,5\n", "t1").finalize();
    commit(dir.path(), &lake, widen.clone(), "b.csv", "id,n\n2,6\n", "t1").finalize();
    // A re-run of a.csv whose values need text: every file is widened, the commit undone.
    let c = commit(dir.path(), &lake, widen, "a.csv", "id,n\n1,x\n", "t2");
    c.undo().expect("undo");
    assert_eq!(current(&lake), "id: int64, n: string", "the widening stays");
    for f in data_files(&lake) {
        assert_eq!(history::file_schema(&f).expect("schema").describe(), "id: int64, n: string", "{}", f.display());
    }
}
