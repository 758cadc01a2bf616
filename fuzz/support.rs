// What each fuzz target does with one input, shared with the regression test that
// replays `fuzz/regressions/` (crates/weir-data/tests/fuzz_regressions.rs).

/// Parses `data` as a job spec (YAML, which also reads JSON), validates it, and works
/// out what its steps reach under a sandbox.
pub fn job_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = serde_yaml_ng::from_str::<weir_core::spec::JobSpec>(text) else { return };
    if let Ok(valid) = weir_core::validate::validate(spec) {
        let policy = weir_core::sandbox::Policy::with_default(vec!["/srv/weir".into()], vec!["*".into()], vec!["*".into()]);
        if let Ok(policy) = policy {
            let _ = policy.check_job(&valid.spec);
        }
    }
}

/// Writes `data` to a file under each name a reader is picked by, then reads it through.
pub fn readers(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    for name in ["in.csv", "in.tsv", "in.json", "in.ndjson", "in.xml", "in.parquet", "in.csv.gz", "input"] {
        let path = dir.path().join(name);
        if std::fs::write(&path, data).is_err() {
            return;
        }
        let Ok(mut opened) = weir_data::read::open(&path, None, 64) else { continue };
        // A bounded number of chunks: a reader that never ends is a hang, found by the
        // fuzzer's timeout, not hidden here.
        while let Ok(Some(_)) = opened.source.next_chunk() {}
    }
}
