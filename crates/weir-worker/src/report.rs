//! Step outputs that stay small. The master keeps every output in its store and hands it
//! to the next steps, with a limit (`weir_core::validate::MAX_CONFIG_BYTES`); a step that
//! touched ten thousand files reports far more. Such a report is written as a JSON file
//! beside the step's staged data, and the output becomes a reference to it with the
//! report's summary fields: the master passes references, never the data.

use std::path::Path;

use serde_json::{Map, Value};

use crate::StepError;

/// Outputs up to this size stay inline.
pub const INLINE_LIMIT: usize = 48 * 1024;

/// The key of a reference to a report file.
pub const REPORT_KEY: &str = "report";

/// Returns `report` as the step's output, or, when it is too large, writes it to
/// `dir/_report.json` and returns its scalar fields plus `{"report": path}`.
pub fn publish(report: Value, dir: &Path) -> Result<Value, StepError> {
    let text = report.to_string();
    if text.len() <= INLINE_LIMIT {
        return Ok(report);
    }
    let io =
        |e: std::io::Error| StepError::retryable("io", format!("writing the step report in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join("_report.json");
    let tmp = dir.join("._report.json.tmp");
    std::fs::write(&tmp, &text).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    let mut out = Map::new();
    if let Value::Object(m) = &report {
        for (k, v) in m {
            if !(v.is_array() || v.is_object()) || k == "location" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out.insert(REPORT_KEY.into(), Value::String(path.display().to_string()));
    out.insert("report_bytes".into(), Value::from(text.len() as u64));
    Ok(Value::Object(out))
}

/// An upstream step's output as the full report: read from its report file when it was
/// published as a reference.
pub fn resolve(output: &str) -> Result<Value, StepError> {
    let v: Value = serde_json::from_str(output).unwrap_or(Value::Null);
    match v.get(REPORT_KEY).and_then(Value::as_str) {
        None => Ok(v),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                StepError::retryable(
                    "io",
                    format!("reading the upstream step's report {path}: {e} (is WEIR_DATA_DIR shared?)"),
                )
            })?;
            serde_json::from_str(&text)
                .map_err(|e| StepError::permanent("bad_input", format!("the upstream report {path} is not JSON: {e}")))
        }
    }
}

/// Every upstream output of a task, resolved.
pub fn upstream(inputs: &[(String, String)]) -> Result<Vec<(String, Value)>, StepError> {
    inputs.iter().map(|(step, text)| Ok((step.clone(), resolve(text)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn large_reports_become_references_that_resolve() {
        let dir = tempfile::tempdir().expect("tmp");
        let small = json!({"count": 1, "files": [{"path": "a"}]});
        assert_eq!(publish(small.clone(), dir.path()).expect("inline"), small);
        let files: Vec<Value> = (0..5000).map(|i| json!({"path": format!("f{i}.csv"), "size": i})).collect();
        let big = json!({"count": 5000, "location": {"uri": "s3://b"}, "files": files});
        let out = publish(big.clone(), dir.path()).expect("reference");
        assert!(out.to_string().len() < 1024, "{out}");
        assert_eq!(out["count"], 5000);
        assert_eq!(out["location"]["uri"], "s3://b");
        assert_eq!(resolve(&out.to_string()).expect("resolves"), big);
        let gone = json!({"report": "/nonexistent/_report.json"}).to_string();
        assert!(resolve(&gone).expect_err("missing").message.contains("WEIR_DATA_DIR"));
    }
}
