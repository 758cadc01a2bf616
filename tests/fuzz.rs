//! The fuzz targets' inputs replayed as ordinary tests: the seed corpus and every input
//! that once crashed a target (`fuzz/regressions/<target>/`, kept when `make fuzz` finds
//! one), through the same code the targets run (`fuzz/support.rs`). A regression here
//! panics, as it did under the fuzzer.

use std::path::PathBuf;

mod support {
    include!("../fuzz/support.rs");
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep") {
                let bytes = std::fs::read(&p).expect("read input");
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn job_spec_inputs_end_in_a_spec_or_an_error() {
    let all = inputs("job_spec");
    assert!(!all.is_empty(), "the seed corpus is there");
    for (path, bytes) in all {
        eprintln!("{}", path.display());
        support::job_spec(&bytes);
    }
}

#[test]
fn reader_inputs_end_in_rows_or_an_error() {
    let all = inputs("readers");
    assert!(!all.is_empty(), "the seed corpus is there");
    for (path, bytes) in all {
        eprintln!("{}", path.display());
        support::readers(&bytes);
    }
}
