//! The five built-in workflow templates, each expanded into a DAG of steps routed to the
//! manager queue that will do the work.
//!
//! Until the managers' own issues give these steps their real kinds, every template step
//! runs [`PLACEHOLDER_KIND`] (`noop`): the DAG shape and queue routing are real, the work
//! is not, and the README says so.
//!
//! Parameters (`params`, a JSON object), all optional:
//! - `source`: `"api"` (default) or `"file"`: where the `standard` template collects from.
//! - `parallelism`: 1..=64 (default 4): parallel processing branches of `bulk_file`.
//! - `config`: `{ "<step id>": {...} }`: a step's config.
//! - `kind`: `{ "<step id>": "<kind>" }`: run another kind for a step (for tests and drills).

use serde_json::Value;

use crate::catalog::Queue;
use crate::spec::StepSpec;

/// The kind every template step runs until its manager's issue lands.
pub const PLACEHOLDER_KIND: &str = "noop";

/// Names of the built-in templates.
pub const TEMPLATES: [&str; 5] = ["standard", "secure_api", "bulk_file", "realtime_stream", "resilient_fetch"];

/// Most parallel branches `bulk_file` may fan out to.
pub const MAX_PARALLELISM: u64 = 64;

/// Expands template `name` with `params` into steps, or names what is wrong.
pub fn expand(name: &str, params: Option<&Value>) -> Result<Vec<StepSpec>, String> {
    let empty = Value::Object(Default::default());
    let params = params.unwrap_or(&empty);
    if !params.is_object() {
        return Err(format!("template params must be a JSON object, got {params}"));
    }
    let chain = |steps: &[(&str, Queue)]| -> Vec<(String, Queue, Vec<String>)> {
        steps
            .iter()
            .enumerate()
            .map(|(i, (id, q))| {
                let deps = if i == 0 { vec![] } else { vec![steps[i - 1].0.to_string()] };
                (id.to_string(), *q, deps)
            })
            .collect()
    };
    let shape: Vec<(String, Queue, Vec<String>)> = match name {
        "standard" => {
            let src = match params.get("source").map(|v| v.as_str()) {
                None => Queue::Api,
                Some(Some("api")) => Queue::Api,
                Some(Some("file")) => Queue::File,
                Some(other) => {
                    return Err(format!("standard: params.source must be \"api\" or \"file\", got {other:?}"))
                }
            };
            chain(&[
                ("validate_source", src),
                ("connect", src),
                ("collect", src),
                ("convert", Queue::Batch),
                ("quality", Queue::Batch),
                ("store", Queue::Batch),
            ])
        }
        "secure_api" => chain(&[
            ("security_validation", Queue::Api),
            ("auth_verification", Queue::Api),
            ("encrypted_connection", Queue::Api),
            ("secure_collection", Queue::Api),
            ("classification", Queue::Batch),
            ("encrypted_storage", Queue::Batch),
        ]),
        "bulk_file" => {
            let n = match params.get("parallelism") {
                None => 4,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_PARALLELISM).contains(&n) => n,
                    _ => return Err(format!("bulk_file: params.parallelism must be 1..={MAX_PARALLELISM}, got {v}")),
                },
            };
            let mut s = vec![("discovery".to_string(), Queue::File, vec![])];
            let branches: Vec<String> = (1..=n).map(|i| format!("process_{i}")).collect();
            for b in &branches {
                s.push((b.clone(), Queue::File, vec!["discovery".to_string()]));
            }
            s.push(("standardization".into(), Queue::Batch, branches));
            s.push(("consolidation".into(), Queue::Batch, vec!["standardization".into()]));
            s.push(("batch_validation".into(), Queue::Batch, vec!["consolidation".into()]));
            s
        }
        "realtime_stream" => chain(&[
            ("connect", Queue::Stream),
            ("continuous_processing", Queue::Stream),
            ("realtime_validation", Queue::Stream),
            ("streaming_storage", Queue::Stream),
        ]),
        "resilient_fetch" => vec![
            ("failure_analysis".into(), Queue::Api, vec![]),
            ("recovery_strategy".into(), Queue::Api, vec!["failure_analysis".into()]),
            ("alternative_api".into(), Queue::Api, vec!["recovery_strategy".into()]),
            ("alternative_files".into(), Queue::File, vec!["recovery_strategy".into()]),
            ("reconstruction".into(), Queue::Batch, vec!["alternative_api".into(), "alternative_files".into()]),
            ("validation".into(), Queue::Batch, vec!["reconstruction".into()]),
        ],
        other => return Err(format!("unknown template {other:?} (known: {})", TEMPLATES.join(", "))),
    };
    let per_step = |key: &str| params.get(key).and_then(Value::as_object);
    for key in ["config", "kind"] {
        if let Some(map) = per_step(key) {
            if let Some(unknown) = map.keys().find(|k| !shape.iter().any(|(id, _, _)| id == *k)) {
                return Err(format!("{name}: params.{key} names unknown step {unknown:?}"));
            }
        }
    }
    shape
        .into_iter()
        .map(|(id, queue, depends_on)| {
            let kind = match per_step("kind").and_then(|m| m.get(&id)) {
                None => PLACEHOLDER_KIND.to_string(),
                Some(Value::String(k)) => k.clone(),
                Some(v) => return Err(format!("{name}: params.kind.{id} must be text, got {v}")),
            };
            Ok(StepSpec {
                config: per_step("config").and_then(|m| m.get(&id)).cloned(),
                id,
                kind,
                queue: queue.as_str().to_string(),
                depends_on,
                ..StepSpec::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_template_expands_and_routes() {
        for t in TEMPLATES {
            let steps = expand(t, None).expect(t);
            assert!(steps.len() >= 4, "{t}");
            assert!(steps[0].depends_on.is_empty());
        }
        let bulk = expand("bulk_file", Some(&json!({"parallelism": 3}))).expect("bulk");
        let std_steps: Vec<_> = bulk.iter().map(|s| (s.id.as_str(), s.queue.as_str())).collect();
        assert_eq!(
            std_steps,
            vec![
                ("discovery", "file"),
                ("process_1", "file"),
                ("process_2", "file"),
                ("process_3", "file"),
                ("standardization", "batch"),
                ("consolidation", "batch"),
                ("batch_validation", "batch")
            ]
        );
        assert_eq!(bulk[4].depends_on, vec!["process_1", "process_2", "process_3"]);
        let stream = expand("realtime_stream", None).expect("stream");
        assert!(stream.iter().all(|s| s.queue == "stream"));
        let std_file = expand("standard", Some(&json!({"source": "file"}))).expect("std");
        assert_eq!(std_file[2].queue, "file");
        assert_eq!(std_file[3].queue, "batch");
    }

    #[test]
    fn bad_params_are_named() {
        assert!(expand("nope", None).unwrap_err().contains("unknown template"));
        assert!(expand("bulk_file", Some(&json!({"parallelism": 0}))).unwrap_err().contains("parallelism"));
        assert!(expand("standard", Some(&json!({"source": "ftp"}))).unwrap_err().contains("source"));
        assert!(expand("standard", Some(&json!([1]))).unwrap_err().contains("object"));
        assert!(expand("standard", Some(&json!({"config": {"bogus": {}}}))).unwrap_err().contains("bogus"));
        let s =
            expand("standard", Some(&json!({"kind": {"store": "fail"}, "config": {"store": {"retryable": false}}})))
                .expect("overrides");
        assert_eq!(s[5].kind, "fail");
        assert_eq!(s[5].config, Some(json!({"retryable": false})));
    }
}
