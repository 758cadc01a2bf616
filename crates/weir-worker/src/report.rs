//! Step outputs that stay small. The master keeps every output in its store and hands it
//! to the next steps, with a limit (`weir_core::validate::MAX_CONFIG_BYTES`); a step that
//! touched ten thousand files reports far more. Such a report is stored in staging
//! ([`crate::staging`]: the data dir or the staging object store) beside the step's staged
//! data, and the output becomes a reference to it with the report's summary fields: the
//! master passes references, never the data.

use serde_json::{Map, Value};

use crate::staging::Staging;
use crate::{StepError, TaskContext};

/// Outputs up to this size stay inline.
pub const INLINE_LIMIT: usize = 48 * 1024;

/// The key of a reference to a report file.
pub const REPORT_KEY: &str = "report";

/// Returns `report` as the step's output, or, when it is too large, stores it in staging
/// (`<job>/<step>/_report.json`) and returns its scalar fields plus `{"report": ref}`.
pub async fn publish(report: Value, staging: &Staging, task: &TaskContext) -> Result<Value, StepError> {
    let text = report.to_string();
    if text.len() <= INLINE_LIMIT {
        return Ok(report);
    }
    let len = text.len();
    let reference = staging.put_report(task, text).await?;
    let mut out = Map::new();
    if let Value::Object(m) = &report {
        for (k, v) in m {
            // The watermark stays inline: the master reads it when the job succeeds.
            if !(v.is_array() || v.is_object()) || k == "location" || k == weir_core::watermark::OUTPUT_KEY {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out.insert(REPORT_KEY.into(), Value::String(reference));
    out.insert("report_bytes".into(), Value::from(len as u64));
    Ok(Value::Object(out))
}

/// An upstream step's output as the full report: read from staging when it was
/// published as a reference.
pub async fn resolve(output: &str, staging: &Staging) -> Result<Value, StepError> {
    let v: Value = serde_json::from_str(output).unwrap_or(Value::Null);
    match v.get(REPORT_KEY).and_then(Value::as_str) {
        None => Ok(v),
        Some(reference) => {
            let text = staging.read_report(reference).await?;
            serde_json::from_str(&text).map_err(|e| {
                StepError::permanent("bad_input", format!("the upstream report {reference} is not JSON: {e}"))
            })
        }
    }
}

/// Every upstream output of a task, resolved.
pub async fn upstream(task: &TaskContext, staging: &Staging) -> Result<Vec<(String, Value)>, StepError> {
    let mut out = Vec::with_capacity(task.inputs.len());
    for (step, text) in &task.inputs {
        out.push((step.clone(), resolve(text, staging).await?));
    }
    Ok(out)
}

/// The output of the upstream step `step`, resolved; an error says the task must depend
/// on it.
pub async fn upstream_of(task: &TaskContext, staging: &Staging, step: &str) -> Result<Value, StepError> {
    let text = task.inputs.iter().find(|(s, _)| s == step).map(|(_, t)| t).ok_or_else(|| {
        StepError::permanent("bad_input", format!("{} needs the output of {step} (depend on it)", task.kind))
    })?;
    resolve(text, staging).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn large_reports_become_references_that_resolve() {
        let dir = tempfile::tempdir().expect("tmp");
        let staging = Staging::new(dir.path(), None);
        let task = TaskContext::for_test("collect");
        let small = json!({"count": 1, "files": [{"path": "a"}]});
        assert_eq!(publish(small.clone(), &staging, &task).await.expect("inline"), small);
        let files: Vec<Value> = (0..5000).map(|i| json!({"path": format!("f{i}.csv"), "size": i})).collect();
        let big = json!({"count": 5000, "location": {"uri": "s3://b"}, "files": files});
        let out = publish(big.clone(), &staging, &task).await.expect("reference");
        assert!(out.to_string().len() < 1024, "{out}");
        assert_eq!(out["count"], 5000);
        assert_eq!(out["location"]["uri"], "s3://b");
        assert!(out["report"].as_str().is_some_and(|r| r.starts_with(&dir.path().display().to_string())));
        assert_eq!(resolve(&out.to_string(), &staging).await.expect("resolves"), big);
        let gone = json!({"report": "/nonexistent/_report.json"}).to_string();
        assert!(resolve(&gone, &staging).await.expect_err("missing").message.contains("WEIR_DATA_DIR"));
    }
}
